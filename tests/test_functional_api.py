"""The functional API (issue 12, part 1): symbolic Input, Model(inputs, outputs), shared
layers, nested models, LSTM states as values, masks, merge layers, Flatten/Reshape;
checked against Sequential on shared weights, a NumPy float64 reference, and central
finite differences in float64; plus training, saving, config, summary, export and the
build-time graph errors."""
import numpy as np
import pytest
from reference import numeric_grad
from test_layers import dense_ref, keras_lstm_ref

import cylstm
from cylstm import layers as L
from cylstm.models import Model, Sequential, load_model


def _randomize(model, rng, scale=0.5):
    model.set_weights([rng.standard_normal(w.shape) * scale for w in model.get_weights()])


def _fd_grads(model, xs, ys, max_entries=None, rng=None):
    """Central differences of the compiled loss (total of all outputs) w.r.t. the weights."""
    ws = model.get_weights()
    trial = [a.copy() for a in ws]

    def loss(_perturbed):  # one entry of trial perturbed
        model.set_weights(trial)
        return model._forward_backward(xs, ys)[0]

    out = []
    for w in trial:
        idx = np.arange(w.size)
        if max_entries is not None and w.size > max_entries:
            idx = rng.choice(w.size, max_entries, replace=False)
        out.append(numeric_grad(loss, w, indices=idx))
    model.set_weights(ws)
    return out


def _check_grads(model, xs, ys, rtol=1e-5, atol=1e-8, max_entries=None, seed=0):
    _, grads = model._forward_backward(xs, ys)
    num = _fd_grads(model, xs, ys, max_entries=max_entries, rng=np.random.default_rng(seed))
    names = [f"{o.name}/{n}" for o, n in model._param_items()]
    for nm, g, n in zip(names, grads, num):
        sel = ~np.isnan(n)
        np.testing.assert_allclose(g[sel], n[sel], rtol=rtol, atol=atol, err_msg=nm)


# --------------------------------------------------------------------------- basics
def test_symbolic_input_and_layer_call_builds_a_node():
    x = cylstm.Input(shape=(None, 4))
    assert isinstance(x, cylstm.layers.Input) and x.shape == (None, None, 4)
    y = L.LSTM(3)(x)  # used to raise "inputs must be a real numeric array"
    assert y.shape == (None, 3)
    seq, h, c = L.LSTM(5, return_sequences=True, return_state=True)(x)
    assert seq.shape == (None, None, 5) and h.shape == c.shape == (None, 5)
    with pytest.raises(TypeError, match="symbolic tensor"):
        np.asarray(y)
    # Input still starts a Sequential model
    m = Sequential([L.Input(shape=(None, 4)), L.LSTM(2)])
    assert m.built and m.input_shape == (None, None, 4)


