"""Ports of Keras 3's own LSTM and Bidirectional tests, run on cylstm.

Sources (Keras 3.15.1, keras-team/keras tag v3.15.1):

* ``keras/src/layers/rnn/lstm_test.py`` (class ``LSTMTest``)
* ``keras/src/layers/rnn/bidirectional_test.py`` (class ``SimpleRNNTest``)
* the checks of ``keras/src/testing/test_case.py::TestCase.run_layer_test`` they call

Each test names the Keras test it comes from; the expected arrays are copied from
those files, with their tolerances (``assertAllClose``: 1e-6 unless the test says
otherwise).  ``keras.layers``/``keras.initializers`` become ``cylstm.layers`` /
``cylstm.initializers`` and nothing else changes, except where a test says why.

Keras's ``main`` branch (commit a8b52ca, after 3.15.1) sets ``supports_masking=False``
on RNN layers and Bidirectional; the released 3.15.1, which these ports follow, has
True (the layers take a mask and pass it on).
"""
import json

import numpy as np
import pytest

from cylstm import initializers, layers
from cylstm.models import Sequential


def assert_all_close(actual, expected, atol=1e-6, rtol=1e-6):
    """keras.src.testing.TestCase.assertAllClose (the CPU tolerances)."""
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), atol=atol, rtol=rtol)


def _keras_lstm(units, **kw):
    """The layer most Keras tests build: constant 0.01 / 0.02 / 0.03 initializers."""
    return layers.LSTM(units, kernel_initializer=initializers.Constant(0.01),
                       recurrent_initializer=initializers.Constant(0.02),
                       bias_initializer=initializers.Constant(0.03), **kw)


def _uniform_inputs(shape, seed=0):
    # create_eager_tensors: random.uniform(shape) * 3 in float32
    return (np.random.default_rng(seed).random(shape) * 3).astype(np.float32)


def run_layer_test(layer_cls, init_kwargs, input_shape, call_kwargs=None,
                   expected_output_shape=None, expected_num_trainable_weights=None,
                   expected_num_non_trainable_weights=None, expected_num_losses=None,
                   supports_masking=None):
    """The checks of Keras's ``run_layer_test`` that need no symbolic tensors.

    Serialization round trips (``get_config``/``from_config`` and ``serialize`` /
    ``deserialize`` through JSON give the same config and the same attributes),
    ``supports_masking``, the weight counts after ``build``, the output shape and the
    number of ``layer.losses`` after an eager call, and a training step.  The symbolic
    call (``layer(KerasTensor)``) is :func:`test_run_layer_test_symbolic_call`; mixed
    precision has no cylstm counterpart (float32 and float64 only).
    """
    call_kwargs = call_kwargs or {}
    # serialization test (run_class_serialization_test)
    layer = layer_cls(**init_kwargs)
    config_json = json.dumps(layer.get_config(), sort_keys=True)
    revived = layer_cls.from_config(json.loads(config_json))
    assert json.dumps(revived.get_config(), sort_keys=True) == config_json
    assert set(dir(layer)) == set(dir(revived))
    serialized = json.dumps(layers.serialize(layer))
    revived = layers.deserialize(json.loads(serialized))
    assert json.dumps(revived.get_config(), sort_keys=True) == config_json
    assert set(dir(layer)) == set(dir(revived))
    # basic masking test
    if supports_masking is not None:
        assert layer.supports_masking == supports_masking, "Unexpected supports_masking value"
    # build test (run_build_asserts)
    layer = layer_cls(**init_kwargs)
    layer.build(input_shape)
    assert layer.built
    if expected_num_trainable_weights is not None:
        assert len(layer.trainable_weights) == expected_num_trainable_weights
    if expected_num_non_trainable_weights is not None:
        assert len(layer.non_trainable_weights) == expected_num_non_trainable_weights
    # eager call test (run_output_asserts, eager=True)
    x = _uniform_inputs(input_shape)
    layer = layer_cls(**init_kwargs)
    out = layer(x, **call_kwargs)
    if expected_output_shape is not None:
        assert out.shape == expected_output_shape
    if expected_num_losses is not None:
        assert len(layer.losses) == expected_num_losses
    # training test (run_training_step): Keras fits one step of loss sum(y_pred) with SGD;
    # cylstm's losses are its own, so mse towards zeros: the step must move the weights
    model = Sequential([layer])
    model.compile(optimizer="sgd", loss="mse")
    before = model.get_weights()
    hist = model.fit(x, np.zeros_like(out), batch_size=len(x), epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0])
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


