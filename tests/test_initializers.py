"""Initializers: Keras' distributions (moments, bounds), fans, seeding, names."""
import json

import numpy as np
import pytest

from cylstm import initializers as I


def test_compute_fans():
    assert I.compute_fans(()) == (1, 1)
    assert I.compute_fans((7,)) == (7, 7)
    assert I.compute_fans((3, 5)) == (3, 5)
    assert I.compute_fans((2, 4, 3, 5)) == (3 * 8, 5 * 8)


@pytest.mark.parametrize("name,kind,var", [
    ("glorot_uniform", "uniform", lambda fi, fo: 2.0 / (fi + fo)),
    ("glorot_normal", "normal", lambda fi, fo: 2.0 / (fi + fo)),
    ("he_uniform", "uniform", lambda fi, fo: 2.0 / fi),
    ("he_normal", "normal", lambda fi, fo: 2.0 / fi),
    ("lecun_uniform", "uniform", lambda fi, fo: 1.0 / fi),
    ("lecun_normal", "normal", lambda fi, fo: 1.0 / fi),
])
def test_variance_scaling_family(name, kind, var):
    shape = (300, 500)
    w = I.get(name)(shape, np.float64, np.random.default_rng(0))
    v = var(*shape)
    assert w.shape == shape and w.dtype == np.float64
    assert abs(w.mean()) < 0.01 * np.sqrt(v) * 10
    assert w.var() == pytest.approx(v, rel=0.02)
    if kind == "uniform":
        assert np.abs(w).max() <= np.sqrt(3 * v)
    else:  # truncated at 2 std of the *untruncated* (rescaled) normal
        assert np.abs(w).max() <= 2 * np.sqrt(v) / 0.87962566103423978


def test_random_defaults_match_keras():
    rng = np.random.default_rng(1)
    w = I.get("random_normal")((400, 400), rng=rng)
    assert w.dtype == np.float32
    assert w.std() == pytest.approx(0.05, rel=0.02)
    u = I.get("random_uniform")((400, 400), rng=rng)
    assert u.min() >= -0.05 and u.max() <= 0.05
    t = I.get("truncated_normal")((400, 400), rng=rng)
    assert np.abs(t).max() <= 0.1
    assert t.std() == pytest.approx(0.05 * 0.87962566103423978, rel=0.02)


@pytest.mark.parametrize("shape", [(6, 24), (24, 6), (5, 5), (2, 3, 8)])
def test_orthogonal(shape):
    w = I.Orthogonal(gain=1.5)(shape, np.float64, np.random.default_rng(2))
    assert w.shape == shape
    m = w.reshape(-1, shape[-1])
    small = min(m.shape)
    gram = m @ m.T if m.shape[0] == small else m.T @ m
    np.testing.assert_allclose(gram, 1.5 ** 2 * np.eye(small), atol=1e-12)


def test_constants():
    np.testing.assert_array_equal(I.get("zeros")((2, 3)), np.zeros((2, 3), np.float32))
    np.testing.assert_array_equal(I.get("ones")(4, np.float64), np.ones(4))
    np.testing.assert_array_equal(I.Constant(2.5)((2,)), [2.5, 2.5])
    np.testing.assert_array_equal(I.Identity(2.0)((2, 3)), 2.0 * np.eye(2, 3))


def test_seeding():
    a = I.GlorotUniform(seed=3)((4, 5))
    b = I.GlorotUniform(seed=3)((4, 5))
    np.testing.assert_array_equal(a, b)
    # a seeded initializer ignores rng and repeats itself, as Keras' do
    np.testing.assert_array_equal(I.GlorotUniform(seed=3)((4, 5), rng=np.random.default_rng(9)), a)
    r1 = I.get("orthogonal")((4, 4), rng=np.random.default_rng(5))
    r2 = I.get("orthogonal")((4, 4), rng=np.random.default_rng(5))
    np.testing.assert_array_equal(r1, r2)
    rng = np.random.default_rng(5)
    g = I.get("glorot_normal")
    assert not np.array_equal(g((4, 4), rng=rng), g((4, 4), rng=rng))


def test_get_and_config():
    assert isinstance(I.get("glorot_uniform"), I.GlorotUniform)
    assert isinstance(I.get("GlorotUniform"), I.GlorotUniform)
    assert isinstance(I.get("Orthogonal"), I.Orthogonal)
    assert I.get(None) is None

    def f(shape, dtype=None, rng=None):
        return np.zeros(shape)

    assert I.get(f) is f
    init = I.VarianceScaling(scale=2.0, mode="fan_out", distribution="uniform", seed=4)
    again = I.get(json.loads(json.dumps(I.serialize(init))))
    np.testing.assert_array_equal(again((3, 3)), init((3, 3)))
    with pytest.raises(ValueError, match="glorot_uniform.*orthogonal"):
        I.get("glorot")
    with pytest.raises(TypeError):
        I.get(1.5)


def test_bad_input():
    with pytest.raises(TypeError, match="dtype"):
        I.get("zeros")((2,), np.int32)
    with pytest.raises(ValueError, match="shape"):
        I.get("zeros")((2, -1))
    with pytest.raises(ValueError, match="2 dims"):
        I.Orthogonal()((5,))
    with pytest.raises(ValueError, match="mode"):
        I.VarianceScaling(mode="fan_max")
    with pytest.raises(TypeError, match="seed"):
        I.GlorotUniform(seed="x")
    with pytest.raises(TypeError, match="rng"):
        I.get("glorot_uniform")((2, 2), rng="x")
