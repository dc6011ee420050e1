"""What the ONNX importer (:mod:`cylstm.interop.onnx_import`) and exporter
(:mod:`cylstm.interop.onnx_export`) share: the onnx package, imported only when called."""


def require_onnx():
    try:
        import onnx  # defers import cost: onnx is optional
    except ImportError as e:  # pragma: no cover - exercised only without onnx
        raise ImportError("cylstm.interop.from_onnx / to_onnx need the 'onnx' package "
                          "(pip install onnx)") from e
    return onnx
