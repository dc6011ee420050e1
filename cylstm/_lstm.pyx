"""Full-sequence LSTM kernels: forward (inference and training) and BPTT.

Layout (all C-contiguous, batch-first as the public API):

    x     (B, T, I)        input
    W     (I, 4H)          kernel, gate blocks [i|f|g|o] (see _cell.pxd)
    U     (H, 4H)          recurrent kernel
    bias  (4H,)
    G     (B, T, 4H)       gate buffer: x @ W for every step, then the
                           activated gates (training), then dL/dz (backward)
    C     (B, T, H)        cell state after each step (training only)
    Hp    (B, T, H)        h_prev fed to each step (training only), so that
                           dU is one GEMM over all steps
    y     (B, T, H)        outputs, by time index (padding rows stay zero)

Time: sample b runs steps s = 0 .. L_b - 1 (L_b its length, T if none) at
time index t = s, or t = L_b - 1 - s when reversed: PyTorch's packed-sequence
semantics.  Its state freezes after its last step.

Threads: samples are independent, so with n threads the batch is cut into n
contiguous slices and each thread runs the *whole* sequence on its slice with
a single-threaded BLAS: no barrier per time step, no OpenMP/OpenBLAS thread
pools fighting for the cores.  The caller (cylstm.functional) picks n; with
n == 1 the kernel runs on the calling thread and BLAS may use its own threads.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t
from libc.string cimport memcpy, memset

from cylstm._blas cimport gemm, gemm_tiled, matmul
from cylstm._cell cimport cell_forward, cell_backward


ctypedef void (*set_threads_fn)(int) noexcept nogil

cdef set_threads_fn _blas_set_threads = NULL


def _set_blas_thread_setter(size_t address):
    """Install ``openblas_set_num_threads`` of SciPy's BLAS (0 to disable)."""
    global _blas_set_threads
    _blas_set_threads = <set_threads_fn> address


cdef inline void _blas_threads(int n) noexcept nogil:
    if _blas_set_threads != NULL:
        _blas_set_threads(n)


cdef void _forward_rows(Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t T,
                        Py_ssize_t I, Py_ssize_t H,
                        const floating* x, const floating* W,
                        const floating* U, const floating* bias,
                        const int64_t* lengths, bint reverse,
                        const floating* rmask, floating* hm,
                        floating* y, floating* G, floating* C, floating* Hp,
                        floating* hs, floating* cs, floating* Z,
                        int big_threads) noexcept nogil:
    """Forward over samples [b0, b1) for all steps; hs/cs hold the state.

    BLAS may use ``big_threads`` threads for the input projection; the time
    loop always runs single-threaded BLAS (its products are too small for a
    thread team, and idle BLAS workers spinning between steps steal the core
    the gate math needs).

    ``rmask`` (B, H) or NULL: recurrent dropout, one mask per sequence as in
    Keras: the recurrent product reads h_prev * mask (kept in ``hm``), the
    carried state and the outputs stay unmasked.
    """
    cdef Py_ssize_t nb = b1 - b0, H4 = 4 * H
    cdef Py_ssize_t s, b, t, L, row, j, Lmax = 0
    cdef size_t hbytes = H * sizeof(floating)
    cdef floating* hsrc = hs if rmask == NULL else hm
    if nb <= 0:
        return
    for b in range(b0, b1):
        L = T if lengths == NULL else lengths[b]
        Lmax = L if L > Lmax else Lmax
    # G[b0:b1] (nb*T, 4H) = X[b0:b1] (nb*T, I) @ W (I, 4H); bias joins in the cell
    _blas_threads(big_threads)
    gemm(False, False, <int> (nb * T), <int> H4, <int> I, 1,
         x + b0 * T * I, <int> I, W, <int> H4, 0, G + b0 * T * H4, <int> H4)
    _blas_threads(1)
    for s in range(Lmax):
        if rmask != NULL:
            for j in range(b0 * H, b1 * H):
                hm[j] = hs[j] * rmask[j]
        # Z[b0:b1] (nb, 4H) = h_prev (nb, H) @ U (H, 4H)
        gemm_tiled(False, <int> nb, <int> H4, <int> H, 1, hsrc + b0 * H, <int> H,
                   U, <int> H4, 0, Z + b0 * H4, <int> H4)
        for b in range(b0, b1):
            L = T if lengths == NULL else lengths[b]
            if s >= L:
                continue
            t = L - 1 - s if reverse else s
            row = b * T + t
            if Hp != NULL:
                memcpy(Hp + row * H, hsrc + b * H, hbytes)
            cell_forward(H, G + row * H4, Z + b * H4, bias, cs + b * H,
                         G + row * H4, cs + b * H, hs + b * H)
            if y != NULL:
                memcpy(y + row * H, hs + b * H, hbytes)
            if C != NULL:
                memcpy(C + row * H, cs + b * H, hbytes)


