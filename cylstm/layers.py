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
"""
import collections
import numbers
import warnings

import numpy as np

from cylstm import activations as _act
from cylstm import functional as _F
from cylstm._checkpoint import check_every as _check_every
from cylstm.engine import graph as _graph

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

_name_counts = collections.defaultdict(int)


def _unique_name(base):
    n = _name_counts[base]
    _name_counts[base] += 1
    return base if n == 0 else f"{base}_{n}"


def _snake(name):
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i and not name[i - 1].isupper():
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


def _canon_dtype(dtype):
    """np.float32 / np.float64 from a dtype-like, None passes through."""
    if dtype is None:
        return None
    if isinstance(dtype, dict):  # Keras 3 DTypePolicy config
        dtype = dtype.get("config", {}).get("name", dtype.get("name"))
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"dtype must be 'float32' or 'float64'; got {dtype!r}") from e
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be 'float32' or 'float64'; got {dtype!r}")
    return dt


def _check_rate(name, rate):
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0 <= rate < 1:
        raise ValueError(f"{name} must be a float in [0, 1); got {rate!r}")
    return float(rate)


def _check_units(name, units):
    if isinstance(units, bool) or not isinstance(units, numbers.Integral) or units < 1:
        raise ValueError(f"{name} must be a positive integer; got {units!r}")
    return int(units)


def _shape_tuple(name, shape):
    if shape is None:
        return None
    if isinstance(shape, numbers.Integral):
        shape = (shape,)
    try:
        shape = tuple(None if d is None else int(d) for d in shape)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a tuple of ints or None; got {shape!r}") from e
    if any(d is not None and d < 1 for d in shape):
        raise ValueError(f"{name} dimensions must be positive; got {shape}")
    return shape


def _make_rng(seed):
    """A NumPy Generator from ``seed``; None draws the seed from NumPy's global
    RNG, so ``np.random.seed(s)`` makes unseeded layers reproducible."""
    if seed is None:
        seed = int(np.random.randint(0, 2**31 - 1))
    return np.random.default_rng(seed)


def _as_float_input(name, x, dtype):
    """Cast a user array to the compute dtype (C-contiguous), refusing non-numbers."""
    if isinstance(x, (list, tuple)) and len(x) and not np.isscalar(x[0]):
        x = np.asarray(x)
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real numeric array; got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=dtype)


def _initializer(identifier):
    from cylstm import initializers

    return initializers.get(identifier)


def _init_config(identifier):
    """JSON form of an initializer identifier (a name, or a Keras-style dict)."""
    if identifier is None or isinstance(identifier, str):
        return identifier
    if isinstance(identifier, dict):
        return identifier
    get_config = getattr(identifier, "get_config", None)
    if get_config is not None:
        return {"class_name": type(identifier).__name__, "config": get_config()}
    raise TypeError(
        f"initializer {identifier!r} cannot be saved; use a name or a cylstm.initializers class"
    )


def _refuse(name, value):
    """Keras arguments cylstm does not implement must stay at their default."""
    if value is not None:
        raise NotImplementedError(f"{name} is not supported by cylstm; got {value!r}")


def _regularizer(name, identifier):
    """A cylstm regularizer from a Keras identifier; errors name the argument."""
    from cylstm import regularizers

    try:
        return regularizers.get(identifier)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{name}: {e}") from e


def _constraint(name, identifier):
    from cylstm import constraints

    try:
        return constraints.get(identifier)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{name}: {e}") from e


def _reg_config(reg):
    from cylstm import regularizers

    return regularizers.serialize(reg)


def _constraint_config(c):
    from cylstm import constraints

    return constraints.serialize(c)



def assign_weights(items, weights, expects):
    """Write ``weights`` (a list of arrays) into the (owner, attribute) ``items``,
    in place, after checking them all: a bad list changes nothing.  ``expects``
    starts the count mismatch message ("layer 'x' expects 3 weight arrays")."""
    if isinstance(weights, np.ndarray) or not hasattr(weights, "__len__"):
        raise TypeError(f"set_weights expects a list of arrays; got {type(weights).__name__}")
    weights = list(weights)
    if len(weights) != len(items):
        raise ValueError(f"{expects}; got {len(weights)}")
    checked = []
    for (o, n), w in zip(items, weights):
        w = np.asarray(w)
        dst = getattr(o, n)
        if w.dtype.kind not in "biuf":
            raise TypeError(f"weight {o.name}/{n} must be numeric; got dtype {w.dtype}")
        if w.shape != dst.shape:
            raise ValueError(f"weight {o.name}/{n} must have shape {dst.shape}; got {w.shape}")
        checked.append((dst, w))
    for dst, w in checked:
        dst[...] = w

class Layer:
    """Base class: weights, gradients, config and the standalone call.

    Parameters
    ----------
    name : str, optional
        Unique by default (``lstm``, ``lstm_1``, ... as Keras).
    input_shape : tuple, optional
        Shape of one sample (without the batch axis), e.g. ``(None, 10)``.
    batch_input_shape, batch_shape : tuple, optional
        Full input shape with the batch axis.
    dtype : 'float32' (default) or 'float64'
    trainable : bool

    Regularizers and constraints (on the layers that take them): ``layer.losses``
    lists the penalties, as Keras's does (the activity penalties of the last call,
    then one per regularized trainable weight, computed from the current weights);
    training adds them to the loss and their gradients to the weights'; each
    constraint projects its weight after every optimizer step.
    """

    # (weight attribute, regularizer attribute) / (weight attribute, constraint
    # attribute) pairs of the layers that take them
    _REGULARIZED = ()
    _CONSTRAINED = ()
    #: Whether the layer takes a mask and passes one on (Keras 3.15's values per class).
    supports_masking = True
    activity_regularizer = None

    def __init__(self, name=None, input_shape=None, dtype=None, trainable=True,
                 batch_input_shape=None, batch_shape=None, batch_size=None,
                 input_dim=None, **kwargs):
        if kwargs:
            raise TypeError(
                f"{type(self).__name__}() got unexpected keyword argument(s) {sorted(kwargs)}"
            )
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string; got {name!r}")
        self._auto_name = name is None
        self.name = name or _unique_name(_snake(type(self).__name__))
        self._dtype = _canon_dtype(dtype)
        self.trainable = bool(trainable)
        bshape = batch_input_shape if batch_input_shape is not None else batch_shape
        if input_shape is None and input_dim is not None:
            input_shape = (_check_units("input_dim", input_dim),)
        if bshape is not None:
            self._batch_input_shape = _shape_tuple("batch_input_shape", bshape)
        elif input_shape is not None:
            self._batch_input_shape = (batch_size,) + _shape_tuple("input_shape", input_shape)
        else:
            self._batch_input_shape = None
        self.built = False
        self._build_shape = None
        self._grads = {}
        self._cache = None
        self._activity_losses = []
        self._activity_outs = None

    # ---- dtype / shapes -------------------------------------------------------------------
    @property
    def dtype(self):
        """Compute and weight dtype (np.float32 unless set)."""
        return self._dtype if self._dtype is not None else np.dtype(np.float32)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    @property
    def output_shape(self):
        if self._build_shape is None:
            raise AttributeError(f"layer {self.name!r} is not built yet; it has no output_shape")
        return self.compute_output_shape(self._build_shape)

    @property
    def input_shape(self):
        return self._build_shape if self._build_shape is not None else self._batch_input_shape

    def build(self, input_shape):
        """Create the weights for inputs of ``input_shape`` (batch axis included)."""
        self._build_shape = tuple(input_shape)
        self.built = True

    # ---- weights ---------------------------------------------------------------------------
    def _param_items(self):
        """(owner layer, attribute name) of each weight, in get_weights order."""
        return [(self, n) for n in getattr(self, "_wnames", ())]

    @property
    def weights(self):
        return [getattr(o, n) for o, n in self._param_items()]

    @property
    def trainable_weights(self):
        return self.weights if self.trainable else []

    @property
    def non_trainable_weights(self):
        return [] if self.trainable else self.weights

    def get_weights(self):
        """Copies of the weights, in Keras order."""
        return [np.array(getattr(o, n)) for o, n in self._param_items()]

    def set_weights(self, weights):
        """Set the weights from a list of arrays (Keras order and shapes)."""
        items = self._param_items()
        if not self.built:
            raise ValueError(
                f"layer {self.name!r} is not built: give it input_shape= or call it on data "
                "before set_weights"
            )
        names = [n for _, n in items]
        assign_weights(items, weights, f"layer {self.name!r} expects {len(items)} weight "
                                       f"arrays {names}")
        self._weights_changed()

    def _weights_changed(self):
        """Called after the weights change (device copies must be refreshed)."""

    def count_params(self):
        if not self.built:
            raise ValueError(f"layer {self.name!r} is not built; its size is unknown")
        return int(sum(getattr(o, n).size for o, n in self._param_items()))

    def _new_weight(self, attr, initializer, shape, rng):
        w = np.asarray(_initializer(initializer)(tuple(shape), self.dtype, rng), self.dtype)
        if w.shape != tuple(shape):
            raise ValueError(f"initializer for {self.name}/{attr} returned shape {w.shape}; "
                             f"expected {tuple(shape)}")
        setattr(self, attr, np.ascontiguousarray(w))
        self._grads[attr] = np.zeros(shape, self.dtype)

    def _bind(self, w_views, g_views):
        """Re-point the weights (values copied) and gradients into flat-buffer views."""
        for (o, n), wv, gv in zip(self._param_items(), w_views, g_views):
            wv[...] = getattr(o, n)
            setattr(o, n, wv)
            o._grads[n] = gv

    def _set_dtype(self, dtype):
        """Adopt the model's dtype (before build); an explicit different one is an error."""
        if self._dtype is not None and self._dtype != dtype:
            raise ValueError(
                f"layer {self.name!r} has dtype {self._dtype.name} but the model computes in "
                f"{np.dtype(dtype).name}; give all layers the same dtype"
            )
        if self.built and self.dtype != dtype:
            raise ValueError(f"layer {self.name!r} is already built in {self.dtype.name}")
        self._dtype = np.dtype(dtype)

    # ---- regularizers and constraints -------------------------------------------------------
    def _sublayers(self):
        """Layers this one runs inside itself (Bidirectional's two LSTMs, ...)."""
        return ()

    def _own_regularized(self):
        """(weight name, regularizer) of this layer's own regularized weights."""
        names = getattr(self, "_wnames", ())
        out = []
        for w, r in self._REGULARIZED:
            reg = getattr(self, r, None)
            if reg is not None and w in names:
                out.append((w, reg))
        return out

    def _weight_penalties(self):
        """The weight regularizers' values (trainable weights only, as Keras)."""
        if not self.trainable:
            return []
        out = [float(reg(getattr(self, w))) for w, reg in self._own_regularized()]
        for sub in self._sublayers():
            out.extend(sub._weight_penalties())
        return out

    def _all_activity_losses(self):
        out = list(self._activity_losses)
        for sub in self._sublayers():
            out.extend(sub._all_activity_losses())
        return out

    @property
    def losses(self):
        """The layer's penalties (floats): activity ones of the last call, then weight ones."""
        return self._all_activity_losses() + self._weight_penalties()

    def _regularization_loss(self, _weights=True):
        """Sum of :attr:`losses`: what training adds to the loss after a forward."""
        total = 0.0
        for v in self._activity_losses:
            total += v
        weights = _weights and self.trainable
        if weights:
            for w, reg in self._own_regularized():
                total += float(reg(getattr(self, w)))
        for sub in self._sublayers():
            total += sub._regularization_loss(weights)
        return total

    def _add_regularizer_grads(self):
        """Add d penalty / d weight to this layer's own weight gradients (in ``_backward``)."""
        for w, reg in self._own_regularized():
            g = self._grads.get(w)
            if g is not None:
                g += reg.gradient(getattr(self, w)).astype(g.dtype, copy=False)

    def _apply_constraints(self):
        """Project the constrained weights in place (after an optimizer step): the
        weights may be views into a model's flat buffer, so they are never rebound."""
        if not self.trainable:
            return
        names = getattr(self, "_wnames", ())
        for w, c in self._CONSTRAINED:
            fn = getattr(self, c, None)
            if fn is None or w not in names:
                continue
            arr = getattr(self, w)
            new = np.asarray(fn(arr))
            if new.shape != arr.shape:
                raise ValueError(f"constraint {c} of layer {self.name!r} returned shape "
                                 f"{new.shape} for weight {w} of shape {arr.shape}")
            np.copyto(arr, new, casting="unsafe")
        for sub in self._sublayers():
            sub._apply_constraints()

    def _record_activity(self, outputs, training):
        """Keras's activity penalty of this call: ``reg(y) / batch`` per output tensor."""
        reg = self.activity_regularizer
        if reg is None:
            if self._activity_losses:
                self._activity_losses = []
            self._activity_outs = None
            return
        outs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
        vals = []
        for y in outs:
            v = float(reg(y))
            if y.ndim:  # divide_no_nan by the batch size
                v = v / y.shape[0] if y.shape[0] else 0.0
            vals.append(v)
        self._activity_losses = vals
        self._activity_outs = outs if training else None

    def _activity_grads(self):
        """d(activity penalty)/d(output) for each output of the last training forward,
        or None (then consumed: a backward uses them once)."""
        outs, self._activity_outs = self._activity_outs, None
        if outs is None or self.activity_regularizer is None:
            return None
        reg = self.activity_regularizer
        grads = []
        for y in outs:
            g = reg.gradient(y)
            if y.ndim:
                g = g / y.shape[0] if y.shape[0] else np.zeros_like(g)
            grads.append(g.astype(y.dtype, copy=False))
        return grads

    # ---- calls -----------------------------------------------------------------------------
    def _cast(self, inputs):
        return _as_float_input("inputs", inputs, self.dtype)

    def _build_for(self, x):
        """Build from the declared input shape when it fits ``x``, else from ``x``."""
        decl = self._batch_input_shape
        if decl is not None and len(decl) == x.ndim and all(
                d is None or d == s for d, s in zip(decl[1:], x.shape[1:])):
            self.build(decl)
        else:
            self.build((None,) + x.shape[1:])

    def __call__(self, inputs, training=False, mask=None):
        """Apply the layer to a NumPy array and return a NumPy array; on symbolic
        tensors (:func:`Input`), record a node of a functional model instead."""
        if _graph.is_symbolic(inputs):
            return _graph.symbolic_call(self, inputs, training=training, mask=mask)
        x = self._cast(inputs)
        if not self.built:
            self._build_for(x)
        y, _ = self._forward(x, mask, bool(training))
        self._cache = None  # a standalone call is never backpropagated
        self._activity_outs = None
        for sub in self._sublayers():
            sub._cache = None
            sub._activity_outs = None
        return y

    def compute_mask(self, mask):
        return mask

    def _forward(self, x, mask, training):
        raise NotImplementedError

    def _backward(self, dy, need_input_grad=True):
        raise NotImplementedError

    def _reset_state(self):
        pass

    # ---- config ----------------------------------------------------------------------------
    def get_config(self):
        cfg = {"name": self.name, "trainable": self.trainable,
               "dtype": None if self._dtype is None else self._dtype.name}
        if self._batch_input_shape is not None:
            cfg["batch_input_shape"] = list(self._batch_input_shape)
        return cfg

    @classmethod
    def from_config(cls, config):
        cfg = dict(config)
        if "batch_shape" in cfg and "batch_input_shape" not in cfg:
            cfg["batch_input_shape"] = cfg.pop("batch_shape")
        return cls(**cfg)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r} built={self.built}>"


