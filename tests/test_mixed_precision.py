"""The mixed_bfloat16 policy (issue 16), emulated: operands rounded to bfloat16,
float32 sums, float32 master variables.

- the rounding: the C kernels' (include/cylstm_math.h), the library's
  (cylstm.quantization) and the independent one in tests/reference.py, bit for bit;
- ``lstm_forward(..., compute_dtype="bfloat16")`` and its backward against the
  float64 reference (tests/reference.py) of the emulated semantics, on both paths
  that run it, and its accuracy against float32;
- the policy API (cylstm.mixed_precision, Keras 3's names), the layers under it
  (attributes, configs, save/load, fit on float32 master weights, the issue's Keras
  example), the streaming runner's bf16 default, show_config, ONNX and Keras interop.
"""
import dataclasses
import io
import json

import numpy as np
import pytest
from reference import bf16_round, lstm_ref, lstm_ref_backward, random_lstm

import cylstm
from cylstm import _lstm, _testing, _tuning, mixed_precision
from cylstm.functional import lstm_backward, lstm_forward, plan_forward
from cylstm.layers import LSTM, Bidirectional, Dense, Embedding, Input, TimeDistributed
from cylstm.mixed_precision import DTypePolicy
from cylstm.models import Model, Sequential, load_model
from cylstm.quantization import bfloat16_bits, round_bfloat16


@pytest.fixture(autouse=True)
def restore_global_policy():
    """Every test leaves the global policy as it found it (other tests' layers too)."""
    before = mixed_precision.global_policy()
    yield
    mixed_precision.set_global_policy(before)

F32_MAX = np.finfo(np.float32).max


# ---------------------------------------------------------------------------
# The rounding
# ---------------------------------------------------------------------------

def _bits(a):
    return np.asarray(a, np.float32).view(np.uint32)


def _special_bits():
    """float32 bit patterns where a rounding goes wrong: exact ties (even and odd kept
    halves), one below and one above them, subnormals (their ties too), zeros, the
    largest bf16, FLT_MAX (rounds to inf), infinities and the canonical NaNs."""
    rng = np.random.default_rng(16)
    hi = rng.integers(0, 1 << 16, 4000, dtype=np.uint32) << 16
    out = [hi | 0x8000, hi | 0x7FFF, hi | 0x8001, hi,
           rng.integers(0, 1 << 23, 4000, dtype=np.uint32),              # +subnormal
           rng.integers(0, 1 << 23, 4000, dtype=np.uint32) | 0x80000000,  # -subnormal
           np.array([0x00000001, 0x00008000, 0x00018000, 0x0000FFFF, 0x00007FFF,
                     0x007FFFFF, 0x00800000, 0x7F7F0000, 0x7F7F7FFF, 0x7F7F8000,
                     0x7F7FFFFF, 0x7F800000, 0x7FC00000, 0x00000000], np.uint32)]
    a = np.concatenate(out)
    # keep NaNs with payloads out: the reference's integer trick is not defined on them
    a = a[((a & 0x7FFFFFFF) <= 0x7F800000) | ((a & 0x7FFFFFFF) == 0x7FC00000)]
    return np.concatenate([a, a ^ 0x80000000])  # both signs


def test_bf16_rounding_c_python_and_reference_agree_bit_for_bit():
    a = _special_bits().view(np.float32)
    lib = _bits(round_bfloat16(a))
    c = _bits(_testing.bf16_round(a))
    ref = _bits(bf16_round(a))          # tests/reference.py, written apart
    np.testing.assert_array_equal(c, lib)
    np.testing.assert_array_equal(ref, lib)
    assert not (lib & 0xFFFF).any()     # a bf16 value: the low half is zero
    np.testing.assert_array_equal(bfloat16_bits(a), (lib >> 16).astype(np.uint16))


def test_bf16_rounding_on_random_float32_bits():
    # every float32 pattern is as likely: NaN payloads, subnormals, both signs
    u = np.random.default_rng(7).integers(0, 1 << 32, 1 << 20, dtype=np.uint64)
    a = u.astype(np.uint32).view(np.float32)
    lib = _bits(round_bfloat16(a))
    np.testing.assert_array_equal(_bits(_testing.bf16_round(a)), lib)
    finite_or_inf = ~np.isnan(a)
    np.testing.assert_array_equal(_bits(bf16_round(a[finite_or_inf])), lib[finite_or_inf])


@pytest.mark.parametrize(("value", "want"), [
    (1.0 + 2.0**-8, 1.0),                      # a tie, kept half even: down
    (1.0 + 3 * 2.0**-8, 1.0 + 2.0**-6),        # a tie, kept half odd: up
    (1.0 + 2.0**-8 + 2.0**-20, 1.0 + 2.0**-7),  # above the tie: up
    (F32_MAX, np.inf),                         # past the largest bf16 by over half an ulp
    (-F32_MAX, -np.inf),
    (np.inf, np.inf), (-np.inf, -np.inf),
    (2.0**-133, 2.0**-133),                    # the smallest bf16 subnormal
    (2.0**-134, 0.0),                          # half of it: a tie, to even (zero)
    (2.0**-134 + 2.0**-149, 2.0**-133),        # above that tie: up (no flush to zero)
    (3 * 2.0**-134, 2.0**-132),                # a subnormal tie, kept half odd: up
    (2.0**-149, 0.0),                          # the smallest float32 subnormal
    (0.0, 0.0),
])
def test_bf16_rounding_values(value, want):
    got = round_bfloat16(np.float32(value))
    assert got.dtype == np.float32
    assert _bits(got) == _bits(np.float32(want))
    assert _bits(_testing.bf16_round([value]))[0] == _bits(np.float32(want))


