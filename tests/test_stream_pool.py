"""StreamPool (cylstm.stream) and whole-block runs, against one StreamRunner per stream.

The pool's docstring promises bit-for-bit equality with a batch-1 runner per
stream, so these tests compare with ``assert_array_equal``; the runners
themselves are checked against the NumPy float64 reference in test_stream.py
(and once here, so a pool and runners that agreed on a wrong answer fail too).
"""
import threading

import numpy as np
import pytest
from test_stream import _dense_spec, _lstm_spec, _stack_ref

from cylstm import _cpu
from cylstm.layers import LSTM, Dense, Dropout
from cylstm.models import Model, Sequential
from cylstm.stream import PoolFullError, StreamPool, StreamRunner


def _specs(rng, I=5, H1=37, H2=20, head="softmax", U=3):
    # H = 37, 20: last panels of 5 units (two vectors) and 4 (one vector wide: the
    # narrow pass); a 3-wide Dense head is one vector wide too
    return [_lstm_spec(rng, I, H1), _lstm_spec(rng, H1, H2), _dense_spec(rng, H2, U, head)]


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class _Shadow:
    """One batch-1 runner per key: what the pool must reproduce."""

    def __init__(self, specs, dtype, weights_dtype=None):
        self.specs, self.dtype, self.wd = specs, dtype, weights_dtype
        self.runners = {}

    def runner(self, key):
        if key not in self.runners:
            self.runners[key] = StreamRunner._from_specs(self.specs, 1, num_threads=1,
                                                         dtype=self.dtype,
                                                         weights_dtype=self.wd)
        return self.runners[key]

    def step(self, key, frame):
        return self.runner(key).step(np.asarray(frame, self.dtype)).copy()   # (units,)


def _random_session(pool, shadow, rng, n_keys, n_ops, F):
    keys = [f"s{i}" for i in range(n_keys)]
    n_checked = 0
    for _ in range(n_ops):
        op = rng.random()
        live = [k for k in keys if k in pool]
        if op < 0.08 and live:
            k = live[rng.integers(len(live))]
            pool.end(k)
            shadow.runners.pop(k)
            assert k not in pool
        elif op < 0.14 and live:
            k = live[rng.integers(len(live))]
            pool.reset(k)
            shadow.runner(k).reset()
        elif op < 0.2:
            k = keys[rng.integers(n_keys)]
            state = [(rng.standard_normal(s.shape[1]) * 0.5, rng.standard_normal(s.shape[1]))
                     for _, s in pool._core._slot_states]
            if rng.random() < 0.5:
                state = [(h[None], c[None]) for h, c in state]   # (1, units) also accepted
            if k not in pool and len(pool) == pool.max_streams:
                continue
            pool.start(k, state)
            shadow.runner(k).state = state
        else:
            n = int(rng.integers(1, n_keys + 1))
            chosen = [keys[i] for i in rng.choice(n_keys, n, replace=False)]
            new = [k for k in chosen if k not in pool]
            room = pool.max_streams - len(pool)
            if len(new) > room and rng.random() < 0.8:     # mostly steps that fit
                chosen = [k for k in chosen if k in pool or k in new[:room]]
                n, new = len(chosen), new[:room]
            if not chosen:
                continue
            if len(new) > room:
                with pytest.raises(PoolFullError):
                    pool.step({k: np.zeros(F) for k in chosen})
                continue
            X = rng.standard_normal((n, F))
            if rng.random() < 0.5:
                out = pool.step(dict(zip(chosen, X)))
                assert list(out) == chosen
                got = np.stack([out[k] for k in chosen])
            else:
                ks, got = pool.step((chosen, X))
                assert ks == chosen
            want = np.stack([shadow.step(k, x) for k, x in zip(chosen, X)])
            np.testing.assert_array_equal(got, want)
            n_checked += n
    for k in list(shadow.runners):
        for (h, c), (h1, c1) in zip(pool.state(k), shadow.runners[k].state):
            np.testing.assert_array_equal(h, h1[0])
            np.testing.assert_array_equal(c, c1[0])
    return n_checked


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_random_interleavings_match_runners_bit_for_bit(dtype, threads):
    rng = np.random.default_rng(7 + threads)
    specs = _specs(rng)
    pool = StreamPool._from_specs(specs, max_streams=9, num_threads=threads, dtype=dtype)
    shadow = _Shadow(specs, dtype)
    assert _random_session(pool, shadow, rng, n_keys=12, n_ops=150, F=5) > 200


