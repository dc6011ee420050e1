"""The kernels at every ISA level this CPU has, forced (CYLSTM_CPU, cylstm._cpu),
against the NumPy float64 reference; and levels the CPU lacks are refused.

Levels above the detected one are skipped for the kernel checks (they cannot
run here) and tested for refusal instead, so this file passes on any CPU: with
or without AVX-512, and on non-x86 machines (only the baseline there).
"""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from isa_levels import DETECTED, LEVELS
from reference import bf16_round, int8_round, lstm_ref, lstm_ref_backward, random_lstm

from cylstm import _cpu, _lstm, _stream, stream
from cylstm.functional import lstm_backward, lstm_forward
from cylstm.stream import StreamRunner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = [np.float32, np.float64]
# as tests/test_lstm_panels.py (cell) and tests/test_stream.py (runner)
TOL = {np.float64: {"rtol": 1e-10, "atol": 1e-12}, np.float32: {"rtol": 1e-5, "atol": 2e-6}}
TOL_BACKWARD = {np.float64: TOL[np.float64], np.float32: {"rtol": 1e-4, "atol": 2e-5}}
TOL_STREAM = {np.float32: {"rtol": 2e-5, "atol": 2e-5},
              np.float64: {"rtol": 1e-10, "atol": 1e-12}}


def _levels_of_every_extension():
    return {ext.__name__: ext._cpu_levels()[1] for ext in (_lstm, _stream)}


# ---------------------------------------------------------------------------------------
# parsing, forcing, refusing

@pytest.mark.parametrize("value,want", [(None, None), ("", None), ("avx512", 2), ("AVX512", 2),
                                        ("Avx2", 1), ("avx2", 1), ("baseline", 0),
                                        ("BASELINE", 0)])
def test_parse_cpu_env(value, want):
    assert _cpu.parse_cpu_env(value) == want


@pytest.mark.parametrize("value", ["xyz", "sse2", " avx2", "avx-512", "2", "avx2,avx512",
                                   "b\u0430seline"])
def test_parse_cpu_env_refuses_unknown_values(value):
    msg = ("CYLSTM_CPU must be one of 'avx512', 'avx2', 'baseline' (or unset); "
           f"got {value!r}")
    with pytest.raises(ValueError, match=re.escape(msg)):
        _cpu.parse_cpu_env(value)


def test_level_names():
    assert [_cpu.level_name(n) for n in (0, 1, 2)] == ["baseline", "avx2", "avx512"]
    for bad in (3, -1, "avx2", None):
        with pytest.raises(ValueError, match="ISA level must be 0, 1 or 2"):
            _cpu.level_name(bad)


def test_detected_and_active_levels_agree_across_extensions():
    assert DETECTED in (0, 1, 2)
    assert {ext._cpu_levels()[0] for ext in (_lstm, _stream)} == {DETECTED}
    assert set(_levels_of_every_extension().values()) == {_cpu.active_level()}
    assert _cpu.active_level() == _stream.cpu_level() <= DETECTED


@pytest.mark.parametrize("level", LEVELS)
def test_forced_level_sets_every_extension_and_restores(level):
    before = _cpu.active_level()
    for arg in (level, _cpu.level_name(level), _cpu.level_name(level).upper()):
        with _cpu.forced_level(arg) as got:
            assert got == level
            assert _cpu.active_level() == _stream.cpu_level() == level
            assert set(_levels_of_every_extension().values()) == {level}
        assert _cpu.active_level() == before
    with pytest.raises(RuntimeError, match="inside"), _cpu.forced_level(level):
        raise RuntimeError("inside")
    assert _cpu.active_level() == before


def test_forced_levels_nest():
    with _cpu.forced_level(DETECTED):
        with _cpu.forced_level("baseline"):
            assert _cpu.active_level() == 0
        assert _cpu.active_level() == DETECTED


@pytest.mark.parametrize("bad", ["xyz", 3, -1, True, None, 1.0])
def test_forced_level_refuses_bad_arguments(bad):
    before = _cpu.active_level()
    with pytest.raises(ValueError, match="forced_level expects one of"), _cpu.forced_level(bad):
        pass
    assert _cpu.active_level() == before


