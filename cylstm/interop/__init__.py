"""Bring LSTMs trained elsewhere into cylstm, and send cylstm models out.

* :func:`from_torch` - ``torch.nn.LSTM`` / ``nn.LSTMCell`` or their state dicts
* :func:`from_keras` - Keras ``Sequential`` models, ``.keras`` and ``.weights.h5`` files
* :func:`from_onnx` - ONNX graphs built around the ``LSTM`` operator
* :func:`to_onnx` - a cylstm ``Sequential`` as a standard ONNX graph

Each returns (or reads) a :class:`cylstm.models.Sequential`.  The frameworks are optional:
each function imports what it needs (torch, h5py, onnx) only when called, and only when
the input requires it.
"""

from cylstm.interop.keras import from_keras
from cylstm.interop.onnx import from_onnx, to_onnx
from cylstm.interop.torch import from_torch

__all__ = ["from_keras", "from_onnx", "from_torch", "to_onnx"]
