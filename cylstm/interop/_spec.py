"""A framework-neutral description of an imported model, and its assembly into cylstm.

Every importer (PyTorch, Keras, ONNX) first converts the foreign model into a list of
plain layer specs holding NumPy arrays already in cylstm's (Keras) layout:

    kernel            (input_dim, 4 * units)   gates i, f, c, o
    recurrent_kernel  (units, 4 * units)
    bias              (4 * units,) or None

and only then builds a :class:`cylstm.models.Sequential` through the public layer API
(constructors + ``set_weights``).  Keeping the conversion pure makes it testable without
the model classes and keeps all three importers honest about the same invariants.
"""
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "DENSE_ACTIVATIONS",
    "BidirectionalSpec",
    "DenseSpec",
    "DropoutSpec",
    "EmbeddingSpec",
    "LSTMSpec",
    "MaskingSpec",
    "build_sequential",
    "reorder_gates",
]

# Dense activations cylstm supports, by canonical Keras name.
DENSE_ACTIVATIONS = ("linear", "relu", "tanh", "sigmoid", "softmax")


def reorder_gates(a, order, axis=0):
    """Permute the four gate blocks of ``a`` along ``axis`` into cylstm's i, f, c, o.

    Parameters
    ----------
    a : array whose ``axis`` has length ``4 * H``.
    order : str of four letters naming the gate of each source block, e.g. ``"iofc"``
        for ONNX or ``"ifgo"`` for PyTorch (``g`` and ``c`` are the same gate).
    """
    order = order.replace("g", "c")
    if sorted(order) != sorted("ifco"):
        raise ValueError(f"gate order must be a permutation of 'ifco'; got {order!r}")
    n = a.shape[axis]
    if n % 4:
        raise ValueError(f"gate axis must have length 4*H; got {n}")
    blocks = np.split(a, 4, axis=axis)
    return np.concatenate([blocks[order.index(g)] for g in "ifco"], axis=axis)


@dataclass
class LSTMSpec:
    """One unidirectional LSTM layer in Keras semantics.

    ``go_backwards`` follows Keras: the layer reads the sequence from the end and, with
    ``return_sequences``, returns its outputs in processing order (reversed time).
    """

    kernel: np.ndarray
    recurrent_kernel: np.ndarray
    bias: object = None
    return_sequences: bool = True
    go_backwards: bool = False
    options: dict = field(default_factory=dict)  # extra LSTM(...) arguments (dropout, ...)
    #: the kernels are int8 values (q * scale): the built layer gets ``quantize("int8")``
    quantized: bool = False
    #: "mixed_bfloat16" when the source layer had that policy (Keras 3): the built layer
    #: keeps it (float32 models only); None: the model's dtype
    dtype_policy: object = None

    @property
    def units(self):
        return self.recurrent_kernel.shape[0]

    @property
    def input_dim(self):
        return self.kernel.shape[0]

    def check(self, where):
        """Refuse inconsistent shapes or non-finite values (a wrong model is worse than none)."""
        H = self.recurrent_kernel.shape[0]
        if self.recurrent_kernel.shape != (H, 4 * H):
            raise ValueError(f"{where}: recurrent kernel must be (units, 4*units); got "
                             f"{self.recurrent_kernel.shape}")
        if self.kernel.ndim != 2 or self.kernel.shape[1] != 4 * H:
            raise ValueError(f"{where}: kernel must be (input_dim, {4 * H}); got "
                             f"{self.kernel.shape}")
        if self.bias is not None and self.bias.shape != (4 * H,):
            raise ValueError(f"{where}: bias must be ({4 * H},); got {self.bias.shape}")
        for name, a in (("kernel", self.kernel), ("recurrent_kernel", self.recurrent_kernel),
                        ("bias", self.bias)):
            if a is not None and not np.all(np.isfinite(a)):
                raise ValueError(f"{where}: {name} holds NaN or infinite values")


@dataclass
class BidirectionalSpec:
    """A Keras ``Bidirectional`` wrapper: ``backward.go_backwards`` is True."""

    forward: LSTMSpec
    backward: LSTMSpec
    merge_mode: str = "concat"

    @property
    def input_dim(self):
        return self.forward.input_dim


@dataclass
class DenseSpec:
    kernel: np.ndarray
    bias: object = None
    activation: str = "linear"
    dtype_policy: object = None   # as LSTMSpec's

    @property
    def input_dim(self):
        return self.kernel.shape[0]


@dataclass
class EmbeddingSpec:
    """A first-layer ``Embedding``: integer (batch, time) inputs, table (vocabulary, dim)."""

    embeddings: np.ndarray
    mask_zero: bool = False


@dataclass
class MaskingSpec:
    mask_value: float = 0.0


@dataclass
class DropoutSpec:
    rate: float = 0.0


@dataclass
class ModelSpec:
    layers: list = field(default_factory=list)
    input_dim: int = 0
    dtype: object = np.float32


def _cast(a, dtype):
    return None if a is None else np.ascontiguousarray(a, dtype=dtype)


