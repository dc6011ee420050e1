#!/usr/bin/env python
"""cylstm on more than one worker (cylstm.distributed): does a second worker pay?

    pip install '.[dask,ray]'     # then, from the repository root:
    python bench/scale.py --quick  # about a minute and a half on 2 cores
    python bench/scale.py          # about five minutes on 2 cores

Two workloads, on Dask and on Ray, each against one process (an engine that is
not installed is skipped, with the reason):

    score   throughput of ``cylstm.distributed.predict``: an LSTM(128) over
            (T, B, I) = (100, 4096, 32) float32 sequences, H = 128, in chunks of
            256 sequences (--quick: B = 1024).  One process scores the same
            array with ``model.predict(x, batch_size=256)`` on 1 and on 2
            threads; Dask: a LocalCluster of 2 single-thread worker processes,
            scoring on 1 of them and on both; Ray: pools of 1 and 2
            ``RayPredictor`` actors, num_cpus=1 (``map_batches(compute=
            ActorPoolStrategy(size=k))``, what ``predict``'s concurrency=k
            passes; the rows say "concurrency k").  Ratios: 2 workers over 1 worker
            (target >= 1.8x) and 2 workers over one process on 2 threads
            (target >= 0.9x).
    epoch   one training epoch of the Keras example model of bench/compare.py
            (LSTM(50, return_sequences) -> LSTM(20) -> Dense(1), Adam(0.001),
            MSE, batch 32, 2048 x 50 x 10; --quick: 512 samples) with
            ``cylstm.distributed.fit`` on 2 workers against ``model.fit`` in one
            process on 1 and 2 threads, and the share of the epoch that is
            communication.

Method
------
* Phases: one per engine, with the engine started (Dask's workers or Ray's
  processes idle in the background while the one-process runs go).  In a
  phase, one untimed warm-up round, then ``--repeat`` rounds (3; 2 with
  --quick) each run every configuration once, in an order rotated every round,
  with a 0.2 s pause before each run (a previous run's spinning OpenMP or BLAS
  threads go to sleep); medians are shown and each ratio compares runs of the
  same phase.  A shared cloud machine's speed drifts by tens of percent over
  minutes; interleaving keeps the drift out of the ratios.
* Scoring: the input is placed on the workers before the clock starts (Dask:
  ``persist`` and ``replicate``, so that both workers hold every chunk and
  the 1-worker run -- its tasks pinned to one worker -- moves no data; Ray: a
  dataset of 256-sequence blocks, materialized), as data a cluster loads
  itself would be.  A pass scores all of it and brings the predictions back
  to the driver (Dask: ``compute``; Ray: iterating the output's batches).
  Every pass's predictions are checked against the one-process ones.
* Ray Data starts its actors, which load the model, for every pipeline (a
  second or two here, longer than scoring 4096 sequences takes), where Dask's
  workers stay up.  A Ray pipeline scores ``--ray-reps`` copies of the array
  (the same blocks, 8; 4 with --quick); the Ray rows show the steady state,
  the extra sequences over the extra time against a pipeline of one
  256-sequence block, with that pipeline's time (the start) beside it.
* Epoch: ``fit(epochs=E)`` (E = 2, 1 with --quick); an epoch is timed from
  ``on_epoch_begin`` to ``on_epoch_end``, so starting the replicas is not
  counted.  The replicas report their own compute seconds per step;
  communication is the time the driver waits for a step beyond the slowest
  replica's compute (sending the gradient and the shard indices, scheduling,
  returning the results), summed over the steps, as a share of the epochs.
  The final losses of all runs must agree (float32 rounding).
* One-process runs set cylstm's threads and limit SciPy's BLAS with
  threadpoolctl (bench/_machine.py); Dask workers run 1 thread each
  (OMP_NUM_THREADS=1, set by Dask), Ray actors their num_cpus.
"""
import argparse
import contextlib
import datetime
import logging
import os
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import _impls
import _machine

