"""Metrics: values against hand-computed numbers and NumPy formulas, Keras'
accuracy resolution, weighting and the accumulating interface."""
import numpy as np
import pytest

from cylstm import losses, metrics


def test_binary_accuracy_by_hand():
    yt = np.array([[1], [0], [1], [1]])
    yp = np.array([[0.8], [0.3], [0.4], [0.9]])
    assert metrics.get("binary_accuracy")(yt, yp) == 0.75
    # (B,) labels against (B, 1) predictions, as Keras
    assert metrics.get("binary_accuracy")(yt[:, 0], yp) == 0.75
    assert metrics.BinaryAccuracy(threshold=0.85)(yt, yp) == 0.5
    np.testing.assert_array_equal(metrics.binary_accuracy(yt, yp), [1, 1, 0, 1])


def test_categorical_and_sparse_accuracy():
    yp = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.2, 0.6], [0.3, 0.4, 0.3]])
    lab = np.array([1, 0, 0, 1])
    assert metrics.get("sparse_categorical_accuracy")(lab, yp) == 0.75
    assert metrics.get("sparse_categorical_accuracy")(lab[:, None], yp) == 0.75
    assert metrics.get("categorical_accuracy")(np.eye(3)[lab], yp) == 0.75
    # sequences: (B, T) labels, (B, T, C) predictions
    seq = np.stack([yp, yp[::-1]])
    assert metrics.get("sparse_categorical_accuracy")(np.stack([lab, lab[::-1]]), seq) == 0.75


def test_top_k():
    yp = np.array([[0.1, 0.5, 0.4, 0.0], [0.6, 0.1, 0.2, 0.1], [0.25, 0.25, 0.3, 0.2]])
    lab = np.array([2, 3, 0])
    assert metrics.SparseTopKCategoricalAccuracy(k=2)(lab, yp) == pytest.approx(2 / 3)
    assert metrics.TopKCategoricalAccuracy(k=1)(np.eye(4)[lab], yp) == 0.0
    assert metrics.get("top_k_categorical_accuracy")(np.eye(4)[lab], yp) == 1.0  # k=5 >= C


@pytest.mark.parametrize("ident,flavour", [
    ("accuracy", "BinaryAccuracy"), ("acc", "BinaryAccuracy")])
def test_accuracy_resolves_binary_from_shapes(ident, flavour):
    m = metrics.get(ident)
    assert m.name == ident
    yt, yp = np.array([[1.0], [0.0]]), np.array([[0.9], [0.7]])
    assert type(m.resolve(yt, yp)).__name__ == flavour
    assert m(yt, yp) == 0.5


def test_accuracy_resolution_like_keras():
    m = metrics.get("accuracy")
    yp = np.array([[0.1, 0.9], [0.8, 0.2]])
    assert type(m.resolve(np.array([1, 0]), yp)).__name__ == "SparseCategoricalAccuracy"
    assert type(m.resolve(np.array([[1], [0]]), yp)).__name__ == "SparseCategoricalAccuracy"
    assert type(m.resolve(np.eye(2)[[1, 0]], yp)).__name__ == "CategoricalAccuracy"
    assert m(np.array([1, 1]), yp) == 0.5
    # the loss decides when it is a crossentropy (multi-label sigmoid outputs)
    mb = metrics.get("accuracy", loss="binary_crossentropy")
    yt = np.array([[1, 0, 1], [0, 0, 1]])
    yp3 = np.array([[0.9, 0.2, 0.4], [0.1, 0.3, 0.8]])
    assert type(mb.resolve(yt, yp3)).__name__ == "BinaryAccuracy"
    assert mb(yt, yp3) == pytest.approx(5 / 6)
    ms = metrics.get("accuracy", loss=losses.SparseCategoricalCrossentropy())
    assert type(ms.resolve(np.array([1, 0]), yp)).__name__ == "SparseCategoricalAccuracy"


