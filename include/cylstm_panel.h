/*
 * cylstm_panel.h -- the packed-panel product kernels: the streaming runner's
 * step and the sequence kernels' small-batch products.
 *
 * One streaming step of an LSTM layer needs z = [x_t, h_prev] @ [W; U], a
 * (1 x K) @ (K x 4H) product with K = I + H.  At batch 1 that is a GEMV, and
 * the BLAS calls for it cost more than the arithmetic at small sizes (OpenBLAS
 * sgemm with M = 1 is ~4x slower than sgemv, and sgemv itself has a call
 * overhead of a few hundred nanoseconds), so the runner uses this kernel over
 * weights it laid out once, at creation, in the order the loop reads them.
 *
 * Packed panel layout.  The matrix M (K x N) is cut into column panels; panel
 * p holds w_p columns, always a whole number of 64-byte vectors (16 floats, 8
 * doubles), stored row-major (K rows, row stride w).  For an LSTM layer a panel
 * holds the four gate blocks of hb hidden units, each padded with zero columns
 * to hp units (4 hp whole vectors), columns [i(hp) | f(hp) | g(hp) | o(hp)], so
 * that the cell (include/cylstm_cell.h) runs on it right after the product,
 * while the panel's pre-activations are still in L1; a plain matrix (a Dense
 * layer, U^T in the backward) is padded to whole vectors at its last panel.
 * The packers are in cylstm/_lstm.pyx (pack_stacked, pack_units, pack_plain),
 * for the sequence kernels and the streaming runner alike.  A zero column
 * costs one lane; the transposed tail columns of an earlier layout, read as
 * dot products, took a third of the backward at H = 50.
 *
 * The panel streams through memory in address order: for each k, one
 * broadcast of v[k] and w/VL fused multiply-adds into accumulators that stay in
 * registers for the whole panel (no load/store of z per k, as an axpy would).
 *
 * Small batches take rows six at a time (AVX-512 and AVX2 variants; AVX2 ends
 * in blocks of five or four of the same body), then four or two, so that each
 * weight vector loaded serves several rows; a batch of one streams the panel
 * once per step.
 *
 * VL is 16 floats / 8 doubles (64 bytes).  The kernel is written with GCC/Clang
 * vector extensions and compiled three times (CYL_ISA_KERNEL, cylstm_cpu.h):
 * x86-64-v4 (AVX-512), x86-64-v3 (AVX2 + FMA) and the baseline; each call runs
 * the variant for cyl_cpu_level(), the CPU's level or a lower one forced with
 * CYLSTM_CPU.  Other compilers (or -DCYLSTM_STREAM_PORTABLE, used to test that
 * path) get the plain C loops below, built once.
 * Products are summed in k order, one accumulator per output element, so a
 * result does not depend on which thread computes which panel (serial ==
 * threaded, bit for bit).
 *
 * Measured on a 2-core Zen 4 (AVX-512 clone), batch 1, one thread: (64, 128)
 * 393 KB of weights from L2 in 3.5 us (~112 GB/s, the L2 read bandwidth);
 * (256, 512) 6.3 MB from L3 in 64 us, 34 us with the panels split across two
 * threads.
 */
#ifndef CYLSTM_PANEL_H
#define CYLSTM_PANEL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "cylstm_cpu.h"
#ifdef _OPENMP
#include <omp.h>
#endif

#define CYL_STREAM_VLF 16   /* floats per vector */
#define CYL_STREAM_VLD 8    /* doubles per vector */
/* The panel layout's vector length (64 bytes) for element type T, whatever the
 * registers of the variant that reads it. */
#define CYL_LAYOUT_VL(T) ((ptrdiff_t)(64 / sizeof(T)))

#if (defined(__GNUC__) || defined(__clang__)) && !defined(__INTEL_COMPILER) && \
    !defined(CYLSTM_STREAM_PORTABLE)
#define CYL_STREAM_VECTOR 1
#else
#define CYL_STREAM_VECTOR 0
#endif

#if CYL_STREAM_VECTOR && CYL_ISA_VARIANTS
#define CYL_STREAM_KERNEL CYL_ISA_KERNEL
#define CYL_STREAM_CLONES_NAME "variants x86-64-v4, x86-64-v3, baseline (chosen at run time)"
#else
#define CYL_STREAM_KERNEL CYL_ISA_SINGLE
#define CYL_STREAM_CLONES_NAME "single build"
#endif

#if CYL_STREAM_VECTOR
typedef float cyl_vf __attribute__((vector_size(64)));
typedef double cyl_vd __attribute__((vector_size(64)));

/* memcpy loads/stores: no alignment or aliasing assumptions; compile to one
 * (unaligned) vector move. */
#define CYL_LD(T, p) ({ T v_; memcpy(&v_, (p), sizeof(T)); v_; })
#define CYL_ST(p, v) do { __typeof__(v) v2_ = (v); memcpy((p), &v2_, sizeof(v2_)); } while (0)

/* Body shared by the float and double kernels, for one row v = [a(ka), b(kb)].
 * T: scalar type, VT: vector type, VL: elements per vector. */
#define CYL_PANEL_ROW_BODY(T, VT, VL)                                              \
    {                                                                              \
        ptrdiff_t j = 0, k;                                                        \
        /* narrower registers (AVX2, SSE2): 8 accumulators, so that one pass over  \
         * the rows covers 64 bytes x 8 / (64 / VL / sizeof(T)) of the panel */     \
        for (; (VL) * (ptrdiff_t)sizeof(T) < 64 && j + 8 * VL <= w; j += 8 * VL) {  \
            VT s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};                             \
            VT s4 = {0}, s5 = {0}, s6 = {0}, s7 = {0};                             \
            const T* p = P + j;                                                    \
            for (k = 0; k < ka + kb; k++, p += w) {                                \
                const T v = k < ka ? a[k] : b[k - ka];                             \
                s0 += v * CYL_LD(VT, p);                                           \
                s1 += v * CYL_LD(VT, p + VL);                                      \
                s2 += v * CYL_LD(VT, p + 2 * VL);                                  \
                s3 += v * CYL_LD(VT, p + 3 * VL);                                  \
                s4 += v * CYL_LD(VT, p + 4 * VL);                                  \
                s5 += v * CYL_LD(VT, p + 5 * VL);                                  \
                s6 += v * CYL_LD(VT, p + 6 * VL);                                  \
                s7 += v * CYL_LD(VT, p + 7 * VL);                                  \
            }                                                                      \
            CYL_ST(z + j, s0);                                                     \
            CYL_ST(z + j + VL, s1);                                                \
            CYL_ST(z + j + 2 * VL, s2);                                            \
            CYL_ST(z + j + 3 * VL, s3);                                            \
            CYL_ST(z + j + 4 * VL, s4);                                            \
            CYL_ST(z + j + 5 * VL, s5);                                            \
            CYL_ST(z + j + 6 * VL, s6);                                            \
            CYL_ST(z + j + 7 * VL, s7);                                            \
        }                                                                          \
        for (; j + 4 * VL <= w; j += 4 * VL) {                                     \
            VT s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};                             \
            const T* p = P + j;                                                    \
            for (k = 0; k < ka; k++, p += w) {                                     \
                const T v = a[k];                                                  \
                s0 += v * CYL_LD(VT, p);                                           \
                s1 += v * CYL_LD(VT, p + VL);                                      \
                s2 += v * CYL_LD(VT, p + 2 * VL);                                  \
                s3 += v * CYL_LD(VT, p + 3 * VL);                                  \
            }                                                                      \
            for (k = 0; k < kb; k++, p += w) {                                     \
                const T v = b[k];                                                  \
                s0 += v * CYL_LD(VT, p);                                           \
                s1 += v * CYL_LD(VT, p + VL);                                      \
                s2 += v * CYL_LD(VT, p + 2 * VL);                                  \
                s3 += v * CYL_LD(VT, p + 3 * VL);                                  \
            }                                                                      \
            CYL_ST(z + j, s0);                                                     \
            CYL_ST(z + j + VL, s1);                                                \
            CYL_ST(z + j + 2 * VL, s2);                                            \
            CYL_ST(z + j + 3 * VL, s3);                                            \
        }                                                                          \
        for (; j < w; j += VL) {                                                   \
            VT s0 = {0};                                                           \
            const T* p = P + j;                                                    \
            for (k = 0; k < ka; k++, p += w)                                       \
                s0 += a[k] * CYL_LD(VT, p);                                        \
            for (k = 0; k < kb; k++, p += w)                                       \
                s0 += b[k] * CYL_LD(VT, p);                                        \
            CYL_ST(z + j, s0);                                                     \
        }                                                                          \
    }

/* Four rows at once over the main block, 2 VL columns at a time: every weight
 * vector loaded serves four rows (8 accumulators), so a small batch streams the
 * panel once instead of once per row.  Rows r0 .. r0 + 3; past the last row
 * (nrows - r0 < 4) the last row is repeated: it computes the same values again
 * into the same place, which is cheaper than a second pass over the weights. */
#define CYL_ROW(r) ((r0 + (r) < nrows) ? r0 + (r) : nrows - 1)
#define CYL_PANEL_ROWS4_BODY(T, VT, VL)                                            \
    {                                                                              \
        const T* A0 = a0 + CYL_ROW(0) * lda; const T* A1 = a0 + CYL_ROW(1) * lda;  \
        const T* A2 = a0 + CYL_ROW(2) * lda; const T* A3 = a0 + CYL_ROW(3) * lda;  \
        const T* B0 = b0 + CYL_ROW(0) * ldb; const T* B1 = b0 + CYL_ROW(1) * ldb;  \
        const T* B2 = b0 + CYL_ROW(2) * ldb; const T* B3 = b0 + CYL_ROW(3) * ldb;  \
        T* Z0 = z0 + CYL_ROW(0) * ldz; T* Z1 = z0 + CYL_ROW(1) * ldz;              \
        T* Z2 = z0 + CYL_ROW(2) * ldz; T* Z3 = z0 + CYL_ROW(3) * ldz;              \
        ptrdiff_t j = 0, k;                                                        \
        for (; j + 2 * VL <= w; j += 2 * VL) {                                     \
            VT s00 = {0}, s01 = {0}, s10 = {0}, s11 = {0};                         \
            VT s20 = {0}, s21 = {0}, s30 = {0}, s31 = {0};                         \
            const T* p = P + j;                                                    \
            for (k = 0; k < ka; k++, p += w) {                                     \
                const VT w0 = CYL_LD(VT, p), w1 = CYL_LD(VT, p + VL);              \
                s00 += A0[k] * w0; s01 += A0[k] * w1;                              \
                s10 += A1[k] * w0; s11 += A1[k] * w1;                              \
                s20 += A2[k] * w0; s21 += A2[k] * w1;                              \
                s30 += A3[k] * w0; s31 += A3[k] * w1;                              \
            }                                                                      \
            for (k = 0; k < kb; k++, p += w) {                                     \
                const VT w0 = CYL_LD(VT, p), w1 = CYL_LD(VT, p + VL);              \
                s00 += B0[k] * w0; s01 += B0[k] * w1;                              \
                s10 += B1[k] * w0; s11 += B1[k] * w1;                              \
                s20 += B2[k] * w0; s21 += B2[k] * w1;                              \
                s30 += B3[k] * w0; s31 += B3[k] * w1;                              \
            }                                                                      \
            CYL_ST(Z0 + j, s00); CYL_ST(Z0 + j + VL, s01);                         \
            CYL_ST(Z1 + j, s10); CYL_ST(Z1 + j + VL, s11);                         \
            CYL_ST(Z2 + j, s20); CYL_ST(Z2 + j + VL, s21);                         \
            CYL_ST(Z3 + j, s30); CYL_ST(Z3 + j + VL, s31);                         \
        }                                                                          \
        for (; j < w; j += VL) {                                                   \
            VT s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};                             \
            const T* p = P + j;                                                    \
            for (k = 0; k < ka; k++, p += w) {                                     \
                const VT w0 = CYL_LD(VT, p);                                       \
                s0 += A0[k] * w0; s1 += A1[k] * w0;                                \
                s2 += A2[k] * w0; s3 += A3[k] * w0;                                \
            }                                                                      \
            for (k = 0; k < kb; k++, p += w) {                                     \
                const VT w0 = CYL_LD(VT, p);                                       \
                s0 += B0[k] * w0; s1 += B1[k] * w0;                                \
                s2 += B2[k] * w0; s3 += B3[k] * w0;                                \
            }                                                                      \
            CYL_ST(Z0 + j, s0); CYL_ST(Z1 + j, s1);                                \
            CYL_ST(Z2 + j, s2); CYL_ST(Z3 + j, s3);                                \
        }                                                                          \
    }

