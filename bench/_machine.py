"""Machine facts, thread control and the sgemm rate, for bench/compare.py.

Every figure the benchmark prints is relative to what this machine can do:
the sgemm rate measured here (SciPy's BLAS on a large square product, with
the same thread count as the LSTM runs) is the ceiling a GEMM-bound LSTM can
approach, so each row shows its fraction of it.
"""
import contextlib
import os
import platform
import sys
import time

import numpy as np

# Peers whose versions we report when they import (name shown -> module name).
PEER_MODULES = [
    ("numpy", "numpy"), ("scipy", "scipy"), ("torch", "torch"),
    ("onnxruntime", "onnxruntime"), ("onnx", "onnx"), ("tensorflow", "tensorflow"),
    ("keras", "keras"), ("threadpoolctl", "threadpoolctl"), ("matplotlib", "matplotlib"),
]


def available_cores():
    """Cores this process may run on (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_model():
    """The CPU model string, from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags():
    """The SIMD features that matter for float32 kernels (subset of /proc/cpuinfo flags)."""
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "neon", "asimd")
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    have = set(line.split(":", 1)[1].split())
                    return [w for w in wanted if w in have]
    except OSError:
        pass
    return []


@contextlib.contextmanager
def quiet_stderr(enabled=True):
    """Silence file descriptor 2 (C++ logging of TensorFlow/XLA on first calls) for a block.

    Python exceptions still carry their messages; only stray native log lines are dropped.
    """
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def versions():
    """Version string of every peer that imports, or the reason it does not."""
    import importlib

    out = {"python": platform.python_version()}
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for shown, mod in PEER_MODULES:
        try:
            with quiet_stderr(mod in ("tensorflow", "keras")):  # absl/XLA start-up lines
                m = importlib.import_module(mod)
            out[shown] = str(getattr(m, "__version__", "unknown"))
        except Exception as e:  # noqa: BLE001 - a broken peer is reported, not fatal
            out[shown] = None
            out[shown + "_missing"] = f"{type(e).__name__}: {e}".splitlines()[0][:160]
    return out


def blas_pools():
    """The thread pools threadpoolctl sees (BLAS libraries and OpenMP runtimes)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [{"note": "threadpoolctl not installed: BLAS pools unknown; each OpenBLAS "
                         "is limited through its own set_num_threads"}]
    pools = []
    for d in threadpool_info():
        pools.append({
            "user_api": d.get("user_api"), "internal_api": d.get("internal_api"),
            "version": d.get("version"), "kernel": d.get("architecture"),
            "threading": d.get("threading_layer"), "num_threads": d.get("num_threads"),
            "file": os.path.basename(d.get("filepath", "")),
        })
    return pools


def torch_details(torch):
    """oneDNN / MKL facts from torch's build config (what nn.LSTM runs on)."""
    info = {"mkldnn_available": bool(torch.backends.mkldnn.is_available())}
    try:
        for line in torch.__config__.show().splitlines():
            s = line.strip(" -")
            if s.startswith(("Intel(R) MKL-DNN", "Intel(R) oneAPI Math Kernel", "OpenMP",
                             "CPU capability")):
                info.setdefault("build", []).append(s[:100])
    except Exception as e:  # noqa: BLE001 - build facts are informative only
        info["build_error"] = f"{type(e).__name__}: {e}"[:160]
    return info


def _openblas_setters():
    """``set_num_threads`` of every OpenBLAS in this process, found through
    /proc/self/maps (threadpoolctl's job where it is installed: without either, a
    "1 thread" sgemm or NumPy peer would run on every core)."""
    import ctypes

    import numpy  # noqa: F401  (defers import cost: loads NumPy's BLAS)
    import scipy.linalg.cython_blas  # noqa: F401  (loads SciPy's)

    out, seen = [], set()
    try:
        with open("/proc/self/maps") as f:
            paths = [ln.split()[-1] for ln in f if ln.split() and ".so" in ln.split()[-1]]
    except OSError:
        return out
    for p in paths:
        if p in seen or "blas" not in os.path.basename(p).lower():
            continue
        seen.add(p)
        try:
            lib = ctypes.CDLL(p)
        except OSError:
            continue
        for name in ("scipy_openblas_set_num_threads", "openblas_set_num_threads"):
            fn = getattr(lib, name, None)
            if fn is not None:
                out.append(fn)
                break
    return out


