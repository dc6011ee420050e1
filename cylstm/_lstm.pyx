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
from libc.stdint cimport int64_t, uint16_t, uintptr_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy, memset

from cylstm._blas cimport gemm, gemm_tiled
from cylstm._cell cimport (bf16_round, cell_forward, cell_forward_units, cell_backward,
                           cell_backward_units, cyl_cell_panels_f32)
from cylstm._isa cimport (CYL_ISA_VARIANTS, cyl_cpu_detected_level, cyl_cpu_force,
                          cyl_cpu_level, cyl_ftz_begin, cyl_ftz_end)

from cylstm._panel cimport (CYL_STREAM_VLD, CYL_STREAM_VLF, PANEL_UNITS_F32_C,
                            PANEL_UNITS_F64_C, padded_units, panel_cells, panel_product,
                            cyl_pack_t_f32, cyl_panel_get_kblock, cyl_panel_set_kblock,
                            cyl_panel_get_stream_min, cyl_panel_set_stream_min,
                            cyl_panel_set_pf_rest, cyl_panel_set_pf_spread,
                            cyl_panel_set_block_rows,
                            panel_span, panel_vlen, stream_next)

cdef enum:
    INT_MAX_C = 2147483647     # BLAS (LP64) dimensions and leading dimensions are ints
PANEL_UNITS_F32 = PANEL_UNITS_F32_C
PANEL_UNITS_F64 = PANEL_UNITS_F64_C
# Whether the kernels were compiled once per ISA level (x86-64 GCC >= 12 / Clang on
# Linux, without -DCYLSTM_NO_CLONES) or once for all (include/cylstm_cpu.h)
ISA_VARIANTS = bool(CYL_ISA_VARIANTS)


cdef extern from "cylstm_bf16.h" nogil:
    # AMX tiles for the mixed_bfloat16 products (include/cylstm_bf16.h)
    Py_ssize_t cyl_bf16_tiles_len(Py_ssize_t K, Py_ssize_t N) noexcept
    Py_ssize_t cyl_bf16_abuf_len(Py_ssize_t K) noexcept
    Py_ssize_t cyl_bf16_abuf2_len(Py_ssize_t K, Py_ssize_t K2) noexcept
    void cyl_bf16_tiles_pack(const float* W, Py_ssize_t K, Py_ssize_t N, Py_ssize_t ldw,
                             uint16_t* P) noexcept
    void cyl_bf16_tiles_pack_strided(const float* W, Py_ssize_t K, Py_ssize_t N,
                                     Py_ssize_t sk, Py_ssize_t sn, uint16_t* P) noexcept
    void cyl_amx_tiles_pack(const float* W, Py_ssize_t K, Py_ssize_t N, Py_ssize_t ldw,
                            uint16_t* P) noexcept
    void cyl_amx_tiles_pack_t(const float* W, Py_ssize_t K, Py_ssize_t N, Py_ssize_t ldw,
                              uint16_t* P) noexcept
    int cyl_amx_bf16_usable() noexcept
    int cyl_bf16_set_dot_rows(int n) noexcept
    enum: CYL_BF16_DOT_DEFAULT
    int cyl_amx_bf16_status() noexcept
    int cyl_amx_force(int on) noexcept
    int cyl_bf16_dots_usable() noexcept
    int cyl_bf16_dots_force(int on) noexcept
    int cyl_bf16_dots_status() noexcept
    int cyl_bf16_engine() noexcept
    void cyl_amx_bf16_gemm(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float* A,
                           Py_ssize_t lda, const uint16_t* P, float* C, Py_ssize_t ldc,
                           int accumulate, uint16_t* abuf) noexcept
    void cyl_amx_bf16_gemm2(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float* A,
                            Py_ssize_t lda, const uint16_t* P, Py_ssize_t K2,
                            const float* A2, Py_ssize_t lda2, const uint16_t* P2, float* C,
                            Py_ssize_t ldc, int accumulate, uint16_t* abuf) noexcept
    void cyl_amx_bf16_gemm_tn(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float* A,
                              Py_ssize_t lda, const uint16_t* P, float* C, Py_ssize_t ldc,
                              int accumulate, uint16_t* abuf) noexcept

# What cyl_amx_bf16_status() answers
AMX_STATUS = {0: "the CPU has no AMX-BF16 (or no AVX512-BF16)",
              1: "this build has no AMX kernel (not x86-64 Linux with GCC >= 11 or Clang)",
              2: "Linux refused the AMX state (arch_prctl ARCH_REQ_XCOMP_PERM)",
              3: "a level below AVX-512 is forced (CYLSTM_CPU)",
              4: "turned off (cylstm._lstm._force_amx(False))",
              5: "usable"}


def amx_status():
    """(code, sentence): whether the AMX bf16 kernel runs in this process (it asks
    Linux for the AMX state the first time); code 5 is usable (AMX_STATUS)."""
    cdef int code = cyl_amx_bf16_status()
    return code, AMX_STATUS.get(code, "unknown")


def amx_usable():
    """Whether the AMX bf16 kernel runs in this process now."""
    return bool(cyl_amx_bf16_usable())


def _force_amx(bint on):
    """Turn the AMX kernel off (False) or back to detection (True); returns whether
    it was on before (tests: the planner then takes the emulated paths)."""
    return cyl_amx_force(1 if on else 0) != 0


#: What runs the tile-layout bf16 products, by cyl_bf16_engine()'s answer
BF16_ENGINES = {0: None, 1: "avx512_bf16", 2: "amx"}


def bf16_engine():
    """What runs ``compute_dtype="bfloat16"``'s products in this process now:
    "amx" (AMX tiles, AVX512-BF16 dot products for products of a few rows),
    "avx512_bf16" (dot products only: a CPU without AMX, as AMD Zen 4, or AMX off
    or refused), or None (emulated: float32 products of bf16-rounded operands)."""
    return BF16_ENGINES[cyl_bf16_engine()]


def _bf16_engine_why():
    """Why the bf16 kernel cannot run here (for error messages)."""
    code = cyl_bf16_dots_status()
    if code == 0:
        return "the CPU has no AVX512-BF16"
    if code == 4:
        return "AVX512-BF16 turned off (cylstm._lstm._force_bf16_dots(False))"
    return AMX_STATUS.get(code, "unknown").replace("AMX kernel", "bf16 kernel")


def _force_bf16_dots(bint on):
    """Turn the AVX512-BF16 kernels off (False: with them AMX's, whose rounding and
    packs they are; the planner then emulates) or back to detection (True);
    returns whether they were on before.  Tests and measurements."""
    return cyl_bf16_dots_force(1 if on else 0) != 0


def bf16_tiles_len(Py_ssize_t K, Py_ssize_t N):
    """uint16 elements of the AMX tile-packed bf16 copy of a K x N matrix."""
    return cyl_bf16_tiles_len(K, N)


def bf16_abuf2_len(Py_ssize_t K, Py_ssize_t K2):
    """uint16 elements of one thread's A scratch for a fused step's two products,
    over K (x_t @ W) and K2 (h_prev @ U)."""
    return cyl_bf16_abuf2_len(K, K2)


def bf16_abuf_len(Py_ssize_t K):
    """uint16 elements of one thread's A scratch for products over K."""
    return cyl_bf16_abuf_len(K)


def bf16_tiles_pack(const float[:, ::1] W, uint16_t[::1] out, bint transposed=False,
                    bint hardware=False):
    """Pack W (K x N float32; ``transposed``: W^T, K = W's columns) into ``out``
    (bf16_tiles_len(K, N) uint16), rounded to bfloat16 (nearest even) in AMX's tile
    layout (include/cylstm_bf16.h).  ``hardware``: the AVX-512 BF16 pack (where
    bf16_engine() is not None: the packs the bf16 paths run, of W, U, U^T, W^T and
    dz), which flushes denormals to zero, as the products do with their inputs."""
    cdef Py_ssize_t K = W.shape[1] if transposed else W.shape[0]
    cdef Py_ssize_t N = W.shape[0] if transposed else W.shape[1]
    if out.shape[0] != cyl_bf16_tiles_len(K, N):
        raise ValueError(f"bf16_tiles_pack: out must hold {cyl_bf16_tiles_len(K, N)} "
                         f"elements for a {K} x {N} matrix; got {out.shape[0]}")
    if hardware and cyl_bf16_engine() == 0:
        raise ValueError(f"bf16_tiles_pack: the hardware pack needs AVX512-BF16 "
                         f"({_bf16_engine_why()})")
    if K == 0 or N == 0:
        return
    with nogil:
        if hardware and transposed:
            cyl_amx_tiles_pack_t(&W[0, 0], K, N, K, &out[0])
        elif hardware:
            cyl_amx_tiles_pack(&W[0, 0], K, N, N, &out[0])
        elif transposed:
            cyl_bf16_tiles_pack_strided(&W[0, 0], K, N, 1, K, &out[0])
        else:
            cyl_bf16_tiles_pack(&W[0, 0], K, N, N, &out[0])


def _set_bf16_dot_rows(int n):
    """Products of at most ``n`` rows (0: none) skip the AMX tiles for AVX512-BF16
    dot products (include/cylstm_bf16.h); returns the previous value.  Tests and
    measurements only: BF16_DOT_ROWS (_tuning's) is the default."""
    return cyl_bf16_set_dot_rows(n)


def _set_panel_prefetch(bint on):
    """Whether the AVX2 six-row panel blocks after a pass's first prefetch their
    own weight rows (include/cylstm_panel.h, CYL_PF_DIST_REST); returns the
    previous setting.  This module's sequence kernels only; measuring and tests:
    it changes no result."""
    return bool(cyl_panel_set_pf_rest(on))


def _set_panel_spread(int n):
    """Over how many of a K block's passes the AVX2 six-row panel blocks spread
    the stream of the next block (include/cylstm_panel.h, CYL_PANEL_PF_SPREAD;
    0: all in the first pass, with no prefetch of a pass's own rows, the
    earlier scheme); returns the previous value.  Use cylstm._cpu.panel_spread,
    which sets every extension; measuring and tests: it changes no result."""
    return cyl_panel_set_pf_spread(n)


def _set_panel_block_rows(bint on):
    """Whether the AVX2 passes over K-blocked panels split their rows so that no
    block leaves fewer than four (include/cylstm_panel.h, CYL_ROWS6_NEXT), or as
    over whole panels; returns the previous setting.  This extension only: use
    cylstm._cpu.panel_block_rows, which sets every extension; measuring and
    tests: it changes no result."""
    return bool(cyl_panel_set_block_rows(on))


def _set_panel_kblock(Py_ssize_t nbytes):
    """The K-block budget of the AVX2 six-row panel passes, in bytes of a panel
    (include/cylstm_panel.h, cyl_panel_kblock; 0: whole panels); returns the
    previous one.  Set for every extension by cylstm._cpu.set_panel_kblock; it
    changes no result."""
    return cyl_panel_set_kblock(nbytes)


def _set_panel_stream_min(Py_ssize_t nbytes):
    """The size the weights of a product must pass for its kernel to stream in the
    next panel (include/cylstm_panel.h, cyl_panel_set_stream_min); returns the
    previous one.  Set for every extension by cylstm._cpu.set_panel_stream_min; it
    changes no result."""
    return cyl_panel_set_stream_min(nbytes)


def _panel_stream_min():
    """The stream threshold in force (bytes of a product's weights)."""
    return cyl_panel_get_stream_min()


def _panel_kblock():
    """The K-block budget in force (bytes; 0: whole panels)."""
    return cyl_panel_get_kblock()


def round_bf16(const float[::1] a, float[::1] out):
    """out = a rounded to bfloat16 (nearest even), widened back to float32: the C
    twin of :func:`cylstm.quantization.round_bfloat16` (cyl_bf16_roundf), which
    takes this for float32 arrays (numpy's ufuncs took 20 ms for a 1024 x 4096
    kernel, the training step's copy of each weight matrix)."""
    cdef Py_ssize_t i, n = a.shape[0]
    if out.shape[0] != n:
        raise ValueError(f"round_bf16: out must hold {n} elements; got {out.shape[0]}")
    with nogil:
        for i in range(n):
            out[i] = bf16_round(a[i])


def amx_gemm(const float[:, ::1] A, const uint16_t[::1] P, float[:, ::1] C,
             bint accumulate=False, bint transa=False, const float[:, ::1] A2=None,
             const uint16_t[::1] P2=None):
    """C (M x N) = (or +=) bf16(A) (M x K) @ P (tile-packed K x N): the bf16 kernel
    (bf16_engine()'s) alone, for tests (``transa``: A given as its transpose, K x M; ``A2``, ``P2``:
    + bf16(A2) (M x K2) @ P2 in the same pass, as a fused step).  ValueError
    where it cannot run."""
    cdef Py_ssize_t M = A.shape[1] if transa else A.shape[0]
    cdef Py_ssize_t K = A.shape[0] if transa else A.shape[1], N = C.shape[1]
    cdef Py_ssize_t K2 = 0 if A2 is None else A2.shape[1]
    cdef uint16_t[::1] abuf
    if A2 is not None:
        if transa or P2 is None or A2.shape[0] != M:
            raise ValueError(f"amx_gemm: A2 must have A's {M} rows, with P2, not transa")
        if P2.shape[0] != cyl_bf16_tiles_len(K2, N):
            raise ValueError(f"amx_gemm: P2 must hold {cyl_bf16_tiles_len(K2, N)} elements")
        if cyl_bf16_engine() == 0:
            raise ValueError(f"amx_gemm: the bf16 kernel cannot run here: "
                             f"{_bf16_engine_why()}")
        if M == 0 or N == 0:
            return
        import numpy as np
        abuf = np.empty(cyl_bf16_abuf2_len(K, K2), np.uint16)
        with nogil:
            cyl_amx_bf16_gemm2(M, N, K, &A[0, 0], K, &P[0], K2, &A2[0, 0], K2, &P2[0],
                               &C[0, 0], N, accumulate, &abuf[0])
        return
    if C.shape[0] != M:
        raise ValueError(f"amx_gemm: C must have {M} rows (A's); got {C.shape[0]}")
    if P.shape[0] != cyl_bf16_tiles_len(K, N):
        raise ValueError(f"amx_gemm: P must hold {cyl_bf16_tiles_len(K, N)} elements")
    if cyl_bf16_engine() == 0:
        raise ValueError(f"amx_gemm: the bf16 kernel cannot run here: {_bf16_engine_why()}")
    if M == 0 or N == 0:
        return
    import numpy as np
    abuf = np.empty(cyl_bf16_abuf_len(K), np.uint16)
    with nogil:
        if transa:
            cyl_amx_bf16_gemm_tn(M, N, K, &A[0, 0], M, &P[0], &C[0, 0], N, accumulate,
                                 &abuf[0])
        else:
            cyl_amx_bf16_gemm(M, N, K, &A[0, 0], K, &P[0], &C[0, 0], N, accumulate,
                              &abuf[0])


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


cdef void set_blas_threads(int n) noexcept nogil:
    """SciPy's BLAS on ``n`` threads (nothing until cylstm._config installs the
    setter).  The only holder of the setter: _stream.pyx cimports this
    (cylstm/_lstm.pxd)."""
    if _blas_set_threads != NULL:
        _blas_set_threads(n)


cdef inline void _step_gemm(bint tiled, int m, int n, int k, const floating* a, int lda,
                            const floating* b, floating beta, floating* c,
                            bint rev) noexcept nogil:
    """A step's ``C (m, n) = A (m, k) @ B (k, n) + beta C`` (rows of B and C n
    apart), as small tiles or as one call (see _tuning.STEP_TILE_BLAS_CORES);
    gemm_tiled itself sends one-row products to gemv."""
    if tiled or m == 1:
        gemm_tiled(False, m, n, k, 1, a, lda, b, n, beta, c, n, rev)
    else:
        gemm(False, False, m, n, k, 1, a, lda, b, n, beta, c, n)


cdef inline void _recurrent_operand(Py_ssize_t n, const floating* h, const floating* rmask,
                                    bint bf16, floating* out) noexcept nogil:
    """``out`` = h_prev as the recurrent product reads it: ``h * rmask``
    (recurrent dropout; ``rmask`` may be NULL), rounded to bfloat16 when ``bf16``
    (the mixed_bfloat16 policy: bf16 operands, float32 sums).  The carried state
    ``h`` itself stays unrounded."""
    cdef Py_ssize_t j
    if bf16 and rmask != NULL:
        for j in range(n):
            out[j] = bf16_round(h[j] * rmask[j])
    elif bf16:
        for j in range(n):
            out[j] = bf16_round(h[j])
    else:
        for j in range(n):
            out[j] = h[j] * rmask[j]


