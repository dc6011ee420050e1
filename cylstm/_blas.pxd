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