@pytest.mark.parametrize("fake", [0, 1])
def test_forcing_above_the_detected_level_is_refused(monkeypatch, fake):
    # a CPU without AVX-512 (fake = 1) or without AVX2 (fake = 0), injected
    monkeypatch.setattr(_cpu, "detected_level", lambda: fake)
    before = _levels_of_every_extension()
    for level in range(fake + 1, 3):
        name = _cpu.level_name(level)
        for arg in (level, name):
            msg = f"this CPU runs up to {_cpu.level_name(fake)!r} (detected level {fake})"
            with pytest.raises(ValueError, match=re.escape(msg)), _cpu.forced_level(arg):
                pass
        monkeypatch.setenv("CYLSTM_CPU", name)
        with pytest.raises(ValueError, match=f"CYLSTM_CPU='{name}' asks for ISA level"):
            _cpu.check_env()
    assert _levels_of_every_extension() == before   # nothing was forced


@pytest.mark.skipif(DETECTED == 2, reason="this CPU has AVX-512: no level above it to refuse")
def test_forcing_above_this_cpu_is_refused():
    msg = f"runs up to {_cpu.level_name(DETECTED)!r}"
    with pytest.raises(ValueError, match=msg), _cpu.forced_level("avx512"):
        pass


def test_the_c_side_never_raises_the_level_above_the_cpu():
    # the extension's own setter, unvalidated: it clamps instead of selecting
    # instructions the CPU lacks
    previous = _stream._force_cpu_level(2)
    try:
        assert _stream.cpu_level() == DETECTED
    finally:
        _stream._force_cpu_level(previous)


# ---------------------------------------------------------------------------------------
# the kernels at each level against the reference

def _check_forward_backward(dtype, B, T, I, H, threads, seed, training=True, plan=None):
    x, W, U, b = random_lstm(np.random.default_rng(seed), B, T, I, H)
    rng = np.random.default_rng(seed + 1)
    h0, c0 = rng.standard_normal((2, B, H)) * 0.5
    lengths = rng.integers(1, T + 1, B)
    y, hT, cT, tape = lstm_ref(x, W, U, b, h0, c0, lengths)
    cast = [a.astype(dtype) for a in (x, W, U, b)]
    out = lstm_forward(*cast, initial_state=(h0, c0), lengths=lengths, training=training,
                       num_threads=threads, _plan=plan)
    np.testing.assert_allclose(out.output, y, **TOL[dtype])
    np.testing.assert_allclose(out.h, hT, **TOL[dtype])
    np.testing.assert_allclose(out.c, cT, **TOL[dtype])
    if not training:
        return out
    dy = rng.standard_normal((B, T, H))
    ref = lstm_ref_backward(x, W, U, tape, dy)
    g = lstm_backward(out.cache, dy.astype(dtype), num_threads=threads)
    for got, want, name in zip(g, ref, ["dx", "dW", "dU", "db", "dh0", "dc0"]):
        np.testing.assert_allclose(got, want, err_msg=name, **TOL_BACKWARD[dtype])
    return out


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,H,threads", [(1, 16, 1), (4, 37, 1), (5, 20, 2)])
def test_cell_forward_backward(level, dtype, B, H, threads):
    # H = 37, 20: a masked last vector in the AVX-512 float32 cell
    with _cpu.forced_level(level):
        _check_forward_backward(dtype, B, 7, 5, H, threads, seed=B * H)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", DTYPES)
