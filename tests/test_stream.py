"""The streaming runner (cylstm.stream) against independent NumPy float64 references.

Step by step against tests/reference.py's LSTM, against model.predict on the
same sequence, state handling, threads, bad input and allocation on the hot path.
"""
import itertools
import threading
import time
import tracemalloc

import numpy as np
import pytest
from isa_levels import LEVELS
from reference import bf16_round, int8_round, int16_rows, lstm_ref

from cylstm import _cpu, stream
from cylstm.layers import LSTM, Dense, Dropout
from cylstm.models import Sequential
from cylstm.stream import StreamRunner

TOL = {np.float32: {"rtol": 2e-5, "atol": 2e-5}, np.float64: {"rtol": 1e-10, "atol": 1e-12}}


def _lstm_spec(rng, I, H, scale=0.4):
    return {"type": "lstm", "kernel": rng.uniform(-scale, scale, (I, 4 * H)),
            "recurrent_kernel": rng.uniform(-scale, scale, (H, 4 * H)),
            "bias": rng.uniform(-0.2, 0.2, 4 * H)}


def _dense_spec(rng, I, U, act):
    return {"type": "dense", "kernel": rng.uniform(-0.5, 0.5, (I, U)),
            "bias": rng.uniform(-0.2, 0.2, U), "activation": act}


def _act_ref(z, act):
    if act == "linear":
        return z
    if act == "relu":
        return np.maximum(z, 0)
    if act == "tanh":
        return np.tanh(z)
    if act == "sigmoid":
        return 1 / (1 + np.exp(-z))
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _stack_ref(specs, x):
    """float64 reference of the whole stack on a sequence x (B, T, I): (B, T, out)."""
    y = np.asarray(x, np.float64)
    for s in specs:
        if s["type"] == "lstm":
            y = lstm_ref(y, s["kernel"], s["recurrent_kernel"], s["bias"])[0]
        else:
            y = _act_ref(y @ s["kernel"] + s["bias"], s["activation"])
    return y


def _int8_stack_ref(specs, x):
    """The stack as the int8 runner computes it, in float64: int8 weights
    (int8_round), and every row the products read -- x_t and h_prev of each LSTM,
    the input of each Dense -- quantized to int16 (int16_rows, for sums of max(I, H)
    or K terms rounded up to even)."""
    y = np.asarray(x, np.float64)
    even = lambda n: n + n % 2   # noqa: E731
    for s in specs:
        W = int8_round(s["kernel"])
        b = np.asarray(s["bias"], np.float32).astype(np.float64)
        if s["type"] == "lstm":
            I, H = W.shape[0], W.shape[1] // 4
            k2 = max(even(I), even(H))
            y = lstm_ref(int16_rows(y, k2), W, int8_round(s["recurrent_kernel"]), b,
                         hround=lambda hr, n, t, k2=k2: int16_rows(hr, k2))[0]
        else:
            y = _act_ref(int16_rows(y, even(W.shape[0])) @ W + b, s["activation"])
    return y


def _run(runner, x):
    return np.stack([runner.step(x[:, t]).copy() for t in range(x.shape[1])], axis=1)


