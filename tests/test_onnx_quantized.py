"""Issue 16: ``to_onnx`` of an int8 model writes ONNX Runtime's ``DynamicQuantizeLSTM``,
and ``from_onnx`` imports it (dequantized; marked int8 when it is cylstm's own grid)."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="ONNX export/import needs the onnx package")
from onnx import TensorProto, helper, numpy_helper
from reference import lstm_ref

from cylstm import layers as L
from cylstm.interop import from_onnx
from cylstm.interop.onnx import to_onnx
from cylstm.models import Sequential

TOL = {"rtol": 1e-5, "atol": 2e-6}
# ONNX Runtime's DynamicQuantizeLSTM quantizes x_t and h_t to 8 bits at run time (cylstm's
# int8 layers multiply float activations).  Measured (onnxruntime 1.32, AVX2 CPU) on the
# exported models below, outputs up to 0.7: max |ORT - predict| 5.6e-4 to 2.4e-3 for the
# quantized model, 1.4e-3 to 2.7e-3 for the float one.  Full-range int8 weights would be
# up to 0.3 off on CPUs without VNNI (ORT's u8s8 kernel saturates); the export writes uint8.
ORT_DQ_ATOL = 3e-2


def ort_run(path, x):
    ort = pytest.importorskip("onnxruntime", reason="running the graph needs onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _perturbed(model, seed):
    """Seeded weights (biases too) of a size that gives outputs of size ~1."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        layer.set_weights([rng.uniform(-0.6, 0.6, w.shape).astype(w.dtype)
                           for w in layer.get_weights()])
    return model


def _models():
    yield "stack", Sequential([
        L.LSTM(16, return_sequences=True, input_shape=(None, 6)),
        L.LSTM(12, return_sequences=True, go_backwards=True),
        L.LSTM(8, go_backwards=True), L.Dense(3, activation="tanh")])
    yield "bidirectional", Sequential([
        L.Bidirectional(L.LSTM(10, return_sequences=True), input_shape=(None, 6)),
        L.Bidirectional(L.LSTM(6), merge_mode="sum"), L.Dense(3)])
    yield "sequence-head", Sequential([
        L.LSTM(12, return_sequences=True, input_shape=(None, 6), use_bias=False),
        L.Dense(4, activation="sigmoid")])


def _lstms(model):
    out = []
    for lay in model.layers:
        if isinstance(lay, L.Bidirectional):
            out += [lay.forward_layer, lay.backward_layer]
        elif isinstance(lay, L.LSTM):
            out.append(lay)
    return out


def _ops(path):
    g = onnx.load(str(path)).graph
    return [(n.domain, n.op_type) for n in g.node]


