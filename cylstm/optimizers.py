"""Optimizers with Keras 3 names, defaults and update rules.

All parameters of a model live in one flat 1-D array (and its gradients in a
second), so an optimizer step is one call::

    opt = Adam(learning_rate=1e-3, clipnorm=1.0)
    opt.update(params, grads, segments=[(0, 4000), (4000, 5000), ...])

``update`` checks the gradients (one read pass, which also yields the norms that
``clipnorm``/``global_clipnorm`` need) and then updates ``params`` and the
optimizer's slots in place in one fused compiled pass (:mod:`cylstm._optim`).
If any gradient is NaN or infinite it raises :class:`FloatingPointError` and
changes nothing.

The order within a step is Keras 3's: clip the gradients (``clipnorm`` per
tensor, i.e. per segment, or ``global_clipnorm``, or ``clipvalue``), apply the
decoupled weight decay ``p -= p * weight_decay * lr``, then the update rule.

Update rules (``t`` = ``iterations + 1``, ``g`` the clipped gradient):

Adam
    ``m += (g - m)(1 - b1)``, ``v += (g^2 - v)(1 - b2)``, (amsgrad:
    ``vhat = max(vhat, v)``, used for ``v``),
    ``p -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)``.
SGD
    ``m = momentum m - lr g``; ``p += m`` or, with ``nesterov``,
    ``p += momentum m - lr g``; without momentum ``p -= lr g``.
RMSprop
    ``v = rho v + (1 - rho) g^2``; centered: ``a = rho a + (1 - rho) g`` and
    ``den = v - a^2 + eps``, else ``den = v + eps``; ``inc = lr g / sqrt(den)``;
    ``mom = momentum mom + inc; p -= mom`` (or ``p -= inc`` without momentum).
AdamW
    Adam with ``weight_decay=0.004`` by default.
"""
import inspect
import math
import numbers
import sys
import warnings

import numpy as np

from cylstm import _objects, _tuning
from cylstm._config import get_num_threads

__all__ = ["SGD", "Adam", "AdamW", "Optimizer", "RMSprop", "deserialize", "get", "serialize"]

try:  # the compiled fused kernels; the NumPy path below is the reference
    from cylstm import _optim
except ImportError:  # pragma: no cover - a source tree without the extension built
    _optim = None

#: Vectors shorter than this are updated on one thread (waking the OpenMP team
#: costs more than the pass it would split).  Measured threshold: its value and
#: measurement live in cylstm/_tuning.py; patch it here to change this module.
PARALLEL_MIN_SIZE = _tuning.PARALLEL_MIN_SIZE


def _check_float(name, value, minimum=None, maximum=None, allow_none=False,
                 min_inclusive=True, max_inclusive=True):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float; got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value}")
    if minimum is not None and (value < minimum or (not min_inclusive and value == minimum)):
        op = ">=" if min_inclusive else ">"
        raise ValueError(f"{name} must be {op} {minimum}; got {value}")
    if maximum is not None and (value > maximum or (not max_inclusive and value == maximum)):
        op = "<=" if max_inclusive else "<"
        raise ValueError(f"{name} must be {op} {maximum}; got {value}")
    return value


def _caller_stacklevel():
    """``stacklevel`` that attributes a warning to the first frame outside this module.

    Subclass constructors chain through ``Optimizer.__init__``, so a fixed level
    would blame ``AdamW.__init__``; Python shows DeprecationWarnings only when they
    are attributed to ``__main__``, i.e. to the user's line.
    """
    frame = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
        level += 1
    return level


