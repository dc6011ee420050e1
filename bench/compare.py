#!/usr/bin/env python
"""cylstm against its peers, side by side, in one process: the benchmark to judge it by.

    pip install .                    # then, from the repository root:
    python bench/compare.py --quick  # about a minute and a half on 2 cores
    python bench/compare.py          # all workloads, threads 1 and 2: a few minutes on 2 cores

Workloads (names for ``--only``; a case name or ``workload/case`` selects one case):

    forward   full-sequence inference, shapes TxBxIxH: 100x32x10x50 (the Keras example),
              100x32x128x256, 50x64x512x512, 25x16x1024x1024 and 25x1x512x512 (DeepBench),
              150x1x256x256 and 200x1x64x128 (batch-1 sequences); with the rows
              "cylstm bf16" (compute_dtype="bfloat16": AMX tiles where the CPU has
              AMX-BF16, emulated elsewhere) and "cylstm int8" (int8-quantized weights as a quantized
              layer runs them: the int8 kernel, weights_dtype="int8", where
              functional.int8_kernel_pays, else float32 products), checked against cylstm's float32 output
              to issue 16's bounds (1e-2, 3e-2 max abs), their speed-up column their
              time over float32's; "onnxruntime int8" (com.microsoft.DynamicQuantizeLSTM
              on the same int8 weights), its speed-up column its time over "cylstm
              int8"'s, and "torch bf16" (nn.LSTM in bfloat16, oneDNN; skipped where
              torch refuses it), its speed-up column its time over "cylstm bf16"'s
              (not --quick)
    train     one training step on the first four shapes: forward + backward with the
              gradients of x, W, U and b, for a fixed upstream gradient dL/dy; with
              "cylstm bf16" (compute_dtype="bfloat16", the mixed_bfloat16 policy's
              step), checked to 3e-2 of the largest float32 gradient, its speed-up
              column its time over float32's (not --quick)
    stream    per-step latency at batch 1 (median and p99) of a stack of L LSTM layers and a
              Dense(1) head, cases IxHxLL: 64x128x1L, 64x128x2L, 256x512x1L, 256x512x2L
              (bench/stream_bench.py: cylstm's StreamRunner, torch LSTMCell and nn.LSTM with
              T=1, ONNX Runtime session.run with the state fed back, NumPy)
    pool      serving 32 streams, one frame each per frame time, cases IxH: 64x128 (--quick),
              256x512 (one LSTM layer and a Dense(1) head; bench/pool_bench.py): cylstm's
              StreamPool.step (the "cylstm" row), 32 StreamRunner.step calls, and the peers
              batched by hand: torch LSTMCell and ONNX Runtime's LSTM op on the batch of 32
              with the states carried
    epoch     one epoch of the Keras example model (LSTM(50, return_sequences) -> LSTM(20)
              -> Dense(1), Adam(0.001), MSE) on 2048 x 50 x 10 synthetic data, batch 32
    longseq   one training step over a very long sequence (a first layer: loss on h_T,
              gradients of W, U, b), cases TxBxIxH: 10000x32x32x256 (default memory budget),
              100000x1x32x128 (budget 16 MiB), 2000x8x16x64 (--quick; budget 4 MB).  cylstm
              with checkpoint_every="auto" and with full BPTT, torch nn.LSTM with full BPTT
              and with torch.utils.checkpoint over ceil(sqrt(T))-step chunks; each in its own
              process (bench/longseq_bench.py) for a clean peak RSS.  Columns: step time,
              saved activations (each implementation's own count), RSS held after the
              forward, peak RSS of the step, and cylstm's checkpointed / full step time

Implementations: cylstm (forward: ``lstm_forward(..., weights_version=v)``, the case's
fixed weights packed once, as ONNX Runtime's session packs its initializers; the row
"cylstm, weights compared" is the plain call, which checks them byte for byte against the
packed copy every call); NumPy "naive" (per step ``x_t @ W + h @ U + b`` with fresh arrays)
and "good" (the input projection of all steps as one GEMM, then one ``h @ U`` per step into a
preallocated gate-major buffer, one tanh pass serving all gates); PyTorch ``nn.LSTM`` with its
default oneDNN path and with oneDNN disabled; ONNX Runtime (an ONNX ``LSTM`` node, W/R/B
initializers); Keras/TensorFlow when importable.  A peer that is not installed is listed as
skipped, with the reason.  See bench/_impls.py for each implementation and the layouts used.

Method
------
* Float32 everywhere.  One thread count for every library at a time (``--threads``, default
  1 and 2): ``cylstm.set_num_threads``, ``torch.set_num_threads``, ONNX Runtime's
  ``intra_op_num_threads``, threadpoolctl limits on NumPy's and SciPy's OpenBLAS; TensorFlow's
  pools can be sized only once per process.
* The sgemm rate (SciPy's sgemm on a 2048 cube, 1024 with ``--quick``; the best of 5, which
  load from other processes disturbs least) is measured at each thread count, before the
  workloads and again after them (the higher counts in the JSON, Markdown and chart); every
  row shows GFLOP/s and its percentage of that rate.  FLOPs counted:
  2*T*B*(I+H)*4H for a forward pass, 3x that for a training step (forward, weight gradients,
  input/hidden gradients); the epoch counts 3x the forward FLOPs of both LSTM layers.
* Before timing, every implementation's result is compared with cylstm's (outputs; for
  training dx, dW, dU, db; for the epoch the untrained models' predictions from the same
  initial weights, and the final losses).  A disagreement beyond tolerance is reported, that
  implementation is not timed, and the script exits with status 1.
* The first call (setup, warm-up) is not timed, nor is a second warm-up call, which also
  sizes a block: k calls back to back lasting about 20-50 ms.  Then ``--repeat`` rounds; each
  round runs one block of every implementation, in an order rotated every round.  Before each
  block the script pauses (``--pause``, 0.2 s, 0.15 s with ``--quick``; 0.02 s at one
  thread, where no pool spins) so that the previous library's spinning worker threads
  (OpenBLAS, OpenMP, ONNX Runtime) have gone to sleep and every figure is the library's own.
* Other processes' CPU use while a case runs is measured (/proc/stat less this process), and
  after each case a few 1024^3 sgemm calls time the host (a VM's cores and caches may be
  shared with other guests, which /proc/stat does not show); a case where other processes
  used more than 0.2 cores, or whose probe ran below ``HOST_SLOW`` (0.85) of the run's
  fastest probe at that thread count, is marked ``*`` as noisy.
* PyTorch's epoch model freezes ``bias_hh`` at zero: ``nn.LSTM`` has two bias vectors where
  Keras has one, and Adam would move their sum twice as fast (a different model).
* ``--quick``: forward 100x32x10x50, 100x32x128x256, 200x1x64x128; train 100x32x128x256;
  stream 64x128x1L, 256x512x1L; 2 epochs; 2 rounds; only the strongest variant of each peer.
* ``--markdown PATH`` writes the facts and tables as Markdown (the README's results section).
* Time shown: median over all timed calls, (min-max) of the per-block medians.  The speed-up
  is the peer's median over cylstm's (> 1: cylstm is faster).  The epoch: median seconds per
  epoch over epochs 2.. (epoch 1, with tracing and warm-up, is shown separately), timed from
  ``on_epoch_begin`` to ``on_epoch_end`` for ``fit``-based models and around the loop for
  PyTorch; the models start from the same weights and see the same batches in the same
  order (no shuffling), so their losses must agree; epochs are interleaved like blocks.

JSON (``--json PATH``), written after each workload and at the end::

    schema        "cylstm-bench/1"
    command, date (UTC ISO), quick, threads [int], repeat, epochs, pause_s, elapsed_s
    machine       {cpu, cores, flags, platform, env (thread variables set),
                   versions {lib: version or null, lib_missing: reason},
                   blas_pools [threadpoolctl entries], cylstm_config [show_config lines],
                   cylstm_file, torch {mkldnn_available, build}}
    sgemm         {"<threads>": {n, gflops (median), best_gflops (the reference rate: the
                   higher of start_best_gflops and end_best_gflops, measured before and
                   after the workloads)}}
    results       [ {workload, case, threads, unit ("s": every time is in seconds),
                     flops (per call, per step or per epoch; null where not counted),
                     tolerance {atol, rtol}, outside_load_cores (CPU that other processes
                     used while the case ran, in cores; null where unknown),
                     host_probe_gflops, host_probe_ratio (the sgemm probe after the case,
                     and its share of the run's fastest probe at that thread count; not
                     for cold and busy, whose own conditions are the point),
                     (stream) steps_per_block,
                     rows [ {impl, status: "ok"|"skipped"|"mismatch"|"error", reason,
                             median_s, min_s, max_s (min/max of the block medians), n_calls,
                             block_medians_s, gflops, pct_sgemm, max_abs_diff, max_rel_diff,
                             speedup (this row's median / cylstm's; absent on cylstm's row),
                             (forward, train) calls_per_block,
                             (stream) p90_s, p99_s, impl_detail,
                             (epoch) first_epoch_s, epoch_losses, final_loss,
                             final_loss_rel_diff,
                             (longseq) saved_bytes, held_bytes, peak_rss_bytes,
                             impl_detail, loss, peak_reset} ],
                     (longseq) memory_budget, checkpoint_time_ratio } ]
    skipped       [ {workload, case, threads, impl, reason} ]  (first occurrence of each)
    mismatches    [ {workload, case, threads, impl, max_abs_diff, max_rel_diff, reason} ]
    ok            true when nothing disagreed with cylstm and cylstm itself ran

``--plot PATH`` writes a PNG of cylstm's speed-up over each peer (needs matplotlib).
"""
import argparse
import datetime
import gc
import json
import math
import os
import platform
import sys
import tempfile
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import _impls
import _machine
from _impls import Skip

