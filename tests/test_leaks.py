"""Resident memory stays flat over long runs (issue 7).

Each test warms up (pools, caches, lazily created objects reach their steady
size), reads the resident set size, runs the long loop, and reads it again.
A leak of even a few bytes per call shows up: 100,000 steps leaking 64 bytes
each is 6 MiB.  RSS_SLACK covers allocator noise.
"""
import gc
import os

import numpy as np
import pytest

from cylstm.layers import LSTM, Dense
from cylstm.models import Sequential

pytestmark = [
    pytest.mark.skipif(not os.path.exists("/proc/self/statm"),
                       reason="reads RSS from /proc (Linux)"),
    pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                       reason="AddressSanitizer's quarantine keeps freed memory resident"),
]
RSS_SLACK = 3 * 2**20
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss():
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def small_model(stateful_units=16, I=4):
    m = Sequential([LSTM(stateful_units, input_shape=(None, I), seed=0), Dense(2)])
    m.compile(optimizer="adam", loss="mse", metrics=["mae"])
    return m


def drift(fn, n, warmup):
    fn(warmup)
    before = rss()
    fn(n)
    after = rss()
    return after - before


def test_runner_steps_do_not_leak():
    m = small_model()
    runner = m.streamer(batch_size=2)
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    out = np.empty((2, 2), np.float32)

    def run(n):
        for i in range(n):
            if i % 2:
                runner.step(x)
            else:
                runner.step(x, out=out)
            if i % 1000 == 0:
                runner.reset()
                runner.state = runner.state

    d = drift(run, 100_000, 10_000)
    print(f"runner: RSS drift over 100,000 steps: {d / 2**20:+.2f} MiB")
    assert d < RSS_SLACK


def test_predict_calls_do_not_leak():
    m = small_model()
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((b, 5, 4)).astype(np.float32) for b in (1, 3, 8)]

    def run(n):
        for i in range(n):
            m.predict(xs[i % 3], batch_size=4, verbose=0)

    d = drift(run, 10_000, 1_000)
    print(f"predict: RSS drift over 10,000 calls: {d / 2**20:+.2f} MiB")
    assert d < RSS_SLACK


def test_training_epochs_do_not_leak():
    m = small_model()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 10, 4)).astype(np.float32)
    y = rng.standard_normal((64, 2)).astype(np.float32)

    def run(n):
        m.fit(x, y, batch_size=32, epochs=n, verbose=0, validation_split=0.25)

    d = drift(run, 200, 20)
    print(f"fit: RSS drift over 200 epochs: {d / 2**20:+.2f} MiB")
    assert d < RSS_SLACK


def test_layer_calls_and_errors_do_not_leak():
    """Refused inputs raise without leaving buffers behind."""
    layer = LSTM(8, return_sequences=True)
    good = np.ones((2, 3, 4), np.float32)
    layer(good)

    def run(n):
        for _ in range(n):
            layer(good)
            for bad in (np.ones((2, 3, 5)), np.ones((2, 0, 4)), np.ones((2, 3), complex)):
                try:
                    layer(bad)
                except (ValueError, TypeError):
                    pass

    d = drift(run, 10_000, 1_000)
    print(f"layer calls + refusals: RSS drift over 10,000 rounds: {d / 2**20:+.2f} MiB")
    assert d < RSS_SLACK
