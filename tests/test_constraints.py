"""cylstm.constraints: Keras's formulas and defaults, and projection after each step.

Formula tests follow keras/src/constraints/constraints_test.py (Keras 3.15.1).
"""
import json

import numpy as np
import pytest

from cylstm import constraints as C
from cylstm import layers as L
from cylstm.models import Sequential, load_model
from cylstm.optimizers import SGD


def get_example_array():
    # constraints_test.py::get_example_array
    np.random.seed(3537)
    example_array = np.random.random((100, 100)) * 100.0 - 50.0
    example_array[0, 0] = 0.0
    return example_array


# ---------------------------------------------------------------- formulas (Keras tests)
def test_max_norm():
    # constraints_test.py::test_max_norm (the expected array copied)
    x = np.array([[0, 0, 0], [1.0, 0, 0], [3, 0, 0], [3, 3, 3]]).T
    target = np.array([[0, 0, 0], [1.0, 0, 0], [2.0, 0, 0],
                       [2.0 / np.sqrt(3), 2.0 / np.sqrt(3), 2.0 / np.sqrt(3)]]).T
    np.testing.assert_allclose(C.MaxNorm(2.0)(x), target, rtol=1e-6, atol=1e-6)


def test_non_neg():
    # constraints_test.py::test_non_neg / test_non_neg_zeroes_negatives / ..._preserves_positives
    out = C.NonNeg()(get_example_array())
    assert (np.min(out, axis=1) >= 0.0).all()
    np.testing.assert_array_equal(C.NonNeg()(np.full((5, 5), -3.0)), np.zeros((5, 5)))
    np.testing.assert_array_equal(C.NonNeg()(np.full((5, 5), 3.0)), np.full((5, 5), 3.0))


def test_unit_norm():
    # constraints_test.py::test_unit_norm
    out = C.UnitNorm()(get_example_array())
    np.testing.assert_allclose(np.sqrt(np.sum(np.square(out), axis=0)), 1.0, rtol=1e-6)


def test_min_max_norm():
    # constraints_test.py::test_min_max_norm
    out = C.MinMaxNorm(min_value=0.2, max_value=0.5)(get_example_array())
    l2 = np.sqrt(np.sum(np.square(out), axis=0))
    assert np.all(l2 >= 0.2) and np.all(l2 <= 0.5 + 1e-6)


def test_formulas_with_keras_epsilon_and_rate():
    w = np.array([[3.0, 0.1], [4.0, 0.2]])  # column norms 5 and sqrt(0.05)
    n = np.sqrt(np.sum(w ** 2, axis=0, keepdims=True))
    eps = 1e-7
    np.testing.assert_allclose(C.MaxNorm(2)(w), w * np.clip(n, 0, 2) / (eps + n), rtol=1e-12)
    np.testing.assert_allclose(C.UnitNorm(axis=1)(w),
                               w / (eps + np.sqrt(np.sum(w ** 2, axis=1, keepdims=True))))
    mm = C.MinMaxNorm(0.5, 2.0, rate=0.7)(w)
    want = w * (0.7 * np.clip(n, 0.5, 2.0) + 0.3 * n) / (eps + n)
    np.testing.assert_allclose(mm, want, rtol=1e-12)
    assert C.MaxNorm(2.0, axis=[0, 1])(w).shape == w.shape


def test_get_method_and_defaults():
    # constraints_test.py::test_get_method; defaults as Keras 3
    assert isinstance(C.get("unit_norm"), C.UnitNorm)
    for name, cls in (("max_norm", C.MaxNorm), ("non_neg", C.NonNeg),
                      ("min_max_norm", C.MinMaxNorm), ("MaxNorm", C.MaxNorm)):
        assert isinstance(C.get(name), cls)
    assert C.get(None) is None
    assert C.MaxNorm().get_config() == {"max_value": 2, "axis": 0}
    assert C.UnitNorm().get_config() == {"axis": 0}
    assert C.MinMaxNorm().get_config() == {"min_value": 0.0, "max_value": 1.0, "rate": 1.0,
                                           "axis": 0}
    assert C.max_norm is C.MaxNorm and C.non_neg is C.NonNeg  # Keras 3's aliases
    with pytest.raises(ValueError, match="typo.*max_norm.*non_neg.*unit_norm.*min_max_norm"):
        C.get("typo")


