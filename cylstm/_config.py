"""Threads and build facts: ``set_num_threads``, ``get_num_threads``, ``show_config``."""
import ctypes
import os
import sys
import threading

import numpy
import scipy
import scipy.linalg.cython_blas  # (loads the BLAS that _find_scipy_blas looks for)

from cylstm import _build_info, _cpu, _lstm, _openmp_helpers, _packcache, _tuning

_lock = threading.Lock()
_num_threads = None
_blas_lib = None  # (path, set_fn, get_fn) of the BLAS SciPy calls, or None


def _available_cores():
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, n)


def _default_threads():
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return _available_cores()


def get_num_threads():
    """Threads cylstm's kernels use (OpenMP threads and BLAS threads alike).

    Defaults to the cores this process may run on, or ``OMP_NUM_THREADS``.
    """
    global _num_threads
    if _num_threads is None:
        _num_threads = _default_threads()
    return _num_threads


def set_num_threads(n):
    """Set the number of threads cylstm's kernels use (``n >= 1``).

    The kernels either split the batch across ``n`` OpenMP threads, each
    calling a single-threaded BLAS, or run on the calling thread with SciPy's
    BLAS limited to ``n`` threads; the two pools never run at once.
    """
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, (int,)) and not hasattr(n, "__index__"):
        raise TypeError(f"set_num_threads: n must be an int; got {type(n).__name__}")
    n = int(n)
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1; got {n}")
    with _lock:
        _num_threads = n


def _find_scipy_blas():
    """Locate the BLAS library behind scipy.linalg.cython_blas: (path, its thread
    setter, its thread getter, its OpenBLAS core name or None)."""
    paths = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                p = line.split()[-1] if line.split() else ""
                if ".so" in p and "blas" in p.lower() and p not in paths:
                    paths.append(p)
    except OSError:
        return None
    # SciPy's own copy first (numpy ships a separate one)
    paths.sort(key=lambda p: (0 if "scipy" in p else 1, p))
    for p in paths:
        try:
            lib = ctypes.CDLL(p)
        except OSError:
            continue
        for prefix in ("scipy_openblas_", "openblas_"):
            set_fn = getattr(lib, prefix + "set_num_threads", None)
            get_fn = getattr(lib, prefix + "get_num_threads", None)
            if set_fn is not None and get_fn is not None:
                get_fn.restype = ctypes.c_int
                core = None
                core_fn = getattr(lib, prefix + "get_corename", None)
                if core_fn is not None:
                    core_fn.restype = ctypes.c_char_p
                    name = core_fn()
                    core = name.decode("ascii", "replace").strip() if name else None
                return p, set_fn, get_fn, core
    return None


def _blas():
    """SciPy's BLAS as (path, set_fn, get_fn, core name), or None; found once.

    The first call also installs its ``set_num_threads`` in _lstm.pyx, the one
    holder of the setter (_stream.pyx calls it through cylstm/_lstm.pxd): this
    is the only place that does, and the kernels call it before they run
    (cylstm.functional, cylstm.stream).
    """
    global _blas_lib
    if _blas_lib is None:
        found = _find_scipy_blas()
        _blas_lib = found if found is not None else False
        addr = ctypes.cast(found[1], ctypes.c_void_p).value if found else 0
        _lstm._set_blas_thread_setter(addr or 0)
    return _blas_lib or None


def openblas_spin():
    """{library file: n} for each OpenBLAS copy loaded in this process: its idle
    threads spin 2**n cycles after a call (OPENBLAS_THREAD_TIMEOUT, read when the
    copy loaded; see cylstm/__init__.py).  Empty where none says."""
    out = {}
    try:
        with open("/proc/self/maps") as f:
            paths = {ln.split()[-1] for ln in f if "openblas" in ln and ".so" in ln}
    except OSError:
        return out
    for p in sorted(paths):
        try:
            fn = getattr(ctypes.CDLL(p), "openblas_thread_timeout", None)
        except OSError:
            continue
        if fn is not None:
            fn.restype = ctypes.c_int
            out[os.path.basename(p)] = int(fn()) or 28   # 0: not set, OpenBLAS's 28
    return out


def _spin_report():
    spins = openblas_spin()
    if not spins:
        return "no OpenBLAS loaded, or it does not say"
    return ", ".join(f"{k} {v}" for k, v in spins.items()) + (
        " (28: loaded before cylstm set 18; set OPENBLAS_THREAD_TIMEOUT=18 before "
        "importing NumPy)" if any(v >= 28 for v in spins.values()) else "")


