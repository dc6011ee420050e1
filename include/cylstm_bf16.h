/*
 * cylstm_bf16.h -- matrix products on the CPU's bfloat16 hardware: AMX tiles, or
 * AVX512-BF16 dot products where there are no tiles.
 *
 * The mixed_bfloat16 policy multiplies bf16 operands and sums in float32
 * (cylstm/mixed_precision.py).  Without bf16 instructions cylstm emulates that:
 * float32 GEMMs over operands rounded to bf16 (exact: the product of two bf16
 * values fits float32).  A CPU with AMX (Intel Sapphire Rapids and later) has a
 * matrix unit for exactly this product: `tdpbf16ps` multiplies a 16 x 32 bf16
 * tile by a 32 x 16 one into a 16 x 16 float32 tile, 8192 multiply-adds per
 * instruction against 32 for a float32 AVX-512 FMA.
 *
 * C (M x N, float32) = or += bf16(A) (M x K, float32, rounded here to nearest
 * even) @ P, P the bf16 weights packed once (cyl_bf16_tiles_pack):
 *
 *   Tile-packed layout.  K is padded with zeros to Kp (a multiple of 32), N to
 *   Np (a multiple of 16).  The matrix is cut into blocks of 32 k x 16 columns,
 *   each 16 rows of 64 bytes, as a B tile of `tdpbf16ps` reads it: row r holds
 *   k = 2r and 2r + 1 of the block for each of its 16 columns, interleaved
 *   (element 2c + e is column c, k = 2r + e).  The blocks of one column block
 *   follow each other along K (block (n16, kb) at (n16 * Kp / 32 + kb) * 512).
 *
 * The kernel rounds A's rows into a bf16 scratch (`abuf`, CYL_BF16_MS rows of Kp
 * at a time: cyl_bf16_abuf_len), then, for each pair of column blocks, runs the
 * rows 32 at a time: four C tiles (2 x 2), two A tiles and two B tiles, the
 * eight tiles AMX has.  The pair's B blocks (2 x Kp x 32 bytes) stay in L1 over
 * the row blocks; A's rows come from L2.  Edge tiles (rows past M, columns
 * past N) go through a 16 x 16 float32 scratch, one tile at a time.  A product of
 * a few rows (a batch-1 step) skips the tiles for AVX512-BF16 dot products over
 * the same layout (cyl_bf16_dots_gemm), and a CPU with AVX512-BF16 but no AMX
 * (AMD Zen 4, Intel Cooper Lake) runs every product on them: `vdpbf16ps` does
 * 32 multiply-adds per instruction where a float32 FMA does 16
 * (cyl_bf16_engine() says which runs).
 *
 * Every output is a sum of bf16 products in float32; the order in which the
 * hardware adds them (pairs, then the tile's k, then the k blocks in order) is
 * not the emulated GEMM's, so results agree with the emulated path within
 * float32 rounding of the sums, not bit for bit.  AMX flushes denormal inputs
 * and outputs to zero.
 *
 * Linux gives a process AMX state only after it asks (arch_prctl
 * ARCH_REQ_XCOMP_PERM for XTILEDATA): cyl_amx_bf16_usable() asks once and
 * caches the answer, and also answers no where CYLSTM_CPU forces a level below
 * AVX-512 (cylstm_cpu.h) or cyl_amx_force(0) turned it off.  Each call loads
 * its tile configuration and releases the tiles when it returns, so the kernel
 * saves no AMX state for a thread between calls.
 */
#ifndef CYLSTM_BF16_H
#define CYLSTM_BF16_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "cylstm_cpu.h"
#include "cylstm_math.h"

/* rows of A rounded into the bf16 scratch at a time */
#define CYL_BF16_MS 256
/* Products of at most cyl_bf16_dot_max rows of A skip the tiles for the dot
 * products (cyl_bf16_dots_gemm): CYL_BF16_DOT_DEFAULT, _tuning.BF16_DOT_ROWS with
 * its measurement.  Without AMX every product runs on them. */
#define CYL_BF16_DOT_DEFAULT 3
/* The dot kernel's register block: CYL_BF16_DOT_RB rows x 4 column blocks of 16
 * (24 sums, 4 B vectors and A's broadcast pair: 29 of AVX-512's 32 registers),
 * over CYL_BF16_DOT_KB tiles of K per pass: the four blocks' B, 4 x 32 KiB at 32
 * tiles, stays in L2 (1-2 MiB per core on every AVX512-BF16 CPU) while all the row
 * blocks run over it, and C takes one pass's sums per 1024 k.  Holding B in L1
 * instead (4 tiles, 16 KiB, 8 passes over C at K = 1024) ran 177-198 GFLOP/s
 * where 32 tiles run 219-229 (64 x 1024 @ 1024 x 2048 and 32 x 384 @ 384 x 1024,
 * one thread, AMD EPYC (2 cores), Zen 4, 2026-12-06, cyl_bf16_dots_gemm timed
 * alone; 1.23x on the fused step of (50, 64, 512, 512)). */
#define CYL_BF16_DOT_RB 6
#define CYL_BF16_DOT_KB 32
static int cyl_bf16_dot_max = CYL_BF16_DOT_DEFAULT;

