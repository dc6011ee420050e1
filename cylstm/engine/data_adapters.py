"""Data adapters: every form of training data behind one interface.

An adapter yields one epoch of prepared batches ``(xs, ys, sws, n)``: lists
(one entry per model input / output) of arrays already cast and checked by the
model, and the batch's sample count.  The forms, as Keras takes them:

* arrays (or lists/dicts of arrays): :class:`ArrayDataAdapter`, sliced into
  ``batch_size`` batches, reshuffled each epoch;
* a list or any re-iterable of ``(x, y)`` / ``(x, y, sample_weight)`` batches
  (such as :func:`cylstm.utils.timeseries_dataset_from_array`'s dataset):
  :class:`IterableDataAdapter`, a fresh pass each epoch;
* a Python generator or other iterator: :class:`GeneratorDataAdapter`, one
  stream across epochs (``steps_per_epoch`` batches each);
* a :class:`cylstm.utils.PyDataset`: :class:`PyDatasetAdapter`, batch order
  shuffled with ``shuffle=True``, ``on_epoch_end`` after every epoch.
"""
import collections
import math
import numbers
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from cylstm._data import PyDataset

__all__ = ["ArrayDataAdapter", "GeneratorDataAdapter", "IterableDataAdapter",
           "PyDatasetAdapter", "describe", "get_data_adapter", "unpack_batch"]


def describe(obj, depth=0):
    """A short description of a batch (types and shapes), for error messages."""
    if isinstance(obj, np.ndarray):
        return f"ndarray{obj.shape} {obj.dtype}"
    if isinstance(obj, (tuple, list)) and depth < 2:
        inner = ", ".join(describe(o, depth + 1) for o in obj[:4])
        more = ", ..." if len(obj) > 4 else ""
        return f"{type(obj).__name__} of {len(obj)} [{inner}{more}]"
    if isinstance(obj, dict) and depth < 2:
        return "dict {" + ", ".join(f"{k!r}: {describe(v, depth + 1)}"
                                    for k, v in list(obj.items())[:4]) + "}"
    return type(obj).__name__ if obj is not None else "None"


def unpack_batch(batch):
    """(x, y, sample_weight) of a batch, as ``keras.utils.unpack_x_y_sample_weight``."""
    if isinstance(batch, list):
        batch = tuple(batch)
    if not isinstance(batch, tuple):
        return batch, None, None
    if len(batch) == 1:
        return batch[0], None, None
    if len(batch) == 2:
        return batch[0], batch[1], None
    if len(batch) == 3:
        return batch
    raise ValueError(f"a batch must be x, (x,), (x, y) or (x, y, sample_weight); got a tuple of "
                     f"{len(batch)}")


def _is_batch_list(obj):
    """A list/tuple whose items are all (x, y[, sw]) batches (not nested lists of numbers)."""
    if not isinstance(obj, (list, tuple)) or not obj:
        return False
    if not all(isinstance(b, (tuple, list)) and len(b) in (2, 3) for b in obj):
        return False
    first = obj[0][0]
    while isinstance(first, list) and first:
        first = first[0]
    return not np.isscalar(first)


def _is_pydataset(obj):
    return isinstance(obj, PyDataset) or (
        hasattr(obj, "__getitem__") and hasattr(obj, "__len__") and hasattr(obj, "on_epoch_end")
        and not isinstance(obj, (list, tuple, np.ndarray, dict)))