def test_chain_matches_sequential_on_shared_weights():
    rng = np.random.default_rng(0)
    seq = Sequential([L.LSTM(6, return_sequences=True, input_shape=(None, 3)), L.LSTM(4),
                      L.Dense(1)])
    inp = L.Input(shape=(None, 3))
    out = L.Dense(1)(L.LSTM(4)(L.LSTM(6, return_sequences=True)(inp)))
    fun = Model(inp, out)
    assert isinstance(seq, Model) and [w.shape for w in fun.get_weights()] == \
        [w.shape for w in seq.get_weights()]
    _randomize(seq, rng)
    fun.set_weights(seq.get_weights())
    x = rng.standard_normal((10, 7, 3)).astype(np.float32)
    y = rng.standard_normal((10, 1)).astype(np.float32)
    np.testing.assert_array_equal(fun.predict(x, verbose=0), seq.predict(x, verbose=0))
    np.testing.assert_array_equal(fun(x), seq(x))
    for m in (seq, fun):
        m.compile(optimizer=cylstm.optimizers.Adam(0.01), loss="mse", metrics=["mae"])
    hs = seq.fit(x, y, epochs=3, batch_size=4, shuffle=False, verbose=0).history
    hf = fun.fit(x, y, epochs=3, batch_size=4, shuffle=False, verbose=0).history
    assert hs.keys() == hf.keys() == {"loss", "mae"}
    np.testing.assert_allclose(hf["loss"], hs["loss"], rtol=1e-6)
    for a, b in zip(fun.get_weights(), seq.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_multi_input_multi_output_shared_layer_matches_numpy_reference():
    rng = np.random.default_rng(1)
    a = L.Input(shape=(5, 3), name="a", dtype="float64")
    b = L.Input(shape=(5, 3), name="b", dtype="float64")
    shared = L.LSTM(4, name="shared")
    ha, hb = shared(a), shared(b)
    out1 = L.Dense(2, activation="tanh", name="out1")(L.concatenate([ha, hb]))
    out2 = L.Dense(1, name="out2")(L.subtract([ha, hb]))
    model = Model({"a": a, "b": b}, [out1, out2])
    assert model.input_names == ["a", "b"] and model.output_names == ["out1", "out2"]
    assert len(model.get_weights()) == 3 + 2 + 2  # the shared LSTM's weights once
    _randomize(model, rng)
    xa, xb = rng.standard_normal((6, 5, 3)), rng.standard_normal((6, 5, 3))
    W, U, bias = shared.get_weights()
    ra = keras_lstm_ref(xa, W, U, bias)[0]
    rb = keras_lstm_ref(xb, W, U, bias)[0]
    r1 = dense_ref(np.concatenate([ra, rb], 1), *model.get_layer("out1").get_weights(), "tanh")
    r2 = dense_ref(ra - rb, *model.get_layer("out2").get_weights(), None)
    p1, p2 = model.predict({"a": xa, "b": xb}, verbose=0)
    np.testing.assert_allclose(p1, r1, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(p2, r2, rtol=1e-10, atol=1e-12)
    q1, q2 = model([xa, xb])
    np.testing.assert_allclose(q1, r1, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(q2, r2, rtol=1e-10, atol=1e-12)


def test_gradients_multi_input_multi_output_shared_layer_finite_differences():
    rng = np.random.default_rng(2)
    a = L.Input(shape=(4, 3), dtype="float64")
    b = L.Input(shape=(4, 3), dtype="float64")
    shared = L.LSTM(3, return_sequences=True)
    sa, sb = shared(a), shared(b)
    merged = L.Concatenate(axis=-1)([sa, sb])
    top = L.LSTM(2)(merged)
    prod = L.Multiply()([L.LSTM(2)(sa), top])
    o1 = L.Dense(2, name="o1")(top)
    o2 = L.Dense(1, activation="sigmoid", name="o2")(L.add([prod, top]))
    model = Model([a, b], {"o1": o1, "o2": o2})
    _randomize(model, rng)
    model.compile("sgd", loss={"o1": "mse", "o2": "binary_crossentropy"},
                  loss_weights={"o1": 0.7, "o2": 1.3})
    xs = [rng.standard_normal((5, 4, 3)), rng.standard_normal((5, 4, 3))]
    ys = {"o1": rng.standard_normal((5, 2)), "o2": (rng.random((5, 1)) > 0.5) * 1.0}
    _check_grads(model, xs, ys)


def test_states_as_values_encoder_decoder_reference_and_gradients():
    rng = np.random.default_rng(3)
    enc_in = L.Input(shape=(None, 3), dtype="float64")
    dec_in = L.Input(shape=(None, 2), dtype="float64")
    _, h, c = L.LSTM(4, return_state=True, name="enc")(enc_in)
    dec = L.LSTM(4, return_sequences=True, name="dec")(dec_in, initial_state=[h, c])
    out = L.Dense(1, name="head")(dec)
    model = Model([enc_in, dec_in], out)
    _randomize(model, rng)
    xe, xd = rng.standard_normal((3, 5, 3)), rng.standard_normal((3, 6, 2))
    We, Ue, be = model.get_layer("enc").get_weights()
    Wd, Ud, bd = model.get_layer("dec").get_weights()
    _, hr, cr = keras_lstm_ref(xe, We, Ue, be)
    yr = keras_lstm_ref(xd, Wd, Ud, bd, return_sequences=True, h0=hr, c0=cr)[0]
    ref = dense_ref(yr, *model.get_layer("head").get_weights(), None)
    np.testing.assert_allclose(model.predict([xe, xd], verbose=0), ref, rtol=1e-10, atol=1e-12)
    model.compile("sgd", "mse")
    # the encoder's gradients reach it only through dL/dh0 and dL/dc0 of the decoder
    _check_grads(model, [xe, xd], rng.standard_normal((3, 6, 1)))


def test_return_state_outputs_and_masked_initial_state_gradients():
    rng = np.random.default_rng(4)
    tok = L.Input(shape=(6,), dtype="int64")
    emb = L.Embedding(7, 3, mask_zero=True, dtype="float64")(tok)
    h0 = L.Input(shape=(4,), dtype="float64")
    c0 = L.Input(shape=(4,), dtype="float64")
    y, _h, c = L.LSTM(4, return_state=True, dtype="float64")(emb, initial_state=[h0, c0])
    model = Model([tok, h0, c0], [y, L.Dense(1, dtype="float64")(c)])
    _randomize(model, rng)
    ids = rng.integers(1, 7, (4, 6))
    ids[0, 3:] = 0      # right padding
    ids[1, :] = 0       # all masked: the state passes through
    ids[2, :2] = 0      # left padding
    hv, cv = rng.standard_normal((4, 4)), rng.standard_normal((4, 4))
    p_y, p_c = model.predict([ids, hv, cv], verbose=0)
    W, U, b = model.layers[1].get_weights()
    E = model.layers[0].get_weights()[0]
    ry, _, rc = keras_lstm_ref(E[ids], W, U, b, mask=ids != 0, h0=hv, c0=cv)
    np.testing.assert_allclose(p_y, ry, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(p_c, dense_ref(rc, *model.layers[2].get_weights(), None),
                               rtol=1e-10, atol=1e-12)
    # gradients through the states into a trainable producer of h0/c0
    hin = L.Input(shape=(3,), dtype="float64")
    hs = L.Dense(4, activation="tanh", name="h_init")(hin)
    cs = L.Dense(4, name="c_init")(hin)
    seq_in = L.Input(shape=(6,), dtype="int64")
    e2 = L.Embedding(7, 3, mask_zero=True, dtype="float64")(seq_in)
    out = L.LSTM(4, dtype="float64")(e2, initial_state=[hs, cs])
    m2 = Model([seq_in, hin], L.Dense(1, dtype="float64")(out))
    _randomize(m2, rng)
    m2.compile("sgd", "mse")
    _check_grads(m2, [ids, rng.standard_normal((4, 3))], rng.standard_normal((4, 1)))


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None])
def test_bidirectional_states_and_merge_none_gradients(merge_mode):
    rng = np.random.default_rng(5)
    inp = L.Input(shape=(5, 2), dtype="float64")
    hin = L.Input(shape=(3,), dtype="float64")
    init = [L.Dense(3, name=f"s{k}")(hin) for k in range(4)]
    outs = L.Bidirectional(L.LSTM(3, return_sequences=True, return_state=True),
                           merge_mode=merge_mode)(inp, initial_state=init)
    ys = outs[:2] if merge_mode is None else outs[:1]
    states = outs[len(ys):]
    assert len(states) == 4 and all(s.shape == (None, 3) for s in states)
    head = L.Dense(1)(L.concatenate([L.Flatten()(y) for y in ys] + states[1:3]))
    model = Model([inp, hin], head)
    _randomize(model, rng)
    model.compile("sgd", "mse")
    _check_grads(model, [rng.standard_normal((3, 5, 2)), rng.standard_normal((3, 3))],
                 rng.standard_normal((3, 1)), max_entries=12)


def test_nested_models_share_weights_and_gradients():
    rng = np.random.default_rng(6)
    inner_in = L.Input(shape=(None, 2), dtype="float64")
    inner = Model(inner_in, L.Dense(3, activation="tanh")(L.LSTM(3)(inner_in)), name="enc")
    seq = Sequential([L.Dense(2, input_shape=(3,), dtype="float64")], name="proj")
    a = L.Input(shape=(4, 2), dtype="float64")
    b = L.Input(shape=(4, 2), dtype="float64")
    ea, eb = inner(a), inner(b)       # a nested model used twice shares its weights
    out = seq(L.Average()([ea, eb]))  # a Sequential as a layer
    model = Model([a, b], out)
    assert len(model.get_weights()) == 5 + 2
    _randomize(model, rng)
    xa, xb = rng.standard_normal((3, 4, 2)), rng.standard_normal((3, 4, 2))
    ref = seq.predict((inner.predict(xa, verbose=0) + inner.predict(xb, verbose=0)) / 2,
                      verbose=0)
    np.testing.assert_allclose(model.predict([xa, xb], verbose=0), ref, rtol=1e-12)
    model.compile("sgd", "mse")
    _check_grads(model, [xa, xb], rng.standard_normal((3, 2)))
    # training the outer model moves the inner model's weights (they are the same arrays)
    before = inner.get_weights()
    model.fit([xa, xb], rng.standard_normal((3, 2)), epochs=1, verbose=0)
    assert not np.allclose(inner.get_weights()[0], before[0])
    # a functional model as a layer of a Sequential one
    wrapped = Sequential([inner, L.Dense(1, dtype="float64")])
    assert wrapped.predict(xa, verbose=0).shape == (3, 1)
    wrapped.compile("sgd", "mse")
    _check_grads(wrapped, xa, rng.standard_normal((3, 1)), max_entries=8)


def test_masks_propagate_as_in_keras():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 6, 3))
    x[0, 4:] = 0
    x[2, :2] = 0
    inp = L.Input(shape=(6, 3), dtype="float64")
    masked = L.Masking()(inp)
    s1 = L.LSTM(3, return_sequences=True)(masked)
    s2 = L.LSTM(3, return_sequences=True)(masked)
    joined = L.Concatenate()([s1, s2])   # both carry the Masking mask
    last = L.LSTM(2)(joined)             # so this LSTM skips the masked steps
    model = Model(inp, last)
    _randomize(model, rng)
    m = np.any(x != 0, -1)
    l1, l2, l3 = (model.get_layer(n) for n in (s1._keras_history[0].name,
                                               s2._keras_history[0].name,
                                               last._keras_history[0].name))
    y1 = keras_lstm_ref(x * m[..., None], *l1.get_weights(), mask=m, return_sequences=True)[0]
    y2 = keras_lstm_ref(x * m[..., None], *l2.get_weights(), mask=m, return_sequences=True)[0]
    ref = keras_lstm_ref(np.concatenate([y1, y2], -1), *l3.get_weights(), mask=m)[0]
    np.testing.assert_allclose(model.predict(x, verbose=0), ref, rtol=1e-10, atol=1e-12)
    # time-axis concatenation joins the masks; flatten/reshape drop them
    t = L.Concatenate(axis=1)([masked, L.Input(shape=(2, 3), dtype="float64")])
    assert t.shape == (None, 8, 3)


