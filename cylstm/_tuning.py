"""What cylstm knows about the CPU it runs on, and every threshold that picks a path.

Three parts, one job each:

* **Thresholds.**  Every pure-Python constant that chooses a kernel path, next to
  the shape, CPU and date it was measured on.  They are starting points, not laws:
  a CPU with other caches or other FMA units has other crossovers, and
  :func:`tune` measures them (below).  Read them at call time (``_tuning.X``), so
  that a test or a user may patch them here.
* **CPU facts.**  :class:`CpuFacts` / :func:`detect_cpu`: vendor, model, ISA level,
  caches per core and the cache budget the planner's "fits" rules use.  Parsed
  from sysfs and ``/proc/cpuinfo`` (paths injectable, so tests build fake trees).
* **Measured choices** (FFTW's "wisdom"): :func:`tune` times the candidate
  forward paths for a few shape classes and stores the fastest in
  ``$CYLSTM_CACHE_DIR/tuning.json`` (default ``$XDG_CACHE_HOME/cylstm`` or
  ``~/.cache/cylstm``), keyed by CPU model, ISA level and cylstm version;
  :func:`cylstm.functional.plan_forward` consults them before its model rules.
  ``CYLSTM_TUNE=0`` turns reading and measuring off (the model alone).
"""
import dataclasses
import json
import os
import re
import threading
import time
import warnings

from cylstm._files import atomic_write

__all__ = ["PATHS", "CpuFacts", "cache_path", "cpu_facts", "detect_cpu", "tune",
           "tuning_enabled"]

# ----------------------------------------------------------------------------- thresholds
# The forward planner (cylstm.functional.plan_forward).  Measured on a 2-core
# Zen 4 (AMD Ryzen, 1 MiB L2 per core, 32 MiB L3, AVX-512 on 256-bit halves),
# float32, bench/compare.py, 2026-11.

# Below this many samples per thread, splitting the batch costs more than it saves
# (measured in bench/compare.py: see README, "threads").  Checked again on a
# 2-vCPU AMD EPYC (Zen 3), 2026-12-02, inference on 2 threads at 4 against 2
# (ms; below 8 rows 4 lets the units split take the call, 2 splits the batch):
# (100, B, 64, 128) B = 4: 1.57 / 1.46, 6: 1.91 / 2.08, 8: 1.53 / 1.99, 12: 2.41 /
# 2.45; (100, B, 128, 256) B = 4: 4.55 / 4.94, 6: 4.66 / 6.81, 8: 7.36 / 6.62,
# 12: 8.11 / 8.04 (one thread 5.2-15.0).  No consistent gain below 4.
MIN_ROWS_PER_THREAD = 4

# The threads split the recurrent kernel's units instead of the batch (packed
# panels, one barrier per step: cylstm/_lstm.pyx) when
#  - the batch is too small to split and the recurrent kernel has at least
#    PANEL_TEAM_MIN_BYTES: below it the barrier costs more than the second core
#    saves (at 2 threads: (T, B, I, H) = (200, 1, 64, 96) 0.33 ms against 0.40
#    serial; (200, 1, 32, 64) no faster);
#  - or the recurrent kernel is at least 1 / PANEL_SPLIT_LLC_FRACTION of the cache
#    budget (CpuFacts.llc_budget): split by batch, every thread would stream all
#    of it from memory each step; split by units, each keeps its share in cache
#    ((25, 16, 1024, 1024), 16 MiB of U, 41.4 -> 36.8 ms; (50, 16, 768, 768),
#    9 MiB, 38.5 -> 40.1 ms: not used).  On one thread too: the panel kernel's
#    six-row blocks read the weights fewer times than BLAS's tiles (86.5 -> 72.7 ms
#    at (25, 16, 1024, 1024)).  AVX-512 only (isa level 2).
PANEL_TEAM_MIN_BYTES = 128 * 1024
PANEL_SPLIT_LLC_FRACTION = 2

# On one thread, AVX-512, the unit path (one GEMM for x @ W, then each step on
# U's packed panels, walked in snake order) beats the batch path's BLAS step for
# batches of up to UNITS_SERIAL_MAX_BATCH, and in training from
# UNITS_SERIAL_MIN_UNITS units (the training forward cannot take the stacked
# path).  2-vCPU Xeon (Sapphire Rapids), 2026-12-01, min of 10-12, ms, rows
# against units: inference (100, B, 256, 256) B=1 4.40/3.76, 2 6.40/5.32,
# 4 7.96/7.63, 8 12.7/14.2; (25, B, 512, 512) B=1 9.26/8.96, 8 25.5/18.4;
# (100, 1, 64, 128) 0.71/0.69.  Training forward (100, 32, 128, 256)
# 41.3/34.2 (rows_fused 48.6), (100, 16, 128, 256) 23.8/17.9,
# (50, 64, 512, 512) 480/222, (100, 32, 64, 128) 11.2/11.5.  Not on AVX2: its
# panel bodies trail BLAS's gemv at batch 1 there (CYLSTM_CPU=avx2,
# (100, 1, 256, 256) 5.6 against 6.4 ms).
UNITS_SERIAL_MAX_BATCH = 4
# With AVX2 the same holds at batch 1 where BLAS is the OpenBLAS of the AVX2
# cores (CpuFacts.blas_tiles_steps false: core Haswell, whose sgemv streams U
# slower than the panel body), from UNITS_SERIAL_B1_MIN_BYTES of U.  2-vCPU AMD
# EPYC (Zen 3), 2026-12-02, one thread, alternated with ONNX Runtime in one
# process, ms, ORT / rows / units: (100, 1, 32, 64) 0.153/0.165/0.208,
# (200, 1, 64, 128) 1.11/0.974/0.973, (100, 1, 128, 256) 2.34/2.16/2.04,
# (150, 1, 256, 256) 3.91/3.80/3.50, (50, 1, 384, 384) 2.91/3.04/2.98,
# (100, 1, 256, 512) 9.24/9.56/9.23, (25, 1, 512, 512) 2.65/3.35/3.37.
UNITS_SERIAL_B1_MIN_BYTES = 256 * 2**10
UNITS_SERIAL_MIN_UNITS = 256
# And on any thread count (AVX2 or AVX-512), the unit path whenever U does not
# fit in a core's L2 (CpuFacts.l2_per_core): the batch path's threads each stream
# all of U from L3 every step, the unit split keeps each thread's share in its
# L2, and on one thread the six-row blocks read U fewer times than BLAS's tiles.
# Same Xeon (2 MiB L2), training forward, rows against units: 2 threads
# (50, 64, 512, 512) 158/122 ms, (100, 32, 256, 384) 70.1/65.0; while U fits,
# rows stays ahead there ((100, 32, 128, 256) 31.8/35.4).  Inference
# (25, 32, 512, 512) on 1 thread 107/51 (stacked 55); under CYLSTM_CPU=avx2
# 112/83.  Only from UNITS_L2_MIN_BYTES of U: the smallest measured win was
# 2.25 MiB (H = 384); smaller kernels on CPUs with small L2s were not measured.
UNITS_L2_MIN_BYTES = 2 * 2**20
# ... and on one thread only for batches of 2 to UNITS_L2_SERIAL_MAX_BATCH: one
# thread streams all of U every step whichever path runs, and with more rows
# BLAS's step, or at batch 1 its gemv, is ahead.  2-vCPU AMD EPYC (Zen 3, AVX2,
# 512 KiB L2), 2026-12-02, one thread, rows against units: training step
# (50, 64, 512, 512) 556/684 ms, (25, 16, 1024, 1024) 396/379; inference
# (25, 1, 512, 512) 3.86/4.57 ms, (25, 16, 1024, 1024) 162/126.
UNITS_L2_SERIAL_MAX_BATCH = 32
# In inference the unit path stays ahead to twice that batch (the BLAS step has
# no gate cache to fill then either): same CPU and host kind, 2026-12-02, one
# thread, inference, rows / units / stacked (ms): (50, 64, 512, 512)
# 184.5/168.9/165.6, (25, 64, 1024, 1024) 362/335/382, (50, 128, 512, 512)
# 343/341/336 (a draw).
UNITS_L2_SERIAL_MAX_BATCH_INFERENCE = 64
# In training, where BLAS packs every per-step call (CpuFacts.blas_tiles_steps
# false: OpenBLAS Haswell) and the stacked path cannot run (no gate cache), the
# unit path for batches of up to UNITS_TRAIN_MAX_BATCH on any thread count: the
# batch path's per-step BLAS call repacks U for a handful of rows.  2-vCPU AMD
# EPYC (Zen 3, AVX2), 2026-12-02, training forward, medians of 7 alternated in
# one process, rows / rows_fused / units (ms): 1 thread (100, 4, 32, 64)
# 2.1/2.7/1.1, (100, 8, 64, 128) 10.3/11.6/6.5, (100, 16, 128, 128)
# 14.8/19.2/12.2, (50, 16, 512, 512) 99/158/71; 2 threads 2.1/2.8/1.2,
# 12.9/16.1/5.1, 12.9/17.3/9.8.  From batch 32 it is a draw or a loss:
# (100, 32, 10, 50) 6.2/5.4/7.2, (100, 32, 64, 96) 16.4/15.4/17.3,
# (100, 32, 128, 256) 67/79/60 (2 threads 48/57/46), (100, 128, 128, 128)
# 81/76/93, (100, 48, 128, 256) on 2 threads 66/76/73.
UNITS_TRAIN_MAX_BATCH = 16
# Remeasured on a quieter host of the same kind (2-vCPU AMD EPYC, Zen 3, AVX2,
# OpenBLAS Haswell, 512 KiB L2), 2026-12-02, training forward, medians of 5-9
# alternated in one process, rows / rows_fused / units (ms), 1 thread:
# (100, 32, 10, 50) 2.6/2.6/2.4, (100, 32, 64, 96) 8.9/10.1/8.1, (100, 32, 128,
# 128) 16.3/19.4/15.1, (100, 32, 128, 256) 49.4/56.1/39.9, (100, 48, 128, 256)
# 66.2/70.2/62.8, (100, 64, 128, 256) 83.0/86.1/81.5, (100, 48, 64, 128)
# 19.8/19.9/20.5, (100, 64, 64, 128) 25.6/24.4/25.3, (100, 128, 128, 128)
# 56.3/53.7/62.3; 2 threads (100, 32, 128, 256) 32.0/38.9/22.8, (100, 32, 64,
# 128) 8.5/10.3/6.9, (100, 64, 128, 256) 51.2/53.9/47.7, (100, 64, 64, 128)
# 14.2/15.2/16.5, (100, 128, 128, 256) 85.2/91.3/103.  So the unit path up to
# UNITS_TRAIN_WIDE_MAX_BATCH, and up to UNITS_TRAIN_L2_MAX_BATCH where U is
# larger than a core's L2; the fused BLAS step is no better than the plain one
# there (rows_fused is not taken in training on such a BLAS) ...
UNITS_TRAIN_WIDE_MAX_BATCH = 32
UNITS_TRAIN_L2_MAX_BATCH = 64
# ... and above UNITS_TRAIN_MAX_BATCH on a team only from UNITS_TRAIN_TEAM_MIN_BYTES
# of U, below which the barrier per step costs more than half the panels save:
# 2 threads (100, 32, 10, 50) (U 40 KiB) rows 1.7-2.8 / units 1.9-2.9 ms,
# (100, 32, 32, 64) (64 KiB) 3.7/3.3.
UNITS_TRAIN_TEAM_MIN_BYTES = 64 * 2**10

