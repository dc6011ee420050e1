"""How :class:`~cylstm.layers.LSTM` runs Keras's masks on kernels that know only
per-sample sequence lengths (PyTorch's packed sequences).

Keras's semantics: ``go_backwards`` reverses the inputs and the mask first; then a
masked step leaves h and c unchanged and outputs the previous output (zeros before
the first valid step; zeros at every masked step with ``zero_output_for_mask``).

:func:`plan` looks at the mask once and returns a :class:`MaskPlan`: how the
kernel's input is taken from ``x`` (reversed in time, and the valid steps gathered
to the front, or neither), the lengths and direction of one kernel call, and how
the kernel's outputs map onto Keras's.  Each field left None (or False) is a step
skipped.  :func:`forward` runs those steps; :func:`backward` runs their adjoints in
reverse order around the kernel's backward.  A sequence of length 0 (all masked) is
the kernel's own case: zero outputs, the initial state as the final one, and in the
backward the final state's gradient passed straight to the initial state.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cylstm import functional as _F


@dataclass(frozen=True, eq=False)
class MaskPlan:
    """The steps between a (batch, time) mask and one kernel call, in forward order.

    Input: ``xk = x[:, ::-1]`` if ``reverse_input``; then, if ``order`` is not None,
    ``xk[b, s] = xk[b, order[b, s]]`` (each sequence's valid steps first).
    Kernel: ``lstm_forward(xk, lengths=lengths, go_backwards=reverse)``.
    Outputs ``k`` (return_sequences) to Keras's ``y``, each step where its field is set:
    ``cnt``: ``y[b, t] = k[b, cnt[b, t] - 1]``, zeros where ``cnt`` is 0; ``keep``:
    ``y *= keep`` (``zero_output_for_mask``); ``repeat``: ``y[b, t] = h[b]`` where set;
    ``reverse_output``: ``y = y[:, ::-1]``.  Without return_sequences, ``y = h`` but
    zeros on the ``silent`` rows.
    """

    lengths: np.ndarray
    """(B,) int64: valid steps per sequence, 0 included."""
    reverse_input: bool
    """The kernel reads ``x`` reversed in time (Keras's go_backwards)."""
    order: np.ndarray | None
    """(B, T): the steps of the (reversed) input that the kernel reads, valid ones
    first in their order; None where the mask is already right padding."""
    reverse: bool
    """The kernel's ``go_backwards``: go_backwards over right padding needs neither a
    reversed copy nor a gather, the kernel runs each sequence from its last valid step
    back to step 0, and its outputs (time order) reversed are Keras's."""
    cnt: np.ndarray | None
    """(B, T): the output at step t is the output after cnt[t] valid steps (0: zeros);
    None where the kernel's outputs are at their steps already."""
    keep: np.ndarray | None
    """(B, T) bool: the steps that keep their output (``zero_output_for_mask`` after a
    gather; without one the kernel's outputs past each length are zeros already)."""
    repeat: np.ndarray | None
    """(B, T) bool: padded steps that repeat the final h (right padding without
    ``zero_output_for_mask``); all-masked rows have none, their outputs stay zero."""
    silent: np.ndarray | None
    """(B,) bool, without return_sequences: the all-masked rows, whose output is zeros
    while their state is the initial one; None where every row has a valid step."""
    reverse_output: bool
    """Reverse the mapped outputs in time: Bidirectional's ``flip``, composed with the
    time order of a ``reverse`` kernel."""


def plan(mask, go_backwards, return_sequences, zero_output_for_mask, flip=False):
    """The :class:`MaskPlan` of a (batch, time) ``mask`` for an LSTM with these
    options; ``flip`` asks for the Keras-order output reversed in time."""
    mask = np.asarray(mask).astype(bool, copy=False)
    T = mask.shape[1]
    L = mask.sum(axis=1, dtype=np.int64)
    right = np.arange(T) < L[:, None]
    reverse = bool(go_backwards) and bool(np.array_equal(mask, right))
    order = cnt = keep = repeat = silent = None
    if not reverse:
        seen = mask[:, ::-1] if go_backwards else mask  # the steps in Keras's order
        if not np.array_equal(seen, right):
            order = np.argsort(~seen, axis=1, kind="stable")
        if return_sequences:
            if order is not None:
                cnt = np.cumsum(seen, axis=1)
                if zero_output_for_mask:
                    keep = seen
            elif not zero_output_for_mask:
                rep = ~seen & (L > 0)[:, None]
                repeat = rep if rep.any() else None
    if not return_sequences and not L.all():
        silent = L == 0
    return MaskPlan(lengths=L, reverse_input=bool(go_backwards) and not reverse, order=order,
                    reverse=reverse, cnt=cnt, keep=keep, repeat=repeat, silent=silent,
                    reverse_output=bool(return_sequences) and reverse != bool(flip))


def forward(layer, x, p, state, training, kw, F, extra):
    """The forward of ``layer`` (an LSTM) under the plan ``p``: returns
    ``(y, h, c, r)``, ``r`` the kernel's result."""
    if p.reverse_input:
        x = x[:, ::-1]
    if p.order is not None:
        x = np.take_along_axis(x, p.order[:, :, None], axis=1)
    r = _kernel_forward(F, p, x, layer, state, training, kw, extra)
    y = r.output
    if p.cnt is not None:
        B, _T, H = y.shape
        y = np.concatenate([np.zeros((B, 1, H), y.dtype), y], axis=1)
        y = np.take_along_axis(y, p.cnt[:, :, None], axis=1)
    if p.keep is not None:
        y *= p.keep[:, :, None]
    if p.repeat is not None:
        y = np.where(p.repeat[:, :, None], r.h[:, None, :], y)
    if p.silent is not None:
        y = np.where(p.silent[:, None], 0, y)
    if p.reverse_output:
        y = y[:, ::-1]
    return y, r.h, r.c, r


def backward(p, fcache, dy, grad_h, grad_c, F, need_dx, out_kw):
    """The backward of :func:`forward`: the adjoints of the plan's steps in reverse
    order around the kernel's backward.  Returns ``(g, dx)``: the kernel's gradients
    (``g.dh0``, ``g.dc0`` those of the initial state) and dL/dx (or None)."""
    if p.reverse_output:
        dy = dy[:, ::-1]
    if p.silent is not None:
        dy = np.where(p.silent[:, None], 0, dy)
    if p.repeat is not None:
        # the repeated final h takes those steps' gradients; the kernel ignores
        # grad_output past each length, so dy may keep them
        carried = np.einsum("bth,bt->bh", dy, p.repeat.astype(dy.dtype))
        grad_h = carried if grad_h is None else grad_h + carried
    if p.keep is not None:
        dy = dy * p.keep[:, :, None]
    if p.cnt is not None:
        B, T, H = dy.shape
        dk = np.zeros((B, T + 1, H), dy.dtype)
        np.add.at(dk, (np.arange(B)[:, None], p.cnt), dy)
        dy = dk[:, 1:]
    g = _kernel_backward(F, p, fcache, dy, grad_h, grad_c, need_dx, out_kw)
    dx = g.dx
    if dx is not None and p.order is not None:
        dxo = np.empty_like(dx)
        np.put_along_axis(dxo, p.order[:, :, None], dx, axis=1)
        dx = dxo
    if dx is not None and p.reverse_input:
        dx = dx[:, ::-1]
    return g, dx


def _cuda_empty_rows(F, p):
    """The all-masked rows where ``F`` is the CUDA backend, which refuses length 0
    until checked on a GPU; None on the CPU or where every row has a valid step."""
    if F is _F or p.lengths.all():
        return None
    return p.lengths == 0


def _kernel_forward(F, p, x, layer, state, training, kw, extra):
    empty = _cuda_empty_rows(F, p)
    r = F.lstm_forward(x, layer.kernel, layer.recurrent_kernel, layer.bias,
                       initial_state=state,
                       lengths=p.lengths if empty is None else np.maximum(p.lengths, 1),
                       go_backwards=p.reverse, return_sequences=layer.return_sequences,
                       training=training, **kw, **(extra or {}))
    if empty is not None:
        # CUDA refuses length 0 until checked on a GPU: those rows ran one step;
        # give them what length 0 gives on the CPU (the initial state, zero outputs)
        h, c, out = r.h, r.c, r.output
        h[empty] = 0 if state is None else state[0][empty]
        c[empty] = 0 if state is None else state[1][empty]
        out[empty] = 0 if out.ndim == 3 else h[empty]
    return r


def _kernel_backward(F, p, fcache, dy, grad_h, grad_c, need_dx, out_kw):
    empty = _cuda_empty_rows(F, p)
    if empty is not None:
        # CUDA refuses length 0 until checked on a GPU: the rows that ran one step
        # take no gradient there; their final state's passes to the initial state
        gh, gc = grad_h, grad_c
        dy = np.array(dy)
        dy[empty] = 0
        grad_h = None if gh is None else np.where(empty[:, None], 0, gh)
        grad_c = None if gc is None else np.where(empty[:, None], 0, gc)
    g = F.lstm_backward(fcache, grad_output=dy, grad_h=grad_h, grad_c=grad_c,
                        need_input_grad=need_dx, **out_kw)
    if empty is not None:
        dh0, dc0 = np.array(g.dh0), np.array(g.dc0)
        dh0[empty] = 0 if gh is None else gh[empty]
        dc0[empty] = 0 if gc is None else gc[empty]
        g = g._replace(dh0=dh0, dc0=dc0)
    return g
