"""cylstm.regularizers: Keras's formulas and names, layer.losses, and training with them.

Formula tests follow keras/src/regularizers/regularizers_test.py (Keras 3.15.1); the
gradients are checked against central finite differences in float64.
"""
import json

import numpy as np
import pytest
from reference import numeric_grad

from cylstm import layers as L
from cylstm import regularizers as R
from cylstm import utils as cyl_utils
from cylstm.models import Sequential, load_model
from cylstm.optimizers import SGD

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------- formulas (Keras tests)
def test_l1_l2_l1l2_values():
    # regularizers_test.py::test_l1 / test_l2 / test_l1_l2
    value = RNG.random((4, 4)).astype(np.float32)
    np.testing.assert_allclose(R.L1(0.1)(value), 0.1 * np.sum(np.abs(value)), rtol=1e-6)
    np.testing.assert_allclose(R.L2(0.1)(value), 0.1 * np.sum(np.square(value)), rtol=1e-6)
    np.testing.assert_allclose(R.L1L2(l1=0.1, l2=0.2)(value),
                               0.1 * np.sum(np.abs(value)) + 0.2 * np.sum(np.square(value)),
                               rtol=1e-6)


def test_orthogonal_regularizer():
    # regularizers_test.py::test_orthogonal_regularizer (+ the columns mode)
    value = RNG.random((4, 4)).astype(np.float32)
    inputs = value / np.linalg.norm(value, axis=1, keepdims=True)
    want = 0.1 * 0.5 * np.sum(np.abs(np.dot(inputs, np.transpose(inputs)) * (1.0 - np.eye(4)))
                              ) / (4.0 * (4.0 - 1.0) / 2.0)
    np.testing.assert_allclose(R.OrthogonalRegularizer(factor=0.1, mode="rows")(value), want,
                               rtol=1e-6)
    cols = value / np.linalg.norm(value, axis=0, keepdims=True)
    want = 0.1 * 0.5 * np.sum(np.abs(cols.T @ cols * (1.0 - np.eye(4)))) / 6.0
    np.testing.assert_allclose(R.OrthogonalRegularizer(0.1, mode="columns")(value), want,
                               rtol=1e-6)
    # ..._mode_validation / ..._input_rank_validation / ..._get_config
    with pytest.raises(ValueError, match="mode=invalid_mode"):
        R.OrthogonalRegularizer(factor=0.01, mode="invalid_mode")
    with pytest.raises(ValueError, match=r"rank 2. Received: inputs.shape=\(4, 4, 4\)"):
        R.OrthogonalRegularizer(factor=0.1)(RNG.random((4, 4, 4)))
    cfg = R.OrthogonalRegularizer(factor=0.01, mode="columns").get_config()
    assert cfg == {"factor": 0.01, "mode": "columns"}
    assert isinstance(R.get("orthogonal_regularizer"), R.OrthogonalRegularizer)


def test_l1_with_zero_weights():
    # regularizers_test.py::test_l1_with_zero_weights; the gradient there is 0, as TF's
    z = np.zeros((4, 4), np.float32)
    assert R.L1(0.1)(z) == 0.0
    np.testing.assert_array_equal(R.L1(0.1).gradient(z), z)


def test_defaults_and_names():
    # regularizers_test.py::test_get_method, plus the names issue 12 asks for
    assert isinstance(R.get("l1l2"), R.L1L2) and R.get("l1l2").get_config() == {
        "l1": 0.0, "l2": 0.0}  # Keras 3: L1L2() penalizes nothing
    assert R.get("l1").l1 == 0.01 and R.get("l2").l2 == 0.01
    assert R.get("L1").l1 == 0.01 and R.get("L2").l2 == 0.01
    both = R.get("l1_l2")
    assert isinstance(both, R.L1L2) and (both.l1, both.l2) == (0.01, 0.01)
    assert R.l1_l2 is R.L1L2 and R.l1 is R.L1 and R.l2 is R.L2  # Keras 3's aliases
    assert R.get(None) is None
    reg = R.L2(0.3)
    assert R.get(reg) is reg
    assert isinstance(R.get(R.L1), R.L1)
    with pytest.raises(ValueError, match="typo.*l1.*l2.*l1_l2"):
        R.get("typo")


