/*
 * cylstm_cell.h -- the LSTM cell, written once (see cylstm/_cell.pxd for the
 * notation and the numbered backward steps B1-B8).  The forward, the
 * backward and the streaming step all call these four functions.
 *
 * The loops are written for the vectorizer: branch-free activations from
 * cylstm_math.h, `#pragma omp simd`, and -- on GCC/Clang for x86-64 -- one
 * variant per instruction set (AVX-512, AVX2+FMA, baseline SSE2) picked at run
 * time by cyl_cpu_level() (CYL_ISA_KERNEL in cylstm_cpu.h), so a portable wheel
 * still runs 16-wide on a CPU that has AVX-512, and CYLSTM_CPU can force a
 * lower level.
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
#include "cylstm_cpu.h"

#if defined(_OPENMP) || defined(__clang__) || defined(__GNUC__)
#define CYL_SIMD _Pragma("omp simd")
#else
#define CYL_SIMD
#endif

/* z = za + zb + bias (zb may be NULL: pass za holding everything but bias).
 * zb's gate blocks lie gzb apart (gzb == gs, except for a packed panel's
 * product, whose blocks are hb apart: see cylstm_panel.h). */
#define CYL_CELL_FORWARD_BODY(T, SIG, TANH)                                   \
    if (zb != NULL) {                                                         \
        CYL_SIMD                                                              \
        for (ptrdiff_t j = 0; j < H; j++) {                                   \
            T zi = za[j] + zb[j] + bias[j];                                   \
            T zf = za[gs + j] + zb[gzb + j] + bias[gs + j];                      \
            T zg = za[2 * gs + j] + zb[2 * gzb + j] + bias[2 * gs + j];          \
            T zo = za[3 * gs + j] + zb[3 * gzb + j] + bias[3 * gs + j];          \
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


/*
 * AVX-512 float32 forward: the same cell with intrinsics, because the portable
 * loop above leaves two costs the compiler cannot remove by itself (measured on
 * Zen 4: ~10 cycles per unit): five divisions per unit, and the two-branch tanh
 * (a series for small |x| and 1 - 2/(1 + e^2|x|) for the rest, both computed,
 * then selected).  Here
 *   - 1/d is rcp14 plus one Newton step (relative error ~2^-28 before rounding);
 *   - 2^k scaling is vscalefps (exact, no integer exponent arithmetic);
 *   - tanh(a) = m / (m + 2) with m = expm1(2a) = 2^k q + (2^k - 1), q the same
 *     degree-7 polynomial without its constant term, so that small |x| keeps
 *     its relative precision without a second branch.
 * Same error bounds as cylstm_math.h's scalar functions (tests/test_math.py
 * measures them through the kernel, on whichever version the CPU runs).
 * NaN propagates: every clamp is written min(const, v), which returns v when
 * v is NaN.
 */
#if CYL_ISA_VARIANTS
#define CYL_CELL_AVX512 1
#include <immintrin.h>
#define CYL_V4 CYL_TARGET_V4

CYL_V4 static inline __m512 cyl_rcp16(__m512 d)
{
    __m512 r = _mm512_rcp14_ps(d);
    return _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(1.0f)), r);
}

/* k = round(v / ln2) and r = v - k ln2 (Cody-Waite); v <= 88 (below -87
 * vscalefps returns 0 or a subnormal, as it should). */
#define CYL_EXP_REDUCE(v, kk, r)                                                   \
    kk = _mm512_roundscale_ps(_mm512_mul_ps(v, _mm512_set1_ps(1.44269504088896341f)), \
                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);      \
    r = _mm512_fnmadd_ps(kk, _mm512_set1_ps(0.693145751953125f), v);               \
    r = _mm512_fnmadd_ps(kk, _mm512_set1_ps(1.42860682030941723212e-6f), r);