def test_bf16_rounding_keeps_nan_a_nan():
    # payloads only in the dropped half would truncate to inf, and an all-ones NaN
    # would carry into the sign: both stay (quiet) NaNs with their sign
    u = np.array([0x7F800001, 0x7F80FFFF, 0x7FFFFFFF, 0xFFFFFFFF, 0xFF800001, 0x7FC00000],
                 np.uint32)
    a = u.view(np.float32)
    for got in (round_bfloat16(a), _testing.bf16_round(a)):
        assert np.isnan(got).all()
        np.testing.assert_array_equal(np.signbit(got), np.signbit(a))
        np.testing.assert_array_equal(_bits(got) & 0x00400000, 0x00400000)   # quiet
    np.testing.assert_array_equal(_bits(_testing.bf16_round(a)), _bits(round_bfloat16(a)))


def test_bf16_rounding_matches_ml_dtypes():
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="the peer check needs ml_dtypes")
    a = _special_bits().view(np.float32)
    peer = a.astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(_bits(round_bfloat16(a)), _bits(peer))


def test_round_bfloat16_copies_and_keeps_the_shape():
    x = np.linspace(-3, 3, 24, dtype=np.float32).reshape(2, 3, 4)[:, ::2]   # strided
    keep = x.copy()
    y = round_bfloat16(x)
    assert y.shape == x.shape and y.dtype == np.float32 and y.flags.c_contiguous
    np.testing.assert_array_equal(x, keep)     # never written
    np.testing.assert_array_equal(y, bf16_round(x))
    np.testing.assert_array_equal(round_bfloat16(np.arange(5)), np.arange(5, dtype=np.float32))
    assert round_bfloat16(1.3) == np.float32(1.296875)
    with pytest.raises(TypeError, match="real numeric"):
        round_bfloat16(np.array(["a"]))


def test_stream_packer_shares_the_rounding():
    from cylstm import stream

    a = np.random.default_rng(3).standard_normal((7, 40)).astype(np.float32)
    np.testing.assert_array_equal(stream._to_bf16(a), bfloat16_bits(a))
    with pytest.raises(ValueError, match="must be finite"):  # packed weights stay refused
        stream._to_bf16(np.array([1.0, np.nan], np.float32))


# ---------------------------------------------------------------------------
# The functional LSTM: compute_dtype="bfloat16"
# ---------------------------------------------------------------------------

F32 = {"rtol": 1e-5, "atol": 2e-6}          # float32 recurrences (tests/test_lstm_kernels.py)
F32_GRAD = {"rtol": 1e-4, "atol": 2e-5}


def _ref_bf16(x, W, U, b, y_kernel, h0=None, c0=None, lengths=None, reverse=False,
              rmask=None):
    """The emulated semantics in float64: tests/reference.py's LSTM over x, W, U
    rounded to bf16 once, its recurrent operand h_prev (* mask) rounded every step,
    products and gates in float64.

    A float32 h_prev within its own rounding noise (1e-5 relative) of a bf16 tie may
    round to either neighbour, and the kernel's float32 h differs from this float64
    one in its last bits: there, and only there, the rounding takes the kernel's side
    (read from its outputs ``y_kernel``), so a test does not fail on a coin toss.
    Anywhere else a different rounding is the reference's own, and a wrong kernel
    still fails."""
    B, T, _ = x.shape
    H = U.shape[0]
    L = np.full(B, T) if lengths is None else np.asarray(lengths)
    h0k = np.zeros((B, H), np.float32) if h0 is None else np.asarray(h0, np.float32)

    def kernel_h_prev(n, t):
        first = t == (L[n] - 1 if reverse else 0)
        return h0k[n] if first else y_kernel[n, t + 1 if reverse else t - 1]

    def hround(hr, n, t):
        mine = bf16_round(hr)
        hk = kernel_h_prev(n, t)
        if rmask is not None:
            hk = hk * np.asarray(rmask[n], np.float32)   # as the kernel: in float32
        theirs = bf16_round(hk)
        tie = np.abs(hr - (mine + theirs) / 2) <= 1e-5 * np.abs(hr)
        return np.where((mine != theirs) & tie, theirs, mine)

    return lstm_ref(bf16_round(x), bf16_round(W), bf16_round(U), b, h0, c0, lengths, reverse,
                    rmask, hround=hround)


def _f32(*arrays):
    return [np.asarray(a, np.float32) for a in arrays]


CASES = [  # (B, T, I, H): batch 1, T = 1, more units than inputs, more inputs than units;
    # on AMX tiles, edge tiles in every direction and two A tiles a thread (40 rows)
    (9, 7, 4, 5), (1, 6, 3, 8), (5, 1, 6, 4), (16, 12, 20, 24), (3, 9, 33, 17), (40, 5, 40, 36)]
_AMX = pytest.mark.skipif(_lstm.amx_status()[0] != 5,
                          reason=f"no AMX bf16 tiles here: {_lstm.amx_status()[1]}")


@pytest.mark.parametrize("path", ["rows", "rows_fused", pytest.param("rows_bf16", marks=_AMX),
                                  pytest.param("rows_bf16_fused", marks=_AMX)])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", CASES)
@pytest.mark.parametrize("reverse", [False, True])
def test_forward_bf16_matches_reference(path, threads, shape, reverse):
    B, T, I, H = shape
    x, W, U, b = _f32(*random_lstm(np.random.default_rng(sum(shape)), B, T, I, H))
    h0, c0 = _f32(*np.random.default_rng(5).standard_normal((2, B, H)) * 0.5)
    keep = [a.copy() for a in (x, W, U, b, h0, c0)]
    out = lstm_forward(x, W, U, b, initial_state=(h0, c0), go_backwards=reverse,
                       compute_dtype="bfloat16", num_threads=threads, _plan=path)
    for a, k in zip((x, W, U, b, h0, c0), keep):
        np.testing.assert_array_equal(a, k)        # the caller's arrays stay as they were
    y, hT, cT, _ = _ref_bf16(x, W, U, b, out.output, h0, c0, reverse=reverse)
    assert out.output.dtype == np.float32
    np.testing.assert_allclose(out.output, y, **F32)
    np.testing.assert_allclose(out.h, hT, **F32)
    np.testing.assert_allclose(out.c, cT, **F32)
    last = lstm_forward(x, W, U, b, initial_state=(h0, c0), go_backwards=reverse,
                        return_sequences=False, compute_dtype="bfloat16", num_threads=threads,
                        _plan=path)
    np.testing.assert_array_equal(last.output, out.h)