# rows: 1; 2 + 1; 6 + 1 or 4 + 2 + 1; 2
@pytest.mark.parametrize("B,H", [(1, 40), (3, 17), (7, 33), (2, 70)])
@pytest.mark.parametrize("threads", [1, 2])
def test_packed_panels_forward_backward(level, dtype, B, H, threads):
    # the unit split: packed panels of U, threads sharing the panels of each step (one
    # thread: the cell writes in place, no commits); H = 70: the backward's U^T panels
    # take a full 64-float panel (the eight-accumulator body on AVX2/SSE2) and a
    # zero-padded last one
    with _cpu.forced_level(level):
        _check_forward_backward(dtype, B, 9, 6, H, threads, seed=B + H, plan="units")


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_stacked_panels_forward(level, dtype):
    # [x_t, h_prev] @ packed [W; U] per step, 7 rows per thread
    B, T, I, H = 14, 6, 5, 37
    with _cpu.forced_level(level):
        _check_forward_backward(dtype, B, T, I, H, 2, seed=3, training=False, plan="stacked")


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H", [48, 50, 3])
def test_every_row_split_of_the_panel_passes(level, dtype, H):
    """Batches 1-23 on one thread: every way the panel passes cut a batch (six-row
    blocks; on AVX2 then 5 + 5, 5 + 4, 4 + 4, 5 or 4; then 4, 2, 1; a panel one
    vector wide in blocks of its own pass) matches the reference, and each row's
    output has the bits of that row run alone, whichever block computes it.
    H = 48: whole panels; 50: a last panel of 2 units, one vector wide; 3: one
    such panel.  The stacked path puts x_t and h_prev in one panel pass (K = 13 + H,
    an odd part length for the narrow pass's partial sums)."""
    T, I = 4, 13
    x, W, U, b = random_lstm(np.random.default_rng(23), 23, T, I, H)
    cast = [a.astype(dtype) for a in (x, W, U, b)]
    with _cpu.forced_level(level):
        alone = [lstm_forward(cast[0][i:i + 1], *cast[1:], num_threads=1,
                              _plan="stacked").output for i in range(23)]
        for B in range(1, 24):
            out = lstm_forward(cast[0][:B], *cast[1:], num_threads=1, _plan="stacked")
            y = lstm_ref(x[:B], W, U, b)[0]
            np.testing.assert_allclose(out.output, y, err_msg=f"B={B}", **TOL[dtype])
            for i in range(B):
                np.testing.assert_array_equal(out.output[i], alone[i][0],
                                              err_msg=f"B={B}, row {i}")


def _lstm_spec(rng, I, H, scale=0.4):
    return {"type": "lstm", "kernel": rng.uniform(-scale, scale, (I, 4 * H)),
            "recurrent_kernel": rng.uniform(-scale, scale, (H, 4 * H)),
            "bias": rng.uniform(-0.2, 0.2, 4 * H)}


def _stream_ref(specs, x):
    """float64 reference of LSTM layers then a tanh Dense head, on x (B, T, I)."""
    y = np.asarray(x, np.float64)
    for s in specs:
        if s["type"] == "lstm":
            y = lstm_ref(y, s["kernel"], s["recurrent_kernel"], s["bias"])[0]
        else:
            y = np.tanh(y @ s["kernel"] + s["bias"])
    return y


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,threads", [(1, 1), (2, 2), (7, 1)])  # rows: 1; 2; 6 + 1 / 4 + 2 + 1
def test_streaming_runner(monkeypatch, level, dtype, B, threads):
    monkeypatch.setattr(stream, "BLAS_MIN_BATCH", 10**9)   # the panel kernel at every batch
    rng = np.random.default_rng(B * 10 + threads)
    # H = 16: whole panels (the six-row pass); 37: a narrower last panel with tail columns
    specs = [_lstm_spec(rng, 6, 16), _lstm_spec(rng, 16, 37),
             {"type": "dense", "kernel": rng.uniform(-0.5, 0.5, (37, 70)),
              "bias": rng.uniform(-0.2, 0.2, 70), "activation": "tanh"}]
    x = rng.standard_normal((B, 8, 6))
    with _cpu.forced_level(level):
        r = StreamRunner._from_specs(specs, B, num_threads=threads, dtype=dtype)
        assert r._info["isa_level"] == level
        got = np.stack([r.step(x[:, t].astype(dtype)).copy() for t in range(8)], axis=1)
    np.testing.assert_allclose(got, _stream_ref(specs, x), **TOL_STREAM[dtype])