def _policy(spec, dtype):
    """The ``dtype=`` of the layer built from ``spec``: the model's dtype, or the source
    layer's mixed_bfloat16 policy (its variables are float32) in a float32 model."""
    if spec.dtype_policy == "mixed_bfloat16" and dtype == np.float32:
        return "mixed_bfloat16"
    return dtype.name


def _lstm_layer(spec, dtype, input_shape=None):
    from cylstm.layers import LSTM  # defers import cost: specs are plain data

    kw = {} if input_shape is None else {"input_shape": input_shape}
    return LSTM(spec.units, use_bias=spec.bias is not None,
                return_sequences=spec.return_sequences, go_backwards=spec.go_backwards,
                dtype=_policy(spec, dtype), **spec.options, **kw)


def _lstm_weights(spec, dtype):
    w = [_cast(spec.kernel, dtype), _cast(spec.recurrent_kernel, dtype)]
    if spec.bias is not None:
        w.append(_cast(spec.bias, dtype))
    return w


def build_sequential(model_spec, name=None):
    """Assemble a cylstm ``Sequential`` from a :class:`ModelSpec`.

    Layers are created through the public constructors, the model is built for inputs of
    shape ``(batch, time, input_dim)``, and the weights are set with ``set_weights`` so
    the model owns ordinary (flat, trainable) parameters.
    """
    from cylstm import layers as L  # defers import cost: specs are plain data
    from cylstm.models import Sequential  # defers import cost (the same)

    dtype = np.dtype(model_spec.dtype)
    if dtype not in (np.float32, np.float64):
        dtype = np.dtype(np.float32)
    first = model_spec.layers[0] if model_spec.layers else None
    if isinstance(first, EmbeddingSpec):
        input_shape = (None,)  # integer token ids (batch, time)
    else:
        input_shape = (None, int(model_spec.input_dim))
    built = []
    weights = []
    quantized = []  # (layer, spec) of the LSTMs to mark int8 once their weights are set
    for i, spec in enumerate(model_spec.layers):
        shape = input_shape if i == 0 else None
        kw = {"dtype": dtype.name}
        if shape is not None:
            kw["input_shape"] = shape
        if isinstance(spec, LSTMSpec):
            spec.check(f"layer {i}")
            built.append(_lstm_layer(spec, dtype, shape))
            weights += _lstm_weights(spec, dtype)
            quantized.append((built[-1], spec))
        elif isinstance(spec, BidirectionalSpec):
            spec.forward.check(f"layer {i} (forward)")
            spec.backward.check(f"layer {i} (backward)")
            fwd = _lstm_layer(spec.forward, dtype)
            bwd = _lstm_layer(spec.backward, dtype)
            built.append(L.Bidirectional(fwd, merge_mode=spec.merge_mode, backward_layer=bwd,
                                         **dict(kw, dtype=_policy(spec.forward, dtype))))
            weights += _lstm_weights(spec.forward, dtype) + _lstm_weights(spec.backward, dtype)
            quantized += [(built[-1].forward_layer, spec.forward),
                          (built[-1].backward_layer, spec.backward)]
        elif isinstance(spec, DenseSpec):
            if not np.all(np.isfinite(spec.kernel)) or (
                    spec.bias is not None and not np.all(np.isfinite(spec.bias))):
                raise ValueError(f"layer {i} (Dense): weights hold NaN or infinite values")
            built.append(L.Dense(spec.kernel.shape[1], activation=spec.activation,
                                 use_bias=spec.bias is not None,
                                 **dict(kw, dtype=_policy(spec, dtype))))
            weights.append(_cast(spec.kernel, dtype))
            if spec.bias is not None:
                weights.append(_cast(spec.bias, dtype))
        elif isinstance(spec, EmbeddingSpec):
            if i != 0:
                raise ValueError(f"layer {i}: an Embedding must be the first layer")
            E = spec.embeddings
            if E.ndim != 2 or 0 in E.shape or not np.all(np.isfinite(E)):
                raise ValueError(f"layer {i} (Embedding): the table must be a finite "
                                 f"(vocabulary, dim) matrix; got shape {E.shape}")
            built.append(L.Embedding(E.shape[0], E.shape[1], mask_zero=spec.mask_zero, **kw))
            weights.append(_cast(E, dtype))
        elif isinstance(spec, MaskingSpec):
            built.append(L.Masking(mask_value=spec.mask_value, **kw))
        elif isinstance(spec, DropoutSpec):
            built.append(L.Dropout(spec.rate, **kw))
        else:  # pragma: no cover - importers only emit the specs above
            raise TypeError(f"unknown layer spec {type(spec).__name__}")
    if not built:
        raise ValueError("the imported model has no layers")
    model = Sequential(built, name=name)
    if not model.built:
        model.build((None,) + input_shape)
    model.set_weights(weights)
    for layer, spec in quantized:
        if spec.quantized:
            # the weights already are int8 values: quantize() keeps them bit for bit
            layer.quantize("int8")
    return model
