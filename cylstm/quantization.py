"""Int8 weights: per-output-channel symmetric quantization, the one definition.

A weight matrix W (K, N) becomes int8 values q (K, N) and float32 column scales
s (N,) with ``W ~= q * s``: ``s[j] = max_k |W[k, j]| / 127`` and
``q = round(W / s)`` in [-127, 127] (round half to even; -128 is never used, so
the range is symmetric).  An all-zero column gets ``s = 1`` and ``q = 0``.  The
error of a weight is at most ``s[j] / 2``.

The streaming runner's int8 weights (``weights_dtype="int8"``,
include/cylstm_stream.h ``cyl_stream_panel_i8``) are these values: each weight is
converted to float in registers and multiplied with float32 activations, and each
output's two sums (input rows, recurrent rows) are scaled by their own column
scales.
"""
import numpy as np

__all__ = ["dequantize_int8", "quantize_int8"]


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
