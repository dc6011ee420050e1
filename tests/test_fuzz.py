"""Property-based fuzzing of the public API (issue 7).

Every generated input must either work and agree with the float64 NumPy
reference in ``tests/reference.py``, or raise a clear ``ValueError`` /
``TypeError``.  Inputs that are clearly valid must work; inputs that are
clearly invalid must be refused; nothing may crash the interpreter.

The number of examples per property is modest so the suite stays fast; set
``CYLSTM_FUZZ_SCALE=20`` (for instance) to run twenty times as many.  Run with
``--hypothesis-show-statistics`` to see how many cases each property ran.
"""
import hashlib
import io
import json
import os
import tempfile
import zipfile

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import lstm_ref, sigmoid

from cylstm.layers import LSTM, Dense
from cylstm.models import Sequential
from cylstm.saving import load_model

SCALE = float(os.environ.get("CYLSTM_FUZZ_SCALE", "1"))


def fuzz(n):
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, derandomize=False,
                    suppress_health_check=list(HealthCheck))


CLEAR = (ValueError, TypeError)
DTYPES = ["float32", "float64", "float16", "int32", "int64", "uint8", "bool",
          "complex64", "object", "str"]
REAL = {"float32", "float64", "float16", "int32", "int64", "uint8", "bool"}
LAYOUTS = ["c", "f", "strided", "reversed", "list"]


def is_real(dtype, layout):
    """Real numbers (an object array of floats becomes a plain list of floats)."""
    return dtype in REAL or (dtype == "object" and layout == "list")


def make_input(rng, shape, dtype, layout, special):
    """An input of ``shape`` with the given dtype, memory layout and special values."""
    base = rng.standard_normal(shape)
    if special == "nan" and base.size:
        base.flat[rng.integers(base.size)] = np.nan
    elif special == "inf" and base.size:
        base.flat[rng.integers(base.size)] = np.inf * rng.choice([-1, 1])
    if dtype == "object":
        a = base.astype(object)
    elif dtype == "str":
        a = base.astype(str)
    elif dtype == "bool":
        a = base > 0
    elif dtype in ("int32", "int64", "uint8"):
        a = np.clip(np.nan_to_num(np.abs(base) * 2), 0, 100).astype(dtype)
    else:
        a = base.astype(dtype)
    if layout == "f":
        a = np.asfortranarray(a)
    elif layout == "strided" and a.ndim:
        big = np.repeat(a, 2, axis=-1)  # every other element of a wider array
        a = big[..., ::2]
    elif layout == "reversed" and a.ndim:
        a = np.ascontiguousarray(a[..., ::-1])[..., ::-1]  # negative strides, same values
    elif layout == "list":
        return a.tolist()
    return a


def assert_clear(err):
    """A refusal must be a ValueError/TypeError with a message saying something."""
    assert isinstance(err, CLEAR), f"{type(err).__name__}: {err}"
    assert len(str(err)) > 10, f"unhelpful message: {err!r}"


def close(got, ref, dtype):
    tol = 2e-4 if np.dtype(dtype) == np.float32 else 1e-9
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)


def compare_finite_samples(got, ref, x64, dtype):
    """Samples are independent: those whose input is finite must match exactly."""
    ok = np.all(np.isfinite(x64), axis=tuple(range(1, x64.ndim)))
    close(got[ok], ref[ok], dtype)


shape_b = st.integers(0, 3)
shape_t = st.integers(0, 3)
shape_i = st.integers(0, 3)
units = st.integers(1, 3)


