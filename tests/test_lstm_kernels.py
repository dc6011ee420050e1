"""The compiled LSTM kernels against the NumPy float64 reference, finite
differences and PyTorch."""
import dataclasses
import threading

import numpy as np
import pytest
from reference import lstm_ref, lstm_ref_backward, numeric_grad, random_lstm

import cylstm
from cylstm.functional import lstm_backward, lstm_forward

TOL = {np.float64: {"rtol": 1e-10, "atol": 1e-12}, np.float32: {"rtol": 1e-5, "atol": 2e-6}}


def _case(B=3, T=6, I=4, H=5, seed=0):
    return random_lstm(np.random.default_rng(seed), B, T, I, H)


def _run(x, W, U, b, dtype, **kw):
    cast = [np.asarray(a, dtype) for a in (x, W, U, b)]
    return lstm_forward(*cast, **kw)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_forward_matches_reference(dtype, reverse, with_lengths, threads):
    B, T, I, H = 9, 7, 4, 5
    x, W, U, b = _case(B, T, I, H)
    rng = np.random.default_rng(1)
    h0, c0 = rng.standard_normal((2, B, H)) * 0.5
    lengths = rng.integers(0, T + 1, B) if with_lengths else None
    if with_lengths:
        lengths[-1] = 0   # a valid length: outputs zeros, the final state the initial one
    y, hT, cT, _ = lstm_ref(x, W, U, b, h0, c0, lengths, reverse)
    out = _run(x, W, U, b, dtype, initial_state=(h0, c0), lengths=lengths,
               go_backwards=reverse, num_threads=threads)
    assert out.output.dtype == dtype
    np.testing.assert_allclose(out.output, y, **TOL[dtype])
    np.testing.assert_allclose(out.h, hT, **TOL[dtype])
    np.testing.assert_allclose(out.c, cT, **TOL[dtype])
    last = _run(x, W, U, b, dtype, initial_state=(h0, c0), lengths=lengths,
                go_backwards=reverse, return_sequences=False, num_threads=threads)
    np.testing.assert_allclose(last.output, hT, **TOL[dtype])
    if with_lengths:  # outputs past each length are exactly zero
        for n, L in enumerate(lengths):
            assert not out.output[n, L:].any()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_backward_matches_reference(dtype, reverse, with_lengths, threads):
    B, T, I, H = 10, 6, 3, 4
    x, W, U, b = _case(B, T, I, H, seed=2)
    rng = np.random.default_rng(3)
    h0, c0 = rng.standard_normal((2, B, H)) * 0.5
    lengths = rng.integers(0, T + 1, B) if with_lengths else None
    if with_lengths:
        lengths[-1] = 0   # a valid length: outputs zeros, the final state the initial one
    dy = rng.standard_normal((B, T, H))
    dhT, dcT = rng.standard_normal((2, B, H))
    *_, tape = lstm_ref(x, W, U, b, h0, c0, lengths, reverse)
    ref = lstm_ref_backward(x, W, U, tape, dy, dhT, dcT)
    out = _run(x, W, U, b, dtype, initial_state=(h0, c0), lengths=lengths,
               go_backwards=reverse, training=True, num_threads=threads)
    g = lstm_backward(out.cache, dy.astype(dtype), dhT.astype(dtype), dcT.astype(dtype),
                      num_threads=threads)
    tol = TOL[dtype] if dtype == np.float64 else {"rtol": 1e-4, "atol": 2e-5}
    for got, want, name in zip(g, ref, ["dx", "dW", "dU", "db", "dh0", "dc0"]):
        np.testing.assert_allclose(got, want, err_msg=name, **tol)


def test_recurrent_mask_matches_reference():
    B, T, I, H = 5, 6, 3, 4
    x, W, U, b = _case(B, T, I, H, seed=4)
    rng = np.random.default_rng(5)
    rmask = (rng.random((B, H)) > 0.3) / 0.7
    dy = rng.standard_normal((B, T, H))
    y, _hT, _cT, tape = lstm_ref(x, W, U, b, rmask=rmask)
    ref = lstm_ref_backward(x, W, U, tape, dy, rmask=rmask)
    out = lstm_forward(x, W, U, b, training=True, recurrent_mask=rmask)
    np.testing.assert_allclose(out.output, y, rtol=1e-10, atol=1e-12)
    g = lstm_backward(out.cache, dy)
    for got, want in zip(g, ref):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def _loss(x, W, U, b, h0, c0, lengths, reverse, dy, dhT, dcT):
    out = lstm_forward(x, W, U, b, initial_state=(h0, c0), lengths=lengths,
                       go_backwards=reverse)
    return (out.output * dy).sum() + (out.h * dhT).sum() + (out.c * dcT).sum()


