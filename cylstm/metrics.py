"""Metrics for ``compile(metrics=[...])`` with Keras names and definitions.

A metric object has a ``name`` (the key it gets in the training logs: the string
you passed, as Keras 3 does, so ``metrics=["mae"]`` logs ``"mae"``) and

* ``metric(y_true, y_pred, sample_weight=None) -> float``: the value on one batch
  (the weighted mean of the per-sample values).  Note: Keras' ``Metric.__call__``
  also accumulates; here the call is stateless, and
* ``update_state`` / ``result`` / ``reset_state``: the accumulating interface,
  exact across batches of different sizes (and for ``RootMeanSquaredError``,
  whose mean of per-batch values would not be).

``"accuracy"`` (or ``"acc"``) picks binary, sparse categorical or categorical
accuracy as Keras does: from the loss when it says (binary/sparse/categorical
crossentropy), otherwise from the shapes (``y_pred``'s last axis 1: binary;
labels of lower rank or with a last axis of 1: sparse; else categorical).
``"crossentropy"``/``"ce"`` resolve the same way.

The module-level functions (``binary_accuracy``, ``mean_absolute_error``, ...)
return per-sample values, as Keras' do.
"""
import numbers

import numpy as np

from cylstm import _objects
from cylstm import losses as _losses

__all__ = [
    "Accuracy",
    "BinaryAccuracy",
    "BinaryCrossentropy",
    "CategoricalAccuracy",
    "CategoricalCrossentropy",
    "MeanAbsoluteError",
    "MeanAbsolutePercentageError",
    "MeanMetricWrapper",
    "MeanSquaredError",
    "MeanSquaredLogarithmicError",
    "Metric",
    "RootMeanSquaredError",
    "SparseCategoricalAccuracy",
    "SparseCategoricalCrossentropy",
    "SparseTopKCategoricalAccuracy",
    "TopKCategoricalAccuracy",
    "accuracy",
    "binary_accuracy",
    "categorical_accuracy",
    "get",
    "mean_absolute_error",
    "mean_absolute_percentage_error",
    "mean_squared_error",
    "mean_squared_logarithmic_error",
    "sparse_categorical_accuracy",
    "sparse_top_k_categorical_accuracy",
    "top_k_categorical_accuracy",
]

_EPS = 1e-7


# ----------------------------------------------------------------------------- helpers
def _arr(name, a):
    if type(a) is np.ndarray and a.dtype.kind in "fiub" and a.ndim:  # fast path, per batch
        return a
    if a is None or isinstance(a, (str, bytes)):
        raise TypeError(f"{name} must be a numeric array; got {type(a).__name__}")
    a = np.asarray(a)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real numeric array; got dtype {a.dtype}")
    if a.ndim == 0:
        raise ValueError(f"{name} must have at least 1 dimension; got a scalar")
    return a


def _same_rank(y_true, y_pred):
    """Keras' squeeze_or_expand_to_same_rank, then a broadcast check."""
    st, sp = y_true.shape, y_pred.shape
    if st == sp:  # the common case, and the cheapest
        return y_true, y_pred
    if y_true.ndim == y_pred.ndim + 1 and y_true.shape[-1] == 1:
        y_true = y_true.reshape(y_true.shape[:-1])
    elif y_pred.ndim == y_true.ndim + 1 and y_pred.shape[-1] == 1:
        y_true = y_true.reshape(y_true.shape + (1,))
    try:
        np.broadcast_shapes(y_true.shape, y_pred.shape)
    except ValueError:
        raise ValueError(
            f"y_true and y_pred shapes are incompatible: y_true {st}, y_pred {sp}"
        ) from None
    return y_true, y_pred


def _sparse_labels(y_true, y_pred):
    """Labels with the shape of ``y_pred.shape[:-1]`` (a trailing 1 squeezed)."""
    st = y_true.shape
    if y_true.ndim == y_pred.ndim and y_true.shape[-1] == 1:
        y_true = y_true.reshape(y_true.shape[:-1])
    if y_true.shape != y_pred.shape[:-1]:
        raise ValueError(
            f"sparse labels must have shape {y_pred.shape[:-1]} (or with a trailing 1) for "
            f"y_pred {y_pred.shape}; got y_true {st}"
        )
    return y_true


def _mean_last(a):
    """``np.mean(a, axis=-1)`` without the wrapper overhead (called every batch)."""
    return np.add.reduce(a, axis=-1) / a.shape[-1]