FORWARD_SHAPES = [(100, 32, 10, 50), (100, 32, 128, 256), (50, 64, 512, 512),
                  (25, 16, 1024, 1024), (25, 1, 512, 512), (150, 1, 256, 256),
                  (200, 1, 64, 128)]
TRAIN_SHAPES = FORWARD_SHAPES[:4]
QUICK_FORWARD = [(100, 32, 10, 50), (100, 32, 128, 256), (200, 1, 64, 128)]
QUICK_TRAIN = [(100, 32, 128, 256)]
EPOCH_CASE = "keras-example"
# serving many streams (issue 15): IxH cases of bench/pool_bench.py, 32 streams
POOL_CASES = ["64x128", "256x512"]
# --quick keeps the strongest peer of each library and drops these slower variants.
QUICK_DROP = {"numpy naive", "torch (oneDNN off)", "torch LSTM T=1", "keras/TF XLA",
              "keras/TF fit XLA", "cylstm bf16", "cylstm int8", "onnxruntime int8",
              "torch bf16"}
# Reduced-precision rows are checked against cylstm's float32 output with issue 16's
# bounds (max abs difference over the sequence) instead of the workload's tolerance;
# their "speed-up" column is their time over cylstm's float32 time (< 1: faster).
# "onnxruntime int8" quantizes its activations to 8 bits (cylstm's int8 rows: 16):
# issue 16's int8 bound, against cylstm's float32 output too; its speed-up column is
# against "cylstm int8" (SPEEDUP_AGAINST), the same weights in the same precision.
REDUCED_TOL = {"cylstm bf16": (1e-2, 0.0), "cylstm int8": (3e-2, 0.0),
               "onnxruntime int8": (3e-2, 0.0), "torch bf16": (1e-2, 0.0)}
# the training step's gradients in bf16 (sums over T x B terms): relative to the
# largest float32 gradient
REDUCED_TOL_TRAIN = {"cylstm bf16": (0.0, 3e-2)}
SPEEDUP_AGAINST = {"onnxruntime int8": "cylstm int8", "torch bf16": "cylstm bf16"}
STREAM_IMPLS = ["cylstm", "cylstm-bf16", "cylstm-int8", "torch LSTMCell", "torch LSTM T=1",
                "onnxruntime", "onnxruntime-int8", "numpy"]
WORKLOADS = ["forward", "train", "stream", "pool", "epoch", "cold", "busy", "longseq"]
# Calls after an idle gap, and beside a busy core (issue 11): the shapes where a
# second thread pays most for waking or waiting
LATENCY_SHAPES = [(100, 32, 10, 50), (200, 1, 64, 128), (150, 1, 256, 256)]
LATENCY_IMPLS = ["cylstm", "torch (oneDNN)", "onnxruntime"]
COLD_GAP_S = 0.2
BUSY_GAP_S = 0.05
# Run order: streaming first, before anything imports TensorFlow, whose thread
# pools (made by the forward workload's Keras peers) then keep taking the second
# core: cylstm's 2-thread (64, 128) step measured 4.6 us after them, 2.9 us
# before (and with Keras skipped).  Tables still come out in WORKLOADS order.
RUN_ORDER = ["stream", "pool", "cold", "busy", "forward", "train", "epoch", "longseq"]
# Very long sequences (issue 13): (T, B, I, H) and the memory budget cylstm's
# checkpoint_every="auto" runs under (None: the default, 1 GiB)
LONGSEQ_SHAPES = [(10000, 32, 32, 256), (100000, 1, 32, 128), (2000, 8, 16, 64)]
QUICK_LONGSEQ = [(2000, 8, 16, 64)]
LONGSEQ_BUDGET = {(100000, 1, 32, 128): 16 * 2**20, (2000, 8, 16, 64): 4 * 10**6}
LONGSEQ_IMPLS = [("cylstm", "cylstm"), ("cylstm full BPTT", "cylstm-full"),
                 ("torch full BPTT", "torch-full"), ("torch checkpoint", "torch-checkpoint")]
TITLES = {
    "forward": "forward inference, full sequences (TxBxIxH), float32",
    "train": "training step: forward + backward, grads of x, W, U, b (TxBxIxH), float32",
    "stream": "streaming at batch 1: latency per step",
    "pool": "serving 32 streams: one frame for every stream (IxH, one LSTM layer and a "
            "Dense(1) head), time per frame time",
    "epoch": "one training epoch of the Keras example (2048x50x10, batch 32, Adam)",
    "cold": f"forward, the first and second call after a {COLD_GAP_S * 1e3:.0f} ms idle gap "
            "(TxBxIxH), float32",
    "busy": f"forward beside another process spinning on a core: calls after a "
            f"{BUSY_GAP_S * 1e3:.0f} ms gap, and back to back (TxBxIxH), float32",
    "longseq": "one training step over a very long sequence (TxBxIxH; loss on h_T, grads of "
               "W, U, b), float32, each implementation in its own process",
}
# A case whose host probe (an sgemm after it) ran below this share of the run's fastest
# probe at its thread count is noisy: on a 2-vCPU AMD EPYC (Zen 3) guest the probe's rate
# moved 70 -> 95 GFLOP/s on one thread with nothing in /proc/stat (2026-12-07).
HOST_SLOW = 0.85


def is_noisy(res):
    """Whether a case's figures were disturbed: other processes' CPU, or a slow host."""
    return ((res.get("outside_load_cores") or 0) > 0.2
            or (res.get("host_probe_ratio") or 1.0) < HOST_SLOW)


def _pct_floor(r):
    """A share as a whole percent, rounded down (so 0.849 reads 84%, below 85%)."""
    return f"{math.floor(r * 100 + 1e-9)}%"


def noisy_reasons(results):
    """Why these results are noisy, as phrases with their figures ([]: quiet)."""
    loads = [r.get("outside_load_cores") or 0 for r in results]
    slow = [r["host_probe_ratio"] for r in results
            if (r.get("host_probe_ratio") or 1.0) < HOST_SLOW]
    why = []
    if max(loads, default=0) > 0.2:
        why.append(f"other processes used more than 0.2 cores (up to {max(loads):.1f})")
    if slow:
        lo, hi = _pct_floor(min(slow)), _pct_floor(max(slow))
        why.append(f"the host ran slow (an sgemm probe after the case at {lo}"
                   f"{'' if lo == hi else f'-{hi}'} of the run's fastest)")
    return why


def noisy_footer(results):
    """The footnote for the ``*`` marks of these results (None when there are none)."""
    why = noisy_reasons(results)
    return ("* " + " or ".join(why) + " while this case ran: treat its figures as noisy"
            if why else None)


TOL = {"cold": (1e-4, 1e-4), "busy": (1e-4, 1e-4),
       "forward": (1e-4, 1e-4), "train": (1e-4, 1e-3), "stream": (1e-4, 1e-4),
       "pool": (1e-4, 1e-4),
       "epoch": (1e-4, 1e-4), "longseq": (1e-4, 1e-3)}
# An epoch's final loss may drift by float rounding between frameworks; more than this
# relative difference from cylstm's means one of them does not train the same model.
EPOCH_LOSS_RTOL = 0.05


def case_name(shape):
    return "x".join(str(v) for v in shape)


def fwd_flops(T, B, I, H):
    return 2.0 * T * B * (I + H) * 4 * H


def log(msg="", end="\n"):
    print(msg, end=end, flush=True)