/* Set the row count up to which products skip the tiles (0: never); returns the
 * previous one.  For measuring and tests. */
static int cyl_bf16_set_dot_rows(int n)
{
    int previous = cyl_bf16_dot_max;
    cyl_bf16_dot_max = n < 0 ? 0 : n;
    return previous;
}

static inline ptrdiff_t cyl_bf16_kp(ptrdiff_t K) { return (K + 31) / 32 * 32; }
static inline ptrdiff_t cyl_bf16_np(ptrdiff_t N) { return (N + 15) / 16 * 16; }

/* Elements (uint16) of the tile-packed copy of a K x N matrix. */
static inline ptrdiff_t cyl_bf16_tiles_len(ptrdiff_t K, ptrdiff_t N)
{
    return cyl_bf16_kp(K) * cyl_bf16_np(N);
}

/* Elements (uint16) of the A scratch one cyl_amx_bf16_gemm call needs. */
static inline ptrdiff_t cyl_bf16_abuf_len(ptrdiff_t K)
{
    return (ptrdiff_t)CYL_BF16_MS * cyl_bf16_kp(K);
}

/* ... and one cyl_amx_bf16_gemm2 call (two operands). */
static inline ptrdiff_t cyl_bf16_abuf2_len(ptrdiff_t K, ptrdiff_t K2)
{
    return cyl_bf16_abuf_len(K) + cyl_bf16_abuf_len(K2);
}

/* P = the tile-packed bf16 copy of the K x N matrix whose element (k, n) is
 * W[k * sk + n * sn], rounded to nearest even (cyl_bf16_bits, as
 * cylstm.quantization.round_bfloat16 rounds).  sn = 1: W row-major with row
 * stride sk; sk = 1: the transpose of a row-major matrix (the backward's U^T and
 * W^T, read from U and W). */
static void cyl_bf16_tiles_pack_strided(const float* W, ptrdiff_t K, ptrdiff_t N,
                                        ptrdiff_t sk, ptrdiff_t sn, uint16_t* P)
{
    const ptrdiff_t kp = cyl_bf16_kp(K), np = cyl_bf16_np(N), kb_n = kp / 32;
    ptrdiff_t k2, nb, c;
    for (k2 = 0; k2 < kp / 2; k2++) {
        const ptrdiff_t k = 2 * k2, kb = k / 32, r = (k % 32) / 2;
        const float* w0 = k < K ? W + k * sk : NULL;
        const float* w1 = k + 1 < K ? W + (k + 1) * sk : NULL;
        for (nb = 0; nb < np / 16; nb++) {
            uint16_t* d = P + ((nb * kb_n + kb) * 16 + r) * 32;
            for (c = 0; c < 16; c++) {
                const ptrdiff_t n = nb * 16 + c;
                d[2 * c] = (w0 != NULL && n < N) ? cyl_bf16_bits(w0[n * sn]) : 0;
                d[2 * c + 1] = (w1 != NULL && n < N) ? cyl_bf16_bits(w1[n * sn]) : 0;
            }
        }
    }
}

/* The row-major case: W (K x N, row stride ldw). */
static void cyl_bf16_tiles_pack(const float* W, ptrdiff_t K, ptrdiff_t N, ptrdiff_t ldw,
                                uint16_t* P)
{
    cyl_bf16_tiles_pack_strided(W, K, N, ldw, 1, P);
}

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && \
    !defined(__INTEL_COMPILER) && !defined(CYLSTM_NO_AMX) && \
    (defined(__clang__) || __GNUC__ >= 11)
#define CYL_HAVE_AMX 1
#include <immintrin.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <cpuid.h>

#define CYL_AMX_TARGET \
    __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16")))

static int cyl_amx_state = -1;    /* -1: not asked yet; 0: no; 1: granted */
static int cyl_amx_forced = -1;   /* cyl_amx_force: -1 none, 0 off */
static int cyl_amx_why = 0;       /* 0 ok, 1 no CPU support, 2 the kernel refused */

static int cyl_amx_ask(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 24)) || !(d & (1u << 22))) {
        cyl_amx_why = 1;                 /* no AMX-TILE / AMX-BF16 */
        return 0;
    }
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d) || !(a & (1u << 5))) {
        cyl_amx_why = 1;                 /* no AVX512-BF16 (the A rounding uses it) */
        return 0;
    }
    /* ARCH_REQ_XCOMP_PERM (0x1023) for XFEATURE_XTILEDATA (18) */
    if (syscall(SYS_arch_prctl, 0x1023, 18) != 0) {
        cyl_amx_why = 2;
        return 0;
    }
    cyl_amx_why = 0;
    return 1;
}

/* Whether this process may run the AMX kernel now (asks the kernel once). */
static int cyl_amx_bf16_usable(void)
{
    if (cyl_cpu_level() < 2 || cyl_amx_forced == 0)
        return 0;
    if (cyl_amx_state < 0)
        cyl_amx_state = cyl_amx_ask();
    return cyl_amx_state;
}

/* 0: the CPU lacks AMX-BF16 (or AVX512-BF16), 1: no AMX kernel in this build (the
 * stub below), 2: Linux refused the AMX state,
 * 3: a lower level forced (CYLSTM_CPU), 4: turned off (cyl_amx_force), 5: usable. */
