"""The int8 panel product at its doorway (include/cylstm_panel.h,
``cyl_panel_i8``, through cylstm._testing): int8 weights in the k-pair
layout, rows quantized to int16 per row.  Its integer sums are exact, so every
ISA level must give the float32 result of the documented formula bit for bit:

    z[r, j] = fma(float32(sum bq q_b) * sb[j], rb[r], float32(sum aq q_a) * sa[j] * ra[r])
"""
import numpy as np
import pytest
from isa_levels import LEVELS

from cylstm import _cpu, _testing


def _qmax(k2):
    return min(32767, (2 ** 31 - 1) // (128 * k2))


def _pack(qa, qb, w):
    """One panel in the documented layout, written apart from cylstm.stream: each
    part padded to even rows and 8-column groups, stored as k pairs."""
    wp = -(-w // 8) * 8
    out = []
    for q in (qa, qb):
        if q.shape[0] == 0:
            continue
        k2 = q.shape[0] + q.shape[0] % 2
        Q = np.zeros((k2, wp), np.int8)
        Q[:q.shape[0], :w] = q
        for t in range(k2 // 2):
            for g in range(wp // 8):
                for c in range(8):
                    out += [Q[2 * t, 8 * g + c], Q[2 * t + 1, 8 * g + c]]
    return np.array(out, np.int8)


def _exact(qa, qb, aq, bq, sa, sb, ra, rb, w):
    """The formula, from exact int64 sums and float32 operations (the fma as an
    exact float64 product plus one float64 sum, then rounded to float32)."""
    f32 = np.float32
    ka, kb = qa.shape[0], qb.shape[0]
    acc_a = aq[:, :ka].astype(np.int64) @ qa.astype(np.int64)
    z = (acc_a.astype(f32) * sa[:w]) * ra[:, None]
    if kb:
        acc_b = bq[:, :kb].astype(np.int64) @ qb.astype(np.int64)
        t = acc_b.astype(f32) * sb[:w]
        z = (t.astype(np.float64) * rb[:, None].astype(np.float64) + z).astype(f32)
    return z


@pytest.mark.parametrize("k2", [2, 14, 512, 524, 768, 1100, 2048, 100000])
def test_qmax_keeps_every_int32_sum_from_overflowing(k2):
    q = _testing.i8q_qmax(k2)
    assert q == _qmax(k2)
    assert k2 * 127 * q < 2 ** 31


def test_quantize_rounds_each_row_as_the_reference():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 37)).astype(np.float32)
    x[1] = 0                     # a zero row: scale 0, every q 0
    x[2, 5] = 1e30               # one huge value: the rest round to 0
    x[3] = np.linspace(-1, 1, 37, dtype=np.float32)
    qmax = np.float32(_qmax(40))
    q, s = _testing.i8q_quantize(x, 40, qmax)
    m = np.abs(x).max(axis=1, keepdims=True)
    inv = np.where(m > 0, qmax / np.where(m > 0, m, 1), 0).astype(np.float32)
    np.testing.assert_array_equal(q[:, :37], np.rint(x * inv).astype(np.int16))
    np.testing.assert_array_equal(q[:, 37:], 0)
    np.testing.assert_array_equal(s, (m[:, 0] / qmax).astype(np.float32))
    assert np.abs(q).max() <= qmax and q[1].max() == q[1].min() == 0 and s[1] == 0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_row_with_nan_or_inf_gives_nan_not_a_finite_answer(bad):
    """As the float32 kernels propagate a NaN or an infinity into their outputs, a
    quantized row holding one has scale NaN (its q are 0); the other rows are
    untouched."""
    x = np.linspace(-1, 1, 3 * 10, dtype=np.float32).reshape(3, 10)
    x[1, 4] = bad
    q, s = _testing.i8q_quantize(x, 10, np.float32(_qmax(10)))
    assert np.isnan(s[1]) and not q[1].any()
    assert np.isfinite(s[[0, 2]]).all() and q[0].any() and q[2].any()
    P = _pack(np.ones((10, 8), np.int8), np.zeros((0, 8), np.int8), 8)
    z = _testing.i8q_panel(P, np.ones(8, np.float32), np.ones(8, np.float32), 8, q, s,
                           np.zeros((3, 0), np.int16), np.zeros(3, np.float32))
    assert np.isnan(z[1]).all() and np.isfinite(z[[0, 2]]).all()


@pytest.fixture(params=[True, False], ids=["vnni-if-any", "no-vnni"])
def vnni(request):
    """The AVX-512 body with VNNI where the CPU has it, and without (its other path)."""
    previous = _testing.i8q_allow_vnni(request.param)
    yield request.param
    _testing.i8q_allow_vnni(previous)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("w", [8, 20, 25, 36, 64, 72, 136])
@pytest.mark.parametrize("ka,kb", [(1, 3), (5, 13), (7, 20), (64, 0), (255, 512)])
def test_panel_gives_the_exact_formula_at_every_level(level, w, ka, kb, vnni):
    """Widths with a padded last group (20, 36), odd parts, odd and even numbers of
    k pairs (the kernel takes two per iteration), no b part (Dense), 1-9
    rows (the four-row and one-row blocks), and the extreme values: weights of
    +-127 and activations of +-qmax, where the int32 sums come nearest overflow."""
    rng = np.random.default_rng(ka * 1000 + kb + w)
    qa = rng.integers(-127, 128, (ka, w)).astype(np.int8)
    qb = rng.integers(-127, 128, (kb, w)).astype(np.int8)
    ka2, kb2 = ka + ka % 2, kb + kb % 2
    qmax = _qmax(max(ka2, kb2))
    n = 9
    aq = np.zeros((n, ka2), np.int16)
    bq = np.zeros((n, max(kb2, 0)), np.int16)
    aq[:, :ka] = rng.integers(-qmax, qmax + 1, (n, ka))
    bq[:, :kb] = rng.integers(-qmax, qmax + 1, (n, kb))
    qa[:, 0], aq[0, :ka] = 127, qmax          # column 0 of row 0: the largest sum
    if kb:
        qb[:, 0], bq[0, :kb] = -127, qmax
    wp = -(-w // 8) * 8
    sa = np.zeros(wp, np.float32)
    sb = np.zeros(wp, np.float32)
    sa[:w] = rng.uniform(1e-3, 1e-2, w)
    sb[:w] = rng.uniform(1e-3, 1e-2, w)
    ra = rng.uniform(1e-5, 1e-4, n).astype(np.float32)
    rb = rng.uniform(1e-5, 1e-4, n).astype(np.float32)
    P = _pack(qa, qb, w)
    want = _exact(qa, qb, aq, bq, sa, sb, ra, rb, w)
    with _cpu.forced_level(level):
        got = _testing.i8q_panel(P, sa, sb, w, aq, ra, bq, rb)
        np.testing.assert_array_equal(got, want)
        if kb:   # the a part alone (kb2 = 0), then the b part added: the same bits
            za = _testing.i8q_panel(P[:ka2 * wp], sa, sb, w, aq, ra,
                                    np.zeros((n, 0), np.int16), rb)
            _testing.i8q_panel_b(P, sb, w, ka2, bq, rb, za)
            np.testing.assert_array_equal(za, want)
        for rows in (1, 2, 5):    # blocks of other sizes: the same bits per row
            part = _testing.i8q_panel(P, sa, sb, w, aq[:rows].copy(), ra[:rows].copy(),
                                      bq[:rows].copy(), rb[:rows].copy())
            np.testing.assert_array_equal(part, want[:rows])