def test_config_round_trip():
    # regularizers_test.py::test_config / test_l1l2_get_config
    for reg in (R.L1(0.1), R.L2(0.1), R.L1L2(l1=0.01, l2=0.02),
                R.OrthogonalRegularizer(factor=0.1, mode="rows")):
        cfg = json.loads(json.dumps(R.serialize(reg)))
        back = R.deserialize(cfg)
        assert type(back) is type(reg) and back.get_config() == reg.get_config()
    assert R.L1L2.from_config({"l1": 0.01, "l2": 0.02}).get_config() == {"l1": 0.01,
                                                                         "l2": 0.02}
    with pytest.raises(ValueError, match="unknown regularizer 'Evil'"):
        R.deserialize({"class_name": "Evil", "config": {}})


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "0.1", True])
def test_bad_factors(bad):
    with pytest.raises(ValueError, match="l1"):
        R.L1(bad)


def test_plain_functions_and_gradientless_subclasses_are_refused():
    with pytest.raises(TypeError, match="cannot differentiate"):
        R.get(lambda w: 0.01 * np.sum(w))

    class NoGrad(R.Regularizer):
        def __call__(self, x):
            return float(np.sum(x))

    with pytest.raises(TypeError, match="gradient"):
        L.Dense(2, kernel_regularizer=NoGrad())


def test_unknown_name_on_a_layer_names_the_argument_and_the_known_ones():
    with pytest.raises(ValueError, match=r"kernel_regularizer: unknown regularizer 'l3'.*l1"):
        L.LSTM(3, kernel_regularizer="l3")
    with pytest.raises(ValueError, match="embeddings_regularizer"):
        L.Embedding(5, 2, embeddings_regularizer="big")


@pytest.mark.parametrize("x", [RNG.standard_normal((3, 5)), RNG.standard_normal((6, 2)) * 3])
@pytest.mark.parametrize("reg", [R.L1(0.3), R.L2(0.2), R.L1L2(0.1, 0.4), R.Regularizer(),
                                 R.OrthogonalRegularizer(0.2),
                                 R.OrthogonalRegularizer(0.3, "columns")])
def test_gradient_matches_finite_differences(reg, x):
    g = reg.gradient(x)
    fd = numeric_grad(reg, x.copy())  # x is shared by the parametrized cases
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------- layer.losses (Keras docs)
def test_keras_docstring_example_dense_losses():
    # keras/src/regularizers/regularizers.py, the Regularizer docstring: kernel 0.25 +
    # activity 25 / batch 5 = 5.0, total 5.25
    layer = L.Dense(5, input_dim=5, kernel_initializer="ones", kernel_regularizer=R.L1(0.01),
                    activity_regularizer=R.L2(0.01))
    layer(np.ones((5, 5), np.float32) * 2.0)
    assert len(layer.losses) == 2
    np.testing.assert_allclose(sum(layer.losses), 5.25, rtol=1e-6)


def test_keras_docstring_custom_regularizer():
    # the Regularizer docstring's L2Regularizer(0.5) on a ones kernel: 12.5 (cylstm's
    # custom regularizers also give their gradient)
    class L2Regularizer(R.Regularizer):
        def __init__(self, l2=0.0):
            self.l2 = l2

        def __call__(self, x):
            return self.l2 * float(np.sum(np.square(x)))

        def gradient(self, x):
            return 2 * self.l2 * x

    layer = L.Dense(5, input_dim=5, kernel_initializer="ones",
                    kernel_regularizer=L2Regularizer(l2=0.5))
    layer(np.ones((5, 5), np.float32))
    np.testing.assert_allclose(layer.losses, [12.5])


def test_lstm_losses_order_and_values():
    layer = L.LSTM(3, return_sequences=True, bias_regularizer="l1", kernel_regularizer="l2",
                   recurrent_regularizer=R.L2(0.5))
    layer(RNG.random((3, 2, 4)).astype(np.float32))
    K, U, b = layer.get_weights()
    np.testing.assert_allclose(layer.losses, [0.01 * np.sum(K ** 2), 0.5 * np.sum(U ** 2),
                                              0.01 * np.sum(np.abs(b))], rtol=1e-5)
    nb = L.LSTM(3, use_bias=False, bias_regularizer="l1", kernel_regularizer="l2")
    nb(RNG.random((3, 2, 4)).astype(np.float32))
    assert len(nb.losses) == 1  # no bias, no bias penalty (as Keras)


