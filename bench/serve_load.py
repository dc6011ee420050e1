#!/usr/bin/env python
"""Load on examples/stream_service.py: frame latency and frames/s with the pool and without.

    python bench/serve_load.py                              # (64,128) and (256,512); N = 1, 8, 32
    python bench/serve_load.py --shapes 64,128 --sessions 32 --seconds 5 --window-us 500

For each shape (features, units) and each mode the service is started as its own process
on 127.0.0.1 (a free port), serving a random LSTM(units, return_sequences=True):

    pool      frames arriving together gathered into one ``StreamPool.step`` (window
              ``--window-us``, or sooner once every open session has a frame waiting)
    runner    one batch-1 ``StreamRunner`` per session, stepped as each frame arrives

An asyncio client (the ``websockets`` library, no compression) opens N sessions; each
sends one float32 frame, waits for its answer, and sends the next -- closed loop, so
frames/s is what the server sustains at N outstanding frames.  Each session stops after
``--frames`` frames or ``--seconds`` seconds, whichever comes first, after ``--warmup``
frames not counted.  Latency is from send to answer, per frame; p50/p99 over all
sessions' frames.  The server's own counters (``GET /stats``) give the compute time per
step (the ``pool.step`` or ``runner.step`` call alone) and the frames per step; "wire
share" is the part of the run's wall time the server did not spend in that compute:
HTTP/WebSocket framing, the event loop and the gathering window (in a closed loop at
N >= 8 the server is never idle, so this is also the share of a frame's latency that is
overhead rather than compute, queueing behind other sessions' compute counted as compute).

Client and server share the machine's cores (2 vCPUs here), so these are rough numbers
for a shared machine: the service target of issue 15 (pool >= 3x the runner server's
frames/s at 32 sessions) is read from here, never asserted in tests.  Needs fastapi,
uvicorn and websockets (``pip install 'cylstm[serve]'``).
"""
import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SERVICE = os.path.join(ROOT, "examples", "stream_service.py")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return json.loads(r.read())


class Service:
    """The service in a child process, for the length of a with-block."""

    def __init__(self, shape, mode, window_us, max_streams, ws="auto", inline=False):
        self.port = _free_port()
        env = dict(os.environ)
        src = os.path.join(ROOT, "cylstm")
        if any(f.startswith("_lstm.") and f.endswith((".so", ".pyd")) for f in os.listdir(src)):
            # the checkout's in-place build; after `pip install .` the installed package
            env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        self.cmd = [sys.executable, SERVICE, "--demo", f"{shape[0]},{shape[1]}",
                    "--port", str(self.port), "--mode", mode, "--window-us", str(window_us),
                    "--max-streams", str(max_streams), "--ws", ws] + ["--inline"] * inline
        self.env = env

    def __enter__(self):
        self.proc = subprocess.Popen(self.cmd, env=self.env)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.info = _get(self.port, "/info")
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.proc.kill()
                    raise RuntimeError(f"the service did not start: {' '.join(self.cmd)}") from None
                time.sleep(0.1)

    def stats(self):
        return _get(self.port, "/stats")

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def _session(url, name, frames, warmup, n_frames, seconds, ready, start, lat):
    from websockets.asyncio.client import connect

    async with connect(f"{url}/stream/{name}", compression=None, max_size=None) as ws:
        for t in range(warmup):
            await ws.send(frames[t % len(frames)])
            await ws.recv()
        ready.append(name)
        await start.wait()
        end = time.perf_counter() + seconds
        for t in range(n_frames):
            t0 = time.perf_counter()
            await ws.send(frames[t % len(frames)])
            await ws.recv()
            t1 = time.perf_counter()
            lat.append(t1 - t0)
            if t1 > end:
                break


