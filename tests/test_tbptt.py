"""Truncated BPTT: ``fit(x, y, tbptt=k)`` (issue 13, part 2).

References: a windowed training loop written by hand over the functional API
(``lstm_forward`` / ``lstm_backward``, NumPy for the Dense layer and the loss,
SGD by hand), and ``train_on_batch`` on a ``stateful`` copy of the model with
``reset_states()`` at each batch start, the idiom that tbptt replaces.
"""
import numpy as np
import pytest

from cylstm import callbacks as cbm
from cylstm import functional as F
from cylstm.layers import LSTM, Bidirectional, Dense, Embedding, Input, Masking
from cylstm.models import Sequential
from cylstm.optimizers import SGD

B, T, I, H, O = 4, 10, 3, 5, 2


def _data(seed=0, B=B, T=T):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((B, T, I)), rng.standard_normal((B, T, O))


def _model(stateful=False, batch=None, lr=0.1, layers=None):
    first = Input(shape=(None, I)) if batch is None else Input(batch_shape=(batch, None, I))
    m = Sequential([first] + (layers or [
        LSTM(H, return_sequences=True, stateful=stateful, seed=1, dtype="float64"),
        Dense(O, seed=2, dtype="float64")]))
    m.compile(optimizer=SGD(learning_rate=lr), loss="mse")
    return m


def _reference_fit(weights, x, y, k, batch_size, lr):
    """Hand-written truncated BPTT for LSTM(return_sequences) -> Dense with MSE and SGD."""
    W, U, b, Wd, bd = (w.copy() for w in weights)
    losses = []
    for s in range(0, x.shape[0], batch_size):
        xb, yb = x[s:s + batch_size], y[s:s + batch_size]
        state = None  # a new batch starts from zeros
        for t0 in range(0, xb.shape[1], k):
            xw, yw = xb[:, t0:t0 + k], yb[:, t0:t0 + k]
            r = F.lstm_forward(xw, W, U, b, initial_state=state, training=True)
            hs = r.output
            pred = hs @ Wd + bd
            diff = pred - yw
            losses.append(float(np.mean(diff ** 2)))
            dpred = 2.0 * diff / diff.size
            dWd = hs.reshape(-1, H).T @ dpred.reshape(-1, O)
            dbd = dpred.reshape(-1, O).sum(axis=0)
            g = F.lstm_backward(r.cache, dpred @ Wd.T)
            state = (r.h.copy(), r.c.copy())  # carried, the gradient cut here
            W -= lr * g.dkernel
            U -= lr * g.drecurrent_kernel
            b -= lr * g.dbias
            Wd -= lr * dWd
            bd -= lr * dbd
    return [W, U, b, Wd, bd], losses


class _Batches(cbm.Callback):
    def on_train_begin(self, logs=None):
        self.ends, self.steps = [], self.params["steps"]

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append((batch, logs["loss"]))


@pytest.mark.parametrize("k", [1, 3, 4, 9])
def test_windows_equal_a_handwritten_functional_loop(k):
    # k=3 and 4 leave a shorter last window (10 = 3+3+3+1 = 4+4+2): never dropped
    x, y = _data()
    m = _model(lr=0.1)
    w0 = m.get_weights()
    rec = _Batches()
    m.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0, tbptt=k, callbacks=[rec])
    want, losses = _reference_fit(w0, x, y, k, 2, 0.1)
    for got, ref in zip(m.get_weights(), want):
        np.testing.assert_allclose(got, ref, rtol=1e-11, atol=1e-13)
    # callbacks count windows as batches; each window's loss is the mean over that window
    n_win = 2 * -(-T // k)
    assert rec.steps == n_win
    assert [b for b, _ in rec.ends] == list(range(n_win))
    assert rec.ends[0][1] == pytest.approx(losses[0], rel=1e-12)


def test_epoch_loss_is_the_mean_over_all_trained_steps():
    x, y = _data(1)
    k = 4
    m = _model(lr=0.05)
    w0 = m.get_weights()
    h = m.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0, tbptt=k)
    _, losses = _reference_fit(w0, x, y, k, 4, 0.05)
    steps = [4, 4, 2]  # the short last window weighs by its steps
    assert h.history["loss"][0] == pytest.approx(np.dot(losses, steps) / sum(steps), rel=1e-12)


