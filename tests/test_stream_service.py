"""examples/stream_service.py on a real uvicorn server on loopback.

The answers each session gets over its WebSocket are checked against a batch-1
StreamRunner per session (bit for bit: the pool promises that, and float32 on
the wire is the model's own dtype) and against ``model.predict`` over the
session's whole sequence (to float rounding).  Skipped without fastapi,
uvicorn or the websockets client.
"""
import asyncio
import importlib.util
import json
import pathlib
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the stream service needs fastapi (cylstm[serve])")
uvicorn = pytest.importorskip("uvicorn", reason="the stream service needs uvicorn (cylstm[serve])")
pytest.importorskip("websockets", reason="the loopback client needs the websockets library")
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

_PATH = pathlib.Path(__file__).resolve().parents[1] / "examples" / "stream_service.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("stream_service", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


svc = _load_example()
F, H = 6, 11


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """uvicorn serving ``app`` on 127.0.0.1 in a thread, for the length of a with-block."""

    def __init__(self, app):
        self.port = _free_port()
        cfg = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                             lifespan="on")
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return f"ws://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(20)
        assert not self.thread.is_alive()


def _model(seed=0):
    from cylstm.layers import LSTM, Dense
    from cylstm.models import Sequential

    return Sequential([LSTM(H, return_sequences=True, input_shape=(None, F), seed=seed),
                       LSTM(9, return_sequences=True, seed=seed + 1),
                       Dense(4, activation="softmax", seed=seed + 2)])


async def _session(url, name, x, block_at=None):
    """Send x (T, F) frame by frame (frames block_at[0]:block_at[1] as one block)."""
    out = []
    async with connect(f"{url}/stream/{name}", max_size=None) as ws:
        t = 0
        while t < len(x):
            t1 = block_at[1] if block_at and t == block_at[0] else t + 1
            await ws.send(x[t:t1].astype("<f4").tobytes())
            reply = await asyncio.wait_for(ws.recv(), 20)
            assert isinstance(reply, bytes), reply
            out.append(np.frombuffer(reply, "<f4").reshape(t1 - t, -1))
            t = t1
    return np.concatenate(out)


def _expected(model, x):
    runner = model.streamer(batch_size=1)
    return np.stack([runner.step(f).copy() for f in x])


@pytest.mark.parametrize("mode", ["pool", "pool-inline", "runner"])
def test_sessions_get_their_runner_answers_and_predict(mode):
    model = _model()
    rng = np.random.default_rng(1)
    n, T = 6, 25
    xs = [rng.standard_normal((T, F)).astype(np.float32) for _ in range(n)]
    # window 20 ms: sessions running side by side share steps (checked below)
    app = svc.create_app(model, window=0.02, mode=mode.split("-")[0], max_streams=8,
                         worker_thread=not mode.endswith("inline"))
    service = app.state.service
    with _Server(app) as url:
        async def main():
            blocks = [None, (3, 10), None, (0, 25), None, (20, 25)]
            return await asyncio.gather(*(_session(url, f"s{i}", xs[i], blocks[i])
                                          for i in range(n)))
        got = asyncio.run(main())
    for i in range(n):
        np.testing.assert_array_equal(got[i], _expected(model, xs[i]), err_msg=f"session {i}")
    want = model.predict(np.stack(xs), verbose=0)
    np.testing.assert_allclose(np.stack(got), want, rtol=1e-5, atol=1e-6)
    assert service.stats["frames"] == n * T
    assert len(service.pool) == 0 and not service.sessions  # closed sessions free their slots
    if mode != "runner":
        assert service.stats["max_batch"] > 1  # frames of several sessions in one step
        assert service.stats["steps"] < n * T
    else:
        assert service.stats["max_batch"] == 25  # the whole-block session: one run


def test_bad_messages_duplicate_and_full():
    model = _model(seed=3)
    app = svc.create_app(model, window=200e-6, max_streams=2)
    x = np.random.default_rng(2).standard_normal((4, F)).astype(np.float32)
    with _Server(app) as url:
        async def main():
            async with connect(f"{url}/stream/a") as ws:
                await ws.send(x[0].tobytes())
                y0 = np.frombuffer(await ws.recv(), "<f4")
                await ws.send(x[1].tobytes()[:-4])       # not a whole frame: refused
                err = json.loads(await ws.recv())["error"]
                await ws.send("hello")                   # text: refused
                err_text = json.loads(await ws.recv())["error"]
                await ws.send(x[1].tobytes())            # the state did not move
                y1 = np.frombuffer(await ws.recv(), "<f4")
                async with connect(f"{url}/stream/a") as dup:   # the same session twice
                    with pytest.raises(ConnectionClosed) as dup_closed:
                        await dup.recv()
                # b fills the pool; c is beyond max_streams
                async with connect(f"{url}/stream/b"), connect(f"{url}/stream/c") as third:
                    with pytest.raises(ConnectionClosed) as full_closed:
                        await third.recv()
            return y0, y1, err, err_text, dup_closed.value, full_closed.value
        y0, y1, err, err_text, dup, full = asyncio.run(main())
    want = _expected(model, x[:2])
    np.testing.assert_array_equal(np.stack([y0, y1]), want)
    assert "'a'" in err and f"T * {F} float32" in err and f"{4 * F - 4} bytes" in err
    assert "binary" in err_text
    assert dup.rcvd.code == 1008 and "already open" in dup.rcvd.reason
    assert full.rcvd.code == 1013 and "2 sessions are open" in full.rcvd.reason


def test_info_and_arguments():
    model = _model()
    service = svc.StreamService(model, window=1e-3, mode="runner", max_streams=3)
    assert service.info()["features"] == F and service.info()["units"] == 4
    with pytest.raises(ValueError, match="mode must be"):
        svc.StreamService(model, mode="thread")
    with pytest.raises(ValueError, match="window"):
        svc.StreamService(model, window=-1)
    with pytest.raises(ValueError, match="5 float32|T \\* 6"):
        service.decode("k", b"\0" * 20)
    service.shutdown()


def test_serve_load_runs_and_reports(tmp_path):
    """bench/serve_load.py end to end on a tiny model: rows for every mode and N, no timing."""
    out = tmp_path / "rows.json"
    script = _PATH.parents[1] / "bench" / "serve_load.py"
    r = subprocess.run([sys.executable, str(script), "--shapes", "4,8", "--sessions", "1", "3",
                        "--seconds", "0.3", "--frames", "50", "--warmup", "2",
                        "--json", str(out)], capture_output=True, text=True, timeout=240,
                       check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [(row["mode"], row["sessions"]) for row in rows] == [
        ("pool", 1), ("pool", 3), ("runner", 1), ("runner", 3)]
    for row in rows:
        assert row["shape"] == [4, 8]
        assert 0 < row["frames"] <= 50 * row["sessions"]
        assert row["fps"] > 0 and 0 < row["p50_us"] <= row["p99_us"]
        assert 0 <= row["wire_share"] <= 1 and row["per_step"] >= 1
    assert "pool / runner frames/s" in r.stdout