# ---------------------------------------------------------------------- layer call
@fuzz(150)
@given(B=shape_b, T=shape_t, I=shape_i, H=units, dtype=st.sampled_from(DTYPES),
       layout=st.sampled_from(LAYOUTS), special=st.sampled_from(["", "", "nan", "inf"]),
       ndim=st.sampled_from([3, 3, 3, 2, 4]), seq=st.booleans(), back=st.booleans(),
       f64=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_fuzz_lstm_layer_call(B, T, I, H, dtype, layout, special, ndim, seq, back, f64, seed):
    rng = np.random.default_rng(seed)
    shape = (B, T, I)[:ndim] if ndim <= 3 else (B, T, I, 1)
    x = make_input(rng, shape, dtype, layout, special)
    wdt = np.float64 if f64 else np.float32
    layer = LSTM(H, return_sequences=seq, go_backwards=back, dtype=wdt)
    valid = ndim == 3 and is_real(dtype, layout) and T >= 1 and I >= 1
    try:
        y = layer(x)
    except Exception as e:  # noqa: BLE001 - the point is to see what escapes
        assert_clear(e)
        assert not (valid and B >= 1), f"valid input refused: {e}"
        return
    assert valid or (ndim == 3 and is_real(dtype, layout) and B == 0), "invalid input accepted"
    x64 = np.asarray(x, dtype=wdt).astype(np.float64)  # what the layer computes on
    W, U, b = layer.get_weights()
    b = b + rng.standard_normal(b.shape).astype(wdt) * 0.1
    layer.set_weights([W, U, b])
    y = layer(x)
    ref, hT, _, _ = lstm_ref(x64, W, U, b, reverse=back)
    ref = (ref[:, ::-1] if back else ref) if seq else hT
    assert y.shape == ref.shape and y.dtype == wdt
    compare_finite_samples(y, ref, x64, wdt)


# ---------------------------------------------------------------------- predict
def small_model(I, H, D, dtype=np.float32, seed=0):
    m = Sequential([LSTM(H, input_shape=(None, I), dtype=dtype, seed=seed), Dense(D)])
    rng = np.random.default_rng(seed)
    m.set_weights([w + rng.standard_normal(w.shape).astype(w.dtype) * 0.1
                   for w in m.get_weights()])
    return m


def model_ref(m, x64):
    W, U, b, Wd, bd = (w.astype(np.float64) for w in m.get_weights())
    return lstm_ref(x64, W, U, b)[1] @ Wd + bd


@fuzz(120)
@given(B=st.integers(0, 5), T=shape_t, I=st.integers(1, 3), dI=st.sampled_from([0, 0, 0, 1]),
       H=units, dtype=st.sampled_from(DTYPES), layout=st.sampled_from(LAYOUTS),
       special=st.sampled_from(["", "", "nan"]),
       bs=st.sampled_from([None, 1, 2, 3, 100, 0, -1, 1.5, "4", True]),
       seed=st.integers(0, 2**32 - 1))
def test_fuzz_predict(B, T, I, dI, H, dtype, layout, special, bs, seed):
    rng = np.random.default_rng(seed)
    m = small_model(I, H, 2, seed=seed % 1000)
    x = make_input(rng, (B, T, I + dI), dtype, layout, special)
    bs_ok = bs is None or (isinstance(bs, int) and not isinstance(bs, bool) and bs >= 1)
    valid = is_real(dtype, layout) and T >= 1 and dI == 0 and bs_ok
    try:
        y = m.predict(x, batch_size=bs, verbose=0)
    except Exception as e:  # noqa: BLE001
        assert_clear(e)
        assert not (valid and B >= 1), f"valid input refused: {e}"
        return
    assert valid or (B == 0 and is_real(dtype, layout) and dI == 0 and bs_ok), \
        "invalid input accepted"
    assert y.shape == (B, 2)
    x64 = np.asarray(x, np.float32).astype(np.float64)
    if B:
        compare_finite_samples(y, model_ref(m, x64), x64, np.float32)


# ---------------------------------------------------------------------- fit
@fuzz(60)
@given(B=st.integers(0, 4), T=st.integers(0, 3), I=st.integers(1, 3), H=units,
       xdtype=st.sampled_from(["float32", "float64", "int64", "complex64", "object"]),
       ybad=st.sampled_from(["", "", "", "shape", "nan", "rows", "str"]),
       special=st.sampled_from(["", "", "", "nan", "inf"]),
       epochs=st.sampled_from([1, 1, 0, -1, 2.5]), seed=st.integers(0, 2**32 - 1))
def test_fuzz_fit_one_sgd_step(B, T, I, H, xdtype, ybad, special, epochs, seed):
    """fit on one batch with SGD is one step W -= lr * dL/dW (checked against the reference)."""
    from reference import lstm_ref_backward

    from cylstm.optimizers import SGD

    rng = np.random.default_rng(seed)
    m = Sequential([LSTM(H, input_shape=(None, I), dtype=np.float64, seed=seed % 1000)])
    m.compile(optimizer=SGD(learning_rate=0.1), loss="mse")
    W0, U0, b0 = m.get_weights()
    b0 = b0 + rng.standard_normal(b0.shape) * 0.1
    m.set_weights([W0, U0, b0])
    x = make_input(rng, (B, T, I), xdtype, "c", special)
    y = rng.standard_normal((B, H))
    if ybad == "shape":
        y = rng.standard_normal((B, H + 1))
    elif ybad == "nan" and B:
        y[0, 0] = np.nan
    elif ybad == "rows":
        y = rng.standard_normal((B + 1, H))
    elif ybad == "str":
        y = y.astype(str)
    ep_ok = isinstance(epochs, int) and epochs >= 0
    valid = (xdtype in REAL and B >= 1 and T >= 1 and ybad in ("",)
             and (special == "" or xdtype == "int64")
             and ep_ok)
    try:
        m.fit(x, y, batch_size=max(B, 1), epochs=epochs, shuffle=False, verbose=0)
    except Exception as e:  # noqa: BLE001
        assert_clear(e)
        assert not valid, f"valid input refused: {e}"
        for a, w in zip(m.get_weights(), (W0, U0, b0)):
            np.testing.assert_array_equal(a, w)  # a refused fit changes nothing
        return
    # epochs=0 trains nothing, so data that no step would accept may pass unnoticed
    assert valid or (epochs == 0 and xdtype in REAL), "invalid fit input accepted"
    W, U, b = m.get_weights()
    if epochs == 0:
        np.testing.assert_array_equal(W, W0)
        return
    x64 = np.asarray(x, np.float64)
    _, hT, _, tape = lstm_ref(x64, W0, U0, b0)
    dhT = 2.0 * (hT - y) / hT.size  # mse, mean over batch and units
    _, dW, dU, db, _, _ = lstm_ref_backward(x64, W0, U0, tape, dhT=dhT)
    close(W, W0 - 0.1 * dW, np.float64)
    close(U, U0 - 0.1 * dU, np.float64)
    close(b, b0 - 0.1 * db, np.float64)


# ---------------------------------------------------------------------- runner.step
@fuzz(100)
@given(Bs=st.integers(1, 3), dB=st.sampled_from([0, 0, 0, 1, -1]), I=st.integers(1, 3),
       dI=st.sampled_from([0, 0, 0, 1]), H=units, dtype=st.sampled_from(DTYPES),
       layout=st.sampled_from(["c", "f", "strided", "list"]), special=st.sampled_from(["", "nan"]),
       steps=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_fuzz_runner_step(Bs, dB, I, dI, H, dtype, layout, special, steps, seed):
    rng = np.random.default_rng(seed)
    m = small_model(I, H, 2, seed=seed % 1000)
    runner = m.streamer(batch_size=Bs)
    W, U, b, Wd, bd = (w.astype(np.float64) for w in m.get_weights())
    h = np.zeros((Bs, H))
    c = np.zeros((Bs, H))
    # bool is refused by step (TypeError) but cast by predict: either is accepted here
    valid = is_real(dtype, layout) and dB == 0 and dI == 0 and dtype != "bool"
    for _ in range(steps):
        x = make_input(rng, (Bs + dB, I + dI), dtype, layout, special)
        before = runner.state
        try:
            y = runner.step(x)
        except Exception as e:  # noqa: BLE001
            assert_clear(e)
            assert not valid, f"valid step refused: {e}"
            for (h0, c0), (h1, c1) in zip(before, runner.state):
                np.testing.assert_array_equal(h0, h1)  # a refused step keeps the state
                np.testing.assert_array_equal(c0, c1)
            continue
        assert valid or (dtype == "bool" and dB == 0 and dI == 0), "invalid step accepted"
        x64 = np.asarray(x, np.float32).astype(np.float64)
        z = x64 @ W + h @ U + b
        i, f, g, o = (z[:, k * H:(k + 1) * H] for k in range(4))
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        ok = np.all(np.isfinite(h), axis=1)
        close(np.asarray(y)[ok], (h @ Wd + bd)[ok], np.float32)


# ---------------------------------------------------------------------- from_torch
TORCH_KEYS = ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]


@fuzz(100)
@given(I=st.integers(1, 3), H=units, drop=st.sampled_from([None, None, None] + TORCH_KEYS),
       bad_shape=st.sampled_from([None, None, None] + TORCH_KEYS),
       dtype=st.sampled_from(["float32", "float64", "float64", "int64", "complex64", "object",
                              "str"]),
       extra=st.sampled_from([None, None, "junk", "weight_ih_l1"]), nan=st.booleans(),
       wrong_type=st.sampled_from([None, None, None, None, "list", "str", "int"]),
       seed=st.integers(0, 2**32 - 1))
def test_fuzz_from_torch_state_dict(I, H, drop, bad_shape, dtype, extra, nan, wrong_type, seed):
    from cylstm.interop import from_torch

    rng = np.random.default_rng(seed)
    shapes = {"weight_ih_l0": (4 * H, I), "weight_hh_l0": (4 * H, H), "bias_ih_l0": (4 * H,),
              "bias_hh_l0": (4 * H,)}
    sd = {}
    for k, s in shapes.items():
        if k == drop:
            continue
        if k == bad_shape:
            s = tuple(d + 1 for d in s)
        sd[k] = make_input(rng, s, dtype, "c", "")
    if nan and "weight_hh_l0" in sd and dtype.startswith("float"):
        sd["weight_hh_l0"].flat[0] = np.nan
    if extra:
        sd[extra] = rng.standard_normal((4, 4))
    obj = sd
    if wrong_type == "list":
        obj = list(sd.items())
    elif wrong_type == "str":
        obj = "not a module"
    elif wrong_type == "int":
        obj = 3
    has_biases = ("bias_ih_l0" in sd) == ("bias_hh_l0" in sd)
    valid = (wrong_type is None and drop in (None, "bias_ih_l0", "bias_hh_l0") and has_biases
             and bad_shape is None and dtype in ("float32", "float64", "int64")
             and extra is None and not (nan and dtype.startswith("float")))
    try:
        m = from_torch(obj)
    except Exception as e:  # noqa: BLE001
        assert_clear(e)
        assert not valid, f"valid state dict refused: {e}"
        return
    assert valid or wrong_type == "list", "invalid state dict accepted"
    x = rng.standard_normal((2, 3, I))
    f = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    b = f.get("bias_ih_l0", 0) + f.get("bias_hh_l0", 0) + np.zeros(4 * H)
    ref = lstm_ref(x, f["weight_ih_l0"].T, f["weight_hh_l0"].T, b)[0]
    close(m.predict(x, verbose=0), ref, m.dtype)


# ---------------------------------------------------------------------- mutated files
def mutate(data, rng, kind):
    data = bytearray(data)
    if kind == "truncate":
        return bytes(data[:rng.integers(0, len(data))])
    if kind == "flip":
        for _ in range(rng.integers(1, 8)):
            p = rng.integers(len(data))
            data[p] ^= 1 << int(rng.integers(8))
        return bytes(data)
    if kind == "overwrite":
        p = rng.integers(len(data))
        n = int(rng.integers(1, 64))
        data[p:p + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        return bytes(data)
    if kind == "insert":
        p = rng.integers(len(data))
        return bytes(data[:p] + rng.integers(0, 256, int(rng.integers(1, 64)),
                                              dtype=np.uint8).tobytes() + data[p:])
    if kind == "empty":
        return b""
    raise AssertionError(kind)


MUTATIONS = ["truncate", "flip", "flip", "overwrite", "insert", "empty"]


def dir_snapshot(d):
    out = {}
    for name in sorted(os.listdir(d)):
        with open(os.path.join(d, name), "rb") as f:
            out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


def load_mutated(loader, data, suffix, accept=CLEAR):
    """Run ``loader`` on ``data`` in a fresh directory; the directory must be unchanged."""
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "f" + suffix)
        with open(p, "wb") as f:
            f.write(data)
        before = dir_snapshot(d)
        try:
            result = loader(p)
        except Exception as e:  # noqa: BLE001
            assert isinstance(e, accept), f"{type(e).__name__}: {e}"
            result = e
        assert dir_snapshot(d) == before, "loading modified the directory"
    return result


def use_loaded(m, I):
    """A model that did load (a flipped bit in a weight) must still be usable."""
    if isinstance(m, Exception):
        return
    x = np.random.default_rng(0).standard_normal((2, 3, I)).astype(np.float32)
    try:
        m.predict(x, verbose=0)
    except Exception as e:  # noqa: BLE001 - e.g. a config whose sizes were mutated
        assert_clear(e)


@pytest.fixture(scope="module")
def saved_model_bytes():
    m = small_model(3, 4, 2)
    m.compile(optimizer="adam", loss="mse")
    m.fit(np.ones((4, 2, 3), np.float32), np.ones((4, 2), np.float32), epochs=1, verbose=0)
    buf = io.BytesIO()
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "m.npz")
        m.save(p)
        with open(p, "rb") as f:
            buf.write(f.read())
    return buf.getvalue()


