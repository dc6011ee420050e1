"""Losses: values against plain NumPy formulas of Keras' definitions, gradients
against central finite differences in float64, PyTorch parity where the
definitions coincide."""
import numpy as np
import pytest
from reference import numeric_grad

from cylstm import losses
from cylstm.losses import (
    BinaryCrossentropy,
    CategoricalCrossentropy,
    Huber,
    MeanAbsoluteError,
    MeanSquaredError,
    SparseCategoricalCrossentropy,
)

EPS = 1e-7


def fd_grad(f, x):
    """Five-point central differences of scalar f at x (float64), step 1e-6."""
    return numeric_grad(f, x, h=1e-6)


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# ----------------------------------------------------------------------------- references
def ref_per_sample(name, yt, yp, **kw):
    if name == "mse":
        return np.mean((yt - yp) ** 2, axis=-1)
    if name == "mae":
        return np.mean(np.abs(yt - yp), axis=-1)
    if name == "huber":
        d = kw.get("delta", 1.0)
        e = np.abs(yp - yt)
        return np.mean(np.where(e <= d, 0.5 * e ** 2, d * e - 0.5 * d ** 2), axis=-1)
    if name == "mape":
        return 100 * np.mean(np.abs(yt - yp) / np.maximum(np.abs(yt), EPS), axis=-1)
    if name == "msle":
        return np.mean((np.log1p(np.maximum(yp, EPS)) - np.log1p(np.maximum(yt, EPS))) ** 2,
                       axis=-1)
    if name == "logcosh":
        return np.mean(np.log(np.cosh(yp - yt)), axis=-1)
    if name == "bce":
        ls = kw.get("label_smoothing", 0.0)
        t = yt * (1 - ls) + 0.5 * ls
        p = 1 / (1 + np.exp(-yp)) if kw.get("from_logits") else yp
        p = np.clip(p, EPS, 1 - EPS)
        return np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p)), axis=-1)
    if name == "cce":
        ls = kw.get("label_smoothing", 0.0)
        t = yt * (1 - ls) + ls / yt.shape[-1]
        if kw.get("from_logits"):
            return -np.sum(t * np.log(softmax(yp)), axis=-1)
        q = np.clip(yp / yp.sum(-1, keepdims=True), EPS, 1 - EPS)
        return -np.sum(t * np.log(q), axis=-1)
    if name == "scce":
        C = yp.shape[-1]
        lab = np.asarray(yt).reshape(yp.shape[:-1]).astype(int)
        onehot = np.eye(C)[lab]
        return ref_per_sample("cce", onehot, yp, from_logits=kw.get("from_logits"))
    raise AssertionError(name)


def make_loss(name, **kw):
    return {"mse": MeanSquaredError, "mae": MeanAbsoluteError, "huber": Huber,
            "mape": losses.MeanAbsolutePercentageError,
            "msle": losses.MeanSquaredLogarithmicError, "logcosh": losses.LogCosh,
            "bce": BinaryCrossentropy, "cce": CategoricalCrossentropy,
            "scce": SparseCategoricalCrossentropy}[name](**kw)


def data(name, shape, rng, logits=False):
    if name in ("mse", "mae", "huber", "logcosh"):
        return rng.standard_normal(shape), rng.standard_normal(shape)
    if name == "msle":
        return rng.uniform(0.1, 3, shape), rng.uniform(0.1, 3, shape)
    if name == "mape":  # |y_true| away from 0 and y_pred away from the kink at y_true
        yt = rng.uniform(0.5, 2, shape) * np.where(rng.random(shape) < 0.5, -1, 1)
        return yt, yt + np.where(rng.random(shape) < 0.5, -1, 1) * rng.uniform(0.1, 1, shape)
    if name == "bce":
        yt = rng.integers(0, 2, shape).astype(float)
        yp = rng.standard_normal(shape) * 2 if logits else rng.uniform(0.05, 0.95, shape)
        return yt, yp
    C = shape[-1]
    labels = rng.integers(0, C, shape[:-1])
    yp = rng.standard_normal(shape) * 2 if logits else rng.uniform(0.1, 1.0, shape)
    if name == "cce":
        return np.eye(C)[labels], yp
    return labels, yp


