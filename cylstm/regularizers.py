"""Weight and activity penalties with Keras 3's names, formulas and defaults.

A regularizer maps an array to a scalar penalty that training adds to the loss::

    LSTM(32, kernel_regularizer="l2", recurrent_regularizer=L1L2(l1=1e-5, l2=1e-4))
    Dense(1, activity_regularizer=L1(0.01))

* ``L1(l1=0.01)``:         ``l1 * sum(|x|)``
* ``L2(l2=0.01)``:         ``l2 * sum(x**2)``
* ``L1L2(l1=0.0, l2=0.0)``: both (note the zero defaults, as Keras 3's class has)
* ``OrthogonalRegularizer(factor=0.01, mode="rows")``: mean |cosine| between the
  rows (or columns) of a 2-D weight

Weight penalties are computed from the current weights whenever they are asked
for (``layer.losses``, every training step); an activity penalty is computed on
the layer's outputs at each call and divided by the batch size, as Keras does.
cylstm has no automatic differentiation, so besides ``__call__`` every
regularizer gives its gradient with :meth:`Regularizer.gradient`; a custom
regularizer subclasses :class:`Regularizer` and implements both.

Names accepted by :func:`get`: ``"l1"``, ``"l2"``, ``"l1l2"``,
``"orthogonal_regularizer"`` and the class names ``"L1"``, ``"L2"``, ``"L1L2"``,
``"OrthogonalRegularizer"`` (Keras 3's defaults: ``L1L2()`` penalizes nothing),
and ``"l1_l2"``, which is ``L1L2(l1=0.01, l2=0.01)`` (what Keras's docstring promises
for that name, and what ``tf.keras``'s ``l1_l2()`` returned).  The lowercase
callables are the classes, as in Keras 3: ``l1_l2()`` is ``L1L2()``.
"""
import inspect
import math
import numbers

import numpy as np

from cylstm import _objects

__all__ = [
    "L1",
    "L1L2",
    "L2",
    "OrthogonalRegularizer",
    "Regularizer",
    "deserialize",
    "get",
    "l1",
    "l1_l2",
    "l2",
    "orthogonal_regularizer",
    "serialize",
]


def _factor(value, name):
    """A non-negative finite float (Keras's ``validate_float_arg``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative finite float; got {value!r}")
    return float(value)


def _array(x):
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"a regularizer needs a numeric array; got dtype {a.dtype}")
    return a if a.dtype.kind == "f" else a.astype(np.float64)


class Regularizer:
    """Base class: ``__call__(x) -> float`` and ``gradient(x) -> array like x``.

    The base class itself penalizes nothing (as Keras's).  A subclass overrides
    both methods (``gradient`` is d penalty / d x, which cylstm needs because it
    does not differentiate Python code) and ``get_config`` if it is to be saved.
    """

    def __call__(self, x):
        """The penalty of ``x`` (a float)."""
        return 0.0

    def gradient(self, x):
        """d penalty / d ``x``: an array of ``x``'s shape and float dtype."""
        return np.zeros_like(_array(x))

    def get_config(self):
        raise NotImplementedError(f"{self} does not implement get_config()")

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        try:
            args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        except NotImplementedError:
            args = ""
        return f"{type(self).__name__}({args})"


class L1L2(Regularizer):
    """``l1 * sum(|x|) + l2 * sum(x**2)``.

    Parameters
    ----------
    l1, l2 : float, default 0.0
        Non-negative factors (None means 0, as in Keras).
    """

    def __init__(self, l1=0.0, l2=0.0):
        self.l1 = _factor(0.0 if l1 is None else l1, "l1")
        self.l2 = _factor(0.0 if l2 is None else l2, "l2")

    def __call__(self, x):
        x = _array(x)
        out = 0.0
        if self.l1:
            out += self.l1 * float(np.sum(np.abs(x)))
        if self.l2:
            out += self.l2 * float(np.sum(np.square(x)))
        return out

    def gradient(self, x):
        x = _array(x)
        g = np.zeros_like(x)
        if self.l1:
            g += self.l1 * np.sign(x)  # the subgradient 0 at x = 0, as TF/JAX/torch give
        if self.l2:
            g += (2.0 * self.l2) * x
        return g

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}


class L1(Regularizer):
    """``l1 * sum(|x|)``.

    Parameters
    ----------
    l1 : float, default 0.01
    """

    def __init__(self, l1=0.01):
        self.l1 = _factor(0.01 if l1 is None else l1, "l1")

    def __call__(self, x):
        return self.l1 * float(np.sum(np.abs(_array(x))))

    def gradient(self, x):
        x = _array(x)
        return (self.l1 * np.sign(x)).astype(x.dtype, copy=False)

    def get_config(self):
        return {"l1": self.l1}


class L2(Regularizer):
    """``l2 * sum(x**2)``.

    Parameters
    ----------
    l2 : float, default 0.01
    """

    def __init__(self, l2=0.01):
        self.l2 = _factor(0.01 if l2 is None else l2, "l2")

    def __call__(self, x):
        return self.l2 * float(np.sum(np.square(_array(x))))

    def gradient(self, x):
        x = _array(x)
        return ((2.0 * self.l2) * x).astype(x.dtype, copy=False)

    def get_config(self):
        return {"l2": self.l2}


