"""Layers against NumPy float64 references written here (Keras semantics), and
finite-difference checks of each layer's backward."""
import numpy as np
import pytest
from reference import numeric_grad

from cylstm import functional as _F
from cylstm.layers import (
    LSTM,
    Activation,
    Bidirectional,
    Dense,
    Dropout,
    Embedding,
    Input,
    Masking,
    RepeatVector,
    TimeDistributed,
    deserialize,
    serialize,
)
from cylstm.layers import masks as _masks


# --------------------------------------------------------------------------- references
def _sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def keras_lstm_ref(x, W, U, b, mask=None, go_backwards=False, return_sequences=False,
                   zero_output_for_mask=False, h0=None, c0=None):
    """Keras's RNN loop, literally: reverse if go_backwards, then step by step; a
    masked step keeps the state and repeats the previous output (zeros first)."""
    x = np.asarray(x, np.float64)
    B, T, _ = x.shape
    H = U.shape[0]
    mask = np.ones((B, T), bool) if mask is None else np.asarray(mask, bool)
    if go_backwards:
        x, mask = x[:, ::-1], mask[:, ::-1]
    h = np.zeros((B, H)) if h0 is None else np.array(h0, np.float64)
    c = np.zeros((B, H)) if c0 is None else np.array(c0, np.float64)
    prev = np.zeros((B, H))
    outs = []
    for t in range(T):
        z = x[:, t] @ W + h @ U + b
        i, f = _sig(z[:, :H]), _sig(z[:, H:2 * H])
        g, o = np.tanh(z[:, 2 * H:3 * H]), _sig(z[:, 3 * H:])
        c_new = f * c + i * g
        h_new = o * np.tanh(c_new)
        m = mask[:, t][:, None]
        out = np.where(m, h_new, prev)
        h, c = np.where(m, h_new, h), np.where(m, c_new, c)
        outs.append(out)
        prev = out
    y = np.stack(outs, 1)
    if zero_output_for_mask:
        y = y * mask[:, :, None]
    return (y if return_sequences else outs[-1]), h, c


def dense_ref(x, K, b, act):
    z = np.asarray(x, np.float64) @ K + b
    if act == "relu":
        return np.maximum(z, 0)
    if act == "tanh":
        return np.tanh(z)
    if act == "sigmoid":
        return _sig(z)
    if act == "softmax":
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    return z


def _rand_lstm(layer, rng, scale=0.5):
    layer.set_weights([rng.standard_normal(w.shape) * scale for w in layer.get_weights()])


def _layer_grads(layer, x, mask, R, training=True):
    """Analytic dL/dx and dL/dweights for L = sum(R * layer(x))."""
    y, _ = layer._forward(x, mask, training)
    dx = layer._backward(np.array(R), True)
    grads = [np.array(o._grads[n]) for o, n in layer._param_items()]
    return y, dx, grads


def _numeric_grads(layer, x, mask, R, forward=None):
    """Finite differences of L = sum(R * layer(x)) w.r.t. x and each weight (in place)."""
    def loss(_perturbed):  # reads x and the weights where the layer holds them
        if forward is not None:
            return float(np.sum(R * forward()))
        y, _ = layer._forward(x, mask, False)
        return float(np.sum(R * y))

    out = [numeric_grad(loss, getattr(o, n)) for o, n in layer._param_items()]
    return numeric_grad(loss, x), out


# masks: right padding, left padding, holes, an all-masked row
MASKS = {
    "right": np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], bool),
    "left": np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]], bool),
    "holes": np.array([[1, 0, 1, 0, 1], [0, 1, 1, 0, 1], [1, 1, 0, 0, 0]], bool),
    "empty_row": np.array([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], bool),
}