static int cyl_amx_bf16_status(void)
{
    if (cyl_amx_forced == 0)
        return 4;
    if (cyl_cpu_level() < 2)
        return cyl_cpu_detected_level() == 2 ? 3 : 0;
    if (cyl_amx_bf16_usable())
        return 5;
    return cyl_amx_why == 2 ? 2 : 0;
}

/* 0 turns the AMX kernel off, -1 restores detection; returns the previous value. */
static int cyl_amx_force(int on)
{
    int previous = cyl_amx_forced;
    cyl_amx_forced = on == 0 ? 0 : -1;
    return previous;
}

static int cyl_dots_state = -1;   /* -1: not asked yet; 0: no AVX512-BF16; 1: yes */
static int cyl_dots_forced = -1;  /* cyl_bf16_dots_force: -1 none, 0 off */

/* Whether the AVX512-BF16 kernels (the dot products, the hardware packs and A's
 * rounding) run here: an AVX-512 level not forced lower, and the CPU's
 * AVX512-BF16 (AMD Zen 4, Intel Cooper Lake and Sapphire Rapids on). */
static int cyl_bf16_dots_usable(void)
{
    unsigned a, b, c, d;
    if (cyl_cpu_level() < 2 || cyl_dots_forced == 0)
        return 0;
    if (cyl_dots_state < 0)
        cyl_dots_state = __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 5)) ? 1 : 0;
    return cyl_dots_state;
}

/* Why (not): 0 the CPU lacks AVX512-BF16, 3 a lower level forced (CYLSTM_CPU), 4
 * turned off (cyl_bf16_dots_force), 5 usable (the codes of cyl_amx_bf16_status). */
static int cyl_bf16_dots_status(void)
{
    if (cyl_dots_forced == 0)
        return 4;
    if (cyl_cpu_level() < 2)
        return cyl_cpu_detected_level() == 2 ? 3 : 0;
    return cyl_bf16_dots_usable() ? 5 : 0;
}

/* 0 turns the AVX512-BF16 kernels off (the AMX ones too: they round and pack with
 * them), -1 restores detection; returns the previous value. */
static int cyl_bf16_dots_force(int on)
{
    int previous = cyl_dots_forced;
    cyl_dots_forced = on == 0 ? 0 : -1;
    return previous;
}

/* What runs the tile-layout bf16 products (cyl_amx_bf16_gemm and its kin): 2 AMX
 * tiles (dot products for the few-row ones), 1 AVX512-BF16 dot products only, 0
 * nothing (the caller emulates: float32 products of rounded operands). */
static int cyl_bf16_engine(void)
{
    if (!cyl_bf16_dots_usable())
        return 0;
    return cyl_amx_bf16_usable() ? 2 : 1;
}

typedef struct {
    uint8_t palette, start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} cyl_tilecfg;

/* Eight tiles of 16 rows x 64 bytes.  A constant in memory, not a local: GCC 12's
 * _tile_loadconfig tells the compiler it reads 8 bytes of the 64, and at -O3 the
 * stores to the rest of a local configuration were dropped (ldtilecfg then
 * faulted on the garbage). */
static const cyl_tilecfg cyl_amx_cfg __attribute__((aligned(64))) = {
    1, 0, {0},
    {64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0},
    {16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0}};

CYL_AMX_TARGET static void cyl_amx_config(void)
{
    _tile_loadconfig(&cyl_amx_cfg);
}

/* The lanes of a 16-float load that hold elements when `left` remain (all 16 from
 * 16 on, none from 0 down). */
static inline __mmask16 cyl_mask16(ptrdiff_t left)
{
    return left >= 16 ? (__mmask16)0xFFFF
                      : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1);
}

/* Rows [0, m) of A (row stride lda) rounded to bf16 into abuf (row stride kp),
 * k from K to kp and rows from m to the next multiple of 16 zero. */
