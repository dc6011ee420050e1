/*
 * cylstm_math.h -- activation functions for the LSTM cell.
 *
 * float64: the C library's exp/tanh (correctly rounded to within 1 ulp), so the
 *          float64 kernels agree with a NumPy reference to ~1e-15 per call.
 * float32: a branch-free exp built from Cody-Waite range reduction and a
 *          degree-7 Taylor polynomial, written so that GCC and Clang vectorize
 *          the gate loops (no libm call, no errno, selects instead of branches).
 *
 * Error bounds of the float32 functions (measured over 2e6 points on
 * [-20, 20] against float64 libm, see tests/test_math.py):
 *   cyl_expf     relative error <= 2.5e-7 on [-87, 88]
 *   cyl_tanhf    absolute error <= 2.0e-7, relative error <= 4e-7 for |x| >= 1e-3
 *   cyl_sigmoidf absolute error <= 2.0e-7, relative error <= 4e-7
 * which is 2-4 float32 ulps: below the rounding noise of the gate GEMMs.
 *
 * Derivatives are written in terms of the outputs (y = f(x)):
 *   sigmoid' = y (1 - y),  tanh' = 1 - y^2.
 */
#ifndef CYLSTM_MATH_H
#define CYLSTM_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(_MSC_VER)
#define CYL_INLINE static __forceinline
#else
#define CYL_INLINE static inline __attribute__((always_inline))
#endif

CYL_INLINE float cyl_expf(float v)
{
    /* clamp so that 2^k stays a normal float and nothing overflows */
    v = v < -87.0f ? -87.0f : v;
    v = v > 88.0f ? 88.0f : v;
    /* k = round(v / ln2), r = v - k ln2 with ln2 split in two (Cody-Waite).
     * Adding and subtracting 1.5 * 2^23 rounds to the nearest integer without
     * a branch or a libm call (|v / ln2| < 2^22 after the clamp). */
    float kk = (v * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    int32_t k = (int32_t)kk;
    float r = v - kk * 0.693145751953125f;
    r = r - kk * 1.42860682030941723212e-6f;
    /* exp(r) on |r| <= ln2/2 + eps: Taylor to degree 7, truncation < 6e-9 */
    float p = 1.98412698412698413e-4f;
    p = p * r + 1.38888888888888889e-3f;
    p = p * r + 8.33333333333333333e-3f;
    p = p * r + 4.16666666666666667e-2f;
    p = p * r + 1.66666666666666667e-1f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    /* scale by 2^k through the exponent bits */
    int32_t bits = (k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof(scale));
    return p * scale;
}

CYL_INLINE float cyl_sigmoidf(float x)
{
    return 1.0f / (1.0f + cyl_expf(-x));
}

CYL_INLINE float cyl_tanhf(float x)
{
    float a = fabsf(x);
    a = a > 9.0f ? 9.0f : a;               /* tanh(9) rounds to 1 in float32 */
    /* large |x|: 1 - 2 / (1 + e^{2|x|}) */
    float big = 1.0f - 2.0f / (1.0f + cyl_expf(2.0f * a));
    /* small |x| (< 0.25): odd Taylor series, truncation < 3e-9 relative */
    float a2 = a * a;
    float small = 2.18694885361552028e-2f;
    small = small * a2 - 5.39682539682539683e-2f;
    small = small * a2 + 1.33333333333333333e-1f;
    small = small * a2 - 3.33333333333333333e-1f;
    small = a + a * (small * a2);
    float y = a < 0.25f ? small : big;
    return x < 0.0f ? -y : y;
}

CYL_INLINE double cyl_sigmoid(double x)
{
    return 1.0 / (1.0 + exp(-x));
}

CYL_INLINE double cyl_tanh(double x)
{
    return tanh(x);
}

/*
 * bfloat16 rounding (the mixed_bfloat16 policy's emulated products, and the one
 * C twin of cylstm.quantization.bfloat16_bits; tests/test_mixed_precision.py
 * compares them bit for bit).  bf16 is the upper half of a float32: 8 exponent
 * bits, 8 significant bits.  Round to nearest, ties to even, on the bits:
 * adding 0x7FFF plus the lowest kept bit carries into the kept half exactly
 * when the dropped half is above the tie, or at the tie with an odd kept half.
 * Subnormals round the same way (no flush to zero); values past the largest
 * bf16 (3.3895e38) by half an ulp or more, FLT_MAX among them, become inf, as
 * an IEEE conversion does; inf stays inf.  NaN keeps its sign and its upper
 * payload and is made quiet (bit 6 of the bf16 set), so that it stays a NaN
 * even when its payload lived only in the dropped bits.
 */
CYL_INLINE uint16_t cyl_bf16_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof(u));
    if ((u & 0x7FFFFFFFu) > 0x7F800000u)      /* NaN (the carry could reach the sign) */
        return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* x rounded to bfloat16, as a float32 (its low 16 bits zero).  The product of two
 * such values is exact in float32 (8 x 8 significant bits), so float32 FMAs over
 * rounded operands compute what bf16-operand / float32-accumulate hardware does. */
CYL_INLINE float cyl_bf16_roundf(float x)
{
    uint32_t u = (uint32_t)cyl_bf16_bits(x) << 16;
    float y;
    memcpy(&y, &u, sizeof(y));
    return y;
}

#endif /* CYLSTM_MATH_H */