/* Two rows at once, 4 VL columns at a time (8 accumulators); rows r0, r0 + 1. */
#define CYL_PANEL_ROWS2_BODY(T, VT, VL)                                            \
    {                                                                              \
        const T* A0 = a0 + r0 * lda; const T* A1 = A0 + lda;                       \
        const T* B0 = b0 + r0 * ldb; const T* B1 = B0 + ldb;                       \
        T* Z0 = z0 + r0 * ldz; T* Z1 = Z0 + ldz;                                   \
        ptrdiff_t j = 0, k;                                                        \
        for (; j + 4 * VL <= w; j += 4 * VL) {                                     \
            VT s00 = {0}, s01 = {0}, s02 = {0}, s03 = {0};                         \
            VT s10 = {0}, s11 = {0}, s12 = {0}, s13 = {0};                         \
            const T* p = P + j;                                                    \
            for (k = 0; k < ka; k++, p += w) {                                     \
                const VT w0 = CYL_LD(VT, p), w1 = CYL_LD(VT, p + VL);              \
                const VT w2 = CYL_LD(VT, p + 2 * VL), w3 = CYL_LD(VT, p + 3 * VL); \
                s00 += A0[k] * w0; s01 += A0[k] * w1;                              \
                s02 += A0[k] * w2; s03 += A0[k] * w3;                              \
                s10 += A1[k] * w0; s11 += A1[k] * w1;                              \
                s12 += A1[k] * w2; s13 += A1[k] * w3;                              \
            }                                                                      \
            for (k = 0; k < kb; k++, p += w) {                                     \
                const VT w0 = CYL_LD(VT, p), w1 = CYL_LD(VT, p + VL);              \
                const VT w2 = CYL_LD(VT, p + 2 * VL), w3 = CYL_LD(VT, p + 3 * VL); \
                s00 += B0[k] * w0; s01 += B0[k] * w1;                              \
                s02 += B0[k] * w2; s03 += B0[k] * w3;                              \
                s10 += B1[k] * w0; s11 += B1[k] * w1;                              \
                s12 += B1[k] * w2; s13 += B1[k] * w3;                              \
            }                                                                      \
            CYL_ST(Z0 + j, s00); CYL_ST(Z0 + j + VL, s01);                         \
            CYL_ST(Z0 + j + 2 * VL, s02); CYL_ST(Z0 + j + 3 * VL, s03);            \
            CYL_ST(Z1 + j, s10); CYL_ST(Z1 + j + VL, s11);                         \
            CYL_ST(Z1 + j + 2 * VL, s12); CYL_ST(Z1 + j + 3 * VL, s13);            \
        }                                                                          \
        for (; j < w; j += VL) {                                                   \
            VT s0 = {0}, s1 = {0};                                                 \
            const T* p = P + j;                                                    \
            for (k = 0; k < ka; k++, p += w) {                                     \
                const VT w0 = CYL_LD(VT, p);                                       \
                s0 += A0[k] * w0; s1 += A1[k] * w0;                                \
            }                                                                      \
            for (k = 0; k < kb; k++, p += w) {                                     \
                const VT w0 = CYL_LD(VT, p);                                       \
                s0 += B0[k] * w0; s1 += B1[k] * w0;                                \
            }                                                                      \
            CYL_ST(Z0 + j, s0); CYL_ST(Z1 + j, s1);                                \
        }                                                                          \
    }

/* Whether the AVX2 six-row blocks after a pass's first prefetch their own k rows
 * (CYL_PF_DIST_REST below; 1 unless a measurement or a test turns it off with
 * cyl_panel_set_pf_rest, which returns the previous value).  In every build, so
 * that the switch exists where the body does not. */
static int cyl_panel_pf_rest = 1;
static inline int cyl_panel_set_pf_rest(int on)
{
    int previous = cyl_panel_pf_rest;
    cyl_panel_pf_rest = on != 0;
    return previous;
}

/* How the AVX2 six-row passes stream in the weights the next block reads
 * (CYL_ROWS6_PASS; set with cyl_panel_set_pf_spread, which returns the previous
 * value): n >= 1, every pass also prefetches its own k rows, and a K-blocked
 * panel's stream is spread over its first min(passes, n) passes, each
 * prefetching its share one line every that-many k steps; 0 (measuring only),
 * the first pass streams everything and prefetches nothing of its own.
 * CYL_PANEL_PF_SPREAD is the default; see CYL_PANEL_ROWS6N_BODY_PF for the
 * measurements.  In every build. */
#define CYL_PANEL_PF_SPREAD 3
static int cyl_panel_pf_spread = CYL_PANEL_PF_SPREAD;
static inline int cyl_panel_set_pf_spread(int n)
{
    int previous = cyl_panel_pf_spread;
    cyl_panel_pf_spread = n > 0 ? n : 0;
    return previous;
}

/* K blocks for the AVX2 row blocks (CYL_ROWS6_PASS): 0, or the most bytes of
 * a panel that one pass of row blocks reads before the next K block.  A panel
 * read by several passes (more than 6 rows) is cut into K blocks of at most
 * that many bytes, each block's passes run before the next block's, and a
 * later block goes on from the sums in z (the same sums in the same k order:
 * the same bits).  Set from the core's L2 by cylstm/_tuning.py
 * (PANEL_KBLOCK_L2_FRACTION) through cyl_panel_set_kblock, which returns the
 * previous value; in every build. */
/* A byte count the kernels read: its static (0 at start), a setter that stores
 * bytes (0 for a negative value) and returns the previous one, and a getter. */
#define CYL_BYTES_SETTING(VAR, SET, GET)                                           \
    static ptrdiff_t VAR = 0;                                                      \
    static inline ptrdiff_t SET(ptrdiff_t bytes)                                   \
    {                                                                              \
        ptrdiff_t previous = VAR;                                                  \
        VAR = bytes > 0 ? bytes : 0;                                               \
        return previous;                                                           \
    }                                                                              \
    static inline ptrdiff_t GET(void) { return VAR; }
CYL_BYTES_SETTING(cyl_panel_kblock_bytes, cyl_panel_set_kblock, cyl_panel_get_kblock)
/* The callers (cylstm/_panel.pxd, stream_next) hand the kernels a `next` panel to
 * stream in only where the weights a product walks over are larger than this
 * (bytes; set to a core's L2 by `import cylstm`, cylstm/_cpu.py
 * set_panel_stream_min): where they all stay in L2 the stream's prefetches only
 * take load slots.  (100, 32, 128, 256) forward, [W; U] 1.5 MiB, 2 MiB of L2,
 * the AVX-512 stream on / off alternated 21 times in one process: 1.016x the time
 * on one thread, 1.021x on two; 2-vCPU Intel Xeon (Emerald Rapids class),
 * 2026-12-08.  Prefetches only: no result depends on it. */
CYL_BYTES_SETTING(cyl_panel_stream_min_bytes, cyl_panel_set_stream_min,
                  cyl_panel_get_stream_min)
/* The K block (rows of the panel) for a panel of K rows of row_bytes each read
 * by nrows rows: K itself where one pass reads it, or it fits the budget; else
 * K cut into as many equal blocks as the budget asks, each rounded up to a
 * multiple of 16 rows (so a block may pass the budget by up to 15 rows). */
static inline ptrdiff_t cyl_panel_kblock(ptrdiff_t K, ptrdiff_t row_bytes, ptrdiff_t nrows)
{
    const ptrdiff_t budget = cyl_panel_kblock_bytes;
    if (budget <= 0 || nrows <= 6 || K * row_bytes <= budget || K < 32)
        return K;
    const ptrdiff_t nb = (K * row_bytes + budget - 1) / budget;
    const ptrdiff_t kc = ((K + nb - 1) / nb + 15) / 16 * 16;
    return kc < K ? kc : K;
}

/* Six rows at once over a panel whose main block is a whole number of 4-vector
 * column groups (every full LSTM panel: 4 gates x 16 float32 / 8 float64 units):
 * 24 accumulators (6 rows x 4 vectors) stay in the 32 AVX-512 registers, and
 * each k costs 4 vector loads and 6 broadcasts for 24 fused multiply-adds.
 * Compiled for x86-64-v4 and called only where CYL_ISA_IS_V4 (the v4 variant
 * of the panel functions); with 16 AVX2 registers it would spill, so x86-64-v3
 * has its own six-row body below, 2 vectors wide.  Same arithmetic as the other
 * bodies (one accumulator per output, summed in k order), so a row gives the
 * same bits whichever body computes it. */
#if CYL_STREAM_VECTOR && defined(__x86_64__) && (defined(__clang__) || __GNUC__ >= 12) && \
    !defined(CYLSTM_NO_CLONES)
#define CYL_STREAM_ROWS6 1
/* one k of an R-row block (R = 4, 5, 6, a compile-time constant): four weight
 * vectors times R row values */
#define CYL_RV_K(R, T, VT, VL, v0, v1, v2, v3, v4, v5)                             \
    {                                                                              \
        const VT w0 = CYL_LD(VT, p), w1 = CYL_LD(VT, p + VL);                      \
        const VT w2 = CYL_LD(VT, p + 2 * VL), w3 = CYL_LD(VT, p + 3 * VL);         \
        T v;                                                                       \
        v = v0; s00 += v * w0; s01 += v * w1; s02 += v * w2; s03 += v * w3;       \
        v = v1; s10 += v * w0; s11 += v * w1; s12 += v * w2; s13 += v * w3;       \
        v = v2; s20 += v * w0; s21 += v * w1; s22 += v * w2; s23 += v * w3;       \
        v = v3; s30 += v * w0; s31 += v * w1; s32 += v * w2; s33 += v * w3;       \
        if ((R) > 4) { v = v4; s40 += v * w0; s41 += v * w1; s42 += v * w2; s43 += v * w3; } \
        if ((R) > 5) { v = v5; s50 += v * w0; s51 += v * w1; s52 += v * w2; s53 += v * w3; } \
    }
/* the 4 vectors (4 x 64 bytes) of one k row of a 4-vector column group */
#define CYL_PF_ROW(q)                                                              \
    {                                                                              \
        __builtin_prefetch((const char*)(q), 0, 3);                                \
        __builtin_prefetch((const char*)(q) + 64, 0, 3);                           \
        __builtin_prefetch((const char*)(q) + 128, 0, 3);                          \
        __builtin_prefetch((const char*)(q) + 192, 0, 3);                          \
    }
/* The six-row block with the next panel streamed in: pfq .. pfend (lines of
 * `next`, the panel the caller computes after this one), pfl lines each k step,
 * prefetched into L2 while this block computes from its own panel, which the
 * passes before it (or the previous panel's) brought in.  Without it the first
 * block of each pass read its panel from L3 at the rate of its own prefetches
 * (CYL_PF_DIST) and the later blocks from L2: at 16 rows, K 1024 and 4H 4096
 * (16 MiB of weights, L3 on every step) the product ran near 90 GFLOP/s on one
 * core of a 2-vCPU Intel Xeon (Emerald Rapids class, 2 MiB L2), 2026-12-08;
 * spread over the pass's first CYL_PANEL_PF_SPREAD blocks, the L3 traffic
 * overlaps the whole panel's FMAs (see the measurements in
 * CYL_ROWS6_PASS).  PFD: own k rows PFD ahead as well (a pass's first block). */
#define CYL_NX_PF(pfq, pfend, pfl)                                                 \
    if ((pfq) < (pfend)) {                                                         \
        __builtin_prefetch((pfq), 0, 2);                                           \
        if ((pfl) > 1) __builtin_prefetch((pfq) + 64, 0, 2);                       \
        if ((pfl) > 2) __builtin_prefetch((pfq) + 128, 0, 2);                      \
        if ((pfl) > 3) __builtin_prefetch((pfq) + 192, 0, 2);                      \
        (pfq) += 64 * (pfl);                                                       \
    }
/* z[0:R, 0:w] = [a, b][0:R] @ panel, w a multiple of 4 vectors (no tail); the
 * rows past R are never read.  PFD: own k rows PFD ahead (0: none); pfq ..
 * pfend (NULL, NULL: none): the next panel's lines, pfl a k step (CYL_NX_PF). */
#define CYL_PANEL_ROWSV_BODY(T, VT, VL, PFD, R)                                    \
    {                                                                              \
        const T* A0 = a0; const T* A1 = A0 + lda; const T* A2 = A1 + lda;          \
        const T* A3 = A2 + lda;                                                    \
        const T* A4 = (R) > 4 ? A3 + lda : A3; const T* A5 = (R) > 5 ? A4 + lda : A4; \
        const T* B0 = b0; const T* B1 = B0 + ldb; const T* B2 = B1 + ldb;          \
        const T* B3 = B2 + ldb;                                                    \
        const T* B4 = (R) > 4 ? B3 + ldb : B3; const T* B5 = (R) > 5 ? B4 + ldb : B4; \
        ptrdiff_t j, k;                                                            \
        for (j = 0; j + 4 * VL <= w; j += 4 * VL) {                                \
            VT s00 = {0}, s01 = {0}, s02 = {0}, s03 = {0};                         \
            VT s10 = {0}, s11 = {0}, s12 = {0}, s13 = {0};                         \
            VT s20 = {0}, s21 = {0}, s22 = {0}, s23 = {0};                         \
            VT s30 = {0}, s31 = {0}, s32 = {0}, s33 = {0};                         \
            VT s40 = {0}, s41 = {0}, s42 = {0}, s43 = {0};                         \
            VT s50 = {0}, s51 = {0}, s52 = {0}, s53 = {0};                         \
            const T* p = P + j;                                                    \
            for (k = 0; k < ka; k++, p += w) {                                     \
                if (PFD) CYL_PF_ROW(p + PFD * w);                                  \
                CYL_NX_PF(pfq, pfend, pfl)                                         \
                CYL_RV_K(R, T, VT, VL, A0[k], A1[k], A2[k], A3[k], A4[k], A5[k])   \
            }                                                                      \
            for (k = 0; k < kb; k++, p += w) {                                     \
                if (PFD) CYL_PF_ROW(p + PFD * w);                                  \
                CYL_NX_PF(pfq, pfend, pfl)                                         \
                CYL_RV_K(R, T, VT, VL, B0[k], B1[k], B2[k], B3[k], B4[k], B5[k])   \
            }                                                                      \
            T* Z = z0 + j;                                                         \
            CYL_ST(Z, s00); CYL_ST(Z + VL, s01);                                   \
            CYL_ST(Z + 2 * VL, s02); CYL_ST(Z + 3 * VL, s03); Z += ldz;            \
            CYL_ST(Z, s10); CYL_ST(Z + VL, s11);                                   \
            CYL_ST(Z + 2 * VL, s12); CYL_ST(Z + 3 * VL, s13); Z += ldz;            \
            CYL_ST(Z, s20); CYL_ST(Z + VL, s21);                                   \
            CYL_ST(Z + 2 * VL, s22); CYL_ST(Z + 3 * VL, s23); Z += ldz;            \
            CYL_ST(Z, s30); CYL_ST(Z + VL, s31);                                   \
            CYL_ST(Z + 2 * VL, s32); CYL_ST(Z + 3 * VL, s33);                      \
            if ((R) > 4) {                                                         \
                Z += ldz; CYL_ST(Z, s40); CYL_ST(Z + VL, s41);                     \
                CYL_ST(Z + 2 * VL, s42); CYL_ST(Z + 3 * VL, s43);                  \
            }                                                                      \
            if ((R) > 5) {                                                         \
                Z += ldz; CYL_ST(Z, s50); CYL_ST(Z + VL, s51);                     \
                CYL_ST(Z + 2 * VL, s52); CYL_ST(Z + 3 * VL, s53);                  \
            }                                                                      \
        }                                                                          \
    }
