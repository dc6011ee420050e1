"""Build support for the optional CUDA backend (``CYLSTM_CUDA=1``).

setup.py imports this file by path (it is not imported by the installed package at run
time), so it needs only the standard library and setuptools; it must import cleanly on
machines without CUDA.  Two entry points:

``cuda_extension(here, debug)``
    The ``cylstm.cuda._cuda`` Extension: the Cython wrapper ``_cuda.pyx`` (cythonized
    here) plus ``_kernels.cu``, linked against cuBLAS and the static CUDA runtime.
    Raises :class:`CudaBuildError` naming exactly what is missing (nvcc, the CUDA
    runtime headers/libraries, cuBLAS) when the toolkit is incomplete.
``BuildExtWithCuda``
    A ``build_ext`` that compiles the ``.cu`` sources of an extension with nvcc into
    objects and links them in; extensions without ``.cu`` sources build exactly as with
    the plain ``build_ext``.

Where things are found:

* nvcc: ``$CUDA_HOME/bin/nvcc`` (or ``$CUDA_PATH``), else ``nvcc`` on the PATH, else the
  ``nvidia-cuda-nvcc`` pip wheel.  The toolkit's include and library folders are read
  from ``nvcc --dryrun`` (robust to wrapper scripts and symlinks).
* cuBLAS: the toolkit's, else the pip wheels (``nvidia-cublas`` for CUDA 13, which
  installs into ``site-packages/nvidia/cu13``; ``nvidia-cublas-cu12`` into
  ``nvidia/cublas``), found in this interpreter's site-packages even under pip's build
  isolation, or in ``CYLSTM_NVIDIA_DIR`` (a ``site-packages/nvidia`` folder).  Its major
  version must match nvcc's.  The extension gets an RPATH to that folder (absolute, and
  relative to the installed extension) so that ``import cylstm.cuda._cuda`` finds
  libcublas without ``LD_LIBRARY_PATH``.
* The CUDA runtime is linked statically (``libcudart_static.a``), so the only shared
  CUDA libraries needed at run time are the driver and cuBLAS.

Architectures: ``CYLSTM_CUDA_ARCH`` (default ``"80;90"``: A100 and H100 SASS) plus PTX
for the highest one, which the driver JIT-compiles on newer GPUs.
"""
import glob
import importlib.util
import os
import re
import shlex
import shutil
import site
import subprocess
import sys
import sysconfig

from setuptools import Extension
from setuptools.command.build_ext import build_ext

DEFAULT_ARCHS = "80;90"


class CudaBuildError(RuntimeError):
    """CYLSTM_CUDA=1 was asked for, but the CUDA toolchain is incomplete."""


def _wheel_roots():
    """Folders of the ``nvidia`` namespace package (pip wheels), without importing it.

    Under pip's build isolation the build runs in a temporary environment that does not
    see the target environment's packages, so besides ``sys.path`` this also looks in
    the interpreter's own site-packages, the active virtualenv and ``CYLSTM_NVIDIA_DIR``.
    """
    roots = []
    try:
        spec = importlib.util.find_spec("nvidia")
        if spec is not None and spec.submodule_search_locations:
            roots += list(spec.submodule_search_locations)
    except (ImportError, ValueError):
        pass
    sites = [os.environ.get("CYLSTM_NVIDIA_DIR", "")]
    paths = sysconfig.get_paths()
    sites += [paths.get("purelib", ""), paths.get("platlib", "")]
    for prefix in (os.environ.get("VIRTUAL_ENV"), sys.base_prefix, sys.prefix):
        if prefix:
            sites += glob.glob(os.path.join(prefix, "lib", "python3*", "site-packages"))
    try:
        sites.append(site.getusersitepackages())
    except AttributeError:
        pass
    for d in sites:
        if not d:
            continue
        cand = d if os.path.basename(d) == "nvidia" else os.path.join(d, "nvidia")
        roots.append(cand)
    seen = []
    for r in roots:
        r = os.path.normpath(r)
        if os.path.isdir(r) and r not in seen:
            seen.append(r)
    return seen


