"""cylstm.interop.from_onnx / to_onnx: parity with ONNX Runtime, and refusals."""
import os
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper

from cylstm import layers as L
from cylstm.interop import from_onnx
from cylstm.interop.onnx import to_onnx
from cylstm.models import Sequential

TOL = {"rtol": 1e-5, "atol": 2e-6}


def _ort():
    return pytest.importorskip("onnxruntime")


def ort_run(path, x, **extra):
    ort = _ort()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {sess.get_inputs()[0].name: x}
    feeds.update(extra)
    return sess.run(None, feeds)[0]


# ---------------------------------------------------------------- NumPy reference of ONNX LSTM
def _sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def onnx_lstm_reference(X, W, R, B, layout=0, direction="forward"):
    """The ONNX LSTM operator's equations (gates i, o, f, c) in float64: returns Y, Y_h."""
    X = X.astype(np.float64)
    if layout == 1:
        X = X.transpose(1, 0, 2)
    T, Bn, _ = X.shape
    D, H4, _ = W.shape
    H = H4 // 4
    Y = np.zeros((T, D, Bn, H))
    Yh = np.zeros((D, Bn, H))
    for d in range(D):
        rev = direction == "reverse" or (direction == "bidirectional" and d == 1)
        h = np.zeros((Bn, H))
        c = np.zeros((Bn, H))
        b = B[d, :4 * H] + B[d, 4 * H:] if B is not None else np.zeros(4 * H)
        for t in (range(T - 1, -1, -1) if rev else range(T)):
            z = X[t] @ W[d].T + h @ R[d].T + b
            i, o, f, g = np.split(z, 4, axis=1)
            c = _sig(f) * c + _sig(i) * np.tanh(g)
            h = _sig(o) * np.tanh(c)
            Y[t, d] = h
        Yh[d] = h
    if layout == 1:
        return Y.transpose(2, 0, 1, 3), Yh.transpose(1, 0, 2)
    return Y, Yh


# ---------------------------------------------------------------- graph building helpers
def make_model(nodes, inits, x_shape, y_rank=3, extra_inputs=(), opset=17):
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)]
    inputs += list(extra_inputs)
    graph = helper.make_graph(nodes, "g", inputs,
                              [helper.make_tensor_value_info(
                                  "y", TensorProto.FLOAT, [f"d{k}" for k in range(y_rank)])],
                              initializer=[numpy_helper.from_array(v, k)
                                           for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def lstm_weights(rng, I, H, D=1):
    return {"W": rng.uniform(-0.6, 0.6, (D, 4 * H, I)).astype(np.float32),
            "R": rng.uniform(-0.6, 0.6, (D, 4 * H, H)).astype(np.float32),
            "B": rng.uniform(-0.6, 0.6, (D, 8 * H)).astype(np.float32)}


def save(tmp_path, model, name="m.onnx"):
    p = tmp_path / name
    onnx.save(model, str(p))
    return p


# ---------------------------------------------------------------- hand-built graphs
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_lstm_operator_final_state_head(tmp_path, layout, direction):
    """LSTM -> Y_h -> (B, D*H) -> Gemm(transB) -> Softmax, all layouts and directions."""
    rng = np.random.default_rng(0)
    I, H, D = 3, 4, 2 if direction == "bidirectional" else 1
    inits = lstm_weights(rng, I, H, D)
    inits["Wd"] = rng.standard_normal((2, D * H)).astype(np.float32)
    inits["bd"] = rng.standard_normal(2).astype(np.float32)
    inits["perm_shape"] = np.array([0, -1], np.int64)
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B"], ["", "yh"], hidden_size=H,
                              direction=direction, layout=layout)]
    if layout == 0:   # (D, B, H) -> (B, D, H)
        nodes.append(helper.make_node("Transpose", ["yh"], ["yt"], perm=[1, 0, 2]))
    else:             # already (B, D, H)
        nodes.append(helper.make_node("Identity", ["yh"], ["yt"]))
    nodes += [helper.make_node("Reshape", ["yt", "perm_shape"], ["flat"]),
              helper.make_node("Gemm", ["flat", "Wd", "bd"], ["logits"], transB=1, alpha=0.5,
                               beta=2.0),
              helper.make_node("Softmax", ["logits"], ["y"], axis=-1)]
    shape = ["T", "N", I] if layout == 0 else ["N", "T", I]
    p = save(tmp_path, make_model(nodes, inits, shape, y_rank=2))
    xb = rng.standard_normal((3, 5, I)).astype(np.float32)        # batch-first
    xo = xb if layout == 1 else np.ascontiguousarray(xb.transpose(1, 0, 2))
    model = from_onnx(p)
    got = model.predict(xb, verbose=0)
    _, yh = onnx_lstm_reference(xo, inits["W"], inits["R"], inits["B"], layout, direction)
    yh = yh if layout == 1 else yh.transpose(1, 0, 2)
    z = 0.5 * yh.reshape(3, -1) @ inits["Wd"].T + 2.0 * inits["bd"]
    ref = np.exp(z - z.max(1, keepdims=True))
    ref /= ref.sum(1, keepdims=True)
    np.testing.assert_allclose(got, ref, **TOL)
    if layout == 0:  # ONNX Runtime's CPU LSTM implements layout 0
        np.testing.assert_allclose(got, ort_run(p, xo), **TOL)


