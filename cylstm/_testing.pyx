"""Python twins of the ``nogil`` doorways, for the tests only.

The kernels reach BLAS through ``_blas.pxd`` and compute every gate through
``_cell.pxd``; both are ``cdef inline`` and so invisible from Python.  Each
function here calls exactly one of them on NumPy arrays, so that
tests/test_blas.py and tests/test_math.py check them against NumPy directly
instead of only through a whole LSTM.  Nothing in cylstm imports this module.

Matrices are 2-D arrays whose rows may be strided (a slice of a wider array:
its row stride is the BLAS leading dimension) but whose elements within a row
are contiguous; all arguments of one call share one dtype (float32 or
float64).  The products write into ``c`` (or ``y``) in place, as the wrappers
do, so that ``beta`` has something to scale.
"""
from cython cimport floating

from cylstm._blas cimport gemm as _gemm
from cylstm._blas cimport gemm_tiled as _gemm_tiled
from cylstm._blas cimport gemv_rowvec as _gemv_rowvec
from cylstm._blas cimport gemv_rowvec_t as _gemv_rowvec_t
from cylstm._blas cimport matmul as _matmul
from cylstm._cell cimport bf16_round as _bf16_round
from cylstm._cell cimport cell_backward as _cell_backward
from cylstm._cell cimport cell_forward as _cell_forward
from cylstm._cell cimport cell_forward_rows as _cell_forward_rows
from cylstm._cell cimport sigmoid as _sigmoid
from cylstm._cell cimport tanh_ as _tanh
from cylstm._isa cimport cyl_cpu_detected_level, cyl_cpu_force, cyl_cpu_level

import numpy as np


cdef int _ld(const floating[:, :] a, str name) except -1:
    """The leading dimension (row stride in elements) BLAS reads ``a`` with."""
    if a.shape[1] > 1 and a.strides[1] != sizeof(floating):
        raise ValueError(f"{name} must have contiguous rows; got element stride "
                         f"{a.strides[1]} bytes")
    if a.shape[0] <= 1 or a.shape[1] == 0:
        return max(1, a.shape[1])
    if a.strides[0] % sizeof(floating) or a.strides[0] < a.shape[1] * <Py_ssize_t> sizeof(floating):
        raise ValueError(f"{name} must have a positive row stride of at least its width; "
                         f"got strides ({a.strides[0]}, {a.strides[1]})")
    return a.strides[0] // sizeof(floating)


cdef inline const floating* _p(const floating[:, :] a) noexcept nogil:
    """The first element, or NULL for an empty matrix (BLAS then reads nothing)."""
    if a.shape[0] == 0 or a.shape[1] == 0:
        return NULL
    return &a[0, 0]


cdef inline const floating* _p1(const floating[::1] x) noexcept nogil:
    if x.shape[0] == 0:
        return NULL
    return &x[0]


cdef int _check_shape(str name, const floating[:, :] a, Py_ssize_t rows,
                      Py_ssize_t cols) except -1:
    if a.shape[0] != rows or a.shape[1] != cols:
        raise ValueError(f"{name} must have shape ({rows}, {cols}); "
                         f"got ({a.shape[0]}, {a.shape[1]})")
    return 0


def gemm(bint trans_a, bint trans_b, double alpha, const floating[:, :] a,
         const floating[:, :] b, double beta, floating[:, :] c):
    """``c = alpha op(a) @ op(b) + beta c`` through ``_blas.gemm``.

    ``op(a)`` is ``a`` (m, k), or ``a.T`` with ``trans_a`` (``a`` then lies
    as (k, m)); likewise ``op(b)`` is (k, n).  ``c`` is (m, n).
    """
    cdef int m = c.shape[0], n = c.shape[1]
    cdef int k = a.shape[0] if trans_a else a.shape[1]
    _check_shape("a", a, k if trans_a else m, m if trans_a else k)
    _check_shape("b", b, n if trans_b else k, k if trans_b else n)
    cdef int lda = _ld(a, "a"), ldb = _ld(b, "b"), ldc = _ld(c, "c")
    with nogil:
        _gemm(trans_a, trans_b, m, n, k, <floating> alpha, _p(a), lda, _p(b), ldb,
              <floating> beta, <floating*> _p(c), ldc)


