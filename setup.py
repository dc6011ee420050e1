"""Build cylstm's Cython extensions.

Environment switches (all optional):

``CYLSTM_DEBUG=1``
    Cython bounds/wraparound/initialized checks on, ``-O0 -g``; with
    ``CYLSTM_SANITIZE=1`` also ``-fsanitize=address,undefined``.
``CYLSTM_NATIVE=1``
    Adds ``-march=native`` (not portable: for your own machine only).
``CYLSTM_NO_OPENMP=1``
    Builds serial even where the compiler has OpenMP.
``CYLSTM_ONLY=_lstm,_stream``
    Development only: build just the named extensions (with ``--inplace``).
``CYLSTM_CUDA=1``
    Also builds the cuBLAS backend (see ``cuda_extensions`` below).
"""
import os
import subprocess
import sys
import sysconfig
import tempfile
import textwrap

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
DEBUG = os.environ.get("CYLSTM_DEBUG", "0") == "1"
SANITIZE = os.environ.get("CYLSTM_SANITIZE", "0") == "1"
NATIVE = os.environ.get("CYLSTM_NATIVE", "0") == "1"
NO_OPENMP = os.environ.get("CYLSTM_NO_OPENMP", "0") == "1"
CUDA = os.environ.get("CYLSTM_CUDA", "0") == "1"


def _compiler_is_msvc():
    return sys.platform == "win32" and "GCC" not in sys.version


def _openmp_flags():
    """Test-compile a tiny OpenMP program; return (compile, link) flags or None."""
    if NO_OPENMP:
        return None
    if _compiler_is_msvc():
        return ["/openmp"], []
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()
    src = textwrap.dedent(
        """
        #include <omp.h>
        #include <stdio.h>
        int main(void) {
            int n = 0;
            #pragma omp parallel reduction(+:n)
            n += 1;
            printf("%d", n > 0);
            return 0;
        }
        """
    )
    candidates = [(["-fopenmp"], ["-fopenmp"])]
    if sys.platform == "darwin":
        candidates.append((["-Xpreprocessor", "-fopenmp"], ["-lomp"]))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "omp_check.c")
        with open(path, "w") as f:
            f.write(src)
        for cflags, lflags in candidates:
            try:
                subprocess.run(
                    cc + cflags + [path, "-o", os.path.join(tmp, "omp_check")] + lflags,
                    check=True, capture_output=True, timeout=120,
                )
                return cflags, lflags
            except (OSError, subprocess.SubprocessError):
                continue
    return None


def _base_flags():
    if _compiler_is_msvc():
        return ["/O2"], []
    if DEBUG:
        cflags = ["-O0", "-g", "-UNDEBUG"]
        lflags = []
        if SANITIZE:
            cflags += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
            lflags += ["-fsanitize=address,undefined"]
    else:
        cflags = ["-O3"]
        lflags = []
    if NATIVE:
        cflags.append("-march=native")
    # Cython-generated code trips these on purpose; they are noise, not bugs.
    cflags += ["-Wno-unused-function", "-Wno-unreachable-code"]
    # cylstm never reads errno; with math-errno on, GCC guards every sqrt with a libm
    # call for errno, which stops elementwise loops (the optimizer updates) vectorizing.
    cflags.append("-fno-math-errno")
    # Nor does it read the floating-point exception flags.  With trapping math on,
    # GCC may not compute both sides of a select (the clamps and the two-branch
    # tanh in cylstm_math.h), so the cell loops stayed scalar in every
    # auto-vectorized variant: on an AVX2 CPU (2-vCPU Zen 3, 2026-12-02) the cell
    # took half of a (100, 32, 10, 50) forward.  No result changes: clang's default.
    cflags.append("-fno-trapping-math")
    return cflags, lflags


def cpu_extensions():
    cflags, lflags = _base_flags()
    omp = _openmp_flags()
    if omp is None:
        bar = "!" * 78
        sys.stderr.write(
            f"\n{bar}\n  cylstm: the C compiler has no OpenMP support (or CYLSTM_NO_OPENMP=1).\n"
            "  Building SERIAL kernels: everything works, multi-threading does not.\n"
            "  On macOS: brew install libomp, then rebuild.\n"
            f"{bar}\n\n"
        )
    else:
        cflags = cflags + omp[0]
        lflags = lflags + omp[1]
    include_dirs = [os.path.join(HERE, "include"), np.get_include()]
    names = sorted(
        f[:-4] for f in os.listdir(os.path.join(HERE, "cylstm")) if f.endswith(".pyx")
    )
    only = os.environ.get("CYLSTM_ONLY")  # dev builds: "_lstm,_stream" builds just those
    if only:
        names = [n for n in names if n in only.split(",")]
    exts = []
    for name in names:
        exts.append(
            Extension(
                f"cylstm.{name}",
                [f"cylstm/{name}.pyx"],
                include_dirs=include_dirs,
                extra_compile_args=cflags,
                extra_link_args=lflags,
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            )
        )
    return exts, omp is not None


def cuda_extensions():
    """The optional cuBLAS backend (``CYLSTM_CUDA=1``); see cylstm/cuda/."""
    try:
        sys.path.insert(0, os.path.join(HERE, "cylstm", "cuda"))
        from _build_cuda import cuda_extension
    finally:
        sys.path.pop(0)
    return [cuda_extension(HERE, DEBUG)]


def _write_build_info(openmp):
    path = os.path.join(HERE, "cylstm", "_build_info.py")
    text = (
        "# Written by setup.py at build time.\n"
        f"OPENMP = {bool(openmp)!r}\n"
        f"CUDA = {bool(CUDA)!r}\n"
        f"DEBUG = {bool(DEBUG)!r}\n"
        f"NATIVE = {bool(NATIVE)!r}\n"
    )
    with open(path, "w") as f:
        f.write(text)


exts, has_openmp = cpu_extensions()
directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": not DEBUG,
    "embedsignature": True,
}


def _directives_changed(directives):
    """Whether the generated C was made under other directives (a debug build after
    an optimized one, or back): cythonize compares only timestamps, and would
    compile the old C.  A stamp in build/ remembers the last directives."""
    stamp = os.path.join(HERE, "build", "cython-directives.txt")
    text = repr(sorted(directives.items()))
    try:
        with open(stamp) as f:
            if f.read() == text:
                return False
    except OSError:
        pass
    os.makedirs(os.path.dirname(stamp), exist_ok=True)
    with open(stamp, "w") as f:
        f.write(text)
    return True


ext_modules = cythonize(exts, compiler_directives=directives, include_path=["cylstm"],
                        force=_directives_changed(directives))
if CUDA:
    ext_modules += cuda_extensions()  # raises, naming what is missing, before anything is written
_write_build_info(has_openmp)

cmdclass = {"build_ext": build_ext}
try:  # the CUDA extension needs nvcc for its .cu source
    sys.path.insert(0, os.path.join(HERE, "cylstm", "cuda"))
    from _build_cuda import BuildExtWithCuda

    cmdclass["build_ext"] = BuildExtWithCuda
except ImportError:
    pass
finally:
    sys.path.pop(0)

setup(ext_modules=ext_modules, cmdclass=cmdclass)
