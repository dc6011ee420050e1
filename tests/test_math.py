"""Error bounds of the float32 activations documented in include/cylstm_math.h,
measured through the kernels' own cell (``_cell.cell_forward``, through its twin in
cylstm/_testing.pyx) on inputs that isolate one activation, at every ISA level this
CPU has (the AVX-512 cell computes them with its own intrinsics), and on the scalar
functions themselves.

The cell is the one the kernels call (forward, backward and the streaming step; see
cylstm/_cell.pxd), so these bounds hold for them; test_cell_is_the_kernels_cell pins
that link through lstm_forward on a layer small enough to run in milliseconds."""
import numpy as np
import pytest

from cylstm import _cpu
from cylstm import _testing as T
from cylstm.functional import lstm_forward

LEVELS = [pytest.param(n, id=["baseline", "avx2", "avx512"][n],
                       marks=pytest.mark.skipif(n > T.detected_level(),
                                                reason="this CPU lacks the level"))
          for n in (2, 1, 0)]
TANH_BOUND = {"abs": 2.0e-7, "rel": 4e-7, "rel_from": 1e-3}   # cylstm_math.h
SIGMOID_BOUND = {"abs": 2.0e-7, "rel": 4e-7}


@pytest.fixture(params=LEVELS)
def level(request):
    previous = T.force_cpu_level(request.param)
    try:
        assert T.cpu_level() == request.param
        yield request.param
    finally:
        T.force_cpu_level(previous)


def _cell32(zi, zf, zg, zo):
    """One step from h0 = c0 = 0, z = bias (x_t @ W + h_prev @ U = 0): returns c, h."""
    n = zi.size
    bias = np.concatenate([zi, zf, zg, zo]).astype(np.float32)
    _, c, h = T.cell_forward(np.zeros(4 * n, np.float32), bias, np.zeros(n, np.float32))
    return c, h


def _check_tanh(got, z):
    got = got.astype(np.float64)
    ref = np.tanh(z.astype(np.float64))
    err = np.abs(got - ref)
    assert err.max() <= TANH_BOUND["abs"]
    big = np.abs(ref) > TANH_BOUND["rel_from"]
    assert (err[big] / np.abs(ref[big])).max() <= TANH_BOUND["rel"]


def _check_sigmoid(got, z):
    got = got.astype(np.float64)
    ref = 1 / (1 + np.exp(-z.astype(np.float64)))
    err = np.abs(got - ref)
    assert err.max() <= SIGMOID_BOUND["abs"]
    assert (err / ref).max() <= SIGMOID_BOUND["rel"]


def test_tanh_error_bound(level):
    """c = sigmoid(z_i) tanh(z_g) with z_i = +40 (sigmoid = 1 exactly): c = tanh(z)."""
    z = np.linspace(-12, 12, 20001).astype(np.float32)
    ones = np.full_like(z, 40.0)
    c, _ = _cell32(ones, np.zeros_like(z), z, ones)
    _check_tanh(c, z)


def test_sigmoid_error_bound(level):
    """c = sigmoid(z_i) tanh(z_g) with z_g = +40 (tanh = 1 exactly): c = sigmoid(z)."""
    z = np.linspace(-30, 30, 20001).astype(np.float32)
    c, _ = _cell32(z, np.zeros_like(z), np.full_like(z, 40.0), np.zeros_like(z))
    _check_sigmoid(c, z)


def test_error_bounds_on_the_header_range(level):
    """cylstm_math.h states the bounds measured over 2e6 points on [-20, 20]; the
    cell's gates (i, f, o: sigmoid; g: tanh) and tanh(c) of its output all meet them."""
    z = np.linspace(-20, 20, 2_000_001).astype(np.float32)
    bias = np.concatenate([z, z, z, z])
    gates, _, _ = T.cell_forward(np.zeros_like(bias), bias, np.zeros_like(z))
    for k in (0, 1, 3):
        _check_sigmoid(gates[k * z.size:(k + 1) * z.size], z)
    _check_tanh(gates[2 * z.size:3 * z.size], z)
    # h = o tanh(c) with o = 1: tanh of the cell (c = tanh(z) here, |c| < 1)
    ones = np.full_like(z, 40.0)
    c, h = _cell32(ones, np.zeros_like(z), z, ones)
    _check_tanh(h, c)


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_scalar_activations_meet_the_bounds(name):
    """The scalar functions (_cell.sigmoid / tanh_: the streaming runner's Dense heads)."""
    lo = -30 if name == "sigmoid" else -12
    z = np.linspace(lo, -lo, 200_001).astype(np.float32)
    (_check_sigmoid if name == "sigmoid" else _check_tanh)(getattr(T, name)(z), z)


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_float64_activations_are_libm(name):
    z = np.linspace(-30, 30, 20001)
    ref = 1 / (1 + np.exp(-z)) if name == "sigmoid" else np.tanh(z)
    np.testing.assert_allclose(getattr(T, name)(z), ref, rtol=1e-15, atol=1e-16)


def test_cell_is_the_kernels_cell():
    """lstm_forward on a 257-unit layer gives the twin's c and h: the bounds above are
    the kernels' (both run the level the CPU has)."""
    n = 257
    z = np.linspace(-12, 12, 4 * n).astype(np.float32)
    zi, zf, zg, zo = z[:n], z[n:2 * n], z[2 * n:3 * n], z[3 * n:]
    c_twin, h_twin = _cell32(zi, zf, zg, zo)
    out = lstm_forward(np.ones((1, 1, 1), np.float32), np.zeros((1, 4 * n), np.float32),
                       np.zeros((n, 4 * n), np.float32), z)
    np.testing.assert_allclose(out.c[0], c_twin, rtol=0, atol=1e-7)
    np.testing.assert_allclose(out.h[0], h_twin, rtol=0, atol=1e-7)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows,hb,hp", [(32, 16, 16), (7, 13, 16), (1, 16, 16), (5, 3, 8)])
def test_cell_rows_is_the_cell_row_by_row(level, dtype, rows, hb, hp):
    """The cell over all rows of a panel in one call (each pass over every row) has the
    bits of one cell call per row, masked last vectors (hb = 13, 3) included."""
    rng = np.random.default_rng(rows * hb)
    z = (rng.standard_normal((rows, 4 * hp)) * 4).astype(dtype)
    bias = rng.standard_normal(4 * hp).astype(dtype)
    c0 = rng.standard_normal((rows, hb)).astype(dtype)
    with _cpu.forced_level(level):
        gates, c, h = T.cell_rows(z, bias, c0, hb)
        for r in range(rows):
            za = np.concatenate([z[r, g * hp:g * hp + hb] for g in range(4)])
            bb = np.concatenate([bias[g * hp:g * hp + hb] for g in range(4)])
            g1, c1, h1 = T.cell_forward(za, bb, c0[r])
            got = np.concatenate([gates[r, g * hp:g * hp + hb] for g in range(4)])
            assert np.array_equal(got, g1) and np.array_equal(c[r], c1), r
            assert np.array_equal(h[r], h1), r
    # the padding columns past hb are left as they were
    for g in range(4):
        assert np.array_equal(gates[:, g * hp + hb:(g + 1) * hp], z[:, g * hp + hb:(g + 1) * hp])