def test_activity_penalty_per_output_divided_by_batch():
    x = RNG.standard_normal((4, 3, 2)).astype(np.float32)
    layer = L.LSTM(3, return_state=True, activity_regularizer=R.L1(0.1))
    y, h, c = layer(x)
    # Keras applies it to every output tensor of the call, divided by its batch size
    np.testing.assert_allclose(layer.losses, [0.1 * np.abs(t).sum() / 4 for t in (y, h, c)],
                               rtol=1e-5)
    emb = L.Embedding(6, 2, activity_regularizer="l2")
    out = emb(np.array([[1, 2, 0]]))
    np.testing.assert_allclose(emb.losses, [0.01 * np.sum(out ** 2)], rtol=1e-6)


def test_bidirectional_collects_its_own_and_its_layers_losses():
    x = RNG.standard_normal((2, 4, 3)).astype(np.float32)
    bi = L.Bidirectional(L.LSTM(2, kernel_regularizer="l2", activity_regularizer="l1"),
                         activity_regularizer=R.L2(0.3), merge_mode="sum")
    y = bi(x)
    own = 0.3 * np.sum(y.astype(np.float64) ** 2) / 2
    fl, bl = bi.forward_layer, bi.backward_layer
    assert fl.kernel_regularizer.l2 == 0.01 and bl.activity_regularizer.l1 == 0.01
    assert len(bi.losses) == 1 + 2 + 2  # own activity, the two LSTMs' activity, 2 kernels
    np.testing.assert_allclose(bi.losses[0], own, rtol=1e-5)
    np.testing.assert_allclose(bi.losses[3:], [0.01 * np.sum(fl.kernel ** 2),
                                               0.01 * np.sum(bl.kernel ** 2)], rtol=1e-5)


def test_frozen_layers_have_no_weight_penalty():
    layer = L.Dense(2, kernel_regularizer="l2", input_dim=3)
    layer(np.ones((1, 3), np.float32))
    assert len(layer.losses) == 1
    layer.trainable = False  # Keras counts trainable weights only
    assert layer.losses == []


# ---------------------------------------------------------------- training with penalties
def _fd_model_check(model, x, y, rtol=1e-5, atol=1e-8, sample_weight=None):
    """Gradients of (loss + penalties) against central differences, weight by weight."""
    loss, grads = model._forward_backward(x, y, sample_weight)
    ws = model.get_weights()
    trial = [v.copy() for v in ws]

    def f(_perturbed):  # one entry of trial perturbed
        model.set_weights(trial)
        return model._forward_backward(x, y, sample_weight)[0]

    for k, (w, g) in enumerate(zip(trial, grads)):
        fd = numeric_grad(f, w)
        model.set_weights(ws)
        np.testing.assert_allclose(g, fd, rtol=rtol, atol=atol,
                                   err_msg=f"weight {k} {model._param_items()[k]}")
    return loss


def test_lstm_dense_gradients_include_every_penalty():
    model = Sequential([
        L.LSTM(3, return_sequences=True, kernel_regularizer=R.L1L2(0.02, 0.03),
               recurrent_regularizer="l2", bias_regularizer=R.L1(0.05),
               activity_regularizer=R.L2(0.04), dtype="float64", input_shape=(None, 2)),
        L.LSTM(2, kernel_regularizer=R.L2(0.1), activity_regularizer=R.L1(0.02),
               recurrent_regularizer=R.OrthogonalRegularizer(0.5),
               recurrent_initializer="glorot_uniform"),  # orthogonal rows: |P| at its kink
        L.Dense(2, activation="tanh", kernel_regularizer=R.L1(0.03),
                bias_regularizer=R.L2(0.2), activity_regularizer=R.L2(0.1))])
    model.compile(SGD(0.1), "mse")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 2))
    y = rng.standard_normal((3, 2))
    loss = _fd_model_check(model, x, y)
    data = float(np.mean((model(x) - y) ** 2))
    assert loss > data  # the penalties are in it
    np.testing.assert_allclose(loss, data + sum(model.losses), rtol=1e-10)


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave"])
def test_bidirectional_embedding_gradients_include_every_penalty(merge_mode):
    # seeded: with weights drawn from the global generator (whatever ran before), an
    # activation of the L1 penalties could sit within a difference step of 0, where
    # |a| has its kink and central differences disagree with the gradient (seen once
    # in a full run: 1 of 18 embedding entries off by 0.00056)
    cyl_utils.set_random_seed(7)
    model = Sequential([
        L.Embedding(6, 3, mask_zero=True, embeddings_regularizer=R.L2(0.05),
                    activity_regularizer=R.L1(0.01), dtype="float64"),
        L.Bidirectional(L.LSTM(2, return_sequences=True, recurrent_regularizer=R.L2(0.1),
                               activity_regularizer=R.L2(0.05)),
                        merge_mode=merge_mode, activity_regularizer=R.L1L2(0.01, 0.02)),
        L.TimeDistributed(L.Dense(1, kernel_regularizer=R.L2(0.3)))])
    model.compile(SGD(0.1), "mse")
    x = np.array([[1, 2, 3, 0], [4, 5, 0, 0]])
    y = np.random.default_rng(2).standard_normal((2, 4, 1))
    _fd_model_check(model, x, y)