class ArrayDataAdapter:
    """In-memory arrays, cut into batches (shuffled each epoch with ``shuffle=True``)."""

    def __init__(self, model, xs, ys, sws, batch_size, shuffle):
        self.model = model
        self.xs, self.ys, self.sws = xs, ys, sws
        self.n = xs[0].shape[0]
        self.batch_size = batch_size
        self.shuffle = bool(shuffle) and self.n > 1
        self._bufs = None

    @property
    def num_batches(self):
        return (self.n + self.batch_size - 1) // self.batch_size

    num_samples = property(lambda self: self.n)
    one_shot = False

    def split(self, validation_split):
        """(train adapter, validation adapter): the last fraction held out, before shuffling."""
        n = self.n
        split = math.floor(n * (1.0 - validation_split))
        if split < 1 or split >= n:
            raise ValueError(f"validation_split={validation_split} leaves no training or no "
                             f"validation samples out of {n}")

        def cut(arrs, a, b):
            return None if arrs is None else [None if v is None else v[a:b] for v in arrs]

        train = ArrayDataAdapter(self.model, cut(self.xs, 0, split), cut(self.ys, 0, split),
                                 cut(self.sws, 0, split), self.batch_size, self.shuffle)
        val = ArrayDataAdapter(self.model, cut(self.xs, split, n), cut(self.ys, split, n),
                               cut(self.sws, split, n), self.batch_size, False)
        return train, val

    def with_batch_size(self, batch_size):
        return ArrayDataAdapter(self.model, self.xs, self.ys, self.sws, batch_size, False)

    def epoch(self):
        xs, ys, sws = self.xs, self.ys, self.sws
        if self.shuffle:
            rng = self.model._shuffle_generator()
            perm = rng.permutation(self.n)
            if self._bufs is None:
                self._bufs = tuple(None if arrs is None else
                                   [None if v is None else np.empty_like(v) for v in arrs]
                                   for arrs in (xs, ys, sws))
            bx, by, bw = self._bufs
            for src, dst in ((xs, bx), (ys, by), (sws, bw)):
                if src is not None:
                    for v, d in zip(src, dst):
                        if v is not None:
                            np.take(v, perm, axis=0, out=d)
            xs, ys, sws = bx, by, bw
        bs, n = self.batch_size, self.n
        for s in range(0, n, bs):
            e = min(s + bs, n)
            yield ([v[s:e] for v in xs],
                   None if ys is None else [None if v is None else v[s:e] for v in ys],
                   None if sws is None else [None if v is None else v[s:e] for v in sws],
                   e - s)

    def on_epoch_end(self):
        pass


class _BatchStream:
    """Shared by the adapters of ready-made batches: prepares each one by the model."""

    def __init__(self, model, need_y, class_weight, source):
        self.model = model
        self.need_y = need_y
        self.class_weight = class_weight
        self.source = source
        self._index = 0

    def prepare(self, raw, index):
        try:
            x, y, sw = unpack_batch(raw)
        except ValueError as e:
            raise ValueError(f"batch {index} from {self.source} is malformed: it holds "
                             f"{describe(raw)}; {e}") from None
        try:
            return self.model._prepare_batch(x, y, sw, self.class_weight, self.need_y)
        except (TypeError, ValueError) as e:
            raise ValueError(f"batch {index} from {self.source} is malformed: it holds "
                             f"{describe(raw)}; {e}") from e


class IterableDataAdapter(_BatchStream):
    """A list (or any re-iterable) of batches: a fresh pass every epoch."""

    one_shot = False

    def __init__(self, model, data, need_y, class_weight):
        super().__init__(model, need_y, class_weight, f"the {type(data).__name__} of batches")
        self.data = data
        try:
            self._n = len(data)
        except TypeError:
            self._n = None

    @property
    def num_batches(self):
        return self._n

    def epoch(self):
        for i, raw in enumerate(self.data):
            yield self.prepare(raw, i)

    def on_epoch_end(self):
        pass


class GeneratorDataAdapter(_BatchStream):
    """A generator (or any iterator): one stream, continued across epochs."""

    one_shot = True

    def __init__(self, model, gen, need_y, class_weight):
        super().__init__(model, need_y, class_weight, "the generator")
        self.gen = gen
        self.exhausted = False

    num_batches = None

    def epoch(self):
        while True:
            try:
                raw = next(self.gen)
            except StopIteration:
                self.exhausted = True
                return
            i = self._index
            self._index += 1
            yield self.prepare(raw, i)

    def on_epoch_end(self):
        pass