CASES = [
    ("mse", {}), ("mae", {}), ("huber", {}), ("huber", {"delta": 0.4}),
    ("mape", {}), ("msle", {}), ("logcosh", {}),
    ("bce", {}), ("bce", {"from_logits": True}), ("bce", {"label_smoothing": 0.2}),
    ("bce", {"from_logits": True, "label_smoothing": 0.1}),
    ("cce", {}), ("cce", {"from_logits": True}), ("cce", {"label_smoothing": 0.1}),
    ("cce", {"from_logits": True, "label_smoothing": 0.3}),
    ("scce", {}), ("scce", {"from_logits": True}),
]


@pytest.mark.parametrize("shape", [(5, 3), (1, 1), (2, 4, 3)])
@pytest.mark.parametrize("name,kw", CASES, ids=[f"{n}-{k}" for n, k in CASES])
def test_value_and_gradient(name, kw, shape):
    rng = np.random.default_rng(0)
    yt, yp = data(name, shape, rng, logits=kw.get("from_logits", False))
    if name == "mae":  # keep |y_pred - y_true| away from the kink for differences
        yp = yt + np.where(rng.random(shape) < 0.5, -1, 1) * rng.uniform(0.1, 1, shape)
    if name == "huber":  # and away from |e| = delta
        d = kw.get("delta", 1.0)
        e = rng.uniform(0.1, 2.5, shape) * d
        e[np.abs(e - d) < 0.05 * d] += 0.1 * d
        yp = yt + np.where(rng.random(shape) < 0.5, -1, 1) * e
    loss = make_loss(name, **kw)
    expected = np.mean(ref_per_sample(name, yt, yp, **kw))
    value, grad = loss.value_and_grad(yt, yp)
    assert isinstance(value, float)
    assert value == pytest.approx(expected, rel=1e-12, abs=1e-14)
    assert loss(yt, yp) == pytest.approx(value, rel=1e-15)
    assert grad.shape == yp.shape and grad.dtype == np.float64
    fd = fd_grad(lambda z: loss(yt, z), yp)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name,kw", CASES, ids=[f"{n}-{k}" for n, k in CASES])
def test_sample_weight(name, kw):
    rng = np.random.default_rng(1)
    shape = (4, 3)
    yt, yp = data(name, shape, rng, logits=kw.get("from_logits", False))
    w = rng.uniform(0, 2, 4)
    loss = make_loss(name, **kw)
    per = ref_per_sample(name, yt, yp, **kw)
    value, grad = loss.value_and_grad(yt, yp, sample_weight=w)
    # Keras' sum_over_batch_size: sum(w * loss) / number of samples (not sum(w))
    assert value == pytest.approx(np.sum(w * per) / 4, rel=1e-12)
    np.testing.assert_allclose(grad, fd_grad(lambda z: loss(yt, z, sample_weight=w), yp),
                               rtol=1e-6, atol=1e-9)
    # (B, 1) weights are squeezed as Keras does
    assert loss(yt, yp, sample_weight=w[:, None]) == pytest.approx(value, rel=1e-14)


def test_sequence_weights_and_mask():
    rng = np.random.default_rng(2)
    yt, yp = rng.standard_normal((3, 5, 2)), rng.standard_normal((3, 5, 2))
    per = np.mean((yt - yp) ** 2, -1)  # (3, 5)
    mse = MeanSquaredError()
    w = np.array([1.0, 0.0, 2.0])  # (B,) weights whole sequences
    assert mse(yt, yp, sample_weight=w) == pytest.approx(np.sum(per * w[:, None]) / 15)
    mask = rng.random((3, 5)) < 0.6
    mask[0, 0] = True
    # Keras: masked steps count neither in the sum nor in the divisor
    value, grad = mse.value_and_grad(yt, yp, mask=mask)
    assert value == pytest.approx(per[mask].mean(), rel=1e-12)
    np.testing.assert_allclose(grad, fd_grad(lambda z: mse(yt, z, mask=mask), yp),
                               rtol=1e-6, atol=1e-9)
    assert np.all(grad[~mask] == 0)