def test_fused_sigmoid_output_with_activity_penalty():
    # binary cross-entropy trains a sigmoid Dense on its logits: the activity penalty on the
    # probabilities must still reach the logits through sigmoid'
    model = Sequential([L.LSTM(3, dtype="float64", input_shape=(None, 2)),
                        L.Dense(2, activation="sigmoid", activity_regularizer=R.L2(0.5))])
    model.compile(SGD(0.1), "binary_crossentropy")
    assert model._fused and model._fused[0] is model.layers[-1]   # trained on its logits
    rng = np.random.default_rng(3)
    _fd_model_check(model, rng.standard_normal((4, 3, 2)),
                    (rng.random((4, 2)) > 0.5).astype(np.float64))


def test_lstm_state_outputs_activity_gradient():
    # return_state: the penalty on h and c reaches them through grad_h / grad_c
    rng = np.random.default_rng(4)
    layer = L.LSTM(3, return_state=True, return_sequences=True, dtype="float64",
                   activity_regularizer=R.L1L2(0.02, 0.05), kernel_regularizer=R.L2(0.1))
    x = rng.standard_normal((2, 4, 2))
    layer(x)
    gy, gh, gc = (rng.standard_normal(s) for s in ((2, 4, 3), (2, 3), (2, 3)))

    def f(xv):
        y, h, c = layer(xv)
        return float(np.sum(y * gy) + np.sum(h * gh) + np.sum(c * gc) + sum(layer.losses))

    layer._forward(x, None, True)
    dx = layer._backward(gy, True, grad_h=gh, grad_c=gc)
    fd = numeric_grad(f, x)
    np.testing.assert_allclose(dx, fd, rtol=1e-6, atol=1e-9)
    fdk = numeric_grad(lambda _kernel: f(x), layer.kernel)  # perturbed where the layer reads it
    np.testing.assert_allclose(layer._grads["kernel"], fdk, rtol=1e-6, atol=1e-9)


def test_reported_training_and_evaluation_loss_include_penalties():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 3, 2)).astype(np.float32)
    y = rng.standard_normal((6, 1)).astype(np.float32)
    model = Sequential([L.LSTM(4, kernel_regularizer=R.L2(0.5), input_shape=(None, 2)),
                        L.Dense(1, activity_regularizer=R.L1(0.2))])
    model.compile(SGD(0.0), "mse")
    yp = model.predict(x, verbose=0)
    pen = 0.5 * np.sum(model.layers[0].kernel.astype(np.float64) ** 2) + \
        0.2 * np.abs(yp).sum() / 6
    want = float(np.mean((yp - y) ** 2)) + pen
    np.testing.assert_allclose(model.train_on_batch(x, y), want, rtol=1e-5)
    np.testing.assert_allclose(model.evaluate(x, y, batch_size=6, verbose=0), want, rtol=1e-5)
    hist = model.fit(x, y, batch_size=6, epochs=1, verbose=0, shuffle=False)
    np.testing.assert_allclose(hist.history["loss"][0], want, rtol=1e-5)
    assert len(model.losses) == 2


