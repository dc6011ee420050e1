"""Weight initializers with Keras names, defaults and distributions.

Every initializer is a callable ``init(shape, dtype=None, rng=None) -> ndarray``:

* ``dtype`` defaults to float32 (Keras' ``floatx``);
* ``rng`` is a :class:`numpy.random.Generator`.  An initializer built with an
  explicit ``seed`` ignores ``rng`` and draws from ``default_rng(seed)`` afresh
  on every call (so, as in Keras, a seeded initializer returns the same values
  each time); otherwise it draws from ``rng`` (or fresh OS entropy when None).

Fans follow Keras' ``compute_fans``: for a 2-D ``(fan_in, fan_out)`` shape the
obvious ones; for a kernel of shape ``(..., in, out)`` the leading axes multiply
both (receptive field).  Truncated normals are cut at two standard deviations
and, for the variance-scaling family, rescaled by ``0.87962566103423978`` so the
variance matches the target, as Keras does.
"""
import numbers

import numpy as np

from cylstm import _objects

__all__ = [
    "Constant",
    "GlorotNormal",
    "GlorotUniform",
    "HeNormal",
    "HeUniform",
    "Identity",
    "Initializer",
    "LecunNormal",
    "LecunUniform",
    "Ones",
    "Orthogonal",
    "RandomNormal",
    "RandomUniform",
    "TruncatedNormal",
    "VarianceScaling",
    "Zeros",
    "deserialize",
    "get",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "lecun_normal",
    "lecun_uniform",
    "ones",
    "orthogonal",
    "random_normal",
    "random_uniform",
    "serialize",
    "truncated_normal",
    "zeros",
]

# std of a standard normal truncated to [-2, 2]: dividing by it restores unit variance
_TRUNC_STD = 0.87962566103423978


def _shape(shape):
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        shape = tuple(int(d) for d in shape)
    except TypeError:
        raise TypeError(f"shape must be a tuple of ints; got {shape!r}") from None
    if any(d < 0 for d in shape):
        raise ValueError(f"shape must have non-negative dimensions; got {shape}")
    return shape


def _dtype(dtype):
    dt = np.dtype(np.float32 if dtype is None else dtype)
    if dt.kind != "f":
        raise TypeError(f"dtype must be a floating dtype; got {dt}")
    return dt


def compute_fans(shape):
    """``(fan_in, fan_out)`` of a weight shape, as Keras computes them."""
    shape = _shape(shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = int(np.prod(shape[:-2]))
    return shape[-2] * receptive, shape[-1] * receptive


def _truncated_normal(rng, shape, mean, std):
    """Standard normal samples redrawn until within two standard deviations."""
    out = rng.standard_normal(shape)
    bad = np.abs(out) > 2.0
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2.0
    return mean + std * out


class Initializer:
    """Base class: ``__call__(shape, dtype=None, rng=None)``, ``get_config``."""

    def __init__(self, seed=None):
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise TypeError(f"seed must be an int or None; got {type(seed).__name__}")
        self.seed = None if seed is None else int(seed)

    def _rng(self, rng):
        if self.seed is not None:
            return np.random.default_rng(self.seed)
        if rng is None:
            return np.random.default_rng()
        if isinstance(rng, numbers.Integral) and not isinstance(rng, bool):
            return np.random.default_rng(int(rng))
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator; got {type(rng).__name__}")
        return rng

    def __call__(self, shape, dtype=None, rng=None):
        shape, dt = _shape(shape), _dtype(dtype)
        return np.ascontiguousarray(self._sample(shape, self._rng(rng)), dtype=dt)

    def _sample(self, shape, rng):  # pragma: no cover - abstract
        raise NotImplementedError

    def get_config(self):
        return {"seed": self.seed}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class Zeros(Initializer):
    """All zeros."""

    def __init__(self):
        super().__init__(None)

    def _rng(self, rng):
        return None

    def _sample(self, shape, rng):
        return np.zeros(shape)

    def get_config(self):
        return {}


class Ones(Zeros):
    """All ones."""

    def _sample(self, shape, rng):
        return np.ones(shape)


class Constant(Zeros):
    """Every entry ``value``."""

    def __init__(self, value=0.0):
        super().__init__()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"value must be a float; got {type(value).__name__}")
        self.value = float(value)

    def _sample(self, shape, rng):
        return np.full(shape, self.value)

    def get_config(self):
        return {"value": self.value}


class RandomNormal(Initializer):
    """Normal(mean, stddev); Keras defaults ``mean=0.0, stddev=0.05``."""

    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        super().__init__(seed)
        self.mean, self.stddev = float(mean), float(stddev)

    def _sample(self, shape, rng):
        return rng.normal(self.mean, self.stddev, shape)

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev, "seed": self.seed}