cdef void _backward_rows(Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t T,
                         Py_ssize_t I, Py_ssize_t H,
                         const floating* x, const floating* W,
                         const floating* UT, const floating* c0,
                         const int64_t* lengths, bint reverse,
                         const floating* rmask,
                         floating* G, const floating* C, const floating* Hp,
                         const floating* dy, floating* dhs, floating* dcs,
                         floating* D, floating* dHp, floating* dx,
                         floating* dW, floating* dU, floating* db,
                         int big_threads) noexcept nogil:
    """BPTT over samples [b0, b1); dW/dU/db receive this slice's sums.

    The time loop runs single-threaded BLAS; the weight-gradient GEMMs after
    it may use ``big_threads``."""
    cdef Py_ssize_t nb = b1 - b0, H4 = 4 * H
    cdef Py_ssize_t s, b, t, tp, L, row, j, r, Lmax = 0
    cdef const floating* cp
    cdef floating* dh
    cdef size_t hbytes = H * sizeof(floating)
    if nb <= 0:
        memset(dW, 0, I * H4 * sizeof(floating))
        memset(dU, 0, H * H4 * sizeof(floating))
        memset(db, 0, H4 * sizeof(floating))
        return
    for b in range(b0, b1):
        L = T if lengths == NULL else lengths[b]
        Lmax = L if L > Lmax else Lmax
        if L < T:  # padding rows take no gradient
            memset(G + (b * T + L) * H4, 0, (T - L) * H4 * sizeof(floating))
    _blas_threads(1)
    for s in range(Lmax - 1, -1, -1):
        for b in range(b0, b1):
            L = T if lengths == NULL else lengths[b]
            if s >= L:
                continue
            t = L - 1 - s if reverse else s
            row = b * T + t
            dh = dhs + b * H
            if dy != NULL:
                for j in range(H):
                    dh[j] += dy[row * H + j]
            if s == 0:
                cp = c0 + b * H
            else:
                tp = t + 1 if reverse else t - 1
                cp = C + (b * T + tp) * H
            # (B1)-(B6), dz written over the gates
            cell_backward(H, G + row * H4, C + row * H, cp, dh, dcs + b * H,
                          G + row * H4)
            memcpy(D + b * H4, G + row * H4, H4 * sizeof(floating))
        # (B7) dh_prev (nb, H) = dz (nb, 4H) @ UT (4H, H), UT = U^T made once
        # (a transposed operand would be repacked by OpenBLAS on every tile)
        gemm_tiled(False, <int> nb, <int> H, <int> H4, 1, D + b0 * H4, <int> H4,
                   UT, <int> H, 0, dHp + b0 * H, <int> H)
        for b in range(b0, b1):
            L = T if lengths == NULL else lengths[b]
            if s < L:
                if rmask != NULL:
                    for j in range(H):
                        dhs[b * H + j] = dHp[b * H + j] * rmask[b * H + j]
                else:
                    memcpy(dhs + b * H, dHp + b * H, hbytes)
    _blas_threads(big_threads)
    # (B8) over all nb*T rows of this slice (padding rows are zero in dz)
    # dW (I, 4H) = X^T (I, nb*T) @ dz (nb*T, 4H)
    gemm(True, False, <int> I, <int> H4, <int> (nb * T), 1, x + b0 * T * I, <int> I,
         G + b0 * T * H4, <int> H4, 0, dW, <int> H4)
    # dU (H, 4H) = Hp^T (H, nb*T) @ dz (nb*T, 4H)
    gemm(True, False, <int> H, <int> H4, <int> (nb * T), 1, Hp + b0 * T * H, <int> H,
         G + b0 * T * H4, <int> H4, 0, dU, <int> H4)
    # db = sum over rows of dz
    memset(db, 0, H4 * sizeof(floating))
    for r in range(b0 * T, b1 * T):
        for j in range(H4):
            db[j] += G[r * H4 + j]
    if dx != NULL:
        # dx (nb*T, I) = dz (nb*T, 4H) @ W^T, W stored (I, 4H)
        gemm(False, True, <int> (nb * T), <int> I, <int> H4, 1, G + b0 * T * H4,
             <int> H4, W, <int> H4, 0, dx + b0 * T * I, <int> I)


