"""cylstm.quantization: per-output-channel symmetric int8, against its definition."""
import numpy as np
import pytest

from cylstm.quantization import dequantize_int8, quantize_int8


def test_scales_and_values_follow_the_definition():
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((50, 12)) * rng.uniform(0.01, 3, 12)).astype(np.float32)
    q, s = quantize_int8(w)
    assert q.dtype == np.int8 and s.dtype == np.float32 and s.shape == (12,)
    np.testing.assert_array_equal(s, (np.abs(w).max(axis=0) / np.float32(127)))
    assert q.min() >= -127 and q.max() <= 127
    # the largest weight of each column maps to +-127
    np.testing.assert_array_equal(np.abs(q).max(axis=0), 127)
    # every weight within half a step of its value
    err = np.abs(dequantize_int8(q, s) - w)
    assert np.all(err <= s / 2 * (1 + 1e-6))


def test_zero_column_and_empty_rows():
    w = np.zeros((4, 3), np.float32)
    w[:, 1] = [1, -2, 0.5, 0]
    q, s = quantize_int8(w)
    assert s[0] == 1 and s[2] == 1 and not q[:, 0].any() and not q[:, 2].any()
    q, s = quantize_int8(np.zeros((0, 3), np.float32))
    assert q.shape == (0, 3) and np.array_equal(s, np.ones(3, np.float32))


def test_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        quantize_int8(np.ones(5))
    with pytest.raises(TypeError, match="float"):
        quantize_int8(np.ones((2, 2), np.int32))
    with pytest.raises(ValueError, match="finite"):
        quantize_int8(np.array([[1.0, np.nan]]))
