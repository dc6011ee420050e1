"""The generic layers, as Keras's core and regularization layers: ``Dense``,
``Dropout``, ``Masking``, ``Embedding``, ``Activation``, ``RepeatVector`` and
``TimeDistributed``."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cylstm import activations as _act
from cylstm._typing import (
    ActivationLike,
    ArrayLike,
    ConstraintLike,
    InitializerLike,
    RegularizerLike,
)
from cylstm.layers.base import (
    Layer,
    _check_rate,
    _check_units,
    _constraint,
    _constraint_config,
    _init_config,
    _make_rng,
    _refuse,
    _reg_config,
    _regularizer,
    serialize,
)
from cylstm.quantization import round_bfloat16


class Dense(Layer):
    """Densely connected layer on the last axis: ``activation(x @ kernel + bias)``.

    Works on (batch, features) and (batch, time, features) alike.

    Parameters
    ----------
    units : int
    activation : None, 'linear', 'relu', 'tanh', 'sigmoid' or 'softmax'
    use_bias : bool
    kernel_initializer, bias_initializer : initializer names or objects
    kernel_regularizer, bias_regularizer, activity_regularizer : optional
        :mod:`cylstm.regularizers` names or objects (see :class:`Layer`).
    kernel_constraint, bias_constraint : optional
        :mod:`cylstm.constraints` names or callables.
    dtype : see :class:`cylstm.layers.Layer`.  'mixed_bfloat16': x and the kernel
        are rounded to bfloat16 before the float32 product (exact products, float32
        sums); the bias and the activation stay float32, and the gradients pass
        straight through the roundings to the float32 kernel.
    """

    _REGULARIZED = (("kernel", "kernel_regularizer"), ("bias", "bias_regularizer"))
    _CONSTRAINED = (("kernel", "kernel_constraint"), ("bias", "bias_constraint"))
    _QUANTIZED_WEIGHTS = ("kernel",)

    def __init__(self, units: int, activation: ActivationLike = None, use_bias: bool = True,
                 kernel_initializer: InitializerLike = "glorot_uniform",
                 bias_initializer: InitializerLike = "zeros",
                 kernel_regularizer: RegularizerLike = None,
                 bias_regularizer: RegularizerLike = None,
                 activity_regularizer: RegularizerLike = None,
                 kernel_constraint: ConstraintLike = None, bias_constraint: ConstraintLike = None,
                 lora_rank: None = None, lora_alpha: None = None,
                 quantization_config: None = None, seed: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _refuse("lora_rank", lora_rank)
        _refuse("lora_alpha", lora_alpha)
        _refuse("quantization_config", quantization_config)
        self.kernel_regularizer = _regularizer("kernel_regularizer", kernel_regularizer)
        self.bias_regularizer = _regularizer("bias_regularizer", bias_regularizer)
        self.activity_regularizer = _regularizer("activity_regularizer", activity_regularizer)
        self.kernel_constraint = _constraint("kernel_constraint", kernel_constraint)
        self.bias_constraint = _constraint("bias_constraint", bias_constraint)
        self.units = _check_units("units", units)
        self.activation = _act.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer
        self.seed = seed
        self.kernel = None
        self.bias = None
        # Set by a model whose loss fuses with this (output) layer's activation:
        # the forward then also keeps the logits (``_logits``) and the backward
        # takes dL/dlogits directly (TF-Keras trains sigmoid/softmax outputs so).
        self._logits_out = False
        self._logits = None

    @property
    def input_dim(self):
        return None if self.kernel is None else self.kernel.shape[0]

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) < 2 or input_shape[-1] is None:
            raise ValueError(
                f"Dense {self.name!r} needs inputs (batch, ..., features) with a known feature "
                f"count; got input shape {input_shape}"
            )
        rng = _make_rng(self.seed)
        self._wnames = ("kernel", "bias") if self.use_bias else ("kernel",)
        self._new_weight("kernel", self.kernel_initializer, (input_shape[-1], self.units), rng)
        if self.use_bias:
            self._new_weight("bias", self.bias_initializer, (self.units,), rng)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def _forward(self, x, mask, training):
        K = self.kernel
        if x.ndim < 2 or x.shape[-1] != K.shape[0]:
            raise ValueError(
                f"Dense {self.name!r} expects inputs with {K.shape[0]} features on the last "
                f"axis; got shape {x.shape}"
            )
        x2 = x.reshape(-1, K.shape[0]) if x.ndim != 2 else x
        if self._bf16:  # mixed_bfloat16: bf16 operands (copies), float32 product and sums
            x2, K = round_bfloat16(x2), round_bfloat16(K)
        z = x2 @ K
        if self.use_bias:
            z += self.bias
        if self._logits_out:
            self._logits = z.reshape(x.shape[:-1] + (self.units,))
            z = z.copy()
        a = _act.forward_(self.activation, z)
        if training:
            # the operands the product read: the gradients pass straight through the
            # roundings, over dz rounded too (bf16 products, as the LSTM's backward:
            # dK = x16^T dz16, dx = dz16 K16^T; the bias takes the float32 dz)
            self._cache = (x2, a, K)
        if x.ndim != 2:
            a = a.reshape(x.shape[:-1] + (self.units,))
        self._record_activity(a, training)
        return a, mask

    def _backward(self, dy, need_input_grad=True):
        x2, a, K = self._cache
        self._cache = None
        dz = dy.reshape(a.shape) if dy.ndim != 2 else dy
        act_g = self._activity_grads()
        if act_g is not None:
            ga = act_g[0].reshape(a.shape)
            if self._logits_out:  # dy is dL/dlogits: carry the penalty's da through f'
                dz = dz + _act.backward_(self.activation, a, ga)
            else:
                dz = dz + ga
        if not self._logits_out:  # else dy is already dL/dlogits
            dz = _act.backward_(self.activation, a, dz)
        if self.use_bias:
            np.sum(dz, axis=0, out=self._grads["bias"])
        if self._bf16:
            dz = round_bfloat16(dz)
        np.matmul(x2.T, dz, out=self._grads["kernel"])
        self._add_regularizer_grads()
        if not need_input_grad:
            return None
        dx = dz @ K.T
        return dx.reshape(dy.shape[:-1] + (K.shape[0],))

    def get_config(self):
        cfg = super().get_config()
        cfg.update(units=self.units, activation=self.activation, use_bias=self.use_bias,
                   kernel_initializer=_init_config(self.kernel_initializer),
                   bias_initializer=_init_config(self.bias_initializer),
                   kernel_regularizer=_reg_config(self.kernel_regularizer),
                   bias_regularizer=_reg_config(self.bias_regularizer),
                   activity_regularizer=_reg_config(self.activity_regularizer),
                   kernel_constraint=_constraint_config(self.kernel_constraint),
                   bias_constraint=_constraint_config(self.bias_constraint), seed=self.seed)
        return cfg


class Dropout(Layer):
    """Randomly zeroes a fraction ``rate`` of the inputs during ``fit`` (inverted dropout:
    kept values are scaled by ``1 / (1 - rate)``); the identity otherwise.

    ``noise_shape`` as Keras: a shape broadcastable to the input, with None
    taking the input's size (e.g. ``(None, 1, None)`` shares one mask across time).
    """

    def __init__(self, rate: float, noise_shape: Sequence[int | None] | None = None,
                 seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rate = _check_rate("rate", rate)
        self.noise_shape = None if noise_shape is None else tuple(noise_shape)
        self.seed = seed
        self._rng = None

    def _forward(self, x, mask, training):
        if not training or self.rate == 0:
            return x, mask
        if self._rng is None:
            self._rng = _make_rng(self.seed)
        shape = x.shape
        if self.noise_shape is not None:
            if len(self.noise_shape) != x.ndim:
                raise ValueError(f"noise_shape {self.noise_shape} must have {x.ndim} dims for "
                                 f"inputs of shape {x.shape}")
            shape = tuple(s if n is None else n for s, n in zip(x.shape, self.noise_shape))
        keep = 1.0 - self.rate
        m = (self._rng.random(shape) < keep).astype(x.dtype)
        m *= 1.0 / keep
        self._cache = m
        return x * m, mask

    def _backward(self, dy, need_input_grad=True):
        m = self._cache
        self._cache = None
        if not need_input_grad:
            return None
        return dy if m is None else dy * m

    def get_config(self):
        cfg = super().get_config()
        cfg.update(rate=self.rate, noise_shape=None if self.noise_shape is None
                   else list(self.noise_shape), seed=self.seed)
        return cfg


class Masking(Layer):
    """Masks time steps whose features all equal ``mask_value``.

    Following LSTMs skip masked steps (state carried through; see :class:`LSTM`).
    The output is the input with masked steps zeroed, as in Keras.
    """

    def __init__(self, mask_value: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mask_value = float(mask_value)

    def _forward(self, x, mask, training):
        if x.ndim != 3:
            raise ValueError(f"Masking {self.name!r} expects (batch, time, features) inputs; "
                             f"got shape {x.shape}")
        m = np.any(x != self.mask_value, axis=-1)
        if training:
            self._cache = m
        return x * m[:, :, None], m

    def _backward(self, dy, need_input_grad=True):
        m = self._cache
        self._cache = None
        if not need_input_grad:
            return None
        return dy * m[:, :, None]

    def get_config(self):
        cfg = super().get_config()
        cfg["mask_value"] = self.mask_value
        return cfg


class Embedding(Layer):
    """Turns integer indices (batch, time) into vectors (batch, time, output_dim).

    Parameters
    ----------
    input_dim : int
        Vocabulary size; indices must lie in ``[0, input_dim)``.
    output_dim : int
    embeddings_initializer : default 'uniform' (U(-0.05, 0.05), as Keras)
    mask_zero : bool
        Index 0 is padding: the following LSTMs skip those steps.
    embeddings_regularizer, activity_regularizer : optional
        :mod:`cylstm.regularizers` names or objects.
    embeddings_constraint : optional
        A :mod:`cylstm.constraints` name or callable.
    """

    _index_input = True
    _REGULARIZED = (("embeddings", "embeddings_regularizer"),)
    _CONSTRAINED = (("embeddings", "embeddings_constraint"),)

    def __init__(self, input_dim: int, output_dim: int,
                 embeddings_initializer: InitializerLike = "uniform",
                 embeddings_regularizer: RegularizerLike = None,
                 embeddings_constraint: ConstraintLike = None, mask_zero: bool = False,
                 weights: Sequence[ArrayLike] | None = None, input_length: int | None = None,
                 lora_rank: None = None, lora_alpha: None = None,
                 quantization_config: None = None, activity_regularizer: RegularizerLike = None,
                 seed: int | None = None, **kwargs: Any) -> None:
        if input_length is not None and "input_shape" not in kwargs \
                and "batch_input_shape" not in kwargs:
            kwargs["input_shape"] = (input_length,)
        super().__init__(**kwargs)
        _refuse("lora_rank", lora_rank)
        _refuse("lora_alpha", lora_alpha)
        _refuse("quantization_config", quantization_config)
        self.embeddings_regularizer = _regularizer("embeddings_regularizer",
                                                   embeddings_regularizer)
        self.activity_regularizer = _regularizer("activity_regularizer", activity_regularizer)
        self.embeddings_constraint = _constraint("embeddings_constraint", embeddings_constraint)
        self.input_dim = _check_units("input_dim", input_dim)
        self.output_dim = _check_units("output_dim", output_dim)
        self.embeddings_initializer = embeddings_initializer
        self.mask_zero = bool(mask_zero)
        self.supports_masking = self.mask_zero  # Keras: an Embedding makes a mask iff mask_zero
        self.seed = seed
        self.embeddings = None
        self._initial_weights = weights

    def build(self, input_shape):
        self._wnames = ("embeddings",)
        init = self.embeddings_initializer
        if isinstance(init, str) and init.lower() == "uniform":
            # Keras's 'uniform' for Embedding is RandomUniform(-0.05, 0.05)
            rng = _make_rng(self.seed)
            w = rng.uniform(-0.05, 0.05, (self.input_dim, self.output_dim)).astype(self.dtype)
            self.embeddings = w
            self._grads["embeddings"] = np.zeros_like(w)
        else:
            self._new_weight("embeddings", init, (self.input_dim, self.output_dim),
                             _make_rng(self.seed))
        super().build(input_shape)
        if self._initial_weights is not None:
            self.set_weights(self._initial_weights)
            self._initial_weights = None

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.output_dim,)

    def _cast(self, inputs):
        return _as_index(inputs, self.name)

    def _forward(self, x, mask, training):
        idx = _as_index(x, self.name)
        if idx.size and (idx.min() < 0 or idx.max() >= self.input_dim):
            raise ValueError(
                f"Embedding {self.name!r}: indices must lie in [0, {self.input_dim}); got min "
                f"{idx.min()}, max {idx.max()}"
            )
        y = np.take(self.embeddings, idx, axis=0)
        if training:
            self._cache = idx
        self._record_activity(y, training)
        return y, ((idx != 0) if self.mask_zero else None)

    def _backward(self, dy, need_input_grad=True):
        idx = self._cache
        self._cache = None
        act_g = self._activity_grads()
        if act_g is not None:
            dy = dy + act_g[0]
        g = self._grads["embeddings"]
        g[...] = 0
        np.add.at(g, idx.ravel(), dy.reshape(-1, self.output_dim))
        self._add_regularizer_grads()

    def get_config(self):
        cfg = super().get_config()
        cfg.update(input_dim=self.input_dim, output_dim=self.output_dim,
                   embeddings_initializer=_init_config(self.embeddings_initializer),
                   embeddings_regularizer=_reg_config(self.embeddings_regularizer),
                   activity_regularizer=_reg_config(self.activity_regularizer),
                   embeddings_constraint=_constraint_config(self.embeddings_constraint),
                   mask_zero=self.mask_zero, seed=self.seed)
        return cfg


def _as_index(x, name):
    a = np.asarray(x)
    if a.dtype.kind in "iu":
        return a
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise TypeError(f"Embedding {name!r} needs integer indices; got non-integer floats")
        return a.astype(np.int64)
    raise TypeError(f"Embedding {name!r} needs integer indices; got dtype {a.dtype}")


class Activation(Layer):
    """Applies an activation ('linear', 'relu', 'tanh', 'sigmoid', 'softmax') elementwise
    (softmax over the last axis)."""

    def __init__(self, activation: ActivationLike, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.activation = _act.get(activation)

    def _forward(self, x, mask, training):
        a = _act.forward_(self.activation, np.array(x, dtype=self.dtype))
        if training:
            self._cache = a
        return a, mask

    def _backward(self, dy, need_input_grad=True):
        a = self._cache
        self._cache = None
        if not need_input_grad:
            return None
        return _act.backward_(self.activation, a, np.array(dy, dtype=a.dtype))

    def get_config(self):
        cfg = super().get_config()
        cfg["activation"] = self.activation
        return cfg


class RepeatVector(Layer):
    """Repeats a (batch, features) input ``n`` times: (batch, n, features).

    The bridge of LSTM encoder-decoder models (encoder state -> every decoder step).
    """

    supports_masking = False  # as Keras: it neither takes nor makes a mask

    def __init__(self, n: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n = _check_units("n", n)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.n) + tuple(input_shape[1:])

    def _forward(self, x, mask, training):
        if x.ndim != 2:
            raise ValueError(f"RepeatVector {self.name!r} expects 2-D inputs (batch, features); "
                             f"got shape {x.shape}")
        return np.repeat(x[:, None, :], self.n, axis=1), None

    def _backward(self, dy, need_input_grad=True):
        if not need_input_grad:
            return None
        return dy.sum(axis=1)

    def get_config(self):
        cfg = super().get_config()
        cfg["n"] = self.n
        return cfg


class TimeDistributed(Layer):
    """Applies a per-step layer to every time step of (batch, time, ...) inputs.

    cylstm's :class:`Dense`, :class:`Dropout` and :class:`Activation` already act on
    the last axis of inputs of any rank, so this wrapper delegates to them; it
    exists so Keras models written with ``TimeDistributed(Dense(...))`` run
    unchanged (same weights, same ``get_weights`` order).
    """

    _SUPPORTED = ()  # filled below

    _WRAPPER = True

    def __init__(self, layer: Layer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(layer, self._SUPPORTED):
            raise TypeError("TimeDistributed supports Dense, Dropout and Activation layers; got "
                            f"{type(layer).__name__}")
        self.layer = layer
        if kwargs.get("dtype") is not None:  # a policy given to the wrapper is its layer's
            layer._bf16 = self._bf16
        if self._dtype is None and layer._dtype is not None:
            self._dtype = layer._dtype

    @property
    def _computes_bf16(self):
        return self.layer._computes_bf16

    def _set_dtype(self, dtype):
        super()._set_dtype(dtype)
        self.layer._set_dtype(dtype)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) < 3:
            raise ValueError(f"TimeDistributed {self.name!r} expects inputs (batch, time, ...); "
                             f"got input shape {input_shape}")
        self.layer._dtype = self.dtype
        if not self.layer.built:
            self.layer.build(input_shape)
        super().build(input_shape)

    def _param_items(self):
        return self.layer._param_items()

    def _sublayers(self):
        return (self.layer,)

    @property
    def quantization_mode(self):
        """The wrapped layer's (None, or 'int8' after ``quantize('int8')``)."""
        return self.layer.quantization_mode

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def _forward(self, x, mask, training):
        if x.ndim < 3:
            raise ValueError(f"TimeDistributed {self.name!r} expects inputs (batch, time, ...); "
                             f"got shape {x.shape}")
        return self.layer._forward(x, mask, training)

    def _backward(self, dy, need_input_grad=True):
        return self.layer._backward(dy, need_input_grad)

    def get_config(self):
        cfg = super().get_config()
        cfg["layer"] = serialize(self.layer)
        return cfg

    @classmethod
    def from_config(cls, config):
        cfg = dict(config)
        if "batch_shape" in cfg and "batch_input_shape" not in cfg:
            cfg["batch_input_shape"] = cfg.pop("batch_shape")
        from cylstm.layers import deserialize  # breaks a cycle: its registry names our classes

        return cls(deserialize(cfg.pop("layer")), **cfg)


TimeDistributed._SUPPORTED = (Dense, Dropout, Activation)
