"""Keras's data objects: a batched :class:`Dataset` and the :class:`PyDataset` base class.

``Dataset`` is what :func:`cylstm.utils.timeseries_dataset_from_array` returns:
the batches as NumPy arrays, iterated like a ``tf.data.Dataset`` (``for x, y in
ds``, ``ds.take(n)``, ``ds.skip(n)``, ``len(ds)``) and also indexable
(``ds[0]``).  ``PyDataset`` is ``keras.utils.PyDataset``: subclass it with
``__len__`` (batches per epoch) and ``__getitem__`` (one batch), and optionally
``on_epoch_end``; ``fit``/``evaluate``/``predict`` take it as ``x``.
"""
import numbers

__all__ = ["Dataset", "PyDataset"]


def _count(name, n):
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{name} must be an int; got {type(n).__name__} {n!r}")
    return int(n)


class Dataset:
    """Batches of NumPy arrays, used in order (a ``tf.data.Dataset`` stand-in).

    Parameters
    ----------
    batches : list
        Each item one batch: an array, or a tuple ``(x, y)`` / ``(x, y, sample_weight)``.
    """

    def __init__(self, batches):
        self._batches = list(batches)

    def __iter__(self):
        return iter(self._batches)

    def __len__(self):
        return len(self._batches)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Dataset(self._batches[index])
        return self._batches[index]

    def take(self, count):
        """The first ``count`` batches (all of them for ``count=-1``), as tf.data."""
        count = _count("count", count)
        if count < -1:
            raise ValueError(f"count must be >= -1; got {count}")
        return Dataset(self._batches if count == -1 else self._batches[:count])

    def skip(self, count):
        """All but the first ``count`` batches (none for ``count=-1``), as tf.data."""
        count = _count("count", count)
        if count < -1:
            raise ValueError(f"count must be >= -1; got {count}")
        return Dataset([] if count == -1 else self._batches[count:])

    def cardinality(self):
        """The number of batches (tf.data's name for it)."""
        return len(self._batches)

    def as_numpy_iterator(self):
        return iter(self._batches)

    def __repr__(self):
        return f"<cylstm Dataset: {len(self._batches)} batches>"


class PyDataset:
    """Base class for Python datasets that ``fit``/``evaluate``/``predict`` take as ``x``.

    As ``keras.utils.PyDataset``: implement ``__len__`` (the number of batches)
    and ``__getitem__(index)`` returning batch ``index`` as ``x``, ``(x, y)`` or
    ``(x, y, sample_weight)``; ``on_epoch_end`` runs after every epoch (e.g. to
    reshuffle).  Call ``super().__init__(**kwargs)`` in subclasses.

    Parameters
    ----------
    workers : int, default 1
        Threads that fetch batches ahead of the training loop (``__getitem__``
        must then be thread-safe); 1 fetches in the loop itself.
    use_multiprocessing : bool, default False
        Accepted for compatibility; batches are fetched by threads either way
        (processes would have to pickle the dataset).
    max_queue_size : int, default 10
        Batches fetched ahead at most, with ``workers > 1``.
    """

    def __init__(self, workers=1, use_multiprocessing=False, max_queue_size=10):
        self._workers = _count("workers", workers)
        self._use_multiprocessing = bool(use_multiprocessing)
        self._max_queue_size = _count("max_queue_size", max_queue_size)
        if self._workers < 1 or self._max_queue_size < 1:
            raise ValueError(f"workers and max_queue_size must be >= 1; got {workers} and "
                             f"{max_queue_size}")

    @property
    def workers(self):
        return getattr(self, "_workers", 1)

    @property
    def use_multiprocessing(self):
        return getattr(self, "_use_multiprocessing", False)

    @property
    def max_queue_size(self):
        return getattr(self, "_max_queue_size", 10)

    @property
    def num_batches(self):
        """``len(self)``, or None where ``__len__`` is not defined."""
        try:
            return len(self)
        except TypeError:
            return None

    def __getitem__(self, index):
        raise NotImplementedError(f"{type(self).__name__} must implement __getitem__(index)")

    def on_epoch_begin(self):
        """Called before every epoch."""

    def on_epoch_end(self):
        """Called after every epoch."""