@pytest.mark.parametrize(("path", "B"), [("rows", 10), pytest.param("rows_bf16", 34, marks=_AMX)])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("reverse", [False, True])
def test_forward_bf16_with_lengths_matches_reference(path, B, threads, reverse):
    # (34 rows: two AMX slices of 16 rows and more, edge tiles in each)
    T, I, H = 8, 5, 6
    x, W, U, b = _f32(*random_lstm(np.random.default_rng(11), B, T, I, H))
    lengths = np.random.default_rng(12).integers(0, T + 1, B)
    lengths[-1], lengths[0] = 0, T
    out = lstm_forward(x, W, U, b, lengths=lengths, go_backwards=reverse,
                       compute_dtype="bfloat16", num_threads=threads, _plan=path)
    y, hT, cT, _ = _ref_bf16(x, W, U, b, out.output, lengths=lengths, reverse=reverse)
    np.testing.assert_allclose(out.output, y, **F32)
    np.testing.assert_allclose(out.h, hT, **F32)
    np.testing.assert_allclose(out.c, cT, **F32)
    for n, L in enumerate(lengths):
        assert not out.output[n, L:].any()


@pytest.mark.parametrize("path", ["rows", "rows_fused"])
@pytest.mark.parametrize("threads", [1, 2])
def test_forward_bf16_with_recurrent_mask_matches_reference(path, threads):
    B, T, I, H = 12, 9, 7, 10
    x, W, U, b = _f32(*random_lstm(np.random.default_rng(21), B, T, I, H))
    rng = np.random.default_rng(22)
    rmask = ((rng.random((B, H)) < 0.7) / 0.7).astype(np.float32)
    out = lstm_forward(x, W, U, b, recurrent_mask=rmask, compute_dtype="bfloat16",
                       num_threads=threads, _plan=path)
    y, hT, cT, _ = _ref_bf16(x, W, U, b, out.output, rmask=rmask)
    np.testing.assert_allclose(out.output, y, **F32)
    np.testing.assert_allclose(out.h, hT, **F32)
    np.testing.assert_allclose(out.c, cT, **F32)


@pytest.mark.parametrize("path", ["rows", "rows_fused"])
def test_training_cache_holds_the_rounded_operands(path):
    # bit for bit: the kernel's recurrent operand is the library's rounding of the h it
    # carried (its previous output), and x, W, U are the library's rounding of the inputs
    B, T, I, H = 6, 5, 4, 7
    x, W, U, b = _f32(*random_lstm(np.random.default_rng(31), B, T, I, H))
    h0 = np.random.default_rng(32).standard_normal((B, H)).astype(np.float32)
    out = lstm_forward(x, W, U, b, initial_state=(h0, np.zeros_like(h0)), training=True,
                       compute_dtype="bfloat16", _plan=path)
    c = out.cache
    prev = np.concatenate([h0[:, None], out.output[:, :-1]], axis=1)
    np.testing.assert_array_equal(c["Hp"].view(np.uint32), round_bfloat16(prev).view(np.uint32))
    for name, a in (("x", x), ("W", W), ("U", U)):
        np.testing.assert_array_equal(c[name], round_bfloat16(a), err_msg=name)
    inference = lstm_forward(x, W, U, b, initial_state=(h0, np.zeros_like(h0)),
                             compute_dtype="bfloat16", _plan=path)
    np.testing.assert_array_equal(inference.output, out.output)


def _grads_case(seed, B=8, T=7, I=5, H=6, mask=False):
    x, W, U, b = _f32(*random_lstm(np.random.default_rng(seed), B, T, I, H))
    rng = np.random.default_rng(seed + 1)
    h0, c0 = _f32(*rng.standard_normal((2, B, H)) * 0.5)
    dy, = _f32(rng.standard_normal((B, T, H)))
    dhT, dcT = _f32(*rng.standard_normal((2, B, H)))
    rmask = ((rng.random((B, H)) < 0.75) / 0.75).astype(np.float32) if mask else None
    return x, W, U, b, h0, c0, dy, dhT, dcT, rmask


def _check_grads(g, x, W, U, b, out_y, h0, c0, dy, dhT, dcT, rmask=None, lengths=None,
                 reverse=False, bound=None):
    """The gradients ``g`` against the float64 reference, elementwise (F32_GRAD), or
    with ``bound``, as max |error| <= bound * max |reference| per gradient: for
    cases with thousands of dz values, some of which lie within float32's noise of
    a bf16 tie and round to the other neighbour than the float64 reference's (each
    such flip a bf16 ulp, 2**-8, of one dz; measured: <= 6e-4 of the largest
    gradient at (B, T, I, H) = (64, 50, 64, 64), where the reference without dz's
    rounding is 1.3e-3 to 2.2e-3 away)."""
    _, _, _, tape = _ref_bf16(x, W, U, b, out_y, h0, c0, lengths, reverse, rmask)
    # straight through the casts: the rounded x, W, U stand in the backward, and
    # dz is rounded where it multiplies (bf16 products both ways, as the forward's)
    want = lstm_ref_backward(bf16_round(x), bf16_round(W), bf16_round(U), tape, dy, dhT, dcT,
                             rmask, dzround=bf16_round)
    for name, got, ref in zip(("dx", "dW", "dU", "db", "dh0", "dc0"), g, want):
        assert got.dtype == np.float32, name
        if bound is None:
            np.testing.assert_allclose(got, ref, **F32_GRAD, err_msg=name)
        else:
            err = np.abs(got - ref).max() / np.abs(ref).max()
            assert err <= bound, f"{name}: {err:.2e} of the largest > {bound}"


@pytest.mark.parametrize(("path", "B"), [("rows", 8), ("rows_fused", 8),
                                         pytest.param("rows_bf16", 34, marks=_AMX),
                                         pytest.param("rows_bf16_fused", 34, marks=_AMX)])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("mask", [False, True])