# ----------------------------------------------------------------------------- functions
def binary_accuracy(y_true, y_pred, threshold=0.5):
    """Per-sample share of ``(y_pred > threshold) == y_true`` over the last axis."""
    yt, yp = _same_rank(_arr("y_true", y_true), _arr("y_pred", y_pred))
    hit = (yp > threshold).astype(np.float64) == yt
    return _mean_last(hit)


def categorical_accuracy(y_true, y_pred):
    """1.0 where ``argmax(y_true) == argmax(y_pred)`` (one-hot targets)."""
    yt, yp = _arr("y_true", y_true), _arr("y_pred", y_pred)
    if yt.shape != yp.shape:
        raise ValueError(
            f"categorical_accuracy needs one-hot y_true with the shape of y_pred; got "
            f"y_true {yt.shape}, y_pred {yp.shape} (integer labels: use "
            "sparse_categorical_accuracy)"
        )
    return (np.argmax(yt, axis=-1) == np.argmax(yp, axis=-1)).astype(np.float64)


def sparse_categorical_accuracy(y_true, y_pred):
    """1.0 where the integer label equals ``argmax(y_pred)``."""
    yp = _arr("y_pred", y_pred)
    yt = _sparse_labels(_arr("y_true", y_true), yp)
    return (yt == np.argmax(yp, axis=-1)).astype(np.float64)


def _in_top_k(labels, y_pred, k):
    k = min(int(k), y_pred.shape[-1])
    target = np.take_along_axis(y_pred, labels[..., None].astype(np.int64).clip(
        0, y_pred.shape[-1] - 1), axis=-1)
    # in the top k when fewer than k classes score strictly higher (ties count as in)
    higher = np.sum(y_pred > target, axis=-1)
    valid = (labels >= 0) & (labels < y_pred.shape[-1])
    return ((higher < k) & valid).astype(np.float64)


def top_k_categorical_accuracy(y_true, y_pred, k=5):
    """1.0 where the one-hot target is among the ``k`` highest predictions."""
    yt, yp = _arr("y_true", y_true), _arr("y_pred", y_pred)
    if yt.shape != yp.shape:
        raise ValueError(
            f"top_k_categorical_accuracy needs y_true with the shape of y_pred; got "
            f"y_true {yt.shape}, y_pred {yp.shape}"
        )
    return _in_top_k(np.argmax(yt, axis=-1), yp, k)


def sparse_top_k_categorical_accuracy(y_true, y_pred, k=5):
    """1.0 where the integer label is among the ``k`` highest predictions."""
    yp = _arr("y_pred", y_pred)
    return _in_top_k(_sparse_labels(_arr("y_true", y_true), yp), yp, k)


def mean_squared_error(y_true, y_pred):
    """Per-sample ``mean((y_true - y_pred) ** 2, axis=-1)``."""
    yt, yp = _same_rank(_arr("y_true", y_true), _arr("y_pred", y_pred))
    return _mean_last((yt - yp) ** 2)


def mean_absolute_error(y_true, y_pred):
    """Per-sample ``mean(abs(y_true - y_pred), axis=-1)``."""
    yt, yp = _same_rank(_arr("y_true", y_true), _arr("y_pred", y_pred))
    return _mean_last(np.abs(yt - yp))


def mean_absolute_percentage_error(y_true, y_pred):
    """Per-sample ``100 mean(|y_true - y_pred| / max(|y_true|, 1e-7))``."""
    yt, yp = _same_rank(_arr("y_true", y_true), _arr("y_pred", y_pred))
    yt = yt.astype(np.float64)
    return 100.0 * np.mean(np.abs((yt - yp) / np.maximum(np.abs(yt), _EPS)), axis=-1)


def mean_squared_logarithmic_error(y_true, y_pred):
    """Per-sample ``mean((log1p(max(y_pred, eps)) - log1p(max(y_true, eps))) ** 2)``."""
    yt, yp = _same_rank(_arr("y_true", y_true), _arr("y_pred", y_pred))
    a = np.log(np.maximum(yp, _EPS) + 1.0)
    b = np.log(np.maximum(yt.astype(np.float64), _EPS) + 1.0)
    return np.mean((a - b) ** 2, axis=-1)


mse = mean_squared_error
mae = mean_absolute_error
mape = mean_absolute_percentage_error
msle = mean_squared_logarithmic_error


def accuracy(y_true, y_pred):
    """Keras' ``Accuracy``: per-entry exact equality of ``y_true`` and ``y_pred``."""
    yt, yp = _same_rank(_arr("y_true", y_true), _arr("y_pred", y_pred))
    return (yt == yp).astype(np.float64)