# Batches that split into slices of at least FUSE_MIN_ROWS samples per thread
# compute x_t @ W inside each step, next to h_prev @ U, instead of one input
# projection for all steps up front: the gate buffer (B, T, 4H) is then never
# written and read back (measured at 2 threads: (100, 32, 128, 256) 13.5 ->
# 12.7 ms, (100, 32, 10, 50) 0.67 -> 0.63 ms).  The weights are then read every
# step, so only while [W; U] fits in 1 / FIT_LLC_FRACTION of the cache budget
# ((25, 16, 1024, 1024), 32 MiB of weights, went 39 -> 72 ms).
FUSE_MIN_ROWS = 8

# compute_dtype="bfloat16" on AMX tiles (cylstm.functional.BF16_PATHS), measured
# on a 2-vCPU Xeon (Sapphire Rapids class, 2 MiB L2), 2026-12-03, ms per call,
# "rows_bf16" (x @ W for all steps first) / "rows_bf16_fused" (x_t @ W each step):
# - threads split the batch in slices of at least AMX_MIN_ROWS_PER_THREAD rows
#   (an A tile's 16): (25, 16, 1024, 1024) took 13.1 ms on one thread and 43 on
#   two of 8 rows each, both streaming all of U (8 MiB in bf16) every step;
# - slices of AMX_FUSE_MIN_ROWS rows or more, with W's bf16 copy at most
#   AMX_FUSE_MAX_BYTES, take x_t @ W inside each step: (100, 32, 128, 256) 2
#   threads of 16 rows 3.55 / 3.23, 1 thread 4.98 / 3.95; (100, 32, 10, 50)
#   0.534 / 0.442; (50, 64, 512, 512) (W 2 MiB) 10.5 / 10.2; but (25, 16, 1024,
#   1024) (W 8 MiB, read again every step) 13.1 / 16.7, and batch 1 (25, 1,
#   512, 512) 1.17 / 3.78.
# The float32 backward split over threads (MIN_ROWS_PER_THREAD samples a slice):
# each slice runs its time loop, then its own weight-gradient GEMMs, summed after
# ([dW; dU] partial sums, (I + H + 1) x 4H each).  Where a slice holds fewer rows
# (samples x T) than the gradient (I + H), those GEMMs run instead once over the
# whole batch on BLAS's threads (functional.plan_backward; off: False).  2
# threads, Intel(R) Xeon(R) Processor (2 cores), 2026-12-03, backward alone,
# slices / whole (ms): (25, 16, 1024, 1024) (200 rows a slice, 2048 gradient
# rows) 93.0 / 82.1 and 91.7 / 83.9; (50, 64, 512, 512) (1600, 1024) 104 / 111;
# (100, 32, 128, 256) (1600, 384) 22.6 / 23.2; (100, 32, 10, 50) 1.25 / 1.75.
BACKWARD_WHOLE_GRADS = True
# The backward's time loop split by units (functional.plan_backward, BackwardPlan
# .units; cylstm/_lstm.pyx, _bu_job) where the batch split would give each thread
# at most this many samples and U^T (4H x H) is larger than a core's L2: each
# thread of the batch split streams all of U^T every step for its few rows, or
# (below MIN_ROWS_PER_THREAD) one thread runs the whole loop; the unit split
# streams each thread's part of U^T for every row, meets the others once a step,
# and gives the serial bits.  lstm_backward alone on 2 threads, unit split /
# batch split alternated 9-13 times in one process (median ratios), 2-vCPU AMD
# EPYC (Zen 3), 2026-12-07, a noisy host: 8 samples a thread (25, 16, 1024,
# 1024) 0.951 / 0.949 (0.983 beside a busy core), (50, 16, 512, 512) 0.967,
# (100, 16, 512, 512) 1.030, (100, 16, 256, 256) 1.027 / 0.985; 4 a thread
# (100, 8, 512, 512) 0.977 (0.943 busy), (100, 8, 256, 256) 0.965; batch 4 and 1
# (no batch split) (100, 4, 256, 256) 0.952 / 0.856 (0.859 busy), (150, 1, 256,
# 256) 0.916; 12 a thread (50, 24, 512, 512) 1.013; 16 (50, 32, 512, 512) 1.002,
# (25, 32, 1024, 1024) 1.030, (100, 32, 128, 256) 1.052; 24 1.091.  U^T within
# L2, (200, 2, 128, 128): 1.004.  0: never.
BACKWARD_UNITS_MAX_ROWS = 8
# Pieces a thread of that split (of U^T's panels; fewer where H has fewer):
# four, so that a thread that gets ahead takes a slow one's last pieces in
# smaller bites.  The unit-split backward alone, 2 threads, counts alternated
# 11-15 times in one process (this constant patched between calls), median
# ratios, 4 pieces over 2, five runs (the third beside a process spinning on
# one core): (25, 16, 1024, 1024) 0.999 / 1.000 / 0.985 / 0.986 / 0.965; (100,
# 8, 512, 512) 0.942 / 0.917 / 0.954 / 0.989 / 1.006; (100, 4, 256, 256) 0.939
# / 0.988 / 0.856 / 0.999 / 0.986; (50, 16, 512, 512) 0.980 / 1.011 / 0.983;
# (150, 1, 256, 256) 1.027 / 0.993 / 1.011 / 1.011; one piece a thread
# 1.02-1.04 (0.98 at (150, 1, 256, 256)), six 0.96-1.02.  A few percent at
# most, within this host's spread: 2-vCPU AMD EPYC (Zen 3), 2026-12-07, noisy.
BACKWARD_UNITS_PIECES = 4
AMX_MIN_ROWS_PER_THREAD = 16
AMX_FUSE_MIN_ROWS = 16
AMX_FUSE_MAX_BYTES = 2 * 2**20
# The mixed_bfloat16 backward on AMX tiles (_lstm._backward_rows) packs dz
# AMX_BACK_ROWS rows at a time for [dW; dU] = [x, h]^T dz (the C constant
# _lstm.AMX_BACK_ROWS_C, compiled in; a test checks the two agree).  Each tile
# pair's B blocks are then 2 x 512 x 32 bytes, 32 KiB, in the 48 KiB L1 over the
# row blocks (1024 rows: 64 KiB), and the pack a bounded 2 x 4H bytes a row.
# Intel(R) Xeon(R) Processor (2 cores), 2026-12-03, backward alone, 1 thread,
# 256 / 512 / 1024 rows: (50, 64, 512, 512) 92.9 / 93.3 / 85.5 ms, (100, 32, 128,
# 256) 19.6 / 19.7 / 21.2, (25, 16, 1024, 1024) 97.1 / 83.2 / 92.8: within the
# host's noise of each other that hour.  The backward splits threads by
# MIN_ROWS_PER_THREAD as the float32 one: (25, 16, 1024, 1024) on 2 threads, 2
# slices of 8 rows 86 / 85 ms against one thread of 16 rows 98 / 94.
AMX_BACK_ROWS = 512
# Without AMX, the bf16 paths' products run on AVX512-BF16 dot products
# (include/cylstm_bf16.h's cyl_bf16_dots_gemm: rows 6 at a time by 64 columns,
# K 128 at a time), which beat the emulated path (float32 BLAS over operands
# rounded each call) on any core that has them.  Intel(R) Xeon(R) Processor (2
# cores, Sapphire Rapids class) with AMX turned off, 2026-12-03, lstm_forward
# bf16 over float32's time, dots / emulated: (100, 32, 128, 256) 1.51x / 1.47x
# (1 thr), 1.53x / 1.78x (2); (50, 64, 512, 512) 1.52x / 1.73x, 1.42x / 1.54x;
# (25, 1, 512, 512) 0.62x / 1.61x; (200, 1, 64, 128) 1.03x / 1.29x.  Slower
# than float32 there: a core with two 512-bit FMA ports issues vdpbf16ps a
# quarter as often as FMAs (a loop of independent zmm ops: 1.8 vs 7.1 G/s, 115
# vs 228 GFLOP/s; the dots kernel reached 104-115, about that bound).  AMD Zen 4
# issues both at the same rate, one zmm op a cycle, so there the dot products'
# 32 multiply-adds an instruction are twice an FMA's (AMD's and uops.info's
# tables; not measured on a Zen 4 yet).
# Slices of BF16_DOTS_MIN_ROWS_PER_THREAD rows or more per thread split the
# batch (no tile granularity on dots), same machine, AMX off, 2 threads, one
# thread against two: (25, 16, 1024, 1024) 70.1 -> 37.4 ms, (50, 8, 512, 512)
# 17.5 -> 9.7, (200, 4, 64, 128) 1.87 -> 1.18 (2 rows a thread).  The fused
# step's rule (AMX_FUSE_MIN_ROWS) serves both: at 8 rows a thread the two were
# within 10%, at 16 even.
BF16_DOTS_MIN_ROWS_PER_THREAD = 2
# Products of at most BF16_DOT_ROWS rows (a batch-1 step's h @ U) skip the tiles,
# which would use one of their 16 rows, for AVX512-BF16 dot products over the same
# packed layout (include/cylstm_bf16.h's cyl_bf16_rows_dot; the C constant
# CYL_BF16_DOT_DEFAULT, a test checks the two agree).  Intel(R) Xeon(R) Processor
# (2 cores), 2026-12-03, one product (us, dot / tiles), rows 1 / 2 / 3 / 4 / 5:
# (K, N) = (256, 1024) 11.1/22.4, 15.2/23.4, 18.7/23.3, 23.4/23.2, (5: tiles);
# (512, 2048) 58/109, 77/107, 88/108, 105/108; (1024, 4096) 318/362, 323/353,
# 336/368, 394/366.  lstm_forward bf16 at (200, 1, 64, 128) 0.66 -> 0.51-0.56
# ms, (25, 1, 512, 512) 1.50 -> 1.17-1.44.
BF16_DOT_ROWS = 3
# ... and only while [W; U] is at most FUSE_MAX_BYTES: the fused step's BLAS
# calls repack W and U every step, which the cache budget alone does not see.
# 2-vCPU Xeon, 2026-12-01 (min of 3-5): (50, 64, 512, 512), 8 MiB of weights,
# inference 545 ms fused against 232 unfused on 1 thread, 358 against 170 on 2,
# a training step 1114 against 846; (100, 32, 128, 256), 1.5 MiB, within noise
# of each other there and faster fused on Zen 4 (above).
FUSE_MAX_BYTES = 4 * 2**20
FIT_LLC_FRACTION = 4