/* (e^r - 1) / r on |r| <= ln2/2: the Taylor series of cyl_expf to degree 7. */
CYL_V4 static inline __m512 cyl_expm1_poly16(__m512 r)
{
    __m512 p = _mm512_set1_ps(1.98412698412698413e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.38888888888888889e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.33333333333333333e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.16666666666666667e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.66666666666666667e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    return _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
}

CYL_V4 static inline __m512 cyl_sigmoid16(__m512 z)
{
    __m512 v = _mm512_sub_ps(_mm512_setzero_ps(), z), kk, r;
    v = _mm512_min_ps(_mm512_set1_ps(88.0f), v);   /* e^88 + 1 stays finite */
    CYL_EXP_REDUCE(v, kk, r)
    __m512 e = _mm512_scalef_ps(_mm512_fmadd_ps(cyl_expm1_poly16(r), r, _mm512_set1_ps(1.0f)), kk);
    return cyl_rcp16(_mm512_add_ps(e, _mm512_set1_ps(1.0f)));
}

CYL_V4 static inline __m512 cyl_tanh16(__m512 x)
{
    const __m512 sign = _mm512_castsi512_ps(_mm512_set1_epi32((int)0x80000000u));
    __m512 a = _mm512_andnot_ps(sign, x);
    a = _mm512_min_ps(_mm512_set1_ps(9.0f), a);     /* tanh(9) rounds to 1 */
    __m512 v = _mm512_add_ps(a, a), kk, r;
    CYL_EXP_REDUCE(v, kk, r)
    __m512 q = _mm512_mul_ps(cyl_expm1_poly16(r), r);               /* e^r - 1 */
    __m512 s = _mm512_scalef_ps(_mm512_set1_ps(1.0f), kk);           /* 2^k */
    __m512 m = _mm512_fmadd_ps(s, q, _mm512_sub_ps(s, _mm512_set1_ps(1.0f)));
    __m512 y = _mm512_mul_ps(m, cyl_rcp16(_mm512_add_ps(m, _mm512_set1_ps(2.0f))));
    return _mm512_or_ps(y, _mm512_and_ps(x, sign));
}

/*
 * AVX2+FMA float32 cell: the same formulation with 8-wide intrinsics.  The
 * portable loop vectorizes for x86-64-v3 only with -fno-trapping-math (setup.py),
 * and then computes both tanh branches.  2-vCPU AMD EPYC (Zen 3), 2026-12-02,
 * ns per unit, one thread, H = 50 / 256 / 4096 units: portable loop without
 * -fno-trapping-math (scalar) 31.1 / 31.9 / 34.8, with it 6.2 / 5.6 / 7.3, these
 * intrinsics 4.3 / 3.6 / 5.5.  Differences from the AVX-512 cell, none of which
 * changes the error bounds (tests/test_math.py checks them at this level):
 *   - 1/d is a division: vrcpps has 12 bits, and with one Newton step the
 *     header-range test failed its 4e-7 relative bound (it ran no faster);
 *   - 2^k is built in the exponent field (no vscalefps): v is clamped to
 *     [-87, 88] first, as cyl_expf does, so that 2^k stays a normal float;
 *   - tails shorter than 8 units use vmaskmovps loads and stores.
 */
#define CYL_CELL_AVX2 1
#define CYL_V3 CYL_TARGET_V3

/* k = round(v / ln2), r = v - k ln2 (Cody-Waite) and s = 2^k, for v in
 * [-87, 88] (NaN v: NaN kk and r).  One fused multiply-add rounds v / ln2 to
 * the integer below 2^22 of CYL_EXP_MAGIC = 1.5 * 2^23 + 127, whose low
 * mantissa bits then hold k + 127: shifted left 23 they are the exponent field
 * of 2^k (k in [-126, 127]), and kk = t - CYL_EXP_MAGIC is k exactly: two
 * instructions fewer than vroundps + vcvtps2dq + an integer add, and a shorter
 * chain (see the cell below). */
#define CYL_EXP_MAGIC 12583039.0f
#define CYL_EXP_REDUCE8(v, kk, r, s)                                               \
    {                                                                              \
        const __m256 t_ = _mm256_fmadd_ps(v, _mm256_set1_ps(1.44269504088896341f),  \
                                          _mm256_set1_ps(CYL_EXP_MAGIC));          \
        kk = _mm256_sub_ps(t_, _mm256_set1_ps(CYL_EXP_MAGIC));                     \
        s = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(t_), 23));   \
        r = _mm256_fnmadd_ps(kk, _mm256_set1_ps(0.693145751953125f), v);           \
        r = _mm256_fnmadd_ps(kk, _mm256_set1_ps(1.42860682030941723212e-6f), r);   \
    }

