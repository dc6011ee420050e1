"""What every layer shares: the :class:`Layer` base class (weights, gradients,
config, the standalone call), the symbolic :class:`Input`, and the argument checks
and name counters of the layer constructors."""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from cylstm import constraints, initializers, mixed_precision, regularizers
from cylstm._typing import DTypeLike, ShapeLike
from cylstm.engine import graph as _graph


def _unique_name(base):
    """``base``, then ``base_1``, ``base_2``, ...: Keras's default names, per process."""
    # the counters live in the package, so that resetting cylstm.layers._name_counts
    # acts as a fresh process
    from cylstm import layers  # breaks a cycle: the package imports this module

    counts = layers._name_counts
    n = counts[base]
    counts[base] += 1
    return base if n == 0 else f"{base}_{n}"


def _snake(name):
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i and not name[i - 1].isupper():
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


#: The modes of ``Model.quantize`` / ``Layer.quantize`` (Keras 3's names).
QUANTIZATION_MODES = ("int8",)


def _check_quantization_mode(mode):
    if not isinstance(mode, str) or mode not in QUANTIZATION_MODES:
        raise ValueError(f"Invalid quantization mode: cylstm supports {QUANTIZATION_MODES}; "
                         f"got mode={mode!r}")


def quantizable_layers(layer):
    """The layers inside ``layer`` (itself included) whose weights ``quantize`` rounds:
    Dense and LSTM, also inside Bidirectional and TimeDistributed."""
    out = [layer] if layer._QUANTIZED_WEIGHTS else []
    for sub in layer._sublayers():
        out.extend(quantizable_layers(sub))
    return out


def quantize_layers(layers, mode):
    """Quantize the Dense / LSTM ``layers`` that are not yet, all or none: every value
    is rounded (and a non-finite weight refused) before anything is written."""
    todo = [lay for lay in layers if lay.quantization_mode is None]
    writes = []
    for layer in todo:
        for n in layer._QUANTIZED_WEIGHTS:
            w = getattr(layer, n)
            writes.append((w, _int8_values(w, f"layer {layer.name!r}: cannot quantize {n}")))
    for w, v in writes:
        w[...] = v  # in place: the weights may be views into a model's flat buffer
    for layer in todo:
        layer.quantization_mode = mode
        # the int8 model computes as the int8 runner does, on float32 activations
        # (a mixed_bfloat16 layer would round its q * scale weights to bf16)
        layer._bf16 = False
        sealed_version(layer)


# Quantized layers keep their weights read-only ("sealed"), so that the int8 kernel
# may take its packed int8 copy without reading them again at every call (at batch 1
# that compare would cost about as much as the int8 products: cylstm/_packcache.py).
# Every write that cylstm makes goes through write_weight, which forgets the version;
# an edit in place by the user is a ValueError from NumPy ("assignment destination is
# read-only"), unless they set ``flags.writeable`` back first, which the next call
# sees, as it sees new array objects (_bind).
def sealed_version(layer):
    """Seal ``layer``'s weights (read-only) and return the weights version they have
    had since they were last sealed: a new one after any write or rebinding."""
    from cylstm.functional import new_weights_version  # breaks a cycle: functional, layers

    arrays = [getattr(o, n) for o, n in layer._param_items()]
    if layer._sealed is None or any(a.flags.writeable for a in arrays):
        for a in arrays:
            a.flags.writeable = False
        layer._sealed = new_weights_version()
    return layer._sealed


def write_weight(owner, dst, value):
    """``dst[...] = value`` for a weight of ``owner``, sealed or not: a sealed weight is
    written, sealed again, and its version forgotten (the next call packs anew)."""
    if dst.flags.writeable:
        dst[...] = value
        return
    dst.flags.writeable = True
    try:
        dst[...] = value
    finally:
        dst.flags.writeable = False
        owner._sealed = None


def _parse_policy(dtype):
    """(variable dtype, bfloat16 products) of a non-None ``dtype=``: a policy name
    (:data:`cylstm.mixed_precision.POLICY_NAMES`), a DTypePolicy, a Keras 3 policy
    config dict, or a NumPy float32 / float64 dtype-like."""
    if isinstance(dtype, (str, dict, mixed_precision.DTypePolicy)):
        if isinstance(dtype, str) and dtype not in mixed_precision.POLICY_NAMES:
            try:  # other NumPy spellings of the two float dtypes ('f4', 'double', ...)
                dt = np.dtype(dtype)
            except TypeError:
                dt = None
            if dt in (np.float32, np.float64):
                return dt, False
        try:
            policy = mixed_precision.get(dtype)
        except (TypeError, ValueError) as e:
            raise type(e)(f"dtype: {e}") from None
        return np.dtype(policy.variable_dtype), policy.compute_dtype == "bfloat16"
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"dtype must be a dtype policy name "
                        f"({', '.join(mixed_precision.POLICY_NAMES)}), a DTypePolicy or "
                        f"np.float32 / np.float64; got {dtype!r}") from e
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be 'float32', 'float64' or 'mixed_bfloat16'; got "
                         f"{dtype!r}")
    return dt, False


