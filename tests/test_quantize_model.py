"""model.quantize("int8") (issue 16, item 2): int8 weights for inference, Keras 3's name.

Checked against a NumPy dequantization written here apart from cylstm.quantization,
against the float32 model, against the streaming runner, through save/load and
config, on Bidirectional, functional and nested models, float64 models, and the
refusals (bad mode, unbuilt model, training)."""
import copy
import json
import pickle

import numpy as np
import pytest
from reference import int8_round

from cylstm import layers as L
from cylstm import saving
from cylstm.models import Model, Sequential, load_model
from cylstm.quantization import dequantize_int8, quantize_int8


def _np_int8(w):
    """Per-column symmetric int8, dequantized, in float32 (reference.int8_round's
    exact product, rounded once: what a float32 q * scale gives)."""
    return int8_round(w).astype(np.float32)


def _np_quantized_weights(model):
    """``model.get_weights()`` with the kernels an int8 quantize rounds rounded by
    :func:`_np_int8` (LSTM kernel and recurrent kernel, Dense kernel; biases kept)."""
    out = []
    for o, n in model._param_items():
        w = np.array(getattr(o, n))
        rounded = (isinstance(o, L.LSTM) and n in ("kernel", "recurrent_kernel")) or \
            (isinstance(o, L.Dense) and n == "kernel")
        out.append(_np_int8(w).astype(w.dtype) if rounded else w)
    return out


def _stack(seed=0, dtype=None):
    rng = np.random.default_rng(seed)
    m = Sequential([L.LSTM(16, return_sequences=True, input_shape=(None, 5), dtype=dtype),
                    L.LSTM(12, return_sequences=True, dtype=dtype),
                    L.Dense(3, activation="tanh", dtype=dtype)])
    # biases away from zero, so that keeping them float is visible
    m.set_weights([w + 0.1 * rng.standard_normal(w.shape) for w in m.get_weights()])
    return m


def _x(seed=1, shape=(3, 11, 5)):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# predict of a quantized LSTM runs the int8 kernel (lstm_forward(weights_dtype="int8")),
# whose rows [x_t, h_prev] are quantized to int16, each off by at most 2^-15 of its
# row's largest value: the float32 model holding the same int8 values is within a few
# 1e-6 of it on these shapes (tests/test_int8_forward.py checks the int8 kernel's own
# roundings against NumPy to float32 rounding)
INT16_ROWS_ATOL = 2e-5