@pytest.mark.parametrize("reverse,with_lengths", [(False, False), (True, False),
                                                  (False, True), (True, True)])
def test_gradients_finite_differences(reverse, with_lengths):
    """Central differences in float64 for every input of the backward."""
    B, T, I, H = 3, 5, 2, 3
    x, W, U, b = _case(B, T, I, H, seed=6)
    rng = np.random.default_rng(7)
    h0, c0 = rng.standard_normal((2, B, H)) * 0.5
    lengths = np.array([5, 2, 4]) if with_lengths else None
    dy, = rng.standard_normal((1, B, T, H))
    dhT, dcT = rng.standard_normal((2, B, H))
    args = {"x": x, "W": W, "U": U, "b": b, "h0": h0, "c0": c0}
    out = lstm_forward(x, W, U, b, initial_state=(h0, c0), lengths=lengths,
                       go_backwards=reverse, training=True)
    g = lstm_backward(out.cache, dy, dhT, dcT)
    analytic = {"x": g.dx, "W": g.dkernel, "U": g.drecurrent_kernel, "b": g.dbias,
                "h0": g.dh0, "c0": g.dc0}

    def loss(_perturbed):  # one of args, perturbed in place
        return _loss(**args, lengths=lengths, reverse=reverse, dy=dy, dhT=dhT, dcT=dcT)

    for name, arr in args.items():
        num = numeric_grad(loss, arr)
        np.testing.assert_allclose(analytic[name], num, rtol=1e-6, atol=1e-8, err_msg=name)


def test_float32_long_sequence_stays_close_to_float64():
    """100 steps: the float32 kernel (fast activations) within 1e-5 relative."""
    B, T, I, H = 4, 100, 8, 16
    x, W, U, b = _case(B, T, I, H, seed=8)
    y64 = lstm_forward(x, W, U, b).output
    y32 = _run(x, W, U, b, np.float32).output
    np.testing.assert_allclose(y32, y64, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("path", ["rows", "stacked"])
def test_one_and_two_threads_agree_exactly(path):
    """On one path (forced: the planner may choose differently for 16 rows on one
    thread and 8 per thread on two), a thread split changes no bit of the forward."""
    x, W, U, b = _case(16, 12, 5, 7, seed=9)
    x, W, U, b = (a.astype(np.float32) for a in (x, W, U, b))
    dy = np.random.default_rng(0).standard_normal((16, 12, 7)).astype(np.float32)
    res = []
    for n in (1, 2):
        out = lstm_forward(x, W, U, b, training=True, num_threads=n, _plan=path)
        g = lstm_backward(out.cache, dy, num_threads=n)
        res.append((out.output, g.dx, g.dkernel, g.drecurrent_kernel))
    # the forward is bitwise identical: each sample follows the same code path
    np.testing.assert_array_equal(res[0][0], res[1][0])
    np.testing.assert_array_equal(res[0][1], res[1][1])
    for a, c in zip(res[0][2:], res[1][2:]):  # weight sums are split by thread
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)


def test_threads_api():
    old = cylstm.get_num_threads()
    try:
        cylstm.set_num_threads(1)
        assert cylstm.get_num_threads() == 1
        with pytest.raises(ValueError, match="n must be >= 1"):
            cylstm.set_num_threads(0)
        with pytest.raises(TypeError):
            cylstm.set_num_threads("2")
    finally:
        cylstm.set_num_threads(old)


def test_show_config_mentions_blas_and_openmp(capsys):
    cylstm.show_config()
    text = capsys.readouterr().out
    assert "BLAS" in text and "OpenMP" in text and "CUDA" in text


def test_concurrent_calls_from_threads_match_serial():
    x, W, U, b = (a.astype(np.float32) for a in _case(8, 20, 6, 9, seed=10))
    want = lstm_forward(x, W, U, b).output
    results = [None] * 6

    def work(k):
        results[k] = lstm_forward(x, W, U, b).output

    ts = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for r in results:
        np.testing.assert_array_equal(r, want)