# The BLAS paths' per-step products (a few batch rows against all of W or U) go
# to BLAS as tiles of about 2^19 multiply-adds (gemm_tiled in cylstm/_blas.pxd)
# only where SciPy's OpenBLAS runs such tiles on its "small-matrix" kernels,
# which read the operands in place: the AVX-512 cores below.  Every other core
# packs the operand again for each tile, so there one whole call is faster.
# 2-core Zen 4 (OpenBLAS core SkylakeX), 2026-11: 16x256x1024 54 -> 110 GFLOP/s
# as 8 tiles.  2-vCPU AMD EPYC Zen 3 (core Haswell), 2026-12-02, 1 thread, one
# call -> tiles: 32x256x1024 0.350 -> 0.855 ms, 16x256x1024 0.253 -> 0.427,
# 64x512x2048 2.05 -> 6.84, 8x512x2048 0.841 -> 0.868 (cylstm._testing's
# gemm and gemm_tiled twins); there the rows path's forward at (100, 32, 128,
# 256) took 72 ms in whole calls against 154 ms in tiles.
STEP_TILE_BLAS_CORES = frozenset({"skylakex", "cooperlake", "sapphirerapids"})

# Batches of at least STACKED_MIN_ROWS samples per thread, with H >= 256 and
# [W; U] in 1 / FIT_LLC_FRACTION of the cache budget, run each step as the
# streaming runner does: [x_t, h_prev] @ [W; U] on packed panels (six batch rows
# per weight load, 24 accumulators in AVX-512 registers: ~113 GFLOP/s on one Zen 4
# core, above OpenBLAS's 105), then the cell, panel by panel.  Measured:
# (50, 64, 512, 512) 134 -> 123 ms on one thread, 65.4 -> 64.2 on two;
# (100, 32, 128, 256) 25.5 -> 24.6 and 12.7 -> 12.2 ms.  Below 16 rows a thread
# runs too few six-row blocks ((100, 16, 256, 256) on two threads: 8.2 -> 9.6 ms)
# and below 256 units the per-panel cell calls cost what the kernel saves.
# Inference only: a training forward must also scatter each panel's gates into
# the (B, T, 4H) buffer the backward reads, which cost more than the kernel
# saved ((100, 32, 128, 256) training step 86.2 -> 90.2 ms on one thread; on AVX2
# where BLAS packs every call it is ahead: STACKED_TRAIN_MIN_ROWS below).
# AVX-512 only (isa level 2) at these thresholds; AVX2 takes the stacked step
# where BLAS packs every per-step call (STACKED_PACKING_BLAS_MAX_BYTES below).
STACKED_MIN_ROWS = 16
STACKED_MIN_UNITS = 256
# Where BLAS has no small-matrix kernels (CpuFacts.blas_tiles_steps false: every
# per-step call packs its operands), the stacked step wins at any width from
# MIN_ROWS_PER_THREAD rows per thread, with the AVX2 six-row body too, while
# [W; U] is at most STACKED_PACKING_BLAS_MAX_BYTES.  2-vCPU AMD EPYC (Zen 3,
# AVX2, OpenBLAS core Haswell), 2026-12-02, inference, best BLAS path against
# stacked (ms): 1 thread (100, 32, 10, 50) 2.56/1.82, (100, 8, 128, 256)
# 24.3/9.5, (100, 16, 64, 64) 2.87/1.69, (100, 16, 256, 256) 36.8/21.8,
# (100, 64, 64, 128) 23.4/17.4, (100, 32, 128, 256) 48.7/32.2; 2 threads
# (100, 32, 10, 50) 2.20/1.30, (100, 32, 128, 256) 32.7/30.3.  With 8 MiB of
# [W; U] the unit split is ahead on 1 thread: (50, 64, 512, 512) units 181,
# stacked 232 (2 threads: 103 and 97).
STACKED_PACKING_BLAS_MAX_BYTES = 4 * 2**20
# ... and up to STACKED_PACKING_BLAS_WIDE_MAX_BYTES of [W; U] from
# STACKED_WIDE_MIN_ROWS rows per thread.  Same CPU, quieter host, 2026-12-02,
# inference, lstm_forward forced per path, 7 alternated, units / stacked (ms), 8
# MiB of [W; U]: 2 threads (50, 64, 512, 512) 92.9/88.0, (50, 128, 512, 512)
# 187/166, (50, 64, 384, 512) 82.3/76.0, (50, 32, 512, 512) 45.0/48.2; one
# thread (50, 64, 512, 512) 168.6/166.4, (50, 64, 384, 512) 149/142, (50, 32, 512,
# 512) 86.7/88.0; 18 MiB: (50, 64, 768, 768) 195/211 (2 threads), 367/400.
STACKED_PACKING_BLAS_WIDE_MAX_BYTES = 8 * 2**20
STACKED_WIDE_MIN_ROWS = 32
# Below MIN_ROWS_PER_THREAD rows (batches 2 and 3, which no thread split takes)
# the same BLAS repacks U for a product of 2 or 3 rows every step, 3-4x the
# panel kernel's time; batch 1 is a GEMV, which packs nothing.  The unit split
# (one thread, or a team where rule 2 takes it) from SMALL_BATCH_UNITS_MIN_BYTES
# of U, the stacked step below.  2-vCPU AMD EPYC (Zen 3, AVX2, OpenBLAS core
# Haswell), 2026-12-02, inference, lstm_forward forced per path, 10 interleaved
# rounds, rows / units / stacked (ms), one thread: (100, 2, 64, 64) 1.65 / 0.55 /
# 0.50, (100, 2, 128, 128) 5.47 / 1.42 / 1.51, (100, 2, 256, 256) 21.8 / 4.93 /
# 5.90, (100, 3, 128, 128) 6.36 / 1.78 / 1.77, (100, 3, 256, 256) 26.2 / 6.84 /
# 7.24; two threads (100, 2, 64, 64) 1.45 / 0.56 / 0.41 (stacked on one thread).
SMALL_BATCH_UNITS_MIN_BYTES = 128 * 2**10
# Training on AVX2 where BLAS packs every per-step call: the stacked step with
# the training buffers (each panel's gates scattered into G, c and h_prev kept)
# from STACKED_TRAIN_MIN_ROWS rows per thread while [W; U] is at most
# STACKED_TRAIN_MAX_BYTES on one thread, STACKED_TRAIN_TEAM_MAX_BYTES on a
# team: it reads no (B, T, 4H) projection back each step, which the unit split
# does from L3.  (On Zen 4, AVX-512, the scatter cost more than the kernel
# saved: "Inference only" above.)  AMD EPYC (2 cores), Zen 3 (AVX2, OpenBLAS
# core Haswell), 2026-12-06, training step (forward + backward) stacked over the
# planner's path then (units, or rows where noted), 6 alternated rounds of 3:
# one thread (100, 32, 10, 50) 0.85-0.93, (100, 32, 128, 256) 0.92-0.99, (200,
# 32, 64, 128) 0.82-0.87, (100, 64, 64, 64; rows) 0.93, (100, 64, 128, 256)
# 0.98, (100, 16, 256, 256) 0.98; above the byte bound (100, 32, 256, 384; 3.75
# MiB) 1.03, (50, 32, 512, 512) 1.02, (50, 64, 512, 512) 1.00; below the rows
# (100, 8, 256, 256) 1.03, (100, 8, 128, 128) 1.00.  Two threads (100, 32, 10,
# 50; rows) 0.76-0.81, (100, 32, 128, 256) 0.83-0.84, (200, 32, 64, 128) 0.85,
# (100, 64, 128, 256) 0.89, (100, 32, 256, 384) 0.93, (50, 64, 512, 512; 8 MiB)
# 0.94-0.95, (50, 32, 512, 512) 0.98; 8 rows per thread (100, 16, 256, 256)
# 0.98, 4 rows (100, 8, 256, 256) 1.03.
STACKED_TRAIN_MIN_ROWS = 16
STACKED_TRAIN_MAX_BYTES = 2 * 2**20
STACKED_TRAIN_TEAM_MAX_BYTES = 8 * 2**20

# The streaming runner (cylstm/stream.py).  Batch sizes from here up use SciPy's
# BLAS (one GEMM per panel, single-threaded BLAS) instead of the kernel.  The
# kernel takes rows six, four or two at a time, so one pass over a panel serves
# several rows, and it was never slower than BLAS per panel in bench/stream_bench.py-style
# measurements on a 2-core Zen 4, one thread, us per step, kernel vs BLAS --
# (64, 128): batch 2 5.3 vs 5.2, 8 18.1 vs 18.0, 32 90 vs 111, 128 282 vs 319;
# (256, 512): batch 2 75 vs 114, 8 286 vs 392, 64 1897 vs 4300.  BLAS is kept for
# very large batches, where its cache blocking of the (K x 64) panels may matter
# on CPUs with small L2 caches.
BLAS_MIN_BATCH = 256

# Packed weight bytes (all layers) times the batch size from which a streaming
# step splits its panels across two threads (the work of a step grows with both).
# At (64, 128) fp32 (393 KB) one thread reads the weights from its L2 in ~3.5 us
# and two threads take ~2.4 us including the fork/join (2-core Zen 4); at a
# quarter of that the fork/join is most of the step.
PARALLEL_MIN_BYTES = 256 * 1024

# StreamRunner.run (and so lstm_forward(weights_dtype="int8")) over a first int8 LSTM
# layer with at least INT8_PROJECT_MIN_INPUTS inputs per unit computes the x_t part of
# its products for a chunk of steps at once (_stream.pyx, _project): the kernel's int8
# panels are read once per chunk, by the four-row blocks, instead of once per step; a
# chunk's products take at most INT8_PROJECT_BYTES (float32, rows x 4H; 0: never).
# The same bits either way.  AMD EPYC (2 cores), Zen 3, one thread, 2026-12-03, time
# with / without, alternated in one process: (T, B, I, H) = (25, 1, 512, 512) 0.93x,
# (150, 1, 256, 256) 0.89x; (200, 1, 64, 128) 1.04x, (100, 32, 128, 256) 1.01x,
# (100, 32, 10, 50) 1.05x; chunks of 64 KiB to 1 MiB within 2% of each other.
INT8_PROJECT_BYTES = 1 << 20
INT8_PROJECT_MIN_INPUTS = 1.0

