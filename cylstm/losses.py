"""Losses with Keras names and semantics, each with its exact gradient.

Every loss is a :class:`Loss` object with

* ``loss(y_true, y_pred, sample_weight=None) -> float`` (Keras' reduction
  ``"sum_over_batch_size"``: the weighted per-sample losses summed, divided by
  their count), and
* ``loss.value_and_grad(y_true, y_pred, sample_weight=None) -> (float, grad)``
  where ``grad = dloss/dy_pred`` has the shape and dtype of ``y_pred``: this is
  what the trainer back-propagates.

The module-level functions (``mean_squared_error``, ``binary_crossentropy``, ...)
return the per-sample losses as arrays, as Keras' functions do.

Shapes follow Keras: ``y_true`` of rank one less than ``y_pred`` gets a trailing
axis when ``y_pred``'s last axis is 1 (and the other way round), so ``y`` of shape
(B,) trains a model with output (B, 1).  Per-sample losses are the mean over the
last axis (mse, mae, huber, binary crossentropy) or the sum over classes
(categorical crossentropies), so a (B, T, C) prediction has (B, T) per-sample
losses.

Probabilities are clipped to ``[1e-7, 1 - 1e-7]`` as Keras does (the gradient is
zero where the clip is active, as TensorFlow's); the ``from_logits=True``
variants are computed in the numerically stable log-sum-exp form instead.
"""
import numbers

import numpy as np

from cylstm import _objects

__all__ = [
    "BinaryCrossentropy",
    "CategoricalCrossentropy",
    "Huber",
    "LogCosh",
    "Loss",
    "LossFunctionWrapper",
    "MeanAbsoluteError",
    "MeanAbsolutePercentageError",
    "MeanSquaredError",
    "MeanSquaredLogarithmicError",
    "SparseCategoricalCrossentropy",
    "binary_crossentropy",
    "categorical_crossentropy",
    "deserialize",
    "get",
    "huber",
    "log_cosh",
    "mae",
    "mape",
    "mean_absolute_error",
    "mean_absolute_percentage_error",
    "mean_squared_error",
    "mean_squared_logarithmic_error",
    "mse",
    "msle",
    "serialize",
    "sparse_categorical_crossentropy",
]

#: Keras' ``backend.epsilon()``: probabilities are clipped to [EPSILON, 1 - EPSILON].
EPSILON = 1e-7

_REDUCTIONS = ("sum_over_batch_size", "sum", "mean_with_sample_weight", "none", None)


# ----------------------------------------------------------------------------- helpers
def _as_pred(y_pred):
    """``y_pred`` as a float array (float32/float64 kept, anything else to float32)."""
    if isinstance(y_pred, (str, bytes)) or y_pred is None:
        raise TypeError(f"y_pred must be a numeric array; got {type(y_pred).__name__}")
    a = np.asarray(y_pred)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"y_pred must be a real numeric array; got dtype {a.dtype}")
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float32)
    if a.ndim == 0:
        raise ValueError("y_pred must have at least 1 dimension; got a scalar")
    if a.size == 0:
        raise ValueError(f"y_pred is empty (shape {a.shape})")
    return a


def _as_true(y_true, dtype):
    if isinstance(y_true, (str, bytes)) or y_true is None:
        raise TypeError(f"y_true must be a numeric array; got {type(y_true).__name__}")
    a = np.asarray(y_true)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"y_true must be a real numeric array; got dtype {a.dtype}")
    return a.astype(dtype, copy=False)


def _match_rank(y_true, y_pred):
    """Keras' ``squeeze_or_expand_to_same_rank`` then a broadcast check.

    Returns ``y_true`` with the shape of ``y_pred`` (broadcast, read-only view).
    """
    shape_t, shape_p = y_true.shape, y_pred.shape
    if shape_t == shape_p:  # the common case, and the cheapest
        return y_true
    if y_true.ndim == y_pred.ndim + 1 and y_true.shape[-1] == 1:
        y_true = y_true.reshape(y_true.shape[:-1])
    elif y_pred.ndim == y_true.ndim + 1 and y_pred.shape[-1] == 1:
        y_true = y_true.reshape(y_true.shape + (1,))
    try:
        if np.broadcast_shapes(y_true.shape, y_pred.shape) != y_pred.shape:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"y_true and y_pred shapes are incompatible: y_true {shape_t}, y_pred {shape_p}"
        ) from None
    return np.broadcast_to(y_true, y_pred.shape)


