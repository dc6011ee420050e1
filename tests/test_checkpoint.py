"""Checkpointed BPTT (issue 13, part 1): ``checkpoint_every`` gives full BPTT's
gradients in bounded memory.

References: full BPTT through the same kernels (1e-12 relative in float64), the
NumPy float64 reference (tests/reference.py), central finite differences, and
the bytes the cache keeps and the step allocates (tracemalloc).
"""
import itertools
import tracemalloc
import warnings

import numpy as np
import pytest
from reference import lstm_ref, lstm_ref_backward, numeric_grad, random_lstm

import cylstm
from cylstm import _memory, _workspace
from cylstm.functional import cache_nbytes, lstm_backward, lstm_forward, plan_checkpoints
from cylstm.layers import LSTM, Bidirectional, Dense, Embedding, Masking
from cylstm.models import Sequential, load_model

FIELDS = ("dx", "dW", "dU", "db", "dh0", "dc0")


@pytest.fixture(autouse=True)
def _budget():
    """Every test starts from the default budget and leaves it there."""
    cylstm.set_memory_budget(None)
    yield
    cylstm.set_memory_budget(None)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300)) if b.size else 0.0


def _problem(B, T, I, H, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    x, W, U, b = (a.astype(dtype) for a in random_lstm(rng, B, T, I, H))
    h0, c0 = (rng.standard_normal((2, B, H)) * 0.5).astype(dtype)
    dy = rng.standard_normal((B, T, H)).astype(dtype)
    dh, dc = rng.standard_normal((2, B, H)).astype(dtype)
    lengths = rng.integers(0, T + 1, B)
    lengths[0] = T  # the longest sample runs every step
    lengths[-1] = 0  # and one runs none
    rmask = ((rng.random((B, H)) > 0.3) / 0.7).astype(dtype)
    return {"x": x, "W": W, "U": U, "b": b, "h0": h0, "c0": c0, "dy": dy, "dh": dh, "dc": dc,
            "lengths": lengths, "rmask": rmask}


def _grads(p, every, *, lengths=False, reverse=False, seqs=True, rmask=False, state=True,
           threads=1, plan=None, need_dx=True):
    f = lstm_forward(p["x"], p["W"], p["U"], p["b"],
                     initial_state=(p["h0"], p["c0"]) if state else None,
                     lengths=p["lengths"] if lengths else None, go_backwards=reverse,
                     return_sequences=seqs, training=True,
                     recurrent_mask=p["rmask"] if rmask else None, checkpoint_every=every,
                     num_threads=threads, _plan=plan)
    if every != "auto":
        assert ("checkpoints" in f.cache) == (every is not None)
    dy = p["dy"] if seqs else p["dy"][:, 0]
    g = lstm_backward(f.cache, dy, p["dh"], p["dc"], num_threads=threads,
                      need_input_grad=need_dx)
    return f, g


def _assert_same(full, ckpt, tol, what=""):
    (f0, g0), (f1, g1) = full, ckpt
    for name, a, b in (("output", f1.output, f0.output), ("h", f1.h, f0.h), ("c", f1.c, f0.c)):
        assert _rel(a, b) <= tol, f"{what} {name}: {_rel(a, b):.3g}"
    for name, a, b in zip(FIELDS, g1, g0):
        if b is None:
            assert a is None
            continue
        assert a.dtype == b.dtype and a.shape == b.shape
        assert _rel(a, b) <= tol, f"{what} {name}: {_rel(a, b):.3g}"


# ---- the functional API against full BPTT -------------------------------------------------

@pytest.mark.parametrize("every", [1, 3, 4, 13, 50])  # k = 1, k not dividing T, k = T, k > T
def test_every_segment_length_equals_full_bptt(every):
    p = _problem(6, 13, 4, 5)
    _assert_same(_grads(p, None), _grads(p, every), 1e-12, f"k={every}")


COMBOS = list(itertools.product([False, True], [False, True], [False, True], [False, True],
                                [False, True]))


@pytest.mark.parametrize("lengths,reverse,seqs,rmask,state", COMBOS)
@pytest.mark.parametrize("threads", [1, 2])
def test_every_combination_equals_full_bptt(lengths, reverse, seqs, rmask, state, threads):
    """Per-sample lengths x reversed time x sequence or last output x recurrent
    dropout x initial state, on one and two threads, k not dividing T."""
    p = _problem(9, 11, 3, 4, seed=1)
    kw = {"lengths": lengths, "reverse": reverse, "seqs": seqs, "rmask": rmask,
          "state": state, "threads": threads}
    _assert_same(_grads(p, None, **kw), _grads(p, 4, **kw), 1e-12, str(kw))


@pytest.mark.parametrize("path,lengths,reverse", [
    ("rows", False, False), ("rows", True, True), ("rows", True, False),
    ("rows_fused", False, False), ("rows_fused", False, True),  # (it takes no lengths)
    ("units", False, False), ("units", True, True), ("units", True, False)])
def test_every_kernel_path_equals_full_bptt(path, lengths, reverse):
    """Each training path of the forward planner, forced: the recomputation runs
    the same path as the forward (H = 20 spans three float64 panels)."""
    p = _problem(8, 10, 3, 20, seed=2)
    kw = {"lengths": lengths, "reverse": reverse, "plan": path,
          "threads": 2 if path == "units" else 1}
    _assert_same(_grads(p, None, **kw), _grads(p, 3, **kw), 1e-12, path)


def test_checkpointed_equals_numpy_reference():
    """Against the independent float64 reference, not only against the kernels."""
    p = _problem(5, 9, 3, 4, seed=3)
    L = p["lengths"]
    y, hT, _, tape = lstm_ref(p["x"], p["W"], p["U"], p["b"], p["h0"], p["c0"], L, True,
                               p["rmask"])
    ref = lstm_ref_backward(p["x"], p["W"], p["U"], tape, p["dy"], p["dh"], p["dc"],
                            p["rmask"])
    f, g = _grads(p, 2, lengths=True, reverse=True, rmask=True)
    np.testing.assert_allclose(f.output, y, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(f.h, hT, rtol=1e-12, atol=1e-13)
    for name, got, want in zip(FIELDS, g, ref):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, err_msg=name)


def test_finite_differences():
    """Central differences of L = sum(dy * y) + sum(dh * h_T) + sum(dc * c_T) in
    float64 against the checkpointed gradients (k = 2 over T = 5, lengths)."""
    p = _problem(2, 5, 3, 2, seed=4)
    p["lengths"] = np.array([5, 3])
    kw = {"initial_state": (p["h0"], p["c0"]), "lengths": p["lengths"],
          "recurrent_mask": p["rmask"]}

    def loss(x, W, U, b, h0, c0):
        f = lstm_forward(x, W, U, b, initial_state=(h0, c0), lengths=p["lengths"],
                         recurrent_mask=p["rmask"])
        return float(np.sum(p["dy"] * f.output) + np.sum(p["dh"] * f.h)
                     + np.sum(p["dc"] * f.c))

    f = lstm_forward(p["x"], p["W"], p["U"], p["b"], training=True, checkpoint_every=2, **kw)
    g = lstm_backward(f.cache, p["dy"], p["dh"], p["dc"])
    args = [p[k].copy() for k in ("x", "W", "U", "b", "h0", "c0")]
    for name, got, a in zip(FIELDS, g, args):
        num = numeric_grad(lambda _perturbed: loss(*args), a)  # a is one of args
        np.testing.assert_allclose(got, num, rtol=1e-6, atol=1e-8, err_msg=name)


def test_float32_within_rounding():
    p = _problem(8, 40, 6, 12, dtype=np.float32, seed=5)
    kw = {"lengths": True, "reverse": True, "rmask": True}
    full, ck = _grads(p, None, **kw), _grads(p, 7, **kw)
    _assert_same(full, ck, 1e-5, "float32")
    assert ck[1].dx.dtype == np.float32


def test_forward_outputs_are_bitwise_full_bptt_and_inference():
    """The forward of a checkpointed call is the training forward, segment by
    segment: its outputs are full BPTT's to rounding, and no state leaks between
    calls (the second call of the same cache-less forward gives the same result)."""
    p = _problem(4, 12, 3, 5, seed=6)
    a, _ = _grads(p, 5, lengths=True)
    b, _ = _grads(p, 5, lengths=True)
    np.testing.assert_array_equal(a.output, b.output)
    inf = lstm_forward(p["x"], p["W"], p["U"], p["b"], initial_state=(p["h0"], p["c0"]),
                       lengths=p["lengths"])
    np.testing.assert_allclose(a.output, inf.output, rtol=1e-13, atol=1e-14)
    assert not a.output[1:, :][np.arange(12)[None, :] >= p["lengths"][1:, None]].any()


def test_out_buffers_and_no_input_grad():
    p = _problem(5, 9, 3, 4, seed=7)
    full = _grads(p, None)
    f = lstm_forward(p["x"], p["W"], p["U"], p["b"], initial_state=(p["h0"], p["c0"]),
                     training=True, checkpoint_every=2)
    out = (np.full_like(p["W"], 7.0), np.full_like(p["U"], 7.0), None)
    g = lstm_backward(f.cache, p["dy"], p["dh"], p["dc"], need_input_grad=False, out=out)
    assert g.dx is None and g.dkernel is out[0] and g.drecurrent_kernel is out[1]
    for got, want in zip(g[1:], full[1][1:]):
        assert _rel(got, want) <= 1e-12
    with pytest.raises(ValueError, match="already used"):
        lstm_backward(f.cache, p["dy"])


# ---- memory ------------------------------------------------------------------------------

def test_saved_bytes_are_the_checkpoints():
    B, T, I, H = 4, 400, 3, 16
    p = _problem(B, T, I, H, seed=8)
    full = lstm_forward(p["x"], p["W"], p["U"], p["b"], training=True)
    ck = lstm_forward(p["x"], p["W"], p["U"], p["b"], training=True, checkpoint_every=20)
    # full BPTT: gates, c, h_prev (4H + H + H per sample and step) and c0
    assert cache_nbytes(full.cache) == B * T * 6 * H * 8 + B * H * 8
    # checkpointed: one (h, c) per segment of 20 steps
    assert cache_nbytes(ck.cache) == (T // 20) * 2 * B * H * 8
    assert cache_nbytes(ck.cache) == ck.cache["plan"].saved_bytes
    assert cache_nbytes(ck.cache) * 100 <= cache_nbytes(full.cache) * 2
    lstm_backward(ck.cache, p["dy"])
    lstm_backward(full.cache, p["dy"])
    assert cache_nbytes(ck.cache) == cache_nbytes(full.cache) == 0  # consumed


@pytest.mark.slow
def test_peak_memory_of_the_step_is_bounded():
    """tracemalloc sees every NumPy allocation: the whole checkpointed step (forward
    and backward, last output only, no dx) stays within the plan's peak, far under
    the full cache that full BPTT allocates."""
    B, T, I, H = 8, 3000, 4, 32
    rng = np.random.default_rng(9)
    x, W, U, b = random_lstm(rng, B, T, I, H)
    dh = rng.standard_normal((B, H))

    def step(every):
        _workspace.clear()  # the pool would hide allocations made by earlier tests
        tracemalloc.start()
        try:
            f = lstm_forward(x, W, U, b, training=True, return_sequences=False,
                             checkpoint_every=every)
            plan = f.cache.get("plan")
            lstm_backward(f.cache, f.output * 0 + dh, need_input_grad=False)
            return tracemalloc.get_traced_memory()[1], plan
        finally:
            tracemalloc.stop()
            _workspace.clear()

    full_peak, _ = step(None)
    ck_peak, plan = step(55)
    full_cache = B * T * 7 * H * 8
    assert full_peak >= B * T * 6 * H * 8  # gates, c, h_prev at least
    assert ck_peak <= plan.peak_bytes + (1 << 16)
    assert ck_peak * 20 < full_cache


def test_auto_follows_the_budget(monkeypatch):
    p = _problem(4, 100, 3, 8, seed=10)
    full_bytes = 4 * 100 * 7 * 8 * 8
    cylstm.set_memory_budget(full_bytes)  # the full cache fits: full BPTT
    f, _ = _grads(p, "auto")
    assert "G" in f.cache
    cylstm.set_memory_budget(full_bytes - 1)  # it does not: sqrt(T) segments
    f = lstm_forward(p["x"], p["W"], p["U"], p["b"], training=True, checkpoint_every="auto")
    assert f.cache["plan"].every == 10 and f.cache["plan"].n_segments == 10
    g = lstm_backward(f.cache, p["dy"])
    g_full = lstm_backward(lstm_forward(p["x"], p["W"], p["U"], p["b"], training=True).cache,
                           p["dy"])
    for a, b in zip(g, g_full):
        assert _rel(a, b) <= 1e-12
    assert cylstm.get_memory_budget() == full_bytes - 1


def test_auto_shrinks_segments_to_fit_and_refuses_what_cannot():
    B, T, I, H = 32, 10000, 32, 256
    big = plan_checkpoints(B, T, I, H, np.float32, "auto")  # default 1 GiB
    assert big.every == 100 and big.full_bytes > 2**31 and big.saved_bytes <= 64 * 2**20
    small = plan_checkpoints(B, T, I, H, np.float32, "auto", budget=34 * 2**20)
    assert small.every < 100 and small.peak_bytes <= 34 * 2**20
    with pytest.raises(MemoryError, match=r"cannot fit the memory budget of 4\.0 MiB"):
        plan_checkpoints(B, T, I, H, np.float32, "auto", budget=4 * 2**20)
    # 100000 * 7 * 128 * 4 B = 342 MiB: under 1 GiB "auto" keeps the full cache
    assert plan_checkpoints(1, 100000, 32, 128, np.float32, "auto") is None
    long = plan_checkpoints(1, 100000, 32, 128, np.float32, "auto", budget=16 * 2**20)
    assert long.saved_bytes <= 16 * 2**20 and long.peak_bytes <= 16 * 2**20


def test_explicit_segment_over_budget_is_refused_before_allocating():
    cylstm.set_memory_budget(2**20)
    x = np.zeros((64, 2000, 8), np.float32)
    W = np.zeros((8, 256), np.float32)
    U = np.zeros((64, 256), np.float32)
    tracemalloc.start()
    try:
        with pytest.raises(MemoryError, match=r"checkpoint_every=1000 .* over the memory "
                                              r"budget of 1\.0 MiB"):
            lstm_forward(x, W, U, training=True, checkpoint_every=1000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20  # nothing of the request's size was allocated
    # inference does not keep a cache: checkpoint_every does not apply
    assert lstm_forward(x[:1, :3], W, U, checkpoint_every=1000).cache is None


# ---- bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [0, -3, 2.5, 4.0, "sqrt", "", True, [4]])
def test_bad_checkpoint_every_is_refused(bad):
    p = _problem(2, 4, 3, 2)
    with pytest.raises(ValueError, match="checkpoint_every"):
        lstm_forward(p["x"], p["W"], p["U"], training=True, checkpoint_every=bad)
    with pytest.raises(ValueError, match="checkpoint_every"):
        LSTM(3, checkpoint_every=bad)


@pytest.mark.parametrize("bad,err", [(0, ValueError), (-1, ValueError), (0.5, ValueError),
                                     (float("nan"), ValueError), ("1e9", TypeError),
                                     (True, TypeError)])
def test_bad_budget_is_refused(bad, err):
    with pytest.raises(err, match="nbytes"):
        cylstm.set_memory_budget(bad)
    assert cylstm.get_memory_budget() == 2**30


def test_budget_from_the_environment(monkeypatch):
    monkeypatch.setattr(_memory, "_budget", None)
    monkeypatch.setenv("CYLSTM_MEMORY_BUDGET", "12345678")
    assert cylstm.get_memory_budget() == 12345678
    cylstm.set_memory_budget(2e9)
    assert cylstm.get_memory_budget() == 2_000_000_000
    cylstm.set_memory_budget(None)  # back to the environment's
    assert cylstm.get_memory_budget() == 12345678
    for bad in ("0", "-5", "lots"):
        monkeypatch.setattr(_memory, "_budget", None)
        monkeypatch.setenv("CYLSTM_MEMORY_BUDGET", bad)
        with pytest.raises(ValueError, match="CYLSTM_MEMORY_BUDGET"):
            cylstm.get_memory_budget()
    monkeypatch.delenv("CYLSTM_MEMORY_BUDGET")
    monkeypatch.setattr(_memory, "_budget", None)
    assert cylstm.get_memory_budget() == 2**30


# ---- the layer and the model ------------------------------------------------------------------

def _twin_models(build, every, x, y):
    """The same model with and without checkpoint_every, same weights: (loss, grads)
    of one batch each."""
    out = []
    weights = None
    for ck in (None, every):
        m = Sequential(build(ck))
        m.compile(optimizer="sgd", loss="mse")
        m.build((None,) + x.shape[1:])
        if weights is None:
            weights = m.get_weights()
        m.set_weights(weights)
        out.append(m._forward_backward(x, y))
    return out


def _assert_twins(pair, tol=1e-12):
    (l0, g0), (l1, g1) = pair
    assert abs(l1 - l0) <= tol * abs(l0)
    for a, b in zip(g1, g0):
        assert _rel(a, b) <= tol, _rel(a, b)


def _data(B=6, T=17, F=3, seed=11, out=2):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((B, T, F)), rng.standard_normal((B, out))


def test_layer_stacked_lstms_and_dropout():
    x, y = _data()

    def build(ck):
        return [LSTM(5, return_sequences=True, checkpoint_every=ck, dropout=0.2,
                     recurrent_dropout=0.3, seed=1, dtype="float64"),
                LSTM(4, checkpoint_every=ck, recurrent_dropout=0.25, seed=2,
                     go_backwards=True),
                Dense(2)]
    _assert_twins(_twin_models(build, 4, x, y))


def test_layer_bidirectional_and_masks():
    x, y = _data(seed=12)
    x[0, 12:] = 0.0            # right padding
    x[1, :5] = 0.0             # left padding
    x[2, 3:6] = 0.0            # holes
    x[3] = 0.0                 # all masked

    def build(ck):
        return [Masking(0.0, dtype="float64"),
                Bidirectional(LSTM(5, return_sequences=True, checkpoint_every=ck, seed=3)),
                Bidirectional(LSTM(3, checkpoint_every=ck, seed=4), merge_mode="sum"),
                Dense(2)]
    _assert_twins(_twin_models(build, 5, x, y))


def test_layer_embedding_mask_and_go_backwards_sequences():
    rng = np.random.default_rng(13)
    x = rng.integers(1, 9, (5, 14))
    x[0, 9:] = 0
    x[2, 4:] = 0
    y = rng.standard_normal((5, 14, 2))

    def build(ck):
        return [Embedding(9, 4, mask_zero=True, dtype="float64"),
                LSTM(6, return_sequences=True, go_backwards=True, checkpoint_every=ck,
                     seed=5),
                Dense(2)]
    _assert_twins(_twin_models(build, 3, x, y))


def test_layer_stateful_carries_state_across_batches():
    x, y = _data(B=4, seed=14)
    res = []
    for ck in (None, 6):
        m = Sequential([LSTM(5, stateful=True, checkpoint_every=ck, seed=6, dtype="float64"),
                        Dense(2, kernel_initializer="ones")])
        m.compile(optimizer="sgd", loss="mse")
        m._forward_backward(x, y)           # the first batch leaves a state behind
        res.append(m._forward_backward(x[:, ::-1].copy(), y))
    _assert_twins(res)


def test_layer_standalone_call_with_initial_state():
    rng = np.random.default_rng(15)
    x = rng.standard_normal((3, 9, 2))
    h0, c0 = rng.standard_normal((2, 3, 4))
    a = LSTM(4, return_sequences=True, seed=7, dtype="float64")
    b = LSTM(4, return_sequences=True, seed=7, dtype="float64", checkpoint_every=2)
    for lay in (a, b):
        lay.build((None, 9, 2))
        lay._forward(x, None, True, initial_state=[h0, c0])
    assert "checkpoints" in b._cache[0] and "checkpoints" not in a._cache[0]
    da = a._backward(np.ones((3, 9, 4)))
    db = b._backward(np.ones((3, 9, 4)))
    assert _rel(db, da) <= 1e-12
    for n in ("kernel", "recurrent_kernel", "bias"):
        assert _rel(b._grads[n], a._grads[n]) <= 1e-12


def test_fit_with_checkpointing_matches_fit_without():
    x, y = _data(B=16, T=25, seed=16)
    hist = []
    for ck in (None, "auto", 7):
        m = Sequential([LSTM(6, return_sequences=True, checkpoint_every=ck, seed=8,
                             dtype="float64"),
                        LSTM(4, checkpoint_every=ck, seed=9), Dense(2, kernel_initializer="ones")])
        m.compile(optimizer="adam", loss="mse")
        if ck == "auto":
            cylstm.set_memory_budget(50_000)  # the first layer's 67 kB cache does not fit
            assert plan_checkpoints(8, 25, 3, 6, np.float64, "auto").every == 5
        h = m.fit(x, y, epochs=3, batch_size=8, shuffle=False, verbose=0)
        cylstm.set_memory_budget(None)
        hist.append(np.array(h.history["loss"]))
    np.testing.assert_allclose(hist[1], hist[0], rtol=1e-11)
    np.testing.assert_allclose(hist[2], hist[0], rtol=1e-11)


def test_config_and_save_load(tmp_path):
    lay = LSTM(4, checkpoint_every="auto")
    assert lay.get_config()["checkpoint_every"] == "auto"
    assert "checkpoint_every" not in LSTM(4).get_config()  # Keras's keys only, by default
    assert LSTM.from_config(LSTM(3, checkpoint_every=9).get_config()).checkpoint_every == 9
    bi = Bidirectional(LSTM(3, checkpoint_every=5))
    assert bi.forward_layer.checkpoint_every == bi.backward_layer.checkpoint_every == 5
    m = Sequential([LSTM(3, return_sequences=True, checkpoint_every=7, input_shape=(None, 2)),
                    Bidirectional(LSTM(2, checkpoint_every="auto")), Dense(1)])
    m.compile(optimizer="adam", loss="mse")
    path = str(tmp_path / "m.npz")
    m.save(path)
    m2 = load_model(path)
    assert m2.layers[0].checkpoint_every == 7
    assert m2.layers[1].forward_layer.checkpoint_every == "auto"
    assert m2.layers[1].backward_layer.checkpoint_every == "auto"


def test_cuda_falls_back_with_a_warning(monkeypatch):
    """model.to('cuda') (on the NumPy emulator of the CUDA kernels here): the GPU
    keeps its full cache, says so once, and trains as the CPU does."""
    import cuda_emulator

    from cylstm import cuda

    monkeypatch.setattr(cuda, "_load", lambda: cuda_emulator)
    monkeypatch.setattr(cuda, "_contexts", {})
    monkeypatch.setattr(cuda, "_ctx_locks", {})
    x, y = _data(B=8, T=6, seed=17)
    losses = []
    for device in ("cpu", "cuda"):
        m = Sequential([LSTM(5, checkpoint_every=2, seed=10, dtype="float64"),
                        Dense(2, kernel_initializer="ones")])
        m.compile(optimizer="sgd", loss="mse")
        m.build((None, 6, 3))
        if device == "cuda":
            m.to("cuda")
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            h = m.fit(x, y, epochs=2, batch_size=4, shuffle=False, verbose=0)
        said = [w for w in seen if "not implemented by the CUDA backend" in str(w.message)]
        assert len(said) == (1 if device == "cuda" else 0)  # once, for four batches
        losses.append(h.history["loss"])
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-8)
