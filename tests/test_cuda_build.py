"""The optional CUDA backend's build (cylstm/cuda/_build_cuda.py).

The full build test compiles the extension into a temporary folder (never over the
in-place CPU build) wherever nvcc and the cuBLAS headers are present, for one
architecture only to stay fast (~15 s), and loads it in a fresh interpreter: without a
GPU the module must still import and report "no device" as a clean error.  Set
``CYLSTM_SKIP_CUDA_BUILD=1`` to skip it.  No GPU is needed for anything here.
"""
import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD_PY = os.path.join(ROOT, "cylstm", "cuda", "_build_cuda.py")


def _load_build_module():
    spec = importlib.util.spec_from_file_location("_cylstm_build_cuda_test", BUILD_PY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bc = _load_build_module()


def _toolchain_or_skip():
    if os.environ.get("CYLSTM_SKIP_CUDA_BUILD") == "1":
        pytest.skip("CYLSTM_SKIP_CUDA_BUILD=1")
    try:
        return bc.cuda_config()
    except bc.CudaBuildError as e:
        pytest.skip(f"no CUDA toolchain to build with: {e}")


def test_module_imports_without_cuda_and_names_missing_nvcc(monkeypatch, tmp_path):
    # no nvcc anywhere: the error says what is missing and how to get it
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setattr(bc, "_wheel_roots", list)
    assert bc.find_nvcc() is None
    with pytest.raises(bc.CudaBuildError, match="nvcc was not found.*CUDA_HOME"):
        bc.cuda_config()


def test_missing_cublas_is_named(monkeypatch, tmp_path):
    # a toolkit without cuBLAS (as a bare nvcc install is): the message names cuBLAS
    nvcc = bc.find_nvcc()
    if nvcc is None:
        pytest.skip("needs nvcc to get past the nvcc check")
    major, minor, _incs, libs = bc._nvcc_info(nvcc)
    monkeypatch.setattr(bc, "_wheel_roots", list)
    monkeypatch.setattr(bc, "_nvcc_info", lambda n: (major, minor, [str(tmp_path)], libs))
    with pytest.raises(bc.CudaBuildError) as err:
        bc.cuda_config()
    msg = str(err.value)
    assert "cuBLAS headers (cublas_v2.h)" in msg
    assert "pip install" in msg


def test_arch_flags_have_sass_and_ptx():
    flags = bc.nvcc_arch_flags(["80", "90"])
    assert "arch=compute_80,code=sm_80" in flags
    assert "arch=compute_90,code=sm_90" in flags
    assert "arch=compute_90,code=compute_90" in flags  # PTX for newer GPUs
    assert bc.DEFAULT_ARCHS == "80;90"


def test_bad_arch_list_is_refused(monkeypatch):
    if bc.find_nvcc() is None:
        pytest.skip("needs nvcc to reach the architecture check")
    monkeypatch.setenv("CYLSTM_CUDA_ARCH", "sm80")
    try:
        bc.cuda_config()
    except bc.CudaBuildError as e:
        if "cuBLAS" in str(e) or "runtime" in str(e):
            pytest.skip(f"toolchain incomplete: {e}")
        assert "CYLSTM_CUDA_ARCH" in str(e)
    else:
        pytest.fail("CYLSTM_CUDA_ARCH='sm80' was accepted")


def test_build_ext_without_cu_sources_is_plain(tmp_path):
    # setup.py always installs BuildExtWithCuda; a C extension must build as usual
    (tmp_path / "plainmod.c").write_text(textwrap.dedent("""
        #define PY_SSIZE_T_CLEAN
        #include <Python.h>
        static struct PyModuleDef m = {PyModuleDef_HEAD_INIT, "plainmod", NULL, -1, NULL};
        PyMODINIT_FUNC PyInit_plainmod(void) { return PyModule_Create(&m); }
    """))
    script = textwrap.dedent(f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("b", {BUILD_PY!r})
        b = importlib.util.module_from_spec(spec); spec.loader.exec_module(b)
        from setuptools import setup, Extension
        setup(name="plainmod", ext_modules=[Extension("plainmod", ["plainmod.c"])],
              cmdclass={{"build_ext": b.BuildExtWithCuda}},
              script_args=["-q", "build_ext", "--inplace"])
    """)
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True,
                   capture_output=True, timeout=300)
    out = subprocess.run([sys.executable, "-c", "import plainmod; print(plainmod.__name__)"],
                         cwd=tmp_path, check=False, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "plainmod"


def test_cuda_extension_builds_and_loads(tmp_path):
    cfg = _toolchain_or_skip()
    lib, tmp = tmp_path / "lib", tmp_path / "tmp"
    script = textwrap.dedent(f"""
        import importlib.util
        spec = importlib.util.spec_from_file_location("b", {BUILD_PY!r})
        b = importlib.util.module_from_spec(spec); spec.loader.exec_module(b)
        from setuptools import setup
        setup(name="cylstm-cuda-test", ext_modules=[b.cuda_extension({ROOT!r}, False)],
              cmdclass={{"build_ext": b.BuildExtWithCuda}},
              script_args=["-q", "build_ext", "--build-lib", {str(lib)!r},
                           "--build-temp", {str(tmp)!r}])
    """)
    env = dict(os.environ, CYLSTM_CUDA_ARCH=cfg["archs"][0] if "CYLSTM_CUDA_ARCH" in
               os.environ else "80")
    res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                         check=False, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    sos = list((lib / "cylstm" / "cuda").glob("_cuda*.so"))
    assert len(sos) == 1, list(lib.rglob("*"))
    so = str(sos[0])
    # the CUDA runtime is static; cuBLAS is found through the RPATH set at build time
    ldd = subprocess.run(["ldd", so], check=False, capture_output=True, text=True,
                         timeout=60).stdout
    assert "libcublas.so" in ldd and "not found" not in ldd, ldd
    assert "libcudart.so" not in ldd, ldd
    # load it in a fresh interpreter, outside the package: no GPU -> a clean answer
    probe = textwrap.dedent(f"""
        import importlib.util
        spec = importlib.util.spec_from_file_location("_cuda", {so!r})
        m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
        n, why = m.device_count()
        print("DEVICES", n, why)
        if n == 0:
            try:
                m.Context(0)
            except RuntimeError as e:
                print("ERROR", e)
        else:
            ctx = m.Context(0)
            import numpy as np
            a = m.DeviceArray.from_host(ctx, np.arange(6, dtype=np.float32).reshape(2, 3))
            print("ROUNDTRIP", a.to_host().tolist())
    """)
    out = subprocess.run([sys.executable, "-c", probe], check=False, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "DEVICES" in out.stdout
    if "DEVICES 0" in out.stdout:
        assert "ERROR cylstm.cuda: cannot use CUDA device 0" in out.stdout, out.stdout
    else:
        assert "ROUNDTRIP [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]" in out.stdout, out.stdout