# --------------------------------------------------------------------------- layers
@pytest.mark.parametrize("cls,ref", [
    (L.Add, lambda xs: xs[0] + xs[1] + xs[2]),
    (L.Multiply, lambda xs: xs[0] * xs[1] * xs[2]),
    (L.Average, lambda xs: (xs[0] + xs[1] + xs[2]) / 3),
    (L.Maximum, lambda xs: np.maximum(np.maximum(xs[0], xs[1]), xs[2])),
    (L.Minimum, lambda xs: np.minimum(np.minimum(xs[0], xs[1]), xs[2])),
    (L.Concatenate, lambda xs: np.concatenate(xs, -1)),
])
def test_merge_layers_values_and_gradients(cls, ref):
    rng = np.random.default_rng(8)
    xs = [rng.standard_normal((4, 3)) for _ in range(3)]
    np.testing.assert_allclose(cls()(xs), ref(xs), rtol=1e-6)  # direct call, float32
    ins = [L.Input(shape=(3,), dtype="float64") for _ in range(3)]
    feats = [L.Dense(3, name=f"d{k}")(t) for k, t in enumerate(ins)]
    model = Model(ins, L.Dense(1, name="top")(cls()(feats)))
    _randomize(model, rng)
    direct = ref([dense_ref(x, *model.get_layer(f"d{k}").get_weights(), None)
                  for k, x in enumerate(xs)])
    np.testing.assert_allclose(model.predict(xs, verbose=0),
                               dense_ref(direct, *model.get_layer("top").get_weights(), None),
                               rtol=1e-12)
    model.compile("sgd", "mse")
    _check_grads(model, xs, rng.standard_normal((4, 1)))