# ----------------------------------------------------------------------------- classes
class Metric:
    """Base class: a batch value via ``__call__`` and Keras' accumulating interface.

    Subclasses implement :meth:`values` returning the per-sample values.
    """

    def __init__(self, name=None, dtype=None):
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str; got {type(name).__name__}")
        self.name = name or getattr(self, "_default_name", type(self).__name__.lower())
        self.dtype = dtype
        self.reset_state()

    def values(self, y_true, y_pred):  # pragma: no cover - abstract
        raise NotImplementedError

    def _weighted(self, y_true, y_pred, sample_weight):
        v = np.asarray(self.values(y_true, y_pred), dtype=np.float64)
        if sample_weight is None:
            return float(v.sum()), float(v.size)
        w = np.asarray(sample_weight, dtype=np.float64)
        sw = w.shape
        if w.ndim == v.ndim + 1 and w.shape[-1] == 1:
            w = w.reshape(w.shape[:-1])
        if w.ndim < v.ndim:
            w = w.reshape(w.shape + (1,) * (v.ndim - w.ndim))
        try:
            w = np.broadcast_to(w, v.shape)
        except ValueError:
            raise ValueError(
                f"sample_weight of shape {sw} cannot be broadcast to the metric values' shape "
                f"{v.shape}"
            ) from None
        return float(np.sum(v * w)), float(np.sum(w))

    @staticmethod
    def _finish(total, count):
        return total / count if count else 0.0

    def __call__(self, y_true, y_pred, sample_weight=None):
        """The metric on this batch alone (a float); does not touch the state."""
        return self._finish(*self._weighted(y_true, y_pred, sample_weight))

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Accumulate a batch."""
        t, c = self._weighted(y_true, y_pred, sample_weight)
        self.total += t
        self.count += c

    def result(self):
        """The metric over every batch since the last :meth:`reset_state`."""
        return self._finish(self.total, self.count)

    def reset_state(self):
        self.total, self.count = 0.0, 0.0

    def get_config(self):
        return {"name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r})"


class MeanMetricWrapper(Metric):
    """The (weighted) mean of ``fn(y_true, y_pred, **kwargs)`` per-sample values."""

    def __init__(self, fn, name=None, dtype=None, **kwargs):
        if not callable(fn):
            raise TypeError(f"fn must be callable; got {type(fn).__name__}")
        self._fn, self._fn_kwargs = fn, kwargs
        super().__init__(name=name or getattr(fn, "__name__", "metric"), dtype=dtype)

    def values(self, y_true, y_pred):
        return self._fn(y_true, y_pred, **self._fn_kwargs)


def _wrapper_class(cls_name, fn, default_name, params=(), doc=""):
    defaults = dict(params)

    def __init__(self, name=None, dtype=None, **kwargs):
        unknown = set(kwargs) - set(defaults)
        if unknown:
            raise TypeError(f"{cls_name} got unexpected keyword argument(s) {sorted(unknown)}")
        kw = {**defaults, **kwargs}
        for k, v in kw.items():
            setattr(self, k, v)
        MeanMetricWrapper.__init__(self, fn, name=name or default_name, dtype=dtype, **kw)

    def get_config(self):
        return {"name": self.name, **{k: getattr(self, k) for k in defaults}}

    return type(cls_name, (MeanMetricWrapper,), {
        "__init__": __init__, "get_config": get_config, "__doc__": doc,
        "__module__": __name__})


BinaryAccuracy = _wrapper_class("BinaryAccuracy", binary_accuracy, "binary_accuracy",
                                {"threshold": 0.5}, "Binary accuracy at ``threshold``.")
CategoricalAccuracy = _wrapper_class("CategoricalAccuracy", categorical_accuracy,
                                     "categorical_accuracy", doc="Categorical accuracy.")
SparseCategoricalAccuracy = _wrapper_class(
    "SparseCategoricalAccuracy", sparse_categorical_accuracy, "sparse_categorical_accuracy",
    doc="Accuracy against integer labels.")
TopKCategoricalAccuracy = _wrapper_class(
    "TopKCategoricalAccuracy", top_k_categorical_accuracy, "top_k_categorical_accuracy",
    {"k": 5}, "Top-k accuracy against one-hot targets.")
SparseTopKCategoricalAccuracy = _wrapper_class(
    "SparseTopKCategoricalAccuracy", sparse_top_k_categorical_accuracy,
    "sparse_top_k_categorical_accuracy", {"k": 5}, "Top-k accuracy against integer labels.")
Accuracy = _wrapper_class("Accuracy", accuracy, "accuracy",
                          doc="Exact equality of y_true and y_pred (Keras' ``Accuracy``).")
MeanSquaredError = _wrapper_class("MeanSquaredError", mean_squared_error,
                                  "mean_squared_error", doc="Mean squared error.")
MeanAbsoluteError = _wrapper_class("MeanAbsoluteError", mean_absolute_error,
                                   "mean_absolute_error", doc="Mean absolute error.")
MeanAbsolutePercentageError = _wrapper_class(
    "MeanAbsolutePercentageError", mean_absolute_percentage_error,
    "mean_absolute_percentage_error", doc="Mean absolute percentage error.")
MeanSquaredLogarithmicError = _wrapper_class(
    "MeanSquaredLogarithmicError", mean_squared_logarithmic_error,
    "mean_squared_logarithmic_error", doc="Mean squared logarithmic error.")


class RootMeanSquaredError(Metric):
    """``sqrt(mean((y_true - y_pred)^2))`` over all entries (and, accumulated, all batches)."""

    _default_name = "root_mean_squared_error"

    def values(self, y_true, y_pred):
        yt, yp = _same_rank(_arr("y_true", y_true), _arr("y_pred", y_pred))
        return (yt - yp) ** 2

    @staticmethod
    def _finish(total, count):
        return float(np.sqrt(total / count)) if count else 0.0


class _LossMetric(Metric):
    """A loss's per-sample values as a metric (crossentropies in ``metrics=``)."""

    def __init__(self, loss, name=None, dtype=None):
        self._loss = loss
        super().__init__(name=name or loss.name, dtype=dtype)

    def values(self, y_true, y_pred):
        return self._loss.call(y_true, y_pred)

    def get_config(self):
        return {"name": self.name, "loss": _losses.serialize(self._loss)}

    @classmethod
    def from_config(cls, config):
        cfg = dict(config)
        return cls(_losses.deserialize(cfg.pop("loss")), **cfg)