def import_cylstm():
    """The installed cylstm, else the one in this checkout (in-place build)."""
    try:
        import cylstm
    except ImportError:
        sys.path.insert(1, os.path.dirname(HERE))
        import cylstm
    return cylstm


# ---------------------------------------------------------------------------
# Selection

class Selection:
    def __init__(self, only, quick):
        self.tokens = [t.strip() for item in (only or []) for t in item.split(",") if t.strip()]
        self.quick = quick

    def cases(self, workload, all_cases, quick_cases):
        """Cases of ``workload`` to run, in order."""
        default = quick_cases if self.quick else all_cases
        if not self.tokens:
            return list(default)
        out = []
        for c in all_cases:
            for tok in self.tokens:
                if tok == workload and c in default or tok in (c, f"{workload}/{c}"):
                    out.append(c)
                    break
        return out

    def unmatched(self, known):
        """Tokens that name no workload and no case (typos)."""
        return [t for t in self.tokens if t not in known]


# ---------------------------------------------------------------------------
# Timing

class Bench:
    def __init__(self, args, cylstm, threads_ctl):
        self.args = args
        self.cylstm = cylstm
        self.thr = threads_ctl
        self.results = []
        self.sgemm = {}
        self.probe_best = {}   # threads -> the fastest host probe so far (GFLOP/s)

    # -- helpers -------------------------------------------------------------
    def wanted(self, label):
        """Whether to run this implementation (``--skip``, and --quick's short list)."""
        if label == "cylstm":
            return True
        if self.args.quick and label in QUICK_DROP:
            return False
        return not any(label.lower().startswith(p.lower()) for p in self.args.skip)

    def sgemm_rate(self, n):
        """The reference rate at n threads: the best sgemm repeat, which a busy machine
        disturbs least (the median is in the JSON too)."""
        return self.sgemm.get(n, {}).get("best_gflops")

    def pause(self, n):
        gc.collect()
        time.sleep(self.args.pause if n > 1 else min(self.args.pause, 0.02))

    def new_result(self, workload, case, n, flops):
        atol, rtol = TOL[workload]
        res = {"workload": workload, "case": case, "threads": n, "unit": "s", "flops": flops,
               "tolerance": {"atol": atol, "rtol": rtol}, "rows": []}
        self.results.append(res)
        return res

    @staticmethod
    def compare(got, ref, atol, rtol):
        """(max abs diff, max diff relative to each array's magnitude, ok)."""
        if len(got) != len(ref):
            return math.inf, math.inf, False
        mad, mrd, ok = 0.0, 0.0, True
        for g, r in zip(got, ref):
            g = np.asarray(g, dtype=np.float64)
            r = np.asarray(r, dtype=np.float64)
            if g.shape != r.shape:
                return math.inf, math.inf, False
            d = float(np.max(np.abs(g - r))) if r.size else 0.0
            if not np.isfinite(d):
                d = math.inf
            scale = float(np.max(np.abs(r))) if r.size else 0.0
            mad = max(mad, d)
            mrd = max(mrd, d / max(scale, 1e-30))
            ok &= d <= atol + rtol * scale
        return mad, mrd, ok

    def fill_speed(self, res, sgemm_gflops):
        rows = res["rows"]
        ref = next((r for r in rows if r["impl"] == "cylstm" and r["status"] == "ok"), None)
        for r in rows:
            if r["status"] != "ok" or r.get("median_s") is None:
                continue
            if res["flops"]:
                r["gflops"] = res["flops"] / r["median_s"] / 1e9
                r["pct_sgemm"] = 100.0 * r["gflops"] / sgemm_gflops if sgemm_gflops else None
            base = ref
            if r["impl"] in SPEEDUP_AGAINST:
                base = next((x for x in rows if x["impl"] == SPEEDUP_AGAINST[r["impl"]]
                             and x["status"] == "ok"), None)
            if base is not None and r is not base:
                r["speedup"] = r["median_s"] / base["median_s"]

    def check_impls(self, res, builders, atol, rtol, warm_calls=1):
        """Build each wanted implementation, check its first result against
        cylstm's, warm it up; a row in ``res`` for each.  Returns (impl, row,
        calls per timing block) for those that agree."""
        active, ref_out = [], None
        atol0, rtol0 = atol, rtol
        for label, build in [b for b in builders if self.wanted(b[0])]:
            row = {"impl": label, "status": "ok", "reason": None}
            res["rows"].append(row)
            try:
                with _impls.quiet_stderr(label.startswith("keras")):
                    impl = build()
                    row["impl"] = impl.name
                    out = impl.result(impl.run())       # first call: setup + check
                    t0 = time.perf_counter()
                    for _ in range(warm_calls):
                        impl.run()                       # warm-up, sizes the block
                    est = (time.perf_counter() - t0) / warm_calls
            except Skip as e:
                row.update(status="skipped", reason=str(e))
                continue
            except Exception as e:  # noqa: BLE001 - a broken peer is a row, not a crash
                row.update(status="error", reason=f"{type(e).__name__}: {e}"[:300])
                continue
            if label == "cylstm":
                ref_out = out
                row.update(max_abs_diff=0.0, max_rel_diff=0.0)
            elif ref_out is None:
                row.update(status="skipped", reason="cylstm did not run: nothing to check against")
                continue
            else:
                atol, rtol = (REDUCED_TOL_TRAIN if res["workload"] == "train"
                              else REDUCED_TOL).get(label, (atol0, rtol0))
                mad, mrd, ok = self.compare(out, ref_out, atol, rtol)
                row.update(max_abs_diff=mad, max_rel_diff=mrd)
                if not ok:
                    row.update(status="mismatch",
                               reason=f"differs from cylstm by {mad:.3g} (max abs), "
                                      f"{mrd:.3g} relative; tolerance {atol:g} + {rtol:g}*max|ref|")
                    continue
            k = int(min(1000, max(1, math.ceil(self.args.block / max(est, 1e-7)))))
            row["calls_per_block"] = k
            active.append((impl, row, k))
        return active

    # -- forward / training step ------------------------------------------------
    def run_calls(self, workload, case, n, flops, builders):
        """Check then time a list of (label, builder) where builder() -> Impl."""
        res = self.new_result(workload, case, n, flops)
        atol, rtol = TOL[workload]
        t_case = time.perf_counter()
        log(f"  {workload} {case} threads={n}: ", end="")
        active = self.check_impls(res, builders, atol, rtol)
        log("checked " + ", ".join(f"{r['impl']}: {r['status']}" for r in res["rows"]) +
            "; timing", end="")
        meter = _machine.LoadMeter().start()
        blocks = {id(row): [] for _, row, _ in active}
        for rnd in range(self.args.repeat):
            s = rnd % max(1, len(active))
            for impl, row, k in active[s:] + active[:s]:
                if row["status"] != "ok":
                    continue
                self.pause(n)
                ts = np.empty(k)
                run = impl.run
                try:
                    for j in range(k):
                        t0 = time.perf_counter()
                        run()
                        ts[j] = time.perf_counter() - t0
                except Exception as e:  # noqa: BLE001
                    row.update(status="error", reason=f"{type(e).__name__}: {e}"[:300])
                    continue
                blocks[id(row)].append(ts)
            log(".", end="")
        active = [(i, r, k) for i, r, k in active if r["status"] == "ok"]
        for impl, row, k in active:
            b = blocks[id(row)]
            allt = np.concatenate(b)
            meds = [float(np.median(x)) for x in b]
            row.update(median_s=float(np.median(allt)), min_s=min(meds), max_s=max(meds),
                       n_calls=int(allt.size), block_medians_s=meds)
        self.fill_speed(res, self.sgemm_rate(n))
        self.end_case(res, meter, t_case)
        return res

    def end_case(self, res, meter, t_case):
        load = meter.stop()
        res["outside_load_cores"] = load
        self.probe_host(res)
        why = noisy_reasons([res])
        note = f" ({' and '.join(why)}: noisy)" if why else ""
        log(f" {time.perf_counter() - t_case:.1f} s{note}")

    def probe_host(self, res):
        """Time the host right after a case (_machine.host_probe) and rate it against
        the fastest probe of the run at that thread count (see rate_probes)."""
        n = res["threads"]
        rate = _machine.host_probe()
        self.probe_best[n] = max(self.probe_best.get(n, 0.0), rate)
        res["host_probe_gflops"] = rate
        res["host_probe_ratio"] = rate / self.probe_best[n]

    def rate_probes(self):
        """At the end: every case's probe against the run's fastest (a quiet spell
        late in the run raises the bar for the cases before it)."""
        for res in self.results:
            if res.get("host_probe_gflops"):
                best = self.probe_best.get(res["threads"]) or res["host_probe_gflops"]
                res["host_probe_ratio"] = res["host_probe_gflops"] / best

    def forward(self, shape, n):
        d = _impls.make_lstm_data(*shape, seed=0)
        cy = self.cylstm
        builders = [
            ("cylstm", lambda: _impls.cylstm_forward(cy, d)),
            ("cylstm, weights compared", lambda: _impls.cylstm_forward(cy, d, vouch=False)),
            ("cylstm bf16", lambda: _impls.cylstm_forward_reduced(cy, d, "bf16")),
            ("cylstm int8", lambda: _impls.cylstm_forward_reduced(cy, d, "int8")),
            ("numpy naive", lambda: _impls.numpy_naive_forward(d)),
            ("numpy good", lambda: _impls.numpy_good_forward(d)),
            ("torch (oneDNN)", lambda: _impls.torch_forward(d, onednn=True)),
            ("torch (oneDNN off)", lambda: _impls.torch_forward(d, onednn=False)),
            ("torch bf16", lambda: _impls.torch_forward_bf16(d)),
            ("onnxruntime", lambda: _impls.ort_forward(d, n)),
            ("onnxruntime int8", lambda: _impls.ort_forward(d, n, int8=True)),
            ("keras/TF tf.function", lambda: _impls.keras_forward(d, n)),
            ("keras/TF XLA", lambda: _impls.keras_forward(d, n, xla=True)),
        ]
        return self.run_calls("forward", case_name(shape), n, fwd_flops(*shape), builders)

    def train(self, shape, n):
        d = _impls.make_lstm_data(*shape, seed=0, train=True)
        cy = self.cylstm
        builders = [
            ("cylstm", lambda: _impls.cylstm_train(cy, d)),
            ("cylstm bf16", lambda: _impls.cylstm_train(cy, d, bf16=True)),
            ("numpy", lambda: _impls.numpy_train(d)),
            ("torch (oneDNN)", lambda: _impls.torch_train(d, onednn=True)),
            ("torch (oneDNN off)", lambda: _impls.torch_train(d, onednn=False)),
        ]
        return self.run_calls("train", case_name(shape), n, 3 * fwd_flops(*shape), builders)

    # -- idle gaps and a busy neighbour --------------------------------------------
    def latency(self, workload, shape, n):
        """Calls as a service sees them: after an idle gap (``cold``: the first and
        the second call after COLD_GAP_S), or beside a process spinning on a core
        (``busy``: after BUSY_GAP_S, and back to back).  cylstm's own warm time on
        one thread, measured on a quiet machine in this process, is the yardstick:
        more threads must never make a call slower than that."""
        d = _impls.make_lstm_data(*shape, seed=0)
        cy = self.cylstm
        from cylstm.functional import lstm_forward
        builders = [("cylstm", lambda: _impls.cylstm_forward(cy, d))]
        if n > 1:   # the same call on one thread, in the same conditions: what n must beat
            builders.append(("cylstm 1 thread", lambda: _impls.cylstm_forward(cy, d, 1)))
        builders += [("torch (oneDNN)", lambda: _impls.torch_forward(d, onednn=True)),
                     ("onnxruntime", lambda: _impls.ort_forward(d, n))]
        res = self.new_result(workload, case_name(shape), n, fwd_flops(*shape))
        atol, rtol = TOL[workload]
        t_case = time.perf_counter()
        log(f"  {workload} {res['case']} threads={n}: ", end="")
        x, W, U, b = d["x"], d["W"], d["U"], d["b"]
        for _ in range(10):
            lstm_forward(x, W, U, b, num_threads=1)
        ts = []
        for _ in range(40):
            t0 = time.perf_counter()
            lstm_forward(x, W, U, b, num_threads=1)
            ts.append(time.perf_counter() - t0)
        res["cylstm_warm_1t_s"] = float(np.median(ts))
        active = [(impl, row) for impl, row, _ in
                  self.check_impls(res, builders, atol, rtol, warm_calls=3)]
        spinner = None
        if workload == "busy":
            import subprocess
            spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(0.3)
        gap = COLD_GAP_S if workload == "cold" else BUSY_GAP_S
        rounds = max(4, self.args.repeat * 2)
        firsts = {id(r): [] for _, r in active}
        seconds = {id(r): [] for _, r in active}
        warms = {id(r): [] for _, r in active}
        meter = _machine.LoadMeter().start()
        try:
            for rnd in range(rounds):
                for impl, row in active:
                    time.sleep(gap)
                    t0 = time.perf_counter()
                    impl.run()
                    t1 = time.perf_counter()
                    impl.run()
                    t2 = time.perf_counter()
                    firsts[id(row)].append(t1 - t0)
                    seconds[id(row)].append(t2 - t1)
                    if workload == "busy":
                        for _ in range(3):
                            t0 = time.perf_counter()
                            impl.run()
                            warms[id(row)].append(time.perf_counter() - t0)
                log(".", end="")
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
        for impl, row in active:
            f = firsts[id(row)]
            row.update(median_s=float(np.median(f)), min_s=float(min(f)), max_s=float(max(f)),
                       n_calls=len(f), second_s=float(np.median(seconds[id(row)])),
                       first_calls_s=f, second_calls_s=seconds[id(row)])
            if warms[id(row)]:
                row["warm_s"] = float(np.median(warms[id(row)]))
        self.fill_speed(res, self.sgemm_rate(n))
        meter.stop()
        # the spinner is the point of "busy": only other load is noise
        log(f" {time.perf_counter() - t_case:.1f} s")
        return res

    # -- streaming -----------------------------------------------------------------
    def stream(self, case, n):
        """Per-step latency at batch 1 for one case ``IxHxLL`` (I inputs, H units, L layers
        and a Dense(1) head), measured by bench/stream_bench.py's ``run_case``: every call
        timed on its own, median and p99 over all timed steps of interleaved rounds."""
        try:
            import stream_bench
        except ImportError as e:
            res = self.new_result("stream", case, n, None)
            res["rows"].append({"impl": "all", "status": "skipped",
                                "reason": "bench/stream_bench.py is not available "
                                          f"({type(e).__name__}: {e})"})
            log(f"  stream threads={n}: skipped ({res['rows'][0]['reason']})")
            return [res]
        if not hasattr(stream_bench, "run_case"):
            return stream_bench.measure_streaming(self, n)   # its own choice of cases
        I, H, L = (int(v) for v in case.rstrip("L").split("x"))
        a = self.args
        flops = 2.0 * (I + H) * 4 * H + 2.0 * (L - 1) * 8 * H * H   # per step, LSTM layers
        res = self.new_result("stream", case, n, flops)
        t_case = time.perf_counter()
        log(f"  stream {case} threads={n}: ", end="")
        meter = _machine.LoadMeter().start()
        repeat = a.repeat if a.repeat_given else (2 if a.quick else 3)
        # full run: 3 rounds x 1000 steps = 3000 timed steps per implementation (issue 4 asks
        # for >= 2000); the slowest peer (nn.LSTM T=1) costs ~1 ms a step at 256x512
        steps, warmup = (400, 100) if a.quick else (1000, 200)
        res["rows"] = stream_bench.run_case(
            I, H, L, n, n_steps=steps, repeat=repeat, warmup=warmup,
            pause=a.pause if n > 1 else min(a.pause, 0.02),
            impls=[i for i in STREAM_IMPLS if self.wanted(i)])
        for r in res["rows"]:   # float32 is "cylstm"; the reduced weights keep their tag
            if r["impl"].startswith("cylstm"):
                r["impl_detail"] = r["impl"]
                r["impl"] = {"cylstm-bf16": "cylstm bf16",
                             "cylstm-int8": "cylstm int8"}.get(r["label"], "cylstm")
        res["steps_per_block"] = steps
        log(", ".join(f"{r['impl']}: {r['status']}" for r in res["rows"]), end="")
        self.fill_speed(res, self.sgemm_rate(n))
        self.end_case(res, meter, t_case)
        return [res]

    # -- many streams at once (issue 15) ------------------------------------------------
    def pool(self, case, n):
        """One frame for each of 32 streams: StreamPool.step against 32 runner steps and
        the peers batched by hand (bench/pool_bench.py's ``run_pool_case``)."""
        try:
            import pool_bench
        except ImportError as e:
            res = self.new_result("pool", case, n, None)
            res["rows"].append({"impl": "all", "status": "skipped",
                                "reason": f"bench/pool_bench.py is not available ({e})"})
            return [res]
        I, H = (int(v) for v in case.split("x"))
        a = self.args
        res = self.new_result("pool", case, n, pool_bench.pool_flops(I, H))
        res["streams"] = pool_bench.POOL_STREAMS
        t_case = time.perf_counter()
        log(f"  pool {case} threads={n}: ", end="")
        meter = _machine.LoadMeter().start()
        frames = (40 if a.quick else 200) if H <= 128 else (10 if a.quick else 40)
        repeat = a.repeat if a.repeat_given else (2 if a.quick else 3)
        res["rows"] = pool_bench.run_pool_case(
            I, H, n, frames=frames, repeat=repeat,
            pause=a.pause if n > 1 else min(a.pause, 0.02), wanted=self.wanted)
        log(", ".join(f"{r['impl']}: {r['status']}" for r in res["rows"]), end="")
        self.fill_speed(res, self.sgemm_rate(n))
        self.end_case(res, meter, t_case)
        return [res]

    # -- epoch ------------------------------------------------------------------------
    def epoch(self, n):
        a = self.args
        x, y = _impls.make_epoch_data()
        w = _impls.keras_initial_weights(F=x.shape[2])
        res = self.new_result("epoch", EPOCH_CASE, n, float(_impls.epoch_flops()))
        atol, rtol = TOL["epoch"]
        t_case = time.perf_counter()
        log(f"  epoch {EPOCH_CASE} threads={n}: ", end="")
        cy = self.cylstm
        builders = [
            ("cylstm", lambda: _impls.cylstm_epoch(cy, x, y, w)),
            ("torch (oneDNN)", lambda: _impls.torch_epoch(x, y, w, onednn=True)),
            ("torch (oneDNN off)", lambda: _impls.torch_epoch(x, y, w, onednn=False)),
            ("keras/TF fit", lambda: _impls.keras_epoch(x, y, w, n)),
            ("keras/TF fit XLA", lambda: _impls.keras_epoch(x, y, w, n, xla=True)),
        ]
        builders = [b for b in builders if self.wanted(b[0])]
        probe = x[:256]
        active, ref_pred = [], None
        for label, build in builders:
            row = {"impl": label, "status": "ok", "reason": None}
            res["rows"].append(row)
            try:
                with _impls.quiet_stderr(label.startswith("keras")):
                    impl = build()
                    pred = impl.predict(probe)
            except Skip as e:
                row.update(status="skipped", reason=str(e))
                continue
            except Exception as e:  # noqa: BLE001
                row.update(status="error", reason=f"{type(e).__name__}: {e}"[:300])
                continue
            if label == "cylstm":
                ref_pred = pred
                row.update(max_abs_diff=0.0, max_rel_diff=0.0)
            elif ref_pred is None:
                row.update(status="skipped", reason="cylstm did not run: nothing to check against")
                continue
            else:
                mad, mrd, ok = self.compare((pred,), (ref_pred,), atol, rtol)
                row.update(max_abs_diff=mad, max_rel_diff=mrd)
                if not ok:
                    row.update(status="mismatch",
                               reason=f"predictions from the same initial weights differ from "
                                      f"cylstm's by {mad:.3g}")
                    continue
            active.append((impl, row))
        log("checked " + ", ".join(f"{r['impl']}: {r['status']}" for r in res["rows"]) +
            "; epochs", end="")
        meter = _machine.LoadMeter().start()
        times = {id(row): [] for _, row in active}
        losses = {id(row): [] for _, row in active}
        for e in range(a.epochs):
            s = e % max(1, len(active))
            for impl, row in active[s:] + active[:s]:
                self.pause(n)
                try:
                    with _impls.quiet_stderr(e == 0 and impl.family == "tf"):  # XLA compiles
                        loss, secs = impl.epoch()
                    times[id(row)].append(secs)
                    losses[id(row)].append(loss)
                except Exception as err:  # noqa: BLE001
                    row.update(status="error", reason=f"{type(err).__name__}: {err}"[:300])
            active = [(i, r) for i, r in active if r["status"] == "ok"]
            log(".", end="")
        ref_loss = None
        for impl, row in active:
            t = times[id(row)]
            later = t[1:] or t
            row.update(median_s=float(np.median(later)), min_s=min(later), max_s=max(later),
                       n_calls=len(later), block_medians_s=later, first_epoch_s=t[0],
                       epoch_losses=losses[id(row)], final_loss=losses[id(row)][-1])
            if row["impl"] == "cylstm":
                ref_loss = row["final_loss"]
        for impl, row in active:
            if ref_loss is not None and row["impl"] != "cylstm":
                rel = abs(row["final_loss"] - ref_loss) / max(abs(ref_loss), 1e-12)
                row["final_loss_rel_diff"] = rel
                if not np.isfinite(rel) or rel > EPOCH_LOSS_RTOL:
                    row.update(status="mismatch",
                               reason=f"final loss {row['final_loss']:.4g} vs cylstm's "
                                      f"{ref_loss:.4g} from the same start ({rel:.0%} apart)")
        self.fill_speed(res, self.sgemm_rate(n))
        self.end_case(res, meter, t_case)
        return [res]


    # -- very long sequences ------------------------------------------------------------
    def longseq(self, shape, n):
        """One training step per implementation, each in a fresh process
        (bench/longseq_bench.py): step times, saved bytes, RSS; gradients checked
        against cylstm's full BPTT (or its checkpointed run)."""
        import subprocess

        case = case_name(shape)
        res = self.new_result("longseq", case, n, 3 * fwd_flops(*shape))
        budget = LONGSEQ_BUDGET.get(tuple(shape))
        res["memory_budget"] = budget
        atol, rtol = TOL["longseq"]
        t_case = time.perf_counter()
        log(f"  longseq {case} threads={n}: ", end="")
        steps = 1 if self.args.quick else 2
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(self.cylstm.__file__)))
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        meter = _machine.LoadMeter().start()
        grads = {}
        with tempfile.TemporaryDirectory() as tmp:
            for label, impl in LONGSEQ_IMPLS:
                if not self.wanted(label):
                    continue
                row = {"impl": label, "status": "ok", "reason": None}
                res["rows"].append(row)
                npz = os.path.join(tmp, f"{impl}.npz")
                cmd = [sys.executable, os.path.join(HERE, "longseq_bench.py"), impl,
                       *map(str, shape), str(n), str(steps), npz, str(budget or 0)]
                try:
                    p = subprocess.run(cmd, capture_output=True, text=True, env=env,
                                       timeout=1800, check=False)
                    out = json.loads(p.stdout.strip().splitlines()[-1])
                except Exception as e:  # noqa: BLE001 - a failed child is a row
                    row.update(status="error", reason=f"{type(e).__name__}: {e}"[:300])
                    log("x", end="")
                    continue
                row.update(status=out["status"], reason=out.get("reason"))
                if out["status"] == "ok":
                    st = out["step_s"]
                    row.update(median_s=float(np.median(st)), min_s=min(st), max_s=max(st),
                               n_calls=len(st), block_medians_s=st,
                               saved_bytes=out["saved_bytes"], held_bytes=out["held_bytes"],
                               peak_rss_bytes=out["peak_rss_bytes"], loss=out["loss"],
                               impl_detail=out.get("detail"), peak_reset=out["peak_reset"])
                    with np.load(npz) as z:
                        grads[label] = [z["dW"], z["dU"], z["db"]]
                log(".", end="")
        ref = grads.get("cylstm full BPTT", grads.get("cylstm"))
        for row in res["rows"]:
            if row["status"] != "ok" or ref is None:
                continue
            mad, mrd, ok = self.compare(grads[row["impl"]], ref, atol, rtol)
            row.update(max_abs_diff=mad, max_rel_diff=mrd)
            if not ok:
                row.update(status="mismatch",
                           reason=f"gradients differ from cylstm's by {mad:.3g} (max abs), "
                                  f"{mrd:.3g} relative; tolerance {atol:g} + {rtol:g}*max|ref|")
        by = {r["impl"]: r for r in res["rows"] if r["status"] == "ok"}
        if "cylstm" in by and "cylstm full BPTT" in by:
            res["checkpoint_time_ratio"] = by["cylstm"]["median_s"] / by["cylstm full BPTT"][
                "median_s"]
        self.fill_speed(res, self.sgemm_rate(n))
        self.end_case(res, meter, t_case)
        return res


