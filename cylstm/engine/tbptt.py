"""Truncated back-propagation through time: ``fit(x, y, tbptt=k)``.

Each batch of ``(B, T, ...)`` inputs and per-step targets ``(B, T, ...)`` is
walked in windows of k time steps, ``[0, k), [k, 2k), ...``; the last window
may be shorter and is never dropped.  Every window is one train step (one
forward, one backward, one optimizer update), so callbacks and the progress
bar count windows as batches.  Each window's loss is the mean over that window.

Between windows every LSTM carries its (h, c): the state after window j is
the initial state of window j + 1, as a copy, so the gradient stops at the
window edge (the "repackage_hidden" of PyTorch's word_language_model).  Layers
that are not ``stateful`` start every batch from zeros; ``stateful`` layers
carry their state across batches as they always do (their own ``states``).

:class:`WindowIterator` wraps an :class:`~cylstm.engine.epoch_iterator.EpochIterator`
and yields the windows; the carrying is done by the LSTM layers themselves
through a :class:`_Carry` attached for the epoch (it applies to training
forwards only, so validation and a callback's ``predict`` are untouched).
With ``k >= T`` a batch is one window from a zero state: exactly an
ordinary fit step.

Models that can be trained so: their layers work step by step in time
(Dense, TimeDistributed, Activation, Dropout, Masking, Embedding, merging
layers) or are LSTMs running forward in time, each called once, without a
symbolic ``initial_state``; every output that has a loss is a sequence.  A
Bidirectional layer or an LSTM with ``go_backwards`` needs the whole sequence
for its first output, so it is refused.
"""
import math
import numbers

import numpy as np

from cylstm import layers as _layers
from cylstm._timechunk import _PER_STEP
from cylstm.layers import merging as _merging

__all__ = ["WindowIterator", "check_model", "check_tbptt"]


def check_tbptt(value):
    """Validate ``tbptt``: None (off) or an int >= 1 (time steps per window)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(  # noqa: TRY004  (one error type for every bad value)
            f"tbptt must be None or a positive int (time steps per window); got {value!r}")
    if int(value) < 1:
        raise ValueError(f"tbptt must be >= 1 (time steps per window); got {int(value)}")
    return int(value)


def _flatten(model):
    """Leaf layers of ``model`` with the graph steps that call each one."""
    from cylstm.engine.model import Model  # breaks a cycle: the trainer imports this module

    out = []
    plan = getattr(model, "_plan", None)
    if plan is not None and hasattr(plan, "steps"):
        for st in plan.steps:
            if isinstance(st.layer, Model):
                out.extend(_flatten(st.layer))
            else:
                out.append((st.layer, st))
        return out
    for layer in model.layers:
        if isinstance(layer, Model):
            out.extend(_flatten(layer))
        else:
            out.append((layer, None))
    return out


def check_model(model, k):
    """The LSTMs whose state ``fit(tbptt=k)`` carries between windows (the
    non-stateful ones), or ValueError saying why the model cannot be trained so."""
    head = f"fit(tbptt={k})"
    for i, (name, shape) in enumerate(zip(model.output_names, model._output_shapes())):
        fn = model._out_losses[i] if model._out_losses else True
        if fn is not None and len(shape) < 3:
            raise ValueError(
                f"{head} trains a model whose output is a sequence (batch, time, ...); output "
                f"{name!r} has shape {tuple(shape)}: with return_sequences=False the loss "
                "sees only the last step, which a window of the series does not end at. Set "
                "return_sequences=True on the last LSTM and give per-step targets")
    for _name, shape, _dt, index in model._input_specs():
        if shape is not None and len(shape) < (2 if index else 3):
            raise ValueError(f"{head} cuts every input along its time axis (axis 1); input "
                             f"{_name!r} has shape {tuple(shape)}, which has none")
    carried, calls = [], {}
    for layer, st in _flatten(model):
        calls[id(layer)] = calls.get(id(layer), 0) + 1
        if isinstance(layer, _layers.Bidirectional):
            why = "its backward direction needs the whole sequence, which a window does not hold"
            raise ValueError(  # noqa: TRY004  (a model the option cannot train)
                f"{head} cannot train Bidirectional {layer.name!r}: {why}")
        if isinstance(layer, _layers.LSTM):
            if layer.go_backwards:
                raise ValueError(f"{head} cannot train LSTM {layer.name!r} with "
                                 "go_backwards=True: its first output needs the last input")
            if st is not None and st.sts:
                raise ValueError(f"{head} cannot carry the state of LSTM {layer.name!r}: it "
                                 "takes a symbolic initial_state, which would restart every "
                                 "window")
            if calls[id(layer)] > 1:
                raise ValueError(f"{head} cannot carry the state of LSTM {layer.name!r}: it "
                                 "is called at more than one place in the model")
            if not layer.stateful:
                carried.append(layer)
        elif isinstance(layer, _merging._Merge) and getattr(layer, "axis", -1) in (1, -2):
            raise ValueError(f"{head} cannot train {type(layer).__name__} {layer.name!r} "
                             f"(axis={layer.axis}): it joins along the time axis, which a "
                             "window cuts")
        elif not isinstance(layer, _PER_STEP + (_merging._Merge,)) \
                and type(layer).__name__ != "InputLayer":
            raise ValueError(
                f"{head} cannot train {type(layer).__name__} {layer.name!r}: windows need "
                "layers that work step by step in time (Dense, TimeDistributed, Activation, "
                "Dropout, Masking, Embedding, merging layers) and forward LSTMs")
    return carried


class _Carry:
    """An LSTM's (h, c) between windows of one batch (None: start from zeros)."""

    __slots__ = ("state",)

    def __init__(self):
        self.state = None


