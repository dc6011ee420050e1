"""Weight constraints with Keras 3's names, formulas and defaults.

A constraint is a projection applied to a weight after every optimizer step
(``fit``, ``train_on_batch``)::

    LSTM(32, kernel_constraint=MaxNorm(3), recurrent_constraint="unit_norm")
    Dense(1, kernel_constraint="non_neg")

* ``MaxNorm(max_value=2, axis=0)``: rescales every slice along ``axis`` whose L2 norm
  exceeds ``max_value``: ``w * clip(n, 0, max_value) / (eps + n)``;
* ``NonNeg()``: ``max(w, 0)``;
* ``UnitNorm(axis=0)``: ``w / (eps + n)``;
* ``MinMaxNorm(min_value=0.0, max_value=1.0, rate=1.0, axis=0)``:
  ``w * (rate * clip(n, min, max) + (1 - rate) * n) / (eps + n)``;

with ``n = sqrt(sum(w**2, axis, keepdims=True))`` and ``eps = 1e-7`` (Keras's
``backend.epsilon()``).  ``axis=0`` normalizes each column of a (inputs, units)
kernel, i.e. the weights into one unit (for LSTM kernels: one unit of one gate).

Names accepted by :func:`get`: ``"max_norm"``, ``"non_neg"``, ``"unit_norm"``,
``"min_max_norm"`` and the class names.  Any callable ``w -> array of w's shape``
works as a constraint too (it cannot be saved unless it is a :class:`Constraint`).
"""
import inspect
import numbers

import numpy as np

from cylstm import _objects

__all__ = [
    "Constraint",
    "MaxNorm",
    "MinMaxNorm",
    "NonNeg",
    "UnitNorm",
    "deserialize",
    "get",
    "max_norm",
    "min_max_norm",
    "non_neg",
    "serialize",
    "unit_norm",
]

EPSILON = 1e-7  # keras.backend.epsilon()


def _axis(axis):
    if isinstance(axis, bool):
        raise TypeError(f"axis must be an int or a list of ints; got {axis!r}")
    if isinstance(axis, numbers.Integral):
        return int(axis)
    try:
        return tuple(int(a) for a in axis)
    except TypeError:
        raise TypeError(f"axis must be an int or a list of ints; got {axis!r}") from None


def _real(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number; got {value!r}")
    return value


def _float_array(w):
    a = np.asarray(w)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"a constraint needs a numeric array; got dtype {a.dtype}")
    return a if a.dtype.kind == "f" else a.astype(np.float64)


def _norms(w, axis):
    return np.sqrt(np.sum(np.square(w), axis=axis, keepdims=True))


class Constraint:
    """Base class: ``__call__(w)`` returns the projected weight (the identity here)."""

    def __call__(self, w):
        return w

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class MaxNorm(Constraint):
    """Caps the L2 norm of each slice along ``axis`` at ``max_value``.

    Parameters
    ----------
    max_value : float, default 2
    axis : int or list of ints, default 0
    """

    def __init__(self, max_value=2, axis=0):
        self.max_value = _real(max_value, "max_value")
        self.axis = _axis(axis)

    def __call__(self, w):
        w = _float_array(w)
        n = _norms(w, self.axis)
        return w * (np.clip(n, 0, self.max_value) / (EPSILON + n))

    def get_config(self):
        return {"max_value": self.max_value, "axis": _config_axis(self.axis)}


class NonNeg(Constraint):
    """Sets negative weights to zero."""

    def __call__(self, w):
        return np.maximum(_float_array(w), 0)


class UnitNorm(Constraint):
    """Scales each slice along ``axis`` to unit L2 norm.

    Parameters
    ----------
    axis : int or list of ints, default 0
    """

    def __init__(self, axis=0):
        self.axis = _axis(axis)

    def __call__(self, w):
        w = _float_array(w)
        return w / (EPSILON + _norms(w, self.axis))

    def get_config(self):
        return {"axis": _config_axis(self.axis)}


class MinMaxNorm(Constraint):
    """Keeps the L2 norm of each slice along ``axis`` within ``[min_value, max_value]``.

    Parameters
    ----------
    min_value : float, default 0.0
    max_value : float, default 1.0
    rate : float, default 1.0
        1.0 projects strictly; below 1 moves the norm that fraction of the way
        into the interval at each step.
    axis : int or list of ints, default 0
    """

    def __init__(self, min_value=0.0, max_value=1.0, rate=1.0, axis=0):
        self.min_value = _real(min_value, "min_value")
        self.max_value = _real(max_value, "max_value")
        self.rate = _real(rate, "rate")
        self.axis = _axis(axis)

    def __call__(self, w):
        w = _float_array(w)
        n = _norms(w, self.axis)
        desired = self.rate * np.clip(n, self.min_value, self.max_value) + \
            (1 - self.rate) * n
        return w * (desired / (EPSILON + n))

    def get_config(self):
        return {"min_value": self.min_value, "max_value": self.max_value, "rate": self.rate,
                "axis": _config_axis(self.axis)}


def _config_axis(axis):
    return list(axis) if isinstance(axis, tuple) else axis


# Keras 3 exports the classes under snake-case names too
max_norm, non_neg, unit_norm, min_max_norm = MaxNorm, NonNeg, UnitNorm, MinMaxNorm

_CLASSES = {c.__name__: c for c in (Constraint, MaxNorm, NonNeg, UnitNorm, MinMaxNorm)}
_NAMES = dict(_CLASSES)
_NAMES.update({"constraint": Constraint, "max_norm": MaxNorm, "non_neg": NonNeg,
               "unit_norm": UnitNorm, "min_max_norm": MinMaxNorm})
#: The names :func:`get` accepts.
VALID_NAMES = ("max_norm", "non_neg", "unit_norm", "min_max_norm", "MaxNorm", "NonNeg",
               "UnitNorm", "MinMaxNorm")


def _unknown(what):
    return ValueError(f"unknown constraint {what!r}; cylstm has {', '.join(VALID_NAMES)} "
                      "(or any callable w -> w)")


# names are case-sensitive, as Keras's; configs come mostly from saved files
_REGISTRY = _objects.Registry("constraint", Constraint, _CLASSES, _NAMES, VALID_NAMES, fold=None,
                              config_error=ValueError, unknown=_unknown)


def serialize(constraint):
    """``{"class_name": ..., "config": ...}`` of a constraint (None gives None)."""
    return None if constraint is None else _REGISTRY.serialize(constraint)


def deserialize(config):
    """Inverse of :func:`serialize`; only cylstm's own classes can be named."""
    return _REGISTRY.deserialize(config)


def get(identifier):
    """Resolve a constraint: a name, a config dict, a callable, or None.

    Raises
    ------
    ValueError
        An unknown name (the message lists the known ones).
    TypeError
        Something that is neither of those.
    """
    if identifier is None:
        return None
    if isinstance(identifier, str):
        return _REGISTRY.lookup(identifier)()
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if inspect.isclass(identifier) and issubclass(identifier, Constraint):
        return identifier()
    if callable(identifier):
        return identifier
    raise TypeError(f"a constraint must be a name ({', '.join(VALID_NAMES)}), a config dict "
                    f"or a callable; got {type(identifier).__name__}")
