"""Length bucketing for ``fit(..., bucket_by_length=True)``.

Padded, masked data wastes work: a batch runs as many steps as its longest
sample.  :class:`BucketedArrayAdapter` shuffles the samples as the plain array
adapter does, then, inside each window of ``pool`` batches of that shuffled
order, sorts the samples by length and cuts the window into batches, so a
batch's longest sample is close to its shortest.  The batches of the whole
epoch are then shuffled again, so training does not see lengths in order.
Every sample is seen once per epoch; the batch count and sizes are those of
the plain adapter.

Each batch is cut after its longest sample's last valid step: the steps past
it are masked for every sample in the batch, so the LSTMs' states and the
masked loss are those of the uncut batch (to float rounding), and fewer steps
are computed.  Per-step targets and sample weights are cut with the inputs.

A sample's length is one past its last valid step under the model's input
mask: a ``Masking`` layer or ``Embedding(mask_zero=True)`` that reads an input
directly.  Data without one is refused with a ValueError.
"""
import numbers

import numpy as np

from cylstm import layers as _layers
from cylstm.engine.data_adapters import ArrayDataAdapter

__all__ = ["BucketedArrayAdapter", "bucketed", "check_bucket_by_length", "sample_lengths"]

#: batches per bucketing window for ``bucket_by_length=True``
DEFAULT_POOL = 32


def check_bucket_by_length(value):
    """False (off), or the window of batches to bucket in (True: ``DEFAULT_POOL``)."""
    if value is None or value is False:
        return False
    if value is True:
        return DEFAULT_POOL
    if isinstance(value, numbers.Integral) and int(value) >= 1:
        return int(value)
    raise ValueError("bucket_by_length must be True, False or a positive int (batches per "
                     f"bucketing window); got {value!r}")


def _mask_layers(model):
    """For each model input, the layer that makes its mask from it (or None)."""
    from cylstm.engine.model import Model  # breaks a cycle: the trainer imports this module

    def makes_mask(layer):
        return isinstance(layer, _layers.Masking) or (
            isinstance(layer, _layers.Embedding) and layer.mask_zero)

    plan = getattr(model, "_plan", None)
    if plan is not None and hasattr(plan, "steps"):
        out = []
        for slot in plan.in_slots:
            found = None
            for st in plan.steps:
                if slot in st.ins and makes_mask(st.layer):
                    found = st.layer
                    break
            out.append(found)
        return out
    layers = list(model.layers)
    while layers and isinstance(layers[0], Model) and getattr(layers[0], "_plan", None) is None:
        layers = list(layers[0].layers) + layers[1:]  # a nested Sequential at the input
    first = layers[0] if layers else None
    return [first if first is not None and makes_mask(first) else None]


def sample_lengths(model, xs):
    """One past each sample's last valid step, (N,) int64, under the model's input
    masks (the longest over inputs); ValueError when no input is masked."""
    found = False
    lengths = None
    for x, layer in zip(xs, _mask_layers(model)):
        if layer is None:
            continue
        found = True
        if isinstance(layer, _layers.Masking):
            valid = np.any(x != x.dtype.type(layer.mask_value), axis=-1)
        else:
            valid = x != 0
        valid = valid.reshape(valid.shape[0], -1)
        T = valid.shape[1]
        last = T - np.argmax(valid[:, ::-1], axis=1)
        last[~valid.any(axis=1)] = 0
        lengths = last if lengths is None else np.maximum(lengths, last)
    if not found:
        raise ValueError(
            "bucket_by_length=True groups samples by their masked length, but no input of "
            f"model {model.name!r} is masked: put a Masking layer or "
            "Embedding(mask_zero=True) on the input (padded steps then count as absent)")
    return lengths.astype(np.int64)


class BucketedArrayAdapter(ArrayDataAdapter):
    """An :class:`ArrayDataAdapter` whose batches group samples of similar length.

    Parameters
    ----------
    base : ArrayDataAdapter
    lengths : (N,) int array, one past each sample's last valid step
    pool : int, batches per bucketing window
    """

    def __init__(self, base, lengths, pool):
        super().__init__(base.model, base.xs, base.ys, base.sws, base.batch_size, base.shuffle)
        self.lengths = np.asarray(lengths, np.int64)
        self.pool = int(pool)
        self.T = base.xs[0].shape[1]
        # the time axis is cut only when every input is masked (an unmasked input's
        # late steps count)
        self._cut_x = all(m is not None for m in _mask_layers(base.model)) and all(
            v.ndim >= 2 and v.shape[1] == self.T for v in base.xs)
        # per-step arrays, cut with the inputs: targets of sequence outputs, (N, T) weights
        shapes = base.model._output_shapes()
        self._cut_y = [v is not None and v.ndim >= 2 and v.shape[1] == self.T
                       and len(shape) >= 3 for v, shape in zip(base.ys or [], shapes)]
        self._cut_w = [v is not None and v.ndim >= 2 and v.shape[1] == self.T
                       for v in (base.sws or [])]

    def batch_indices(self):
        """The epoch's batches as arrays of sample indices, in training order."""
        n, bs = self.n, self.batch_size
        rng = self.model._shuffle_generator() if self.shuffle else None
        order = rng.permutation(n) if rng is not None else np.arange(n)
        width = bs * self.pool
        batches = []
        for s in range(0, n, width):
            idx = order[s:s + width]
            idx = idx[np.argsort(self.lengths[idx], kind="stable")]
            batches.extend(idx[j:j + bs] for j in range(0, len(idx), bs))
        if rng is not None:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def epoch(self):
        T = self.T
        for idx in self.batch_indices():
            L = max(1, int(self.lengths[idx].max()))
            cut = slice(0, L) if L < T and self._cut_x else slice(None)
            xs = [v[idx, cut] for v in self.xs]
            ys = None if self.ys is None else [
                None if v is None else (v[idx, cut] if c else v[idx])
                for v, c in zip(self.ys, self._cut_y)]
            sws = None if self.sws is None else [
                None if v is None else (v[idx, cut] if c else v[idx])
                for v, c in zip(self.sws, self._cut_w)]
            yield xs, ys, sws, len(idx)


def bucketed(model, adapter, pool):
    """``adapter`` with length bucketing (array data only)."""
    if not isinstance(adapter, ArrayDataAdapter):
        raise ValueError(  # noqa: TRY004  (the data's form, not a wrong argument type)
            "bucket_by_length needs array data (x and y as arrays); a "
            f"{type(adapter).__name__.replace('DataAdapter', '').lower()} source "
            "makes its own batches: group them by length there")
    if adapter.xs[0].ndim < 2:
        raise ValueError("bucket_by_length needs inputs with a time axis (batch, time, ...); "
                         f"got x of shape {adapter.xs[0].shape}")
    return BucketedArrayAdapter(adapter, sample_lengths(model, adapter.xs), pool)