def blas_core():
    """The core OpenBLAS picked for this CPU (e.g. "Haswell", "SkylakeX",
    "Cooperlake"), or None when SciPy's BLAS is not OpenBLAS or does not say."""
    found = _blas()
    return found[3] if found else None


def blas_info():
    """Dict describing the BLAS SciPy provides (via threadpoolctl when installed)."""
    info = {"library": None, "version": None, "threading": None, "kernel": None,
            "num_threads": None}
    found = _blas()
    if found:
        info["library"] = os.path.basename(found[0])
        info["num_threads"] = found[2]()
        info["kernel"] = found[3]
    try:
        from threadpoolctl import threadpool_info  # defers import cost: threadpoolctl is optional

        for d in threadpool_info():
            path = d.get("filepath", "")
            ours = (found and path == found[0]) or (not found and "scipy" in path)
            if d.get("user_api") == "blas" and ours:
                info.update(library=d.get("internal_api"), version=d.get("version"),
                            threading=d.get("threading_layer"),
                            kernel=d.get("architecture") or info["kernel"],
                            num_threads=d.get("num_threads"))
                break
    except ImportError:
        pass
    return info


def show_config(file=None):
    """Print how cylstm was built and what it runs on."""
    from cylstm import __version__  # breaks a cycle: cylstm/__init__ imports this module

    out = file or sys.stdout
    b = blas_info()
    cuda = getattr(_build_info, "CUDA", False)
    cuda_avail = False
    if cuda:
        try:
            from cylstm import cuda as _cuda  # defers import cost: cylstm.cuda looks for a GPU

            cuda_avail = _cuda.is_available()
        except Exception:  # noqa: BLE001 - report, never fail
            cuda_avail = False
    lines = [
        f"cylstm {__version__}",
        f"  numpy {numpy.__version__}, scipy {scipy.__version__}",
        (f"  BLAS (from SciPy): {b['library']} {b['version'] or ''} "
         f"threading={b['threading']} kernel={b['kernel']} threads={b['num_threads']}"),
        f"  OpenBLAS idle-thread spin (2**n cycles, OPENBLAS_THREAD_TIMEOUT): {_spin_report()}",
        (f"  OpenMP: {'on' if _openmp_helpers.openmp_enabled() else 'OFF (serial build)'}"
         f" (omp max threads {_openmp_helpers.omp_max_threads()})"),
        f"  cylstm threads: {get_num_threads()} (cores available: {_available_cores()})",
        f"  CUDA backend built: {bool(cuda)}; GPU available: {cuda_avail}",
        f"  debug build: {_build_info.DEBUG}, native build: {_build_info.NATIVE}",
        (f"  ISA level: {_cpu.level_name(_cpu.active_level())} "
         f"(CPU: {_cpu.level_name(_cpu.detected_level())}; "
         f"CYLSTM_CPU={os.environ.get('CYLSTM_CPU')!r}; "
         f"kernels {'per level' if _cpu.VARIANTS else 'built once'})"),
    ]
    try:
        lines += _planner_lines()
    except Exception as e:  # noqa: BLE001 - report, never fail
        lines.append(f"  planner: facts unavailable ({type(e).__name__}: {e})")
    print("\n".join(lines), file=out)


def _reduced_precision_line(f):
    """How the streaming runner's bf16 and int8 weights run on this CPU."""
    have = sorted(f.flags & {"avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8"})
    if f.isa_level == 2 and "avx512_vnni" in f.flags:
        i8 = "vpmovsxbw + vpdpwssd (AVX512-VNNI)"
    elif f.isa_level == 2:
        i8 = "vpmovsxbw + vpmaddwd (AVX-512)"
    elif f.isa_level == 1:
        i8 = "vpmovsxbw + vpmaddwd (AVX2)"
    else:
        i8 = "portable C"
    return ("  reduced-precision weights (streaming runner, pool): bf16 widened to float32 by "
            "shifts, float32 FMAs; int8 times int16-quantized rows, exact int32 sums "
            f"({i8}), scaled in float32; CPU's bf16/int8 dot-product instructions: "
            f"{' '.join(have) if have else 'none'}")