@fuzz(300)
@given(kind=st.sampled_from(MUTATIONS), seed=st.integers(0, 2**32 - 1))
def test_fuzz_load_model_bytes(saved_model_bytes, kind, seed):
    rng = np.random.default_rng(seed)
    data = mutate(saved_model_bytes, rng, kind)
    use_loaded(load_mutated(load_model, data, ".npz"), 3)


@pytest.fixture(scope="module")
def quantized_model_bytes():
    m = small_model(3, 4, 2)
    m.quantize("int8")
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "q.npz")
        m.save(p)
        with open(p, "rb") as f:
            return f.read()


@fuzz(150)
@given(kind=st.sampled_from(MUTATIONS), seed=st.integers(0, 2**32 - 1))
def test_fuzz_load_quantized_model_bytes(quantized_model_bytes, kind, seed):
    # the layer configs carry quantization_mode, and loading re-rounds the weights:
    # a mutated mode or a non-finite weight must be a clear error too
    data = mutate(quantized_model_bytes, np.random.default_rng(seed), kind)
    use_loaded(load_mutated(load_model, data, ".npz"), 3)


@pytest.fixture(scope="module")
def onnx_bytes():
    pytest.importorskip("onnx")
    m = small_model(3, 4, 2)
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "m.onnx")
        m.to_onnx(p)
        with open(p, "rb") as f:
            return f.read()