# ---------------------------------------------------------------------------------------
# against the NumPy reference

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("I,H", [(5, 16), (7, 20), (3, 37), (33, 48)])
@pytest.mark.parametrize("threads", [1, 2])
def test_one_layer_matches_reference(dtype, I, H, threads):
    # H = 20, 37: a last panel narrower than the others (4 units: one vector wide, the
    # narrow pass; 5 units: two vectors), zero padded
    rng = np.random.default_rng(I * 100 + H)
    specs = [_lstm_spec(rng, I, H)]
    x = rng.standard_normal((1, 12, I))
    r = StreamRunner._from_specs(specs, 1, num_threads=threads, dtype=dtype)
    assert r.num_threads == min(threads, -(-H // (16 if dtype == np.float32 else 8)))
    got = _run(r, x.astype(dtype))
    assert got.dtype == dtype
    np.testing.assert_allclose(got, _stack_ref(specs, x), **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B", [2, 3, 5, 6])  # kernel row blocks: 2, 4 (one repeated), 4+1, 4+2
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("path", ["kernel", "blas"])
def test_batches_match_reference(dtype, B, threads, path, monkeypatch):
    # batches of BLAS_MIN_BATCH rows and more take the BLAS path per panel
    monkeypatch.setattr(stream, "BLAS_MIN_BATCH", 1 if path == "blas" else 10**9)
    rng = np.random.default_rng(B)
    specs = [_lstm_spec(rng, 6, 21), _lstm_spec(rng, 21, 19), _dense_spec(rng, 19, 3, "tanh")]
    x = rng.standard_normal((B, 8, 6))
    r = StreamRunner._from_specs(specs, B, num_threads=threads, dtype=dtype)
    np.testing.assert_allclose(_run(r, x.astype(dtype)), _stack_ref(specs, x), **TOL[dtype])


@pytest.mark.parametrize("act", ["linear", "relu", "tanh", "sigmoid", "softmax"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dense_heads(act, dtype):
    # two Dense layers: one wider than a panel (70 > 64 columns), then the head
    rng = np.random.default_rng(7)
    specs = [_lstm_spec(rng, 4, 30), _dense_spec(rng, 30, 70, "relu"),
             _dense_spec(rng, 70, 11, act)]
    x = rng.standard_normal((2, 6, 4))
    for threads in (1, 2):
        r = StreamRunner._from_specs(specs, 2, num_threads=threads, dtype=dtype)
        got = _run(r, x.astype(dtype))
        np.testing.assert_allclose(got, _stack_ref(specs, x), **TOL[dtype])
    if act == "softmax":
        np.testing.assert_allclose(got.sum(-1), 1, rtol=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
def test_dense_between_lstms(threads):
    # a time-distributed Dense between two LSTMs runs inside the threaded part
    rng = np.random.default_rng(4)
    specs = [_lstm_spec(rng, 5, 40), _dense_spec(rng, 40, 90, "softmax"),
             _lstm_spec(rng, 90, 33), _dense_spec(rng, 33, 2, "sigmoid")]
    x = rng.standard_normal((1, 7, 5))
    r = StreamRunner._from_specs(specs, 1, num_threads=threads)
    np.testing.assert_allclose(_run(r, x.astype(np.float32)), _stack_ref(specs, x),
                               rtol=2e-5, atol=2e-5)


def test_an_openmp_thread_limit_leaves_every_panel_computed():
    # OMP_THREAD_LIMIT=1 (regression: when steps split their panels over an OpenMP
    # team, half of them were skipped with a team smaller than asked for; steps now
    # run on cylstm's worker pool, which the limit does not bind)
    import os
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from cylstm.stream import StreamRunner\n"
        "rng = np.random.default_rng(0)\n"
        "s = [dict(type='lstm', kernel=rng.uniform(-.5, .5, (6, 256)),\n"
        "          recurrent_kernel=rng.uniform(-.5, .5, (64, 256)), bias=None)]\n"
        "x = rng.standard_normal((1, 6)).astype(np.float32)\n"
        "a = StreamRunner._from_specs(s, 1, num_threads=2)\n"
        "b = StreamRunner._from_specs(s, 1, num_threads=1)\n"
        "assert a.num_threads == 2\n"
        "for _ in range(3):\n"
        "    assert np.array_equal(a.step(x), b.step(x))\n"
        "print('ok')\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, OMP_THREAD_LIMIT="1",
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    import cylstm

    cwd = os.path.dirname(os.path.dirname(os.path.abspath(cylstm.__file__)))
    res = subprocess.run([sys.executable, "-c", code], check=False, env=env, cwd=cwd,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]


def test_threads_give_bitwise_serial_results():
    rng = np.random.default_rng(3)
    specs = [_lstm_spec(rng, 10, 70), _lstm_spec(rng, 70, 40), _dense_spec(rng, 40, 2, "linear")]
    x = rng.standard_normal((1, 20, 10)).astype(np.float32)
    a = _run(StreamRunner._from_specs(specs, 1, num_threads=1), x)
    b = _run(StreamRunner._from_specs(specs, 1, num_threads=2), x)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("wd,rounded_to,bound", [("bfloat16", bf16_round, 2e-2),
                                                 ("int8", int8_round, 3e-2)])
@pytest.mark.parametrize("H", [20, 24, 37, 80])
@pytest.mark.parametrize("threads", [1, 2])
def test_reduced_precision_weights(wd, rounded_to, bound, H, threads):
    # H = 20, 24, 37: last panels of 16, 32 and 32 columns, zero padded (bf16's
    # interleaved groups and plain last 16; int8's groups of 8)
    rng = np.random.default_rng(H)
    specs = [_lstm_spec(rng, 7, H), _dense_spec(rng, H, 70, "tanh")]
    specs[0]["kernel"][:, 3] = 0   # an all-zero column (int8: scale 1, every q 0)
    x = rng.standard_normal((2, 9, 7))
    r = StreamRunner._from_specs(specs, 2, num_threads=threads, weights_dtype=wd)
    assert r.weights_dtype == wd
    got = _run(r, x.astype(np.float32))
    # exactly the model whose weights are the rounded ones (biases stay float32), and
    # for int8 whose products read int16 rows
    rounded = [dict(s, kernel=rounded_to(s["kernel"]),
                    **({"recurrent_kernel": rounded_to(s["recurrent_kernel"])}
                       if s["type"] == "lstm" else {}),
                    bias=np.asarray(s["bias"], np.float32).astype(np.float64))
               for s in specs]
    want = _stack_ref(rounded, x) if wd == "bfloat16" else _int8_stack_ref(specs, x)
    # (int8: a row of h_prev whose float64 and float32 values fall either side of an
    # int16 rounding boundary moves by one quantum, max|h| / 32767)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=5e-5)
    # and within the reduced precision of the float32 model
    err = np.abs(got - _stack_ref(specs, x)).max()
    assert 0 < err < bound


@pytest.mark.parametrize("wd", [None, "bfloat16", "int8"])
def test_a_nan_input_gives_nan_outputs_at_every_weights_dtype(wd):
    """A NaN in a step's input reaches the outputs, as in float32: the int8 kernel's
    quantized row must not turn it into a finite answer."""
    rng = np.random.default_rng(5)
    specs = [_lstm_spec(rng, 6, 20), _dense_spec(rng, 20, 3, "linear")]
    r = StreamRunner._from_specs(specs, 2, weights_dtype=wd)
    x = rng.standard_normal((2, 6)).astype(np.float32)
    x[1, 2] = np.nan
    y = r.step(x)
    assert np.isnan(y[1]).all() and np.isfinite(y[0]).all()


def test_int8_runner_steps_batch_rows_as_alone():
    # a batch's rows (groups of four, a last one alone) give each row's batch-1 result
    rng = np.random.default_rng(5)
    specs = [_lstm_spec(rng, 9, 37), _dense_spec(rng, 37, 3, "linear")]
    x = rng.standard_normal((5, 6, 9)).astype(np.float32)
    got = _run(StreamRunner._from_specs(specs, 5, weights_dtype="int8"), x)
    for b in range(5):
        one = _run(StreamRunner._from_specs(specs, 1, weights_dtype="int8"), x[b:b + 1])
        np.testing.assert_allclose(got[b:b + 1], one, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("H", [20, 37, 64])
def test_bf16_runner_steps_batch_rows_as_alone(level, H):
    # rows in blocks (4 a weight load on AVX-512, 2 on AVX2, the rest one at a time)
    # give each row's batch-1 bits, last plain 16 columns and odd widths included
    rng = np.random.default_rng(H)
    specs = [_lstm_spec(rng, 9, H), _dense_spec(rng, H, 3, "linear")]
    x = rng.standard_normal((7, 5, 9)).astype(np.float32)
    with _cpu.forced_level(level):
        got = _run(StreamRunner._from_specs(specs, 7, weights_dtype="bfloat16"), x)
        for b in range(7):
            one = _run(StreamRunner._from_specs(specs, 1, weights_dtype="bfloat16"),
                       x[b:b + 1])
            np.testing.assert_array_equal(got[b:b + 1], one)


@pytest.mark.parametrize("level", LEVELS)
def test_runner_rows_in_k_blocks_keep_their_bits(level):
    # a batch of 13 rows reads each panel in 3 passes: K blocks of 16 k rows
    # (include/cylstm_panel.h, cyl_panel_kblock) give the whole panels' bits
    rng = np.random.default_rng(13)
    specs = [_lstm_spec(rng, 40, 48), _lstm_spec(rng, 48, 32), _dense_spec(rng, 32, 3, "linear")]
    x = rng.standard_normal((13, 4, 40)).astype(np.float32)
    with _cpu.forced_level(level):
        with _cpu.panel_kblock(0):
            whole = _run(StreamRunner._from_specs(specs, 13), x)
        with _cpu.panel_kblock(1024):
            blocked = _run(StreamRunner._from_specs(specs, 13), x)
    np.testing.assert_array_equal(blocked, whole)
    one = _run(StreamRunner._from_specs(specs, 1), x[4:5])
    np.testing.assert_allclose(blocked[4:5], one, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("wd", ["bfloat16", "int8"])
def test_reduced_weights_need_float32(wd):
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match="float32 model"):
        StreamRunner._from_specs([_lstm_spec(rng, 3, 4)], dtype=np.float64, weights_dtype=wd)
    with pytest.raises(ValueError, match="weights_dtype must be"):
        StreamRunner._from_specs([_lstm_spec(rng, 3, 4)], weights_dtype="int4")


def test_matches_torch_lstm_cells_step_by_step():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    cells = [torch.nn.LSTMCell(6, 20), torch.nn.LSTMCell(20, 9)]
    head = torch.nn.Linear(9, 3)
    # PyTorch's gate order i, f, g, o is Keras's i, f, c, o; weights transpose
    specs = [{"type": "lstm", "kernel": c.weight_ih.detach().numpy().T,
              "recurrent_kernel": c.weight_hh.detach().numpy().T,
              "bias": (c.bias_ih + c.bias_hh).detach().numpy()} for c in cells]
    specs.append({"type": "dense", "kernel": head.weight.detach().numpy().T,
                  "bias": head.bias.detach().numpy(), "activation": "linear"})
    r = StreamRunner._from_specs(specs, 2)
    x = np.random.default_rng(0).standard_normal((2, 15, 6)).astype(np.float32)
    state = [(torch.zeros(2, c.hidden_size), torch.zeros(2, c.hidden_size)) for c in cells]
    with torch.no_grad():
        for t in range(15):
            v = torch.from_numpy(x[:, t])
            for k, c in enumerate(cells):
                state[k] = c(v, state[k])
                v = state[k][0]
            np.testing.assert_allclose(r.step(x[:, t]), head(v).numpy(), rtol=1e-5, atol=1e-6)
    for (h, c), (th, tc) in zip(r.state, state):
        np.testing.assert_allclose(h, th.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(c, tc.numpy(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------
# against the model

def _model(dtype="float32", seed=0):
    m = Sequential([LSTM(24, return_sequences=True, input_shape=(None, 6), dtype=dtype, seed=seed),
                    Dropout(0.3),
                    LSTM(18, return_sequences=True, dtype=dtype, seed=seed + 1),
                    Dense(5, activation="softmax", dtype=dtype)])
    m.build()
    return m


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_runner_matches_predict(dtype):
    m = _model(dtype)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 11, 6)).astype(dtype)
    want = m.predict(x, verbose=0)
    r = m.streamer(batch_size=3)
    assert r.dtype == np.dtype(dtype) and r.output_shape == (3, 5)
    got = _run(r, x)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == "float32" else {"rtol": 1e-12, "atol": 1e-13}
    np.testing.assert_allclose(got, want, **tol)


def test_last_lstm_without_sequences_matches_predict():
    m = Sequential([LSTM(12, input_shape=(None, 3), seed=4)])
    x = np.random.default_rng(1).standard_normal((2, 9, 3)).astype(np.float32)
    want = m.predict(x, verbose=0)          # the final h
    r = m.streamer(batch_size=2)
    for t in range(9):
        y = r.step(x[:, t])
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)


def test_weights_are_shared_and_snapshotted():
    m = _model()
    r1, r2 = m.streamer(), m.streamer()
    assert r1._shared_pack is r2._shared_pack            # one packed copy per model
    x = np.random.default_rng(2).standard_normal((1, 4, 6)).astype(np.float32)
    before = _run(r1, x)
    w = m.get_weights()
    m.set_weights([a * 0.5 for a in w])
    r3 = m.streamer()
    assert r3._shared_pack is not r1._shared_pack         # new weights: repacked
    r1.reset()
    np.testing.assert_array_equal(_run(r1, x), before)    # old runner: old weights
    np.testing.assert_allclose(_run(r3, x), m.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_unsupported_layers_are_refused():
    from cylstm.layers import Bidirectional

    m = Sequential([LSTM(4, go_backwards=True, input_shape=(None, 3))])
    with pytest.raises(ValueError, match="go_backwards"):
        m.streamer()
    m = Sequential([Bidirectional(LSTM(4), input_shape=(None, 3))])
    with pytest.raises(ValueError, match="bidirectional"):
        m.streamer()


# ---------------------------------------------------------------------------------------
# state, out=, bad input

def test_state_get_set_reset():
    rng = np.random.default_rng(5)
    specs = [_lstm_spec(rng, 4, 9), _lstm_spec(rng, 9, 7)]
    x = rng.standard_normal((2, 10, 4)).astype(np.float32)
    r = StreamRunner._from_specs(specs, 2)
    full = _run(r, x)
    r.reset()
    _run(r, x[:, :6])
    saved = r.state
    assert [tuple(a.shape for a in p) for p in saved] == [((2, 9), (2, 9)), ((2, 7), (2, 7))]
    # the final state of the first layer is the reference's
    _, h, c, _ = lstm_ref(x[:, :6], *(specs[0][k] for k in ("kernel", "recurrent_kernel", "bias")))
    np.testing.assert_allclose(saved[0][0], h, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(saved[0][1], c, rtol=2e-5, atol=2e-5)
    rest = _run(r, x[:, 6:])
    np.testing.assert_array_equal(rest, full[:, 6:])
    r.reset()
    assert all(not a.any() for p in r.state for a in p)
    r.state = saved                                   # resume from the saved point
    np.testing.assert_array_equal(_run(r, x[:, 6:]), full[:, 6:])
    saved[0][0][:] = 99                               # copies: the runner is unaffected
    r.state = None
    assert all(not a.any() for p in r.state for a in p)


def test_initial_state_matches_reference():
    rng = np.random.default_rng(8)
    s = _lstm_spec(rng, 3, 5)
    x = rng.standard_normal((1, 5, 3))
    h0, c0 = rng.standard_normal((1, 5)), rng.standard_normal((1, 5))
    r = StreamRunner._from_specs([s], 1, dtype=np.float64)
    r.state = [(h0[0], c0[0])]                        # (H,) accepted at batch size 1
    want = lstm_ref(x, s["kernel"], s["recurrent_kernel"], s["bias"], h0=h0, c0=c0)[0]
    np.testing.assert_allclose(_run(r, x), want, rtol=1e-12, atol=1e-13)


def test_out_buffer_and_returned_view():
    rng = np.random.default_rng(6)
    specs = [_lstm_spec(rng, 3, 8), _dense_spec(rng, 8, 2, "linear")]
    r = StreamRunner._from_specs(specs, 1)
    x = rng.standard_normal((1, 3)).astype(np.float32)
    y1 = r.step(x)
    keep = y1.copy()
    y2 = r.step(x)
    assert y2 is y1                                    # the runner's buffer, overwritten
    r.reset()
    buf = np.full((1, 2), np.nan, np.float32)
    assert r.step(x, out=buf) is buf
    np.testing.assert_array_equal(buf, keep)
    # 1-D input at batch size 1 gives a 1-D output
    r.reset()
    y = r.step(x[0])
    assert y.shape == (2,)
    np.testing.assert_array_equal(y, keep[0])


def test_bad_input_is_refused_and_runner_still_works():
    rng = np.random.default_rng(9)
    specs = [_lstm_spec(rng, 4, 6), _dense_spec(rng, 6, 3, "linear")]
    x = rng.standard_normal((2, 5, 4)).astype(np.float32)
    want = _run(StreamRunner._from_specs(specs, 2), x)
    r = StreamRunner._from_specs(specs, 2)
    got = []
    for t in range(5):
        with pytest.raises(ValueError, match=r"x_t must have shape \(2, 4\).*got shape \(2, 5\)"):
            r.step(np.zeros((2, 5), np.float32))
        with pytest.raises(ValueError, match="x_t must have shape"):
            r.step(np.zeros((4,), np.float32))         # 1-D only at batch size 1
        with pytest.raises(TypeError, match="real numeric"):
            r.step(np.zeros((2, 4), np.complex64))
        with pytest.raises(TypeError, match="out must have dtype float32"):
            r.step(x[:, t], out=np.zeros((2, 3)))
        with pytest.raises(ValueError, match=r"out must have shape \(2, 3\)"):
            r.step(x[:, t], out=np.zeros((3, 2), np.float32))
        with pytest.raises(ValueError, match="C-contiguous"):
            r.step(x[:, t], out=np.zeros((3, 2), np.float32).T)
        with pytest.raises(ValueError, match="state must hold 1"):
            r.state = [(np.zeros((2, 6)), np.zeros((2, 6)))] * 2
        with pytest.raises(ValueError, match=r"state\[0\] c must have shape \(2, 6\)"):
            r.state = [(np.zeros((2, 6)), np.zeros((2, 7)))]
        got.append(r.step(x[:, t]).copy())
    np.testing.assert_array_equal(np.stack(got, 1), want)


def test_inputs_are_cast_documented():
    # float64 (NumPy's default), lists, strided views: cast/copied, same result
    rng = np.random.default_rng(10)
    specs = [_lstm_spec(rng, 4, 6)]
    x = rng.standard_normal((1, 4))
    a = StreamRunner._from_specs(specs, 1)
    b = StreamRunner._from_specs(specs, 1)
    ya = a.step(x.astype(np.float32)).copy()
    np.testing.assert_array_equal(b.step(x), ya)
    a.reset(), b.reset()
    wide = np.zeros((1, 8), np.float32)
    wide[:, ::2] = x
    np.testing.assert_array_equal(b.step(wide[:, ::2]), a.step(wide[:, ::2].copy()))
    a.reset(), b.reset()
    np.testing.assert_array_equal(b.step(x.tolist()), a.step(x.astype(np.float32)))


def test_bad_specs_and_arguments():
    rng = np.random.default_rng(11)
    with pytest.raises(ValueError, match="expects 5 input features"):
        StreamRunner._from_specs([_lstm_spec(rng, 3, 4), _lstm_spec(rng, 5, 4)])
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        StreamRunner._from_specs([_lstm_spec(rng, 3, 4)], 0)
    with pytest.raises(TypeError, match="batch_size must be an int"):
        StreamRunner._from_specs([_lstm_spec(rng, 3, 4)], 1.5)
    with pytest.raises(ValueError, match="activation"):
        StreamRunner._from_specs([_dense_spec(rng, 3, 4, "gelu")])


# ---------------------------------------------------------------------------------------
# threads and allocation

# Steps on several threads run on the worker pool (include/cylstm_pool.h): each
# phase's panels (a layer's, then a softmax's normalization) go to whichever thread
# claims them.  These stacks cross every kind of phase hand-over.
_POOLED_STACKS = {
    "lstm-softmax-lstm-head": lambda rng: [_lstm_spec(rng, 5, 40),
                                           _dense_spec(rng, 40, 90, "softmax"),
                                           _lstm_spec(rng, 90, 33),
                                           _dense_spec(rng, 33, 2, "sigmoid")],
    "lstm-lstm-softmax-head": lambda rng: [_lstm_spec(rng, 7, 70), _lstm_spec(rng, 70, 37),
                                           _dense_spec(rng, 37, 5, "softmax")],
    "wide-dense-last": lambda rng: [_lstm_spec(rng, 3, 20), _dense_spec(rng, 20, 130, "relu")],
    # I >= H: an int8 first layer's run() projects x_t for the block (_project)
    "wide-input": lambda rng: [_lstm_spec(rng, 40, 36), _lstm_spec(rng, 36, 20)],
}


@pytest.fixture(params=[0, 50_000], ids=["workers-sleep", "workers-spin"])
def pooled_steps(request, monkeypatch):
    """Every pooled step wakes the workers (no small-step rule, no back-off), which
    sleep between steps or spin."""
    from cylstm import _lstm, _tuning

    monkeypatch.setattr(_tuning, "POOL_WAKE_MIN_BYTES", 0)
    _lstm.set_pool_backoff_ns(0)
    _lstm.set_pool_spin_ns(request.param)
    yield request.param
    _lstm.set_pool_spin_ns(_tuning.POOL_SPIN_NS)
    _lstm.set_pool_backoff_ns(_tuning.POOL_BACKOFF_NS)


@pytest.mark.parametrize("stack", sorted(_POOLED_STACKS))
@pytest.mark.parametrize("dtype,wd,B,path", [
    (np.float32, None, 1, "kernel"), (np.float64, None, 3, "kernel"),
    (np.float32, "int8", 2, "kernel"), (np.float32, "bfloat16", 1, "kernel"),
    (np.float32, None, 3, "blas")])
def test_pooled_steps_give_the_serial_bits(pooled_steps, stack, dtype, wd, B, path,
                                           monkeypatch):
    from cylstm import _stream

    monkeypatch.setattr(stream, "BLAS_MIN_BATCH", 1 if path == "blas" else 10**9)
    rng = np.random.default_rng(sorted(_POOLED_STACKS).index(stack))
    specs = _POOLED_STACKS[stack](rng)
    T = 40
    x = rng.standard_normal((B, T, specs[0]["kernel"].shape[0])).astype(dtype)
    one = StreamRunner._from_specs(specs, B, num_threads=1, dtype=dtype, weights_dtype=wd)
    two = StreamRunner._from_specs(specs, B, num_threads=2, dtype=dtype, weights_dtype=wd)
    assert two.num_threads == 2
    if wd is None:
        np.testing.assert_allclose(_run(one, x), _stack_ref(specs, x), **TOL[dtype])
        one.reset()
    before = _stream.pooled_pieces()["workers"]
    deadline = time.monotonic() + 5
    for rep in itertools.count():
        np.testing.assert_array_equal(_run(two, x), _run(one, x))
        block = np.ascontiguousarray(x.transpose(1, 0, 2))     # run(): (T, B, F)
        np.testing.assert_array_equal(two.run(block), one.run(block))
        for (h2, c2), (h1, c1) in zip(two.state, one.state):
            np.testing.assert_array_equal(h2, h1)
            np.testing.assert_array_equal(c2, c1)
        # (spinning workers join the steps, sooner or later on a loaded machine: go
        # on until some of the pieces were theirs)
        took_part = _stream.pooled_pieces()["workers"] > before
        if rep >= 2 and (took_part or not pooled_steps or time.monotonic() > deadline):
            break
    assert took_part or not pooled_steps


def _step_times(runner, x, n):
    from cylstm import _lstm

    s0 = _lstm.pool_stats()["small_alone"]
    for _ in range(n):
        runner.step(x)
    return _lstm.pool_stats()["small_alone"] - s0


def test_small_steps_run_alone_after_a_gap_and_wake_the_workers_for_a_stream():
    """A step too small to pay for waking a sleeping worker runs alone, the first
    and second after an idle gap; the third of a stream wakes the workers, which
    then join the steps that follow (include/cylstm_pool.h,
    cyl_pool_small_stays_alone)."""
    from cylstm import _lstm, _tuning

    rng = np.random.default_rng(5)
    specs = [_lstm_spec(rng, 8, 40)]
    runner = StreamRunner._from_specs(specs, 1, num_threads=2)
    ref = StreamRunner._from_specs(specs, 1, num_threads=1)
    x = rng.standard_normal((1, 8)).astype(np.float32)
    assert (8 + 40) * 4 * 48 * 4 < _tuning.POOL_WAKE_MIN_BYTES   # packed float32 bytes: small
    _lstm.set_pool_backoff_ns(0)
    _lstm.set_pool_spin_ns(5_000_000)   # "a stream": steps within 5 ms of each other
    try:
        for _ in range(5):   # (a host hiccup may wake a worker)
            runner.step(x)
            time.sleep(0.05)             # the workers spin 5 ms, then sleep
            alone = _step_times(runner, x, 2)
            woke = _step_times(runner, x, 1)
            if (alone, woke) == (2, 0):
                break
        assert (alone, woke) == (2, 0)
        assert _step_times(runner, x, 20) == 0   # the workers stay awake in the stream
    finally:
        _lstm.set_pool_spin_ns(_tuning.POOL_SPIN_NS)
        _lstm.set_pool_backoff_ns(_tuning.POOL_BACKOFF_NS)
    seq = rng.standard_normal((1, 9, 8)).astype(np.float32)
    runner.reset()
    np.testing.assert_array_equal(_run(runner, seq), _run(ref, seq))


def test_small_steps_in_a_stream_run_the_way_measured_faster():
    """In a warm stream a small step runs alone or split, whichever the runner
    measured faster (cylstm/_stream.pyx, _small_alone): a new runner measures both
    within its first steps; with each choice forced, the workers take no piece or
    take some; the bits are the one-thread runner's."""
    from cylstm import _lstm, _stream, _tuning

    rng = np.random.default_rng(6)
    specs = [_lstm_spec(rng, 8, 40)]
    two = StreamRunner._from_specs(specs, 1, num_threads=2)
    one = StreamRunner._from_specs(specs, 1, num_threads=1)
    x = rng.standard_normal((1, 8)).astype(np.float32)
    _lstm.set_pool_backoff_ns(0)
    _lstm.set_pool_spin_ns(5_000_000)   # the workers stay awake between these steps
    try:
        # alone first, then split: a split is timed only once the worker is awake,
        # which may take a few steps on a loaded machine
        for n in range(1, 2001):
            np.testing.assert_array_equal(two.step(x), one.step(x))
            alone_ns, split_ns, calls = two._small_timing()
            if split_ns > 0 and n >= 24:
                break
        assert alone_ns > 0 and split_ns > 0 and calls > 16
        two._force_small_choice("alone")
        before = _stream.pooled_pieces()["workers"]
        for _ in range(50):
            np.testing.assert_array_equal(two.step(x), one.step(x))
        assert _stream.pooled_pieces()["workers"] == before
        two._force_small_choice("split")
        for _ in range(2000):
            np.testing.assert_array_equal(two.step(x), one.step(x))
            if _stream.pooled_pieces()["workers"] > before:
                break
        assert _stream.pooled_pieces()["workers"] > before
        with pytest.raises(ValueError, match="choice must be None, 'alone' or 'split'"):
            two._force_small_choice("both")
    finally:
        _lstm.set_pool_spin_ns(_tuning.POOL_SPIN_NS)
        _lstm.set_pool_backoff_ns(_tuning.POOL_BACKOFF_NS)


_ONE_CPU_STREAM = """
import os, sys
import numpy as np
os.sched_setaffinity(0, {int(sys.argv[1])})   # the caller and its workers share one CPU
from cylstm import _lstm
from cylstm.stream import StreamRunner
rng = np.random.default_rng(2)
specs = [dict(type="lstm", kernel=rng.uniform(-.4, .4, (6, 4 * 48)),
              recurrent_kernel=rng.uniform(-.4, .4, (48, 4 * 48)), bias=None)]
one = StreamRunner._from_specs(specs, 1, num_threads=1)
two = StreamRunner._from_specs(specs, 1, num_threads=2)
x = rng.standard_normal((300, 6)).astype(np.float32)
for t in range(300):
    assert np.array_equal(two.step(x[t]), one.step(x[t])), t
s = _lstm.pool_stats()
print("ok", s["small_alone"], s["joins"])
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_setaffinity"),
                    reason="needs sched_setaffinity")
def test_steps_on_the_callers_only_cpu_neither_hang_nor_change_results(tmp_path):
    """With one CPU allowed, the worker cannot leave its caller's CPU: it never
    joins a step (it would only take the caller's time), and every step has the
    one-thread bits."""
    import os
    import subprocess
    import sys

    import cylstm

    cpu = min(os.sched_getaffinity(0))
    root = os.path.dirname(os.path.dirname(os.path.abspath(cylstm.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, "-c", _ONE_CPU_STREAM, str(cpu)], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    word, _, joins = p.stdout.split()
    assert word == "ok" and int(joins) == 0

def test_eight_threads_with_own_runners_match_serial():
    m = _model(seed=3)
    rng = np.random.default_rng(12)
    xs = [rng.standard_normal((1, 60, 6)).astype(np.float32) for _ in range(8)]
    serial = [_run(m.streamer(), x) for x in xs]
    runners = [m.streamer() for _ in xs]
    results = [None] * 8
    start = threading.Barrier(8)

    def work(i):
        start.wait()
        results[i] = _run(runners[i], xs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, serial):
        np.testing.assert_array_equal(got, want)


def test_one_runner_from_two_threads_is_refused_not_corrupted():
    # a runner is not thread-safe; concurrent use raises instead of mixing states
    rng = np.random.default_rng(14)
    specs = [_lstm_spec(rng, 64, 256)]
    x = rng.standard_normal((1, 64)).astype(np.float32)
    r = StreamRunner._from_specs(specs, 1, num_threads=1)
    errors, stop = [], threading.Event()

    def work():
        try:
            while not stop.is_set():
                r.step(x)
        except RuntimeError as e:
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    threads[0].join(2.0)
    stop.set()
    for t in threads:
        t.join()
    for e in errors:
        assert "not thread-safe" in str(e)
    r.reset()                                      # still usable afterwards
    r.step(x)


@pytest.mark.parametrize("threads", [1, 2])
def test_no_python_allocation_per_step(threads):
    rng = np.random.default_rng(13)
    specs = [_lstm_spec(rng, 8, 40), _dense_spec(rng, 40, 3, "softmax")]
    r = StreamRunner._from_specs(specs, 1, num_threads=threads)
    x = rng.standard_normal((1, 8)).astype(np.float32)
    out = np.empty((1, 3), np.float32)
    step = r.step
    step(x)
    step(x, out=out)
    loop1, loop2 = itertools.repeat(None, 10_000), itertools.repeat(None, 1000)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in loop1:
            step(x)
        for _ in loop2:
            step(x, out=out)
        cur, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert cur == base and peak == base, (base, cur, peak)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("H", [1, 5, 16, 21, 50])
def test_runner_packs_the_sequence_kernels_layout(dtype, H):
    """One layout: a runner's LSTM panels are pack_stacked's (the sequence
    kernels'), bias included, and its Dense panels pack_plain's; bfloat16 weights
    are the same float32 panels rounded, columns interleaved as documented."""
    from cylstm import _lstm, quantization
    rng = np.random.default_rng(H)
    specs = [_lstm_spec(rng, 3, H), _dense_spec(rng, H, 70, "linear")]
    name = np.dtype(dtype).name
    pack = stream._Pack(stream._check_specs(specs, dtype), dtype)
    lp, dp = pack.layers
    want = np.empty(_lstm.stacked_len(3, H, name), dtype)
    _lstm.pack_stacked(specs[0]["kernel"].astype(dtype), specs[0]["recurrent_kernel"].astype(dtype),
                       specs[0]["bias"].astype(dtype), want)
    np.testing.assert_array_equal(np.concatenate([lp.P, lp.bias]), want)
    plain = np.empty(_lstm.plain_len(H, 70, name), dtype)
    _lstm.pack_plain(specs[1]["kernel"].astype(dtype), plain)
    np.testing.assert_array_equal(dp.P, plain[:dp.P.size])
    assert dp.P.size == H * dp.ncols
    assert dp.ncols == (80 if dtype == np.float32 else 72)  # 70 columns, whole vectors
    if dtype == np.float32:
        b16 = stream._Pack(stream._check_specs(specs, dtype), dtype, "bfloat16").layers[0]
        w_full = 4 * lp.span
        for p in range(lp.n_panels):
            w = min(w_full, lp.ncols - p * w_full)
            panel = lp.P[p * lp.K * w_full:][:lp.K * w].reshape(lp.K, w)
            got = b16.P[p * lp.K * w_full:][:lp.K * w].reshape(lp.K, w)
            j = np.arange(w)
            g, m = j // 32, j % 32
            slot = np.where(g * 32 + 32 > w, j,
                            g * 32 + np.where(m < 16, 2 * m, 2 * (m - 16) + 1))
            np.testing.assert_array_equal(got[:, slot], quantization.bfloat16_bits(panel))