# ============================================================ lstm_test.py :: LSTMTest
def test_lstm_basics():
    # lstm_test.py::LSTMTest::test_basics
    run_layer_test(layers.LSTM, init_kwargs={"units": 3, "dropout": 0.5},
                   input_shape=(3, 2, 4), call_kwargs={"training": True},
                   expected_output_shape=(3, 3), expected_num_trainable_weights=3,
                   expected_num_non_trainable_weights=0, supports_masking=True)
    run_layer_test(layers.LSTM,
                   init_kwargs={"units": 3, "dropout": 0.5, "recurrent_dropout": 0.5},
                   input_shape=(3, 2, 4), call_kwargs={"training": True},
                   expected_output_shape=(3, 3), expected_num_trainable_weights=3,
                   expected_num_non_trainable_weights=0, supports_masking=True)
    run_layer_test(layers.LSTM,
                   init_kwargs={"units": 3, "return_sequences": True,
                                "bias_regularizer": "l1", "kernel_regularizer": "l2",
                                "recurrent_regularizer": "l2"},
                   input_shape=(3, 2, 4), expected_output_shape=(3, 2, 3),
                   expected_num_losses=3, expected_num_trainable_weights=3,
                   expected_num_non_trainable_weights=0, supports_masking=True)


def test_run_layer_test_symbolic_call():
    # lstm_test.py::LSTMTest::test_basics, run_layer_test's "Symbolic call test"
    try:
        x = layers.Input(batch_shape=(3, 2, 4))
        out = layers.LSTM(3)(x)
    except TypeError:
        pytest.skip("needs the functional API (branch keras-func)")
    assert tuple(out.shape) == (3, 3)
    out = layers.LSTM(3, return_sequences=True)(layers.Input(batch_shape=(3, 2, 4)))
    assert tuple(out.shape) == (3, 2, 3)


@pytest.mark.parametrize("implementation", [1, 2])
def test_lstm_correctness(implementation):
    # lstm_test.py::LSTMTest::test_correctness (parameterized [1, 2])
    sequence = np.arange(72).reshape((3, 6, 4)).astype("float32")
    tol = {"atol": 1e-5, "rtol": 1e-5}
    output = _keras_lstm(3, implementation=implementation)(sequence)
    assert_all_close(output, np.array([[0.6288687, 0.6288687, 0.6288687],
                                       [0.86899155, 0.86899155, 0.86899155],
                                       [0.9460773, 0.9460773, 0.9460773]]), **tol)

    output = _keras_lstm(3, go_backwards=True, implementation=implementation)(sequence)
    assert_all_close(output, np.array([[0.35622165, 0.35622165, 0.35622165],
                                       [0.74789524, 0.74789524, 0.74789524],
                                       [0.8872726, 0.8872726, 0.8872726]]), **tol)

    output = _keras_lstm(3, unroll=True, implementation=implementation)(sequence)
    assert_all_close(output, np.array([[0.6288687, 0.6288687, 0.6288687],
                                       [0.86899155, 0.86899155, 0.86899155],
                                       [0.9460773, 0.9460773, 0.9460773]]), **tol)

    output = _keras_lstm(3, unit_forget_bias=False, implementation=implementation)(sequence)
    assert_all_close(output, np.array([[0.57019705, 0.57019705, 0.57019705],
                                       [0.8661914, 0.8661914, 0.8661914],
                                       [0.9459622, 0.9459622, 0.9459622]]), **tol)

    output = _keras_lstm(3, use_bias=False, implementation=implementation)(sequence)
    assert_all_close(output, np.array([[0.54986924, 0.54986924, 0.54986924],
                                       [0.86226785, 0.86226785, 0.86226785],
                                       [0.9443936, 0.9443936, 0.9443936]]), **tol)


def test_lstm_unit_forget_bias_block_is_exactly_one():
    # the cause of issue 12's failing ports: Keras builds the bias as
    # concatenate([init(units), ones(units), init(2 * units)]) (lstm.py, LSTMCell.build)
    layer = _keras_lstm(3)
    layer.build((None, 6, 4))
    np.testing.assert_array_equal(layer.bias, np.r_[np.full(3, 0.03), np.ones(3),
                                                    np.full(6, 0.03)].astype(np.float32))
    layer = _keras_lstm(3, unit_forget_bias=False)
    layer.build((None, 6, 4))
    np.testing.assert_array_equal(layer.bias, np.full(12, 0.03, np.float32))