def _prepare_weights(name, w, loss_shape, dtype):
    """Sample weights/mask broadcast to the per-sample loss shape (left-aligned)."""
    w = np.asarray(w)
    if w.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real numeric array; got dtype {w.dtype}")
    w = w.astype(dtype, copy=False)
    shape0 = w.shape
    # Keras' squeeze_or_expand_to_same_rank: (B, 1) weights for (B,) losses.
    if w.ndim == len(loss_shape) + 1 and w.shape[-1] == 1:
        w = w.reshape(w.shape[:-1])
    # (B,) weights for (B, T) losses weigh whole sequences: align on the left.
    if w.ndim < len(loss_shape):
        w = w.reshape(w.shape + (1,) * (len(loss_shape) - w.ndim))
    try:
        return np.broadcast_to(w, loss_shape)
    except ValueError:
        raise ValueError(
            f"{name} of shape {shape0} cannot be broadcast to the per-sample loss shape "
            f"{tuple(loss_shape)}"
        ) from None


def _validate_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(
            f"reduction must be one of {[r for r in _REDUCTIONS if r]!r} or None; "
            f"got {reduction!r}"
        )
    return "none" if reduction is None else reduction


def _mean_last(a):
    """``np.mean(a, axis=-1)`` without the wrapper overhead (called every batch)."""
    return np.add.reduce(a, axis=-1) / a.dtype.type(a.shape[-1])


def _sigmoid(x):
    # exp of a non-positive number only, so no overflow warnings for large |x|
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)


def _log_softmax(x):
    m = np.max(x, axis=-1, keepdims=True)
    z = x - m
    return z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))


def _check_label_smoothing(ls):
    if isinstance(ls, bool) or not isinstance(ls, numbers.Real):
        raise TypeError(f"label_smoothing must be a float; got {type(ls).__name__}")
    if not 0.0 <= ls <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1]; got {ls}")
    return float(ls)


