# cython: language_level=3
"""Streaming runner kernels: one call per time step for a whole LSTM/Dense stack.

One step of the whole stack is one call into ``_step``: every LSTM layer
computes, panel by panel (see include/cylstm_panel.h),

    z[panel] (4 hp) = [x_t, h_prev] (K) @ M[:, panel] (K, 4 hp)   (kernel)
    c, h[panel]     = cell_forward_units(hb, hp, z, bias[panel], c_prev[panel])

(hb units stored as hp, whole vectors: the sequence kernels' layout and packer)
and every Dense layer y = act(x @ kernel + bias), panel by panel.  Panels are
split across the OpenMP team (one barrier after each layer, because the next
layer reads all of this one's output), or run on the calling thread.

Buffers: h is double-buffered per LSTM layer (panels read the whole h_prev
while others write h_new); ``par`` says which half is the current state.  The
c of a panel is updated in place (the cell allows c_out == c_prev).

Nothing here allocates: the runner (``Core``) owns every buffer, the packed
weights belong to a ``cylstm.stream._Pack`` shared by all runners of a model.
"""
import numpy as np

from cylstm import _tuning

cimport numpy as cnp
from cython cimport floating
from libc.math cimport exp
from libc.stdint cimport int8_t, int16_t, int64_t, uint16_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from cylstm._blas cimport gemm
from cylstm._lstm cimport (pool_acquire, pool_claim, pool_claim_done, pool_claim_wait,
                           pool_job_open, pool_load, pool_relax, pool_release, pool_run,
                           pool_run_small, pool_small_alone, pool_small_alone_end,
                           pool_now_ns, pool_tick_get, pool_tick_set, pool_workers_awake,
                           set_blas_threads)
from cylstm._cell cimport cyl_cell_panels_f32, sigmoid, tanh_
from cylstm._isa cimport cyl_cpu_detected_level, cyl_cpu_force, cyl_cpu_level

cnp.import_array()

from cylstm._panel cimport (CYL_STREAM_CLONES_NAME, CYL_STREAM_VLD, CYL_STREAM_VLF,
                            cyl_i8q_qmax, cyl_i8q_quantize, cyl_panel_bf16, cyl_panel_i8,
                            cyl_panel_i8_b, cyl_panel_set_block_rows, cyl_panel_set_kblock,
                            cyl_panel_set_pf_spread, cyl_panel_set_stream_min,
                            padded_units, panel_cells, panel_product, panel_vlen,
                            stream_next)

cdef extern from "cylstm_math.h" nogil:
    float cyl_expf(float x) noexcept

# Widest panel (elements) the local arrays hold: 4 gates x 16 float32 units,
# or 4 x 8 float64 units; Dense panels are as wide.
cdef enum:
    MAXW = 64
    # float32 panels a batch-1 step multiplies before one cell call over all of them
    # (_lstm_panels): the (256, 512) step with bf16 weights, one thread, 41.2-41.4 ->
    # 40.5 us (alternated processes, AMD EPYC (2 cores), Zen 4, 2026-12-06)
    CELL_GROUP = 4

cdef enum:
    KIND_LSTM = 0
    KIND_DENSE = 1

cdef enum:
    ACT_LINEAR = 0
    ACT_RELU = 1
    ACT_TANH = 2
    ACT_SIGMOID = 3
    ACT_SOFTMAX = 4

ACTIVATIONS = {"linear": ACT_LINEAR, "relu": ACT_RELU, "tanh": ACT_TANH,
               "sigmoid": ACT_SIGMOID, "softmax": ACT_SOFTMAX}
VECTOR_FLOATS = CYL_STREAM_VLF
VECTOR_DOUBLES = CYL_STREAM_VLD
KERNEL_BUILD = CYL_STREAM_CLONES_NAME.decode()


cdef struct LayerC:
    int kind
    int act
    int bf16               # P holds bfloat16 weights (float32 runners only)
    int i8                 # P holds int8 weights, scaled by ``scale`` (float32 only), in
    #                        the k-pair layout of cyl_panel_i8 (cylstm_panel.h)
    const float* scale     # int8: column scales in panel order, ncols for the kernel, then
    #                        ncols for the recurrent kernel (unused by Dense layers), then 8
    #                        zeros (the kernel reads whole groups of 8 columns)
    Py_ssize_t ka2         # int8: n_in, and (LSTM) n_out, rounded up to even: the rows
    Py_ssize_t kb2         # of each part of a panel and of the int16 activations
    float qmax             # int8: the activations' int16 range (cyl_i8q_qmax)
    Py_ssize_t ncols       # columns of the packed matrix: 4H (LSTM), units (Dense)
    Py_ssize_t n_in        # I (LSTM) or input width (Dense)
    Py_ssize_t n_out       # H (LSTM) or units (Dense)
    Py_ssize_t K           # rows of the packed matrix: I + H (LSTM), n_in (Dense)
    Py_ssize_t span        # hidden units (LSTM) or columns (Dense) per full panel
    Py_ssize_t n_panels
    const void* P          # packed weights, shared by every runner of the model
    const void* bias       # LSTM: panel-ordered (4H,); Dense: (units,)
    void* h0               # LSTM: state h, half 0; Dense: the output (B, units)
    void* h1               # LSTM: state h, half 1; Dense: == h0
    void* c                # LSTM: cell state (B, H)
    const float* zx        # int8 LSTM, NULL but inside run(): this step's x_t products
    #                        (B, ncols), computed for a chunk of steps at once (_project)


cdef struct Ctx:
    Py_ssize_t B
    int n_layers
    int n_threads
    int use_blas
    int blas_threads
    int par                # which half of each LSTM's h is the current state
    LayerC* L
    const void* x          # this step's input (B, n_in)
    void* out              # where the final output goes (B, n_out of the last layer)
    void* scratch          # n_threads x (B, MAXW): a panel's z for every row (B > 1)
    char* qscratch         # n_threads x qstride bytes: int8 layers' int16 rows and scales
    Py_ssize_t qstride
    # a step's work on the worker pool (_stack_work): phases in order, each a layer's
    # panels (or a softmax layer's normalization, one piece) that need all of the
    # phase before them; a phase's pieces are claimed by whichever thread gets there
    int n_phases
    const int* ph_layer    # the layer of each phase
    const int* ph_soft     # 1: the softmax of that layer's rows (a single piece)
    const Py_ssize_t* ph_first   # n_phases + 1: where each phase's pieces start
    Py_ssize_t n_pieces    # pieces of a step (ph_first[n_phases])
    int64_t* step_flags    # n_pieces words for a step's job
    Py_ssize_t row_bytes   # packed weight bytes (all layers): a step's work per row
    Py_ssize_t wake_min_bytes   # a job of fewer (row_bytes x rows x steps) is small
    #                             (pool_run_small; cylstm._tuning.POOL_WAKE_MIN_BYTES)
    # small jobs in a warm stream run alone or on the pool, whichever this runner
    # measured faster (_small_alone; cylstm._tuning.POOL_SMALL_PROBE_EVERY)
    int64_t small_calls
    int64_t probe_every
    int probe_left         # calls left in a probe of one choice
    bint probe_alone       # which choice the probe measures
    int small_forced       # tests: 0 as measured, 1 always split, 2 always alone
    int sample_mode        # how this call's time is counted: 0 not, 1 replaces the
    #                        average, 2 is averaged with the one before, 3 moves it
    double alone_ns        # moving averages, ns per step
    double split_ns


def _force_cpu_level(int level):
    """Force this extension's kernels to ISA ``level`` (0..2, never above the
    CPU's; -1 drops the override); return the override replaced.  Use
    cylstm._cpu.forced_level, which validates and sets every extension."""
    return cyl_cpu_force(level)


def _set_panel_kblock(Py_ssize_t nbytes):
    """This extension's K-block budget of the AVX2 six-row panel passes (bytes of
    a panel; 0: whole panels); returns the previous one.  Use
    cylstm._cpu.set_panel_kblock, which sets every extension."""
    return cyl_panel_set_kblock(nbytes)


def _set_panel_stream_min(Py_ssize_t nbytes):
    """This extension's size the weights of a product must pass for its kernel to
    stream in the next panel (bytes); returns the previous one.  Use
    cylstm._cpu.set_panel_stream_min, which sets every extension."""
    return cyl_panel_set_stream_min(nbytes)