@pytest.mark.parametrize("level", [lv for lv in (0, 1, 2) if lv <= _cpu.detected_level()])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_isa_variant_and_row_block_is_exact(level, dtype):
    # (16, 128) float32: full panels of 64 columns, so batches of 6+ take the six-row
    # body on AVX-512; 1..13 rows cover blocks of 6, 4, 3-as-4, 2 and 1
    rng = np.random.default_rng(level)
    specs = [_lstm_spec(rng, 16, 128, 0.2), _dense_spec(rng, 128, 7, "tanh")]
    with _cpu.forced_level(level):
        pool = StreamPool._from_specs(specs, max_streams=13, num_threads=1, dtype=dtype)
        shadow = _Shadow(specs, dtype)
        for n in list(range(1, 14)) * 2:
            X = rng.standard_normal((n, 16))
            keys = list(range(n))
            _, got = pool.step((keys, X))
            want = np.stack([shadow.step(k, x) for k, x in zip(keys, X)])
            np.testing.assert_array_equal(got, want)


def test_pool_matches_the_float64_reference():
    rng = np.random.default_rng(3)
    specs = _specs(rng)
    x = rng.standard_normal((6, 9, 5))
    pool = StreamPool._from_specs(specs, max_streams=6, dtype=np.float64)
    got = np.stack([pool.step((list(range(6)), x[:, t]))[1] for t in range(9)], axis=1)
    np.testing.assert_allclose(got, _stack_ref(specs, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("wd", ["bfloat16", "int8"])
def test_reduced_precision_pool_matches_its_runners(wd):
    rng = np.random.default_rng(11)
    specs = _specs(rng, I=8, H1=48, H2=37, head="linear", U=5)
    pool = StreamPool._from_specs(specs, max_streams=8, weights_dtype=wd)
    assert pool.weights_dtype == wd
    shadow = _Shadow(specs, np.float32, wd)
    _random_session(pool, shadow, rng, n_keys=8, n_ops=40, F=8)


def _model(dtype="float32"):
    m = Sequential([LSTM(24, return_sequences=True, input_shape=(None, 6), dtype=dtype, seed=0),
                    Dropout(0.3),
                    LSTM(18, return_sequences=True, dtype=dtype, seed=1),
                    Dense(5, activation="softmax", dtype=dtype)])
    m.build()
    return m


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_model_stream_pool_matches_predict_and_shares_the_pack(dtype):
    m = _model(dtype)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 10, 6)).astype(dtype)
    want = m.predict(x, verbose=0)
    pool = m.stream_pool(max_streams=4)
    assert pool._pack is m.streamer()._shared_pack     # one packed copy per model
    assert pool.input_shape == (6,) and pool.output_shape == (5,)
    assert pool.dtype == np.dtype(dtype)
    # stream 0 sent as a block, streams 1-3 step by step in changing subsets
    got = np.zeros_like(want)
    got[0] = pool.run("a", x[0])
    for t in range(10):
        out = pool.step({1: x[1, t], 2: x[2, t]})
        got[1, t], got[2, t] = out[1], out[2]
        got[3, t] = pool.step(([3], x[3, t][None]))[1][0]
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == "float32" else {"rtol": 1e-12, "atol": 1e-13}
    np.testing.assert_allclose(got, want, **tol)


