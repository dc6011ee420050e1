"""Sequential: building, weights, flat buffer, predict vs a NumPy float64
reference, finite-difference gradients through whole models, bad input."""
import numpy as np
import pytest
from reference import numeric_grad
from test_layers import dense_ref, keras_lstm_ref

from cylstm.layers import (
    LSTM,
    Activation,
    Bidirectional,
    Dense,
    Dropout,
    Embedding,
    Input,
    Masking,
    RepeatVector,
    TimeDistributed,
)
from cylstm.models import Sequential


def _example(dtype=None, **kw):
    return Sequential([LSTM(6, return_sequences=True, input_shape=(None, 3), dtype=dtype, **kw),
                       LSTM(4), Dense(1)])


def _randomize(model, rng, scale=0.5):
    model.set_weights([rng.standard_normal(w.shape) * scale for w in model.get_weights()])


# --------------------------------------------------------------------------- structure
def test_built_at_once_and_summary(capsys):
    model = Sequential()
    model.add(LSTM(units=50, return_sequences=True, input_shape=(None, 10)))
    model.add(LSTM(units=20))
    model.add(Dense(units=1))
    assert model.built and model.input_shape == (None, None, 10)
    assert model.output_shape == (None, 1)
    assert [w.shape for w in model.get_weights()] == [
        (10, 200), (50, 200), (200,), (50, 80), (20, 80), (80,), (20, 1), (1,)]
    assert model.count_params() == 12200 + 5680 + 21
    model.summary()
    out = capsys.readouterr().out
    assert "lstm" in out and "(None, None, 50)" in out and "12,200" in out
    assert "Total params: 17,901" in out and "(None, 1)" in out


def test_input_layer_and_deferred_build():
    m = Sequential([Input(shape=(None, 3)), LSTM(2), Dense(1)])
    assert m.built and len(m.layers) == 2
    lazy = Sequential([LSTM(2), Dense(1)])
    assert not lazy.built
    with pytest.raises(ValueError, match="not built"):
        lazy.get_weights()
    y = lazy.predict(np.zeros((5, 4, 3), np.float32))
    assert lazy.built and y.shape == (5, 1)


def test_flat_buffer_views():
    model = _example()
    flat = model._flat
    assert flat.size == model.count_params() and flat.flags.c_contiguous
    for layer in model.layers:
        for w in layer.weights:
            assert np.shares_memory(w, flat)
    rng = np.random.default_rng(0)
    ws = [rng.standard_normal(w.shape).astype(np.float32) for w in model.get_weights()]
    model.set_weights(ws)
    np.testing.assert_array_equal(flat, np.concatenate([w.ravel() for w in ws]))
    np.testing.assert_array_equal(model.layers[0].kernel, ws[0])
    # a pre-built standalone layer keeps its values when it joins a model
    lstm = LSTM(3)
    lstm(np.zeros((1, 2, 5), np.float32))
    before = lstm.get_weights()
    m2 = Sequential([lstm, Dense(2)])
    assert m2.built
    for a, b in zip(before, m2.layers[0].get_weights()):
        np.testing.assert_array_equal(a, b)
    assert np.shares_memory(lstm.kernel, m2._flat)


def test_predict_matches_numpy_reference():
    rng = np.random.default_rng(1)
    model = _example("float64")
    assert model.dtype == np.float64
    _randomize(model, rng)
    x = rng.standard_normal((7, 5, 3))
    w = model.get_weights()
    h1, _, _ = keras_lstm_ref(x, *w[0:3], return_sequences=True)
    h2, _, _ = keras_lstm_ref(h1, *w[3:6])
    want = dense_ref(h2, w[6], w[7], "linear")
    got = model.predict(x, batch_size=3)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model(x), want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.predict_on_batch(x), want, rtol=1e-10, atol=1e-12)