CYL_V3 static inline __m256 cyl_expm1_poly8(__m256 r)
{
    /* Estrin's scheme: three multiply-adds deep instead of Horner's six (the
     * cell waits on its chains; see below) */
    const __m256 r2 = _mm256_mul_ps(r, r), r4 = _mm256_mul_ps(r2, r2);
    const __m256 a = _mm256_fmadd_ps(_mm256_set1_ps(0.5f), r, _mm256_set1_ps(1.0f));
    const __m256 b = _mm256_fmadd_ps(_mm256_set1_ps(4.16666666666666667e-2f), r,
                                     _mm256_set1_ps(1.66666666666666667e-1f));
    const __m256 c = _mm256_fmadd_ps(_mm256_set1_ps(1.38888888888888889e-3f), r,
                                     _mm256_set1_ps(8.33333333333333333e-3f));
    const __m256 cd = _mm256_fmadd_ps(_mm256_set1_ps(1.98412698412698413e-4f), r2, c);
    return _mm256_fmadd_ps(cd, r4, _mm256_fmadd_ps(b, r2, a));
}

#define cyl_div8 _mm256_div_ps

CYL_V3 static inline __m256 cyl_sigmoid8(__m256 z)
{
    /* max(c, v) and min(c, v) return v when v is NaN: NaN propagates */
    __m256 v = _mm256_sub_ps(_mm256_setzero_ps(), z), kk, r, s;
    v = _mm256_max_ps(_mm256_set1_ps(-87.0f), _mm256_min_ps(_mm256_set1_ps(88.0f), v));
    CYL_EXP_REDUCE8(v, kk, r, s)
    __m256 e = _mm256_mul_ps(_mm256_fmadd_ps(cyl_expm1_poly8(r), r, _mm256_set1_ps(1.0f)), s);
    return cyl_div8(_mm256_set1_ps(1.0f), _mm256_add_ps(e, _mm256_set1_ps(1.0f)));
}

CYL_V3 static inline __m256 cyl_tanh8(__m256 x)
{
    const __m256 sign = _mm256_castsi256_ps(_mm256_set1_epi32((int)0x80000000u));
    __m256 a = _mm256_andnot_ps(sign, x);
    a = _mm256_min_ps(_mm256_set1_ps(9.0f), a);     /* tanh(9) rounds to 1 */
    __m256 v = _mm256_add_ps(a, a), kk, r, s;                         /* s = 2^k */
    CYL_EXP_REDUCE8(v, kk, r, s)
    __m256 q = _mm256_mul_ps(cyl_expm1_poly8(r), r);                /* e^r - 1 */
    __m256 m = _mm256_fmadd_ps(s, q, _mm256_sub_ps(s, _mm256_set1_ps(1.0f)));
    __m256 y = cyl_div8(m, _mm256_add_ps(m, _mm256_set1_ps(2.0f)));
    return _mm256_or_ps(y, _mm256_and_ps(x, sign));
}