cdef void _forward_rows(Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t T,
                        Py_ssize_t I, Py_ssize_t H,
                        const floating* x, const floating* W,
                        const floating* U, const floating* bias,
                        const int64_t* lengths, bint reverse,
                        const floating* rmask, floating* hm,
                        floating* y, floating* G, floating* C, floating* Hp,
                        floating* hs, floating* cs, floating* Z,
                        int big_threads, bint fused, bint tiled, bint bf16,
                        const uint16_t* Wt, const uint16_t* Ut,
                        uint16_t* abuf) noexcept nogil:
    """Forward over samples [b0, b1) for all steps; hs/cs hold the state.

    ``fused`` (no lengths): each step computes x_t @ W + h_prev @ U into Z,
    and ``G`` only receives the activated gates (training; NULL in
    inference).  Otherwise the input projection for all steps is one GEMM
    into G first (samples at different time indices need it).

    ``tiled``: the per-step products go to BLAS as small tiles (gemm_tiled; a
    plan's ``tile_steps``), else in one call each.

    BLAS may use ``big_threads`` threads for the input projection; the time
    loop always runs single-threaded BLAS (its products are too small for a
    thread team, and idle BLAS workers spinning between steps steal the core
    the gate math needs).

    ``rmask`` (B, H) or NULL: recurrent dropout, one mask per sequence as in
    Keras: the recurrent product reads h_prev * mask (kept in ``hm``), the
    carried state and the outputs stay unmasked.

    ``bf16`` (float32 only; the mixed_bfloat16 policy): the recurrent product
    reads bf16(h_prev) (or bf16(h_prev * mask)), rounded into ``hm`` every step,
    which ``Hp`` then keeps for dU; x, W and U arrive rounded already
    (cylstm.functional), so every product has bf16 operands and float32 sums.

    ``Ut`` not NULL (float32, ``bf16``; the "rows_bf16" paths): the products run
    on AMX tiles (include/cylstm_bf16.h) over ``Wt`` and ``Ut``, W and U packed
    in its tile layout, the kernel rounding x and hm to bf16 as it reads them
    (x may come unrounded), with ``abuf`` as its scratch.
    """
    cdef Py_ssize_t nb = b1 - b0, H4 = 4 * H
    cdef Py_ssize_t s, b, t, L, row, Lmax = 0
    cdef size_t hbytes = H * sizeof(floating)
    cdef floating* hsrc = hm if (rmask != NULL or bf16) else hs
    cdef floating* gates
    if nb <= 0:
        return
    for b in range(b0, b1):
        L = T if lengths == NULL else lengths[b]
        Lmax = L if L > Lmax else Lmax
    if not fused:
        # G[b0:b1] (nb*T, 4H) = X[b0:b1] (nb*T, I) @ W (I, 4H); bias joins in the cell
        if floating is float and Ut != NULL:
            cyl_amx_bf16_gemm(nb * T, H4, I, x + b0 * T * I, I, Wt, G + b0 * T * H4, H4,
                              0, abuf)
        else:
            set_blas_threads(big_threads)
            gemm(False, False, <int> (nb * T), <int> H4, <int> I, 1,
                 x + b0 * T * I, <int> I, W, <int> H4, 0, G + b0 * T * H4, <int> H4)
            set_blas_threads(1)
    for s in range(Lmax):
        if rmask != NULL or bf16:
            _recurrent_operand(nb * H, hs + b0 * H, NULL if rmask == NULL else rmask + b0 * H,
                               bf16, hm + b0 * H)
        if fused:
            # every sample is at the same t: Z (nb, 4H) = x_t (nb, I) @ W, rows T*I apart
            t = T - 1 - s if reverse else s
            if floating is float and Ut != NULL:
                # on tiles both products in one pass: Z (nb, 4H) = x_t @ W + h_prev @ U,
                # the sums kept in the C tiles between the two (the same bits as two
                # calls; (100, 32, 128, 256) 1 thread 6.12 -> 5.34 ms, (50, 64, 512,
                # 512) 25.4 -> 23.8, 2 threads 3.84 -> 3.17 and 13.5 -> 11.9, Intel(R)
                # Xeon(R) Processor (2 cores), 2026-12-03, interleaved in one process)
                cyl_amx_bf16_gemm2(nb, H4, I, x + (b0 * T + t) * I, T * I, Wt, H,
                                   hsrc + b0 * H, H, Ut, Z + b0 * H4, H4, 0, abuf)
            else:
                _step_gemm(tiled, <int> nb, <int> H4, <int> I, x + (b0 * T + t) * I,
                           <int> (T * I), W, 0, Z + b0 * H4, False)
        # Z[b0:b1] (nb, 4H) (+)= h_prev (nb, H) @ U (H, 4H)
        if floating is float and Ut != NULL:
            if not fused:
                cyl_amx_bf16_gemm(nb, H4, H, hsrc + b0 * H, H, Ut, Z + b0 * H4, H4, 0, abuf)
        else:
            _step_gemm(tiled, <int> nb, <int> H4, <int> H, hsrc + b0 * H, <int> H,
                       U, 1 if fused else 0, Z + b0 * H4, s % 2 == 1)
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
# kernel (include/cylstm_panel.h) over weights packed once per call into
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
# six rows per weight load on AVX-512.  cylstm.functional.plan_forward says
# which shapes each mode serves, and what was measured.
# ---------------------------------------------------------------------------

cdef inline Py_ssize_t _snake(Py_ssize_t q, Py_ssize_t s, Py_ssize_t n) noexcept nogil:
    """The q-th panel (of n) that step s visits: in order on even steps, in
    reverse on odd ones.

    Every step reads all of U.  When U is larger than the core's L2, visiting
    the panels in the same order each step evicts each panel just before it is
    needed again (LRU's worst case), and every step streams all of U from L3.
    Turning back each step starts it on the panels the last one left in L2.
    Measured on a 2-vCPU Xeon (Sapphire Rapids, 2 MiB L2), one thread, batch 1,
    one step of h @ U on packed panels: H = 384 (2.4 MB) 70 -> 45 us, H = 512
    (4.2 MB) 217 -> 152 us, H = 768 (9.4 MB) 474 -> 400 us; no change while U
    fits in L2 (H = 256: 12.6 -> 12.2 us).  Each panel's outputs are summed in
    the same order whichever way the step walks, so results are unchanged."""
    return q if s % 2 == 0 else n - 1 - q


