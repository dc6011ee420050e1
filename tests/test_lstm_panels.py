"""The packed-panel forward (small batches, threads splitting the units) against
the NumPy float64 reference, the BLAS path and itself at other thread counts."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import lstm_ref, lstm_ref_backward, random_lstm

from cylstm import _lstm, functional
from cylstm.functional import lstm_backward, lstm_forward

TOL = {np.float64: {"rtol": 1e-10, "atol": 1e-12}, np.float32: {"rtol": 1e-5, "atol": 2e-6}}
SPAN = {np.float32: _lstm.PANEL_UNITS_F32, np.float64: _lstm.PANEL_UNITS_F64}
VL = {np.float32: 16, np.float64: 8}


def _pack_numpy(U, dtype):
    """The documented layout, written independently: panel p (units j0..j0+hb)
    is (H, 4 hp) row-major, gate blocks hp wide, hp = hb rounded up to VL/4,
    padding columns zero; panel p starts at p * H * 4 * span."""
    H = U.shape[0]
    span, q = SPAN[dtype], VL[dtype] // 4
    out = []
    for j0 in range(0, H, span):
        hb = min(span, H - j0)
        hp = -(-hb // q) * q
        panel = np.zeros((H, 4, hp), dtype)
        for g in range(4):
            panel[:, g, :hb] = U[:, g * H + j0:g * H + j0 + hb]
        out.append(panel.reshape(-1))
    return np.concatenate(out)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("H", [1, 3, 8, 16, 17, 33, 50])
def test_pack_recurrent_layout(dtype, H):
    U = np.random.default_rng(H).standard_normal((H, 4 * H)).astype(dtype)
    want = _pack_numpy(U, dtype)
    assert _lstm.packed_len(H, np.dtype(dtype).name) == want.size
    got = np.full(want.size, np.nan, dtype)
    _lstm.pack_recurrent(U, got)
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="packed_len"):
        _lstm.pack_recurrent(U, np.empty(want.size + 1, dtype))


@pytest.fixture(autouse=True)
def panels_fast(monkeypatch):
    """Plan as on an AVX-512 CPU (elsewhere the kernels run, only slower)."""
    monkeypatch.setattr(functional, "_PANELS_FAST", True)


@pytest.fixture
def panels_always(monkeypatch):
    """Make lstm_forward take the panel path whenever it has two threads."""
    monkeypatch.setattr(functional, "PANEL_TEAM_MIN_BYTES", 0)
    monkeypatch.setattr(functional, "_LLC", 0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("B,H,threads", [(1, 40, 2), (3, 17, 2), (7, 33, 3), (2, 50, 2),
                                         (16, 36, 2)])
def test_team_forward_and_backward_match_reference(panels_always, dtype, reverse,
                                                   with_lengths, B, H, threads):
    T, I = 9, 6
    x, W, U, b = random_lstm(np.random.default_rng(B * H), B, T, I, H)
    nt = functional._threads_for(B, threads)[1]
    assert _plan(B, H, U.astype(dtype), nt, threads, I=I) == 1
    rng = np.random.default_rng(1)
    h0, c0 = rng.standard_normal((2, B, H)) * 0.5
    lengths = rng.integers(1, T + 1, B) if with_lengths else None
    y, hT, cT, tape = lstm_ref(x, W, U, b, h0, c0, lengths, reverse)
    cast = [a.astype(dtype) for a in (x, W, U, b)]
    out = lstm_forward(*cast, initial_state=(h0, c0), lengths=lengths, go_backwards=reverse,
                       training=True, num_threads=threads)
    np.testing.assert_allclose(out.output, y, **TOL[dtype])
    np.testing.assert_allclose(out.h, hT, **TOL[dtype])
    np.testing.assert_allclose(out.c, cT, **TOL[dtype])
    if with_lengths:  # outputs past each length are exactly zero
        for n, L in enumerate(lengths):
            assert not out.output[n, L:].any()
    # the training cache the panel path filled (gates, cells, h_prev) drives BPTT
    dy = rng.standard_normal((B, T, H))
    ref = lstm_ref_backward(x, W, U, tape, dy)
    g = lstm_backward(out.cache, dy.astype(dtype), num_threads=threads)
    tol = TOL[dtype] if dtype == np.float64 else {"rtol": 1e-4, "atol": 2e-5}
    for got, want, name in zip(g, ref, ["dx", "dW", "dU", "db", "dh0", "dc0"]):
        np.testing.assert_allclose(got, want, err_msg=name, **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_team_is_bitwise_equal_to_serial_panels(dtype):
    """Each output is summed in k order by the same code whichever thread owns
    its panel: 1, 2 and 3 threads give the same bits."""
    B, T, I, H = 3, 20, 5, 40
    x, W, U, b = (a.astype(dtype) for a in random_lstm(np.random.default_rng(4), B, T, I, H))
    span = SPAN[dtype]
    outs = []
    for nt in (1, 2, 3):
        P = np.empty(_lstm.packed_len(H, np.dtype(dtype).name), dtype)
        _lstm.pack_recurrent(U, P)
        y = np.zeros((B, T, H), dtype)
        hs, cs = np.zeros((2, B, H), dtype)
        G = np.empty((B, T, 4 * H), dtype)
        Z = np.empty((nt, _lstm.units_scratch(B, H, np.dtype(dtype).name)), dtype)
        _lstm.forward_units(x, W, U, b, None, False, None, None, y, hs, cs, G, None, None, Z,
                            P, np.empty((B, H), dtype), nt, 1)
        outs.append((y, hs, cs))
    for other in outs[1:]:
        for a, c in zip(outs[0], other):
            np.testing.assert_array_equal(a, c)
    ref = lstm_forward(x, W, U, b, num_threads=1)  # the BLAS path
    np.testing.assert_allclose(outs[0][0], ref.output, **TOL[dtype])


def _plan(B, H, U, nt, n_total, rmask=None, lens=None, reverse=False, I=8):
    W = np.zeros((I, 4 * H), U.dtype)
    return functional._forward_plan(B, H, W, U, U.dtype, nt, n_total, rmask, lens, reverse)[0]


def test_plan_keeps_blas_where_it_is_faster():
    f32 = np.float32
    U = np.zeros((128, 512), f32)
    assert _plan(1, 128, U, 1, 2) == 1
    assert _plan(1, 128, U, 1, 1) == 0   # one thread
    assert _plan(8, 128, U, 2, 2) == 0   # batch splits
    assert _plan(1, 128, U, 1, 2, rmask=np.ones((1, 128), f32)) == 0
    small = np.zeros((32, 128), f32)     # 16 KiB
    assert _plan(1, 32, small, 1, 2) == 0
    # a recurrent kernel of half the last-level cache: split the units, any batch
    big = np.zeros((1024, 4096), f32)    # 16 MiB
    for nt, n in ((2, 2), (1, 1)):
        assert _plan(64, 1024, big, nt, n) == (1 if 2 * big.nbytes >= functional._LLC else 0)
    # 16+ rows per thread and 256+ units: the stacked [W; U] panels
    mid = np.zeros((256, 1024), f32)
    fits = (mid.nbytes + 128 * 1024 * 4) * 4 <= functional._LLC
    assert _plan(32, 256, mid, 2, 2, I=128) == (2 if fits else 0)
    assert _plan(16, 256, mid, 2, 2, I=128) == 0             # 8 rows per thread
    assert _plan(32, 128, U, 2, 2, I=128) == 0               # too few units
    lens = np.full(32, 3)
    assert _plan(32, 256, mid, 2, 2, I=128, lens=lens) == (2 if fits else 0)
    assert _plan(32, 256, mid, 2, 2, I=128, lens=lens, reverse=True) == 0


def test_plan_without_avx512_keeps_large_batches_on_blas(monkeypatch):
    monkeypatch.setattr(functional, "_PANELS_FAST", False)
    monkeypatch.setattr(functional, "_LLC", 2**20)
    f32 = np.float32
    assert _plan(1, 128, np.zeros((128, 512), f32), 1, 2) == 1     # batch 1: still split
    assert _plan(16, 256, np.zeros((256, 1024), f32), 2, 2) == 0   # big U: BLAS
    assert _plan(64, 256, np.zeros((256, 1024), f32), 2, 2, I=8) == 0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reverse,with_lengths", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("masked", [False, True])
def test_stacked_forward_and_backward_match_reference(monkeypatch, dtype, reverse,
                                                      with_lengths, threads, masked):
    """Mode 2: [x_t, h_prev] @ packed [W; U] per step, threads splitting the batch."""
    monkeypatch.setattr(functional, "STACKED_MIN_ROWS", 1)
    monkeypatch.setattr(functional, "STACKED_MIN_UNITS", 1)
    B, T, I, H = 7, 6, 5, 37     # a padded last panel for both dtypes
    x, W, U, b = random_lstm(np.random.default_rng(5), B, T, I, H)
    rng = np.random.default_rng(6)
    h0, c0 = rng.standard_normal((2, B, H)) * 0.5
    lengths = rng.integers(1, T + 1, B) if with_lengths else None
    rmask = (rng.random((B, H)) > 0.3) / 0.7 if masked else None
    nt = functional._threads_for(B, threads)[1]
    plan = [functional._forward_plan(B, H, W.astype(dtype), U.astype(dtype), np.dtype(dtype),
                                     nt, threads, None, lengths, reverse, training)[0]
            for training in (False, True)]
    assert plan == [2, 0]   # a training forward keeps the BLAS path
    y, hT, cT, tape = lstm_ref(x, W, U, b, h0, c0, lengths, reverse, rmask=rmask)
    cast = [a.astype(dtype) for a in (x, W, U, b)]
    kw = {"initial_state": (h0, c0), "lengths": lengths, "go_backwards": reverse,
          "num_threads": threads, "recurrent_mask": rmask}
    inf = lstm_forward(*cast, **kw)
    out = lstm_forward(*cast, training=True, **kw)
    # the kernel's mode 2 with the training buffers (gates, cells, h_prev) filled
    # as mode 0 fills them
    G2, C2, H2 = (np.zeros((B, T, n), dtype) for n in (4 * H, H, H))
    hs, cs = np.array(h0, dtype), np.array(c0, dtype)
    lens64 = None if lengths is None else lengths.astype(np.int64)
    rm = None if rmask is None else rmask.astype(dtype)
    span = SPAN[dtype]
    _lstm.forward(*cast, lens64, reverse, rm, None if rm is None else np.empty((B, H), dtype),
                  np.zeros((B, T, H), dtype), hs, cs, G2, C2, H2,
                  np.empty((threads, B * 4 * span), dtype), threads, 1, 2,
                  np.empty(_lstm.stacked_len(I, H, np.dtype(dtype).name), dtype),
                  np.empty((B, H), dtype))
    valid = np.ones((B, T), bool) if lengths is None else np.arange(T) < lengths[:, None]
    for got, want in ((G2, out.cache["G"]), (C2, out.cache["C"]), (H2, out.cache["Hp"])):
        np.testing.assert_allclose(got[valid], want[valid], **TOL[dtype])
    for o in (inf, out):
        np.testing.assert_allclose(o.output, y, **TOL[dtype])
        np.testing.assert_allclose(o.h, hT, **TOL[dtype])
        np.testing.assert_allclose(o.c, cT, **TOL[dtype])
    if with_lengths:
        for n, L in enumerate(lengths):
            assert not out.output[n, L:].any()
    dy = rng.standard_normal((B, T, H))
    ref = lstm_ref_backward(x, W, U, tape, dy, rmask=rmask)
    g = lstm_backward(out.cache, dy.astype(dtype), num_threads=threads)
    tol = TOL[dtype] if dtype == np.float64 else {"rtol": 1e-4, "atol": 2e-5}
    for got, want, name in zip(g, ref, ["dx", "dW", "dU", "db", "dh0", "dc0"]):
        np.testing.assert_allclose(got, want, err_msg=name, **tol)


def test_kernel_refuses_inconsistent_panel_buffers():
    B, T, I, H = 1, 3, 2, 20
    x, W, U, b = (a.astype(np.float32) for a in random_lstm(np.random.default_rng(0), B, T, I, H))
    args = lambda Z, P, h2: (x, W, U, b, None, False, None, None, None,
                             np.zeros((B, H), np.float32), np.zeros((B, H), np.float32),
                             np.empty((B, T, 4 * H), np.float32), None, None, Z, 2, 1, 1, P, h2)
    P = np.empty(_lstm.packed_len(H, "float32"), np.float32)
    Z = np.empty((2, B * 64), np.float32)
    h2 = np.empty((B, H), np.float32)
    with pytest.raises(ValueError, match="packed_len"):
        _lstm.forward(*args(Z, P[:-1], h2))
    with pytest.raises(ValueError, match="hs2"):
        _lstm.forward(*args(Z, P, None))
    with pytest.raises(ValueError, match="Z too small"):
        _lstm.forward(*args(np.empty((1, B * 64), np.float32), P, h2))
    with pytest.raises(ValueError, match="unknown mode"):
        _lstm.forward(*args(Z, P, h2)[:17], 5, P, h2)
    # mode 2: the stacked scratch, and no lengths run backwards
    S = np.empty(_lstm.stacked_len(I, H, "float32"), np.float32)
    a2 = list(args(Z, S, h2))
    a2[17] = 2
    _lstm.forward(*a2)
    a2[18] = P
    with pytest.raises(ValueError, match="stacked_len"):
        _lstm.forward(*a2)
    a2[18], a2[4], a2[5] = S, np.array([3], np.int64), True
    with pytest.raises(ValueError, match="backwards"):
        _lstm.forward(*a2)


@settings(max_examples=60, deadline=None)
@given(B=st.integers(1, 9), T=st.integers(1, 5), I=st.integers(1, 6), H=st.integers(1, 40),
       reverse=st.booleans(), ragged=st.booleans(), threads=st.integers(1, 3),
       dtype=st.sampled_from([np.float32, np.float64]), force=st.sampled_from(["units", "stacked"]),
       seed=st.integers(0, 2**16))
def test_random_shapes_on_the_panel_paths(B, T, I, H, reverse, ragged, threads, dtype, force,
                                          seed):
    """Hypothesis over small shapes (batch 1, T = 1, one unit, padded panels) with
    the thresholds lowered so that the packed-panel paths take every case they
    can: the inference output matches the float64 reference."""
    saved = (functional.PANEL_TEAM_MIN_BYTES, functional._LLC,
             functional.STACKED_MIN_ROWS, functional.STACKED_MIN_UNITS)
    functional._PANELS_FAST = True   # (the autouse fixture is not per example)
    try:
        if force == "units":
            functional.PANEL_TEAM_MIN_BYTES, functional._LLC = 0, 0
        else:
            functional.STACKED_MIN_ROWS = functional.STACKED_MIN_UNITS = 1
        rng = np.random.default_rng(seed)
        x, W, U, b = random_lstm(rng, B, T, I, H)
        h0, c0 = rng.standard_normal((2, B, H)) * 0.5
        lengths = rng.integers(1, T + 1, B) if ragged else None
        y, hT, cT, _ = lstm_ref(x, W, U, b, h0, c0, lengths=lengths, reverse=reverse)
        cast = [a.astype(dtype) for a in (x, W, U, b)]
        out = lstm_forward(*cast, initial_state=(h0, c0), lengths=lengths,
                           go_backwards=reverse, num_threads=threads)
        np.testing.assert_allclose(out.output, y, **TOL[dtype])
        np.testing.assert_allclose(out.h, hT, **TOL[dtype])
        np.testing.assert_allclose(out.c, cT, **TOL[dtype])
    finally:
        (functional.PANEL_TEAM_MIN_BYTES, functional._LLC,
         functional.STACKED_MIN_ROWS, functional.STACKED_MIN_UNITS) = saved


def test_panel_paths_from_many_python_threads_match_serial():
    """Each call makes its own OpenMP team (its barriers are the team's) and takes
    its scratch from its own thread's pool: four Python threads running the unit
    split and the stacked path at once give the serial results, bit for bit."""
    import threading

    saved = (functional.PANEL_TEAM_MIN_BYTES, functional.STACKED_MIN_ROWS,
             functional.STACKED_MIN_UNITS)
    functional.PANEL_TEAM_MIN_BYTES = 0
    functional.STACKED_MIN_ROWS = functional.STACKED_MIN_UNITS = 1
    try:
        cases = []
        for k, (B, H) in enumerate([(1, 40), (3, 33), (16, 36), (12, 20)]):
            x, W, U, b = (a.astype(np.float32)
                          for a in random_lstm(np.random.default_rng(30 + k), B, 25, 7, H))
            cases.append(((x, W, U, b), lstm_forward(x, W, U, b, num_threads=2).output))
        errors = []

        def work(args, want):
            try:
                for _ in range(30):
                    np.testing.assert_array_equal(
                        lstm_forward(*args, num_threads=2).output, want)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=c) for c in cases]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[0]
    finally:
        (functional.PANEL_TEAM_MIN_BYTES, functional.STACKED_MIN_ROWS,
         functional.STACKED_MIN_UNITS) = saved
