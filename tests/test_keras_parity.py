"""Parity with Keras 3 (any backend; torch preferred) via set_weights.

Skipped when keras is not importable.
"""
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")

from cylstm import optimizers
from cylstm.layers import (
    LSTM,
    Activation,
    Bidirectional,
    Dense,
    Embedding,
    Masking,
    RepeatVector,
    TimeDistributed,
)
from cylstm.models import Sequential

kl = keras.layers

# keras 3 on numpy 2 warns about __array__(copy=); not ours
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TOL = {"rtol": 2e-5, "atol": 2e-6}


def _pair(ours, theirs, rng, scale=0.4):
    ws = [(rng.standard_normal(w.shape) * scale).astype(np.float32)
          for w in ours.get_weights()]
    ours.set_weights(ws)
    theirs.set_weights(ws)
    return ws


def _keras_predict(model, x):
    return np.asarray(model.predict(x, verbose=0))


@pytest.mark.parametrize("go_backwards", [False, True])
def test_stacked_lstm_dense(go_backwards):
    rng = np.random.default_rng(0)
    ours = Sequential([LSTM(6, return_sequences=True, go_backwards=go_backwards,
                            input_shape=(None, 3)), LSTM(4), Dense(2, activation="tanh")])
    theirs = keras.Sequential([keras.Input((None, 3)),
                               kl.LSTM(6, return_sequences=True, go_backwards=go_backwards),
                               kl.LSTM(4), kl.Dense(2, activation="tanh")])
    assert [w.shape for w in ours.get_weights()] == [tuple(w.shape) for w in
                                                      theirs.get_weights()]
    _pair(ours, theirs, rng)
    x = rng.standard_normal((5, 7, 3)).astype(np.float32)
    np.testing.assert_allclose(ours.predict(x), _keras_predict(theirs, x), **TOL)


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave"])
def test_bidirectional(merge_mode):
    rng = np.random.default_rng(1)
    ours = Sequential([Bidirectional(LSTM(3, return_sequences=True), merge_mode=merge_mode,
                                     input_shape=(None, 2)), Dense(1)])
    theirs = keras.Sequential([keras.Input((None, 2)),
                               kl.Bidirectional(kl.LSTM(3, return_sequences=True),
                                                merge_mode=merge_mode), kl.Dense(1)])
    _pair(ours, theirs, rng)
    x = rng.standard_normal((4, 6, 2)).astype(np.float32)
    np.testing.assert_allclose(ours.predict(x), _keras_predict(theirs, x), **TOL)


@pytest.mark.parametrize("padding", ["post", "pre"])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_masking(padding, go_backwards):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 6, 2)).astype(np.float32)
    for i, L in enumerate([6, 4, 2, 5]):
        if padding == "post":
            x[i, L:] = 0
        else:
            x[i, :6 - L] = 0
    ours = Sequential([Masking(0.0, input_shape=(None, 2)),
                       LSTM(3, return_sequences=True, go_backwards=go_backwards),
                       LSTM(2), Dense(1)])
    theirs = keras.Sequential([keras.Input((None, 2)), kl.Masking(0.0),
                               kl.LSTM(3, return_sequences=True, go_backwards=go_backwards),
                               kl.LSTM(2), kl.Dense(1)])
    _pair(ours, theirs, rng)
    np.testing.assert_allclose(ours.predict(x), _keras_predict(theirs, x), **TOL)


def test_embedding_mask_zero_bidirectional():
    rng = np.random.default_rng(3)
    ours = Sequential([Embedding(10, 4, mask_zero=True, input_shape=(6,)),
                       Bidirectional(LSTM(3)), Dense(1, activation="sigmoid")])
    theirs = keras.Sequential([keras.Input((6,), dtype="int32"),
                               kl.Embedding(10, 4, mask_zero=True),
                               kl.Bidirectional(kl.LSTM(3)), kl.Dense(1, activation="sigmoid")])
    _pair(ours, theirs, rng)
    x = np.array([[1, 2, 3, 0, 0, 0], [0, 0, 4, 5, 6, 7], [9, 8, 7, 6, 5, 4]], np.int32)
    np.testing.assert_allclose(ours.predict(x), _keras_predict(theirs, x), **TOL)


@pytest.mark.parametrize("opt", ["sgd", "adam", "rmsprop"])
def test_training_steps_match(opt):
    """A few train_on_batch steps give the same weights: gradients and the
    optimizer agree with Keras's."""
    rng = np.random.default_rng(4)
    ours = Sequential([LSTM(5, return_sequences=True, input_shape=(None, 3)), LSTM(3),
                       Dense(1)])
    theirs = keras.Sequential([keras.Input((None, 3)), kl.LSTM(5, return_sequences=True),
                               kl.LSTM(3), kl.Dense(1)])
    _pair(ours, theirs, rng)
    make = {"sgd": lambda m: m.SGD(learning_rate=0.1, momentum=0.5),
            "adam": lambda m: m.Adam(learning_rate=0.01),
            "rmsprop": lambda m: m.RMSprop(learning_rate=0.01)}[opt]
    ours.compile(make(optimizers), "mse")
    theirs.compile(make(keras.optimizers), "mse")
    x = rng.standard_normal((8, 5, 3)).astype(np.float32)
    y = rng.standard_normal((8, 1)).astype(np.float32)
    for _ in range(3):
        lo = ours.train_on_batch(x, y)
        lt = theirs.train_on_batch(x, y)
        assert np.isclose(lo, float(np.asarray(lt).reshape(-1)[0]), rtol=1e-4)
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-4, atol=2e-5)


def test_keras_config_names():
    ours = LSTM(4)
    theirs = kl.LSTM(4)
    ours_cfg, their_cfg = ours.get_config(), theirs.get_config()
    for key in ("units", "activation", "recurrent_activation", "use_bias", "unit_forget_bias",
                "dropout", "recurrent_dropout", "return_sequences", "return_state",
                "go_backwards", "stateful"):
        assert ours_cfg[key] == their_cfg[key], key


def test_encoder_decoder_autoencoder():
    rng = np.random.default_rng(5)
    ours = Sequential([LSTM(6, input_shape=(5, 3)), RepeatVector(5),
                       LSTM(4, return_sequences=True), TimeDistributed(Dense(3)),
                       Activation("tanh")])
    theirs = keras.Sequential([keras.Input((5, 3)), kl.LSTM(6), kl.RepeatVector(5),
                               kl.LSTM(4, return_sequences=True),
                               kl.TimeDistributed(kl.Dense(3)), kl.Activation("tanh")])
    _pair(ours, theirs, rng)
    x = rng.standard_normal((4, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(ours.predict(x), _keras_predict(theirs, x), **TOL)


def test_layer_call_with_initial_state_and_return_state():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 4, 2)).astype(np.float32)
    h0 = rng.standard_normal((3, 5)).astype(np.float32)
    c0 = rng.standard_normal((3, 5)).astype(np.float32)
    ours = LSTM(5, return_sequences=True, return_state=True, go_backwards=True)
    theirs = kl.LSTM(5, return_sequences=True, return_state=True, go_backwards=True)
    theirs(x)
    ours(x)
    ws = [(rng.standard_normal(w.shape) * 0.4).astype(np.float32) for w in ours.get_weights()]
    ours.set_weights(ws)
    theirs.set_weights(ws)
    got = ours(x, initial_state=[h0, c0])
    want = theirs(x, initial_state=[h0, c0])
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, keras.ops.convert_to_numpy(b), **TOL)
