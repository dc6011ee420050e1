"""fit/evaluate behaviour: learning, reproducibility, NaN safety, validation,
metrics, callbacks, verbosity, sample/class weights, stateful training."""
import numpy as np
import pytest

from cylstm.layers import LSTM, Bidirectional, Dense, Embedding
from cylstm.models import Sequential
from cylstm.optimizers import SGD, Adam


def _task(n=256, T=8, seed=0):
    """y = mean of feature 0 over the last 3 steps: needs memory, easy to learn."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, T, 3)).astype(np.float32)
    y = x[:, -3:, 0].mean(axis=1, keepdims=True).astype(np.float32)
    return x, y


def _model(seed=0, **lstm_kw):
    np.random.seed(seed)
    return Sequential([LSTM(16, return_sequences=True, input_shape=(None, 3), **lstm_kw),
                       LSTM(8), Dense(1)])


def test_learns_well_below_trivial_baseline():
    x, y = _task()
    baseline = float(np.mean((y - y.mean()) ** 2))  # predicting the mean
    m = _model()
    m.compile(Adam(learning_rate=0.01), "mse")
    hist = m.fit(x, y, epochs=25, batch_size=32, verbose=0)
    assert hist.history["loss"][-1] < 0.1 * baseline
    assert m.evaluate(x, y, verbose=0) < 0.1 * baseline


def test_sequence_classification_with_embedding_learns():
    rng = np.random.default_rng(1)
    n, T = 256, 10
    lens = rng.integers(2, T + 1, n)
    x = rng.integers(1, 5, (n, T))
    for i, L in enumerate(lens):
        x[i, L:] = 0  # right padding
    y = (np.sum(x == 4, axis=1) >= 2).astype(np.float32)[:, None]  # counts a token
    np.random.seed(1)
    m = Sequential([Embedding(5, 8, mask_zero=True, input_shape=(T,)),
                    Bidirectional(LSTM(8)), Dense(1, activation="sigmoid")])
    m.compile(Adam(learning_rate=0.02), "binary_crossentropy", metrics=["accuracy"])
    hist = m.fit(x, y, epochs=20, batch_size=32, verbose=0)
    prior = float(max(y.mean(), 1 - y.mean()))
    assert hist.history["accuracy"][-1] > max(0.9, prior + 0.05)


def test_reproducible_with_seeds():
    x, y = _task(64)
    ws = []
    for _ in range(2):
        m = _model(seed=3, dropout=0.1)
        m.compile(Adam(learning_rate=0.01), "mse")
        m.fit(x, y, epochs=2, batch_size=16, verbose=0)
        ws.append(m.get_weights())
    for a, b in zip(*ws):
        np.testing.assert_array_equal(a, b)


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
def test_non_finite_loss_raises_and_keeps_finite_weights():
    x, y = _task(64)
    m = _model()
    m.compile(SGD(learning_rate=0.01), "mse")
    before = m.get_weights()
    y_bad = np.full_like(y, 1e30)  # finite targets whose squared error overflows float32
    with pytest.raises(FloatingPointError, match="TerminateOnNaN"):
        m.fit(x, y_bad, epochs=1, batch_size=16, verbose=0)
    for a, b in zip(before, m.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
def test_terminate_on_nan_stops_with_last_finite_weights():
    from cylstm.callbacks import TerminateOnNaN

    x, y = _task(64)
    y = y.copy()
    y[40:] = 1e30  # batches 0-1 are fine, batch 2 overflows
    m = _model()
    m.compile(SGD(learning_rate=0.01), "mse")
    before = m.get_weights()
    hist = m.fit(x, y, epochs=3, batch_size=16, shuffle=False, verbose=0,
                 callbacks=[TerminateOnNaN()])
    assert len(hist.history["loss"]) == 1
    after = m.get_weights()
    assert all(np.isfinite(w).all() for w in after)
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))  # 2 steps applied


def test_validation_metrics_and_history_keys():
    x, y = _task(80)
    m = _model()
    m.compile("adam", "mse", metrics=["mae"])
    h = m.fit(x, y, epochs=2, batch_size=16, validation_split=0.25, verbose=0)
    assert set(h.history) == {"loss", "mae", "val_loss", "val_mae"}
    assert m.history is h and len(h.history["val_loss"]) == 2
    xv, yv = x[60:], y[60:]
    np.testing.assert_allclose(h.history["val_loss"][-1], m.evaluate(xv, yv, verbose=0)[0],
                               rtol=1e-5)
    h2 = m.fit(x[:60], y[:60], epochs=3, initial_epoch=1, validation_data=(xv, yv),
               verbose=0)
    assert len(h2.history["loss"]) == 2 and len(h2.history["val_loss"]) == 2
    res = m.evaluate(xv, yv, verbose=0, return_dict=True)
    assert set(res) == {"loss", "mae"}
    pred = m.predict(xv)
    np.testing.assert_allclose(res["mae"], np.mean(np.abs(pred - yv)), rtol=1e-5)


def test_sample_and_class_weights():
    x, y = _task(32)
    m = _model()
    m.compile("sgd", "mse")
    sw = np.r_[np.ones(16), np.zeros(16)]
    pred = m.predict(x)
    per = ((pred - y) ** 2)[:, 0]
    np.testing.assert_allclose(m.evaluate(x, y, sample_weight=sw, verbose=0),
                               per[:16].sum() / 32, rtol=1e-5)
    # training on zero-weighted samples changes nothing with plain SGD
    w0 = m.get_weights()
    m.fit(x[16:], y[16:], sample_weight=np.zeros(16), epochs=1, batch_size=8, verbose=0)
    for a, b in zip(w0, m.get_weights()):
        np.testing.assert_array_equal(a, b)
    # class_weight on a binary task runs and weights the loss
    c = Sequential([LSTM(4, input_shape=(None, 3)), Dense(1, activation="sigmoid")])
    c.compile("adam", "binary_crossentropy")
    yc = (y > 0).astype(np.float32)
    h = c.fit(x, yc, class_weight={0: 1.0, 1: 3.0}, epochs=1, verbose=0)
    assert np.isfinite(h.history["loss"][0])


def test_verbose_output(capsys):
    x, y = _task(40)
    m = _model()
    m.compile("adam", "mse", metrics=["mae"])
    m.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert capsys.readouterr().out == ""
    m.fit(x, y, epochs=2, batch_size=16, verbose=2, validation_split=0.2)
    lines = [l for l in capsys.readouterr().out.splitlines() if l.strip()]
    assert len(lines) == 2 and all("loss:" in l and "val_loss:" in l for l in lines)
    m.fit(x, y, epochs=2, batch_size=16)  # default verbose=1 (Keras 'auto')
    out = capsys.readouterr().out
    assert "Epoch 1/2" in out and "Epoch 2/2" in out and "3/3" in out and "mae:" in out


def test_callbacks_early_stopping_checkpoint_reduce_lr(tmp_path):
    from cylstm.callbacks import EarlyStopping, ModelCheckpoint, ReduceLROnPlateau

    x, y = _task(64)
    m = _model()
    m.compile(Adam(learning_rate=1e-12), "mse")  # cannot improve: patience runs out
    ckpt = tmp_path / "ep{epoch:02d}.keras"
    h = m.fit(x, y, epochs=20, batch_size=16, validation_split=0.25, verbose=0,
              callbacks=[EarlyStopping(monitor="val_loss", patience=2, min_delta=1e-3),
                         ModelCheckpoint(str(ckpt)),
                         ReduceLROnPlateau(monitor="val_loss", patience=1, factor=0.5)])
    n = len(h.history["loss"])
    assert n == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"ep{i:02d}.keras"
                                                          for i in range(1, n + 1)]
    assert m.optimizer.learning_rate < 1e-12


def test_stateful_training_and_reset():
    x, y = _task(32)
    m = Sequential([LSTM(4, stateful=True, batch_input_shape=(8, None, 3)), Dense(1)])
    m.compile("adam", "mse")
    m.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    h = m.layers[0].states[0]
    assert h is not None and h.shape == (8, 4) and np.any(h != 0)
    m.reset_states()
    assert np.all(m.layers[0].states[0] == 0)


def test_train_on_batch_and_lists_of_batches():
    x, y = _task(48)
    m = _model()
    m.compile("adam", "mse", metrics=["mae"])
    loss, mae = m.train_on_batch(x[:16], y[:16])
    assert np.isfinite(loss) and np.isfinite(mae)
    pairs = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 48, 16)]
    h = m.fit(pairs, epochs=2, verbose=0)
    assert len(h.history["loss"]) == 2
    assert np.isfinite(m.evaluate(pairs, verbose=0)[0])


def test_recurrent_dropout_trains():
    x, y = _task(64)
    m = _model(recurrent_dropout=0.2, dropout=0.1)
    m.compile("adam", "mse")
    h = m.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert all(np.isfinite(h.history["loss"]))


def test_frozen_layer_is_not_updated():
    x, y = _task(32)
    m = _model()
    m.layers[0].trainable = False
    m.compile("adam", "mse")
    frozen = [w.copy() for w in m.layers[0].get_weights()]
    other = [w.copy() for w in m.layers[1].get_weights()]
    m.fit(x, y, epochs=1, batch_size=8, verbose=0)
    for a, b in zip(frozen, m.layers[0].get_weights()):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(other, m.layers[1].get_weights()))
    assert m._flat.size == m.count_params() - sum(w.size for w in frozen)


def test_sigmoid_output_trains_on_logits():
    """As TF-Keras: binary cross-entropy under a sigmoid output is computed from the
    logits, so a saturated wrong prediction still has a large, exact loss and gradient."""
    from cylstm.losses import BinaryCrossentropy

    x, _ = _task(8)
    m = Sequential([LSTM(3, input_shape=(None, 3), dtype="float64"),
                    Dense(1, activation="sigmoid")])
    K, b = m.layers[1].get_weights()
    m.layers[1].set_weights([np.zeros_like(K), np.full_like(b, 40.0)])  # logit 40: p == 1
    m.compile("sgd", "binary_crossentropy")
    y = np.zeros((8, 1))
    loss, grads = m._forward_backward(x, y)
    want = BinaryCrossentropy(from_logits=True)(y, np.full((8, 1), 40.0))
    np.testing.assert_allclose(loss, want, rtol=1e-12)  # ~40, not the clipped ~16.1
    np.testing.assert_allclose(grads[-1], [1.0], rtol=1e-12)  # d/dlogit = p - y
    np.testing.assert_allclose(m.evaluate(x, y, verbose=0), want, rtol=1e-12)
    np.testing.assert_allclose(m.predict(x), 1.0)


def test_test_and_predict_hooks():
    from cylstm.callbacks import Callback

    seen = []

    class Rec(Callback):
        def on_test_begin(self, logs=None):
            seen.append("test_begin")

        def on_test_end(self, logs=None):
            seen.append(("test_end", sorted(logs)))

        def on_predict_begin(self, logs=None):
            seen.append("predict_begin")

        def on_predict_end(self, logs=None):
            seen.append("predict_end")

    x, y = _task(32)
    m = _model()
    m.compile("adam", "mse", metrics=["mae"])
    m.fit(x, y, epochs=1, validation_split=0.25, verbose=0, callbacks=[Rec()])
    m.evaluate(x, y, verbose=0, callbacks=[Rec()])
    m.predict(x, verbose=0, callbacks=[Rec()])
    assert seen == ["test_begin", ("test_end", ["loss", "mae"])] * 2 + ["predict_begin",
                                                                       "predict_end"]