class TruncatedNormal(RandomNormal):
    """Normal(mean, stddev) redrawn beyond two stddevs; defaults ``0.0, 0.05``."""

    def _sample(self, shape, rng):
        return _truncated_normal(rng, shape, self.mean, self.stddev)


class RandomUniform(Initializer):
    """Uniform on ``[minval, maxval)``; Keras defaults ``-0.05, 0.05``."""

    def __init__(self, minval=-0.05, maxval=0.05, seed=None):
        super().__init__(seed)
        self.minval, self.maxval = float(minval), float(maxval)
        if self.maxval < self.minval:
            raise ValueError(f"maxval must be >= minval; got minval={minval}, maxval={maxval}")

    def _sample(self, shape, rng):
        return rng.uniform(self.minval, self.maxval, shape)

    def get_config(self):
        return {"minval": self.minval, "maxval": self.maxval, "seed": self.seed}


class VarianceScaling(Initializer):
    """Samples with variance ``scale / n``, ``n`` the fan chosen by ``mode``.

    Parameters
    ----------
    scale : float, default 1.0
    mode : {"fan_in", "fan_out", "fan_avg"}
    distribution : {"truncated_normal", "untruncated_normal", "uniform"}
        ``uniform`` draws from ``[-limit, limit]`` with ``limit = sqrt(3 scale / n)``.
    seed : int, optional
    """

    _MODES = ("fan_in", "fan_out", "fan_avg")
    _DISTS = ("truncated_normal", "untruncated_normal", "uniform")

    def __init__(self, scale=1.0, mode="fan_in", distribution="truncated_normal", seed=None):
        super().__init__(seed)
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            raise TypeError(f"scale must be a float; got {type(scale).__name__}")
        if not scale > 0:
            raise ValueError(f"scale must be > 0; got {scale}")
        if mode not in self._MODES:
            raise ValueError(f"mode must be one of {self._MODES}; got {mode!r}")
        if distribution == "normal":  # Keras' older alias
            distribution = "truncated_normal"
        if distribution not in self._DISTS:
            raise ValueError(f"distribution must be one of {self._DISTS}; got {distribution!r}")
        self.scale, self.mode, self.distribution = float(scale), mode, distribution

    def _sample(self, shape, rng):
        fan_in, fan_out = compute_fans(shape)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[
            self.mode]
        s = self.scale / max(1.0, n)
        if self.distribution == "truncated_normal":
            return _truncated_normal(rng, shape, 0.0, np.sqrt(s) / _TRUNC_STD)
        if self.distribution == "untruncated_normal":
            return rng.normal(0.0, np.sqrt(s), shape)
        limit = np.sqrt(3.0 * s)
        return rng.uniform(-limit, limit, shape)

    def get_config(self):
        return {"scale": self.scale, "mode": self.mode, "distribution": self.distribution,
                "seed": self.seed}


def _preset(name, scale, mode, distribution, doc):
    def __init__(self, seed=None):
        VarianceScaling.__init__(self, scale, mode, distribution, seed)

    def get_config(self):
        return {"seed": self.seed}

    return type(name, (VarianceScaling,), {"__init__": __init__, "get_config": get_config,
                                            "__doc__": doc, "__module__": __name__})


GlorotUniform = _preset("GlorotUniform", 1.0, "fan_avg", "uniform",
                        "Glorot/Xavier uniform: ``U(-l, l)``, "
                        "``l = sqrt(6 / (fan_in + fan_out))``.")
GlorotNormal = _preset("GlorotNormal", 1.0, "fan_avg", "truncated_normal",
                       "Glorot normal: truncated normal, std ``sqrt(2 / (fan_in + fan_out))``.")
HeNormal = _preset("HeNormal", 2.0, "fan_in", "truncated_normal",
                   "He normal: truncated normal, std ``sqrt(2 / fan_in)``.")
HeUniform = _preset("HeUniform", 2.0, "fan_in", "uniform",
                    "He uniform: ``U(-l, l)``, ``l = sqrt(6 / fan_in)``.")
LecunNormal = _preset("LecunNormal", 1.0, "fan_in", "truncated_normal",
                      "LeCun normal: truncated normal, std ``sqrt(1 / fan_in)``.")
LecunUniform = _preset("LecunUniform", 1.0, "fan_in", "uniform",
                       "LeCun uniform: ``U(-l, l)``, ``l = sqrt(3 / fan_in)``.")