def _takes_an_argument(fn):
    """Whether a learning-rate callable wants the step (``f(step)``) or nothing."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: assume Keras' schedule
        return True
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL):
            return True
    return False


def _check_clip(name, value):
    value = _check_float(name, value, 0.0, allow_none=True)
    # Keras treats 0 as "off" too
    return value if value else None


class Optimizer:
    """Base class: learning rate, clipping, weight decay, slots, state I/O.

    Parameters
    ----------
    learning_rate : float or callable
        A float, or a schedule ``f(iterations) -> float`` called each step (a
        callable taking no argument is called as ``f()``, as Keras does).
    weight_decay : float, optional
        Decoupled weight decay: ``p -= p * weight_decay * lr`` before the update.
    clipnorm : float, optional
        Clip each weight tensor's gradient (each ``segment``) to this L2 norm.
    clipvalue : float, optional
        Clip each gradient element to ``[-clipvalue, clipvalue]`` (ignored, as in
        Keras, when ``clipnorm`` or ``global_clipnorm`` is set).
    global_clipnorm : float, optional
        Clip the gradient of all parameters together to this L2 norm.
    name : str, optional
    lr : float, optional
        Deprecated spelling of ``learning_rate`` (Keras 2); warns.
    """

    _slot_names = ()
    _default_name = "optimizer"

    def __init__(self, learning_rate=0.001, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name=None, **kwargs):
        if "lr" in kwargs:
            lr = kwargs.pop("lr")
            warnings.warn(
                f"{type(self).__name__}: the `lr` argument is deprecated; use `learning_rate` "
                "instead.", DeprecationWarning, stacklevel=_caller_stacklevel(),
            )
            learning_rate = lr
        for key in ("decay", "use_ema", "ema_momentum", "ema_overwrite_frequency",
                    "loss_scale_factor", "gradient_accumulation_steps", "jit_compile"):
            # Keras arguments that have no effect here: accept their "off" values
            if key in kwargs and kwargs[key] in (None, False, 0, 0.0):
                kwargs.pop(key)
        if kwargs:
            raise TypeError(
                f"{type(self).__name__} got unexpected keyword argument(s) {sorted(kwargs)}"
            )
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str; got {type(name).__name__}")
        self.name = name or self._default_name
        self.learning_rate = learning_rate
        self.weight_decay = _check_float("weight_decay", weight_decay, 0.0, allow_none=True)
        self.clipnorm = _check_clip("clipnorm", clipnorm)
        self.clipvalue = _check_clip("clipvalue", clipvalue)
        self.global_clipnorm = _check_clip("global_clipnorm", global_clipnorm)
        if self.clipnorm is not None and self.global_clipnorm is not None:
            raise ValueError(
                "only one of `clipnorm` and `global_clipnorm` can be set; got "
                f"clipnorm={clipnorm}, global_clipnorm={global_clipnorm}"
            )
        self.iterations = 0
        self._slots = None  # dict name -> flat array, built on the first update
        self._size = None
        self._dtype = None
        self._impl = "compiled" if _optim is not None else "numpy"

    # ------------------------------------------------------------ learning rate
    @property
    def learning_rate(self):
        """The learning rate of the next step (a float; a schedule is evaluated)."""
        lr = self._learning_rate
        if callable(lr):
            # Keras: a LearningRateSchedule gets the step, a plain callable nothing
            v = lr(self.iterations) if self._schedule_takes_step else lr()
            return _check_float("learning_rate schedule value", v, 0.0)
        return lr

    @learning_rate.setter
    def learning_rate(self, value):
        if callable(value) and not isinstance(value, numbers.Real):
            self._learning_rate = value
            self._schedule_takes_step = _takes_an_argument(value)
            return
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value.item()
        self._learning_rate = _check_float("learning_rate", value, 0.0)

    @property
    def lr(self):
        """Deprecated alias of :attr:`learning_rate`."""
        warnings.warn("`lr` is deprecated; use `learning_rate`", DeprecationWarning,
                      stacklevel=2)
        return self.learning_rate

    @lr.setter
    def lr(self, value):
        warnings.warn("`lr` is deprecated; use `learning_rate`", DeprecationWarning,
                      stacklevel=2)
        self.learning_rate = value

    # ------------------------------------------------------------ slots / state
    def _build(self, size, dtype):
        self._slots = {k: np.zeros(size, dtype=dtype) for k in self._active_slots()}
        self._size, self._dtype = size, np.dtype(dtype)

    def _active_slots(self):
        return self._slot_names

    @property
    def built(self):
        return self._slots is not None

    def get_state(self):
        """The optimizer state as ``{name: ndarray}`` (copies), for saving.

        Keys: ``"iterations"`` (int64 scalar array) and one flat array per slot
        (``"momentums"``, ``"velocities"``, ...), in the parameter layout.
        """
        state = {"iterations": np.asarray(self.iterations, dtype=np.int64)}
        if self._slots is not None:
            for k, v in self._slots.items():
                state[k] = v.copy()
        return state

    def set_state(self, state):
        """Restore a state from :meth:`get_state` (slot arrays are copied)."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict; got {type(state).__name__}")
        if "iterations" not in state:
            raise ValueError(f"state has no 'iterations'; keys: {sorted(state)}")
        it = np.asarray(state["iterations"])
        if it.size != 1 or it.dtype.kind not in "iu" or int(it.reshape(())) < 0:
            raise ValueError(f"state['iterations'] must be a non-negative int; got {it!r}")
        expected = set(self._active_slots())
        present = set(state) - {"iterations"}
        if present and present != expected:
            raise ValueError(
                f"{type(self).__name__} state needs slots {sorted(expected)}; got "
                f"{sorted(present)}"
            )
        slots = None
        if present:
            arrays = {k: np.asarray(state[k]) for k in expected}
            sizes = {a.shape for a in arrays.values()}
            dtypes = {a.dtype for a in arrays.values()}
            if len(sizes) != 1 or len(next(iter(sizes))) != 1:
                raise ValueError(
                    f"state slots must be 1-D arrays of one size; got shapes "
                    f"{ {k: a.shape for k, a in arrays.items()} }"
                )
            if len(dtypes) != 1 or next(iter(dtypes)) not in (np.float32, np.float64):
                raise ValueError(f"state slots must be float32 or float64; got {dtypes}")
            size = next(iter(sizes))[0]
            if self._size is not None and size != self._size:
                raise ValueError(
                    f"state slots have size {size}; this optimizer updates {self._size} "
                    "parameters"
                )
            if any(not np.all(np.isfinite(a)) for a in arrays.values()):
                raise ValueError("state slots contain NaN or infinite values")
            slots = {k: np.array(a, order="C") for k, a in arrays.items()}
        self.iterations = int(it.reshape(()))
        if slots is not None:
            self._slots = slots
            self._size = size
            self._dtype = next(iter(slots.values())).dtype

    # ------------------------------------------------------------ config
    def get_config(self):
        """Constructor arguments (JSON-serializable unless the learning rate is a schedule)."""
        return {
            "name": self.name,
            "learning_rate": self._learning_rate,
            "weight_decay": self.weight_decay,
            "clipnorm": self.clipnorm,
            "global_clipnorm": self.global_clipnorm,
            "clipvalue": self.clipvalue,
        }

    @classmethod
    def from_config(cls, config):
        """Build an optimizer from :meth:`get_config`'s output."""
        if not isinstance(config, dict):
            raise TypeError(f"config must be a dict; got {type(config).__name__}")
        return cls(**config)

    def __repr__(self):
        cfg = self.get_config()
        args = ", ".join(f"{k}={v!r}" for k, v in cfg.items() if v is not None)
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------ update
    def _check_arrays(self, params, grads):
        if not isinstance(params, np.ndarray):
            raise TypeError(f"params must be a numpy.ndarray; got {type(params).__name__}")
        if not isinstance(grads, np.ndarray):
            raise TypeError(f"grads must be a numpy.ndarray; got {type(grads).__name__}")
        if params.dtype not in (np.float32, np.float64):
            raise TypeError(f"params must be float32 or float64; got dtype {params.dtype}")
        if grads.dtype != params.dtype:
            raise TypeError(
                f"grads dtype {grads.dtype} differs from params dtype {params.dtype}"
            )
        if params.ndim != 1 or grads.ndim != 1 or params.shape != grads.shape:
            raise ValueError(
                f"params and grads must be 1-D arrays of one size; got params "
                f"{params.shape}, grads {grads.shape}"
            )
        if not params.flags.c_contiguous or not params.flags.writeable:
            raise ValueError("params must be a writeable C-contiguous array (it is updated "
                             "in place)")
        if self._size is not None and (params.size != self._size
                                       or params.dtype != self._dtype):
            raise ValueError(
                f"{type(self).__name__} was built for {self._size} {self._dtype} parameters; "
                f"got {params.size} {params.dtype}"
            )

    def _segments(self, segments, n):
        """Segments as an (S, 2) int64 array tiling [0, n), cached across steps.

        A model passes the same layout every step; validating it once saves most
        of the Python cost of a step on small models.
        """
        try:
            key = (n, None if segments is None else tuple(map(tuple, segments)))
        except TypeError:
            raise TypeError("segments must be a list of (start, stop) int pairs") from None
        cache = self.__dict__.get("_seg_cache")
        if cache is not None and cache[0] == key:
            return cache[1]
        seg = self._tile_segments(segments, n)
        seg.flags.writeable = False
        self._seg_cache = (key, seg)
        return seg

    @staticmethod
    def _tile_segments(segments, n):
        """Segments as an (S, 2) int64 array tiling [0, n) (gaps become segments)."""
        if segments is None:
            return np.array([[0, n]], dtype=np.int64)
        try:
            seg = np.asarray(segments, dtype=np.int64)
        except (TypeError, ValueError):
            raise TypeError("segments must be a list of (start, stop) int pairs") from None
        if seg.size == 0:
            return np.array([[0, n]], dtype=np.int64)
        if seg.ndim != 2 or seg.shape[1] != 2:
            raise ValueError(f"segments must be (start, stop) pairs; got shape {seg.shape}")
        seg = seg[np.argsort(seg[:, 0], kind="stable")]
        if np.any(seg[:, 0] < 0) or np.any(seg[:, 1] > n) or np.any(seg[:, 1] < seg[:, 0]):
            raise ValueError(f"segments must satisfy 0 <= start <= stop <= {n}; got {segments}")
        if np.any(seg[1:, 0] < seg[:-1, 1]):
            raise ValueError(f"segments overlap: {segments}")
        out, pos = [], 0
        for a, b in seg:
            if a > pos:
                out.append((pos, a))
            if b > a:
                out.append((a, b))
            pos = b
        if pos < n:
            out.append((pos, n))
        return np.array(out, dtype=np.int64).reshape(-1, 2)

    def update(self, params, grads, segments=None):
        """One optimizer step, in place on ``params``.

        Parameters
        ----------
        params, grads : ndarray, 1-D, float32 or float64, equal size and dtype
            The flat parameters (updated in place) and their gradients.
        segments : list of (start, stop), optional
            Offsets of the individual weight tensors inside the flat arrays; used
            by ``clipnorm`` (Keras clips each tensor's gradient separately).
            Default: one tensor.

        Raises
        ------
        FloatingPointError
            If any gradient is NaN or infinite; nothing is changed then.
        """
        self._check_arrays(params, grads)
        n = params.size
        seg = self._segments(segments, n)
        if not grads.flags.c_contiguous:
            grads = np.ascontiguousarray(grads)
        nthreads = self._threads(n)
        if self._impl == "compiled":
            sumsq = np.zeros(seg.shape[0], dtype=np.float64)
            finite = _optim.grad_sumsq(grads, seg, sumsq, nthreads)
        else:
            finite = bool(np.isfinite(grads).all())
            g64 = grads.astype(np.float64)
            sumsq = np.array([np.dot(g64[a:b], g64[a:b]) for a, b in seg])
        if not finite:
            bad = np.flatnonzero(~np.isfinite(grads))
            raise FloatingPointError(
                f"{bad.size} non-finite gradient value(s) (first at index {bad[0]}: "
                f"{grads[bad[0]]}); parameters left unchanged"
            )
        scale = np.ones(seg.shape[0], dtype=np.float64)
        if self.clipnorm is not None:
            norms = np.sqrt(sumsq)
            scale = self.clipnorm / np.maximum(norms, self.clipnorm)
        elif self.global_clipnorm is not None:
            gn = math.sqrt(float(np.sum(sumsq)))
            scale[:] = self.global_clipnorm / max(gn, self.global_clipnorm)
        lr = self.learning_rate
        if self._slots is None:
            self._build(n, params.dtype)
        decay = lr * self.weight_decay if self.weight_decay else 0.0
        # Keras applies clipvalue only when neither norm clip is set; +inf (not 0)
        # means "off" to the kernels: a branch-free min/max clip
        use_clipvalue = (self.clipvalue is not None and self.clipnorm is None
                         and self.global_clipnorm is None)
        clipvalue = self.clipvalue if use_clipvalue else math.inf
        if self._impl == "compiled":
            self._apply_compiled(params, grads, seg, scale, clipvalue, decay, lr, nthreads)
        else:
            g = grads.astype(np.float64) * np.repeat(scale, seg[:, 1] - seg[:, 0])
            if use_clipvalue:
                g = np.clip(g, -clipvalue, clipvalue)
            g = g.astype(params.dtype)
            if decay:
                params -= params * params.dtype.type(decay)
            self._apply_numpy(params, g, lr)
        self.iterations += 1

    @staticmethod
    def _threads(n):
        if n < PARALLEL_MIN_SIZE:
            return 1
        return get_num_threads()

    def _apply_numpy(self, params, g, lr):  # pragma: no cover - abstract
        raise NotImplementedError

    def _apply_compiled(self, params, grads, seg, scale, clipvalue, decay, lr, nthreads):
        raise NotImplementedError  # pragma: no cover - abstract

    def apply_gradients(self, grads_and_vars):
        """Keras-style step over ``[(grad, variable), ...]`` of NumPy arrays.

        The variables are updated in place.  They are gathered into one flat
        buffer for the fused update, so the list must keep its order, shapes and
        dtype from call to call (the slots follow that layout).
        """
        pairs = list(grads_and_vars)
        if not pairs:
            raise ValueError("apply_gradients needs at least one (grad, variable) pair")
        for i, pair in enumerate(pairs):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise TypeError(f"grads_and_vars[{i}] must be a (grad, variable) pair")
            g, v = pair
            if not isinstance(v, np.ndarray):
                raise TypeError(
                    f"grads_and_vars[{i}]: variable must be a numpy.ndarray; got "
                    f"{type(v).__name__}"
                )
            if np.shape(g) != v.shape:
                raise ValueError(
                    f"grads_and_vars[{i}]: gradient shape {np.shape(g)} differs from "
                    f"variable shape {v.shape}"
                )
            if not v.flags.writeable:
                raise ValueError(f"grads_and_vars[{i}]: variable is read-only")
        dtype = pairs[0][1].dtype
        if any(v.dtype != dtype for _, v in pairs):
            raise TypeError(f"all variables must share one dtype; got "
                            f"{sorted({str(v.dtype) for _, v in pairs})}")
        sizes = [v.size for _, v in pairs]
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        flat_p = np.concatenate([v.ravel() for _, v in pairs]).astype(dtype, copy=False)
        flat_g = np.concatenate([np.asarray(g, dtype=dtype).ravel() for g, _ in pairs])
        segs = [(int(offsets[i]), int(offsets[i + 1])) for i in range(len(pairs))]
        self.update(flat_p, flat_g, segs)
        for i, (_, v) in enumerate(pairs):
            v[...] = flat_p[offsets[i]:offsets[i + 1]].reshape(v.shape)
        return self.iterations