# lstm_forward(weights_dtype="int8") splits each step's panels over threads (on the
# worker pool: StreamRunner.run's pooled block, _stream.pyx _stack_work) from this many
# int8 weight bytes ((I + H) x 4H) times the batch.  AMD EPYC (2 cores), Zen 3,
# 2026-12-03, 2 threads over 1, (T, B, I, H): (100, 1, 32, 64) 24 KB 1.01, (100, 2,
# 10, 50) 24 KB 0.96, (100, 8, 10, 50) 96 KB 0.81, (200, 1, 64, 128) 98 KB 0.79,
# (100, 4, 64, 128) 0.72, (150, 1, 256, 256) 0.63, (25, 1, 512, 512) 0.59, (100, 32,
# 128, 256) 0.57.  (With an OpenMP team woken every step instead, (200, 1, 64, 128)
# had been 1.62x slower on 2 threads.)
INT8_SEQ_PARALLEL_MIN_BYTES = 64 * 1024
# ... and where the batch gives each thread INT8_ROW_MIN_ROWS rows or more, it cuts
# the batch into one slice per thread instead, each slice run through all its
# steps by a one-thread runner (no per-step meeting of the threads; the same
# bits).  Intel(R) Xeon(R) Processor (2 cores), 2026-12-03, ms, 1 thread / 2 on
# panels / 2 slices: (100, 32, 128, 256) 14.5 / 9.9-11.0 / 8.0-8.2; (50, 64, 512,
# 512) 68 / 42-45 / 35-37; (25, 16, 1024, 1024) (8 rows a slice) 35.9 /
# 20.8-25.8 / 19.6-20.1.
INT8_ROW_MIN_ROWS = 8

# A quantized LSTM layer's inference runs on the int8 kernel but for batches of at
# least INT8_FLOAT_MIN_ROWS with at most INT8_FLOAT_MAX_UNITS units (one thread;
# INT8_FLOAT_MAX_UNITS_TEAM on several), which take the float32 products on the same
# int8 values (functional.int8_kernel_pays).  There the int8 kernel's per-step row
# quantization and narrow panels cost more than the float32 path's one input
# projection and its batch split.  int8 / float32 time, AMD EPYC (2 cores), Zen 3,
# 2026-12-03, (T, B, I, H).  One thread: (100, 16, 10, 50) 1.20, (100, 32, 10, 50)
# 1.15, (100, 32, 32, 64) 1.07; (100, 32, 32, 96) 0.98, (100, 16, 64, 128) 0.88,
# (100, 32, 64, 128) 0.91, (100, 4, 10, 50) 0.79, (200, 1, 64, 128) 0.68.  Two
# threads (the int8 block on the worker pool): (100, 16, 10, 50) 1.50, (100, 32, 10,
# 50) 1.49, (100, 32, 32, 64) 1.35, (100, 32, 32, 96) 1.19, (100, 32, 64, 128) 1.10,
# (100, 64, 64, 128) 1.06, (100, 16, 64, 128) 0.97; (100, 32, 128, 256) 0.80-0.94,
# (200, 1, 64, 128) 0.78.
INT8_FLOAT_MIN_ROWS = 16
INT8_FLOAT_MAX_UNITS = 64
INT8_FLOAT_MAX_UNITS_TEAM = 128

# The optimizers (cylstm/optimizers.py): vectors shorter than this are updated on
# one thread: below it, waking the OpenMP team costs more than the elementwise
# pass it would split.  Measured on 2 cores (float32 Adam, check + update pass,
# min of 15 runs): 1 vs 2 threads 6.3 vs 11.3 us at 1k, 17.6 vs 17.5 us at 10k,
# 30 vs 24 us at 20k, 56 vs 38 us at 40k, 0.98 vs 0.51 ms at 100k; the threshold
# sits above the crossover so that a busy machine (other processes on the cores)
# does not make the team a loss.
PARALLEL_MIN_SIZE = 32_768

# The per-core share of L3 the planner believes without a measurement.  A VM can
# report its host's whole L3 in sysfs, shared by its few vCPUs (a 2-vCPU Xeon VM
# here reports 105 MiB; another reported 480 MiB), which made every "fits the
# cache" rule hold and sent (25, 16, 1024, 1024) to the fused per-step path
# (39 -> 72 ms on Zen 4).  The cap keeps the budget (cap x cores) where the
# planner's rules were measured: the 2-vCPU Zen 4 reported 32 MiB (16 MiB per
# vCPU), and on the 2-vCPU Xeon (2026-12-01, min of 5, inference) a 16 MiB cap
# keeps the measured best paths: (50, 64, 512, 512) stacked 105 ms against units
# 127 on 2 threads (a 4 MiB cap chose units), (25, 16, 1024, 1024) units 67 ms
# against stacked 137 and rows_fused 291, (100, 32, 128, 256) stacked 23 ms
# against rows 33.  tune()'s bandwidth probe may raise it.
L3_PER_CORE_CAP = 16 * 2**20

# The packed-weight cache of the panel paths' inference calls
# (cylstm/_packcache.py).  WEIGHT_CACHE_BYTES is not a speed crossover but a
# memory bound: an entry holds about twice its weights (the copy a lookup
# compares against, and the pack), and weights of more than half of it are
# packed per call as before.
# Inference on the unit path then projects x @ W on the packed panels (written
# straight into the gate rows in panel order) instead of BLAS, which repacks W
# every call.  On AVX-512 for any number of rows of x (B T): each W panel
# (I x 64 floats) stays in L2 while all rows stream past it.  2-vCPU Xeon
# (Sapphire Rapids class), 2026-12-02, quiet host, whole lstm_forward, median
# of 3-7 interleaved rounds (ms), BLAS projection / panel projection, 1 thread:
#   (25, 16, 1024, 1024) 69.7 / 63.8    (50, 16, 1024, 1024) 132.6 / 126.6
#   (100, 16, 1024, 1024) 242.6 / 225.0 (100, 4, 256, 256)   4.76 / 4.48
#   (100, 8, 512, 512)   37.9 / 36.5    (400, 4, 512, 512)   92.2 / 90.3
#   (1000, 4, 512, 512)  231.6 / 223.3  (4000, 1, 256, 256)  58.3 / 53.3
# and 2 threads: (100, 4, 256, 256) 3.09 / 2.66, (25, 16, 1024, 1024) 40.0 /
# 35.3, (100, 8, 512, 512) 20.4 / 18.1.  With AVX2 registers (CYLSTM_CPU=avx2,
# same host, OpenBLAS still on its AVX-512 kernels) BLAS wins from 400 rows:
# (25, 16, 1024, 1024) 107.4 / 120.9, (100, 8, 512, 512) 60.8 / 67.0; at 200
# rows they tie ((200, 1, 256, 256) 5.47 / 5.35), so other CPUs keep BLAS above
# PANEL_PROJ_MAX_ROWS.  forward_units alone, cached panels against packing per
# call (the path before the cache), 1 thread, noisy host (ms), panel projection
# / BLAS projection / per-call packing:
#   (25, 1, 512, 512)  4.49-4.83 / 6.06 / 7.05-7.89   (50, 1, 256, 256) 0.91-0.93 / 1.07-1.21 / 1.25-1.37
#   (200, 1, 64, 128)  0.74-0.77 / 0.83-0.85 / 0.87-0.91  (100, 4, 256, 256) 4.72-5.18 / 4.68-4.82 / 4.87-5.23
# Whole lstm_forward, cache on / off (interleaved): 1.01-1.35x on one thread,
# 0.97-1.12x on two.
WEIGHT_CACHE_BYTES = 256 * 2**20
# The cache's byte compare (each call reads the caller's weights and the entry's
# copy) runs on the call's threads from this many bytes on: at 1 MiB a compare
# takes ~40 us at the L3 rate, against a few us to start the pool.
COMPARE_PARALLEL_MIN_BYTES = 2**20
PANEL_PROJ_MAX_ROWS = 256
PANEL_PROJ_MAX_ROWS_AVX512 = None   # no limit

# The AVX2 six-row panel passes (include/cylstm_panel.h, cyl_panel_kblock) cut a
# panel read by more than one pass of row blocks into K blocks of at most
# l2_per_core / PANEL_KBLOCK_L2_FRACTION bytes, each block's passes before the
# next's.  The first pass of a panel streams in the next one, so a whole panel
# needs two panels of L2 beside the rows: at K = 1024 a 64-column float32 panel
# is 256 KiB, and with a 512 KiB L2 (Zen 3) the next panel evicted the one the
# later passes still read.  Kernel micro-bench (the product alone, K-blocked
# at 128 KiB against whole panels, same bits), 2-vCPU AMD EPYC (Zen 3, AVX2),
# 2026-12-06, GFLOP/s: 16 rows K 1024 4H 4096 (weights from L3) 78.1 -> 86.1,
# 76.4 -> 84.4; K 2048 64.4 -> 78.4; 32 rows K 1024 4H 2048 84.2 -> 86.1; 64
# rows 92.2 -> 92.8; 32 rows K 512 (one 128 KiB block) 89.2 -> 89.7; a 64 KiB
# budget 85.7, 256 KiB (no block at K 1024) 81.8.  lstm_forward, blocked /
# whole alternated in one process (median ratios of 9 pairs, several runs, a
# noisy host): (25, 16, 1024, 1024) units 0.93-0.98 on one thread, 0.90-1.03 on
# two, training step 0.95-0.99; (50, 64, 512, 512) stacked 0.98-1.02 and
# 0.89-1.00; shapes whose panels fit the budget do not block.  AVX-512 CPUs run
# their own passes (not blocked); on an L2 of 1 MiB or more a K 1024 panel
# stays whole.  The units path's panel projection never blocks: a late
# worker's piece is redone into the same G, where partial sums would race.
PANEL_KBLOCK_L2_FRACTION = 4

# The batch split's rows move at step boundaries from a thread with work left to
# one that has run out (cylstm/_lstm.pyx, _stacked_rows); a hand-over gives and
# leaves at least this many rows, about half, in multiples of six where that
# leaves both whole six-row passes.  Fewer rows run the packed panels below their
# rate: one thread, (T, I, H) = (100, 128, 256), ms a row: 4 rows 1.25, 6 1.02, 8
# (6 + 2) 1.13, 10 (5 + 5) 1.03, 12 0.98-1.02, 16 0.97-1.01; (50, 512, 512): 8 rows
# 3.1-3.3, 12 2.46-2.51, 16 2.48-2.52; AMD EPYC (2 cores), Zen 3, 2026-12-07.
STEAL_MIN_ROWS = 5

