#!/usr/bin/env python
"""Does a second thread ever cost a streaming step time?  StreamRunner.step on one and
two threads: back to back, after idle gaps, and beside a busy core.

    python bench/stream_threads.py                      # (64,128) and (256,512), 1 and 2 layers
    python bench/stream_threads.py --cases 64x128x2 --gap-ms 200 --rounds 50

For each case (I, H, layers: LSTM layers of H units over I features, float32, batch 1)
and each of ``num_threads`` 1 and 2, in the same process:

    warm        median and 99th percentile of back-to-back steps (us)
    1st, 2nd    median of the first and second step after an idle gap (``--gap-ms``)

then the same again with another process spinning on a core ("busy"); the two thread
counts alternate in five slices of each.  Two threads
"never cost time" when each of their figures is at most the one-thread figure beside it.
Run it on a quiet machine (``vmstat 1 3``: idle near 100%), and compare builds by
running it on each: host noise moves warm figures by 20-30% between runs.

Each step passes ``out=`` (no allocation).  OpenBLAS's idle threads are limited to a short
spin (``OPENBLAS_THREAD_TIMEOUT=18``, which cylstm sets unless NumPy was imported first:
here it is set before NumPy loads).
"""
import argparse
import os
import subprocess
import sys
import time

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "18")
HERE = os.path.dirname(os.path.abspath(__file__))

import numpy as np

CASES = ["64x128x1", "64x128x2", "256x512x1", "256x512x2"]


def _case(text):
    try:
        I, H, L = (int(v) for v in text.split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a case is IxHxLAYERS, e.g. 64x128x2; got {text!r}") from None
    if min(I, H, L) < 1:
        raise argparse.ArgumentTypeError(f"I, H and LAYERS must be >= 1; got {text!r}")
    return I, H, L


def measure(cylstm, I, H, L, gap_s, rounds, warm_steps, slices=5):
    """{threads: {"warm", "p99", "first", "second"}} in us, for one condition.  The
    two thread counts alternate in ``slices`` slices of the warm steps and the gaps,
    so that a change of the host's load touches both."""
    model = cylstm.models.Sequential(
        [cylstm.layers.LSTM(H, return_sequences=True, input_shape=(None, I), dtype="float32",
                            seed=i) for i in range(L)])
    x = np.random.default_rng(0).standard_normal((1, I)).astype(np.float32)
    runners = {n: model.streamer(1, num_threads=n) for n in (1, 2)}
    outs = {n: np.empty((1, H), np.float32) for n in (1, 2)}
    warm = {n: [] for n in runners}
    pairs = {n: [] for n in runners}
    for n, r in runners.items():
        for _ in range(200):
            r.step(x, out=outs[n])
    for s in range(slices):
        for n in (1, 2) if s % 2 == 0 else (2, 1):
            r, o = runners[n], outs[n]
            for _ in range(max(1, warm_steps // slices)):
                t = time.perf_counter()
                r.step(x, out=o)
                warm[n].append(time.perf_counter() - t)
            for _ in range(max(1, rounds // slices)):
                time.sleep(gap_s)
                t0 = time.perf_counter()
                r.step(x, out=o)
                t1 = time.perf_counter()
                r.step(x, out=o)
                pairs[n].append((t1 - t0, time.perf_counter() - t1))
    res = {}
    for n in runners:
        w, p = np.array(warm[n]), np.array(pairs[n])
        res[n] = {"warm": np.median(w) * 1e6, "p99": np.percentile(w, 99) * 1e6,
                  "first": np.median(p[:, 0]) * 1e6, "second": np.median(p[:, 1]) * 1e6}
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="+", type=_case, default=[_case(c) for c in CASES],
                    help="IxHxLAYERS cases (default: %(default)s)")
    ap.add_argument("--gap-ms", type=float, default=50.0, help="idle gap (default 50 ms)")
    ap.add_argument("--rounds", type=int, default=30, help="gaps per case and thread count")
    ap.add_argument("--warm-steps", type=int, default=2000)
    ap.add_argument("--no-busy", action="store_true", help="skip the busy-core half")
    args = ap.parse_args(argv)
    if args.gap_ms < 0 or args.rounds < 1 or args.warm_steps < 10:
        ap.error("--gap-ms must be >= 0, --rounds >= 1 and --warm-steps >= 10")
    sys.path.insert(0, HERE)
    import _machine

    import cylstm

    print(f"## bench/stream_threads.py: {_machine.cpu_model()}, {time.strftime('%Y-%m-%d')}\n")
    print(f"StreamRunner.step, float32, batch 1, us; gap {args.gap_ms:g} ms; in brackets the "
          "one-thread figure\n")
    print("| case | condition | warm median | warm p99 | 1st after gap | 2nd after gap |")
    print("|---|---|---|---|---|---|")
    conditions = ["quiet"] + ([] if args.no_busy else ["busy"])
    for cond in conditions:
        spinner = None
        if cond == "busy":
            spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(0.3)
        try:
            for I, H, L in args.cases:
                r = measure(cylstm, I, H, L, args.gap_ms / 1e3, args.rounds, args.warm_steps)
                cells = " | ".join(f"{r[2][k]:.1f} [{r[1][k]:.1f}]"
                                   for k in ("warm", "p99", "first", "second"))
                print(f"| {I}x{H}x{L} | {cond}, 2 threads | {cells} |", flush=True)
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()


if __name__ == "__main__":
    main()