@pytest.mark.parametrize("layout", [0, 1])
def test_bidirectional_sequence_with_matmul_add_relu_head(tmp_path, layout):
    rng = np.random.default_rng(1)
    I, H = 3, 4
    inits = lstm_weights(rng, I, H, 2)
    inits["Wd"] = rng.standard_normal((2 * H, 3)).astype(np.float32)
    inits["bd"] = rng.standard_normal((1, 1, 3)).astype(np.float32)
    inits["shape"] = np.array([0, 0, -1], np.int64)
    perm = [0, 2, 1, 3] if layout == 0 else [0, 1, 2, 3]   # -> (T, B, D, H) / (B, T, D, H)
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B"], ["y4"], hidden_size=H,
                              direction="bidirectional", layout=layout),
             helper.make_node("Transpose", ["y4"], ["yt"], perm=perm),
             helper.make_node("Reshape", ["yt", "shape"], ["seq"]),
             helper.make_node("MatMul", ["seq", "Wd"], ["mm"]),
             helper.make_node("Add", ["bd", "mm"], ["lin"]),
             helper.make_node("Relu", ["lin"], ["y"])]
    shape = ["T", "N", I] if layout == 0 else ["N", "T", I]
    p = save(tmp_path, make_model(nodes, inits, shape))
    xb = rng.standard_normal((2, 6, I)).astype(np.float32)
    xo = xb if layout == 1 else np.ascontiguousarray(xb.transpose(1, 0, 2))
    Y, _ = onnx_lstm_reference(xo, inits["W"], inits["R"], inits["B"], layout, "bidirectional")
    Yb = Y.transpose(2, 0, 1, 3) if layout == 0 else Y                 # (B, T, D, H)
    ref = np.maximum(Yb.reshape(2, 6, 2 * H) @ inits["Wd"] + inits["bd"][0], 0)
    np.testing.assert_allclose(from_onnx(p).predict(xb, verbose=0), ref, **TOL)
    if layout == 0:
        np.testing.assert_allclose(ort_run(p, xo).transpose(1, 0, 2), ref, **TOL)