class Adam(Optimizer):
    """Adam (Kingma & Ba), Keras 3's formulation and defaults.

    Parameters
    ----------
    learning_rate : float, default 0.001
    beta_1, beta_2 : float, default 0.9, 0.999
    epsilon : float, default 1e-7
        Added to ``sqrt(v)`` (Keras' placement, after the bias correction of lr).
    amsgrad : bool, default False
    **kwargs
        ``weight_decay``, ``clipnorm``, ``clipvalue``, ``global_clipnorm``,
        ``name`` (see :class:`Optimizer`); ``lr`` is a deprecated alias of
        ``learning_rate``.
    """

    _default_name = "adam"

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 amsgrad=False, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name=None, **kwargs):
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay,
                         clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, name=name, **kwargs)
        self.beta_1 = _check_float("beta_1", beta_1, 0.0, 1.0, max_inclusive=False)
        self.beta_2 = _check_float("beta_2", beta_2, 0.0, 1.0, max_inclusive=False)
        self.epsilon = _check_float("epsilon", epsilon, 0.0)
        if not isinstance(amsgrad, (bool, np.bool_)):
            raise TypeError(f"amsgrad must be a bool; got {type(amsgrad).__name__}")
        self.amsgrad = bool(amsgrad)

    def _active_slots(self):
        return ("momentums", "velocities") + (("velocity_hats",) if self.amsgrad else ())

    def _alpha(self, lr):
        t = self.iterations + 1
        return lr * math.sqrt(1.0 - self.beta_2 ** t) / (1.0 - self.beta_1 ** t)

    def _apply_numpy(self, params, g, lr):
        s = self._slots
        dt = params.dtype.type
        m, v = s["momentums"], s["velocities"]
        m += (g - m) * dt(1.0 - self.beta_1)
        v += (g * g - v) * dt(1.0 - self.beta_2)
        if self.amsgrad:
            np.maximum(s["velocity_hats"], v, out=s["velocity_hats"])
            v = s["velocity_hats"]
        params -= m * dt(self._alpha(lr)) / (np.sqrt(v) + dt(self.epsilon))

    def _apply_compiled(self, params, grads, seg, scale, clipvalue, decay, lr, nthreads):
        s = self._slots
        vhat = s["velocity_hats"] if self.amsgrad else s["velocities"]
        _optim.adam(params, grads, s["momentums"], s["velocities"], vhat, seg, scale,
                    clipvalue, decay, self._alpha(lr), self.beta_1, self.beta_2,
                    self.epsilon, self.amsgrad, nthreads)

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon, "amsgrad": self.amsgrad}


