"""Keras-compatible layers over cylstm's compiled LSTM kernels.

Layers hold their weights as NumPy arrays (``layer.kernel`` etc., Keras
layouts) and can be called on NumPy arrays on their own
(``LSTM(8)(x)``).  Inside a :class:`cylstm.models.Sequential` the model
re-points every weight to a view into one flat parameter buffer (and every
gradient into a second one), so the optimizer updates all parameters in one
fused pass.

Training inside a model goes through two private methods per layer, which
the model calls over whole batches:

``_forward(x, mask, training) -> (y, out_mask)``
    keeps what the backward needs on the layer when ``training``;
``_backward(dy, need_input_grad) -> dx``
    writes the weight gradients into the layer's gradient arrays.

Masks (from :class:`Masking` or ``Embedding(mask_zero=True)``) are boolean
(batch, time) arrays; LSTMs follow Keras's semantics for them (a masked step
leaves the state untouched; see :class:`LSTM`).

The package: :mod:`~cylstm.layers.base` (the :class:`Layer` base class, :class:`Input`
and the constructors' argument checks), :mod:`~cylstm.layers.core` (``Dense``,
``Dropout``, ``Masking``, ``Embedding``, ``Activation``, ``RepeatVector``,
``TimeDistributed``), :mod:`~cylstm.layers.recurrent` (``LSTM``, ``Bidirectional``)
and :mod:`~cylstm.layers.masks` (how an LSTM runs masks on its kernels);
:mod:`~cylstm.layers.merging` and :mod:`~cylstm.layers.reshaping` (also importable as
``cylstm.merging`` and ``cylstm.reshaping``).  Every name is importable from
``cylstm.layers``, as Keras's are from ``keras.layers``.
"""
import collections

# (the private names: helpers the models, the engine and the merge layers use as
# cylstm.layers._name; "as" marks them re-exported)
from cylstm.layers.base import Input, InputLayer, Layer, serialize
from cylstm.layers.base import _as_float_input as _as_float_input
from cylstm.layers.base import _canon_dtype as _canon_dtype
from cylstm.layers.base import _check_quantization_mode as _check_quantization_mode
from cylstm.layers.base import _make_rng as _make_rng
from cylstm.layers.base import _snake as _snake
from cylstm.layers.base import _unique_name as _unique_name
from cylstm.layers.base import _variable_dtype_label as _variable_dtype_label
from cylstm.layers.base import assign_weights as assign_weights
from cylstm.layers.base import quantizable_layers as quantizable_layers
from cylstm.layers.base import quantize_layers as quantize_layers
from cylstm.layers.core import (
    Activation,
    Dense,
    Dropout,
    Embedding,
    Masking,
    RepeatVector,
    TimeDistributed,
)
from cylstm.layers.core import _as_index as _as_index
from cylstm.layers.merging import (
    Add,
    Average,
    Concatenate,
    Maximum,
    Minimum,
    Multiply,
    Subtract,
    add,
    average,
    concatenate,
    maximum,
    minimum,
    multiply,
    subtract,
)
from cylstm.layers.recurrent import LSTM, Bidirectional
from cylstm.layers.reshaping import Flatten, Reshape

__all__ = [
    "LSTM",
    "Activation",
    "Add",
    "Average",
    "Bidirectional",
    "Concatenate",
    "Dense",
    "Dropout",
    "Embedding",
    "Flatten",
    "Input",
    "InputLayer",
    "Layer",
    "Masking",
    "Maximum",
    "Minimum",
    "Multiply",
    "RepeatVector",
    "Reshape",
    "Subtract",
    "TimeDistributed",
    "add",
    "average",
    "concatenate",
    "deserialize",
    "get",
    "maximum",
    "minimum",
    "multiply",
    "serialize",
    "subtract",
]

# How many layers of each default name this process has made (base._unique_name):
# reset it to act as a fresh process.
_name_counts = collections.defaultdict(int)

_REGISTRY = {c.__name__: c for c in (LSTM, Dense, Bidirectional, Dropout, Masking, Embedding,
                                     Activation, RepeatVector, TimeDistributed, Concatenate,
                                     Add, Subtract, Multiply, Average, Maximum, Minimum,
                                     Flatten, Reshape)}
_REGISTRY["InputLayer"] = Input
_MODEL_CLASSES = ("Functional", "Model", "Sequential")


def deserialize(config):
    """Build a layer from :func:`serialize`'s output.  Only cylstm's own layer
    classes can be named, so an untrusted config never runs code."""
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(f"a layer config must be a dict with 'class_name'; got {config!r}")
    if config["class_name"] in _MODEL_CLASSES:
        from cylstm.engine.model import _deserialize  # breaks a cycle: models hold layers

        return _deserialize(config)
    cls = _REGISTRY.get(config["class_name"])
    if cls is None:
        raise ValueError(f"unknown layer class {config['class_name']!r}; cylstm has "
                         f"{sorted(_REGISTRY)}")
    return cls.from_config(config.get("config", {}))


get = deserialize
