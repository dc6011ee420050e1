"""The mixed_bfloat16 policy (issue 16), emulated: operands rounded to bfloat16,
float32 sums, float32 master variables.

- the rounding: the C kernels' (include/cylstm_math.h), the library's
  (cylstm.quantization) and the independent one in tests/reference.py, bit for bit;
"""
import numpy as np
import pytest
from reference import bf16_round

from cylstm import _testing
from cylstm.quantization import bfloat16_bits, round_bfloat16

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