def find_nvcc():
    """Path of nvcc, or None."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(var)
        if root:
            cand = os.path.join(root, "bin", "nvcc")
            if os.path.isfile(cand) and os.access(cand, os.X_OK):
                return cand
    found = shutil.which("nvcc")
    if found:
        return found
    for root in _wheel_roots():
        for sub in ("cu13", "cuda_nvcc"):
            cand = os.path.join(root, sub, "bin", "nvcc")
            if os.path.isfile(cand) and os.access(cand, os.X_OK):
                return cand
    return None


def _nvcc_info(nvcc):
    """(major, minor, include dirs, library dirs) of the toolkit behind ``nvcc``."""
    out = subprocess.run([nvcc, "--version"], check=False, capture_output=True, text=True,
                         timeout=60)
    m = re.search(r"release (\d+)\.(\d+)", out.stdout)
    if not m:
        raise CudaBuildError(f"cannot read the CUDA version from `{nvcc} --version`: "
                             f"{out.stdout.strip() or out.stderr.strip()}")
    major, minor = int(m.group(1)), int(m.group(2))
    dry = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                         check=False, capture_output=True, text=True, timeout=60)
    text = dry.stdout + dry.stderr
    incs, libs = [], []
    for line in text.splitlines():
        line = line.lstrip("#$ ").strip()
        for key, dst, flag in (("INCLUDES=", incs, "-I"), ("SYSTEM_INCLUDES=", incs, None),
                               ("LIBRARIES=", libs, "-L")):
            if line.startswith(key):
                words = shlex.split(line[len(key):])
                for w in words:
                    if flag and w.startswith(flag):
                        dst.append(os.path.normpath(w[2:]))
                    elif flag is None and not w.startswith("-"):
                        dst.append(os.path.normpath(w))
    top = os.path.normpath(os.path.join(os.path.dirname(os.path.realpath(nvcc)), ".."))
    if os.path.exists(os.path.join(top, "include", "cuda_runtime.h")):  # not a wrapper
        incs.append(os.path.join(top, "include"))
        libs += [os.path.join(top, "lib64"), os.path.join(top, "lib")]
    incs = [d for d in dict.fromkeys(incs) if os.path.isdir(d)]
    libs = [d for d in dict.fromkeys(libs) if os.path.isdir(d) and not d.endswith("stubs")]
    return major, minor, incs, libs


def _wheel_dirs(major):
    """(include, lib) folder pairs of CUDA pip wheels matching CUDA ``major``."""
    subs = [f"cu{major}"] if major >= 13 else ["cublas", "cuda_runtime"]
    pairs = []
    for root in _wheel_roots():
        for sub in subs:
            inc, lib = os.path.join(root, sub, "include"), os.path.join(root, sub, "lib")
            if os.path.isdir(inc) or os.path.isdir(lib):
                pairs.append((inc, lib))
    return pairs


def _find_file(dirs, pattern):
    for d in dirs:
        hits = sorted(glob.glob(os.path.join(d, pattern)))
        if hits:
            return hits[0]
    return None


def _find_cublas_lib(dirs, major):
    """(folder, linker argument) for libcublas of this CUDA major, or None."""
    for d in dirs:
        if os.path.exists(os.path.join(d, "libcublas.so")):
            return d, "-lcublas"
        exact = os.path.join(d, f"libcublas.so.{major}")
        if os.path.exists(exact):
            return d, f"-l:libcublas.so.{major}"
    return None


def cuda_config():
    """Locate nvcc, the CUDA runtime and cuBLAS; a dict, or CudaBuildError saying what
    is missing."""
    if sys.platform != "linux":
        raise CudaBuildError(f"the CUDA backend builds on Linux only (this is {sys.platform})")
    nvcc = find_nvcc()
    if nvcc is None:
        raise CudaBuildError(
            "CYLSTM_CUDA=1 but nvcc was not found: set CUDA_HOME to the CUDA toolkit, put "
            "nvcc on the PATH, or `pip install nvidia-cuda-nvcc` (CUDA 13) / "
            "`nvidia-cuda-nvcc-cu12` (CUDA 12)")
    major, minor, incs, libs = _nvcc_info(nvcc)
    wheel = _wheel_dirs(major)
    inc_dirs = incs + [i for i, _ in wheel if os.path.isdir(i)]
    lib_dirs = libs + [lb for _, lb in wheel if os.path.isdir(lb)]
    missing = []
    if _find_file(inc_dirs, "cuda_runtime.h") is None:
        missing.append("the CUDA runtime headers (cuda_runtime.h)")
    if _find_file(lib_dirs, "libcudart_static.a") is None:
        missing.append("the static CUDA runtime (libcudart_static.a)")
    if _find_file(inc_dirs, "cublas_v2.h") is None:
        missing.append("the cuBLAS headers (cublas_v2.h)")
    blas = _find_cublas_lib(lib_dirs, major)
    if blas is None:
        missing.append(f"the cuBLAS library (libcublas.so or libcublas.so.{major})")
    if missing:
        wheel_hint = ("nvidia-cublas nvidia-cuda-runtime" if major >= 13
                      else "nvidia-cublas-cu12 nvidia-cuda-runtime-cu12")
        raise CudaBuildError(
            f"CYLSTM_CUDA=1 with nvcc {major}.{minor} at {nvcc}, but missing: "
            + "; ".join(missing)
            + f". Searched include dirs {inc_dirs} and library dirs {lib_dirs}. "
            f"Install the full CUDA toolkit or `pip install {wheel_hint}`.")
    archs = [a.strip() for a in os.environ.get("CYLSTM_CUDA_ARCH", DEFAULT_ARCHS)
             .replace(",", ";").split(";") if a.strip()]
    if not archs or not all(a.isdigit() for a in archs):
        raise CudaBuildError(f"CYLSTM_CUDA_ARCH must list compute capabilities like "
                             f"'80;90'; got {os.environ.get('CYLSTM_CUDA_ARCH')!r}")
    return {
        "nvcc": nvcc, "version": (major, minor), "include_dirs": inc_dirs,
        "library_dirs": lib_dirs, "cublas_dir": blas[0], "cublas_link": blas[1],
        "archs": archs,
    }


def nvcc_arch_flags(archs):
    """SASS for every listed architecture, PTX for the highest (forward compatibility)."""
    flags = []
    for a in archs:
        flags += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    top = max(archs, key=int)
    flags += ["-gencode", f"arch=compute_{top},code=compute_{top}"]
    return flags


def cuda_extension(here, debug=False):
    """The ``cylstm.cuda._cuda`` Extension (already cythonized), with the .cu source
    for :class:`BuildExtWithCuda`."""
    from Cython.Build import cythonize  # defers import cost: Cython, at build time only

    cfg = cuda_config()
    major = cfg["version"][0]
    # at run time: the wheel folder relative to the installed extension
    # (site-packages/cylstm/cuda/_cuda*.so -> site-packages/nvidia/<sub>/lib), and the
    # absolute folder found now (toolkit or wheel) for in-place and editable builds
    rel = [f"$ORIGIN/../../nvidia/cu{major}/lib"] if major >= 13 else [
        "$ORIGIN/../../nvidia/cublas/lib"]
    rpaths = rel + [cfg["cublas_dir"]]
    include = os.path.join(here, "include")
    ext = Extension(
        "cylstm.cuda._cuda",
        [os.path.join("cylstm", "cuda", "_cuda.pyx")],
        include_dirs=[include] + cfg["include_dirs"],
        library_dirs=cfg["library_dirs"],
        libraries=["cudart_static", "rt", "pthread", "dl", "stdc++"],
        extra_compile_args=["-O0", "-g"] if debug else ["-O2"],
        extra_link_args=[cfg["cublas_link"]] + ["-Wl,-rpath," + p for p in rpaths],
    )
    (ext,) = cythonize([ext], compiler_directives={
        "language_level": 3, "embedsignature": True, "boundscheck": bool(debug),
        "wraparound": bool(debug)}, quiet=True)
    ext.sources.append(os.path.join("cylstm", "cuda", "_kernels.cu"))
    ext.cuda_config = cfg
    ext.cuda_debug = bool(debug)
    ext.cuda_include = [include] + cfg["include_dirs"]
    return ext


class BuildExtWithCuda(build_ext):
    """``build_ext`` that compiles ``.cu`` sources with nvcc and links the objects."""

    def build_extension(self, ext):
        cu = [s for s in ext.sources if s.endswith(".cu")]
        if not cu:
            return super().build_extension(ext)
        cfg = getattr(ext, "cuda_config", None) or cuda_config()
        objects = []
        for src in cu:
            obj = os.path.join(self.build_temp, os.path.splitext(src)[0] + ".o")
            os.makedirs(os.path.dirname(obj), exist_ok=True)
            dep_newer = (not os.path.exists(obj) or self.force
                         or os.path.getmtime(src) > os.path.getmtime(obj)
                         or os.path.getmtime(os.path.join("include", "cylstm_cuda.h"))
                         > os.path.getmtime(obj))
            if dep_newer:
                cmd = [cfg["nvcc"], "-c", src, "-o", obj, "-std=c++17",
                       "-Xcompiler", "-fPIC", "--expt-relaxed-constexpr"]
                cmd += ["-O0", "-g", "-lineinfo"] if getattr(ext, "cuda_debug", False) \
                    else ["-O3", "-lineinfo"]
                cmd += nvcc_arch_flags(cfg["archs"])
                for d in getattr(ext, "cuda_include", cfg["include_dirs"]):
                    cmd += ["-I", d]
                print("nvcc: " + " ".join(shlex.quote(c) for c in cmd), flush=True)
                try:
                    subprocess.run(cmd, check=True)
                except subprocess.CalledProcessError as e:
                    raise CudaBuildError(f"nvcc failed on {src} (exit {e.returncode})") from e
            objects.append(obj)
        ext.sources = [s for s in ext.sources if not s.endswith(".cu")]
        ext.depends = list(ext.depends or []) + cu
        ext.extra_objects = list(ext.extra_objects or []) + objects
        return super().build_extension(ext)