/* The first six rows of a pass, which read the panel from L3 or memory (the
 * later rows find it in L2): each k also prefetches the k row CYL_PF_DIST
 * ahead, so that loads overlap the FMAs instead of waiting on each miss (the L2
 * streamer stops at every 4 KiB page).  2-vCPU Xeon (Sapphire Rapids class),
 * 2026-12-02, one thread, lstm_forward forced per path, two interleaved rounds
 * (ms) at distance 0 / 8 / 16 / 32: (25, 16, 1024, 1024) units 60.6-62.5 /
 * 56.1 / 56.8-57.0 / 57.3, stacked 78.9-92.6 / 67.6-68.3 / 67.1-69.6 / 67.2-67.9;
 * (50, 64, 512, 512) stacked 88.7-90.0 / 86.8-87.4 / 86.7-89.3 / 90.5. */
#ifndef CYL_PF_DIST
#define CYL_PF_DIST 16
#endif
#define CYL_ROWSV_FN(NAME, T, VT, VL, PFD, R)                                      \
__attribute__((target("arch=x86-64-v4")))                                          \
static void NAME(const T* P, ptrdiff_t w, const T* a0, ptrdiff_t ka, ptrdiff_t lda, \
                 const T* b0, ptrdiff_t kb, ptrdiff_t ldb, T* z0, ptrdiff_t ldz,   \
                 const char* pfq, const char* pfend, int pfl)                      \
