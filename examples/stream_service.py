"""A WebSocket service that steps many live streams of one model together.

Each session opens ``ws://HOST:PORT/stream/{session}`` and sends binary
messages of little-endian float32: one frame (``features`` values) per message,
or a whole block of T frames (``T * features`` values).  The answer to each
message is the model's output for it, float32, ``units`` values per frame.
A message that is not a whole number of frames is answered with a text message
``{"error": ...}`` naming the session and the sizes; the session's state is
left as it was and the session stays open.

With ``mode="pool"`` (the default) the frames that arrive within ``window``
seconds of the first one waiting (200 us by default), or sooner once every open
session has a frame waiting, are stepped in one :meth:`cylstm.stream.StreamPool.step`
-- one pass over the weights for all of them -- on a worker thread, with the GIL
released, while the event loop goes on receiving (``--inline``: in the event
loop itself, no thread hand-off).  Blocks go to
:meth:`~cylstm.stream.StreamPool.run` on the same thread.  With
``mode="runner"`` every session has its own batch-1
:class:`~cylstm.stream.StreamRunner`, stepped as each frame arrives: the
baseline ``bench/serve_load.py`` compares against.

Needs the optional extra ``cylstm[serve]`` (fastapi, uvicorn, websockets)::

    python examples/stream_service.py --demo 64,128 --port 8000
    python examples/stream_service.py --model model.cylstm --window-us 500

``GET /info`` gives the shapes and settings, ``GET /stats`` the counts (steps,
frames, frames per step, compute seconds).
"""
import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import time

import numpy as np
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from cylstm.stream import PoolFullError

__all__ = ["StreamService", "create_app", "demo_model"]

_WIRE = np.dtype("<f4")


def demo_model(features, units, layers=1, seed=0):
    """A random LSTM stack ``(None, features) -> units`` (return_sequences) to serve."""
    from cylstm.layers import LSTM
    from cylstm.models import Sequential

    stack = [LSTM(units, return_sequences=True, input_shape=(None, features), seed=seed)]
    stack += [LSTM(units, return_sequences=True, seed=seed + i) for i in range(1, layers)]
    return Sequential(stack)


class StreamService:
    """The state behind the app: the pool (or runners), the gatherer and counters.

    Parameters
    ----------
    model : cylstm.models.Sequential
        A model :class:`cylstm.stream.StreamRunner` accepts.
    window : float
        Seconds the gatherer waits after the first frame of a step for more
        frames (default 200e-6).  It steps earlier when every open session
        has a frame waiting.  The event loop's timers are coarser than this on
        most systems (about 1 ms with epoll), so a window below that acts as
        "until the loop has read what already arrived".
    mode : {'pool', 'runner'}
        One pooled step for the frames gathered, or one runner per session.
    max_streams : int
        Most open sessions (pool slots); a session beyond it is closed with
        WebSocket code 1013 (try again later).
    idle_timeout : float or None
        Passed to the pool: seconds after which an unused stream is evicted
        (a session idle that long starts again from a zero state).
    worker_thread : bool
        Pool mode: step on one worker thread (default), the GIL released
        during the compute, so the event loop goes on reading frames for the
        next step meanwhile; or, with False, in the event loop itself (no
        thread hand-off per step, the loop blocked for the step).
    """

    def __init__(self, model, window=200e-6, mode="pool", max_streams=256, idle_timeout=None,
                 worker_thread=True):
        if mode not in ("pool", "runner"):
            raise ValueError(f"mode must be 'pool' or 'runner'; got {mode!r}")
        window = float(window)
        if not window >= 0.0:
            raise ValueError(f"window must be a number of seconds >= 0; got {window!r}")
        self.model, self.window, self.mode = model, window, mode
        self.worker_thread = bool(worker_thread)
        self.max_streams = int(max_streams)
        self.pool = model.stream_pool(max_streams=self.max_streams, idle_timeout=idle_timeout,
                                      num_threads=1)
        self.features = self.pool.input_shape[-1]
        self.units = self.pool.output_shape[-1]
        self.runners = {}              # runner mode: session -> StreamRunner
        self.sessions = set()          # open sessions
        self._pending = {}             # session -> (frame, future), waiting for a step
        self._flush = None             # the scheduled or running gather task
        # one worker: steps stay in order and never contend for the pool's lock
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cylstm-step")
        self.stats = {"steps": 0, "frames": 0, "blocks": 0, "compute_s": 0.0, "max_batch": 0}

    def info(self):
        return {"features": self.features, "units": self.units, "mode": self.mode,
                "window": self.window, "max_streams": self.max_streams,
                "dtype": "float32", "open_sessions": len(self.sessions)}

    # -- sessions ---------------------------------------------------------------------------
    def open(self, session):
        """Admit a session; raise KeyError if it is open, PoolFullError if none is free."""
        if session in self.sessions:
            raise KeyError(f"session {session!r} is already open")
        if len(self.sessions) >= self.max_streams:
            raise PoolFullError(f"{len(self.sessions)} sessions are open "
                                f"(max_streams={self.max_streams})")
        if self.mode == "pool":
            self.pool.start(session)
        else:
            self.runners[session] = self.model.streamer(batch_size=1, num_threads=1)
        self.sessions.add(session)

    def close(self, session):
        self.sessions.discard(session)
        self.runners.pop(session, None)
        if session in self.pool:
            self.pool.end(session)

    # -- compute ----------------------------------------------------------------------------
    def _timed_step(self, keys, x):
        t0 = time.perf_counter()
        _, y = self.pool.step((keys, x))
        return y, time.perf_counter() - t0

    def _timed_run(self, session, block):
        t0 = time.perf_counter()
        y = self.pool.run(session, block)
        return y, time.perf_counter() - t0

    def _count(self, n_frames, seconds, block=False):
        s = self.stats
        s["steps"] += 1
        s["frames"] += n_frames
        s["blocks"] += int(block)
        s["compute_s"] += seconds
        s["max_batch"] = max(s["max_batch"], n_frames)

    async def _call(self, fn, *args):
        if self.worker_thread:
            return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)
        return fn(*args)

    async def _gather_and_step(self):
        loop = asyncio.get_running_loop()
        try:
            if len(self._pending) < len(self.sessions):
                deadline = loop.time() + self.window
                while len(self._pending) < len(self.sessions):
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    await asyncio.sleep(left)
            batch, self._pending = self._pending, {}
            keys = list(batch)
            x = np.stack([batch[k][0] for k in keys])
            try:
                y, sec = await self._call(self._timed_step, keys, x)
            except Exception as exc:  # noqa: BLE001 -- every waiting session gets it, none hangs
                for _, fut in batch.values():
                    if not fut.done():
                        fut.set_exception(exc)
                return
            self._count(len(keys), sec)
            for i, k in enumerate(keys):
                fut = batch[k][1]
                if not fut.done():
                    fut.set_result(y[i])
        finally:
            self._flush = None
            if self._pending:  # frames that came in while this step ran
                self._flush = asyncio.ensure_future(self._gather_and_step())

    async def frames(self, session, x):
        """The outputs (T, units) for the frames x (T, features) of one session."""
        if self.mode == "runner":
            runner = self.runners[session]
            t0 = time.perf_counter()
            y = runner.step(x[0]).copy() if len(x) == 1 else runner.run(x)
            self._count(len(x), time.perf_counter() - t0, block=len(x) > 1)
            return y.reshape(len(x), self.units)
        loop = asyncio.get_running_loop()
        if len(x) > 1:
            y, sec = await self._call(self._timed_run, session, x)
            self._count(len(x), sec, block=True)
            return y
        fut = loop.create_future()
        self._pending[session] = (x[0], fut)
        if self._flush is None:
            self._flush = asyncio.ensure_future(self._gather_and_step())
        return (await fut).reshape(1, self.units)

    def decode(self, session, data):
        """float32 bytes -> frames (T, features); ValueError naming the sizes."""
        if len(data) == 0 or len(data) % (_WIRE.itemsize * self.features):
            raise ValueError(
                f"session {session!r}: a message must hold T * {self.features} float32 values "
                f"(T >= 1 frames of {self.features} features); got {len(data)} bytes")
        return np.frombuffer(data, _WIRE).reshape(-1, self.features)

    def shutdown(self):
        self._worker.shutdown(wait=True)


