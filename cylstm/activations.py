"""Activations for :class:`cylstm.layers.Dense`, by Keras name.

Each activation has a forward ``f(z)`` and a backward written in terms of
the *output* ``a = f(z)`` (as the LSTM kernels do), so a layer keeps only its
output for the backward pass.  The LSTM layer itself supports only the
activations its compiled kernels implement (``tanh`` and ``sigmoid``).
"""
import numpy as np

from cylstm import _objects

__all__ = ["NAMES", "get", "linear", "relu", "serialize", "sigmoid", "softmax", "tanh"]

# canonical name -> accepted spellings
_ALIASES = {
    "linear": ("linear", None, "none", "identity"),
    "relu": ("relu",),
    "tanh": ("tanh",),
    "sigmoid": ("sigmoid",),
    "softmax": ("softmax",),
}
NAMES = tuple(_ALIASES)


def linear(x):
    """Identity: ``linear(x) = x``."""
    return np.asarray(x)


def relu(x):
    """``max(x, 0)``."""
    return np.maximum(x, 0)


def tanh(x):
    """Hyperbolic tangent."""
    return np.tanh(x)


def sigmoid(x):
    """Logistic sigmoid, evaluated without overflow for large ``|x|``."""
    x = np.asarray(x)
    out = np.empty_like(x, dtype=np.result_type(x, np.float32))
    _sigmoid(x, out)
    return out


def softmax(x, axis=-1):
    """Softmax over ``axis`` (the last by default), shifted by the max for stability."""
    x = np.asarray(x)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


_FUNCTIONS = {"linear": linear, "relu": relu, "tanh": tanh, "sigmoid": sigmoid,
              "softmax": softmax}


def _fold(identifier):
    return identifier.lower() if isinstance(identifier, str) else identifier


def _unknown(identifier):
    return ValueError(f"unknown activation {identifier!r}; expected one of {list(NAMES)}")


# spelling -> canonical name; activations are names, with no classes or configs
_REGISTRY = _objects.Registry(
    "activation", None, {}, {s: name for name, spellings in _ALIASES.items() for s in spellings},
    NAMES, fold=_fold, unknown=_unknown)


def get(identifier):
    """Return the canonical name of an activation.

    Parameters
    ----------
    identifier : str, None or one of this module's functions
        ``None`` and ``'linear'`` mean the identity.

    Returns
    -------
    str : one of ``'linear', 'relu', 'tanh', 'sigmoid', 'softmax'``.
    """
    if callable(identifier):
        for name, fn in _FUNCTIONS.items():
            if identifier is fn:
                return name
        name = getattr(identifier, "__name__", None)
        if name in _FUNCTIONS and getattr(identifier, "__module__", "").startswith(
                ("keras", "tensorflow", "torch")):
            return name
        raise ValueError(
            f"activation {identifier!r} is not supported; use one of {list(NAMES)} "
            "(by name or as cylstm.activations.<name>)"
        )
    return _REGISTRY.lookup(identifier)


def serialize(identifier):
    """Canonical name (what ``get_config`` stores)."""
    return get(identifier)


# ---- in-place forms used by the layers (z and out have the same shape) ----

def _sigmoid(z, out):
    # exp(-|z|) never overflows; pick the algebraically equal branch by sign
    e = np.exp(-np.abs(z))
    pos = z >= 0
    np.divide(1.0, 1.0 + e, out=out, where=pos)
    np.divide(e, 1.0 + e, out=out, where=~pos)
    return out


def forward_(name, z):
    """Apply activation ``name`` to ``z`` in place where possible; return the output."""
    if name == "linear":
        return z
    if name == "relu":
        return np.maximum(z, 0, out=z)
    if name == "tanh":
        return np.tanh(z, out=z)
    if name == "sigmoid":
        return _sigmoid(z, z)
    if name == "softmax":
        z -= z.max(axis=-1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=-1, keepdims=True)
        return z
    raise ValueError(f"unknown activation {name!r}")


def backward_(name, a, da):
    """dL/dz from the output ``a`` and ``da = dL/da``; may overwrite ``da``."""
    if name == "linear":
        return da
    if name == "relu":
        da *= a > 0
        return da
    if name == "tanh":
        return np.multiply(da, 1 - a * a, out=da)
    if name == "sigmoid":
        return np.multiply(da, a * (1 - a), out=da)
    if name == "softmax":
        # dz = a * (da - sum_j da_j a_j)
        s = np.sum(da * a, axis=-1, keepdims=True)
        da -= s
        da *= a
        return da
    raise ValueError(f"unknown activation {name!r}")
