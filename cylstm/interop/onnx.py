"""ONNX import (:func:`from_onnx`, in :mod:`~cylstm.interop.onnx_import`) and export
(:func:`to_onnx`, in :mod:`~cylstm.interop.onnx_export`).

The ONNX ``LSTM`` operator packs its gates as i, o, f, c and its weights per direction:

    W  [num_directions, 4H, I]      X @ W^T
    R  [num_directions, 4H, H]      H @ R^T
    B  [num_directions, 8H]         [Wb, Rb], summed into one bias

cylstm (Keras) keeps ``kernel = W[d]^T`` (I, 4H) and ``recurrent_kernel = R[d]^T`` (H, 4H)
with gates i, f, c, o, so the conversion is a block permutation and a transpose.
ONNX Runtime's contrib ``DynamicQuantizeLSTM`` keeps W [D, I, 4H] and R [D, H, 4H]
untransposed (int8 or uint8, with scales and zero points per tensor or per column):
there the conversion is the block permutation alone.
"""
from cylstm.interop.onnx_export import to_onnx
from cylstm.interop.onnx_import import from_onnx, onnx_to_spec

__all__ = ["from_onnx", "onnx_to_spec", "to_onnx"]
