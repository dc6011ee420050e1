/*
 * cylstm_cell.h -- the LSTM cell, written once (see cylstm/_cell.pxd for the
 * notation and the numbered backward steps B1-B8).  The forward, the
 * backward and the streaming step all call these four functions.
 *
 * The loops are written for the vectorizer: branch-free activations from
 * cylstm_math.h, `#pragma omp simd`, and -- on GCC/Clang for x86-64 -- one
 * clone per instruction set (AVX-512, AVX2+FMA, baseline SSE2) picked at load
 * time, so a portable wheel still runs 16-wide on a CPU that has AVX-512.
 *
 * H is the number of units processed, gs the stride between the gate blocks
 * [i | f | g | o] of za, zb, bias, gates and dz (gs == H for a whole layer;
 * a thread that owns units j0..j0+H of a wider layer passes gs = units).
 *
 * Aliasing: `gates` may equal `za` and `c_out` may equal `c_prev` (each
 * element is read before it is written, index by index); `dz` may equal
 * `gates`.  Nothing else may overlap.
 */
#ifndef CYLSTM_CELL_H
#define CYLSTM_CELL_H

#include <stddef.h>
#include "cylstm_math.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__INTEL_COMPILER) && \
    defined(__linux__) && !defined(CYLSTM_NO_CLONES) && \
    (defined(__clang__) || __GNUC__ >= 12)
#define CYL_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CYL_CLONES
#endif

#if defined(_OPENMP) || defined(__clang__) || defined(__GNUC__)
#define CYL_SIMD _Pragma("omp simd")
#else
#define CYL_SIMD
#endif

/* z = za + zb + bias (zb may be NULL: pass za holding everything but bias). */
#define CYL_CELL_FORWARD_BODY(T, SIG, TANH)                                   \
    if (zb != NULL) {                                                         \
        CYL_SIMD                                                              \
        for (ptrdiff_t j = 0; j < H; j++) {                                   \
            T zi = za[j] + zb[j] + bias[j];                                   \
            T zf = za[gs + j] + zb[gs + j] + bias[gs + j];                       \
            T zg = za[2 * gs + j] + zb[2 * gs + j] + bias[2 * gs + j];           \
            T zo = za[3 * gs + j] + zb[3 * gs + j] + bias[3 * gs + j];           \
            T gi = SIG(zi), gf = SIG(zf), gg = TANH(zg), go = SIG(zo);        \
            T c = gf * c_prev[j] + gi * gg;                                   \
            gates[j] = gi; gates[gs + j] = gf;                                 \
            gates[2 * gs + j] = gg; gates[3 * gs + j] = go;                     \
            c_out[j] = c;                                                     \
            h_out[j] = go * TANH(c);                                          \
        }                                                                     \
    } else {                                                                  \
        CYL_SIMD                                                              \
        for (ptrdiff_t j = 0; j < H; j++) {                                   \
            T zi = za[j] + bias[j];                                           \
            T zf = za[gs + j] + bias[gs + j];                                   \
            T zg = za[2 * gs + j] + bias[2 * gs + j];                           \
            T zo = za[3 * gs + j] + bias[3 * gs + j];                           \
            T gi = SIG(zi), gf = SIG(zf), gg = TANH(zg), go = SIG(zo);        \
            T c = gf * c_prev[j] + gi * gg;                                   \
            gates[j] = gi; gates[gs + j] = gf;                                 \
            gates[2 * gs + j] = gg; gates[3 * gs + j] = go;                     \
            c_out[j] = c;                                                     \
            h_out[j] = go * TANH(c);                                          \
        }                                                                     \
    }

/* Steps B1-B6; dc: dL/dc from the next step in, dL/dc_prev out. */
#define CYL_CELL_BACKWARD_BODY(T, TANH)                                       \
    CYL_SIMD                                                                  \
    for (ptrdiff_t j = 0; j < H; j++) {                                       \
        T gi = gates[j], gf = gates[gs + j];                                   \
        T gg = gates[2 * gs + j], go = gates[3 * gs + j];                       \
        T dhj = dh[j];                                                        \
        T tc = TANH(c[j]);                                   /* B1 */         \
        T dcj = dc[j] + dhj * go * (1 - tc * tc);            /* B3 */         \
        T cp = c_prev[j];                                                     \
        dz[j] = dcj * gg * gi * (1 - gi);                    /* B4, B6 */     \
        dz[gs + j] = dcj * cp * gf * (1 - gf);                                 \
        dz[2 * gs + j] = dcj * gi * (1 - gg * gg);                             \
        dz[3 * gs + j] = dhj * tc * go * (1 - go);            /* B2, B6 */     \
        dc[j] = dcj * gf;                                    /* B5 */         \
    }

CYL_CLONES static void cyl_cell_forward_f32(
    ptrdiff_t H, ptrdiff_t gs, const float *za, const float *zb, const float *bias,
    const float *c_prev, float *gates, float *c_out, float *h_out)
{
    CYL_CELL_FORWARD_BODY(float, cyl_sigmoidf, cyl_tanhf)
}

CYL_CLONES static void cyl_cell_forward_f64(
    ptrdiff_t H, ptrdiff_t gs, const double *za, const double *zb, const double *bias,
    const double *c_prev, double *gates, double *c_out, double *h_out)
{
    CYL_CELL_FORWARD_BODY(double, cyl_sigmoid, cyl_tanh)
}

CYL_CLONES static void cyl_cell_backward_f32(
    ptrdiff_t H, ptrdiff_t gs, const float *gates, const float *c, const float *c_prev,
    const float *dh, float *dc, float *dz)
{
    CYL_CELL_BACKWARD_BODY(float, cyl_tanhf)
}

CYL_CLONES static void cyl_cell_backward_f64(
    ptrdiff_t H, ptrdiff_t gs, const double *gates, const double *c, const double *c_prev,
    const double *dh, double *dc, double *dz)
{
    CYL_CELL_BACKWARD_BODY(double, cyl_tanh)
}

#endif /* CYLSTM_CELL_H */