def test_reverse_sequence_feeding_forward_lstm(tmp_path):
    """A reverse layer's Y read by a forward layer (cylstm flips go_backwards outputs)."""
    rng = np.random.default_rng(2)
    a, b = lstm_weights(rng, 3, 4), lstm_weights(rng, 4, 5)
    inits = {"W1": a["W"], "R1": a["R"], "B1": a["B"], "W2": b["W"], "R2": b["R"],
             "B2": b["B"], "ax1": np.array([1], np.int64)}
    nodes = [helper.make_node("LSTM", ["x", "W1", "R1", "B1"], ["y1"], hidden_size=4,
                              direction="reverse"),
             helper.make_node("Squeeze", ["y1", "ax1"], ["s1"]),
             helper.make_node("LSTM", ["s1", "W2", "R2", "B2"], ["y2"], hidden_size=5),
             helper.make_node("Squeeze", ["y2", "ax1"], ["y"])]
    p = save(tmp_path, make_model(nodes, inits, ["T", "N", 3]))
    xo = rng.standard_normal((6, 2, 3)).astype(np.float32)
    got = from_onnx(p).predict(xo.transpose(1, 0, 2), verbose=0)
    np.testing.assert_allclose(got, ort_run(p, xo).transpose(1, 0, 2), **TOL)


def test_opset_11_graph_with_attribute_axes(tmp_path):
    """Older exporters: Squeeze axes as an attribute, Softmax's flattening semantics."""
    rng = np.random.default_rng(13)
    inits = dict(lstm_weights(rng, 3, 4), Wd=rng.standard_normal((4, 2)).astype(np.float32))
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B"], ["", "yh"], hidden_size=4),
             helper.make_node("Squeeze", ["yh"], ["h"], axes=[0]),
             helper.make_node("MatMul", ["h", "Wd"], ["z"]),
             helper.make_node("Softmax", ["z"], ["y"], axis=1)]
    p = save(tmp_path, make_model(nodes, inits, ["T", "N", 3], y_rank=2, opset=11))
    xo = rng.standard_normal((5, 2, 3)).astype(np.float32)
    np.testing.assert_allclose(from_onnx(p).predict(xo.transpose(1, 0, 2), verbose=0),
                               ort_run(p, xo), **TOL)


def test_softmax_over_a_non_feature_axis_is_refused(tmp_path):
    rng = np.random.default_rng(14)
    inits = dict(lstm_weights(rng, 3, 4), Wd=rng.standard_normal((4, 2)).astype(np.float32),
                 ax=np.array([1], np.int64))
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B"], ["y1"], hidden_size=4),
             helper.make_node("Squeeze", ["y1", "ax"], ["s"]),
             helper.make_node("MatMul", ["s", "Wd"], ["z"]),
             helper.make_node("Softmax", ["z"], ["y"], axis=0)]
    with pytest.raises(ValueError, match="axis=0"):
        from_onnx(save(tmp_path, make_model(nodes, inits, ["T", "N", 3])))


def test_reverse_sequence_as_output_is_refused(tmp_path):
    rng = np.random.default_rng(3)
    inits = dict(lstm_weights(rng, 3, 4), ax=np.array([1], np.int64))
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B"], ["y1"], hidden_size=4,
                              direction="reverse"),
             helper.make_node("Squeeze", ["y1", "ax"], ["y"])]
    with pytest.raises(ValueError, match="reverse"):
        from_onnx(save(tmp_path, make_model(nodes, inits, ["T", "N", 3])))


def _state_graph(tmp_path, fed, inits_extra=None, T="T"):
    """One LSTM reading sequence_lens / initial_h / initial_c from the names 'lens', 'h0',
    'c0': graph inputs for those in ``fed``, initializers (``inits_extra``) for the rest."""
    rng = np.random.default_rng(4)
    inits = dict(lstm_weights(rng, 3, 4), ax=np.array([1], np.int64))
    inits.update(inits_extra or {})
    types = {"h0": (TensorProto.FLOAT, [1, "N", 4]), "c0": (TensorProto.FLOAT, [1, "N", 4]),
             "lens": (TensorProto.INT32, ["N"])}
    extra = [helper.make_tensor_value_info(k, *types[k]) for k in fed]
    names = [k if (k in fed or k in inits) else "" for k in ("lens", "h0", "c0")]
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B", *names], ["y1"], hidden_size=4,
                              name="rnn"),
             helper.make_node("Squeeze", ["y1", "ax"], ["y"])]
    return save(tmp_path, make_model(nodes, inits, [T, "N", 3], extra_inputs=extra))