CHUNK = 256
SCORE_SHAPE = (100, 4096, 32, 128)   # T, B, I, H
TARGET_SCALE, TARGET_VS_PROCESS = 1.8, 0.9
PAUSE_S = 0.2


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


def timed(fn):
    time.sleep(PAUSE_S)
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


class Bench:
    def __init__(self, cylstm, args):
        self.cy = cylstm
        self.args = args
        T, B, I, H = SCORE_SHAPE
        if args.quick:
            B = 1024
        self.score_shape = (T, B, I, H)
        self.x = np.random.default_rng(0).standard_normal((B, T, I)).astype(np.float32)
        self.score_model = cylstm.models.Sequential(
            [cylstm.layers.LSTM(H, input_shape=(T, I), dtype="float32", seed=0)])
        self.threads = _machine.Threads(cylstm)
        self.threads.set(1)
        self.ref = self.score_model.predict(self.x, batch_size=CHUNK, verbose=0)
        self.epochs = 1 if args.quick else 2
        self.ex, self.ey = _impls.make_epoch_data(n=512 if args.quick else 2048)
        self.weights = _impls.keras_initial_weights()
        self.rows = []       # {"phase", "workload", "run", "setup", ...measurements}
        self.mismatch = []

    def check(self, label, got):
        if got.shape != self.ref.shape or not np.allclose(got, self.ref, rtol=1e-4, atol=1e-5):
            self.mismatch.append(f"score {label}: predictions differ from one process's")

    # -- rounds ---------------------------------------------------------------------------
    def rounds(self, phase, workload, runners):
        """Run ``runners`` [(run, setup, fn -> dict)] in rotated rounds; keep the medians."""
        n = len(runners)
        got = [[] for _ in runners]
        for r in range(self.args.repeat + 1):  # round 0 warms up
            for i in [(j + r) % n for j in range(n)]:
                res = runners[i][2]()
                if r:
                    got[i].append(res)
        for (run, setup, _), results in zip(runners, got):
            row = {"phase": phase, "workload": workload, "run": run, "setup": setup}
            for key in results[0]:
                vals = [res[key] for res in results]
                row[key] = statistics.median(vals) if isinstance(vals[0], (int, float)) \
                    else vals[-1]
            if workload == "epoch" and "comm" in row:
                row["share"] = sum(r["comm"] for r in results) / sum(
                    r["total"] for r in results)
            self.rows.append(row)
            desc = ", ".join(f"{k} {v:.4g}" for k, v in row.items()
                             if isinstance(v, float))
            log(f"  {phase}: {workload} {run} {setup}: {desc}")

    # -- scoring runners ------------------------------------------------------------------
    def score_single(self, n):
        def run():
            self.threads.set(n)
            secs, got = timed(lambda: self.score_model.predict(self.x, batch_size=CHUNK,
                                                               verbose=0))
            self.check(f"one process {n} threads", got)
            return {"secs": secs}

        return ("one process", f"1 x {n} thread{'s' if n > 1 else ''}", run)

    def score_dask(self, client, dx, workers):
        import cylstm.distributed as cd

        def run():
            self.threads.set(1)

            def go():
                out = cd.predict(self.score_model, dx, batch_size=CHUNK, client=client)
                return client.compute(out, workers=workers,
                                      allow_other_workers=False).result()

            secs, got = timed(go)
            self.check(f"dask {len(workers)} workers", got)
            return {"secs": secs}

        k = len(workers)
        return ("dask", f"{k} worker{'s' if k > 1 else ''} x 1 thread", run)

    def score_ray(self, k, many, tiny, model_ref, reps):
        import ray.data

        import cylstm.distributed as cd

        def score(ds):
            out = ds.map_batches(cd.RayPredictor, fn_constructor_kwargs={
                "model": model_ref, "batch_size": CHUNK},
                compute=ray.data.ActorPoolStrategy(size=k), num_cpus=1,
                batch_size=CHUNK, batch_format="numpy")
            out.context.execution_options.preserve_order = True
            return np.concatenate([b["predictions"] for b in out.iter_batches(
                batch_size=None, batch_format="numpy")])

        def run():
            self.threads.set(1)
            t_many, got = timed(lambda: score(many))
            b = len(self.x)
            self.check(f"ray concurrency {k}", got[:b])
            self.check(f"ray concurrency {k} (last copy)", got[-b:])
            t_tiny, _ = timed(lambda: score(tiny))
            # many = start + reps * B sequences, tiny = start + CHUNK sequences
            steady = (reps * b - CHUNK) / max(1e-9, t_many - t_tiny)
            return {"secs": b / steady, "start": t_tiny, "rate_with_start": reps * b / t_many}

        return ("ray", f"concurrency {k} x num_cpus 1", run)

    # -- epoch runners --------------------------------------------------------------------
    def _timer(self):
        class EpochTimer(self.cy.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.secs = []

            def on_epoch_begin(self, epoch, logs=None):
                self._t0 = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.secs.append(time.perf_counter() - self._t0)

        return EpochTimer()

    def _epoch(self, fit):
        model = _impls.cylstm_keras_example(self.weights)
        timer = self._timer()
        time.sleep(PAUSE_S)
        h = fit(model, [timer])
        res = {"secs": statistics.median(timer.secs), "loss": float(h.history["loss"][-1])}
        t = getattr(h, "timing", None)
        if t is not None:
            ne = len(timer.secs)
            res.update(compute=t["compute_s"] / ne, comm=t["communication_s"] / ne,
                       total=sum(timer.secs) / ne)
        return res

    def epoch_single(self, n):
        def run():
            self.threads.set(n)
            return self._epoch(lambda m, cbs: m.fit(
                self.ex, self.ey, epochs=self.epochs, batch_size=32, shuffle=False, verbose=0,
                callbacks=cbs))

        return ("one process", f"1 x {n} thread{'s' if n > 1 else ''}", run)

    def epoch_distributed(self, run_name, setup, client, **kw):
        import cylstm.distributed as cd

        def run():
            self.threads.set(1)
            return self._epoch(lambda m, cbs: cd.fit(
                m, self.ex, self.ey, client=client, epochs=self.epochs, batch_size=32,
                shuffle=False, verbose=0, callbacks=cbs, **kw))

        return (run_name, setup, run)


# ---------------------------------------------------------------------------- engines
@contextlib.contextmanager
def dask_cluster(k):
    from distributed import Client, LocalCluster

    # a LocalCluster leaves OMP_NUM_THREADS=1 in this process's environment: put it back
    saved = os.environ.get("OMP_NUM_THREADS")
    cluster = LocalCluster(n_workers=k, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved


@contextlib.contextmanager
def ray_session(cylstm, cpus):
    import ray

    # Ray's workers start in the driver's directory and put it first on sys.path; start
    # them elsewhere, with the cylstm this process imported (as tests/test_distributed.py)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(cylstm.__file__)))
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING,
                     runtime_env={"env_vars": {"PYTHONPATH": pkg_parent}})
            import ray.data

            # Ray Data logs every execution (INFO); its warnings, a deprecation among them,
            # still show
            logging.getLogger("ray.data").setLevel(logging.WARNING)
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False
            ctx.print_on_execution_start = False
            yield ray
        finally:
            ray.shutdown()
            os.chdir(cwd)


def missing(*mods):
    import importlib

    for mod in mods:
        try:
            importlib.import_module(mod)
        except ImportError as e:
            return f"{mod} is not installed ({e})"
    return None


def dask_phase(b, do_score, do_epoch):
    import dask.array as da
    from distributed import wait

    with dask_cluster(2) as client:
        if do_score:
            workers = sorted(client.scheduler_info()["workers"])
            dx = da.from_array(b.x, chunks=(CHUNK, -1, -1)).persist()
            wait(dx)
            client.replicate(dx)
            b.rounds("dask", "score", [b.score_single(1), b.score_single(2),
                                       b.score_dask(client, dx, workers[:1]),
                                       b.score_dask(client, dx, workers)])
        if do_epoch:
            b.rounds("dask", "epoch", [b.epoch_single(1), b.epoch_single(2),
                                       b.epoch_distributed("dask", "2 workers x 1 thread",
                                                           client)])


def ray_phase(b, do_score, do_epoch, cores):
    with ray_session(b.cy, max(2, cores)) as ray:
        import ray.data

        import cylstm.distributed as cd

        if do_score:
            x, reps = b.x, b.args.ray_reps
            one = ray.data.from_numpy([x[i:i + CHUNK] for i in range(0, len(x), CHUNK)])
            one = one.materialize()
            # Ray Data starts its actors for every pipeline: score the array ``reps`` times
            # in one pipeline (the same blocks, no copies), as a large dataset would be
            many = one.union(*[one] * (reps - 1)).materialize() if reps > 1 else one
            tiny = ray.data.from_numpy(x[:CHUNK]).materialize()
            ref = ray.put(cd._model_blob(b.score_model))
            b.rounds("ray", "score", [b.score_single(1), b.score_single(2),
                                      b.score_ray(1, many, tiny, ref, reps),
                                      b.score_ray(2, many, tiny, ref, reps)])
        if do_epoch:
            b.rounds("ray", "epoch", [b.epoch_single(1), b.epoch_single(2),
                                      b.epoch_distributed("ray", "2 actors x num_cpus 1", "ray",
                                                          num_workers=2, num_cpus=1)])


# ---------------------------------------------------------------------------- report
def find(rows, phase, workload, run, first=True):
    hits = [r for r in rows if (r["phase"], r["workload"], r["run"]) == (phase, workload, run)]
    return (hits[0] if first else hits[-1]) if hits else None


def report(b, skipped, cpu, cores):
    args = b.args
    T, B, I, H = b.score_shape
    log()
    log(f"## bench/scale.py{' --quick' if args.quick else ''}: {cpu}, {cores} cores, "
        f"{datetime.date.today().isoformat()}")
    score = [r for r in b.rows if r["workload"] == "score"]
    if score:
        log()
        log(f"Scoring, (T, B, I, H) = ({T}, {B}, {I}, {H}) float32, chunks of {CHUNK}, "
            f"median of {args.repeat} rounds:")
        log()
        log("| phase | run | workers x threads | ms per pass | sequences/s | "
            "pipeline start s | vs 1 worker / thread | vs 1 process, 2 threads |")
        log("|---|---|---|---:|---:|---:|---:|---:|")
        for r in score:
            n = B / r["secs"]
            first = find(score, r["phase"], "score", r["run"])
            two = find(score, r["phase"], "score", "one process", first=False)
            start = f"{r['start']:.2f}" if "start" in r else ""
            log(f"| {r['phase']} | {r['run']} | {r['setup']} | {r['secs'] * 1e3:.0f} | {n:.0f} | "
                f"{start} | {first['secs'] / r['secs']:.2f}x | {two['secs'] / r['secs']:.2f}x |")
        log()
        ray_rows = [r for r in score if "start" in r]
        if ray_rows:
            log(f"Ray rows: the steady state ({args.ray_reps} copies of the array in one "
                f"pipeline, less a pipeline of one {CHUNK}-sequence block, whose time is the "
                "pipeline start).  With the start included: " + ", ".join(
                    f"{r['rate_with_start']:.0f} sequences/s ({r['setup']})"
                    for r in ray_rows) + ".")
            log()
        for eng in ("dask", "ray"):
            rs = [r for r in score if r["phase"] == eng and r["run"] == eng]
            two = find(score, eng, "score", "one process", first=False)
            if len(rs) < 2:
                continue
            a, c = rs[0]["secs"] / rs[1]["secs"], two["secs"] / rs[1]["secs"]
            log(f"- {eng}: 2 workers / 1 worker = {a:.2f}x (target >= {TARGET_SCALE}x: "
                f"{'met' if a >= TARGET_SCALE else 'NOT met'}); 2 workers / 1 process on 2 "
                f"threads = {c:.2f}x (target >= {TARGET_VS_PROCESS}x: "
                f"{'met' if c >= TARGET_VS_PROCESS else 'NOT met'})")
    epoch = [r for r in b.rows if r["workload"] == "epoch"]
    if epoch:
        log()
        log(f"Data-parallel epoch of the Keras example ({len(b.ex)} x 50 x 10, batch 32, "
            f"Adam), fit(epochs={b.epochs}), median of {args.repeat} rounds:")
        log()
        log("| phase | run | workers x threads | epoch s | vs 1 process, 1 thread | "
            "vs 1 process, 2 threads | compute s | communication s | communication share | "
            "final loss |")
        log("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in epoch:
            one = find(epoch, r["phase"], "epoch", "one process")
            two = find(epoch, r["phase"], "epoch", "one process", first=False)
            cells = [r["phase"], r["run"], r["setup"], f"{r['secs']:.3f}",
                     f"{one['secs'] / r['secs']:.2f}x", f"{two['secs'] / r['secs']:.2f}x"]
            if "share" in r:
                cells += [f"{r['compute']:.3f}", f"{r['comm']:.3f}", f"{r['share']:.0%}"]
            else:
                cells += ["", "", ""]
            cells.append(f"{r['loss']:.5f}")
            log("| " + " | ".join(cells) + " |")
        log()
        log("(vs ...: the one-process epoch time over this one; > 1 is faster.  compute s: the "
            "slowest replica's own compute per epoch, summed over the steps; communication s: "
            "the driver's wait beyond it.)")
        losses = [r["loss"] for r in epoch]
        if max(losses) - min(losses) > 1e-4 * max(1.0, abs(losses[0])):
            b.mismatch.append(f"epoch: final losses differ beyond float32 rounding: {losses}")
    for s in skipped:
        log(f"skipped: {s}")
    for m in b.mismatch:
        log(f"MISMATCH: {m}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller shapes, fewer rounds")
    p.add_argument("--repeat", type=int, default=None, help="timed rounds (3; 2 with --quick)")
    p.add_argument("--ray-reps", type=int, default=None,
                   help="Ray: copies of the array scored in one pipeline (8; 4 with --quick)")
    p.add_argument("--only", choices=["score", "epoch"], help="one workload")
    p.add_argument("--engines", default="dask,ray", help="comma-separated: dask, ray")
    args = p.parse_args(argv)
    args.repeat = args.repeat or (2 if args.quick else 3)
    args.ray_reps = args.ray_reps or (4 if args.quick else 8)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    logging.getLogger("distributed").setLevel(logging.WARNING)

    cy = import_cylstm()
    cores = _machine.available_cores()
    cpu = _machine.cpu_model()
    log(f"cylstm {cy.__file__}; {cpu}, {cores} cores")
    b = Bench(cy, args)
    do_score, do_epoch = args.only in (None, "score"), args.only in (None, "epoch")
    skipped = []
    for eng in engines:
        why = missing("dask.array", "distributed") if eng == "dask" else \
            missing("ray", "ray.data") if eng == "ray" else f"unknown engine {eng!r}"
        if why:
            skipped.append(f"{eng}: {why}")
            log(f"{eng} skipped: {why}")
            continue
        log(f"{eng} phase:")
        if eng == "dask":
            dask_phase(b, do_score, do_epoch)
        else:
            ray_phase(b, do_score, do_epoch, cores)
    if not b.rows:  # no engine: the one-process rows alone
        log("one process only:")
        if do_score:
            b.rounds("-", "score", [b.score_single(1), b.score_single(2)])
        if do_epoch:
            b.rounds("-", "epoch", [b.epoch_single(1), b.epoch_single(2)])
    report(b, skipped, cpu, cores)
    return 1 if b.mismatch else 0


if __name__ == "__main__":
    sys.exit(main())