def test_keras_rank_rules():
    mse = MeanSquaredError()
    y = np.array([1.0, 2.0, 3.0])
    p = np.array([[1.5], [2.0], [2.0]])
    # y (B,) with y_pred (B, 1): y gets the trailing axis, not a (B, B) broadcast
    assert mse(y, p) == pytest.approx((0.25 + 0 + 1) / 3)
    v, g = mse.value_and_grad(y[:, None], p[:, 0])
    assert v == pytest.approx((0.25 + 0 + 1) / 3) and g.shape == (3,)
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(3, 4\)"):
        mse(np.zeros((3, 2)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"\(4,\).*\(3, 1\)"):
        mse(np.zeros(4), np.zeros((3, 1)))


def test_sparse_label_shapes():
    rng = np.random.default_rng(3)
    yp = rng.standard_normal((4, 6, 5))
    lab = rng.integers(0, 5, (4, 6))
    scce = SparseCategoricalCrossentropy(from_logits=True)
    v = scce(lab, yp)
    assert scce(lab[..., None], yp) == v
    assert scce(lab.astype(np.float32), yp) == v
    assert v == pytest.approx(np.mean(ref_per_sample("scce", lab, yp, from_logits=True)))
    yp2 = softmax(rng.standard_normal((4, 3)))
    lab2 = np.array([0, 2, 1, 1])
    s2 = SparseCategoricalCrossentropy()
    assert s2(lab2, yp2) == s2(lab2[:, None], yp2)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        s2(np.array([0, 3, 1, 1]), yp2)
    with pytest.raises(ValueError, match="labels of shape"):
        s2(np.array([0, 1]), yp2)
    with pytest.raises(ValueError, match="integer"):
        s2(np.array([0.5, 1, 1, 1]), yp2)


def test_sparse_ignore_class():
    rng = np.random.default_rng(4)
    yp = rng.standard_normal((6, 4))
    lab = np.array([0, 3, 1, 3, 2, 0])
    loss = SparseCategoricalCrossentropy(from_logits=True, ignore_class=3)
    per = ref_per_sample("scce", np.where(lab == 3, 0, lab), yp, from_logits=True)
    keep = lab != 3
    value, grad = loss.value_and_grad(lab, yp)
    assert value == pytest.approx(per[keep].mean(), rel=1e-12)
    assert np.all(grad[~keep] == 0)
    np.testing.assert_allclose(grad, fd_grad(lambda z: loss(lab, z), yp), rtol=1e-6,
                               atol=1e-9)


def test_categorical_equals_sparse():
    rng = np.random.default_rng(5)
    yp = rng.uniform(0.1, 1, (5, 4))
    lab = rng.integers(0, 4, 5)
    for logits in (False, True):
        a = CategoricalCrossentropy(from_logits=logits).value_and_grad(np.eye(4)[lab], yp)
        b = SparseCategoricalCrossentropy(from_logits=logits).value_and_grad(lab, yp)
        assert a[0] == pytest.approx(b[0], rel=1e-13)
        np.testing.assert_allclose(a[1], b[1], rtol=1e-12)


def test_clipping_as_keras():
    bce = BinaryCrossentropy()
    # a confident wrong prediction costs -log(1e-7), not inf
    assert bce(np.array([[1.0]]), np.array([[0.0]])) == pytest.approx(-np.log(EPS), rel=1e-6)
    v, g = bce.value_and_grad(np.array([[1.0]]), np.array([[0.0]]))
    assert np.isfinite(v) and g[0, 0] == 0.0  # TensorFlow's clip passes no gradient
    cce = CategoricalCrossentropy()
    v = cce(np.array([[0.0, 1.0]]), np.array([[1.0, 0.0]]))
    assert v == pytest.approx(-np.log(EPS), rel=1e-6)


def test_log_cosh_large_errors():
    v, g = losses.LogCosh().value_and_grad(np.zeros((1, 2)), np.array([[1000.0, -1000.0]]))
    assert v == pytest.approx(1000 - np.log(2)) and np.allclose(g, [[0.5, -0.5]])


def test_logits_are_stable():
    x = np.array([[-800.0, 0.0, 800.0]])
    v, g = BinaryCrossentropy(from_logits=True).value_and_grad(np.array([[1.0, 0.0, 0.0]]), x)
    assert np.isfinite(v) and np.all(np.isfinite(g))
    assert v == pytest.approx((800 + np.log(2) + 800) / 3)
    v, g = CategoricalCrossentropy(from_logits=True).value_and_grad(
        np.array([[1.0, 0.0, 0.0]]), x)
    assert v == pytest.approx(1600.0) and np.all(np.isfinite(g))
    v, g = SparseCategoricalCrossentropy(from_logits=True).value_and_grad(np.array([2]), x)
    assert v == pytest.approx(0.0, abs=1e-12) and np.all(np.isfinite(g))


@pytest.mark.parametrize("name,kw", CASES, ids=[f"{n}-{k}" for n, k in CASES])
def test_float32_keeps_dtype(name, kw):
    rng = np.random.default_rng(6)
    yt, yp = data(name, (8, 3), rng, logits=kw.get("from_logits", False))
    loss = make_loss(name, **kw)
    v64, g64 = loss.value_and_grad(yt, yp)
    v32, g32 = loss.value_and_grad(yt, yp.astype(np.float32))
    assert g32.dtype == np.float32
    assert v32 == pytest.approx(v64, rel=1e-5)
    np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-6)