@pytest.mark.parametrize("fed", [("h0",), ("c0",), ("lens",), ("lens", "h0", "c0")])
def test_run_time_state_and_length_inputs_are_refused_by_name(tmp_path, fed):
    # Regression (issue 12): these graph inputs were imported without a word and run as
    # zeros / full lengths, 0.12-0.16 off ONNX Runtime once they were fed non-zero states.
    p = _state_graph(tmp_path, fed)
    with pytest.raises(ValueError, match="'rnn'") as err:
        from_onnx(p)
    what = {"h0": "'h0' (initial_h)", "c0": "'c0' (initial_c)",
            "lens": "'lens' (sequence_lens)"}
    for k in fed:
        assert what[k] in str(err.value)


def test_fed_states_change_onnx_runtime_results(tmp_path):
    # Why the refusal: with fed states ONNX Runtime's output is not the zero-state one, so
    # importing the graph as a zero-state model would be silently wrong.
    p = _state_graph(tmp_path, ("lens", "h0", "c0"))
    rng = np.random.default_rng(5)
    xo = rng.standard_normal((5, 2, 3)).astype(np.float32)
    h0 = rng.uniform(-1, 1, (1, 2, 4)).astype(np.float32)
    c0 = rng.uniform(-1, 1, (1, 2, 4)).astype(np.float32)
    zeros = np.zeros_like(h0)
    full = np.full(2, 5, np.int32)
    fed = ort_run(p, xo, h0=h0, c0=c0, lens=full)
    zero = ort_run(p, xo, h0=zeros, c0=zeros, lens=full)
    short = ort_run(p, xo, h0=zeros, c0=zeros, lens=np.array([5, 2], np.int32))
    assert np.abs(fed - zero).max() > 0.05
    assert np.abs(short - zero).max() > 0.05


def test_zero_state_constants_and_full_length_constant_import(tmp_path):
    zeros = np.zeros((1, 2, 4), np.float32)  # ONNX Runtime wants the batch size here
    p = _state_graph(tmp_path, (), {"h0": zeros, "c0": zeros,
                                    "lens": np.full(2, 5, np.int32)}, T=5)
    rng = np.random.default_rng(6)
    xo = rng.standard_normal((5, 2, 3)).astype(np.float32)
    ref = ort_run(p, xo)
    np.testing.assert_allclose(from_onnx(p).predict(xo.transpose(1, 0, 2), verbose=0),
                               ref.transpose(1, 0, 2), **TOL)


@pytest.mark.parametrize("lens,T", [(np.array([5, 2], np.int32), 5),
                                    (np.full(2, 5, np.int32), "T")])
def test_constant_sequence_lens_other_than_the_full_length_is_refused(tmp_path, lens, T):
    p = _state_graph(tmp_path, (), {"lens": lens}, T=T)
    with pytest.raises(ValueError, match="sequence_lens"):
        from_onnx(p)


# ---------------------------------------------------------------- refusals
def _single_lstm(tmp_path, extra_inputs=(), inits_extra=None, **attrs):
    rng = np.random.default_rng(5)
    inits = dict(lstm_weights(rng, 3, 4), ax=np.array([1], np.int64))
    inits.update(inits_extra or {})
    ins = ["x", "W", "R", "B"] + list(extra_inputs)
    nodes = [helper.make_node("LSTM", ins, ["y1"], hidden_size=4, **attrs),
             helper.make_node("Squeeze", ["y1", "ax"], ["y"])]
    return save(tmp_path, make_model(nodes, inits, ["T", "N", 3]))


@pytest.mark.parametrize("attrs,match", [
    ({"clip": 3.0}, "clip"),
    ({"input_forget": 1}, "input_forget"),
    ({"activations": ["Sigmoid", "Relu", "Relu"]}, "activations"),
    ({"activations": ["HardSigmoid", "Tanh", "Tanh"], "activation_alpha": [0.2]},
     "activations|activation_alpha"),
])
def test_unsupported_lstm_attributes_are_named(tmp_path, attrs, match):
    with pytest.raises(ValueError, match=match):
        from_onnx(_single_lstm(tmp_path, **attrs))