cdef inline Py_ssize_t _packed_len(Py_ssize_t H, Py_ssize_t span,
                                   Py_ssize_t vl) noexcept nogil:
    cdef Py_ssize_t last
    if H <= 0:
        return 0
    last = H - ((H - 1) // span) * span
    return H * 4 * (H - last + padded_units(last, vl))


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
    _pack_panels(0, H, H, NULL, U, NULL, P, NULL, p0, p1)


cdef void _pack_stacked(Py_ssize_t I, Py_ssize_t H, const floating* W, const floating* U,
                        const floating* bias, floating* P, floating* bp,
                        Py_ssize_t p0, Py_ssize_t p1) noexcept nogil:
    """Pack panels [p0, p1) of [W; U] ((I + H), 4H) as :func:`_pack_recurrent`
    does U (K = I + H rows, panel p at p * K * 4 * span; the streaming
    runner's layout), and, if ``bp``, the bias in panel order (panel p's
    4 hb_pad entries at p * 4 * span, zero for padding units)."""
    _pack_panels(I, H, H, W, U, bias, P, bp, p0, p1)


cdef void _pack_panels(Py_ssize_t I, Py_ssize_t KU, Py_ssize_t H, const floating* W,
                       const floating* U, const floating* bias, floating* P, floating* bp,
                       Py_ssize_t p0, Py_ssize_t p1) noexcept nogil:
    """Panels [p0, p1) of the rows of W (I, 4H) then of U (KU, 4H): K = I + KU
    rows per panel (KU is H or 0), and the bias in panel order if ``bp``."""
    cdef Py_ssize_t span = panel_span(P), vl = panel_vlen(P), H4 = 4 * H, K = I + KU
    cdef Py_ssize_t p, j0, hb, hp, w, k, g, u
    cdef const floating* src
    cdef floating* dst
    # row k of [W; U] outermost: each row is read once, in address order (one
    # panel at a time would read it in 64-byte pieces 4H apart, which the
    # prefetchers do not follow: 4 MiB of U took 0.6 ms that way on a Xeon)
    for k in range(K):
        for p in range(p0, p1):
            j0 = p * span
            hb = H - j0 if H - j0 < span else span
            hp = padded_units(hb, vl)
            w = 4 * hp
            src = (W + k * H4 if k < I else U + (k - I) * H4) + j0
            dst = P + j0 * 4 * K + k * w
            for g in range(4):
                for u in range(hb):
                    dst[g * hp + u] = src[g * H + u]
                for u in range(hb, hp):
                    dst[g * hp + u] = 0
    for p in range(p0, p1):
        j0 = p * span
        hb = H - j0 if H - j0 < span else span
        hp = padded_units(hb, vl)
        if bp != NULL:
            for g in range(4):
                for u in range(hp):
                    bp[j0 * 4 + g * hp + u] = bias[g * H + j0 + u] if u < hb else 0


cdef inline void _stacked_product(const floating* P, Py_ssize_t w, Py_ssize_t nrows,
                                  const floating* x, Py_ssize_t I, Py_ssize_t ldx,
                                  const floating* h, Py_ssize_t H,
                                  floating* z, const void* next=NULL) noexcept nogil:
    """z (nrows, w) = [x (nrows, I; rows ldx apart), h (nrows, H)] @ panel (I + H, w)
    (I may be 0: h @ a panel of U).  ``next``: the panel this thread reads after
    this one, or NULL (the kernel may prefetch it)."""
    panel_product(P, w, nrows, x, I, ldx, h, H, H, z, w, next)


cdef inline Py_ssize_t _plain_width(floating* kind) noexcept nogil:
    """Columns per panel of a plain (not gate-structured) packed matrix: four vectors."""
    return 4 * panel_vlen(kind)


cdef inline Py_ssize_t _plain_len(Py_ssize_t K, Py_ssize_t N, floating* kind) noexcept nogil:
    cdef Py_ssize_t pw = _plain_width(kind)
    return K * ((N + pw - 1) // pw) * pw


cdef void _pack_plain(Py_ssize_t K, Py_ssize_t N, const floating* M, Py_ssize_t sk,
                      Py_ssize_t sn, floating* P) noexcept nogil:
    """Pack a plain matrix (K rows, N columns; element (k, n) at M[k * sk + n * sn])
    into the panel kernel's layout, panels of _plain_width columns: panel p at
    p * K * pw holds columns j0 .. j0 + w as a block (K x wp) row-major, wp = w
    rounded up to whole vectors, the columns past w zero.  There is no
    transposed tail (include/cylstm_panel.h): at H = 50 its 2 columns of dot
    products per row took a third of the backward ((100, 32, 10, 50), one
    thread: 3.56 ms against 2.34 at H = 48), where a zero column costs one
    lane.  _plain_product writes the padded columns, so its output rows are
    _plain_padded(N) wide.  The source is read in address order (its rows if
    sn == 1, else its columns, which are then its rows in memory)."""
    cdef Py_ssize_t pw = _plain_width(P), vl = panel_vlen(P), p, j0, w, wp, k, j, jj, k0, k1, kb
    cdef floating* dst
    for p in range((N + pw - 1) // pw):
        j0 = p * pw
        w = N - j0 if N - j0 < pw else pw
        wp = ((w + vl - 1) // vl) * vl
        dst = P + p * K * pw
        if wp > w:
            memset(dst, 0, K * wp * sizeof(floating))
        if sn == 1:
            for k in range(K):
                for j in range(w):
                    dst[k * wp + j] = M[k * sk + j0 + j]
        else:
            # four source rows (columns of the panel) at a time, each read in
            # address order, into 4 adjacent elements of each panel row, over
            # blocks of kb panel rows (128 KiB: they stay in L2 for the w / 4
            # passes).  A column at a time wrote one element per 64-byte line,
            # w passes over a panel larger than L2: U^T at H = 1024 took 7.7 ms.
            # float32 rows of the source (U^T's columns): 8 x 8 blocks through
            # registers (cyl_pack_t_f32): 0.155 -> 0.072 ms at H = 256, 0.604 ->
            # 0.291 at 512, 5.27 -> 3.57 at 1024 (memory-bound there), once per
            # training step (AMD EPYC (2 cores), Zen 3, 2026-12-07, min of 30,
            # alternated with the loop below)
            kb = 131072 // (wp * <Py_ssize_t> sizeof(floating))
            k0 = 0
            while k0 < K:
                k1 = k0 + kb if k0 + kb < K else K
                if floating is float and sk == 1:
                    cyl_pack_t_f32(M + j0 * sn, sn, w, k0, k1, dst, wp)
                    k0 = k1
                    continue
                for j in range(0, w - w % 4, 4):
                    for k in range(k0, k1):
                        for jj in range(4):
                            dst[k * wp + j + jj] = M[k * sk + (j0 + j + jj) * sn]
                for j in range(w - w % 4, w):
                    for k in range(k0, k1):
                        dst[k * wp + j] = M[k * sk + (j0 + j) * sn]
                k0 = k1


cdef inline void _pack_transposed(Py_ssize_t H, const floating* U, floating* P) noexcept nogil:
    """Pack U^T (K = 4H rows, N = H columns) of U (H, 4H) row-major (the backward's
    dh = dz @ U^T): :func:`_pack_plain` reading U a row at a time."""
    _pack_plain(4 * H, H, U, 1, 4 * H, P)


cdef inline Py_ssize_t _plain_padded(Py_ssize_t N, floating* kind) noexcept nogil:
    """Columns a row of _plain_product's output needs: N rounded up to whole vectors."""
    cdef Py_ssize_t vl = panel_vlen(kind)
    return ((N + vl - 1) // vl) * vl


def transposed_width(Py_ssize_t H, dtype):
    """Row width of :func:`backward`'s ``dHp`` scratch: H rounded up to whole vectors
    (the panel product over U^T writes whole vectors)."""
    if str(dtype) == "float32":
        return _plain_padded(H, <float*> NULL)
    return _plain_padded(H, <double*> NULL)


def transposed_len(Py_ssize_t H, dtype):
    """Elements of U^T packed by :func:`pack_transposed` (the backward's ``PU``)."""
    if str(dtype) == "float32":
        return _plain_len(4 * H, H, <float*> NULL)
    return _plain_len(4 * H, H, <double*> NULL)


def pack_transposed(const floating[:, ::1] U, floating[::1] out):
    """Pack U^T for :func:`backward` (``out``: transposed_len(H) elements, 64-byte aligned)."""
    cdef Py_ssize_t H = U.shape[0]
    if U.shape[1] != 4 * H:
        raise ValueError(f"pack_transposed: U must be (H, 4H); got {U.shape[0], U.shape[1]}")
    if out.shape[0] != _plain_len(4 * H, H, &out[0]):
        raise ValueError("pack_transposed: out must be transposed_len(H) long")
    with nogil:
        _pack_transposed(H, &U[0, 0], &out[0])


def plain_len(Py_ssize_t K, Py_ssize_t N, dtype):
    """Elements of a (K, N) matrix packed by :func:`pack_plain`."""
    if str(dtype) == "float32":
        return _plain_len(K, N, <float*> NULL)
    return _plain_len(K, N, <double*> NULL)


def plain_width(dtype):
    """Columns per panel of :func:`pack_plain` (whole vectors; the last panel may be
    narrower, rounded up to whole vectors with zero columns)."""
    if str(dtype) == "float32":
        return _plain_width(<float*> NULL)
    return _plain_width(<double*> NULL)


def pack_plain(const floating[:, ::1] M, floating[::1] out):
    """Pack M (K, N) into panels of :func:`plain_width` columns (``out``:
    plain_len(K, N) elements; the streaming runner's Dense layers)."""
    cdef Py_ssize_t K = M.shape[0], N = M.shape[1]
    if K == 0 or N == 0 or out.shape[0] != _plain_len(K, N, &out[0]):
        raise ValueError(f"pack_plain: M must be non-empty and out plain_len(K, N) long; "
                         f"got M {K, N}, out {out.shape[0]}")
    with nogil:
        _pack_plain(K, N, &M[0, 0], N, 1, &out[0])


cdef inline void _plain_product(const floating* P, Py_ssize_t K, Py_ssize_t N, Py_ssize_t s,
                                Py_ssize_t nrows, const floating* a, Py_ssize_t lda,
                                floating* z, Py_ssize_t ldz) noexcept nogil:
    """z (nrows, N; rows ldz apart) = a (nrows, K; rows lda apart) @ the matrix
    _pack_transposed packed into P, panel by panel in _snake order for step s.
    Each row of z is written up to _plain_padded(N) (the zero columns of the
    last panel): ldz must be at least that."""
    cdef Py_ssize_t pw = _plain_width(z), vl = panel_vlen(z), n_p = (N + pw - 1) // pw
    cdef Py_ssize_t q, p, j0, w
    cdef const floating* nx
    for q in range(n_p):
        p = _snake(q, s, n_p)
        j0 = p * pw
        w = N - j0 if N - j0 < pw else pw
        w = ((w + vl - 1) // vl) * vl
        nx = P + _snake(q + 1, s, n_p) * K * pw if q + 1 < n_p else NULL
        panel_product(P + p * K * pw, w, nrows, a, K, lda, a, 0, 0, z + j0, ldz, nx)


cdef void _forward_panels(Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t T, Py_ssize_t H,
                          Py_ssize_t Lmax, const floating* x, Py_ssize_t I,
                          const floating* P, const floating* bias,
                          const int64_t* lengths, bint reverse,
                          const floating* rmask, floating* hm,
                          floating* y, floating* G, floating* C, floating* Hp,
                          floating* hs, floating* hs2, floating* cs,
                          floating* zs, Py_ssize_t s_begin, Py_ssize_t s_end) noexcept nogil:
    """Stacked time loop over rows [b0, b1), steps [s_begin, s_end) of Lmax
    (rows move between threads at step boundaries, see _stacked_rows): each
    step is the streaming runner's [x_t, h_prev] @ panel of the packed [W; U]
    ``P``, then the cell, panel by panel.  ``bias`` is in panel order; G, if
    not NULL, receives the gates (training); every row must be at the same
    time index (no lengths with ``reverse``).  ``hs`` holds h0 on entry and the
    final h on exit; ``hs2`` is the other half of the double buffer (rows
    [b0, b1) of both are this caller's alone for these steps).  ``rmask``
    (B, H) or NULL: recurrent dropout, the product reads h_prev * mask (kept
    in ``hm``)."""
    cdef Py_ssize_t span = panel_span(hs), vl = panel_vlen(hs), H4 = 4 * H, nb = b1 - b0
    cdef Py_ssize_t s, p, q, b, t, L, row, hb, hp, w, g, K = I + H
    cdef Py_ssize_t n_panels = (H + span - 1) // span
    cdef floating* zr
    cdef floating* cur
    cdef floating* nxt
    cdef floating* src
    cdef Py_ssize_t j
    cdef size_t ub = H * sizeof(floating)
    if nb <= 0:
        return
    for s in range(s_begin, s_end):
        cur = hs if s % 2 == 0 else hs2
        nxt = hs2 if s % 2 == 0 else hs
        src = cur
        if rmask != NULL:
            for j in range(b0 * H, b1 * H):
                hm[j] = cur[j] * rmask[j]
            src = hm
        t = T - 1 - s if reverse else s
        for q in range(n_panels):
            p = _snake(q, s, n_panels)
            hb = H - p * span if H - p * span < span else span
            hp = padded_units(hb, vl)
            w = 4 * hp
            _stacked_product(P + p * K * 4 * span, w, nb, x + (b0 * T + t) * I, I,
                             T * I, src + b0 * H, H, zs,
                             stream_next(P + _snake(q + 1, s, n_panels) * K * 4 * span,
                                         n_panels * K * 4 * span * sizeof(floating))
                             if q + 1 < n_panels else NULL)
            panel_cells(hb, hp, nb, zs, bias + p * 4 * span, cs + b0 * H + p * span,
                        nxt + b0 * H + p * span, H, lengths + b0 if lengths != NULL else NULL,
                        s)
            for b in range(b0, b1):
                if G == NULL or (lengths != NULL and s >= lengths[b]):
                    continue
                zr = zs + (b - b0) * w
                row = b * T + t
                for g in range(4):
                    memcpy(G + row * H4 + g * H + p * span, zr + g * hp,
                           hb * sizeof(floating))
        for b in range(b0, b1):
            L = T if lengths == NULL else lengths[b]
            if s >= L:  # finished: the state carries over unchanged
                memcpy(nxt + b * H, cur + b * H, ub)
                continue
            t = L - 1 - s if reverse else s
            row = b * T + t
            if Hp != NULL:
                memcpy(Hp + row * H, src + b * H, ub)
            if y != NULL:
                memcpy(y + row * H, nxt + b * H, ub)
            if C != NULL:
                memcpy(C + row * H, cs + b * H, ub)
    if s_end == Lmax and Lmax % 2 == 1:  # the final h is in hs2
        for b in range(b0, b1):
            memcpy(hs + b * H, hs2 + b * H, ub)


cdef enum:
    # the backward's [x_t, h_prev] gather for one weight-gradient GEMM (see B8)
    BACKWARD_GATHER_MAX_BYTES = 16 * 1024 * 1024
    # rows of dz the AMX backward packs at a time for [dW; dU] (B8): see
    # _tuning.AMX_BACK_ROWS
    AMX_BACK_ROWS_C = 512
AMX_BACK_ROWS = AMX_BACK_ROWS_C
BF16_DOT_ROWS = CYL_BF16_DOT_DEFAULT


cdef void _amx_weight_grads(Py_ssize_t r0, Py_ssize_t n, Py_ssize_t I, Py_ssize_t H,
                            const float* x, const float* Hp, const float* G, float* dx,
                            float* dW, float* dU, const uint16_t* amxT, uint16_t* dzP,
                            uint16_t* abuf) noexcept nogil:
    """(B8) and dx of rows [r0, r0 + n) on AMX tiles: [dW; dU] = [x, h_prev]^T dz
    over dz packed AMX_BACK_ROWS_C rows at a time (x^T and h_prev^T rounded from
    their rows, no gather: both products share each pack), dx = dz W^T over
    ``amxT``'s W^T (after its U^T).  dz and h_prev hold bf16 values already; x may
    be the caller's float32 (an AMX training forward keeps it): its rounding here
    is the one the forward's tiles applied."""
    cdef Py_ssize_t H4 = 4 * H, r = 0, kc
    while r < n:
        kc = n - r if n - r < AMX_BACK_ROWS_C else AMX_BACK_ROWS_C
        cyl_amx_tiles_pack(G + (r0 + r) * H4, kc, H4, H4, dzP)
        cyl_amx_bf16_gemm_tn(I, H4, kc, x + (r0 + r) * I, I, dzP, dW, H4, r > 0, abuf)
        cyl_amx_bf16_gemm_tn(H, H4, kc, Hp + (r0 + r) * H, H, dzP, dU, H4, r > 0, abuf)
        r += kc
    if dx != NULL:
        cyl_amx_bf16_gemm(n, I, H4, G + r0 * H4, H4, amxT + cyl_bf16_tiles_len(H4, H),
                          dx + r0 * I, I, 0, abuf)


cdef void _blas_weight_grads(Py_ssize_t r0, Py_ssize_t n, Py_ssize_t I, Py_ssize_t H,
                             const floating* x, const floating* W, const floating* Hp,
                             const floating* G, floating* dx, floating* dW,
                             floating* dU) noexcept nogil:
    """(B8) and dx of rows [r0, r0 + n) on BLAS (at the threads set for it):
    [dW; dU] (I+H, 4H) = [X, Hp]^T (I+H, n) @ dz (n, 4H), one GEMM over [x_t, h_prev]
    rows gathered side by side, so that BLAS packs dz once, not once for dW and
    again for dU ((100, 32, 10, 50) backward, one thread: the repacking was a tenth
    of it: 2.71 -> 2.47 ms).  The gathered copy is a transient the size of (I + H)
    / 4H of the gates, so only up to BACKWARD_GATHER_MAX_BYTES (a memory bound, not
    a tuned crossover: past it dz is long and its packing a small share); above
    that, or without the scratch, two GEMMs.  Then dx (n, I) = dz @ W^T.

    Where dU follows dW in memory (a model's flat gradient buffer, the per-thread
    partials, lstm_backward's own [dW; dU]) the one GEMM writes them in place; else
    into a scratch copied out after (I = H = 1024: 32 MiB of fresh pages and a 32
    MiB copy per step, AMD EPYC (2 cores), Zen 3, 2026-12-06)."""
    cdef Py_ssize_t H4 = 4 * H, r
    cdef floating* XH = NULL
    cdef floating* WU = NULL
    cdef bint adjacent = dU == dW + I * H4
    if 0 < n * (I + H) * <Py_ssize_t> sizeof(floating) <= BACKWARD_GATHER_MAX_BYTES:
        XH = <floating*> malloc(n * (I + H) * sizeof(floating))
    if XH != NULL:
        WU = dW if adjacent else <floating*> malloc((I + H) * H4 * sizeof(floating))
    if WU != NULL:
        for r in range(n):
            memcpy(XH + r * (I + H), x + (r0 + r) * I, I * sizeof(floating))
            memcpy(XH + r * (I + H) + I, Hp + (r0 + r) * H, H * sizeof(floating))
        gemm(True, False, <int> (I + H), <int> H4, <int> n, 1, XH, <int> (I + H),
             G + r0 * H4, <int> H4, 0, WU, <int> H4)
        if not adjacent:
            memcpy(dW, WU, I * H4 * sizeof(floating))
            memcpy(dU, WU + I * H4, H * H4 * sizeof(floating))
            free(WU)
    else:
        # dW (I, 4H) = X^T (I, n) @ dz (n, 4H)
        gemm(True, False, <int> I, <int> H4, <int> n, 1, x + r0 * I, <int> I,
             G + r0 * H4, <int> H4, 0, dW, <int> H4)
        # dU (H, 4H) = Hp^T (H, n) @ dz (n, 4H)
        gemm(True, False, <int> H, <int> H4, <int> n, 1, Hp + r0 * H, <int> H,
             G + r0 * H4, <int> H4, 0, dU, <int> H4)
    free(XH)
    if dx != NULL:
        # dx (n, I) = dz (n, 4H) @ W^T, W stored (I, 4H)
        gemm(False, True, <int> n, <int> I, <int> H4, 1, G + r0 * H4,
             <int> H4, W, <int> H4, 0, dx + r0 * I, <int> I)


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
                         int big_threads, bint bf16, const uint16_t* amxT,
                         bint loop_only=False) noexcept nogil:
    """BPTT over samples [b0, b1); dW/dU/db receive this slice's sums.  ``UT`` is
    U^T (4H, H) packed by _pack_transposed.

    ``bf16`` (the mixed_bfloat16 products): every dz is rounded to bfloat16 in
    place once db has taken it in float32, so that the products over it (B7, B8,
    dx) are bf16-operand products, as the forward's are (h_prev reaches this
    rounded; x, W and U too on BLAS, where lstm_backward passes rounded copies;
    on tiles the packs and the A rounding round them).  ``amxT`` (float32
    with bf16 only): U^T then W^T tile-packed (include/cylstm_bf16.h): those
    products run on AMX tiles, dz packed AMX_BACK_ROWS_C rows at a time; NULL: on
    BLAS and the panel kernel, the same sums in another order.

    The time loop runs single-threaded BLAS; the weight-gradient GEMMs after
    it may use ``big_threads``.  ``loop_only`` (BLAS, not AMX): the time loop and
    db only; the caller runs _blas_weight_grads over every slice's rows at once."""
    cdef Py_ssize_t nb = b1 - b0, H4 = 4 * H, hpw = _plain_padded(H, dW)
    cdef Py_ssize_t s, b, t, tp, L, row, j, r, Lmax = 0
    cdef const floating* cp
    cdef floating* dh
    cdef size_t hbytes = H * sizeof(floating)
    cdef bint inplace = lengths == NULL and T * H4 <= INT_MAX_C
    cdef const floating* dz
    cdef Py_ssize_t ldz
    cdef unsigned fp_mode
    cdef floating* gz
    cdef uint16_t* abuf = NULL
    cdef uint16_t* dzP = NULL
    cdef bint amx = False
    if floating is float:
        amx = amxT != NULL and nb > 0
    if amx:
        abuf = <uint16_t*> malloc(cyl_bf16_abuf_len(H4 if H4 > AMX_BACK_ROWS_C
                                                    else AMX_BACK_ROWS_C) * sizeof(uint16_t))
        dzP = <uint16_t*> malloc(cyl_bf16_tiles_len(AMX_BACK_ROWS_C, H4) * sizeof(uint16_t))
        if abuf == NULL or dzP == NULL:  # no memory for the tiles' scratch: BLAS, same sums
            free(abuf)
            free(dzP)
            abuf = dzP = NULL
            amx = False
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
    set_blas_threads(1)
    if bf16:
        memset(db, 0, H4 * sizeof(floating))
    # subnormal gradients (faded back through time) flushed: see cyl_ftz_begin
    fp_mode = cyl_ftz_begin()
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
            if bf16:  # db in float32 (the bias joins in float32), the products' dz in bf16
                gz = G + row * H4
                for j in range(H4):
                    db[j] += gz[j]
                    gz[j] = bf16_round(gz[j])
            if not inplace:
                memcpy(D + b * H4, G + row * H4, H4 * sizeof(floating))
        # (B7) dh_prev (nb, H) = dz (nb, 4H) @ UT (4H, H), on the panel kernel over
        # U^T packed once per call (OpenBLAS's small-matrix tiles ran this product
        # at about half the kernel's rate, six rows per weight load on AVX-512).
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
        if floating is float:
            if amx:
                cyl_amx_bf16_gemm(nb, H, H4, dz, ldz, amxT, dHp + b0 * hpw, hpw, 0, abuf)
            else:
                _plain_product(UT, H4, H, s, nb, dz, ldz, dHp + b0 * hpw, hpw)
        else:
            _plain_product(UT, H4, H, s, nb, dz, ldz, dHp + b0 * hpw, hpw)
        for b in range(b0, b1):
            L = T if lengths == NULL else lengths[b]
            if s < L:
                if rmask != NULL:
                    for j in range(H):
                        dhs[b * H + j] = dHp[b * hpw + j] * rmask[b * H + j]
                else:
                    memcpy(dhs + b * H, dHp + b * hpw, hbytes)
    set_blas_threads(big_threads)
    # (B8) and dx over all nb*T rows of this slice (padding rows are zero in dz)
    if amx:
        if floating is float:
            _amx_weight_grads(b0 * T, nb * T, I, H, x, Hp, G, dx, dW, dU, amxT, dzP, abuf)
        free(abuf)
        free(dzP)
        cyl_ftz_end(fp_mode)
        return
    if not bf16:  # db = sum over rows of dz (bf16: summed before dz was rounded)
        memset(db, 0, H4 * sizeof(floating))
        for r in range(b0 * T, b1 * T):
            for j in range(H4):
                db[j] += G[r * H4 + j]
    if not loop_only:
        _blas_weight_grads(b0 * T, nb * T, I, H, x, W, Hp, G, dx, dW, dU)
    cyl_ftz_end(fp_mode)


cdef inline floating* _ptr3(floating[:, :, ::1] a) noexcept nogil:
    return NULL if a is None else &a[0, 0, 0]


def pack_stacked(const floating[:, ::1] W, const floating[:, ::1] U,
                 const floating[::1] bias, floating[::1] out):
    """Pack [W; U] and the bias as ``forward_stacked`` / ``forward_units(prepacked=True)``
    read them (``out``: stacked_len(I, H) elements, 64-byte aligned)."""
    cdef Py_ssize_t I = W.shape[0], H = U.shape[0], span, n
    cdef floating* kind = NULL
    span = panel_span(kind)
    n = _stacked_len(I, H, span, panel_vlen(kind))
    if (U.shape[1] != 4 * H or W.shape[1] != 4 * H or bias.shape[0] != 4 * H
            or out.shape[0] != n or H == 0):
        raise ValueError(f"pack_stacked: W must be (I, 4H), U (H, 4H), bias (4H,) and out "
                         f"stacked_len(I, H) = {n} long; got W {W.shape[0], W.shape[1]}, "
                         f"U {U.shape[0], U.shape[1]}, bias {bias.shape[0]}, out {out.shape[0]}")
    with nogil:
        _pack_stacked(I, H, &W[0, 0], &U[0, 0], &bias[0], &out[0], &out[n - n // (I + H + 1)],
                      0, (H + span - 1) // span)


def pack_units(const floating[:, ::1] W, const floating[:, ::1] U,
               const floating[::1] bias, floating[::1] out):
    """Pack U, W and the bias as ``forward_units(prepacked=True)`` reads them
    (``out``: stacked_len(I, H) elements, 64-byte aligned): U's panels exactly as
    :func:`pack_recurrent` packs them, then W's panels (I rows each), then the
    bias in panel order (read with ``panel_projection``).  Not interleaved as [W; U] per panel:
    that leaves U's panels on half of the L2 sets when I = H (each 64 KiB of U
    at every other 64 KiB) and the steps miss (2-vCPU Xeon, (100, 4, 256, 256),
    2026-12-02)."""
    cdef Py_ssize_t I = W.shape[0], H = U.shape[0], span, n, nu
    cdef floating* kind = NULL
    span = panel_span(kind)
    n = _stacked_len(I, H, span, panel_vlen(kind))
    nu = _packed_len(H, span, panel_vlen(kind))
    if (U.shape[1] != 4 * H or W.shape[1] != 4 * H or bias.shape[0] != 4 * H
            or out.shape[0] != n or H == 0):
        raise ValueError(f"pack_units: W must be (I, 4H), U (H, 4H), bias (4H,) and out "
                         f"stacked_len(I, H) = {n} long; got W {W.shape[0], W.shape[1]}, "
                         f"U {U.shape[0], U.shape[1]}, bias {bias.shape[0]}, out {out.shape[0]}")
    with nogil:
        _pack_panels(0, H, H, NULL, &U[0, 0], NULL, &out[0], NULL, 0, (H + span - 1) // span)
        _pack_panels(I, 0, H, &W[0, 0], NULL, &bias[0], &out[nu], &out[n - n // (I + H + 1)],
                     0, (H + span - 1) // span)


cdef struct CmpJob:
    const char* a[3]
    const char* b[3]
    size_t n[3]
    Py_ssize_t first[4]   # pieces of array i: [first[i], first[i + 1])
    size_t chunk
    int64_t* flags
    int nt
    int differ


cdef void _cmp_piece(void* job, Py_ssize_t c, int tid) noexcept nogil:
    cdef CmpJob* j = <CmpJob*> job
    cdef int i = 0
    cdef size_t off, n
    if cyl_load_int(&j.differ):
        return
    while c >= j.first[i + 1]:
        i += 1
    off = (c - j.first[i]) * j.chunk
    n = j.n[i] - off if j.n[i] - off < j.chunk else j.chunk
    if memcmp(j.a[i] + off, j.b[i] + off, n) != 0:
        cyl_store_int(&j.differ, 1)


cdef void _cmp_job(void* job, int tid) noexcept nogil:
    cdef CmpJob* j = <CmpJob*> job
    # redone by the caller when a worker is late: a piece only reads, and only
    # ever sets ``differ``
    _claim_pieces(j.flags, j.first[3], tid, j.nt, _cmp_piece, job, True)


cdef bint _same_bytes(const char** a, const char** b, size_t* n, int n_threads,
                      size_t parallel_min) noexcept nogil:
    """Whether a[i] and b[i] hold the same n[i] bytes for i < 3 (n[i] may be 0):
    memcmp, split over ``n_threads`` pool threads in chunks when there are at
    least ``parallel_min`` bytes."""
    cdef CmpJob j
    cdef int i
    cdef size_t total = n[0] + n[1] + n[2]
    cdef bint ok
    if n_threads <= 1 or total < parallel_min:
        for i in range(3):
            if n[i] and memcmp(a[i], b[i], n[i]) != 0:
                return False
        return True
    j.chunk = 256 * 1024
    j.first[0] = 0
    for i in range(3):
        j.a[i], j.b[i], j.n[i] = a[i], b[i], n[i]
        j.first[i + 1] = j.first[i] + <Py_ssize_t> ((n[i] + j.chunk - 1) // j.chunk)
    j.nt = n_threads if n_threads < j.first[3] else <int> j.first[3]
    j.differ = 0
    if not _pool_job(_cmp_job, &j, j.nt, 1, &j.flags, j.first[3], NULL, 0, NULL, 0):
        for i in range(3):   # no memory for the piece words: compare here
            if n[i] and memcmp(a[i], b[i], n[i]) != 0:
                return False
        return True
    ok = not j.differ
    return ok


def same_weights(const floating[:, ::1] W, const floating[:, ::1] U, object bias,
                 const floating[:, ::1] W2, const floating[:, ::1] U2, object bias2,
                 bint with_w=True, int n_threads=1, size_t parallel_min=0):
    """Whether W (unless not ``with_w``), U and ``bias`` (1-D or None) hold the
    same bytes as W2, U2 and ``bias2`` (memcmp, GIL released, split over
    ``n_threads`` pool threads from ``parallel_min`` bytes on; the packed-weight
    cache's check)."""
    cdef const floating[::1] b
    cdef const floating[::1] b2
    cdef const char* pa[3]
    cdef const char* pb[3]
    cdef size_t n[3]
    cdef bint same
    if (W.shape[0] != W2.shape[0] or W.shape[1] != W2.shape[1] or U.shape[0] != U2.shape[0]
            or U.shape[1] != U2.shape[1] or (bias is None) != (bias2 is None)):
        return False
    n[0] = n[1] = n[2] = 0
    pa[0] = pa[1] = pa[2] = pb[0] = pb[1] = pb[2] = NULL
    if bias is not None:
        b = bias
        b2 = bias2
        if b.shape[0] != b2.shape[0]:
            return False
        n[0] = b.shape[0] * sizeof(floating)
        if n[0]:
            pa[0], pb[0] = <const char*> &b[0], <const char*> &b2[0]
    n[1] = W.shape[0] * W.shape[1] * sizeof(floating) if with_w else 0
    if n[1]:
        pa[1], pb[1] = <const char*> &W[0, 0], <const char*> &W2[0, 0]
    n[2] = U.shape[0] * U.shape[1] * sizeof(floating)
    if n[2]:
        pa[2], pb[2] = <const char*> &U[0, 0], <const char*> &U2[0, 0]
    with nogil:
        same = _same_bytes(pa, pb, n, n_threads, parallel_min)
    return same


def pack_recurrent(const floating[:, ::1] U, floating[::1] out):
    """Pack ``U`` (H, 4H) into the panel layout of the panel path (``out``: H * 4H)."""
    cdef Py_ssize_t H = U.shape[0]
    cdef floating* kind = NULL
    if U.shape[1] != 4 * H or out.shape[0] != _packed_len(H, panel_span(kind), panel_vlen(kind)):
        raise ValueError("pack_recurrent: U must be (H, 4H) and out packed_len(H) long")
    if H:
        with nogil:
            _pack_recurrent(H, &U[0, 0], &out[0], 0, (H + panel_span(kind) - 1) // panel_span(kind))


# ---------------------------------------------------------------------------
# Threads (include/cylstm_pool.h): the caller is thread 0 of every job and can
# finish it alone; workers join when they get there.  Every job is cut into
# pieces:
#  - claimed pieces (flags: 0 free, 1 taken, 2 done): batch slices, packing
#    and projection blocks.  A thread takes its own pieces first, then the
#    others' from the last one back; the caller waits only for pieces a worker
#    has taken.
#  - committed pieces (the unit split's panels, every step): any thread may
#    compute a panel of step k from the previous step's state into its own
#    scratch; the first to commit (a compare-and-swap on the panel's word)
#    copies its result out, later ones drop theirs.  The caller computes its own
#    panels, then the workers' from the last one back, so a late or preempted
#    worker never holds a step up (only a commit in flight is waited for: a
#    few memcpys).  Inputs a loser may read torn (the state double buffer, c,
#    the gate rows) change only through commits of that panel and step or of
#    later steps, which exist only after this one is committed: the loser's
#    commit then fails.
# ---------------------------------------------------------------------------

cdef extern from "cylstm_pool.h" nogil:
    ctypedef void (*cyl_pool_fn)(void* arg, int tid) noexcept nogil
    void cyl_pool_run(cyl_pool_fn fn, void* arg, int n_threads)
    void cyl_pool_run_small(cyl_pool_fn fn, void* arg, int n_threads)
    bint cyl_pool_small_runs_alone(int n_threads)
    void cyl_pool_small_alone_end()
    int64_t cyl_pool_small_alone
    int64_t cyl_pool_joins
    void cyl_pool_set_spin_ns(int64_t ns)
    void cyl_pool_set_backoff_ns(int64_t ns)
    void cyl_pool_back_off_now()
    int64_t cyl_pool_backoffs
    int64_t cyl_pool_lost_ns
    int64_t cyl_pool_worked_ns
    int cyl_pool_workers()
    bint cyl_pool_workers_awake(int n_threads)
    int64_t cyl_load(const int64_t* p)
    int cyl_load_int(const int* p)
    void cyl_store_int(int* p, int v)
    int64_t cyl_now_ns()
    int64_t cyl_pool_waited_ns[3]
    int64_t cyl_pool_jobs
    void cyl_pool_note_wait(int what, int64_t t0)
    void cyl_store(int64_t* p, int64_t v)
    bint cyl_cas(int64_t* p, int64_t expected, int64_t desired)
    int64_t cyl_exchange(int64_t* p, int64_t v)
    int64_t cyl_fetch_add(int64_t* p, int64_t v)
    bint cyl_claim(int64_t* flag)
    void cyl_claim_done(int64_t* flag)
    void cyl_claim_wait(int64_t* flag)
    bint cyl_commit_begin(int64_t* word, int64_t k)
    void cyl_commit_end(int64_t* word, int64_t k)
    bint cyl_committed(const int64_t* word, int64_t k)
    bint cyl_committing(const int64_t* word, int64_t k)
    void cyl_relax()
    void cyl_pool_release()
    bint cyl_pool_acquire()
    bint cyl_pool_job_open()
    void cyl_pool_tick_set(int64_t v)
    void cyl_pool_tick_store(int64_t v)
    int64_t cyl_pool_tick_get()
    bint cyl_pool_beside_caller()


cdef void pool_run(pool_fn fn, void* arg, int n_threads) noexcept nogil:
    """Run ``fn(arg, tid)`` as a pool job on ``n_threads`` (the caller is tid 0)."""
    cyl_pool_run(<cyl_pool_fn> fn, arg, n_threads)


cdef bint pool_small_alone(int n_threads) noexcept nogil:
    """Whether a job too small to pay for waking a sleeping worker should run alone
    now: while they sleep, but for a stream of such jobs (include/cylstm_pool.h,
    cyl_pool_small_stays_alone).  If so, run it serially and then call
    :func:`pool_small_alone_end`; else :func:`pool_run_small`."""
    return cyl_pool_small_runs_alone(n_threads)


cdef void pool_small_alone_end() noexcept nogil:
    cyl_pool_small_alone_end()


cdef bint pool_workers_awake(int n_threads) noexcept nogil:
    """Whether a job on ``n_threads`` would find its workers awake (no wake-up to
    pay): for timing small jobs fairly."""
    return cyl_pool_workers_awake(n_threads)


cdef int64_t pool_now_ns() noexcept nogil:
    """The pool's monotonic clock, ns."""
    return cyl_now_ns()


cdef void pool_run_small(pool_fn fn, void* arg, int n_threads) noexcept nogil:
    """:func:`pool_run` for a small job (see :func:`pool_small_alone`)."""
    cyl_pool_run_small(<cyl_pool_fn> fn, arg, n_threads)


cdef bint pool_claim(int64_t* flag) noexcept nogil:
    return cyl_claim(flag)


cdef void pool_claim_done(int64_t* flag) noexcept nogil:
    cyl_claim_done(flag)


cdef void pool_claim_wait(int64_t* flag) noexcept nogil:
    cyl_claim_wait(flag)


cdef int64_t pool_load(const int64_t* word) noexcept nogil:
    return cyl_load(word)


cdef void pool_release() noexcept nogil:
    cyl_pool_release()


cdef bint pool_acquire() noexcept nogil:
    return cyl_pool_acquire()


cdef bint pool_job_open() noexcept nogil:
    return cyl_pool_job_open()


cdef void pool_tick_set(int64_t v) noexcept nogil:
    cyl_pool_tick_store(v)


cdef int64_t pool_tick_get() noexcept nogil:
    return cyl_pool_tick_get()


cdef void pool_relax() noexcept nogil:
    cyl_relax()


def set_pool_spin_ns(int64_t ns):
    """How long an idle worker spins before it sleeps (cylstm._tuning sets it)."""
    cyl_pool_set_spin_ns(ns)


def set_pool_backoff_ns(int64_t ns):
    """How long callers run alone after a worker was found preempted (0: never
    back off; cylstm._tuning sets it).  Also ends a back-off under way."""
    cyl_pool_set_backoff_ns(ns)


def _pool_back_off_now():
    """Start a back-off as a preempted worker would (tests)."""
    cyl_pool_back_off_now()


def pool_stats(bint reset=False):
    """Where callers waited for workers so far (diagnostics): jobs run on the
    pool, the workers that joined them, small jobs that ran alone while the
    workers slept, and ns waited for a piece a worker took, for workers to leave
    a job's memory at its end, and for a commit in flight."""
    out = {"jobs": cyl_pool_jobs, "backoffs": cyl_pool_backoffs,
           "small_alone": cyl_pool_small_alone, "joins": cyl_pool_joins,
           "worker_ns": cyl_pool_worked_ns, "worker_preempted_ns": cyl_pool_lost_ns,
           "piece_wait_ns": cyl_pool_waited_ns[0],
           "end_wait_ns": cyl_pool_waited_ns[1], "commit_wait_ns": cyl_pool_waited_ns[2]}
    if reset:
        cyl_pool_waited_ns[0] = cyl_pool_waited_ns[1] = cyl_pool_waited_ns[2] = 0
    return out


def pool_workers():
    """Worker threads started so far (tests)."""
    return cyl_pool_workers()


ctypedef void (*piece_fn)(void* job, Py_ssize_t piece, int tid) noexcept nogil


cdef Py_ssize_t _claim_each(int64_t* flags, Py_ssize_t n, int tid, int nt, piece_fn fn,
                            void* job) noexcept nogil:
    """Run the pieces of [0, n) this thread claims: its share (tid of nt; piece
    tid when n == nt, none when n < nt puts it past the last) first, then any
    piece nobody has taken, from the last back.  Returns how many it ran."""
    cdef Py_ssize_t c, c0 = (tid * n) // nt, c1 = ((tid + 1) * n) // nt, mine = 0
    for c in range(c0, c1):
        if cyl_claim(&flags[c]):
            fn(job, c, tid)
            cyl_claim_done(&flags[c])
            mine += 1
    for c in range(n - 1, -1, -1):
        if cyl_claim(&flags[c]):
            fn(job, c, tid)
            cyl_claim_done(&flags[c])
            mine += 1
    return mine


cdef void _claim_pieces(int64_t* flags, Py_ssize_t n, int tid, int nt, piece_fn fn,
                        void* job, bint redo=False) noexcept nogil:
    """Run pieces [0, n) of ``job`` (_claim_each); the caller (tid 0) then
    waits for the pieces workers took.

    ``redo``: each piece writes every element once, with its final value, the
    same whoever computes it (packing; not BLAS, which may store partial sums
    first), so the caller waits for a worker's piece at most
    as long as a piece of its own took, then computes it too: a preempted
    worker does not hold the call up (its late writes are the same values)."""
    cdef Py_ssize_t c, mine
    cdef int64_t t0 = cyl_now_ns(), patience, since
    mine = _claim_each(flags, n, tid, nt, fn, job)
    if tid != 0:
        return
    patience = (cyl_now_ns() - t0) // (mine if mine > 0 else 1)
    for c in range(n):
        if cyl_load(&flags[c]) == 2:
            continue
        if not redo:
            cyl_claim_wait(&flags[c])
            continue
        since = cyl_now_ns()
        while cyl_load(&flags[c]) != 2 and cyl_now_ns() - since < patience:
            cyl_relax()
        if cyl_load(&flags[c]) != 2:
            fn(job, c, tid)
            cyl_claim_done(&flags[c])


cdef struct SeqJob:
    bint dbl
    int nt
    Py_ssize_t B, T, In, H, Lmax, n_pieces, n_blocks, n_panels, zstride
    bint prepacked      # P holds [W; U] packed once by the caller (pack_stacked)
    # (prepacked) x @ W on P's W panels, not BLAS; G then holds each row in
    # panel order (ldg = 4 H_pad wide), the bias too
    bint panel_proj
    bint step_b1        # (forward_units) batch 1 on one thread: _units_step_b1
    Py_ssize_t ldg
    const void* x
    const void* W
    const void* U
    const void* bias
    const int64_t* lengths
    bint reverse, fused, tiled
    bint bf16           # (forward_rows) bfloat16 recurrent operands: see _forward_rows
    const uint16_t* Wt  # (forward_rows on AMX) W and U tile-packed, NULL otherwise
    const uint16_t* Ut
    uint16_t* abuf      # (forward_rows on AMX) one AMX A scratch per piece
    Py_ssize_t abuf_len
    const void* rmask
    void* hm
    void* y
    void* G
    void* C
    void* Hp
    void* hs
    void* hs2
    void* cs
    void* Z
    void* P
    Py_ssize_t nbias
    int64_t* flags      # claimed pieces: row slices
    int64_t* bflags     # claimed pieces: packing / projection blocks
    int64_t* words      # committed pieces: the unit split's panels
    int64_t finished


# --- batch split, BLAS per step (forward_rows) ------------------------------

cdef void _rows_piece_t(SeqJob* j, Py_ssize_t c, floating* kind) noexcept nogil:
    _forward_rows((c * j.B) // j.n_pieces, ((c + 1) * j.B) // j.n_pieces, j.T, j.In, j.H,
                  <const floating*> j.x, <const floating*> j.W, <const floating*> j.U,
                  <const floating*> j.bias, j.lengths, j.reverse,
                  <const floating*> j.rmask, <floating*> j.hm, <floating*> j.y,
                  <floating*> j.G, <floating*> j.C, <floating*> j.Hp, <floating*> j.hs,
                  <floating*> j.cs, <floating*> j.Z, 1, j.fused, j.tiled, j.bf16,
                  j.Wt, j.Ut, NULL if j.abuf == NULL else j.abuf + c * j.abuf_len)


cdef void _rows_piece(void* job, Py_ssize_t c, int tid) noexcept nogil:
    cdef SeqJob* j = <SeqJob*> job
    if j.dbl:
        _rows_piece_t(j, c, <double*> NULL)
    else:
        _rows_piece_t(j, c, <float*> NULL)


cdef void _rows_job(void* job, int tid) noexcept nogil:
    cdef SeqJob* j = <SeqJob*> job
    _claim_pieces(j.flags, j.n_pieces, tid, j.nt, _rows_piece, job)


# --- batch split, packed [W; U] panels (forward_stacked) ---------------------

cdef void _stacked_pack_t(SeqJob* j, Py_ssize_t c, floating* kind) noexcept nogil:
    cdef floating* P = <floating*> j.P
    _pack_stacked(j.In, j.H, <const floating*> j.W, <const floating*> j.U,
                  <const floating*> j.bias, P, P + j.nbias,
                  (c * j.n_panels) // j.n_blocks, ((c + 1) * j.n_panels) // j.n_blocks)


cdef void _stacked_steps_t(SeqJob* j, Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t s0,
                           Py_ssize_t s1, int tid, floating* kind) noexcept nogil:
    cdef floating* P = <floating*> j.P
    _forward_panels(b0, b1, j.T, j.H, j.Lmax, <const floating*> j.x, j.In, P, P + j.nbias,
                    j.lengths, j.reverse, <const floating*> j.rmask, <floating*> j.hm,
                    <floating*> j.y, <floating*> j.G, <floating*> j.C, <floating*> j.Hp,
                    <floating*> j.hs, <floating*> j.hs2, <floating*> j.cs,
                    <floating*> j.Z + tid * j.zstride, s0, s1)


cdef inline void _stacked_steps(SeqJob* j, Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t s0,
                                Py_ssize_t s1, int tid) noexcept nogil:
    if j.dbl:
        _stacked_steps_t(j, b0, b1, s0, s1, tid, <double*> NULL)
    else:
        _stacked_steps_t(j, b0, b1, s0, s1, tid, <float*> NULL)


# The batch split's rows move between threads at step boundaries.  Rows are
# independent chains of steps, so a thread that has run out of rows asks the
# one with the most work left for part of its range: at its next step that one
# hands over its top rows and the step they are at (their state so far is in
# hs / hs2 / cs, published by the hand-over's release store), and both go on.
# A slowed thread (a busy host core, a late wake) so sheds work to the other
# instead of holding the call up with half of it; each row is computed by one
# thread per step with the same kernel, so the bits do not depend on who ran it
# (a row's sums run in one order whatever rows share its pass).  One cache line
# of words per thread (STEAL_*): its request word (0 open, k + 1 thread k asks,
# -1 closed: no rows), its inbox (a grant's rows and step), and its range now.
cdef enum:
    STEAL_REQ = 0
    STEAL_GRANT = 1     # 0 waiting, 1 granted, 2 refused (this thread's inbox)
    STEAL_LO = 2
    STEAL_HI = 3
    STEAL_STEP = 4
    STEAL_MY_LO = 5
    STEAL_MY_HI = 6
    STEAL_MY_STEP = 7
    STEAL_SLOT = 8      # int64 words a thread (one cache line)

# the fewest rows a hand-over leaves or gives (cylstm._tuning.STEAL_MIN_ROWS)
cdef Py_ssize_t _steal_min_rows = 5
# 0: rows stay where they started (the static split; for measuring and tests)
cdef bint _steal_on = True
# slices the batch starts in (0: one a thread; tests set 1 so that every other
# thread's rows come from hand-overs)
cdef int _steal_pieces = 0
cdef int64_t _steal_grants = 0   # hand-overs so far (diagnostics, tests)


def set_steal(bint on, Py_ssize_t min_rows, int pieces=0):
    """Whether the batch split's threads hand rows over (see _stacked_rows), the
    fewest rows a hand-over leaves or gives (cylstm._tuning sets it), and the
    slices the batch starts in (0: one a thread)."""
    global _steal_on, _steal_min_rows, _steal_pieces
    if min_rows < 1 or pieces < 0:
        raise ValueError(f"set_steal: min_rows must be at least 1 and pieces at least 0, "
                         f"got {min_rows} and {pieces}")
    _steal_on = on
    _steal_min_rows = min_rows
    _steal_pieces = pieces


def get_steal():
    """(on, min_rows, pieces) of :func:`set_steal`, and the hand-overs so far."""
    return bool(_steal_on), int(_steal_min_rows), int(_steal_pieces), int(_steal_grants)


cdef inline Py_ssize_t _steal_give(Py_ssize_t n) noexcept nogil:
    """Rows of a range of ``n`` to give a thief (0: keep them all): about half,
    a multiple of the six-row pass where that leaves both sides whole passes."""
    cdef Py_ssize_t g = n // 2, m = _steal_min_rows
    if g >= 6:
        g -= g % 6
    if g < m or n - g < m:
        return 0
    return g


cdef void _steal_answer(int64_t* w, Py_ssize_t lo, Py_ssize_t* hi, Py_ssize_t s,
                        Py_ssize_t Lmax, int64_t req) noexcept nogil:
    """Answer thread req - 2's request before step s: hand over the top rows of
    [lo, hi) (``hi`` shrinks) from step s on, or refuse."""
    cdef int64_t* box = w + (req - 2) * STEAL_SLOT
    cdef Py_ssize_t g = _steal_give(hi[0] - lo) if Lmax - s >= 2 else 0
    if g == 0:
        cyl_store(&box[STEAL_GRANT], 2)
        return
    box[STEAL_LO] = hi[0] - g   # (published by the release store of the grant)
    box[STEAL_HI] = hi[0]
    box[STEAL_STEP] = s
    hi[0] -= g
    cyl_fetch_add(&_steal_grants, 1)
    cyl_store(&box[STEAL_GRANT], 1)


cdef void _stacked_range(SeqJob* j, int64_t* w, int tid, Py_ssize_t lo, Py_ssize_t hi,
                         Py_ssize_t s0) noexcept nogil:
    """Run steps s0.. of rows [lo, hi) to the end, answering requests for rows
    at each step; then close (refuse a late request) and count the rows done."""
    cdef int64_t* me = w + tid * STEAL_SLOT
    cdef int64_t r
    cdef Py_ssize_t s
    cyl_store(&me[STEAL_MY_LO], lo)
    cyl_store(&me[STEAL_MY_HI], hi)
    cyl_store(&me[STEAL_MY_STEP], s0)
    if _steal_on:
        cyl_store(&me[STEAL_REQ], 1)   # open (it was closed: no request can be lost)
    for s in range(s0, j.Lmax):
        r = cyl_load(&me[STEAL_REQ])
        if r > 1:
            _steal_answer(w, lo, &hi, s, j.Lmax, r)
            cyl_store(&me[STEAL_MY_HI], hi)
            cyl_store(&me[STEAL_REQ], 1)
        _stacked_steps(j, lo, hi, s, s + 1, tid)
        cyl_store(&me[STEAL_MY_STEP], s + 1)
    r = cyl_exchange(&me[STEAL_REQ], 0)
    if r > 1:
        cyl_store(&w[(r - 2) * STEAL_SLOT + STEAL_GRANT], 2)
    cyl_store(&me[STEAL_MY_HI], lo)
    cyl_fetch_add(&w[j.nt * STEAL_SLOT], hi - lo)


cdef int _steal(SeqJob* j, int64_t* w, int tid, Py_ssize_t* lo, Py_ssize_t* hi,
                Py_ssize_t* s0) noexcept nogil:
    """Ask the thread with the most work left (rows x steps) for part of its
    rows: 1 granted (in lo, hi, s0), 2 refused or outrun (look again), 0 no
    thread has rows to give.  The wait is for the victim's next step: its own
    request word is closed meanwhile, so nobody waits on this thread."""
    cdef int64_t* me = w + tid * STEAL_SLOT
    cdef int64_t* v
    cdef int k, best = -1
    cdef int64_t n, left, work, most = 0, g
    for k in range(j.nt):
        if k == tid:
            continue
        v = w + k * STEAL_SLOT
        if cyl_load(&v[STEAL_REQ]) != 1:
            continue
        n = cyl_load(&v[STEAL_MY_HI]) - cyl_load(&v[STEAL_MY_LO])
        left = j.Lmax - cyl_load(&v[STEAL_MY_STEP])
        if left < 2 or _steal_give(n) == 0:
            continue
        work = n * left
        if work > most:
            most = work
            best = k
    if best < 0:
        return 0
    cyl_store(&me[STEAL_GRANT], 0)
    if not cyl_cas(&w[best * STEAL_SLOT + STEAL_REQ], 1, tid + 2):
        return 2
    g = cyl_load(&me[STEAL_GRANT])
    while g == 0:
        cyl_relax()
        g = cyl_load(&me[STEAL_GRANT])
    if g != 1:
        return 2
    lo[0] = me[STEAL_LO]
    hi[0] = me[STEAL_HI]
    s0[0] = me[STEAL_STEP]
    return 1


cdef inline int64_t* _steal_words(SeqJob* j) noexcept nogil:
    """The hand-over words (STEAL_SLOT per thread), at the first 64-byte line."""
    return <int64_t*> ((<uintptr_t> j.words + 63) & ~(<uintptr_t> 63))


cdef void _stacked_piece(void* job, Py_ssize_t c, int tid) noexcept nogil:
    """Slice c of the batch split's rows, every step (hand-overs answered)."""
    cdef SeqJob* j = <SeqJob*> job
    _stacked_range(j, _steal_words(j), tid, (c * j.B) // j.n_pieces,
                   ((c + 1) * j.B) // j.n_pieces, 0)


cdef void _stacked_rows(SeqJob* j, int tid) noexcept nogil:
    """The batch split's time loop: this thread's slice of rows (its piece),
    pieces nobody took, then rows handed over by threads with more work left;
    the caller (tid 0) returns when every row has run every step."""
    cdef int64_t* w = _steal_words(j)
    cdef Py_ssize_t lo = 0, hi = 0, s0 = 0
    cdef int got
    cdef int64_t t0 = 0
    _claim_each(j.flags, j.n_pieces, tid, j.nt, _stacked_piece, j)
    while cyl_load(&w[j.nt * STEAL_SLOT]) < j.B:
        got = _steal(j, w, tid, &lo, &hi, &s0) if _steal_on else 0
        if got == 1:
            _stacked_range(j, w, tid, lo, hi, s0)
        elif got == 0:
            if tid != 0:
                return
            if t0 == 0:
                t0 = cyl_now_ns()
            cyl_relax()
    if t0 != 0:
        cyl_pool_note_wait(0, t0)


cdef void _stacked_pack_piece(void* job, Py_ssize_t c, int tid) noexcept nogil:
    cdef SeqJob* j = <SeqJob*> job
    if j.dbl:
        _stacked_pack_t(j, c, <double*> NULL)
    else:
        _stacked_pack_t(j, c, <float*> NULL)


cdef void _stacked_job(void* job, int tid) noexcept nogil:
    cdef SeqJob* j = <SeqJob*> job
    _claim_pieces(j.bflags, j.n_blocks, tid, j.nt, _stacked_pack_piece, job, True)
    if tid != 0:  # a worker starts on rows once the caller has seen every panel packed
        cyl_pool_release()   # (waiting for it, the worker holds none of the job's memory)
        while cyl_pool_tick_get() == 0:
            if not cyl_pool_job_open():
                return
            cyl_relax()
        if not cyl_pool_acquire():
            return
    else:
        cyl_pool_tick_set(1)
    _stacked_rows(j, tid)


# --- unit split, packed panels of U, committed per step (forward_units) -------

cdef inline Py_ssize_t units_scratch_len(Py_ssize_t B, Py_ssize_t H,
                                         Py_ssize_t span) noexcept nogil:
    """Per-thread scratch of the unit split: a panel's product (B, 4 span), and
    the gates (B, 4H), c and h (B, H each) a thread computes before it commits."""
    return B * 4 * span + B * 6 * H


def units_scratch(Py_ssize_t B, Py_ssize_t H, dtype):
    """Elements of per-thread scratch :func:`forward_units` needs (rows of ``Z``)."""
    span = PANEL_UNITS_F32_C if str(dtype) == "float32" else PANEL_UNITS_F64_C
    return units_scratch_len(B, H, span)


cdef void _units_prep_t(SeqJob* j, Py_ssize_t c, int tid, floating* kind) noexcept nogil:
    """Block c of the panels: their columns of G = X @ W, and their packing
    (prepacked: the projection only, on the W rows of the packed panels)."""
    cdef Py_ssize_t span = panel_span(kind), p0, p1
    p0 = (c * j.n_panels) // j.n_blocks
    p1 = ((c + 1) * j.n_panels) // j.n_blocks
    if j.panel_proj:
        _project_panels(j, p0, p1, kind)
    else:
        _project_units(p0 * span, p1 * span if p1 * span < j.H else j.H, j.B * j.T, j.In,
                       j.H, <const floating*> j.x, <const floating*> j.W, <floating*> j.G)
    if not j.prepacked:
        _pack_recurrent(j.H, <const floating*> j.U, <floating*> j.P, p0, p1)


cdef void _project_panels(SeqJob* j, Py_ssize_t p0, Py_ssize_t p1,
                          floating* kind) noexcept nogil:
    """Panels [p0, p1) of G (B T, 4 H_pad; rows in panel order) = X (B T, I) @ W,
    on the W panels of the unit layout in ``j.P`` (see :func:`pack_units`): each
    panel (I x 4 span, in L2) runs all rows of X, straight into its columns."""
    cdef Py_ssize_t span = panel_span(kind), vl = panel_vlen(kind), H = j.H, I = j.In
    cdef Py_ssize_t M = j.B * j.T, p, j0, hb, w
    cdef const floating* x = <const floating*> j.x
    cdef const floating* P = <const floating*> j.P + _packed_len(H, span, vl)
    cdef const floating* nx
    cdef floating* G = <floating*> j.G
    for p in range(p0, p1):
        j0 = p * span
        hb = H - j0 if H - j0 < span else span
        w = 4 * padded_units(hb, vl)
        nx = P + (p + 1) * I * 4 * span if p + 1 < p1 else NULL
        # whole panels: with the panel projection the caller redoes a late worker's
        # piece into the same G (_claim_pieces, redo), so no partial sums there
        panel_product(P + p * I * 4 * span, w, M, x, I, I, x, 0, 0, G + j0 * 4, j.ldg, nx,
                      True)


cdef void _units_prep_piece(void* job, Py_ssize_t c, int tid) noexcept nogil:
    cdef SeqJob* j = <SeqJob*> job
    if j.dbl:
        _units_prep_t(j, c, tid, <double*> NULL)
    else:
        _units_prep_t(j, c, tid, <float*> NULL)


cdef bint _units_panel_t(SeqJob* j, Py_ssize_t s, Py_ssize_t p, Py_ssize_t pn, int tid,
                         floating* kind) noexcept nogil:
    """Step s (k = s + 1) of panel p: compute into this thread's scratch, then
    commit it if no other thread did.  Whether this thread committed it.

    With one thread (``j.nt == 1``) nothing is shared: the cell writes its
    results in place (the gates over the projection in G, c over c_prev, h
    into the other h buffer), with no scratch, copies or commit."""
    cdef Py_ssize_t span = panel_span(kind), vl = panel_vlen(kind)
    cdef Py_ssize_t B = j.B, T = j.T, H = j.H, H4 = 4 * H, b, t, L, row, g
    cdef Py_ssize_t j0 = p * span
    cdef Py_ssize_t hb = H - j0 if H - j0 < span else span
    cdef Py_ssize_t hp = padded_units(hb, vl), w = 4 * hp
    cdef int64_t k = s + 1
    cdef floating* hs = <floating*> j.hs
    cdef floating* hs2 = <floating*> j.hs2
    cdef floating* cur = hs if s % 2 == 0 else hs2
    cdef floating* nxt = hs2 if s % 2 == 0 else hs
    cdef const floating* src = cur if j.rmask == NULL else <const floating*> j.hm
    cdef floating* G = <floating*> j.G
    cdef floating* cs = <floating*> j.cs
    cdef floating* y = <floating*> j.y
    cdef floating* C = <floating*> j.C
    cdef floating* Hp = <floating*> j.Hp
    cdef const floating* bias = <const floating*> j.bias
    cdef floating* z = <floating*> j.Z + tid * j.zstride
    cdef floating* gp = z + B * 4 * span          # gates (B, 4H)
    cdef floating* cn = gp + B * H4                # c (B, H)
    cdef floating* hn = cn + B * H                 # h (B, H)
    cdef size_t ub = hb * sizeof(floating)
    cdef bint direct = j.nt == 1
    # where panel p's gates are in a row of G, their blocks gs apart, and its bias
    # (panel order: the panel's own columns, and the bias packed with the weights)
    cdef bint po = j.panel_proj
    cdef Py_ssize_t ldg = j.ldg, gs = hp if po else H, goff = j0 * 4 if po else j0
    cdef const floating* gb = (<const floating*> j.P + j.nbias + j0 * 4) if po else bias + j0
    if not direct and cyl_committed(&j.words[p], k):
        return False
    # z (B, w) = h_prev (B, H) @ panel p of U (H, w)
    _stacked_product(<const floating*> j.P + p * H * 4 * span, w, B, src, 0, 0, src, H, z,
                     stream_next(<const floating*> j.P + pn * H * 4 * span,
                                 j.n_panels * H * 4 * span * sizeof(floating))
                     if pn >= 0 else NULL)
    if po:
        for b in range(B):
            L = T if j.lengths == NULL else j.lengths[b]
            if s >= L:  # finished: the state carries over unchanged
                if direct:
                    memcpy(nxt + b * H + j0, cur + b * H + j0, ub)
                continue
            row = b * T + (L - 1 - s if j.reverse else s)
            # (inference only: no C, no Hp; the gates overwrite this thread's own
            # product z, or with one thread the projection in G)
            cell_forward_units(hb, gs, G + row * ldg + goff, z + b * w, hp, gb,
                               cs + b * H + j0, G + row * ldg + goff if direct else z + b * w,
                               cs + b * H + j0 if direct else cn + b * H + j0,
                               nxt + b * H + j0 if direct else hn + b * H + j0)
            if direct and y != NULL:
                memcpy(y + row * H + j0, nxt + b * H + j0, ub)
        if direct:
            return True
        if not cyl_commit_begin(&j.words[p], k):
            return False
        for b in range(B):
            L = T if j.lengths == NULL else j.lengths[b]
            if s >= L:
                memcpy(nxt + b * H + j0, cur + b * H + j0, ub)
                continue
            row = b * T + (L - 1 - s if j.reverse else s)
            memcpy(cs + b * H + j0, cn + b * H + j0, ub)
            memcpy(nxt + b * H + j0, hn + b * H + j0, ub)
            if y != NULL:
                memcpy(y + row * H + j0, hn + b * H + j0, ub)
        cyl_commit_end(&j.words[p], k)
        return True
    if direct:
        for b in range(B):
            L = T if j.lengths == NULL else j.lengths[b]
            if s >= L:  # finished: the state carries over unchanged
                memcpy(nxt + b * H + j0, cur + b * H + j0, ub)
                continue
            t = L - 1 - s if j.reverse else s
            row = b * T + t
            if Hp != NULL:
                memcpy(Hp + row * H + j0, src + b * H + j0, ub)
            cell_forward_units(hb, H, G + row * H4 + j0, z + b * w, hp, bias + j0,
                               cs + b * H + j0, G + row * H4 + j0, cs + b * H + j0,
                               nxt + b * H + j0)
            if y != NULL:
                memcpy(y + row * H + j0, nxt + b * H + j0, ub)
            if C != NULL:
                memcpy(C + row * H + j0, cs + b * H + j0, ub)
        return True
    for b in range(B):
        L = T if j.lengths == NULL else j.lengths[b]
        if s >= L:
            continue
        t = L - 1 - s if j.reverse else s
        row = b * T + t
        cell_forward_units(hb, H, G + row * H4 + j0, z + b * w, hp, bias + j0,
                           cs + b * H + j0, gp + b * H4 + j0, cn + b * H + j0,
                           hn + b * H + j0)
    if not cyl_commit_begin(&j.words[p], k):
        return False  # another thread committed this panel's step first
    for b in range(B):
        L = T if j.lengths == NULL else j.lengths[b]
        if s >= L:  # finished: the state carries over unchanged
            memcpy(nxt + b * H + j0, cur + b * H + j0, ub)
            continue
        t = L - 1 - s if j.reverse else s
        row = b * T + t
        memcpy(cs + b * H + j0, cn + b * H + j0, ub)
        memcpy(nxt + b * H + j0, hn + b * H + j0, ub)
        if y != NULL:
            memcpy(y + row * H + j0, hn + b * H + j0, ub)
        if C != NULL:  # training: the gates, c and h_prev for the backward
            memcpy(C + row * H + j0, cn + b * H + j0, ub)
            for g in range(4):
                memcpy(G + row * H4 + g * H + j0, gp + b * H4 + g * H + j0, ub)
        if Hp != NULL:
            memcpy(Hp + row * H + j0, src + b * H + j0, ub)
    cyl_commit_end(&j.words[p], k)
    return True


cdef void _units_step_b1(SeqJob* j, Py_ssize_t s) noexcept nogil:
    """Step s of a batch-1 float32 inference call on one thread with the panel
    projection: every panel's h_prev @ U into the scratch, then the cells of all
    panels in one call (cyl_cell_panels_f32) and h into y once.  The same bits as
    _units_panel_t per panel (the same products and cell operations), without a
    latency-bound single-vector cell call, a y copy and the bookkeeping per
    16-unit panel: lstm_forward at (200, 1, 64, 128) one thread 0.77 -> 0.72 ms,
    (150, 1, 256, 256) 2.65 -> 2.51, (100, 1, 32, 64) 0.137 -> 0.119 (medians of 6
    alternated rounds, AMD EPYC (2 cores), Zen 4, 2026-12-06)."""
    cdef Py_ssize_t span = PANEL_UNITS_F32_C, vl = CYL_STREAM_VLF
    cdef Py_ssize_t H = j.H, n = j.n_panels, q, p, pn, j0, hb, hp
    cdef Py_ssize_t nfull = H // span
    cdef float* cur = <float*> j.hs if s % 2 == 0 else <float*> j.hs2
    cdef float* nxt = <float*> j.hs2 if s % 2 == 0 else <float*> j.hs
    cdef float* z = <float*> j.Z
    cdef const float* P = <const float*> j.P
    cdef const float* gb = P + j.nbias
    cdef Py_ssize_t row = j.T - 1 - s if j.reverse else s
    cdef float* g = <float*> j.G + row * j.ldg
    for q in range(n):
        p = _snake(q, s, n)
        pn = _snake(q + 1, s, n) if q + 1 < n else -1
        j0 = p * span
        hb = H - j0 if H - j0 < span else span
        hp = padded_units(hb, vl)
        _stacked_product(P + p * H * 4 * span, 4 * hp, 1, cur, 0, 0, cur, H, z + j0 * 4,
                         stream_next(P + pn * H * 4 * span, n * H * 4 * span * sizeof(float))
                         if pn >= 0 else NULL)
    if nfull > 0:
        cyl_cell_panels_f32(span, span, nfull, g, z, gb, <float*> j.cs, nxt)
    if nfull < n:  # the last panel, narrower
        j0 = nfull * span
        hb = H - j0
        hp = padded_units(hb, vl)
        cell_forward_units(hb, hp, <const float*> (g + j0 * 4), <const float*> (z + j0 * 4),
                           hp, gb + j0 * 4, <const float*> (<float*> j.cs + j0), g + j0 * 4,
                           <float*> j.cs + j0, nxt + j0)
    if j.y != NULL:
        memcpy(<float*> j.y + row * H, nxt, H * sizeof(float))


cdef inline bint _units_panel(SeqJob* j, Py_ssize_t s, Py_ssize_t p, int tid,
                              Py_ssize_t pn=-1) noexcept nogil:
    if j.dbl:
        return _units_panel_t(j, s, p, pn, tid, <double*> NULL)
    return _units_panel_t(j, s, p, pn, tid, <float*> NULL)


cdef void _units_rmask_t(SeqJob* j, Py_ssize_t s, floating* kind) noexcept nogil:
    cdef floating* cur = <floating*> j.hs if s % 2 == 0 else <floating*> j.hs2
    cdef floating* hm = <floating*> j.hm
    cdef const floating* rm = <const floating*> j.rmask
    cdef Py_ssize_t i
    for i in range(j.B * j.H):
        hm[i] = cur[i] * rm[i]


cdef void _units_final_t(SeqJob* j, floating* kind) noexcept nogil:
    if j.Lmax % 2 == 1:  # the final h is in hs2
        memcpy(<floating*> j.hs, <floating*> j.hs2, j.B * j.H * sizeof(floating))


cdef inline void _units_commit_wait(SeqJob* j, Py_ssize_t p, int64_t k,
                                    bint until_committed) noexcept nogil:
    """Wait while panel p's step k is being committed (or, ``until_committed``,
    until it is)."""
    cdef int64_t t0
    if cyl_committing(&j.words[p], k) or (until_committed and
                                          not cyl_committed(&j.words[p], k)):
        t0 = cyl_now_ns()
        while cyl_committing(&j.words[p], k) or (until_committed and
                                                 not cyl_committed(&j.words[p], k)):
            cyl_relax()
        cyl_pool_note_wait(2, t0)


cdef enum:
    # steps in a row a worker may find its panels all done by the caller before
    # it leaves the job (see _units_job)
    UNITS_USELESS_STEPS = 3


cdef void _units_job(void* job, int tid) noexcept nogil:
    cdef SeqJob* j = <SeqJob*> job
    cdef Py_ssize_t s, p, q, n = j.n_panels
    cdef Py_ssize_t m0 = (tid * n) // j.nt, m1 = ((tid + 1) * n) // j.nt
    cdef int64_t k, last = 0
    cdef int useless = 0
    cdef int64_t spins
    cdef bint helped
    # Redone by the caller when a worker is late only with the panel projection
    # (each element of G stored once, final; packing likewise): a BLAS call may
    # store partial sums in G first, so a late one must not run beside the steps
    # that read G.
    _claim_pieces(j.bflags, j.n_blocks, tid, j.nt, _units_prep_piece, job, j.panel_proj)
    # Panels are visited in _snake order: each thread walks its own range up on
    # even steps and down on odd ones, and the caller takes over the workers'
    # panels from the end they reach last.
    if tid == 0:
        for s in range(j.Lmax):
            k = s + 1
            if j.rmask != NULL:  # (single thread only: checked by forward_units)
                if j.dbl:
                    _units_rmask_t(j, s, <double*> NULL)
                else:
                    _units_rmask_t(j, s, <float*> NULL)
            if j.step_b1:
                _units_step_b1(j, s)
                continue
            if j.nt == 1:
                for q in range(n):
                    _units_panel(j, s, _snake(q, s, n), 0,
                                 _snake(q + 1, s, n) if q + 1 < n else -1)
                continue
            cyl_pool_tick_set(k)
            for q in range(m1 - m0):
                _units_panel(j, s, m0 + _snake(q, s, m1 - m0), 0,
                             m0 + _snake(q + 1, s, m1 - m0) if q + 1 < m1 - m0 else -1)
            for q in range(n - m1):
                p = n - 1 - _snake(q, s, n - m1)
                _units_commit_wait(j, p, k, False)
                _units_panel(j, s, p, 0)
            for p in range(m1, n):
                _units_commit_wait(j, p, k, True)
        cyl_store(&j.finished, 1)
        if j.dbl:
            _units_final_t(j, <double*> NULL)
        else:
            _units_final_t(j, <float*> NULL)
        return
    # a worker holds the job's memory only while it computes a step's panels:
    # the caller never waits for one that is preempted between steps.  A worker
    # that keeps finding its panels done by the caller is behind (its core is
    # shared): it leaves, rather than take CPU time the caller could use.
    while useless < UNITS_USELESS_STEPS:
        cyl_pool_release()
        k = cyl_pool_tick_get()
        spins = 0
        while k == last:
            if not cyl_pool_job_open():
                return
            spins += 1
            if spins % 64 == 0 and cyl_pool_beside_caller():
                return   # moved onto the caller's core: every spin is its time
            cyl_relax()
            k = cyl_pool_tick_get()
        if not cyl_pool_acquire():
            return
        if cyl_load(&j.finished):
            return
        helped = False
        for q in range(m1 - m0):
            if cyl_pool_tick_get() != k:
                break
            helped = _units_panel(j, k - 1, m0 + _snake(q, k - 1, m1 - m0), tid,
                                  m0 + _snake(q + 1, k - 1, m1 - m0)
                                  if q + 1 < m1 - m0 else -1) or helped
        useless = 0 if helped else useless + 1
        last = k


# --- entry points --------------------------------------------------------------

cdef inline int64_t* _zeroed_flags(Py_ssize_t n) noexcept nogil:
    return <int64_t*> calloc(n if n > 0 else 1, sizeof(int64_t))


cdef bint _pool_job(cyl_pool_fn fn, void* job, int nt, int blas_threads,
                    int64_t** flags, Py_ssize_t n_flags, int64_t** bflags,
                    Py_ssize_t n_bflags, int64_t** words, Py_ssize_t n_words) noexcept nogil:
    """Run ``job`` on ``nt`` threads (BLAS single-threaded meanwhile), with
    zeroed piece words allocated for it (each pointer may be NULL: not
    needed) and freed after.  False when the words could not be allocated."""
    cdef int64_t** ptrs[3]
    cdef Py_ssize_t sizes[3]
    cdef int i
    cdef bint ok = True
    ptrs[0], ptrs[1], ptrs[2] = flags, bflags, words
    sizes[0], sizes[1], sizes[2] = n_flags, n_bflags, n_words
    for i in range(3):
        if ptrs[i] != NULL:
            ptrs[i][0] = _zeroed_flags(sizes[i])
            ok = ok and ptrs[i][0] != NULL
    if ok:
        set_blas_threads(1)
        cyl_pool_run(fn, job, nt)
        set_blas_threads(blas_threads)
    for i in range(3):
        if ptrs[i] != NULL:
            free(ptrs[i][0])
            ptrs[i][0] = NULL
    return ok


cdef int _lmax(const int64_t* lp, Py_ssize_t B, Py_ssize_t T) noexcept nogil:
    cdef Py_ssize_t b, L, Lmax = 0
    for b in range(B):
        L = T if lp == NULL else lp[b]
        Lmax = L if L > Lmax else Lmax
    return <int> Lmax


cdef void _fill_job(SeqJob* j, floating* kind, const floating[:, :, ::1] x,
                    const floating[:, ::1] W, const floating[:, ::1] U,
                    const floating[::1] bias, const int64_t[::1] lengths, bint reverse,
                    const floating[:, ::1] rmask, floating[:, ::1] hm,
                    floating[:, :, ::1] y, floating[:, ::1] hs, floating[:, ::1] cs,
                    floating[:, :, ::1] G, floating[:, :, ::1] C,
                    floating[:, :, ::1] Hp, floating[:, ::1] Z):
    memset(j, 0, sizeof(SeqJob))
    j.dbl = floating is double
    j.B = x.shape[0]
    j.T = x.shape[1]
    j.In = x.shape[2]
    j.H = U.shape[0]
    j.x = &x[0, 0, 0]
    j.W = &W[0, 0]
    j.U = &U[0, 0]
    j.bias = &bias[0]
    j.lengths = NULL if lengths is None else &lengths[0]
    j.reverse = reverse
    j.rmask = NULL if rmask is None else &rmask[0, 0]
    j.hm = NULL if hm is None else &hm[0, 0]
    j.y = _ptr3(y)
    j.G = _ptr3(G)
    j.C = _ptr3(C)
    j.Hp = _ptr3(Hp)
    j.hs = &hs[0, 0]
    j.cs = &cs[0, 0]
    j.Z = &Z[0, 0]
    j.zstride = Z.shape[1]
    j.Lmax = _lmax(j.lengths, j.B, j.T)
    if j.rmask != NULL and j.hm == NULL:
        raise ValueError("forward: a recurrent mask needs the hm scratch buffer")
    if hm is not None and (hm.shape[0] != j.B or hm.shape[1] != j.H):
        raise ValueError(f"forward: hm must be (B, H) = {(j.B, j.H)}; got "
                         f"{(hm.shape[0], hm.shape[1])}")


cdef void _check_panel_buffers(str name, Py_ssize_t n_packed, Py_ssize_t want_packed,
                               str packed_len, object hs2, Py_ssize_t B, Py_ssize_t H,
                               Py_ssize_t z_rows, Py_ssize_t z_cols, int nt,
                               Py_ssize_t want_cols, str z_len) except *:
    """The scratch checks the two packed-panel entry points share."""
    if n_packed != want_packed:
        raise ValueError(f"{name}: Pu must be {packed_len} long")
    if hs2 is None or hs2.shape[0] != B or hs2.shape[1] != H:
        raise ValueError(f"{name}: hs2 must be (B, H)")
    if z_rows < nt or z_cols < want_cols:
        raise ValueError(f"{name}: Z too small (n_threads, {z_len})")


cdef void _check_amx(bint bf16, bint dbl, Py_ssize_t n_packed, object abuf, Py_ssize_t I,
                     Py_ssize_t H, int nt) except *:
    """The checks of forward_rows's AMX arguments: ValueError, never a crash."""
    cdef Py_ssize_t want = cyl_bf16_tiles_len(I, 4 * H) + cyl_bf16_tiles_len(H, 4 * H)
    if dbl or not bf16:
        raise ValueError("forward_rows: the AMX products need float32 arrays and bf16=True")
    if n_packed != want:
        raise ValueError(f"forward_rows: WUt must hold {want} elements (W and U "
                         f"tile-packed); got {n_packed}")
    if (abuf is None or abuf.shape[0] < nt
            or abuf.shape[1] < cyl_bf16_abuf2_len(I, H)):
        raise ValueError(f"forward_rows: abuf must be (n_threads, "
                         f"{cyl_bf16_abuf2_len(I, H)}) at least")
    if cyl_bf16_engine() == 0:
        raise ValueError(f"forward_rows: the bf16 products cannot run here: "
                         f"{_bf16_engine_why()}")


def forward_rows(const floating[:, :, ::1] x, const floating[:, ::1] W,
                 const floating[:, ::1] U, const floating[::1] bias,
                 const int64_t[::1] lengths, bint reverse,
                 const floating[:, ::1] rmask, floating[:, ::1] hm,
                 floating[:, :, ::1] y, floating[:, ::1] hs, floating[:, ::1] cs,
                 floating[:, :, ::1] G, floating[:, :, ::1] C,
                 floating[:, :, ::1] Hp, floating[:, ::1] Z,
                 int n_threads, int blas_threads, bint fuse, bint tiled=False,
                 bint bf16=False, const uint16_t[::1] WUt=None, uint16_t[:, ::1] abuf=None):
    """Forward, threads splitting the batch into ``n_threads`` slices, BLAS per step.

    Arguments are validated by cylstm.functional.  ``hs``/``cs`` (B, H) hold
    the initial state on entry and the final state on exit; ``y``, ``C``,
    ``Hp`` may be None, ``lengths`` too.  ``Z`` is (B, 4H) scratch.  ``fuse``
    (no lengths): each step computes x_t @ W itself instead of reading a
    projection of all steps from ``G``, which then only receives the gates for
    training and may be None in inference.  With one thread BLAS may use
    ``blas_threads`` for the projection.  ``tiled``: the per-step products as
    small BLAS tiles (a plan's ``tile_steps``).  ``bf16`` (float32): the
    recurrent product reads h_prev rounded to bfloat16 each step, into ``hm``
    (B, H), which is then required (x, W and U must come rounded: a plan's
    ``bf16``, see cylstm.functional).  ``WUt`` (with ``bf16``; the "rows_bf16"
    paths): W then U tile-packed (:func:`bf16_tiles_pack`, one after the other),
    the products on AMX tiles, ``abuf`` (n_threads, bf16_abuf2_len(I, H))
    their scratch; x and W need not come rounded then (the kernel rounds x, the
    pack rounded W and U).
    """
    cdef SeqJob j
    cdef floating* kind = NULL
    cdef Py_ssize_t B = x.shape[0], T = x.shape[1], I = x.shape[2], H = U.shape[0]
    cdef int nt = n_threads if n_threads < B else <int> B
    if B == 0 or T == 0:
        return
    _fill_job(&j, kind, x, W, U, bias, lengths, reverse, rmask, hm, y, hs, cs, G, C, Hp, Z)
    # (x_t rows lie T * I apart: a BLAS leading dimension, a C int)
    j.fused = fuse and lengths is None and T * I <= INT_MAX_C
    j.tiled = tiled
    if bf16 and floating is double:
        raise ValueError("forward_rows: bfloat16 products need float32 arrays; got float64")
    if bf16 and j.hm == NULL:
        raise ValueError("forward_rows: bfloat16 products need the hm scratch buffer (B, H)")
    j.bf16 = bf16
    if WUt is not None:
        _check_amx(bf16, floating is double, WUt.shape[0], abuf, I, H, nt)
        j.Wt = &WUt[0]
        j.Ut = j.Wt + cyl_bf16_tiles_len(I, 4 * H)
        j.abuf = &abuf[0, 0]
        j.abuf_len = abuf.shape[1]
    if j.G == NULL and not j.fused:
        raise ValueError("forward_rows: G is needed unless fuse is set (and there are no lengths)")
    if Z.shape[0] != B or Z.shape[1] != 4 * H:
        raise ValueError("forward_rows: Z must be (B, 4H)")
    j.nt = nt if nt > 1 else 1
    j.n_pieces = j.nt
    with nogil:
        if j.nt == 1:
            set_blas_threads(blas_threads)
            _forward_rows(0, B, T, I, H, &x[0, 0, 0], &W[0, 0], &U[0, 0], &bias[0],
                          j.lengths, reverse, <const floating*> j.rmask, <floating*> j.hm,
                          <floating*> j.y, <floating*> j.G, <floating*> j.C,
                          <floating*> j.Hp, &hs[0, 0], &cs[0, 0], &Z[0, 0], blas_threads,
                          j.fused, j.tiled, j.bf16, j.Wt, j.Ut, j.abuf)
            set_blas_threads(blas_threads)
        elif not _pool_job(_rows_job, &j, j.nt, blas_threads, &j.flags, j.n_pieces,
                           NULL, 0, NULL, 0):
            j.n_pieces = 0
    if j.n_pieces == 0:
        raise MemoryError("forward_rows: no memory for the thread flags")


def forward_stacked(const floating[:, :, ::1] x, const floating[:, ::1] W,
                    const floating[:, ::1] U, const floating[::1] bias,
                    const int64_t[::1] lengths, bint reverse,
                    const floating[:, ::1] rmask, floating[:, ::1] hm,
                    floating[:, :, ::1] y, floating[:, ::1] hs, floating[:, ::1] cs,
                    floating[:, :, ::1] G, floating[:, :, ::1] C,
                    floating[:, :, ::1] Hp, floating[:, ::1] Z,
                    const floating[::1] Pu, floating[:, ::1] hs2, int n_threads,
                    int blas_threads, bint prepacked=False):
    """Forward, threads splitting the batch; each step is the streaming runner's
    [x_t, h_prev] @ [W; U] on packed panels, then the cell, panel by panel.

    ``Pu``: stacked_len(I, H) scratch the threads pack [W; U] and the bias
    into (``prepacked``: :func:`pack_stacked` already did, and the call only
    reads it); no lengths with ``reverse``; ``G`` may be None (it only receives the
    gates); ``hs2`` (B, H) is the second h buffer; ``Z`` per-thread scratch
    (n_threads, B * 4 * span).
    """
    cdef SeqJob j
    cdef floating* kind = NULL
    cdef Py_ssize_t B = x.shape[0], T = x.shape[1], I = x.shape[2], H = U.shape[0]
    cdef Py_ssize_t span = panel_span(kind)
    cdef int nt = n_threads if n_threads < B else <int> B
    if B == 0 or T == 0:
        return
    _fill_job(&j, kind, x, W, U, bias, lengths, reverse, rmask, hm, y, hs, cs, G, C, Hp, Z)
    if lengths is not None and reverse:
        raise ValueError("forward_stacked: cannot run lengths backwards")
    j.nt = nt if nt > 1 else 1
    # a panel is at most 4 * span wide (padding only rounds a short last one up)
    _check_panel_buffers("forward_stacked", -1 if Pu is None else Pu.shape[0],
                         _stacked_len(I, H, span, panel_vlen(kind)), "stacked_len(I, H)", hs2, B, H,
                         Z.shape[0], Z.shape[1], j.nt, B * 4 * span, "B * 4 * span")
    j.P = <void*> &Pu[0]  # written unless prepacked (const: a cached pack is read-only)
    j.nbias = Pu.shape[0] - Pu.shape[0] // (I + H + 1)  # where the bias starts
    j.hs2 = &hs2[0, 0]
    j.n_panels = (H + span - 1) // span
    j.n_pieces = j.nt if _steal_pieces == 0 or not _steal_on else min(_steal_pieces, j.nt)
    j.n_blocks = 0 if prepacked else j.nt
    with nogil:
        if not _pool_job(_stacked_job, &j, j.nt, blas_threads, &j.flags, j.n_pieces,
                         &j.bflags, j.n_blocks, &j.words, STEAL_SLOT * (j.nt + 2)):
            j.n_pieces = 0
    if j.n_pieces == 0:
        raise MemoryError("forward_stacked: no memory for the thread flags")


def forward_units(const floating[:, :, ::1] x, const floating[:, ::1] W,
                  const floating[:, ::1] U, const floating[::1] bias,
                  const int64_t[::1] lengths, bint reverse,
                  const floating[:, ::1] rmask, floating[:, ::1] hm,
                  floating[:, :, ::1] y, floating[:, ::1] hs, floating[:, ::1] cs,
                  floating[:, :, ::1] G, floating[:, :, ::1] C,
                  floating[:, :, ::1] Hp, floating[:, ::1] Z,
                  const floating[::1] Pu, floating[:, ::1] hs2, int n_threads,
                  int blas_threads, bint prepacked=False, bint panel_projection=False):
    """Forward, threads splitting the units in whole panels of span units; the
    product on packed panels of U (see :func:`pack_recurrent`).

    ``prepacked``: ``Pu`` holds U and W as :func:`pack_units` packs them
    (stacked_len(I, H)), made once by the caller; the call then packs nothing.
    ``panel_projection`` (prepacked, inference only): x @ W on those panels' W
    rows instead of BLAS (which repacks W each call: cheaper for few rows of x),
    straight into ``G`` whose rows are then in panel order, (B, T, 4 H_pad), and
    the cell reads the bias packed with the weights.

    ``G`` (B, T, 4H) receives x @ W (each block of panels projects its own
    columns) and, in training (``C`` given), the gates.  ``Pu``:
    packed_len(H) scratch; ``hs2`` (B, H) the second h buffer; ``Z``
    per-thread scratch (n_threads, units_scratch(B, H)).  A recurrent mask
    runs on one thread only.
    """
    cdef SeqJob j
    cdef floating* kind = NULL
    cdef Py_ssize_t B = x.shape[0], T = x.shape[1], H = U.shape[0]
    cdef Py_ssize_t span = panel_span(kind)
    cdef Py_ssize_t n_panels = (H + span - 1) // span
    cdef int nt = n_threads if n_threads < n_panels else <int> n_panels
    if B == 0 or T == 0:
        return
    _fill_job(&j, kind, x, W, U, bias, lengths, reverse, rmask, hm, y, hs, cs, G, C, Hp, Z)
    if j.G == NULL:
        raise ValueError("forward_units: needs G")
    j.nt = nt if nt > 1 else 1
    if j.rmask != NULL and j.nt > 1:
        raise ValueError("forward_units: the unit split cannot take a recurrent mask")
    _check_panel_buffers("forward_units", -1 if Pu is None else Pu.shape[0],
                         _stacked_len(x.shape[2], H, span, panel_vlen(kind)) if prepacked
                         else _packed_len(H, span, panel_vlen(kind)),
                         "stacked_len(I, H)" if prepacked else "packed_len(H)", hs2, B, H,
                         Z.shape[0], Z.shape[1], j.nt, units_scratch_len(B, H, span),
                         "units_scratch(B, H)")
    j.P = <void*> &Pu[0]  # written unless prepacked (const: a cached pack is read-only)
    j.prepacked = prepacked
    j.panel_proj = prepacked and panel_projection
    # batch 1 on one thread, float32 inference with the panel projection: whole
    # steps (_units_step_b1)
    j.step_b1 = (j.panel_proj and j.nt == 1 and B == 1 and not j.dbl
                 and j.lengths == NULL and j.rmask == NULL)
    j.ldg = G.shape[2]
    cdef Py_ssize_t hpad = _packed_len(H, span, panel_vlen(kind)) // (4 * H)
    if j.panel_proj and (C is not None or Hp is not None):
        raise ValueError("forward_units: the panel projection is inference only")
    if G.shape[2] != (4 * hpad if j.panel_proj else 4 * H):
        raise ValueError(f"forward_units: G must be (B, T, {4 * hpad if j.panel_proj else 4 * H})"
                         f"{' (4 H_pad: rows in panel order)' if j.panel_proj else ''}; "
                         f"got {G.shape[2]} columns")
    j.nbias = Pu.shape[0] - 4 * hpad  # (prepacked: the bias in panel order)
    j.hs2 = &hs2[0, 0]
    j.n_panels = n_panels
    # projection and packing in two blocks per thread: a late worker's share
    # is picked up in halves
    j.n_blocks = 1 if j.nt == 1 else (2 * j.nt if 2 * j.nt <= n_panels else n_panels)
    with nogil:
        if not _pool_job(_units_job, &j, j.nt, blas_threads, NULL, 0, &j.bflags, j.n_blocks,
                         &j.words, n_panels):
            j.n_blocks = 0
    if j.n_blocks == 0:
        raise MemoryError("forward_units: no memory for the thread flags")


cdef inline void _project_units(Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t M, Py_ssize_t I,
                                Py_ssize_t H, const floating* x, const floating* W,
                                floating* G) noexcept nogil:
    """The gate columns of units [j0, j1) of G (M, 4H) = X (M, I) @ W (I, 4H)."""
    cdef Py_ssize_t g
    if j0 == 0 and j1 == H:  # all units: one product
        gemm(False, False, <int> M, <int> (4 * H), <int> I, 1, x, <int> I, W, <int> (4 * H),
             0, G, <int> (4 * H))
    elif j1 > j0:
        for g in range(4):
            gemm(False, False, <int> M, <int> (j1 - j0), <int> I, 1, x, <int> I,
                 W + g * H + j0, <int> (4 * H), 0, G + g * H + j0, <int> (4 * H))


# --- backward ------------------------------------------------------------------

cdef struct BackJob:
    bint dbl
    int nt
    Py_ssize_t B, T, In, H, n_pieces
    const void* x
    const void* W
    const void* UT
    const void* c0
    const int64_t* lengths
    bint reverse
    const void* rmask
    void* G
    const void* C
    const void* Hp
    const void* dy
    void* dhs
    void* dcs
    void* D
    void* dHp
    void* dx
    void* dW
    void* dU
    void* db
    void* parts
    int64_t* flags
    bint bf16
    const uint16_t* amxT
    bint loop_only         # slices run the time loop and db; the caller the GEMMs after
    int big                # BLAS threads for a lone slice's GEMMs after its time loop
    # (units: the time loop split by units, _bu_job) steps, dz read in place in G
    # (else gathered into D, two (B, 4H) halves by step parity), panels of U^T
    Py_ssize_t Lmax, n_panels
    bint inplace


cdef void _back_piece_t(BackJob* j, Py_ssize_t c, floating* kind) noexcept nogil:
    cdef Py_ssize_t H4 = 4 * j.H
    cdef floating* pp
    cdef floating* dWp = <floating*> j.dW
    cdef floating* dUp = <floating*> j.dU
    cdef floating* dbp = <floating*> j.db
    if c > 0:  # piece c's weight-gradient sums go to parts[c - 1] (summed in order after)
        pp = <floating*> j.parts + (c - 1) * (j.In + j.H + 1) * H4
        dWp = pp
        dUp = pp + j.In * H4
        dbp = pp + (j.In + j.H) * H4
    _backward_rows((c * j.B) // j.n_pieces, ((c + 1) * j.B) // j.n_pieces, j.T, j.In, j.H,
                   <const floating*> j.x, <const floating*> j.W, <const floating*> j.UT,
                   <const floating*> j.c0, j.lengths, j.reverse, <const floating*> j.rmask,
                   <floating*> j.G, <const floating*> j.C, <const floating*> j.Hp,
                   <const floating*> j.dy, <floating*> j.dhs, <floating*> j.dcs,
                   <floating*> j.D, <floating*> j.dHp, <floating*> j.dx, dWp, dUp, dbp, j.big,
                   j.bf16, j.amxT, j.loop_only)


cdef void _back_piece(void* job, Py_ssize_t c, int tid) noexcept nogil:
    cdef BackJob* j = <BackJob*> job
    if j.dbl:
        _back_piece_t(j, c, <double*> NULL)
    else:
        _back_piece_t(j, c, <float*> NULL)


cdef void _back_job(void* job, int tid) noexcept nogil:
    cdef BackJob* j = <BackJob*> job
    _claim_pieces(j.flags, j.n_pieces, tid, j.nt, _back_piece, job)


# --- the time loop split by units (BackwardPlan.units) -----------------------
#
# Each step s is two phases over n_pieces pieces of U^T's plain panels (their
# units): A, (B1)-(B6) for every sample on the piece's units (dh from the piece's
# own columns of the last product), then, once every piece's A is done, B, the
# piece's columns of dh_prev = dz @ U^T over every sample.  A(s - 1, p) needs
# only B(s, p).  A thread claims a piece only once what it reads is done, so a
# claimed piece never waits and nothing can wait in a cycle; pieces nobody has
# claimed, the caller (or any thread that gets there) runs.  Each element is
# computed as on one thread (the same products in k order, the same cell
# operations): the same bits as the serial loop over the whole batch.
#
# Progress words, one per piece and phase, a cache line apart: 2 m when m steps
# (counted from the last) are done, 2 m + 1 while step m is claimed.

cdef enum:
    BU_SLOT = 8            # int64 words between two progress words (64 bytes)


cdef inline void _bu_units(BackJob* j, Py_ssize_t p, Py_ssize_t pw, Py_ssize_t* u0,
                           Py_ssize_t* p0, Py_ssize_t* p1) noexcept nogil:
    """Piece p: U^T panels [p0, p1), units [u0, min(p1 pw, H))."""
    p0[0] = (p * j.n_panels) // j.n_pieces
    p1[0] = ((p + 1) * j.n_panels) // j.n_pieces
    u0[0] = p0[0] * pw


cdef void _bu_cells_t(BackJob* j, Py_ssize_t s, Py_ssize_t p, floating* kind) noexcept nogil:
    """Phase A of step s, piece p: dh += dy, then (B1)-(B6) on the piece's units,
    dz over the gates in G (and into D's half for this step's parity)."""
    cdef Py_ssize_t H = j.H, H4 = 4 * H, T = j.T, b, L, t, tp, row, k, g, u0, p0, p1, u1
    cdef Py_ssize_t pw = _plain_width(kind)
    cdef floating* G = <floating*> j.G
    cdef const floating* C = <const floating*> j.C
    cdef const floating* dy = <const floating*> j.dy
    cdef floating* dhs = <floating*> j.dhs
    cdef floating* dcs = <floating*> j.dcs
    cdef floating* D = <floating*> j.D + (s % 2) * j.B * H4
    cdef const floating* cp
    cdef floating* dh
    _bu_units(j, p, pw, &u0, &p0, &p1)
    u1 = p1 * pw if p1 * pw < H else H
    for b in range(j.B):
        L = T if j.lengths == NULL else j.lengths[b]
        if s >= L:
            continue
        t = L - 1 - s if j.reverse else s
        row = b * T + t
        dh = dhs + b * H
        if dy != NULL:
            for k in range(u0, u1):
                dh[k] += dy[row * H + k]
        if s == 0:
            cp = <const floating*> j.c0 + b * H
        else:
            tp = t + 1 if j.reverse else t - 1
            cp = C + (b * T + tp) * H
        cell_backward_units(u1 - u0, H, G + row * H4 + u0, C + row * H + u0, cp + u0,
                            dh + u0, dcs + b * H + u0, G + row * H4 + u0)
        if not j.inplace:
            for g in range(4):
                memcpy(D + b * H4 + g * H + u0, G + row * H4 + g * H + u0,
                       (u1 - u0) * sizeof(floating))


cdef void _bu_product_t(BackJob* j, Py_ssize_t s, Py_ssize_t p, floating* kind) noexcept nogil:
    """Phase B of step s, piece p: its columns of dh_prev (B, H) = dz (B, 4H) @
    U^T on its panels (in _snake order over them), then into dhs (times the
    recurrent mask)."""
    cdef Py_ssize_t H = j.H, H4 = 4 * H, b, L, q, pp, j0, w, k, u0, p0, p1, u1
    cdef Py_ssize_t pw = _plain_width(kind), vl = panel_vlen(kind), hpw = _plain_padded(H, kind)
    cdef const floating* UT = <const floating*> j.UT
    cdef floating* dHp = <floating*> j.dHp
    cdef floating* dhs = <floating*> j.dhs
    cdef const floating* rm = <const floating*> j.rmask
    cdef const floating* dz
    cdef const floating* nx
    cdef Py_ssize_t ldz
    _bu_units(j, p, pw, &u0, &p0, &p1)
    u1 = p1 * pw if p1 * pw < H else H
    if j.inplace:
        dz = <const floating*> j.G + (j.T - 1 - s if j.reverse else s) * H4
        ldz = j.T * H4
    else:
        dz = <const floating*> j.D + (s % 2) * j.B * H4
        ldz = H4
    for q in range(p1 - p0):
        pp = p0 + _snake(q, s, p1 - p0)
        j0 = pp * pw
        w = H - j0 if H - j0 < pw else pw
        w = ((w + vl - 1) // vl) * vl
        nx = UT + (p0 + _snake(q + 1, s, p1 - p0)) * H4 * pw if q + 1 < p1 - p0 else NULL
        panel_product(UT + pp * H4 * pw, w, j.B, dz, H4, ldz, dz, 0, 0, dHp + j0, hpw, nx)
    for b in range(j.B):
        L = j.T if j.lengths == NULL else j.lengths[b]
        if s >= L:
            continue
        if rm != NULL:
            for k in range(u0, u1):
                dhs[b * H + k] = dHp[b * hpw + k] * rm[b * H + k]
        else:
            memcpy(dhs + b * H + u0, dHp + b * hpw + u0, (u1 - u0) * sizeof(floating))


cdef inline void _bu_wait(const int64_t* word, int64_t at_least, int tid) noexcept nogil:
    """Wait until a progress word reaches ``at_least`` (a running thread's piece)."""
    cdef int64_t t0
    if cyl_load(word) >= at_least:
        return
    t0 = cyl_now_ns()
    while cyl_load(word) < at_least:
        cyl_relax()
    if tid == 0:
        cyl_pool_note_wait(0, t0)


cdef inline Py_ssize_t _bu_order(Py_ssize_t i, Py_ssize_t c0, Py_ssize_t c1,
                                 Py_ssize_t n) noexcept nogil:
    """The i-th piece a thread tries: its share [c0, c1), then all from the last back."""
    return c0 + i if i < c1 - c0 else n - 1 - (i - (c1 - c0))


cdef inline void _bu_run(BackJob* j, int64_t* word, Py_ssize_t m, Py_ssize_t s, Py_ssize_t p,
                         bint product) noexcept nogil:
    """Claim step s (the m-th from the last) of piece p's phase at ``word`` and
    run it (phase B if ``product``, else A), unless another thread has."""
    if not cyl_cas(word, 2 * m, 2 * m + 1):
        return
    if product and j.dbl:
        _bu_product_t(j, s, p, <double*> NULL)
    elif product:
        _bu_product_t(j, s, p, <float*> NULL)
    elif j.dbl:
        _bu_cells_t(j, s, p, <double*> NULL)
    else:
        _bu_cells_t(j, s, p, <float*> NULL)
    cyl_store(word, 2 * m + 2)


cdef void _bu_job(void* job, int tid) noexcept nogil:
    cdef BackJob* j = <BackJob*> job
    cdef Py_ssize_t n = j.n_pieces, s, p, i, m
    cdef Py_ssize_t c0 = (tid * n) // j.nt, c1 = ((tid + 1) * n) // j.nt
    cdef int64_t* A = j.flags
    cdef int64_t* Bw = j.flags + n * BU_SLOT
    cdef unsigned fp_mode = cyl_ftz_begin()
    for s in range(j.Lmax - 1, -1, -1):
        m = j.Lmax - 1 - s
        for i in range(c1 - c0 + n):
            p = _bu_order(i, c0, c1, n)
            if cyl_load(&A[p * BU_SLOT]) > 2 * m:
                continue  # claimed or done
            _bu_wait(&Bw[p * BU_SLOT], 2 * m, tid)  # B(s + 1, p): dh of its units
            _bu_run(j, &A[p * BU_SLOT], m, s, p, False)
        for p in range(n):  # every piece's dz of step s
            _bu_wait(&A[p * BU_SLOT], 2 * m + 2, tid)
        for i in range(c1 - c0 + n):
            p = _bu_order(i, c0, c1, n)
            _bu_run(j, &Bw[p * BU_SLOT], m, s, p, True)
    if tid == 0:
        for p in range(n):
            _bu_wait(&Bw[p * BU_SLOT], 2 * j.Lmax, tid)
    cyl_ftz_end(fp_mode)


cdef void _backward_units(BackJob* j, floating* kind, int blas_threads) noexcept nogil:
    """The time loop split by units on the pool (_bu_job), then db and the
    weight-gradient GEMMs over the whole batch on ``blas_threads`` (j.n_pieces
    is 0 on return when the progress words could not be allocated)."""
    cdef Py_ssize_t B = j.B, T = j.T, H4 = 4 * j.H, b, L, r, k
    cdef floating* G = <floating*> j.G
    cdef floating* db = <floating*> j.db
    cdef unsigned fp_mode
    for b in range(B):
        L = T if j.lengths == NULL else j.lengths[b]
        if L < T:  # padding rows take no gradient
            memset(G + (b * T + L) * H4, 0, (T - L) * H4 * sizeof(floating))
    if j.Lmax > 0 and not _pool_job(_bu_job, j, j.nt, blas_threads, &j.flags,
                                    2 * j.n_pieces * BU_SLOT, NULL, 0, NULL, 0):
        j.n_pieces = 0
        return
    fp_mode = cyl_ftz_begin()
    memset(db, 0, H4 * sizeof(floating))
    for r in range(B * T):
        for k in range(H4):
            db[k] += G[r * H4 + k]
    set_blas_threads(blas_threads)
    _blas_weight_grads(0, B * T, j.In, j.H, <const floating*> j.x, <const floating*> j.W,
                       <const floating*> j.Hp, G, <floating*> j.dx, <floating*> j.dW,
                       <floating*> j.dU)
    cyl_ftz_end(fp_mode)


def backward(const floating[:, :, ::1] x, const floating[:, ::1] W,
             const floating[::1] PU, const floating[:, ::1] c0,
             const int64_t[::1] lengths, bint reverse,
             const floating[:, ::1] rmask,
             floating[:, :, ::1] G, const floating[:, :, ::1] C,
             const floating[:, :, ::1] Hp, const floating[:, :, ::1] dy,
             floating[:, ::1] dhs, floating[:, ::1] dcs,
             floating[:, ::1] D, floating[:, ::1] dHp, floating[:, :, ::1] dx,
             floating[:, ::1] dW, floating[:, ::1] dU, floating[::1] db,
             floating[:, :, ::1] parts, int n_threads, int blas_threads,
             bint bf16=False, const uint16_t[::1] amx=None, bint whole_grads=False,
             int units=0):
    """Run BPTT.  ``PU`` is the recurrent kernel transposed and packed by
    :func:`pack_transposed` (once per weights: the checkpointed backward calls
    this once per segment).  ``bf16``: the mixed_bfloat16 backward (dz rounded
    to bf16 for the products, _backward_rows); ``amx`` (float32, bf16): U^T then
    W^T tile-packed (:func:`bf16_tiles_pack` ``transposed``), the products on AMX
    tiles (``PU`` may then be None).  ``whole_grads`` (BLAS only, n_threads > 1):
    the slices split the time loop, and the weight-gradient GEMMs after it run
    once over the whole batch on ``blas_threads`` (no per-slice partial sums of
    dW and dU to add).  With one slice its GEMMs run on ``blas_threads``.
    ``G`` holds the training forward's gates and is overwritten
    with dL/dz.  ``dhs``/``dcs`` hold dL/dh_T, dL/dc_T on entry and dL/dh0,
    dL/dc0 on exit.  ``parts`` (n_threads - 1, I + H + 1, 4H) is scratch for
    the per-slice weight-gradient sums (None when n_threads == 1); slices are
    summed in a fixed order, so results do not depend on which thread ran which.
    ``units`` (n_threads > 1, not bf16): > 0, the threads split the time loop
    by units instead, ``units`` pieces a thread (of U^T's panels; fewer where
    there are fewer panels; cylstm/_tuning.py's BACKWARD_UNITS_PIECES; any
    count gives the same bits) (_bu_job; every sample on each thread, no ``parts``), the
    weight gradients after it over the whole batch on ``blas_threads``; with
    lengths ``D`` holds two (B, 4H) halves, (2B, 4H) zeroed.
    """
    cdef BackJob j
    cdef Py_ssize_t B = x.shape[0], T = x.shape[1], I = x.shape[2]
    cdef Py_ssize_t H = dhs.shape[1], H4 = 4 * H, n, c
    cdef int nt = n_threads if n_threads < B else <int> B
    cdef floating* pp
    cdef floating* dWp
    cdef floating* dUp
    cdef unsigned fp_mode
    if B == 0 or T == 0:
        dW[:, :] = 0
        dU[:, :] = 0
        db[:] = 0
        return
    nt = nt if nt > 1 else 1
    if units < 0:
        raise ValueError(f"backward: units must be >= 0 (pieces a thread); got {units}")
    if units:
        if bf16 or amx is not None:
            raise ValueError("backward: units takes no bf16 cache (its dz rounding "
                             "runs on the batch split)")
        if lengths is not None and D.shape[0] < 2 * B:
            raise ValueError(f"backward: with units and lengths D must be (2B, 4H) = "
                             f"{(2 * B, H4)}; got {(D.shape[0], D.shape[1])}")
        n = (H + _plain_width(&db[0]) - 1) // _plain_width(&db[0])
        nt = n_threads if n_threads < n else <int> n
        units = nt > 1
    if nt > 1 and not units and (parts is None or parts.shape[0] < nt - 1):
        raise ValueError("backward: parts buffer too small for n_threads")
    memset(&j, 0, sizeof(BackJob))
    j.dbl = floating is double
    j.nt = nt
    j.n_pieces = nt
    j.B = B
    j.T = T
    j.In = I
    j.H = H
    j.x = &x[0, 0, 0]
    j.W = &W[0, 0]
    if amx is None and (PU is None or PU.shape[0] != _plain_len(H4, H, &db[0])):
        raise ValueError("backward: PU must be transposed_len(H) long")
    j.UT = NULL if PU is None else &PU[0]
    j.c0 = &c0[0, 0]
    j.lengths = NULL if lengths is None else &lengths[0]
    j.reverse = reverse
    j.rmask = NULL if rmask is None else &rmask[0, 0]
    j.G = &G[0, 0, 0]
    j.C = &C[0, 0, 0]
    j.Hp = &Hp[0, 0, 0]
    j.dy = NULL if dy is None else &dy[0, 0, 0]
    j.dhs = &dhs[0, 0]
    j.dcs = &dcs[0, 0]
    j.D = &D[0, 0]
    if dHp.shape[0] != B or dHp.shape[1] != _plain_padded(H, &db[0]):
        raise ValueError(f"backward: dHp must be (B, transposed_width(H)) = "
                         f"{(B, _plain_padded(H, &db[0]))}; got {(dHp.shape[0], dHp.shape[1])}")
    j.dHp = &dHp[0, 0]
    j.dx = _ptr3(dx)
    j.dW = &dW[0, 0]
    j.dU = &dU[0, 0]
    j.db = &db[0]
    j.parts = NULL if parts is None else &parts[0, 0, 0]
    j.bf16 = bf16
    j.big = blas_threads if nt == 1 else 1
    j.loop_only = whole_grads and nt > 1 and amx is None
    if amx is not None:
        n = cyl_bf16_tiles_len(H4, H) + cyl_bf16_tiles_len(H4, I)
        if not bf16 or sizeof(floating) != sizeof(float):
            raise ValueError("backward: amx takes float32 with bf16=True")
        if amx.shape[0] != n:
            raise ValueError(f"backward: amx must hold U^T then W^T tile-packed, {n} "
                             f"elements; got {amx.shape[0]}")
        if cyl_bf16_engine() == 0:
            raise ValueError(f"backward: the bf16 kernel cannot run here: "
                             f"{_bf16_engine_why()}")
        j.amxT = &amx[0]
    if units:
        j.Lmax = _lmax(j.lengths, B, T)
        j.n_panels = n
        j.n_pieces = nt * units if nt * units < n else n
        j.inplace = lengths is None and T * H4 <= INT_MAX_C
    with nogil:
        if units:
            _backward_units(&j, &db[0], blas_threads)
        elif nt == 1:
            set_blas_threads(blas_threads)
            _back_piece_t(&j, 0, &db[0])
            set_blas_threads(blas_threads)
        elif not _pool_job(_back_job, &j, nt, blas_threads, &j.flags, nt, NULL, 0, NULL, 0):
            j.n_pieces = 0
        else:
            # reduce the per-slice sums (fixed order: results do not depend
            # on scheduling)
            for c in range(1, nt):
                pp = &parts[c - 1, 0, 0]
                if not j.loop_only:
                    dWp = &dW[0, 0]
                    for n in range(I * H4):
                        dWp[n] += pp[n]
                    dUp = &dU[0, 0]
                    for n in range(H * H4):
                        dUp[n] += pp[I * H4 + n]
                for n in range(H4):
                    db[n] += pp[(I + H) * H4 + n]
            if j.loop_only:  # the weight gradients over every row at once
                set_blas_threads(blas_threads)
                fp_mode = cyl_ftz_begin()
                _blas_weight_grads(0, B * T, I, H, &x[0, 0, 0], &W[0, 0], &Hp[0, 0, 0],
                                   &G[0, 0, 0], <floating*> j.dx, &dW[0, 0], &dU[0, 0])
                cyl_ftz_end(fp_mode)
    if j.n_pieces == 0:
        raise MemoryError("backward: no memory for the thread flags")
