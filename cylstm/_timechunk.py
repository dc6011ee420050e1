"""Bounded-memory inference: a model run a chunk of time steps at a time.

An ordinary forward runs each layer over the whole sequence, so a stack holds
every layer's (B, T, units) output in turn.  :func:`run_forward` instead runs
*all* the layers over steps [t0, t0 + k), carrying each LSTM's (h, c) into the
next chunk, so no intermediate sequence is longer than k steps.  The result
equals the unchunked forward to float rounding (the recurrences are the same;
only the BLAS calls are shorter).

A model can run so while its layers, read from the input up, are per-step
layers (Dense, TimeDistributed, Activation, Dropout, Masking, Embedding) and
LSTMs that run forward in time and return sequences, up to and including at
most one LSTM with ``return_sequences=False``; the layers after that one run
once on its final output.  A Bidirectional layer or an LSTM with
``go_backwards`` needs the whole sequence before its first output: such models
are refused with a ValueError when chunking is asked for, and run unchunked
when it is only the automatic choice.

Masks follow the unchunked semantics (Keras's): a masked step keeps the state
and repeats the output of the sample's last valid step, zeros before the first
one, also when that step lies in an earlier chunk.
"""
import numbers

import numpy as np

from cylstm import _memory
from cylstm import layers as _layers

__all__ = ["check_time_chunk", "chunk_plan", "run_forward"]

_PER_STEP = (_layers.Dense, _layers.TimeDistributed, _layers.Activation, _layers.Dropout,
             _layers.Masking, _layers.Embedding)