/* AVX2 loads and stores of the units j .. j + 7, masked at a tail (n < 8). */
CYL_V3 static inline __m256i cyl_tail8(ptrdiff_t n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
#define CYL_V8_MASK(n) cyl_tail8(n)
#define CYL_V8_LD(p, m) (full ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, m))
#define CYL_V8_ST(p, m, v)                                                         \
    do {                                                                           \
        if (full) _mm256_storeu_ps(p, v); else _mm256_maskstore_ps(p, m, v);       \
    } while (0)
#define CYL_V8_ADD _mm256_add_ps
#define CYL_V8_SUB _mm256_sub_ps
#define CYL_V8_MUL _mm256_mul_ps
#define CYL_V8_FMA _mm256_fmadd_ps
#define CYL_V8_FNMA _mm256_fnmadd_ps
#define CYL_V8_SET1 _mm256_set1_ps
#define CYL_V8_SIG cyl_sigmoid8
#define CYL_V8_TANH cyl_tanh8

/* AVX-512: the same with 16 lanes and mask registers. */
#define CYL_V16_MASK(n) ((n) >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n)) - 1u))
#define CYL_V16_LD(p, m) _mm512_maskz_loadu_ps(m, p)
#define CYL_V16_ST(p, m, v) _mm512_mask_storeu_ps(p, m, v)
#define CYL_V16_ADD _mm512_add_ps
#define CYL_V16_SUB _mm512_sub_ps
#define CYL_V16_MUL _mm512_mul_ps
#define CYL_V16_FMA _mm512_fmadd_ps
#define CYL_V16_FNMA _mm512_fnmadd_ps
#define CYL_V16_SET1 _mm512_set1_ps
#define CYL_V16_SIG cyl_sigmoid16
#define CYL_V16_TANH cyl_tanh16

/* The intrinsics cell, written once for both widths: W lanes (8 or 16), the
 * operations of V (CYL_V8_*, CYL_V16_*), the mask type M, the vector type VT.
 * TWO_PASS: the gates and c, then h = o tanh(c) in a second loop (AVX2); the
 * AVX-512 cell keeps the one pass it was measured with on Zen 4 (two passes
 * are untried there: no AVX-512 CPU since).  In one pass each unit's
 * chain runs through a gate's activation, c and tanh(c), about 150 cycles deep,
 * and the out-of-order window holds under two units' worth of it: the loop waited
 * on latency, not on its ports (vrcpps and two Newton steps in place of the
 * divisions, or the divisions replaced by products, changed nothing).  2-vCPU
 * AMD EPYC (Zen 3), 2026-12-02, one thread, ns per unit, 32 rows of H = 50 /
 * 256, 4 rows of 1024, best of 7 alternated with the old cell: one pass 4.30 /
 * 3.70 / 3.90, two passes 3.50 / 2.93 / 3.09, with the exponent in one
 * multiply-add and Estrin's polynomial 3.49 / 2.83 / 3.06 (backward, whose
 * chain is one tanh: 1.92 / 1.30 / 1.70 -> 1.80 / 1.23 / 1.61). */
#define CYL_CELL_FORWARD_SIMD(W, V, VT, M, TWO_PASS)                           \
    CYL_CELL_FORWARD_SIMD_ROWS(W, V, VT, M, TWO_PASS, 1, 0, 0, 0)
/* The same over NR rows, each pass over all of them (cyl_cell_strided_f32_*):
 * row r_ reads za + r_ ZS (zb + r_ ZS), bias + r_ BS, c_prev + r_ CS and writes
 * gates + r_ ZS, c_out + r_ CS, h_out + r_ CS. */
#define CYL_CELL_FORWARD_SIMD_ROWS(W, V, VT, M, TWO_PASS, NR, ZS, BS, CS)      \
    {                                                                          \
        ptrdiff_t j, r_;                                                       \
        for (r_ = 0; r_ < (NR); r_++) {                                        \
            const float *za_ = za + r_ * (ZS), *cp_ = c_prev + r_ * (CS);      \
            const float *zb_ = zb != NULL ? zb + r_ * (ZS) : NULL;             \
            const float *bi_ = bias + r_ * (BS);                               \
            float *gt_ = gates + r_ * (ZS), *co_ = c_out + r_ * (CS);          \
            float *ho_ = h_out + r_ * (CS);                                    \
            (void)ho_;                                                         \
            for (j = 0; j < H; j += (W)) {                                     \
                const int full = H - j >= (W);                                 \
                const M m = V##_MASK(H - j);                                   \
                VT zi = V##_ADD(V##_LD(za_ + j, m), V##_LD(bi_ + j, m));      \
                VT zf = V##_ADD(V##_LD(za_ + gs + j, m),                       \
                                V##_LD(bi_ + gs + j, m));                     \
                VT zg = V##_ADD(V##_LD(za_ + 2 * gs + j, m),                   \
                                V##_LD(bi_ + 2 * gs + j, m));                 \
                VT zo = V##_ADD(V##_LD(za_ + 3 * gs + j, m),                   \
                                V##_LD(bi_ + 3 * gs + j, m));                 \
                (void)full;                                                    \
                if (zb_ != NULL) {                                             \
                    zi = V##_ADD(zi, V##_LD(zb_ + j, m));                      \
                    zf = V##_ADD(zf, V##_LD(zb_ + gzb + j, m));                \
                    zg = V##_ADD(zg, V##_LD(zb_ + 2 * gzb + j, m));            \
                    zo = V##_ADD(zo, V##_LD(zb_ + 3 * gzb + j, m));            \
                }                                                              \
                {                                                              \
                    const VT gi = V##_SIG(zi), gf = V##_SIG(zf);               \
                    const VT gg = V##_TANH(zg), go = V##_SIG(zo);              \
                    const VT c = V##_FMA(gf, V##_LD(cp_ + j, m),               \
                                         V##_MUL(gi, gg));                     \
                    V##_ST(gt_ + j, m, gi);                                    \
                    V##_ST(gt_ + gs + j, m, gf);                               \
                    V##_ST(gt_ + 2 * gs + j, m, gg);                           \
                    V##_ST(gt_ + 3 * gs + j, m, go);                           \
                    V##_ST(co_ + j, m, c);                                     \
                    if (!(TWO_PASS))                                           \
                        V##_ST(ho_ + j, m, V##_MUL(go, V##_TANH(c)));          \
                }                                                              \
            }                                                                  \
        }                                                                      \
        for (r_ = 0; (TWO_PASS) && r_ < (NR); r_++) {                          \
            const float *gt_ = gates + r_ * (ZS), *co_ = c_out + r_ * (CS);    \
            float *ho_ = h_out + r_ * (CS);                                    \
            for (j = 0; j < H; j += (W)) {                                     \
                const int full = H - j >= (W);                                 \
                const M m = V##_MASK(H - j);                                   \
                (void)full;                                                    \
                V##_ST(ho_ + j, m, V##_MUL(V##_LD(gt_ + 3 * gs + j, m),        \
                                           V##_TANH(V##_LD(co_ + j, m))));     \
            }                                                                  \
        }                                                                      \
    }

/* Steps B1-B6 (as CYL_CELL_BACKWARD_BODY), W lanes at a time. */
#define CYL_CELL_BACKWARD_SIMD(W, V, VT, M)                                        \
    {                                                                              \
        const VT one = V##_SET1(1.0f);                                             \
        ptrdiff_t j;                                                               \
        for (j = 0; j < H; j += (W)) {                                             \
            const int full = H - j >= (W);                                         \
            const M m = V##_MASK(H - j);                                           \
            const VT gi = V##_LD(gates + j, m);                                    \
            const VT gf = V##_LD(gates + gs + j, m);                               \
            const VT gg = V##_LD(gates + 2 * gs + j, m);                           \
            const VT go = V##_LD(gates + 3 * gs + j, m);                           \
            const VT dhj = V##_LD(dh + j, m);                                      \
            const VT tc = V##_TANH(V##_LD(c + j, m));                   /* B1 */   \
            const VT dcj = V##_FMA(V##_MUL(dhj, go), V##_FNMA(tc, tc, one),        \
                                   V##_LD(dc + j, m));                  /* B3 */   \
            const VT cp = V##_LD(c_prev + j, m);                                   \
            (void)full;                                                            \
            V##_ST(dz + j, m, V##_MUL(V##_MUL(dcj, gg),                 /* B4, B6 */ \
                                      V##_MUL(gi, V##_SUB(one, gi))));             \
            V##_ST(dz + gs + j, m, V##_MUL(V##_MUL(dcj, cp),                       \
                                           V##_MUL(gf, V##_SUB(one, gf))));        \
            V##_ST(dz + 2 * gs + j, m, V##_MUL(V##_MUL(dcj, gi),                   \
                                               V##_FNMA(gg, gg, one)));            \
            V##_ST(dz + 3 * gs + j, m, V##_MUL(V##_MUL(dhj, tc),        /* B2, B6 */ \
                                               V##_MUL(go, V##_SUB(one, go))));    \
            V##_ST(dc + j, m, V##_MUL(dcj, gf));                        /* B5 */   \
        }                                                                          \
    }

/* AVX-512: two passes where a row has more than one vector of units, one where it
 * has one (whose second pass only lengthens its chain).  Cell alone, ns per unit,
 * one pass -> two: 32 rows of H = 50 / 128 / 512 2.44 -> 2.27 / 1.82 -> 1.64 /
 * 1.79 -> 1.61, one row of 512 1.90 -> 1.66, one row of 16 2.29 -> 2.64; AMD EPYC
 * (2 cores), Zen 4, 2026-12-06, best of 200. */
CYL_V4 static void cyl_cell_forward_f32_avx512(
    ptrdiff_t H, ptrdiff_t gs, const float *za, const float *zb, ptrdiff_t gzb,
    const float *bias, const float *c_prev, float *gates, float *c_out, float *h_out)
{
    if (H <= 16)
        CYL_CELL_FORWARD_SIMD(16, CYL_V16, __m512, __mmask16, 0)
    else
        CYL_CELL_FORWARD_SIMD(16, CYL_V16, __m512, __mmask16, 1)
}

CYL_V4 static void cyl_cell_backward_f32_avx512(
    ptrdiff_t H, ptrdiff_t gs, const float *gates, const float *c, const float *c_prev,
    const float *dh, float *dc, float *dz)
CYL_CELL_BACKWARD_SIMD(16, CYL_V16, __m512, __mmask16)

CYL_V3 static void cyl_cell_forward_f32_avx2(
    ptrdiff_t H, ptrdiff_t gs, const float *za, const float *zb, ptrdiff_t gzb,
    const float *bias, const float *c_prev, float *gates, float *c_out, float *h_out)
CYL_CELL_FORWARD_SIMD(8, CYL_V8, __m256, __m256i, 1)

/* The rows bodies, one per width: n rows of hb units, row r's products at
 * z + r zs (gate blocks hp apart; the gates written over them) plus zb + r zs
 * (zb NULL: none), its bias at bias + r bs, its c at c + r cs (in place) and h at
 * h + r cs; each pass over all the rows, a single row of at most ONE_PASS_MAX
 * units in one pass.  Inlined into each caller below, so that the rows cell's
 * NULL zb and shared bias stay constants there. */
#define CYL_CELL_STRIDED_FN(ISA, TARGET, W, V, VT, M, ONE_PASS_MAX)                 \
    TARGET static inline __attribute__((always_inline)) void                        \
    cyl_cell_strided_f32_##ISA(                                                     \
        ptrdiff_t hb, ptrdiff_t hp, ptrdiff_t n, float *z, const float *zb,         \
        ptrdiff_t zs, const float *bias, ptrdiff_t bs, float *c, float *h,          \
        ptrdiff_t cs)                                                               \
    {                                                                               \
        const ptrdiff_t H = hb, gs = hp, gzb = hp;                                  \
        const float *za = z, *c_prev = c;                                           \
        float *gates = z, *c_out = c, *h_out = h;                                   \
        (void)gzb;                                                                  \
        if (n == 1 && hb <= (ONE_PASS_MAX))                                         \
            CYL_CELL_FORWARD_SIMD_ROWS(W, V, VT, M, 0, 1, zs, bs, cs)               \
        else                                                                        \
            CYL_CELL_FORWARD_SIMD_ROWS(W, V, VT, M, 1, n, zs, bs, cs)               \
    }
