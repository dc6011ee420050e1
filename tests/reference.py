"""A plain NumPy float64 LSTM, written independently of the kernels.

Per-sample, per-step Python loops: slow and obviously correct.  Step numbers
(B1)-(B8) match cylstm/_cell.pxd and cylstm/_lstm.pyx.
"""
import numpy as np


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def lstm_ref(x, W, U, b, h0=None, c0=None, lengths=None, reverse=False, rmask=None,
             hround=None):
    """Returns y (B, T, H) by time index (zeros past each length), hT, cT, tape.

    ``hround(hr, n, t)``, optional: what the recurrent product reads instead of
    ``hr = h_prev * mask`` at sample n's step at time t (the mixed_bfloat16 tests
    pass a bf16 rounding); the tape keeps it, so the backward's dU uses it and its
    dh_prev passes straight through it."""
    x = np.asarray(x, np.float64)
    W, U, b = (np.asarray(a, np.float64) for a in (W, U, b))
    B, T, _ = x.shape
    H = U.shape[0]
    h0 = np.zeros((B, H)) if h0 is None else np.asarray(h0, np.float64)
    c0 = np.zeros((B, H)) if c0 is None else np.asarray(c0, np.float64)
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    y = np.zeros((B, T, H))
    hT = np.zeros((B, H))
    cT = np.zeros((B, H))
    tape = []
    for n in range(B):
        h, c = h0[n].copy(), c0[n].copy()
        L = int(lengths[n])
        steps = range(L - 1, -1, -1) if reverse else range(L)
        sample = []
        for t in steps:
            hr = h * rmask[n] if rmask is not None else h
            if hround is not None:
                hr = hround(hr, n, t)
            z = x[n, t] @ W + hr @ U + b
            i = sigmoid(z[:H])
            f = sigmoid(z[H:2 * H])
            g = np.tanh(z[2 * H:3 * H])
            o = sigmoid(z[3 * H:])
            c_prev = c
            c = f * c_prev + i * g
            h_new = o * np.tanh(c)
            sample.append((t, hr, c_prev, i, f, g, o, c))
            h = h_new
            y[n, t] = h
        hT[n], cT[n] = h, c
        tape.append(sample)
    return y, hT, cT, tape


def lstm_ref_backward(x, W, U, tape, dy=None, dhT=None, dcT=None, rmask=None, dzround=None):
    """Gradients of sum(dy * y) + sum(dhT * hT) + sum(dcT * cT).  ``dzround``: a
    rounding applied to dz where it multiplies (B7, B8, dx), not where it sums
    into db (the mixed_bfloat16 backward: bf16 products, a float32 bias)."""
    x = np.asarray(x, np.float64)
    B, _T, I = x.shape
    H = U.shape[0]
    dx = np.zeros_like(x)
    dW = np.zeros((I, 4 * H))
    dU = np.zeros((H, 4 * H))
    db = np.zeros(4 * H)
    dh0 = np.zeros((B, H))
    dc0 = np.zeros((B, H))
    for n in range(B):
        dh = np.zeros(H) if dhT is None else np.array(dhT[n], np.float64)
        dc = np.zeros(H) if dcT is None else np.array(dcT[n], np.float64)
        for (t, hr, c_prev, i, f, g, o, c) in reversed(tape[n]):
            if dy is not None:
                dh = dh + dy[n, t]
            tc = np.tanh(c)                               # (B1)
            do = dh * tc                                  # (B2)
            dc = dc + dh * o * (1 - tc ** 2)              # (B3)
            di, dg, df = dc * g, dc * i, dc * c_prev      # (B4)
            dc_prev = dc * f                              # (B5)
            dz = np.concatenate([di * i * (1 - i), df * f * (1 - f),
                                 dg * (1 - g ** 2), do * o * (1 - o)])  # (B6)
            db += dz
            if dzround is not None:
                dz = dzround(dz)
            dhr = U @ dz                                  # (B7)
            dh = dhr * rmask[n] if rmask is not None else dhr
            dW += np.outer(x[n, t], dz)                   # (B8)
            dU += np.outer(hr, dz)
            dx[n, t] = W @ dz
            dc = dc_prev
        dh0[n], dc0[n] = dh, dc
    return dx, dW, dU, db, dh0, dc0