def _weights_equal(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        assert u.dtype == v.dtype
        np.testing.assert_array_equal(u, v)


# ---------------------------------------------------------------------------- the numbers
def test_quantize_equals_an_independent_dequantization():
    m = _stack()
    ref = Sequential.from_config(m.get_config())
    ref.set_weights(_np_quantized_weights(m))   # a float model holding the int8 values
    before = m.get_weights()
    assert m.quantize("int8") is None
    # biases untouched, kernels rounded: every weight is the independent value
    _weights_equal(m.get_weights(), ref.get_weights())
    assert np.array_equal(before[2], m.get_weights()[2])        # the first LSTM's bias
    assert not np.array_equal(before[0], m.get_weights()[0])
    assert [lay.quantization_mode for lay in m.layers] == ["int8"] * 3
    assert all(lay.quantization_mode is None for lay in ref.layers)
    x = _x()
    np.testing.assert_allclose(m.predict(x, verbose=0), ref.predict(x, verbose=0),
                               rtol=0, atol=INT16_ROWS_ATOL)
    np.testing.assert_allclose(m(x), ref(x), rtol=0, atol=INT16_ROWS_ATOL)


def test_int8_model_stays_close_to_float32_over_100_steps():
    # the standard case: LSTM(64) -> Dense(1), glorot weights, x ~ N(0, 1)
    m = Sequential([L.LSTM(64, return_sequences=True, input_shape=(None, 16), seed=3),
                    L.Dense(1, seed=4)])
    x = np.random.default_rng(0).standard_normal((4, 100, 16)).astype(np.float32)
    y_float = m.predict(x, verbose=0)
    m.quantize("int8")
    y_int8 = m.predict(x, verbose=0)
    err = np.abs(y_int8 - y_float).max()
    assert 0 < err < 3e-2, err


def test_evaluate_runs_the_int8_numbers():
    m = _stack()
    x = _x()
    y = np.zeros((3, 11, 3), np.float32)
    m.compile(optimizer="adam", loss="mse")
    m.quantize("int8")
    want = float(np.mean(m.predict(x, verbose=0) ** 2))
    assert m.evaluate(x, y, verbose=0) == pytest.approx(want, rel=1e-5)


def test_quantizing_twice_is_a_no_op():
    m = _stack()
    m.quantize("int8")
    once = m.get_weights()
    # the rounding is idempotent: quantize_int8 of q * scale gives back q and scale exactly
    for w in (m.layers[0].kernel, m.layers[0].recurrent_kernel, m.layers[2].kernel):
        q, s = quantize_int8(w)
        q2, s2 = quantize_int8(dequantize_int8(q, s))
        np.testing.assert_array_equal(q2, q)
        np.testing.assert_array_equal(s2, s)
        np.testing.assert_array_equal(dequantize_int8(q, s), w)
    m.quantize("int8")
    _weights_equal(m.get_weights(), once)
    m.layers[0].quantize("int8")          # the layer-level call too
    _weights_equal(m.get_weights(), once)
    # and re-rounding a quantized layer (what set_weights does) keeps every bit
    for lay in m.layers:
        lay._snap_quantized()
    _weights_equal(m.get_weights(), once)


def test_set_weights_keeps_a_quantized_model_int8():
    m = _stack()
    m.quantize("int8")
    fresh = _stack(seed=7)
    m.set_weights(fresh.get_weights())
    _weights_equal(m.get_weights(), _np_quantized_weights(fresh))
    m.layers[2].set_weights(fresh.layers[2].get_weights())     # the layer-level call
    _weights_equal(m.layers[2].get_weights(), _np_quantized_weights(fresh)[-2:])


def test_non_finite_weights_are_refused_and_change_nothing():
    m = _stack()
    m.layers[2].kernel[0, 0] = np.nan
    before = m.get_weights()
    with pytest.raises(ValueError, match="must be finite"):
        m.quantize("int8")
    # all or none: the LSTMs before the bad Dense were not rounded either
    _weights_equal(m.get_weights(), before)
    assert all(lay.quantization_mode is None for lay in m.layers)
    ok = _stack()
    ok.quantize("int8")
    quantized = ok.get_weights()
    bad = [w.copy() for w in quantized]
    bad[-2][1, 1] = np.inf
    with pytest.raises(ValueError, match=r"quantized layer .*must be finite"):
        ok.set_weights(bad)
    _weights_equal(ok.get_weights(), quantized)


# ---------------------------------------------------------------------------- streaming
def test_streamer_of_a_quantized_model_reads_int8():
    m = _stack()
    x = _x(shape=(2, 9, 5))
    assert m.streamer(batch_size=2).weights_dtype == "float32"
    m.quantize("int8")
    want = m.predict(x, verbose=0)
    r = m.streamer(batch_size=2)
    assert r.weights_dtype == "int8"
    for t in range(x.shape[1]):
        np.testing.assert_allclose(r.step(x[:, t]), want[:, t], rtol=0, atol=1e-5)
    # an explicit weights_dtype still wins
    assert m.streamer(weights_dtype="float32").weights_dtype == "float32"
    assert m.streamer(weights_dtype="bfloat16").weights_dtype == "bfloat16"
    pool = m.stream_pool(max_streams=4)
    assert pool.weights_dtype == "int8"
    for t in range(x.shape[1]):
        out = pool.step({"a": x[0, t], "b": x[1, t]})
        np.testing.assert_allclose(out["a"], want[0, t], rtol=0, atol=1e-5)
        np.testing.assert_allclose(out["b"], want[1, t], rtol=0, atol=1e-5)
    assert m.stream_pool(weights_dtype="float32").weights_dtype == "float32"


def test_streamer_default_stays_float_when_only_some_layers_are_int8():
    # the runner has one weights type for all its layers: int8 panels would round
    # the float layers too, so a partly quantized model streams in float32
    m = _stack()
    m.layers[2].quantize("int8")
    assert [lay.quantization_mode for lay in m.layers] == [None, None, "int8"]
    assert m.streamer().weights_dtype == "float32"
    assert m.streamer(weights_dtype="int8").weights_dtype == "int8"


def test_functional_chain_streamer_defaults_to_int8():
    inp = L.Input(shape=(None, 5))
    out = L.Dense(2)(L.LSTM(8, return_sequences=True)(inp))
    m = Model(inp, out)
    m.quantize("int8")
    x = _x(shape=(1, 6, 5))
    want = m.predict(x, verbose=0)
    r = m.streamer()
    assert r.weights_dtype == "int8"
    got = np.stack([r.step(x[:, t]).copy() for t in range(6)], axis=1)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------- save / load
def test_save_load_round_trip(tmp_path):
    m = _stack()
    m.compile(optimizer="adam", loss="mse")
    m.quantize("int8")
    path = tmp_path / "q.npz"
    m.save(path)
    back = load_model(path)
    _weights_equal(back.get_weights(), m.get_weights())
    assert [lay.quantization_mode for lay in back.layers] == ["int8"] * 3
    x = _x()
    np.testing.assert_array_equal(back.predict(x, verbose=0), m.predict(x, verbose=0))
    assert back.streamer().weights_dtype == "int8"
    # the key is in the file's layer configs
    meta, _ = saving._read(path)
    modes = [lc["config"].get("quantization_mode") for lc in meta["model"]["layers"]]
    assert modes == ["int8"] * 3
    # and a loaded quantized model still refuses training
    with pytest.raises(ValueError, match="quantized to int8"):
        back.fit(x, np.zeros((3, 11, 3), np.float32), verbose=0)


def test_config_pickle_and_deepcopy_keep_the_mode():
    m = _stack()
    m.quantize("int8")
    cfg = json.loads(json.dumps(m.get_config()))
    fresh = Sequential.from_config(cfg)
    # a quantized layer built from its config has int8 weights too (its own random ones)
    assert [lay.quantization_mode for lay in fresh.layers] == ["int8"] * 3
    k = fresh.layers[0].kernel
    np.testing.assert_array_equal(k, _np_int8(k))
    for clone in (pickle.loads(pickle.dumps(m)), copy.deepcopy(m)):
        assert [lay.quantization_mode for lay in clone.layers] == ["int8"] * 3
        _weights_equal(clone.get_weights(), m.get_weights())
    layer = L.Dense.from_config(m.layers[2].get_config())
    assert layer.quantization_mode == "int8"


def test_float_models_configs_are_unchanged(tmp_path):
    # files written before quantize existed have no key: they load as float models
    m = _stack()
    assert "quantization_mode" not in json.dumps(m.get_config())
    m.save(tmp_path / "f.npz")
    back = load_model(tmp_path / "f.npz")
    assert all(lay.quantization_mode is None for lay in back.layers)
    _weights_equal(back.get_weights(), m.get_weights())


def test_hostile_quantization_modes_are_refused(tmp_path):
    m = _stack()
    m.quantize("int8")
    cfg = m.get_config()
    bad = copy.deepcopy(cfg)
    bad["layers"][0]["config"]["quantization_mode"] = "int4"
    with pytest.raises(ValueError, match="quantization mode"):
        Sequential.from_config(bad)
    bad = copy.deepcopy(cfg)
    bad["layers"][0]["config"]["quantization_mode"] = ["int8"]
    with pytest.raises(ValueError, match="quantization mode"):
        Sequential.from_config(bad)
    # a layer that cannot be quantized keeps refusing unknown keys
    with pytest.raises(TypeError, match="quantization_mode"):
        L.Dropout.from_config({"rate": 0.1, "quantization_mode": "int8"})
    # through the loader: ValueError naming the file, never a crash
    arrays = saving._model_arrays(m, False)
    meta = json.loads(arrays[saving._META].tobytes())
    meta["model"]["layers"][2]["config"]["quantization_mode"] = "float8"
    arrays[saving._META] = saving._encode(meta)
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="invalid model config"):
        load_model(path)


