"""Error bounds of the float32 activations documented in include/cylstm_math.h,
measured through the kernel on inputs that isolate one activation."""
import numpy as np

from cylstm.functional import lstm_forward


def _gates32(z):
    """Run one step with x = z (1 feature, H = len) and W picking each gate.

    With h0 = c0 = 0: c = sigmoid(z_i) * tanh(z_g), h = sigmoid(z_o) * tanh(c).
    Using W columns so z_i = z_o = +40 (sigmoid = 1 exactly) isolates tanh.
    """
    n = z.size
    x = np.ones((1, 1, 1), np.float32)
    W = np.zeros((1, 4 * n), np.float32)
    U = np.zeros((n, 4 * n), np.float32)
    b = np.zeros(4 * n, np.float32)
    b[:n] = 40.0          # i = 1
    b[3 * n:] = 40.0      # o = 1
    b[2 * n:3 * n] = z    # g = tanh(z)
    b[n:2 * n] = 0.0
    out = lstm_forward(x, W, U, b)
    return out.c[0]       # = tanh(z) in float32


def test_tanh_error_bound():
    z = np.linspace(-12, 12, 20001).astype(np.float32)
    got = _gates32(z).astype(np.float64)
    ref = np.tanh(z.astype(np.float64))
    err = np.abs(got - ref)
    assert err.max() <= 2.0e-7
    big = np.abs(ref) > 1e-3
    assert (err[big] / np.abs(ref[big])).max() <= 4e-7


def test_sigmoid_error_bound():
    n = 20001
    z = np.linspace(-30, 30, n).astype(np.float32)
    x = np.ones((1, 1, 1), np.float32)
    W = np.zeros((1, 4 * n), np.float32)
    U = np.zeros((n, 4 * n), np.float32)
    b = np.zeros(4 * n, np.float32)
    b[:n] = z                  # i = sigmoid(z)
    b[2 * n:3 * n] = 40.0      # g = 1
    out = lstm_forward(x, W, U, b)
    got = out.c[0].astype(np.float64)  # c = sigmoid(z)
    ref = 1 / (1 + np.exp(-z.astype(np.float64)))
    err = np.abs(got - ref)
    assert err.max() <= 2.0e-7
    assert (err / ref).max() <= 4e-7