# ----------------------------------------------------------------------------- base
class Loss:
    """Base class: subclasses implement :meth:`call_and_grad`.

    ``call_and_grad(y_true, y_pred)`` gets arrays of equal shape (``y_true`` already
    matched to ``y_pred``; sparse losses get their raw labels) and returns
    ``(per_sample, local_grad)``: the per-sample losses and, with the shape of
    ``y_pred``, the derivative of *each sample's own* loss with respect to its
    predictions.  Because a sample's loss depends only on its own predictions, the
    reduction's gradient is ``local_grad`` scaled by that sample's weight over the
    divisor.

    Parameters
    ----------
    name : str, optional
    reduction : {"sum_over_batch_size", "sum", "mean_with_sample_weight", "none"}
        As in Keras.  ``"none"`` makes ``__call__`` return the per-sample array;
        :meth:`value_and_grad` needs a scalar reduction.
    """

    _default_name = "loss"

    def __init__(self, name=None, reduction="sum_over_batch_size", dtype=None):
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str; got {type(name).__name__}")
        self.name = name or self._default_name
        self.reduction = _validate_reduction(reduction)
        self.dtype = None if dtype is None else np.dtype(dtype)

    # subclasses ------------------------------------------------------------
    def call_and_grad(self, y_true, y_pred):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement call_and_grad")

    def call(self, y_true, y_pred):
        """Per-sample losses (no reduction)."""
        y_pred = self._pred(y_pred)
        return self.call_and_grad(self._true(y_true, y_pred), y_pred)[0]

    def _mask_from_true(self, y_true):
        """Entries the targets themselves exclude (Keras' ``ignore_class``), or None."""
        return

    def _pred(self, y_pred):
        y_pred = _as_pred(y_pred)
        if self.dtype is not None and y_pred.dtype != self.dtype:
            y_pred = y_pred.astype(self.dtype)
        return y_pred

    def _true(self, y_true, y_pred):
        return _match_rank(_as_true(y_true, y_pred.dtype), y_pred)

    # public ------------------------------------------------------------------
    def _reduce(self, y_true, y_pred, sample_weight, mask, need_grad):
        y_pred = self._pred(y_pred)
        y_true = self._true(y_true, y_pred)
        per, local = self.call_and_grad(y_true, y_pred)
        w = None
        extra_mask = self._mask_from_true(y_true)
        if mask is not None or extra_mask is not None:
            m = None if mask is None else _prepare_weights("mask", mask, per.shape, per.dtype)
            if extra_mask is not None:
                m = extra_mask.astype(per.dtype) if m is None else m * extra_mask
            if self.reduction == "sum_over_batch_size":
                # Keras' apply_mask: rescale so the mean runs over valid entries only
                valid = m.sum()
                m = m * (m.size / valid) if valid > 0 else np.zeros_like(m)
            w = m
        if sample_weight is not None:
            sw = _prepare_weights("sample_weight", sample_weight, per.shape, per.dtype)
            w = sw if w is None else w * sw
        values = per if w is None else per * w
        if self.reduction == "none":
            if need_grad:
                raise ValueError("value_and_grad needs a scalar reduction; got 'none'")
            return values, None
        total = values.sum(dtype=np.float64)
        if self.reduction == "sum":
            divisor = 1.0
        elif self.reduction == "mean_with_sample_weight" and sample_weight is not None:
            divisor = float(np.sum(w, dtype=np.float64))
        else:
            divisor = float(values.size)
        value = total / divisor if divisor != 0 else 0.0
        if not need_grad:
            return float(value), None
        scale = (1.0 / divisor) if divisor != 0 else 0.0
        if w is None:
            grad = local * np.asarray(scale, dtype=local.dtype)
        else:
            wg = (w * scale).astype(local.dtype, copy=False)
            grad = local * wg.reshape(wg.shape + (1,) * (local.ndim - wg.ndim))
        return float(value), np.ascontiguousarray(grad, dtype=y_pred.dtype)

    def __call__(self, y_true, y_pred, sample_weight=None, mask=None):
        """Reduced loss (a float; the per-sample array for ``reduction="none"``).

        Parameters
        ----------
        y_true, y_pred : array_like
        sample_weight : array_like, optional
            Per-sample weights, broadcast to the per-sample loss shape.
        mask : array_like of {0, 1}, optional
            Keras' mask (e.g. from ``Masking``): masked entries count neither in
            the sum nor in the divisor.
        """
        return self._reduce(y_true, y_pred, sample_weight, mask, need_grad=False)[0]

    def value_and_grad(self, y_true, y_pred, sample_weight=None, mask=None):
        """Return ``(loss, dloss/dy_pred)``; the gradient has ``y_pred``'s shape and dtype."""
        return self._reduce(y_true, y_pred, sample_weight, mask, need_grad=True)

    #: The output activation this loss can absorb: ``"sigmoid"`` for binary and
    #: ``"softmax"`` for (sparse) categorical crossentropy on probabilities, else None.
    #: See :meth:`value_and_grad_from_logits`.
    fusable_activation = None

    def value_and_grad_from_logits(self, y_true, logits, sample_weight=None, mask=None):
        """Loss and gradient with respect to the *pre-activation* of the output layer.

        For a model whose last layer applies :attr:`fusable_activation` (sigmoid or
        softmax) this is what TensorFlow-Keras computes in ``fit``: it takes the
        logits from under the activation instead of clipping probabilities, so the
        loss stays exact and the gradient does not vanish on saturated outputs;
        and the activation's backward pass is skipped.  The value and the gradient
        are those of this loss with ``from_logits=True``.
        """
        if self.fusable_activation is None:
            raise TypeError(f"{type(self).__name__} has no activation to fuse with "
                            "(fusable_activation is None)")
        twin = self.__dict__.get("_logits_twin")
        if twin is None:
            cfg = self.get_config()
            cfg["from_logits"] = True
            twin = self._logits_twin = type(self).from_config(cfg)
        return twin.value_and_grad(y_true, logits, sample_weight=sample_weight, mask=mask)

    def get_config(self):
        return {"name": self.name, "reduction": self.reduction}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