def test_lstm_statefulness():
    # lstm_test.py::LSTMTest::test_statefulness
    sequence = np.arange(24).reshape((2, 3, 4)).astype("float32")
    layer = _keras_lstm(4, stateful=True)
    expected = np.array([[0.3124785, 0.3124785, 0.3124785, 0.3124785],
                         [0.6863672, 0.6863672, 0.6863672, 0.6863672]])
    layer(sequence)
    output = layer(sequence)
    assert_all_close(output, expected, atol=1e-5, rtol=1e-5)
    layer.reset_state()
    layer(sequence)
    output = layer(sequence)
    assert_all_close(output, expected, atol=1e-5, rtol=1e-5)


def test_lstm_pass_initial_state():
    # lstm_test.py::LSTMTest::test_pass_initial_state
    sequence = np.arange(24).reshape((2, 4, 3)).astype("float32")
    initial_state = [np.arange(4).reshape((2, 2)).astype("float32"),
                     np.arange(4).reshape((2, 2)).astype("float32")]
    output = _keras_lstm(2)(sequence, initial_state=initial_state)
    assert_all_close(output, np.array([[0.20574439, 0.3558822], [0.64930826, 0.66276]]),
                     atol=1e-5, rtol=1e-5)
    output = _keras_lstm(2, go_backwards=True)(sequence, initial_state=initial_state)
    assert_all_close(output, np.array([[0.13281618, 0.2790356], [0.5839337, 0.5992567]]),
                     atol=1e-5, rtol=1e-5)


def test_lstm_masking():
    # lstm_test.py::LSTMTest::test_masking
    sequence = np.arange(24).reshape((2, 4, 3)).astype("float32")
    mask = np.array([[True, True, True, False], [True, True, False, False]])
    tol = {"atol": 1e-5, "rtol": 1e-5}
    output = _keras_lstm(2, unroll=True)(sequence, mask=mask)
    assert_all_close(output, np.array([[0.11755939, 0.11755939], [0.28556206, 0.28556206]]),
                     **tol)

    output = _keras_lstm(2, return_sequences=True)(sequence, mask=mask)
    assert_all_close(output[0], np.array([[0.01588910, 0.01588910], [0.05552048, 0.05552048],
                                          [0.11755939, 0.11755939],
                                          [0.11755939, 0.11755939]]), **tol)
    assert_all_close(output[1], np.array([[0.14185596, 0.14185596], [0.28556206, 0.28556206],
                                          [0.28556206, 0.28556206],
                                          [0.28556206, 0.28556206]]), **tol)

    output = _keras_lstm(2, return_sequences=True, zero_output_for_mask=True)(sequence,
                                                                            mask=mask)
    assert_all_close(output[0], np.array([[0.01588910, 0.01588910], [0.05552048, 0.05552048],
                                          [0.11755939, 0.11755939], [0.0, 0.0]]), **tol)
    assert_all_close(output[1], np.array([[0.14185596, 0.14185596], [0.28556206, 0.28556206],
                                          [0.0, 0.0], [0.0, 0.0]]), **tol)

    backwards_mask = np.array([[False, True, True, True], [False, False, True, True]])
    output = _keras_lstm(2, go_backwards=True)(sequence, mask=backwards_mask)
    assert_all_close(output, np.array([[0.15341201, 0.15341201], [0.3844719, 0.3844719]]),
                     **tol)


# ============================================================ bidirectional_test.py
def test_bidirectional_basics():
    # bidirectional_test.py::SimpleRNNTest::test_basics, with LSTM(4) for SimpleRNN(4)
    # (cylstm has no SimpleRNN; the expected shapes are the same, and so are the weight
    # counts: 3 per direction)
    run_layer_test(layers.Bidirectional, init_kwargs={"layer": layers.LSTM(4)},
                   input_shape=(3, 2, 4), expected_output_shape=(3, 8),
                   expected_num_trainable_weights=6, expected_num_non_trainable_weights=0,
                   supports_masking=True)
    run_layer_test(layers.Bidirectional,
                   init_kwargs={"layer": layers.LSTM(4),
                                "backward_layer": layers.LSTM(4, go_backwards=True),
                                "merge_mode": "sum"},
                   input_shape=(3, 2, 4), expected_output_shape=(3, 4),
                   expected_num_trainable_weights=6, expected_num_non_trainable_weights=0,
                   supports_masking=True)