def _set_panel_block_rows(bint on):
    """This extension's row split of the AVX2 passes over K-blocked panels
    (include/cylstm_panel.h, CYL_ROWS6_NEXT); returns the previous setting.  Use
    cylstm._cpu.panel_block_rows, which sets every extension."""
    return bool(cyl_panel_set_block_rows(on))


def _set_panel_spread(int n):
    """This extension's spread of the AVX2 six-row passes' stream of the next K
    block (include/cylstm_panel.h, CYL_PANEL_PF_SPREAD); returns the previous
    one.  Use cylstm._cpu.panel_spread, which sets every extension."""
    return cyl_panel_set_pf_spread(n)


def _cpu_levels():
    """(detected, active) ISA levels of this extension's kernels."""
    return cyl_cpu_detected_level(), cyl_cpu_level()


def cpu_level():
    """The ISA level the kernels run now: 2 AVX-512, 1 AVX2 + FMA, 0 baseline
    (the CPU's, or a lower one forced by CYLSTM_CPU or cylstm._cpu)."""
    return cyl_cpu_level()


cdef struct QAct:
    # this step's rows of an int8 layer, quantized to int16 (cyl_i8q_quantize)
    const int16_t* aq      # (B, ka2): x_t
    const int16_t* bq      # (B, kb2): h_prev (LSTM)
    const float* ra        # (B,) their scales
    const float* rb


cdef inline QAct _quantize_rows(const LayerC* L, const Ctx* ctx, int tid, const float* a,
                                const float* b) noexcept nogil:
    """Quantize the B rows of a (n_in wide) and b (n_out wide, LSTM; NULL for Dense)
    into thread ``tid``'s int16 scratch, once per layer and step."""
    cdef QAct q
    cdef char* base = ctx.qscratch + tid * ctx.qstride
    cdef Py_ssize_t B = ctx.B
    cdef int16_t* aq = <int16_t*> base
    cdef int16_t* bq = aq + B * L.ka2
    cdef float* ra = <float*> (bq + B * L.kb2)
    cdef float* rb = ra + B
    if L.zx == NULL:   # (with zx, x_t's products are done)
        cyl_i8q_quantize(a, B, L.n_in, L.n_in, L.ka2, L.qmax, aq, ra)
    if b != NULL:
        cyl_i8q_quantize(b, B, L.n_out, L.n_out, L.kb2, L.qmax, bq, rb)
    q.aq, q.bq, q.ra, q.rb = aq, bq, ra, rb
    return q


cdef inline void _kernel_i8(const LayerC* L, const QAct* q, Py_ssize_t p, Py_ssize_t w,
                            Py_ssize_t nrows, float* z, Py_ssize_t ldz) noexcept nogil:
    """z (nrows, w) = the int8 panel p's product with the quantized rows.  Its sums
    are exact integers: every row has the same bits in any block, on any thread."""
    cdef Py_ssize_t wfull = 4 * L.span if L.kind == KIND_LSTM else L.span
    cdef Py_ssize_t col = p * wfull, r
    if L.zx != NULL:
        # x_t's part is in zx already (_project): the h_prev part added to it, the
        # same bits as both parts here
        for r in range(nrows):
            memcpy(z + r * ldz, L.zx + r * L.ncols + col, w * sizeof(float))
        cyl_panel_i8_b(<const int8_t*> L.P + col * (L.ka2 + L.kb2), L.scale + L.ncols + col,
                       w, nrows, L.ka2, q.bq, L.kb2, q.rb, z, ldz)
        return
    cyl_panel_i8(<const int8_t*> L.P + col * (L.ka2 + L.kb2), L.scale + col,
                 L.scale + L.ncols + col, w, nrows, q.aq, L.ka2, q.ra,
                 q.bq, L.kb2, q.rb, z, ldz)


cdef struct ProjJob:
    const LayerC* L
    const int16_t* aq
    const float* ra
    float* zx
    Py_ssize_t nrows
    int64_t* flags         # one per panel: 0 free, 1 taken, 2 done


cdef void _project_panel(const LayerC* L, Py_ssize_t p, Py_ssize_t nrows, const int16_t* aq,
                         const float* ra, float* zx) noexcept nogil:
    cdef Py_ssize_t wfull = 4 * L.span, col = p * wfull
    cdef Py_ssize_t hb = L.n_out - p * L.span
    if hb > L.span:
        hb = L.span
    cyl_panel_i8(<const int8_t*> L.P + col * (L.ka2 + L.kb2), L.scale + col,
                 L.scale + L.ncols + col, 4 * padded_units(hb, CYL_STREAM_VLF), nrows, aq,
                 L.ka2, ra, NULL, 0, NULL, zx + col, L.ncols)


cdef void _project_job(void* arg, int tid) noexcept nogil:
    """_project's panels on the worker pool, each claimed by one thread."""
    cdef ProjJob* j = <ProjJob*> arg
    cdef Py_ssize_t p
    for p in range(j.L.n_panels):
        if pool_load(j.flags + p) == 0 and pool_claim(j.flags + p):
            _project_panel(j.L, p, j.nrows, j.aq, j.ra, j.zx)
            pool_claim_done(j.flags + p)
    if tid == 0:
        for p in range(j.L.n_panels):
            pool_claim_wait(j.flags + p)


cdef void _project(const LayerC* L, const float* x, Py_ssize_t nrows, int16_t* aq,
                   float* ra, float* zx, int nt, int64_t* pool_flags=NULL) noexcept nogil:
    """zx (nrows, ncols) = the x part of every panel of the int8 LSTM layer L for
    nrows rows of x (n_in wide): several time steps' x_t at once, so that each
    panel's kernel rows are read once per block of rows instead of once per step.
    The rows are quantized as a step quantizes them (aq, ra: nrows x ka2 and
    nrows of scratch), and the a part of cyl_panel_i8 is the same for any block of
    rows: the steps then give the bits they give without it."""
    cdef Py_ssize_t p
    cdef ProjJob j
    cyl_i8q_quantize(x, nrows, L.n_in, L.n_in, L.ka2, L.qmax, aq, ra)
    if pool_flags != NULL:   # (``pool_flags``: n_panels zeros) on the worker pool
        j.L, j.aq, j.ra, j.zx, j.nrows, j.flags = L, aq, ra, zx, nrows, pool_flags
        pool_run(_project_job, &j, nt)
        return
    for p in range(L.n_panels):
        _project_panel(L, p, nrows, aq, ra, zx)


cdef inline void _kernel(const LayerC* L, Py_ssize_t off, Py_ssize_t w, Py_ssize_t nrows,
                         const floating* a, Py_ssize_t ka, const floating* b,
                         Py_ssize_t kb, floating* z, Py_ssize_t next_off=-1) noexcept nogil:
    """z (nrows, w) = [a (nrows, ka), b (nrows, kb)] @ the panel starting ``off``
    elements into L.P (rows of a, b and z contiguous: strides ka, kb, w).
    ``next_off``: where the float panel this thread reads after this one starts
    (elements into L.P; -1: none), for the kernel to stream it in."""
    if floating is float:
        if L.bf16:
            cyl_panel_bf16(<const uint16_t*> L.P + off, w, nrows, a, ka, ka, b, kb, kb,
                           z, w)
            return
    panel_product(<const floating*> L.P + off, w, nrows, a, ka, ka, b, kb, kb, z, w,
                  stream_next(<const floating*> L.P + next_off,
                              L.K * L.ncols * sizeof(floating)) if next_off >= 0 else NULL)


cdef inline void _panel_z(const LayerC* L, const Ctx* ctx, const QAct* q, Py_ssize_t p,
                          Py_ssize_t off, Py_ssize_t w, const floating* a, Py_ssize_t ka,
                          const floating* b, Py_ssize_t kb, floating* z,
                          Py_ssize_t next_off=-1) noexcept nogil:
    """z (B, w) = [a (B, ka), b (B, kb)] @ panel p of layer L (``off`` elements into
    L.P; kb = 0 for Dense), on the path the runner was set up for: the int8
    kernel (``q``: the quantized rows, exact integer sums), SciPy's BLAS, or the
    panel kernel, which sums each output in k order in any row block, so every
    row has its batch-1 bits (the pooled step)."""
    cdef Py_ssize_t B = ctx.B
    if q != NULL:
        if floating is float:
            _kernel_i8(L, q, p, w, B, z, w)
    elif ctx.use_blas:
        # Z (B, w) = A (B, ka) @ M[:ka] (ka, w) + B (B, kb) @ M[ka:] (kb, w)
        gemm(False, False, <int> B, <int> w, <int> ka, 1, a, <int> ka,
             <const floating*> L.P + off, <int> w, 0, z, <int> w)
        if kb > 0:
            gemm(False, False, <int> B, <int> w, <int> kb, 1, b, <int> kb,
                 <const floating*> L.P + off + ka * w, <int> w, 1, z, <int> w)
    else:
        _kernel(L, off, w, B, a, ka, b, kb, z, next_off)