def test_functional_chain_stream_pool():
    from cylstm import layers as L

    inp = L.Input(shape=(None, 3))
    chain = Model(inp, Dense(2)(LSTM(4, seed=1)(LSTM(5, return_sequences=True, seed=2)(inp))))
    x = np.random.default_rng(14).standard_normal((2, 6, 3)).astype(np.float32)
    pool = chain.stream_pool(max_streams=2)
    for t in range(6):
        _, y = pool.step(([0, 1], x[:, t]))
    np.testing.assert_allclose(y, chain.predict(x, verbose=0), rtol=1e-4, atol=1e-5)
    two = Model(inp, [Dense(1)(LSTM(2)(inp)), Dense(1)(LSTM(2)(inp))])
    with pytest.raises(ValueError, match="chain of layers"):
        two.stream_pool()


# ---------------------------------------------------------------------------------------
# whole blocks

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B", [1, 3])
def test_runner_run_equals_step_by_step(dtype, B):
    rng = np.random.default_rng(B)
    specs = _specs(rng)
    r1 = StreamRunner._from_specs(specs, B, dtype=dtype)
    r2 = StreamRunner._from_specs(specs, B, dtype=dtype)
    x = rng.standard_normal((40, B, 5))
    for part in (x[:17], x[17:18], x[18:18], x[18:]):     # the state carries across calls
        block = part[:, 0] if B == 1 else part
        got = r1.run(block)
        assert got.shape == ((len(part), 3) if B == 1 else (len(part), B, 3))
        want = [r2.step(p.astype(dtype)).copy() for p in part]
        want = np.array(want).reshape(got.shape)
        np.testing.assert_array_equal(got, want)
    for (h, c), (h2, c2) in zip(r1.state, r2.state):
        np.testing.assert_array_equal(h, h2)
        np.testing.assert_array_equal(c, c2)
    out = np.empty((5, 3) if B == 1 else (5, B, 3), dtype)
    assert r1.run(x[:5, 0] if B == 1 else x[:5], out=out) is out


def test_runner_run_bad_input():
    r = StreamRunner._from_specs(_specs(np.random.default_rng(0)), 1)
    with pytest.raises(ValueError, match=r"\(T, 5\).*got shape \(4, 6\)"):
        r.run(np.zeros((4, 6)))
    with pytest.raises(TypeError, match="real numeric"):
        r.run(np.zeros((4, 5), complex))
    with pytest.raises(ValueError, match="out must have shape"):
        r.run(np.zeros((4, 5)), out=np.zeros((3, 3), np.float32))
    with pytest.raises(TypeError, match="dtype"):
        r.run(np.zeros((4, 5)), out=np.zeros((4, 3), np.float64))


def test_pool_run_equals_steps_and_mixes_with_step():
    rng = np.random.default_rng(5)
    specs = _specs(rng)
    pool = StreamPool._from_specs(specs, max_streams=3)
    shadow = _Shadow(specs, np.float32)
    x = rng.standard_normal((30, 5))
    got = np.concatenate([pool.run("k", x[:12]),
                          pool.step({"k": x[12], "other": x[0]})["k"][None],
                          pool.run("k", x[13:])])
    want = np.stack([shadow.step("k", f) for f in x])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(pool.step({"other": x[1]})["other"],
                                  np.stack([shadow.step("o", f) for f in x[:2]])[1])
    with pytest.raises(ValueError, match=r"key 'k'.*\(T, 5\).*got shape \(4,\)"):
        pool.run("k", np.zeros(4))


# ---------------------------------------------------------------------------------------
# threads

def test_eight_threads_on_disjoint_keys_match_runners():
    rng = np.random.default_rng(8)
    specs = _specs(rng)
    pool = StreamPool._from_specs(specs, max_streams=32)
    x = rng.standard_normal((8, 3, 60, 5))         # thread, key, time, features
    got = np.zeros((8, 3, 60, 3), np.float32)
    errors = []
    barrier = threading.Barrier(8)

    def work(t):
        try:
            barrier.wait()
            keys = [(t, j) for j in range(3)]
            for i in range(60):
                if i % 10 == 9:
                    got[t, 0, i] = pool.run(keys[0], x[t, 0, i:i + 1])[0]
                    out = pool.step({k: x[t, j, i] for j, k in enumerate(keys) if j})
                    for j in (1, 2):
                        got[t, j, i] = out[keys[j]]
                else:
                    _, y = pool.step((keys, x[t, :, i]))
                    got[t, :, i] = y
        except Exception as e:  # noqa: BLE001 -- reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert len(pool) == 24
    shadow = _Shadow(specs, np.float32)
    for t in range(8):
        for j in range(3):
            want = np.stack([shadow.step((t, j), f) for f in x[t, j]])
            np.testing.assert_array_equal(got[t, j], want)