CYL_CELL_STRIDED_FN(avx2, CYL_V3, 8, CYL_V8, __m256, __m256i, 0)
/* The same on AVX-512, two passes over all the rows where the panel has several
 * rows or more than one vector of units (a single 16-unit row: one pass, as
 * cyl_cell_forward_f32_avx512).  Kernel micro-bench, ns per unit, one call per row
 * -> this: 32 rows of 16-unit panels (H = 256) 2.05 -> 1.66, 16 rows 2.10 -> 1.67,
 * 64 rows of 32-unit panels 1.90 -> 1.64, 4 rows of 16 (H = 1024) 2.12 -> 1.76;
 * AMD EPYC (2 cores), Zen 4, 2026-12-06, best of 200.  The same bits. */
CYL_CELL_STRIDED_FN(avx512, CYL_V4, 16, CYL_V16, __m512, __mmask16, 16)

/* nrows rows of one packed panel's products (the stacked forward's and the
 * streaming runner's step, through panel_cells in cylstm/_panel.pxd): row r's
 * hb units at z + r zs (gate blocks hp apart; the gates written over them), its
 * state at c + r ldc and h + r ldc, the panel's bias shared.  Each pass runs over
 * all the rows, so the out-of-order window always has independent units to work
 * on: one call per row of a 16-unit panel (two vectors) waited on each row's
 * chain.  Kernel micro-bench (32 rows, 16-unit panels, H = 256; both over the
 * same data, best of 200), AMD EPYC (2 cores), Zen 3, 2026-12-04: 3.44 -> 2.74 ns
 * per unit (16 rows 3.48 -> 2.65; 64 rows of 32-unit panels 2.77 -> 2.62; one row
 * 4.42 -> 4.46).  Same operations per element: the same bits. */
