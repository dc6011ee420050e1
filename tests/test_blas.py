"""The one doorway to BLAS (cylstm/_blas.pxd), tested directly against numpy.matmul
through the def twins in cylstm/_testing.pyx: every transpose case, float32 and
float64, alpha and beta, leading dimensions wider than the rows (slices of a wider
array, as the kernels pass gate blocks), and gemm_tiled's row, column and K tiles.
(scikit-learn's sklearn/utils/tests/test_cython_blas.py is the model.)"""
import numpy as np
import pytest

from cylstm import _testing as T

DTYPES = [np.float32, np.float64]
# the products sum k terms; float32 rounding grows about like sqrt(k) (random signs)
TOL = {np.float32: {"rtol": 1e-5, "atol": 2e-6}, np.float64: {"rtol": 1e-13, "atol": 1e-14}}
# (alpha, beta): plain product, scaled, accumulate, both
SCALES = [(1.0, 0.0), (2.5, 0.0), (1.0, 1.0), (-0.5, 1.5)]
# gemm_tiled's constants in _blas.pxd
TILE_VOLUME, TILE_ROWS, TILE_K = 524288, 8, 256


def _tol(dtype, k):
    t = TOL[dtype]
    return {"rtol": t["rtol"] * np.sqrt(max(k, 1)), "atol": t["atol"] * np.sqrt(max(k, 1))}


def _matrix(rng, rows, cols, dtype, pad=0):
    """A (rows, cols) matrix; with ``pad`` a slice of a wider one, so that its row
    stride (BLAS's leading dimension) is cols + pad, not cols."""
    full = rng.standard_normal((rows, cols + pad)).astype(dtype)
    return full[:, pad // 2:pad // 2 + cols]


def _ref(alpha, opa, opb, beta, c):
    """float64 reference of alpha op(A) @ op(B) + beta C (C read before it is written)."""
    return alpha * np.matmul(opa.astype(np.float64), opb.astype(np.float64)) + beta * c


# ---------------------------------------------------------------------------------- gemm
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a", [False, True], ids=["A", "At"])
@pytest.mark.parametrize("trans_b", [False, True], ids=["B", "Bt"])
@pytest.mark.parametrize("alpha,beta", SCALES)
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (1, 7, 5), (6, 1, 4), (5, 3, 1), (17, 33, 9)])
@pytest.mark.parametrize("pad", [0, 3])
def test_gemm(dtype, trans_a, trans_b, alpha, beta, m, n, k, pad):
    rng = np.random.default_rng(m * 100 + n * 10 + k)
    a = _matrix(rng, k, m, dtype, pad) if trans_a else _matrix(rng, m, k, dtype, pad)
    b = _matrix(rng, n, k, dtype, pad) if trans_b else _matrix(rng, k, n, dtype, pad)
    c = _matrix(rng, m, n, dtype, pad)
    want = _ref(alpha, a.T if trans_a else a, b.T if trans_b else b, beta, c)
    c_full = c.base.copy() if pad else None
    T.gemm(trans_a, trans_b, alpha, a, b, beta, c)
    np.testing.assert_allclose(c, want, **_tol(dtype, k))
    if pad:  # the wrapper writes the (m, n) block and nothing of the padding around it
        left = pad // 2
        np.testing.assert_array_equal(c.base[:, :left], c_full[:, :left])
        np.testing.assert_array_equal(c.base[:, left + n:], c_full[:, left + n:])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a", [False, True], ids=["A", "At"])
@pytest.mark.parametrize("trans_b", [False, True], ids=["B", "Bt"])
def test_gemm_beta_zero_ignores_what_c_held(dtype, trans_a, trans_b):
    """beta = 0 overwrites C without reading it (BLAS's contract): the kernels hand
    gemm np.empty buffers, which may hold NaN."""
    rng = np.random.default_rng(1)
    m, n, k = 4, 5, 3
    a = _matrix(rng, k, m, dtype) if trans_a else _matrix(rng, m, k, dtype)
    b = _matrix(rng, n, k, dtype) if trans_b else _matrix(rng, k, n, dtype)
    c = np.full((m, n), np.nan, dtype)
    T.gemm(trans_a, trans_b, 1.0, a, b, 0.0, c)
    np.testing.assert_allclose(c, (a.T if trans_a else a) @ (b.T if trans_b else b),
                               **_tol(dtype, k))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_empty_output_is_a_no_op(dtype):
    """m = 0 or n = 0 returns before calling BLAS."""
    rng = np.random.default_rng(2)
    for m, n in ((0, 3), (3, 0)):
        c = np.empty((m, n), dtype)
        T.gemm(False, False, 1.0, _matrix(rng, m, 4, dtype), _matrix(rng, 4, n, dtype), 0.0, c)
        assert c.shape == (m, n)