def test_l2_shrinks_weights_as_sgd_weight_decay():
    # with a zero data gradient (lr * 2 * l2 per step), one SGD step scales W by (1 - 2 lr l2)
    model = Sequential([L.Dense(3, kernel_regularizer=R.L2(0.25), use_bias=False,
                                input_dim=2, dtype="float64")])
    model.compile(SGD(0.1), "mse")
    W = model.get_weights()[0].copy()
    x = np.zeros((4, 2))
    model.train_on_batch(x, np.zeros((4, 3)))
    np.testing.assert_allclose(model.get_weights()[0], W * (1 - 2 * 0.1 * 0.25), rtol=1e-12)


def test_penalties_survive_save_and_load(tmp_path):
    model = Sequential([
        L.Embedding(5, 3, embeddings_regularizer="l2", input_shape=(4,)),
        L.Bidirectional(L.LSTM(2, kernel_regularizer=R.L1L2(0.1, 0.2),
                               activity_regularizer="l1"),
                        activity_regularizer=R.L2(0.3)),
        L.Dense(1, bias_regularizer=R.L1(0.4), activity_regularizer="l2")])
    model.compile("adam", "mse")
    x = np.array([[1, 2, 3, 4], [4, 3, 0, 0]])
    model.fit(x, np.ones((2, 1)), epochs=1, verbose=0)
    p = tmp_path / "m.npz"
    model.save(p)
    back = load_model(p)
    bl = back.layers[1]
    assert isinstance(bl.activity_regularizer, R.L2) and bl.activity_regularizer.l2 == 0.3
    assert bl.forward_layer.kernel_regularizer.get_config() == {"l1": 0.1, "l2": 0.2}
    assert isinstance(back.layers[0].embeddings_regularizer, R.L2)
    assert back.layers[2].bias_regularizer.l1 == 0.4
    model(x)
    back(x)
    np.testing.assert_allclose(back.losses, model.losses, rtol=1e-6)
    assert back.get_config() == model.get_config()


# ---------------------------------------------------------------- parity with installed Keras
def _keras():
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    return pytest.importorskip("keras", reason="Keras parity checks need keras installed")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_training_steps_with_penalties_match_keras():
    keras = _keras()
    kl, kr = keras.layers, keras.regularizers
    rng = np.random.default_rng(7)
    regs = {"kernel_regularizer": (R.L1L2(0.01, 0.02), kr.L1L2(0.01, 0.02)),
            "recurrent_regularizer": ("l2", "l2"), "bias_regularizer": ("l1", "l1"),
            "activity_regularizer": (R.L2(0.05), kr.L2(0.05))}
    ours = Sequential([L.LSTM(4, return_sequences=True, input_shape=(None, 3),
                              **{k: v[0] for k, v in regs.items()}),
                       L.LSTM(3, activity_regularizer=R.L1(0.02)),
                       L.Dense(2, kernel_regularizer=R.L2(0.1), activity_regularizer="l1")])
    theirs = keras.Sequential([keras.Input((None, 3)),
                               kl.LSTM(4, return_sequences=True,
                                       **{k: v[1] for k, v in regs.items()}),
                               kl.LSTM(3, activity_regularizer=kr.L1(0.02)),
                               kl.Dense(2, kernel_regularizer=kr.L2(0.1),
                                        activity_regularizer="l1")])
    ws = [(rng.standard_normal(w.shape) * 0.4).astype(np.float32) for w in ours.get_weights()]
    ours.set_weights(ws)
    theirs.set_weights(ws)
    ours.compile(SGD(0.1), "mse")
    theirs.compile(keras.optimizers.SGD(0.1), "mse")
    x = rng.standard_normal((6, 5, 3)).astype(np.float32)
    y = rng.standard_normal((6, 2)).astype(np.float32)
    for _ in range(3):
        lo = ours.train_on_batch(x, y)
        lt = float(np.asarray(theirs.train_on_batch(x, y)).reshape(-1)[0])
        np.testing.assert_allclose(lo, lt, rtol=1e-4)
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-4, atol=2e-5)
    ours(x)
    theirs(x)
    np.testing.assert_allclose(sorted(ours.losses),
                               sorted(float(np.asarray(keras.ops.convert_to_numpy(v)))
                                      for v in theirs.losses),
                               rtol=1e-4)
    np.testing.assert_allclose(ours.evaluate(x, y, verbose=0),
                               theirs.evaluate(x, y, verbose=0), rtol=1e-4)