# ---------------------------------------------------------------------------- model kinds
def test_bidirectional():
    rng = np.random.default_rng(2)
    m = Sequential([L.Bidirectional(L.LSTM(6, return_sequences=True), input_shape=(None, 4)),
                    L.Dense(2)])
    m.set_weights([w + 0.1 * rng.standard_normal(w.shape) for w in m.get_weights()])
    ref = Sequential.from_config(m.get_config())
    ref.set_weights(_np_quantized_weights(m))
    m.quantize("int8")
    bi = m.layers[0]
    assert bi.quantization_mode == "int8"
    assert bi.forward_layer.quantization_mode == bi.backward_layer.quantization_mode == "int8"
    _weights_equal(m.get_weights(), ref.get_weights())
    x = _x(shape=(2, 7, 4))
    np.testing.assert_allclose(m.predict(x, verbose=0), ref.predict(x, verbose=0),
                               rtol=0, atol=INT16_ROWS_ATOL)
    back = saving.model_from_bytes(saving.model_to_bytes(m))
    assert back.layers[0].forward_layer.quantization_mode == "int8"
    assert back.layers[0].backward_layer.quantization_mode == "int8"
    _weights_equal(back.get_weights(), m.get_weights())


def test_time_distributed_dense():
    m = Sequential([L.LSTM(5, return_sequences=True, input_shape=(None, 3)),
                    L.TimeDistributed(L.Dense(2))])
    ref = Sequential.from_config(m.get_config())
    ref.set_weights(_np_quantized_weights(m))
    m.quantize("int8")
    assert m.layers[1].quantization_mode == m.layers[1].layer.quantization_mode == "int8"
    _weights_equal(m.get_weights(), ref.get_weights())
    back = saving.model_from_bytes(saving.model_to_bytes(m))
    assert back.layers[1].quantization_mode == "int8"