def test_subtract_broadcast_and_functional_forms():
    rng = np.random.default_rng(9)
    a = L.Input(shape=(5, 3), dtype="float64")
    b = L.Input(shape=(1, 3), dtype="float64")
    d = L.subtract([L.Dense(3)(a), L.Dense(3)(b)])  # (None, 5, 3) - (None, 1, 3)
    assert d.shape == (None, 5, 3)
    out = L.Dense(1)(L.Reshape((15,))(d))
    model = Model([a, b], out)
    _randomize(model, rng)
    model.compile("sgd", "mse")
    _check_grads(model, [rng.standard_normal((2, 5, 3)), rng.standard_normal((2, 1, 3))],
                 rng.standard_normal((2, 1)))
    for fn, cls in ((L.add, L.Add), (L.multiply, L.Multiply), (L.average, L.Average),
                    (L.maximum, L.Maximum), (L.concatenate, L.Concatenate)):
        t = fn([a, a])
        assert isinstance(t._keras_history[0], cls)
    with pytest.raises(ValueError, match="exactly 2"):
        L.subtract([a, a, a])


def test_flatten_and_reshape():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(L.Flatten()(x), x.reshape(2, 12))
    np.testing.assert_array_equal(L.Reshape((4, 3))(x), x.reshape(2, 4, 3))
    np.testing.assert_array_equal(L.Reshape((-1, 2))(x), x.reshape(2, 6, 2))
    t = L.Input(shape=(3, 4))
    assert L.Flatten()(t).shape == (None, 12)
    assert L.Reshape((-1, 6))(t).shape == (None, 2, 6)
    assert L.Flatten()(L.Input(shape=(None, 4))).shape == (None, None)
    with pytest.raises(ValueError, match="Reshape.*12 values"):
        L.Reshape((5, 2))(t)
    with pytest.raises(ValueError, match="at most one -1"):
        L.Reshape((-1, -1))