async def _drive(port, n_sessions, features, args):
    rng = np.random.default_rng(0)
    frames = [f.tobytes() for f in rng.standard_normal((64, features)).astype("<f4")]
    lats = [[] for _ in range(n_sessions)]
    start, ready = asyncio.Event(), []
    url = f"ws://127.0.0.1:{port}"
    tasks = [asyncio.ensure_future(_session(url, f"s{i}", frames, args.warmup, args.frames,
                                            args.seconds, ready, start, lats[i]))
             for i in range(n_sessions)]
    # every session connected and warm before the clock starts
    deadline = time.monotonic() + 60
    while len(ready) < n_sessions:
        if time.monotonic() > deadline or any(t.done() for t in tasks):
            await asyncio.gather(*tasks)  # raises what stopped a session
            raise RuntimeError(f"only {len(ready)} of {n_sessions} sessions came up")
        await asyncio.sleep(0.01)
    start.set()
    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*tasks), args.seconds + 60)
    wall = time.perf_counter() - t0
    return np.concatenate([np.asarray(lat) for lat in lats]), wall


def run(shape, mode, sessions, args):
    rows = []
    with Service(shape, mode, args.window_us, max(sessions), args.ws,
                 args.inline) as svc:
        for n in sessions:
            before = svc.stats()
            lat, wall = asyncio.run(_drive(svc.port, n, shape[0], args))
            after = svc.stats()
            steps = after["steps"] - before["steps"]
            frames = after["frames"] - before["frames"]
            compute_s = after["compute_s"] - before["compute_s"]
            compute = compute_s / max(steps, 1)
            p50, p99 = np.percentile(lat, [50, 99])
            rows.append({"shape": shape, "mode": mode, "sessions": n, "frames": len(lat),
                         "fps": len(lat) / wall, "p50_us": p50 * 1e6, "p99_us": p99 * 1e6,
                         "compute_us": compute * 1e6, "per_step": frames / max(steps, 1),
                         "wire_share": max(0.0, 1.0 - compute_s / wall)})
            r = rows[-1]
            print(f"({shape[0]:>3},{shape[1]:>3}) {mode:<6} N={n:<3} {r['fps']:>9.0f} fr/s  "
                  f"p50 {r['p50_us']:>8.0f} us  p99 {r['p99_us']:>8.0f} us  "
                  f"compute/step {r['compute_us']:>7.1f} us  frames/step {r['per_step']:>5.1f}  "
                  f"wire share {r['wire_share']:>4.0%}", flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", default=["64,128", "256,512"],
                   help="features,units of the served LSTM")
    p.add_argument("--sessions", nargs="+", type=int, default=[1, 8, 32])
    p.add_argument("--modes", nargs="+", choices=("pool", "runner"), default=["pool", "runner"])
    p.add_argument("--seconds", type=float, default=3.0, help="time bound per session and N")
    p.add_argument("--frames", type=int, default=20000, help="frame bound per session and N")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--window-us", type=float, default=200.0)
    p.add_argument("--ws", default="auto",
                   help="uvicorn's WebSocket implementation (websockets, websockets-sansio, ...)")
    p.add_argument("--inline", action="store_true",
                   help="the service steps in its event loop instead of on a worker thread")
    p.add_argument("--json", help="write the rows to this file")
    args = p.parse_args(argv)
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
        import websockets  # noqa: F401
    except ImportError as exc:
        sys.exit(f"serve_load needs fastapi, uvicorn and websockets (cylstm[serve]): {exc}")
    rows = []
    for s in args.shapes:
        shape = tuple(int(v) for v in s.split(","))
        for mode in args.modes:
            rows += run(shape, mode, args.sessions, args)
    print("\npool / runner frames/s:")
    for s in args.shapes:
        shape = tuple(int(v) for v in s.split(","))
        for n in args.sessions:
            fps = {r["mode"]: r["fps"] for r in rows if r["shape"] == shape
                   and r["sessions"] == n}
            if "pool" in fps and "runner" in fps:
                print(f"  ({shape[0]},{shape[1]}) N={n}: {fps['pool'] / fps['runner']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=list)


if __name__ == "__main__":
    main()