def test_cache_is_single_use():
    x, W, U, b = _case()
    out = lstm_forward(x, W, U, b, training=True)
    lstm_backward(out.cache, np.ones_like(out.output))
    with pytest.raises(ValueError, match="already used"):
        lstm_backward(out.cache, np.ones_like(out.output))


def test_inference_keeps_no_cache():
    x, W, U, b = _case()
    assert lstm_forward(x, W, U, b).cache is None


def test_backward_writes_weight_gradients_into_out():
    x, W, U, b = _case(4, 5, 3, 6, seed=11)
    dy = np.random.default_rng(1).standard_normal((4, 5, 6))
    want = lstm_backward(lstm_forward(x, W, U, b, training=True).cache, dy)
    flat = np.full(W.size + U.size + b.size, np.nan)
    views = (flat[:W.size].reshape(W.shape), flat[W.size:W.size + U.size].reshape(U.shape),
             flat[W.size + U.size:])
    got = lstm_backward(lstm_forward(x, W, U, b, training=True).cache, dy, out=views)
    for v, g, w in zip(views, got[1:4], want[1:4]):
        assert g is v
        np.testing.assert_array_equal(v, w)
    with pytest.raises(ValueError, match=r"out\[1\] \(drecurrent_kernel\)"):
        lstm_backward(lstm_forward(x, W, U, b, training=True).cache, dy,
                      out=(None, np.zeros((6, 23)), None))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("threads", [1, 2])