class Orthogonal(Initializer):
    """A (semi-)orthogonal matrix times ``gain``, as Keras builds it.

    The shape is flattened to ``(prod(shape[:-1]), shape[-1])``; the Q factor of a
    Gaussian matrix, with column signs fixed by R's diagonal so the result is
    uniformly (Haar) distributed, transposed when the matrix is wide.
    """

    def __init__(self, gain=1.0, seed=None):
        super().__init__(seed)
        if isinstance(gain, bool) or not isinstance(gain, numbers.Real):
            raise TypeError(f"gain must be a float; got {type(gain).__name__}")
        self.gain = float(gain)

    def _sample(self, shape, rng):
        if len(shape) < 2:
            raise ValueError(f"Orthogonal needs a shape of at least 2 dims; got {shape}")
        rows = int(np.prod(shape[:-1]))
        cols = shape[-1]
        if rows == 0 or cols == 0:
            return np.zeros(shape)
        a = rng.standard_normal((max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(a)
        d = np.sign(np.diag(r))
        d[d == 0] = 1.0
        q = q * d
        if rows < cols:
            q = q.T
        return self.gain * q.reshape(shape)

    def get_config(self):
        return {"gain": self.gain, "seed": self.seed}


class Identity(Zeros):
    """``gain`` times the identity (2-D shapes only; rectangular allowed)."""

    def __init__(self, gain=1.0):
        super().__init__()
        self.gain = float(gain)

    def _sample(self, shape, rng):
        if len(shape) != 2:
            raise ValueError(f"Identity needs a 2-D shape; got {shape}")
        return self.gain * np.eye(*shape)

    def get_config(self):
        return {"gain": self.gain}


_CLASSES = {c.__name__: c for c in (
    Zeros, Ones, Constant, RandomNormal, RandomUniform, TruncatedNormal, VarianceScaling,
    GlorotUniform, GlorotNormal, HeNormal, HeUniform, LecunNormal, LecunUniform, Orthogonal,
    Identity)}
_NAMES = {
    "zeros": Zeros, "zero": Zeros, "ones": Ones, "one": Ones, "constant": Constant,
    "random_normal": RandomNormal, "random_uniform": RandomUniform,
    "truncated_normal": TruncatedNormal, "variance_scaling": VarianceScaling,
    "glorot_uniform": GlorotUniform, "glorot_normal": GlorotNormal,
    "he_normal": HeNormal, "he_uniform": HeUniform, "lecun_normal": LecunNormal,
    "lecun_uniform": LecunUniform, "orthogonal": Orthogonal, "identity": Identity,
}
_NAMES.update({k.lower(): v for k, v in _CLASSES.items()})
# Keras 3's aliases ("uniform" / "normal" are RandomUniform / RandomNormal with their
# +-0.05 / 0.05 defaults)
_NAMES.update({"uniform": RandomUniform, "normal": RandomNormal,
               "identityinitializer": Identity, "orthogonalinitializer": Orthogonal})
#: The names :func:`get` accepts (case-insensitive; class names too).
VALID_NAMES = ("glorot_uniform", "glorot_normal", "orthogonal", "zeros", "ones", "constant",
               "random_normal", "random_uniform", "truncated_normal", "he_normal",
               "he_uniform", "lecun_normal", "lecun_uniform", "variance_scaling", "identity",
               "uniform", "normal")

# function-style aliases, as keras.initializers exposes lowercase names
zeros, ones = Zeros(), Ones()
glorot_uniform, glorot_normal = GlorotUniform(), GlorotNormal()
he_normal, he_uniform = HeNormal(), HeUniform()
lecun_normal, lecun_uniform = LecunNormal(), LecunUniform()
orthogonal = Orthogonal()
random_normal, random_uniform = RandomNormal(), RandomUniform()
truncated_normal = TruncatedNormal()


_REGISTRY = _objects.Registry("initializer", Initializer, _CLASSES, _NAMES, VALID_NAMES,
                              builtin_only=True, config_names=True)


def serialize(initializer):
    """``{"class_name": ..., "config": ...}`` (JSON-safe); built-in initializers only."""
    return _REGISTRY.serialize(initializer)


def deserialize(config):
    """Inverse of :func:`serialize` (``class_name`` may also be a :func:`get` name)."""
    return _REGISTRY.deserialize(config)


def get(identifier):
    """Resolve an initializer to a callable ``(shape, dtype=None, rng=None) -> ndarray``.

    Parameters
    ----------
    identifier : str, Initializer, callable, dict or None
        A Keras name (``"glorot_uniform"``, ``"orthogonal"``, ``"zeros"``, ...,
        case-insensitive; class names such as ``"GlorotUniform"`` too), an
        initializer object or any callable (returned as is), a config dict, or
        None (returns None).
    """
    if identifier is None:
        return None
    if isinstance(identifier, str):
        return _REGISTRY.lookup(identifier)()
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if callable(identifier):
        return identifier
    raise TypeError(
        f"initializer must be a str, an Initializer, a callable or a config dict; got "
        f"{type(identifier).__name__}"
    )