def _mixed_precision_line(f):
    """The global dtype policy, and how mixed_bfloat16 runs here: the LSTM's products
    on the bf16 engine this process may use (AMX tiles, or AVX512-BF16 dot products
    on a CPU without AMX), else emulated; with the CPU's bf16 instructions named."""
    from cylstm import _lstm, mixed_precision  # (a leaf module; the kernels)

    def yes(flag):
        return "yes" if flag in f.flags else "no"

    engine = _lstm.bf16_engine()
    dense = "; Dense emulated (operands rounded to bf16, float32 FMAs)"
    if engine == "amx":
        how = ("LSTM forward and backward products on AMX tiles (tdpbf16ps, float32 sums; "
               "products of a few rows on AVX512-BF16 vdpbf16ps)" + dense)
    elif engine == "avx512_bf16":
        how = ("LSTM forward and backward products on AVX512-BF16 dot products (vdpbf16ps, "
               f"float32 sums; no AMX tiles: {_lstm.amx_status()[1]})" + dense)
    else:
        how = ("emulated (operands rounded to bf16, float32 FMAs): "
               f"{_lstm._bf16_engine_why()}")
    return (f"  dtype policy: global {mixed_precision.global_policy().name!r}; "
            f"mixed_bfloat16: {how}; CPU bf16 instructions: AVX512-BF16 "
            f"{yes('avx512_bf16')}, AMX-BF16 {yes('amx_bf16')}")


def _panel_kblock_line(f):
    """The AVX2 panel passes' K blocks: the budget in force and where it came from."""
    from cylstm import _cpu
    now = _cpu.current_panel_kblock()
    rule = _tuning.panel_kblock_bytes(f)
    src = ("L2 per core / PANEL_KBLOCK_L2_FRACTION" if now == rule
           else f"set at run time (the rule gives {rule >> 10} KiB)")
    stream = _lstm._panel_stream_min()
    return (f"  AVX2 panel passes: K blocks of about {now >> 10} KiB of a panel ({src}; "
            f"0: whole panels; AVX-512 passes are not blocked); the next panel streamed "
            f"in where a product's weights pass {stream >> 10} KiB "
            f"({'L2 per core' if stream == f.l2_per_core else 'set at run time'})")


def _planner_lines():
    """The CPU facts, thresholds and tuning cache the forward planner uses."""
    f = _tuning.cpu_facts()
    mib = 2.0**20
    lines = [
        (f"  CPU: {f.model_name} ({f.vendor} family {f.family} model {f.model}), "
         f"{f.n_cores} cores available, ISA {f.isa_name} (level {f.isa_level}), "
         f"512-bit FMA ports {f.fma512_ports}"),
        f"  CPU flags of interest: {' '.join(sorted(f.flags)) or 'none'}",
        (f"  caches: L2 {f.l2_per_core / mib:.2f} MiB per core; L3 {f.l3_per_core / mib:.2f} MiB "
         f"per core ({f.l3_source}); LLC budget {f.llc_budget / mib:.2f} MiB (model rule: "
         f"L3 per core x cores)"),
        _panel_kblock_line(f),
        (f"  BLAS core: {f.blas_core}; per-step BLAS products "
         f"{'as small tiles' if f.blas_tiles_steps else 'in one call'} (STEP_TILE_BLAS_CORES)"),
        _reduced_precision_line(f),
        _mixed_precision_line(f),
        "  thresholds (cylstm/_tuning.py):",
    ]
    lines += [f"    {name} = {value}: {src}" for name, value, src in _tuning.threshold_sources()]
    path = _tuning.cache_path()
    if not _tuning.tuning_enabled():
        lines.append(f"  tuned cache: off (CYLSTM_TUNE=0; not read: {path}); "
                     "forward paths from the model rules")
    else:
        data, problem = _tuning.read_cache(path)
        if data is None:
            lines.append(f"  tuned cache: {path}: {problem}; forward paths from the model "
                         "rules (run cylstm.tune() or python -m cylstm.tune to measure)")
        else:
            ch = data["choices"]
            lines.append(f"  tuned cache: {path}: {len(ch)} shape classes measured; "
                         "they override the model rules for those classes")
            lines += [f"    {k}: {v['path']}" for k, v in sorted(ch.items())]
    pc = _packcache.stats()
    lines.append(f"  packed-weight cache (inference on the panel paths; checked against the "
                 f"weights each call unless a weights_version vouches for them): "
                 f"{pc['entries']} entries, {pc['bytes'] >> 10} KiB of "
                 f"{pc['budget'] >> 20} MiB; {pc['hits']} hits ({pc['vouched']} vouched), "
                 f"{pc['misses']} misses, {pc['skipped']} skipped")
    return lines