#define CYL_CELL_ROWS_VIA_STRIDED(ISA, TARGET)                                      \
    TARGET static void cyl_cell_rows_f32_##ISA(                                     \
        ptrdiff_t hb, ptrdiff_t hp, ptrdiff_t nrows, float *z, ptrdiff_t zs,        \
        const float *bias, float *c, float *h, ptrdiff_t ldc)                       \
    {                                                                               \
        cyl_cell_strided_f32_##ISA(hb, hp, nrows, z, NULL, zs, bias, 0, c, h, ldc); \
    }
CYL_CELL_ROWS_VIA_STRIDED(avx2, CYL_V3)
CYL_CELL_ROWS_VIA_STRIDED(avx512, CYL_V4)

/* The cells of npanels consecutive panels of one batch row, each hb units (gate
 * blocks hp apart): panel q's gates at g + 4 hp q (its products summed in: x @ W
 * there, h_prev @ U at zb + 4 hp q, the bias at bias + 4 hp q; the gates written
 * over g), its units' c at c + hb q (in place) and h at h + hb q.  One call per
 * step where the unit path calls the cell once per 16-unit panel (a single vector
 * each, whose activation chain the loop waits on): the same bits, the passes over
 * all the panels (batch 1, one thread: cylstm/_lstm.pyx, _units_step_b1).  zb
 * may be NULL (the products are all in g).  The streaming runner's batch-1 step
 * calls it on four panels at a time (cylstm/_stream.pyx, CELL_GROUP): no faster
 * at (64, 128), bound by reading the panels from L2 (4.2 us either way), 2% at
 * (256, 512) with bf16 weights; AMD EPYC (2 cores), Zen 4, 2026-12-06. */
