"""Full-sequence LSTM kernels: forward (inference and training) and BPTT.

Layout (all C-contiguous, batch-first as the public API):

    x     (B, T, I)        input
    W     (I, 4H)          kernel, gate blocks [i|f|g|o] (see _cell.pxd)
    U     (H, 4H)          recurrent kernel
    bias  (4H,)
    G     (B, T, 4H)       gate buffer: x @ W for every step (unless each
                           step computes x_t @ W itself), then the activated
                           gates (training), then dL/dz (backward)
    C     (B, T, H)        cell state after each step (training only)
    Hp    (B, T, H)        h_prev fed to each step (training only), so that
                           dU is one GEMM over all steps
    y     (B, T, H)        outputs, by time index (padding rows stay zero)

Time: sample b runs steps s = 0 .. L_b - 1 (L_b its length, T if none) at
time index t = s, or t = L_b - 1 - s when reversed: PyTorch's packed-sequence
semantics.  Its state freezes after its last step.

Threads: samples are independent, so with n threads the batch is cut into n
contiguous slices and each thread runs the *whole* sequence on its slice with
a single-threaded BLAS (or the packed-panel kernel): no barrier per time step,
no OpenMP/OpenBLAS thread pools fighting for the cores.  Batches too small to
cut, and recurrent kernels too large for every thread to stream, split the
units instead (forward ``mode`` 1, one barrier per step).  The caller
(cylstm.functional) picks the mode and n; with n == 1 the kernel runs on the
calling thread and BLAS may use its own threads.
"""
from cython cimport floating
from cython.parallel cimport parallel, prange, threadid
from libc.stdint cimport int64_t
from libc.string cimport memcpy, memset

from cylstm._blas cimport gemm, gemm_tiled, matmul
from cylstm._cell cimport cell_forward, cell_forward_units, cell_backward
from cylstm._isa cimport (CYL_ISA_VARIANTS, cyl_cpu_detected_level, cyl_cpu_force,
                           cyl_cpu_level)

from cylstm._panel cimport (CYL_STREAM_VLD, CYL_STREAM_VLF, cyl_stream_barrier,
                            cyl_stream_panel_f32, cyl_stream_panel_f64,
                            cyl_stream_team_size)

cdef enum:
    INT_MAX_C = 2147483647     # BLAS (LP64) dimensions and leading dimensions are ints
    # Units per packed panel of the recurrent kernel (cylstm.stream uses the same):
    # a panel's 4 gate blocks are one 64-byte vector wide each.
    PANEL_UNITS_F32_C = 16
    PANEL_UNITS_F64_C = 8
PANEL_UNITS_F32 = PANEL_UNITS_F32_C
PANEL_UNITS_F64 = PANEL_UNITS_F64_C
# Whether the kernels were compiled once per ISA level (x86-64 GCC >= 12 / Clang on
# Linux, without -DCYLSTM_NO_CLONES) or once for all (include/cylstm_cpu.h)
ISA_VARIANTS = bool(CYL_ISA_VARIANTS)


ctypedef void (*set_threads_fn)(int) noexcept nogil

cdef set_threads_fn _blas_set_threads = NULL


def _set_blas_thread_setter(size_t address):
    """Install ``openblas_set_num_threads`` of SciPy's BLAS (0 to disable)."""
    global _blas_set_threads
    _blas_set_threads = <set_threads_fn> address


def _force_cpu_level(int level):
    """Force this extension's kernels to ISA ``level`` (0..2, never above the
    CPU's; -1 drops the override); return the override replaced.  Use
    cylstm._cpu.forced_level, which validates and sets every extension."""
    return cyl_cpu_force(level)