def test_peepholes_are_refused(tmp_path):
    P = np.full((1, 12), 0.1, np.float32)
    p = _single_lstm(tmp_path, ["", "", "", "P"], {"P": P})
    with pytest.raises(ValueError, match="peephole"):
        from_onnx(p)


def test_nonzero_initial_state_is_refused(tmp_path):
    h0 = np.full((1, 1, 4), 0.5, np.float32)
    p = _single_lstm(tmp_path, ["", "h0"], {"h0": h0})
    with pytest.raises(ValueError, match="initial_h"):
        from_onnx(p)


def test_cell_state_output_is_refused(tmp_path):
    rng = np.random.default_rng(6)
    inits = dict(lstm_weights(rng, 3, 4), ax=np.array([0], np.int64))
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B"], ["", "", "yc"], hidden_size=4),
             helper.make_node("Squeeze", ["yc", "ax"], ["y"])]
    with pytest.raises(ValueError, match="Y_c"):
        from_onnx(save(tmp_path, make_model(nodes, inits, ["T", "N", 3])))


def test_unsupported_operator_is_named(tmp_path):
    rng = np.random.default_rng(7)
    H = 4
    inits = {"W": rng.standard_normal((1, 3 * H, 3)).astype(np.float32),
             "R": rng.standard_normal((1, 3 * H, H)).astype(np.float32),
             "ax": np.array([1], np.int64)}
    nodes = [helper.make_node("GRU", ["x", "W", "R"], ["y1"], hidden_size=H),
             helper.make_node("Squeeze", ["y1", "ax"], ["y"])]
    with pytest.raises(ValueError, match="GRU"):
        from_onnx(save(tmp_path, make_model(nodes, inits, ["T", "N", 3])))


def test_branching_graph_is_refused(tmp_path):
    rng = np.random.default_rng(8)
    inits = dict(lstm_weights(rng, 3, 4), ax=np.array([1], np.int64))
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B"], ["y1"], hidden_size=4),
             helper.make_node("Squeeze", ["y1", "ax"], ["s"]),
             helper.make_node("Add", ["s", "s"], ["y"])]
    with pytest.raises(ValueError, match="branches"):
        from_onnx(save(tmp_path, make_model(nodes, inits, ["T", "N", 3])))


def test_corrupt_and_truncated_files(tmp_path):
    p = tmp_path / "garbage.onnx"
    p.write_bytes(os.urandom(2048))
    with pytest.raises(ValueError):
        from_onnx(p)
    good = _single_lstm(tmp_path)
    data = good.read_bytes()
    t = tmp_path / "truncated.onnx"
    t.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError):
        from_onnx(t)
    with pytest.raises(FileNotFoundError):
        from_onnx(tmp_path / "missing.onnx")
    with pytest.raises(TypeError):
        from_onnx(12)


def test_damaged_files_give_clear_errors_only(tmp_path):
    """Random byte flips and graph edits: a ValueError/TypeError or a model, never a crash."""
    model = Sequential([L.Bidirectional(L.LSTM(3, return_sequences=True),
                                        input_shape=(None, 2)), L.LSTM(2), L.Dense(2)])
    good = tmp_path / "good.onnx"
    to_onnx(model, good)
    base = good.read_bytes()
    rng = np.random.default_rng(15)
    bad = tmp_path / "bad.onnx"
    for _ in range(150):
        b = bytearray(base)
        for pos in rng.integers(0, len(b), rng.integers(1, 5)):
            b[pos] = rng.integers(0, 256)
        bad.write_bytes(bytes(b))
        try:
            from_onnx(bad)
        except (ValueError, TypeError):
            pass
    proto = onnx.load(str(good))
    for _ in range(150):
        m = onnx.ModelProto()
        m.CopyFrom(proto)
        node = m.graph.node[rng.integers(len(m.graph.node))]
        if len(node.input) and rng.random() < 0.5:
            node.input[rng.integers(len(node.input))] = str(rng.choice(["", "x", "nope"]))
        else:
            node.op_type = str(rng.choice(["Transpose", "Squeeze", "Reshape", "Gather", "Slice",
                                           "Expand", "Add", "MatMul", "ReduceSum", "Concat"]))
        bad.write_bytes(m.SerializeToString())
        try:
            from_onnx(bad)
        except (ValueError, TypeError):
            pass


