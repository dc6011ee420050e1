"""Bring LSTMs trained elsewhere into cylstm, and send cylstm models out.

* :func:`from_torch` - ``torch.nn.LSTM`` / ``nn.LSTMCell`` or their state dicts
* :func:`from_keras` - Keras ``Sequential`` models, ``.keras`` and ``.weights.h5`` files
* :func:`from_onnx` - ONNX graphs built around the ``LSTM`` operator
* :func:`to_onnx` - a cylstm ``Sequential`` as a standard ONNX graph

Each returns (or reads) a :class:`cylstm.models.Sequential`.  The frameworks are optional:
each function imports what it needs (torch, h5py, onnx) only when called, and only when
the input requires it.
"""

__all__ = ["from_keras", "from_onnx", "from_torch", "to_onnx"]


def from_torch(obj, *, name=None):
    from cylstm.interop.torch import from_torch as f

    return f(obj, name=name)


def from_keras(model_or_path, *, config=None, name=None):
    from cylstm.interop.keras import from_keras as f

    return f(model_or_path, config=config, name=name)


def from_onnx(path, *, name=None):
    from cylstm.interop.onnx import from_onnx as f

    return f(path, name=name)


def to_onnx(model, path, *, dtype=None):
    from cylstm.interop.onnx import to_onnx as f

    return f(model, path, dtype=dtype)


def _copy_doc():
    # The wrappers above keep `import cylstm.interop` free of optional imports; their help()
    # is the real functions' docstrings.
    from cylstm.interop import keras, onnx, torch

    for wrapper, real in ((from_torch, torch.from_torch), (from_keras, keras.from_keras),
                          (from_onnx, onnx.from_onnx), (to_onnx, onnx.to_onnx)):
        wrapper.__doc__ = real.__doc__


_copy_doc()