def test_backward_bf16_is_the_straight_through_reference(path, B, threads, mask):
    # (the AMX paths' training forward: the cache the emulated backward reads)
    x, W, U, b, h0, c0, dy, dhT, dcT, rmask = _grads_case(41, B=B, mask=mask)
    out = lstm_forward(x, W, U, b, initial_state=(h0, c0), recurrent_mask=rmask,
                       training=True, compute_dtype="bfloat16", num_threads=threads,
                       _plan=path)
    y = out.output.copy()
    g = lstm_backward(out.cache, grad_output=dy, grad_h=dhT, grad_c=dcT, num_threads=threads)
    _check_grads(g, x, W, U, b, y, h0, c0, dy, dhT, dcT, rmask)


@pytest.mark.parametrize("reverse", [False, True])
def test_backward_bf16_with_lengths(reverse):
    x, W, U, b, h0, c0, dy, dhT, dcT, _ = _grads_case(51, B=9)
    lengths = np.array([7, 0, 3, 7, 1, 5, 6, 2, 4])
    out = lstm_forward(x, W, U, b, initial_state=(h0, c0), lengths=lengths, go_backwards=reverse,
                       training=True, compute_dtype="bfloat16")
    y = out.output.copy()
    dy = dy * (np.arange(7)[None, :] < lengths[:, None])[..., None]  # padding has no gradient
    g = lstm_backward(out.cache, grad_output=dy, grad_h=dhT, grad_c=dcT)
    _check_grads(g, x, W, U, b, y, h0, c0, dy, dhT, dcT, lengths=lengths, reverse=reverse)


@pytest.mark.parametrize("every", [1, 3, 100])
@pytest.mark.parametrize("mask", [False, True])
def test_checkpointed_training_rounds_as_the_full_forward(every, mask):
    # the segments (forward and their recomputation in the backward) round h_prev too:
    # the same outputs as the full cache's forward, and the straight-through gradients
    x, W, U, b, h0, c0, dy, dhT, dcT, rmask = _grads_case(61, mask=mask)
    kw = {"initial_state": (h0, c0), "recurrent_mask": rmask, "training": True,
          "compute_dtype": "bfloat16", "_plan": "rows"}
    full = lstm_forward(x, W, U, b, **kw)
    ck = lstm_forward(x, W, U, b, checkpoint_every=every, **kw)
    assert "checkpoints" in ck.cache
    np.testing.assert_array_equal(ck.output, full.output)
    y = ck.output.copy()
    g = lstm_backward(ck.cache, grad_output=dy, grad_h=dhT, grad_c=dcT)
    gf = lstm_backward(full.cache, grad_output=dy, grad_h=dhT, grad_c=dcT)
    _check_grads(g, x, W, U, b, y, h0, c0, dy, dhT, dcT, rmask)
    for a, c in zip(g, gf):  # (the segments sum their weight gradients in another order)
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)


def _keras_like(rng, T, B, I, H):
    """Inputs N(0, 1) and Keras's default initial weights: glorot-uniform kernel,
    orthogonal recurrent kernel, zero bias with the forget block at 1."""
    lim = np.sqrt(6 / (I + 4 * H))
    W = rng.uniform(-lim, lim, (I, 4 * H))
    q, r = np.linalg.qr(rng.standard_normal((4 * H, H)))
    U = (q * np.sign(np.diag(r))).T
    b = np.zeros(4 * H)
    b[H:2 * H] = 1
    return _f32(rng.standard_normal((B, T, I)), W, U, b)


@pytest.mark.parametrize(("T", "B", "I", "H"), [(100, 32, 10, 50), (100, 8, 128, 256)])
def test_bf16_forward_accuracy_over_100_steps(T, B, I, H):
    # issue 16: max abs error <= 1e-2 against float32 over 100 steps, and not 0 (the
    # operands were rounded)
    x, W, U, b = _keras_like(np.random.default_rng(T + B + I + H), T, B, I, H)
    f32 = lstm_forward(x, W, U, b)
    for path in ("rows", "rows_fused"):
        bf = lstm_forward(x, W, U, b, compute_dtype="bfloat16", _plan=path)
        err = float(np.abs(bf.output - f32.output).max())
        assert 0 < err <= 1e-2, (path, err)
        assert float(np.abs(bf.c - f32.c).max()) > 0


def test_compute_dtype_float_names_are_the_plain_kernels():
    x, W, U, b = _f32(*random_lstm(np.random.default_rng(71), 4, 5, 3, 6))
    plain = lstm_forward(x, W, U, b).output
    for name in (None, "float32", np.float32):
        np.testing.assert_array_equal(lstm_forward(x, W, U, b, compute_dtype=name).output,
                                      plain)
    W64, U64, b64 = (a.astype(np.float64) for a in (W, U, b))
    lstm_forward(x, W64, U64, b64, compute_dtype="float64")


@pytest.mark.parametrize(("value", "match"), [
    ("bf16", r"compute_dtype must be one of \[None, 'float32', 'float64', 'bfloat16'\]"),
    ("float16", "compute_dtype must be one of"),
    ("mixed_bfloat16", "compute_dtype must be one of"),
    (3, "compute_dtype must be one of"),
    ("float64", "compute_dtype='float64' with float32 weights"),
])
def test_compute_dtype_refuses_bad_values(value, match):
    x, W, U, b = _f32(*random_lstm(np.random.default_rng(72), 2, 3, 3, 4))
    with pytest.raises(ValueError, match=match):
        lstm_forward(x, W, U, b, compute_dtype=value)


def test_bfloat16_needs_float32_weights():
    x, W, U, b = random_lstm(np.random.default_rng(73), 2, 3, 3, 4)   # float64
    with pytest.raises(ValueError, match="compute_dtype='bfloat16' needs float32 weights.*"
                                         "float64"):
        lstm_forward(x, W, U, b, compute_dtype="bfloat16")


@pytest.mark.parametrize("path", ["units", "stacked"])
def test_a_forced_panel_path_is_refused_under_bfloat16(path):
    x, W, U, b = _f32(*random_lstm(np.random.default_rng(74), 8, 3, 3, 40))
    with pytest.raises(ValueError, match=f"_plan='{path}' cannot run this call: "
                                         "compute_dtype='bfloat16' runs on the BLAS paths"):
        lstm_forward(x, W, U, b, compute_dtype="bfloat16", _plan=path)