# ----------------------------------------------------------------------------- losses
class MeanSquaredError(Loss):
    """``mean((y_true - y_pred) ** 2, axis=-1)`` per sample."""

    _default_name = "mean_squared_error"

    def call_and_grad(self, y_true, y_pred):
        d = y_pred - y_true
        n = y_pred.shape[-1]
        return _mean_last(d * d), d * d.dtype.type(2.0 / n)


class MeanAbsoluteError(Loss):
    """``mean(abs(y_true - y_pred), axis=-1)`` per sample (gradient 0 where equal)."""

    _default_name = "mean_absolute_error"

    def call_and_grad(self, y_true, y_pred):
        d = y_pred - y_true
        n = y_pred.shape[-1]
        return _mean_last(np.abs(d)), np.sign(d) * d.dtype.type(1.0 / n)


class MeanAbsolutePercentageError(Loss):
    """``100 mean(|y_true - y_pred| / max(|y_true|, 1e-7), axis=-1)`` per sample."""

    _default_name = "mean_absolute_percentage_error"

    def call_and_grad(self, y_true, y_pred):
        d = y_pred - y_true
        scale = np.maximum(np.abs(y_true), y_pred.dtype.type(EPSILON))
        n = y_pred.shape[-1]
        per = _mean_last(np.abs(d) / scale) * y_pred.dtype.type(100.0)
        return per, np.sign(d) / scale * y_pred.dtype.type(100.0 / n)


class MeanSquaredLogarithmicError(Loss):
    """``mean((log(max(y_pred, eps) + 1) - log(max(y_true, eps) + 1))^2, axis=-1)``.

    The gradient is zero where ``y_pred < 1e-7`` (the max picks the constant).
    """

    _default_name = "mean_squared_logarithmic_error"

    def call_and_grad(self, y_true, y_pred):
        eps = y_pred.dtype.type(EPSILON)
        one = y_pred.dtype.type(1.0)
        yp = np.maximum(y_pred, eps)
        d = np.log(yp + one) - np.log(np.maximum(y_true, eps) + one)
        n = y_pred.shape[-1]
        g = np.where(y_pred >= eps, d / (yp + one), 0.0).astype(y_pred.dtype)
        return _mean_last(d * d), g * y_pred.dtype.type(2.0 / n)


class LogCosh(Loss):
    """``mean(log(cosh(y_pred - y_true)), axis=-1)``, computed without overflow."""

    _default_name = "log_cosh"

    def call_and_grad(self, y_true, y_pred):
        x = y_pred - y_true
        # log cosh x = |x| + log1p(exp(-2|x|)) - log 2: no overflow for large |x|
        a = np.abs(x)
        per = a + np.log1p(np.exp(-2 * a)) - x.dtype.type(np.log(2.0))
        n = y_pred.shape[-1]
        return _mean_last(per), np.tanh(x) * x.dtype.type(1.0 / n)