def _loss_metric_class(cls_name, loss_cls, default_name):
    def __init__(self, name=None, dtype=None, from_logits=False, **kwargs):
        _LossMetric.__init__(self, loss_cls(from_logits=from_logits, **kwargs),
                             name=name or default_name, dtype=dtype)

    def get_config(self):
        return {"name": self.name, "from_logits": self._loss.from_logits}

    return type(cls_name, (_LossMetric,), {
        "__init__": __init__, "get_config": get_config, "from_config": classmethod(
            lambda cls, config: cls(**config)),
        "__doc__": f"{default_name} as a metric.", "__module__": __name__})


BinaryCrossentropy = _loss_metric_class("BinaryCrossentropy", _losses.BinaryCrossentropy,
                                        "binary_crossentropy")
CategoricalCrossentropy = _loss_metric_class(
    "CategoricalCrossentropy", _losses.CategoricalCrossentropy, "categorical_crossentropy")
SparseCategoricalCrossentropy = _loss_metric_class(
    "SparseCategoricalCrossentropy", _losses.SparseCategoricalCrossentropy,
    "sparse_categorical_crossentropy")


class _AutoMetric(Metric):
    """``"accuracy"``/``"crossentropy"``: the concrete metric chosen per call.

    The loss decides when it is a crossentropy; otherwise Keras 3's shape rule.
    """

    def __init__(self, kind, name, loss=None):
        self._kind, self._loss = kind, loss
        self._concrete = {}
        super().__init__(name=name)

    def _flavour(self, y_true, y_pred):
        loss = self._loss
        if isinstance(loss, _losses.BinaryCrossentropy):
            return "binary"
        if isinstance(loss, _losses.SparseCategoricalCrossentropy):
            return "sparse"
        if isinstance(loss, _losses.CategoricalCrossentropy):
            return "categorical"
        yt, yp = np.shape(y_true), np.shape(y_pred)
        if len(yp) == 0 or yp[-1] == 1 or len(yp) == 1:
            return "binary"
        if len(yt) < len(yp) or (len(yt) > 0 and yt[-1] == 1 and yp[-1] > 1):
            return "sparse"
        return "categorical"

    def resolve(self, y_true, y_pred):
        """The concrete metric these arrays get (e.g. ``BinaryAccuracy``)."""
        flavour = self._flavour(y_true, y_pred)
        m = self._concrete.get(flavour)
        if m is None:
            if self._kind == "accuracy":
                cls = {"binary": BinaryAccuracy, "sparse": SparseCategoricalAccuracy,
                       "categorical": CategoricalAccuracy}[flavour]
                m = cls(name=self.name)
            else:
                logits = bool(getattr(self._loss, "from_logits", False))
                cls = {"binary": BinaryCrossentropy, "sparse": SparseCategoricalCrossentropy,
                       "categorical": CategoricalCrossentropy}[flavour]
                m = cls(name=self.name, from_logits=logits)
            self._concrete[flavour] = m
        return m

    def values(self, y_true, y_pred):
        return self.resolve(y_true, y_pred).values(y_true, y_pred)

    def get_config(self):
        return {"name": self.name}