def test_set_weights_errors_change_nothing():
    model = _example()
    before = model.get_weights()
    with pytest.raises(ValueError, match="has 8 weight arrays"):
        model.set_weights(before[:-1])
    bad = list(before)
    bad[3] = np.zeros((5, 16))
    with pytest.raises(ValueError, match="must have shape"):
        model.set_weights([b + 1 for b in bad])
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_stateful_model_carries_state_between_predicts():
    rng = np.random.default_rng(2)
    model = Sequential([LSTM(4, stateful=True, return_sequences=True,
                             batch_input_shape=(2, None, 3), dtype="float64"), Dense(1)])
    _randomize(model, rng)
    x = rng.standard_normal((2, 6, 3))
    full = model.predict(x, batch_size=2)
    model.reset_states()
    a = model.predict(x[:, :3], batch_size=2)
    b = model.predict(x[:, 3:], batch_size=2)
    np.testing.assert_allclose(np.concatenate([a, b], 1), full, rtol=1e-10)
    model.reset_states()
    np.testing.assert_allclose(model.predict(x[:, :3], batch_size=2), a, rtol=1e-12)


# --------------------------------------------------------------------------- gradients
def _fd_check(model, x, y, rtol=1e-6, atol=1e-9, sample_weight=None):
    loss, grads = model._forward_backward(x, y, sample_weight=sample_weight)
    ws = model.get_weights()
    trial = [a.copy() for a in ws]

    def f():
        return model.evaluate(x, y, batch_size=len(x), verbose=0,
                              sample_weight=sample_weight)

    def f_trial(_perturbed):  # one entry of trial perturbed
        model.set_weights(trial)
        return f()

    assert np.isclose(loss, f(), rtol=1e-12)
    for k, w in enumerate(trial):
        num = numeric_grad(f_trial, w)
        model.set_weights(ws)
        np.testing.assert_allclose(grads[k], num, rtol=rtol, atol=atol,
                                   err_msg=f"weight {k} {w.shape}")


@pytest.mark.parametrize("loss", ["mse", "mae", "huber"])
def test_gradients_lstm_stack(loss):
    rng = np.random.default_rng(3)
    model = Sequential([LSTM(3, return_sequences=True, input_shape=(None, 2), dtype="float64"),
                        LSTM(2, go_backwards=True), Dense(2, activation="tanh")])
    _randomize(model, rng)
    model.compile("sgd", loss)
    x = rng.standard_normal((4, 4, 2))
    y = rng.standard_normal((4, 2))
    _fd_check(model, x, y)


def test_gradients_with_sample_weight():
    rng = np.random.default_rng(4)
    model = _example("float64")
    _randomize(model, rng)
    model.compile("adam", "mse")
    x = rng.standard_normal((4, 3, 3))
    y = rng.standard_normal((4, 1))
    _fd_check(model, x, y, sample_weight=np.array([1.0, 0.0, 2.0, 0.5]))


@pytest.mark.parametrize("merge_mode", ["concat", "mul"])
def test_gradients_bidirectional_sequence_model(merge_mode):
    rng = np.random.default_rng(5)
    model = Sequential([
        Bidirectional(LSTM(2, return_sequences=True), merge_mode=merge_mode,
                      input_shape=(None, 2), dtype="float64"),
        Dense(3, activation="softmax")])
    _randomize(model, rng)
    model.compile("sgd", "categorical_crossentropy")
    x = rng.standard_normal((3, 4, 2))
    y = np.eye(3)[rng.integers(0, 3, (3, 4))]
    _fd_check(model, x, y)