# --------------------------------------------------------------------------- training
def test_multi_output_compile_loss_weights_and_logged_names():
    rng = np.random.default_rng(10)
    inp = L.Input(shape=(None, 3))
    h = L.LSTM(4)(inp)
    out_a = L.Dense(1, name="dense")(h)
    out_b = L.Dense(2, name="dense_1")(h)
    model = Model(inp, [out_a, out_b])
    model.compile("adam", loss=["mse", "mae"], loss_weights=[0.5, 2.0],
                  metrics={"dense_1": ["mae"], "dense": "mse"})
    x = rng.standard_normal((12, 5, 3)).astype(np.float32)
    ya, yb = rng.standard_normal((12, 1)), rng.standard_normal((12, 2))
    assert model.metrics_names == ["loss", "dense_loss", "dense_1_loss", "dense_mse",
                                   "dense_1_mae"]
    res = model.evaluate(x, [ya, yb], batch_size=12, verbose=0, return_dict=True)
    pa, pb = model.predict(x, verbose=0)
    mse = float(np.mean((pa - ya) ** 2))
    mae = float(np.mean(np.abs(pb - yb)))
    assert res["dense_loss"] == pytest.approx(0.5 * mse, rel=1e-5)
    assert res["dense_1_loss"] == pytest.approx(2.0 * mae, rel=1e-5)
    assert res["loss"] == pytest.approx(0.5 * mse + 2.0 * mae, rel=1e-5)
    assert res["dense_mse"] == pytest.approx(mse, rel=1e-5)
    assert res["dense_1_mae"] == pytest.approx(mae, rel=1e-5)
    hist = model.fit(x, {"dense": ya, "dense_1": yb}, epochs=2, batch_size=4, verbose=0,
                     validation_data=(x, [ya, yb])).history
    assert set(hist) == {f"{p}{n}" for p in ("", "val_") for n in model.metrics_names}
    assert hist["loss"][-1] < hist["loss"][0]
    # a dict of outputs gives dict predictions; an output without a loss needs no target
    m2 = Model(inp, {"a": out_a, "b": out_b})
    m2.compile("sgd", loss={"a": "mse"})
    assert m2.metrics_names == ["loss", "a_loss"]
    m2.fit(x, {"a": ya}, epochs=1, verbose=0)
    p = m2.predict(x, verbose=0)
    assert set(p) == {"a", "b"} and p["b"].shape == (12, 2)
    with pytest.raises(ValueError, match="unknown output"):
        m2.compile("sgd", loss={"c": "mse"})
    with pytest.raises(ValueError, match="2 output"):
        model.compile("sgd", loss=["mse"])


def test_unused_output_branch_gets_zero_gradients():
    rng = np.random.default_rng(11)
    inp = L.Input(shape=(3,), dtype="float64")
    a = L.Dense(2, name="a")(inp)
    b = L.Dense(2, name="b")(inp)
    model = Model(inp, [a, b])
    model.compile("sgd", loss=["mse", None])
    x, y = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    _, grads = model._forward_backward(x, [y, None])
    assert np.all(grads[2] == 0) and np.all(grads[3] == 0) and np.any(grads[0] != 0)


def test_sigmoid_output_fuses_with_its_loss():
    rng = np.random.default_rng(12)
    inp = L.Input(shape=(4,), dtype="float64")
    hidden = L.Dense(3, activation="tanh")(inp)
    prob = L.Dense(1, activation="sigmoid", name="p")(hidden)
    model = Model(inp, [prob, hidden])
    model.compile("sgd", loss=["binary_crossentropy", "mse"])
    assert model._fused[0] is model.get_layer("p") and model._fused[1] is None
    _randomize(model, rng, 3.0)  # saturated outputs: fused gradients stay exact
    x = rng.standard_normal((5, 4)) * 3
    y = [(rng.random((5, 1)) > 0.5) * 1.0, rng.standard_normal((5, 3))]
    _check_grads(model, x, y, rtol=1e-4, atol=1e-7)


def test_training_mode_flag_and_dropout_node():
    inp = L.Input(shape=(50,))
    always = L.Dropout(0.5, seed=1)(inp, training=True)
    model = Model(inp, always)
    x = np.ones((4, 50), np.float32)
    y = model.predict(x, verbose=0)
    assert np.any(y == 0) and np.allclose(y[y != 0], 2.0)


# --------------------------------------------------------------------------- io
def test_save_load_config_and_weights(tmp_path):
    rng = np.random.default_rng(13)
    a = L.Input(shape=(None, 3), name="seq")
    b = L.Input(shape=(2,), name="side")
    shared = L.Dense(4, name="shared")
    enc, h, c = L.LSTM(4, return_sequences=True, return_state=True, name="enc")(a)
    dec = L.LSTM(4, name="dec")(enc, initial_state=[shared(b), c])
    o1 = L.Dense(1, name="o1")(L.concatenate([dec, shared(b)]))
    o2 = L.Dense(2, activation="softmax", name="o2")(h)
    model = Model({"seq": a, "side": b}, {"o1": o1, "o2": o2}, name="two_heads")
    _randomize(model, rng)
    model.compile("adam", loss={"o1": "mse", "o2": "categorical_crossentropy"},
                  loss_weights={"o1": 1.0, "o2": 0.25}, metrics={"o1": ["mae"]})
    x = {"seq": rng.standard_normal((8, 5, 3)).astype(np.float32),
         "side": rng.standard_normal((8, 2)).astype(np.float32)}
    y = {"o1": rng.standard_normal((8, 1)),
         "o2": np.eye(2)[rng.integers(0, 2, 8)]}
    model.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "f.npz"
    model.save(path)
    back = load_model(path)
    assert isinstance(back, Model) and not isinstance(back, Sequential)
    assert back.name == "two_heads" and back.output_names == ["o1", "o2"]
    pa, pb = model.predict(x, verbose=0), back.predict(x, verbose=0)
    for k in ("o1", "o2"):
        np.testing.assert_array_equal(pa[k], pb[k])
    assert back.metrics_names == model.metrics_names
    # training resumes exactly (optimizer state saved)
    h1 = model.fit(x, y, epochs=1, shuffle=False, verbose=0).history["loss"]
    h2 = back.fit(x, y, epochs=1, shuffle=False, verbose=0).history["loss"]
    np.testing.assert_allclose(h1, h2, rtol=1e-6)
    # get_config / from_config rebuild the same graph (shared layer once)
    clone = Model.from_config(model.get_config())
    assert [type(l).__name__ for l in clone.layers] == [type(l).__name__ for l in model.layers]
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(clone.predict(x, verbose=0)["o1"],
                                  model.predict(x, verbose=0)["o1"])
    w = tmp_path / "w.npz"
    model.save_weights(w)
    clone.load_weights(w)
    with pytest.raises(ValueError, match="weight arrays"):
        clone.set_weights(model.get_weights()[:-1])