def test_default_constraint_and_configs():
    # constraints_test.py::test_default_constraint_call / ..._get_config / ..._from_config
    x = np.array([1.0, 2.0, 3.0])
    np.testing.assert_array_equal(C.Constraint()(x), x)
    assert C.Constraint().get_config() == {}
    assert isinstance(C.Constraint.from_config({}), C.Constraint)
    x = get_example_array()
    for c, cfg in ((C.MaxNorm(max_value=3.0, axis=1), {"max_value": 3.0, "axis": 1}),
                   (C.UnitNorm(axis=1), {"axis": 1}),
                   (C.MinMaxNorm(min_value=0.5, max_value=2.0, rate=0.7, axis=1),
                    {"min_value": 0.5, "max_value": 2.0, "rate": 0.7, "axis": 1}),
                   (C.NonNeg(), {})):
        assert c.get_config() == cfg
        back = C.deserialize(json.loads(json.dumps(C.serialize(c))))
        np.testing.assert_array_equal(back(x), c(x))


def test_unknown_name_on_a_layer_names_the_argument():
    with pytest.raises(ValueError, match="recurrent_constraint: unknown constraint 'maxnorm'"):
        L.LSTM(2, recurrent_constraint="maxnorm")
    with pytest.raises(TypeError, match="kernel_constraint"):
        L.Dense(2, kernel_constraint=3)


# ---------------------------------------------------------------- applied after each step
def test_one_sgd_step_then_projection():
    rng = np.random.default_rng(0)
    model = Sequential([
        L.LSTM(3, kernel_constraint=C.MaxNorm(0.3), recurrent_constraint=C.UnitNorm(),
               bias_constraint="non_neg", input_shape=(None, 2), dtype="float64"),
        L.Dense(2, kernel_constraint=C.MinMaxNorm(0.2, 0.4, rate=0.5, axis=1))])
    model.compile(SGD(0.5), "mse")
    x = rng.standard_normal((4, 5, 2))
    y = rng.standard_normal((4, 2)) * 3
    before = model.get_weights()
    _, grads = model._forward_backward(x, y)
    stepped = [w - 0.5 * g for w, g in zip(before, grads)]
    model.train_on_batch(x, y)
    K, U, b, Kd, bd = stepped
    want = [C.MaxNorm(0.3)(K), C.UnitNorm()(U), np.maximum(b, 0),
            C.MinMaxNorm(0.2, 0.4, rate=0.5, axis=1)(Kd), bd]
    for got, w in zip(model.get_weights(), want):
        np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-15)
    assert np.any(b < 0)  # the projection did something
    # still views of the flat buffer the optimizer updates (projected in place)
    lstm = model.layers[0]
    for name in ("kernel", "recurrent_kernel", "bias"):
        assert np.shares_memory(getattr(lstm, name), model._flat)


def test_constraints_hold_through_fit_for_every_layer_kind():
    rng = np.random.default_rng(1)
    model = Sequential([
        L.Embedding(7, 4, embeddings_constraint=C.MaxNorm(0.5, axis=1)),
        L.Bidirectional(L.LSTM(3, return_sequences=True, kernel_constraint="unit_norm")),
        L.TimeDistributed(L.Dense(1, kernel_constraint="non_neg"))])
    model.compile("adam", "mse")
    x = rng.integers(0, 7, (8, 5))
    model.fit(x, rng.standard_normal((8, 5, 1)), epochs=3, batch_size=4, verbose=0)
    emb, bi, td = model.layers
    assert np.all(np.linalg.norm(emb.embeddings, axis=1) <= 0.5 + 1e-5)
    for sub in (bi.forward_layer, bi.backward_layer):
        np.testing.assert_allclose(np.linalg.norm(sub.kernel, axis=0), 1.0, rtol=1e-5)
    assert np.all(td.layer.kernel >= 0)