_FUNCTIONS = {
    binary_accuracy: BinaryAccuracy, categorical_accuracy: CategoricalAccuracy,
    sparse_categorical_accuracy: SparseCategoricalAccuracy,
    top_k_categorical_accuracy: TopKCategoricalAccuracy,
    sparse_top_k_categorical_accuracy: SparseTopKCategoricalAccuracy,
    mean_squared_error: MeanSquaredError, mean_absolute_error: MeanAbsoluteError,
    mean_absolute_percentage_error: MeanAbsolutePercentageError,
    mean_squared_logarithmic_error: MeanSquaredLogarithmicError,
    accuracy: Accuracy,
}
_NAMES = {
    "binary_accuracy": BinaryAccuracy, "categorical_accuracy": CategoricalAccuracy,
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "top_k_categorical_accuracy": TopKCategoricalAccuracy,
    "sparse_top_k_categorical_accuracy": SparseTopKCategoricalAccuracy,
    "mse": MeanSquaredError, "mean_squared_error": MeanSquaredError,
    "mae": MeanAbsoluteError, "mean_absolute_error": MeanAbsoluteError,
    "mape": MeanAbsolutePercentageError,
    "mean_absolute_percentage_error": MeanAbsolutePercentageError,
    "msle": MeanSquaredLogarithmicError,
    "mean_squared_logarithmic_error": MeanSquaredLogarithmicError,
    "rmse": RootMeanSquaredError, "root_mean_squared_error": RootMeanSquaredError,
    "binary_crossentropy": BinaryCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
}
_CLASSES = {c.__name__: c for c in set(_NAMES.values()) | {Accuracy}}
#: The names :func:`get` accepts (case-insensitive; class names too).
VALID_NAMES = ("accuracy", "acc", "crossentropy", "ce") + tuple(_NAMES)
# "accuracy" and "crossentropy" pick their class from the loss, in get()
_REGISTRY = _objects.Registry("metric", Metric, _CLASSES,
                              {**{k.lower(): v for k, v in _CLASSES.items()}, **_NAMES},
                              VALID_NAMES)


def _loss_hint(loss):
    if loss is None:
        return None
    try:
        return _losses.get(loss)
    except (TypeError, ValueError):  # a custom loss says nothing about the flavour
        return None


def get(identifier, loss=None):
    """Resolve a metric for ``compile(metrics=...)``.

    Parameters
    ----------
    identifier : str, Metric, function or dict
        A Keras name (``"mae"``, ``"accuracy"``, ``"binary_accuracy"``, ``"rmse"``,
        ..., case-insensitive; the metric's ``name`` is the string as given), a
        :class:`Metric` (returned as is), a function ``f(y_true, y_pred)``
        returning per-sample values (wrapped in :class:`MeanMetricWrapper`, named
        after the function), or ``{"class_name", "config"}``.
    loss : cylstm.losses.Loss, optional
        The compiled loss: lets ``"accuracy"`` pick its flavour as Keras does.
    """
    if isinstance(identifier, Metric):
        return identifier
    if isinstance(identifier, str):
        key = identifier.lower()
        if key in ("accuracy", "acc"):
            return _AutoMetric("accuracy", identifier, _loss_hint(loss))
        if key in ("crossentropy", "ce"):
            return _AutoMetric("crossentropy", identifier, _loss_hint(loss))
        return _REGISTRY.lookup(identifier)(name=identifier)
    if isinstance(identifier, dict):
        return _REGISTRY.deserialize(identifier)
    if callable(identifier):
        cls = _FUNCTIONS.get(identifier)
        if cls is not None:
            return cls(name=identifier.__name__)
        if identifier in _losses._FUNCTIONS:  # a loss function used as a metric
            return _LossMetric(_losses.get(identifier), name=identifier.__name__)
        return MeanMetricWrapper(identifier)
    if isinstance(identifier, numbers.Number) or identifier is None:
        raise TypeError(f"metric must be a str, a Metric or a function; got {identifier!r}")
    raise TypeError(
        f"metric must be a str, a Metric, a function or a config dict; got "
        f"{type(identifier).__name__}"
    )