def random_lstm(rng, B, T, I, H, scale=0.5):
    x = rng.standard_normal((B, T, I))
    W = rng.standard_normal((I, 4 * H)) * scale / np.sqrt(I)
    U = rng.standard_normal((H, 4 * H)) * scale / np.sqrt(H)
    b = rng.standard_normal(4 * H) * 0.1
    return x, W, U, b


def numeric_grad(f, x, h=1e-5, indices=None):
    """Five-point central differences of the scalar ``f(x)`` with respect to ``x``.

        df/dx_j ~ (-f(x + 2h e_j) + 8 f(x + h e_j) - 8 f(x - h e_j) + f(x - 2h e_j)) / 12h

    truncation error O(h^4) (two-point differences: O(h^2)), so in float64 a step
    of about 1e-4 .. 1e-5 leaves mostly the rounding of f, ~1e-16 |f| / h.

    ``x`` (a writable float64 array) is perturbed in place one entry at a time and
    restored exactly after each, so ``f`` may read it through its argument or
    through an object that holds it (a layer's weight, a list of weights).
    ``indices``: flat indices to differentiate (the others come back NaN);
    default every entry.  Returns an array of x's shape.
    """
    g = np.zeros(x.shape) if indices is None else np.full(x.shape, np.nan)
    for j in range(x.size) if indices is None else indices:
        idx = np.unravel_index(j, x.shape)
        keep = x[idx]
        vals = []
        for step in (2 * h, h, -h, -2 * h):
            x[idx] = keep + step
            vals.append(float(f(x)))
        x[idx] = keep
        g[idx] = (-vals[0] + 8 * vals[1] - 8 * vals[2] + vals[3]) / (12 * h)
    return g


def bf16_round(a):
    """``a`` rounded to bfloat16 (nearest even), as float64: a rounding written apart
    from cylstm's packer."""
    a = np.asarray(a, np.float32)
    u = a.view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32).astype(np.float64)


def int8_round(a):
    """``a`` (K, N) as per-column symmetric int8 (scale max|a| / 127, round half to
    even) times its scale, as float64: written apart from cylstm.quantization."""
    a = np.asarray(a, np.float32)
    amax = np.abs(a).max(axis=0)
    s = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
    return np.clip(np.rint(a / s), -127, 127) * s.astype(np.float64)


def int16_rows(a, k2):
    """The rows of ``a`` (last axis) as the int8 kernels quantize their activations
    for sums of ``k2`` terms (include/cylstm_panel.h, written apart from it): the
    largest magnitude qmax = min(32767, (2^31 - 1) // (128 k2)); per row, in float32,
    q = rint(a * (qmax / max|a|)) times the scale max|a| / qmax; as float64."""
    qmax = np.float32(min(32767, (2 ** 31 - 1) // (128 * k2)))
    a = np.asarray(a, np.float32)
    m = np.abs(a).max(axis=-1, keepdims=True)
    safe = np.where(m > 0, m, np.float32(1))
    inv = np.where(m > 0, qmax / safe, np.float32(0)).astype(np.float32)
    q = np.rint(a * inv)
    return q.astype(np.float64) * (m / qmax).astype(np.float32).astype(np.float64)


def lstm_int8_ref(x, W, U, b, h0=None, c0=None, lengths=None, reverse=False):
    """:func:`lstm_ref` as the int8 kernels compute (``weights_dtype="int8"``), in
    float64: int8 weights (:func:`int8_round`) and the rows the products read, x_t and
    h_prev, quantized to int16 (:func:`int16_rows`, for sums of max(I, H) terms
    rounded up to even).  Returns y, hT, cT."""
    even = lambda n: n + n % 2   # noqa: E731
    I, H = np.shape(W)[0], np.shape(U)[0]
    k2 = max(even(I), even(H))
    y, hT, cT, _ = lstm_ref(int16_rows(x, k2), int8_round(W), int8_round(U),
                            np.asarray(b, np.float32).astype(np.float64), h0, c0, lengths,
                            reverse, hround=lambda hr, n, t: int16_rows(hr, k2))
    return y, hT, cT