def test_frozen_layers_are_not_projected():
    # also the regression test of a crash: a frozen first layer got _backward(None)
    # ('NoneType' object has no attribute 'ndim') before _run_backward stopped there
    model = Sequential([L.Dense(2, kernel_constraint="non_neg", kernel_initializer="ones",
                                input_dim=2), L.Dense(1)])
    model.layers[0].kernel[...] = -1.0
    model.layers[0].trainable = False
    model.compile(SGD(0.1), "mse")
    model.train_on_batch(np.ones((2, 2)), np.ones((2, 1)))
    np.testing.assert_array_equal(model.layers[0].kernel, -1.0)


def test_custom_callable_constraint_trains_but_cannot_be_saved(tmp_path):
    model = Sequential([L.Dense(2, kernel_constraint=lambda w: np.clip(w, -0.1, 0.1),
                                input_dim=3)])
    model.compile(SGD(1.0), "mse")
    model.train_on_batch(np.ones((2, 3)), np.full((2, 2), 10.0))
    assert np.abs(model.layers[0].kernel).max() <= 0.1 + 1e-7
    with pytest.raises(TypeError, match="cannot be saved"):
        model.save(tmp_path / "m.npz")


def test_constraints_survive_save_and_load(tmp_path):
    model = Sequential([
        L.LSTM(3, kernel_constraint=C.MaxNorm(1.5, axis=1), recurrent_constraint="unit_norm",
               bias_constraint=C.MinMaxNorm(0.1, 0.9, 0.5), input_shape=(None, 2)),
        L.Dense(1, bias_constraint="non_neg")])
    model.compile("sgd", "mse")
    p = tmp_path / "m.npz"
    model.save(p)
    back = load_model(p)
    lstm = back.layers[0]
    assert lstm.kernel_constraint.get_config() == {"max_value": 1.5, "axis": 1}
    assert isinstance(lstm.recurrent_constraint, C.UnitNorm)
    assert lstm.bias_constraint.get_config()["rate"] == 0.5
    assert isinstance(back.layers[1].bias_constraint, C.NonNeg)
    assert back.get_config() == model.get_config()


# ---------------------------------------------------------------- parity with installed Keras
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_training_steps_with_constraints_match_keras():
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras", reason="Keras parity checks need keras installed")
    kl, kc = keras.layers, keras.constraints
    rng = np.random.default_rng(8)
    ours = Sequential([
        L.Bidirectional(L.LSTM(4, return_sequences=True, kernel_constraint=C.MaxNorm(0.6),
                               recurrent_constraint="unit_norm", bias_constraint="non_neg"),
                        input_shape=(None, 3)),
        L.LSTM(3, kernel_constraint=C.MinMaxNorm(0.2, 0.5, rate=0.5, axis=1)),
        L.Dense(2, kernel_constraint="non_neg")])
    theirs = keras.Sequential([
        keras.Input((None, 3)),
        kl.Bidirectional(kl.LSTM(4, return_sequences=True, kernel_constraint=kc.MaxNorm(0.6),
                                 recurrent_constraint="unit_norm", bias_constraint="non_neg")),
        kl.LSTM(3, kernel_constraint=kc.MinMaxNorm(0.2, 0.5, rate=0.5, axis=1)),
        kl.Dense(2, kernel_constraint="non_neg")])
    ws = [(rng.standard_normal(w.shape) * 0.4).astype(np.float32) for w in ours.get_weights()]
    ours.set_weights(ws)
    theirs.set_weights(ws)
    ours.compile(SGD(0.2), "mse")
    theirs.compile(keras.optimizers.SGD(0.2), "mse")
    x = rng.standard_normal((6, 5, 3)).astype(np.float32)
    y = rng.standard_normal((6, 2)).astype(np.float32)
    for _ in range(3):
        ours.train_on_batch(x, y)
        theirs.train_on_batch(x, y)
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-4, atol=2e-5)