class Huber(Loss):
    """Huber loss: ``0.5 e^2`` for ``|e| <= delta``, ``delta (|e| - 0.5 delta)`` beyond."""

    _default_name = "huber_loss"

    def __init__(self, delta=1.0, name=None, reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if isinstance(delta, bool) or not isinstance(delta, numbers.Real):
            raise TypeError(f"delta must be a float; got {type(delta).__name__}")
        if not delta > 0:
            raise ValueError(f"delta must be > 0; got {delta}")
        self.delta = float(delta)

    def call_and_grad(self, y_true, y_pred):
        e = y_pred - y_true
        a = np.abs(e)
        dlt = np.asarray(self.delta, dtype=e.dtype)
        small = a <= dlt
        per = np.where(small, 0.5 * e * e, dlt * a - 0.5 * dlt * dlt)
        n = y_pred.shape[-1]
        g = np.where(small, e, dlt * np.sign(e)) * np.asarray(1.0 / n, dtype=e.dtype)
        return _mean_last(per), g

    def get_config(self):
        return {**super().get_config(), "delta": self.delta}


class BinaryCrossentropy(Loss):
    """Binary crossentropy, mean over the last axis per sample.

    Parameters
    ----------
    from_logits : bool
        ``y_pred`` are logits (stable ``max(x, 0) - x t + log1p(exp(-|x|))``).
    label_smoothing : float
        Targets become ``t (1 - s) + 0.5 s``.
    """

    _default_name = "binary_crossentropy"

    @property
    def fusable_activation(self):
        return None if self.from_logits else "sigmoid"

    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1, name=None,
                 reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits = bool(from_logits)
        self.label_smoothing = _check_label_smoothing(label_smoothing)
        if axis != -1:
            raise ValueError(f"only axis=-1 is supported; got axis={axis!r}")
        self.axis = -1

    def call_and_grad(self, y_true, y_pred):
        t = y_true
        if self.label_smoothing:
            s = self.label_smoothing
            t = t * (1.0 - s) + 0.5 * s
        n = y_pred.shape[-1]
        inv_n = np.asarray(1.0 / n, dtype=y_pred.dtype)
        if self.from_logits:
            x = y_pred
            per = np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
            g = (_sigmoid(x) - t) * inv_n
        else:
            eps = np.asarray(EPSILON, dtype=y_pred.dtype)
            one = np.asarray(1.0, dtype=y_pred.dtype)
            p = np.clip(y_pred, eps, one - eps)
            per = -(t * np.log(p) + (one - t) * np.log(one - p))
            # TensorFlow's clip passes the gradient on [lo, hi] inclusive, zero outside
            inside = (y_pred >= eps) & (y_pred <= one - eps)
            g = np.where(inside, (p - t) / (p * (one - p)), 0.0).astype(y_pred.dtype) * inv_n
        return _mean_last(per), g

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits,
                "label_smoothing": self.label_smoothing, "axis": self.axis}


def _prob_ce_grad(y_pred, g_q):
    """Back through Keras' ``q = y_pred / sum(y_pred)``: dL/dy_j = (g_j - sum_k g_k q_k)/s."""
    s = np.sum(y_pred, axis=-1, keepdims=True)
    q = y_pred / s
    return (g_q - np.sum(g_q * q, axis=-1, keepdims=True)) / s


class CategoricalCrossentropy(Loss):
    """Categorical crossentropy over one-hot (or soft) targets, summed over classes.

    Without logits, as Keras: ``q = y_pred / sum(y_pred)``, clipped to
    ``[1e-7, 1 - 1e-7]``, loss ``-sum(t log q)``.  With ``label_smoothing`` ``s``
    targets become ``t (1 - s) + s / C``.
    """

    _default_name = "categorical_crossentropy"

    @property
    def fusable_activation(self):
        return None if self.from_logits else "softmax"

    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1, name=None,
                 reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits = bool(from_logits)
        self.label_smoothing = _check_label_smoothing(label_smoothing)
        if axis != -1:
            raise ValueError(f"only axis=-1 is supported; got axis={axis!r}")
        self.axis = -1

    def _true(self, y_true, y_pred):
        yt = _as_true(y_true, y_pred.dtype)
        if yt.shape != y_pred.shape:
            raise ValueError(
                f"categorical_crossentropy needs y_true with the shape of y_pred (one-hot); "
                f"got y_true {yt.shape}, y_pred {y_pred.shape} (integer labels: use "
                f"sparse_categorical_crossentropy)"
            )
        return yt

    def call_and_grad(self, y_true, y_pred):
        t = y_true
        C = y_pred.shape[-1]
        if self.label_smoothing:
            s = self.label_smoothing
            t = t * (1.0 - s) + s / C
        if self.from_logits:
            ls = _log_softmax(y_pred)
            per = -np.sum(t * ls, axis=-1)
            g = np.exp(ls) * np.sum(t, axis=-1, keepdims=True) - t
        else:
            eps = np.asarray(EPSILON, dtype=y_pred.dtype)
            q = y_pred / np.sum(y_pred, axis=-1, keepdims=True)
            qc = np.clip(q, eps, 1 - eps)
            per = -np.sum(t * np.log(qc), axis=-1)
            inside = (q >= eps) & (q <= 1 - eps)
            g_q = np.where(inside, -t / qc, 0.0).astype(y_pred.dtype)
            g = _prob_ce_grad(y_pred, g_q)
        return per, g.astype(y_pred.dtype, copy=False)

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits,
                "label_smoothing": self.label_smoothing, "axis": self.axis}