# ---------------------------------------------------------------------------------------
# eviction

def test_idle_streams_are_evicted_by_the_injected_clock():
    rng = np.random.default_rng(2)
    clock = _Clock()
    pool = StreamPool._from_specs(_specs(rng), max_streams=2, idle_timeout=10, clock=clock)
    f = np.ones(5)
    pool.step({"a": f, "b": f})
    clock.t = 6
    pool.step({"a": f})                 # a used at 6, b last at 0
    clock.t = 10
    assert len(pool) == 2 and "b" in pool        # exactly 10 s idle: not past the timeout
    clock.t = 10.5
    assert "b" not in pool and pool.keys() == ["a"]
    with pytest.raises(KeyError, match="'b'"):
        pool.reset("b")
    pool.step({"c": f})                 # the freed slot serves a new stream
    clock.t = 16.5
    assert pool.keys() == ["c"]         # a idle 10.5 s
    # a key back after eviction starts from zero, as a new key does
    fresh = StreamPool._from_specs(_specs(np.random.default_rng(2)), max_streams=1)
    np.testing.assert_array_equal(pool.step({"a": f})["a"], fresh.step({"z": f})["z"])


def test_no_eviction_without_a_timeout():
    clock = _Clock()
    pool = StreamPool._from_specs(_specs(np.random.default_rng(2)), max_streams=1, clock=clock)
    pool.step({"a": np.ones(5)})
    clock.t = 1e9
    assert "a" in pool
    with pytest.raises(PoolFullError, match="1 stream"):
        pool.step({"b": np.ones(5)})


# ---------------------------------------------------------------------------------------
# bad input

def _states(pool):
    return {k: [tuple(a.copy() for a in p) for p in pool.state(k)] for k in pool.keys()}  # noqa: SIM118 -- a list, not a dict


def _assert_same(before, after):
    assert list(before) == list(after)
    for k in before:
        for p, q in zip(before[k], after[k]):
            for a, b in zip(p, q):
                np.testing.assert_array_equal(a, b)


def test_bad_frames_change_nothing():
    rng = np.random.default_rng(4)
    pool = StreamPool._from_specs(_specs(rng), max_streams=4)
    pool.step({"a": rng.standard_normal(5), "b": rng.standard_normal(5)})
    before = _states(pool)
    good = rng.standard_normal(5)
    cases = [
        ({"a": good, "b": np.zeros(4)}, ValueError, r"key 'b'.*\(5,\).*got shape \(4,\)"),
        ({"new": good, "b": np.zeros((1, 5))}, ValueError, r"key 'b'.*got shape \(1, 5\)"),
        ({"a": good, "b": np.zeros(5, complex)}, ValueError, "key 'b'.*dtype complex128"),
        ({"a": good, ("t", 1): np.array(["x"] * 5)}, ValueError, r"key \('t', 1\).*dtype"),
        ({"a": good, "b": None}, ValueError, "key 'b'"),
        ((["a", "new"], np.zeros((3, 5))), ValueError, r"\(2, 5\).*got shape \(3, 5\)"),
        ((["a", "a"], np.zeros((2, 5))), ValueError, "key 'a' is named twice"),
        ((["a", "b"], np.zeros((2, 5), complex)), ValueError, "dtype complex"),
        ([("a", good)], TypeError, "dict"),
        (("a", good), TypeError, "keys must be a sequence"),
    ]
    for frames, exc, match in cases:
        with pytest.raises(exc, match=match):
            pool.step(frames)
        _assert_same(before, _states(pool))
    assert "new" not in pool and len(pool) == 2