def test_save_load_nested_models(tmp_path):
    inner_in = L.Input(shape=(None, 2))
    inner = Model(inner_in, L.LSTM(3)(inner_in), name="inner")
    head = Sequential([L.Dense(1, input_shape=(3,))], name="head")
    a = L.Input(shape=(None, 2))
    model = Model(a, head(inner(a)))
    path = tmp_path / "n.npz"
    model.save(path)
    back = load_model(path)
    x = np.random.default_rng(0).standard_normal((2, 4, 2)).astype(np.float32)
    np.testing.assert_array_equal(back.predict(x, verbose=0), model.predict(x, verbose=0))
    assert [type(l).__name__ for l in back.layers] == ["Model", "Sequential"]


def test_summary_has_connected_to_column():
    lines = []
    a = L.Input(shape=(None, 3), name="in_a")
    x = L.LSTM(4, name="lstm_a")(a)
    y = L.Dense(2, name="d")(x)
    z = L.Concatenate(name="cat")([x, y])
    Model(a, z).summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert "Connected to" in text and "in_a (InputLayer)" in text
    cat = next(line for line in lines if line.startswith("cat (Concatenate)"))
    assert "lstm_a[0][0], d[0][0]" in cat and "(None, 6)" in cat
    assert "Total params: 138" in text  # 4*4*(3+4+1) + 4*2+2