cdef inline const void* _output_of(LayerC* L, int par) noexcept nogil:
    """The layer's output after this step: the new h (the half not current)."""
    if L.kind == KIND_LSTM:
        return L.h0 if par == 1 else L.h1
    return L.h0


cdef void _lstm_panels(LayerC* L, Ctx* ctx, const floating* x, Py_ssize_t p0,
                       Py_ssize_t p1, floating* zs, int tid,
                       const QAct* given=NULL, Py_ssize_t pn=-1) noexcept nogil:
    """Panels [p0, p1) of one LSTM layer for every row of the batch (``tid``: the
    thread, whose scratch an int8 layer quantizes its rows into, unless ``given``
    holds them quantized already).  Panel p holds hb units stored as hp (whole
    vectors, the sequence kernels' layout): its products are 4 hp wide, the cell
    reads each gate block hp apart.  Each float panel's product streams in the
    next one's weights (the panel after p1 - 1 is ``pn``, -1: none; a pooled
    piece names the one its thread likely takes next), as the sequence kernels
    do: pooled (256, 512) x 32 streams 0.91-0.97x the time on one thread,
    0.97-0.99x on two, 8 streams 0.86x / 0.91x, (512, 512) x 64 0.93x / 1.00x,
    (64, 128), whose weights stay in L2, 0.99-1.03x; batch-1 runner (256, 512)
    1.00x (AMD EPYC (2 cores), Zen 3, 2026-12-07, a noisy host, medians of
    block ratios alternated in one process)."""
    cdef Py_ssize_t B = ctx.B, I = L.n_in, H = L.n_out, K = L.K, span = L.span
    cdef Py_ssize_t p, j0, hb, hp, w
    cdef const floating* bp
    cdef const floating* hprev = <const floating*> (L.h0 if ctx.par == 0 else L.h1)
    cdef floating* hnew = <floating*> (L.h1 if ctx.par == 0 else L.h0)
    cdef floating* c = <floating*> L.c
    cdef floating* z
    cdef floating zl[MAXW]
    cdef float zg[CELL_GROUP * MAXW]
    cdef Py_ssize_t n, t, pf, q1
    cdef Py_ssize_t n_panels = (H + span - 1) // span
    cdef QAct q
    cdef bint i8 = False
    if floating is float:
        if L.i8 and p1 > p0:
            q = given[0] if given != NULL else _quantize_rows(L, ctx, tid, x, hprev)
            i8 = True
    p = p0
    if floating is float:
        # batch 1: the products of up to CELL_GROUP whole panels, then their cells in
        # one call (cyl_cell_panels_f32: the same operations per unit, so the same
        # bits), where a cell per 16-unit panel is one vector's activation chain
        # that the next panel's loads wait behind
        if B == 1 and not ctx.use_blas:
            pf = p1 if p1 < H // span else H // span   # the whole panels' end
            while p + 1 < pf:
                n = pf - p if pf - p < CELL_GROUP else CELL_GROUP
                for t in range(n):
                    q1 = p + t + 1 if p + t + 1 < p1 else pn
                    _panel_z(L, ctx, &q if i8 else NULL, p + t, (p + t) * K * 4 * span,
                             4 * span, x, I, hprev, H, &zg[t * 4 * span],
                             q1 * K * 4 * span if 0 <= q1 < n_panels else -1)
                cyl_cell_panels_f32(span, span, n, &zg[0], NULL,
                                    <const float*> L.bias + p * 4 * span, c + p * span,
                                    hnew + p * span)
                p += n
    while p < p1:
        j0 = p * span
        hb = H - j0 if H - j0 < span else span
        hp = padded_units(hb, panel_vlen(c))
        w = 4 * hp
        bp = <const floating*> L.bias + p * 4 * span
        z = &zl[0] if B == 1 and not ctx.use_blas else zs
        q1 = p + 1 if p + 1 < p1 else pn
        _panel_z(L, ctx, &q if i8 else NULL, p, p * K * 4 * span, w, x, I, hprev, H, z,
                 q1 * K * 4 * span if 0 <= q1 < n_panels else -1)
        panel_cells(hb, hp, B, z, bp, c + j0, hnew + j0, H, NULL, 0)
        p += 1


