/*
 * cylstm_cpu.h -- which x86-64 level the kernels run, and the per-level
 * variants they are stamped out as.
 *
 * Levels: 2 = x86-64-v4 (AVX-512 F/BW/VL/DQ/CD), 1 = x86-64-v3 (AVX2 + FMA),
 * 0 = baseline (or not x86-64 / not GCC-Clang).
 *
 *   cyl_cpu_detected_level()  what the CPU has, asked once;
 *   cyl_cpu_level()           what the kernels run: the detected level lowered
 *                             to a forced one, if any;
 *   cyl_cpu_force(level)      force a level in-process (-1: no override).
 *
 * A level is forced by the environment variable CYLSTM_CPU (avx512, avx2 or
 * baseline, any case; unset or empty: detect), read here with getenv so that
 * every extension module agrees, or by cyl_cpu_force, which overrides it.  A
 * level is never raised above the detected one, so forcing cannot select
 * instructions the CPU lacks.  An unknown CYLSTM_CPU value is ignored here:
 * cylstm/__init__.py refuses it at import, with a clear error
 * (cylstm/_cpu.py), before any kernel runs.
 *
 * Every extension module that includes this header has its own copy of the
 * state below (it is static); cylstm/_cpu.py forces all of them together.
 */
#ifndef CYLSTM_CPU_H
#define CYLSTM_CPU_H

#include <stdlib.h>

static int cyl_cpu_detect(void)
{
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")
        && __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx2")
        && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2"))
        return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
        && __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("movbe")
        && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("bmi")
        && __builtin_cpu_supports("popcnt"))
        return 1;
#endif
    return 0;
}

/* ASCII, case-insensitive equality (no locale: tolower may depend on it). */
static int cyl_cpu_name_is(const char *s, const char *name)
{
    for (; *s && *name; s++, name++) {
        char c = *s;
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (c != *name)
            return 0;
    }
    return *s == '\0' && *name == '\0';
}

/* The level CYLSTM_CPU asks for; -1 when unset, empty or unknown. */
static int cyl_cpu_env_level(void)
{
    const char *s = getenv("CYLSTM_CPU");
    if (s == NULL || *s == '\0')
        return -1;
    if (cyl_cpu_name_is(s, "avx512"))
        return 2;
    if (cyl_cpu_name_is(s, "avx2"))
        return 1;
    if (cyl_cpu_name_is(s, "baseline"))
        return 0;
    return -1;
}

/* Caches (benign races: every thread stores the same value).  cyl_cpu_forced
 * is the in-process override, -1 for none. */
static int cyl_cpu_detected_cache = -1;
static int cyl_cpu_level_cache = -1;
static int cyl_cpu_forced = -1;

static inline int cyl_cpu_detected_level(void)
{
    if (cyl_cpu_detected_cache < 0)
        cyl_cpu_detected_cache = cyl_cpu_detect();
    return cyl_cpu_detected_cache;
}

static int cyl_cpu_level_uncached(void)
{
    int level = cyl_cpu_detected_level();
    int forced = cyl_cpu_forced >= 0 ? cyl_cpu_forced : cyl_cpu_env_level();
    return forced >= 0 && forced < level ? forced : level;
}

/* Called per panel and per row: one load and one compare once cached. */
static inline int cyl_cpu_level(void)
{
    int level = cyl_cpu_level_cache;
    if (level < 0)
        cyl_cpu_level_cache = level = cyl_cpu_level_uncached();
    return level;
}

/* Force `level` (0..2; -1 drops the override, CYLSTM_CPU applies again);
 * returns the override it replaces.  Not for use while kernels run on other
 * threads (they would finish on whichever level each call started with). */
static int cyl_cpu_force(int level)
{
    int previous = cyl_cpu_forced;
    cyl_cpu_forced = level < 0 ? -1 : level > 2 ? 2 : level;
    cyl_cpu_level_cache = -1;
    return previous;
}