class PyDatasetAdapter(_BatchStream):
    """A ``PyDataset``: ``len(ds)`` batches per epoch, ``ds[i]`` each (fetched ahead by
    ``ds.workers`` threads when that is above 1), then ``ds.on_epoch_end()``."""

    one_shot = False

    def __init__(self, model, ds, need_y, class_weight, shuffle):
        super().__init__(model, need_y, class_weight, f"{type(ds).__name__}")
        self.ds = ds
        self.shuffle = bool(shuffle)

    @property
    def num_batches(self):
        return len(self.ds)

    def _order(self):
        idx = np.arange(len(self.ds))
        if self.shuffle and len(idx) > 1:
            self.model._shuffle_generator().shuffle(idx)
        return [int(i) for i in idx]

    def epoch(self):
        ds = self.ds
        begin = getattr(ds, "on_epoch_begin", None)
        if begin is not None:
            begin()
        order = self._order()
        workers = int(getattr(ds, "workers", 1) or 1)
        if workers <= 1:
            for i in order:
                yield self.prepare(ds[i], i)
            return
        ahead = max(1, int(getattr(ds, "max_queue_size", 10) or 10))
        with ThreadPoolExecutor(workers) as pool:
            pending = collections.deque()
            it = iter(order)
            for i in it:
                pending.append((i, pool.submit(ds.__getitem__, i)))
                if len(pending) >= ahead:
                    break
            while pending:
                i, fut = pending.popleft()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append((nxt, pool.submit(ds.__getitem__, nxt)))
                yield self.prepare(fut.result(), i)

    def on_epoch_end(self):
        self.ds.on_epoch_end()


def _check_batch_size(batch_size, what):
    if batch_size is None:
        return 32
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}")
    return int(batch_size)


def get_data_adapter(model, x, y=None, sample_weight=None, class_weight=None,
                     batch_size=None, shuffle=False, need_y=True, what="fit"):
    """The adapter for ``x`` (and ``y``, ``sample_weight`` when ``x`` holds arrays)."""
    if x is None:
        raise ValueError(f"{what} needs x")
    stream = None
    if _is_pydataset(x):
        stream = PyDatasetAdapter(model, x, need_y, class_weight, shuffle)
    elif hasattr(x, "__next__"):
        stream = GeneratorDataAdapter(model, x, need_y, class_weight)
    elif _is_batch_list(x) or (
            not isinstance(x, (np.ndarray, list, tuple, dict)) and hasattr(x, "__iter__")
            and not hasattr(x, "__array__")):
        stream = IterableDataAdapter(model, x, need_y, class_weight)
    if stream is not None:
        for name, v in (("y", y), ("sample_weight", sample_weight)):
            if v is not None:
                raise ValueError(f"{name} must not be given when x is a dataset, generator or "
                                 f"list of batches ({type(x).__name__}); put it in the batches")
        return stream
    bs = _check_batch_size(batch_size, what)
    xs, ys, sws = model._prepare_arrays(x, y, sample_weight, class_weight, need_y, what)
    return ArrayDataAdapter(model, xs, ys, sws, bs, shuffle)


def get_validation_adapter(model, validation_data, batch_size):
    """``validation_data``: (x, y[, sample_weight]) arrays, or any batch form."""
    vd = validation_data
    if isinstance(vd, tuple) or isinstance(vd, list) and not _is_batch_list(vd):
        if len(vd) not in (2, 3):
            raise ValueError("validation_data must be (x_val, y_val), (x_val, y_val, "
                             "sample_weight_val), a dataset, a generator or a list of batches; "
                             f"got a {type(vd).__name__} of {len(vd)}")
        sw = vd[2] if len(vd) == 3 else None
        xs, ys, sws = model._prepare_arrays(vd[0], vd[1], sw, None, True, "validation_data")
        return ArrayDataAdapter(model, xs, ys, sws, batch_size, False)
    return get_data_adapter(model, vd, batch_size=batch_size, need_y=True,
                            what="validation_data")