def test_streamer_onnx_and_device_on_chains(tmp_path):
    rng = np.random.default_rng(14)
    inp = L.Input(shape=(None, 3))
    chain = Model(inp, L.Dense(2)(L.LSTM(4)(L.LSTM(5, return_sequences=True)(inp))))
    _randomize(chain, rng)
    x = rng.standard_normal((1, 6, 3)).astype(np.float32)
    runner = chain.streamer()
    for t in range(6):
        y = runner.step(x[:, t])
    np.testing.assert_allclose(y, chain.predict(x, verbose=0), rtol=1e-4, atol=1e-5)
    assert chain.to("cpu") is chain
    two = Model(inp, [L.Dense(1)(L.LSTM(2)(inp)), L.Dense(1)(L.LSTM(2)(inp))])
    with pytest.raises(ValueError, match="chain of layers.*2 outputs"):
        two.streamer()
    with pytest.raises(ValueError, match="chain"):
        two.to_onnx(tmp_path / "x.onnx")
    pytest.importorskip("onnx", reason="onnx not installed")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    path = tmp_path / "c.onnx"
    chain.to_onnx(path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, chain.predict(x, verbose=0), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- bad input
def test_graph_errors_at_build_time_name_layer_and_shapes():
    a = L.Input(shape=(5, 3))
    b = L.Input(shape=(4, 2))
    with pytest.raises(ValueError, match=r"Concatenate 'cc'.*\(None, 5, 3\).*\(None, 4, 2\)"):
        L.Concatenate(axis=-1, name="cc")([a, b])
    dense = L.Dense(2, name="reused")
    dense(L.Input(shape=(3,)))
    with pytest.raises(ValueError, match=r"'reused'.*\(None, 3\).*\(None, 7\)"):
        dense(L.Input(shape=(7,)))
    lstm = L.LSTM(2, name="rnn")
    with pytest.raises(ValueError, match=r"'rnn'.*\(None, 3\)"):
        lstm(L.Input(shape=(3,)))
    x = L.Input(shape=(3,), name="x_in")
    other = L.Input(shape=(3,), name="other_in")
    out = L.add([L.Dense(2)(x), L.Dense(2)(other)])
    with pytest.raises(ValueError, match="disconnected.*'other_in'.*\\(None, 3\\)"):
        Model(x, out)
    dup = L.Input(shape=(3,), name="x_in")
    with pytest.raises(ValueError, match="named 'x_in'"):
        Model([x, dup], L.add([L.Dense(1)(x), L.Dense(1)(dup)]))
    with pytest.raises(ValueError, match="twice"):
        Model([x, x], L.Dense(1)(x))
    hidden = L.Dense(2)(x)
    with pytest.raises(ValueError, match="not an Input"):
        Model(hidden, L.Dense(1)(hidden))
    with pytest.raises(ValueError, match="not connected to any output"):
        Model([x, other], L.Dense(1)(x))
    with pytest.raises(ValueError, match="initial_state"):
        L.LSTM(4)(L.Input(shape=(None, 2)), initial_state=[x, x])
    with pytest.raises(TypeError, match="Model\\(inputs, outputs\\)"):
        Model()
    with pytest.raises(ValueError, match="named 'same'"):
        Model(x, L.Dense(1, name="same")(L.Dense(2, name="same")(x)))


def test_bad_data_for_functional_models():
    a = L.Input(shape=(None, 3), name="a")
    b = L.Input(shape=(2,), name="b")
    model = Model([a, b], L.Dense(1)(L.concatenate([L.LSTM(2)(a), b])))
    model.compile("sgd", "mse")
    xa, xb = np.zeros((4, 5, 3)), np.zeros((4, 2))
    with pytest.raises(ValueError, match="2 inputs"):
        model.predict(xa)
    with pytest.raises(ValueError, match="missing \\['b'\\]"):
        model.predict({"a": xa})
    with pytest.raises(ValueError, match=r"x\['b'\] has shape \(4, 3\).*axis 1: 2, got 3"):
        model.predict([xa, np.zeros((4, 3))])
    with pytest.raises(ValueError, match="same number of samples"):
        model.predict([xa, np.zeros((3, 2))])
    with pytest.raises(ValueError, match="same number of samples"):
        model.fit([xa, xb], np.zeros((3, 1)), verbose=0)


# --------------------------------------------------------------------------- keras-io
def test_keras_io_bidirectional_imdb_classifier():
    """keras-io examples/nlp/bidirectional_lstm_imdb.py, model code unchanged."""
    keras = cylstm
    layers = cylstm.layers
    max_features = 200
    maxlen = 20
    rng = np.random.default_rng(15)
    x_train = rng.integers(1, max_features, (64, maxlen))
    y_train = (x_train[:, :3].mean(1) > max_features / 2).astype(np.float32)
    x_train = keras.preprocessing.sequence.pad_sequences(list(x_train), maxlen=maxlen)

    inputs = keras.Input(shape=(None,), dtype="int32")
    x = layers.Embedding(max_features, 16)(inputs)
    x = layers.Bidirectional(layers.LSTM(8, return_sequences=True))(x)
    x = layers.Bidirectional(layers.LSTM(8))(x)
    outputs = layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    hist = model.fit(x_train, y_train, batch_size=16, epochs=4,
                     validation_data=(x_train[:16], y_train[:16]), verbose=0).history
    assert hist["loss"][-1] < hist["loss"][0]
    assert set(hist) == {"loss", "accuracy", "val_loss", "val_accuracy"}


def test_keras_io_weather_forecasting(tmp_path):
    """keras-io examples/timeseries/timeseries_weather_forecasting.py, model code unchanged
    (synthetic series of the original feature count, shorter windows)."""
    keras = cylstm
    rng = np.random.default_rng(16)
    n, features = 400, 7
    t = np.arange(n)
    data = np.stack([np.sin(t / (5 + k)) + 0.1 * rng.standard_normal(n)
                     for k in range(features)], 1).astype(np.float32)
    past, future, step, sequence_length = 24, 6, 2, 12
    train_split = 300
    x_train, y_train = data[:train_split], data[past + future:train_split + past + future, 1]
    dataset_train = keras.preprocessing.timeseries_dataset_from_array(
        x_train, y_train, sequence_length=sequence_length, sampling_rate=step,
        batch_size=64)
    x_end = len(data) - past - future
    x_val, y_val = data[train_split:x_end], data[train_split + past + future:, 1]
    dataset_val = keras.preprocessing.timeseries_dataset_from_array(
        x_val, y_val, sequence_length=sequence_length, sampling_rate=step, batch_size=32)
    assert len(dataset_val) == 2  # the case that used to fail with a raw NumPy error

    for batch in dataset_train.take(1):
        inputs, targets = batch
    assert targets.shape == (len(inputs),)
    inputs = keras.layers.Input(shape=(inputs.shape[1], inputs.shape[2]))
    lstm_out = keras.layers.LSTM(32)(inputs)
    outputs = keras.layers.Dense(1)(lstm_out)
    model = keras.Model(inputs=inputs, outputs=outputs)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01), loss="mse")
    lines = []
    model.summary(print_fn=lines.append)
    assert any("Connected to" in line for line in lines)

    path_checkpoint = str(tmp_path / "model_checkpoint.weights.h5")
    es_callback = keras.callbacks.EarlyStopping(monitor="val_loss", min_delta=0, patience=5)
    modelckpt_callback = keras.callbacks.ModelCheckpoint(
        monitor="val_loss", filepath=path_checkpoint, verbose=0, save_weights_only=True,
        save_best_only=True)
    history = model.fit(dataset_train, epochs=4, validation_data=dataset_val,
                        callbacks=[es_callback, modelckpt_callback], verbose=0)
    assert len(history.history["val_loss"]) == 4
    assert history.history["loss"][-1] < history.history["loss"][0]
    for x, y in dataset_val.take(2):
        assert model.predict(x, verbose=0).shape == (len(y), 1)
    model.load_weights(path_checkpoint)