/*
 * Per-level variants.  Where GCC >= 12 or Clang targets x86-64 Linux (and
 * -DCYLSTM_NO_CLONES is not given),
 *
 *     CYL_ISA_KERNEL(NAME, PARAMS, ARGS, BODY, BODY_ARGS)
 *
 * compiles the body three times -- NAME_v4 for x86-64-v4, NAME_v3 for
 * x86-64-v3, NAME_v0 for the baseline -- and defines NAME, which calls the one
 * for cyl_cpu_level() (a switch on a cached int, then a direct call).
 * Elsewhere it defines NAME once.  Inside the body the enum constant CYL_ISA is
 * the variant's level (-1 in a single build), so level-specific code is a
 * compile-time branch: see CYL_ISA_IS_V4.
 *
 * PARAMS is the parenthesized parameter list and ARGS the same names as a
 * call's argument list.  BODY is the name of a function-like macro and
 * BODY_ARGS its parenthesized arguments: they meet only in the replacement
 * text, so the body expands while it is rescanned, never as a macro argument
 * (where bare commas would split it and GCC may misplace the _Pragma("omp
 * simd") it holds).
 */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__INTEL_COMPILER) && \
    defined(__linux__) && !defined(CYLSTM_NO_CLONES) && \
    (defined(__clang__) || __GNUC__ >= 12)
#define CYL_ISA_VARIANTS 1
#define CYL_TARGET_V4 __attribute__((target("arch=x86-64-v4")))
#define CYL_TARGET_V3 __attribute__((target("arch=x86-64-v3")))
#define CYL_ISA_KERNEL(NAME, PARAMS, ARGS, BODY, BODY_ARGS)                        \
    CYL_TARGET_V4 static void NAME##_v4 PARAMS { enum { CYL_ISA = 2 }; BODY BODY_ARGS } \
    CYL_TARGET_V3 static void NAME##_v3 PARAMS { enum { CYL_ISA = 1 }; BODY BODY_ARGS } \
    static void NAME##_v0 PARAMS { enum { CYL_ISA = 0 }; BODY BODY_ARGS }          \
    static inline void NAME PARAMS                                                 \
    {                                                                              \
        switch (cyl_cpu_level()) {                                                 \
        case 2: NAME##_v4 ARGS; return;                                            \
        case 1: NAME##_v3 ARGS; return;                                            \
        default: NAME##_v0 ARGS; return;                                           \
        }                                                                          \
    }
#else
#define CYL_ISA_VARIANTS 0
#define CYL_ISA_KERNEL CYL_ISA_SINGLE
#endif

/* One build of the body for every level (portable builds, and kernels that do
 * not gain from per-level code generation). */
#define CYL_ISA_SINGLE(NAME, PARAMS, ARGS, BODY, BODY_ARGS)                        \
    static void NAME PARAMS { enum { CYL_ISA = -1 }; BODY BODY_ARGS }

/* True where AVX-512-only code (compiled for x86-64-v4) may run: the v4
 * variant, or a single build on a CPU whose active level is 2. */
#define CYL_ISA_IS_V4 (CYL_ISA == 2 || (CYL_ISA < 0 && cyl_cpu_level() == 2))

/* Flush-to-zero and denormals-are-zero for this thread, for the duration of a
 * kernel (cyl_ftz_begin returns the mode to restore with cyl_ftz_end).
 * Gradients that fade back through time reach subnormal floats, and arithmetic
 * on those takes a microcode assist on x86 cores: a float32 backward at
 * (T, B, I, H) = (400, 32, 32, 128), gradient at the last step only, took 1.2 s
 * against 0.13 s flushed (2-vCPU Xeon, 2026-12-01).  Flushing changes values
 * below 1.2e-38 (float32) / 2.2e-308 (float64) to zero, nothing else. */
#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
static inline unsigned cyl_ftz_begin(void)
{
    const unsigned old = _mm_getcsr();
    _mm_setcsr(old | 0x8040u);   /* FTZ (bit 15) | DAZ (bit 6) */
    return old;
}
static inline void cyl_ftz_end(unsigned old) { _mm_setcsr(old); }
#else
static inline unsigned cyl_ftz_begin(void) { return 0; }
static inline void cyl_ftz_end(unsigned old) { (void)old; }
#endif

#endif /* CYLSTM_CPU_H */