@fuzz(150)
@given(kind=st.sampled_from(MUTATIONS), seed=st.integers(0, 2**32 - 1))
def test_fuzz_from_onnx_mutated(onnx_bytes, kind, seed):
    from cylstm.interop import from_onnx

    data = mutate(onnx_bytes, np.random.default_rng(seed), kind)
    use_loaded(load_mutated(from_onnx, data, ".onnx"), 3)


@pytest.fixture(scope="module")
def quantized_onnx_bytes():
    pytest.importorskip("onnx")
    m = small_model(3, 4, 2)
    m.quantize("int8")
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "q.onnx")
        m.to_onnx(p)  # com.microsoft DynamicQuantizeLSTM (uint8 weights, scales, zero points)
        with open(p, "rb") as f:
            return f.read()


@fuzz(150)
@given(kind=st.sampled_from(MUTATIONS), seed=st.integers(0, 2**32 - 1))
def test_fuzz_from_onnx_dynamic_quantize_lstm_mutated(quantized_onnx_bytes, kind, seed):
    from cylstm.interop import from_onnx

    data = mutate(quantized_onnx_bytes, np.random.default_rng(seed), kind)
    use_loaded(load_mutated(from_onnx, data, ".onnx"), 3)


@pytest.fixture(scope="module")
def keras_bytes():
    pytest.importorskip("h5py")
    import h5py

    rng = np.random.default_rng(0)
    I, H = 3, 4
    config = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "InputLayer", "config": {"batch_shape": [None, None, I],
                                                "dtype": "float32"}},
        {"class_name": "LSTM", "config": {"name": "lstm", "units": H,
                                          "return_sequences": False}},
        {"class_name": "Dense", "config": {"name": "dense", "units": 2}}]}}
    weights = {"layers/lstm/cell/vars/0": rng.standard_normal((I, 4 * H)).astype(np.float32),
               "layers/lstm/cell/vars/1": rng.standard_normal((H, 4 * H)).astype(np.float32),
               "layers/lstm/cell/vars/2": np.zeros(4 * H, np.float32),
               "layers/dense/vars/0": rng.standard_normal((H, 2)).astype(np.float32),
               "layers/dense/vars/1": np.zeros(2, np.float32)}
    with tempfile.TemporaryDirectory() as d:
        h5 = os.path.join(d, "w.h5")
        with h5py.File(h5, "w") as f:
            for k, a in weights.items():
                f.create_dataset(k, data=a)
        p = os.path.join(d, "m.keras")
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("metadata.json", json.dumps({"keras_version": "3.0.0"}))
            z.writestr("config.json", json.dumps(config))
            z.write(h5, "model.weights.h5")
        with open(p, "rb") as f:
            return f.read()


