"""lstm_forward(weights_dtype="int8") and the int8 model's predict (issue 16): the
int8 kernel over whole sequences.

Checked against a NumPy reference that applies the same roundings
(reference.lstm_int8_ref: int8 weights, int16 rows), against the streaming runner
bit for bit, through the layers (Bidirectional, masks, states), and the guards: the
sealed weights of a quantized layer and the refusals."""
import numpy as np
import pytest
from isa_levels import LEVELS
from reference import int8_round, lstm_int8_ref

from cylstm import _cpu, _packcache, stream
from cylstm import functional as F
from cylstm import layers as L
from cylstm.models import Sequential

# float32 computation against the float64 reference: h_prev is quantized from float32
# values, so a row can round one int16 step apart (test_stream.py's bound too)
TOL = {"rtol": 2e-5, "atol": 5e-5}


def _weights(rng, I, H, scale=0.25):
    W = (scale * rng.standard_normal((I, 4 * H))).astype(np.float32)
    U = (scale * rng.standard_normal((H, 4 * H))).astype(np.float32)
    b = (0.2 * rng.standard_normal(4 * H)).astype(np.float32)
    return W, U, b


@pytest.mark.parametrize("B,T,I,H", [(1, 30, 7, 50), (3, 9, 5, 3), (6, 12, 33, 40),
                                     (2, 5, 64, 130)])
@pytest.mark.parametrize("reverse", [False, True])
def test_int8_forward_matches_the_reference(B, T, I, H, reverse):
    rng = np.random.default_rng(B * 100 + H)
    W, U, b = _weights(rng, I, H)
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    h0 = (0.5 * rng.standard_normal((B, H))).astype(np.float32)
    c0 = (0.5 * rng.standard_normal((B, H))).astype(np.float32)
    r = F.lstm_forward(x, W, U, b, initial_state=(h0, c0), go_backwards=reverse,
                       weights_dtype="int8")
    y, hT, cT = lstm_int8_ref(x, W, U, b, h0, c0, reverse=reverse)
    np.testing.assert_allclose(r.output, y, **TOL)
    np.testing.assert_allclose(r.h, hT, **TOL)
    np.testing.assert_allclose(r.c, cT, **TOL)
    last = F.lstm_forward(x, W, U, b, initial_state=(h0, c0), go_backwards=reverse,
                          return_sequences=False, weights_dtype="int8")
    np.testing.assert_array_equal(last.output, r.h)
    # the float32 products on the same int8 values differ by the int16 rows only
    Wq, Uq = (int8_round(w).astype(np.float32) for w in (W, U))
    f = F.lstm_forward(x, Wq, Uq, b, initial_state=(h0, c0), go_backwards=reverse)
    assert 0 < np.abs(f.output - r.output).max() < 1e-3


@pytest.mark.parametrize("reverse", [False, True])
def test_lengths_zero_included(reverse):
    rng = np.random.default_rng(4)
    B, T, I, H = 6, 8, 5, 20
    W, U, b = _weights(rng, I, H)
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    h0 = rng.standard_normal((B, H)).astype(np.float32)
    c0 = rng.standard_normal((B, H)).astype(np.float32)
    lens = np.array([8, 0, 3, 8, 1, 3])
    r = F.lstm_forward(x, W, U, b, initial_state=(h0, c0), lengths=lens,
                       go_backwards=reverse, weights_dtype="int8")
    y, hT, cT = lstm_int8_ref(x, W, U, b, h0, c0, lengths=lens, reverse=reverse)
    np.testing.assert_allclose(r.output, y, **TOL)
    np.testing.assert_allclose(r.h, hT, **TOL)
    np.testing.assert_allclose(r.c, cT, **TOL)
    assert not r.output[1].any() and not r.output[2, 3:].any()
    np.testing.assert_array_equal(r.h[1], h0[1])    # length 0: the initial state
    np.testing.assert_array_equal(r.c[1], c0[1])