def test_external_data_reference_is_refused(tmp_path):
    """A hostile file must not make the importer read other files from disk."""
    m = onnx.load(str(_single_lstm(tmp_path)))
    w = next(t for t in m.graph.initializer if t.name == "W")
    w.ClearField("raw_data")
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    e = w.external_data.add()
    e.key, e.value = "location", "../../../../etc/passwd"
    p = tmp_path / "ext.onnx"
    p.write_bytes(m.SerializeToString())
    with pytest.raises(ValueError, match="external"):
        from_onnx(p)


def test_lying_tensor_shape_is_refused(tmp_path):
    m = onnx.load(str(_single_lstm(tmp_path)))
    w = next(t for t in m.graph.initializer if t.name == "R")
    del w.dims[:]
    w.dims.extend([1 << 20, 1 << 20, 16])  # claims 2**44 values, holds a few hundred
    p = tmp_path / "lie.onnx"
    p.write_bytes(m.SerializeToString())
    with pytest.raises(ValueError):
        from_onnx(p)


# ---------------------------------------------------------------- torch.onnx.export
@pytest.mark.parametrize("num_layers,bidirectional,batch_first,head,dynamic", [
    (1, False, True, False, True),
    (2, False, False, True, True),
    (1, True, True, True, False),
    (2, True, False, False, False),
    (2, True, True, True, True),
])
def test_torch_onnx_export_parity(tmp_path, num_layers, bidirectional, batch_first, head,
                                  dynamic):
    torch = pytest.importorskip("torch")
    _ort()

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.LSTM(3, 5, num_layers=num_layers, bidirectional=bidirectional,
                                     batch_first=batch_first)
            self.fc = torch.nn.Linear(5 * (2 if bidirectional else 1), 2)

        def forward(self, x):
            y = self.rnn(x)[0]
            return torch.tanh(self.fc(y)) if head else y

    torch.manual_seed(0)
    net = Net().eval()
    xb = np.random.default_rng(9).standard_normal((3, 6, 3)).astype(np.float32)
    x = xb if batch_first else np.ascontiguousarray(xb.transpose(1, 0, 2))
    p = tmp_path / "t.onnx"
    kw = {"dynamic_axes": {"x": {0: "a", 1: "b"}}} if dynamic else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(net, (torch.from_numpy(x),), str(p), dynamo=False,
                              input_names=["x"], **kw)
        except Exception as e:  # noqa: BLE001 - exporter availability varies by install
            pytest.skip(f"torch.onnx.export unavailable here: {e}")
    ref = ort_run(p, x)
    with torch.no_grad():
        np.testing.assert_allclose(ref, net(torch.from_numpy(x)).numpy(), **TOL)
    got = from_onnx(p).predict(xb, verbose=0)
    np.testing.assert_allclose(got, ref if batch_first else ref.transpose(1, 0, 2), **TOL)


# ---------------------------------------------------------------- export: cylstm -> ONNX
def _models():
    yield "lstm-stack", Sequential([
        L.LSTM(5, return_sequences=True, input_shape=(None, 3)),
        L.Dropout(0.2),
        L.LSTM(4, return_sequences=True, go_backwards=True),
        L.LSTM(3, go_backwards=True), L.Dense(2, activation="softmax")])
    for mode in ("concat", "sum", "ave", "mul"):
        yield f"bidirectional-{mode}", Sequential([
            L.Bidirectional(L.LSTM(4, return_sequences=True), merge_mode=mode,
                            input_shape=(None, 3)),
            L.Bidirectional(L.LSTM(3), merge_mode=mode), L.Dense(2, activation="relu")])
    yield "dense-first", Sequential([
        L.Dense(4, activation="tanh", input_shape=(None, 3)), L.LSTM(3), L.Dense(2)])
    yield "sequence-head", Sequential([
        L.LSTM(4, return_sequences=True, input_shape=(None, 3), use_bias=False),
        L.Dense(3, activation="tanh"), L.Dense(2, activation="sigmoid", use_bias=False)])