@pytest.mark.parametrize("k", [T, T + 1, 1000])
def test_k_at_least_T_is_exactly_plain_fit(k):
    x, y = _data(2, B=6)
    a, b = _model(), _model()
    b.set_weights(a.get_weights())
    ha = a.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    hb = b.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0, tbptt=k)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        assert np.array_equal(wa, wb)
    np.testing.assert_allclose(hb.history["loss"], ha.history["loss"], rtol=1e-13)


def test_shuffled_k_at_least_T_is_plain_fit():
    x, y = _data(3, B=8)
    a, b = _model(), _model()
    b.set_weights(a.get_weights())
    a._shuffle_rng = np.random.default_rng(5)
    b._shuffle_rng = np.random.default_rng(5)
    a.fit(x, y, batch_size=3, epochs=2, verbose=0)
    b.fit(x, y, batch_size=3, epochs=2, verbose=0, tbptt=T)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        assert np.array_equal(wa, wb)


def _stateful_loop(model, x, y, k, batch_size, reset_each_batch):
    for s in range(0, x.shape[0], batch_size):
        if reset_each_batch:
            model.reset_states()
        for t0 in range(0, x.shape[1], k):
            model.train_on_batch(x[s:s + batch_size, t0:t0 + k], y[s:s + batch_size, t0:t0 + k])


def _lm(stateful=False, batch=None, vocab=7, mask_zero=False):
    first = Input(shape=(None,), dtype="int64") if batch is None else \
        Input(batch_shape=(batch, None), dtype="int64")
    m = Sequential([first, Embedding(vocab, 4, mask_zero=mask_zero, seed=3, dtype="float64"),
                    LSTM(6, return_sequences=True, stateful=stateful, seed=4, dtype="float64"),
                    LSTM(5, return_sequences=True, stateful=stateful, seed=5, dtype="float64"),
                    Dense(vocab, activation="softmax", seed=6, dtype="float64")])
    m.compile(optimizer=SGD(learning_rate=0.2), loss="sparse_categorical_crossentropy")
    return m


