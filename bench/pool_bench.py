#!/usr/bin/env python
"""Throughput of the pooled step (StreamPool) against one StreamRunner per stream.

    python bench/pool_bench.py                      # (64,128) and (256,512), 32 streams
    python bench/pool_bench.py --streams 8 32 --frames 200 --rounds 5 --threads 1

A model of one LSTM layer of ``H`` units over ``I`` features and a Dense(1) head, as in
bench/stream_bench.py.  For S streams, one frame time is

    runners   S calls of ``StreamRunner.step`` (S batch-1 runners sharing one packed copy)
    pool      one ``StreamPool.step((keys, X))`` with X (S, I): gather, one batched step
              with the GIL released, scatter
    sgemm     SciPy's sgemm of the step's product, [X, H] (S, I+H) @ [W; U] (I+H, 4H),
              on the same number of threads: the rate the pooled step is measured against

and, for one stream, ``runner.run(block)`` with T frames against T ``step`` calls and
T times the one-step time.  Rounds interleave the variants; the figures are medians over
rounds of the time per frame (microseconds).  The pool's outputs are checked equal to
the runners' before timing.  Rough numbers on a shared machine: the speed targets of
issue 15 are read from here, never asserted in tests.
"""
import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def _import_cylstm():
    try:
        import cylstm.stream
    except ImportError:
        sys.path.insert(1, os.path.dirname(HERE))
    import cylstm.stream

    return cylstm.stream


def _specs(I, H, seed=0):
    rng = np.random.default_rng(seed)
    return [{"type": "lstm", "kernel": rng.uniform(-0.1, 0.1, (I, 4 * H)),
             "recurrent_kernel": rng.uniform(-0.1, 0.1, (H, 4 * H)),
             "bias": rng.uniform(-0.1, 0.1, 4 * H)},
            {"type": "dense", "kernel": rng.uniform(-0.1, 0.1, (H, 1)), "bias": np.zeros(1),
             "activation": "linear"}]


def _time(fn, n):
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def _sgemm(S, K, N, threads):
    """(run, limit): one sgemm of (S, K) @ (K, N), and a context that caps BLAS threads."""
    import contextlib

    from scipy.linalg.blas import sgemm

    a = np.asfortranarray(np.random.default_rng(1).standard_normal((S, K), np.float32))
    b = np.asfortranarray(np.random.default_rng(2).standard_normal((K, N), np.float32))
    c = np.zeros((S, N), np.float32, order="F")

    def run():
        sgemm(1.0, a, b, 0.0, c, overwrite_c=1)

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return run, contextlib.nullcontext
    return run, lambda: threadpool_limits(threads, user_api="blas")


def measure_pool(I, H, streams=32, frames=200, rounds=5, threads=None, block_T=512):
    """Microseconds per frame time: runners, pool, sgemm; and the run(block) figures."""
    st = _import_cylstm()
    specs = _specs(I, H)
    S = streams
    runners = [st.StreamRunner._from_specs(specs, 1, num_threads=threads) for _ in range(S)]
    pool = st.StreamPool._from_specs(specs, max_streams=S, num_threads=threads)
    keys = list(range(S))
    rng = np.random.default_rng(3)
    X = rng.standard_normal((S, I)).astype(np.float32)
    for _ in range(3):   # the pool must give the runners' bits
        _, y = pool.step((keys, X))
        want = np.stack([r.step(X[i]).copy() for i, r in enumerate(runners)])
        if not np.array_equal(y, want):
            raise AssertionError("the pool's outputs differ from the runners'")
    rows = [X[i] for i in range(S)]

    def sep():
        for r, x in zip(runners, rows):
            r.step(x)

    def pooled():
        pool.step((keys, X))

    nt = pool._threads_for(S)
    gemm, blas_limit = _sgemm(S, I + H, 4 * H, nt)
    one = st.StreamRunner._from_specs(specs, 1, num_threads=threads)
    block = rng.standard_normal((block_T, I)).astype(np.float32)
    x1 = block[0]

    def steps_T():
        for t in range(block_T):
            one.step(block[t])

    res = {k: [] for k in ("runners", "pool", "sgemm", "one_step", "run_block", "steps_T")}
    for _ in range(rounds):
        res["runners"].append(_time(sep, frames))
        res["pool"].append(_time(pooled, frames))
        with blas_limit():
            res["sgemm"].append(_time(gemm, frames))
        res["one_step"].append(_time(lambda: one.step(x1), frames * 4))
        res["run_block"].append(_time(lambda: one.run(block), 2))
        res["steps_T"].append(_time(steps_T, 2))
    med = {k: float(np.median(v)) * 1e6 for k, v in res.items()}
    flops = 2.0 * S * (I + H) * 4 * H
    med.update(I=I, H=H, streams=S, pool_threads=nt,
               speedup=med["runners"] / med["pool"],
               pool_gflops=flops / med["pool"] / 1e3, sgemm_gflops=flops / med["sgemm"] / 1e3,
               run_vs_T_steps_time=med["run_block"] / (block_T * med["one_step"]),
               run_vs_T_step_calls=med["run_block"] / med["steps_T"], T=block_T)
    med["sgemm_share"] = med["pool_gflops"] / med["sgemm_gflops"]
    return med


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="*", default=["64x128", "256x512"])
    ap.add_argument("--streams", nargs="*", type=int, default=[32])
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--block", type=int, default=512)
    a = ap.parse_args(argv)
    print(f"{'case':>9} {'S':>3} {'thr':>3} {'runners us':>11} {'pool us':>8} {'x':>5} "
          f"{'pool GF/s':>9} {'sgemm GF/s':>10} {'share':>5} | {'run(T) / T*step':>15} "
          f"{'run(T) / T calls':>16}")
    for case in a.cases:
        I, H = (int(v) for v in case.split("x"))
        frames = a.frames if H <= 128 else max(20, a.frames // 5)
        for S in a.streams:
            m = measure_pool(I, H, S, frames, a.rounds, a.threads, a.block)
            print(f"{case:>9} {S:>3} {m['pool_threads']:>3} {m['runners']:>11.1f} "
                  f"{m['pool']:>8.1f} {m['speedup']:>5.2f} {m['pool_gflops']:>9.1f} "
                  f"{m['sgemm_gflops']:>10.1f} {m['sgemm_share']:>5.2f} | "
                  f"{m['run_vs_T_steps_time']:>15.3f} {m['run_vs_T_step_calls']:>16.3f}",
                  flush=True)


if __name__ == "__main__":
    main()