# ---------------------------------------------------------------------------
# Output

def fmt(v, digits=3):
    if v is None:
        return "-"
    if v == 0:
        return "0"
    if not np.isfinite(v):
        return str(v)
    if abs(v) >= 10 ** digits:
        return f"{v:.0f}"
    return f"{v:.{digits}g}"


def fmt_pct(v):
    if v is None:
        return "-"
    return f"{v:.0f}" if v >= 9.95 else f"{v:.1f}"


def fmt_time(row, scale):
    if row.get("median_s") is None:
        return "-"
    return (f"{fmt(row['median_s'] * scale)} ({fmt(row['min_s'] * scale)}-"
            f"{fmt(row['max_s'] * scale)})")


UNITS = {"cold": ("ms", 1e3), "busy": ("ms", 1e3),
         "forward": ("ms", 1e3), "train": ("ms", 1e3), "stream": ("us", 1e6),
         "pool": ("us", 1e6),
         "epoch": ("s", 1.0), "longseq": ("s", 1.0)}


def _mib(v):
    return "-" if v is None else f"{v / 2**20:.3g}"


def longseq_table(results):
    """(title, header, rows, notes, footer) of the longseq table."""
    head = ["case", "thr", "impl", "step s median (min-max)", "saved MiB",
            "held after fwd MiB", "peak RSS MiB", "detail", "max|diff|", "cylstm speed-up"]
    lines, notes, ratios = [], [], []
    for res in results:
        budget = res.get("memory_budget")
        case = res["case"] + ("*" if is_noisy(res) else "")
        if budget:
            case += f" (budget {budget / 2**20:.3g} MiB)"
        for r in res["rows"]:
            line = [case, str(res["threads"]), r["impl"]]
            if r["status"] == "ok":
                line.append(fmt_time(r, 1.0))
            else:
                reason = r.get("reason") or ""
                if reason not in notes:
                    notes.append(reason)
                line.append(f"{r['status']} [{notes.index(reason) + 1}]")
            line += [_mib(r.get("saved_bytes")), _mib(r.get("held_bytes")),
                     _mib(r.get("peak_rss_bytes")), r.get("impl_detail") or "-",
                     fmt(r.get("max_abs_diff"), 2),
                     (f"{r['speedup']:.2f}x" if r.get("speedup") else "-")]
            lines.append(line)
        if res.get("checkpoint_time_ratio"):
            ratios.append(f"{res['case']} t={res['threads']}: "
                          f"{res['checkpoint_time_ratio']:.2f}x")
    parts = ([("cylstm checkpointed / full BPTT step time: " + ", ".join(ratios))]
             if ratios else []) + [f for f in [noisy_footer(results)] if f]
    return f"longseq: {TITLES['longseq']}", head, lines, notes, "; ".join(parts) or None