class AdamW(Adam):
    """Adam with decoupled weight decay (default ``weight_decay=0.004``, as Keras)."""

    _default_name = "adamw"

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-7, amsgrad=False, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name=None, **kwargs):
        if weight_decay is None:
            raise ValueError("AdamW needs a weight_decay (a float >= 0); got None")
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                         epsilon=epsilon, amsgrad=amsgrad, weight_decay=weight_decay,
                         clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, name=name, **kwargs)


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, Keras 3 form.

    Parameters
    ----------
    learning_rate : float, default 0.01
    momentum : float, default 0.0
    nesterov : bool, default False
    """

    _default_name = "SGD"

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=None,
                 clipnorm=None, clipvalue=None, global_clipnorm=None, name=None, **kwargs):
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay,
                         clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, name=name, **kwargs)
        self.momentum = _check_float("momentum", momentum, 0.0, 1.0)
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"nesterov must be a bool; got {type(nesterov).__name__}")
        self.nesterov = bool(nesterov)

    def _active_slots(self):
        return ("momentums",) if self.momentum != 0 else ()

    def _apply_numpy(self, params, g, lr):
        dt = params.dtype.type
        if self.momentum != 0:
            m = self._slots["momentums"]
            m[...] = m * dt(self.momentum) - g * dt(lr)
            if self.nesterov:
                params += m * dt(self.momentum) - g * dt(lr)
            else:
                params += m
        else:
            params -= g * dt(lr)

    def _apply_compiled(self, params, grads, seg, scale, clipvalue, decay, lr, nthreads):
        m = self._slots.get("momentums", params[:0])
        _optim.sgd(params, grads, m, seg, scale, clipvalue, decay, lr, self.momentum,
                   self.nesterov, nthreads)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class RMSprop(Optimizer):
    """RMSprop, Keras 3's formulation (``epsilon`` inside the square root).

    Parameters
    ----------
    learning_rate : float, default 0.001
    rho : float, default 0.9
    momentum : float, default 0.0
    epsilon : float, default 1e-7
    centered : bool, default False
    """

    _default_name = "rmsprop"

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7,
                 centered=False, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name=None, **kwargs):
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay,
                         clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, name=name, **kwargs)
        self.rho = _check_float("rho", rho, 0.0, 1.0)
        self.momentum = _check_float("momentum", momentum, 0.0, 1.0)
        self.epsilon = _check_float("epsilon", epsilon, 0.0)
        if not isinstance(centered, (bool, np.bool_)):
            raise TypeError(f"centered must be a bool; got {type(centered).__name__}")
        self.centered = bool(centered)

    def _active_slots(self):
        return (("velocities",) + (("momentums",) if self.momentum > 0 else ())
                + (("average_gradients",) if self.centered else ()))

    def _apply_numpy(self, params, g, lr):
        dt = params.dtype.type
        s = self._slots
        v = s["velocities"]
        v[...] = dt(self.rho) * v + dt(1.0 - self.rho) * g * g
        if self.centered:
            a = s["average_gradients"]
            a[...] = dt(self.rho) * a + dt(1.0 - self.rho) * g
            den = v - a * a + dt(self.epsilon)
        else:
            den = v + dt(self.epsilon)
        inc = dt(lr) * g / np.sqrt(den)
        if self.momentum > 0:
            mom = s["momentums"]
            mom[...] = dt(self.momentum) * mom + inc
            params -= mom
        else:
            params -= inc

    def _apply_compiled(self, params, grads, seg, scale, clipvalue, decay, lr, nthreads):
        s = self._slots
        v = s["velocities"]
        mom = s.get("momentums", params[:0])
        avg = s.get("average_gradients", params[:0])
        _optim.rmsprop(params, grads, v, mom, avg, seg, scale, clipvalue, decay, lr, self.rho,
                       self.momentum, self.epsilon, self.centered, nthreads)

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "momentum": self.momentum,
                "epsilon": self.epsilon, "centered": self.centered}


_CLASSES = {"Adam": Adam, "AdamW": AdamW, "SGD": SGD, "RMSprop": RMSprop}
_NAMES = {k.lower(): v for k, v in _CLASSES.items()}
#: The names :func:`get` accepts (case-insensitive).
VALID_NAMES = ("adam", "adamw", "sgd", "rmsprop")


_REGISTRY = _objects.Registry("optimizer", Optimizer, _CLASSES, _NAMES, VALID_NAMES,
                              config_names=True)


def serialize(optimizer):
    """``{"class_name": ..., "config": ...}`` for an optimizer (JSON-safe for float lr)."""
    return _REGISTRY.serialize(optimizer)


def deserialize(config):
    """Inverse of :func:`serialize` (``class_name`` may also be a :func:`get` name)."""
    return _REGISTRY.deserialize(config)


def get(identifier):
    """Resolve an optimizer.

    Parameters
    ----------
    identifier : str, Optimizer or dict
        ``"adam"``, ``"adamw"``, ``"sgd"``, ``"rmsprop"`` (case-insensitive; a new
        instance with Keras defaults), an :class:`Optimizer` (returned as is), or
        a ``{"class_name", "config"}`` dict.
    """
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str):
        return _REGISTRY.lookup(identifier)()
    if isinstance(identifier, dict):
        return deserialize(identifier)
    raise TypeError(
        f"optimizer must be a str, an Optimizer or a config dict; got "
        f"{type(identifier).__name__}"
    )