@pytest.mark.parametrize("B,threads", [(1, 1), (4, 1), (4, 2), (9, 2), (16, 2), (33, 2)])
def test_same_bits_as_the_int8_runner(B, threads):
    # one kernel: the sequence call is the runner's step, step after step
    rng = np.random.default_rng(B)
    I, H, T = 24, 70, 11
    W, U, b = _weights(rng, I, H)
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    r = F.lstm_forward(x, W, U, b, weights_dtype="int8", num_threads=threads,
                       _plan=F.plan_forward(B, T, I, H, np.float32, threads,
                                            weights_dtype="int8"))
    run = stream.StreamRunner._from_specs(
        [{"type": "lstm", "kernel": W, "recurrent_kernel": U, "bias": b}], batch_size=B,
        num_threads=threads, weights_dtype="int8")
    want = run.run(np.ascontiguousarray(x.transpose(1, 0, 2))).transpose(1, 0, 2)
    np.testing.assert_array_equal(r.output, want)


def test_plan_threads_follow_the_runner_rule():
    # a team only from INT8_SEQ_PARALLEL_MIN_BYTES of int8 weights times the batch
    small = F.plan_forward(1, 100, 10, 20, np.float32, 2, weights_dtype="int8")   # 24 KB
    assert (small.path, small.n_threads) == ("int8", 1)
    big = F.plan_forward(1, 100, 512, 512, np.float32, 2, weights_dtype="int8")
    assert (big.path, big.n_threads) == ("int8", 2)
    assert F.plan_forward(1, 100, 32, 64, np.float32, 2, weights_dtype="int8").n_threads == 1
    assert F.plan_forward(1, 100, 64, 128, np.float32, 2, weights_dtype="int8").n_threads == 2
    # never more threads than panels to split each step; slices of the batch
    # (INT8_ROW_MIN_ROWS rows each at least) need none
    assert F.plan_forward(4, 10, 500, 8, np.float32, 4, weights_dtype="int8").n_threads == 1
    p = F.plan_forward(64, 10, 500, 8, np.float32, 4, weights_dtype="int8")
    assert (p.n_threads, p.row_slices) == (4, 4)
    p = F.plan_forward(16, 25, 1024, 1024, np.float32, 2, weights_dtype="int8")
    assert (p.n_threads, p.row_slices) == (2, 2) and "slices" in p.reason
    p = F.plan_forward(15, 25, 1024, 1024, np.float32, 2, weights_dtype="int8")
    assert (p.n_threads, p.row_slices) == (2, 1)   # 7 rows a slice: the panels split
    assert F.plan_forward(64, 10, 4, 4, np.float32, 2, weights_dtype="int8").row_slices == 1
    assert F.plan_forward(1, 5, 5, 5, np.float32, 2,
                          weights_dtype="int8", force="int8").reason == "forced"


def test_refusals():
    rng = np.random.default_rng(0)
    W, U, b = _weights(rng, 3, 4)
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="weights_dtype must be None or 'int8'; got 'int4'"):
        F.lstm_forward(x, W, U, b, weights_dtype="int4")
    with pytest.raises(ValueError, match="train in float32 or mixed_bfloat16"):
        F.lstm_forward(x, W, U, b, weights_dtype="int8", training=True)
    with pytest.raises(ValueError, match="needs float32 weights.*float64"):
        F.lstm_forward(x, W.astype(np.float64), U.astype(np.float64), b,
                       weights_dtype="int8")
    with pytest.raises(ValueError, match="give one"):
        F.lstm_forward(x, W, U, b, weights_dtype="int8", compute_dtype="bfloat16")
    with pytest.raises(ValueError, match="recurrent_mask"):
        F.lstm_forward(x, W, U, b, weights_dtype="int8", recurrent_mask=np.ones((2, 4)))
    with pytest.raises(ValueError, match="'int8' path only"):
        F.lstm_forward(x, W, U, b, weights_dtype="int8", _plan="rows")
    with pytest.raises(ValueError, match="pass weights_dtype='int8'"):
        F.lstm_forward(x, W, U, b, _plan="int8")
    bad = U.copy()
    bad[1, 2] = np.inf
    with pytest.raises(ValueError, match=r"recurrent_kernel must be finite.*\(4, 16\)"):
        F.lstm_forward(x, W, bad, b, weights_dtype="int8")