def table(workload, results):
    """(title, header, rows, notes, footer) of one workload's table."""
    if workload == "longseq":
        return longseq_table(results)
    unit, scale = UNITS[workload]
    latency = workload in ("cold", "busy")
    head = ["case", "thr", "impl",
            f"{'1st call ' if latency else 'time '}{unit} median (min-max)"]
    if latency:
        head += [f"2nd call {unit}"] + ([f"back to back {unit}"] if workload == "busy" else [])
        head += [f"cylstm 1-thread warm {unit}", "slowest / cylstm 1-thread warm"]
    if workload == "stream":
        head += [f"p99 {unit}"]
    if workload == "epoch":
        head += ["1st epoch s", "final loss"]
    head += ["GFLOP/s", "% sgemm", "max|diff|", "cylstm speed-up"]
    lines, notes = [], []
    for res in results:
        for r in res["rows"]:
            status = r["status"]
            line = [res["case"] + ("*" if is_noisy(res) else ""), str(res["threads"]),
                    r["impl"]]
            if status == "ok":
                line.append(fmt_time(r, scale))
            else:
                reason = r.get("reason") or ""
                if reason not in notes:
                    notes.append(reason)
                line.append(f"{status} [{notes.index(reason) + 1}]")
            if latency:
                line.append(fmt(r["second_s"] * scale) if r.get("second_s") else "-")
                if workload == "busy":
                    line.append(fmt(r["warm_s"] * scale) if r.get("warm_s") else "-")
                ref1 = res.get("cylstm_warm_1t_s")
                line.append(fmt(ref1 * scale) if ref1 else "-")
                worst = [r.get(k) for k in ("median_s", "second_s", "warm_s") if r.get(k)]
                line.append(f"{max(worst) / ref1:.2f}" if worst and ref1 else "-")
            if workload == "stream":
                line.append(fmt(r["p99_s"] * scale) if r.get("p99_s") is not None else "-")
            if workload == "epoch":
                line += [fmt(r.get("first_epoch_s")), fmt(r.get("final_loss"), 4)]
            line += [fmt(r.get("gflops")), fmt_pct(r.get("pct_sgemm")),
                     fmt(r.get("max_abs_diff"), 2),
                     (f"{r['speedup']:.2f}x" if r.get("speedup") else "-")]
            lines.append(line)
    return f"{workload}: {TITLES[workload]}", head, lines, notes, noisy_footer(results)