class Threads:
    """Set one thread count for every library at once.

    cylstm: ``cylstm.set_num_threads``; PyTorch: ``torch.set_num_threads``;
    NumPy's and SciPy's OpenBLAS: threadpoolctl's ``threadpool_limits`` on the
    'blas' pools (ONNX Runtime sessions get ``intra_op_num_threads`` when they
    are created; TensorFlow's pools are sized once, at first use).
    """

    def __init__(self, cylstm, torch=None):
        self.cylstm = cylstm
        self.torch = torch
        self._limits = None
        self.n = None

    def set(self, n):
        self.n = int(n)
        self.cylstm.set_num_threads(self.n)
        if self.torch is not None:
            self.torch.set_num_threads(self.n)
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:   # every OpenBLAS loaded (NumPy's, SciPy's), set directly
            for set_threads in _openblas_setters():
                set_threads(self.n)
            return
        if self._limits is not None:
            self._limits.restore_original_limits()
        self._limits = threadpool_limits(limits=self.n, user_api="blas")


def sgemm_rate(n, repeat=3, keep=False):
    """GFLOP/s of SciPy's sgemm on an n x n x n float32 product (median, best).

    Fortran-ordered operands so the BLAS reads them without copies.  The
    thread count in force (see :class:`Threads`) applies.  ``keep``: make the
    operands once and keep them for the next call of this size (the host probe
    after every case, :func:`host_probe`).
    """
    from scipy.linalg.blas import sgemm

    a, b, c = _OPERANDS.get(n) or _sgemm_operands(n)
    if keep:
        _OPERANDS[n] = (a, b, c)
    sgemm(1.0, a, b, beta=0.0, c=c, overwrite_c=True)  # warm-up: pool start, page faults
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        sgemm(1.0, a, b, beta=0.0, c=c, overwrite_c=True)
        times.append(time.perf_counter() - t0)
    flops = 2.0 * n ** 3
    return {"n": n, "gflops": flops / float(np.median(times)) / 1e9,
            "best_gflops": flops / min(times) / 1e9}


_OPERANDS = {}


def _sgemm_operands(n):
    rng = np.random.default_rng(0)
    a = np.asfortranarray(rng.standard_normal((n, n), dtype=np.float32))
    b = np.asfortranarray(rng.standard_normal((n, n), dtype=np.float32))
    return a, b, np.zeros((n, n), np.float32, order="F")


def host_probe(n=1024, repeat=3):
    """How fast the host runs now: the best GFLOP/s of a few n^3 sgemm calls at the
    thread count in force (after a case; on a shared host, a VM whose cores and
    caches other guests use, it drops while nothing shows in /proc/stat)."""
    return sgemm_rate(n, repeat, keep=True)["best_gflops"]


def _busy_jiffies():
    """Busy CPU time of the whole machine in seconds (from /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            parts = f.readline().split()
    except OSError:
        return None
    if not parts or parts[0] != "cpu":
        return None
    v = [int(p) for p in parts[1:]]
    busy = v[0] + v[1] + v[2] + sum(v[5:8])  # user nice system irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


class LoadMeter:
    """CPU time used by *other* processes while we measure, in cores.

    Machine-wide busy time minus this process's own CPU time, divided by the
    wall time.  On a shared machine this says which figures were disturbed.
    """

    def start(self):
        self.t0 = time.perf_counter()
        self.busy0 = _busy_jiffies()
        t = os.times()
        self.own0 = t.user + t.system
        return self

    def stop(self):
        wall = time.perf_counter() - self.t0
        busy = _busy_jiffies()
        if busy is None or self.busy0 is None or wall <= 0:
            return None
        t = os.times()
        own = t.user + t.system - self.own0
        return max(0.0, (busy - self.busy0 - own) / wall)