@pytest.mark.parametrize("level", LEVELS)
def test_streaming_runner_bfloat16_weights(level):
    rng = np.random.default_rng(2)
    specs = [_lstm_spec(rng, 7, 20), _lstm_spec(rng, 20, 80)]   # panels of 64 and 16 columns
    x = rng.standard_normal((2, 6, 7))
    with _cpu.forced_level(level):
        r = StreamRunner._from_specs(specs, 2, weights_dtype="bfloat16")
        got = np.stack([r.step(x[:, t].astype(np.float32)).copy() for t in range(6)], axis=1)
    rounded = [dict(s, kernel=bf16_round(s["kernel"]),
                    recurrent_kernel=bf16_round(s["recurrent_kernel"]),
                    bias=np.asarray(s["bias"], np.float32).astype(np.float64)) for s in specs]
    np.testing.assert_allclose(got, _stream_ref(rounded, x), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("B", [1, 2, 7])   # one row; a group of four (two repeated); 4 + 3
def test_streaming_runner_int8_weights(level, B):
    rng = np.random.default_rng(20 + B)
    specs = [_lstm_spec(rng, 7, 20), _lstm_spec(rng, 20, 37)]   # 64 + 16; 128 + 16 + tail
    x = rng.standard_normal((B, 6, 7))
    with _cpu.forced_level(level):
        r = StreamRunner._from_specs(specs, B, weights_dtype="int8")
        got = np.stack([r.step(x[:, t].astype(np.float32)).copy() for t in range(6)], axis=1)
    rounded = [dict(s, kernel=int8_round(s["kernel"]),
                    recurrent_kernel=int8_round(s["recurrent_kernel"]),
                    bias=np.asarray(s["bias"], np.float32).astype(np.float64)) for s in specs]
    np.testing.assert_allclose(got, _stream_ref(rounded, x), rtol=2e-5, atol=2e-5)


@pytest.mark.skipif(DETECTED < 2, reason="the AVX-512 float32 cell needs an AVX-512 CPU")
@pytest.mark.skipif(not _cpu.VARIANTS, reason="a build without per-level kernels")
def test_forcing_avx2_leaves_the_avx512_cell():
    # the float32 cell's AVX-512 intrinsics (reciprocal + Newton step) round
    # differently from the portable loop the x86-64-v3 variant runs: if forcing
    # did not reach the dispatch, both results would be the same bits
    x, W, U, b = (a.astype(np.float32)
                  for a in random_lstm(np.random.default_rng(9), 4, 12, 5, 64))
    outs = {}
    for level in (2, 1):
        with _cpu.forced_level(level):
            outs[level] = lstm_forward(x, W, U, b, num_threads=1).output
    assert not np.array_equal(outs[2], outs[1])
    np.testing.assert_allclose(outs[2], outs[1], rtol=1e-5, atol=2e-6)


# ---------------------------------------------------------------------------------------
# CYLSTM_CPU in a fresh process

def _python(code, value):
    """Run ``code`` in a fresh interpreter with CYLSTM_CPU=value, importing the
    same cylstm as this process (installed, or built in place) and tests/."""
    import cylstm

    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(cylstm.__file__)))
    path = os.pathsep.join([pkg_parent, os.path.join(ROOT, "tests")])
    env = dict(os.environ, CYLSTM_CPU=value, PYTHONPATH=path)
    return subprocess.run([sys.executable, "-c", code], cwd=os.path.join(ROOT, "tests"),
                          env=env, capture_output=True, text=True, timeout=300, check=False)


def test_unknown_cylstm_cpu_fails_import_clearly():
    p = _python("import cylstm", "xyz")
    assert p.returncode != 0
    assert ("ValueError: CYLSTM_CPU must be one of 'avx512', 'avx2', 'baseline' (or unset); "
            "got 'xyz'") in p.stderr


@pytest.mark.skipif(DETECTED == 2, reason="this CPU has AVX-512: no level above it to refuse")
def test_cylstm_cpu_above_this_cpu_fails_import_clearly():
    p = _python("import cylstm", "AVX512")
    assert p.returncode != 0
    assert f"this CPU runs up to {_cpu.level_name(DETECTED)!r}" in p.stderr


def test_cylstm_cpu_baseline_runs_a_forward_that_matches_the_reference():
    code = """if True:
        import numpy as np
        from reference import lstm_ref, random_lstm
        from cylstm import _cpu, _lstm, _stream
        from cylstm.functional import lstm_forward
        assert _cpu.active_level() == 0, _cpu.active_level()
        assert _lstm._cpu_levels()[1] == _stream._cpu_levels()[1] == 0
        x, W, U, b = random_lstm(np.random.default_rng(0), 3, 9, 5, 37)
        y = lstm_ref(x, W, U, b)[0]
        for dtype, tol in ((np.float32, 1e-5), (np.float64, 1e-10)):
            out = lstm_forward(*(a.astype(dtype) for a in (x, W, U, b)), num_threads=2)
            np.testing.assert_allclose(out.output, y, rtol=tol, atol=tol)
        print("ok", _cpu.detected_level())
    """
    p = _python(code, "baseline")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["ok", str(DETECTED)]
