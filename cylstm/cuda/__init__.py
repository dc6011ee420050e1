"""cylstm's optional CUDA backend: cuBLAS GEMMs and fused LSTM cell kernels.

Built only when the package is built with ``CYLSTM_CUDA=1`` (see cylstm/cuda/README.md);
the default build is CPU-only and this module then imports fine and reports the backend
as unavailable.

>>> import cylstm.cuda
>>> cylstm.cuda.is_available()          # False without the extension or without a GPU
>>> cylstm.cuda.unavailable_reason()    # why, as a sentence (None when available)
>>> from cylstm.cuda import functional as gpu
>>> out = gpu.lstm_forward(x, W, U, b, training=True)   # same API as cylstm.functional
>>> grads = gpu.lstm_backward(out.cache, grad_output=dy)

Inputs and results are NumPy arrays: each call copies the batch in and the results out.
The weights are uploaded once per ``weights_version`` (see
:func:`cylstm.cuda.functional.lstm_forward`), so a model keeps them resident on the
device between batches.
"""
import atexit
import ctypes
import glob
import importlib
import importlib.util
import os
import sys
import threading

__all__ = [
    "CudaError",
    "DeviceArray",
    "clear_cache",
    "device_count",
    "device_name",
    "functional",
    "get_context",
    "is_available",
    "resolve_device",
    "set_fused_max_units",
    "set_tf32",
    "unavailable_reason",
]

_lock = threading.Lock()
_ext = None
_reason = None
_contexts = {}
_ctx_locks = {}  # one op at a time per context: its weight cache and scratch are shared
_tf32 = False
_fused_max_units = None  # None: the backend's default (128)


class CudaError(RuntimeError):
    """The CUDA backend failed or is unavailable (the message says why)."""


def _preload_cublas():
    """Load libcublas from the nvidia pip wheels when the loader cannot find it.

    The extension carries an RPATH to the folder found at build time; this covers an
    extension moved to another environment that has the wheels elsewhere.
    """
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.submodule_search_locations:
        return False
    loaded = False
    for root in spec.submodule_search_locations:
        for sub in ("cu13", "cublas"):
            for name in ("libcublasLt.so.*", "libcublas.so.*"):
                for path in sorted(glob.glob(os.path.join(root, sub, "lib", name))):
                    try:
                        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                        loaded = True
                    except OSError:
                        pass
    return loaded


def _load():
    """Import the compiled extension once; remember why it failed."""
    global _ext, _reason
    if _ext is not None or _reason is not None:
        return _ext
    with _lock:
        if _ext is not None or _reason is not None:
            return _ext
        try:
            _cuda = importlib.import_module("cylstm.cuda._cuda")
        except ImportError as e:
            first = e
            _cuda = None
            if "libcublas" in str(e) and _preload_cublas():
                try:
                    _cuda = importlib.import_module("cylstm.cuda._cuda")
                except ImportError as e2:
                    first = e2
            if _cuda is None:
                if getattr(first, "name", None) == "cylstm.cuda._cuda":
                    _reason = ("cylstm was built without the CUDA backend (rebuild with "
                               "CYLSTM_CUDA=1, see cylstm/cuda/README.md)")
                else:
                    _reason = f"the CUDA extension cannot be loaded: {first}"
                return None
        n, why = _cuda.device_count()
        if n == 0:
            _reason = f"no usable CUDA device: {why or 'none found'}"
            return None
        try:  # a device that cannot start a context or cuBLAS is not usable either
            ctx = _cuda.Context(0)
        except Exception as e:  # noqa: BLE001 - the reason is reported, not raised
            _reason = str(e)
            return None
        _contexts.setdefault(0, ctx)
        _ctx_locks.setdefault(0, threading.RLock())
        if _tf32:
            ctx.set_tf32(True)
        if _fused_max_units is not None:
            ctx.set_fused_max_units(_fused_max_units)
        _ext = _cuda
        return _ext


def is_available():
    """True when the CUDA extension is built and a CUDA device is usable.

    Never raises: any failure (no extension, no driver, no device) gives False, and
    :func:`unavailable_reason` says which.
    """
    try:
        return _load() is not None
    except Exception as e:  # noqa: BLE001 - availability checks must not raise
        global _reason
        _reason = f"checking the CUDA backend failed: {e}"
        return False


