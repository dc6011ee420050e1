"""How :class:`~cylstm.layers.LSTM` runs Keras's masks on kernels that know only
per-sample sequence lengths (PyTorch's packed sequences).

Keras's semantics: a masked step leaves h and c unchanged and outputs the previous
output (zeros before the first valid step; zeros at every masked step with
``zero_output_for_mask``).  The forward takes one of three routes:

``"padded"``    right padding (valid steps first): the lengths give the semantics
                directly; padded steps then repeat the last output.
``"reversed"``  right padding with ``go_backwards``: the kernels' reverse mode with
                lengths runs each sequence from its last valid step back to step 0.
``"gather"``    any other pattern (left padding, holes): each sequence's valid steps
                are gathered to the front, run as right padding, and the outputs
                scattered back to the steps they belong to.

An all-masked sequence keeps its initial state and outputs zeros (the kernels run it
for one step, whose results are overwritten).  :func:`forward` returns ``info``, the
route and its index arrays; :func:`backward` applies the adjoint of that route around
the kernel's backward.
"""
import numpy as np


def forward(layer, x, mask, state, training, kw, flip, F, extra):
    """The forward of ``layer`` (an LSTM) under a (batch, time) ``mask``: returns
    ``(y, h, c, r, info)``, ``r`` the kernel's result and ``info`` what
    :func:`backward` needs to undo the forward's steps around the kernel."""
    B, T, _ = x.shape
    H = layer.units
    mask = np.asarray(mask)
    if mask.shape != (B, T):
        raise ValueError(f"LSTM {layer.name!r}: mask must have shape (batch, time) = "
                         f"{(B, T)}; got {mask.shape}")
    mask = mask.astype(bool, copy=False)
    if layer.go_backwards:
        L = mask.sum(axis=1)
        if np.array_equal(mask, np.arange(T) < L[:, None]):
            return _reversed_right_padded(layer, x, L, state, training, kw, flip, F,
                                          extra)
        # Keras: reverse inputs and mask, then run forward over them
        x, mask = x[:, ::-1], mask[:, ::-1]
    L = mask.sum(axis=1)
    prefix = bool(np.array_equal(mask, np.arange(T) < L[:, None]))
    if prefix:
        return _right_padded(layer, x, mask, L, state, training, kw, flip, F, extra)
    order = None
    if not prefix:
        # valid steps first, in their order: the kernels then see right padding
        order = np.argsort(~mask, axis=1, kind="stable")
        x = np.take_along_axis(x, order[:, :, None], axis=1)
    empty = L == 0
    any_empty = bool(empty.any())
    r = F.lstm_forward(x, layer.kernel, layer.recurrent_kernel, layer.bias,
                       initial_state=state, lengths=np.maximum(L, 1),
                       return_sequences=layer.return_sequences, training=training,
                       **kw, **(extra or {}))
    h, c = r.h, r.c
    if any_empty:
        # an all-masked sequence keeps its initial state
        if state is None:
            h[empty] = 0
            c[empty] = 0
        else:
            h[empty] = state[0][empty]
            c[empty] = state[1][empty]
    cnt = None
    if layer.return_sequences:
        # output at step t = output after the cnt[t]-th valid step (0: zeros)
        cnt = np.cumsum(mask, axis=1)
        yaug = np.concatenate([np.zeros((B, 1, H), r.output.dtype), r.output], axis=1)
        y = np.take_along_axis(yaug, cnt[:, :, None], axis=1)
        if layer.zero_output_for_mask:
            y *= mask[:, :, None]
        if flip:
            y = y[:, ::-1]
    else:
        y = h.copy()
        if any_empty:
            y[empty] = 0
    info = ("gather", mask, order, cnt, empty if any_empty else None)
    return y, h, c, r, info

def _right_padded(layer, x, mask, L, state, training, kw, flip, F, extra):
    """Forward run over right-padded sequences: the kernels' lengths give Keras's
    masked semantics; padded steps then repeat the last output (or stay zero with
    ``zero_output_for_mask``)."""
    empty = L == 0
    any_empty = bool(empty.any())
    r = F.lstm_forward(x, layer.kernel, layer.recurrent_kernel, layer.bias,
                       initial_state=state, lengths=np.maximum(L, 1),
                       return_sequences=layer.return_sequences, training=training,
                       **kw, **(extra or {}))
    h, c = r.h, r.c
    if any_empty:
        h[empty] = 0 if state is None else state[0][empty]
        c[empty] = 0 if state is None else state[1][empty]
    pad = None
    if layer.return_sequences:
        y = r.output  # zero past each length
        if any_empty:
            y[empty] = 0
        if not layer.zero_output_for_mask and not mask.all():
            pad = ~mask
            last = h if not any_empty else np.where(empty[:, None], 0, h)
            y = np.where(pad[:, :, None], last[:, None, :], y)
        if flip:
            y = y[:, ::-1]
    else:
        y = h.copy()
        if any_empty:
            y[empty] = 0
    return y, h, c, r, ("padded", pad, empty if any_empty else None)