#: Each threshold and what it was measured on (show_config prints them).
# How long an idle pool worker (include/cylstm_pool.h) spins for the next job
# before it sleeps on a futex.  A call that comes sooner finds it awake; past it
# the worker costs nothing, and the caller never waits for a sleeping one (it
# starts alone, the worker joins when it wakes).  Spinning longer only burns a
# core a neighbour may need: 2-vCPU Xeon (Sapphire Rapids class), 2026-12-01,
# bench/compare.py --only cold,busy: 50 us kept back-to-back calls warm.
POOL_SPIN_NS = 50_000

# A streaming step (or block) on the worker pool whose packed weight bytes x rows x
# steps are fewer is "small" (include/cylstm_pool.h, cyl_pool_small_stays_alone): it
# runs alone while the workers sleep, but for the third of a stream of such calls.
# Waking a sleeping worker costs the caller 8-30 us (a futex syscall in a KVM guest;
# the worker runs 14-28 us later).  First step after a 50 ms gap, float32 runners at
# batch 1, packed bytes, median us, waking the worker / running alone / one thread:
# (64, 128) x 2 layers 917 KB 120 / 110 / 105; (96, 192) 885 KB 127 / 121 / 116;
# (128, 256) 1.57 MB 168 / 177 / 173; (128, 256) x 2 3.67 MB 288 / 385 / 336; (256,
# 512) 6.3 MB 408 / 547 / 554.  AMD EPYC (2 cores), Zen 3, 2026-12-03.
POOL_WAKE_MIN_BYTES = 1_250_000
# Such small jobs in a warm stream run alone or split, as each runner measures
# (cylstm/_stream.pyx, _small_alone): the other choice is tried again every this
# many small calls, so a change (a busy neighbour, a model in another cache level)
# is seen within as many steps.  A probe of the split wakes the worker, which then
# spins POOL_SPIN_NS beside the caller (on a 2-vCPU Xeon the steps of a (64, 128)
# runner that stays alone went 3.2 -> 3.6 us median with a probe every 64 calls).
POOL_SMALL_PROBE_EVERY = 1024

# After a worker finds it was preempted for a good part of a job (another
# process on its core), callers run alone for POOL_BACKOFF_NS, then try the
# workers again.  2-vCPU Xeon, 2026-12-01, beside a spinning process:
# (150, 1, 256, 256) on 2 threads 8.1-13 ms a call without it against 6.5 on
# one thread (the worker took the caller's time or held it at the end of the call).
POOL_BACKOFF_NS = 100_000_000

# Whether a team of threads pays for a small "units" call depends on the CPU: at
# (T, B, I, H) = (200, 1, 64, 128), 2 threads against 1, 0.64 against 0.91 ms on a
# 2-vCPU AMD EPYC (Zen 3, 2026-12-02), 0.551 against 0.560 on a 2-vCPU Xeon
# (Sapphire Rapids class, 2026-12-03), where the team's first call after a 200 ms
# gap then took 1.36 ms against 1.17 for one thread.  So calls of such shapes
# (U's bytes times the batch at most TEAM_MEASURE_MAX_BYTES) time both, per shape
# class: the team is kept where it takes at most TEAM_MIN_GAIN of one thread's
# time (a tie goes to one thread: nothing to wake after a gap, a core left to
# the neighbours), and the other choice is timed again every TEAM_PROBE_EVERY
# calls.  Both give the same bits (the unit split sums each output in one order).
# A call more than TEAM_GAP_NS after the last one of its class is not counted: it
# measures the host's wake-up after an idle gap, not the team (bench/compare.py's
# cold calls after 200 ms had made one thread look faster, and a quiet stream of
# calls after them ran alone until the next probe).  After the choice changes (a
# probe, or the running average, moved it) the other one is timed again after
# TEAM_PROBE_MIN calls, then at twice the interval each time the choice holds, up
# to TEAM_PROBE_EVERY: a choice made while the second core was briefly taken (a
# peer's threads still spinning after its own call; (200, 1, 64, 128) on 2 threads
# in one run of bench/compare.py ran at its 1-thread time, 0.765 ms, where the
# case alone gave 0.61; AMD EPYC (2 cores), Zen 4, 2026-12-06) is undone within a
# few calls instead of up to 64.
TEAM_MEASURE_MAX_BYTES = 2 * 2**20
TEAM_MIN_GAIN = 0.9
TEAM_PROBE_EVERY = 64
TEAM_PROBE_MIN = 8
TEAM_GAP_NS = 10_000_000


THRESHOLDS = {
    "POOL_SPIN_NS": "thread pool; 2-vCPU Xeon, bench/compare.py cold/busy, 2026-12-01",
    "POOL_BACKOFF_NS": "thread pool; 2-vCPU Xeon, bench/compare.py busy, 2026-12-01",
    "STEAL_MIN_ROWS": "batch split hand-overs; AMD EPYC (2 cores), Zen 3, rows a pass, "
                      "2026-12-07",
    "POOL_SMALL_PROBE_EVERY": "thread pool, streaming steps: a re-measuring interval "
                              "(each runner measures alone against split), 2026-12-03",
    "POOL_WAKE_MIN_BYTES": "thread pool, streaming steps; AMD EPYC (2 cores), Zen 3, first "
                           "step after a 50 ms gap, 2026-12-03",
    "MIN_ROWS_PER_THREAD": "forward planner; 2-core Zen 4, bench/compare.py, 2026-11; "
                           "2-vCPU Zen 3, 2026-12-02",
    "PANEL_TEAM_MIN_BYTES": "forward planner; 2-core Zen 4, (200, 1, 64, 96), 2026-11",
    "PANEL_SPLIT_LLC_FRACTION": "forward planner; 2-core Zen 4, (25, 16, 1024, 1024), 2026-11",
    "UNITS_SERIAL_MAX_BATCH": "forward planner; 2-vCPU Xeon, (100, B, 256, 256), 2026-12-01",
    "UNITS_SERIAL_B1_MIN_BYTES": "forward planner; 2-vCPU Zen 3 (AVX2, OpenBLAS Haswell), "
                                 "batch 1, one thread, 2026-12-02",
    "UNITS_SERIAL_MIN_UNITS": "forward planner; 2-vCPU Xeon, training forward, 2026-12-01",
    "UNITS_L2_MIN_BYTES": "forward planner; 2-vCPU Xeon, (100, 32, 256, 384), 2026-12-01",
    "UNITS_L2_SERIAL_MAX_BATCH": "forward planner; 2-vCPU Zen 3, one thread, 2026-12-02",
    "UNITS_L2_SERIAL_MAX_BATCH_INFERENCE": "forward planner; 2-vCPU Zen 3, one thread, "
                                           "inference, 2026-12-02",
    "UNITS_TRAIN_MAX_BATCH": "forward planner; 2-vCPU Zen 3 (AVX2, OpenBLAS Haswell), "
                             "training forward, 2026-12-02",
    "UNITS_TRAIN_WIDE_MAX_BATCH": "forward planner; 2-vCPU Zen 3 (AVX2, OpenBLAS "
                                  "Haswell), training forward, 2026-12-02",
    "UNITS_TRAIN_L2_MAX_BATCH": "forward planner; 2-vCPU Zen 3 (AVX2, OpenBLAS "
                                "Haswell), training forward, 2026-12-02",
    "UNITS_TRAIN_TEAM_MIN_BYTES": "forward planner; 2-vCPU Zen 3 (AVX2, OpenBLAS "
                                  "Haswell), training forward, 2026-12-02",
    "FUSE_MIN_ROWS": "forward planner; 2-core Zen 4, (100, 32, 128, 256), 2026-11",
    "FUSE_MAX_BYTES": "forward planner; 2-vCPU Xeon, (50, 64, 512, 512), 2026-12-01",
    "FIT_LLC_FRACTION": "forward planner; 2-core Zen 4, (25, 16, 1024, 1024), 2026-11",
    "STEP_TILE_BLAS_CORES": "BLAS paths' per-step products; 2-core Zen 4 and 2-vCPU "
                            "Zen 3, 2026-12-02",
    "STACKED_MIN_ROWS": "forward planner; 2-core Zen 4, (100, 16, 256, 256), 2026-11",
    "STACKED_MIN_UNITS": "forward planner; 2-core Zen 4, (100, 32, 128, 256), 2026-11",
    "STACKED_PACKING_BLAS_MAX_BYTES": "forward planner; 2-vCPU Zen 3 (AVX2, OpenBLAS "
                                      "Haswell), inference, 2026-12-02",
    "STACKED_PACKING_BLAS_WIDE_MAX_BYTES": "forward planner; 2-vCPU Zen 3 (AVX2, OpenBLAS "
                                           "Haswell), inference, 2026-12-02",
    "STACKED_WIDE_MIN_ROWS": "forward planner; 2-vCPU Zen 3 (AVX2, OpenBLAS Haswell), "
                             "inference, 2026-12-02",
    "SMALL_BATCH_UNITS_MIN_BYTES": "forward planner; 2-vCPU Zen 3 (AVX2, OpenBLAS "
                                   "Haswell), batches 2-3, 2026-12-02",
    "STACKED_TRAIN_MIN_ROWS": "forward planner; AMD EPYC (2 cores), Zen 3 (AVX2, OpenBLAS "
                              "Haswell), training step, 2026-12-06",
    "STACKED_TRAIN_MAX_BYTES": "forward planner; AMD EPYC (2 cores), Zen 3 (AVX2, OpenBLAS "
                               "Haswell), training step, one thread, 2026-12-06",
    "STACKED_TRAIN_TEAM_MAX_BYTES": "forward planner; AMD EPYC (2 cores), Zen 3 (AVX2, "
                                    "OpenBLAS Haswell), training step, 2 threads, 2026-12-06",
    "BLAS_MIN_BATCH": "streaming runner; 2-core Zen 4, stream_bench",
    "PARALLEL_MIN_BYTES": "streaming runner; 2-core Zen 4, (64, 128)",
    "INT8_PROJECT_BYTES": "int8 runner's x_t projection; 2-vCPU Zen 3, one thread, "
                          "2026-12-03",
    "INT8_PROJECT_MIN_INPUTS": "int8 runner's x_t projection; 2-vCPU Zen 3, one thread, "
                               "2026-12-03",
    "INT8_SEQ_PARALLEL_MIN_BYTES": "lstm_forward(weights_dtype='int8'); 2-vCPU Zen 3, "
                                   "2 threads over 1, 2026-12-03",
    "INT8_FLOAT_MIN_ROWS": "quantized LSTM layers' products; 2-vCPU Zen 3, 2026-12-03",
    "INT8_FLOAT_MAX_UNITS": "quantized LSTM layers' products; 2-vCPU Zen 3, 2026-12-03",
    "INT8_FLOAT_MAX_UNITS_TEAM": "quantized LSTM layers' products, several threads; 2-vCPU "
                                 "Zen 3, 2026-12-03",
    "PARALLEL_MIN_SIZE": "optimizers; 2 cores, float32 Adam",
    "WEIGHT_CACHE_BYTES": "packed-weight cache (a memory bound); 2-vCPU Xeon, 2026-12-02",
    "COMPARE_PARALLEL_MIN_BYTES": "packed-weight cache compare; a pool start against "
                                  "the L3 rate, 2-vCPU Xeon, 2026-12-02",
    "PANEL_PROJ_MAX_ROWS": "unit path, cached weights, AVX2/baseline; 2-vCPU Xeon forced "
                           "to AVX2, 2026-12-02",
    "PANEL_PROJ_MAX_ROWS_AVX512": "unit path, cached weights, AVX-512; 2-vCPU Xeon, "
                                  "(T, B, I, H) up to 4000 rows, 2026-12-02",
    "PANEL_KBLOCK_L2_FRACTION": "AVX2 panel passes' K blocks, a core's L2 over this; "
                                "2-vCPU Zen 3, kernel micro-bench and lstm_forward, "
                                "2026-12-06",
    "L3_PER_CORE_CAP": "cache budget bound; 2-vCPU Zen 4 sysfs and 2-vCPU Xeon paths, 2026-12-01",
    "TEAM_MEASURE_MAX_BYTES": "small 'units' calls timed on a team and alone; 2-vCPU "
                              "Zen 3 and Xeon, (200, 1, 64, 128), 2026-12-03",
    "TEAM_MIN_GAIN": "small 'units' calls: a team kept at most this fraction of one "
                     "thread's time; 2-vCPU Xeon, 2026-12-03",
    "TEAM_PROBE_EVERY": "small 'units' calls: re-measuring interval, 2026-12-03",
    "TEAM_PROBE_MIN": "small 'units' calls: re-measuring interval after a changed "
                      "choice; AMD EPYC (2 cores), Zen 4, bench/compare.py, 2026-12-06",
    "TEAM_GAP_NS": "small 'units' calls: after this idle time a call is not timed; "
                   "bench/compare.py cold, 2-vCPU Xeon, 2026-12-03",
    "AMX_MIN_ROWS_PER_THREAD": "bf16 forward on AMX tiles; 2-vCPU Xeon (Sapphire Rapids "
                               "class), (25, 16, 1024, 1024), 2026-12-03",
    "AMX_FUSE_MIN_ROWS": "bf16 forward on AMX tiles; 2-vCPU Xeon, bench shapes, 2026-12-03",
    "AMX_FUSE_MAX_BYTES": "bf16 forward on AMX tiles; 2-vCPU Xeon, (50, 64, 512, 512) and "
                          "(25, 16, 1024, 1024), 2026-12-03",
    "AMX_BACK_ROWS": "bf16 backward on AMX tiles, dz rows packed at a time (compiled in: "
                     "_lstm.AMX_BACK_ROWS_C); 2-vCPU Xeon, bench shapes, 2026-12-03",
    "BF16_DOTS_MIN_ROWS_PER_THREAD": "bf16 forward on AVX512-BF16 dots (no AMX): the "
                                     "batch split; 2-vCPU Xeon (Sapphire Rapids class) "
                                     "with AMX turned off, 2026-12-03",
    "BF16_DOT_ROWS": "bf16 products of this many rows or fewer on AVX512-BF16 dots, not "
                     "tiles (compiled in); 2-vCPU Xeon, one product, 2026-12-03",
    "INT8_ROW_MIN_ROWS": "int8 forward: a batch slice per thread from this many rows a "
                         "slice; 2-vCPU Xeon, bench shapes, 2026-12-03",
    "BACKWARD_WHOLE_GRADS": "float32 backward on threads: weight GEMMs over the whole "
                            "batch for short slices; 2-vCPU Xeon, bench shapes, 2026-12-03",
    "BACKWARD_UNITS_MAX_ROWS": "backward on threads: the time loop split by units up to "
                               "this many samples a thread (U^T past L2); 2-vCPU AMD "
                               "EPYC (Zen 3), 2026-12-07",
    "BACKWARD_UNITS_PIECES": "backward unit split: pieces a thread; 2-vCPU AMD EPYC "
                             "(Zen 3), 2026-12-07",
}
_DEFAULTS = {name: globals()[name] for name in THRESHOLDS}