cdef void _dense_panels(LayerC* L, Ctx* ctx, const floating* x, Py_ssize_t p0,
                        Py_ssize_t p1, floating* zs, int tid,
                        const QAct* given=NULL) noexcept nogil:
    """Panels [p0, p1) of one Dense layer: y = act(x @ kernel + bias).  A panel's
    w columns are stored as wp (whole vectors, zero columns past w).  ``given``:
    the rows quantized already (int8), as for :func:`_lstm_panels`."""
    cdef Py_ssize_t B = ctx.B, K = L.K, U = L.n_out, span = L.span
    cdef Py_ssize_t p, r, j, j0, w, wp, vl
    cdef const floating* bias = <const floating*> L.bias
    cdef floating* y = <floating*> L.h0
    cdef floating* z
    cdef floating zl[MAXW]
    cdef floating v
    cdef int act = L.act
    cdef QAct q
    cdef bint i8 = False
    vl = panel_vlen(y)
    if floating is float:
        if L.i8 and p1 > p0:
            q = given[0] if given != NULL else _quantize_rows(L, ctx, tid, x, NULL)
            i8 = True
    for p in range(p0, p1):
        j0 = p * span
        w = U - j0 if U - j0 < span else span
        wp = ((w + vl - 1) // vl) * vl
        z = &zl[0] if B == 1 and not ctx.use_blas else zs
        _panel_z(L, ctx, &q if i8 else NULL, p, p * K * span, wp, x, K, x, 0, z)
        for r in range(B):
            for j in range(w):
                v = z[r * wp + j] + bias[j0 + j]
                if act == ACT_RELU:
                    v = v if v > 0 else 0
                elif act == ACT_TANH:
                    v = tanh_(v)
                elif act == ACT_SIGMOID:
                    v = sigmoid(v)
                y[r * U + j0 + j] = v


cdef void _softmax_rows(Py_ssize_t B, Py_ssize_t U, floating* y) noexcept nogil:
    cdef Py_ssize_t r, j
    cdef floating m, s
    cdef floating* row
    for r in range(B):
        row = y + r * U
        m = row[0]
        for j in range(1, U):
            m = row[j] if row[j] > m else m
        s = 0
        for j in range(U):
            if floating is float:
                row[j] = cyl_expf(row[j] - m)
            else:
                row[j] = exp(row[j] - m)
            s = s + row[j]
        s = 1 / s
        for j in range(U):
            row[j] = row[j] * s


cdef void _run(Ctx* ctx, int l0, int l1, floating* zs) noexcept nogil:
    """Layers [l0, l1) of one step on the calling thread alone."""
    cdef int l
    cdef LayerC* L
    cdef const floating* x
    x = <const floating*> (ctx.x if l0 == 0 else _output_of(&ctx.L[l0 - 1], ctx.par))
    for l in range(l0, l1):
        L = &ctx.L[l]
        if L.kind == KIND_LSTM:
            _lstm_panels(L, ctx, x, 0, L.n_panels, zs, 0)
        else:
            _dense_panels(L, ctx, x, 0, L.n_panels, zs, 0)
            if L.act == ACT_SOFTMAX:
                _softmax_rows(ctx.B, L.n_out, <floating*> L.h0)
        x = <const floating*> _output_of(L, ctx.par)


cdef struct StackRun:
    # T steps of the whole stack on the worker pool: every phase's pieces (Ctx's piece
    # table) claimed by whichever thread gets to them (include/cylstm_pool.h)
    Ctx* ctx
    Py_ssize_t T
    const char* x          # (T, B, n_in), xstride bytes apart
    char* out              # (T, B, n_out of the last layer), ostride bytes apart
    Py_ssize_t xstride
    Py_ssize_t ostride
    const float* zx        # the first layer's projected x_t products (T, B, ncols), or NULL
    int64_t* flags         # T x n_pieces: 0 free, 1 taken, 2 done
    int par0               # ctx.par at the first step


cdef enum:
    # steps per pool job of a pooled block without the x_t projection (a job's start
    # wakes the workers: a few us, against some 256 x 2.5 us of steps at the least)
    POOL_CHUNK_STEPS = 256
    # how many pauses a worker spins on the previous phase's pieces, holding the job,
    # before it waits on the pool's tick without it: a step's hand-over, some 10-50 us
    # (a step of (200, 1, 64, 128) takes 2.5 us on one thread).  Timing the spin with
    # clock_gettime, and ticking with the caller's CPU (sched_getcpu) every step, had
    # made that case's 2 threads 1.3x slower than one (AMD EPYC (2 cores), a KVM
    # guest, 2026-12-03).
    SEQ_SPINS = 1000


cdef inline bint _all_done(int64_t* flags, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t p
    for p in range(n):
        if pool_load(flags + p) != 2:
            return False
    return True


cdef inline bint _phase_open(int64_t* prev, Py_ssize_t n, Py_ssize_t g,
                             int tid) noexcept nogil:
    """Wait until the n pieces of the phase before phase ``g`` of a job are done
    (their outputs are this phase's inputs).  The caller (tid 0) has been through
    every one of them, so it waits only for pieces a worker took, then ticks the
    pool to ``g``.  A worker spins briefly on the flags (a phase's hand-over), then
    waits on the tick without holding the job's memory; False: the job ended
    without it."""
    cdef Py_ssize_t p
    cdef int spins = 0
    if tid == 0:
        for p in range(n):
            pool_claim_wait(prev + p)
        pool_tick_set(g)
        return True
    while not _all_done(prev, n) and spins < SEQ_SPINS:
        pool_relax()
        spins += 1
    while not _all_done(prev, n):
        pool_release()   # (waiting, a worker holds none of the job's memory)
        while pool_tick_get() < g:
            if not pool_job_open():
                return False
            pool_relax()
        if not pool_acquire():
            return False
    return True


cdef extern from *:
    """
    static long long cyl_stream_pieces[2] = {0, 0};
    static inline void cyl_stream_count_pieces(int worker, long long n)
    {
        if (n)
            __atomic_fetch_add(&cyl_stream_pieces[worker != 0], n, __ATOMIC_RELAXED);
    }
    """
    long long cyl_stream_pieces[2]
    void cyl_stream_count_pieces(int worker, long long n) noexcept nogil


def pooled_pieces():
    """Pieces of pooled steps and blocks done so far by their callers and by
    workers (diagnostics and tests: whether the workers took part)."""
    return {"caller": cyl_stream_pieces[0], "workers": cyl_stream_pieces[1]}


cdef void _copy_cols(char* out, const void* src, Py_ssize_t B, Py_ssize_t U, Py_ssize_t j0,
                     Py_ssize_t w, Py_ssize_t item) noexcept nogil:
    """Columns [j0, j0 + w) of B rows U wide, from src to out."""
    cdef Py_ssize_t b
    for b in range(B):
        memcpy(out + (b * U + j0) * item, <const char*> src + (b * U + j0) * item, w * item)


cdef void _stack_work(StackRun* r, int tid, floating* zs) noexcept nogil:
    """A thread's share of T steps of the stack: phase by phase, once every piece
    of the phase before is done, every piece of this phase that no thread took
    yet: a panel's product and cell (or activation), and its columns of the
    step's output when it is the last layer's.  A late or preempted worker finds
    less to do; the caller (tid 0) waits only for pieces a worker took and has
    not finished, and a worker waiting for a phase holds none of the job's
    memory, so the job's end never waits for a worker preempted there.  Workers
    take a phase's pieces from its end, the caller from its start.  Each piece
    is the serial step's arithmetic for its panel: the same bits on any number
    of threads."""
    cdef Ctx c = r.ctx[0]          # private: this thread's parity and input each step
    cdef LayerC L0 = r.ctx.L[0]    # private: the first layer's zx each step
    cdef LayerC* Lp
    cdef Py_ssize_t t, k, i, p, n, B = c.B, j0, w, nprev = 0
    cdef Py_ssize_t item = sizeof(floating)
    cdef int64_t* f
    cdef int64_t* fprev = NULL
    cdef int l, last = c.n_layers - 1
    cdef const floating* x
    cdef char* out_t
    cdef QAct q
    cdef bint ready, soft
    cdef long long done = 0
    for t in range(r.T):
        c.par = r.par0 ^ <int> (t & 1)
        c.x = r.x + t * r.xstride
        L0.zx = NULL if r.zx == NULL else r.zx + t * B * L0.ncols
        out_t = r.out + t * r.ostride
        for k in range(c.n_phases):
            f = r.flags + t * c.n_pieces + c.ph_first[k]
            n = c.ph_first[k + 1] - c.ph_first[k]
            if fprev != NULL and not _phase_open(fprev, nprev, t * c.n_phases + k, tid):
                cyl_stream_count_pieces(tid, done)
                return
            fprev, nprev = f, n
            l = c.ph_layer[k]
            soft = c.ph_soft[k]
            Lp = &L0 if l == 0 else &c.L[l]
            x = <const floating*> (c.x if l == 0 else _output_of(&c.L[l - 1], c.par))
            ready = False
            for i in range(n):
                p = n - 1 - i if tid else i
                if pool_load(f + p) != 0 or not pool_claim(f + p):
                    continue
                if floating is float:
                    if Lp.i8 and not soft and not ready:   # the rows, once per phase
                        q = _quantize_rows(
                            Lp, &c, tid, <const float*> x,
                            <const float*> (Lp.h0 if c.par == 0 else Lp.h1)
                            if Lp.kind == KIND_LSTM else NULL)
                        ready = True
                j0 = p * Lp.span
                w = Lp.n_out - j0 if Lp.n_out - j0 < Lp.span else Lp.span
                if soft:
                    _softmax_rows(B, Lp.n_out, <floating*> Lp.h0)
                    if l == last:
                        memcpy(out_t, Lp.h0, B * Lp.n_out * item)
                elif Lp.kind == KIND_LSTM:
                    _lstm_panels(Lp, &c, x, p, p + 1, zs, tid, &q if ready else NULL,
                                 p - 1 if tid else p + 1)
                    if l == last:
                        _copy_cols(out_t, _output_of(Lp, c.par), B, Lp.n_out, j0, w, item)
                else:
                    _dense_panels(Lp, &c, x, p, p + 1, zs, tid, &q if ready else NULL)
                    if l == last and Lp.act != ACT_SOFTMAX:
                        _copy_cols(out_t, Lp.h0, B, Lp.n_out, j0, w, item)
                pool_claim_done(f + p)
                done += 1
    cyl_stream_count_pieces(tid, done)
    if tid == 0:   # the last phase's pieces, before the caller reads the state
        for i in range(nprev):
            pool_claim_wait(fprev + i)


cdef void _stack_job_f32(void* arg, int tid) noexcept nogil:
    cdef StackRun* r = <StackRun*> arg
    _stack_work(r, tid, <float*> r.ctx.scratch + tid * r.ctx.B * MAXW)


cdef void _stack_job_f64(void* arg, int tid) noexcept nogil:
    cdef StackRun* r = <StackRun*> arg
    _stack_work(r, tid, <double*> r.ctx.scratch + tid * r.ctx.B * MAXW)


cdef void _steps_alone(Ctx* ctx, Py_ssize_t T, const char* x, char* out,
                       Py_ssize_t xstride, Py_ssize_t ostride, const float* zx,
                       floating* scratch) noexcept nogil:
    """T steps of the stack on the calling thread, the state carried on (``zx``:
    the first layer's x_t products, as for :func:`_stack_pooled`)."""
    cdef Py_ssize_t t
    cdef LayerC* last = &ctx.L[ctx.n_layers - 1]
    cdef const float* zx0 = ctx.L[0].zx
    if ctx.use_blas:
        # each panel's GEMM is small: threads come from the panels, not BLAS
        set_blas_threads(1)
    for t in range(T):
        ctx.x = x + t * xstride
        if zx != NULL:
            ctx.L[0].zx = zx + t * ctx.B * ctx.L[0].ncols
        _run(ctx, 0, ctx.n_layers, scratch)
        memcpy(out + t * ostride, _output_of(last, ctx.par),
               ctx.B * last.n_out * sizeof(floating))
        ctx.par = 1 - ctx.par
    ctx.L[0].zx = zx0
    if ctx.use_blas:
        set_blas_threads(ctx.blas_threads)


cdef inline void _note_ns(Ctx* ctx, double* avg, double sample) noexcept nogil:
    """Count a small call's ns per step into ``avg`` as _small_alone said."""
    if ctx.sample_mode == 1 or avg[0] == 0:   # a probe's first counted sample
        avg[0] = sample
    elif ctx.sample_mode == 2:                # its second
        avg[0] = (avg[0] + sample) * 0.5
    elif ctx.sample_mode == 3:                # a call of the chosen way
        avg[0] = avg[0] + (sample - avg[0]) * 0.125


cdef bint _small_alone(Ctx* ctx) noexcept nogil:
    """A small job in a warm stream (its workers awake, or a stream worth waking
    them for): run it alone (True) or split (False), whichever this runner measured
    faster per step.  Whether a split pays at these sizes depends on the CPU: the
    step of a (64, 128) runner at batch 1 took 6.0 us alone and 4.7 split on a
    2-vCPU AMD EPYC (Zen 3), 3.1 alone and 4.0 split on a 2-vCPU Xeon (Sapphire
    Rapids class), 2026-12-03.  Each choice is measured over a probe of four calls
    (the first two, which may find cold caches or pay a worker's wake-up, are not
    counted), after a new runner's first eight steps, then the other one again every
    ``probe_every`` small calls: a probe's two samples replace that choice's
    average, the chosen one's calls move it by an eighth each.  Sets
    ``sample_mode``: how this call's time goes into the averages (_note_ns)."""
    ctx.small_calls += 1
    if ctx.small_forced:       # (tests)
        ctx.sample_mode = 0
        return ctx.small_forced == 2
    if ctx.small_calls <= 8:   # a new runner's first steps: cold caches, first touches
        ctx.sample_mode = 0
        return True
    if ctx.probe_left == 0:
        if ctx.alone_ns == 0 or ctx.split_ns == 0:
            ctx.probe_alone = ctx.alone_ns == 0
            ctx.probe_left = 4
        elif ctx.probe_every > 0 and ctx.small_calls % ctx.probe_every == 0:
            ctx.probe_alone = ctx.alone_ns > ctx.split_ns   # the other choice
            ctx.probe_left = 4
        else:   # (one call in eight is timed: the clock costs ~30 ns a reading)
            ctx.sample_mode = 3 if ctx.small_calls % 8 == 0 else 0
            return ctx.alone_ns <= ctx.split_ns
    ctx.probe_left -= 1
    ctx.sample_mode = 2 - ctx.probe_left if ctx.probe_left < 2 else 0
    return ctx.probe_alone


cdef void _stack_pooled(Ctx* ctx, Py_ssize_t T, const char* x, char* out,
                        Py_ssize_t xstride, Py_ssize_t ostride, const float* zx,
                        int64_t* flags, bint f32) noexcept nogil:
    """T steps of the stack on the worker pool (``flags``: T x n_pieces words, any
    values), the state carried on.  A job too small to pay for waking a sleeping
    worker (POOL_WAKE_MIN_BYTES) runs alone, on the serial step's code, unless the
    pool says otherwise (pool_small_alone); in a warm stream it runs alone or split
    as this runner measured faster (_small_alone)."""
    cdef StackRun sr
    cdef bint small = ctx.row_bytes * ctx.B * T < ctx.wake_min_bytes
    cdef bint timed = False, alone = False
    cdef int64_t t0 = 0
    if small:
        alone = pool_small_alone(ctx.n_threads)
        if not alone:
            # warm: time the choice (a split only when no worker had to be woken)
            alone = _small_alone(ctx)
            timed = ctx.sample_mode != 0 and (alone or pool_workers_awake(ctx.n_threads))
            if timed:
                t0 = pool_now_ns()
    if alone:
        if f32:
            _steps_alone(ctx, T, x, out, xstride, ostride, zx, <float*> ctx.scratch)
        else:
            _steps_alone(ctx, T, x, out, xstride, ostride, zx, <double*> ctx.scratch)
        if timed:
            _note_ns(ctx, &ctx.alone_ns, <double> (pool_now_ns() - t0) / T)
        pool_small_alone_end()
        return
    memset(flags, 0, T * ctx.n_pieces * sizeof(int64_t))
    sr.ctx, sr.T, sr.x, sr.out = ctx, T, x, out
    sr.xstride, sr.ostride, sr.zx, sr.flags, sr.par0 = xstride, ostride, zx, flags, ctx.par
    if ctx.use_blas:
        # each panel's GEMM is small: threads come from the pieces, not BLAS
        set_blas_threads(1)
    if small:
        pool_run_small(_stack_job_f32 if f32 else _stack_job_f64, &sr, ctx.n_threads)
        if timed:
            _note_ns(ctx, &ctx.split_ns, <double> (pool_now_ns() - t0) / T)
    else:
        pool_run(_stack_job_f32 if f32 else _stack_job_f64, &sr, ctx.n_threads)
    if ctx.use_blas:
        set_blas_threads(ctx.blas_threads)
    ctx.par = ctx.par ^ <int> (T & 1)


cdef void _step(Ctx* ctx, floating* scratch) noexcept nogil:
    """One time step of the whole stack (called with the GIL released).

    On several threads, the step's panels go to the worker pool (_stack_work):
    a late or preempted worker never holds the step up, with the same bits.
    """
    if ctx.n_threads > 1:
        _stack_pooled(ctx, 1, <const char*> ctx.x, <char*> ctx.out, 0, 0, ctx.L[0].zx,
                      ctx.step_flags, floating is float)
    else:
        _steps_alone(ctx, 1, <const char*> ctx.x, <char*> ctx.out, 0, 0, ctx.L[0].zx,
                     scratch)


cdef class Core:
    """The compiled half of :class:`cylstm.stream.StreamRunner` (see there).

    Owns this runner's state buffers and a table of layers whose weight
    pointers point into the shared packed arrays it keeps alive.
    """
    cdef Ctx ctx
    cdef LayerC* _layers
    cdef object _pack
    cdef list _keep
    cdef list _lstm_layers
    cdef cnp.ndarray _out
    cdef cnp.ndarray _out1d
    cdef cnp.ndarray _xbuf
    cdef cnp.ndarray _scratch
    cdef cnp.ndarray _qscratch
    cdef int _typenum
    cdef int _busy            # a step is running (GIL released): refuse concurrent use
    cdef Py_ssize_t _n_in
    cdef Py_ssize_t _n_out
    cdef object _dtype
    cdef object _proj         # run()'s projection buffers (zx, aq, ra), kept for reuse
    cdef object _phases       # the pooled step's phase table and flags (see Ctx)

    def __cinit__(self):
        self._layers = NULL

    def __dealloc__(self):
        if self._layers != NULL:
            free(self._layers)
            self._layers = NULL

    def _setup(self, pack, Py_ssize_t batch_size, int n_threads, bint use_blas,
               int blas_threads):
        """Build the layer table over ``pack`` (a cylstm.stream._Pack)."""
        cdef Py_ssize_t B = batch_size
        cdef int i, n = len(pack.layers)
        cdef LayerC* L
        cdef cnp.ndarray a
        if n == 0:
            raise ValueError("a streaming runner needs at least one layer")
        dtype = np.dtype(pack.dtype)
        if dtype == np.float32:
            self._typenum = cnp.NPY_FLOAT32
        elif dtype == np.float64:
            self._typenum = cnp.NPY_FLOAT64
        else:
            raise TypeError(f"a streaming runner computes in float32 or float64; got {dtype}")
        self._dtype = dtype
        self._pack = pack
        self._keep = []
        self._lstm_layers = []
        self._layers = <LayerC*> malloc(n * sizeof(LayerC))
        if self._layers == NULL:
            raise MemoryError()
        memset(self._layers, 0, n * sizeof(LayerC))
        qbytes = 0
        for i, spec in enumerate(pack.layers):
            L = &self._layers[i]
            L.kind = KIND_LSTM if spec.kind == "lstm" else KIND_DENSE
            L.bf16 = spec.P.dtype == np.uint16
            L.i8 = spec.P.dtype == np.int8
            if (L.bf16 or L.i8) and (self._typenum != cnp.NPY_FLOAT32 or use_blas):
                raise ValueError(f"{spec.P.dtype} weights need a float32 runner on the "
                                 "kernel path")
            L.ncols = spec.ncols
            if L.i8:
                L.ka2 = spec.n_in + spec.n_in % 2
                L.kb2 = spec.n_out + spec.n_out % 2 if L.kind == KIND_LSTM else 0
                L.qmax = cyl_i8q_qmax(max(L.ka2, L.kb2))
                width = 4 * spec.span if L.kind == KIND_LSTM else spec.span
                want = sum((L.ka2 + L.kb2) * ((min(width, L.ncols - p * width) + 7) // 8 * 8)
                           for p in range(spec.n_panels))
                if spec.scale is None or spec.scale.dtype != np.float32 or \
                        spec.scale.shape != (2 * L.ncols + 8,) or spec.P.size != want:
                    raise ValueError(f"int8 weights need {want} packed bytes and float32 "
                                     f"column scales (2 x {L.ncols} + 8)")
                a = spec.scale
                L.scale = <const float*> cnp.PyArray_DATA(a)
                qbytes = max(qbytes, B * ((L.ka2 + L.kb2) * 2 + 8))
            elif spec.P.size != spec.K * L.ncols:
                raise ValueError(f"packed weights of {spec.P.size} elements for K = {spec.K} "
                                 f"and {L.ncols} columns")
            L.act = ACTIVATIONS[spec.activation]
            L.n_in = spec.n_in
            L.n_out = spec.n_out
            L.K = spec.K
            L.span = spec.span
            L.n_panels = spec.n_panels
            a = spec.P
            L.P = cnp.PyArray_DATA(a)
            a = spec.bias
            L.bias = cnp.PyArray_DATA(a)
            if L.kind == KIND_LSTM:
                hbuf = np.zeros((2, B, spec.n_out), dtype)
                cbuf = np.zeros((B, spec.n_out), dtype)
                self._keep += [hbuf, cbuf]
                self._lstm_layers.append((hbuf, cbuf))
                a = hbuf
                L.h0 = cnp.PyArray_DATA(a)
                L.h1 = <char*> L.h0 + B * L.n_out * <Py_ssize_t> dtype.itemsize
                a = cbuf
                L.c = cnp.PyArray_DATA(a)
            else:
                ybuf = np.zeros((B, spec.n_out), dtype)
                self._keep.append(ybuf)
                a = ybuf
                L.h0 = cnp.PyArray_DATA(a)
                L.h1 = L.h0
        self._n_in = self._layers[0].n_in
        self._n_out = self._layers[n - 1].n_out
        self._out = np.zeros((B, self._n_out), dtype)
        self._out1d = self._out.reshape(-1)
        self._xbuf = np.zeros((B, self._n_in), dtype)
        n_threads = max(1, n_threads)
        self._scratch = np.zeros(n_threads * B * MAXW, dtype)
        # int8 layers' int16 rows and scales, per thread (64-byte multiples)
        qstride = (qbytes + 63) // 64 * 64
        self._qscratch = np.zeros(max(1, n_threads * qstride), np.uint8)
        self.ctx.qscratch = <char*> cnp.PyArray_DATA(self._qscratch)
        self.ctx.qstride = qstride
        self.ctx.B = B
        self.ctx.n_layers = n
        self.ctx.n_threads = n_threads
        self.ctx.use_blas = use_blas
        self.ctx.blas_threads = max(1, blas_threads)
        self.ctx.par = 0
        self.ctx.L = self._layers
        self.ctx.x = NULL
        self.ctx.out = NULL
        self.ctx.scratch = cnp.PyArray_DATA(self._scratch)
        # the pooled step's phases (_stack_work): each layer's panels, and a softmax
        # layer's normalization after them
        ph_layer, ph_soft, ph_first, pieces = [], [], [0], 0
        for i in range(n):
            L = &self._layers[i]
            pieces += L.n_panels
            ph_layer.append(i)
            ph_soft.append(0)
            ph_first.append(pieces)
            if L.kind == KIND_DENSE and L.act == ACT_SOFTMAX:
                pieces += 1
                ph_layer.append(i)
                ph_soft.append(1)
                ph_first.append(pieces)
        self._phases = (np.array(ph_layer, np.intc), np.array(ph_soft, np.intc),
                        np.array(ph_first, np.intp), np.zeros(pieces, np.int64))
        a = self._phases[0]
        self.ctx.ph_layer = <const int*> cnp.PyArray_DATA(a)
        a = self._phases[1]
        self.ctx.ph_soft = <const int*> cnp.PyArray_DATA(a)
        a = self._phases[2]
        self.ctx.ph_first = <const Py_ssize_t*> cnp.PyArray_DATA(a)
        a = self._phases[3]
        self.ctx.step_flags = <int64_t*> cnp.PyArray_DATA(a)
        self.ctx.n_phases = len(ph_layer)
        self.ctx.n_pieces = pieces
        self.ctx.row_bytes = pack.nbytes
        self.ctx.wake_min_bytes = _tuning.POOL_WAKE_MIN_BYTES
        self.ctx.probe_every = _tuning.POOL_SMALL_PROBE_EVERY

    # ---- the hot path -------------------------------------------------------

    def step(self, x_t, out=None):
        """Advance every stream by one time step and return the model's output.

        Parameters
        ----------
        x_t : array (batch_size, features)
            This step's input.  Of the runner's dtype and C-contiguous it is
            read in place; other real arrays are cast and copied first.
        out : array (batch_size, units), optional
            Where to write the output (the runner's dtype, C-contiguous).

        Returns
        -------
        array (batch_size, units of the last layer)
            ``out`` if given, else a buffer of the runner that the next call
            overwrites (copy it to keep it).
        """
        cdef cnp.ndarray xa
        cdef cnp.ndarray oa
        cdef const void* xp = NULL
        cdef bint flat = False
        cdef Py_ssize_t B = self.ctx.B
        if self._layers == NULL:
            raise RuntimeError("this runner was not set up; use model.streamer()")
        if cnp.PyArray_CheckExact(x_t):
            xa = <cnp.ndarray> x_t
            if (cnp.PyArray_TYPE(xa) == self._typenum and cnp.PyArray_ISCARRAY_RO(xa)
                    and cnp.PyArray_ISNOTSWAPPED(xa)):
                if (cnp.PyArray_NDIM(xa) == 2 and cnp.PyArray_DIMS(xa)[0] == B
                        and cnp.PyArray_DIMS(xa)[1] == self._n_in):
                    xp = cnp.PyArray_DATA(xa)
                elif (cnp.PyArray_NDIM(xa) == 1 and B == 1
                        and cnp.PyArray_DIMS(xa)[0] == self._n_in):
                    xp = cnp.PyArray_DATA(xa)
                    flat = True
        if xp == NULL:
            flat = self._coerce_input(x_t)
            xp = cnp.PyArray_DATA(self._xbuf)
        if out is None:
            oa = self._out1d if flat else self._out
        else:
            oa = self._check_out(out, flat)
        if self._busy:
            self._refuse_concurrent()
        # checked and set while holding the GIL, so two threads cannot both pass
        self._busy = 1
        self.ctx.x = xp
        self.ctx.out = cnp.PyArray_DATA(oa)
        with nogil:
            if self._typenum == cnp.NPY_FLOAT32:
                _step(&self.ctx, <float*> self.ctx.scratch)
            else:
                _step(&self.ctx, <double*> self.ctx.scratch)
        self._busy = 0
        return oa

    def run(self, block, out=None):
        """Run a whole block of time steps in one call, carrying the state on.

        Parameters
        ----------
        block : array (T, features), or (T, batch_size, features)
            T consecutive inputs (the first form at batch size 1).  Real
            arrays of another dtype or layout are cast and copied first.
        out : array (T, units) or (T, batch_size, units), optional
            Where to write the outputs (the runner's dtype, C-contiguous).

        Returns
        -------
        array (T, units) or (T, batch_size, units)
            The output of every step: ``out`` if given, else a new array.
            Bit for bit what T calls of :meth:`step` give, with the GIL
            released once for the whole block.
        """
        cdef Py_ssize_t B = self.ctx.B, T, t
        cdef cnp.ndarray xa
        cdef cnp.ndarray oa
        cdef char* xp
        cdef char* op
        cdef Py_ssize_t xstride, ostride
        if self._layers == NULL:
            raise RuntimeError("this runner was not set up; use model.streamer()")
        shape = (B, self._n_in)
        a = block if isinstance(block, np.ndarray) else np.asarray(block)
        if a.dtype.kind not in "fiu":
            raise TypeError(f"block must be a real numeric array; got dtype {a.dtype}")
        if a.ndim == 2 and B == 1 and a.shape[1] == self._n_in:
            flat = True
        elif a.ndim == 3 and a.shape[1:] == shape:
            flat = False
        else:
            want = f"(T, {self._n_in}) or " if B == 1 else ""
            raise ValueError(f"block must have shape {want}(T, {B}, {self._n_in}) "
                             f"(time, batch, features); got shape {a.shape}")
        T = a.shape[0]
        xa = np.ascontiguousarray(a, self._dtype)
        if flat:
            oshape = (T, self._n_out)
        else:
            oshape = (T, B, self._n_out)
        if out is None:
            oa = np.empty(oshape, self._dtype)
        else:
            if not isinstance(out, np.ndarray):
                raise TypeError(f"out must be a NumPy array of shape {oshape}; got "
                                f"{type(out).__name__}")
            if out.dtype != self._dtype:
                raise TypeError(f"out must have dtype {self._dtype}; got {out.dtype}")
            if out.shape != oshape:
                raise ValueError(f"out must have shape {oshape}; got {out.shape}")
            oa = <cnp.ndarray> out
            if not (cnp.PyArray_ISCARRAY(oa) and cnp.PyArray_ISNOTSWAPPED(oa)):
                raise ValueError("out must be a writeable, aligned, C-contiguous array in "
                                 "native byte order")
        if self._busy:
            self._refuse_concurrent()
        self._busy = 1
        xp = <char*> cnp.PyArray_DATA(xa)
        op = <char*> cnp.PyArray_DATA(oa)
        xstride = B * self._n_in * cnp.PyArray_ITEMSIZE(xa)
        ostride = B * self._n_out * cnp.PyArray_ITEMSIZE(oa)
        cdef LayerC* L0 = &self._layers[0]
        cdef Py_ssize_t tc = 0, t0, t1
        cdef cnp.ndarray zxa, aqa, raa
        cdef float* zxp = NULL
        cdef int16_t* aqp = NULL
        cdef float* rap = NULL
        if L0.i8 and L0.kind == KIND_LSTM and T > 1 and _tuning.INT8_PROJECT_BYTES > 0 \
                and L0.n_in >= _tuning.INT8_PROJECT_MIN_INPUTS * L0.n_out:
            # a first int8 LSTM layer: its x_t products for a chunk of steps at once
            # (_project), the chunk bounded in bytes (cylstm/_tuning.py)
            tc = max(1, min(T, _tuning.INT8_PROJECT_BYTES // (B * L0.ncols * 4)))
            # kept by the runner from call to call (fresh pages cost page faults)
            if self._proj is None or self._proj[0].shape[0] < tc * B * L0.ncols:
                self._proj = (np.empty(tc * B * L0.ncols, np.float32),
                              np.empty(tc * B * L0.ka2, np.int16), np.empty(tc * B, np.float32))
            zxa, aqa, raa = self._proj
            zxp = <float*> cnp.PyArray_DATA(zxa)
            aqp = <int16_t*> cnp.PyArray_DATA(aqa)
            rap = <float*> cnp.PyArray_DATA(raa)
        # on several threads, the block on the worker pool, whose late or preempted
        # workers never hold up the caller (_stack_work)
        cdef bint pooled = self.ctx.n_threads > 1 and T > 1
        cdef cnp.ndarray flags_a
        cdef int64_t* flags = NULL
        cdef Py_ssize_t nf = 0, chunk = tc if tc else T
        cdef bint f32 = self._typenum == cnp.NPY_FLOAT32
        if pooled:
            # one pool job per chunk of steps: its flags (a word per piece and step)
            # stay bounded on long blocks
            if not tc:
                chunk = min(T, POOL_CHUNK_STEPS)
            nf = chunk * self.ctx.n_pieces
            flags_a = np.zeros(nf + L0.n_panels, np.int64)
            flags = <int64_t*> cnp.PyArray_DATA(flags_a)
        try:
            with nogil:
                t0 = 0
                while t0 < T:
                    t1 = min(T, t0 + chunk)
                    if tc:
                        if pooled:
                            memset(flags + nf, 0, L0.n_panels * sizeof(int64_t))
                        _project(L0, <const float*> (xp + t0 * xstride), (t1 - t0) * B, aqp,
                                 rap, zxp, self.ctx.n_threads,
                                 flags + nf if pooled else NULL)
                    if pooled:
                        _stack_pooled(&self.ctx, t1 - t0, xp + t0 * xstride, op + t0 * ostride,
                                      xstride, ostride, zxp if tc else NULL, flags, f32)
                        t0 = t1
                        continue
                    for t in range(t0, t1):
                        # step t: x = block[t] (B, n_in), out[t] (B, n_out)
                        self.ctx.x = xp + t * xstride
                        self.ctx.out = op + t * ostride
                        if tc:
                            L0.zx = zxp + (t - t0) * B * L0.ncols
                        if f32:
                            _step(&self.ctx, <float*> self.ctx.scratch)
                        else:
                            _step(&self.ctx, <double*> self.ctx.scratch)
                    t0 = t1
        finally:
            L0.zx = NULL
            self._busy = 0
        return oa

    def _refuse_concurrent(self):
        if self._busy:
            raise RuntimeError("this StreamRunner is being stepped by another thread; a runner "
                               "is not thread-safe: give each thread its own (model.streamer())")

    # ---- the slow paths (errors, casts) -------------------------------------

    cdef bint _coerce_input(self, x_t) except -1:
        """Copy (and cast) an input that is not exactly our layout into _xbuf."""
        cdef Py_ssize_t B = self.ctx.B
        a = x_t
        if not isinstance(a, np.ndarray):
            try:
                a = np.asarray(a)
            except Exception as e:
                raise TypeError(f"x_t must be an array of shape ({B}, {self._n_in}) "
                                f"(batch, features); got {type(x_t).__name__}") from e
        if a.dtype.kind not in "fiu":
            raise TypeError(f"x_t must be a real numeric array; got dtype {a.dtype}")
        flat = a.ndim == 1 and B == 1 and a.shape[0] == self._n_in
        if not flat and (a.ndim != 2 or a.shape[0] != B or a.shape[1] != self._n_in):
            extra = " (or (features,) at batch size 1)" if B == 1 else ""
            raise ValueError(f"x_t must have shape ({B}, {self._n_in}) (batch, features)"
                             f"{extra}; got shape {a.shape}")
        np.copyto(self._xbuf, a.reshape(B, self._n_in), casting="unsafe")
        return flat

    cdef cnp.ndarray _check_out(self, out, bint flat):
        cdef Py_ssize_t B = self.ctx.B
        if flat:
            shape = (self._n_out,)
        else:
            shape = (B, self._n_out)
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a NumPy array of shape {shape} and dtype "
                            f"{self._dtype}; got {type(out).__name__}")
        oa = <cnp.ndarray> out
        if out.dtype != self._dtype:
            raise TypeError(f"out must have dtype {self._dtype}; got {out.dtype}")
        if out.shape != shape:
            raise ValueError(f"out must have shape {shape}; got {out.shape}")
        if not (cnp.PyArray_ISCARRAY(oa) and cnp.PyArray_ISNOTSWAPPED(oa)):
            raise ValueError("out must be a writeable, aligned, C-contiguous array in "
                             "native byte order")
        return oa

    # ---- state ---------------------------------------------------------------

    def _reset(self):
        self._refuse_concurrent()
        for hbuf, cbuf in self._lstm_layers:
            hbuf.fill(0)
            cbuf.fill(0)
        self._out.fill(0)

    def _small_timing(self):
        """(alone_ns, split_ns, small_calls): this runner's measured ns per step of
        its small warm calls, alone and split (0: not measured), and their count."""
        return self.ctx.alone_ns, self.ctx.split_ns, self.ctx.small_calls

    def _force_small_choice(self, choice):
        """Tests: small warm steps always run "alone" or "split" (None: as measured)."""
        if choice not in (None, "alone", "split"):
            raise ValueError(f"choice must be None, 'alone' or 'split'; got {choice!r}")
        self.ctx.small_forced = 0 if choice is None else 1 + int(choice == "alone")

    def _get_state(self):
        cdef int par = self.ctx.par
        self._refuse_concurrent()
        return [(hbuf[par].copy(), cbuf.copy()) for hbuf, cbuf in self._lstm_layers]

    def _set_state(self, pairs):
        """Write validated (h, c) arrays of shape (B, H) per LSTM layer."""
        cdef int par = self.ctx.par
        self._refuse_concurrent()
        for (hbuf, cbuf), (h, c) in zip(self._lstm_layers, pairs):
            hbuf[par] = h
            cbuf[...] = c

    @property
    def _shared_pack(self):
        """The packed weights this runner reads (shared with the model's other runners)."""
        return self._pack

    @property
    def _state_shapes(self):
        return [cbuf.shape for _, cbuf in self._lstm_layers]

    @property
    def _info(self):
        return {"batch_size": self.ctx.B, "num_threads": self.ctx.n_threads,
                "use_blas": bool(self.ctx.use_blas), "n_in": self._n_in,
                "n_out": self._n_out, "dtype": self._dtype,
                "isa_level": cyl_cpu_level()}


cdef void _move_states(Ctx* ctx, void** sh, void** sc, const Py_ssize_t* slots, Py_ssize_t n,
                       Py_ssize_t item, bint back) noexcept nogil:
    """Gather (back = 0) the states of pool slots ``slots`` into rows 0 .. n-1 of
    the step's current state, or scatter them back (back = 1)."""
    cdef int l, m = 0
    cdef Py_ssize_t i, row
    cdef LayerC* L
    cdef char* hcur
    cdef char* c
    for l in range(ctx.n_layers):
        L = &ctx.L[l]
        if L.kind != KIND_LSTM:
            continue
        row = L.n_out * item
        hcur = <char*> (L.h0 if ctx.par == 0 else L.h1)
        c = <char*> L.c
        for i in range(n):
            if back:
                memcpy(<char*> sh[m] + slots[i] * row, hcur + i * row, row)
                memcpy(<char*> sc[m] + slots[i] * row, c + i * row, row)
            else:
                memcpy(hcur + i * row, <char*> sh[m] + slots[i] * row, row)
                memcpy(c + i * row, <char*> sc[m] + slots[i] * row, row)
        m += 1


cdef class PoolCore(Core):
    """The compiled half of :class:`cylstm.stream.StreamPool`.

    A Core whose batch is a capacity (max_streams rows) plus, per LSTM layer,
    the states of every slot, (max_streams, units) for h and c.  A pooled step
    gathers the named slots into rows 0 .. n-1, runs the runner's step at batch
    n on the panel kernel (never BLAS), and scatters the new
    states back, all with the GIL released.
    """
    cdef list _stores
    cdef void** _sh
    cdef void** _sc
    cdef Py_ssize_t _capacity

    def __cinit__(self):
        self._sh = NULL
        self._sc = NULL

    def __dealloc__(self):
        free(self._sh)
        free(self._sc)

    def _pool_setup(self, pack, Py_ssize_t max_streams, int n_threads):
        """Set up over ``pack`` for up to ``max_streams`` rows and slots."""
        cdef int m
        cdef cnp.ndarray a
        self._setup(pack, max_streams, n_threads, False, 1)
        self._capacity = max_streams
        self._stores = []
        n = max(1, len(self._lstm_layers))
        self._sh = <void**> malloc(n * sizeof(void*))
        self._sc = <void**> malloc(n * sizeof(void*))
        if self._sh == NULL or self._sc == NULL:
            raise MemoryError()
        for m, (_, cbuf) in enumerate(self._lstm_layers):
            hs = np.zeros(cbuf.shape, self._dtype)
            cs = np.zeros(cbuf.shape, self._dtype)
            self._stores.append((hs, cs))
            a = hs
            self._sh[m] = cnp.PyArray_DATA(a)
            a = cs
            self._sc[m] = cnp.PyArray_DATA(a)

    @property
    def _slot_states(self):
        """Per LSTM layer (h, c), each (max_streams, units): row s is slot s's state."""
        return self._stores

    cdef _check_call(self, cnp.ndarray x, cnp.ndarray slots, cnp.ndarray out, Py_ssize_t n):
        # private, but memory safety must not rest on the caller
        if (x.dtype != self._dtype or not x.flags.c_contiguous or x.ndim != 2
                or x.shape[0] != n or x.shape[1] != self._n_in):
            raise ValueError(f"x must be C-contiguous {self._dtype} ({n}, {self._n_in})")
        if (out.dtype != self._dtype or not out.flags.c_contiguous or not out.flags.writeable
                or out.ndim != 2 or out.shape[0] != n or out.shape[1] != self._n_out):
            raise ValueError(f"out must be C-contiguous {self._dtype} ({n}, {self._n_out})")
        if slots.dtype != np.intp or not slots.flags.c_contiguous or slots.ndim != 1:
            raise ValueError("slots must be a C-contiguous intp vector")
        cdef const Py_ssize_t* sp = <const Py_ssize_t*> cnp.PyArray_DATA(slots)
        cdef Py_ssize_t i
        for i in range(slots.shape[0]):
            if sp[i] < 0 or sp[i] >= self._capacity:
                raise ValueError(f"slots must lie in [0, {self._capacity}); got {sp[i]}")
        if self._busy:
            self._refuse_concurrent()

    def _pool_step(self, cnp.ndarray x, cnp.ndarray slots, cnp.ndarray out, int n_threads):
        """One step of the streams in ``slots`` (n distinct slots): x (n, F) -> out (n, U)."""
        cdef Py_ssize_t n = slots.shape[0] if slots.ndim == 1 else -1
        cdef Py_ssize_t item = self._dtype.itemsize
        cdef const Py_ssize_t* sp
        if n < 1 or n > self._capacity:
            raise ValueError(f"a pooled step takes 1 to {self._capacity} streams; got {n}")
        # distinct slots are the caller's rule (a repeated one would be stepped twice)
        self._check_call(x, slots, out, n)
        sp = <const Py_ssize_t*> cnp.PyArray_DATA(slots)
        self._busy = 1
        self.ctx.B = n
        self.ctx.n_threads = max(1, min(n_threads, <int> (self._scratch.shape[0]
                                                          // (self._capacity * MAXW))))
        self.ctx.x = cnp.PyArray_DATA(x)
        self.ctx.out = cnp.PyArray_DATA(out)
        with nogil:
            _move_states(&self.ctx, self._sh, self._sc, sp, n, item, 0)
            if self._typenum == cnp.NPY_FLOAT32:
                _step(&self.ctx, <float*> self.ctx.scratch)
            else:
                _step(&self.ctx, <double*> self.ctx.scratch)
            _move_states(&self.ctx, self._sh, self._sc, sp, n, item, 1)
        self.ctx.B = self._capacity
        self._busy = 0

    def _pool_run(self, cnp.ndarray x, Py_ssize_t slot, cnp.ndarray out, int n_threads):
        """T steps of the stream in ``slot``: x (T, F) -> out (T, U), the GIL released once."""
        cdef Py_ssize_t T = x.shape[0] if x.ndim == 2 else -1, t
        cdef Py_ssize_t item = self._dtype.itemsize
        cdef Py_ssize_t s = slot
        cdef char* xp
        cdef char* op
        slots = np.array([slot], np.intp)
        if T < 0:
            raise ValueError("x must be 2-D (T, features)")
        self._check_call(x, slots, out, T)
        self._busy = 1
        self.ctx.B = 1
        self.ctx.n_threads = max(1, min(n_threads, <int> (self._scratch.shape[0]
                                                          // (self._capacity * MAXW))))
        xp = <char*> cnp.PyArray_DATA(x)
        op = <char*> cnp.PyArray_DATA(out)
        cdef bint f32 = self._typenum == cnp.NPY_FLOAT32
        cdef Py_ssize_t chunk = min(T, POOL_CHUNK_STEPS), t0 = 0, t1
        cdef cnp.ndarray flags_a = np.zeros(chunk * self.ctx.n_pieces
                                            if self.ctx.n_threads > 1 else 0, np.int64)
        cdef int64_t* flags = <int64_t*> cnp.PyArray_DATA(flags_a)
        with nogil:
            _move_states(&self.ctx, self._sh, self._sc, &s, 1, item, 0)
            while self.ctx.n_threads > 1 and t0 < T:   # on the worker pool (_stack_work)
                t1 = min(T, t0 + chunk)
                _stack_pooled(&self.ctx, t1 - t0, xp + t0 * self._n_in * item,
                              op + t0 * self._n_out * item, self._n_in * item,
                              self._n_out * item, NULL, flags, f32)
                t0 = t1
            for t in range(t0, T):
                self.ctx.x = xp + t * self._n_in * item
                self.ctx.out = op + t * self._n_out * item
                if f32:
                    _step(&self.ctx, <float*> self.ctx.scratch)
                else:
                    _step(&self.ctx, <double*> self.ctx.scratch)
            _move_states(&self.ctx, self._sh, self._sc, &s, 1, item, 1)
        self.ctx.B = self._capacity
        self._busy = 0