def _cut(arrs, t0, t1, T, what):
    if arrs is None:
        return None
    out = []
    for v in arrs:
        if v is None or (what == "sample_weight" and v.ndim < 2):
            out.append(v)  # per-sample weights apply to every window
        else:
            out.append(np.ascontiguousarray(v[:, t0:t1]))
    return out


class WindowIterator:
    """The windows of an epoch iterator's batches, for ``fit(tbptt=k)``.

    Yields ``(xs, ys, sws, weight)`` per window, as the epoch iterator yields
    batches; ``weight`` is samples x steps, so the epoch's logged loss is the
    mean over all the steps it trained on.

    Parameters
    ----------
    model : the model being fit (checked by :func:`check_model`)
    epochs : :class:`~cylstm.engine.epoch_iterator.EpochIterator`
    k : int, time steps per window
    """

    def __init__(self, model, epochs, k):
        self.model = model
        self.epochs = epochs
        self.k = check_tbptt(k)
        # checked now when the model is built, else at its first batch (a generator's)
        self._carried = check_model(model, self.k) if model.built else None
        self._seen_counts = []

    @property
    def exhausted(self):
        return self.epochs.exhausted

    def warn_if_exhausted(self, steps_wanted):
        self.epochs.warn_if_exhausted(steps_wanted)

    @property
    def num_steps(self):
        """Windows per epoch where known (arrays), else the last epoch's count or None."""
        n = self.epochs.num_steps
        xs = getattr(self.epochs.adapter, "xs", None)
        if n is not None and xs is not None:
            return n * math.ceil(xs[0].shape[1] / self.k)
        return self._seen_counts[-1] if self._seen_counts else None

    def windows(self, xs, ys, sws):
        """The windows of one batch: [(xs, ys, sws, weight), ...]."""
        n, T = xs[0].shape[0], xs[0].shape[1] if xs[0].ndim >= 2 else 0
        for j, a in enumerate(xs):
            if a.ndim < 2 or a.shape[1] != T:
                raise ValueError(f"fit(tbptt={self.k}) cuts every input along axis 1 (time); "
                                 f"input {j} has shape {a.shape}, input 0 {xs[0].shape}")
        if ys is not None:
            for nm, a in zip(self.model.output_names, ys):
                if a is not None and (a.ndim < 2 or a.shape[1] != T):
                    label = "y" if len(ys) == 1 else f"y[{nm!r}]"
                    raise ValueError(
                        f"fit(tbptt={self.k}) needs per-step targets, {label} of shape "
                        f"(batch, time, ...) with time = {T} like x {xs[0].shape}; got "
                        f"{label} of shape {a.shape}, which has no time axis of that length")
        if sws is not None:
            for a in sws:
                if a is not None and a.ndim >= 2 and a.shape[1] != T:
                    raise ValueError(f"fit(tbptt={self.k}): a per-step sample_weight must be "
                                     f"(batch, time) with time = {T}; got shape {a.shape}")
        k = self.k
        if k >= T:
            return [(xs, ys, sws, n * T)]
        return [(_cut(xs, t0, min(t0 + k, T), T, "x"), _cut(ys, t0, min(t0 + k, T), T, "y"),
                 _cut(sws, t0, min(t0 + k, T), T, "sample_weight"), n * (min(t0 + k, T) - t0))
                for t0 in range(0, T, k)]

    def epoch(self):
        """Yield the windows of one epoch, the LSTMs carrying their state between
        the windows of a batch."""
        carries = None
        count = 0
        try:
            for xs, ys, sws, _n in self.epochs.epoch():
                if carries is None:
                    if self._carried is None:
                        self._carried = check_model(self.model, self.k)
                    carries = self._attach()
                for w, window in enumerate(self.windows(xs, ys, sws)):
                    if w == 0:
                        for _layer, c in carries:
                            c.state = None  # a new batch starts from zeros
                    count += 1
                    yield window
        finally:
            for layer, c in carries or ():
                if layer._carry is c:
                    layer._carry = None
        self._seen_counts.append(count)

    def _attach(self):
        carries = [(layer, _Carry()) for layer in self._carried]
        for layer, _ in carries:
            if layer._carry is not None:
                raise RuntimeError(f"LSTM {layer.name!r} is already carrying state for "
                                   "another fit(tbptt=...)")
        for layer, c in carries:
            layer._carry = c
        return carries