def threshold_sources():
    """(name, value, where it came from) for every threshold: "default (<measurement>)"
    or "overridden" when patched at run time."""
    out = []
    for name, note in THRESHOLDS.items():
        v = globals()[name]
        out.append((name, v, f"default ({note})" if v == _DEFAULTS[name] else
                    f"overridden (default {_DEFAULTS[name]})"))
    return out


#: The forward paths, in the order the kernel's old ``mode`` numbered them.
PATHS = ("rows", "rows_fused", "units", "stacked")

# ----------------------------------------------------------------------------- CPU facts
_SYSFS = "/sys/devices/system/cpu"
_CPUINFO = "/proc/cpuinfo"
_FLAGS_OF_INTEREST = ("avx512_bf16", "avx512_fp16", "avx512_vnni", "avx_vnni", "amx_tile",
                      "amx_bf16", "amx_int8")
ISA_NAMES = {2: "avx512", 1: "avx2+fma", 0: "baseline"}
_DEFAULT_L2 = 1 * 2**20     # without sysfs (macOS, Windows, containers hiding it)
_DEFAULT_L3 = 2 * 2**20     # per core; the old whole-LLC fallback was 8 MiB for ~4 cores


@dataclasses.dataclass(frozen=True)
class CpuFacts:
    """What the planner knows about the CPU (see :func:`detect_cpu`).

    ``l3_per_core`` is the sysfs L3 size divided by the CPUs sharing it, bounded
    by :data:`L3_PER_CORE_CAP` (or raised to what :func:`tune`'s probe measured);
    ``llc_budget = l3_per_core * n_cores`` is the cache the "fits" rules compare
    weight sizes with.  ``l3_source`` says which bound applied.
    """

    vendor: str = "unknown"
    model_name: str = "unknown"
    family: int = -1
    model: int = -1
    n_cores: int = 1
    isa_level: int = 0
    isa_name: str = "baseline"
    flags: frozenset = frozenset()
    fma512_ports: int = 0
    l2_per_core: int = _DEFAULT_L2
    l3_total: int = 0
    l3_shared_by: int = 1
    l3_per_core: int = _DEFAULT_L3
    l3_source: str = "default (no sysfs)"
    llc_budget: int = _DEFAULT_L3
    blas_core: str = "unknown"
    amx_bf16: bool = False

    @property
    def bf16_dots(self):
        """Whether the bf16 paths can run on AVX512-BF16 dot products (``vdpbf16ps``)
        where there are no AMX tiles (AMD Zen 4, Intel Cooper Lake; see
        BF16_DOTS_MIN_ROWS_PER_THREAD for what they measured)."""
        return self.isa_level == 2 and "avx512_bf16" in self.flags

    @property
    def blas_tiles_steps(self):
        """Per-step BLAS products as small tiles (see STEP_TILE_BLAS_CORES)."""
        return self.blas_core.lower() in STEP_TILE_BLAS_CORES

    def with_l3_per_core(self, per_core, source):
        """These facts with another per-core L3 share (and so another budget)."""
        per_core = max(1, int(per_core))
        return dataclasses.replace(self, l3_per_core=per_core, l3_source=source,
                                   llc_budget=per_core * self.n_cores)


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _parse_size(txt):
    """sysfs cache sizes: '48K', '2048K', '32M', '1G' or plain bytes; None if unreadable."""
    if not txt:
        return None
    m = re.fullmatch(r"(\d+)\s*([KMG]?)(?:i?B)?", txt.strip().upper())
    if not m:
        return None
    return int(m.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[m.group(2)]


def _count_cpu_list(txt):
    """Number of CPUs in a sysfs list such as '0-3,8-11' or '0'; None if unreadable."""
    if not txt:
        return None
    n = 0
    try:
        for part in txt.split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part:
                a, b = part.split("-", 1)
                n += int(b) - int(a) + 1
            else:
                int(part)
                n += 1
    except ValueError:
        return None
    return n or None


def _parse_cpuinfo(path):
    """(vendor, model name, family, model, flags) of the first processor listed."""
    txt = _read(path)
    fields = {}
    if txt:
        for line in txt.splitlines():
            if not line.strip():
                if fields:
                    break  # the first processor's block is enough
                continue
            key, sep, value = line.partition(":")
            if sep:
                fields.setdefault(key.strip().lower(), value.strip())

    def num(key):
        try:
            return int(fields.get(key, "-1"), 0)
        except ValueError:
            return -1

    flags = frozenset(fields.get("flags", "").split())
    return (fields.get("vendor_id", "unknown") or "unknown",
            fields.get("model name", "unknown") or "unknown",
            num("cpu family"), num("model"), flags)


def _level_from_flags(flags):
    """The ISA level cylstm_cpu.h would pick, from /proc/cpuinfo flags."""
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd", "avx2", "fma",
            "bmi2"} <= flags:
        return 2
    if {"avx2", "fma", "bmi1", "bmi2", "movbe", "f16c", "popcnt"} <= flags:
        return 1
    return 0


# Intel family-6 models with AVX-512 and a single 512-bit FMA (client parts:
# Ice Lake, Tiger Lake, Rocket Lake; ports 0+1 fused).  Server parts (Skylake-SP 85,
# Ice Lake-SP 106/108, Sapphire/Emerald Rapids 143/207, Granite Rapids 173/174) have
# the second FMA on port 5.
_INTEL_ONE_FMA512 = {125, 126, 140, 141, 167}