def test_module_functions_are_per_sample():
    rng = np.random.default_rng(7)
    yt, yp = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    np.testing.assert_allclose(losses.mean_squared_error(yt, yp), ref_per_sample("mse", yt, yp))
    np.testing.assert_allclose(losses.mse(yt, yp), ref_per_sample("mse", yt, yp))
    np.testing.assert_allclose(losses.mae(yt, yp), ref_per_sample("mae", yt, yp))
    np.testing.assert_allclose(losses.huber(yt, yp, delta=0.5),
                               ref_per_sample("huber", yt, yp, delta=0.5))
    assert losses.binary_crossentropy(yt > 0, yp, from_logits=True).shape == (4,)


def test_get():
    assert isinstance(losses.get("mse"), MeanSquaredError)
    assert isinstance(losses.get("mean_squared_error"), MeanSquaredError)
    assert isinstance(losses.get("MAE"), MeanAbsoluteError)
    assert isinstance(losses.get("huber"), Huber)
    assert isinstance(losses.get("BinaryCrossentropy"), BinaryCrossentropy)
    assert isinstance(losses.get("sparse_categorical_crossentropy"),
                      SparseCategoricalCrossentropy)
    assert isinstance(losses.get(losses.categorical_crossentropy), CategoricalCrossentropy)
    obj = Huber(delta=2.0)
    assert losses.get(obj) is obj
    again = losses.get(losses.serialize(obj))
    assert isinstance(again, Huber) and again.delta == 2.0
    assert isinstance(losses.get("mape"), losses.MeanAbsolutePercentageError)
    assert isinstance(losses.get("msle"), losses.MeanSquaredLogarithmicError)
    assert isinstance(losses.get("logcosh"), losses.LogCosh)
    with pytest.raises(ValueError, match="mse.*mean_absolute_error"):
        losses.get("mean_squared_eror")
    with pytest.raises(TypeError, match="gradient"):
        losses.get(lambda a, b: a - b)
    with pytest.raises(TypeError):
        losses.get(42)