@pytest.mark.parametrize("mask_zero", [False, True])
def test_stacked_lm_equals_train_on_batch_with_states_carried(mask_zero):
    # Embedding -> LSTM -> LSTM -> Dense(softmax), sparse targets (B, T): every LSTM carries
    rng = np.random.default_rng(7)
    x = rng.integers(1, 7, size=(6, 11))
    if mask_zero:
        x[0, 3:6] = 0  # a gap, then valid steps again in a later window
        x[1, 4:] = 0   # padding that fills whole windows
    y = rng.integers(0, 7, size=(6, 11))
    m, ref = _lm(mask_zero=mask_zero), _lm(stateful=True, batch=3, mask_zero=mask_zero)
    ref.set_weights(m.get_weights())
    m.fit(x, y, batch_size=3, epochs=1, shuffle=False, verbose=0, tbptt=4)
    _stateful_loop(ref, x, y, 4, 3, reset_each_batch=True)
    for got, want in zip(m.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_masking_layer_with_windows():
    x, y = _data(8, B=4, T=9)
    x[2, 5:] = 0.0
    layers = [Masking(0.0, dtype="float64"),
              LSTM(H, return_sequences=True, seed=1, dtype="float64"),
              Dense(O, seed=2, dtype="float64")]
    m = _model(layers=layers)
    ref = _model(batch=2, layers=[Masking(0.0, dtype="float64"),
                                  LSTM(H, return_sequences=True, stateful=True, seed=1,
                                       dtype="float64"),
                                  Dense(O, seed=2, dtype="float64")])
    ref.set_weights(m.get_weights())
    m.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0, tbptt=4)
    _stateful_loop(ref, x, y, 4, 2, reset_each_batch=True)
    for got, want in zip(m.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_stateful_layers_carry_across_batches():
    # a stateful layer keeps carrying from one batch to the next, as without tbptt
    x, y = _data(9, B=4, T=8)
    m = _model(stateful=True, batch=2)
    ref = _model(stateful=True, batch=2)
    ref.set_weights(m.get_weights())
    m.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0, tbptt=3)
    _stateful_loop(ref, x, y, 3, 2, reset_each_batch=False)
    for got, want in zip(m.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    for got, want in zip(m.layers[0].states, ref.layers[0].states):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_functional_model_and_generator_batches():
    from cylstm import Model

    x, y = _data(10, B=4)
    inp = Input(shape=(None, I))
    out = Dense(O, seed=2, dtype="float64")(
        LSTM(H, return_sequences=True, seed=1, dtype="float64")(inp))
    m = Model(inp, out)
    m.compile(optimizer=SGD(learning_rate=0.1), loss="mse")
    w0 = m.get_weights()
    m.fit(((x[s:s + 2], y[s:s + 2]) for s in (0, 2)), epochs=1, verbose=0, tbptt=3,
          steps_per_epoch=2)
    want, _ = _reference_fit(w0, x, y, 3, 2, 0.1)
    for got, ref in zip(m.get_weights(), want):
        np.testing.assert_allclose(got, ref, rtol=1e-11, atol=1e-13)


def test_validation_runs_whole_sequences_and_states_are_released():
    x, y = _data(11)
    m = _model()
    h = m.fit(x, y, batch_size=2, epochs=2, verbose=0, tbptt=3, validation_data=(x, y))
    assert h.history["val_loss"][-1] == pytest.approx(m.evaluate(x, y, verbose=0), rel=1e-12)
    assert m.layers[0]._carry is None
    p = m.predict(x, verbose=0)
    m.fit(x, y, batch_size=2, epochs=1, verbose=0, tbptt=3)
    assert m.layers[0]._carry is None
    assert p.shape == (B, T, O)


def test_carry_released_when_a_callback_raises():
    class Boom(cbm.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                raise RuntimeError("boom")

    x, y = _data(12)
    m = _model()
    with pytest.raises(RuntimeError, match="boom"):
        m.fit(x, y, batch_size=2, verbose=0, tbptt=3, callbacks=[Boom()])
    assert m.layers[0]._carry is None
    # an ordinary train step afterwards starts from zeros again
    a = _model()
    a.set_weights(m.get_weights())
    assert m.train_on_batch(x, y) == a.train_on_batch(x, y)


def test_progress_bar_counts_windows(capsys):
    x, y = _data(13)
    _model().fit(x, y, batch_size=2, epochs=1, verbose=1, tbptt=4, shuffle=False)
    out = capsys.readouterr().out
    assert "6/6" in out  # 2 batches x 3 windows


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "5", 2.0])
def test_bad_tbptt_values(bad):
    x, y = _data()
    with pytest.raises(ValueError, match="tbptt"):
        _model().fit(x, y, verbose=0, tbptt=bad)


def test_output_not_a_sequence_is_refused():
    x, _ = _data()
    m = Sequential([Input(shape=(None, I)), LSTM(H, seed=1), Dense(O, seed=2)])
    m.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match=r"output is a sequence.*shape \(None, 2\)"):
        m.fit(x, np.zeros((B, O)), verbose=0, tbptt=3)


@pytest.mark.parametrize("ybad", [np.zeros((B,)), np.zeros((B, 7, O))])
def test_y_without_a_time_axis_is_refused(ybad):
    x, _ = _data()
    m = Sequential([Input(shape=(None, I)), LSTM(H, return_sequences=True, seed=1),
                    LSTM(O, return_sequences=True)])
    m.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match=r"per-step targets.*no time axis"):
        m.fit(x, ybad, verbose=0, tbptt=3)


@pytest.mark.parametrize("layer", [
    Bidirectional(LSTM(H, return_sequences=True)),
    LSTM(H, return_sequences=True, go_backwards=True)])
def test_layers_that_need_the_whole_sequence_are_refused(layer):
    x, y = _data()
    m = Sequential([Input(shape=(None, I)), layer, Dense(O)])
    m.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="whole sequence|last input"):
        m.fit(x, y, verbose=0, tbptt=3)