def test_twin_refuses_shapes_that_do_not_chain():
    a, b, c = np.ones((3, 4)), np.ones((5, 2)), np.zeros((3, 2))
    with pytest.raises(ValueError, match=r"b must have shape \(4, 2\); got \(5, 2\)"):
        T.gemm(False, False, 1.0, a, b, 0.0, c)


# ---------------------------------------------------------------------------------- gemv
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha,beta", SCALES)
@pytest.mark.parametrize("k,n", [(1, 1), (1, 9), (8, 1), (13, 40)])
@pytest.mark.parametrize("pad", [0, 3])
def test_gemv_rowvec(dtype, alpha, beta, k, n, pad):
    rng = np.random.default_rng(k * 10 + n)
    x = rng.standard_normal(k).astype(dtype)
    b = _matrix(rng, k, n, dtype, pad)
    y = rng.standard_normal(n).astype(dtype)
    want = _ref(alpha, x[None], b, beta, y[None])[0]
    T.gemv_rowvec(alpha, x, b, beta, y)
    np.testing.assert_allclose(y, want, **_tol(dtype, k))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha,beta", SCALES)
@pytest.mark.parametrize("k,n", [(1, 1), (1, 9), (8, 1), (13, 40)])
@pytest.mark.parametrize("pad", [0, 3])
def test_gemv_rowvec_t(dtype, alpha, beta, k, n, pad):
    rng = np.random.default_rng(k * 10 + n + 1)
    x = rng.standard_normal(k).astype(dtype)
    b = _matrix(rng, n, k, dtype, pad)
    y = rng.standard_normal(n).astype(dtype)
    want = _ref(alpha, x[None], b.T, beta, y[None])[0]
    T.gemv_rowvec_t(alpha, x, b, beta, y)
    np.testing.assert_allclose(y, want, **_tol(dtype, k))


# -------------------------------------------------------------------------------- matmul
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_b", [False, True], ids=["B", "Bt"])
@pytest.mark.parametrize("alpha,beta", SCALES)
@pytest.mark.parametrize("m", [1, 2, 7])  # one row goes to gemv, more to gemm
def test_matmul(dtype, trans_b, alpha, beta, m):
    rng = np.random.default_rng(m)
    n, k = 11, 6
    a = _matrix(rng, m, k, dtype, 2)
    b = _matrix(rng, n, k, dtype, 2) if trans_b else _matrix(rng, k, n, dtype, 2)
    c = _matrix(rng, m, n, dtype, 2)
    want = _ref(alpha, a, b.T if trans_b else b, beta, c)
    T.matmul(trans_b, alpha, a, b, beta, c)
    np.testing.assert_allclose(c, want, **_tol(dtype, k))


# ---------------------------------------------------------------------------- gemm_tiled
# (m, n, k) for each of gemm_tiled's branches:
TILED = {
    "one_row_gemv": (1, 300, 1000),
    "small_volume_one_gemm": (4, 64, 64),
    "rows_under_a_tile": (5, 300, 400),        # mt = m, one K tile (k <= 2 TILE_K)
    "k_at_two_tiles_bound": (9, 200, 512),     # one K tile of 512, column tiles of 128
    "k_one_past_bound": (8, 150, 513),         # K tiles 256, 256, 1
    "ragged_everything": (19, 301, 1000),      # row tiles 8, 8, 3; K tiles 256 x3 + 232
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_b", [False, True], ids=["B", "Bt"])
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (1.0, 1.0), (0.75, -0.5)])
@pytest.mark.parametrize("case", list(TILED))
def test_gemm_tiled(dtype, trans_b, alpha, beta, case):
    """Every tile, and beta applied once (on the first K tile, then accumulated)."""
    m, n, k = TILED[case]
    rng = np.random.default_rng(m + n + k)
    a = _matrix(rng, m, k, dtype, 4)
    b = _matrix(rng, n, k, dtype, 4) if trans_b else _matrix(rng, k, n, dtype, 4)
    c0 = _matrix(rng, m, n, dtype, 4)
    want = _ref(alpha, a, b.T if trans_b else b, beta, c0)
    outs = []
    for rev in (False, True):
        c = c0.copy()
        T.gemm_tiled(trans_b, alpha, a, b, beta, c, rev=rev)
        np.testing.assert_allclose(c, want, **_tol(dtype, k))
        outs.append(c)
    # the column tiles are visited in the other order, each computed the same
    np.testing.assert_array_equal(outs[0], outs[1])


def test_tiled_cases_reach_the_branches_they_name():
    """Keep TILED honest against gemm_tiled's constants."""
    for name, (m, n, k) in TILED.items():
        tiled = m > 1 and m * n * k > TILE_VOLUME
        assert tiled == (name not in ("one_row_gemv", "small_volume_one_gemm")), name
    m, n, k = TILED["ragged_everything"]
    assert m % TILE_ROWS and k > 2 * TILE_K and k % TILE_K
    assert TILED["k_at_two_tiles_bound"][2] == 2 * TILE_K
    assert TILED["k_one_past_bound"][2] == 2 * TILE_K + 1
