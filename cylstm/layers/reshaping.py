"""``Flatten`` and ``Reshape``, as Keras's.  Both drop the mask (as Keras's do)."""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from cylstm.layers.base import Layer

__all__ = ["Flatten", "Reshape"]


class Flatten(Layer):
    """Flattens every axis but the batch axis: (batch, a, b, ...) -> (batch, a*b*...).

    ``data_format`` is accepted for compatibility (it only matters for images).
    """

    def __init__(self, data_format: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_format = data_format

    def compute_output_shape(self, input_shape):
        rest = tuple(input_shape[1:])
        n = None if any(d is None for d in rest) else int(math.prod(rest))
        return (input_shape[0], n)

    def _forward(self, x, mask, training):
        if x.ndim < 2:
            raise ValueError(f"Flatten {self.name!r} expects inputs with a batch axis and at "
                             f"least one more; got shape {x.shape}")
        if training:
            self._cache = x.shape
        return x.reshape(x.shape[0], -1), None

    def _backward(self, dy, need_input_grad=True):
        shape = self._cache
        self._cache = None
        return dy.reshape(shape) if need_input_grad else None

    def get_config(self):
        cfg = super().get_config()
        cfg["data_format"] = self.data_format
        return cfg


class Reshape(Layer):
    """Reshapes each sample to ``target_shape`` (one entry may be -1), as Keras.

    Parameters
    ----------
    target_shape : tuple of int
        Without the batch axis.
    """

    def __init__(self, target_shape: Sequence[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(target_shape, numbers.Integral):
            target_shape = (target_shape,)
        try:
            ts = tuple(int(d) for d in target_shape)
        except (TypeError, ValueError) as e:
            raise TypeError(f"target_shape must be a tuple of ints; got {target_shape!r}") from e
        if sum(1 for d in ts if d == -1) > 1 or any(d < 1 and d != -1 for d in ts):
            raise ValueError(f"target_shape must hold positive ints and at most one -1; got {ts}")
        self.target_shape = ts

    def _resolve(self, rest, where):
        ts = self.target_shape
        if any(d is None for d in rest):
            return tuple(None if d == -1 else d for d in ts)
        n = int(math.prod(rest))
        known = int(math.prod(d for d in ts if d != -1))
        if -1 in ts:
            if known == 0 or n % known:
                raise ValueError(f"Reshape {self.name!r} cannot reshape {where} with {n} "
                                 f"values per sample into {ts}")
            return tuple(n // known if d == -1 else d for d in ts)
        if known != n:
            raise ValueError(f"Reshape {self.name!r}: target_shape {ts} holds {known} values per "
                             f"sample but {where} holds {n} values")
        return ts

    def build(self, input_shape):
        self._resolve(tuple(input_shape[1:]), f"inputs of shape {tuple(input_shape)}")
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return (input_shape[0],) + self._resolve(tuple(input_shape[1:]),
                                                 f"inputs of shape {tuple(input_shape)}")

    def _forward(self, x, mask, training):
        shape = self._resolve(x.shape[1:], f"an array of shape {x.shape}")
        if training:
            self._cache = x.shape
        return x.reshape((x.shape[0],) + shape), None

    def _backward(self, dy, need_input_grad=True):
        shape = self._cache
        self._cache = None
        return dy.reshape(shape) if need_input_grad else None

    def get_config(self):
        cfg = super().get_config()
        cfg["target_shape"] = list(self.target_shape)
        return cfg