cdef inline floating* _ptr3(floating[:, :, ::1] a) noexcept nogil:
    return NULL if a is None else &a[0, 0, 0]


def forward(const floating[:, :, ::1] x, const floating[:, ::1] W,
            const floating[:, ::1] U, const floating[::1] bias,
            const int64_t[::1] lengths, bint reverse,
            const floating[:, ::1] rmask, floating[:, ::1] hm,
            floating[:, :, ::1] y, floating[:, ::1] hs, floating[:, ::1] cs,
            floating[:, :, ::1] G, floating[:, :, ::1] C,
            floating[:, :, ::1] Hp, floating[:, ::1] Z,
            int n_threads, int blas_threads):
    """Run the forward kernel.  Arguments are validated by cylstm.functional.

    ``hs``/``cs`` (B, H) hold the initial state on entry and the final state
    on exit.  ``y``, ``C``, ``Hp`` may be None.  ``lengths`` may be None.
    """
    cdef Py_ssize_t B = x.shape[0], T = x.shape[1], I = x.shape[2]
    cdef Py_ssize_t H = U.shape[0]
    cdef int nt = n_threads if n_threads < B else <int> B
    cdef int tid
    cdef const int64_t* lp = NULL if lengths is None else &lengths[0]
    cdef floating* yp = _ptr3(y)
    cdef floating* Cp = _ptr3(C)
    cdef floating* Hpp = _ptr3(Hp)
    cdef const floating* rmp = NULL if rmask is None else &rmask[0, 0]
    cdef floating* hmp = NULL if hm is None else &hm[0, 0]
    if B == 0 or T == 0:
        return
    if rmp != NULL and hmp == NULL:
        raise ValueError("forward: recurrent mask needs the hm scratch buffer")
    nt = nt if nt > 1 else 1
    with nogil:
        if nt == 1:
            _blas_threads(blas_threads)
            _forward_rows(0, B, T, I, H, &x[0, 0, 0], &W[0, 0], &U[0, 0], &bias[0],
                          lp, reverse, rmp, hmp, yp, &G[0, 0, 0], Cp, Hpp,
                          &hs[0, 0], &cs[0, 0], &Z[0, 0], blas_threads)
            _blas_threads(blas_threads)
        else:
            _blas_threads(1)
            for tid in prange(nt, num_threads=nt, schedule='static', chunksize=1):
                _forward_rows((tid * B) // nt, ((tid + 1) * B) // nt, T, I, H,
                              &x[0, 0, 0], &W[0, 0], &U[0, 0], &bias[0],
                              lp, reverse, rmp, hmp, yp, &G[0, 0, 0], Cp, Hpp,
                              &hs[0, 0], &cs[0, 0], &Z[0, 0], 1)
            _blas_threads(blas_threads)