@pytest.mark.parametrize("padding", ["right", "left"])
def test_gradients_masking_model(padding):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 5, 2))
    lens = np.array([5, 3, 1, 4])
    for i, L in enumerate(lens):
        if padding == "right":
            x[i, L:] = 0.0
        else:
            x[i, :5 - L] = 0.0
    model = Sequential([Masking(0.0, input_shape=(None, 2), dtype="float64"),
                        LSTM(3, return_sequences=True), LSTM(2, go_backwards=True),
                        Dense(1, activation="sigmoid")])
    _randomize(model, rng)
    model.compile("sgd", "binary_crossentropy")
    y = rng.integers(0, 2, (4, 1)).astype(float)
    _fd_check(model, x, y)
    # the model equals the reference run on each sequence's valid steps alone
    w = model.get_weights()
    pred = model.predict(x)
    for i, L in enumerate(lens):
        xi = x[i:i + 1, :L] if padding == "right" else x[i:i + 1, 5 - L:]
        h1, _, _ = keras_lstm_ref(xi, *w[0:3], return_sequences=True)
        h2, _, _ = keras_lstm_ref(h1, *w[3:6], go_backwards=True)
        np.testing.assert_allclose(pred[i], dense_ref(h2, w[6], w[7], "sigmoid")[0],
                                   rtol=1e-10)


def test_gradients_encoder_decoder():
    rng = np.random.default_rng(11)
    model = Sequential([LSTM(3, input_shape=(None, 2), dtype="float64"), RepeatVector(4),
                        LSTM(2, return_sequences=True), TimeDistributed(Dense(2)),
                        Activation("sigmoid")])
    _randomize(model, rng)
    model.compile("sgd", "mse")
    x = rng.standard_normal((3, 4, 2))
    _fd_check(model, x, rng.random((3, 4, 2)))


def test_gradients_embedding_sparse_model():
    rng = np.random.default_rng(7)
    model = Sequential([Embedding(6, 3, mask_zero=True, input_shape=(5,), dtype="float64"),
                        Bidirectional(LSTM(2)), Dense(4)])
    _randomize(model, rng)
    model.compile("sgd", __import__("cylstm.losses", fromlist=["x"]).SparseCategoricalCrossentropy(
        from_logits=True))
    x = np.array([[1, 2, 3, 0, 0], [4, 5, 0, 0, 0], [0, 0, 1, 1, 2]])
    y = np.array([0, 3, 1])
    _fd_check(model, x, y)


# --------------------------------------------------------------------------- bad input
def test_bad_inputs_give_clear_errors():
    model = _example()
    x = np.zeros((8, 5, 3), np.float32)
    y = np.zeros((8, 1), np.float32)
    with pytest.raises(ValueError, match="compile"):
        model.fit(x, y)
    model.compile("adam", "mse")
    with pytest.raises(ValueError, match="same number of samples"):
        model.fit(x, y[:5], verbose=0)
    with pytest.raises(ValueError, match="axis 2: 3, got 4"):
        model.fit(np.zeros((8, 5, 4)), y, verbose=0)
    with pytest.raises(ValueError, match="3 dims"):
        model.predict(np.zeros((8, 3)))
    with pytest.raises(ValueError, match="batch_size"):
        model.fit(x, y, batch_size=0, verbose=0)
    with pytest.raises(ValueError, match="NaN"):
        model.fit(np.full((8, 5, 3), np.nan), y, verbose=0)
    with pytest.raises(ValueError):
        model.fit(x, np.zeros((8, 3)), verbose=0)  # width mismatch (loss names shapes)
    with pytest.raises(ValueError, match="unknown loss"):
        model.compile("adam", "nope")
    with pytest.raises(ValueError):
        model.compile("adamax_nope", "mse")
    # generators are a data form now (issue 12); a malformed batch names its index
    model.fit((b for b in [(x, y)]), verbose=0)
    with pytest.raises(ValueError, match=r"batch 1 .*tuple of 4"):
        model.fit((b for b in [(x, y), (x, y, None, 1)]), verbose=0)
    with pytest.raises(TypeError, match="NumPy array"):
        model.predict(object())
    with pytest.raises(TypeError, match="cylstm layer"):
        model.add("dense")
    with pytest.raises(ValueError, match="named"):
        model.add(Dense(1, name=model.layers[0].name))
    with pytest.raises(ValueError, match="validation_split"):
        model.fit(x, y, validation_split=1.5, verbose=0)
    with pytest.raises(ValueError, match="several outputs"):
        Sequential([LSTM(2, return_state=True, input_shape=(None, 3)), Dense(1)])
    with pytest.raises(ValueError, match="dtype"):
        Sequential([LSTM(2, input_shape=(None, 3), dtype="float64"),
                    Dense(1, dtype="float32")])