def check_time_chunk(value):
    """Validate ``time_chunk``: None (automatic) or a positive int."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        # (a ValueError, as for checkpoint_every: one error for every bad value)
        raise ValueError(  # noqa: TRY004
            f"time_chunk must be None or a positive int (time steps per chunk); got {value!r}")
    if int(value) < 1:
        raise ValueError(f"time_chunk must be >= 1 (time steps per chunk); got {int(value)}")
    return int(value)


def _split(layers):
    """(chunked layers, layers run once after them) or a sentence saying why the
    model cannot run in chunks."""
    for i, layer in enumerate(layers):
        if isinstance(layer, _layers.LSTM):
            if layer.go_backwards:
                return (f"LSTM {layer.name!r} runs backwards in time (go_backwards=True): its "
                        "first output needs the last input")
            if not layer.return_sequences:
                return layers[:i + 1], layers[i + 1:]
        elif isinstance(layer, _layers.Bidirectional):
            return (f"Bidirectional {layer.name!r} runs backwards in time: its outputs need the "
                    "whole sequence")
        elif not isinstance(layer, _PER_STEP):
            return (f"{type(layer).__name__} {layer.name!r} is not a per-step layer (time "
                    "chunks run Dense, TimeDistributed, Activation, Dropout, Masking, "
                    "Embedding and forward LSTMs)")
    return list(layers), []


def chunk_plan(model, x_shape, time_chunk=None, budget=None):
    """How :func:`run_forward` runs inputs of ``x_shape``: (k or None, why).

    ``time_chunk`` given: k, or ValueError when the model cannot run in chunks.
    None: chunks of ``budget // bytes per step`` steps when the intermediate
    sequences of the whole input would exceed the budget (default
    :func:`cylstm.get_memory_budget`) and the model can run so; else None.
    """
    k = check_time_chunk(time_chunk)
    layers = model.layers
    if len(x_shape) < 2:
        if k is not None:
            raise ValueError(f"time_chunk needs inputs with a time axis (batch, time, ...); got "
                             f"shape {tuple(x_shape)}")
        return None, "inputs without a time axis"
    split = _split(layers)
    if isinstance(split, str):
        if k is not None:
            raise ValueError(f"predict(time_chunk={k}) cannot run this model a chunk at a time: "
                             f"{split}")
        return None, f"not chunkable: {split}"
    if k is not None:
        return k, f"time_chunk={k}"
    B, T = int(x_shape[0]), int(x_shape[1])
    item = np.dtype(model.dtype).itemsize
    # the most one layer holds at once, per sample and step: its input, its output and
    # an LSTM's (B, T, 4H) gate buffer
    shape = (B, 1) + tuple(x_shape[2:])
    width_in = int(np.prod(shape[2:], dtype=np.int64)) if len(shape) > 2 else 1
    per_step = 0
    for layer in split[0]:
        out = layer.compute_output_shape(shape)
        if isinstance(out, list):
            out = out[0]
        if len(out) < 3:  # the collapsing LSTM: (B, H)
            width_out = 0
        else:
            width_out = int(np.prod(out[2:], dtype=np.int64))
        gates = 4 * layer.units if isinstance(layer, _layers.LSTM) else 0
        per_step = max(per_step, B * (width_in + width_out + gates) * item)
        shape, width_in = (B, 1) + tuple(out[2:]), width_out
    budget = _memory.get_memory_budget() if budget is None else int(budget)
    if per_step * T <= budget:
        return None, f"intermediate sequences ({per_step * T} B) fit in the budget ({budget} B)"
    k = max(1, budget // max(per_step, 1))
    if k >= T:
        return None, "one chunk"
    return k, (f"intermediate sequences ({per_step * T} B) exceed the memory budget "
               f"({budget} B): {k} steps per chunk")


class _Carry:
    """What an LSTM carries from one chunk to the next."""

    __slots__ = ("last", "seen", "state")

    def __init__(self):
        self.state = None   # (h, c) after the previous chunk (None: the layer's own start)
        self.seen = None    # (B,) bool: a valid step happened in an earlier chunk (masks)
        self.last = None    # (B, H) the output after that step (= h: masked steps keep it)


def _lstm_chunk(layer, x, mask, carry):
    y, out_mask = layer._forward(x, mask, False, initial_state=carry.state)
    layer._cache = None
    h, c = layer._last_state
    if mask is not None:
        m = np.asarray(mask, bool)
        if (layer.return_sequences and not layer.zero_output_for_mask
                and carry.seen is not None and carry.seen.any()):
            # steps before this chunk's first valid one repeat an earlier chunk's output
            before = (np.cumsum(m, axis=1) == 0) & carry.seen[:, None]
            if before.any():
                y = np.where(before[:, :, None], carry.last[:, None, :], y)
        seen = m.any(axis=1)
        carry.seen = seen if carry.seen is None else carry.seen | seen
    carry.state = (h.copy(), c.copy())
    carry.last = carry.state[0]
    return y, out_mask


def run_forward(model, x, time_chunk=None):
    """The inference output of ``model`` (its ``layers`` in order) for ``x``, run a
    chunk of time steps at a time when ``time_chunk`` or the memory budget says so
    (see :func:`chunk_plan`); otherwise the ordinary forward."""
    k, _ = chunk_plan(model, np.shape(x), time_chunk)
    if k is None or k >= x.shape[1]:
        return model._run_forward(x, False)[0]
    seq, rest = _split(model.layers)
    carries = {id(layer): _Carry() for layer in seq if isinstance(layer, _layers.LSTM)}
    B, T = x.shape[:2]
    out = None
    y = None
    for t0 in range(0, T, k):
        y, mask = x[:, t0:t0 + k], None
        for layer in seq:
            if isinstance(layer, _layers.LSTM):
                y, mask = _lstm_chunk(layer, y, mask, carries[id(layer)])
            else:
                y, mask = layer._forward(y, mask, False)
                layer._cache = None
        if not rest and y.ndim >= 3 and seq and not (
                isinstance(seq[-1], _layers.LSTM) and not seq[-1].return_sequences):
            if out is None:
                out = np.empty((B, T) + y.shape[2:], y.dtype)
            out[:, t0:t0 + y.shape[1]] = y
    last = seq[-1] if seq else None
    if isinstance(last, _layers.LSTM) and not last.return_sequences:
        carry = carries[id(last)]
        y = carry.state[0].copy()
        if carry.seen is not None:  # a sequence masked throughout outputs zeros
            y[~carry.seen] = 0
        mask = None
        for layer in rest:
            y, mask = layer._forward(y, mask, False)
            layer._cache = None
        return y
    return out