CYL_AMX_TARGET static void cyl_amx_round_rows(const float* A, ptrdiff_t lda, ptrdiff_t m,
                                              ptrdiff_t K, ptrdiff_t kp, uint16_t* abuf)
{
    const ptrdiff_t m16 = (m + 15) / 16 * 16;
    ptrdiff_t r, k;
    for (r = 0; r < m; r++) {
        const float* a = A + r * lda;
        uint16_t* d = abuf + r * kp;
        for (k = 0; k + 32 <= K; k += 32) {
            const __m512 lo = _mm512_loadu_ps(a + k), hi = _mm512_loadu_ps(a + k + 16);
            _mm512_storeu_si512((void*)(d + k), (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
        }
        if (k < kp) {   /* the last, partial block of 32, zero-padded */
            const ptrdiff_t left = K - k;
            const __mmask16 mlo = cyl_mask16(left), mhi = cyl_mask16(left - 16);
            const __m512 lo = _mm512_maskz_loadu_ps(mlo, a + k);
            const __m512 hi = _mm512_maskz_loadu_ps(mhi, a + k + 16);
            _mm512_storeu_si512((void*)(d + k), (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
        }
    }
    for (; r < m16; r++)
        memset(abuf + r * kp, 0, (size_t)kp * sizeof(uint16_t));
}

/* Rows [0, m) of A^T rounded to bf16 into abuf (row stride kp), A being K x (>= m)
 * with row stride lda: abuf row r is column r of A (the backward's x^T and h^T,
 * whose columns are the rows of a weight gradient).  Zero-padded as
 * cyl_amx_round_rows pads.  Blocks of 16 k x 16 columns: each A row segment read
 * is one cache line, each abuf row written 16 k at a time. */
CYL_AMX_TARGET static void cyl_amx_round_cols(const float* A, ptrdiff_t lda, ptrdiff_t m,
                                              ptrdiff_t K, ptrdiff_t kp, uint16_t* abuf)
{
    const ptrdiff_t m16 = (m + 15) / 16 * 16;
    ptrdiff_t r0, k0, r, k;
    for (r0 = 0; r0 < m; r0 += 16) {
        const ptrdiff_t re = m - r0 < 16 ? m : r0 + 16;
        for (k0 = 0; k0 < K; k0 += 16) {
            const ptrdiff_t ke = K - k0 < 16 ? K : k0 + 16;
            for (k = k0; k < ke; k++) {
                const float* a = A + k * lda;
                for (r = r0; r < re; r++)
                    abuf[r * kp + k] = cyl_bf16_bits(a[r]);
            }
        }
        for (r = r0; r < re; r++)
            if (kp > K)
                memset(abuf + r * kp + K, 0, (size_t)(kp - K) * sizeof(uint16_t));
    }
    for (r = m; r < m16; r++)
        memset(abuf + r * kp, 0, (size_t)kp * sizeof(uint16_t));
}

/* cyl_bf16_tiles_pack of a row-major W, 16 columns and two rows of K at a time
 * (the backward packs dz, a fresh matrix, every call: the scalar pack ran at 2
 * GB/s).  Rounds as the hardware's vcvtne2ps2bf16 does (nearest even; it flushes
 * denormals to zero, as the AMX product does with its inputs). */
CYL_AMX_TARGET static void cyl_amx_tiles_pack(const float* W, ptrdiff_t K, ptrdiff_t N,
                                              ptrdiff_t ldw, uint16_t* P)
{
    const ptrdiff_t kp = cyl_bf16_kp(K), np = cyl_bf16_np(N), kb_n = kp / 32;
    uint16_t order[32];
    __m512i idx;
    ptrdiff_t k2, nb, c;
    for (c = 0; c < 16; c++) {   /* element 2c: row k's column c; 2c + 1: row k + 1's */
        order[2 * c] = (uint16_t)c;
        order[2 * c + 1] = (uint16_t)(16 + c);
    }
    idx = _mm512_loadu_si512((const void*)order);
    for (k2 = 0; k2 < kp / 2; k2++) {
        const ptrdiff_t k = 2 * k2, kb = k / 32, r = (k % 32) / 2;
        const float* w0 = W + k * ldw;
        const float* w1 = W + (k + 1) * ldw;
        for (nb = 0; nb < np / 16; nb++) {
            const ptrdiff_t n0 = nb * 16, left = N - n0;
            const __mmask16 mk = cyl_mask16(left);
            const __m512 lo = k < K ? _mm512_maskz_loadu_ps(mk, w0 + n0) : _mm512_setzero_ps();
            const __m512 hi = k + 1 < K ? _mm512_maskz_loadu_ps(mk, w1 + n0)
                                        : _mm512_setzero_ps();
            const __m512i v = _mm512_permutexvar_epi16(
                idx, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512((void*)(P + ((nb * kb_n + kb) * 16 + r) * 32), v);
        }
    }
}

/* The same layout of the transpose of a row-major W (N x K, row stride ldw):
 * element (k, n) is W[n * ldw + k] (the backward's U^T and W^T, packed from U and
 * W every training step).  Per 32 k x 16 column block: each column's 32 k are one
 * row segment of W, rounded into 16 pairs, the pairs scattered to the block's 16
 * rows. */
CYL_AMX_TARGET static void cyl_amx_tiles_pack_t(const float* W, ptrdiff_t K, ptrdiff_t N,
                                                ptrdiff_t ldw, uint16_t* P)
{
    const ptrdiff_t kp = cyl_bf16_kp(K), np = cyl_bf16_np(N), kb_n = kp / 32;
    int rows16[16];
    __m512i vidx;
    ptrdiff_t nb, kb, c;
    for (c = 0; c < 16; c++)
        rows16[c] = (int)(16 * c);   /* pair r of a column at uint32 r * 16 + column */
    vidx = _mm512_loadu_si512((const void*)rows16);
    for (nb = 0; nb < np / 16; nb++) {
        for (kb = 0; kb < kb_n; kb++) {
            const ptrdiff_t k0 = kb * 32, left = K - k0;
            const __mmask16 mlo = cyl_mask16(left), mhi = cyl_mask16(left - 16);
            int* d = (int*)(P + (nb * kb_n + kb) * 512);
            for (c = 0; c < 16; c++) {
                const ptrdiff_t n = nb * 16 + c;
                __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
                if (n < N) {
                    lo = _mm512_maskz_loadu_ps(mlo, W + n * ldw + k0);
                    hi = _mm512_maskz_loadu_ps(mhi, W + n * ldw + k0 + 16);
                }
                _mm512_i32scatter_epi32((void*)(d + c), vidx,
                                        (__m512i)_mm512_cvtne2ps_pbh(hi, lo), 4);
            }
        }
    }
}

/* One operand pair of a sum of products: A's rows rounded into abuf (row stride
 * kp, the padded K), times the tile-packed P (K x N). */
typedef struct {
    const uint16_t* abuf;
    ptrdiff_t kp;
    const uint16_t* P;
} cyl_bf16_src;

/* A k range of one operand pair for the dot kernel: A's bf16 rows from `a` (row
 * stride kp), the column group's B from `b` (block g at b + g * bstride), the k
 * pairs [k2a, k2b). */
typedef struct {
    const uint16_t* a;
    ptrdiff_t kp;
    const uint16_t* b;
    ptrdiff_t bstride, k2a, k2b;
} cyl_bf16_span;

/* C's rows [0, m) (m <= CYL_BF16_DOT_RB), column blocks [0, ng) (ng <= 4) from
 * column n0, (+)= the sum over the spans of a's bf16 rows from row r0 @ b over
 * the span's k pairs, without the tiles: AVX512-BF16 `vdpbf16ps` over the tile
 * layout as it lies.  A B tile's row r holds, per column, the pair (k = 2r,
 * 2r + 1): multiplied by A's pair broadcast to every lane it adds both products
 * into that column's sum, and a column block's rows follow each other along K, so
 * each block streams once, four blocks side by side: m x 4 chains of sums, the
 * four B vectors of a pair reused by the m rows.  Two spans (a fused step's x_t @ W
 * and h_prev @ U) add into the same registers, so C is read and written once.
 * The sums are float32 sums of the same bf16 products as the tiles', in another
 * order. */
CYL_AMX_TARGET static inline __attribute__((always_inline)) void
cyl_bf16_dot_block(const cyl_bf16_span* sp, int nsp, ptrdiff_t r0, const int m,
                   const int ng, float* C, ptrdiff_t ldc, ptrdiff_t n0, ptrdiff_t N,
                   int accumulate)
{
    __m512 acc[CYL_BF16_DOT_RB][4];
    ptrdiff_t k2;
    int r, g, s;
    for (r = 0; r < m; r++)
        for (g = 0; g < ng; g++)
            acc[r][g] = _mm512_setzero_ps();
    for (s = 0; s < nsp; s++) {
        const uint16_t* a = sp[s].a + r0 * sp[s].kp;
        const uint16_t* b = sp[s].b;
        const ptrdiff_t kp = sp[s].kp, bstride = sp[s].bstride;
        for (k2 = sp[s].k2a; k2 < sp[s].k2b; k2++) {
            __m512i bv[4];
            for (g = 0; g < ng; g++)
                bv[g] = _mm512_loadu_si512((const void*)(b + g * bstride + k2 * 32));
            for (r = 0; r < m; r++) {
                uint32_t pair;
                memcpy(&pair, a + r * kp + 2 * k2, sizeof(pair));
                const __m512i av = _mm512_set1_epi32((int)pair);
                for (g = 0; g < ng; g++)
                    acc[r][g] = _mm512_dpbf16_ps(acc[r][g], (__m512bh)av, (__m512bh)bv[g]);
            }
        }
    }
    for (g = 0; g < ng; g++) {
        const ptrdiff_t c0 = n0 + g * 16;
        const __mmask16 mk = cyl_mask16(N - c0);
        for (r = 0; r < m; r++) {
            float* c = C + r * ldc + c0;
            __m512 v = acc[r][g];
            if (accumulate)
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mk, c));
            _mm512_mask_storeu_ps(c, mk, v);
        }
    }
}

#define CYL_BF16_DOT_CASE(M_, G_)                                                \
    case (M_) * 8 + (G_):                                                        \
        cyl_bf16_dot_block(sp, nsp, r0, M_, G_, C, ldc, n0, N, accumulate);      \
        break;
#define CYL_BF16_DOT_ROW(M_) \
    CYL_BF16_DOT_CASE(M_, 1) CYL_BF16_DOT_CASE(M_, 2) CYL_BF16_DOT_CASE(M_, 3) \
    CYL_BF16_DOT_CASE(M_, 4)

CYL_AMX_TARGET static void cyl_bf16_dot_any(const cyl_bf16_span* sp, int nsp, ptrdiff_t r0,
                                            int m, int ng, float* C, ptrdiff_t ldc,
                                            ptrdiff_t n0, ptrdiff_t N, int accumulate)
{
    switch (m * 8 + ng) {
    CYL_BF16_DOT_ROW(1) CYL_BF16_DOT_ROW(2) CYL_BF16_DOT_ROW(3)
    CYL_BF16_DOT_ROW(4) CYL_BF16_DOT_ROW(5) CYL_BF16_DOT_ROW(6)
    default: break;
    }
}
#undef CYL_BF16_DOT_ROW
#undef CYL_BF16_DOT_CASE

/* C (M x N) (+)= the sum over the nsrc (1 or 2) operand pairs of their M bf16
 * rows @ P, on dot products, any M: for each group of four column blocks, the
 * operands' k tiles (32 k each) in turn, CYL_BF16_DOT_KB at a time, so that the
 * group's B for a pass (4 x CYL_BF16_DOT_KB KiB) stays in L2 while row blocks of
 * CYL_BF16_DOT_RB rows run over it; C takes each pass's partial sums (one pass
 * for both products of a fused step up to 1024 k: 114 us where the two products
 * one after the other took 121, 32 x (128 + 256) @ 1024, the dot kernel alone, AMD
 * EPYC (2 cores), Zen 4, 2026-12-06). */
CYL_AMX_TARGET static void cyl_bf16_dots_gemm(const cyl_bf16_src* src, int nsrc, ptrdiff_t M,
                                              ptrdiff_t N, float* C, ptrdiff_t ldc,
                                              int accumulate)
{
    const ptrdiff_t nblk = (N + 15) / 16;
    ptrdiff_t tiles = 0, t0, nb0, r0;
    int s;
    for (s = 0; s < nsrc; s++)
        tiles += src[s].kp / 32;
    if (tiles == 0) {   /* an empty sum */
        if (!accumulate)
            for (r0 = 0; r0 < M; r0++)
                memset(C + r0 * ldc, 0, (size_t)N * sizeof(float));
        return;
    }
    for (nb0 = 0; nb0 < nblk; nb0 += 4) {
        const int ng = nblk - nb0 < 4 ? (int)(nblk - nb0) : 4;
        for (t0 = 0; t0 < tiles; t0 += CYL_BF16_DOT_KB) {
            const ptrdiff_t t1 = tiles - t0 < CYL_BF16_DOT_KB ? tiles : t0 + CYL_BF16_DOT_KB;
            cyl_bf16_span sp[2];
            ptrdiff_t base = 0;
            int nsp = 0;
            for (s = 0; s < nsrc; s++) {
                const ptrdiff_t kb_n = src[s].kp / 32;
                const ptrdiff_t lo = t0 > base ? t0 : base;
                const ptrdiff_t hi = t1 < base + kb_n ? t1 : base + kb_n;
                if (lo < hi) {
                    sp[nsp].a = src[s].abuf;
                    sp[nsp].kp = src[s].kp;
                    sp[nsp].bstride = kb_n * 512;
                    sp[nsp].b = src[s].P + nb0 * sp[nsp].bstride;
                    sp[nsp].k2a = (lo - base) * 16;
                    sp[nsp].k2b = (hi - base) * 16;
                    nsp++;
                }
                base += kb_n;
            }
            for (r0 = 0; r0 < M; r0 += CYL_BF16_DOT_RB) {
                const int m = M - r0 < CYL_BF16_DOT_RB ? (int)(M - r0) : CYL_BF16_DOT_RB;
                cyl_bf16_dot_any(sp, nsp, r0, m, ng, C + r0 * ldc, ldc, nb0 * 16, N,
                                 accumulate || t0 > 0);
            }
        }
    }
}

/* One 16 x 16 C tile at (m0, n0) of the superblock, through `tmp` where it is
 * partial (rows past m, columns past N). */
CYL_AMX_TARGET static void cyl_amx_tile1(const cyl_bf16_src* src, int nsrc, ptrdiff_t m0,
                                         ptrdiff_t m, ptrdiff_t n0, ptrdiff_t N, float* C,
                                         ptrdiff_t ldc, int accumulate)
{
    float tmp[256];
    const ptrdiff_t rows = m - m0 < 16 ? m - m0 : 16;
    const ptrdiff_t cols = N - n0 < 16 ? N - n0 : 16;
    const int direct = rows == 16 && cols == 16;
    float* c = C + m0 * ldc + n0;
    ptrdiff_t kb, r;
    int i;
    if (!accumulate) {
        _tile_zero(0);
    } else if (direct) {
        _tile_loadd(0, c, ldc * 4);
    } else {
        memset(tmp, 0, sizeof(tmp));
        for (r = 0; r < rows; r++)
            memcpy(tmp + 16 * r, c + r * ldc, (size_t)cols * sizeof(float));
        _tile_loadd(0, tmp, 64);
    }
    for (i = 0; i < nsrc; i++) {
        const ptrdiff_t kp = src[i].kp, kb_n = kp / 32;
        const uint16_t* b = src[i].P + (n0 / 16) * kb_n * 512;
        const uint16_t* a = src[i].abuf + m0 * kp;
        for (kb = 0; kb < kb_n; kb++) {
            _tile_loadd(4, a + kb * 32, kp * 2);
            _tile_loadd(6, b + kb * 512, 64);
            _tile_dpbf16ps(0, 4, 6);
        }
    }
    if (direct) {
        _tile_stored(0, c, ldc * 4);
    } else {
        _tile_stored(0, tmp, 64);
        for (r = 0; r < rows; r++)
            memcpy(c + r * ldc, tmp + 16 * r, (size_t)cols * sizeof(float));
    }
}

/* Four full C tiles: rows m0 .. m0 + 31, columns n0 .. n0 + 31. */
CYL_AMX_TARGET static void cyl_amx_tile22(const cyl_bf16_src* src, int nsrc, ptrdiff_t m0,
                                          ptrdiff_t n0, float* C, ptrdiff_t ldc, int accumulate)
{
    float* c = C + m0 * ldc + n0;
    ptrdiff_t kb;
    int i;
    if (accumulate) {
        _tile_loadd(0, c, ldc * 4);
        _tile_loadd(1, c + 16, ldc * 4);
        _tile_loadd(2, c + 16 * ldc, ldc * 4);
        _tile_loadd(3, c + 16 * ldc + 16, ldc * 4);
    } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
    }
    /* both B tiles first, then each A tile and its two products: one product
     * per 16 cycles from L1 (Sapphire Rapids class Xeon, 2026-12-03), where
     * loading A0 first and B1 between the products took 17-23 */
    for (i = 0; i < nsrc; i++) {
        const ptrdiff_t kp = src[i].kp, kb_n = kp / 32;
        const uint16_t* b0 = src[i].P + (n0 / 16) * kb_n * 512;
        const uint16_t* b1 = b0 + kb_n * 512;
        const uint16_t* a0 = src[i].abuf + m0 * kp;
        const uint16_t* a1 = a0 + 16 * kp;
        for (kb = 0; kb < kb_n; kb++) {
            _tile_loadd(6, b0 + kb * 512, 64);
            _tile_loadd(7, b1 + kb * 512, 64);
            _tile_loadd(4, a0 + kb * 32, kp * 2);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_loadd(5, a1 + kb * 32, kp * 2);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
    }
    _tile_stored(0, c, ldc * 4);
    _tile_stored(1, c + 16, ldc * 4);
    _tile_stored(2, c + 16 * ldc, ldc * 4);
    _tile_stored(3, c + 16 * ldc + 16, ldc * 4);
}

/* cyl_amx_bf16_gemm, cyl_amx_bf16_gemm_tn (transa: A stored transposed) and, with
 * A2 (M x K2, row stride lda2; not NULL), cyl_amx_bf16_gemm2: C (+)= bf16(A) @ P +
 * bf16(A2) @ P2, both sums in the C tiles before they are stored.  abuf:
 * cyl_bf16_abuf_len(K) (+ cyl_bf16_abuf_len(K2)) elements. */
CYL_AMX_TARGET static void cyl_amx_gemm_body(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
                                             const float* A, ptrdiff_t lda, int transa,
                                             const uint16_t* P, ptrdiff_t K2,
                                             const float* A2, ptrdiff_t lda2,
                                             const uint16_t* P2, float* C, ptrdiff_t ldc,
                                             int accumulate, uint16_t* abuf)
{
    const ptrdiff_t kp = cyl_bf16_kp(K), kp2 = A2 != NULL ? cyl_bf16_kp(K2) : 0;
    uint16_t* abuf2 = abuf + (ptrdiff_t)CYL_BF16_MS * kp;
    cyl_bf16_src src[2];
    const int nsrc = A2 != NULL ? 2 : 1;
    ptrdiff_t s0, n0, m0;
    src[0].abuf = abuf;
    src[0].kp = kp;
    src[0].P = P;
    src[1].abuf = abuf2;
    src[1].kp = kp2;
    src[1].P = P2;
    if (M <= 0 || N <= 0)
        return;
    if (K <= 0 && A2 == NULL) {   /* an empty sum */
        if (!accumulate)
            for (m0 = 0; m0 < M; m0++)
                memset(C + m0 * ldc, 0, (size_t)N * sizeof(float));
        return;
    }
    if (M <= cyl_bf16_dot_max || !cyl_amx_bf16_usable()) {
        /* a row or a few, or no AMX here (cyl_bf16_engine() 1): dot products */
        for (s0 = 0; s0 < M; s0 += CYL_BF16_MS) {
            const ptrdiff_t m = M - s0 < CYL_BF16_MS ? M - s0 : CYL_BF16_MS;
            float* cs = C + s0 * ldc;
            if (transa)
                cyl_amx_round_cols(A + s0, lda, m, K, kp, abuf);
            else
                cyl_amx_round_rows(A + s0 * lda, lda, m, K, kp, abuf);
            if (A2 != NULL)
                cyl_amx_round_rows(A2 + s0 * lda2, lda2, m, K2, kp2, abuf2);
            cyl_bf16_dots_gemm(src, nsrc, m, N, cs, ldc, accumulate);
        }
        return;
    }
    cyl_amx_config();
    for (s0 = 0; s0 < M; s0 += CYL_BF16_MS) {
        const ptrdiff_t m = M - s0 < CYL_BF16_MS ? M - s0 : CYL_BF16_MS;
        const ptrdiff_t m32 = m / 32 * 32;
        float* cs = C + s0 * ldc;
        if (transa)
            cyl_amx_round_cols(A + s0, lda, m, K, kp, abuf);
        else
            cyl_amx_round_rows(A + s0 * lda, lda, m, K, kp, abuf);
        if (A2 != NULL)
            cyl_amx_round_rows(A2 + s0 * lda2, lda2, m, K2, kp2, abuf2);
        for (n0 = 0; n0 < N; n0 += 32) {
            if (n0 + 32 <= N) {
                for (m0 = 0; m0 < m32; m0 += 32)
                    cyl_amx_tile22(src, nsrc, m0, n0, cs, ldc, accumulate);
                for (m0 = m32; m0 < m; m0 += 16) {
                    cyl_amx_tile1(src, nsrc, m0, m, n0, N, cs, ldc, accumulate);
                    cyl_amx_tile1(src, nsrc, m0, m, n0 + 16, N, cs, ldc, accumulate);
                }
            } else {
                for (m0 = 0; m0 < m; m0 += 16) {
                    cyl_amx_tile1(src, nsrc, m0, m, n0, N, cs, ldc, accumulate);
                    if (n0 + 16 < N)
                        cyl_amx_tile1(src, nsrc, m0, m, n0 + 16, N, cs, ldc, accumulate);
                }
            }
        }
    }
    _tile_release();
}

/* C (M x N, row stride ldc) = (accumulate: +=) bf16(A) (M x K, row stride lda) @ P
 * (tile-packed K x N).  `abuf`: cyl_bf16_abuf_len(K) elements.  Only where
 * cyl_amx_bf16_usable(). */
CYL_AMX_TARGET static void cyl_amx_bf16_gemm(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
                                             const float* A, ptrdiff_t lda,
                                             const uint16_t* P, float* C, ptrdiff_t ldc,
                                             int accumulate, uint16_t* abuf)
{
    cyl_amx_gemm_body(M, N, K, A, lda, 0, P, 0, NULL, 0, NULL, C, ldc, accumulate, abuf);
}

/* The same with A given transposed: C (M x N) = (+=) bf16(A^T) @ P, A stored K x M
 * (row stride lda >= M), as BLAS's transa = 'T'. */
CYL_AMX_TARGET static void cyl_amx_bf16_gemm_tn(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
                                                const float* A, ptrdiff_t lda,
                                                const uint16_t* P, float* C, ptrdiff_t ldc,
                                                int accumulate, uint16_t* abuf)
{
    cyl_amx_gemm_body(M, N, K, A, lda, 1, P, 0, NULL, 0, NULL, C, ldc, accumulate, abuf);
}

/* C (+)= bf16(A) (M x K) @ P + bf16(A2) (M x K2) @ P2 in one pass over C's tiles
 * (a fused step's x_t @ W + h_prev @ U).  abuf: cyl_bf16_abuf2_len(K, K2). */
CYL_AMX_TARGET static void cyl_amx_bf16_gemm2(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
                                              const float* A, ptrdiff_t lda,
                                              const uint16_t* P, ptrdiff_t K2,
                                              const float* A2, ptrdiff_t lda2,
                                              const uint16_t* P2, float* C, ptrdiff_t ldc,
                                              int accumulate, uint16_t* abuf)
{
    cyl_amx_gemm_body(M, N, K, A, lda, 0, P, K2, A2, lda2, P2, C, ldc, accumulate, abuf);
}

#else   /* no AMX in this build */
#define CYL_HAVE_AMX 0

static inline int cyl_amx_bf16_usable(void) { return 0; }
static inline int cyl_amx_bf16_status(void) { return 1; }
static inline int cyl_amx_force(int on) { (void)on; return -1; }
static inline int cyl_bf16_dots_usable(void) { return 0; }
static inline int cyl_bf16_dots_force(int on) { (void)on; return -1; }
static inline int cyl_bf16_dots_status(void) { return 1; }
static inline int cyl_bf16_engine(void) { return 0; }
static inline void cyl_amx_bf16_gemm(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const float* A,
                                     ptrdiff_t lda, const uint16_t* P, float* C,
                                     ptrdiff_t ldc, int accumulate, uint16_t* abuf)
{
    (void)M; (void)N; (void)K; (void)A; (void)lda; (void)P; (void)C; (void)ldc;
    (void)accumulate; (void)abuf;
}
static inline void cyl_amx_bf16_gemm2(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const float* A,
                                       ptrdiff_t lda, const uint16_t* P, ptrdiff_t K2,
                                       const float* A2, ptrdiff_t lda2, const uint16_t* P2,
                                       float* C, ptrdiff_t ldc, int accumulate, uint16_t* abuf)
{
    (void)M; (void)N; (void)K; (void)A; (void)lda; (void)P; (void)K2; (void)A2;
    (void)lda2; (void)P2; (void)C; (void)ldc; (void)accumulate; (void)abuf;
}
static inline void cyl_amx_bf16_gemm_tn(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
                                        const float* A, ptrdiff_t lda, const uint16_t* P,
                                        float* C, ptrdiff_t ldc, int accumulate,
                                        uint16_t* abuf)
{
    cyl_amx_bf16_gemm(M, N, K, A, lda, P, C, ldc, accumulate, abuf);
}
static inline void cyl_amx_tiles_pack(const float* W, ptrdiff_t K, ptrdiff_t N,
                                      ptrdiff_t ldw, uint16_t* P)
{
    cyl_bf16_tiles_pack(W, K, N, ldw, P);
}
static inline void cyl_amx_tiles_pack_t(const float* W, ptrdiff_t K, ptrdiff_t N,
                                        ptrdiff_t ldw, uint16_t* P)
{
    cyl_bf16_tiles_pack_strided(W, K, N, 1, ldw, P);
}
#endif

#endif /* CYLSTM_BF16_H */