class SparseCategoricalCrossentropy(Loss):
    """Crossentropy with integer class labels.

    ``y_true`` holds class indices of shape ``y_pred.shape[:-1]`` or that shape
    with a trailing 1: (B,) or (B, 1) for (B, C) predictions, (B, T) for (B, T, C).
    ``ignore_class`` labels contribute neither loss nor count (as Keras).
    """

    _default_name = "sparse_categorical_crossentropy"

    @property
    def fusable_activation(self):
        return None if self.from_logits else "softmax"

    def __init__(self, from_logits=False, ignore_class=None, axis=-1, name=None,
                 reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits = bool(from_logits)
        if ignore_class is not None and (
                isinstance(ignore_class, bool) or not isinstance(ignore_class, numbers.Integral)):
            raise TypeError(f"ignore_class must be an int or None; got {ignore_class!r}")
        self.ignore_class = None if ignore_class is None else int(ignore_class)
        if axis != -1:
            raise ValueError(f"only axis=-1 is supported; got axis={axis!r}")
        self.axis = -1

    def _true(self, y_true, y_pred):
        if isinstance(y_true, (str, bytes)) or y_true is None:
            raise TypeError(f"y_true must be an integer array; got {type(y_true).__name__}")
        yt = np.asarray(y_true)
        shape0 = yt.shape
        if yt.dtype.kind not in "biuf":
            raise TypeError(f"y_true must hold integer class labels; got dtype {yt.dtype}")
        if yt.ndim == y_pred.ndim and yt.shape[-1] == 1:
            yt = yt.reshape(yt.shape[:-1])
        if yt.shape != y_pred.shape[:-1]:
            raise ValueError(
                f"sparse_categorical_crossentropy needs labels of shape {y_pred.shape[:-1]} "
                f"(or {y_pred.shape[:-1] + (1,)}) for y_pred {y_pred.shape}; got y_true "
                f"{shape0}"
            )
        if yt.dtype.kind == "f" and (not np.all(np.isfinite(yt))
                                     or np.any(yt != np.round(yt))):
            raise ValueError("y_true must hold integer class labels; got non-integer values")
        labels = yt.astype(np.int64)
        C = y_pred.shape[-1]
        valid = np.ones(labels.shape, dtype=bool)
        if self.ignore_class is not None:
            valid = labels != self.ignore_class
        bad = valid & ((labels < 0) | (labels >= C))
        if np.any(bad):
            raise ValueError(
                f"y_true labels must be in [0, {C}) for {C} classes; got "
                f"{int(labels[bad].ravel()[0])}"
            )
        # ignored entries become -1 so call_and_grad and the mask can tell them apart
        return np.where(valid, labels, -1)

    def _mask_from_true(self, labels):
        return None if self.ignore_class is None else (labels >= 0)

    def call_and_grad(self, labels, y_pred):
        valid = labels >= 0
        idx = np.where(valid, labels, 0)[..., None]
        if self.from_logits:
            ls = _log_softmax(y_pred)
            per = -np.take_along_axis(ls, idx, axis=-1)[..., 0]
            g = np.exp(ls)
            np.put_along_axis(g, idx, np.take_along_axis(g, idx, axis=-1) - 1, axis=-1)
        else:
            eps = np.asarray(EPSILON, dtype=y_pred.dtype)
            s = np.sum(y_pred, axis=-1, keepdims=True)
            q_l = np.take_along_axis(y_pred, idx, axis=-1) / s
            qc = np.clip(q_l, eps, 1 - eps)
            per = -np.log(qc)[..., 0]
            inside = (q_l >= eps) & (q_l <= 1 - eps)
            g_l = np.where(inside, -1.0 / qc, 0.0).astype(y_pred.dtype)  # dL/dq_label
            # dL/dy_j = (g_l [j == label] - g_l q_label) / s
            g = np.broadcast_to(-g_l * q_l / s, y_pred.shape).copy()
            np.put_along_axis(g, idx, np.take_along_axis(g, idx, axis=-1) + g_l / s, axis=-1)
        if not valid.all():
            per = np.where(valid, per, 0.0).astype(y_pred.dtype)
            g = g * valid[..., None]
        return per, g.astype(y_pred.dtype, copy=False)

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits,
                "ignore_class": self.ignore_class, "axis": self.axis}