CYL_PANEL_ROWSV_BODY(T, VT, VL, PFD, R)
/* NAME##v<R>[pf]: R rows (6, 5, 4); pf: own rows prefetched */
#define CYL_ROWSV_FNS(NAME, T, VT, VL)                                             \
    CYL_ROWSV_FN(NAME##v6pf, T, VT, VL, CYL_PF_DIST, 6)                            \
    CYL_ROWSV_FN(NAME##v6, T, VT, VL, 0, 6)                                        \
    CYL_ROWSV_FN(NAME##v5pf, T, VT, VL, CYL_PF_DIST, 5)                            \
    CYL_ROWSV_FN(NAME##v5, T, VT, VL, 0, 5)                                        \
    CYL_ROWSV_FN(NAME##v4pf, T, VT, VL, CYL_PF_DIST, 4)                            \
    CYL_ROWSV_FN(NAME##v4, T, VT, VL, 0, 4)
CYL_ROWSV_FNS(cyl_panel_rows6_f32, float, cyl_vf, CYL_STREAM_VLF)
CYL_ROWSV_FNS(cyl_panel_rows6_f64, double, cyl_vd, CYL_STREAM_VLD)
/* The rows of the next AVX-512 block of a pass with `left` (>= 4) rows to go:
 * six-row blocks down to 11 left, then 10 = 5 + 5, 9 = 5 + 4, 8 = 4 + 4, 7 = 5
 * (+ a two-row body), 6, 5, 4: every block four vectors wide (a four-row block
 * costs 8 loads for 16 FMAs; the generic four-row body below, 2 vectors wide,
 * 6 for 8; the last rows of 16, 32 or 64 had gone 4, 2, 4 there).  Against
 * six-row blocks with those tails (builds alternated by process, medians of 30
 * calls, 4-5 rounds; 2-vCPU Intel Xeon, Emerald Rapids class, 2026-12-08):
 * lstm_forward one thread (100, 32, 128, 256) 18.4 -> 17.5 ms, (100, 8, 512,
 * 512) 31.7 -> 29.0, (100, 4, 256, 256) 3.35 -> 3.15, (50, 64, 512, 512) 89.3
 * -> 88.5, (100, 16, 256, 256) 12.1 -> 11.9, (25, 16, 1024, 1024) 50.7 -> 50.5;
 * two threads (50, 64, 512, 512) 48.2 -> 45.6, (100, 32, 128, 256) 9.5 -> 9.1.
 * The same arithmetic per output: the same bits. */
#define CYL_ROWSV_NEXT(left)                                                       \
    ((left) >= 11 || (left) == 6 ? 6 : (left) >= 9 || (left) == 7 || (left) == 5 ? 5 : 4)
/* how many such blocks a pass over nrows rows makes (as cyl_rows6_passes, AVX2) */
static inline ptrdiff_t cyl_rowsv_blocks(ptrdiff_t nrows)
{
    ptrdiff_t n = 0;
    while (nrows >= 4) { nrows -= CYL_ROWSV_NEXT(nrows); n++; }
    return n;
}

/* The same six-row block for AVX2 (16 registers): 6 rows x 2 vectors of 32
 * bytes, 12 accumulators; each k costs 2 vector loads and 6 broadcasts for 12
 * fused multiply-adds (the four-row body: 2 and 4 for 8), and a batch of 16
 * streams each panel 3 times instead of 4.  Any w that is a whole number of
 * 64-byte layout vectors (no transposed tail).  Same arithmetic as the other
 * bodies (one accumulator per output, summed in k order): the same bits for
 * every row.  Called only from the x86-64-v3 variant (CYL_ISA == 1). */
#define CYL_R6N_K(R, VT, VL, v0, v1, v2, v3, v4, v5)                              \
    {                                                                              \
        const VT w0 = CYL_LD(VT, p), w1 = CYL_LD(VT, p + VL);                      \
        s00 += (v0) * w0; s01 += (v0) * w1; s10 += (v1) * w0; s11 += (v1) * w1;    \
        s20 += (v2) * w0; s21 += (v2) * w1; s30 += (v3) * w0; s31 += (v3) * w1;    \
        if ((R) > 4) { s40 += (v4) * w0; s41 += (v4) * w1; }                       \
        if ((R) > 5) { s50 += (v5) * w0; s51 += (v5) * w1; }                       \
    }
/* R = 4, 5 or 6 rows, a compile-time constant (the rows past R are never
 * read).  After its six-row blocks a batch's last 10, 9, 8, 5 or 4 rows go
 * 5 + 5, 5 + 4, 6 + 2, 5 and 4 (CYL_ROWS6_PASS) instead of the generic four-
 * and two-row bodies: a batch of 5 went 43-46 -> 52-59 GFLOP/s, batches of 16
 * and 64 (tails 4, 10) 0.91-0.95x the time (kernel micro-bench, K = 256-1024,
 * the two builds alternated in one process); lstm_forward (100, 5, 256, 256)
 * 0.84x on one thread, (100, 10, 256, 256) 0.82x on two, others 0.99-1.01x
 * (builds alternated by process, 5 rounds; 8 = 4 + 4 made (100, 32, 128, 256)
 * 1.045x, so 8 stays 6 + 2).  2-vCPU AMD EPYC Zen 3, 2026-12-02.
 * PFD: its own k row PFD ahead.  pfn (or NULL): lines of what the passes after
 * read (the next K block, or the panel the caller reads next), streamed in
 * address order, one every pfe k steps (the pass's k loop runs once per line
 * of the block it reads), so that the next block's passes find it in L2;
 * BOTH: a block with a stream also prefetches its own k rows.  The strided 2-vector
 * chunks of this body defeat the hardware prefetchers when the weights come
 * from memory: on a 2-vCPU Zen 3 (AMD EPYC, AVX2), 2026-12-02, lstm_forward
 * alternated in one process, the next-panel stream took (25, 16, 1024, 1024)
 * from 160-166 to 136-143 ms on one thread (84 to 72 on two) and its training
 * step from 558 to 476 ms; shapes whose weights stay in L2 or L3 did not move
 * (ratios 0.99-1.05 at (100, 32, 128, 256), (100, 16, 256, 256), (50, 64,
 * 512, 512) rows).  That stream was all in the first pass of a K block, one
 * line per k: a block's worth of L3 (or memory) misses in a third of the
 * block's time at 16 rows, with no prefetch of the pass's own rows, whose
 * lines the stream had not always brought in yet.  On a host whose other
 * guests load the L3 the misses queue up: (25, 16, 1024, 1024) ran 0.76x of
 * ONNX Runtime's time on one thread, 0.67x on two (in-process alternation,
 * 2026-12-07, sgemm 56-80 GFLOP/s, a slow spell).  Now each of the first
 * CYL_PANEL_PF_SPREAD passes streams its share, and every pass prefetches its
 * own rows.  Kernel micro-bench (cyl_panel_next_f32 over N/64 panels, K-block
 * budget 128 KiB, 31 alternated rounds, medians, GFLOP/s) first pass only /
 * spread over 2 / 3: M 16, K 1024, N 4096 (16 MiB of weights) 57.5 / 66.7 /
 * 70.1; M 6, K 1024, N 4096 40.0 / 46.9 / 47.1; M 64, K 1024, N 2048 36.3 /
 * 38.4 / 38.7; M 12, K 1024, N 2048 47.9 / 49.8 / 49.9; unblocked panels (M 32,
 * K 512 or 256; M 16, K 512) within 0.3.  lstm_forward, in-process
 * alternation, median per-round ratios spread 3 / first pass only: (25, 16,
 * 1024, 1024) 0.82-0.83 on one thread, 0.91-0.92 on two; (50, 64, 512, 512)
 * 0.94-0.97, 0.89-0.96; (100, 32, 512, 512) 0.94; unblocked (100, 32, 128,
 * 256), (100, 16, 512, 512) 0.99-1.01; training steps (25, 16, 1024, 1024)
 * 0.92 / 0.98 (one / two threads), (50, 64, 512, 512) 0.98-0.99, (100, 32,
 * 128, 256) 0.97 / 0.99.  Spreading over 6 or 12 passes: within the noise of
 * 3 (ratios moved by 0.1 between variants that run the same code).  2-vCPU
 * AMD EPYC (2 cores), Zen 3, 2026-12-07. */
#define CYL_R6N_PF(PFD, BOTH)                                                      \
    if (pfq) {                                                                     \
        if (--pfc == 0) { __builtin_prefetch(pfq, 0, 3); pfq += 64; pfc = pfe; }   \
        if ((BOTH) && (PFD)) __builtin_prefetch((const char*)(p + (PFD) * w), 0, 3); \
    } else if (PFD) __builtin_prefetch((const char*)(p + (PFD) * w), 0, 3);
#define CYL_PANEL_ROWS6N_BODY_PF(T, VT, VL, PFD, R, BOTH)                          \
    {                                                                              \
        const T* A0 = a0; const T* A1 = A0 + lda; const T* A2 = A1 + lda;          \
        const T* A3 = A2 + lda;                                                    \
        const T* A4 = (R) > 4 ? A3 + lda : A3; const T* A5 = (R) > 5 ? A4 + lda : A4; \
        const T* B0 = b0; const T* B1 = B0 + ldb; const T* B2 = B1 + ldb;          \
        const T* B3 = B2 + ldb;                                                    \
        const T* B4 = (R) > 4 ? B3 + ldb : B3; const T* B5 = (R) > 5 ? B4 + ldb : B4; \
        ptrdiff_t j, k;                                                            \
        const char* pfq = pfn;                                                     \
        ptrdiff_t pfc = 1;                                                         \
        for (j = 0; j + 2 * VL <= w; j += 2 * VL) {                                \
            VT s00 = {0}, s01 = {0}, s10 = {0}, s11 = {0}, s20 = {0}, s21 = {0};   \
            VT s30 = {0}, s31 = {0}, s40 = {0}, s41 = {0}, s50 = {0}, s51 = {0};   \
            if (acc) {   /* a later K block: go on from the sums in z */           \
                const T* Zs = z0 + j;                                              \
                s00 = CYL_LD(VT, Zs); s01 = CYL_LD(VT, Zs + VL); Zs += ldz;        \
                s10 = CYL_LD(VT, Zs); s11 = CYL_LD(VT, Zs + VL); Zs += ldz;        \
                s20 = CYL_LD(VT, Zs); s21 = CYL_LD(VT, Zs + VL); Zs += ldz;        \
                s30 = CYL_LD(VT, Zs); s31 = CYL_LD(VT, Zs + VL);                   \
                if ((R) > 4) { Zs += ldz; s40 = CYL_LD(VT, Zs); s41 = CYL_LD(VT, Zs + VL); } \
                if ((R) > 5) { Zs += ldz; s50 = CYL_LD(VT, Zs); s51 = CYL_LD(VT, Zs + VL); } \
            }                                                                      \
            const T* p = P + j;                                                    \
            for (k = 0; k < ka; k++, p += w) {                                     \
                CYL_R6N_PF(PFD, BOTH)                                              \
                CYL_R6N_K(R, VT, VL, A0[k], A1[k], A2[k], A3[k], A4[k], A5[k])     \
            }                                                                      \
            for (k = 0; k < kb; k++, p += w) {                                     \
                CYL_R6N_PF(PFD, BOTH)                                              \
                CYL_R6N_K(R, VT, VL, B0[k], B1[k], B2[k], B3[k], B4[k], B5[k])     \
            }                                                                      \
            T* Z = z0 + j;                                                         \
            CYL_ST(Z, s00); CYL_ST(Z + VL, s01); Z += ldz;                         \
            CYL_ST(Z, s10); CYL_ST(Z + VL, s11); Z += ldz;                         \
            CYL_ST(Z, s20); CYL_ST(Z + VL, s21); Z += ldz;                         \
            CYL_ST(Z, s30); CYL_ST(Z + VL, s31);                                   \
            if ((R) > 4) { Z += ldz; CYL_ST(Z, s40); CYL_ST(Z + VL, s41); }        \
            if ((R) > 5) { Z += ldz; CYL_ST(Z, s50); CYL_ST(Z + VL, s51); }        \
        }                                                                          \
    }
typedef float cyl_vf8 __attribute__((vector_size(32)));
typedef double cyl_vd4 __attribute__((vector_size(32)));
/* The later blocks of a pass find the panel in L2, but this body reads 64 bytes
 * of each w-wide panel row per k (a stride of w elements), which the hardware
 * prefetchers follow poorly: each k also prefetches its own k row
 * CYL_PF_DIST_REST ahead.  Kernel micro-bench (this body over a packed panel,
 * K x 4H, all rows of a batch, the variants alternated 41 times in one process,
 * medians), 2-vCPU AMD EPYC (Zen 3, AVX2), 2026-12-04, GFLOP/s without / with
 * distance 24 / 32 / 48: K 1024, 4H 2048, 64 rows 67.6 / 81.8 / 81.4 / 82.2;
 * K 1024, 4H 4096, 16 rows (weights from L3) 30.1 / 44.4 / 45.5 / 47.0; K 512,
 * 4H 2048, 32 rows 91.9 / 95.1 / 93.4 / 92.4; K 256, 4H 1024, 32 rows 74.4 /
 * 75.0 / 72.6 / 72.3.  The same panel as contiguous 16-column strips (a layout
 * this kernel does not use) ran 85.2 / 55.6 / 97.4 / 77.1; built into every
 * body and packer (branch panel-strips-experiment) it moved lstm_forward by
 * 0.88-1.07x on one thread, 0.96-1.08x on two (same CPU, 2026-12-04): not
 * taken.  In lstm_forward (forced path, on / off alternated 9 times in one
 * process, median ratios, two runs; AMD EPYC (2 cores), Zen 3, same day, a
 * noisy host): (25, 16, 1024, 1024) units 0.957 / 0.943 on one thread, 0.874 /
 * 0.990 on two; (50, 64, 512, 512) stacked 0.967 / 0.984, 0.993 / 1.018; (100, 32, 128, 256), (100, 16, 256, 256), (100, 8, 512, 512)
 * 0.97-1.04 but for one 0.77 (stacked (100, 16, 256, 256), two threads): the
 * library's step does more than this product, so it gains less.
 * cyl_panel_pf_rest (above) turns it off. */
#ifndef CYL_PF_DIST_REST
#define CYL_PF_DIST_REST 32
#endif
/* The rows of the next AVX2 block of a pass with `left` rows to go: six-row
 * blocks, then 10 = 5 + 5, 9 = 5 + 4, 5, 4; and how many blocks a pass over
 * nrows rows makes (down to fewer than 4 left, which CYL_ROWS42_PASS takes).
 *
 * Where the panel is not cut into K blocks, 8 = 6 + 2 and 13 = 6 + 6 + 1:
 * a six-row block serves more rows per weight load, and the last rows read
 * the panel from L2 as the blocks did.  Where it is cut (`blocked`,
 * cyl_panel_kblock), the last rows past the blocks read the whole panel again
 * after the blocks have moved on, from L3: so no block leaves fewer than 4
 * rows where it need not (8 = 4 + 4, 13 = 5 + 4 + 4, 14 = 6 + 4 + 4; only 7
 * keeps a last row).  Kernel micro-bench (the product alone, K-blocked at 128
 * KiB, each partition's build run alternately, medians of 31 rounds), 2-vCPU
 * AMD EPYC (Zen 3, AVX2), 2026-12-07, a noisy host, GFLOP/s 6 + 2 against
 * 4 + 4: 8 rows K 4096 4H 1024 (the 2-thread backward's U^T product at
 * (25, 16, 1024, 1024)) 26-28 -> 45-65; K 1024 4H 4096 34-39 -> 43-44; K 2048
 * 4H 2048 31-39 -> 46-47; 14 rows K 4096 28-32 -> 39-55; unblocked, K 256
 * 4H 2048, 8 rows: 55 with 6 + 2 against 46 with 4 + 4 (kept).  In the
 * library (cylstm._cpu.panel_block_rows on / off alternated 9-13 times in one
 * process, median ratios, same CPU and day): lstm_backward on two threads
 * (8 rows a thread) (25, 16, 1024, 1024) 0.942 / 0.949, (50, 16, 512, 512)
 * 0.944 / 1.005; lstm_forward (100, 16, 512, 512) 0.962 / 0.985, (50, 14,
 * 512, 512) 0.982; one thread, 8 rows, 0.99-1.00. */
#define CYL_ROWS6_NEXT(left, blocked)                                              \
    ((blocked) ? ((left) <= 6 ? (left) : (left) == 8 ? 4                           \
                  : ((left) == 9 || (left) == 10 || (left) == 13) ? 5 : 6)         \
     : (((left) >= 11 || ((left) >= 6 && (left) <= 8)) ? 6                         \
        : ((left) == 10 || (left) == 9 || (left) == 5) ? 5 : 4))
/* 1: K-blocked passes split their rows as above; 0: as whole panels do (tests
 * and measuring; set with cyl_panel_set_block_rows, which returns the previous
 * value; it changes no result). */
static int cyl_panel_block_rows = 1;
static inline int cyl_panel_set_block_rows(int on)
{
    int previous = cyl_panel_block_rows;
    cyl_panel_block_rows = on != 0;
    return previous;
}
static inline ptrdiff_t cyl_rows6_passes(ptrdiff_t nrows, int blocked)
{
    ptrdiff_t n = 0;
    while (nrows >= 4) { nrows -= CYL_ROWS6_NEXT(nrows, blocked); n++; }
    return n > 0 ? n : 1;
}
/* cyl_panel_rows6_f32n<R> / _f64n<R>: a block of R rows.  pfn (or NULL): the
 * lines this block streams in, one every pfe k steps (CYL_R6N_PF); each k also
 * prefetches its own k row CYL_PF_DIST_REST ahead while cyl_panel_pf_rest is
 * on, but for the measuring mode cyl_panel_pf_spread == 0, where a block with a
 * stream prefetches nothing else. */
#define CYL_ROWS6N_FN(NAME, T, VT, VL, R)                                          \
__attribute__((target("arch=x86-64-v3")))                                          \
static void NAME(const T* P, ptrdiff_t w, const T* a0, ptrdiff_t ka, ptrdiff_t lda, \
                 const T* b0, ptrdiff_t kb, ptrdiff_t ldb, T* z0, ptrdiff_t ldz,   \
                 const char* pfn, ptrdiff_t pfe, int acc)                          \
{                                                                                  \
    if (pfn && !cyl_panel_pf_spread)                                               \
        CYL_PANEL_ROWS6N_BODY_PF(T, VT, VL, CYL_PF_DIST, R, 0)                     \
    else if (cyl_panel_pf_rest)                                                    \
        CYL_PANEL_ROWS6N_BODY_PF(T, VT, VL, CYL_PF_DIST_REST, R, 1)                \
    else                                                                           \
        CYL_PANEL_ROWS6N_BODY_PF(T, VT, VL, 0, R, 1)                               \
}
CYL_ROWS6N_FN(cyl_panel_rows6_f32n6, float, cyl_vf8, 8, 6)
CYL_ROWS6N_FN(cyl_panel_rows6_f32n5, float, cyl_vf8, 8, 5)
CYL_ROWS6N_FN(cyl_panel_rows6_f32n4, float, cyl_vf8, 8, 4)
CYL_ROWS6N_FN(cyl_panel_rows6_f64n6, double, cyl_vd4, 4, 6)
CYL_ROWS6N_FN(cyl_panel_rows6_f64n5, double, cyl_vd4, 4, 5)
CYL_ROWS6N_FN(cyl_panel_rows6_f64n4, double, cyl_vd4, 4, 4)
#else
#define CYL_STREAM_ROWS6 0
#endif
#else
/* Portable C: the same arithmetic, one column at a time. */
#define CYL_PANEL_ROW_BODY(T, VT, VL)                                              \
    {                                                                              \
        ptrdiff_t j, k;                                                            \
        for (j = 0; j < w; j++) {                                                  \
            T acc = 0;                                                             \
            for (k = 0; k < ka; k++) acc += a[k] * P[k * w + j];                   \
            for (k = 0; k < kb; k++) acc += b[k] * P[(ka + k) * w + j];            \
            z[j] = acc;                                                            \
        }                                                                          \
    }
#endif

/* The passes of the panel functions below: six-row blocks (AVX-512, AVX2; AVX2
 * ends in blocks of 5 or 4 down to fewer than 4 rows left), then blocks of 4
 * rows (a last 3 as 4, one repeated), a last 2 as 2, a last 1 alone. */
#if CYL_STREAM_ROWS6
#define CYL_ROWS6_PASS(ROWS6_FN, VL)                                               \
    if (CYL_ISA_IS_V4 && nrows >= 4 && w % (4 * VL) == 0) {                        \
        /* blocks of CYL_ROWSV_NEXT rows; the next panel (as large as this one, \
         * or smaller: a prefetch past it is harmless) streamed by the first  \
         * ns_ blocks, 1/ns_ each; 4 lines a k step in all (a k row of a      \
         * 4-vector column group) */                                       \
        ptrdiff_t ns_ = next && cyl_panel_pf_spread > 0 ? cyl_rowsv_blocks(nrows) : 0; \
        ns_ = ns_ < cyl_panel_pf_spread ? ns_ : cyl_panel_pf_spread;               \
        const ptrdiff_t nl_ = (ka + kb) * w * (ptrdiff_t)sizeof(*P) / 64;          \
        const ptrdiff_t ch_ = ns_ ? (nl_ + ns_ - 1) / ns_ : 0;                     \
        const int pl_ = ns_ ? (int)((4 + ns_ - 1) / ns_) : 0;                      \
        for (ptrdiff_t i_ = 0; nrows - r >= 4; i_++) {                             \
            const int R_ = CYL_ROWSV_NEXT(nrows - r);                              \
            const char* q_ = NULL;                                                 \
            const char* e_ = NULL;                                                 \
            if (i_ < ns_) {                                                        \
                q_ = (const char*)next + 64 * ch_ * i_;                            \
                e_ = (const char*)next + 64 * (ch_ * (i_ + 1) < nl_ ? ch_ * (i_ + 1) : nl_); \
            }                                                                      \
            (r == 0 ? (R_ == 6 ? ROWS6_FN##v6pf : R_ == 5 ? ROWS6_FN##v5pf : ROWS6_FN##v4pf) \
                    : (R_ == 6 ? ROWS6_FN##v6 : R_ == 5 ? ROWS6_FN##v5 : ROWS6_FN##v4))(   \
                P, w, a0 + r * lda, ka, lda, b0 + r * ldb, kb, ldb, z0 + r * ldz, ldz, \
                q_, e_, pl_);                                                      \
            r += R_;                                                               \
        }                                                                          \
    }                                                                              \
    if (CYL_ISA == 1 && nrows >= 4 && w % (VL) == 0) {                             \
        const ptrdiff_t K_ = ka + kb;                                              \
        const ptrdiff_t kc_ = whole ? K_ : cyl_panel_kblock(K_, w * (ptrdiff_t)sizeof(*P), nrows); \
        ptrdiff_t r1_ = 0;                                                         \
        for (ptrdiff_t k0_ = 0; k0_ < K_; k0_ += kc_) {                            \
            const ptrdiff_t k1_ = k0_ + kc_ < K_ ? k0_ + kc_ : K_;                 \
            const ptrdiff_t ka_ = (ka < k1_ ? ka : k1_) - k0_ > 0                  \
                                ? (ka < k1_ ? ka : k1_) - k0_ : 0;                 \
            const ptrdiff_t ab_ = k0_ < ka ? k0_ : ka, bb_ = k0_ > ka ? k0_ - ka : 0; \
            /* the next block (or the next panel): streamed in by the first np_ \
             * passes, 1/np_ each (CYL_PANEL_PF_SPREAD) */                       \
            const char* nx_ = k1_ < K_ ? (const char*)(P + k1_ * w) : (const char*)next; \
            ptrdiff_t np_ = 1, ip_ = 0;                                            \
            if (kc_ < K_ && cyl_panel_pf_spread > 1) {                             \
                np_ = cyl_rows6_passes(nrows, cyl_panel_block_rows);               \
                np_ = np_ < cyl_panel_pf_spread ? np_ : cyl_panel_pf_spread;       \
            }                                                                      \
            const ptrdiff_t ch_ = ((k1_ - k0_) * w * (ptrdiff_t)sizeof(*P) / 64 + np_ - 1) / np_; \
            r1_ = 0;                                                               \
            while (nrows - r1_ >= 4) {                                             \
                const int R_ = CYL_ROWS6_NEXT(nrows - r1_, kc_ < K_ && cyl_panel_block_rows); \
                (R_ == 6 ? ROWS6_FN##n6 : R_ == 5 ? ROWS6_FN##n5 : ROWS6_FN##n4)(  \
                    P + k0_ * w, w, a0 + r1_ * lda + ab_, ka_, lda,                \
                    b0 + r1_ * ldb + bb_, k1_ - k0_ - ka_, ldb, z0 + r1_ * ldz,    \
                    ldz, nx_ && ip_ < np_ ? nx_ + 64 * ch_ * ip_ : NULL, np_,      \
                    k0_ > 0);                                                      \
                r1_ += R_;                                                         \
                ip_++;                                                             \
            }                                                                      \
        }                                                                          \
        r = r1_;                                                                   \
    }
#else
#define CYL_ROWS6_PASS(ROWS6_FN, VL)
#endif
#if CYL_STREAM_VECTOR
#define CYL_ROWS42_PASS(T, VT, VL)                                                 \
    for (; nrows - r >= 3; r += 4) {                                               \
        const ptrdiff_t r0 = r;                                                    \
        CYL_PANEL_ROWS4_BODY(T, VT, VL)                                            \
    }                                                                              \
    if (r > nrows)                                                                 \
        r = nrows;                                                                 \
    if (nrows - r == 2) {                                                          \
        const ptrdiff_t r0 = r;                                                    \
        CYL_PANEL_ROWS2_BODY(T, VT, VL)                                            \
        r += 2;                                                                    \
    }
#else
#define CYL_ROWS42_PASS(T, VT, VL)
#endif
/* The row bodies run on vectors of the variant's register width: 64 bytes
 * (AVX-512, and single builds), 32 (x86-64-v3: AVX2), 16 (the baseline's SSE2).
 * GCC lowers a 64-byte vector type on AVX2 into pairs of registers and builds
 * every broadcast of a row value on the stack: the x86-64-v3 variant ran 5-10x
 * slower than BLAS (and than the baseline) before it had its own width
 * ((T, B, I, H) = (100, 4, 256, 256) forward: 175 ms against 10 ms; 2-vCPU
 * Xeon, CYLSTM_CPU=avx2, 2026-12-01).  The layout (CYL_LAYOUT_VL) stays 64
 * bytes, a whole number of vectors of each width. */
#define CYL_REG_BYTES (CYL_ISA == 1 ? 32 : CYL_ISA == 0 ? 16 : 64)
#if CYL_STREAM_VECTOR
#define CYL_DECLARE_VTN(T)                                                         \
        typedef T VTn __attribute__((vector_size(CYL_REG_BYTES)));                 \
        enum { VLn = CYL_REG_BYTES / sizeof(T) };
#else
#define CYL_DECLARE_VTN(T) typedef T VTn; enum { VLn = 1 };
#endif
/* A panel one 64-byte vector wide (a Dense head of a few units, the last panel
 * of a layer whose units are not a multiple of the span).  With one sum per
 * output, a row is one multiply-add chain K long there: a Dense(1) head over
 * K = 128 took ~150 ns of a 5.7 us step at batch 1 ((64, 128), AMD EPYC
 * (2 cores), Zen 3, 2026-12-03).  So each output is summed in NS_ interleaved
 * partial sums (k = s, s + NS_, ... into sum s; the last n % NS_ rows of a part
 * into sum 0; each part, a then b, on its own), added pairwise at the end
 * (s_t += s_(t + NS_/2), ...).  R_ rows share each weight load (past the last
 * row, the last is repeated, as in the four-row body); every row gets the same
 * bits in any block.  NS_ and R_ fill the registers: 4 sums x 6 rows of one
 * vector on AVX-512 (32 registers), 2 x 3 rows of two on AVX2, 2 x 1 of four
 * on SSE2. */
#if CYL_STREAM_VECTOR
#define CYL_PANEL_NARROW_PASS(T)                                                   \
    if (w == CYL_LAYOUT_VL(T)) {                                                   \
        enum { NV_ = 64 / (VLn * (int)sizeof(T)),                                  \
               NS_ = CYL_REG_BYTES == 64 ? 4 : 2,                                  \
               R_ = CYL_REG_BYTES == 64 ? 6 : CYL_REG_BYTES == 32 ? 3 : 1 };       \
        for (r = 0; r < nrows; r += R_) {                                          \
            const T* A_[R_];                                                       \
            const T* B_[R_];                                                       \
            VTn s_[R_][NS_][NV_];                                                  \
            int ri_, si_, vi_;                                                     \
            ptrdiff_t k;                                                           \
            const T* p = P;                                                        \
            _Pragma("GCC unroll 6") for (ri_ = 0; ri_ < R_; ri_++) {               \
                const ptrdiff_t row_ = r + ri_ < nrows ? r + ri_ : nrows - 1;      \
                A_[ri_] = a0 + row_ * lda;                                         \
                B_[ri_] = b0 + row_ * ldb;                                         \
                _Pragma("GCC unroll 4") for (si_ = 0; si_ < NS_; si_++)            \
                    _Pragma("GCC unroll 4") for (vi_ = 0; vi_ < NV_; vi_++)        \
                        s_[ri_][si_][vi_] = (VTn){0};                              \
            }                                                                      \
            CYL_NARROW_PART(T, A_, ka)                                             \
            CYL_NARROW_PART(T, B_, kb)                                             \
            _Pragma("GCC unroll 6") for (ri_ = 0; ri_ < R_; ri_++) {               \
                const ptrdiff_t row_ = r + ri_ < nrows ? r + ri_ : nrows - 1;      \
                _Pragma("GCC unroll 4") for (vi_ = 0; vi_ < NV_; vi_++) {          \
                    _Pragma("GCC unroll 2") for (si_ = 0; si_ < NS_ / 2; si_++)    \
                        s_[ri_][si_][vi_] += s_[ri_][si_ + NS_ / 2][vi_];          \
                    _Pragma("GCC unroll 1") for (si_ = 0; si_ < NS_ / 4; si_++)    \
                        s_[ri_][si_][vi_] += s_[ri_][si_ + NS_ / 4][vi_];          \
                    CYL_ST(z0 + row_ * ldz + VLn * vi_, s_[ri_][0][vi_]);          \
                }                                                                  \
            }                                                                      \
        }                                                                          \
        return;                                                                    \
    }
/* the n rows of one part (row values V[ri][k]) of the panel, k into sum k % NS_ */
#define CYL_NARROW_PART(T, V, n)                                                   \
    for (k = 0; k + NS_ <= (n); k += NS_, p += NS_ * CYL_LAYOUT_VL(T))             \
        _Pragma("GCC unroll 4") for (si_ = 0; si_ < NS_; si_++)                    \
            _Pragma("GCC unroll 4") for (vi_ = 0; vi_ < NV_; vi_++) {              \
                const VTn w_ = CYL_LD(VTn, p + si_ * CYL_LAYOUT_VL(T) + VLn * vi_); \
                _Pragma("GCC unroll 6") for (ri_ = 0; ri_ < R_; ri_++)             \
                    s_[ri_][si_][vi_] += V[ri_][k + si_] * w_;                     \
            }                                                                      \
    for (; k < (n); k++, p += CYL_LAYOUT_VL(T))                                    \
        _Pragma("GCC unroll 4") for (vi_ = 0; vi_ < NV_; vi_++) {                  \
            const VTn w_ = CYL_LD(VTn, p + VLn * vi_);                             \
            _Pragma("GCC unroll 6") for (ri_ = 0; ri_ < R_; ri_++)                 \
                s_[ri_][0][vi_] += V[ri_][k] * w_;                                 \
        }
#else
#define CYL_PANEL_NARROW_PASS(T)
#endif
#define CYL_PANEL_FN_BODY(T, VT64, VL64, ROWS6_FN)                                 \
    {                                                                              \
        CYL_DECLARE_VTN(T)                                                         \
        ptrdiff_t r = 0;                                                           \
        (void)next; (void)whole;                                                   \
        CYL_PANEL_NARROW_PASS(T)                                                   \
        CYL_ROWS6_PASS(ROWS6_FN, VL64)                                             \
        CYL_ROWS42_PASS(T, VTn, VLn)                                               \
        for (; r < nrows; r++) {                                                   \
            const T* a = a0 + r * lda;                                             \
            const T* b = b0 + r * ldb;                                             \
            T* z = z0 + r * ldz;                                                   \
            CYL_PANEL_ROW_BODY(T, VTn, VLn)                                        \
        }                                                                          \
    }

/*
 * z[r, 0:w] = [a[r, 0:ka], b[r, 0:kb]] @ panel, for r in [0, nrows).
 * w is a whole number of 64-byte vectors (CYL_LAYOUT_VL: the packed layout).
 * Row r of a, b and z starts at a + r*lda, b + r*ldb, z + r*ldz.
 * kb may be 0 (b is then not read: Dense layers).
 * next: the panel the caller computes after this one (any readable address,
 * or NULL): the AVX2 six-row pass streams it into the cache while it computes
 * (see CYL_PANEL_ROWS6N_BODY_PF).
 * whole: never in K blocks (cyl_panel_kblock), so that every element of z is
 * stored once, with its final value: for products that a second thread may
 * redo into the same z while the first still runs (a late worker's piece).
 */
CYL_STREAM_KERNEL(cyl_panel_next_f32,
    (const float* P, ptrdiff_t w, ptrdiff_t nrows,
     const float* a0, ptrdiff_t ka, ptrdiff_t lda,
     const float* b0, ptrdiff_t kb, ptrdiff_t ldb,
     float* z0, ptrdiff_t ldz, const void* next, int whole),
    (P, w, nrows, a0, ka, lda, b0, kb, ldb, z0, ldz, next, whole),
    CYL_PANEL_FN_BODY, (float, cyl_vf, CYL_STREAM_VLF, cyl_panel_rows6_f32))

CYL_STREAM_KERNEL(cyl_panel_next_f64,
    (const double* P, ptrdiff_t w, ptrdiff_t nrows,
     const double* a0, ptrdiff_t ka, ptrdiff_t lda,
     const double* b0, ptrdiff_t kb, ptrdiff_t ldb,
     double* z0, ptrdiff_t ldz, const void* next, int whole),
    (P, w, nrows, a0, ka, lda, b0, kb, ldb, z0, ldz, next, whole),
    CYL_PANEL_FN_BODY, (double, cyl_vd, CYL_STREAM_VLD, cyl_panel_rows6_f64))

/*
 * The same product over bfloat16 weights (the upper 16 bits of float32, rounded
 * to nearest even when packed): half the bytes to stream, for models whose
 * weights come from L3 or memory every step.  Inputs, accumulation and outputs
 * stay float32; a weight widens exactly (bf16 -> f32 is a 16-bit shift).
 *
 * Layout: as the float32 panels, except that in the main block every group of
 * 32 columns c0..c31 of a row is stored interleaved c0 c16 c1 c17 ... c15 c31,
 * so one 64-byte load holds 16 32-bit lanes (c_j | c_{j+16} << 16): `lane << 16`
 * is columns c0..c15 as float32 and `lane & 0xffff0000` columns c16..c31 -- two
 * cheap integer operations per 32 weights, no widening shuffles.  A last group
 * of 16 columns (w % 32 == 16) is stored plainly.
 */
static inline float cyl_bf16_to_f32(uint16_t v)
{
    uint32_t u = (uint32_t)v << 16;
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

/* Position of column j (0 <= j < w) of a bf16 main-block row in memory. */
static inline ptrdiff_t cyl_bf16_slot(ptrdiff_t j, ptrdiff_t w)
{
    ptrdiff_t g = j / 32, m = j % 32;
    if (g * 32 + 32 > w)
        return j;                               /* the plain last 16 */
    return g * 32 + (m < 16 ? 2 * m : 2 * (m - 16) + 1);
}

/* The 64- and 32-column groups of the main block, with vector extensions, at
 * the variant's register width (VTn, VLn: CYL_DECLARE_VTN): a group's 16 lanes
 * are 16 / VLn registers, register v holding columns v VLn .. (v + 1) VLn - 1
 * (low halves) and 16 + v VLn .. (high halves).  At 64 bytes on AVX2 GCC built
 * each broadcast on the stack, and a step ran 10x slower than float32
 * ((I, H) = (256, 512) at batch 1: 1176 against 125 us, AMD EPYC (2 cores),
 * Zen 3, 2026-12-02).  Every output is one accumulator summed in k order, as
 * in the other bodies. */
/* The one-row bf16 groups on AVX2 (CYL_ISA == 1) prefetch the k row
 * CYL_BF16_PFD ahead.  A k row of a 64-column group is 128 bytes read by ~20
 * instructions (loads, shift, mask, FMAs), three times the float32 body's per
 * byte, so the reorder window holds a third of the misses in flight and the
 * stream from L3 ran at 51 GB/s where float32's reached 66.  Streaming runner
 * (256, 512) at batch 1, bf16 us per step, distance 0 / 8 / 16 / 32, builds
 * alternated by process, 3 rounds: one thread 62.1-63.5 / 58.0-58.4 /
 * 54.4-63.5 / 56.3-65.3, two threads 34.5-38.9 / 31.8-35.9 / 31.6-36.5 (bf16
 * over float32 0.66 -> 0.61 on two threads); 2-vCPU AMD EPYC (Zen 3, AVX2),
 * 2026-12-06.  The same weights as int8 (vpmaddwd rows, 2 pairs a loop) did
 * not move with a prefetch at 2, 4 or 8 loops ahead (30-35 us), and on the
 * 2-core Zen 4 (AVX-512) a prefetch made its bf16 step slower (2026-12-06):
 * AVX2 only. */
#ifndef CYL_BF16_PFD
#define CYL_BF16_PFD 8
#endif
#if CYL_STREAM_VECTOR
#define CYL_BF16_GROUPS(NG)                                                          \
        for (; j + 32 * (NG) <= w; j += 32 * (NG)) {                                 \
            enum { NV_ = 16 / VLn };                                                 \
            VTn s_[NG][NV_][2];                                                      \
            int gi_, vi_;                                                              \
            const uint16_t* p = P + j;                                               \
            _Pragma("GCC unroll 2") for (gi_ = 0; gi_ < (NG); gi_++)                    \
                _Pragma("GCC unroll 4") for (vi_ = 0; vi_ < NV_; vi_++)                 \
                    s_[gi_][vi_][0] = s_[gi_][vi_][1] = (VTn){0};                        \
            for (k = 0; k < ka + kb; k++, p += w) {                                  \
                const float x_ = k < ka ? a[k] : b[k - ka];                          \
                if (CYL_ISA == 1 && CYL_BF16_PFD) {                                  \
                    _Pragma("GCC unroll 2") for (gi_ = 0; gi_ < (NG); gi_++)            \
                        __builtin_prefetch(p + CYL_BF16_PFD * w + 32 * gi_, 0, 3);   \
                }                                                                    \
                _Pragma("GCC unroll 2") for (gi_ = 0; gi_ < (NG); gi_++)                \
                    _Pragma("GCC unroll 4") for (vi_ = 0; vi_ < NV_; vi_++) {           \
                        const VTu u_ = CYL_LD(VTu, p + 32 * gi_ + 2 * VLn * vi_);      \
                        s_[gi_][vi_][0] += x_ * (VTn)(u_ << 16);                       \
                        s_[gi_][vi_][1] += x_ * (VTn)(u_ & 0xffff0000u);               \
                    }                                                                \
            }                                                                        \
            _Pragma("GCC unroll 2") for (gi_ = 0; gi_ < (NG); gi_++)                    \
                _Pragma("GCC unroll 4") for (vi_ = 0; vi_ < NV_; vi_++) {               \
                    CYL_ST(z + j + 32 * gi_ + VLn * vi_, s_[gi_][vi_][0]);               \
                    CYL_ST(z + j + 32 * gi_ + 16 + VLn * vi_, s_[gi_][vi_][1]);          \
                }                                                                    \
        }
#define CYL_BF16_VECTOR_PART                                                         \
        {                                                                            \
            typedef uint32_t VTu __attribute__((vector_size(VLn * 4)));             \
            typedef uint16_t VTh_ __attribute__((vector_size(VLn * 2)));            \
            CYL_BF16_GROUPS(2)                                                       \
            CYL_BF16_GROUPS(1)                                                       \
            /* a last 16 columns, stored plainly: widened 16 to 32 bits */            \
            if (j + 16 <= w) {                                                       \
                enum { NV_ = 16 / VLn };                                             \
                VTn s_[NV_];                                                         \
                int vi_;                                                             \
                const uint16_t* p = P + j;                                           \
                _Pragma("GCC unroll 4") for (vi_ = 0; vi_ < NV_; vi_++)              \
                    s_[vi_] = (VTn){0};                                              \
                for (k = 0; k < ka + kb; k++, p += w) {                              \
                    const float x_ = k < ka ? a[k] : b[k - ka];                      \
                    _Pragma("GCC unroll 4") for (vi_ = 0; vi_ < NV_; vi_++) {        \
                        const VTu u_ = __builtin_convertvector(                      \
                            CYL_LD(VTh_, p + VLn * vi_), VTu);                       \
                        s_[vi_] += x_ * (VTn)(u_ << 16);                             \
                    }                                                                \
                }                                                                    \
                _Pragma("GCC unroll 4") for (vi_ = 0; vi_ < NV_; vi_++)              \
                    CYL_ST(z + j + VLn * vi_, s_[vi_]);                              \
                j += 16;                                                             \
            }                                                                        \
        }
/* Several rows share each load and widening of the weights: a batch of streams
 * (StreamPool, a runner of batch > 1) reads the whole panel once per block of
 * rows, not once per row.  Blocks of 4 rows over 32 columns with 32 registers,
 * 2 with 16.  Every output is still one accumulator summed in k order: the same
 * bits as the one-row groups.  Covers the interleaved main block [0, jm) of rows
 * [0, rb).  StreamPool (256, 512) x 32 streams, bf16, one thread: 1874 -> 1075 us
 * (float32: 923); blocks of 6 rows over 64 columns (24 sums, as the float32 body)
 * gave 1087; 2-vCPU Xeon, 2026-12-03. */
#define CYL_BF16_RB(R, NG)                                                           \
            for (; j + 32 * (NG) <= jm; j += 32 * (NG)) {                            \
                VTn s_[R][NG][NV_][2];                                               \
                int ri_, gi_, vi_;                                                   \
                ptrdiff_t k;                                                         \
                const uint16_t* p = P + j;                                           \
                _Pragma("GCC unroll 4") for (ri_ = 0; ri_ < (R); ri_++)              \
                    _Pragma("GCC unroll 2") for (gi_ = 0; gi_ < (NG); gi_++)         \
                        _Pragma("GCC unroll 4") for (vi_ = 0; vi_ < NV_; vi_++)      \
                            s_[ri_][gi_][vi_][0] = s_[ri_][gi_][vi_][1] = (VTn){0};  \
                for (k = 0; k < ka + kb; k++, p += w) {                              \
                    VTn lo_[NG][NV_], hi_[NG][NV_];                                  \
                    _Pragma("GCC unroll 2") for (gi_ = 0; gi_ < (NG); gi_++)         \
                        _Pragma("GCC unroll 4") for (vi_ = 0; vi_ < NV_; vi_++) {    \
                            const VTu u_ = CYL_LD(VTu, p + 32 * gi_ + 2 * VLn * vi_); \
                            lo_[gi_][vi_] = (VTn)(u_ << 16);                         \
                            hi_[gi_][vi_] = (VTn)(u_ & 0xffff0000u);                 \
                        }                                                            \
                    _Pragma("GCC unroll 4") for (ri_ = 0; ri_ < (R); ri_++) {        \
                        const float x_ = k < ka ? a0[(r0 + ri_) * lda + k]           \
                                                : b0[(r0 + ri_) * ldb + k - ka];     \
                        _Pragma("GCC unroll 2") for (gi_ = 0; gi_ < (NG); gi_++)     \
                            _Pragma("GCC unroll 4") for (vi_ = 0; vi_ < NV_; vi_++) { \
                                s_[ri_][gi_][vi_][0] += x_ * lo_[gi_][vi_];          \
                                s_[ri_][gi_][vi_][1] += x_ * hi_[gi_][vi_];          \
                            }                                                        \
                    }                                                                \
                }                                                                    \
                _Pragma("GCC unroll 4") for (ri_ = 0; ri_ < (R); ri_++)              \
                    _Pragma("GCC unroll 2") for (gi_ = 0; gi_ < (NG); gi_++)         \
                        _Pragma("GCC unroll 4") for (vi_ = 0; vi_ < NV_; vi_++) {    \
                            float* zr_ = z0 + (r0 + ri_) * ldz + j + 32 * gi_;       \
                            CYL_ST(zr_ + VLn * vi_, s_[ri_][gi_][vi_][0]);           \
                            CYL_ST(zr_ + 16 + VLn * vi_, s_[ri_][gi_][vi_][1]);      \
                        }                                                            \
            }
#define CYL_BF16_ROW_BLOCKS                                                          \
        {                                                                            \
            enum { R_ = VLn >= 16 ? 4 : 2, NV_ = 16 / VLn };                         \
            typedef uint32_t VTu __attribute__((vector_size(VLn * 4)));             \
            jm = w / 32 * 32;                                                        \
            rb = jm > 0 ? nrows / R_ * R_ : 0;                                       \
            for (ptrdiff_t r0 = 0; r0 < rb; r0 += R_) {                              \
                ptrdiff_t j = 0;                                                     \
                CYL_BF16_RB(R_, 1)                                                   \
            }                                                                        \
        }
#else
#define CYL_BF16_VECTOR_PART
#define CYL_BF16_ROW_BLOCKS
#endif
#define CYL_PANEL_BF16_BODY()                                                           \
    {                                                                                   \
        CYL_DECLARE_VTN(float)                                                          \
        ptrdiff_t r, rb = 0, jm = 0;                                                    \
        CYL_BF16_ROW_BLOCKS                                                             \
        for (r = 0; r < nrows; r++) {                                                   \
            const float* a = a0 + r * lda;                                              \
            const float* b = b0 + r * ldb;                                              \
            float* z = z0 + r * ldz;                                                    \
            ptrdiff_t j = r < rb ? jm : 0, k;                                           \
            CYL_BF16_VECTOR_PART                                                        \
            for (; j < w; j++) {   /* portable C: every column */                     \
                const ptrdiff_t c = cyl_bf16_slot(j, w);                                \
                float acc = 0;                                                          \
                for (k = 0; k < ka; k++)                                                \
                    acc += a[k] * cyl_bf16_to_f32(P[k * w + c]);                        \
                for (k = 0; k < kb; k++)                                                \
                    acc += b[k] * cyl_bf16_to_f32(P[(ka + k) * w + c]);                 \
                z[j] = acc;                                                             \
            }                                                                           \
        }                                                                               \
    }

CYL_STREAM_KERNEL(cyl_panel_bf16,
    (const uint16_t* P, ptrdiff_t w, ptrdiff_t nrows,
     const float* a0, ptrdiff_t ka, ptrdiff_t lda,
     const float* b0, ptrdiff_t kb, ptrdiff_t ldb,
     float* z0, ptrdiff_t ldz),
    (P, w, nrows, a0, ka, lda, b0, kb, ldb, z0, ldz),
    CYL_PANEL_BF16_BODY, ())

/*
 * The same product over int8 weights with float32 column scales (weight-only
 * int8: ``LSTM`` and ``Dense`` layers of a model quantized with
 * ``quantize("int8")``, and runners with ``weights_dtype="int8"``), the rows
 * quantized to int16 per row and step (as ONNX Runtime's DynamicQuantizeLSTM
 * quantizes its activations, with 16 bits instead of 8):
 *
 *     z[r, j] = fma(sum_k bq[r, k] q[ka + k, j] * sb[j], rb[r],
 *                   sum_k aq[r, k] q[k, j] * sa[j] * ra[r])
 *
 * (the products in that order, in float32; without b rows, kb2 = 0, the a part
 * alone).  aq, bq: rows of int16, ka2 and kb2 (ka, kb rounded up to even, the
 * padding 0) apart, from cyl_i8q_quantize, with their scales ra, rb.  The
 * integer sums are exact (cyl_i8q_qmax bounds the activations so that no int32
 * sum can overflow), so a row gives the same bits in any row block, on any
 * thread and at any ISA level.
 *
 * Layout: a panel of w columns is padded to wp = w rounded up to 8 (zero
 * weights) and holds its a part (ka2 rows) then its b part (kb2 rows), each as
 * k pairs: for pair t and column group g (8 columns), 16 bytes
 *
 *     q[2t, c0], q[2t + 1, c0], q[2t, c1], q[2t + 1, c1], ..., q[2t + 1, c7],
 *
 * which vpmovsxbw widens into 16 int16 lanes and vpmaddwd multiplies with a
 * broadcast pair (aq[2t], aq[2t + 1]) into 8 int32 sums: 32 multiply-adds in
 * three instructions (load-widen, vpmaddwd, vpaddd), where widening each weight
 * to float32 took 4 for 8 (the float path's int8 kernel: 117 us per step at
 * (256, 512) against 106 for float32 weights; 2-vCPU AMD EPYC Zen 3,
 * 2026-12-02).  A panel is (ka2 + kb2) * wp bytes; sa and sb hold at least wp
 * readable scales (the packer pads them).
 */
/* The largest |activation| of the int16 rows for sums over K2 = max(ka2, kb2)
 * terms: K2 * 128 * qmax < 2^31 (weights are at most 127 in magnitude). */
static inline float cyl_i8q_qmax(ptrdiff_t K2)
{
    const double q = K2 > 0 ? 2147483647.0 / (128.0 * (double)K2) : 32767.0;
    return q >= 32767.0 ? 32767.0f : (float)(int32_t)q;
}

/* q[r, 0:n2] = rint(x[r, 0:n] * (qmax / max|x[r]|)) (then 0 up to n2), and
 * scale[r] = max|x[r]| / qmax (0 for a zero row), for rows r < nrows of x
 * (ld apart).  Rounds to nearest even with the 1.5 * 2^23 trick (|v| <= qmax
 * < 2^22), as numpy.rint; float32 throughout.  A row holding a NaN or an
 * infinity gets q = 0 and scale NaN, so that its outputs are NaN, as the
 * float32 kernels' would be (never a finite answer from garbage). */
/* (The largest |x| is taken on the bits: for finite floats the order of
 * |x|'s bit patterns (sign cleared) is the order of the values, and NaN and
 * infinity are the patterns from 0x7F800000 up, so one unsigned max finds both
 * the scale and a bad row; integer maxima vectorize, a float sum that went NaN
 * did not: the per-step quantize of h took 11% of an int8 (200, 1, 64, 128)
 * forward, a third of the panel product's time, Intel(R) Xeon(R) Processor (2
 * cores), 2026-12-03.)  The same bits at every ISA level. */
#define CYL_I8Q_QUANTIZE_BODY()                                                    \
    for (ptrdiff_t r = 0; r < nrows; r++) {                                        \
        const float* xr = x + r * ld;                                              \
        int16_t* qr = q + r * n2;                                                  \
        uint32_t mb = 0;                                                           \
        for (ptrdiff_t k = 0; k < n; k++) {                                        \
            uint32_t u;                                                            \
            memcpy(&u, xr + k, sizeof(u));                                         \
            u &= 0x7FFFFFFFu;                                                      \
            mb = u > mb ? u : mb;                                                  \
        }                                                                          \
        ptrdiff_t k = 0;                                                           \
        if (mb >= 0x7F800000u) {                                                   \
            scale[r] = __builtin_nanf("");                                         \
        } else if (mb > 0) {                                                       \
            float m;                                                               \
            memcpy(&m, &mb, sizeof(m));                                            \
            const float inv = qmax / m;                                            \
            /* (v + c) - c is not folded without -ffast-math (setup.py) */         \
            for (; k < n; k++)                                                     \
                qr[k] = (int16_t)(int32_t)((xr[k] * inv + 12582912.0f) - 12582912.0f); \
            scale[r] = m / qmax;                                                   \
        } else {                                                                   \
            scale[r] = 0.0f;                                                       \
        }                                                                          \
        for (; k < n2; k++)                                                        \
            qr[k] = 0;                                                             \
    }

CYL_ISA_KERNEL(cyl_i8q_quantize,
    (const float* x, ptrdiff_t nrows, ptrdiff_t n, ptrdiff_t ld, ptrdiff_t n2, float qmax,
     int16_t* q, float* scale),
    (x, nrows, n, ld, n2, qmax, q, scale),
    CYL_I8Q_QUANTIZE_BODY, ())

/* the finished outputs of one row and one group of 8 columns: part a (acc) or,
 * with ACC, part b added to what part a left in z; n <= 8 columns written */
#define CYL_I8Q_FINISH_SCALAR(zp, n, acc, sc, rs, ACC)                             \
    for (int e_ = 0; e_ < (n); e_++) {                                             \
        const float t_ = (float)(acc)[e_] * (sc)[e_];                              \
        (zp)[e_] = (ACC) ? __builtin_fmaf(t_, (rs), (zp)[e_]) : t_ * (rs);         \
    }

/* Portable C: the same integer sums and the same float32 operations. */
static void cyl_i8q_panel_c(const int8_t* P, const float* sa, const float* sb, ptrdiff_t w,
                            ptrdiff_t nrows, const int16_t* aq, ptrdiff_t ka2,
                            const float* ra, const int16_t* bq, ptrdiff_t kb2,
                            const float* rb, float* z0, ptrdiff_t ldz, int first)
{
    const ptrdiff_t wp = (w + 7) / 8 * 8;
    for (ptrdiff_t r = 0; r < nrows; r++)
        for (ptrdiff_t g = 0; g < wp; g += 8) {
            const ptrdiff_t n = w - g < 8 ? w - g : 8;
            for (int part = first; part < (kb2 > 0 ? 2 : 1); part++) {
                const int8_t* Q = P + (part ? ka2 * wp : 0) + 2 * g;
                const int16_t* x = part ? bq + r * kb2 : aq + r * ka2;
                const ptrdiff_t K2 = part ? kb2 : ka2;
                int32_t acc[8] = {0};
                for (ptrdiff_t t = 0; t < K2 / 2; t++, Q += 2 * wp)
                    for (int e = 0; e < 8; e++)
                        acc[e] += (int32_t)x[2 * t] * Q[2 * e] + (int32_t)x[2 * t + 1] * Q[2 * e + 1];
                float* zp = z0 + r * ldz + g;
                if (part)
                    CYL_I8Q_FINISH_SCALAR(zp, n, acc, sb + g, rb[r], 1)
                else
                    CYL_I8Q_FINISH_SCALAR(zp, n, acc, sa + g, ra[r], 0)
            }
        }
}

/* 0: the int8 AVX-512 body without VNNI even where the CPU has it (tests). */
static int cyl_i8q_vnni_allowed = 1;
static inline int cyl_i8q_allow_vnni(int allowed)
{
    int previous = cyl_i8q_vnni_allowed;
    cyl_i8q_vnni_allowed = allowed != 0;
    return previous;
}

#if CYL_ISA_VARIANTS
#include <immintrin.h>
/* AVX2 (any CPU with x86-64-v3, the AVX-512 ones too): R rows (R <= 4, past
 * nrows the last row is repeated and not written) by C groups of 8 columns,
 * one part (the a or the b rows), into R * C int32 accumulators, two k pairs
 * per iteration (their two products summed before the accumulator: one add
 * chain per two pairs).  The unrolled loop took a (256, 512) step's panels
 * from 45-50 to 31-37 us at one row and 0.90-0.98x the time at four to eight
 * (kernel micro-bench, 2-vCPU AMD EPYC Zen 3, 2026-12-02). */
/* In a block: part ``part``'s weights Q from group g, its K2, and the block's four
 * int16 rows X_ (past nrows the last one repeated). */
#define CYL_I8Q_PART_ROWS                                                          \
            const int8_t* Q = P + (part ? ka2 * wp : 0) + 2 * g;                   \
            const ptrdiff_t K2 = part ? kb2 : ka2;                                 \
            const int16_t* X_[4];                                                  \
            for (int rr = 0; rr < 4; rr++) {                                       \
                const ptrdiff_t row_ = r0 + rr < nrows ? r0 + rr : nrows - 1;      \
                X_[rr] = part ? bq + row_ * kb2 : aq + row_ * ka2;                 \
            }
/* The k pairs left one at a time, at either width: VT the register type, WIDEN
 * the load-widen of a group's k pair (cc-th register of the group), SET1 the
 * broadcast of a row's pair, DP the multiply-accumulate. */
#define CYL_I8Q_TAIL(R, C, VT, WIDEN, SET1, DP, VNNI)                              \
            for (; t < K2 / 2; t++, Q += 2 * wp) {                                 \
                VT q_[C];                                                          \
                _Pragma("GCC unroll 8") for (int cc = 0; cc < (C); cc++)           \
                    q_[cc] = WIDEN(Q, cc);                                         \
                _Pragma("GCC unroll 4") for (int rr = 0; rr < (R); rr++) {         \
                    int32_t pair_;                                                 \
                    memcpy(&pair_, X_[rr] + 2 * t, 4);                             \
                    const VT v_ = SET1(pair_);                                     \
                    _Pragma("GCC unroll 8") for (int cc = 0; cc < (C); cc++)       \
                        s_[rr][cc] = DP(s_[rr][cc], q_[cc], v_, VNNI);             \
                }                                                                  \
            }
#define CYL_I8Q_W256(Q, cc) _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)((Q) + 16 * (cc))))
#define CYL_I8Q_W512(Q, cc) \
    _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i*)((Q) + 32 * (cc))))
#define CYL_I8Q_DP256(acc, q, v, VNNI) _mm256_add_epi32((acc), _mm256_madd_epi16((q), (v)))
#define CYL_I8Q_BLOCK(R, C)                                                        \
    for (; g + (C) * 8 <= wp; g += (C) * 8)                                        \
        for (int part = first; part < (kb2 > 0 ? 2 : 1); part++) {                 \
            CYL_I8Q_PART_ROWS                                                      \
            __m256i s_[R][C];                                                      \
            _Pragma("GCC unroll 4") for (int rr = 0; rr < (R); rr++)               \
                _Pragma("GCC unroll 8") for (int cc = 0; cc < (C); cc++)           \
                    s_[rr][cc] = _mm256_setzero_si256();                           \
            ptrdiff_t t = 0;                                                       \
            /* one row: each group's weights loaded where used (8 groups of two    \
             * widened loads would not fit the 16 registers beside 8 sums); more  \
             * rows: the groups' weights loaded once, then every row's pairs */   \
            if ((R) == 1)                                                          \
            for (; t + 2 <= K2 / 2; t += 2, Q += 4 * wp) {                         \
                int32_t p0_, p1_;                                                  \
                memcpy(&p0_, X_[0] + 2 * t, 4); memcpy(&p1_, X_[0] + 2 * t + 2, 4); \
                const __m256i v0_ = _mm256_set1_epi32(p0_), v1_ = _mm256_set1_epi32(p1_); \
                _Pragma("GCC unroll 8") for (int cc = 0; cc < (C); cc++) {         \
                    const __m256i a_ = _mm256_madd_epi16(_mm256_cvtepi8_epi16(     \
                        _mm_loadu_si128((const __m128i*)(Q + 16 * cc))), v0_);     \
                    const __m256i b_ = _mm256_madd_epi16(_mm256_cvtepi8_epi16(     \
                        _mm_loadu_si128((const __m128i*)(Q + 2 * wp + 16 * cc))), v1_); \
                    s_[0][cc] = _mm256_add_epi32(s_[0][cc], _mm256_add_epi32(a_, b_)); \
                }                                                                  \
            }                                                                      \
            if ((R) > 1)                                                           \
            for (; t + 2 <= K2 / 2; t += 2, Q += 4 * wp) {                         \
                __m256i q0_[C], q1_[C];                                            \
                _Pragma("GCC unroll 8") for (int cc = 0; cc < (C); cc++) {         \
                    q0_[cc] = _mm256_cvtepi8_epi16(                                \
                        _mm_loadu_si128((const __m128i*)(Q + 16 * cc)));           \
                    q1_[cc] = _mm256_cvtepi8_epi16(                                \
                        _mm_loadu_si128((const __m128i*)(Q + 2 * wp + 16 * cc)));  \
                }                                                                  \
                _Pragma("GCC unroll 4") for (int rr = 0; rr < (R); rr++) {         \
                    int32_t p0_, p1_;                                              \
                    memcpy(&p0_, X_[rr] + 2 * t, 4); memcpy(&p1_, X_[rr] + 2 * t + 2, 4); \
                    const __m256i v0_ = _mm256_set1_epi32(p0_), v1_ = _mm256_set1_epi32(p1_); \
                    _Pragma("GCC unroll 8") for (int cc = 0; cc < (C); cc++)       \
                        s_[rr][cc] = _mm256_add_epi32(s_[rr][cc], _mm256_add_epi32( \
                            _mm256_madd_epi16(q0_[cc], v0_), _mm256_madd_epi16(q1_[cc], v1_))); \
                }                                                                  \
            }                                                                      \
            CYL_I8Q_TAIL(R, C, __m256i, CYL_I8Q_W256, _mm256_set1_epi32, CYL_I8Q_DP256, 0) \
            _Pragma("GCC unroll 4") for (int rr = 0; rr < (R); rr++) {             \
                if (r0 + rr >= nrows)                                              \
                    continue;                                                      \
                _Pragma("GCC unroll 8") for (int cc = 0; cc < (C); cc++) {         \
                    const ptrdiff_t j_ = g + 8 * cc;                               \
                    float* zp = z0 + (r0 + rr) * ldz + j_;                         \
                    const __m256 t_ = _mm256_mul_ps(_mm256_cvtepi32_ps(s_[rr][cc]), \
                        _mm256_loadu_ps((part ? sb : sa) + j_));                   \
                    const __m256 rs_ = _mm256_set1_ps(part ? rb[r0 + rr] : ra[r0 + rr]); \
                    if (w - j_ >= 8) {                                             \
                        _mm256_storeu_ps(zp, part ? _mm256_fmadd_ps(t_, rs_, _mm256_loadu_ps(zp)) \
                                                  : _mm256_mul_ps(t_, rs_));       \
                    } else {   /* the padded last group: w - j_ columns */         \
                        float o_[8], t8_[8], r8_[8];                               \
                        _mm256_storeu_ps(t8_, t_);                                 \
                        _mm256_storeu_ps(r8_, rs_);                                \
                        for (int e_ = 0; e_ < w - j_; e_++)                        \
                            o_[e_] = part ? __builtin_fmaf(t8_[e_], r8_[e_], zp[e_]) \
                                          : t8_[e_] * r8_[e_];                     \
                        memcpy(zp, o_, (size_t)(w - j_) * sizeof(float));          \
                    }                                                              \
                }                                                                  \
            }                                                                      \
        }

CYL_TARGET_V3 static void cyl_i8q_panel_v3(const int8_t* P, const float* sa, const float* sb,
                                           ptrdiff_t w, ptrdiff_t nrows, const int16_t* aq,
                                           ptrdiff_t ka2, const float* ra, const int16_t* bq,
                                           ptrdiff_t kb2, const float* rb, float* z0,
                                           ptrdiff_t ldz, int first)
{
    const ptrdiff_t wp = (w + 7) / 8 * 8;
    for (ptrdiff_t r0 = 0; r0 < nrows; r0 += (nrows - r0 >= 2 ? 4 : 1)) {
        ptrdiff_t g = 0;
        if (nrows - r0 >= 2) {
            CYL_I8Q_BLOCK(4, 2)
            CYL_I8Q_BLOCK(4, 1)
        } else {
            CYL_I8Q_BLOCK(1, 8)
            CYL_I8Q_BLOCK(1, 2)
            CYL_I8Q_BLOCK(1, 1)
        }
    }
}

/* AVX-512 (x86-64-v4): the same blocks at twice the width, C groups of 16
 * columns (two 8-column groups of the layout, 32 contiguous bytes per k pair,
 * widened to 32 int16 lanes: int32 lanes 0-7 are the first group's columns,
 * 8-15 the second's), with VNNI's vpdpwssd (multiply pairs and add to the
 * accumulator: one instruction for vpmaddwd + vpaddd) where the CPU has it.
 * The groups left past the last whole 16 (a last group of 8) take the AVX2
 * blocks.  The integer sums are the same exact ones, so are the bits. */
#define CYL_I8Q_DP512(acc, q, v, VNNI)                                             \
    ((VNNI) ? _mm512_dpwssd_epi32((acc), (q), (v))                                 \
            : _mm512_add_epi32((acc), _mm512_madd_epi16((q), (v))))
#define CYL_I8Q_BLOCK512(R, C, VNNI)                                               \
    for (; g + (C) * 16 <= wp; g += (C) * 16)                                      \
        for (int part = first; part < (kb2 > 0 ? 2 : 1); part++) {                 \
            CYL_I8Q_PART_ROWS                                                      \
            __m512i s_[R][C];                                                      \
            _Pragma("GCC unroll 4") for (int rr = 0; rr < (R); rr++)               \
                _Pragma("GCC unroll 8") for (int cc = 0; cc < (C); cc++)           \
                    s_[rr][cc] = _mm512_setzero_si512();                           \
            ptrdiff_t t = 0;                                                       \
            /* one row: two sets of sums over alternate k pairs, so that a narrow  \
             * block (C = 1 or 2) still has four add chains in flight */          \
            if ((R) == 1) {                                                        \
                __m512i u_[C];                                                     \
                _Pragma("GCC unroll 8") for (int cc = 0; cc < (C); cc++)           \
                    u_[cc] = _mm512_setzero_si512();                               \
                for (; t + 2 <= K2 / 2; t += 2, Q += 4 * wp) {                     \
                    int32_t p0_, p1_;                                              \
                    memcpy(&p0_, X_[0] + 2 * t, 4); memcpy(&p1_, X_[0] + 2 * t + 2, 4); \
                    const __m512i v0_ = _mm512_set1_epi32(p0_), v1_ = _mm512_set1_epi32(p1_); \
                    _Pragma("GCC unroll 8") for (int cc = 0; cc < (C); cc++) {     \
                        s_[0][cc] = CYL_I8Q_DP512(s_[0][cc], _mm512_cvtepi8_epi16( \
                            _mm256_loadu_si256((const __m256i*)(Q + 32 * cc))), v0_, VNNI); \
                        u_[cc] = CYL_I8Q_DP512(u_[cc], _mm512_cvtepi8_epi16(       \
                            _mm256_loadu_si256((const __m256i*)(Q + 2 * wp + 32 * cc))), \
                            v1_, VNNI);                                            \
                    }                                                              \
                }                                                                  \
                _Pragma("GCC unroll 8") for (int cc = 0; cc < (C); cc++)           \
                    s_[0][cc] = _mm512_add_epi32(s_[0][cc], u_[cc]);               \
            }                                                                      \
            CYL_I8Q_TAIL(R, C, __m512i, CYL_I8Q_W512, _mm512_set1_epi32, CYL_I8Q_DP512, VNNI) \
            _Pragma("GCC unroll 4") for (int rr = 0; rr < (R); rr++) {             \
                if (r0 + rr >= nrows)                                              \
                    continue;                                                      \
                _Pragma("GCC unroll 8") for (int cc = 0; cc < (C); cc++) {         \
                    const ptrdiff_t j_ = g + 16 * cc;                              \
                    const ptrdiff_t n_ = w - j_ < 16 ? w - j_ : 16;                \
                    const __mmask16 m_ = n_ >= 16 ? (__mmask16)0xFFFF              \
                                                  : (__mmask16)((1u << n_) - 1u);  \
                    float* zp = z0 + (r0 + rr) * ldz + j_;                         \
                    const __m512 t_ = _mm512_mul_ps(_mm512_cvtepi32_ps(s_[rr][cc]), \
                        _mm512_loadu_ps((part ? sb : sa) + j_));                   \
                    const __m512 rs_ = _mm512_set1_ps(part ? rb[r0 + rr] : ra[r0 + rr]); \
                    _mm512_mask_storeu_ps(zp, m_, part                             \
                        ? _mm512_fmadd_ps(t_, rs_, _mm512_maskz_loadu_ps(m_, zp))  \
                        : _mm512_mul_ps(t_, rs_));                                 \
                }                                                                  \
            }                                                                      \
        }

#define CYL_I8Q_PANEL_V4(NAME, TARGET, VNNI)                                       \
TARGET static void NAME(const int8_t* P, const float* sa, const float* sb,         \
                        ptrdiff_t w, ptrdiff_t nrows, const int16_t* aq,           \
                        ptrdiff_t ka2, const float* ra, const int16_t* bq,         \
                        ptrdiff_t kb2, const float* rb, float* z0, ptrdiff_t ldz,  \
                        int first)                                                 \
{                                                                                  \
    const ptrdiff_t wp = (w + 7) / 8 * 8;                                          \
    for (ptrdiff_t r0 = 0; r0 < nrows; r0 += (nrows - r0 >= 2 ? 4 : 1)) {          \
        ptrdiff_t g = 0;                                                           \
        if (nrows - r0 >= 2) {                                                     \
            CYL_I8Q_BLOCK512(4, 2, VNNI)                                           \
            CYL_I8Q_BLOCK512(4, 1, VNNI)                                           \
            CYL_I8Q_BLOCK(4, 1)                                                    \
        } else {                                                                   \
            CYL_I8Q_BLOCK512(1, 8, VNNI)                                           \
            CYL_I8Q_BLOCK512(1, 4, VNNI)                                           \
            CYL_I8Q_BLOCK512(1, 2, VNNI)                                           \
            CYL_I8Q_BLOCK512(1, 1, VNNI)                                           \
            CYL_I8Q_BLOCK(1, 1)                                                    \
        }                                                                          \
    }                                                                              \
}
CYL_I8Q_PANEL_V4(cyl_i8q_panel_v4, CYL_TARGET_V4, 0)
CYL_I8Q_PANEL_V4(cyl_i8q_panel_v4vnni,
                 __attribute__((target("arch=x86-64-v4,avx512vnni"))), 1)

/* Whether the CPU has AVX512-VNNI (asked once). */
static int cyl_i8q_vnni_cache = -1;
static inline int cyl_i8q_vnni(void)
{
    if (cyl_i8q_vnni_cache < 0) {
        __builtin_cpu_init();
        cyl_i8q_vnni_cache = __builtin_cpu_supports("avx512vnni") ? 1 : 0;
    }
    return cyl_i8q_vnni_cache && cyl_i8q_vnni_allowed;
}
#endif

/* The ISA level's body from part ``first`` (0: both parts; 1: the b part alone). */
static inline void cyl_i8q_panel(const int8_t* P, const float* sa, const float* sb,
                                 ptrdiff_t w, ptrdiff_t nrows, const int16_t* aq,
                                 ptrdiff_t ka2, const float* ra, const int16_t* bq,
                                 ptrdiff_t kb2, const float* rb, float* z0, ptrdiff_t ldz,
                                 int first)
{
#if CYL_ISA_VARIANTS
    const int level = cyl_cpu_level();
    if (level >= 2 && cyl_i8q_vnni()) {
        cyl_i8q_panel_v4vnni(P, sa, sb, w, nrows, aq, ka2, ra, bq, kb2, rb, z0, ldz, first);
        return;
    }
    if (level >= 2) {
        cyl_i8q_panel_v4(P, sa, sb, w, nrows, aq, ka2, ra, bq, kb2, rb, z0, ldz, first);
        return;
    }
    if (level >= 1) {
        cyl_i8q_panel_v3(P, sa, sb, w, nrows, aq, ka2, ra, bq, kb2, rb, z0, ldz, first);
        return;
    }
#endif
    cyl_i8q_panel_c(P, sa, sb, w, nrows, aq, ka2, ra, bq, kb2, rb, z0, ldz, first);
}

/* z[r, 0:w] for rows r < nrows (ldz apart): see the layout above. */
static inline void cyl_panel_i8(const int8_t* P, const float* sa, const float* sb,
                                ptrdiff_t w, ptrdiff_t nrows, const int16_t* aq,
                                ptrdiff_t ka2, const float* ra, const int16_t* bq,
                                ptrdiff_t kb2, const float* rb, float* z0, ptrdiff_t ldz)
{
    cyl_i8q_panel(P, sa, sb, w, nrows, aq, ka2, ra, bq, kb2, rb, z0, ldz, 0);
}

/* The b part alone (kb2 > 0), added to the a part that z already holds: with z from
 * cyl_panel_i8 over the a rows only (kb2 = 0; any row block, for instance every time
 * step's x_t at once), the same bits as cyl_panel_i8 over both parts, whose b part
 * is this same fma on the same a part.  P is the whole panel (its b part starts
 * ka2 * wp bytes in). */
static inline void cyl_panel_i8_b(const int8_t* P, const float* sb, ptrdiff_t w,
                                  ptrdiff_t nrows, ptrdiff_t ka2, const int16_t* bq,
                                  ptrdiff_t kb2, const float* rb, float* z0, ptrdiff_t ldz)
{
    cyl_i8q_panel(P, sb, sb, w, nrows, bq, ka2, rb, bq, kb2, rb, z0, ldz, 1);
}

/* Threads in the current OpenMP team (1 outside a parallel region, and without
 * OpenMP).  The team may be smaller than asked for (nested regions, OMP_DYNAMIC,
 * thread limits), so work is split by this, never by the number requested. */
static int cyl_stream_team_size(void)
{
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

/* An orphaned OpenMP barrier: binds to the team of the enclosing parallel
 * region (a no-op outside one, and in a build without OpenMP). */
static void cyl_stream_barrier(void)
{
#ifdef _OPENMP
#pragma omp barrier
#endif
}

/* Rows [k0, k1) of a packed panel of a transposed matrix (_pack_plain in
 * cylstm/_lstm.pyx, the backward's U^T): dst[k wp + j] = src[j sn + k] for the
 * panel's w columns j, each column j a row of the source, read in address order.
 * On x86-64-v3 and up, 8 x 8 blocks go through registers (eight 32-byte loads
 * from eight source rows, a transpose in shuffles, eight 32-byte stores into
 * eight panel rows), where one element a time wrote a float into each 64-byte
 * line it touched.  A copy: the same values on any path. */
#if CYL_ISA_VARIANTS
#define CYL_PACK_T8_AVX2                                                             \
    if (CYL_ISA >= 1) {                                                              \
        for (; j + 8 <= w; j += 8) {                                                 \
            const float *s0 = src + j * sn;                                          \
            for (k = k0; k + 8 <= k1; k += 8) {                                      \
                __m256 r0 = _mm256_loadu_ps(s0 + k), r1 = _mm256_loadu_ps(s0 + sn + k); \
                __m256 r2 = _mm256_loadu_ps(s0 + 2 * sn + k);                        \
                __m256 r3 = _mm256_loadu_ps(s0 + 3 * sn + k);                        \
                __m256 r4 = _mm256_loadu_ps(s0 + 4 * sn + k);                        \
                __m256 r5 = _mm256_loadu_ps(s0 + 5 * sn + k);                        \
                __m256 r6 = _mm256_loadu_ps(s0 + 6 * sn + k);                        \
                __m256 r7 = _mm256_loadu_ps(s0 + 7 * sn + k);                        \
                __m256 a0 = _mm256_unpacklo_ps(r0, r1), a1 = _mm256_unpackhi_ps(r0, r1); \
                __m256 a2 = _mm256_unpacklo_ps(r2, r3), a3 = _mm256_unpackhi_ps(r2, r3); \
                __m256 a4 = _mm256_unpacklo_ps(r4, r5), a5 = _mm256_unpackhi_ps(r4, r5); \
                __m256 a6 = _mm256_unpacklo_ps(r6, r7), a7 = _mm256_unpackhi_ps(r6, r7); \
                __m256 b0 = _mm256_shuffle_ps(a0, a2, 0x44);                         \
                __m256 b1 = _mm256_shuffle_ps(a0, a2, 0xEE);                         \
                __m256 b2 = _mm256_shuffle_ps(a1, a3, 0x44);                         \
                __m256 b3 = _mm256_shuffle_ps(a1, a3, 0xEE);                         \
                __m256 b4 = _mm256_shuffle_ps(a4, a6, 0x44);                         \
                __m256 b5 = _mm256_shuffle_ps(a4, a6, 0xEE);                         \
                __m256 b6 = _mm256_shuffle_ps(a5, a7, 0x44);                         \
                __m256 b7 = _mm256_shuffle_ps(a5, a7, 0xEE);                         \
                float *d = dst + k * wp + j;                                         \
                _mm256_storeu_ps(d, _mm256_permute2f128_ps(b0, b4, 0x20));           \
                _mm256_storeu_ps(d + wp, _mm256_permute2f128_ps(b1, b5, 0x20));      \
                _mm256_storeu_ps(d + 2 * wp, _mm256_permute2f128_ps(b2, b6, 0x20));  \
                _mm256_storeu_ps(d + 3 * wp, _mm256_permute2f128_ps(b3, b7, 0x20));  \
                _mm256_storeu_ps(d + 4 * wp, _mm256_permute2f128_ps(b0, b4, 0x31));  \
                _mm256_storeu_ps(d + 5 * wp, _mm256_permute2f128_ps(b1, b5, 0x31));  \
                _mm256_storeu_ps(d + 6 * wp, _mm256_permute2f128_ps(b2, b6, 0x31));  \
                _mm256_storeu_ps(d + 7 * wp, _mm256_permute2f128_ps(b3, b7, 0x31));  \
            }                                                                        \
            for (; k < k1; k++)                                                      \
                for (r = 0; r < 8; r++)                                              \
                    dst[k * wp + j + r] = s0[r * sn + k];                            \
        }                                                                            \
    }
#else
#define CYL_PACK_T8_AVX2
#endif
#define CYL_PACK_T_BODY()                                                            \
    {                                                                                \
        ptrdiff_t j = 0, k, r;                                                       \
        (void)r;                                                                     \
        CYL_PACK_T8_AVX2                                                             \
        for (; j < w; j++)                                                           \
            for (k = k0; k < k1; k++)                                                \
                dst[k * wp + j] = src[j * sn + k];                                   \
    }
CYL_ISA_KERNEL(cyl_pack_t_f32,
    (const float *src, ptrdiff_t sn, ptrdiff_t w, ptrdiff_t k0, ptrdiff_t k1, float *dst,
     ptrdiff_t wp),
    (src, sn, w, k0, k1, dst, wp),
    CYL_PACK_T_BODY, ())

#endif /* CYLSTM_PANEL_H */