def _fma512_ports(vendor, family, model, model_name, flags):
    """512-bit FMAs a core issues per cycle: a documented heuristic from vendor/family.

    0 without AVX-512.  AMD: Zen 4 (family 0x19) splits each 512-bit FMA into two
    256-bit halves: 1.  Zen 5 (family 0x1A) has full-width 512-bit units on desktop
    and server parts (2) but keeps the split on mobile parts ("Ryzen AI" names): 1.
    Intel: server cores with AVX-512 (Skylake-SP and later: a "Xeon" name, AMX, or a
    server model number) 2; client cores with AVX-512 (Ice/Tiger/Rocket Lake) 1.
    Other vendors 1.  (Some low-end Xeons have one 512-bit FMA; the planner does not
    key on this yet, show_config reports it.)
    """
    if "avx512f" not in flags:
        return 0
    if vendor == "AuthenticAMD":
        if family == 0x1A and "ryzen ai" not in model_name.lower():
            return 2
        return 1
    if vendor == "GenuineIntel":
        # A VM may report any model number (one here says 167, a Rocket Lake's, for
        # a Sapphire Rapids Xeon with AMX): the name and the server-only AMX first.
        if "xeon" in model_name.lower() or "amx_tile" in flags:
            return 2
        if family == 6 and model in _INTEL_ONE_FMA512:
            return 1
        return 2 if family == 6 and model in (85, 106, 108, 143, 207, 173, 174) else 1
    return 1


def _affinity_count():
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def detect_cpu(sysfs_root=_SYSFS, cpuinfo=_CPUINFO, *, n_cores=None, isa_level=None,
               blas_core=None):
    """Read the CPU facts from sysfs and /proc/cpuinfo (injectable for tests).

    Parameters
    ----------
    sysfs_root : str
        The ``/sys/devices/system/cpu`` tree (``cpuN/cache/indexK/{level,type,size,
        shared_cpu_list}`` and ``online`` are read).
    cpuinfo : str
        A ``/proc/cpuinfo``-format file (vendor_id, cpu family, model, model name,
        flags of the first processor).
    n_cores : int, optional
        The cores this process runs on.  Default: its CPU affinity when reading this
        machine's own files, else the injected tree's ``online`` list.
    isa_level : int, optional
        Default: ``cylstm._stream.cpu_level()`` (the kernel clone this CPU runs) when
        reading this machine's own files, else derived from the injected flags.
    blas_core : str, optional
        The OpenBLAS core SciPy's BLAS runs (``cylstm._config.blas_core()``) when
        reading this machine's own files, else "unknown".

    Missing files (non-Linux, hidden sysfs) give defaults: 1 MiB L2 and 2 MiB L3 per
    core.
    """
    own = sysfs_root == _SYSFS and cpuinfo == _CPUINFO
    vendor, name, family, model, flags = _parse_cpuinfo(cpuinfo)
    if isa_level is None:
        if own:
            try:
                from cylstm import _stream  # (defers import cost; an unbuilt source tree lacks it)

                isa_level = int(_stream.cpu_level())
            except (ImportError, AttributeError):
                isa_level = _level_from_flags(flags)
        else:
            isa_level = _level_from_flags(flags)
    if blas_core is None:
        blas_core = "unknown"
        if own:
            from cylstm import _config  # breaks a cycle: _config imports the extensions

            blas_core = _config.blas_core() or "unknown"
    if n_cores is None:
        n_cores = _affinity_count() if own else (
            _count_cpu_list(_read(os.path.join(sysfs_root, "online"))) or 1)
    n_cores = max(1, int(n_cores))

    cpu_dir = os.path.join(sysfs_root, "cpu0")
    if not os.path.isdir(cpu_dir):
        try:
            cpus = sorted(int(d[3:]) for d in os.listdir(sysfs_root)
                          if re.fullmatch(r"cpu\d+", d))
            cpu_dir = os.path.join(sysfs_root, f"cpu{cpus[0]}") if cpus else cpu_dir
        except OSError:
            pass
    caches = {}  # level -> (size, shared by)
    try:
        entries = sorted(os.listdir(os.path.join(cpu_dir, "cache")))
    except OSError:
        entries = []
    for e in entries:
        if not e.startswith("index"):
            continue
        base = os.path.join(cpu_dir, "cache", e)
        level = _read(os.path.join(base, "level"))
        kind = (_read(os.path.join(base, "type")) or "Unified").lower()
        size = _parse_size(_read(os.path.join(base, "size")))
        if not level or not level.isdigit() or size is None or kind == "instruction":
            continue
        shared = _count_cpu_list(_read(os.path.join(base, "shared_cpu_list"))) or 1
        lv = int(level)
        if lv not in caches or size > caches[lv][0]:
            caches[lv] = (size, shared)

    l2 = caches[2][0] // caches[2][1] if 2 in caches else _DEFAULT_L2
    if 3 in caches:
        l3_total, shared = caches[3]
        share = l3_total // shared
        if share > L3_PER_CORE_CAP:
            l3, src = L3_PER_CORE_CAP, (f"sysfs {l3_total >> 20} MiB / {shared} CPUs, capped at "
                                        f"{L3_PER_CORE_CAP >> 20} MiB per core (a VM's host L3?)")
        else:
            l3, src = share, f"sysfs {l3_total >> 20} MiB / {shared} CPUs"
    else:
        l3_total, shared = 0, 1
        if 2 in caches:  # no L3 (some Arm parts): the L2 is the last level
            l3, src = l2, "no L3 in sysfs: the L2"
        else:
            l3, src = _DEFAULT_L3, "default (no sysfs)"
    return CpuFacts(vendor=vendor, model_name=name, family=family, model=model,
                    n_cores=n_cores, isa_level=int(isa_level),
                    isa_name=ISA_NAMES.get(int(isa_level), "baseline"),
                    flags=frozenset(f for f in _FLAGS_OF_INTEREST if f in flags),
                    fma512_ports=_fma512_ports(vendor, family, model, name, flags),
                    l2_per_core=l2, l3_total=l3_total, l3_shared_by=shared,
                    l3_per_core=l3, l3_source=src, llc_budget=l3 * n_cores,
                    blas_core=str(blas_core),
                    amx_bf16=int(isa_level) == 2 and "amx_bf16" in flags
                    and "avx512_bf16" in flags)


_lock = threading.Lock()
_detected = None


def detected_cpu():
    """This machine's :func:`detect_cpu`, read once."""
    global _detected
    if _detected is None:
        _detected = detect_cpu()
    return _detected