def create_app(model, window=200e-6, mode="pool", max_streams=256, idle_timeout=None,
               worker_thread=True):
    """A FastAPI app serving ``model`` over WebSockets (see the module docstring).

    Parameters are those of :class:`StreamService`; the service is ``app.state.service``.
    """
    service = StreamService(model, window=window, mode=mode, max_streams=max_streams,
                            idle_timeout=idle_timeout, worker_thread=worker_thread)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        service.shutdown()

    app = FastAPI(title="cylstm stream service", lifespan=lifespan)
    app.state.service = service

    @app.get("/info")
    def info():
        return service.info()

    @app.get("/stats")
    def stats():
        s = dict(service.stats)
        s["frames_per_step"] = s["frames"] / s["steps"] if s["steps"] else 0.0
        return s

    @app.websocket("/stream/{session}")
    async def stream(websocket: WebSocket, session: str):
        await websocket.accept()
        try:
            service.open(session)
        except KeyError as exc:
            await websocket.close(code=1008, reason=str(exc.args[0])[:120])
            return
        except PoolFullError as exc:
            await websocket.close(code=1013, reason=str(exc)[:120])
            return
        try:
            while True:
                msg = await websocket.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                data = msg.get("bytes")
                if data is None:
                    await websocket.send_text(json.dumps(
                        {"error": f"session {session!r}: send binary float32 frames"}))
                    continue
                try:
                    x = service.decode(session, data)
                except ValueError as exc:
                    await websocket.send_text(json.dumps({"error": str(exc)}))
                    continue
                y = await service.frames(session, x)
                await websocket.send_bytes(np.ascontiguousarray(y, _WIRE).tobytes())
        except WebSocketDisconnect:
            pass
        finally:
            service.close(session)

    return app


def main(argv=None):
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a saved cylstm model (cylstm.models.load_model)")
    src.add_argument("--demo", metavar="F,H", help="a random LSTM with F features, H units")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--mode", choices=("pool", "runner"), default="pool")
    p.add_argument("--window-us", type=float, default=200.0)
    p.add_argument("--max-streams", type=int, default=256)
    p.add_argument("--idle-timeout", type=float, default=None)
    p.add_argument("--inline", action="store_true",
                   help="step in the event loop instead of on a worker thread")
    p.add_argument("--ws", default="auto", help="uvicorn's WebSocket implementation")
    a = p.parse_args(argv)
    if a.model:
        from cylstm.models import load_model

        model = load_model(a.model, compile=False)
    else:
        f, h = (int(v) for v in a.demo.split(","))
        model = demo_model(f, h)
    app = create_app(model, window=a.window_us * 1e-6, mode=a.mode,
                     max_streams=a.max_streams, idle_timeout=a.idle_timeout,
                     worker_thread=not a.inline)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning", ws=a.ws)


if __name__ == "__main__":
    main()