def print_table(workload, results):
    title, head, lines, notes, footer = table(workload, results)
    log(f"\n== {title} ==")
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
              for i, h in enumerate(head)]
    log("  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip())
    for line in lines:
        log("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip())
    for i, note in enumerate(notes):
        log(f"  [{i + 1}] {note}")
    if footer:
        log("  " + footer)


def write_markdown(path, doc):
    """The run as Markdown (facts, then one table per workload), for the README."""
    m = doc["machine"]
    v = m["versions"]
    out = [f"Run {doc['date']}: `{doc['command']}` ({doc.get('elapsed_s', 0):.0f} s)", "",
           (f"- Machine: {m['cpu']}, {m['cores']} cores ({' '.join(m['flags'])}), "
            f"{m['platform']}"),
           "- Versions: " + ", ".join(f"{k} {v[k]}" for k in v
                                     if not k.endswith("_missing") and v[k])]
    blas = [p for p in m["blas_pools"] if p.get("user_api") == "blas"]
    if blas:
        out.append("- BLAS: " + "; ".join(f"{p['file']} ({p['internal_api']} {p['version']}, "
                                         f"{p['kernel']}, {p['threading']})" for p in blas))
    out.append("- sgemm rate: " + ", ".join(
        f"{g['best_gflops']:.1f} GFLOP/s at {t} thread{'s' if t != '1' else ''} ({g['n']}^3)"
        for t, g in doc["sgemm"].items()))
    for wl in WORKLOADS:
        rs = [r for r in doc["results"] if r["workload"] == wl]
        if not rs:
            continue
        title, head, lines, notes, footer = table(wl, rs)
        out += ["", f"**{title}**", "",
                "| " + " | ".join(h.replace("|", "\\|") for h in head) + " |",
                "|" + "---|" * len(head)]
        out += ["| " + " | ".join(x.replace("|", "\\|") for x in line) + " |"
                for line in lines]
        if notes or footer:
            out.append("")
        out += [f"[{i + 1}] {n}  " for i, n in enumerate(notes)]
        if footer:
            out.append(footer)
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    log(f"Markdown tables written to {path}")


def write_json(path, doc):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".bench-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=1, default=float)
    os.replace(tmp, path)


def plot(path, results):
    """PNG of cylstm's speed-up over each peer, one panel per workload (log scale)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, LogLocator
    except ImportError:
        log(f"--plot: matplotlib is not installed; no chart written ({path})")
        return False
    panels, peers_all = [], []
    for wl in WORKLOADS:
        rs = [r for r in results if r["workload"] == wl
              and any(x.get("speedup") for x in r["rows"])]
        peers = []
        for r in rs:
            for row in r["rows"]:
                if row.get("speedup") and row["impl"] not in peers:
                    peers.append(row["impl"])
                    if row["impl"] not in peers_all:
                        peers_all.append(row["impl"])
        if peers:
            panels.append((wl, rs, peers))
    if not panels:
        log("--plot: no speed-ups to draw (cylstm or every peer missing)")
        return False
    cmap = plt.get_cmap("tab10")
    color = {p: cmap(i % 10) for i, p in enumerate(peers_all)}
    heights = [0.9 + 0.16 * len(rs) * (len(peers) + 0.6) for _, rs, peers in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8.5, sum(heights) + 0.4),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (wl, rs, peers) in zip(axes[:, 0], panels):
        bar_h = 0.8 / len(peers)
        for j, p in enumerate(peers):
            vals = []
            for r in rs:
                row = next((x for x in r["rows"] if x["impl"] == p), None)
                vals.append(row["speedup"] if row and row.get("speedup") else np.nan)
            ys = np.arange(len(rs)) + j * bar_h
            ax.barh(ys, vals, height=bar_h, label=p, color=color[p])
            for yv, v in zip(ys, vals):
                if np.isfinite(v):
                    ax.text(v, yv, f" {v:.2f}x" if v < 10 else f" {v:.0f}x", va="center",
                            fontsize=6)
        ax.set_yticks(np.arange(len(rs)) + 0.4 - bar_h / 2)
        ax.set_yticklabels([f"{r['case']} t={r['threads']}"
                            + ("*" if is_noisy(r) else "")
                            for r in rs], fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_title(f"{wl}: cylstm speed-up over each peer (> 1x: cylstm faster)", fontsize=9)
        ax.legend(fontsize=6, loc="best")
        ax.grid(axis="x", which="both", alpha=0.3)
    if any(is_noisy(r) for _, rs, _ in panels for r in rs):
        fig.text(0.01, 0.002, "* other processes were busy, or the host ran slow, while this "
                 "case ran: noisy", fontsize=7)
    fig.tight_layout(rect=(0, 0.012, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    log(f"chart written to {path}")
    return True


# ---------------------------------------------------------------------------
# Main

def machine_facts(cylstm, torch):
    import io

    buf = io.StringIO()
    try:
        cylstm.show_config(file=buf)
    except Exception as e:  # noqa: BLE001
        buf.write(f"show_config failed: {e}")
    facts = {
        "cpu": _machine.cpu_model(), "cores": _machine.available_cores(),
        "flags": _machine.cpu_flags(), "platform": platform.platform(),
        "versions": _machine.versions(), "blas_pools": _machine.blas_pools(),
        "cylstm_config": buf.getvalue().strip().splitlines(),
        "cylstm_file": os.path.dirname(getattr(cylstm, "__file__", "") or ""),
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                           "MKL_NUM_THREADS", "OPENBLAS_CORETYPE")
                if k in os.environ},
    }
    facts["versions"]["cylstm"] = getattr(cylstm, "__version__", "unknown")
    if torch is not None:
        facts["torch"] = _machine.torch_details(torch)
    return facts


def print_facts(m):
    log(f"machine: {m['cpu']}, {m['cores']} cores available, {m['platform']}")
    log(f"  SIMD: {' '.join(m['flags']) or 'unknown'}")
    v = m["versions"]
    have = [f"{k} {v[k]}" for k in v if not k.endswith("_missing") and v[k]]
    log("  versions: " + ", ".join(have))
    missing = [f"{k[:-8]} ({v[k]})" for k in v if k.endswith("_missing")]
    if missing:
        log("  not importable: " + "; ".join(missing))
    for p in m["blas_pools"]:
        if "note" in p:
            log("  " + p["note"])
        else:
            log(f"  pool: {p['user_api']}/{p['internal_api']} {p['version'] or ''} "
                f"kernel={p['kernel']} threading={p['threading']} threads={p['num_threads']} "
                f"({p['file']})")
    for line in m["cylstm_config"]:
        log("  " + line.strip())
    log(f"  cylstm from {m['cylstm_file']}")
    if m.get("torch"):
        log("  torch: " + "; ".join(m["torch"].get("build", [])))
    if m["env"]:
        log("  env: " + " ".join(f"{k}={val}" for k, val in m["env"].items()))


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Benchmark cylstm against NumPy, PyTorch, ONNX Runtime and Keras/TF "
                    "(whichever are installed), in one process, same threads and data.")
    p.add_argument("--quick", action="store_true",
                   help="a short run (about 90 s on 2 cores): fewer shapes, repeats, steps "
                        "and epochs, and only the strongest variant of each peer (no NumPy naive, no PyTorch "
                        "with oneDNN off, no nn.LSTM T=1 streaming)")
    p.add_argument("--threads", type=int, nargs="+", default=None, metavar="N",
                   help="thread counts to run (default: 1 2); with several, each runs in "
                        "its own process (libraries size their thread pools once) and the "
                        "results are merged")
    p.add_argument("--only", action="append", metavar="NAME",
                   help="workload (forward, train, stream, pool, epoch, cold, busy, longseq), case "
                        "(e.g. 100x32x10x50) "
                        "or workload/case; repeatable or comma-separated")
    p.add_argument("--repeat", type=int, default=None, metavar="N",
                   help="timed rounds per case (default 5; 2 with --quick)")
    p.add_argument("--epochs", type=int, default=None, metavar="N",
                   help="epochs per implementation in the epoch workload (default 5; 2 quick)")
    p.add_argument("--pause", type=float, default=None, metavar="S",
                   help="seconds to pause before each timed block (default 0.2; 0.15 quick; "
                        "at most 0.02 at one thread, where no pool spins)")
    p.add_argument("--skip", action="append", default=[], metavar="PEER",
                   help="leave out the peers whose name starts with PEER (e.g. keras, "
                        "'torch (oneDNN off)', numpy); repeatable")
    p.add_argument("--json", metavar="PATH", help="write all results as JSON")
    p.add_argument("--plot", metavar="PATH", help="write a PNG chart of the speed-ups")
    p.add_argument("--markdown", metavar="PATH",
                   help="write the facts and tables as Markdown (for the README)")
    p.add_argument("--list", action="store_true", help="list workloads and cases, then exit")
    a = p.parse_args(argv)
    a.threads = a.threads or [1, 2]
    if any(t < 1 for t in a.threads):
        p.error(f"--threads must be >= 1; got {a.threads}")
    a.repeat_given = a.repeat is not None
    a.repeat = a.repeat if a.repeat is not None else (2 if a.quick else 5)
    a.epochs = a.epochs if a.epochs is not None else (2 if a.quick else 5)
    a.pause = a.pause if a.pause is not None else (0.15 if a.quick else 0.2)
    if a.repeat < 1 or a.epochs < 1 or a.pause < 0:
        p.error("--repeat and --epochs must be >= 1 and --pause >= 0")
    a.block = 0.02 if a.quick else 0.05   # seconds per timed block, roughly
    return a


def stream_cases(quick):
    """Case names IxHxLL of bench/stream_bench.py, or ["all"] (reported as skipped)."""
    try:
        import stream_bench
        cases = stream_bench.QUICK_CASES if quick else stream_bench.CASES
        return [f"{i}x{h}x{n_layers}L" for i, h, n_layers in cases]
    except (ImportError, AttributeError):
        return ["all"]


def main(argv=None):
    a = parse_args(argv)
    sel = Selection(a.only, a.quick)
    fwd_all = [case_name(s) for s in FORWARD_SHAPES]
    trn_all = [case_name(s) for s in TRAIN_SHAPES]
    st_all = stream_cases(False)
    lat_all = [case_name(s) for s in LATENCY_SHAPES]
    ls_all = [case_name(s) for s in LONGSEQ_SHAPES]
    plan = {
        "forward": sel.cases("forward", fwd_all, [case_name(s) for s in QUICK_FORWARD]),
        "train": sel.cases("train", trn_all, [case_name(s) for s in QUICK_TRAIN]),
        "stream": sel.cases("stream", st_all, stream_cases(True)),
        "pool": sel.cases("pool", POOL_CASES, POOL_CASES[:1]),
        "epoch": sel.cases("epoch", [EPOCH_CASE], [EPOCH_CASE]),
        "cold": sel.cases("cold", lat_all, lat_all[:2]),
        "busy": sel.cases("busy", lat_all, lat_all[:2]),
        "longseq": sel.cases("longseq", ls_all, [case_name(s) for s in QUICK_LONGSEQ]),
    }
    known = set(WORKLOADS) | set(fwd_all) | set(st_all) | {EPOCH_CASE}
    known |= {f"{w}/{c}" for w in ("cold", "busy") for c in lat_all}
    known |= set(ls_all) | {f"longseq/{c}" for c in ls_all}
    known |= set(stream_cases(True))
    known |= {f"{w}/{c}" for w, cs in (("forward", fwd_all), ("train", trn_all),
                                       ("stream", st_all), ("epoch", [EPOCH_CASE]),
                                       ("pool", POOL_CASES)) for c in cs}
    if a.list:
        for w in WORKLOADS:
            allc = {"forward": fwd_all, "train": trn_all, "stream": st_all,
                    "epoch": [EPOCH_CASE], "cold": lat_all, "busy": lat_all,
                    "longseq": ls_all, "pool": POOL_CASES}[w]
            log(f"{w}: {' '.join(allc)}    ({TITLES[w]})")
        return 0
    bad = sel.unmatched(known)
    if bad:
        log(f"--only: unknown workload or case {bad}; see --list")
        return 2
    if not any(plan.values()):
        log("--only selected nothing; see --list")
        return 2

    if len(a.threads) > 1 and not os.environ.get("CYLSTM_BENCH_CHILD"):
        return run_per_thread_count(a, argv)

    t_start = time.perf_counter()
    warnings.filterwarnings("ignore", category=UserWarning)
    cylstm = import_cylstm()
    try:
        torch = _impls.import_torch()
    except Skip:
        torch = None
    thr = _machine.Threads(cylstm, torch)
    facts = machine_facts(cylstm, torch)
    print_facts(facts)
    cores = facts["cores"]
    if max(a.threads) > cores:
        log(f"  note: --threads {max(a.threads)} exceeds the {cores} cores available; "
            "those figures measure oversubscription")

    bench = Bench(a, cylstm, thr)
    n_sg = 1024 if a.quick else 2048
    for n in a.threads:
        thr.set(n)
        bench.sgemm[n] = _machine.sgemm_rate(n_sg, repeat=5)
        bench.probe_best[n] = _machine.host_probe(repeat=5)
        log(f"  sgemm rate (SciPy, {n_sg}^3, threads={n}): "
            f"{bench.sgemm[n]['best_gflops']:.1f} GFLOP/s best of 5 (median "
            f"{bench.sgemm[n]['gflops']:.1f}); rows show their % of the best")
    log(f"method: float32; {a.repeat} interleaved rounds; {a.pause:g} s pause before each "
        "block; time = median (min-max of block medians); speed-up = peer / cylstm")

    doc = {"schema": "cylstm-bench/1", "command": " ".join(["python"] + sys.argv),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "quick": a.quick, "threads": a.threads, "repeat": a.repeat, "epochs": a.epochs,
           "pause_s": a.pause, "machine": facts,
           "sgemm": {str(k): v for k, v in bench.sgemm.items()}, "results": bench.results}

    def dump():
        if a.json:
            doc["elapsed_s"] = time.perf_counter() - t_start
            doc.update(summarize(bench.results))
            write_json(a.json, doc)

    for wl in RUN_ORDER:
        cases = plan[wl]
        if not cases:
            continue
        log(f"\n[{wl}] {TITLES[wl]}")
        first = len(bench.results)
        for case in cases:
            for n in a.threads:
                thr.set(n)
                if wl == "forward":
                    bench.forward(tuple(int(v) for v in case.split("x")), n)
                elif wl == "train":
                    bench.train(tuple(int(v) for v in case.split("x")), n)
                elif wl == "epoch":
                    bench.epoch(n)
                elif wl == "stream":
                    bench.stream(case, n)
                elif wl == "pool":
                    bench.pool(case, n)
                elif wl in ("cold", "busy"):
                    bench.latency(wl, tuple(int(v) for v in case.split("x")), n)
                elif wl == "longseq":
                    bench.longseq(tuple(int(v) for v in case.split("x")), n)
        print_table(wl, bench.results[first:])
        dump()

    # The sgemm rate again, now that the run is over: a busy moment at the start must not
    # set the reference.  The higher of the two counts (JSON, Markdown, chart).
    for n in a.threads:
        thr.set(n)
        again = _machine.sgemm_rate(n_sg, repeat=5)
        first_best = bench.sgemm[n]["best_gflops"]
        bench.sgemm[n]["start_best_gflops"] = first_best
        bench.sgemm[n]["end_best_gflops"] = again["best_gflops"]
        if again["best_gflops"] > first_best:
            bench.sgemm[n].update(again)
            bench.sgemm[n].update(start_best_gflops=first_best,
                                  end_best_gflops=again["best_gflops"])
        if abs(again["best_gflops"] - first_best) > 0.1 * max(again["best_gflops"], first_best):
            log(f"note: sgemm rate at threads={n}: {first_best:.1f} GFLOP/s at the start, "
                f"{again['best_gflops']:.1f} at the end (the machine was busy); the % sgemm "
                f"in the JSON, Markdown and chart use {bench.sgemm_rate(n):.1f}")
    doc["sgemm"] = {str(k): v for k, v in bench.sgemm.items()}
    for n in a.threads:
        thr.set(n)
        bench.probe_best[n] = max(bench.probe_best.get(n, 0.0), _machine.host_probe(repeat=5))
    bench.rate_probes()
    for res in bench.results:
        bench.fill_speed(res, bench.sgemm_rate(res["threads"]))
    summ = summarize(bench.results)
    doc.update(summ)
    dump()
    if a.plot:
        plot(a.plot, bench.results)
    if a.markdown:
        doc["elapsed_s"] = time.perf_counter() - t_start
        write_markdown(a.markdown, doc)
    log(f"\ndone in {time.perf_counter() - t_start:.1f} s")
    for s in summ["skipped"]:
        log(f"  skipped: {s['workload']} {s['case']} t={s['threads']} {s['impl']}: "
            f"{s['reason']}")
    if not summ["ok"]:
        for m in summ["mismatches"]:
            what = "ERROR" if m["impl"] == "cylstm" else "MISMATCH"
            log(f"  {what}: {m['workload']} {m['case']} t={m['threads']} {m['impl']}: "
                f"{m['reason']}")
        log("FAILED: some implementation disagrees with cylstm beyond tolerance (or cylstm "
            "failed); see above")
        return 1
    return 0


def _child_argv(argv, n, json_path):
    """The command line for one thread count: --threads n, its own JSON, no outputs."""
    out, skip_values, it = [], False, iter(argv)
    for tok in it:
        if skip_values and (tok.isdigit()):
            continue
        skip_values = False
        if tok == "--threads":
            skip_values = True
            continue
        if tok in ("--json", "--plot", "--markdown"):
            next(it, None)
            continue
        if tok.startswith(("--threads=", "--json=", "--plot=", "--markdown=")):
            continue
        out.append(tok)
    return out + ["--threads", str(n), "--json", json_path]


def run_per_thread_count(a, argv):
    """Run each thread count in its own process and merge the results.

    In one process the libraries cannot be measured fairly at a second thread
    count: TensorFlow sizes its pools once, and PyTorch measured here did not
    scale to 2 threads after running at 1.  So every count gets a fresh process
    (which prints its own progress and tables), and this one merges them.
    """
    import subprocess

    t_start = time.perf_counter()
    argv = list(sys.argv[1:] if argv is None else argv)
    docs = []
    env = dict(os.environ, CYLSTM_BENCH_CHILD="1")
    with tempfile.TemporaryDirectory() as tmp:
        for n in a.threads:
            path = os.path.join(tmp, f"t{n}.json")
            log(f"\n=== threads={n} (own process) ===")
            r = subprocess.run([sys.executable, os.path.abspath(__file__)]
                               + _child_argv(argv, n, path), env=env, check=False)
            if not os.path.exists(path):
                log(f"FAILED: the threads={n} run wrote no results (exit {r.returncode})")
                return r.returncode or 1
            with open(path) as f:
                docs.append(json.load(f))
    doc = docs[0]
    for d in docs[1:]:
        doc["results"].extend(d["results"])
        doc["sgemm"].update(d["sgemm"])
    doc["threads"] = a.threads
    doc["command"] = " ".join(["python"] + sys.argv)
    doc["elapsed_s"] = time.perf_counter() - t_start
    summ = summarize(doc["results"])
    doc.update(summ)
    if a.json:
        write_json(a.json, doc)
    if a.plot:
        plot(a.plot, doc["results"])
    if a.markdown:
        write_markdown(a.markdown, doc)
    log(f"\nall thread counts done in {doc['elapsed_s']:.1f} s")
    if not summ["ok"]:
        log("FAILED: some implementation disagrees with cylstm beyond tolerance (or cylstm "
            "failed); see above")
        return 1
    return 0


def summarize(results):
    skipped, mismatches, ok = [], [], True
    seen_skip = set()
    for res in results:
        for r in res["rows"]:
            key = (res["workload"], r["impl"], r.get("reason"))
            if r["status"] == "skipped" and key not in seen_skip:
                seen_skip.add(key)
                skipped.append({"workload": res["workload"], "case": res["case"],
                                "threads": res["threads"], "impl": r["impl"],
                                "reason": r["reason"]})
            if r["status"] == "mismatch" or (r["impl"] == "cylstm" and r["status"] == "error"):
                ok = False
                mismatches.append({"workload": res["workload"], "case": res["case"],
                                   "threads": res["threads"], "impl": r["impl"],
                                   "max_abs_diff": r.get("max_abs_diff"),
                                   "max_rel_diff": r.get("max_rel_diff"),
                                   "reason": r["reason"]})
    return {"skipped": skipped, "mismatches": mismatches, "ok": ok}


if __name__ == "__main__":
    sys.exit(main())