def _reversed_right_padded(layer, x, L, state, training, kw, flip, F, extra):
    """go_backwards over right-padded sequences: the kernels' reverse mode with
    lengths runs each sequence from its last valid step back to step 0, which is
    Keras's reversed masked run; its outputs (time order, zero past each length)
    reversed are Keras's output sequence, in both output-mask modes."""
    empty = L == 0
    any_empty = bool(empty.any())
    r = F.lstm_forward(x, layer.kernel, layer.recurrent_kernel, layer.bias,
                       initial_state=state, lengths=np.maximum(L, 1), go_backwards=True,
                       return_sequences=layer.return_sequences, training=training,
                       **kw, **(extra or {}))
    h, c = r.h, r.c
    if any_empty:
        h[empty] = 0 if state is None else state[0][empty]
        c[empty] = 0 if state is None else state[1][empty]
    if layer.return_sequences:
        y = r.output
        if any_empty:
            y[empty] = 0
        if not flip:
            y = y[:, ::-1]
    else:
        y = h.copy()
        if any_empty:
            y[empty] = 0
    return y, h, c, r, ("reversed", empty if any_empty else None)


def backward(layer, fcache, info, dy, grad_h, grad_c, flip, F, need_dx, out_kw):
    """The backward of :func:`forward`: the adjoint of its route around the kernel's
    backward.  Returns ``(g, dx)``: the kernel's gradients and dL/dx (or None)."""
    if info[0] in ("reversed", "padded"):
        empty = info[-1]
        if info[0] == "reversed":
            if layer.return_sequences and not flip:
                dy = dy[:, ::-1]
        elif layer.return_sequences:
            if flip:
                dy = dy[:, ::-1]
            pad = info[1]
            if pad is not None:
                # padded steps repeat the final h: their gradient joins dL/dh_T
                carried = np.einsum("bth,bt->bh", dy, pad.astype(dy.dtype))
                grad_h = carried if grad_h is None else grad_h + carried
        if empty is not None:
            dy = np.array(dy)
            dy[empty] = 0
            grad_h = None if grad_h is None else np.where(empty[:, None], 0, grad_h)
            grad_c = None if grad_c is None else np.where(empty[:, None], 0, grad_c)
        g = F.lstm_backward(fcache, grad_output=dy, grad_h=grad_h, grad_c=grad_c,
                            need_input_grad=need_dx, **out_kw)
        dx = g.dx
        if dx is not None and info[0] == "padded" and layer.go_backwards:
            dx = dx[:, ::-1]  # the forward ran over the reversed inputs
    else:
        _, mask, order, cnt, empty = info
        B, T = mask.shape
        if layer.return_sequences:
            if flip:
                dy = dy[:, ::-1]
            if layer.zero_output_for_mask:
                dy = dy * mask[:, :, None]
            dyaug = np.zeros((B, T + 1, dy.shape[2]), dy.dtype)
            np.add.at(dyaug, (np.arange(B)[:, None], cnt), dy)
            dy = dyaug[:, 1:]
        elif empty is not None:
            dy = np.array(dy)
            dy[empty] = 0
        if empty is not None:
            if grad_h is not None:
                grad_h = np.array(grad_h)
                grad_h[empty] = 0
            if grad_c is not None:
                grad_c = np.array(grad_c)
                grad_c[empty] = 0
        g = F.lstm_backward(fcache, grad_output=dy, grad_h=grad_h, grad_c=grad_c,
                            need_input_grad=need_dx, **out_kw)
        dx = g.dx
        if dx is not None:
            if order is not None:
                dxo = np.empty_like(dx)
                np.put_along_axis(dxo, order[:, :, None], dx, axis=1)
                dx = dxo
            if layer.go_backwards:
                dx = dx[:, ::-1]
    return g, dx


def initial_state_grads(info, g, gh_in, gc_in):
    """(dL/dh0, dL/dc0) from the kernel's gradients ``g``; an all-masked sequence
    passes its initial state straight through, so its gradients are the incoming
    ``gh_in`` / ``gc_in`` (dL/dh_T, dL/dc_T; None for zeros)."""
    dh0, dc0 = g.dh0, g.dc0
    empty = info[-1] if info is not None else None
    if empty is not None and dh0 is not None:
        dh0, dc0 = np.array(dh0), np.array(dc0)
        dh0[empty] = 0 if gh_in is None else gh_in[empty]
        dc0[empty] = 0 if gc_in is None else gc_in[empty]
    return dh0, dc0