# ------------------------------------------------------------------ through the layers
def _model(rng, layer, I):
    m = Sequential([layer, L.Dense(2)])
    m.build((None, None, I))
    m.set_weights([w + 0.2 * rng.standard_normal(w.shape) for w in m.get_weights()])
    return m


def test_predict_of_a_quantized_lstm_is_the_int8_kernel():
    rng = np.random.default_rng(1)
    m = _model(rng, L.LSTM(20, return_sequences=True), 6)
    m.quantize("int8")
    x = rng.standard_normal((3, 9, 6)).astype(np.float32)
    lstm = m.layers[0]
    want = F.lstm_forward(x, lstm.kernel, lstm.recurrent_kernel, lstm.bias,
                          weights_dtype="int8").output
    np.testing.assert_array_equal(lstm(x), want)
    y, _, _ = lstm_int8_ref(x, lstm.kernel, lstm.recurrent_kernel, lstm.bias)
    np.testing.assert_allclose(lstm(x), y, **TOL)
    dense = m.layers[1]
    np.testing.assert_allclose(m.predict(x, verbose=0), want @ dense.kernel + dense.bias,
                               rtol=1e-5, atol=1e-6)


def test_bidirectional_and_masks_take_the_int8_kernel():
    rng = np.random.default_rng(2)
    m = Sequential([L.Masking(0.0, input_shape=(None, 4)),
                    L.Bidirectional(L.LSTM(9, return_sequences=True)), L.Dense(1)])
    m.set_weights([w + 0.2 * rng.standard_normal(w.shape) for w in m.get_weights()])
    m.quantize("int8")
    x = rng.standard_normal((3, 7, 4)).astype(np.float32)
    x[1, 4:] = 0.0   # right padding: sample 1 has 4 steps
    x[2, :] = 0.0    # and sample 2 none
    bi = m.layers[1]
    got = bi(x, mask=np.any(x != 0, axis=-1))
    fw, bw = bi.forward_layer, bi.backward_layer
    lens = np.array([7, 4, 0])
    yf, _, _ = lstm_int8_ref(x, fw.kernel, fw.recurrent_kernel, fw.bias, lengths=lens)
    yb, _, _ = lstm_int8_ref(x, bw.kernel, bw.recurrent_kernel, bw.bias, lengths=lens,
                             reverse=True)
    want = np.concatenate([yf, yb], axis=-1)
    valid = np.arange(7)[None, :] < lens[:, None]
    np.testing.assert_allclose(got[valid], want[valid], **TOL)


def test_quantized_weights_are_sealed_and_set_weights_repacks():
    rng = np.random.default_rng(3)
    m = _model(rng, L.LSTM(16), 5)
    m.quantize("int8")
    lstm = m.layers[0]
    x = rng.standard_normal((1, 12, 5)).astype(np.float32)
    first = m.predict(x, verbose=0)
    for name in ("kernel", "recurrent_kernel", "bias"):
        with pytest.raises(ValueError, match="read-only"):
            getattr(lstm, name)[0] = 0.0
    _packcache.clear()
    np.testing.assert_array_equal(m.predict(x, verbose=0), first)
    np.testing.assert_array_equal(m.predict(x, verbose=0), first)
    assert _packcache.stats()["vouched"] >= 1   # the sealed weights were not compared
    # set_weights writes through the seal, and the next call packs the new weights
    new = [w * 0.5 for w in m.get_weights()]
    m.set_weights(new)
    assert not lstm.kernel.flags.writeable
    ref = _model(rng, L.LSTM(16), 5)
    ref.set_weights(new)
    ref.quantize("int8")
    after = m.predict(x, verbose=0)
    np.testing.assert_array_equal(after, ref.predict(x, verbose=0))
    assert not np.array_equal(after, first)
    # an edit in place after unsealing by hand is seen too, never a stale pack
    lstm.bias.flags.writeable = True
    lstm.bias[:] += 1.0
    edited = m.predict(x, verbose=0)
    ref.layers[0].set_weights([lstm.kernel, lstm.recurrent_kernel, lstm.bias])
    np.testing.assert_array_equal(edited, ref.predict(x, verbose=0))
    assert not lstm.bias.flags.writeable   # sealed again by that call