def _canon_dtype(dtype):
    """The variable dtype (np.float32 / np.float64) of a dtype-like or a dtype policy
    (see :func:`_parse_policy`); None passes through."""
    if dtype is None:
        return None
    return _parse_policy(dtype)[0]


def _canon_policy(dtype, wrapper=False):
    """A layer's ``(variable dtype or None, bfloat16 products)`` from its ``dtype=``.

    None takes the global policy (:func:`cylstm.mixed_precision.global_policy`, at
    construction, as Keras); under the default 'float32' the variable dtype stays
    unset (None: the layer takes its model's dtype).  A ``wrapper`` (Bidirectional,
    TimeDistributed) without ``dtype=`` takes its wrapped layer's policy instead.
    """
    if dtype is None:
        policy = mixed_precision.global_policy()
        if wrapper or policy.name == "float32":
            return None, False
        dtype = policy
    return _parse_policy(dtype)


def _variable_dtype_label(layer):
    """A layer's variable dtype for messages: 'float32 (mixed_bfloat16)' under that
    policy (a nested model has no policy)."""
    name = np.dtype(layer._dtype).name
    return f"{name} (mixed_bfloat16)" if getattr(layer, "_computes_bf16", False) else name


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
    try:
        return regularizers.get(identifier)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{name}: {e}") from e


def _constraint(name, identifier):
    try:
        return constraints.get(identifier)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{name}: {e}") from e


def _reg_config(reg):
    return regularizers.serialize(reg)


def _constraint_config(c):
    return constraints.serialize(c)