MiB = 2**20
AVX512 = _tuning.CpuFacts(vendor="AuthenticAMD", model_name="test", n_cores=8, isa_level=2,
                          isa_name="avx512", fma512_ports=1, l2_per_core=MiB,
                          l3_total=32 * MiB, l3_shared_by=8, l3_per_core=4 * MiB,
                          l3_source="test", llc_budget=32 * MiB, blas_core="Haswell")


@pytest.mark.parametrize(("B", "H", "training", "lengths"), [
    (1, 128, False, False), (64, 512, False, False), (2, 1024, True, False),
    (64, 256, False, True), (32, 64, True, False)])
@pytest.mark.parametrize("facts", [AVX512, dataclasses.replace(AVX512, isa_level=1,
                                                               isa_name="avx2")])
def test_the_planner_keeps_bfloat16_on_the_blas_paths(B, H, training, lengths, facts):
    # shapes whose float32 plans take the panel paths on these CPUs (facts injected)
    p32 = plan_forward(B, 20, 64, H, np.float32, 2, training, has_lengths=lengths, facts=facts)
    p16 = plan_forward(B, 20, 64, H, np.float32, 2, training, has_lengths=lengths, facts=facts,
                       compute_dtype="bfloat16")
    assert p16.bf16 and not p32.bf16
    assert p16.path in ("rows", "rows_fused") and "bfloat16" in p16.reason
    assert p16.path == ("rows" if lengths else p16.path)
    if B >= 64 and not training:
        assert p32.path in ("units", "stacked")   # the case this test is for


# ---------------------------------------------------------------------------
# The policy API
# ---------------------------------------------------------------------------

KERAS_MIXED = {"module": "keras", "class_name": "DTypePolicy",
               "config": {"name": "mixed_bfloat16"}, "registered_name": None}


@pytest.mark.parametrize(("name", "compute", "variable"), [
    ("float32", "float32", "float32"), ("float64", "float64", "float64"),
    ("mixed_bfloat16", "bfloat16", "float32")])
def test_policy_names(name, compute, variable):
    p = DTypePolicy(name)
    assert (p.name, p.compute_dtype, p.variable_dtype) == (name, compute, variable)
    assert mixed_precision.Policy is DTypePolicy
    assert repr(p) == f'<DTypePolicy "{name}">'
    assert p == DTypePolicy.from_config(p.get_config()) and hash(p) == hash(DTypePolicy(name))
    assert DTypePolicy().name == "float32"
    assert mixed_precision.get({"class_name": "DTypePolicy", "config": {"name": name}}) == p


@pytest.mark.parametrize(("name", "why"), [
    ("mixed_float16", "no float16 compute on CPUs"),
    ("float16", "float32 master variables"),
    ("bfloat16", "float32 master variables"),
    ("int8", "unknown dtype policy 'int8'"),
])
def test_refused_policy_names_say_why_and_list_the_valid_ones(name, why):
    for make in (DTypePolicy, mixed_precision.set_global_policy,
                 lambda n: LSTM(4, dtype=n), lambda n: Dense(2, dtype=n)):
        with pytest.raises(ValueError, match=why) as e:
            make(name)
        assert "float32, float64, mixed_bfloat16" in str(e.value)
        if name != "int8":
            assert "use 'mixed_bfloat16'" in str(e.value)
    assert mixed_precision.global_policy().name == "float32"   # a refused one is not set


def test_policy_arguments_of_the_wrong_type():
    with pytest.raises(TypeError, match="must be a string"):
        DTypePolicy(32)
    with pytest.raises(TypeError, match="must be a string"):
        mixed_precision.set_global_policy(np.float32)
    with pytest.raises(TypeError, match="dtype must be a dtype policy name"):
        LSTM(4, dtype=3)


def test_global_policy_applies_to_layers_made_after_it():
    before = LSTM(4)
    assert mixed_precision.global_policy() == DTypePolicy("float32")
    mixed_precision.set_global_policy("mixed_bfloat16")
    assert mixed_precision.global_policy().name == "mixed_bfloat16"
    after, dense = LSTM(4), Dense(2)
    explicit = LSTM(4, dtype="float32")
    assert after.compute_dtype == dense.compute_dtype == "bfloat16"
    assert before.compute_dtype == explicit.compute_dtype == "float32"
    # wrappers take their layer's policy, not the global one
    assert Bidirectional(LSTM(3, dtype="float32")).compute_dtype == "float32"
    assert TimeDistributed(Dense(3, dtype="float32")).compute_dtype == "float32"
    assert Bidirectional(LSTM(3)).compute_dtype == "bfloat16"
    mixed_precision.set_global_policy(DTypePolicy("float64"))
    assert LSTM(4).dtype == np.float64
    mixed_precision.set_global_policy(KERAS_MIXED)
    assert LSTM(4).compute_dtype == "bfloat16"
    mixed_precision.set_global_policy(None)
    assert mixed_precision.global_policy().name == "float32"
    assert LSTM(4)._dtype is None   # the default: the layer takes its model's dtype


@pytest.mark.parametrize("spelling", ["mixed_bfloat16", DTypePolicy("mixed_bfloat16"),
                                      KERAS_MIXED, {"name": "mixed_bfloat16"}])
def test_layer_policy_attributes(spelling):
    for layer in (LSTM(4, dtype=spelling), Dense(2, dtype=spelling)):
        assert layer.dtype_policy == DTypePolicy("mixed_bfloat16")
        assert layer.compute_dtype == "bfloat16"
        assert layer.variable_dtype == "float32"
        assert layer.dtype == np.float32 and isinstance(layer.dtype, np.dtype)
        assert layer.get_config()["dtype"] == KERAS_MIXED
    plain = LSTM(4)
    assert (plain.compute_dtype, plain.variable_dtype) == ("float32", "float32")
    assert plain.get_config()["dtype"] is None
    assert LSTM(4, dtype="float64").dtype_policy == DTypePolicy("float64")
    assert LSTM(4, dtype=np.float64).get_config()["dtype"] == "float64"