def test_a_frozen_quantized_layer_trains_the_layers_after_it():
    # training runs the float32 products on the int8 values (the backward needs them);
    # the quantized layer's weights stay as they were
    rng = np.random.default_rng(5)
    m = _model(rng, L.LSTM(8, return_sequences=True), 3)
    m.quantize("int8")
    m.layers[0].trainable = False
    m.layers[1].quantization_mode = None   # (a float head, as after quantizing the body)
    m.compile(optimizer="adam", loss="mse")
    frozen = m.layers[0].get_weights()
    x = rng.standard_normal((4, 6, 3)).astype(np.float32)
    m.fit(x, rng.standard_normal((4, 6, 2)).astype(np.float32), epochs=2, verbose=0)
    for a, b in zip(m.layers[0].get_weights(), frozen):
        np.testing.assert_array_equal(a, b)
    lstm = m.layers[0]
    want = F.lstm_forward(x, lstm.kernel, lstm.recurrent_kernel, lstm.bias,
                          weights_dtype="int8").output
    np.testing.assert_array_equal(lstm(x), want)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("chunk_bytes", [1, 3 * 4 * 48 * 4 * 2, 1 << 20])
def test_projected_run_has_the_bits_of_the_steps(monkeypatch, chunk_bytes, level):
    # run() computes a first int8 LSTM's x_t products for a chunk of steps at once
    # (_stream.pyx, _project): chunks of 1 step, of 2 and of all steps must give each
    # step's own bits, at every ISA level
    from cylstm import _tuning

    rng = np.random.default_rng(8)
    I, H, B, T = 40, 36, 3, 9   # I >= H: the projected path (INT8_PROJECT_MIN_INPUTS)
    W, U, b = _weights(rng, I, H)
    W2, U2, b2 = _weights(rng, H, 20)
    specs = [{"type": "lstm", "kernel": W, "recurrent_kernel": U, "bias": b},
             {"type": "lstm", "kernel": W2, "recurrent_kernel": U2, "bias": b2},
             {"type": "dense", "kernel": rng.standard_normal((20, 3)).astype(np.float32),
              "bias": np.zeros(3, np.float32), "activation": "tanh"}]
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    assert I >= _tuning.INT8_PROJECT_MIN_INPUTS * H

    def runner():
        return stream.StreamRunner._from_specs(specs, batch_size=B, weights_dtype="int8")

    with _cpu.forced_level(level):
        r = runner()
        steps = np.stack([r.step(x[t]).copy() for t in range(T)])
        monkeypatch.setattr(_tuning, "INT8_PROJECT_BYTES", 0)
        plain = runner().run(x)
        monkeypatch.setattr(_tuning, "INT8_PROJECT_BYTES", chunk_bytes)
        projected = runner()
        got = projected.run(x)
        np.testing.assert_array_equal(plain, steps)
        np.testing.assert_array_equal(got, steps)
        # the state carries on from a projected run as from the steps
        np.testing.assert_array_equal(projected.step(x[0]), r.step(x[0]))