class LossFunctionWrapper(Loss):
    """A loss from two functions: ``fn(y_true, y_pred) -> per-sample losses`` and
    ``grad_fn(y_true, y_pred) -> d(per-sample loss)/dy_pred`` (``y_pred``'s shape).

    cylstm trains without automatic differentiation, so a custom loss needs its
    gradient; wrap it here (or subclass :class:`Loss` and implement ``call_and_grad``).
    """

    def __init__(self, fn, grad_fn=None, name=None, reduction="sum_over_batch_size",
                 dtype=None, **kwargs):
        if not callable(fn):
            raise TypeError(f"fn must be callable; got {type(fn).__name__}")
        if grad_fn is not None and not callable(grad_fn):
            raise TypeError(f"grad_fn must be callable; got {type(grad_fn).__name__}")
        super().__init__(name=name or getattr(fn, "__name__", "loss"), reduction=reduction,
                         dtype=dtype)
        self.fn, self.grad_fn, self._fn_kwargs = fn, grad_fn, kwargs

    def call_and_grad(self, y_true, y_pred):
        per = np.asarray(self.fn(y_true, y_pred, **self._fn_kwargs), dtype=y_pred.dtype)
        if self.grad_fn is None:
            return per, None
        g = np.asarray(self.grad_fn(y_true, y_pred, **self._fn_kwargs), dtype=y_pred.dtype)
        if g.shape != y_pred.shape:
            raise ValueError(f"grad_fn returned shape {g.shape}; expected {y_pred.shape}")
        return per, g

    def value_and_grad(self, y_true, y_pred, sample_weight=None, mask=None):
        if self.grad_fn is None:
            raise TypeError(
                f"loss {self.name!r} has no gradient: pass grad_fn to LossFunctionWrapper "
                "or subclass cylstm.losses.Loss and implement call_and_grad"
            )
        return super().value_and_grad(y_true, y_pred, sample_weight, mask)


# ----------------------------------------------------------------------------- functions
def mean_squared_error(y_true, y_pred):
    """Per-sample mean squared error, ``mean((y_true - y_pred) ** 2, axis=-1)``."""
    return MeanSquaredError().call(y_true, y_pred)


def mean_absolute_error(y_true, y_pred):
    """Per-sample mean absolute error, ``mean(abs(y_true - y_pred), axis=-1)``."""
    return MeanAbsoluteError().call(y_true, y_pred)


def huber(y_true, y_pred, delta=1.0):
    """Per-sample Huber loss (mean over the last axis)."""
    return Huber(delta=delta).call(y_true, y_pred)


def binary_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1):
    """Per-sample binary crossentropy (mean over the last axis)."""
    return BinaryCrossentropy(from_logits, label_smoothing, axis).call(y_true, y_pred)


def categorical_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1):
    """Per-sample categorical crossentropy (summed over the class axis)."""
    return CategoricalCrossentropy(from_logits, label_smoothing, axis).call(y_true, y_pred)


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False, ignore_class=None,
                                    axis=-1):
    """Per-sample crossentropy with integer labels."""
    return SparseCategoricalCrossentropy(from_logits, ignore_class, axis).call(y_true, y_pred)


def mean_absolute_percentage_error(y_true, y_pred):
    """Per-sample mean absolute percentage error."""
    return MeanAbsolutePercentageError().call(y_true, y_pred)


def mean_squared_logarithmic_error(y_true, y_pred):
    """Per-sample mean squared logarithmic error."""
    return MeanSquaredLogarithmicError().call(y_true, y_pred)


def log_cosh(y_true, y_pred):
    """Per-sample mean of ``log(cosh(y_pred - y_true))``."""
    return LogCosh().call(y_true, y_pred)


