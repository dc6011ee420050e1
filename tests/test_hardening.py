"""Hostile model files, impossible sizes and a > 2**31-element forward (issue 7)."""
import hashlib
import io
import json
import os
import tracemalloc
import zipfile

import numpy as np
import pytest
from reference import lstm_ref

from cylstm.functional import lstm_forward
from cylstm.layers import LSTM, Dense
from cylstm.models import Sequential
from cylstm.saving import load_model


def small_model():
    m = Sequential([LSTM(4, input_shape=(None, 3), seed=0), Dense(2)])
    m.compile(optimizer="adam", loss="mse")
    return m


def npy_bytes(arr=None, header_shape=None, dtype="<f8", data=b""):
    """A .npy entry whose header may claim another shape than the data it holds."""
    buf = io.BytesIO()
    if arr is not None:
        np.lib.format.write_array(buf, arr, allow_pickle=True)
        return buf.getvalue()
    np.lib.format.write_array_header_2_0(
        buf, {"descr": dtype, "fortran_order": False, "shape": header_shape})
    return buf.getvalue() + data


def write_zip(path, entries, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        for name, data in entries.items():
            z.writestr(name, data)


def good_entries(tmp_path):
    p = tmp_path / "good.npz"
    small_model().save(p)
    with zipfile.ZipFile(p) as z:
        return {n: z.read(n) for n in z.namelist()}


def meta_entry(meta):
    return npy_bytes(np.frombuffer(json.dumps(meta).encode(), np.uint8))


def load_bounded(path, limit=32 * 2**20):
    """load_model must refuse ``path`` with ValueError, allocating at most ``limit``."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    listing = sorted(os.listdir(path.parent))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as info:
            load_model(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < limit, f"loading allocated {peak / 2**20:.1f} MiB"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert sorted(os.listdir(path.parent)) == listing
    return str(info.value)


def test_array_header_larger_than_its_data_is_refused_before_allocating(tmp_path):
    e = good_entries(tmp_path)
    for shape in [(2**40,), (2**27,), (2**20, 2**20), (3, 2**62)]:
        e["weight_00000.npy"] = npy_bytes(header_shape=shape, data=b"\0" * 64)
        p = tmp_path / "huge_header.npz"
        write_zip(p, e)
        msg = load_bounded(p)
        assert "claims shape" in msg


def test_zip_bomb_is_refused_without_decompressing(tmp_path):
    e = good_entries(tmp_path)
    n = 2**25  # 256 MiB of zeros, about 256 KiB deflated
    e["weight_00000.npy"] = npy_bytes(header_shape=(n,), data=bytes(8 * n))
    p = tmp_path / "bomb.npz"
    write_zip(p, e, zipfile.ZIP_DEFLATED)
    assert p.stat().st_size < 2**21
    assert "zip bomb" in load_bounded(p)


def test_many_entries_sharing_one_payload_are_refused(tmp_path):
    """The overlapping-entries zip bomb: the central directory lists one payload many times."""
    e = good_entries(tmp_path)
    big = bytes(2**22)
    e["big.npy"] = npy_bytes(header_shape=(2**19,), data=big)
    p = tmp_path / "overlap.npz"
    write_zip(p, e, zipfile.ZIP_DEFLATED)
    data = bytearray(p.read_bytes())
    with zipfile.ZipFile(p) as z:
        info = z.getinfo("big.npy")
    # append 200 more central-directory records pointing at the same local header
    eocd = data.rfind(b"PK\x05\x06")
    cd_off = int.from_bytes(data[eocd + 16:eocd + 20], "little")
    cd = bytes(data[cd_off:eocd])
    rec_at = cd.find(b"big.npy") - 46
    rec_len = 46 + len("big.npy") + int.from_bytes(cd[rec_at + 30:rec_at + 32], "little") \
        + int.from_bytes(cd[rec_at + 32:rec_at + 34], "little")
    rec = cd[rec_at:rec_at + rec_len]
    extra = b"".join(rec.replace(b"big.npy", f"b{i:03d}.npy".encode()[:7]) for i in range(200))
    new_cd = cd + extra
    n_entries = int.from_bytes(data[eocd + 10:eocd + 12], "little") + 200
    eocd_rec = bytearray(data[eocd:eocd + 22])
    eocd_rec[8:10] = n_entries.to_bytes(2, "little")
    eocd_rec[10:12] = n_entries.to_bytes(2, "little")
    eocd_rec[12:16] = len(new_cd).to_bytes(4, "little")
    p.write_bytes(bytes(data[:cd_off]) + new_cd + bytes(eocd_rec))
    assert info.file_size > 2**22
    load_bounded(p)


def test_pickled_object_arrays_never_run(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    e = good_entries(tmp_path)
    e["weight_00000.npy"] = npy_bytes(np.array([Payload()], dtype=object))
    p = tmp_path / "pickle.npz"
    write_zip(p, e)
    load_bounded(p)
    assert not marker.exists()
    # a bare pickle (no zip at all) is refused too
    p2 = tmp_path / "bare.npz"
    p2.write_bytes(__import__("pickle").dumps(Payload()))
    load_bounded(p2)
    assert not marker.exists()


@pytest.mark.parametrize("meta", [
    "[" * 100000 + "]" * 100000,                       # nesting deeper than the recursion limit
    {"format": "cylstm.model", "version": "1"},       # wrong types
    {"format": "cylstm.model", "version": 1, "model": {"class_name": "Sequential", "config": {
        "layers": [{"class_name": "os.system", "config": {"command": "touch pwned"}}]}},
     "n_weights": 0},
    {"format": "cylstm.model", "version": 1, "model": {"class_name": "Sequential", "config": {
        "layers": [{"class_name": "LSTM", "config": {"units": 10**12,
                                                      "input_shape": [None, 10**12]}}]}},
     "n_weights": 3},
    {"format": "cylstm.model", "version": 1, "model": None, "n_weights": 10**18},
])
def test_hostile_configs_are_refused(tmp_path, meta):
    e = good_entries(tmp_path)
    if isinstance(meta, str):
        e["__cylstm__.npy"] = npy_bytes(np.frombuffer(meta.encode(), np.uint8))
    else:
        e["__cylstm__.npy"] = meta_entry(meta)
    p = tmp_path / "hostile.npz"
    write_zip(p, e)
    load_bounded(p)
    assert not (tmp_path / "pwned").exists()


def test_impossible_size_is_a_clear_error_before_allocating():
    W = np.zeros((8, 4 * 256), np.float32)
    U = np.zeros((256, 4 * 256), np.float32)
    # batch*time = 2**30 rows of 256 units: terabytes of gate buffers.  x is a free view.
    x = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), (2**15, 2**15, 8), (0, 0, 0))
    tracemalloc.start()
    try:
        with pytest.raises((ValueError, MemoryError)) as info:
            lstm_forward(x, W, U, return_sequences=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20
    msg = str(info.value)
    assert "(32768, 32768, 8)" in msg and "GiB" in msg
    # the BLAS index range: batch*time >= 2**31 is refused whatever the memory
    x2 = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), (2**16, 2**15, 8), (0, 0, 0))
    with pytest.raises(ValueError, match="2\\*\\*31"):
        lstm_forward(x2, W[:, :16], np.zeros((4, 16), np.float32))


def _mem_available():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.mark.slow
def test_forward_past_2_31_elements_matches_reference():
    """T*B*4*units > 2**31: 64-bit index arithmetic in inference mode.

    (B, T, I, H) = (1024, 512, 4, 1040): the gate buffer holds B*T*4H = 2.18e9
    elements (8.1 GiB in float32); x is a broadcast view, so it costs nothing.
    A few samples are compared with the NumPy reference run on those samples alone.
    """
    B, T, I, H = 1024, 512, 4, 1040
    assert B * T * 4 * H > 2**31
    need = B * T * 4 * H * 4 + B * T * I * 4
    if _mem_available() < need + 3 * 2**30:
        pytest.skip(f"needs {need / 2**30:.1f} GiB + 3 GiB headroom; MemAvailable is "
                    f"{_mem_available() / 2**30:.1f} GiB")
    rng = np.random.default_rng(7)
    W = (rng.standard_normal((I, 4 * H)) * 0.5).astype(np.float32)
    U = (rng.standard_normal((H, 4 * H)) * 0.5 / np.sqrt(H)).astype(np.float32)
    b = (rng.standard_normal(4 * H) * 0.1).astype(np.float32)
    # each sample is a distinct sequence: a per-sample scale of one random (T, I) pattern
    pattern = rng.standard_normal((T, I)).astype(np.float32)
    scale = np.linspace(-1, 1, B, dtype=np.float32)
    x = scale[:, None, None] * pattern[None]  # (B, T, I): 8 MiB
    out = lstm_forward(x, W, U, b, return_sequences=False)
    y = out.output
    assert y.shape == (B, H)
    for n in (0, 1, B // 3, B // 2 + 1, B - 1):
        _, hT, cT, _ = lstm_ref(x[n:n + 1].astype(np.float64), W, U, b)
        np.testing.assert_allclose(y[n], hT[0], rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(out.c[n], cT[0], rtol=1e-3, atol=1e-4)


def test_an_unbuilt_source_tree_says_how_to_build_it(tmp_path):
    # importing cylstm from a checkout whose extensions were never built names the
    # fix instead of a circular-import error from deep inside the package
    import shutil
    import subprocess
    import sys

    import cylstm

    src = os.path.dirname(os.path.abspath(cylstm.__file__))
    shutil.copytree(src, tmp_path / "cylstm",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "*.c", "__pycache__"))
    (tmp_path / "setup.py").write_text("")
    res = subprocess.run([sys.executable, "-c", "import cylstm"], cwd=tmp_path, check=False,
                         env=dict(os.environ, PYTHONPATH=str(tmp_path)),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "build_ext --inplace" in res.stderr and str(tmp_path) in res.stderr
