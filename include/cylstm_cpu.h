/*
 * cylstm_cpu.h -- which x86-64 level this CPU runs, asked once.
 *
 * 2 = x86-64-v4 (AVX-512 F/BW/VL/DQ/CD), 1 = x86-64-v3 (AVX2 + FMA), 0 = baseline
 * (or not x86-64 / not GCC-Clang).  The same levels target_clones picks its
 * clones by; the gate math (cylstm_cell.h) and the panel kernel
 * (cylstm_stream.h) use it to choose their AVX-512-only code.
 */
#ifndef CYLSTM_CPU_H
#define CYLSTM_CPU_H

static int cyl_cpu_level_uncached(void)
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

/* Cached (a benign race: every thread stores the same value). */
static int cyl_cpu_level_cache = -1;
static inline int cyl_cpu_level(void)
{
    if (cyl_cpu_level_cache < 0)
        cyl_cpu_level_cache = cyl_cpu_level_uncached();
    return cyl_cpu_level_cache;
}

#endif /* CYLSTM_CPU_H */