def backward(const floating[:, :, ::1] x, const floating[:, ::1] W,
             const floating[:, ::1] UT, const floating[:, ::1] c0,
             const int64_t[::1] lengths, bint reverse,
             const floating[:, ::1] rmask,
             floating[:, :, ::1] G, const floating[:, :, ::1] C,
             const floating[:, :, ::1] Hp, const floating[:, :, ::1] dy,
             floating[:, ::1] dhs, floating[:, ::1] dcs,
             floating[:, ::1] D, floating[:, ::1] dHp, floating[:, :, ::1] dx,
             floating[:, ::1] dW, floating[:, ::1] dU, floating[::1] db,
             floating[:, :, ::1] parts, int n_threads, int blas_threads):
    """Run BPTT.  ``UT`` is the recurrent kernel transposed, (4H, H) C-contiguous.
    ``G`` holds the training forward's gates and is overwritten
    with dL/dz.  ``dhs``/``dcs`` hold dL/dh_T, dL/dc_T on entry and dL/dh0,
    dL/dc0 on exit.  ``parts`` (n_threads - 1, I + H + 1, 4H) is scratch for
    the per-thread weight-gradient sums (None when n_threads == 1).
    """
    cdef Py_ssize_t B = x.shape[0], T = x.shape[1], I = x.shape[2]
    cdef Py_ssize_t H = UT.shape[1], H4 = 4 * H, n, k
    cdef int nt = n_threads if n_threads < B else <int> B
    cdef int tid
    cdef const int64_t* lp = NULL if lengths is None else &lengths[0]
    cdef const floating* dyp = NULL if dy is None else &dy[0, 0, 0]
    cdef const floating* rmp = NULL if rmask is None else &rmask[0, 0]
    cdef floating* dxp = _ptr3(dx)
    cdef floating* pp
    cdef floating* dWp
    cdef floating* dUp
    cdef floating* dbp
    if B == 0 or T == 0:
        dW[:, :] = 0
        dU[:, :] = 0
        db[:] = 0
        return
    nt = nt if nt > 1 else 1
    if nt > 1 and (parts is None or parts.shape[0] < nt - 1):
        raise ValueError("backward: parts buffer too small for n_threads")
    with nogil:
        if nt == 1:
            _blas_threads(blas_threads)
            _backward_rows(0, B, T, I, H, &x[0, 0, 0], &W[0, 0], &UT[0, 0], &c0[0, 0],
                           lp, reverse, rmp, &G[0, 0, 0], &C[0, 0, 0], &Hp[0, 0, 0], dyp,
                           &dhs[0, 0], &dcs[0, 0], &D[0, 0], &dHp[0, 0], dxp,
                           &dW[0, 0], &dU[0, 0], &db[0], blas_threads)
            _blas_threads(blas_threads)
        else:
            _blas_threads(1)
            for tid in prange(nt, num_threads=nt, schedule='static', chunksize=1):
                if tid == 0:
                    dWp = &dW[0, 0]
                    dUp = &dU[0, 0]
                    dbp = &db[0]
                else:
                    pp = &parts[tid - 1, 0, 0]
                    dWp = pp
                    dUp = pp + I * H4
                    dbp = pp + (I + H) * H4
                _backward_rows((tid * B) // nt, ((tid + 1) * B) // nt, T, I, H,
                               &x[0, 0, 0], &W[0, 0], &UT[0, 0], &c0[0, 0],
                               lp, reverse, rmp, &G[0, 0, 0], &C[0, 0, 0], &Hp[0, 0, 0], dyp,
                               &dhs[0, 0], &dcs[0, 0], &D[0, 0], &dHp[0, 0], dxp,
                               dWp, dUp, dbp, 1)
            _blas_threads(blas_threads)
            # reduce the per-thread sums (fixed order: results do not depend
            # on scheduling)
            for tid in range(1, nt):
                pp = &parts[tid - 1, 0, 0]
                dWp = &dW[0, 0]
                for n in range(I * H4):
                    dWp[n] += pp[n]
                dUp = &dU[0, 0]
                for n in range(H * H4):
                    dUp[n] += pp[I * H4 + n]
                for n in range(H4):
                    db[n] += pp[(I + H) * H4 + n]