def cpu_facts():
    """The facts the planner uses now: :func:`detected_cpu`, with the per-core L3
    share raised to what :func:`tune`'s bandwidth probe measured when the tuning
    cache holds a probe for this CPU (and ``CYLSTM_TUNE`` is not 0)."""
    facts = detected_cpu()
    w = _wisdom()
    knee = w.get("l3_per_core_probe") if w else None
    if isinstance(knee, int) and knee > facts.l3_per_core and facts.l3_total:
        per_core = min(knee, facts.l3_total // facts.l3_shared_by)
        if per_core > facts.l3_per_core:
            memo = _memo.get("probed")
            if memo is not None and memo[0] is w and memo[1] is facts:
                return memo[2]
            probed = facts.with_l3_per_core(
                per_core, f"sysfs {facts.l3_total >> 20} MiB / {facts.l3_shared_by} CPUs, "
                f"probe saw {per_core >> 20} MiB per core (tuned cache)")
            _memo["probed"] = (w, facts, probed)
            return probed
    return facts


def backward_units(B, n_threads, H, facts=None, itemsize=4):
    """Whether the backward on ``n_threads`` splits its time loop by units: at
    most BACKWARD_UNITS_MAX_ROWS samples a thread, and U^T (4H x H of
    ``itemsize`` bytes) larger than a core's L2 in ``facts`` (default: this CPU)."""
    facts = cpu_facts() if facts is None else facts
    return (n_threads > 1 and B // n_threads <= BACKWARD_UNITS_MAX_ROWS
            and 4 * H * H * itemsize > facts.l2_per_core)


def panel_kblock_bytes(facts=None):
    """The K-block budget of the AVX2 panel passes for ``facts`` (default: this
    CPU, :func:`detected_cpu`): a core's L2 over ``PANEL_KBLOCK_L2_FRACTION``."""
    facts = detected_cpu() if facts is None else facts
    return int(facts.l2_per_core // PANEL_KBLOCK_L2_FRACTION)


# ----------------------------------------------------------------------------- tuning cache
_FORMAT = 1


def tuning_enabled():
    """False when ``CYLSTM_TUNE=0``: no cache is read and :func:`tune` measures nothing."""
    return os.environ.get("CYLSTM_TUNE", "1").strip() != "0"


# ----------------------------------------------------------------------------- teams, measured
_teams = {}   # key -> [calls, alone ns/step, team ns/step, probe calls left, probe alone,
#                      end of the last call (perf_counter_ns), calls to the next
#                      probe, probe interval, the last choice (threads, 0: none)]
_teams_lock = threading.Lock()


def team_threads(key, n):
    """(threads, how): the threads a call of shape class ``key`` that a plan gives
    ``n`` threads should run on now, and how its time counts (note_team_time): 0
    not, 1 replaces that choice's average, 2 is averaged with it, 3 moves it."""
    now = time.perf_counter_ns()
    with _teams_lock:
        e = _teams.get(key)
        if e is None:
            e = _teams[key] = [0, 0.0, 0.0, 0, True, now, 0, TEAM_PROBE_MIN, 0]
        e[0] += 1
        if e[0] <= 2:                    # first calls: cold caches, first touches
            return 1, 0
        if now - e[5] > TEAM_GAP_NS:     # after an idle gap: as chosen, not counted
            return (n if 0 < e[2] <= TEAM_MIN_GAIN * e[1] else 1), 0
        if e[3] == 0:
            if e[1] == 0 or e[2] == 0:   # a probe of the one not measured yet
                e[3], e[4] = 3, e[1] == 0
            else:
                choice = n if e[2] <= TEAM_MIN_GAIN * e[1] else 1
                if choice != e[8]:       # a new choice: time the other one again soon
                    e[6], e[7], e[8] = TEAM_PROBE_MIN, TEAM_PROBE_MIN, choice
                e[6] -= 1
                if e[6] > 0:
                    return choice, 3
                e[7] = min(2 * e[7], TEAM_PROBE_EVERY)   # held: probe less often
                e[6] = e[7]
                e[3], e[4] = 3, choice != 1              # the other choice
        e[3] -= 1
        how = 0 if e[3] == 2 else 1 if e[3] == 1 else 2   # (its first call not counted)
        return (1 if e[4] else n), how


def note_team_time(key, threads, ns_per_step, how):
    """Count a call's time per step for its choice (see team_threads)."""
    with _teams_lock:
        e = _teams.get(key)
        if e is None:
            return
        e[5] = time.perf_counter_ns()
        if how == 0:
            return
        i = 1 if threads == 1 else 2
        if how == 1 or e[i] == 0:
            e[i] = ns_per_step
        elif how == 2:
            e[i] = (e[i] + ns_per_step) * 0.5
        else:
            e[i] += (ns_per_step - e[i]) * 0.125


def team_stats():
    """{key: (calls, alone ns per step, team ns per step)} (diagnostics, tests)."""
    with _teams_lock:
        return {k: (e[0], e[1], e[2]) for k, e in _teams.items()}


def clear_teams():
    """Forget the measured team choices (tests)."""
    with _teams_lock:
        _teams.clear()


def cache_path():
    """``$CYLSTM_CACHE_DIR/tuning.json``, else ``$XDG_CACHE_HOME/cylstm/tuning.json``,
    else ``~/.cache/cylstm/tuning.json``."""
    d = os.environ.get("CYLSTM_CACHE_DIR")
    if not d:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"),
                                                                ".cache")
        d = os.path.join(base, "cylstm")
    return os.path.join(d, "tuning.json")


def _version():
    from cylstm import __version__  # (breaks a cycle: cylstm/__init__ imports this module)

    return __version__


def _identity(facts):
    return {"cpu": facts.model_name, "isa_level": facts.isa_level, "version": _version()}


def shape_class(B, I, H, dtype, n_threads):
    """The key tuned choices are stored under: dtype, threads, and B, I, H rounded
    down to powers of two (a choice measured at one shape serves its neighbours)."""
    def p2(n):
        return 1 << (max(int(n), 1).bit_length() - 1)

    return f"{dtype}/t{int(n_threads)}/B{p2(B)}/I{p2(I)}/H{p2(H)}"


def read_cache(path=None, facts=None):
    """The stored choices for ``facts`` (default: this CPU) as a dict, and why not.

    Returns ``(data, problem)``: ``data`` is the validated file content or None;
    ``problem`` is None or a short reason (missing, unreadable, invalid JSON, another
    CPU, another cylstm version, bad entries).  A file is never trusted blindly: an
    entry whose path is not one of :data:`PATHS` makes the whole file invalid.
    """
    path = path or cache_path()
    facts = facts or detected_cpu()
    try:
        with open(path, "rb") as f:
            raw = f.read(1 << 22)
    except FileNotFoundError:
        return None, "no cache file"
    except OSError as e:
        return None, f"unreadable ({type(e).__name__})"
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None, "invalid JSON (truncated?)"
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        return None, "unknown format"
    ident = _identity(facts)
    for k, v in ident.items():
        if data.get(k) != v:
            return None, f"written for another {k.replace('_', ' ')} ({data.get(k)!r})"
    choices = data.get("choices")
    if not isinstance(choices, dict):
        return None, "no choices"
    for key, entry in choices.items():
        if (not isinstance(key, str) or not isinstance(entry, dict)
                or entry.get("path") not in PATHS):
            return None, f"bad entry {key!r}"
    probe = data.get("l3_per_core_probe")
    if probe is not None and (not isinstance(probe, int) or probe <= 0):
        return None, "bad probe value"
    return data, None


# The validated cache content, memoized: ``key`` (None: look again) is the file's
# (path, mtime, size), (path, None) when there is none, or ("off",) under
# CYLSTM_TUNE=0; ``checked`` is when the environment and the file were last
# looked at.  A forward call consults this twice, and reading the environment
# (CYLSTM_TUNE and the three variables of cache_path) and a stat cost 20 us of a
# 70 us call at (T, B, I, H) = (1, 1, 8, 8) (2-vCPU Zen 3, Python 3.11,
# 2026-12-02), so they are looked at again at most every RESTAT_S seconds: a
# change of the environment or a file another process writes takes effect
# within that, a file this process writes (_write_cache) or forget() at once.
RESTAT_S = 1.0
_memo = {"key": None, "data": None, "checked": 0.0, "probed": None}


def forget():
    """Look at the environment and the tuning cache file again on the next call
    (tests that change CYLSTM_TUNE or the cache directory call this)."""
    _memo["key"] = None


def _wisdom():
    """The validated cache content (memoized on path and mtime), or None."""
    now = time.monotonic()
    if _memo["key"] is not None and now - _memo["checked"] < RESTAT_S:
        return _memo["data"]
    if not tuning_enabled():
        stamp = ("off",)
    else:
        path = cache_path()
        try:
            st = os.stat(path)
            stamp = (path, st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = (path, None)
    if _memo["key"] != stamp:
        data = read_cache(stamp[0])[0] if len(stamp) == 3 else None
        _memo["key"], _memo["data"] = stamp, data
    _memo["checked"] = now
    return _memo["data"]


def tuned_path(B, I, H, dtype, n_threads):
    """The stored fastest path for this shape class, or None (``dtype``: a name
    or a numpy dtype)."""
    w = _wisdom()
    if not w:
        return None
    dtype = getattr(dtype, "name", dtype)
    entry = w["choices"].get(shape_class(B, I, H, dtype, n_threads))
    return entry["path"] if entry else None


def _write_cache(data, path=None):
    """Write ``data`` as JSON through a temporary file and os.replace (atomic:
    a reader sees the old file or the new one, never half of one)."""
    path = path or cache_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, lambda f: json.dump(data, f, indent=1, sort_keys=True), binary=False,
                 prefix=".tuning-", suffix=".json", fsync=False)
    _memo["key"] = None


def probe_l3_per_core(max_bytes=64 * 2**20, budget_s=0.25):
    """Where reading a buffer slows down: a per-core cache size measured with NumPy.

    Sums float32 buffers of 1, 2, 4, ... MiB (each read a few times, the best
    rate kept) and returns the largest size whose read rate is still at least
    60% of the best rate seen, or None when no drop was seen before ``max_bytes``
    or the time budget (then sysfs and the cap stand).  Runs only inside
    :func:`tune`; well under 0.3 s.
    """
    import numpy as np  # (defers import cost: only tune() needs it)

    buf = np.ones(max_bytes // 4, np.float32)
    t_end = time.perf_counter() + budget_s
    best_rate, knee, size = 0.0, None, 2**20
    while size <= max_bytes and time.perf_counter() < t_end:
        view = buf[: size // 4]
        view.sum()  # warm: page it in and into the cache
        rate = 0.0
        for _ in range(3):
            t0 = time.perf_counter()
            view.sum()
            dt = time.perf_counter() - t0
            rate = max(rate, size / max(dt, 1e-9))
        if rate >= 0.6 * best_rate:
            knee = size
            best_rate = max(best_rate, rate)
        else:
            return knee
        size *= 2
    return None


def _candidates(B, H, dtype, n_threads):
    from cylstm import functional  # (breaks a cycle: functional imports this module)

    out = []
    for p in PATHS:
        if functional._path_error(p, B, H, dtype, n_threads, training=False, has_mask=False,
                                  has_lengths=False, reverse=False) is None:
            out.append(p)
    return out


DEFAULT_SHAPES = ((25, 1, 64, 128), (25, 16, 256, 256), (25, 64, 256, 512),
                  (25, 16, 1024, 1024))


def tune(shapes=None, num_threads=None, *, repeats=3, dtype="float32", probe=True,
         verbose=False):
    """Measure the forward paths for some shape classes and store the fastest.

    FFTW-style: for each (T, B, I, H) in ``shapes`` (default :data:`DEFAULT_SHAPES`),
    time every path the call can take (``lstm_forward(..., _plan=path)``, inference,
    ``dtype``, ``repeats`` runs after a warm-up, the minimum kept), and store the
    fastest under the shape's class (:func:`shape_class`: B, I, H rounded down to
    powers of two, the thread count and the dtype) in :func:`cache_path`, keyed by
    CPU model, ISA level and cylstm version.  Later forwards of that class take the
    stored path when it is valid for the call; other shapes keep the model rules.
    With ``probe``, also measures where cache reads slow down
    (:func:`probe_l3_per_core`) and stores it, bounding the cache budget.

    Nothing is tuned automatically: a forward never measures, so results stay
    deterministic until ``tune()`` (or ``python -m cylstm.tune``) is run.
    ``CYLSTM_TUNE=0`` makes this a no-op (and makes forwards ignore the cache).

    Returns
    -------
    dict
        shape class -> {"path": fastest, "ms": {path: best milliseconds}, "shape": [T, B, I, H]}
        for the shapes measured now (empty when tuning is off).
    """
    import numpy as np  # (defers import cost: only tune() needs it)

    from cylstm import _config  # (breaks a cycle: _config imports this module)
    from cylstm.functional import lstm_forward  # (breaks a cycle: functional imports this module)

    if not tuning_enabled():
        warnings.warn("cylstm.tune: CYLSTM_TUNE=0, nothing measured", stacklevel=2)
        return {}
    shapes = DEFAULT_SHAPES if shapes is None else shapes
    n = _config.get_num_threads() if num_threads is None else int(num_threads)
    if n < 1:
        raise ValueError(f"num_threads must be >= 1; got {n}")
    dtype = np.dtype(dtype).name
    facts = detected_cpu()
    with _lock:
        data, _ = read_cache(facts=facts)
        if data is None:  # missing, corrupt, or another CPU / version: start afresh
            data = {"format": _FORMAT, **_identity(facts), "choices": {}}
        if probe:
            knee = probe_l3_per_core()  # what one thread reads fast: the team's share
            if knee is not None:
                data["l3_per_core_probe"] = int(knee // facts.n_cores)
        results = {}
        rng = np.random.default_rng(0)
        for shape in shapes:
            T, B, I, H = (int(v) for v in shape)
            if min(T, B, I, H) < 1:
                raise ValueError(f"shapes must be (T, B, I, H) of positive ints; got {shape}")
            x = rng.standard_normal((B, T, I)).astype(dtype)
            W = (rng.standard_normal((I, 4 * H)) * 0.1).astype(dtype)
            U = (rng.standard_normal((H, 4 * H)) * 0.1).astype(dtype)
            b = np.zeros(4 * H, dtype)
            times = {}
            for path in _candidates(B, H, np.dtype(dtype), n):
                lstm_forward(x, W, U, b, num_threads=n, return_sequences=False, _plan=path)
                best = float("inf")
                for _ in range(max(1, int(repeats))):
                    t0 = time.perf_counter()
                    lstm_forward(x, W, U, b, num_threads=n, return_sequences=False,
                                 _plan=path)
                    best = min(best, time.perf_counter() - t0)
                times[path] = round(best * 1e3, 4)
            fastest = min(times, key=times.get)
            key = shape_class(B, I, H, dtype, n)
            results[key] = {"path": fastest, "ms": times, "shape": [T, B, I, H],
                            "date": time.strftime("%Y-%m-%d")}
            if verbose:
                print(f"{key}: {fastest}  " +
                      "  ".join(f"{p} {t:.3f} ms" for p, t in times.items()))
        data["choices"].update(results)
        _write_cache(data)
    return results