def test_functional_model_with_a_nested_model():
    rng = np.random.default_rng(3)
    a, b = L.Input(shape=(None, 4), name="a"), L.Input(shape=(6,), name="b")
    inner_in = L.Input(shape=(6,))
    inner = Model(inner_in, L.Dense(5, activation="relu")(inner_in), name="inner")
    h = L.LSTM(7)(a)
    out = L.Dense(2)(L.concatenate([h, inner(b)]))
    m = Model([a, b], out)
    m.set_weights([w + 0.1 * rng.standard_normal(w.shape) for w in m.get_weights()])
    ref = Model.from_config(m.get_config())
    ref.set_weights(_np_quantized_weights(m))
    m.quantize("int8")
    assert inner.layers[0].quantization_mode == "int8"
    _weights_equal(m.get_weights(), ref.get_weights())
    xs = [_x(shape=(3, 5, 4)), rng.standard_normal((3, 6)).astype(np.float32)]
    np.testing.assert_allclose(m.predict(xs, verbose=0), ref.predict(xs, verbose=0),
                               rtol=0, atol=INT16_ROWS_ATOL)
    back = saving.model_from_bytes(saving.model_to_bytes(m))
    _weights_equal(back.get_weights(), m.get_weights())
    modes = [lay.quantization_mode for lay in back._leaf_layers()
             if isinstance(lay, (L.LSTM, L.Dense))]
    assert modes == ["int8"] * 3
    np.testing.assert_array_equal(back.predict(xs, verbose=0), m.predict(xs, verbose=0))


def test_float64_model_holds_the_int8_values_in_float64():
    m = _stack(dtype="float64")
    ref_w = _np_quantized_weights(m)
    m.quantize("int8")
    assert m.layers[0].kernel.dtype == np.float64
    _weights_equal(m.get_weights(), ref_w)
    # the int8 panels are a float32 runner's; a float64 model streams its (int8-valued)
    # weights in float64, and asking for int8 panels still says why not
    assert m.streamer().weights_dtype == "float64"
    with pytest.raises(ValueError, match="float32 model"):
        m.streamer(weights_dtype="int8")
    m.quantize("int8")
    _weights_equal(m.get_weights(), ref_w)