def test_keras_io_lstm_half_of_lstm_vs_cnn_text_classifier():
    """The LSTM model of keras-io's text classification comparison (LSTM vs CNN):
    Input(int64) -> Embedding -> LSTM(return_sequences) -> LSTM -> Dropout -> Dense."""
    keras = cylstm
    layers = cylstm.layers
    max_features, embedding_dim, sequence_length = 300, 16, 25
    rng = np.random.default_rng(17)
    x = rng.integers(1, max_features, (48, sequence_length))
    y = (x[:, -1] % 2).astype(np.float32)
    inputs = keras.Input(shape=(None,), dtype="int64")
    h = layers.Embedding(max_features, embedding_dim, mask_zero=True)(inputs)
    h = layers.LSTM(16, return_sequences=True)(h)
    h = layers.LSTM(16)(h)
    h = layers.Dropout(0.5)(h)
    predictions = layers.Dense(1, activation="sigmoid", name="predictions")(h)
    model = keras.Model(inputs, predictions)
    model.compile(loss="binary_crossentropy", optimizer="adam", metrics=["accuracy"])
    hist = model.fit(x, y, validation_split=0.25, epochs=3, batch_size=12, verbose=0).history
    assert hist["loss"][-1] < hist["loss"][0]
    res = model.evaluate(x, y, verbose=0)
    assert len(res) == 2 and 0 <= res[1] <= 1


@pytest.mark.parametrize("backend", ["emulated", "cuda"])
def test_functional_to_cuda_matches_cpu(backend, monkeypatch):
    """model.to('cuda') on a graph that is not a chain (shared LSTM, states as values):
    on a GPU, or on tests/cuda_emulator.py (a NumPy replay of the CUDA launches)."""
    from cylstm import cuda

    if backend == "cuda":
        if not cuda.is_available():
            pytest.skip(f"CUDA backend unavailable: {cuda.unavailable_reason()}")
    else:
        import cuda_emulator

        monkeypatch.setattr(cuda, "_load", lambda: cuda_emulator)
        monkeypatch.setattr(cuda, "_contexts", {})
        monkeypatch.setattr(cuda, "_ctx_locks", {})
        monkeypatch.setattr(cuda, "device_count", lambda: 1)
    rng = np.random.default_rng(18)

    def make():
        a = L.Input(shape=(None, 2), dtype="float64")
        b = L.Input(shape=(None, 2), dtype="float64")
        shared = L.LSTM(3, return_state=True, name="shared")
        _, h, c = shared(a)
        y, _, _ = shared(b)
        dec = L.LSTM(3, name="dec")(a, initial_state=[h, c])
        m = Model([a, b], L.Dense(1, name="head")(L.add([y, dec])))
        m.compile("sgd", "mse")
        return m

    cpu, gpu = make(), make()
    _randomize(cpu, rng)
    gpu.set_weights(cpu.get_weights())
    xs = [rng.standard_normal((3, 4, 2)), rng.standard_normal((3, 5, 2))]
    y = rng.standard_normal((3, 1))
    assert gpu.to("cuda") is gpu
    np.testing.assert_allclose(gpu.predict(xs, verbose=0), cpu.predict(xs, verbose=0),
                               rtol=1e-10, atol=1e-12)
    for _ in range(2):
        np.testing.assert_allclose(gpu.train_on_batch(xs, y), cpu.train_on_batch(xs, y),
                                   rtol=1e-10)
    for u, v in zip(gpu.get_weights(), cpu.get_weights()):
        np.testing.assert_allclose(u, v, rtol=1e-9, atol=1e-12)


def test_hostile_nested_config_is_refused_not_a_recursion_error():
    cfg = {"name": "s", "layers": [{"class_name": "Dense", "config": {"units": 1}}]}
    for _ in range(200):
        cfg = {"name": "s", "layers": [{"class_name": "Sequential", "config": cfg}]}
    with pytest.raises(ValueError, match="nested more than"):
        Sequential.from_config(cfg)
    with pytest.raises(ValueError, match="invalid functional model config"):
        Model.from_config({"inputs": [], "layers": [], "nodes": [{"layer": "x"}],
                           "outputs": []})