@pytest.mark.skip(reason="cylstm provides LSTM only: the expected arrays of "
                         "bidirectional_test.py::SimpleRNNTest::test_correctness are "
                         "SimpleRNN's and GRU's")
def test_bidirectional_correctness():
    pass


def test_bidirectional_statefulness():
    # bidirectional_test.py::SimpleRNNTest::test_statefulness
    sequence = np.arange(24).reshape((2, 4, 3)).astype("float32")
    layer = layers.Bidirectional(layer=_keras_lstm(2, stateful=True))
    expected = np.array([[0.26234663, 0.26234663, 0.16959146, 0.16959146],
                         [0.6137073, 0.6137073, 0.5381646, 0.5381646]])
    layer(sequence)
    output = layer(sequence)
    assert_all_close(expected, output)
    layer.reset_state()
    layer(sequence)
    output = layer(sequence)
    assert_all_close(expected, output)


def test_bidirectional_pass_initial_state():
    # bidirectional_test.py::SimpleRNNTest::test_pass_initial_state
    sequence = np.arange(24).reshape((2, 4, 3)).astype("float32")
    initial_state = [np.arange(4).reshape((2, 2)).astype("float32") * k for k in (1, 2, 3, 4)]
    layer = layers.Bidirectional(layer=_keras_lstm(2))
    output = layer(sequence, initial_state=initial_state)
    assert_all_close(np.array([[0.20794602, 0.4577124, 0.14046375, 0.48191673],
                               [0.6682636, 0.6711909, 0.60943645, 0.60950446]]), output)


@pytest.mark.skip(reason="cylstm provides LSTM only: "
                         "bidirectional_test.py::SimpleRNNTest::test_masking tests a GRU")
def test_bidirectional_masking():
    pass


def test_bidirectional_return_state():
    # bidirectional_test.py::SimpleRNNTest::test_return_state
    sequence = np.arange(24).reshape((2, 4, 3)).astype("float32")
    layer = layers.Bidirectional(layer=_keras_lstm(2, return_state=True))
    output, h1, c1, h2, c2 = layer(sequence)
    tol = {"atol": 1e-5, "rtol": 1e-5}
    assert_all_close(np.array([[0.1990008, 0.1990008, 0.12659755, 0.12659755],
                               [0.52335435, 0.52335435, 0.44717982, 0.44717982]]), output,
                     **tol)
    assert_all_close(np.array([[0.1990008, 0.1990008], [0.52335435, 0.52335435]]), h1, **tol)
    assert_all_close(np.array([[0.35567185, 0.35567185], [1.0492687, 1.0492687]]), c1, **tol)
    assert_all_close(np.array([[0.12659755, 0.12659755], [0.44717982, 0.44717982]]), h2,
                     **tol)
    assert_all_close(np.array([[0.2501858, 0.2501858], [0.941473, 0.941473]]), c2, **tol)


def test_bidirectional_output_shape():
    # bidirectional_test.py::SimpleRNNTest::test_output_shape
    x = np.array([[[101, 202], [303, 404]]])
    for merge_mode in ["ave", "concat", "mul", "sum", None]:
        sub_layer = layers.LSTM(2, return_state=True)
        layer = layers.Bidirectional(sub_layer, merge_mode=merge_mode)
        output = layer(x)
        output_shape = layer.compute_output_shape(x.shape)
        assert len(output) == len(output_shape)
        for out, shape in zip(output, output_shape):
            assert out.shape == tuple(shape)
    for merge_mode in ["concat", "ave", "mul", "sum"]:
        sub_layer = layers.LSTM(2, return_state=False)
        layer = layers.Bidirectional(sub_layer, merge_mode=merge_mode)
        output = layer(x)
        assert output.shape == tuple(layer.compute_output_shape(x.shape))
    # return_state=False & merge_mode=None
    layer = layers.Bidirectional(layers.LSTM(2, return_state=False), merge_mode=None)
    output = layer(x)
    output_shape = layer.compute_output_shape(x.shape)
    for out, shape in zip(output, output_shape):
        assert out.shape == tuple(shape)


def test_bidirectional_keeps_use_cudnn():
    # bidirectional_test.py::SimpleRNNTest::test_keeps_use_cudnn (its LSTM half; cylstm has
    # no GRU or SimpleRNN)
    for use_cudnn in [True, False, "auto"]:
        bidi = layers.Bidirectional(layers.LSTM(1, use_cudnn=use_cudnn))
        assert bidi.forward_layer.use_cudnn == use_cudnn
        assert bidi.backward_layer.use_cudnn == use_cudnn
    with pytest.raises(ValueError, match="use_cudnn"):
        layers.LSTM(1, use_cudnn="yes")