def unavailable_reason():
    """Why :func:`is_available` is False (a sentence), or None when it is True."""
    return None if is_available() else _reason


def _require():
    ext = _load()
    if ext is None:
        raise CudaError(f"cylstm.cuda is not available: {_reason}")
    return ext


def device_count():
    """Number of visible CUDA devices (0 without the extension or a driver)."""
    try:
        ext = _load()
    except Exception:  # noqa: BLE001 - a count, never an exception
        return 0
    return 0 if ext is None else ext.device_count()[0]


def get_context(device=0):
    """The per-process context (stream, cuBLAS handle) of ``device``, created once."""
    ext = _require()
    device = int(device)
    with _lock:
        ctx = _contexts.get(device)
        if ctx is None:
            ctx = ext.Context(device)
            if _tf32:
                ctx.set_tf32(True)
            if _fused_max_units is not None:
                ctx.set_fused_max_units(_fused_max_units)
            _contexts[device] = ctx
            _ctx_locks[device] = threading.RLock()
    return ctx


def context_lock(device=0):
    """The lock that serializes work on ``device``'s context (held by each op)."""
    get_context(device)
    return _ctx_locks[int(device)]


def device_name(device=0):
    """Name and compute capability of ``device``, e.g. ``'NVIDIA H100 (sm_90)'``."""
    return get_context(device).name


def set_tf32(enabled):
    """Let float32 GEMMs use TF32 tensor cores (Ampere and newer).

    Off by default: float32 results then match the CPU to ~1e-5.  On, the GEMMs run
    several times faster at ~1e-3 relative error, as PyTorch's
    ``torch.backends.cudnn.allow_tf32`` (on by default for cuDNN's LSTM).
    """
    global _tf32
    _tf32 = bool(enabled)
    with _lock:
        for ctx in _contexts.values():
            ctx.set_tf32(_tf32)


def resolve_device(device):
    """Parse a device spelling: ``'cpu'`` -> ``('cpu', None)``; ``'cuda'``, ``'gpu'`` or
    ``'cuda:N'`` -> ``('cuda', N)`` after checking that the backend and device N exist.

    Raises ValueError for an unknown spelling and :class:`CudaError` (saying why) when
    the CUDA backend or that device is unavailable.  Layers and models call this for
    their ``device`` argument / ``to(device)``.
    """
    if device is None:
        return "cpu", None
    text = str(device).strip().lower()
    if text == "cpu":
        return "cpu", None
    kind, _, index = text.partition(":")
    if kind not in ("cuda", "gpu") or (index and not index.isdigit()):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N'; got {device!r}")
    n = int(index) if index else 0
    _require()
    count = device_count()
    if n >= count:
        raise CudaError(f"CUDA device {n} requested; {count} visible")
    return "cuda", n


def set_fused_max_units(n):
    """Run the whole time loop of layers with at most ``n`` units in one kernel.

    Small layers are dominated by launch latency: two launches per step (a cuBLAS GEMM
    and the cell kernel) cost more than their math, so up to ``n`` units (default 128,
    at most 256) each sample's sequence runs in one thread block of a single kernel.
    ``0`` always uses cuBLAS per step.
    """
    global _fused_max_units
    n = int(n)
    if n < 0:
        raise ValueError(f"set_fused_max_units: n must be >= 0; got {n}")
    _fused_max_units = n
    with _lock:
        for ctx in _contexts.values():
            ctx.set_fused_max_units(n)


def clear_cache():
    """Free the device copies of weights kept by :mod:`cylstm.cuda.functional`."""
    from cylstm.cuda import functional  # breaks a cycle: cylstm.cuda.functional imports this module

    functional._weights.clear()


@atexit.register
def _shutdown():
    """Free device memory and contexts while the CUDA runtime is still up (its own exit
    handlers run after Python's)."""
    fn = sys.modules.get("cylstm.cuda.functional")
    if fn is not None:
        fn._weights.clear()
    with _lock:
        _contexts.clear()


def __getattr__(name):
    if name == "functional":  # imported lazily: it imports cylstm.functional
        return importlib.import_module("cylstm.cuda.functional")
    if name == "DeviceArray":  # the extension's class (needs the backend)
        return _require().DeviceArray
    raise AttributeError(f"module 'cylstm.cuda' has no attribute {name!r}")