#define CYL_CELL_PANELS_VIA_STRIDED(ISA, TARGET)                                    \
    TARGET static void cyl_cell_panels_f32_##ISA(                                   \
        ptrdiff_t hb, ptrdiff_t hp, ptrdiff_t npanels, float *g, const float *zb,   \
        const float *bias, float *c, float *h)                                      \
    {                                                                               \
        cyl_cell_strided_f32_##ISA(hb, hp, npanels, g, zb, 4 * hp, bias, 4 * hp, c, \
                                   h, hb);                                          \
    }
CYL_CELL_PANELS_VIA_STRIDED(avx2, CYL_V3)
CYL_CELL_PANELS_VIA_STRIDED(avx512, CYL_V4)

CYL_V3 static void cyl_cell_backward_f32_avx2(
    ptrdiff_t H, ptrdiff_t gs, const float *gates, const float *c, const float *c_prev,
    const float *dh, float *dc, float *dz)
CYL_CELL_BACKWARD_SIMD(8, CYL_V8, __m256, __m256i)

/* The float32 variants for x86-64-v4 and -v3 run the intrinsics above (a
 * compile-time branch: CYL_ISA is a constant in each variant). */
/* In a variant of an ISA kernel: on x86-64-v4 and -v3, run NAME's intrinsics
 * version for that width (NAME_avx512, NAME_avx2) on ARGS and return. */
#define CYL_CELL_SIMD(NAME, ARGS)                                             \
    if (CYL_ISA_IS_V4) {                                                      \
        NAME##_avx512 ARGS;                                                   \
        return;                                                               \
    }                                                                         \
    if (CYL_ISA == 1) {                                                       \
        NAME##_avx2 ARGS;                                                     \
        return;                                                               \
    }
#define CYL_CELL_FWD_F32_AVX512                                               \
    CYL_CELL_SIMD(cyl_cell_forward_f32,                                       \
                  (H, gs, za, zb, gzb, bias, c_prev, gates, c_out, h_out))
#define CYL_CELL_BWD_F32_AVX512                                               \
    CYL_CELL_SIMD(cyl_cell_backward_f32, (H, gs, gates, c, c_prev, dh, dc, dz))
#else
#define CYL_CELL_AVX512 0
#define CYL_CELL_AVX2 0
#define CYL_CELL_FWD_F32_AVX512
#define CYL_CELL_BWD_F32_AVX512
#endif

/* The float32 bodies: the intrinsics where they may run, else the loops. */
#define CYL_CELL_FORWARD_F32_BODY() \
    CYL_CELL_FWD_F32_AVX512 CYL_CELL_FORWARD_BODY(float, cyl_sigmoidf, cyl_tanhf)
#define CYL_CELL_BACKWARD_F32_BODY() \
    CYL_CELL_BWD_F32_AVX512 CYL_CELL_BACKWARD_BODY(float, cyl_tanhf)