def _int8_values(w, what):
    """``q * scale`` of ``w`` rounded to int8 (cylstm.quantization)."""
    from cylstm.quantization import dequantize_int8, quantize_int8  # (a leaf module)

    try:
        return dequantize_int8(*quantize_int8(np.asarray(w, np.float32)))
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None


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
        if getattr(o, "quantization_mode", None) is not None and n in o._QUANTIZED_WEIGHTS:
            # a quantized layer stays int8 (its own int8 values come back bit for bit);
            # rounded here, so that a refused (non-finite) weight changes nothing
            w = _int8_values(w, f"weight {o.name}/{n} of the quantized layer {o.name!r}")
        checked.append((o, dst, w))
    for o, dst, w in checked:
        write_weight(o, dst, w)


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
    dtype : None, a policy name ('float32', 'float64', 'mixed_bfloat16'), a
        :class:`cylstm.mixed_precision.DTypePolicy` or its Keras 3 config dict
        None takes the global policy (:func:`cylstm.mixed_precision.global_policy`);
        under the default, 'float32', the layer takes its model's dtype.
        ``layer.dtype`` is the variable dtype (a NumPy dtype); ``dtype_policy``,
        ``compute_dtype`` and ``variable_dtype`` as Keras 3's.
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
    #: The weights that ``quantize("int8")`` rounds (Dense: kernel; LSTM: kernel and
    #: recurrent_kernel); empty for layers that cannot be quantized.
    _QUANTIZED_WEIGHTS = ()
    #: None, or "int8" after ``quantize("int8")`` (on Dense and LSTM layers).
    quantization_mode = None
    #: The weights version of a quantized layer's sealed weights (sealed_version).
    _sealed = None
    #: Whether the layer takes a mask and passes one on (Keras 3.15's values per class).
    supports_masking = True
    activity_regularizer = None
    #: Wrappers (Bidirectional, TimeDistributed) take their wrapped layer's policy when
    #: made without ``dtype=``, not the global one.
    _WRAPPER = False
    _bf16 = False

    def __init__(self, name: str | None = None, input_shape: ShapeLike | None = None,
                 dtype: DTypeLike = None, trainable: bool = True,
                 batch_input_shape: ShapeLike | None = None,
                 batch_shape: ShapeLike | None = None, batch_size: int | None = None,
                 input_dim: int | None = None, **kwargs: Any) -> None:
        if kwargs:
            raise TypeError(
                f"{type(self).__name__}() got unexpected keyword argument(s) {sorted(kwargs)}"
            )
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string; got {name!r}")
        self._auto_name = name is None
        self.name = name or _unique_name(_snake(type(self).__name__))
        # the variable dtype (None: the model's) and whether the products run on
        # bfloat16 operands (the mixed_bfloat16 policy, cylstm.mixed_precision)
        self._dtype, self._bf16 = _canon_policy(dtype, self._WRAPPER)
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
        """The variable (weight) dtype, np.float32 unless set; also the compute
        dtype except under 'mixed_bfloat16' (see :attr:`dtype_policy`)."""
        return self._dtype if self._dtype is not None else np.dtype(np.float32)

    @property
    def _computes_bf16(self):
        """Whether the layer's products run on bfloat16 operands (wrappers: their
        wrapped layers')."""
        return self._bf16

    @property
    def dtype_policy(self):
        """The layer's :class:`cylstm.mixed_precision.DTypePolicy` (Keras 3)."""
        return mixed_precision.DTypePolicy(
            "mixed_bfloat16" if self._computes_bf16 else self.dtype.name)

    @property
    def compute_dtype(self):
        """'float32', 'float64' or 'bfloat16' (the products' operands under
        'mixed_bfloat16'; sums, states and outputs stay float32)."""
        return self.dtype_policy.compute_dtype

    @property
    def variable_dtype(self):
        """'float32' or 'float64': the dtype of the weights."""
        return self.dtype.name

    def _dtype_config(self):
        """``get_config()["dtype"]``: None (unset), a name, or under mixed_bfloat16 the
        Keras 3 policy config."""
        if self._computes_bf16:
            return mixed_precision.serialize(self.dtype_policy)
        return None if self._dtype is None else self._dtype.name

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
        if self.quantization_mode is not None:
            # a quantized layer made from its config: its fresh weights are int8 too
            self._snap_quantized()

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

    # ---- int8 quantization -------------------------------------------------------------------
    def quantize(self, mode):
        """Round the weights to int8 for inference, as Keras 3's ``layer.quantize``.

        See :meth:`cylstm.Model.quantize`; this does the same for one layer (a
        Dense, an LSTM, or a Bidirectional / TimeDistributed around them).
        Quantizing a quantized layer again changes nothing.

        Raises
        ------
        ValueError
            ``mode`` is not 'int8', or the layer is not built.
        NotImplementedError
            The layer has no weights that can be quantized.
        """
        _check_quantization_mode(mode)
        targets = quantizable_layers(self)
        if not targets:
            raise NotImplementedError(
                f"layer {self.name!r} ({type(self).__name__}) cannot be quantized; quantize() "
                "rounds the weights of Dense and LSTM layers (also inside Bidirectional and "
                "TimeDistributed)")
        if not self.built:
            raise ValueError(f"cannot quantize a layer that is not built: layer {self.name!r} "
                             f"({type(self).__name__}) is not built yet")
        quantize_layers(targets, mode)
        self._weights_changed()

    def _snap_quantized(self):
        """Replace each quantized weight, in place (it may be a view into a model's flat
        buffer), by its int8 value ``q * scale``.  A no-op, bit for bit, on weights that
        already are such values: quantize_int8 of ``q * scale`` gives back q and scale."""
        if self.quantization_mode is None or not self.built:
            return
        for n in self._QUANTIZED_WEIGHTS:
            w = getattr(self, n)
            write_weight(self, w, _int8_values(w, f"layer {self.name!r}: cannot quantize {n}"))
        sealed_version(self)

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
            what = ("policy mixed_bfloat16 (float32 variables)" if self._computes_bf16
                    else f"dtype {self._dtype.name}")
            raise ValueError(
                f"layer {self.name!r} has {what} but the model computes in "
                f"{np.dtype(dtype).name}; give all layers the same variable dtype"
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
        cfg = {"name": self.name, "trainable": self.trainable, "dtype": self._dtype_config()}
        if self._batch_input_shape is not None:
            cfg["batch_input_shape"] = list(self._batch_input_shape)
        if self._QUANTIZED_WEIGHTS and self.quantization_mode is not None:
            # (only when quantized: the configs of float layers stay as they were)
            cfg["quantization_mode"] = self.quantization_mode
        return cfg

    @classmethod
    def from_config(cls, config):
        cfg = dict(config)
        if "batch_shape" in cfg and "batch_input_shape" not in cfg:
            cfg["batch_input_shape"] = cfg.pop("batch_shape")
        mode = None
        if cls._QUANTIZED_WEIGHTS:  # elsewhere the key stays, and the constructor refuses it
            mode = cfg.pop("quantization_mode", None)
            if mode is not None:
                _check_quantization_mode(mode)
        layer = cls(**cfg)
        if mode is not None:
            layer.quantization_mode = mode
            layer._bf16 = False  # (as quantize() leaves it)
        return layer

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

    def __init__(self, shape: ShapeLike | None = None, batch_size: int | None = None,
                 dtype: DTypeLike = None, sparse: bool | None = None,
                 batch_shape: ShapeLike | None = None, name: str | None = None,
                 tensor: None = None, optional: bool = False,
                 input_shape: ShapeLike | None = None) -> None:
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


def serialize(layer):
    """``{'class_name': ..., 'config': ...}`` of a layer or a nested model (JSON-serializable)."""
    if isinstance(layer, Input):
        name = "InputLayer"
    else:
        name = getattr(layer, "_config_class", type(layer).__name__)
    return {"class_name": name, "config": layer.get_config()}
