# cython: language_level=3
"""The one doorway to BLAS: SciPy's ``cython_blas`` over a fused float type.

Every product in cylstm is written row-major, as NumPy users think of it:

    C[m, n] = alpha * op(A)[m, k] @ op(B)[k, n] + beta * C[m, n]

with ``lda``, ``ldb``, ``ldc`` the row strides (in elements) of A, B and C as
they lie in memory.  BLAS is column-major, and a row-major matrix read
column-major is its transpose, so the row-major product is computed as the
column-major product ``C^T[n, m] = op(B)^T[n, k] @ op(A)^T[k, m]``: swap the
operands, swap m and n, keep each operand's own transpose flag and leading
dimension.  That trick is done here once and nowhere else.

No other module cimports ``scipy.linalg.cython_blas``.
"""
from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm, sgemv, dgemv


cdef inline void gemm(bint trans_a, bint trans_b, int m, int n, int k,
                      floating alpha, const floating* a, int lda,
                      const floating* b, int ldb, floating beta,
                      floating* c, int ldc) noexcept nogil:
    """Row-major ``C[m, n] = alpha op(A) @ op(B) + beta C``.

    ``op(A)`` is ``A`` (m x k, row stride lda) or, with ``trans_a``, ``A^T``
    where A lies in memory as k x m; likewise for B (k x n, or n x k stored).
    """
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    if m <= 0 or n <= 0:
        return
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*> b, &ldb, <float*> a, &lda,
              &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*> b, &ldb, <double*> a, &lda,
              &beta, c, &ldc)


cdef inline void gemv_rowvec(int k, int n, floating alpha, const floating* x,
                             const floating* b, int ldb, floating beta,
                             floating* y) noexcept nogil:
    """Row-major ``y[n] = alpha x[k] @ B[k, n] + beta y`` (B row stride ldb).

    The batch-1 form of :func:`gemm`.  OpenBLAS's sgemm with one row is several
    times slower than sgemv on the same product, so batch 1 comes here.  Read
    column-major, B is the n x k matrix B^T with leading dimension ldb, and
    y = B^T x is a plain 'N' gemv.
    """
    cdef char tn = b'N'
    cdef int inc = 1
    if n <= 0:
        return
    if floating is float:
        sgemv(&tn, &n, &k, &alpha, <float*> b, &ldb, <float*> x, &inc, &beta, y, &inc)
    else:
        dgemv(&tn, &n, &k, &alpha, <double*> b, &ldb, <double*> x, &inc, &beta, y, &inc)


cdef inline void gemv_rowvec_t(int k, int n, floating alpha, const floating* x,
                               const floating* b, int ldb, floating beta,
                               floating* y) noexcept nogil:
    """Row-major ``y[n] = alpha x[k] @ B^T + beta y`` where B lies as n x k (stride ldb)."""
    cdef char tt = b'T'
    cdef int inc = 1
    if n <= 0:
        return
    if floating is float:
        sgemv(&tt, &k, &n, &alpha, <float*> b, &ldb, <float*> x, &inc, &beta, y, &inc)
    else:
        dgemv(&tt, &k, &n, &alpha, <double*> b, &ldb, <double*> x, &inc, &beta, y, &inc)


cdef inline void matmul(bint trans_b, int m, int n, int k, floating alpha,
                        const floating* a, int lda, const floating* b, int ldb,
                        floating beta, floating* c, int ldc) noexcept nogil:
    """``C = alpha A @ op(B) + beta C`` that routes one-row products to gemv."""
    if m == 1:
        if trans_b:
            gemv_rowvec_t(k, n, alpha, a, b, ldb, beta, c)
        else:
            gemv_rowvec(k, n, alpha, a, b, ldb, beta, c)
    else:
        gemm(False, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)


# OpenBLAS runs products with m*n*k up to about 2^20 on "small-matrix"
# kernels that read the operands in place; larger ones pack both operands
# first.  For the per-step recurrent product (a few batch rows against the
# whole recurrent kernel) that packing copies the weights on every step and
# costs up to half the time (measured: 16x256x1024 at 54 GFLOP/s in one call,
# 110 GFLOP/s as 8 tiles of 128 columns).  So per-step products go through
# gemm_tiled, which cuts them into tiles of about TILE_VOLUME multiply-adds.
cdef enum:
    TILE_VOLUME = 524288
    TILE_ROWS = 8
    TILE_K = 256


cdef inline void gemm_tiled(bint trans_b, int m, int n, int k, floating alpha,
                            const floating* a, int lda, const floating* b, int ldb,
                            floating beta, floating* c, int ldc,
                            bint rev=False) noexcept nogil:
    """``C[m, n] = alpha A[m, k] @ op(B) + beta C`` as small-kernel-sized tiles.

    Same contract as ``gemm(False, trans_b, ...)``; one-row products go to gemv.
    ``rev``: visit the column tiles last to first (a time loop alternates, so
    that each step starts on the tiles of B the last one left in cache; see
    ``_snake`` in _lstm.pyx).  Each tile is computed the same either way.
    """
    cdef int kt, mt, nt, i, j, kk, mi, nj, kc, tile, n_tiles
    cdef floating bk
    cdef const floating* bp
    if m <= 0 or n <= 0:
        return
    if m == 1:
        matmul(trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
        return
    if <long> m * n * k <= TILE_VOLUME:
        gemm(False, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
        return
    kt = k if k <= 2 * TILE_K else TILE_K
    mt = m if m < TILE_ROWS else TILE_ROWS
    nt = TILE_VOLUME // (mt * kt)
    nt = (nt // 16) * 16
    if nt < 16:
        nt = 16
    if nt > n:
        nt = n
    n_tiles = (n + nt - 1) // nt
    for tile in range(n_tiles):
        j = (n_tiles - 1 - tile if rev else tile) * nt
        nj = nt if j + nt <= n else n - j
        i = 0
        while i < m:
            mi = mt if i + mt <= m else m - i
            kk = 0
            while kk < k:
                kc = kt if kk + kt <= k else k - kk
                bk = beta if kk == 0 else 1
                # op(B) rows kk.., columns j..: B[kk, j] or, transposed, B[j, kk]
                bp = b + (<Py_ssize_t> j * ldb + kk if trans_b else <Py_ssize_t> kk * ldb + j)
                gemm(False, trans_b, mi, nj, kc, alpha, a + <Py_ssize_t> i * lda + kk, lda,
                     bp, ldb, bk, c + <Py_ssize_t> i * ldc + j, ldc)
                kk += kt
            i += mt