CYL_ISA_KERNEL(cyl_cell_forward_f32,
    (ptrdiff_t H, ptrdiff_t gs, const float *za, const float *zb, ptrdiff_t gzb,
     const float *bias, const float *c_prev, float *gates, float *c_out, float *h_out),
    (H, gs, za, zb, gzb, bias, c_prev, gates, c_out, h_out),
    CYL_CELL_FORWARD_F32_BODY, ())

/* cyl_cell_forward_f32 on nrows rows of a panel (see cyl_cell_rows_f32_avx2):
 * the rows bodies on x86-64-v4 and -v3, one call per row elsewhere. */
#if CYL_CELL_AVX2
#define CYL_CELL_ROWS_F32_AVX2                                                \
    CYL_CELL_SIMD(cyl_cell_rows_f32, (hb, hp, nrows, z, zs, bias, c, h, ldc))
#else
#define CYL_CELL_ROWS_F32_AVX2
#endif
#define CYL_CELL_ROWS_F32_BODY()                                              \
    {                                                                         \
        ptrdiff_t r;                                                          \
        CYL_CELL_ROWS_F32_AVX2                                                \
        for (r = 0; r < nrows; r++)                                           \
            cyl_cell_forward_f32(hb, hp, z + r * zs, NULL, hp, bias,          \
                                 c + r * ldc, z + r * zs, c + r * ldc,        \
                                 h + r * ldc);                                \
    }

CYL_ISA_KERNEL(cyl_cell_rows_f32,
    (ptrdiff_t hb, ptrdiff_t hp, ptrdiff_t nrows, float *z, ptrdiff_t zs,
     const float *bias, float *c, float *h, ptrdiff_t ldc),
    (hb, hp, nrows, z, zs, bias, c, h, ldc),
    CYL_CELL_ROWS_F32_BODY, ())

#if CYL_CELL_AVX2
#define CYL_CELL_PANELS_F32_SIMD                                              \
    CYL_CELL_SIMD(cyl_cell_panels_f32, (hb, hp, npanels, g, zb, bias, c, h))
#else
#define CYL_CELL_PANELS_F32_SIMD
#endif
#define CYL_CELL_PANELS_F32_BODY()                                            \
    {                                                                         \
        ptrdiff_t q;                                                          \
        CYL_CELL_PANELS_F32_SIMD                                              \
        for (q = 0; q < npanels; q++)                                         \
            cyl_cell_forward_f32(hb, hp, g + 4 * hp * q,                      \
                                 zb != NULL ? zb + 4 * hp * q : NULL, hp,     \
                                 bias + 4 * hp * q, c + hb * q,               \
                                 g + 4 * hp * q, c + hb * q, h + hb * q);     \
    }

CYL_ISA_KERNEL(cyl_cell_panels_f32,
    (ptrdiff_t hb, ptrdiff_t hp, ptrdiff_t npanels, float *g, const float *zb,
     const float *bias, float *c, float *h),
    (hb, hp, npanels, g, zb, bias, c, h),
    CYL_CELL_PANELS_F32_BODY, ())

CYL_ISA_KERNEL(cyl_cell_forward_f64,
    (ptrdiff_t H, ptrdiff_t gs, const double *za, const double *zb, ptrdiff_t gzb,
     const double *bias, const double *c_prev, double *gates, double *c_out, double *h_out),
    (H, gs, za, zb, gzb, bias, c_prev, gates, c_out, h_out),
    CYL_CELL_FORWARD_BODY, (double, cyl_sigmoid, cyl_tanh))

CYL_ISA_KERNEL(cyl_cell_backward_f32,
    (ptrdiff_t H, ptrdiff_t gs, const float *gates, const float *c, const float *c_prev,
     const float *dh, float *dc, float *dz),
    (H, gs, gates, c, c_prev, dh, dc, dz),
    CYL_CELL_BACKWARD_F32_BODY, ())

CYL_ISA_KERNEL(cyl_cell_backward_f64,
    (ptrdiff_t H, ptrdiff_t gs, const double *gates, const double *c, const double *c_prev,
     const double *dh, double *dc, double *dz),
    (H, gs, gates, c, c_prev, dh, dc, dz),
    CYL_CELL_BACKWARD_BODY, (double, cyl_tanh))

#endif /* CYLSTM_CELL_H */