class Input(_graph.KerasTensor):
    """The model's input, as ``keras.Input``: a symbolic tensor.

    Start a functional model with it (``x = Input(shape=(None, 10));
    y = LSTM(8)(x); Model(x, y)``) or a Sequential one
    (``Sequential([Input(shape=(None, 10)), ...])``).

    Parameters
    ----------
    shape : tuple
        Shape of one sample, without the batch axis.
    batch_size : int, optional
    dtype : optional
        A float dtype sets the model's compute dtype; integer dtypes are for
        :class:`Embedding` inputs.
    batch_shape : tuple, optional
        Full shape with the batch axis (instead of ``shape``).
    """

    def __init__(self, shape=None, batch_size=None, dtype=None, sparse=None, batch_shape=None,
                 name=None, tensor=None, optional=False, input_shape=None):
        if sparse:
            raise NotImplementedError("sparse inputs are not supported")
        if tensor is not None:
            raise NotImplementedError("Input(tensor=...) is not supported")
        if shape is None:
            shape = input_shape
        if batch_shape is not None:
            self.batch_shape = _shape_tuple("batch_shape", batch_shape)
        elif shape is not None:
            self.batch_shape = (batch_size,) + _shape_tuple("shape", shape)
        else:
            raise ValueError("Input needs shape= (one sample's shape) or batch_shape=")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string; got {name!r}")
        if dtype is not None:
            dt = np.dtype(dtype)
            if dt.kind not in "iuf":
                raise ValueError(f"Input dtype must be a float or integer dtype; got {dtype!r}")
            dtype = dt
        super().__init__(self.batch_shape, dtype, name or _unique_name("input_layer"))

    def get_config(self):
        return {"batch_shape": list(self.batch_shape), "name": self.name,
                "dtype": None if self.dtype is None else self.dtype.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"<Input shape={self.batch_shape} name={self.name!r}>"


InputLayer = Input


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
    """

    _REGULARIZED = (("kernel", "kernel_regularizer"), ("bias", "bias_regularizer"))
    _CONSTRAINED = (("kernel", "kernel_constraint"), ("bias", "bias_constraint"))

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None,
                 activity_regularizer=None, kernel_constraint=None, bias_constraint=None,
                 lora_rank=None, lora_alpha=None, quantization_config=None, seed=None,
                 **kwargs):
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
        z = x2 @ K
        if self.use_bias:
            z += self.bias
        if self._logits_out:
            self._logits = z.reshape(x.shape[:-1] + (self.units,))
            z = z.copy()
        a = _act.forward_(self.activation, z)
        if training:
            self._cache = (x2, a)
        if x.ndim != 2:
            a = a.reshape(x.shape[:-1] + (self.units,))
        self._record_activity(a, training)
        return a, mask

    def _backward(self, dy, need_input_grad=True):
        x2, a = self._cache
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
        np.matmul(x2.T, dz, out=self._grads["kernel"])
        if self.use_bias:
            np.sum(dz, axis=0, out=self._grads["bias"])
        self._add_regularizer_grads()
        if not need_input_grad:
            return None
        dx = dz @ self.kernel.T
        return dx.reshape(dy.shape[:-1] + (self.kernel.shape[0],))

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

    def __init__(self, rate, noise_shape=None, seed=None, **kwargs):
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

    def __init__(self, mask_value=0.0, **kwargs):
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

    def __init__(self, input_dim, output_dim, embeddings_initializer="uniform",
                 embeddings_regularizer=None, embeddings_constraint=None, mask_zero=False,
                 weights=None, input_length=None, lora_rank=None, lora_alpha=None,
                 quantization_config=None, activity_regularizer=None, seed=None, **kwargs):
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


class LSTM(Layer):
    """Long Short-Term Memory layer (Keras signature and semantics).

    Inputs are (batch, time, features); the compiled kernels run the whole
    sequence (forward and BPTT) without Python per time step.

    Parameters
    ----------
    units : int
    activation, recurrent_activation : only 'tanh' and 'sigmoid' (what the kernels compute)
    use_bias : bool
    kernel_initializer, recurrent_initializer, bias_initializer : initializers
    unit_forget_bias : bool
        The forget-gate block of the bias starts at exactly 1 (Keras default; the
        other blocks come from ``bias_initializer``, as Keras's
        ``concatenate([init(units), ones(units), init(2 * units)])``).
    kernel_regularizer, recurrent_regularizer, bias_regularizer, activity_regularizer
        Optional :mod:`cylstm.regularizers` names or objects (see :class:`Layer`).
    kernel_constraint, recurrent_constraint, bias_constraint
        Optional :mod:`cylstm.constraints` names or callables.
    dropout : float
        Fraction of the inputs dropped during ``fit``; one mask per sequence,
        shared across time steps (Keras; when ``recurrent_dropout`` is also set,
        Keras draws one mask per gate, cylstm one for all gates).
    recurrent_dropout : float
        Fraction of ``h_prev`` dropped before the recurrent product during
        ``fit``; one mask per sequence.  Keras draws a separate mask per gate
        here; cylstm draws one for all four gates.
    return_sequences : bool
        Return the output at every step (batch, time, units), else the last.
    return_state : bool
        Standalone calls return ``[output, h, c]``.
    go_backwards : bool
        Process the sequence in reverse and return the reversed sequence (Keras).
    stateful : bool
        The final state of batch k is the initial state of batch k + 1 (same
        batch size) until :meth:`reset_states`.
    seed : int, optional
        Seeds the weight initialization and the dropout masks.
    zero_output_for_mask : bool
        With a mask, masked steps output zeros instead of the previous output
        (Keras's RNN option; Bidirectional sets it for sequence outputs).
    use_cudnn : 'auto', True or False
        Kept (attribute and config) so Keras code and files carry it; cylstm runs
        its own kernels on the CPU and on CUDA either way.
    checkpoint_every : None, int >= 1 or "auto"
        Training in bounded memory (not a Keras option): keep the state only every
        this many steps and recompute each segment in the backward, for the same
        gradients at the cost of one more forward pass (see
        :func:`cylstm.functional.lstm_forward`).  "auto" does so, with about
        sqrt(T) steps per segment, only when a batch's full cache would exceed
        :func:`cylstm.get_memory_budget`.  On a CUDA device the layer trains with
        full BPTT and warns once.

    Notes
    -----
    Masks (from :class:`Masking` or ``Embedding(mask_zero=True)``) follow Keras:
    a masked step leaves h and c unchanged and outputs the previous output
    (zeros before the first valid step).  Right-padded batches map directly
    onto the kernels' sequence lengths; any other mask pattern (left padding,
    holes) is handled by compacting each sequence's valid steps first, which
    costs a gather and a scatter.
    """

    _REGULARIZED = (("kernel", "kernel_regularizer"),
                    ("recurrent_kernel", "recurrent_regularizer"), ("bias", "bias_regularizer"))
    _CONSTRAINED = (("kernel", "kernel_constraint"),
                    ("recurrent_kernel", "recurrent_constraint"), ("bias", "bias_constraint"))

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", unit_forget_bias=True, kernel_regularizer=None,
                 recurrent_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 kernel_constraint=None, recurrent_constraint=None, bias_constraint=None,
                 dropout=0.0, recurrent_dropout=0.0, return_sequences=False, return_state=False,
                 go_backwards=False, stateful=False, unroll=False, seed=None,
                 zero_output_for_mask=False, use_cudnn="auto", time_major=False,
                 implementation=2, checkpoint_every=None, **kwargs):
        super().__init__(**kwargs)
        self.checkpoint_every = _check_every(checkpoint_every)
        self.kernel_regularizer = _regularizer("kernel_regularizer", kernel_regularizer)
        self.recurrent_regularizer = _regularizer("recurrent_regularizer",
                                                  recurrent_regularizer)
        self.bias_regularizer = _regularizer("bias_regularizer", bias_regularizer)
        self.activity_regularizer = _regularizer("activity_regularizer", activity_regularizer)
        self.kernel_constraint = _constraint("kernel_constraint", kernel_constraint)
        self.recurrent_constraint = _constraint("recurrent_constraint", recurrent_constraint)
        self.bias_constraint = _constraint("bias_constraint", bias_constraint)
        if use_cudnn not in ("auto", True, False) or isinstance(use_cudnn, int) and \
                not isinstance(use_cudnn, bool):
            raise ValueError(f"use_cudnn must be 'auto', True or False; got {use_cudnn!r}")
        self.use_cudnn = use_cudnn
        if implementation not in (1, 2) or isinstance(implementation, bool):
            raise ValueError(f"implementation must be 1 or 2; got {implementation!r}")
        self.implementation = int(implementation)  # both run cylstm's fused kernels
        if time_major:
            raise NotImplementedError("time_major=True is not supported; inputs are batch-first")
        self.units = _check_units("units", units)
        act, ract = _act.get(activation), _act.get(recurrent_activation)
        if act != "tanh" or ract != "sigmoid":
            raise ValueError(
                "cylstm's LSTM kernels compute activation='tanh' and "
                f"recurrent_activation='sigmoid'; got activation={act!r}, "
                f"recurrent_activation={ract!r}"
            )
        self.activation, self.recurrent_activation = act, ract
        self.use_bias = bool(use_bias)
        self.kernel_initializer = kernel_initializer
        self.recurrent_initializer = recurrent_initializer
        self.bias_initializer = bias_initializer
        self.unit_forget_bias = bool(unit_forget_bias)
        self.dropout = _check_rate("dropout", dropout)
        self.recurrent_dropout = _check_rate("recurrent_dropout", recurrent_dropout)
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.go_backwards = bool(go_backwards)
        self.stateful = bool(stateful)
        self.unroll = bool(unroll)  # accepted for compatibility; the kernels never unroll
        self.seed = seed
        self.zero_output_for_mask = bool(zero_output_for_mask)
        self.kernel = self.recurrent_kernel = self.bias = None
        self.input_dim = None
        self._states = None
        self._rng = None
        self._last_state = None
        self._device = None  # None: CPU; ('cuda', index) after model.to('cuda')
        self._weights_version = None
        self._warned_checkpoint = False
        # fit(tbptt=k) attaches a carrier: (h, c) pass from one window to the next
        # (cylstm.engine.tbptt), as ``stateful`` passes them from batch to batch
        self._carry = None

    def _ops(self):
        """(functional module, extra kwargs) for this layer's device."""
        if self._device is None:
            return _F, {}
        from cylstm.cuda import functional as gpu

        return gpu, {"device": self._device[1], "weights_version": self._weights_version}

    def _weights_changed(self):
        if self._device is not None:
            from cylstm.cuda.functional import new_weights_version

            self._weights_version = new_weights_version()

    # ---- build / weights -----------------------------------------------------------------
    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != 3:
            raise ValueError(
                f"LSTM {self.name!r} expects 3-D inputs (batch, time, features); got input "
                f"shape {input_shape}"
            )
        if input_shape[-1] is None:
            raise ValueError(f"LSTM {self.name!r} needs a known feature count; got input shape "
                             f"{input_shape}")
        if self.stateful and self._batch_input_shape is not None \
                and self._batch_input_shape[0] is None:
            pass  # Keras 3 also accepts an unknown batch size; it is fixed by the first batch
        I, H = input_shape[-1], self.units
        self.input_dim = I
        rng = _make_rng(self.seed)
        self._new_weight("kernel", self.kernel_initializer, (I, 4 * H), rng)
        self._new_weight("recurrent_kernel", self.recurrent_initializer, (H, 4 * H), rng)
        if self.use_bias:
            if self.unit_forget_bias:
                # Keras: concatenate([init(units), ones(units), init(2 * units)]); the forget
                # block is exactly 1, whatever the initializer (not 1 + its value)
                init = _initializer(self.bias_initializer)
                parts = [np.asarray(init((H,), self.dtype, rng), self.dtype),
                         np.ones(H, self.dtype),
                         np.asarray(init((2 * H,), self.dtype, rng), self.dtype)]
                if parts[0].shape != (H,) or parts[2].shape != (2 * H,):
                    raise ValueError(f"bias_initializer of {self.name!r} returned shapes "
                                     f"{parts[0].shape}, {parts[2].shape}; expected "
                                     f"{(H,)}, {(2 * H,)}")
                self.bias = np.ascontiguousarray(np.concatenate(parts))
                self._grads["bias"] = np.zeros(4 * H, self.dtype)
            else:
                self._new_weight("bias", self.bias_initializer, (4 * H,), rng)
            self._wnames = ("kernel", "recurrent_kernel", "bias")
        else:
            # the kernels always add a bias; a constant zero one keeps them branch-free
            self.bias = np.zeros(4 * H, self.dtype)
            self._wnames = ("kernel", "recurrent_kernel")
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        B, T = input_shape[0], input_shape[1]
        out = (B, T, self.units) if self.return_sequences else (B, self.units)
        if self.return_state:
            return [out, (B, self.units), (B, self.units)]
        return out

    @property
    def states(self):
        """[h, c] of a stateful layer (None before its first batch)."""
        return [None, None] if self._states is None else list(self._states)

    def reset_states(self, states=None):
        """Zero the carried state of a stateful layer, or set it to ``states=[h, c]``."""
        if not self.stateful:
            raise AttributeError(f"layer {self.name!r} is not stateful")
        if states is None:
            if self._states is not None:
                for s in self._states:
                    s[...] = 0
            return
        h, c = self._check_state(states, None)
        self._states = [h.copy(), c.copy()]

    reset_state = reset_states  # Keras 3 spelling

    def _reset_state(self):
        if self.stateful:
            self.reset_states()

    def _check_state(self, state, B):
        if not isinstance(state, (list, tuple)) or len(state) != 2:
            raise TypeError(f"LSTM {self.name!r}: initial_state must be a list [h, c]; "
                            f"got {type(state).__name__}")
        out = []
        for nm, s in zip(("h", "c"), state):
            s = _as_float_input(f"initial_state {nm}", s, self.dtype)
            want = (s.shape[0] if B is None else B, self.units)
            if s.ndim != 2 or s.shape != want:
                raise ValueError(f"LSTM {self.name!r}: initial_state {nm} must have shape "
                                 f"{want}; got {s.shape}")
            out.append(s)
        return out

    # ---- standalone call -----------------------------------------------------------------
    def __call__(self, inputs, initial_state=None, training=False, mask=None):
        """Run the layer on (batch, time, features) inputs.

        Returns the output, or ``[output, h, c]`` with ``return_state=True``.  On
        symbolic tensors, records a node of a functional model (``initial_state``
        may then be symbolic ``[h, c]``).
        """
        if _graph.is_symbolic(inputs, initial_state):
            return _graph.symbolic_call(self, inputs, initial_state=initial_state,
                                        training=training, mask=mask)
        x = self._cast(inputs)
        if x.ndim != 3:
            raise ValueError(f"LSTM {self.name!r} expects 3-D inputs (batch, time, features); "
                             f"got shape {x.shape}")
        if not self.built:
            self._build_for(x)
        if initial_state is not None:
            initial_state = self._check_state(initial_state, x.shape[0])
        y, _ = self._forward(x, mask, bool(training), initial_state=initial_state)
        self._cache = None
        self._activity_outs = None
        if self.return_state:
            h, c = self._last_state
            return [y, h, c]
        return y

    # ---- training-time forward / backward ------------------------------------------------
    def _forward(self, x, mask, training, initial_state=None, flip=False):
        """Forward over whole sequences.  ``flip`` returns the Keras-order output
        reversed in time (Bidirectional uses it to get the backward layer's
        outputs in time order without two copies)."""
        if x.ndim != 3:
            raise ValueError(f"LSTM {self.name!r} expects 3-D inputs (batch, time, features); "
                             f"got shape {x.shape}")
        B, _T, I = x.shape
        if I != self.input_dim:
            raise ValueError(f"LSTM {self.name!r} was built for {self.input_dim} features; got "
                             f"inputs of shape {x.shape}")
        state = initial_state
        if state is None and self.stateful and self._states is not None:
            if self._states[0].shape[0] != B:
                raise ValueError(
                    f"stateful LSTM {self.name!r} carries state for batch size "
                    f"{self._states[0].shape[0]}; got a batch of {B} (use a fixed batch size, "
                    "or call reset_states() after changing it)")
            state = self._states
        carry = self._carry if training else None
        if state is None and carry is not None:
            state = carry.state  # None at the start of a batch: zeros
        dmask = rmask = None
        kw = {}
        if training and (self.dropout or self.recurrent_dropout):
            if self._rng is None:
                self._rng = _make_rng(None if self.seed is None else self.seed + 7919)
            if self.dropout:
                keep = 1.0 - self.dropout
                dmask = (self._rng.random((B, I)) < keep).astype(x.dtype)
                dmask *= 1.0 / keep
                x = x * dmask[:, None, :]
            if self.recurrent_dropout:
                keep = 1.0 - self.recurrent_dropout
                rmask = (self._rng.random((B, self.units)) < keep).astype(x.dtype)
                rmask *= 1.0 / keep
                kw["recurrent_mask"] = rmask
        if mask is not None:
            mask = np.asarray(mask)
        if mask is not None and mask.shape == (B, x.shape[1]) and mask.all():
            mask_in, mask = mask, None  # nothing masked: the plain path is exact
        else:
            mask_in = mask
        F, extra = self._ops()
        if training and self.checkpoint_every is not None:
            extra = self._checkpoint_kw(extra)
        if mask is None:
            r = F.lstm_forward(x, self.kernel, self.recurrent_kernel, self.bias,
                               initial_state=state, go_backwards=self.go_backwards,
                               return_sequences=self.return_sequences, training=training,
                               **kw, **extra)
            y, h, c = r.output, r.h, r.c
            if self.return_sequences and (self.go_backwards != flip):
                y = y[:, ::-1]
            info = None
        else:
            y, h, c, r, info = self._masked_forward(x, mask, state, training, kw, flip,
                                                    F, extra)
        self._last_state = (h, c)
        if self.stateful:
            self._states = [h.copy(), c.copy()]
        if carry is not None:
            carry.state = (h.copy(), c.copy())  # copies: the gradient stops at the window edge
        if training:
            self._cache = (r.cache, dmask, kw, info, flip, F)
        if self.activity_regularizer is not None or self._activity_losses:
            self._record_activity([y, h, c] if self.return_state else y, training)
        return y, (mask_in if self.return_sequences else None)

    def _checkpoint_kw(self, extra):
        """The forward's extra arguments with ``checkpoint_every`` (CPU), or as they
        are with a one-time warning (the CUDA backend keeps the full cache)."""
        if self._device is None:
            return dict(extra, checkpoint_every=self.checkpoint_every)
        if not self._warned_checkpoint:
            self._warned_checkpoint = True
            warnings.warn(
                f"LSTM {self.name!r}: checkpoint_every={self.checkpoint_every!r} is not "
                "implemented by the CUDA backend; this layer trains with full BPTT on the GPU "
                "(it keeps 7 * units floats per sample and step)", RuntimeWarning, stacklevel=3)
        return extra

    def _masked_forward(self, x, mask, state, training, kw, flip, F=_F, extra=None):
        B, T, _ = x.shape
        H = self.units
        mask = np.asarray(mask)
        if mask.shape != (B, T):
            raise ValueError(f"LSTM {self.name!r}: mask must have shape (batch, time) = "
                             f"{(B, T)}; got {mask.shape}")
        mask = mask.astype(bool, copy=False)
        if self.go_backwards:
            L = mask.sum(axis=1)
            if np.array_equal(mask, np.arange(T) < L[:, None]):
                return self._reversed_right_padded(x, L, state, training, kw, flip, F, extra)
            # Keras: reverse inputs and mask, then run forward over them
            x, mask = x[:, ::-1], mask[:, ::-1]
        L = mask.sum(axis=1)
        prefix = bool(np.array_equal(mask, np.arange(T) < L[:, None]))
        if prefix:
            return self._right_padded(x, mask, L, state, training, kw, flip, F, extra)
        order = None
        if not prefix:
            # valid steps first, in their order: the kernels then see right padding
            order = np.argsort(~mask, axis=1, kind="stable")
            x = np.take_along_axis(x, order[:, :, None], axis=1)
        empty = L == 0
        any_empty = bool(empty.any())
        r = F.lstm_forward(x, self.kernel, self.recurrent_kernel, self.bias,
                           initial_state=state, lengths=np.maximum(L, 1),
                           return_sequences=self.return_sequences, training=training,
                           **kw, **(extra or {}))
        h, c = r.h, r.c
        if any_empty:
            # an all-masked sequence keeps its initial state
            if state is None:
                h[empty] = 0
                c[empty] = 0
            else:
                h[empty] = state[0][empty]
                c[empty] = state[1][empty]
        cnt = None
        if self.return_sequences:
            # output at step t = output after the cnt[t]-th valid step (0: zeros)
            cnt = np.cumsum(mask, axis=1)
            yaug = np.concatenate([np.zeros((B, 1, H), r.output.dtype), r.output], axis=1)
            y = np.take_along_axis(yaug, cnt[:, :, None], axis=1)
            if self.zero_output_for_mask:
                y *= mask[:, :, None]
            if flip:
                y = y[:, ::-1]
        else:
            y = h.copy()
            if any_empty:
                y[empty] = 0
        info = ("gather", mask, order, cnt, empty if any_empty else None)
        return y, h, c, r, info

    def _right_padded(self, x, mask, L, state, training, kw, flip, F, extra):
        """Forward run over right-padded sequences: the kernels' lengths give Keras's
        masked semantics; padded steps then repeat the last output (or stay zero with
        ``zero_output_for_mask``)."""
        empty = L == 0
        any_empty = bool(empty.any())
        r = F.lstm_forward(x, self.kernel, self.recurrent_kernel, self.bias,
                           initial_state=state, lengths=np.maximum(L, 1),
                           return_sequences=self.return_sequences, training=training,
                           **kw, **(extra or {}))
        h, c = r.h, r.c
        if any_empty:
            h[empty] = 0 if state is None else state[0][empty]
            c[empty] = 0 if state is None else state[1][empty]
        pad = None
        if self.return_sequences:
            y = r.output  # zero past each length
            if any_empty:
                y[empty] = 0
            if not self.zero_output_for_mask and not mask.all():
                pad = ~mask
                last = h if not any_empty else np.where(empty[:, None], 0, h)
                y = np.where(pad[:, :, None], last[:, None, :], y)
            if flip:
                y = y[:, ::-1]
        else:
            y = h.copy()
            if any_empty:
                y[empty] = 0
        return y, h, c, r, ("padded", pad, empty if any_empty else None)

    def _reversed_right_padded(self, x, L, state, training, kw, flip, F, extra):
        """go_backwards over right-padded sequences: the kernels' reverse mode with
        lengths runs each sequence from its last valid step back to step 0, which is
        Keras's reversed masked run; its outputs (time order, zero past each length)
        reversed are Keras's output sequence, in both output-mask modes."""
        empty = L == 0
        any_empty = bool(empty.any())
        r = F.lstm_forward(x, self.kernel, self.recurrent_kernel, self.bias,
                           initial_state=state, lengths=np.maximum(L, 1), go_backwards=True,
                           return_sequences=self.return_sequences, training=training,
                           **kw, **(extra or {}))
        h, c = r.h, r.c
        if any_empty:
            h[empty] = 0 if state is None else state[0][empty]
            c[empty] = 0 if state is None else state[1][empty]
        if self.return_sequences:
            y = r.output
            if any_empty:
                y[empty] = 0
            if not flip:
                y = y[:, ::-1]
        else:
            y = h.copy()
            if any_empty:
                y[empty] = 0
        return y, h, c, r, ("reversed", empty if any_empty else None)

    def _backward(self, dy, need_input_grad=True, grad_h=None, grad_c=None):
        # the forward's cache carries the recurrent mask (kw): the backward takes none
        fcache, dmask, _kw, info, flip, F = self._cache
        gr = self._grads
        act_g = self._activity_grads()
        if act_g is not None:  # the activity penalty's gradient joins the incoming ones
            dy = dy + act_g[0]
            if self.return_state:
                grad_h = act_g[1] if grad_h is None else grad_h + act_g[1]
                grad_c = act_g[2] if grad_c is None else grad_c + act_g[2]
        gh_in, gc_in = grad_h, grad_c
        # the weight gradients go straight into the model's gradient buffer: the CPU
        # kernels write them there, the GPU copies them back there (host memory in use,
        # not fresh arrays: at I = H = 1024 that copy took 15 ms into new arrays)
        out_kw = {"out": (gr["kernel"], gr["recurrent_kernel"],
                          gr["bias"] if self.use_bias else None)}
        self._cache = None
        need_dx = need_input_grad
        if info is None:
            if self.return_sequences and (self.go_backwards != flip):
                dy = dy[:, ::-1]
            g = F.lstm_backward(fcache, grad_output=dy, grad_h=grad_h, grad_c=grad_c,
                                need_input_grad=need_dx, **out_kw)
            dx = g.dx
        elif info[0] in ("reversed", "padded"):
            empty = info[-1]
            if info[0] == "reversed":
                if self.return_sequences and not flip:
                    dy = dy[:, ::-1]
            elif self.return_sequences:
                if flip:
                    dy = dy[:, ::-1]
                pad = info[1]
                if pad is not None:
                    # padded steps repeat the final h: their gradient joins dL/dh_T
                    carried = np.einsum("bth,bt->bh", dy, pad.astype(dy.dtype))
                    grad_h = carried if grad_h is None else grad_h + carried
            if empty is not None:
                dy = np.array(dy)
                dy[empty] = 0
                grad_h = None if grad_h is None else np.where(empty[:, None], 0, grad_h)
                grad_c = None if grad_c is None else np.where(empty[:, None], 0, grad_c)
            g = F.lstm_backward(fcache, grad_output=dy, grad_h=grad_h, grad_c=grad_c,
                                need_input_grad=need_dx, **out_kw)
            dx = g.dx
            if dx is not None and info[0] == "padded" and self.go_backwards:
                dx = dx[:, ::-1]  # the forward ran over the reversed inputs
        else:
            _, mask, order, cnt, empty = info
            B, T = mask.shape
            if self.return_sequences:
                if flip:
                    dy = dy[:, ::-1]
                if self.zero_output_for_mask:
                    dy = dy * mask[:, :, None]
                dyaug = np.zeros((B, T + 1, dy.shape[2]), dy.dtype)
                np.add.at(dyaug, (np.arange(B)[:, None], cnt), dy)
                dy = dyaug[:, 1:]
            elif empty is not None:
                dy = np.array(dy)
                dy[empty] = 0
            if empty is not None:
                if grad_h is not None:
                    grad_h = np.array(grad_h)
                    grad_h[empty] = 0
                if grad_c is not None:
                    grad_c = np.array(grad_c)
                    grad_c[empty] = 0
            g = F.lstm_backward(fcache, grad_output=dy, grad_h=grad_h, grad_c=grad_c,
                                need_input_grad=need_dx, **out_kw)
            dx = g.dx
            if dx is not None:
                if order is not None:
                    dxo = np.empty_like(dx)
                    np.put_along_axis(dxo, order[:, :, None], dx, axis=1)
                    dx = dxo
                if self.go_backwards:
                    dx = dx[:, ::-1]
        if dx is not None and dmask is not None:
            dx *= dmask[:, None, :]
        # dL/d initial state (a functional model's symbolic initial_state takes it);
        # an all-masked sequence passes its initial state straight through
        dh0, dc0 = g.dh0, g.dc0
        empty = info[-1] if info is not None else None
        if empty is not None and dh0 is not None:
            dh0, dc0 = np.array(dh0), np.array(dc0)
            dh0[empty] = 0 if gh_in is None else gh_in[empty]
            dc0[empty] = 0 if gc_in is None else gc_in[empty]
        self._state_grads = (dh0, dc0)
        self._add_regularizer_grads()
        return dx

    _OBJECT_ARGS = (
        ("kernel_initializer", _init_config), ("recurrent_initializer", _init_config),
        ("bias_initializer", _init_config), ("kernel_regularizer", _reg_config),
        ("recurrent_regularizer", _reg_config), ("bias_regularizer", _reg_config),
        ("activity_regularizer", _reg_config), ("kernel_constraint", _constraint_config),
        ("recurrent_constraint", _constraint_config), ("bias_constraint", _constraint_config))

    def get_config(self):
        return self._config(live=False)

    def _config(self, live):
        """The config; ``live=True`` keeps the initializer / regularizer / constraint
        objects themselves (an in-memory copy needs no JSON form of a custom one)."""
        cfg = super().get_config()
        cfg.update(
            units=self.units, activation=self.activation,
            recurrent_activation=self.recurrent_activation, use_bias=self.use_bias,
            unit_forget_bias=self.unit_forget_bias, use_cudnn=self.use_cudnn,
            dropout=self.dropout,
            recurrent_dropout=self.recurrent_dropout, return_sequences=self.return_sequences,
            return_state=self.return_state, go_backwards=self.go_backwards,
            stateful=self.stateful, unroll=self.unroll, seed=self.seed,
            zero_output_for_mask=self.zero_output_for_mask)
        for k, ser in self._OBJECT_ARGS:
            v = getattr(self, k)
            cfg[k] = v if live else ser(v)
        if self.checkpoint_every is not None:  # (not a Keras key: only when set)
            cfg["checkpoint_every"] = self.checkpoint_every
        return cfg


_MERGE_MODES = ("concat", "sum", "mul", "ave", None)


class Bidirectional(Layer):
    """Runs an LSTM forward and a copy of it backward, then merges the outputs.

    Parameters
    ----------
    layer : LSTM
        The forward layer's configuration (a fresh copy named ``forward_<name>``
        is built, as Keras does).
    merge_mode : 'concat' (default), 'sum', 'mul', 'ave' or None
        None returns ``[forward_output, backward_output]`` (standalone calls only).
    backward_layer : LSTM, optional
        Otherwise a copy of ``layer`` with ``go_backwards`` flipped.

    ``get_weights()`` is the forward layer's weights then the backward's.
    With ``return_sequences`` the backward outputs are put back in time order.
    """

    def __init__(self, layer, merge_mode="concat", weights=None, backward_layer=None,
                 activity_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(layer, LSTM):
            raise TypeError(f"Bidirectional wraps an LSTM layer; got {type(layer).__name__}")
        if merge_mode not in _MERGE_MODES:
            raise ValueError(f"merge_mode must be one of {list(_MERGE_MODES)}; got "
                             f"{merge_mode!r}")
        self.merge_mode = merge_mode
        self.activity_regularizer = _regularizer("activity_regularizer", activity_regularizer)
        # copies keep the regularizer / constraint / initializer objects of the layer
        fcfg = layer._config(live=True)
        fcfg.pop("batch_input_shape", None)
        base = layer.name.removeprefix("forward_")
        fcfg["name"] = "forward_" + base
        self.forward_layer = LSTM.from_config(fcfg)
        if backward_layer is None:
            bcfg = dict(fcfg)
            bcfg["name"] = "backward_" + base
            bcfg["go_backwards"] = not layer.go_backwards
            if bcfg.get("seed") is not None:
                bcfg["seed"] = bcfg["seed"] + 1  # independent dropout masks
            self.backward_layer = LSTM.from_config(bcfg)
        else:
            if not isinstance(backward_layer, LSTM):
                raise TypeError("backward_layer must be an LSTM; got "
                                f"{type(backward_layer).__name__}")
            for attr in ("return_sequences", "return_state", "stateful"):
                if getattr(backward_layer, attr) != getattr(layer, attr):
                    raise ValueError(f"forward and backward layers must agree on {attr}; got "
                                     f"{getattr(layer, attr)} and "
                                     f"{getattr(backward_layer, attr)}")
            if backward_layer.go_backwards == layer.go_backwards:
                raise ValueError("backward_layer.go_backwards must be the opposite of "
                                 "layer.go_backwards")
            bcfg = backward_layer._config(live=True)
            bcfg.pop("batch_input_shape", None)
            self.backward_layer = LSTM.from_config(bcfg)
        self.return_sequences = layer.return_sequences
        self.return_state = layer.return_state
        self.stateful = layer.stateful
        for sub in (self.forward_layer, self.backward_layer):
            # Keras: sequence outputs of a bidirectional RNN are zero at masked steps
            sub.zero_output_for_mask = self.return_sequences
            sub._dtype = self._dtype if self._dtype is not None else sub._dtype
        if self._dtype is None and layer._dtype is not None:
            self._dtype = layer._dtype
        self._initial_weights = weights

    def _set_dtype(self, dtype):
        super()._set_dtype(dtype)
        self.forward_layer._dtype = self.backward_layer._dtype = np.dtype(dtype)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        for sub in (self.forward_layer, self.backward_layer):
            sub._dtype = self.dtype
            sub.build(input_shape)
        super().build(input_shape)
        if self._initial_weights is not None:
            self.set_weights(self._initial_weights)
            self._initial_weights = None

    def _param_items(self):
        return self.forward_layer._param_items() + self.backward_layer._param_items()

    def _weights_changed(self):
        self.forward_layer._weights_changed()
        self.backward_layer._weights_changed()

    def compute_output_shape(self, input_shape):
        f = self.forward_layer.compute_output_shape(input_shape)
        b = self.backward_layer.compute_output_shape(input_shape)
        fo, bo = (f[0], b[0]) if self.return_state else (f, b)
        if self.merge_mode == "concat":
            out = tuple(fo[:-1]) + (fo[-1] + bo[-1],)
        elif self.merge_mode is None:
            out = [fo, bo]
        else:
            out = fo
        if self.return_state:
            states = [f[1], f[2], b[1], b[2]]
            return [out] + states if self.merge_mode is not None else out + states
        return out

    def _sublayers(self):
        return (self.forward_layer, self.backward_layer)

    @property
    def states(self):
        """[h_f, c_f, h_b, c_b] of a stateful layer (None before its first batch)."""
        f, b = self.forward_layer._states, self.backward_layer._states
        return None if f is None or b is None else list(f) + list(b)

    def reset_states(self, states=None):
        """Zero both directions' carried state, or set it to ``[h_f, c_f, h_b, c_b]``."""
        if not self.stateful:
            raise AttributeError(f"layer {self.name!r} is not stateful")
        if states is not None:
            if not isinstance(states, (list, tuple)) or len(states) != 4:
                raise TypeError(f"Bidirectional {self.name!r}: states must be [h_f, c_f, h_b, "
                                f"c_b]; got {type(states).__name__}")
            self.forward_layer.reset_states(states[:2])
            self.backward_layer.reset_states(states[2:])
            return
        self.forward_layer.reset_states()
        self.backward_layer.reset_states()

    reset_state = reset_states  # Keras 3 spelling

    def _reset_state(self):
        if self.stateful:
            self.reset_states()

    def __call__(self, inputs, initial_state=None, training=False, mask=None):
        """Run both directions; ``initial_state`` is [h_f, c_f, h_b, c_b] (symbolic
        tensors record a node of a functional model)."""
        if _graph.is_symbolic(inputs, initial_state):
            return _graph.symbolic_call(self, inputs, initial_state=initial_state,
                                        training=training, mask=mask)
        x = self._cast(inputs)
        if x.ndim != 3:
            raise ValueError(f"Bidirectional {self.name!r} expects 3-D inputs (batch, time, "
                             f"features); got shape {x.shape}")
        if not self.built:
            self._build_for(x)
        fs = bs = None
        if initial_state is not None:
            if not isinstance(initial_state, (list, tuple)) or len(initial_state) != 4:
                raise TypeError("Bidirectional initial_state must be [h_f, c_f, h_b, c_b]")
            fs = self.forward_layer._check_state(initial_state[:2], x.shape[0])
            bs = self.backward_layer._check_state(initial_state[2:], x.shape[0])
        y, _ = self._forward(x, mask, bool(training), fs, bs)
        self._cache = None
        self._activity_outs = None
        for sub in self._sublayers():
            sub._cache = None
            sub._activity_outs = None
        if self.return_state:
            hf, cf = self.forward_layer._last_state
            hb, cb = self.backward_layer._last_state
            return ([y] if self.merge_mode is not None else list(y)) + [hf, cf, hb, cb]
        return y

    def _forward(self, x, mask, training, fstate=None, bstate=None):
        fl, bl = self.forward_layer, self.backward_layer
        if x.ndim != 3:
            raise ValueError(f"Bidirectional {self.name!r} expects 3-D inputs (batch, time, "
                             f"features); got shape {x.shape}")
        yf, _ = fl._forward(x, mask, training, initial_state=fstate)
        # the backward layer's Keras-order output is reversed in time: flip it back
        yb, _ = bl._forward(x, mask, training, initial_state=bstate,
                            flip=self.return_sequences)
        if training:
            self._cache = (yf, yb) if self.merge_mode == "mul" else None
        m = self.merge_mode
        if m == "concat":
            y = np.concatenate([yf, yb], axis=-1)
        elif m == "sum":
            y = yf + yb
        elif m == "ave":
            y = (yf + yb) * 0.5
        elif m == "mul":
            y = yf * yb
        else:
            y = [yf, yb]
        if self.activity_regularizer is not None or self._activity_losses:
            outs = [y] if m is not None else list(y)
            if self.return_state:
                outs += [*fl._last_state, *bl._last_state]
            self._record_activity(outs, training)
        return y, (mask if self.return_sequences else None)

    def _backward(self, dy, need_input_grad=True, grad_states=None):
        """``grad_states``: optional [dh_f, dc_f, dh_b, dc_b] (entries may be None)."""
        m = self.merge_mode
        gs = list(grad_states) if grad_states is not None else [None] * 4
        act_g = self._activity_grads()
        if act_g is not None and m is not None:
            dy = dy + act_g[0]
            if self.return_state:
                gs = [g if s is None else s + g for s, g in zip(gs, act_g[1:])]
        if m == "concat":
            Hf = self.forward_layer.units
            dyf, dyb = dy[..., :Hf], dy[..., Hf:]
        elif m == "sum":
            dyf = dyb = dy
        elif m == "ave":
            dyf = dyb = dy * 0.5
        elif m == "mul":
            yf, yb = self._cache
            dyf, dyb = dy * yb, dy * yf
        else:
            raise ValueError("Bidirectional with merge_mode=None cannot be trained in a "
                             "Sequential model (its output is a list)")
        self._cache = None
        dxf = self.forward_layer._backward(dyf, need_input_grad, grad_h=gs[0], grad_c=gs[1])
        dxb = self.backward_layer._backward(dyb, need_input_grad, grad_h=gs[2], grad_c=gs[3])
        if not need_input_grad:
            return None
        dxf += dxb
        return dxf

    def get_config(self):
        cfg = super().get_config()
        cfg.update(
            layer={"class_name": "LSTM", "config": self.forward_layer.get_config()},
            backward_layer={"class_name": "LSTM", "config": self.backward_layer.get_config()},
            merge_mode=self.merge_mode,
            activity_regularizer=_reg_config(self.activity_regularizer))
        return cfg

    @classmethod
    def from_config(cls, config):
        cfg = dict(config)
        if "batch_shape" in cfg and "batch_input_shape" not in cfg:
            cfg["batch_input_shape"] = cfg.pop("batch_shape")
        layer = deserialize(cfg.pop("layer"))
        back = cfg.pop("backward_layer", None)
        if back is not None:
            back = deserialize(back)
        obj = cls(layer, backward_layer=back, **cfg)
        # keep the saved sub-layer names
        obj.forward_layer.name = layer.name
        if back is not None:
            obj.backward_layer.name = back.name
        return obj


class Activation(Layer):
    """Applies an activation ('linear', 'relu', 'tanh', 'sigmoid', 'softmax') elementwise
    (softmax over the last axis)."""

    def __init__(self, activation, **kwargs):
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

    def __init__(self, n, **kwargs):
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

    def __init__(self, layer, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(layer, self._SUPPORTED):
            raise TypeError("TimeDistributed supports Dense, Dropout and Activation layers; got "
                            f"{type(layer).__name__}")
        self.layer = layer
        if self._dtype is None and layer._dtype is not None:
            self._dtype = layer._dtype

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
        return cls(deserialize(cfg.pop("layer")), **cfg)


TimeDistributed._SUPPORTED = (Dense, Dropout, Activation)

# merge and reshaping layers live in their own modules; Keras has them in keras.layers
from cylstm.merging import (
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
from cylstm.reshaping import Flatten, Reshape

_REGISTRY = {c.__name__: c for c in (LSTM, Dense, Bidirectional, Dropout, Masking, Embedding,
                                     Activation, RepeatVector, TimeDistributed, Concatenate,
                                     Add, Subtract, Multiply, Average, Maximum, Minimum,
                                     Flatten, Reshape)}
_REGISTRY["InputLayer"] = Input
_MODEL_CLASSES = ("Functional", "Model", "Sequential")


def serialize(layer):
    """``{'class_name': ..., 'config': ...}`` of a layer or a nested model (JSON-serializable)."""
    if isinstance(layer, Input):
        name = "InputLayer"
    else:
        name = getattr(layer, "_config_class", type(layer).__name__)
    return {"class_name": name, "config": layer.get_config()}


def deserialize(config):
    """Build a layer from :func:`serialize`'s output.  Only cylstm's own layer
    classes can be named, so an untrusted config never runs code."""
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(f"a layer config must be a dict with 'class_name'; got {config!r}")
    if config["class_name"] in _MODEL_CLASSES:
        from cylstm.engine.model import _deserialize

        return _deserialize(config)
    cls = _REGISTRY.get(config["class_name"])
    if cls is None:
        raise ValueError(f"unknown layer class {config['class_name']!r}; cylstm has "
                         f"{sorted(_REGISTRY)}")
    return cls.from_config(config.get("config", {}))


get = deserialize