def test_keras_fixture_is_loadable(keras_bytes):
    from cylstm.interop import from_keras

    m = load_mutated(from_keras, keras_bytes, ".keras")
    assert not isinstance(m, Exception), m
    use_loaded(m, 3)


@fuzz(150)
@given(kind=st.sampled_from(MUTATIONS), seed=st.integers(0, 2**32 - 1))
def test_fuzz_from_keras_mutated(keras_bytes, kind, seed):
    from cylstm.interop import from_keras

    data = mutate(keras_bytes, np.random.default_rng(seed), kind)
    use_loaded(load_mutated(from_keras, data, ".keras"), 3)


# ---------------------------------------------------------------------- wrong types
def _wrong_type_cases():
    from cylstm.interop import from_keras, from_onnx, from_torch

    m = small_model(2, 3, 1)
    m.compile(optimizer="adam", loss="mse")
    r = m.streamer()
    x = np.ones((2, 3, 2), np.float32)
    one = np.ones((1, 2), np.float32)
    return {
        "layer(None)": lambda: LSTM(2)(None),
        "layer(str)": lambda: LSTM(2)("abc"),
        "layer(dict)": lambda: LSTM(2)({"a": 1}),
        "layer(ragged)": lambda: LSTM(2)([[[1.0]], [[1.0], [2.0]]]),
        "predict(None)": lambda: m.predict(None),
        "predict(scalar)": lambda: m.predict(3.0),
        "predict(set)": lambda: m.predict({1, 2}),
        "fit(y=None)": lambda: m.fit(x, None, verbose=0),
        "fit(y=str)": lambda: m.fit(x, "y", verbose=0),
        "fit(batch_size=str)": lambda: m.fit(x, np.ones((2, 1)), batch_size="a", verbose=0),
        "step(None)": lambda: r.step(None),
        "step(str)": lambda: r.step("a"),
        "step(out shape)": lambda: r.step(one, out=np.ones((3, 3), np.float32)),
        "step(out dtype)": lambda: r.step(one, out=np.ones((1, 1), np.int32)),
        "state=int": lambda: setattr(r, "state", 3),
        "from_torch(None)": lambda: from_torch(None),
        "from_torch({})": lambda: from_torch({}),
        "from_onnx(None)": lambda: from_onnx(None),
        "from_onnx(int)": lambda: from_onnx(123),
        "from_keras(None)": lambda: from_keras(None),
        "load_model(None)": lambda: load_model(None),
        "load_model(int)": lambda: load_model(123),
        "load_model(dir)": lambda: load_model(tempfile.gettempdir()),
        "set_weights(None)": lambda: m.set_weights(None),
        "set_weights(short)": lambda: m.set_weights([1]),
        "LSTM(-1)": lambda: LSTM(-1),
        "LSTM(str)": lambda: LSTM("a"),
        "LSTM(2.5)": lambda: LSTM(2.5),
        "streamer(0)": lambda: m.streamer(batch_size=0),
        "compile(unknown)": lambda: m.compile(optimizer="nope", loss="mse"),
    }


@pytest.mark.parametrize("case", sorted(_wrong_type_cases()))
def test_wrong_types_are_clear_errors(case):
    with pytest.raises(CLEAR) as info:
        _wrong_type_cases()[case]()
    assert len(str(info.value)) > 10
