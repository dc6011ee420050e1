"""Merge layers, as Keras's: ``Concatenate``, ``Add``, ``Subtract``, ``Multiply``,
``Average``, ``Maximum``, ``Minimum``, and their functional forms (``concatenate``...).

They take a list of tensors (symbolic in a functional model, or arrays when
called directly).  The element-wise ones broadcast as NumPy does (equal ranks;
each axis equal, 1, or unknown); their gradient to a broadcast input is summed
over the broadcast axes.  ``Maximum``/``Minimum`` send the gradient to the first
input that holds the extreme value (TensorFlow's rule for ties).

Masks, as Keras: element-wise merges keep the steps every masked input keeps
(the AND of the masks given); ``Concatenate`` on the feature axis does the same,
and on the time axis joins the masks (an input without one counts as unmasked).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from cylstm.engine import graph
from cylstm.layers.base import Layer, _as_float_input

__all__ = ["Add", "Average", "Concatenate", "Maximum", "Minimum", "Multiply", "Subtract",
           "add", "average", "concatenate", "maximum", "minimum", "multiply", "subtract"]


def _sstr(shape):
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + \
        ("," if len(shape) == 1 else "") + ")"


def _unbroadcast(d, shape):
    """Sum ``d`` down to ``shape`` (the gradient of a broadcast input)."""
    if d.shape == tuple(shape):
        return d
    axes = tuple(i for i, (a, b) in enumerate(zip(shape, d.shape)) if a == 1 and b != 1)
    return d.sum(axis=axes, keepdims=True) if axes else d


def _and_masks(masks):
    got = [m for m in masks if m is not None]
    if not got:
        return None
    out = got[0]
    for m in got[1:]:
        if m.shape != out.shape:
            return None
        out = out & m
    return out


class _Merge(Layer):
    """Base of the merge layers: a list of inputs in, one tensor out."""

    _is_merge = True
    _min_inputs = 1
    _max_inputs = None

    def _check_count(self, n):
        if n < self._min_inputs or (self._max_inputs is not None and n > self._max_inputs):
            want = (f"exactly {self._min_inputs}" if self._max_inputs == self._min_inputs
                    else f"at least {self._min_inputs}")
            raise ValueError(f"{type(self).__name__} {self.name!r} takes {want} inputs; got {n}")

    def _check_shapes(self, shapes):
        """Element-wise merges: equal ranks, and each axis equal, 1 or unknown."""
        shapes = [tuple(s) for s in shapes]
        self._check_count(len(shapes))
        ranks = {len(s) for s in shapes}
        bad = len(ranks) != 1
        if not bad:
            for dims in zip(*[s[1:] for s in shapes]):
                known = {d for d in dims if d is not None and d != 1}
                if len(known) > 1:
                    bad = True
        if bad:
            raise ValueError(f"{type(self).__name__} {self.name!r} needs inputs of the same "
                             "shape (or shapes that broadcast: each axis equal, 1 or None); got "
                             f"{', '.join(_sstr(s) for s in shapes)}")

    def build(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or not input_shape or \
                not all(isinstance(s, (list, tuple)) for s in input_shape):
            raise ValueError(f"{type(self).__name__} {self.name!r} merges a list of inputs; got "
                             f"input shape {input_shape!r}")
        shapes = [tuple(s) for s in input_shape]
        self._check_shapes(shapes)
        self._build_shape = shapes
        self.built = True

    def compute_output_shape(self, input_shape):
        shapes = [tuple(s) for s in input_shape]
        out = []
        for dims in zip(*shapes):
            known = [d for d in dims if d is not None]
            if any(d is None for d in dims) and all(d in (None, 1) for d in dims):
                out.append(None)
            else:
                out.append(max(known) if known else None)
        return tuple(out)

    @property
    def output_shape(self):
        if self._build_shape is None:
            raise AttributeError(f"layer {self.name!r} is not built yet; it has no output_shape")
        return self.compute_output_shape(self._build_shape)

    def __call__(self, inputs, training=False, mask=None):
        """Merge a list of arrays (or of symbolic tensors, in a functional model)."""
        if graph.is_symbolic(inputs):
            return graph.symbolic_call(self, inputs, training=training, mask=mask)
        if not isinstance(inputs, (list, tuple)):
            raise TypeError(f"{type(self).__name__} {self.name!r} merges a list of arrays; got "
                             f"{type(inputs).__name__}")
        xs = [_as_float_input(f"inputs[{k}]", x, self.dtype) for k, x in enumerate(inputs)]
        if not self.built:
            self.build([(None,) + x.shape[1:] for x in xs])
        else:
            self._check_shapes([(None,) + x.shape[1:] for x in xs])
        masks = list(mask) if isinstance(mask, (list, tuple)) else [None] * len(xs)
        y, _ = self._forward_multi(xs, masks, bool(training))
        self._cache = None
        return y

    def _forward(self, x, mask, training):
        raise ValueError(f"{type(self).__name__} {self.name!r} merges several inputs; it cannot "
                         "be a layer of a Sequential model")

    def _forward_multi(self, xs, masks, training):
        self._check_runtime(xs)
        y = self._merge(xs)
        if training:
            self._cache = self._keep(xs, y)
        return y, self._merge_masks(masks, xs)

    def _check_runtime(self, xs):
        self._check_count(len(xs))
        try:
            np.broadcast_shapes(*[x.shape for x in xs])
        except ValueError:
            raise ValueError(f"{type(self).__name__} {self.name!r} cannot merge arrays of shapes "
                             f"{', '.join(str(x.shape) for x in xs)}") from None

    def _keep(self, xs, y):
        return [x.shape for x in xs]

    def _merge_masks(self, masks, xs):
        return _and_masks(masks)

    def _backward_multi(self, dy, need_input_grad=True):
        cache = self._cache
        self._cache = None
        if not need_input_grad:
            return [None] * self._n_of(cache)
        out = list(self._grads_of(dy, cache))
        # one array per input: a layer's backward may work in place on its dy (Dense does)
        seen = set()
        for i, d in enumerate(out):
            if id(d) in seen:
                out[i] = d.copy()
            seen.add(id(d))
        return out

    def _n_of(self, cache):
        return len(cache)


class Add(_Merge):
    """Element-wise sum of the inputs, as ``keras.layers.Add``."""

    def _merge(self, xs):
        y = xs[0] + xs[1] if len(xs) > 1 else np.array(xs[0])
        for x in xs[2:]:
            y += x
        return y

    def _grads_of(self, dy, shapes):
        return [_unbroadcast(dy, s) for s in shapes]


class Subtract(_Merge):
    """``inputs[0] - inputs[1]``, as ``keras.layers.Subtract``."""

    _min_inputs = _max_inputs = 2

    def _merge(self, xs):
        return xs[0] - xs[1]

    def _grads_of(self, dy, shapes):
        return [_unbroadcast(dy, shapes[0]), _unbroadcast(-dy, shapes[1])]


class Multiply(_Merge):
    """Element-wise product of the inputs, as ``keras.layers.Multiply``."""

    def _merge(self, xs):
        y = np.array(xs[0])
        for x in xs[1:]:
            y = y * x
        return y

    def _keep(self, xs, y):
        return list(xs)

    def _grads_of(self, dy, xs):
        out = []
        for i, x in enumerate(xs):
            g = dy
            for j, other in enumerate(xs):
                if j != i:
                    g = g * other
            out.append(_unbroadcast(g, x.shape))
        return out


class Average(_Merge):
    """Element-wise mean of the inputs, as ``keras.layers.Average``."""

    def _merge(self, xs):
        y = xs[0] + xs[1] if len(xs) > 1 else np.array(xs[0])
        for x in xs[2:]:
            y += x
        y *= y.dtype.type(1.0 / len(xs))
        return y

    def _grads_of(self, dy, shapes):
        g = dy * dy.dtype.type(1.0 / len(shapes))
        return [_unbroadcast(g, s) for s in shapes]


class Maximum(_Merge):
    """Element-wise maximum of the inputs, as ``keras.layers.Maximum``."""

    _pick = staticmethod(np.argmax)

    def _merge(self, xs):
        shape = np.broadcast_shapes(*[x.shape for x in xs])
        stacked = np.stack([np.broadcast_to(x, shape) for x in xs])
        self._which = self._pick(stacked, axis=0)  # first input holding the extreme
        return np.take_along_axis(stacked, self._which[None], axis=0)[0]

    def _keep(self, xs, y):
        return ([x.shape for x in xs], self._which)

    def _n_of(self, cache):
        return len(cache[0])

    def _grads_of(self, dy, cache):
        shapes, which = cache
        return [_unbroadcast(np.where(which == i, dy, 0).astype(dy.dtype, copy=False), s)
                for i, s in enumerate(shapes)]


class Minimum(Maximum):
    """Element-wise minimum of the inputs, as ``keras.layers.Minimum``."""

    _pick = staticmethod(np.argmin)


class Concatenate(_Merge):
    """Joins the inputs along ``axis`` (default the last), as ``keras.layers.Concatenate``.

    Parameters
    ----------
    axis : int
        Counted on the full shape, batch axis included (``-1``: features,
        ``1``: time for (batch, time, features) inputs); not the batch axis.
    """

    def __init__(self, axis: int = -1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
            raise TypeError(f"axis must be an int; got {axis!r}")
        self.axis = int(axis)

    def _axis(self, rank):
        a = self.axis + rank if self.axis < 0 else self.axis
        if not 1 <= a < rank:
            raise ValueError(f"Concatenate {self.name!r}: axis={self.axis} is out of range for "
                             f"inputs of rank {rank} (the batch axis cannot be joined)")
        return a

    def _check_shapes(self, shapes):
        shapes = [tuple(s) for s in shapes]
        self._check_count(len(shapes))
        ranks = {len(s) for s in shapes}
        bad = len(ranks) != 1
        if not bad:
            a = self._axis(len(shapes[0]))
            for i, dims in enumerate(zip(*shapes)):
                known = {d for d in dims if d is not None}
                if i not in (0, a) and len(known) > 1:
                    bad = True
        if bad:
            raise ValueError(f"Concatenate {self.name!r} needs inputs with matching shapes "
                             f"except on the concatenation axis (axis={self.axis}); got "
                             f"{', '.join(_sstr(s) for s in shapes)}")

    def compute_output_shape(self, input_shape):
        shapes = [tuple(s) for s in input_shape]
        rank = len(shapes[0])
        a = self._axis(rank)
        out = []
        for i, dims in enumerate(zip(*shapes)):
            if i == a:
                out.append(None if any(d is None for d in dims) else int(sum(dims)))
            else:
                known = [d for d in dims if d is not None]
                out.append(known[0] if known else None)
        return tuple(out)

    def _check_runtime(self, xs):
        self._check_count(len(xs))
        shapes = [x.shape for x in xs]
        ranks = {len(s) for s in shapes}
        if len(ranks) == 1:
            a = self._axis(len(shapes[0]))
            if all(s[:a] + s[a + 1:] == shapes[0][:a] + shapes[0][a + 1:] for s in shapes):
                return
        raise ValueError(f"Concatenate {self.name!r} needs inputs with matching shapes except on "
                         f"axis {self.axis}; got {', '.join(str(s) for s in shapes)}")

    def _merge(self, xs):
        return np.concatenate(xs, axis=self._axis(xs[0].ndim))

    def _keep(self, xs, y):
        return [x.shape for x in xs]

    def _merge_masks(self, masks, xs):
        if all(m is None for m in masks):
            return None
        a = self._axis(xs[0].ndim)
        full = [np.ones(x.shape[:2], bool) if m is None else m for m, x in zip(masks, xs)]
        if a == 1 and xs[0].ndim == 3:
            return np.concatenate(full, axis=1)
        if a == xs[0].ndim - 1:
            return _and_masks(full)
        return None

    def _grads_of(self, dy, shapes):
        a = self._axis(dy.ndim)
        cuts = np.cumsum([s[a] for s in shapes])[:-1]
        return np.split(dy, cuts, axis=a)

    def get_config(self):
        cfg = super().get_config()
        cfg["axis"] = self.axis
        return cfg


def _functional(cls, inputs, **kwargs):
    return cls(**kwargs)(inputs)


def add(inputs, **kwargs):
    """Functional form of :class:`Add`: ``add([a, b])``."""
    return _functional(Add, inputs, **kwargs)


def subtract(inputs, **kwargs):
    """Functional form of :class:`Subtract`: ``subtract([a, b])``."""
    return _functional(Subtract, inputs, **kwargs)


def multiply(inputs, **kwargs):
    """Functional form of :class:`Multiply`."""
    return _functional(Multiply, inputs, **kwargs)


def average(inputs, **kwargs):
    """Functional form of :class:`Average`."""
    return _functional(Average, inputs, **kwargs)


def maximum(inputs, **kwargs):
    """Functional form of :class:`Maximum`."""
    return _functional(Maximum, inputs, **kwargs)


def minimum(inputs, **kwargs):
    """Functional form of :class:`Minimum`."""
    return _functional(Minimum, inputs, **kwargs)


def concatenate(inputs, axis=-1, **kwargs):
    """Functional form of :class:`Concatenate`: ``concatenate([a, b], axis=-1)``."""
    return Concatenate(axis=axis, **kwargs)(inputs)