@pytest.mark.parametrize("name,model", list(_models()), ids=lambda v: v if isinstance(v, str)
                         else "")
def test_round_trip_through_onnx_runtime(tmp_path, name, model):
    rng = np.random.default_rng(10)
    for layer in model.layers:  # non-trivial biases everywhere
        layer.set_weights([w + rng.uniform(-0.3, 0.3, w.shape).astype(w.dtype)
                           for w in layer.get_weights()])
    x = rng.standard_normal((4, 7, 3)).astype(np.float32)
    want = model.predict(x, verbose=0)
    p = tmp_path / "m.onnx"
    assert to_onnx(model, p) == str(p)
    np.testing.assert_allclose(ort_run(p, x), want, **TOL)
    back = from_onnx(p)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back.predict(x, verbose=0), want, **TOL)
    # batch and time are symbolic: other sizes run too
    x2 = rng.standard_normal((1, 2, 3)).astype(np.float32)
    np.testing.assert_allclose(ort_run(p, x2), model.predict(x2, verbose=0), **TOL)


def test_embedding_model_export(tmp_path):
    model = Sequential([L.Embedding(10, 4, input_shape=(None,)),
                        L.LSTM(3, return_sequences=True), L.Dense(2)])
    x = np.random.default_rng(12).integers(0, 10, (2, 5))
    to_onnx(model, tmp_path / "e.onnx")
    want = model.predict(x, verbose=0)
    np.testing.assert_allclose(ort_run(tmp_path / "e.onnx", x.astype(np.int64)), want, **TOL)
    back = from_onnx(tmp_path / "e.onnx")
    assert type(back.layers[0]).__name__ == "Embedding"
    np.testing.assert_allclose(back.predict(x, verbose=0), want, **TOL)


def test_model_to_onnx_method_and_atomic_replace(tmp_path):
    model = Sequential([L.LSTM(3, input_shape=(None, 2)), L.Dense(1)])
    p = tmp_path / "m.onnx"
    p.write_bytes(b"old contents")
    model.to_onnx(str(p))
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]  # no temporary left behind
    x = np.ones((2, 4, 2), np.float32)
    np.testing.assert_allclose(ort_run(p, x), model.predict(x, verbose=0), **TOL)


def test_float64_model_export(tmp_path):
    rng = np.random.default_rng(11)
    model = Sequential([L.LSTM(3, return_sequences=True, input_shape=(None, 2),
                               dtype="float64"), L.Dense(2)])
    x = rng.standard_normal((2, 5, 2))
    p64, p32 = tmp_path / "m64.onnx", tmp_path / "m32.onnx"
    to_onnx(model, p64)
    onnx.checker.check_model(onnx.load(str(p64)))
    back = from_onnx(p64)
    assert back.dtype == np.float64
    np.testing.assert_allclose(back.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-12, atol=1e-14)
    to_onnx(model, p32, dtype="float32")  # what ONNX Runtime's CPU LSTM runs
    np.testing.assert_allclose(ort_run(p32, x.astype(np.float32)), model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)


def test_export_refusals(tmp_path):
    with pytest.raises(ValueError, match="Masking"):
        to_onnx(Sequential([L.Masking(input_shape=(None, 2)), L.LSTM(3)]), tmp_path / "a.onnx")
    with pytest.raises(ValueError, match="mask_zero"):
        to_onnx(Sequential([L.Embedding(5, 2, mask_zero=True, input_shape=(None,)), L.LSTM(3)]),
                tmp_path / "a.onnx")
    with pytest.raises(ValueError, match="not built"):
        to_onnx(Sequential([L.LSTM(3)]), tmp_path / "b.onnx")
    with pytest.raises(TypeError):
        to_onnx(object(), tmp_path / "c.onnx")
    assert os.listdir(tmp_path) == []