# ---------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("mode", ["int4", "float8", "INT8", None, 8])
def test_bad_mode(mode):
    m = _stack()
    before = m.get_weights()
    with pytest.raises(ValueError, match=r"supports \('int8',\)"):
        m.quantize(mode)
    with pytest.raises(ValueError, match=r"supports \('int8',\)"):
        m.layers[0].quantize(mode)
    _weights_equal(m.get_weights(), before)
    assert all(lay.quantization_mode is None for lay in m.layers)


def test_unbuilt_and_unquantizable():
    m = Sequential([L.LSTM(4), L.Dense(1)])
    with pytest.raises(ValueError, match="must be built"):
        m.quantize("int8")
    with pytest.raises(ValueError, match="not built"):
        L.Dense(3).quantize("int8")
    with pytest.raises(TypeError, match="unexpected keyword"):
        _stack().quantize("int8", type_check=False)
    d = Sequential([L.Input(shape=(None, 3)), L.Dropout(0.5)])
    with pytest.raises(ValueError, match="no quantizable layers"):
        d.quantize("int8")
    with pytest.raises(NotImplementedError, match="cannot be quantized"):
        d.layers[0].quantize("int8")


def test_training_a_quantized_model_is_refused():
    m = _stack()
    m.compile(optimizer="adam", loss="mse")
    m.quantize("int8")
    before = m.get_weights()
    x, y = _x(), np.zeros((3, 11, 3), np.float32)
    with pytest.raises(ValueError, match="was quantized to int8 for inference"):
        m.fit(x, y, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="was quantized to int8 for inference"):
        m.train_on_batch(x, y)
    _weights_equal(m.get_weights(), before)
    # inference-only calls still work
    m.evaluate(x, y, verbose=0)
    m.test_on_batch(x, y)


def test_frozen_quantized_layers_let_the_others_train():
    m = _stack()
    m.compile(optimizer="adam", loss="mse")
    m.layers[0].quantize("int8")
    m.layers[1].quantize("int8")
    x, y = _x(), np.zeros((3, 11, 3), np.float32)
    with pytest.raises(ValueError, match=r"layers \['lstm"):
        m.fit(x, y, verbose=0)
    m.layers[0].trainable = m.layers[1].trainable = False
    m.compile(optimizer="adam", loss="mse")
    frozen = m.layers[0].get_weights() + m.layers[1].get_weights()
    dense = m.layers[2].get_weights()
    m.fit(x, y, epochs=2, batch_size=3, verbose=0)
    _weights_equal(m.layers[0].get_weights() + m.layers[1].get_weights(), frozen)
    assert not np.array_equal(m.layers[2].get_weights()[0], dense[0])


def test_quantize_refreshes_the_packed_weight_cache():
    # predict keeps packed weights between calls (cylstm/_packcache.py); quantizing in
    # place must never let a stale float pack answer
    m = Sequential([L.LSTM(32, input_shape=(None, 8), seed=1)])
    x = _x(shape=(1, 25, 8))
    m.predict(x, verbose=0)
    m.predict(x, verbose=0)
    ref = Sequential.from_config(m.get_config())
    ref.set_weights(_np_quantized_weights(m))
    m.quantize("int8")
    np.testing.assert_allclose(m.predict(x, verbose=0), ref.predict(x, verbose=0),
                               rtol=0, atol=INT16_ROWS_ATOL)


def test_onnx_export_of_a_quantized_model_runs_the_int8_numbers(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    m = _stack()
    m.quantize("int8")
    path = tmp_path / "q.onnx"
    # quantized="float": the standard LSTM with the q * scale weights, predict's numbers
    # but for the int8 kernel's int16 rows (the default, DynamicQuantizeLSTM, is
    # tests/test_onnx_quantized.py's)
    m.to_onnx(path, quantized="float")
    x = _x()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, m.predict(x, verbose=0), rtol=0, atol=INT16_ROWS_ATOL)
    # the float model's export differs by int8's error: the weights went out rounded
    f = _stack()
    f.to_onnx(tmp_path / "f.onnx")
    sess = ort.InferenceSession(str(tmp_path / "f.onnx"), providers=["CPUExecutionProvider"])
    assert np.abs(sess.run(None, {sess.get_inputs()[0].name: x})[0] - got).max() > 1e-4