def _mixed_stack(I=5, dtype="mixed_bfloat16", seed=0):
    return Sequential([LSTM(12, return_sequences=True, input_shape=(None, I), dtype=dtype,
                            seed=seed),
                       LSTM(6, dtype=dtype, seed=seed + 1), Dense(2, dtype=dtype, seed=seed + 2)])


def _x(B=4, T=9, I=5, seed=3):
    return np.random.default_rng(seed).standard_normal((B, T, I)).astype(np.float32)


def test_layer_calls_are_the_functional_bf16_kernels():
    m = _mixed_stack()
    x = _x()
    l1, l2, d = m.layers
    h = lstm_forward(x, l1.kernel, l1.recurrent_kernel, l1.bias,
                     compute_dtype="bfloat16").output
    h = lstm_forward(h, l2.kernel, l2.recurrent_kernel, l2.bias, return_sequences=False,
                     compute_dtype="bfloat16").output
    want = round_bfloat16(h) @ round_bfloat16(d.kernel) + d.bias
    np.testing.assert_array_equal(m.predict(x, verbose=0), want)
    f32 = _mixed_stack(dtype=None)
    f32.set_weights(m.get_weights())
    err = np.abs(f32.predict(x, verbose=0) - want).max()
    assert 0 < err < 1e-2


def test_models_may_mix_float32_and_mixed_layers_but_not_variable_dtypes():
    m = Sequential([LSTM(6, input_shape=(None, 3), dtype="mixed_bfloat16"), Dense(1)])
    assert m.dtype == np.float32
    assert [lay.compute_dtype for lay in m.layers] == ["bfloat16", "float32"]
    m.predict(_x(I=3), verbose=0)
    with pytest.raises(ValueError, match="mixed_bfloat16"):
        Sequential([Input(shape=(None, 3), dtype="float64"),
                    LSTM(6, dtype="mixed_bfloat16")]).predict(_x(I=3).astype(np.float64))