def test_wide_batches_of_narrow_layers_take_the_float32_products():
    # int8_kernel_pays: from INT8_FLOAT_MIN_ROWS rows with at most INT8_FLOAT_MAX_UNITS
    # units, the float32 products on the same int8 values (faster there)
    from cylstm import _tuning

    H = _tuning.INT8_FLOAT_MAX_UNITS
    n = _tuning.INT8_FLOAT_MIN_ROWS
    assert F.int8_kernel_pays(n - 1, H) and F.int8_kernel_pays(n, H + 1)
    assert not F.int8_kernel_pays(n, H)
    team = _tuning.INT8_FLOAT_MAX_UNITS_TEAM   # several threads: wider layers too
    assert not F.int8_kernel_pays(n, team, 2) and F.int8_kernel_pays(n, team + 1, 2)
    rng = np.random.default_rng(9)
    m = _model(rng, L.LSTM(H, return_sequences=True), 4)
    m.quantize("int8")
    lstm = m.layers[0]
    x = rng.standard_normal((n, 6, 4)).astype(np.float32)
    args = (lstm.kernel, lstm.recurrent_kernel, lstm.bias)
    import cylstm

    threads = cylstm.get_num_threads()
    cylstm.set_num_threads(1)   # (float32 BLAS rows round by their split: one thread)
    try:
        np.testing.assert_array_equal(lstm(x), F.lstm_forward(x, *args).output)
        np.testing.assert_array_equal(
            lstm(x[:n - 1]), F.lstm_forward(x[:n - 1], *args, weights_dtype="int8").output)
        np.testing.assert_allclose(lstm(x)[:n - 1], lstm(x[:n - 1]), rtol=0, atol=1e-4)
    finally:
        cylstm.set_num_threads(threads)


@pytest.mark.parametrize("weights_dtype", [None, "bfloat16", "int8"])
@pytest.mark.parametrize("alone", [False, True])
def test_pooled_block_has_the_bits_of_one_thread(weights_dtype, alone):
    # run() of a single LSTM layer on several threads: its panels claimed step by step
    # on the worker pool (_stream.pyx, _stack_work); ``alone``: the pool backing off, as
    # after a preempted worker, so the caller runs every panel itself; T = 300: two
    # pool jobs (POOL_CHUNK_STEPS)
    from cylstm import _lstm

    rng = np.random.default_rng(11)
    for I, H, B, T in [(40, 36, 1, 30), (24, 70, 3, 17), (64, 130, 2, 9), (12, 20, 1, 300)]:
        W, U, b = _weights(rng, I, H)
        specs = [{"type": "lstm", "kernel": W, "recurrent_kernel": U, "bias": b}]
        x = rng.standard_normal((T, B, I)).astype(np.float32)
        one = stream.StreamRunner._from_specs(specs, batch_size=B, num_threads=1,
                                              weights_dtype=weights_dtype)
        steps = np.stack([one.step(x[t]).copy() for t in range(T)])
        two = stream.StreamRunner._from_specs(specs, batch_size=B, num_threads=2,
                                              weights_dtype=weights_dtype)
        assert two.num_threads == 2
        if alone:
            _lstm._pool_back_off_now()
        try:
            np.testing.assert_array_equal(two.run(x), steps)
            np.testing.assert_array_equal(two.run(x[:1]), one.run(x[:1]))   # T = 1
        finally:
            _lstm.set_pool_backoff_ns(_tuning_backoff())
        np.testing.assert_array_equal(two.step(x[0]), one.step(x[0]))   # the state


def _tuning_backoff():
    from cylstm import _tuning

    return _tuning.POOL_BACKOFF_NS


@pytest.mark.parametrize("reverse", [False, True])
def test_row_slices_with_lengths_have_the_bits_of_one_thread(reverse):
    # groups of one length each cut into slices on their own threads
    rng = np.random.default_rng(77)
    B, T, I, H = 40, 9, 24, 70
    W, U, b = _weights(rng, I, H)
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    lengths = rng.integers(0, T + 1, B)
    lengths[:20] = T   # one group large enough to be cut
    h0, c0 = rng.standard_normal((2, B, H)).astype(np.float32)
    plan = F.plan_forward(B, T, I, H, np.float32, 2, weights_dtype="int8")
    assert plan.row_slices == 2
    kw = {"weights_dtype": "int8", "lengths": lengths, "go_backwards": reverse,
          "initial_state": (h0, c0)}
    two = F.lstm_forward(x, W, U, b, num_threads=2, _plan=plan, **kw)
    one = F.lstm_forward(x, W, U, b, num_threads=1, **kw)
    for a, c in zip((two.output, two.h, two.c), (one.output, one.h, one.c)):
        np.testing.assert_array_equal(a, c)
