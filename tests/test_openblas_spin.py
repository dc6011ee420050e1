"""cylstm shortens OpenBLAS's idle-thread spin for the copies loaded after it
(cylstm/__init__.py), keeps a value the user set, and reports each copy."""
import json
import os
import subprocess
import sys

import pytest

import cylstm

# the directory the cylstm under test was imported from (an installed copy, or a
# built source tree), not this checkout, which may be unbuilt
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(cylstm.__file__)))


def _spins(code, env_value=None):
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if env_value is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = env_value
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    # cwd: not a checkout (python -c puts the working directory first on sys.path)
    out = subprocess.run([sys.executable, "-c", code + "\nfrom cylstm import _config\n"
                          "import json; print(json.dumps(_config.openblas_spin()))"],
                         env=env, capture_output=True, text=True, timeout=120, cwd=ROOT,
                         check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cylstm_first_sets_18_for_every_copy():
    spins = _spins("import cylstm")
    if not spins:
        pytest.skip("NumPy/SciPy are not linked to OpenBLAS here")
    assert set(spins.values()) == {18}, spins


def test_a_user_value_is_kept():
    spins = _spins("import cylstm", env_value="22")
    if not spins:
        pytest.skip("NumPy/SciPy are not linked to OpenBLAS here")
    assert set(spins.values()) == {22}, spins


def test_numpy_first_keeps_its_default_and_show_config_says_so():
    spins = _spins("import numpy; import cylstm")
    if not spins:
        pytest.skip("NumPy/SciPy are not linked to OpenBLAS here")
    assert all(v in (18, 28) for v in spins.values()), spins
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", "import numpy, cylstm; cylstm.show_config()"],
                         env=env, capture_output=True, text=True, timeout=120, cwd=ROOT,
                         check=False)
    assert out.returncode == 0, out.stderr
    line = [ln for ln in out.stdout.splitlines() if "OPENBLAS_THREAD_TIMEOUT" in ln]
    assert len(line) == 1
    if 28 in spins.values():
        assert "before importing NumPy" in line[0]