def test_regression_metrics_against_numpy():
    rng = np.random.default_rng(0)
    yt, yp = rng.uniform(0.5, 2, (6, 3)), rng.uniform(0.5, 2, (6, 3))
    assert metrics.get("mae")(yt, yp) == pytest.approx(np.mean(np.abs(yt - yp)))
    assert metrics.get("mse")(yt, yp) == pytest.approx(np.mean((yt - yp) ** 2))
    assert metrics.get("rmse")(yt, yp) == pytest.approx(np.sqrt(np.mean((yt - yp) ** 2)))
    assert metrics.get("mape")(yt, yp) == pytest.approx(100 * np.mean(np.abs((yt - yp) / yt)))
    assert metrics.get("msle")(yt, yp) == pytest.approx(
        np.mean((np.log1p(yp) - np.log1p(yt)) ** 2))
    assert metrics.get("mae").name == "mae"
    assert metrics.get("mean_absolute_error").name == "mean_absolute_error"
    assert metrics.get("rmse").name == "rmse"
    assert metrics.RootMeanSquaredError().name == "root_mean_squared_error"


def test_crossentropy_metrics_equal_losses():
    rng = np.random.default_rng(1)
    yp = rng.uniform(0.05, 0.95, (5, 1))
    yt = (rng.random((5, 1)) < 0.5).astype(float)
    assert metrics.get("binary_crossentropy")(yt, yp) == pytest.approx(
        losses.BinaryCrossentropy()(yt, yp))
    assert metrics.get("crossentropy")(yt, yp) == pytest.approx(
        losses.BinaryCrossentropy()(yt, yp))
    logits = rng.standard_normal((5, 4))
    lab = rng.integers(0, 4, 5)
    ce = metrics.get("ce", loss=losses.SparseCategoricalCrossentropy(from_logits=True))
    assert ce(lab, logits) == pytest.approx(
        losses.SparseCategoricalCrossentropy(from_logits=True)(lab, logits))


def test_accumulating_interface_is_exact_across_batch_sizes():
    rng = np.random.default_rng(2)
    yt, yp = rng.standard_normal((10, 2)), rng.standard_normal((10, 2))
    for name in ("mae", "rmse", "mse"):
        m = metrics.get(name)
        for s, e in ((0, 3), (3, 4), (4, 10)):
            m.update_state(yt[s:e], yp[s:e])
        assert m.result() == pytest.approx(m(yt, yp), rel=1e-12)
        m.reset_state()
        assert m.result() == 0.0


def test_sample_weight():
    yt = np.array([[1.0], [0.0], [1.0]])
    yp = np.array([[0.9], [0.8], [0.1]])
    acc = metrics.get("binary_accuracy")
    assert acc(yt, yp, sample_weight=np.array([2.0, 1.0, 1.0])) == pytest.approx(0.5)
    mae = metrics.get("mae")
    w = np.array([1.0, 0.0, 3.0])
    assert mae(yt, yp, sample_weight=w) == pytest.approx((0.1 + 3 * 0.9) / 4)
    with pytest.raises(ValueError, match="sample_weight"):
        mae(yt, yp, sample_weight=np.ones(4))


def test_custom_function_and_objects():
    def max_err(y_true, y_pred):
        return np.max(np.abs(y_true - y_pred), axis=-1)

    m = metrics.get(max_err)
    assert m.name == "max_err"
    assert m(np.zeros((2, 2)), np.array([[1.0, -3.0], [0.5, 0.0]])) == pytest.approx(1.75)
    obj = metrics.BinaryAccuracy(name="acc50")
    assert metrics.get(obj) is obj
    assert metrics.get(metrics.mean_absolute_error).name == "mean_absolute_error"
    assert metrics.get(losses.binary_crossentropy).name == "binary_crossentropy"
    cfg = {"class_name": "BinaryAccuracy", "config": {"name": "b", "threshold": 0.3}}
    m = metrics.get(cfg)
    assert m.name == "b" and m.threshold == 0.3


def test_bad_input():
    with pytest.raises(ValueError, match="mae"):
        metrics.get("maee")
    with pytest.raises(TypeError):
        metrics.get(3)
    with pytest.raises(ValueError, match=r"\(4, 3\).*got y_true \(3,\)"):
        metrics.get("sparse_categorical_accuracy")(np.zeros(3), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="one-hot"):
        metrics.get("categorical_accuracy")(np.zeros(4), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="incompatible"):
        metrics.get("mae")(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(TypeError, match="y_pred"):
        metrics.get("mae")(np.zeros(3), "x")