@pytest.mark.parametrize("name,make", [(n, m) for n, m in _models()],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_quantized_export_runs_in_onnx_runtime(tmp_path, name, make):
    model = _perturbed(make, 3)
    x = np.random.default_rng(4).standard_normal((5, 9, 6)).astype(np.float32)
    want_float = model.predict(x, verbose=0)
    model.quantize("int8")
    want = model.predict(x, verbose=0)
    p = tmp_path / "q.onnx"
    assert to_onnx(model, p) == str(p)
    proto = onnx.load(str(p))
    # the checker has no com.microsoft schemas: it checks the rest and skips the contrib op
    onnx.checker.check_model(proto)
    assert ("com.microsoft", 1) in [(o.domain, o.version) for o in proto.opset_import]
    ops = _ops(p)
    assert ("", "LSTM") not in ops
    assert ops.count(("com.microsoft", "DynamicQuantizeLSTM")) == len(
        [lay for lay in model.layers if not isinstance(lay, L.Dense)])
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type == "DynamicQuantizeLSTM":
            # cylstm's int8 q as uint8 q + 128 (zero point 128): ORT's u8u8 kernel, which
            # does not saturate as its u8s8 one does on CPUs without VNNI
            W, R = inits[n.input[1]], inits[n.input[2]]
            assert W.dtype == R.dtype == np.uint8
            assert W.min() >= 1 and R.min() >= 1  # q in [-127, 127]
            for k in (8, 10):
                assert inits[n.input[k]].dtype == np.float32
                assert inits[n.input[k]].shape == (W.shape[0], W.shape[2])  # per channel
                assert inits[n.input[k + 1]].dtype == np.uint8
                assert np.all(inits[n.input[k + 1]] == 128)
    got = ort_run(p, x)
    err_q = float(np.max(np.abs(got - want)))
    err_f = float(np.max(np.abs(got - want_float)))
    print(f"{name}: max|ORT - quantized predict| = {err_q:.2e}, "
          f"max|ORT - float predict| = {err_f:.2e}, max|y| = {np.max(np.abs(want)):.2f}")
    assert err_q <= ORT_DQ_ATOL
    assert err_f <= ORT_DQ_ATOL
    assert err_q > 0  # it really is ORT's quantized kernel, not the float LSTM

    back = from_onnx(p)
    assert back.dtype == np.float32
    for a, b in zip(back.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)  # bit for bit
    assert [lay.quantization_mode for lay in _lstms(back)] == ["int8"] * len(_lstms(model))
    np.testing.assert_allclose(back.predict(x, verbose=0), want, **TOL)


def test_opting_out_writes_the_dequantized_float_lstm(tmp_path):
    model = _perturbed(next(_models())[1], 5)
    model.quantize("int8")
    x = np.random.default_rng(6).standard_normal((3, 7, 6)).astype(np.float32)
    p = tmp_path / "f.onnx"
    to_onnx(model, p, quantized="float")
    assert {op for _, op in _ops(p)} >= {"LSTM"}
    assert all(d == "" for d, _ in _ops(p))
    # predict runs the int8 kernel, whose int16 rows ([x_t, h_prev] each quantized to
    # 2^-15 of its largest value) are a few 1e-6 off the float LSTM on the same weights
    np.testing.assert_allclose(ort_run(p, x), model.predict(x, verbose=0), rtol=0, atol=2e-5)
    back = from_onnx(p)
    for a, b in zip(back.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    # a float graph does not say it is int8
    assert [lay.quantization_mode for lay in _lstms(back)] == [None] * 3


def test_float_model_exports_as_before(tmp_path):
    model = _perturbed(next(_models())[1], 7)
    p1, p2 = tmp_path / "a.onnx", tmp_path / "b.onnx"
    to_onnx(model, p1)
    to_onnx(model, p2, quantized="float")
    assert p1.read_bytes() == p2.read_bytes()
    proto = onnx.load(str(p1))
    assert [o.domain for o in proto.opset_import] == [""]
    assert ("", "LSTM") in _ops(p1)


def test_quantized_export_refusals(tmp_path):
    model = Sequential([L.LSTM(4, input_shape=(None, 3), dtype="float64"), L.Dense(2)])
    model.quantize("int8")
    with pytest.raises(ValueError, match="float32"):
        to_onnx(model, tmp_path / "a.onnx")
    to_onnx(model, tmp_path / "a.onnx", dtype="float32")  # runs in ONNX Runtime
    to_onnx(model, tmp_path / "b.onnx", quantized="float")
    with pytest.raises(ValueError, match="quantized must be"):
        to_onnx(model, tmp_path / "c.onnx", quantized="uint8")
    bi = Sequential([L.Bidirectional(L.LSTM(3), input_shape=(None, 2))])
    bi.layers[0].forward_layer.quantize("int8")
    with pytest.raises(ValueError, match="one half of the Bidirectional"):
        to_onnx(bi, tmp_path / "d.onnx")
    lone = Sequential([L.LSTM(3, input_shape=(None, 2))])
    lone.quantize("int8")
    with pytest.raises(ValueError, match="read-only"):
        lone.layers[0].kernel[0, 0] += 1e-3   # a quantized layer's weights are sealed
    k = lone.layers[0].kernel
    k.flags.writeable = True   # unsealed by hand: written directly, bypassing quantize()
    k[0, 0] += 1e-3
    with pytest.raises(ValueError, match="not made of int8 values"):
        to_onnx(lone, tmp_path / "e.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "b.onnx"]


# ------------------------------------------------------------- hand-built DynamicQuantizeLSTM
def _dq_graph(I, H, D, direction, seed, dtype=np.uint8, per_channel=False, y="Y_h",
              extra_attrs=None, P=None):
    """A DynamicQuantizeLSTM graph with uint8 (or int8) weights and nonzero zero points;
    returns the model and the dequantized float64 weights in ONNX's W [D, I, 4H] order."""
    rng = np.random.default_rng(seed)
    # int8 weights in 7 bits (ORT's reduce_range): full-range int8 weights saturate ORT's
    # u8s8 kernel on CPUs without VNNI, and the test compares with ORT too
    lo, hi = (0, 256) if dtype == np.uint8 else (-64, 64)
    Wq = rng.integers(lo, hi, (D, I, 4 * H)).astype(dtype)
    Rq = rng.integers(lo, hi, (D, H, 4 * H)).astype(dtype)
    sshape = (D, 4 * H) if per_channel else (D,)
    ws = rng.uniform(0.002, 0.006, sshape).astype(np.float32)
    rs = rng.uniform(0.002, 0.006, sshape).astype(np.float32)
    # nonzero zero points for uint8; ONNX Runtime requires 0 for int8 weights
    wz = rng.integers(lo + (hi - lo) // 4, hi - (hi - lo) // 4, sshape).astype(dtype)
    rz = rng.integers(lo + (hi - lo) // 4, hi - (hi - lo) // 4, sshape).astype(dtype)
    if dtype == np.int8:
        wz[...] = rz[...] = 0
    B = rng.uniform(-0.4, 0.4, (D, 8 * H)).astype(np.float32)

    def deq(q, s, z):
        return (q.astype(np.float64) - z.reshape(D, 1, -1)) * s.reshape(D, 1, -1)

    inits = {"W": Wq, "R": Rq, "B": B, "ws": ws, "wz": wz, "rs": rs, "rz": rz}
    if P is not None:
        inits["P"] = P
    ins = ["xt", "W", "R", "B", "", "", "", "P" if P is not None else "", "ws", "wz", "rs",
           "rz"]
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
             helper.make_node("DynamicQuantizeLSTM", ins, ["Y", "Y_h"], name="dq",
                              domain="com.microsoft", hidden_size=H, direction=direction,
                              **(extra_attrs or {}))]
    if y == "Y_h":  # (D, B, H) -> (B, D*H)
        nodes += [helper.make_node("Transpose", ["Y_h"], ["t"], perm=[1, 0, 2]),
                  helper.make_node("Reshape", ["t", "shape"], ["y"])]
        inits["shape"] = np.array([0, -1], np.int64)
        y_dims = ["b", D * H]
    else:  # (T, D, B, H) -> (B, T, D*H)
        nodes += [helper.make_node("Transpose", ["Y"], ["t"], perm=[2, 0, 1, 3]),
                  helper.make_node("Reshape", ["t", "shape"], ["y"])]
        inits["shape"] = np.array([0, 0, -1], np.int64)
        y_dims = ["b", "t", D * H]
    graph = helper.make_graph(
        nodes, "dq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", I])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_dims)],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8
    return m, deq(Wq, ws, wz), deq(Rq, rs, rz), B.astype(np.float64)


def _reference(x, W, R, B, direction, y):
    """NumPy float64 LSTM (tests/reference.py) of the dequantized weights, per direction."""
    D, _, H4 = W.shape
    H = H4 // 4
    outs = []
    for d in range(D):
        # ONNX gates i, o, f, c -> the reference's i, f, c(g), o, on the column axis
        def perm(a):
            blocks = np.split(a, 4, axis=-1)
            return np.concatenate([blocks["iofc".index(g)] for g in "ifco"], axis=-1)
        rev = direction == "reverse" or d == 1
        ys, hT, _, _ = lstm_ref(x, perm(W[d]), perm(R[d]), perm(B[d, :4 * H] + B[d, 4 * H:]),
                                reverse=rev)
        outs.append(hT if y == "Y_h" else ys)
    return np.concatenate(outs, axis=-1)


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("dtype,per_channel", [(np.uint8, False), (np.int8, True)])
def test_hand_built_graph_imports_dequantized(tmp_path, direction, dtype, per_channel):
    D = 2 if direction == "bidirectional" else 1
    y = "Y_h" if direction == "reverse" else "Y"  # a reverse sequence output is refused
    m, W, R, B = _dq_graph(5, 4, D, direction, seed=8, dtype=dtype, per_channel=per_channel,
                           y=y)
    p = tmp_path / "dq.onnx"
    onnx.save(m, str(p))
    x = np.random.default_rng(9).standard_normal((3, 6, 5)).astype(np.float32)
    model = from_onnx(p)
    want = _reference(x, W, R, B, direction, y)
    got = model.predict(x, verbose=0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)
    # nonzero zero points / per-tensor scales are not cylstm's grid: a float model
    assert all(lay.quantization_mode is None for lay in _lstms(model))
    # ONNX Runtime runs the same graph, up to its activation quantization
    err = float(np.max(np.abs(ort_run(p, x) - want)))
    print(f"{direction} {np.dtype(dtype).name}: max|ORT - reference| = {err:.2e}")
    assert err <= ORT_DQ_ATOL


def test_hand_built_graph_on_cylstms_grid_imports_quantized(tmp_path):
    """int8 weights, zero points 0, per-channel scales max|column| / 127: cylstm's grid."""
    rng = np.random.default_rng(10)
    I, H = 3, 2
    Wq = rng.integers(-127, 128, (1, I, 4 * H)).astype(np.int8)
    Rq = rng.integers(-127, 128, (1, H, 4 * H)).astype(np.int8)
    Wq[0, 0], Rq[0, 0] = 127, -127  # each column reaches the full range
    ws = rng.uniform(0.002, 0.006, (1, 4 * H)).astype(np.float32)
    rs = rng.uniform(0.002, 0.006, (1, 4 * H)).astype(np.float32)
    z = np.zeros((1, 4 * H), np.int8)
    node = helper.make_node("DynamicQuantizeLSTM", ["x", "W", "R", "", "", "", "", "",
                                                    "ws", "wz", "rs", "rz"], ["Y", "Y_h"],
                            domain="com.microsoft", hidden_size=H)
    sq = helper.make_node("Squeeze", ["Y_h", "ax"], ["y"])
    inits = {"W": Wq, "R": Rq, "ws": ws, "wz": z, "rs": rs, "rz": z,
             "ax": np.array([0], np.int64)}
    graph = helper.make_graph(
        [node, sq], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["t", "b", I])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", H])],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8
    model = from_onnx(m)
    lay = model.layers[0]
    assert lay.quantization_mode == "int8"
    assert not lay.use_bias
    perm = [0, 2, 3, 1]  # cylstm's i, f, c, o from ONNX's i, o, f, c

    def cyl(q, s):
        a = (q[0].astype(np.float32) * s[0]).reshape(-1, 4, H)
        return a[:, perm].reshape(q.shape[1], 4 * H)
    np.testing.assert_array_equal(lay.kernel, cyl(Wq, ws))
    np.testing.assert_array_equal(lay.recurrent_kernel, cyl(Rq, rs))


def _save(tmp_path, m):
    p = tmp_path / "r.onnx"
    onnx.save(m, str(p))
    return p


@pytest.mark.parametrize("attrs,match", [
    ({"clip": 3.0}, "clip"),
    ({"input_forget": 1}, "input_forget"),
    ({"activations": ["Sigmoid", "Relu", "Tanh"]}, "activations"),
    ({"layout": 1}, "unknown DynamicQuantizeLSTM attribute 'layout'"),
])
def test_unsupported_attributes_are_named(tmp_path, attrs, match):
    m, *_ = _dq_graph(3, 2, 1, "forward", 11, extra_attrs=attrs)
    with pytest.raises(ValueError, match=match):
        from_onnx(m)


def test_peepholes_are_refused(tmp_path):
    m, *_ = _dq_graph(3, 2, 1, "forward", 12, P=np.full((1, 6), 0.1, np.float32))
    with pytest.raises(ValueError, match=r"DynamicQuantizeLSTM.*peephole weights \(input P\)"):
        from_onnx(m)
    m, *_ = _dq_graph(3, 2, 1, "forward", 12, P=np.zeros((1, 6), np.float32))
    from_onnx(m)  # zero peepholes are no peepholes


def _replace_init(m, name, value):
    for k, t in enumerate(m.graph.initializer):
        if t.name == name:
            m.graph.initializer[k].CopyFrom(numpy_helper.from_array(value, name))
    return m


@pytest.mark.parametrize("name,value,match", [
    ("ws", np.ones((1, 3), np.float32), r"input W_scale must have shape \(1,\)"),
    ("rz", np.zeros((2,), np.uint8), r"input R_zero_point must have shape"),
    ("wz", np.zeros((1,), np.int8), "input W_zero_point must be uint8"),
    ("ws", np.array([np.inf], np.float32), "input W_scale holds NaN"),
    ("ws", np.array([3e38], np.float32), "input W_scale makes the dequantized weights overflow"),
    ("W", np.zeros((1, 3, 7), np.uint8), r"input W must have shape \(1, input_size"),
    ("R", np.zeros((1, 8, 2), np.uint8), r"input R must have shape \(1, 2, 8\)"),
    ("R", np.zeros((1, 2, 8), np.int8), "must both be int8 or both uint8"),
    ("W", np.zeros((1, 3, 8), np.float32), "must both be int8 or both uint8"),
])
def test_bad_quantization_inputs_are_named(tmp_path, name, value, match):
    m, *_ = _dq_graph(3, 2, 1, "forward", 13)
    _replace_init(m, name, value)
    with pytest.raises(ValueError, match=match):
        from_onnx(m)


def test_other_contrib_operators_are_refused(tmp_path):
    m, *_ = _dq_graph(3, 2, 1, "forward", 14)
    m.graph.node[1].op_type = "DynamicQuantizeMatMul"
    with pytest.raises(ValueError, match="domain 'com.microsoft' are not supported"):
        from_onnx(m)