def gemv_rowvec(double alpha, const floating[::1] x, const floating[:, :] b, double beta,
                floating[::1] y):
    """``y = alpha x @ b + beta y`` through ``_blas.gemv_rowvec``; ``b`` is (k, n)."""
    cdef int k = x.shape[0], n = y.shape[0]
    _check_shape("b", b, k, n)
    cdef int ldb = _ld(b, "b")
    with nogil:
        _gemv_rowvec(k, n, <floating> alpha, _p1(x), _p(b), ldb, <floating> beta,
                     <floating*> _p1(y))


def gemv_rowvec_t(double alpha, const floating[::1] x, const floating[:, :] b, double beta,
                  floating[::1] y):
    """``y = alpha x @ b.T + beta y`` through ``_blas.gemv_rowvec_t``; ``b`` is (n, k)."""
    cdef int k = x.shape[0], n = y.shape[0]
    _check_shape("b", b, n, k)
    cdef int ldb = _ld(b, "b")
    with nogil:
        _gemv_rowvec_t(k, n, <floating> alpha, _p1(x), _p(b), ldb, <floating> beta,
                       <floating*> _p1(y))


def matmul(bint trans_b, double alpha, const floating[:, :] a, const floating[:, :] b,
           double beta, floating[:, :] c):
    """``c = alpha a @ op(b) + beta c`` through ``_blas.matmul`` (gemv for one row)."""
    cdef int m = c.shape[0], n = c.shape[1], k = a.shape[1]
    _check_shape("a", a, m, k)
    _check_shape("b", b, n if trans_b else k, k if trans_b else n)
    cdef int lda = _ld(a, "a"), ldb = _ld(b, "b"), ldc = _ld(c, "c")
    with nogil:
        _matmul(trans_b, m, n, k, <floating> alpha, _p(a), lda, _p(b), ldb,
                <floating> beta, <floating*> _p(c), ldc)


def gemm_tiled(bint trans_b, double alpha, const floating[:, :] a, const floating[:, :] b,
               double beta, floating[:, :] c, bint rev=False):
    """``c = alpha a @ op(b) + beta c`` through ``_blas.gemm_tiled`` (K, row and
    column tiles; ``rev`` visits the column tiles last to first)."""
    cdef int m = c.shape[0], n = c.shape[1], k = a.shape[1]
    _check_shape("a", a, m, k)
    _check_shape("b", b, n if trans_b else k, k if trans_b else n)
    cdef int lda = _ld(a, "a"), ldb = _ld(b, "b"), ldc = _ld(c, "c")
    with nogil:
        _gemm_tiled(trans_b, m, n, k, <floating> alpha, _p(a), lda, _p(b), ldb,
                    <floating> beta, <floating*> _p(c), ldc, rev)


def _activation(const floating[::1] x, floating[::1] y, bint is_tanh):
    cdef Py_ssize_t j
    with nogil:
        for j in range(x.shape[0]):
            y[j] = _tanh(x[j]) if is_tanh else _sigmoid(x[j])


def sigmoid(x):
    """``_cell.sigmoid`` (cylstm_math.h's scalar function) elementwise over a 1-D array."""
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    _activation(x, y, False)
    return y


def tanh(x):
    """``_cell.tanh_`` (cylstm_math.h's scalar function) elementwise over a 1-D array."""
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    _activation(x, y, True)
    return y


def _bf16_round_array(const float[::1] x, float[::1] y):
    cdef Py_ssize_t j
    with nogil:
        for j in range(x.shape[0]):
            y[j] = _bf16_round(x[j])