def test_weight_gradients_same_bits_wherever_out_lies(dtype, threads):
    """The one GEMM over [x_t, h_prev] writes [dW; dU] in place where dU follows dW
    in memory (lstm_backward's own arrays, a flat buffer), else into a scratch
    copied out: the same bits either way, and the float64 reference's numbers."""
    B, T, I, H = 8, 6, 5, 7
    x, W, U, b = (a.astype(dtype) for a in _case(B, T, I, H, seed=3))
    dy = np.random.default_rng(2).standard_normal((B, T, H)).astype(dtype)

    def grads(out):
        f = lstm_forward(x, W, U, b, return_sequences=True, training=True,
                         num_threads=threads)
        g = lstm_backward(f.cache, dy, out=out, num_threads=threads)
        return g.dkernel, g.drecurrent_kernel

    own = grads(None)
    apart = grads((np.full(W.shape, np.nan, dtype), np.full(U.shape, np.nan, dtype), None))
    gap = np.full(W.size + 3 + U.size, np.nan, dtype)   # dU not right after dW
    spaced = grads((gap[:W.size].reshape(W.shape), gap[W.size + 3:].reshape(U.shape), None))
    flat = np.full(W.size + U.size, np.nan, dtype)
    joined = grads((flat[:W.size].reshape(W.shape), flat[W.size:].reshape(U.shape), None))
    for got in (apart, spaced, joined):
        for g, w in zip(got, own):
            np.testing.assert_array_equal(g, w)
    assert np.isnan(gap[W.size:W.size + 3]).all()   # the gap is never written
    x64, W64, U64 = (a.astype(np.float64) for a in (x, W, U))
    *_, tape = lstm_ref(x64, W64, U64, b.astype(np.float64))
    ref = lstm_ref_backward(x64, W64, U64, tape, dy.astype(np.float64))
    tol = 1e-10 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(own[0], ref[1], rtol=0, atol=tol)
    np.testing.assert_allclose(own[1], ref[2], rtol=0, atol=tol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("fuse", [True, False])
def test_fused_step_projection_matches_reference(monkeypatch, dtype, reverse, threads, fuse):
    """Batches of 8+ samples per thread compute x_t @ W inside each step (no
    gate buffer in inference) while the weights fit the cache; both ways match
    the reference, forward and backward."""
    from cylstm import functional

    if not fuse:
        monkeypatch.setattr(functional, "_LLC", 0)
    # a BLAS with small-matrix kernels, where the BLAS paths are the choice at this
    # size (elsewhere inference takes the stacked panels: STACKED_PACKING_BLAS_MAX_BYTES)
    facts = dataclasses.replace(functional._tuning.cpu_facts(), blas_core="SkylakeX")
    monkeypatch.setattr(functional._tuning, "cpu_facts", lambda: facts)
    B, T, I, H = 8 * threads, 7, 6, 5
    x, W, U, b = _case(B, T, I, H, seed=21)
    rng = np.random.default_rng(22)
    h0, c0 = rng.standard_normal((2, B, H)) * 0.5
    y, hT, cT, tape = lstm_ref(x, W, U, b, h0, c0, None, reverse)
    calls = []
    real = functional._lstm.forward_rows
    monkeypatch.setattr(functional._lstm, "forward_rows",
                        lambda *a: calls.append(a[17]) or real(*a))  # a[17]: fuse
    for training in (False, True):
        out = _run(x, W, U, b, dtype, initial_state=(h0, c0), go_backwards=reverse,
                   training=training, num_threads=threads)
        np.testing.assert_allclose(out.output, y, **TOL[dtype])
        np.testing.assert_allclose(out.h, hT, **TOL[dtype])
        np.testing.assert_allclose(out.c, cT, **TOL[dtype])
    assert calls == [fuse, fuse]
    dy = rng.standard_normal((B, T, H))
    ref = lstm_ref_backward(x, W, U, tape, dy)
    g = lstm_backward(out.cache, dy.astype(dtype), num_threads=threads)
    tol = TOL[dtype] if dtype == np.float64 else {"rtol": 1e-4, "atol": 2e-5}
    for got, want, name in zip(g, ref, ["dx", "dW", "dU", "db", "dh0", "dc0"]):
        np.testing.assert_allclose(got, want, err_msg=name, **tol)
    # with lengths every sample is at its own time index: never fused
    calls.clear()
    lengths = np.full(B, T)
    lengths[0] = T - 2
    _run(x, W, U, b, dtype, lengths=lengths, num_threads=threads)
    assert calls == [False]


def test_backward_flushes_subnormals_only_while_it_runs():
    """Regression (issue "Very long sequences"): a float32 gradient fading back
    through time reached subnormal floats and the backward ran 10x slower; the
    kernel flushes them while it runs and gives the thread its mode back."""
    rng = np.random.default_rng(0)
    B, T, I, H = 4, 300, 8, 32
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    W = rng.uniform(-0.1, 0.1, (I, 4 * H)).astype(np.float32)
    U = rng.uniform(-0.1, 0.1, (H, 4 * H)).astype(np.float32)
    out = lstm_forward(x, W, U, None, training=True, return_sequences=False, num_threads=1)
    g = lstm_backward(out.cache, grad_output=np.ones((B, H), np.float32), num_threads=1)
    assert all(np.isfinite(a).all() for a in g if a is not None)
    tiny = np.array([1e-39], np.float32)       # subnormal in float32
    assert (tiny * np.float32(1.0))[0] != 0    # not flushed: the mode was restored
    assert (tiny / np.float32(2.0))[0] != 0


@pytest.mark.parametrize("path", [None, "rows", "units"])
@pytest.mark.parametrize("threads", [1, 2])
def test_all_lengths_zero_pass_the_state_through(path, threads):
    """Every sample of length 0: outputs are zeros, the final state is the initial
    one, and the backward passes the final state's gradient straight to the
    initial state (nothing reaches x or the weights)."""
    B, T, I, H = 4, 5, 3, 40
    x, W, U, b = _case(B, T, I, H, seed=8)
    rng = np.random.default_rng(9)
    h0, c0 = rng.standard_normal((2, B, H))
    dhT, dcT = rng.standard_normal((2, B, H))
    out = lstm_forward(x, W, U, b, initial_state=(h0, c0), lengths=np.zeros(B, int),
                       training=True, num_threads=threads, _plan=path)
    assert not out.output.any()
    np.testing.assert_array_equal(out.h, h0)
    np.testing.assert_array_equal(out.c, c0)
    g = lstm_backward(out.cache, np.ones((B, T, H)), dhT, dcT, num_threads=threads)
    for a in (g.dx, g.dkernel, g.drecurrent_kernel, g.dbias):
        assert not np.asarray(a).any()
    np.testing.assert_array_equal(g[4], dhT)
    np.testing.assert_array_equal(g[5], dcT)