def test_custom_loss_wrapper():
    def fn(yt, yp):
        return np.sum((yp - yt) ** 4, axis=-1)

    def grad_fn(yt, yp):
        return 4 * (yp - yt) ** 3

    loss = losses.get(losses.LossFunctionWrapper(fn, grad_fn, name="quartic"))
    rng = np.random.default_rng(8)
    yt, yp = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
    v, g = loss.value_and_grad(yt, yp)
    assert v == pytest.approx(np.mean(fn(yt, yp)))
    np.testing.assert_allclose(g, fd_grad(lambda z: loss(yt, z), yp), rtol=1e-6, atol=1e-7)


def test_bad_input():
    mse = MeanSquaredError()
    with pytest.raises(TypeError, match="y_pred"):
        mse(np.zeros(3), "abc")
    with pytest.raises(TypeError, match="y_true"):
        mse(np.array(["a", "b"]), np.zeros(2))
    with pytest.raises(ValueError, match="empty"):
        mse(np.zeros((0, 1)), np.zeros((0, 1)))
    with pytest.raises(ValueError, match="sample_weight"):
        mse(np.zeros((3, 1)), np.zeros((3, 1)), sample_weight=np.ones(4))
    with pytest.raises(ValueError, match="one-hot"):
        CategoricalCrossentropy()(np.array([0, 1]), np.ones((2, 3)) / 3)
    with pytest.raises(ValueError, match="label_smoothing"):
        BinaryCrossentropy(label_smoothing=2.0)
    with pytest.raises(ValueError, match="reduction"):
        MeanSquaredError(reduction="average")
    with pytest.raises(ValueError, match="delta"):
        Huber(delta=0.0)


def test_reductions():
    yt, yp = np.zeros((2, 1)), np.array([[1.0], [2.0]])
    assert MeanSquaredError(reduction="sum")(yt, yp) == pytest.approx(5.0)
    np.testing.assert_allclose(MeanSquaredError(reduction="none")(yt, yp), [1.0, 4.0])
    w = np.array([1.0, 3.0])
    assert MeanSquaredError(reduction="mean_with_sample_weight")(
        yt, yp, sample_weight=w) == pytest.approx(13.0 / 4)
    with pytest.raises(ValueError, match="scalar"):
        MeanSquaredError(reduction="none").value_and_grad(yt, yp)


