"""Bad and unusual input to the functional API: clear errors, correct reads."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import lstm_ref, lstm_ref_backward, random_lstm

from cylstm.functional import lstm_backward, lstm_forward


def _w(I=3, H=4, dtype=np.float64, seed=0):
    _, W, U, b = random_lstm(np.random.default_rng(seed), 1, 1, I, H)
    return W.astype(dtype), U.astype(dtype), b.astype(dtype)


def test_wrong_ndim_names_argument_and_shape():
    W, U, b = _w()
    with pytest.raises(ValueError, match=r"x must have 3 dims.*\(3, 4\)"):
        lstm_forward(np.zeros((3, 4)), W, U, b)


def test_feature_mismatch():
    W, U, b = _w(I=3)
    with pytest.raises(ValueError, match=r"kernel must have shape \(input_dim=5"):
        lstm_forward(np.zeros((2, 3, 5)), W, U, b)


def test_recurrent_kernel_and_bias_shapes():
    W, U, b = _w(I=3, H=4)
    with pytest.raises(ValueError, match="recurrent_kernel must have shape"):
        lstm_forward(np.zeros((2, 3, 3)), W, U[:, :8], b)
    with pytest.raises(ValueError, match="bias must have shape"):
        lstm_forward(np.zeros((2, 3, 3)), W, U, b[:5])
    with pytest.raises(ValueError, match="kernel must have shape"):
        lstm_forward(np.zeros((2, 3, 3)), W[:, :7], U, b)


def test_state_shapes():
    W, U, b = _w(I=3, H=4)
    x = np.zeros((2, 3, 3))
    with pytest.raises(ValueError, match=r"h0 must have shape \(batch=2, units=4\)"):
        lstm_forward(x, W, U, b, initial_state=(np.zeros((3, 4)), np.zeros((2, 4))))
    with pytest.raises(ValueError, match="c0 must have shape"):
        lstm_forward(x, W, U, b, initial_state=(np.zeros((2, 4)), np.zeros(4)))
    with pytest.raises(TypeError, match="pair"):
        lstm_forward(x, W, U, b, initial_state=np.zeros((2, 4)))


def test_zero_length_and_lengths_out_of_range():
    W, U, b = _w()
    with pytest.raises(ValueError, match="zero time steps"):
        lstm_forward(np.zeros((2, 0, 3)), W, U, b)
    x = np.zeros((2, 4, 3))
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 4\]"):
        lstm_forward(x, W, U, b, lengths=[-1, 4])
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 4\]"):
        lstm_forward(x, W, U, b, lengths=[5, 4])
    with pytest.raises(ValueError, match=r"lengths must have shape \(2,\)"):
        lstm_forward(x, W, U, b, lengths=[4, 4, 4])
    with pytest.raises(TypeError, match="lengths must be integers"):
        lstm_forward(x, W, U, b, lengths=[1.5, 4])


def test_dtypes():
    W, U, b = _w()
    with pytest.raises(TypeError, match="x must be a real numeric array"):
        lstm_forward(np.zeros((2, 3, 3), complex), W, U, b)
    with pytest.raises(TypeError, match="x must be a real numeric array"):
        lstm_forward(np.zeros((2, 3, 3), object), W, U, b)
    with pytest.raises(TypeError):
        lstm_forward("abc", W, U, b)
    # integers are cast to the weights' dtype
    xi = np.arange(2 * 3 * 3).reshape(2, 3, 3) % 3
    out = lstm_forward(xi, W, U, b)
    np.testing.assert_allclose(out.output, lstm_forward(xi.astype(float), W, U, b).output)
    assert lstm_forward(xi, *(a.astype(np.float32) for a in (W, U, b))).output.dtype == np.float32


@pytest.mark.parametrize("layout", ["fortran", "strided", "readonly", "transposed"])
def test_unusual_memory_layouts_read_correctly(layout):
    rng = np.random.default_rng(1)
    x, W, U, b = random_lstm(rng, 3, 5, 4, 2)
    want = lstm_ref(x, W, U, b)[0]
    if layout == "fortran":
        x, W, U = np.asfortranarray(x), np.asfortranarray(W), np.asfortranarray(U)
    elif layout == "strided":
        big = np.zeros((3, 10, 8))
        big[:, ::2, ::2] = x
        x = big[:, ::2, ::2]
        bigU = np.zeros((2, 16))
        bigU[:, ::2] = U
        U = bigU[:, ::2]
    elif layout == "readonly":
        for a in (x, W, U, b):
            a.setflags(write=False)
    else:
        x = np.ascontiguousarray(x.transpose(1, 0, 2)).transpose(1, 0, 2)
    np.testing.assert_allclose(lstm_forward(x, W, U, b).output, want, rtol=1e-12, atol=1e-14)


def test_nan_propagates_like_numpy():
    W, U, b = _w()
    x = np.zeros((2, 3, 3))
    x[0, 1, 0] = np.nan
    y = lstm_forward(x, W, U, b).output
    assert np.isnan(y[0, 1:]).all() and not np.isnan(y[0, 0]).any()
    assert np.isfinite(y[1]).all()  # other samples untouched


def test_empty_batch():
    W, U, b = _w()
    out = lstm_forward(np.zeros((0, 3, 3)), W, U, b, training=True)
    assert out.output.shape == (0, 3, 4) and out.h.shape == (0, 4)
    g = lstm_backward(out.cache, np.zeros((0, 3, 4)))
    assert g.dkernel.shape == W.shape and not g.dkernel.any()


def test_empty_batch_writes_the_callers_gradient_buffers():
    """out= buffers receive the (zero) gradients at batch 0 too, as at any batch,
    and bad ones are refused before anything is written."""
    W, U, b = _w()
    bufs = [np.full(W.shape, 7.0), None, np.full(b.shape, 7.0)]
    out = lstm_forward(np.zeros((0, 3, 3)), W, U, b, training=True)
    g = lstm_backward(out.cache, np.zeros((0, 3, 4)), out=bufs)
    assert g.dkernel is bufs[0] and g.dbias is bufs[2]
    assert not bufs[0].any() and not bufs[2].any()
    assert g.drecurrent_kernel.shape == U.shape and not g.drecurrent_kernel.any()
    out = lstm_forward(np.zeros((0, 3, 3)), W, U, b, training=True)
    bad = np.full((W.shape[0] + 1, W.shape[1]), 7.0)
    with pytest.raises(ValueError, match="shape"):
        lstm_backward(out.cache, np.zeros((0, 3, 4)), out=[bad, None, None])
    assert (bad == 7.0).all()


def test_backward_bad_grad_shapes():
    W, U, b = _w()
    out = lstm_forward(np.zeros((2, 3, 3)), W, U, b, training=True)
    with pytest.raises(ValueError, match=r"grad_output must have shape \(2, 3, 4\)"):
        lstm_backward(out.cache, np.zeros((2, 4)))
    out = lstm_forward(np.zeros((2, 3, 3)), W, U, b, training=True)
    with pytest.raises(ValueError, match="grad_h must have shape"):
        lstm_backward(out.cache, None, np.zeros((3, 4)))
    with pytest.raises(TypeError, match="cache"):
        lstm_backward(None)


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 4), T=st.integers(1, 5), I=st.integers(1, 4), H=st.integers(1, 5),
       reverse=st.booleans(), ragged=st.booleans(), threads=st.integers(1, 2),
       seed=st.integers(0, 2**16))
def test_random_shapes_match_reference(B, T, I, H, reverse, ragged, threads, seed):
    rng = np.random.default_rng(seed)
    x, W, U, b = random_lstm(rng, B, T, I, H)
    lengths = rng.integers(1, T + 1, B) if ragged else None
    y, hT, _cT, tape = lstm_ref(x, W, U, b, lengths=lengths, reverse=reverse)
    dy = rng.standard_normal(y.shape)
    ref = lstm_ref_backward(x, W, U, tape, dy)
    out = lstm_forward(x, W, U, b, lengths=lengths, go_backwards=reverse, training=True,
                       num_threads=threads)
    np.testing.assert_allclose(out.output, y, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out.h, hT, rtol=1e-10, atol=1e-12)
    g = lstm_backward(out.cache, dy, num_threads=threads)
    for got, want in zip(g, ref):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11)
