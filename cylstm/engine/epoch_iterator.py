"""One epoch's batches of a data adapter, as Keras's ``EpochIterator``.

``steps_per_epoch`` caps an epoch at that many batches.  Arrays and
re-iterable data (lists of batches, datasets, ``PyDataset``) start every epoch
from their first batch; a generator is one stream that the next epoch
continues.  When a generator runs out, the epoch ends there and training stops
after it, with Keras's warning ("Your input ran out of data").
"""
import warnings

__all__ = ["EpochIterator"]


class EpochIterator:
    """Iterate an adapter epoch by epoch.

    Parameters
    ----------
    adapter : a data adapter (:mod:`cylstm.engine.data_adapters`)
    steps_per_epoch : int, optional
    """

    def __init__(self, adapter, steps_per_epoch=None):
        self.adapter = adapter
        self.steps_per_epoch = steps_per_epoch
        self.exhausted = False
        self._seen_counts = []

    @property
    def num_steps(self):
        """Batches per epoch where known (else the last epoch's count, or None)."""
        n = self.adapter.num_batches
        if self.steps_per_epoch is not None:
            return self.steps_per_epoch if n is None else min(n, self.steps_per_epoch)
        if n is None and self._seen_counts:
            return self._seen_counts[-1]
        return n

    def epoch(self):
        """Yield ``(xs, ys, sws, n_samples)`` for one epoch."""
        cap = self.steps_per_epoch
        count = 0
        if self.adapter.one_shot and self.exhausted:
            return
        for batch in self.adapter.epoch():
            yield batch
            count += 1
            if cap is not None and count >= cap:
                break
        self._seen_counts.append(count)
        if self.adapter.one_shot and getattr(self.adapter, "exhausted", False) \
                and (cap is None or count < cap):
            self.exhausted = True
        if count == 0:
            self.exhausted = True

    def warn_if_exhausted(self, steps_wanted):
        if self.exhausted:
            warnings.warn(
                "Your input ran out of data; interrupting training. Make sure that your "
                "dataset or generator can generate at least `steps_per_epoch * epochs` batches"
                + ("" if steps_wanted is None else f" (here {steps_wanted} per epoch)") + ".",
                UserWarning, stacklevel=3)