# ----------------------------------------------------------------------------- torch
def test_torch_parity():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(9)
    yt, yp = rng.standard_normal((6, 3)), rng.standard_normal((6, 3))

    def check(ours, tfn, yt_np, yp_np):
        x = torch.tensor(yp_np, requires_grad=True)
        tl = tfn(x, torch.tensor(yt_np))
        tl.backward()
        v, g = ours.value_and_grad(yt_np, yp_np)
        assert v == pytest.approx(tl.item(), rel=1e-12)
        np.testing.assert_allclose(g, x.grad.numpy(), rtol=1e-10, atol=1e-14)

    check(MeanSquaredError(), F.mse_loss, yt, yp)
    check(MeanAbsoluteError(), F.l1_loss, yt, yp)
    check(Huber(delta=0.7), lambda x, t: F.huber_loss(x, t, delta=0.7), yt, yp)
    tb = (rng.random((6, 3)) < 0.5).astype(float)
    check(BinaryCrossentropy(from_logits=True), F.binary_cross_entropy_with_logits, tb, yp)
    lab = rng.integers(0, 3, 6)
    x = torch.tensor(yp, requires_grad=True)
    tl = F.cross_entropy(x, torch.tensor(lab), label_smoothing=0.0)
    tl.backward()
    v, g = SparseCategoricalCrossentropy(from_logits=True).value_and_grad(lab, yp)
    assert v == pytest.approx(tl.item(), rel=1e-12)
    np.testing.assert_allclose(g, x.grad.numpy(), rtol=1e-10, atol=1e-14)
    # torch's label smoothing spreads s over C classes, as Keras' categorical one
    x = torch.tensor(yp, requires_grad=True)
    tl = F.cross_entropy(x, torch.tensor(lab), label_smoothing=0.2)
    tl.backward()
    v, g = CategoricalCrossentropy(from_logits=True, label_smoothing=0.2).value_and_grad(
        np.eye(3)[lab], yp)
    assert v == pytest.approx(tl.item(), rel=1e-12)
    np.testing.assert_allclose(g, x.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_keras_documented_values():
    """The numbers printed in Keras' own loss docstrings."""
    yt, yp = [[0.0, 1.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 0.0]]
    assert MeanSquaredError()(yt, yp) == pytest.approx(0.5)
    assert MeanSquaredError()(yt, yp, sample_weight=[0.7, 0.3]) == pytest.approx(0.25)
    assert MeanAbsoluteError()(yt, yp) == pytest.approx(0.5)
    yp = [[0.6, 0.4], [0.4, 0.6]]
    assert Huber()(yt, yp) == pytest.approx(0.155)
    assert BinaryCrossentropy()(yt, yp) == pytest.approx(0.815, abs=5e-4)
    assert BinaryCrossentropy()(yt, yp, sample_weight=[1, 0]) == pytest.approx(0.458, abs=5e-4)
    assert BinaryCrossentropy(from_logits=True)(
        [0, 1, 0, 0], [-18.6, 0.51, 2.94, -12.8]) == pytest.approx(0.865, abs=5e-4)
    yt3, yp3 = [[0, 1, 0], [0, 0, 1]], [[0.05, 0.95, 0], [0.1, 0.8, 0.1]]
    assert CategoricalCrossentropy()(yt3, yp3) == pytest.approx(1.177, abs=5e-4)
    assert CategoricalCrossentropy()(yt3, yp3, sample_weight=[0.3, 0.7]) == pytest.approx(
        0.814, abs=5e-4)
    assert SparseCategoricalCrossentropy()([1, 2], yp3) == pytest.approx(1.177, abs=5e-4)
    # un-normalized probabilities are divided by their sum first (TF-Keras docs: 0.3239)
    assert SparseCategoricalCrossentropy()(
        [0, 1, 2], [[0.9, 0.05, 0.05], [0.5, 0.89, 0.6], [0.05, 0.01, 0.94]]
    ) == pytest.approx(0.3239, abs=1e-4)


def test_fused_activation_from_logits_equals_chain_rule():
    rng = np.random.default_rng(10)
    z = rng.standard_normal((6, 3))
    # sigmoid + binary crossentropy
    yt = (rng.random((6, 3)) < 0.5).astype(float)
    bce = BinaryCrossentropy()
    assert bce.fusable_activation == "sigmoid"
    p = 1 / (1 + np.exp(-z))
    v, g = bce.value_and_grad_from_logits(yt, z)
    v2, g2 = bce.value_and_grad(yt, p)
    assert v == pytest.approx(v2, rel=1e-12)
    np.testing.assert_allclose(g, g2 * p * (1 - p), rtol=1e-10, atol=1e-15)
    # softmax + (sparse) categorical crossentropy
    lab = rng.integers(0, 3, 6)
    s = softmax(z)
    for loss, target in ((CategoricalCrossentropy(), np.eye(3)[lab]),
                         (SparseCategoricalCrossentropy(), lab)):
        assert loss.fusable_activation == "softmax"
        v, g = loss.value_and_grad_from_logits(target, z)
        v2, g2 = loss.value_and_grad(target, s)
        assert v == pytest.approx(v2, rel=1e-12)
        # back through softmax: dz = s * (g - sum(g * s))
        np.testing.assert_allclose(g, s * (g2 - np.sum(g2 * s, -1, keepdims=True)),
                                   rtol=1e-9, atol=1e-14)
    # saturated outputs: the fused path keeps the gradient clipping would zero
    v, g = bce.value_and_grad_from_logits(np.array([[1.0]]), np.array([[-40.0]]))
    assert v == pytest.approx(40.0) and g[0, 0] == pytest.approx(-1.0)
    assert BinaryCrossentropy(from_logits=True).fusable_activation is None
    assert MeanSquaredError().fusable_activation is None
    with pytest.raises(TypeError, match="fuse"):
        MeanSquaredError().value_and_grad_from_logits(yt, z)