def bf16_round(x):
    """``_cell.bf16_round`` (cylstm_math.h's ``cyl_bf16_roundf``, what the kernels round
    the mixed_bfloat16 policy's operands with) elementwise over a 1-D float32 array."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.empty_like(x)
    _bf16_round_array(x, y)
    return y


def _cell_fw(const floating[::1] za, const floating[::1] bias, const floating[::1] c_prev,
             floating[::1] gates, floating[::1] c, floating[::1] h):
    with nogil:
        _cell_forward(h.shape[0], &za[0], NULL, &bias[0], &c_prev[0], &gates[0], &c[0], &h[0])


def cell_forward(za, bias, c_prev):
    """One step of one sample through ``_cell.cell_forward`` (the kernels' cell).

    ``za`` (4H,) is ``x_t @ W + h_prev @ U`` and ``bias`` (4H,) is ``b``, so
    ``z = za + bias``; ``c_prev`` is (H,).  Returns ``(gates, c, h)``: the
    activated gates [i|f|g|o] (4H,), the new cell and the new hidden state (H,).
    The cell runs the ISA variant of :func:`cpu_level`.
    """
    za, bias, c_prev = (np.ascontiguousarray(v) for v in (za, bias, c_prev))
    H = c_prev.shape[0]
    if za.shape != (4 * H,) or bias.shape != (4 * H,):
        raise ValueError(f"za and bias must have shape ({4 * H},); got {za.shape}, {bias.shape}")
    gates, c, h = np.empty_like(za), np.empty_like(c_prev), np.empty_like(c_prev)
    _cell_fw(za, bias, c_prev, gates, c, h)
    return gates, c, h


def _cell_rows(Py_ssize_t hb, Py_ssize_t hp, floating[:, ::1] z, const floating[::1] bias,
               floating[:, ::1] c, floating[:, ::1] h):
    with nogil:
        _cell_forward_rows(hb, hp, z.shape[0], &z[0, 0], z.shape[1], &bias[0], &c[0, 0],
                           &h[0, 0], c.shape[1])


def cell_rows(z, bias, c_prev, hb):
    """The cell on every row of one packed panel's products, in one
    ``_cell.cell_forward_rows`` call (the stacked forward's and the streaming
    runner's step): ``z`` (rows, 4 hp) holds each row's pre-activations, its
    gate blocks hp apart (hb <= hp units used), ``bias`` (4 hp,), ``c_prev``
    (rows, hb).  Returns ``(gates, c, h)``, gates (rows, 4 hp) with the padding
    columns as they came in."""
    z = np.array(z, order="C")
    bias, c = np.ascontiguousarray(bias), np.array(c_prev, order="C")
    n, w = z.shape
    if w % 4 or not 0 < hb <= w // 4 or bias.shape != (w,) or c.shape != (n, hb):
        raise ValueError(f"cell_rows: z (rows, 4 hp), bias (4 hp,), c_prev (rows, hb) with "
                         f"hb <= hp; got z {z.shape}, bias {bias.shape}, c_prev {c.shape}, "
                         f"hb {hb}")
    h = np.empty_like(c)
    _cell_rows(hb, w // 4, z, bias, c, h)
    return z, c, h


def _cell_bw(const floating[::1] gates, const floating[::1] c, const floating[::1] c_prev,
             const floating[::1] dh, floating[::1] dc, floating[::1] dz):
    with nogil:
        _cell_backward(c.shape[0], &gates[0], &c[0], &c_prev[0], &dh[0], &dc[0], &dz[0])


def cell_backward(gates, c, c_prev, dh, dc):
    """Steps (B1)-(B6) for one sample through ``_cell.cell_backward``.

    ``gates`` (4H,), ``c`` and ``c_prev`` (H,) are the forward step's; ``dh``
    is dL/dh and ``dc`` dL/dc from the next step (H,).  Returns
    ``(dc_prev, dz)``: dL/dc_prev (H,) and dL/dz (4H,).
    """
    gates, c, c_prev, dh = (np.ascontiguousarray(v) for v in (gates, c, c_prev, dh))
    dc = np.array(dc, dtype=c.dtype, copy=True)  # the cell overwrites it
    dz = np.empty_like(gates)
    _cell_bw(gates, c, c_prev, dh, dc, dz)
    return dc, dz


def cpu_level():
    """The ISA level this module's cell runs (its own copy, as each extension has)."""
    return cyl_cpu_level()


def detected_level():
    """The ISA level this CPU has."""
    return cyl_cpu_detected_level()


def force_cpu_level(int level):
    """Force this module's cell to ISA ``level`` (-1 drops the override);
    return the override replaced.  Never above :func:`detected_level`."""
    return cyl_cpu_force(level)


# ---- the int8 panel product (include/cylstm_panel.h, cyl_panel_i8) ---------------

from libc.stdint cimport int8_t, int16_t

from cylstm._panel cimport (cyl_i8q_allow_vnni, cyl_i8q_qmax, cyl_i8q_quantize,
                            cyl_panel_i8, cyl_panel_i8_b)


def i8q_allow_vnni(bint allowed):
    """Let the AVX-512 int8 body use VNNI where the CPU has it (True, the default) or
    not (False: the vpmaddwd body, as on AVX-512 CPUs without VNNI); returns the
    previous setting.  This extension's copy of the kernel only."""
    return bool(cyl_i8q_allow_vnni(1 if allowed else 0))


def i8q_qmax(Py_ssize_t k2):
    """The int16 activations' largest magnitude for sums of ``k2`` terms."""
    return cyl_i8q_qmax(k2)


def i8q_quantize(const float[:, ::1] x, Py_ssize_t n2, float qmax):
    """(q (rows, n2) int16, scale (rows,) float32): cyl_i8q_quantize on x's rows."""
    q = np.empty((x.shape[0], n2), np.int16)
    s = np.empty(x.shape[0], np.float32)
    cdef int16_t[:, ::1] qv = q
    cdef float[::1] sv = s
    if n2 < x.shape[1] or n2 < 1 or x.shape[0] < 1:
        raise ValueError(f"n2 must be at least x's width {x.shape[1]} and x non-empty")
    cyl_i8q_quantize(&x[0, 0], x.shape[0], x.shape[1], x.shape[1], n2, qmax, &qv[0, 0],
                     &sv[0])
    return q, s


def i8q_panel(const int8_t[::1] P, const float[::1] sa, const float[::1] sb, Py_ssize_t w,
              const int16_t[:, ::1] aq, const float[::1] ra, const int16_t[:, ::1] bq,
              const float[::1] rb):
    """z (rows, w) = cyl_panel_i8 of one panel P (``bq`` with 0 columns: no b
    part) with its scales (at least w rounded up to 8 each)."""
    cdef Py_ssize_t n = aq.shape[0], ka2 = aq.shape[1], kb2 = bq.shape[1]
    cdef Py_ssize_t wp = (w + 7) // 8 * 8
    if n < 1 or bq.shape[0] != n or ra.shape[0] != n or rb.shape[0] != n:
        raise ValueError("aq, bq, ra and rb must have the same rows (at least 1)")
    if ka2 % 2 or kb2 % 2 or ka2 < 2 or P.shape[0] != (ka2 + kb2) * wp or \
            sa.shape[0] < wp or sb.shape[0] < wp:
        raise ValueError(f"P must hold (ka2 + kb2) x {wp} bytes (even ka2 >= 2, kb2) and "
                         f"the scales {wp} each")
    z = np.full((n, w), np.nan, np.float32)
    cdef float[:, ::1] zv = z
    cdef int16_t dummy = 0
    cyl_panel_i8(&P[0], &sa[0], &sb[0], w, n, &aq[0, 0], ka2, &ra[0],
                        &bq[0, 0] if kb2 else &dummy, kb2, &rb[0], &zv[0, 0], w)
    return z


def i8q_panel_b(const int8_t[::1] P, const float[::1] sb, Py_ssize_t w, Py_ssize_t ka2,
                const int16_t[:, ::1] bq, const float[::1] rb, float[:, ::1] z):
    """cyl_panel_i8_b: panel P's b part (its a part ka2 rows) added to z (rows, w) in
    place, as the runner adds h_prev's part to the x_t products it projected."""
    cdef Py_ssize_t n = bq.shape[0], kb2 = bq.shape[1]
    cdef Py_ssize_t wp = (w + 7) // 8 * 8
    if n < 1 or rb.shape[0] != n or z.shape[0] != n or z.shape[1] != w:
        raise ValueError(f"bq, rb and z must have the same rows (at least 1), z {w} wide")
    if ka2 % 2 or kb2 % 2 or ka2 < 2 or kb2 < 2 or P.shape[0] != (ka2 + kb2) * wp or \
            sb.shape[0] < wp:
        raise ValueError(f"P must hold (ka2 + kb2) x {wp} bytes (even ka2, kb2 >= 2) and "
                         f"the scales {wp}")
    cyl_panel_i8_b(&P[0], &sb[0], w, n, ka2, &bq[0, 0], kb2, &rb[0], &z[0, 0], w)