# --------------------------------------------------------------------------- LSTM forward
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_lstm_matches_reference(return_sequences, go_backwards):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 7, 4))
    layer = LSTM(5, return_sequences=return_sequences, go_backwards=go_backwards,
                 dtype="float64")
    layer(x)
    _rand_lstm(layer, rng)
    W, U, b = layer.get_weights()
    want, _, _ = keras_lstm_ref(x, W, U, b, go_backwards=go_backwards,
                                return_sequences=return_sequences)
    got = layer(x)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_lstm_float32_default_and_state():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 5, 3))
    layer = LSTM(4, return_state=True, return_sequences=True)
    y, h, c = layer(x)
    assert y.dtype == np.float32 and layer.dtype == np.float32
    W, U, b = (w.astype(np.float64) for w in layer.get_weights())
    h0 = rng.standard_normal((2, 4))
    c0 = rng.standard_normal((2, 4))
    y, h, c = layer(x, initial_state=[h0, c0])
    wy, wh, wc = keras_lstm_ref(x, W, U, b, return_sequences=True, h0=h0, c0=c0)
    np.testing.assert_allclose(y, wy, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(h, wh, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(c, wc, rtol=2e-5, atol=2e-6)
    np.testing.assert_array_equal(y[:, -1], h)


def test_lstm_weights_layout_and_init():
    layer = LSTM(3, input_shape=(None, 2), seed=0)
    layer.build((None, None, 2))
    K, U, b = layer.get_weights()
    assert K.shape == (2, 12) and U.shape == (3, 12) and b.shape == (12,)
    # unit_forget_bias: ones on the forget block, zeros elsewhere (gates i, f, c, o)
    np.testing.assert_array_equal(b, np.r_[np.zeros(3), np.ones(3), np.zeros(6)])
    # orthogonal recurrent kernel (H, 4H): orthonormal rows
    np.testing.assert_allclose(U @ U.T, np.eye(3), atol=1e-5)
    assert layer.count_params() == 2 * 12 + 3 * 12 + 12
    nb = LSTM(3, use_bias=False)
    nb.build((None, None, 2))
    assert len(nb.get_weights()) == 2 and np.all(nb.bias == 0)


@pytest.mark.parametrize("kind", sorted(MASKS))
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("zero_out", [False, True])
def test_lstm_mask_semantics(kind, go_backwards, return_sequences, zero_out):
    rng = np.random.default_rng(3)
    mask = MASKS[kind]
    x = rng.standard_normal((3, 5, 2))
    layer = LSTM(4, go_backwards=go_backwards, return_sequences=return_sequences,
                 return_state=True, zero_output_for_mask=zero_out, dtype="float64")
    layer(x)
    _rand_lstm(layer, rng)
    W, U, b = layer.get_weights()
    wy, wh, wc = keras_lstm_ref(x, W, U, b, mask=mask, go_backwards=go_backwards,
                                return_sequences=return_sequences,
                                zero_output_for_mask=zero_out and return_sequences)
    y, h, c = layer(x, mask=mask)
    np.testing.assert_allclose(y, wy, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h, wh, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(c, wc, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", sorted(MASKS))
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("zero_out", [False, True])
def test_lstm_mask_gradients_match_keras_reference(kind, go_backwards, return_sequences,
                                                   zero_out):
    """Under each mask, with return_state and an initial state: the outputs and the
    analytic dL/dx, dW, dU, db, dh0, dc0 against keras_lstm_ref and five-point finite
    differences of it, for L = sum(Ry * y) + sum(Rh * h) + sum(Rc * c)."""
    rng = np.random.default_rng(17)
    mask = MASKS[kind]
    B, T = mask.shape
    x = rng.standard_normal((B, T, 2))
    layer = LSTM(3, go_backwards=go_backwards, return_sequences=return_sequences,
                 return_state=True, zero_output_for_mask=zero_out, dtype="float64")
    layer(x)
    _rand_lstm(layer, rng)
    W, U, b = (np.array(w) for w in layer.get_weights())
    h0, c0 = rng.standard_normal((2, B, 3))
    Ry = rng.standard_normal((B, T, 3) if return_sequences else (B, 3))
    Rh, Rc = rng.standard_normal((2, B, 3))

    def ref():
        return keras_lstm_ref(x, W, U, b, mask=mask, go_backwards=go_backwards,
                              return_sequences=return_sequences,
                              zero_output_for_mask=zero_out and return_sequences, h0=h0, c0=c0)

    def loss(_perturbed):  # reads x, the weights and the initial state in place
        wy, wh, wc = ref()
        return np.sum(Ry * wy) + np.sum(Rh * wh) + np.sum(Rc * wc)

    y, _ = layer._forward(x, mask, True, initial_state=[h0, c0])
    for got, want in zip((y, *layer._last_state), ref()):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    dx = layer._backward(Ry, True, grad_h=Rh, grad_c=Rc)
    dW, dU, db = (np.array(layer._grads[n]) for n in ("kernel", "recurrent_kernel", "bias"))
    dh0, dc0 = layer._state_grads
    for name, got, wrt in (("dx", dx, x), ("dW", dW, W), ("dU", dU, U), ("db", db, b),
                           ("dh0", dh0, h0), ("dc0", dc0, c0)):
        np.testing.assert_allclose(got, numeric_grad(loss, wrt), rtol=1e-7, atol=1e-9,
                                   err_msg=name)


def test_mask_plan_takes_the_cheapest_route():
    """Right padding (with or without go_backwards) and left padding under
    go_backwards reach the kernel without a gather; only other patterns gather."""
    right, left, holes = MASKS["right"], MASKS["left"], MASKS["holes"]
    p = _masks.plan(right, False, True, False)
    assert p.order is None and not p.reverse_input and not p.reverse and p.cnt is None
    np.testing.assert_array_equal(p.lengths, [5, 3, 1])
    assert p.repeat is not None and not p.reverse_output
    p = _masks.plan(right, True, True, True)   # the kernel's reverse mode: no copy
    assert p.order is None and not p.reverse_input and p.reverse and p.reverse_output
    assert p.repeat is None and p.keep is None
    assert not _masks.plan(right, True, True, False, flip=True).reverse_output
    p = _masks.plan(left, True, True, False)   # Keras's reversal makes it right padding
    assert p.order is None and p.reverse_input and not p.reverse
    for m, gb in ((left, False), (holes, False), (holes, True)):
        p = _masks.plan(m, gb, True, True)
        assert p.order is not None and p.cnt is not None and p.keep is not None
    assert _masks.plan(MASKS["empty_row"], False, False, False).silent.tolist() == [
        False, True, False]
    assert _masks.plan(right, False, False, False).silent is None


def test_right_padded_mask_runs_the_kernel_on_x_itself(monkeypatch):
    """The fastest masked case stays fast: no copy of x on its way to the kernel."""
    rng = np.random.default_rng(18)
    x = rng.standard_normal((3, 5, 2))
    seen = []
    real = _F.lstm_forward

    def spy(xk, *args, **kw):
        seen.append(xk)
        return real(xk, *args, **kw)

    monkeypatch.setattr(_F, "lstm_forward", spy)
    for go_backwards in (False, True):
        LSTM(3, go_backwards=go_backwards, return_sequences=True, dtype="float64")(
            x, mask=MASKS["right"])
        assert seen.pop() is x


def test_lstm_stateful_carries_state():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 6, 3))
    layer = LSTM(4, stateful=True, dtype="float64")
    layer(x[:, :3])
    _rand_lstm(layer, rng)
    layer.reset_states()
    layer(x[:, :3])
    second = layer(x[:, 3:])
    W, U, b = layer.get_weights()
    want, _, _ = keras_lstm_ref(x, W, U, b)
    np.testing.assert_allclose(second, want, rtol=1e-10)
    layer.reset_states()
    fresh = layer(x[:, 3:])
    want2, _, _ = keras_lstm_ref(x[:, 3:], W, U, b)
    np.testing.assert_allclose(fresh, want2, rtol=1e-10)
    with pytest.raises(ValueError, match="batch size"):
        layer(x[:1, :3])


def test_lstm_dropout_only_in_training():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((64, 4, 3))
    layer = LSTM(4, dropout=0.5, seed=1, dtype="float64")
    base = layer(x)
    np.testing.assert_array_equal(layer(x, training=False), base)
    y1 = layer(x, training=True)
    assert not np.allclose(y1, base)
    # one input mask per sequence shared across time: a sample whose mask zeroes
    # every feature sees an all-zero input, so with h0 = 0 it matches zeros input
    assert np.isfinite(y1).all()


def test_lstm_recurrent_dropout_matches_masked_reference():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((8, 5, 3))
    layer = LSTM(4, recurrent_dropout=0.3, seed=2, dtype="float64", return_sequences=True)
    base = layer(x)
    np.testing.assert_array_equal(layer(x, training=False), base)
    y, _ = layer._forward(x, None, True)
    rmask = layer._cache[2]["recurrent_mask"]
    layer._cache = None
    assert rmask.shape == (8, 4)
    assert set(np.unique(rmask)) <= {0.0, 1 / 0.7}
    # reference: h_prev scaled by the mask before the recurrent product
    W, U, b = layer.get_weights()
    H = 4
    h = np.zeros((8, H))
    c = np.zeros((8, H))
    outs = []
    for t in range(5):
        z = x[:, t] @ W + (h * rmask) @ U + b
        i, f, g, o = _sig(z[:, :H]), _sig(z[:, H:2 * H]), np.tanh(z[:, 2 * H:3 * H]), \
            _sig(z[:, 3 * H:])
        c = f * c + i * g
        h = o * np.tanh(c)
        outs.append(h)
    np.testing.assert_allclose(y, np.stack(outs, 1), rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("case", [
    {}, {"go_backwards": True}, {"return_sequences": True},
    {"return_sequences": True, "go_backwards": True},
    {"mask": "right"}, {"mask": "left", "return_sequences": True},
    {"mask": "holes", "go_backwards": True, "return_sequences": True},
    {"mask": "empty_row", "return_sequences": True, "zero_output_for_mask": True},
    {"mask": "right", "go_backwards": True},
    {"mask": "right", "go_backwards": True, "return_sequences": True},
    {"mask": "empty_row", "go_backwards": True, "return_sequences": True},
    {"mask": "empty_row", "go_backwards": True},
    {"mask": "left", "go_backwards": True},
    {"mask": "left", "go_backwards": True, "return_sequences": True},
    {"mask": "right", "return_sequences": True},
    {"mask": "holes"},
])
def test_lstm_layer_gradients_finite_differences(case):
    case = dict(case)
    rng = np.random.default_rng(7)
    mask = MASKS[case.pop("mask")] if "mask" in case else None
    x = rng.standard_normal((3, 5, 2))
    layer = LSTM(3, dtype="float64", **case)
    layer(x)
    _rand_lstm(layer, rng)
    y = layer(x, mask=mask)
    R = rng.standard_normal(y.shape)
    _, dx, grads = _layer_grads(layer, x, mask, R)
    ndx, ngrads = _numeric_grads(layer, x, mask, R)
    for g, n in zip(grads, ngrads):
        np.testing.assert_allclose(g, n, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dx, ndx, rtol=1e-6, atol=1e-8)


def test_lstm_dropout_gradients_with_fixed_masks():
    """Input and recurrent dropout masks enter the backward exactly (masks fixed by
    re-seeding the layer's generator before every forward)."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((4, 5, 3))
    layer = LSTM(3, return_sequences=True, dtype="float64", dropout=0.3, recurrent_dropout=0.4)
    layer(x)
    _rand_lstm(layer, rng)

    def forward():
        layer._rng = np.random.default_rng(123)
        y, _ = layer._forward(x, None, True)
        layer_cache[0] = layer._cache
        return y

    layer_cache = [None]
    y = forward()
    R = rng.standard_normal(y.shape)
    dx = layer._backward(R, True)
    grads = [np.array(o._grads[n]) for o, n in layer._param_items()]
    ndx, ngrads = _numeric_grads(layer, x, None, R, forward=forward)
    layer._cache = None
    for g, n in zip(grads, ngrads):
        np.testing.assert_allclose(g, n, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dx, ndx, rtol=1e-6, atol=1e-8)
    assert not np.allclose(y, layer(x))  # the masks were active


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave"])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_bidirectional_forward_and_gradients(merge_mode, return_sequences):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 5, 2))
    bi = Bidirectional(LSTM(3, return_sequences=return_sequences), merge_mode=merge_mode,
                       input_shape=(None, 2), dtype="float64")
    bi(x)
    assert bi.backward_layer.go_backwards and not bi.forward_layer.go_backwards
    ws = [rng.standard_normal(w.shape) * 0.5 for w in bi.get_weights()]
    bi.set_weights(ws)
    yf, _, _ = keras_lstm_ref(x, *ws[:3], return_sequences=return_sequences)
    yb, _, _ = keras_lstm_ref(x, *ws[3:], go_backwards=True,
                              return_sequences=return_sequences)
    if return_sequences:
        yb = yb[:, ::-1]  # Keras puts the backward outputs back in time order
    want = {"concat": np.concatenate([yf, yb], -1), "sum": yf + yb, "mul": yf * yb,
            "ave": (yf + yb) / 2}[merge_mode]
    np.testing.assert_allclose(bi(x), want, rtol=1e-10, atol=1e-12)
    R = rng.standard_normal(want.shape)
    _, dx, grads = _layer_grads(bi, x, None, R)
    ndx, ngrads = _numeric_grads(bi, x, None, R)
    for g, n in zip(grads, ngrads):
        np.testing.assert_allclose(g, n, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dx, ndx, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("kind", sorted(MASKS))
def test_bidirectional_mask_and_state(kind):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 5, 2))
    mask = MASKS[kind]
    bi = Bidirectional(LSTM(3, return_sequences=True, return_state=True), dtype="float64")
    out = bi(x, mask=mask)
    ws = bi.get_weights()
    yf, hf, cf = keras_lstm_ref(x, *ws[:3], mask=mask, return_sequences=True,
                                zero_output_for_mask=True)
    yb, hb, cb = keras_lstm_ref(x, *ws[3:], mask=mask, go_backwards=True,
                                return_sequences=True, zero_output_for_mask=True)
    np.testing.assert_allclose(out[0], np.concatenate([yf, yb[:, ::-1]], -1), rtol=1e-10,
                               atol=1e-12)
    for got, want in zip(out[1:], (hf, cf, hb, cb)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    none = Bidirectional(LSTM(2), merge_mode=None)
    a, b = none(x)
    assert a.shape == b.shape == (3, 2)


@pytest.mark.parametrize("act", ["linear", "relu", "tanh", "sigmoid", "softmax"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_dense_matches_reference_and_gradients(act, ndim):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((4, 3, 5) if ndim == 3 else (4, 5))
    d = Dense(3, activation=act, dtype="float64")
    d(x)
    d.set_weights([rng.standard_normal((5, 3)), rng.standard_normal(3)])
    K, b = d.get_weights()
    assert d.activation == act
    np.testing.assert_allclose(d(x), dense_ref(x, K, b, act), rtol=1e-12, atol=1e-14)
    R = rng.standard_normal(x.shape[:-1] + (3,))
    _, dx, grads = _layer_grads(d, x, None, R)
    ndx, ngrads = _numeric_grads(d, x, None, R)
    for g, n in zip(grads, ngrads):
        np.testing.assert_allclose(g, n, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dx, ndx, rtol=1e-6, atol=1e-8)


def test_dropout_masking_embedding():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((200, 50))
    d = Dropout(0.25, seed=0, dtype="float64")
    np.testing.assert_array_equal(d(x), x)
    y = d(x, training=True)
    kept = y != 0
    assert 0.7 < kept.mean() < 0.8
    np.testing.assert_allclose(y[kept], x[kept] / 0.75)

    xm = rng.standard_normal((2, 4, 3))
    xm[0, 2:] = 0.0
    m = Masking(0.0)
    out, mask = m._forward(xm, None, False)
    np.testing.assert_array_equal(mask, [[1, 1, 0, 0], [1, 1, 1, 1]])
    np.testing.assert_array_equal(out, xm)

    e = Embedding(6, 3, mask_zero=True, dtype="float64")
    idx = np.array([[1, 5, 0], [2, 0, 0]])
    emb = e(idx)
    np.testing.assert_array_equal(emb, e.embeddings[idx])
    assert np.all(np.abs(e.embeddings) <= 0.05)
    _, em = e._forward(idx, None, False)
    np.testing.assert_array_equal(em, idx != 0)
    # gradient: scatter-add of dy rows into the used embedding rows
    e._forward(idx, None, True)
    R = rng.standard_normal((2, 3, 3))
    e._backward(R, False)
    want = np.zeros((6, 3))
    for i, j in np.ndindex(2, 3):
        want[idx[i, j]] += R[i, j]
    np.testing.assert_allclose(e._grads["embeddings"], want)
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        e(np.array([[7]]))
    with pytest.raises(TypeError, match="integer"):
        e(np.array([[0.5]]))


def test_masking_gradient_zeroes_masked_steps():
    rng = np.random.default_rng(12)
    xm = rng.standard_normal((2, 4, 3))
    xm[1, 3] = 0.0
    m = Masking()
    m._forward(xm, None, True)
    dx = m._backward(np.ones((2, 4, 3)))
    np.testing.assert_array_equal(dx[1, 3], 0)
    np.testing.assert_array_equal(dx[0], 1)


# --------------------------------------------------------------------------- config / API
def test_config_round_trip_and_names():
    layers = [LSTM(4, return_sequences=True, go_backwards=True, dropout=0.1, seed=3,
                   input_shape=(None, 2)),
              Bidirectional(LSTM(3), merge_mode="sum"), Dense(2, activation="relu"),
              Dropout(0.2), Masking(-1.0), Embedding(10, 4, mask_zero=True),
              Activation("relu"), RepeatVector(3), TimeDistributed(Dense(2, use_bias=False))]
    for layer in layers:
        cfg = serialize(layer)
        import json

        json.dumps(cfg)
        back = deserialize(json.loads(json.dumps(cfg)))
        assert type(back) is type(layer)
        assert back.get_config() == layer.get_config()
    assert LSTM(2).name != LSTM(2).name
    with pytest.raises(ValueError, match="unknown layer class"):
        deserialize({"class_name": "Lambda", "config": {}})


def test_output_shapes_and_input():
    assert LSTM(5, return_sequences=True, input_shape=(None, 3)).compute_output_shape(
        (None, None, 3)) == (None, None, 5)
    d = Dense(4)
    d.build((None, 7, 3))
    assert d.output_shape == (None, 7, 4)
    inp = Input(shape=(None, 3))
    assert inp.batch_shape == (None, None, 3)


def test_set_weights_validation():
    layer = LSTM(3)
    with pytest.raises(ValueError, match="not built"):
        layer.set_weights([])
    layer.build((None, None, 2))
    before = layer.get_weights()
    with pytest.raises(ValueError, match="expects 3 weight arrays"):
        layer.set_weights(before[:2])
    with pytest.raises(ValueError, match=r"shape \(2, 12\)"):
        layer.set_weights([np.zeros((3, 12)), before[1], before[2]])
    for a, b in zip(before, layer.get_weights()):  # nothing changed
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad, match", [
    (lambda: LSTM(0), "units"),
    (lambda: LSTM(3, activation="relu"), "tanh"),
    (lambda: LSTM(3, dropout=1.5), "dropout"),
    (lambda: Dense(2, activation="swishy"), "unknown activation"),
    (lambda: Bidirectional(Dense(2)), "wraps an LSTM"),
    (lambda: Bidirectional(LSTM(2), merge_mode="max"), "merge_mode"),
    (lambda: LSTM(2, dtype="float16"), "float32"),
    (lambda: LSTM(2, bogus=1), "unexpected keyword"),
])
def test_bad_constructor_arguments(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        bad()


def test_bad_call_inputs():
    layer = LSTM(3)
    with pytest.raises(ValueError, match="3-D"):
        layer(np.zeros((2, 3)))
    layer(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="4 features"):
        layer(np.zeros((2, 3, 5)))
    with pytest.raises(TypeError, match="numeric"):
        layer(np.array([["a"]]))
    with pytest.raises(ValueError, match="initial_state h must have shape"):
        layer(np.zeros((2, 3, 4)), initial_state=[np.zeros((2, 2)), np.zeros((2, 3))])
    with pytest.raises(ValueError, match="mask must have shape"):
        layer(np.zeros((2, 3, 4)), mask=np.ones((2, 4), bool))


def test_bidirectional_mask_gradients():
    rng = np.random.default_rng(14)
    x = rng.standard_normal((3, 5, 2))
    for kind in ("right", "left", "empty_row"):
        mask = MASKS[kind]
        bi = Bidirectional(LSTM(2, return_sequences=True), dtype="float64")
        bi(x)
        bi.set_weights([rng.standard_normal(w.shape) * 0.5 for w in bi.get_weights()])
        y = bi(x, mask=mask)
        R = rng.standard_normal(y.shape)
        _, dx, grads = _layer_grads(bi, x, mask, R)
        ndx, ngrads = _numeric_grads(bi, x, mask, R)
        for g, n in zip(grads, ngrads):
            np.testing.assert_allclose(g, n, rtol=1e-6, atol=1e-8, err_msg=kind)
        np.testing.assert_allclose(dx, ndx, rtol=1e-6, atol=1e-8, err_msg=kind)