def test_dropout_layer_model_and_call():
    model = Sequential([LSTM(4, return_sequences=True, input_shape=(None, 3)), Dropout(0.5),
                        LSTM(2), Dense(1)])
    x = np.random.default_rng(8).standard_normal((4, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(model(x), model.predict(x))
    assert not np.allclose(model(x, training=True), model(x, training=True))


def test_streamer_and_onnx_delegations(tmp_path):
    rng = np.random.default_rng(9)
    model = _example()
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    runner = model.streamer(batch_size=2)
    for t in range(5):
        out = runner.step(x[:, t])
    np.testing.assert_allclose(out, model.predict(x), rtol=1e-5, atol=1e-6)
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    path = tmp_path / "m.onnx"
    model.to_onnx(str(path))
    sess = ort.InferenceSession(str(path))
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, model.predict(x), rtol=1e-5, atol=1e-6)


def test_progress_bar_redraws_on_a_terminal():
    import io

    from cylstm._progress import Progbar

    class Tty(io.StringIO):
        def isatty(self):
            return True

    f = Tty()
    bar = Progbar(4, 1, file=f, interval=0)
    for i in range(1, 4):
        bar.update(i, {"loss": 1.0 / i})
    bar.update(4, {"loss": 0.25, "val_loss": 0.5}, finalize=True)
    text = f.getvalue()
    assert text.count("\r") == 4 and text.endswith("\n")
    assert "2/4" in text and "loss: 0.5000" in text
    assert text.splitlines()[-1].split("\r")[-1].startswith("4/4 " + "━" * 20)
    assert "val_loss: 0.5000" in text


@pytest.mark.parametrize("backend", ["emulated", "cuda"])
def test_model_to_cuda_matches_cpu(backend, monkeypatch):
    """model.to('cuda') runs the LSTMs through cylstm.cuda.functional (on a GPU, or
    on tests/cuda_emulator.py, a NumPy replay of the CUDA launch sequence)."""
    from cylstm import cuda

    if backend == "cuda":
        if not cuda.is_available():
            pytest.skip(f"CUDA backend unavailable: {cuda.unavailable_reason()}")
    else:
        import cuda_emulator

        monkeypatch.setattr(cuda, "_load", lambda: cuda_emulator)
        monkeypatch.setattr(cuda, "_contexts", {})
        monkeypatch.setattr(cuda, "_ctx_locks", {})
        monkeypatch.setattr(cuda, "device_count", lambda: 1)
    rng = np.random.default_rng(10)
    x = rng.standard_normal((3, 4, 2))
    y = rng.standard_normal((3, 1))

    def make():
        m = Sequential([Bidirectional(LSTM(3, return_sequences=True), input_shape=(None, 2),
                                      dtype="float64"), LSTM(2, go_backwards=True), Dense(1)])
        m.compile("sgd", "mse")
        return m

    cpu, gpu = make(), make()
    _randomize(cpu, rng)
    gpu.set_weights(cpu.get_weights())
    assert gpu.to("cuda") is gpu
    np.testing.assert_allclose(gpu.predict(x), cpu.predict(x), rtol=1e-10, atol=1e-12)
    for _ in range(2):  # the updated weights reach the device
        np.testing.assert_allclose(gpu.train_on_batch(x, y), cpu.train_on_batch(x, y),
                                   rtol=1e-10)
    for a, b in zip(gpu.get_weights(), cpu.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    gpu.to("cpu")
    np.testing.assert_allclose(gpu.predict(x), cpu.predict(x), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="device"):
        gpu.to("tpu")
