"""cylstm: the fastest practical LSTM on CPUs.

Cython kernels over SciPy's BLAS with OpenMP, under a Keras-compatible API::

    from cylstm import Sequential, LSTM, Dense
    from cylstm.optimizers import Adam

Submodules: ``functional`` (the kernels over NumPy arrays), ``layers``,
``models``, ``optimizers``, ``losses``, ``metrics``, ``callbacks``,
``initializers``, ``regularizers``, ``constraints``, ``utils``, ``stream``,
``interop``, ``cuda``, ``mixed_precision`` (dtype policies: ``mixed_bfloat16``).
"""
import importlib
import os as _os

__version__ = "0.1.0"

# OpenBLAS's idle threads spin (sched_yield) for 2**28 cycles, about 0.1 s, after
# every multi-threaded call, on the cores cylstm's threads then need: one 512^3
# sgemm (NumPy's or SciPy's) right before a 2-thread forward at (T, B, I, H) =
# (100, 32, 128, 256) took it from 24-26 ms to 45-48 ms, slower than one thread.
# 2**18 cycles (~0.1 ms) keeps back-to-back BLAS calls warm and frees the core:
# 25-27 ms (AMD EPYC (2 cores), Zen 3, 2026-12-02; README "Threads").  OpenBLAS
# reads it when it loads, so it applies to the copies loaded after this line
# (SciPy's, and NumPy's when cylstm is imported first); a value the user set is
# kept.  show_config() says what each copy runs with.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "18")

try:  # the compiled kernels: missing in a source tree that was never built
    from cylstm import _lstm  # noqa: F401
except ImportError as e:
    _root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    if not _os.path.exists(_os.path.join(_root, "setup.py")):
        raise   # an installed copy: the error as it is
    raise ImportError(
        f"cylstm is imported from its source tree {_root}, whose compiled extensions are "
        f"not built ({e}).  Build them there with 'python setup.py build_ext --inplace', "
        "or 'pip install .' and import cylstm from another directory") from e

# CYLSTM_CPU (an ISA level to force) is refused here, with a clear error, if it
# is unknown or above the CPU's level: before anything runs a kernel.
from cylstm import _cpu

_cpu.check_env()
# the AVX2 panel passes' K blocks, and the weights past which the kernels stream
# in the next panel, from the core's L2 (cylstm/_tuning.py)
from cylstm import _tuning as _tuning_facts

_cpu.set_panel_kblock(_tuning_facts.panel_kblock_bytes())
_cpu.set_panel_stream_min(_tuning_facts.detected_cpu().l2_per_core)
del _tuning_facts

from cylstm import functional
from cylstm._config import get_num_threads, set_num_threads, show_config
from cylstm._memory import get_memory_budget, set_memory_budget
from cylstm._tuning import tune

_LAZY = {
    "LSTM": "cylstm.layers", "Dense": "cylstm.layers", "Bidirectional": "cylstm.layers",
    "Dropout": "cylstm.layers", "Masking": "cylstm.layers", "Embedding": "cylstm.layers",
    "Input": "cylstm.layers", "RepeatVector": "cylstm.layers",
    "TimeDistributed": "cylstm.layers", "Activation": "cylstm.layers",
    "Sequential": "cylstm.models", "load_model": "cylstm.models", "Model": "cylstm.models",
    "Concatenate": "cylstm.layers", "Add": "cylstm.layers", "Subtract": "cylstm.layers",
    "Multiply": "cylstm.layers", "Average": "cylstm.layers", "Maximum": "cylstm.layers",
    "Minimum": "cylstm.layers", "Flatten": "cylstm.layers", "Reshape": "cylstm.layers",
    "StreamRunner": "cylstm.stream",
}
_SUBMODULES = {"layers", "models", "optimizers", "losses", "metrics", "callbacks",
               "initializers", "regularizers", "constraints", "utils", "stream", "interop",
               "cuda", "activations", "preprocessing", "mixed_precision"}

# (the starred names are _LAZY's and _SUBMODULES' strings, which ruff cannot see through)
__all__ = ["get_num_threads", "set_num_threads", "get_memory_budget",  # noqa: PLE0604
           "set_memory_budget", "show_config", "tune", "functional",
           "__version__", *_LAZY, *sorted(_SUBMODULES)]


def __getattr__(name):
    # Imported on first use, so `import cylstm` stays light for services that
    # only need the functional kernels or the streaming runner.
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"cylstm.{name}")
    raise AttributeError(f"module 'cylstm' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