def test_pool_full_is_all_or_nothing_and_says_how_many_are_live():
    rng = np.random.default_rng(6)
    pool = StreamPool._from_specs(_specs(rng), max_streams=3)
    pool.step({"a": np.ones(5), "b": np.ones(5)})
    before = _states(pool)
    with pytest.raises(PoolFullError, match=r"2 stream\(s\) live of max_streams=3.*2 new"):
        pool.step({"a": np.ones(5), "c": np.ones(5), "d": np.ones(5)})
    _assert_same(before, _states(pool))
    with pytest.raises(PoolFullError):
        pool.start("c")
        pool.start("d")
    assert len(pool) == 3
    pool.end("c")
    pool.step({"d": np.ones(5)})
    assert sorted(pool.keys()) == ["a", "b", "d"]


def test_unknown_keys_and_bad_states():
    pool = StreamPool._from_specs(_specs(np.random.default_rng(1)), max_streams=2)
    for fn in (pool.end, pool.reset, pool.state):
        with pytest.raises(KeyError, match="'ghost'"):
            fn("ghost")
    with pytest.raises(ValueError, match=r"key 'k'.*2 \(h, c\) pair"):
        pool.start("k", [(np.zeros(37), np.zeros(37))])
    with pytest.raises(ValueError, match=r"initial_state\[1\] c for key 'k'.*\(20,\)"):
        pool.start("k", [(np.zeros(37), np.zeros(37)), (np.zeros(20), np.zeros(21))])
    with pytest.raises(TypeError, match="real array"):
        pool.start("k", [(np.zeros(37), np.zeros(37, complex)), (np.zeros(20),) * 2])
    with pytest.raises(TypeError):
        pool.start(["unhashable"])
    assert len(pool) == 0
    with pytest.raises(TypeError, match="max_streams"):
        StreamPool._from_specs(_specs(np.random.default_rng(1)), max_streams=2.0)
    with pytest.raises(ValueError, match="max_streams"):
        StreamPool._from_specs(_specs(np.random.default_rng(1)), max_streams=0)
    with pytest.raises(ValueError, match="idle_timeout"):
        StreamPool._from_specs(_specs(np.random.default_rng(1)), idle_timeout=-1)


def test_start_reset_end_and_state_layout():
    rng = np.random.default_rng(9)
    specs = _specs(rng)
    pool = StreamPool._from_specs(specs, max_streams=2)
    r = StreamRunner._from_specs(specs, 1)
    state = [(rng.standard_normal(37), rng.standard_normal(37)),
             (rng.standard_normal(20), rng.standard_normal(20))]
    pool.start(None, state)                        # any hashable, None included
    r.state = state
    f = rng.standard_normal(5)
    np.testing.assert_array_equal(pool.step({None: f})[None], r.step(f.astype(np.float32)))
    pool.reset(None)
    assert all(not h.any() and not c.any() for h, c in pool.state(None))
    pool.start(None, state)                        # restart a live key with a state
    np.testing.assert_array_equal(pool.state(None)[1][0], state[1][0].astype(np.float32))
    pool.end(None)
    assert None not in pool and len(pool) == 0
    assert pool.step({}) == {}
    ks, y = pool.step(([], np.zeros((0, 5))))
    assert ks == [] and y.shape == (0, 3)


def test_nan_and_inf_stay_in_their_stream():
    rng = np.random.default_rng(10)
    specs = _specs(rng)
    pool = StreamPool._from_specs(specs, max_streams=6)
    shadow = _Shadow(specs, np.float32)
    x = rng.standard_normal((6, 5))
    x[2, 1] = np.nan
    x[4, 0] = np.inf
    for _ in range(3):
        _, y = pool.step((list(range(6)), x))
        want = np.stack([shadow.step(k, f) for k, f in enumerate(x)])
        np.testing.assert_array_equal(y, want)
    assert np.isnan(y[2]).all() and np.isfinite(y[[0, 1, 3, 5]]).all()