mse = MSE = mean_squared_error
mae = MAE = mean_absolute_error
mape = MAPE = mean_absolute_percentage_error
msle = MSLE = mean_squared_logarithmic_error
logcosh = log_cosh

_FUNCTIONS = {
    mean_squared_error: MeanSquaredError,
    mean_absolute_error: MeanAbsoluteError,
    huber: Huber,
    binary_crossentropy: BinaryCrossentropy,
    categorical_crossentropy: CategoricalCrossentropy,
    sparse_categorical_crossentropy: SparseCategoricalCrossentropy,
    mean_absolute_percentage_error: MeanAbsolutePercentageError,
    mean_squared_logarithmic_error: MeanSquaredLogarithmicError,
    log_cosh: LogCosh,
}
_CLASSES = {c.__name__: c for c in (
    MeanSquaredError, MeanAbsoluteError, Huber, BinaryCrossentropy, CategoricalCrossentropy,
    SparseCategoricalCrossentropy, MeanAbsolutePercentageError, MeanSquaredLogarithmicError,
    LogCosh)}
_NAMES = {
    "mse": MeanSquaredError, "mean_squared_error": MeanSquaredError,
    "meansquarederror": MeanSquaredError,
    "mae": MeanAbsoluteError, "mean_absolute_error": MeanAbsoluteError,
    "meanabsoluteerror": MeanAbsoluteError,
    "huber": Huber, "huber_loss": Huber,
    "binary_crossentropy": BinaryCrossentropy, "binarycrossentropy": BinaryCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "categoricalcrossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "sparsecategoricalcrossentropy": SparseCategoricalCrossentropy,
    "mape": MeanAbsolutePercentageError,
    "mean_absolute_percentage_error": MeanAbsolutePercentageError,
    "meanabsolutepercentageerror": MeanAbsolutePercentageError,
    "msle": MeanSquaredLogarithmicError,
    "mean_squared_logarithmic_error": MeanSquaredLogarithmicError,
    "meansquaredlogarithmicerror": MeanSquaredLogarithmicError,
    "log_cosh": LogCosh, "logcosh": LogCosh,
}
#: The names :func:`get` accepts (case-insensitive; class names too).
VALID_NAMES = ("mse", "mean_squared_error", "mae", "mean_absolute_error", "huber",
               "huber_loss", "binary_crossentropy", "categorical_crossentropy",
               "sparse_categorical_crossentropy", "mape", "mean_absolute_percentage_error",
               "msle", "mean_squared_logarithmic_error", "log_cosh")


def _fold(name):
    return name.lower().replace(" ", "")


_REGISTRY = _objects.Registry("loss", Loss, _CLASSES, _NAMES, VALID_NAMES, fold=_fold,
                              builtin_only=True)


def serialize(loss):
    """``{"class_name": ..., "config": ...}`` for a built-in loss (JSON-safe)."""
    return _REGISTRY.serialize(loss)


def deserialize(config):
    """Inverse of :func:`serialize`."""
    return _REGISTRY.deserialize(config)


def get(identifier):
    """Resolve a loss to a :class:`Loss` object.

    Parameters
    ----------
    identifier : str, Loss, function or dict
        A Keras name (``"mse"``, ``"mean_squared_error"``, ``"huber"``,
        ``"binary_crossentropy"``, ..., case-insensitive, class names too), a
        :class:`Loss` (returned as is), one of this module's functions (mapped to
        its class), or a config dict from :func:`serialize`.

    Returns
    -------
    Loss
    """
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, str):
        return _REGISTRY.lookup(identifier)()
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if callable(identifier):
        cls = _FUNCTIONS.get(identifier)
        if cls is not None:
            return cls()
        if hasattr(identifier, "value_and_grad"):
            return identifier
        raise TypeError(
            f"custom loss {getattr(identifier, '__name__', identifier)!r} has no gradient: "
            "wrap it as cylstm.losses.LossFunctionWrapper(fn, grad_fn) or subclass "
            "cylstm.losses.Loss"
        )
    raise TypeError(
        f"loss must be a str, a Loss, a function or a config dict; got "
        f"{type(identifier).__name__}"
    )