def _cpu_levels():
    """(detected, active) ISA levels of this extension's kernels."""
    return cyl_cpu_detected_level(), cyl_cpu_level()


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
                        int big_threads, bint fused) noexcept nogil:
    """Forward over samples [b0, b1) for all steps; hs/cs hold the state.

    ``fused`` (no lengths): each step computes x_t @ W + h_prev @ U into Z,
    and ``G`` only receives the activated gates (training; NULL in
    inference).  Otherwise the input projection for all steps is one GEMM
    into G first (samples at different time indices need it).

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
    cdef floating* gates
    if nb <= 0:
        return
    for b in range(b0, b1):
        L = T if lengths == NULL else lengths[b]
        Lmax = L if L > Lmax else Lmax
    if not fused:
        # G[b0:b1] (nb*T, 4H) = X[b0:b1] (nb*T, I) @ W (I, 4H); bias joins in the cell
        _blas_threads(big_threads)
        gemm(False, False, <int> (nb * T), <int> H4, <int> I, 1,
             x + b0 * T * I, <int> I, W, <int> H4, 0, G + b0 * T * H4, <int> H4)
        _blas_threads(1)
    for s in range(Lmax):
        if rmask != NULL:
            for j in range(b0 * H, b1 * H):
                hm[j] = hs[j] * rmask[j]
        if fused:
            # every sample is at the same t: Z (nb, 4H) = x_t (nb, I) @ W, rows T*I apart
            t = T - 1 - s if reverse else s
            gemm_tiled(False, <int> nb, <int> H4, <int> I, 1, x + (b0 * T + t) * I,
                       <int> (T * I), W, <int> H4, 0, Z + b0 * H4, <int> H4)
        # Z[b0:b1] (nb, 4H) (+)= h_prev (nb, H) @ U (H, 4H)
        gemm_tiled(False, <int> nb, <int> H4, <int> H, 1, hsrc + b0 * H, <int> H,
                   U, <int> H4, 1 if fused else 0, Z + b0 * H4, <int> H4)
        for b in range(b0, b1):
            L = T if lengths == NULL else lengths[b]
            if s >= L:
                continue
            t = L - 1 - s if reverse else s
            row = b * T + t
            if Hp != NULL:
                memcpy(Hp + row * H, hsrc + b * H, hbytes)
            if fused:
                gates = Z + b * H4 if G == NULL else G + row * H4
                cell_forward(H, Z + b * H4, NULL, bias, cs + b * H,
                             gates, cs + b * H, hs + b * H)
            else:
                cell_forward(H, G + row * H4, Z + b * H4, bias, cs + b * H,
                             G + row * H4, cs + b * H, hs + b * H)
            if y != NULL:
                memcpy(y + row * H, hs + b * H, hbytes)
            if C != NULL:
                memcpy(C + row * H, cs + b * H, hbytes)


# ---------------------------------------------------------------------------
# Packed-panel paths: the per-step product runs on the streaming runner's
# kernel (include/cylstm_stream.h) over weights packed once per call into
# panels of `span` units: panel p holds the columns of units j0 .. j0 + hb of
# the four gates, [i | f | g | o], and the cell runs on that panel's units
# right after its product, while z is in L1.  h is double-buffered (every
# panel reads the whole h_prev).
#
# Mode 1 packs U and splits the units across threads (one barrier per step):
# each thread streams only its share of U, from its own core's L2 at batch 1,
# where the product is bound by that bandwidth and two cores double it
# ((T, B, I, H) = (200, 1, 64, 128) 0.54 ms at 2 threads against 0.70 serial).
# Mode 2 packs [W; U] and splits the batch: each step is [x_t, h_prev] @ panel,
# six rows per weight load on AVX-512.  cylstm.functional._forward_plan says
# which shapes each mode serves, and what was measured.
# ---------------------------------------------------------------------------

cdef inline Py_ssize_t _span(floating* dummy) noexcept nogil:
    if floating is float:
        return PANEL_UNITS_F32_C
    else:
        return PANEL_UNITS_F64_C


cdef inline Py_ssize_t _vlen(floating* dummy) noexcept nogil:
    if floating is float:
        return CYL_STREAM_VLF
    else:
        return CYL_STREAM_VLD


cdef inline Py_ssize_t _padded_units(Py_ssize_t hb, Py_ssize_t vl) noexcept nogil:
    """Units a panel of hb units is stored as: a multiple of vl / 4, so that its
    width 4 * hb_pad is whole vectors (no transposed tail columns)."""
    cdef Py_ssize_t q = vl // 4
    return ((hb + q - 1) // q) * q


cdef inline Py_ssize_t _packed_len(Py_ssize_t H, Py_ssize_t span,
                                   Py_ssize_t vl) noexcept nogil:
    cdef Py_ssize_t last
    if H <= 0:
        return 0
    last = H - ((H - 1) // span) * span
    return H * 4 * (H - last + _padded_units(last, vl))


cdef inline Py_ssize_t _stacked_len(Py_ssize_t I, Py_ssize_t H, Py_ssize_t span,
                                    Py_ssize_t vl) noexcept nogil:
    """Packed [W; U] panels and their panel-ordered bias: (I + H + 1) * 4 * H_pad."""
    if H <= 0:
        return 0
    return (I + H + 1) * (_packed_len(H, span, vl) // H)


def stacked_len(Py_ssize_t I, Py_ssize_t H, dtype):
    """Elements of the scratch that mode 2 of :func:`forward` packs [W; U] and the bias into."""
    if str(dtype) == "float32":
        return _stacked_len(I, H, PANEL_UNITS_F32_C, CYL_STREAM_VLF)
    return _stacked_len(I, H, PANEL_UNITS_F64_C, CYL_STREAM_VLD)


def packed_len(Py_ssize_t H, dtype):
    """Elements of the packed recurrent kernel of ``H`` units (see pack_recurrent)."""
    if str(dtype) == "float32":
        return _packed_len(H, PANEL_UNITS_F32_C, CYL_STREAM_VLF)
    return _packed_len(H, PANEL_UNITS_F64_C, CYL_STREAM_VLD)


cdef void _pack_recurrent(Py_ssize_t H, const floating* U, floating* P,
                          Py_ssize_t p0, Py_ssize_t p1) noexcept nogil:
    """Pack panels [p0, p1) of U (H, 4H), panel p at p * H * 4 * span.

    Panel p holds units j0 .. j0 + hb of the four gates, row-major (H, 4 hb_pad):
    columns [i | f | g | o], each block hb_pad wide; the last panel's padding
    units (hb_pad > hb) are zero columns."""
    _pack_stacked(0, H, NULL, U, NULL, P, NULL, p0, p1)


cdef void _pack_stacked(Py_ssize_t I, Py_ssize_t H, const floating* W, const floating* U,
                        const floating* bias, floating* P, floating* bp,
                        Py_ssize_t p0, Py_ssize_t p1) noexcept nogil:
    """Pack panels [p0, p1) of [W; U] ((I + H), 4H) as :func:`_pack_recurrent`
    does U (K = I + H rows, panel p at p * K * 4 * span; the streaming
    runner's layout), and, if ``bp``, the bias in panel order (panel p's
    4 hb_pad entries at p * 4 * span, zero for padding units)."""
    cdef Py_ssize_t span = _span(P), vl = _vlen(P), H4 = 4 * H, K = I + H
    cdef Py_ssize_t p, j0, hb, hp, w, k, g, u
    cdef const floating* src
    cdef floating* dst
    for p in range(p0, p1):
        j0 = p * span
        hb = H - j0 if H - j0 < span else span
        hp = _padded_units(hb, vl)
        w = 4 * hp
        for k in range(K):
            src = (W + k * H4 if k < I else U + (k - I) * H4) + j0
            dst = P + j0 * 4 * K + k * w
            for g in range(4):
                for u in range(hb):
                    dst[g * hp + u] = src[g * H + u]
                for u in range(hb, hp):
                    dst[g * hp + u] = 0
        if bp != NULL:
            for g in range(4):
                for u in range(hp):
                    bp[j0 * 4 + g * hp + u] = bias[g * H + j0 + u] if u < hb else 0


cdef inline void _stacked_product(const floating* P, Py_ssize_t w, Py_ssize_t nrows,
                                  const floating* x, Py_ssize_t I, Py_ssize_t ldx,
                                  const floating* h, Py_ssize_t H,
                                  floating* z) noexcept nogil:
    """z (nrows, w) = [x (nrows, I; rows ldx apart), h (nrows, H)] @ panel (I + H, w)
    (I may be 0: h @ a panel of U)."""
    if floating is float:
        cyl_stream_panel_f32(P, w, nrows, x, I, ldx, h, H, H, z, w)
    else:
        cyl_stream_panel_f64(P, w, nrows, x, I, ldx, h, H, H, z, w)


cdef void _forward_panels(Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t p0, Py_ssize_t p1,
                          bint team, Py_ssize_t T, Py_ssize_t H, Py_ssize_t Lmax,
                          const floating* x, Py_ssize_t I,
                          const floating* P, const floating* bias,
                          const int64_t* lengths, bint reverse,
                          const floating* rmask, floating* hm,
                          floating* y, floating* G, floating* C, floating* Hp,
                          floating* hs, floating* hs2, floating* cs,
                          floating* zs) noexcept nogil:
    """Time loop over rows [b0, b1) and panels [p0, p1) of the packed ``P``.

    ``x`` NULL: ``P`` packs U, G holds x @ W for these panels' units and
    ``bias`` is in the public order.  ``x`` (B, T, I): ``P`` packs [W; U]
    (stacked), each step's product is [x_t, h_prev] @ panel (the streaming
    runner's step), ``bias`` is in panel order and G, if not NULL, receives
    the gates (training); every row must then be at the same time index
    (no lengths with ``reverse``).
    ``hs`` holds h0 on entry and the final h on exit; ``hs2`` is the other
    half of the double buffer.  With ``team`` the OpenMP team meets at a
    barrier after every step (the threads split the units).  ``rmask``
    (recurrent dropout) is only allowed without ``team``.
    """
    cdef Py_ssize_t span = _span(hs), vl = _vlen(hs), H4 = 4 * H, nb = b1 - b0
    cdef Py_ssize_t s, p, b, j, t, L, row, j0, j1, hb, hp, w, g, K = I + H
    cdef floating* zr
    cdef floating* cur
    cdef floating* nxt
    cdef const floating* src
    cdef size_t ub
    if nb <= 0 or p1 <= p0:
        if team:
            for s in range(Lmax):
                cyl_stream_barrier()
        return
    j0 = p0 * span
    j1 = p1 * span if p1 * span < H else H
    ub = (j1 - j0) * sizeof(floating)
    for s in range(Lmax):
        cur = hs if s % 2 == 0 else hs2
        nxt = hs2 if s % 2 == 0 else hs
        src = cur
        if rmask != NULL:
            for j in range(b0 * H, b1 * H):
                hm[j] = cur[j] * rmask[j]
            src = hm
        for p in range(p0, p1):
            hb = H - p * span if H - p * span < span else span
            hp = _padded_units(hb, vl)
            w = 4 * hp
            if x != NULL:
                t = T - 1 - s if reverse else s
                _stacked_product(P + p * K * 4 * span, w, nb, x + (b0 * T + t) * I, I,
                                 T * I, src + b0 * H, H, zs)
                for b in range(b0, b1):
                    L = T if lengths == NULL else lengths[b]
                    if s >= L:
                        continue
                    zr = zs + (b - b0) * w
                    cell_forward_units(hb, hp, zr, NULL, hp, bias + p * 4 * span,
                                       cs + b * H + p * span, zr, cs + b * H + p * span,
                                       nxt + b * H + p * span)
                    if G != NULL:
                        row = b * T + t
                        for g in range(4):
                            memcpy(G + row * H4 + g * H + p * span, zr + g * hp,
                                   hb * sizeof(floating))
                continue
            _stacked_product(P + p * H * 4 * span, w, nb, src, 0, 0, src + b0 * H, H, zs)
            for b in range(b0, b1):
                L = T if lengths == NULL else lengths[b]
                if s >= L:
                    continue
                t = L - 1 - s if reverse else s
                row = b * T + t
                cell_forward_units(hb, H, G + row * H4 + p * span, zs + (b - b0) * w, hp,
                                   bias + p * span, cs + b * H + p * span,
                                   G + row * H4 + p * span, cs + b * H + p * span,
                                   nxt + b * H + p * span)
        for b in range(b0, b1):
            L = T if lengths == NULL else lengths[b]
            if s >= L:  # finished: the state carries over unchanged
                memcpy(nxt + b * H + j0, cur + b * H + j0, ub)
                continue
            t = L - 1 - s if reverse else s
            row = b * T + t
            if Hp != NULL:
                memcpy(Hp + row * H + j0, src + b * H + j0, ub)
            if y != NULL:
                memcpy(y + row * H + j0, nxt + b * H + j0, ub)
            if C != NULL:
                memcpy(C + row * H + j0, cs + b * H + j0, ub)
        if team:
            cyl_stream_barrier()
    if Lmax % 2 == 1:  # the final h is in hs2
        for b in range(b0, b1):
            memcpy(hs + b * H + j0, hs2 + b * H + j0, ub)


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
    cdef bint inplace = lengths == NULL and T * H4 <= INT_MAX_C
    cdef const floating* dz
    cdef Py_ssize_t ldz
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
            if not inplace:
                memcpy(D + b * H4, G + row * H4, H4 * sizeof(floating))
        # (B7) dh_prev (nb, H) = dz (nb, 4H) @ UT (4H, H), UT = U^T made once
        # (a transposed operand would be repacked by OpenBLAS on every tile).
        # Without lengths every row is at the same t: dz is read in place in G,
        # rows T * 4H apart (while that fits BLAS's int); with lengths, from rows
        # gathered into D (rows past their length stay zero there).
        if inplace:
            t = T - 1 - s if reverse else s
            dz = G + (b0 * T + t) * H4
            ldz = T * H4
        else:
            dz = D + b0 * H4
            ldz = H4
        gemm_tiled(False, <int> nb, <int> H, <int> H4, 1, dz, <int> ldz,
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


def pack_recurrent(const floating[:, ::1] U, floating[::1] out):
    """Pack ``U`` (H, 4H) into the panel layout of the panel path (``out``: H * 4H)."""
    cdef Py_ssize_t H = U.shape[0]
    cdef floating* kind = NULL
    if U.shape[1] != 4 * H or out.shape[0] != _packed_len(H, _span(kind), _vlen(kind)):
        raise ValueError("pack_recurrent: U must be (H, 4H) and out packed_len(H) long")
    if H:
        with nogil:
            _pack_recurrent(H, &U[0, 0], &out[0], 0, (H + _span(kind) - 1) // _span(kind))


def forward(const floating[:, :, ::1] x, const floating[:, ::1] W,
            const floating[:, ::1] U, const floating[::1] bias,
            const int64_t[::1] lengths, bint reverse,
            const floating[:, ::1] rmask, floating[:, ::1] hm,
            floating[:, :, ::1] y, floating[:, ::1] hs, floating[:, ::1] cs,
            floating[:, :, ::1] G, floating[:, :, ::1] C,
            floating[:, :, ::1] Hp, floating[:, ::1] Z,
            int n_threads, int blas_threads, int mode=0,
            floating[::1] Pu=None, floating[:, ::1] hs2=None, bint fuse=False):
    """Run the forward kernel.  Arguments are validated by cylstm.functional.

    ``hs``/``cs`` (B, H) hold the initial state on entry and the final state
    on exit.  ``y``, ``C``, ``Hp`` may be None.  ``lengths`` may be None.
    ``fuse`` (mode 0, no lengths): each step computes x_t @ W itself instead
    of reading a projection of all steps from ``G``, which then only receives
    the gates for training and may be None in inference.

    ``mode`` 0: threads split the batch, the per-step product on BLAS; ``Z``
    is (B, 4H) scratch.  ``mode`` 1: threads split the units in whole panels
    of span units and meet at one barrier per step (not with ``rmask``), the
    product on packed panels of U (see :func:`pack_recurrent`; ``Pu`` is
    scratch for them, each thread packs its own); ``hs2`` (B, H) is the second
    h buffer and ``Z`` per-thread scratch (n_threads, B * 4 * span).
    ``mode`` 2: threads split the batch; each step is the streaming runner's
    [x_t, h_prev] @ [W; U] on packed panels, then the cell, panel by panel
    (``Pu``: stacked_len(I, H) scratch the team packs them into; no lengths
    with ``reverse``); ``G`` may be None (it only receives the gates); ``hs2``
    and ``Z`` as in mode 1.
    """
    cdef Py_ssize_t B = x.shape[0], T = x.shape[1], I = x.shape[2]
    cdef Py_ssize_t H = U.shape[0], H4 = 4 * H, Lmax = 0, b, L, span, n_panels
    cdef int nt = n_threads if n_threads < B else <int> B
    cdef int tid, team
    cdef Py_ssize_t p0, p1
    cdef const int64_t* lp = NULL if lengths is None else &lengths[0]
    cdef floating* yp = _ptr3(y)
    cdef floating* Cp = _ptr3(C)
    cdef floating* Hpp = _ptr3(Hp)
    cdef const floating* rmp = NULL if rmask is None else &rmask[0, 0]
    cdef floating* hmp = NULL if hm is None else &hm[0, 0]
    cdef floating* h2p
    cdef Py_ssize_t nbias = 0, r0, r1
    cdef floating* Zp = &Z[0, 0]
    cdef floating* Gp = _ptr3(G)
    cdef Py_ssize_t zstride = Z.shape[1]
    cdef bint fused
    if B == 0 or T == 0:
        return
    if rmp != NULL and hmp == NULL:
        raise ValueError("forward: recurrent mask needs the hm scratch buffer")
    if mode not in (0, 1, 2):
        raise ValueError(f"forward: unknown mode {mode}")
    nt = nt if nt > 1 else 1
    # (x_t rows lie T * I apart: a BLAS leading dimension, a C int)
    fused = fuse and mode == 0 and lp == NULL and T * I <= INT_MAX_C
    if Gp == NULL and not fused and mode != 2:
        raise ValueError("forward: G is needed unless fuse is set (and there are no lengths)")
    if mode != 0:
        span = _span(&hs[0, 0])
        n_panels = (H + span - 1) // span
        if hs2 is None or hs2.shape[0] != B or hs2.shape[1] != H:
            raise ValueError(f"forward: mode {mode} needs hs2 (B, H)")
        if mode == 1:
            if Pu is None or Pu.shape[0] != _packed_len(H, span, _vlen(&hs[0, 0])):
                raise ValueError("forward: mode 1 needs Pu (packed_len(H))")
            if Gp == NULL:
                raise ValueError("forward: mode 1 needs G")
            nt = n_threads if n_threads < n_panels else <int> n_panels
            nt = nt if nt > 1 else 1
            if rmp != NULL and nt > 1:
                raise ValueError("forward: the unit split cannot take a recurrent mask")
        else:
            if Pu is None or Pu.shape[0] != _stacked_len(I, H, span, _vlen(&hs[0, 0])):
                raise ValueError("forward: mode 2 needs Pu (stacked_len(I, H))")
            if lp != NULL and reverse:
                raise ValueError("forward: mode 2 cannot run lengths backwards")
            nbias = Pu.shape[0] - Pu.shape[0] // (I + H + 1)  # where the bias starts
        # a panel is at most 4 * span wide (padding only rounds a short last one up)
        if Z.shape[0] < nt or zstride < B * 4 * span:
            raise ValueError(f"forward: Z too small for mode {mode}")
        h2p = &hs2[0, 0]
        for b in range(B):
            L = T if lp == NULL else lp[b]
            Lmax = L if L > Lmax else Lmax
    elif Z.shape[0] != B or zstride != H4:
        raise ValueError("forward: Z must be (B, 4H) for the BLAS path")
    with nogil:
        if mode == 0 and nt == 1:
            _blas_threads(blas_threads)
            _forward_rows(0, B, T, I, H, &x[0, 0, 0], &W[0, 0], &U[0, 0], &bias[0],
                          lp, reverse, rmp, hmp, yp, Gp, Cp, Hpp,
                          &hs[0, 0], &cs[0, 0], Zp, blas_threads, fused)
            _blas_threads(blas_threads)
        elif mode == 0:
            _blas_threads(1)
            for tid in prange(nt, num_threads=nt, schedule='static', chunksize=1):
                _forward_rows((tid * B) // nt, ((tid + 1) * B) // nt, T, I, H,
                              &x[0, 0, 0], &W[0, 0], &U[0, 0], &bias[0],
                              lp, reverse, rmp, hmp, yp, Gp, Cp, Hpp,
                              &hs[0, 0], &cs[0, 0], Zp, 1, fused)
            _blas_threads(blas_threads)
        elif mode == 2:
            # the team packs [W; U] panel by panel, meets once, then each thread
            # runs the whole sequence on its slice of the batch (no barrier per
            # step): [x_t, h_prev] @ panel and the cell, panel by panel
            _blas_threads(1)
            with parallel(num_threads=nt):
                tid = threadid()
                team = cyl_stream_team_size()
                p0 = (tid * n_panels) // team
                p1 = ((tid + 1) * n_panels) // team
                _pack_stacked(I, H, &W[0, 0], &U[0, 0], &bias[0], &Pu[0], &Pu[0] + nbias,
                              p0, p1)
                cyl_stream_barrier()
                r0 = (tid * B) // team
                r1 = ((tid + 1) * B) // team
                _forward_panels(r0, r1, 0, n_panels, False, T, H, Lmax, &x[0, 0, 0], I,
                                &Pu[0], &Pu[0] + nbias, lp, reverse, rmp, hmp, yp, Gp, Cp,
                                Hpp, &hs[0, 0], h2p, &cs[0, 0], Zp + tid * zstride)
            _blas_threads(blas_threads)
        else:
            # mode 1: each thread packs, projects and steps its own units; its
            # projection (single-threaded BLAS: a BLAS pool spinning next to the
            # team would starve it) writes only the G columns it reads later
            _blas_threads(1)
            with parallel(num_threads=nt):
                tid = threadid()
                team = cyl_stream_team_size()
                p0 = (tid * n_panels) // team
                p1 = ((tid + 1) * n_panels) // team
                _project_units(p0 * span, p1 * span if p1 * span < H else H, B * T, I, H,
                               &x[0, 0, 0], &W[0, 0], &G[0, 0, 0])
                _pack_recurrent(H, &U[0, 0], &Pu[0], p0, p1)
                _forward_panels(0, B, p0, p1, team > 1, T, H, Lmax, NULL, 0, &Pu[0],
                                &bias[0], lp, reverse, rmp, hmp, yp, &G[0, 0, 0], Cp, Hpp,
                                &hs[0, 0], h2p, &cs[0, 0], Zp + tid * zstride)
            _blas_threads(blas_threads)


cdef inline void _project_units(Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t M, Py_ssize_t I,
                                Py_ssize_t H, const floating* x, const floating* W,
                                floating* G) noexcept nogil:
    """The gate columns of units [j0, j1) of G (M, 4H) = X (M, I) @ W (I, 4H)."""
    cdef Py_ssize_t g
    if j1 > j0:
        for g in range(4):
            gemm(False, False, <int> M, <int> (j1 - j0), <int> I, 1, x, <int> I,
                 W + g * H + j0, <int> (4 * H), 0, G + g * H + j0, <int> (4 * H))


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
