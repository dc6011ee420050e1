"""Reduced-precision values, each with its one definition: bfloat16 rounding and
int8 per-output-channel symmetric quantization.

**bfloat16.**  A bf16 value is the upper half of a float32 (sign, 8 exponent
bits, 7 stored significand bits).  :func:`bfloat16_bits` rounds float32 to it,
to nearest with ties to even; :func:`round_bfloat16` returns the rounded value
as a float32 (low 16 bits zero).  Subnormals round like every other value (no
flush to zero), a value of half a bf16 ulp or more past the largest bf16
(3.3895e38, so FLT_MAX too) becomes inf, inf stays inf, and NaN stays NaN
(quiet, sign and upper payload kept): nothing raises.  The C kernels round with
``cyl_bf16_bits`` / ``cyl_bf16_roundf`` (include/cylstm_math.h), the same rule;
tests/test_mixed_precision.py checks the two bit for bit.  The users: the
``mixed_bfloat16`` policy (:mod:`cylstm.mixed_precision`: the operands of the
matrix products) and the streaming runner's bf16 weight panels
(``weights_dtype="bfloat16"``, which also refuses non-finite weights).

**int8.**  A weight matrix W (K, N) becomes int8 values q (K, N) and float32
column scales s (N,) with ``W ~= q * s``: ``s[j] = max_k |W[k, j]| / 127`` and
``q = round(W / s)`` in [-127, 127] (round half to even; -128 is never used, so
the range is symmetric).  An all-zero column gets ``s = 1`` and ``q = 0``.  The
error of a weight is at most ``s[j] / 2``.

The streaming runner's int8 weights (``weights_dtype="int8"``,
include/cylstm_panel.h ``cyl_panel_i8``) are these values: each weight is
converted to float in registers and multiplied with float32 activations, and each
output's two sums (input rows, recurrent rows) are scaled by their own column
scales.
"""
import numpy as np

from cylstm import _lstm

__all__ = ["bfloat16_bits", "dequantize_int8", "quantize_int8", "round_bfloat16"]


def _float32_bits(a, name):
    a = np.asarray(a)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} takes a real numeric array; got dtype {a.dtype}")
    return np.asarray(a, np.float32).view(np.uint32)


def _bf16_upper(u):
    """The rounded upper halves of float32 bits ``u`` (uint32), still in place:
    a uint32 array whose low 16 bits are zero (see the module docstring)."""
    r = (u >> 16) & 1
    r += 0x7FFF
    r += u           # wraps only for NaNs, replaced below
    r &= 0xFFFF0000
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    if nan.any():
        r = np.where(nan, (u & 0xFFFF0000) | 0x00400000, r)
    return np.asarray(r, np.uint32)


def bfloat16_bits(a):
    """``a`` rounded to bfloat16 as its bits (uint16, same shape), nearest even.

    Float32 input is rounded once; other real input is first cast to float32.
    Never raises on non-finite values (see the module docstring)."""
    return (_bf16_upper(_float32_bits(a, "bfloat16_bits")) >> 16).astype(np.uint16)


def round_bfloat16(a):
    """``a`` rounded to bfloat16 (nearest even), as a new float32 array of its shape.

    The value bf16 hardware would hold, widened back exactly: its low 16 bits are
    zero.  The input is never modified (a float32 array is read, not written).
    Float32 input is rounded in C (``_lstm.round_bf16``, the same bits as the
    NumPy rounding that :func:`bfloat16_bits` runs: tests compare them).
    """
    a = np.asarray(a)
    if a.dtype == np.float32:
        src = np.ascontiguousarray(a)
        out = np.empty(a.shape, np.float32)
        _lstm.round_bf16(src.reshape(-1), out.reshape(-1))
        return out
    return _bf16_upper(_float32_bits(a, "round_bfloat16")).view(np.float32)


def quantize_int8(w):
    """``(q, scale)``: int8 ``q`` (K, N) and float32 ``scale`` (N,) with
    ``w ~= q * scale``, one scale per output column (see the module docstring)."""
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"quantize_int8 takes a 2-D weight matrix (inputs, outputs); got "
                         f"shape {w.shape}")
    if not np.issubdtype(w.dtype, np.floating):
        raise TypeError(f"quantize_int8 takes float weights; got dtype {w.dtype}")
    w = w.astype(np.float32, copy=False)
    if not np.all(np.isfinite(w)):
        raise ValueError("int8 weights: the weights must be finite")
    amax = np.abs(w).max(axis=0) if w.shape[0] else np.zeros(w.shape[1], np.float32)
    scale = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    return q, scale


def dequantize_int8(q, scale):
    """The float32 weights ``q * scale`` that int8 ``q`` and ``scale`` stand for."""
    return np.asarray(q, np.float32) * np.asarray(scale, np.float32)