def test_dense_gradients_pass_straight_through_the_roundings():
    rng = np.random.default_rng(81)
    d = Dense(3, dtype="mixed_bfloat16", activation="tanh")
    x = rng.standard_normal((5, 4)).astype(np.float32)
    d(x)
    y, _ = d._forward(x, None, True)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = d._backward(dy.copy())   # (the backward may reuse its argument's memory)
    x16, k16 = round_bfloat16(x), round_bfloat16(d.kernel)
    np.testing.assert_array_equal(y, np.tanh(x16 @ k16 + d.bias))
    dz = dy * (1 - y**2)
    dz16 = bf16_round(dz)   # the products' operand; the bias sums the float32 dz
    np.testing.assert_allclose(d._grads["kernel"], x16.T @ dz16, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d._grads["bias"], dz.sum(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, dz16 @ k16.T, rtol=1e-5, atol=1e-6)


def test_lstm_layer_gradients_are_the_functional_ones():
    rng = np.random.default_rng(82)
    layer = LSTM(5, return_sequences=True, dtype="mixed_bfloat16")
    x = rng.standard_normal((3, 6, 4)).astype(np.float32)
    layer(x)
    y, _ = layer._forward(x, None, True)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = layer._backward(dy)
    r = lstm_forward(x, layer.kernel, layer.recurrent_kernel, layer.bias, training=True,
                     compute_dtype="bfloat16")
    g = lstm_backward(r.cache, grad_output=dy)
    np.testing.assert_array_equal(y, r.output)
    np.testing.assert_allclose(dx, g.dx, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(layer._grads["kernel"], g.dkernel, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(layer._grads["recurrent_kernel"], g.drecurrent_kernel,
                               rtol=1e-6, atol=1e-7)


def test_config_round_trips_keep_the_policy():
    m = _mixed_stack()
    x = _x()
    cfg = m.get_config()
    assert [lc["config"]["dtype"] for lc in cfg["layers"]] == [KERAS_MIXED] * 3
    json.dumps(cfg)
    m2 = Sequential.from_config(cfg)
    assert [lay.compute_dtype for lay in m2.layers] == ["bfloat16"] * 3
    # a plain string, as older files and hand-written configs have it
    lc = dict(cfg["layers"][0]["config"], dtype="mixed_bfloat16")
    assert LSTM.from_config(lc).compute_dtype == "bfloat16"
    m2.set_weights(m.get_weights())
    np.testing.assert_array_equal(m2.predict(x, verbose=0), m.predict(x, verbose=0))


def test_save_and_load_keep_the_policy_and_the_predictions(tmp_path):
    inp = Input(shape=(None, 5))
    h = Bidirectional(LSTM(6, return_sequences=True, dtype="mixed_bfloat16"))(inp)
    h = TimeDistributed(Dense(4, dtype="mixed_bfloat16"))(h)
    out = Dense(1)(LSTM(3, dtype="mixed_bfloat16")(h))
    fm = Model(inp, out)
    fm.compile(optimizer="adam", loss="mse")
    x = _x()
    fm.fit(x, np.ones((4, 1), np.float32), epochs=1, verbose=0)
    for model, name in ((fm, "f.cylstm"), (_mixed_stack(), "s.cylstm")):
        p = model.predict(x, verbose=0)
        model.save(tmp_path / name)
        back = load_model(tmp_path / name)
        assert [lay.compute_dtype for lay in back.layers] == \
            [lay.compute_dtype for lay in model.layers]
        assert "bfloat16" in [lay.compute_dtype for lay in back.layers]
        np.testing.assert_array_equal(back.predict(x, verbose=0), p)


def test_fit_updates_the_float32_master_weights():
    m = _mixed_stack()
    m.compile(optimizer="adam", loss="mse")
    x = _x(B=32)
    y = x[:, -3:, :2].mean(axis=1)
    before = [w.copy() for w in m.get_weights()]
    hist = m.fit(x, y, epochs=8, batch_size=16, verbose=0).history["loss"]
    after = m.get_weights()
    assert hist[-1] < hist[0]
    for a, b in zip(before, after):
        assert b.dtype == np.float32 and not np.array_equal(a, b)
    # the masters keep float32 steps, not bf16 ones: their low halves move too
    k = m.layers[0].kernel
    assert (k.view(np.uint32) & 0xFFFF).any()
    assert m.evaluate(x, y, verbose=0) == pytest.approx(
        float(np.mean((m.predict(x, verbose=0) - y) ** 2)), rel=1e-4)


def test_checkpointed_layer_trains_as_the_full_one():
    x = _x(B=8, T=20)
    y = x[:, -1, :2]
    losses = []
    for every in (None, 6):
        np.random.seed(0)
        m = Sequential([LSTM(8, input_shape=(None, 5), dtype="mixed_bfloat16", seed=1,
                             checkpoint_every=every, recurrent_dropout=0.2),
                        Dense(2, dtype="mixed_bfloat16", seed=2)])
        m.compile(optimizer="sgd", loss="mse")
        losses.append(m.fit(x, y, epochs=3, batch_size=8, shuffle=False,
                            verbose=0).history["loss"])
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


def _keras_example(dtype, epochs=30):
    """tests/test_keras_example.py's model and data, seeded."""
    from cylstm.optimizers import Adam

    rng = np.random.default_rng(0)
    x_train = rng.standard_normal((96, 12, 10)).astype(np.float32)
    y_train = x_train[:, -3:, 0].mean(axis=1, keepdims=True)
    np.random.seed(0)   # the layers' initial weights and the shuffling
    model = Sequential()
    model.add(LSTM(units=50, return_sequences=True, input_shape=(None, 10), dtype=dtype))
    model.add(LSTM(units=20, dtype=dtype))
    model.add(Dense(units=1, dtype=dtype))
    model.compile(optimizer=Adam(learning_rate=0.001), loss="mean_squared_error")
    return model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0).history["loss"]


def test_keras_example_trained_in_mixed_bfloat16_ends_near_float32():
    # issue 16: within 5% of the float32 final loss, same seed
    f32 = _keras_example(None)
    bf16 = _keras_example("mixed_bfloat16")
    assert bf16[-1] < 0.5 * bf16[0]
    assert abs(bf16[-1] - f32[-1]) <= 0.05 * f32[-1], (f32[-1], bf16[-1])
    assert bf16 != f32   # (the products were rounded)


def test_global_policy_trains_the_keras_example_unchanged():
    mixed_precision.set_global_policy("mixed_bfloat16")
    assert _keras_example(None, epochs=2) == _keras_example("mixed_bfloat16", epochs=2)


def test_quantize_leaves_the_policy_for_the_int8_model():
    m = _mixed_stack()
    m.quantize("int8")
    assert [lay.compute_dtype for lay in m.layers] == ["float32"] * 3
    assert m.streamer().weights_dtype == "int8"
    back = Sequential.from_config(m.get_config())
    assert [lay.compute_dtype for lay in back.layers] == ["float32"] * 3


def test_mixed_lstm_refuses_the_cuda_backend():
    layer = LSTM(4, dtype="mixed_bfloat16")
    layer._device = ("cuda", 0)   # as model.to('cuda') would set it
    with pytest.raises(ValueError, match="mixed_bfloat16 policy, which runs on the CPU only"):
        layer(_x(I=3))


# ---------------------------------------------------------------------------
# Streaming, show_config, ONNX and Keras interop
# ---------------------------------------------------------------------------

def test_streamer_of_a_mixed_model_reads_bf16_weights_and_agrees_with_predict():
    # The runner multiplies float32 activations by bf16 weights; predict rounds x and
    # h_prev too.  Both are within the bf16 error of float32: stated bound 1e-2 over
    # 50 steps (measured 3e-4 here).
    m = _mixed_stack(I=5)
    x = _x(B=3, T=50)
    runner = m.streamer(batch_size=3)
    assert runner.weights_dtype == "bfloat16"
    ys = np.stack([runner.step(x[:, t]).copy() for t in range(x.shape[1])], 1)
    p = m.predict(x, verbose=0)
    assert np.abs(ys[:, -1] - p).max() <= 1e-2
    f32 = _mixed_stack(dtype=None)
    f32.set_weights(m.get_weights())
    assert np.abs(ys[:, -1] - f32.predict(x, verbose=0)).max() <= 1e-2
    # an explicit weights_dtype wins
    exact = m.streamer(batch_size=3, weights_dtype="float32")
    assert exact.weights_dtype == "float32"
    pool = m.stream_pool(max_streams=4)
    assert pool.weights_dtype == "bfloat16"
    np.testing.assert_array_equal(pool.run("a", x[0]), _run_one(m, x[0]))


def _run_one(model, block):
    r = model.streamer(batch_size=1)
    return np.stack([r.step(block[t]).copy() for t in range(block.shape[0])])


def test_streamer_defaults_stay_for_float_models():
    assert _mixed_stack(dtype=None).streamer().weights_dtype == "float32"
    part = Sequential([LSTM(4, return_sequences=True, input_shape=(None, 3),
                            dtype="mixed_bfloat16"), LSTM(3)])
    assert part.streamer().weights_dtype == "float32"   # not every LSTM is mixed


def test_show_config_names_the_policy_and_the_emulation():
    from cylstm import _config

    was = _lstm._force_bf16_dots(False)   # as on a CPU without the bf16 instructions
    try:
        for flags, want in ((frozenset(), "AVX512-BF16 no, AMX-BF16 no"),
                            (frozenset({"avx512_bf16", "amx_bf16"}),
                             "AVX512-BF16 yes, AMX-BF16 yes")):
            line = _config._mixed_precision_line(_tuning.CpuFacts(flags=flags))
            assert ("mixed_bfloat16: emulated (operands rounded to bf16, float32 FMAs): "
                    "AVX512-BF16 turned off") in line
            assert f"CPU bf16 instructions: {want}" in line
    finally:
        _lstm._force_bf16_dots(was)
    if _lstm.bf16_engine() == "amx":
        was = _lstm._force_amx(False)   # as on a Zen 4: dot products, no tiles
        try:
            line = _config._mixed_precision_line(_tuning.CpuFacts())
            assert ("mixed_bfloat16: LSTM forward and backward products on AVX512-BF16 dot "
                    "products (vdpbf16ps, float32 sums; no AMX tiles: turned off") in line
        finally:
            _lstm._force_amx(was)
    line = _config._mixed_precision_line(_tuning.CpuFacts())
    engine = _lstm.bf16_engine()
    how = {"amx": "LSTM forward and backward products on AMX tiles",
           "avx512_bf16": "LSTM forward and backward products on AVX512-BF16 dot products",
           None: "emulated (operands rounded to bf16, float32 FMAs): "
                 + _lstm._bf16_engine_why()}[engine]
    assert f"mixed_bfloat16: {how}" in line
    mixed_precision.set_global_policy("mixed_bfloat16")
    buf = io.StringIO()
    cylstm.show_config(file=buf)
    assert f"dtype policy: global 'mixed_bfloat16'; mixed_bfloat16: {how}" in buf.getvalue()

def test_onnx_export_of_a_mixed_model_writes_the_float32_masters(tmp_path):
    pytest.importorskip("onnx", reason="onnx not installed")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    m = _mixed_stack()
    path = m.to_onnx(tmp_path / "m.onnx")
    x = _x()
    got = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    f32 = _mixed_stack(dtype=None)
    f32.set_weights(m.get_weights())
    np.testing.assert_allclose(got, f32.predict(x, verbose=0), rtol=1e-4, atol=1e-5)
    assert np.abs(got - m.predict(x, verbose=0)).max() <= 1e-2


class _KerasLayer:
    """A stand-in for a live Keras layer: what cylstm.interop.from_keras reads of one."""

    def __init__(self, weights, **parts):
        self._w = weights
        self.__dict__.update(parts)

    def get_weights(self):
        return self._w


class _KerasModel:
    def __init__(self, config, layers):
        self._config, self.layers = config, layers

    def get_config(self):
        return json.loads(json.dumps(self._config))


# from_keras takes live models by their class (keras...Sequential): named as Keras's own
_KerasSequential = type("Sequential", (_KerasModel,), {"__module__": "keras.src.models"})


def _keras_cfg(cls, policy, **cfg):
    return {"module": "keras.layers", "class_name": cls, "registered_name": None,
            "config": dict(cfg, dtype={"module": "keras", "class_name": "DTypePolicy",
                                       "config": {"name": policy}, "registered_name": None})}


def _keras_like_model(policy):
    """A Keras 3 Sequential saved under ``policy``: LSTM(4, return_sequences), a
    Bidirectional(LSTM(3)), Dense(2); its config as Keras writes it."""
    rng = np.random.default_rng(0)

    def lstm_w(i, h):
        return [rng.uniform(-0.5, 0.5, s).astype(np.float32) for s in ((i, 4 * h), (h, 4 * h),
                                                                      (4 * h,))]

    lstm = _keras_cfg("LSTM", policy, name="lstm", units=4, return_sequences=True,
                      batch_shape=[None, None, 3])
    fwd = _keras_cfg("LSTM", policy, name="forward_lstm_1", units=3)
    bwd = _keras_cfg("LSTM", policy, name="backward_lstm_1", units=3, go_backwards=True)
    bi = _keras_cfg("Bidirectional", policy, name="bidirectional", layer=fwd,
                    backward_layer=bwd, merge_mode="concat")
    dense = _keras_cfg("Dense", policy, name="dense", units=2, activation="linear")
    config = {"module": "keras", "class_name": "Sequential",
              "config": {"name": "sequential", "layers": [lstm, bi, dense]}}
    layers = [_KerasLayer(lstm_w(3, 4)),
              _KerasLayer([], forward_layer=_KerasLayer(lstm_w(4, 3)),
                          backward_layer=_KerasLayer(lstm_w(4, 3))),
              _KerasLayer([rng.uniform(-0.5, 0.5, (6, 2)).astype(np.float32),
                           np.zeros(2, np.float32)])]
    return _KerasSequential(config, layers)


def test_keras_import_keeps_the_mixed_policy():
    from cylstm.interop import from_keras

    model = from_keras(_keras_like_model("mixed_bfloat16"))
    assert [lay.compute_dtype for lay in model.layers] == ["bfloat16"] * 3
    assert model.layers[1].forward_layer.compute_dtype == "bfloat16"
    assert model.layers[1].backward_layer.compute_dtype == "bfloat16"
    assert model.dtype == np.float32
    f32 = from_keras(_keras_like_model("float32"))
    assert [lay.compute_dtype for lay in f32.layers] == ["float32"] * 3
    x = _x(B=3, T=6, I=3)
    err = np.abs(model.predict(x, verbose=0) - f32.predict(x, verbose=0)).max()
    assert 0 < err <= 1e-2
    # and the cylstm model saves the policy it imported
    assert model.get_config()["layers"][0]["config"]["dtype"] == KERAS_MIXED


def test_layers_without_products_compute_float32_under_the_policy():
    e = Embedding(10, 4, dtype="mixed_bfloat16", seed=0)
    ids = np.array([[1, 2, 3]])
    np.testing.assert_array_equal(e(ids), e.embeddings[ids])   # not rounded
    assert e.compute_dtype == "bfloat16"   # (its policy says so, as Keras's)


def test_masked_inputs_run_the_bf16_kernels_with_lengths():
    from cylstm.layers import Masking

    x = _x(B=4, T=7, I=3)
    lengths = np.array([7, 3, 0, 5])
    x[np.arange(7)[None, :] >= lengths[:, None]] = 0
    m = Sequential([Masking(0.0, input_shape=(None, 3)), LSTM(5, dtype="mixed_bfloat16")])
    lay = m.layers[1]
    want = lstm_forward(x, lay.kernel, lay.recurrent_kernel, lay.bias, lengths=lengths,
                        return_sequences=False, compute_dtype="bfloat16").output
    np.testing.assert_array_equal(m.predict(x, verbose=0), want)