@pytest.mark.skip(reason="bidirectional_test.py's test_fused_lstm_eligibility, "
                         "test_fused_lstm_matches_unfused and the GRU fused / torch cuDNN "
                         "dispatch tests call Keras's private backend dispatch "
                         "(_can_attempt_fused_lstm, torch._VF); cylstm has no such path")
def test_bidirectional_fused_dispatch():
    pass


def test_bidirectional_reset_state_needs_stateful():
    # Keras 3.15.1 bidirectional.py, Bidirectional.reset_state: AttributeError when the
    # layer is not stateful; reset_states is its alias
    bidi = layers.Bidirectional(layers.LSTM(2))
    with pytest.raises(AttributeError, match="not stateful"):
        bidi.reset_state()
    with pytest.raises(AttributeError, match="not stateful"):
        bidi.reset_states()
    stateful = layers.Bidirectional(layers.LSTM(2, stateful=True))
    assert stateful.states is None
    x = np.ones((3, 4, 2), np.float32)
    first = stateful(x)
    assert len(stateful.states) == 4
    stateful.reset_states()
    assert all(not np.any(s) for s in stateful.states)
    np.testing.assert_array_equal(stateful(x), first)


def test_supports_masking_values_of_keras_3_15():
    # Keras 3.15.1: RNN and Bidirectional set True; Dense, Dropout, Masking, Activation and
    # TimeDistributed True; Embedding = mask_zero; RepeatVector keeps the default False
    assert layers.LSTM(2).supports_masking and layers.Dense(2).supports_masking
    assert layers.Bidirectional(layers.LSTM(2)).supports_masking
    assert layers.Dropout(0.1).supports_masking and layers.Masking().supports_masking
    assert layers.Activation("relu").supports_masking
    assert layers.TimeDistributed(layers.Dense(2)).supports_masking
    assert layers.Embedding(4, 2, mask_zero=True).supports_masking
    assert not layers.Embedding(4, 2).supports_masking
    assert not layers.RepeatVector(3).supports_masking


def test_models_saved_before_keras_exact_bias_load_their_weights(tmp_path):
    # Files written before this change hold biases with a forget block of 1 + init and
    # configs without regularizer / constraint / use_cudnn keys: they load, and their
    # stored weights are used unchanged
    from cylstm import saving
    from cylstm.models import load_model

    model = Sequential([layers.Bidirectional(_keras_lstm(2, return_sequences=True),
                                             input_shape=(None, 3)),
                        _keras_lstm(2), layers.Dense(1)])
    model.compile("sgd", "mse")
    ws = model.get_weights()
    for w in ws:
        if w.shape == (8,):
            w[2:4] = 1.03  # the old forget block
    model.set_weights(ws)
    p = tmp_path / "new.npz"
    model.save(p)
    meta, arrays = saving._read(p)
    new_keys = {"kernel_regularizer", "recurrent_regularizer", "bias_regularizer",
                "activity_regularizer", "kernel_constraint", "recurrent_constraint",
                "bias_constraint", "use_cudnn"}

    def strip(cfg):
        if isinstance(cfg, dict):
            return {k: strip(v) for k, v in cfg.items() if k not in new_keys}
        if isinstance(cfg, list):
            return [strip(v) for v in cfg]
        return cfg

    meta["model"] = strip(meta["model"])
    assert "use_cudnn" not in json.dumps(meta)
    old = tmp_path / "old.npz"
    np.savez(old, **arrays, **{saving._META: saving._encode(meta)})
    back = load_model(old)
    for a, b in zip(back.get_weights(), ws):
        np.testing.assert_array_equal(a, b)
    assert back.layers[1].use_cudnn == "auto" and back.layers[1].kernel_regularizer is None
    x = np.arange(24, dtype=np.float32).reshape(2, 4, 3) / 24
    np.testing.assert_array_equal(back.predict(x, verbose=0), model.predict(x, verbose=0))


def test_use_cudnn_survives_save_and_load(tmp_path):
    from cylstm.models import load_model

    model = Sequential([layers.LSTM(2, use_cudnn=False, input_shape=(None, 3))])
    model.save(tmp_path / "m.npz")
    assert load_model(tmp_path / "m.npz").layers[0].use_cudnn is False