class OrthogonalRegularizer(Regularizer):
    """Pushes the rows (or columns) of a 2-D weight towards being orthogonal.

    ``factor * 0.5 * sum(|P - diag(P)|) / (n (n - 1) / 2)`` with ``P = N N^T`` of the
    L2-normalized rows ``N`` (``mode="rows"``; ``N^T N`` of the normalized columns for
    ``mode="columns"``), Keras 3's formula; the normalization is Keras's
    ``x * min(1 / sqrt(sum(x**2)), 1 / 1e-7)``.

    Parameters
    ----------
    factor : float, default 0.01
    mode : {"rows", "columns"}
    """

    _EPS = 1e-7  # keras.backend.epsilon()

    def __init__(self, factor=0.01, mode="rows"):
        self.factor = _factor(factor, "factor")
        if mode not in ("rows", "columns"):
            raise ValueError('Invalid value for argument `mode`. Expected one of {"rows", '
                             f'"columns"}}. Received: mode={mode}')
        self.mode = mode

    def _parts(self, x):
        x = _array(x)
        if x.ndim != 2:
            raise ValueError(f"Inputs to OrthogonalRegularizer must have rank 2. Received: "
                             f"inputs.shape={x.shape}")
        axis = 1 if self.mode == "rows" else 0
        inv = np.minimum(1.0 / np.sqrt(np.sum(np.square(x), axis=axis, keepdims=True)),
                         1.0 / self._EPS)
        n = x * inv
        p = n @ n.T if self.mode == "rows" else n.T @ n
        size = p.shape[0]
        return x, axis, inv, n, p, size

    def __call__(self, x):
        _, _, _, _, p, size = self._parts(x)
        off = p * (1.0 - np.eye(size))
        return float(self.factor * 0.5 * np.sum(np.abs(off)) / (size * (size - 1.0) / 2.0))

    def gradient(self, x):
        with np.errstate(divide="ignore"):
            x, axis, inv, n, p, size = self._parts(x)
        # d/dP of the penalty: c * sign(P) off the diagonal (P is symmetric)
        m = np.sign(p) * (1.0 - np.eye(size)) * (
            self.factor * 0.5 / (size * (size - 1.0) / 2.0))
        dn = 2.0 * (m @ n) if self.mode == "rows" else 2.0 * (n @ m)
        # back through N = x * inv (inv clamped at 1 / eps is a constant there)
        free = inv < 1.0 / self._EPS
        proj = np.sum(dn * n, axis=axis, keepdims=True)
        dx = np.where(free, inv * (dn - n * proj), dn * inv)
        return dx.astype(x.dtype, copy=False)

    def get_config(self):
        return {"factor": self.factor, "mode": self.mode}


# Keras 3 exports the classes under their lowercase names too (so ``l1_l2()`` is
# ``L1L2()``, zero penalties, there; only the *name* "l1_l2" means 0.01 each)
l1, l2, l1_l2 = L1, L2, L1L2
orthogonal_regularizer = OrthogonalRegularizer


_CLASSES = {"Regularizer": Regularizer, "L1": L1, "L2": L2, "L1L2": L1L2,
            "OrthogonalRegularizer": OrthogonalRegularizer}
_NAMES = dict(_CLASSES)
_NAMES.update({"l1": L1, "l2": L2, "l1l2": L1L2, "regularizer": Regularizer,
               "orthogonal_regularizer": OrthogonalRegularizer})
#: The names :func:`get` accepts.
VALID_NAMES = ("l1", "l2", "l1_l2", "l1l2", "orthogonal_regularizer", "L1", "L2", "L1L2",
               "OrthogonalRegularizer")


def _unknown(what):
    return ValueError(f"unknown regularizer {what!r}; cylstm has {', '.join(VALID_NAMES)} "
                      "(or a cylstm.regularizers.Regularizer instance)")


# names are case-sensitive, as Keras's; configs come mostly from saved files
_REGISTRY = _objects.Registry("regularizer", Regularizer, _CLASSES, _NAMES, VALID_NAMES,
                              fold=None, config_error=ValueError, unknown=_unknown)


def serialize(regularizer):
    """``{"class_name": ..., "config": ...}`` of a regularizer (None gives None)."""
    return None if regularizer is None else _REGISTRY.serialize(regularizer)


def deserialize(config):
    """Inverse of :func:`serialize`; only cylstm's own classes can be named."""
    return _REGISTRY.deserialize(config)


def get(identifier):
    """Resolve a regularizer: a name, a config dict, an instance, or None.

    Raises
    ------
    ValueError
        An unknown name (the message lists the known ones).
    TypeError
        A callable that is not a :class:`Regularizer` (cylstm needs its gradient).
    """
    if identifier is None:
        return None
    if isinstance(identifier, str):
        if identifier == "l1_l2":
            return L1L2(l1=0.01, l2=0.01)
        return _REGISTRY.lookup(identifier)()
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if inspect.isclass(identifier) and issubclass(identifier, Regularizer):
        identifier = identifier()
    if isinstance(identifier, Regularizer):
        if type(identifier).__call__ is not Regularizer.__call__ and \
                type(identifier).gradient is Regularizer.gradient:
            raise TypeError(f"regularizer {type(identifier).__name__} defines __call__ but not "
                            "gradient(x); cylstm needs d penalty / dx to train with it")
        return identifier
    raise TypeError(f"a regularizer must be a name ({', '.join(VALID_NAMES)}), a config dict or "
                    "a cylstm.regularizers.Regularizer (cylstm cannot differentiate a plain "
                    f"function); got {type(identifier).__name__}")