@pytest.mark.parametrize("per_step", [False, True])
def test_sample_weights_per_sample_and_per_step(per_step):
    # per-sample weights apply to every window; (batch, time) weights are cut with y
    x, y = _data(14)
    rng = np.random.default_rng(14)
    sw = rng.random((B, T)) if per_step else rng.random(B)
    m, ref = _model(), _model(stateful=True, batch=2)
    ref.set_weights(m.get_weights())
    m.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0, tbptt=4, sample_weight=sw)
    for s in (0, 2):
        ref.reset_states()
        for t0 in (0, 4, 8):
            w = sw[s:s + 2, t0:t0 + 4] if per_step else sw[s:s + 2]
            ref.train_on_batch(x[s:s + 2, t0:t0 + 4], y[s:s + 2, t0:t0 + 4], sample_weight=w)
    for got, want in zip(m.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_a_merge_along_time_is_refused():
    from cylstm import Model
    from cylstm.merging import Concatenate

    a, b = Input(shape=(None, I)), Input(shape=(None, I))
    out = Dense(O)(LSTM(H, return_sequences=True)(Concatenate(axis=1)([a, b])))
    m = Model([a, b], out)
    m.compile(optimizer="sgd", loss="mse")
    x, _ = _data()
    with pytest.raises(ValueError, match="joins along the time axis"):
        m.fit([x, x], np.zeros((B, 2 * T, O)), verbose=0, tbptt=3)


def test_two_inputs_and_a_merge_along_features():
    from cylstm import Model
    from cylstm.merging import Concatenate

    x, y = _data(15)
    x2 = np.random.default_rng(15).standard_normal((B, T, 2))

    def build(stateful, batch=None):
        shape = {"batch_shape": (batch, None, I)} if batch else {"shape": (None, I)}
        shape2 = {"batch_shape": (batch, None, 2)} if batch else {"shape": (None, 2)}
        a, b = Input(**shape), Input(**shape2)
        h = LSTM(H, return_sequences=True, stateful=stateful, seed=1, dtype="float64")(a)
        out = Dense(O, seed=2, dtype="float64")(Concatenate()([h, b]))
        m = Model([a, b], out)
        m.compile(optimizer=SGD(learning_rate=0.1), loss="mse")
        return m

    m, ref = build(False), build(True, 2)
    ref.set_weights(m.get_weights())
    m.fit([x, x2], y, batch_size=2, epochs=1, shuffle=False, verbose=0, tbptt=3)
    for s in (0, 2):
        ref.reset_states()
        for t0 in range(0, T, 3):
            sl = (slice(s, s + 2), slice(t0, t0 + 3))
            ref.train_on_batch([x[sl], x2[sl]], y[sl])
    for got, want in zip(m.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_float32_equals_train_on_batch_with_states_carried():
    x, y = (a.astype(np.float32) for a in _data(16))

    def build(stateful, batch=None):
        first = Input(shape=(None, I)) if batch is None else Input(batch_shape=(batch, None, I))
        m = Sequential([first, LSTM(H, return_sequences=True, stateful=stateful, seed=1),
                        Dense(O, seed=2)])
        m.compile(optimizer=SGD(learning_rate=0.1), loss="mse")
        return m

    m, ref = build(False), build(True, 2)
    ref.set_weights(m.get_weights())
    m.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0, tbptt=3)
    _stateful_loop(ref, x, y, 3, 2, reset_each_batch=True)
    for got, want in zip(m.get_weights(), ref.get_weights()):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", ["cuda", "emulated"])
def test_windows_under_to_cuda_match_the_cpu(backend, monkeypatch):
    # the carried (h, c) come back from the device forward; the emulator replays the
    # CUDA launch sequence where no GPU is built
    from cylstm import cuda

    if backend == "cuda":
        if not cuda.is_available():
            pytest.skip(f"CUDA backend unavailable: {cuda.unavailable_reason()}")
    else:
        import cuda_emulator

        monkeypatch.setattr(cuda, "_load", lambda: cuda_emulator)
        monkeypatch.setattr(cuda, "_contexts", {})
        monkeypatch.setattr(cuda, "_ctx_locks", {})
    x, y = _data(17)
    cpu, dev = _model(), _model()
    dev.set_weights(cpu.get_weights())
    dev.to("cuda")
    hc = cpu.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0, tbptt=4)
    hd = dev.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0, tbptt=4)
    np.testing.assert_allclose(hd.history["loss"], hc.history["loss"], rtol=1e-9)
    for got, want in zip(dev.get_weights(), cpu.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11)
