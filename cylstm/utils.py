"""Data helpers for sequence models: windows over a time series, padding, one-hot.

* :func:`timeseries_dataset_from_array`: Keras' function of that name with the
  same window semantics and arguments.  It returns a :class:`Dataset` of NumPy
  batches (iterate it, ``len()``, ``.take(n)``, ``.skip(n)``, index it) instead of
  a ``tf.data.Dataset``, or ``(x, y)`` arrays with ``batch_size=None``; both go
  straight into ``fit``/``evaluate``/``predict`` and ``validation_data=``.
* :class:`PyDataset`: Keras's base class for Python datasets.
* :func:`make_windows`: the forecasting shortcut, ``(x, y)`` with ``y`` the next
  ``horizon`` steps after each window.
* :func:`pad_sequences`, :func:`to_categorical` and :func:`set_random_seed` as in
  ``keras.utils``.
* :func:`batchify`: one long series as B contiguous streams (the language-model
  idiom of PyTorch's word_language_model example), batch-first.
"""
import numbers
import random

import numpy as np

from cylstm._data import Dataset, PyDataset

__all__ = ["Dataset", "PyDataset", "batchify", "make_windows", "pad_sequences", "set_random_seed",
           "timeseries_dataset_from_array", "to_categorical"]


def set_random_seed(seed):
    """Seed Python's, NumPy's and so cylstm's random draws, as ``keras.utils.set_random_seed``.

    Layers without a ``seed=`` draw their initialization and dropout seeds from
    NumPy's global generator, and ``fit`` its shuffling seed, so after this call
    building and training a model again gives the same numbers.
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int; got {type(seed).__name__} {seed!r}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32); got {seed}")
    random.seed(int(seed))
    np.random.seed(int(seed))


def _int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int; got {type(value).__name__} {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"`{name}` must be {minimum} or greater. Received: {name}={value}")
    return value


def _array(name, a):
    if a is None or isinstance(a, (str, bytes)):
        raise TypeError(f"{name} must be an array; got {type(a).__name__}")
    a = np.asarray(a)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a numeric array; got dtype {a.dtype}")
    if a.ndim == 0:
        raise ValueError(f"{name} must have at least 1 dimension (time first); got a scalar")
    return a


def timeseries_dataset_from_array(data, targets, sequence_length, sequence_stride=1,
                                  sampling_rate=1, batch_size=128, shuffle=False, seed=None,
                                  start_index=None, end_index=None):
    """Sliding windows over a series, as ``keras.utils.timeseries_dataset_from_array``.

    Window ``i`` starts at ``p_i = start_index + i * sequence_stride`` and holds
    ``data[p_i], data[p_i + sampling_rate], ...`` (``sequence_length`` steps);
    its target is ``targets[p_i]`` (so for forecasting pass, e.g.,
    ``targets=data[sequence_length:]``).  Only windows that end before
    ``end_index`` (exclusive) are made, and no more than there are targets.

    Parameters
    ----------
    data : array_like, (T, ...) time first
    targets : array_like (T', ...) or None
    sequence_length : int
    sequence_stride : int, default 1
        Steps between the starts of consecutive windows.
    sampling_rate : int, default 1
        Steps between consecutive samples within a window.
    batch_size : int or None, default 128
    shuffle : bool, default False
        Shuffle the windows (with ``numpy.random.RandomState(seed)``; the order
        differs from TensorFlow's shuffle buffer).
    seed : int, optional
    start_index, end_index : int, optional
        Use ``data[start_index:end_index]`` only.

    Returns
    -------
    Dataset or tuple
        ``batch_size`` given: a :class:`Dataset` of ``(x_batch, y_batch)`` pairs (of
        ``x_batch`` arrays when ``targets`` is None), ``x_batch`` of shape
        ``(batch, sequence_length, ...)``; it iterates as batches and has
        ``len()``, ``.take(n)`` and ``.skip(n)``.  ``batch_size=None``: ``(x, y)``
        arrays (``x`` alone when ``targets`` is None).  Unlike Keras, not a
        ``tf.data.Dataset``.
    """
    data = _array("data", data)
    n = len(data)
    sequence_length = _int("sequence_length", sequence_length, 1)
    sequence_stride = _int("sequence_stride", sequence_stride, 1)
    sampling_rate = _int("sampling_rate", sampling_rate, 1)
    if batch_size is not None:
        batch_size = _int("batch_size", batch_size, 1)
    if sampling_rate >= n:
        raise ValueError(f"`sampling_rate` must be lower than the length of the data. "
                         f"Received: sampling_rate={sampling_rate}, for data of length {n}")
    if sequence_stride >= n:
        raise ValueError(f"`sequence_stride` must be lower than the length of the data. "
                         f"Received: sequence_stride={sequence_stride}, for data of length {n}")
    if start_index is not None:
        start_index = _int("start_index", start_index, 0)
        if start_index >= n:
            raise ValueError(f"`start_index` must be lower than the length of the data. "
                             f"Received: start_index={start_index}, for data of length {n}")
    if end_index is not None:
        end_index = _int("end_index", end_index, 1)
        if start_index is not None and end_index <= start_index:
            raise ValueError(f"`end_index` must be higher than `start_index`. Received: "
                             f"start_index={start_index}, end_index={end_index}")
        if end_index > n:
            raise ValueError(f"`end_index` must be at most the length of the data. "
                             f"Received: end_index={end_index}, for data of length {n}")
    start = 0 if start_index is None else start_index
    end = n if end_index is None else end_index
    span = (sequence_length - 1) * sampling_rate
    num_seqs = end - start - span
    if targets is not None:
        targets = _array("targets", targets)
        num_seqs = min(num_seqs, len(targets) - start)
    if num_seqs <= 0:
        raise ValueError(
            f"no complete window: {end - start} steps of data (from index {start}) are too few "
            f"for sequence_length={sequence_length} with sampling_rate={sampling_rate}"
            + ("" if targets is None else f" and {len(targets)} targets")
        )
    positions = np.arange(0, num_seqs, sequence_stride, dtype=np.int64)
    if shuffle:
        if seed is None:
            seed = np.random.randint(1_000_000)
        np.random.RandomState(seed).shuffle(positions)
    # idx[i, j] = start + p_i + j * sampling_rate: one gather copies every window
    idx = start + positions[:, None] + np.arange(sequence_length) * sampling_rate
    x = np.ascontiguousarray(data[idx])
    y = None if targets is None else np.ascontiguousarray(targets[start + positions])
    if batch_size is None:
        return x if y is None else (x, y)
    out = []
    for s in range(0, len(positions), batch_size):
        xb = x[s:s + batch_size]
        out.append(xb if y is None else (xb, y[s:s + batch_size]))
    return Dataset(out)


def make_windows(series, window, horizon=1, stride=1, target_columns=None):
    """Cut a series into (past window, next values) pairs for forecasting.

    Sample ``i`` is ``x = series[i*stride : i*stride + window]`` and ``y`` the
    ``horizon`` steps right after it.

    Parameters
    ----------
    series : array_like, (T,) or (T, F)
    window : int
        Input steps per sample.
    horizon : int, default 1
        Steps to predict.
    stride : int, default 1
        Steps between the starts of consecutive samples.
    target_columns : int or sequence of int, optional
        Features of a (T, F) series to predict (default: all).  An int selects
        one feature and drops that axis, like a 1-D series.

    Returns
    -------
    x : ndarray, (N, window, F)  (F = 1 for a 1-D series)
    y : ndarray
        ``horizon == 1``: (N, F') (``(N, 1)`` for a 1-D series or an int
        ``target_columns``); ``horizon > 1``: (N, horizon, F'), or (N, horizon)
        for a 1-D series or an int ``target_columns``, ready for ``Dense(horizon)``.
        ``N = (T - window - horizon) // stride + 1``.
    """
    s = _array("series", series)
    if s.ndim > 2:
        raise ValueError(f"series must be (T,) or (T, features); got shape {s.shape}")
    window = _int("window", window, 1)
    horizon = _int("horizon", horizon, 1)
    stride = _int("stride", stride, 1)
    univariate = s.ndim == 1
    s2 = s.reshape(len(s), 1) if univariate else s
    if target_columns is None:
        tgt = s2
        scalar_target = univariate
    elif isinstance(target_columns, numbers.Integral) and not isinstance(target_columns, bool):
        c = int(target_columns)
        if not -s2.shape[1] <= c < s2.shape[1]:
            raise ValueError(f"target_columns={c} is out of range for {s2.shape[1]} features")
        tgt = s2[:, c:c + 1] if c != -1 else s2[:, -1:]
        scalar_target = True
    else:
        cols = np.asarray(target_columns)
        if cols.ndim != 1 or cols.dtype.kind not in "iu" or cols.size == 0:
            raise TypeError(f"target_columns must be an int or a list of ints; got "
                            f"{target_columns!r}")
        if np.any(cols >= s2.shape[1]) or np.any(cols < -s2.shape[1]):
            raise ValueError(f"target_columns {cols.tolist()} out of range for "
                             f"{s2.shape[1]} features")
        tgt = s2[:, cols]
        scalar_target = False
    T = len(s2)
    n = (T - window - horizon) // stride + 1
    if T - window - horizon < 0 or n < 1:
        raise ValueError(
            f"series of length {T} is too short for window={window} and horizon={horizon} "
            f"(needs at least {window + horizon} steps)"
        )
    starts = np.arange(n) * stride
    x = np.ascontiguousarray(s2[starts[:, None] + np.arange(window)])
    y = tgt[starts[:, None] + window + np.arange(horizon)]  # (N, horizon, F')
    if horizon == 1:
        y = y[:, 0, :]
    elif scalar_target:
        y = y[:, :, 0]
    return x, np.ascontiguousarray(y)


def pad_sequences(sequences, maxlen=None, dtype="int32", padding="pre", truncating="pre",
                  value=0.0):
    """Pad (or truncate) a list of sequences to one length, as ``keras.utils``.

    Parameters
    ----------
    sequences : list of sequences (lists or arrays of scalars or of feature vectors)
    maxlen : int, optional
        Default: the longest sequence.
    dtype : dtype, default "int32"
    padding, truncating : {"pre", "post"}
        Pad / cut at the start (``"pre"``, Keras' default) or at the end.  With
        ``Embedding(mask_zero=True)`` or ``Masking``, ``padding="post"`` gives the
        right-padded batches whose masks the kernels handle as sequence lengths.
    value : float, default 0.0

    Returns
    -------
    ndarray, (len(sequences), maxlen, ...)
    """
    if padding not in ("pre", "post"):
        raise ValueError(f'padding must be "pre" or "post"; got {padding!r}')
    if truncating not in ("pre", "post"):
        raise ValueError(f'truncating must be "pre" or "post"; got {truncating!r}')
    if isinstance(sequences, (str, bytes)) or not hasattr(sequences, "__len__"):
        raise TypeError(f"sequences must be a list of sequences; got {type(sequences).__name__}")
    seqs = []
    for i, sq in enumerate(sequences):
        if not hasattr(sq, "__len__") or isinstance(sq, (str, bytes)):
            raise ValueError(f"`sequences` must be a list of iterables. Found non-iterable: "
                             f"{sq!r} at index {i}")
        seqs.append(np.asarray(sq))
    if maxlen is None:
        maxlen = max((len(q) for q in seqs), default=0)
    else:
        maxlen = _int("maxlen", maxlen, 0)
    trailing = ()
    for q in seqs:
        if len(q):
            trailing = q.shape[1:]
            break
    dt = np.dtype(dtype)
    if dt.kind in "iu" and isinstance(value, float) and not float(value).is_integer():
        raise ValueError(f"`dtype` {dt} is not compatible with `value`'s type float "
                         f"{value}; use a float dtype")
    out = np.full((len(seqs), maxlen) + trailing, value, dtype=dt)
    for i, q in enumerate(seqs):
        if not len(q) or maxlen == 0:
            continue
        if q.shape[1:] != trailing:
            raise ValueError(f"shape of sample {q.shape[1:]} of sequence at position {i} is "
                             f"different from expected shape {trailing}")
        q = q[-maxlen:] if truncating == "pre" else q[:maxlen]
        if padding == "post":
            out[i, :len(q)] = q
        else:
            out[i, maxlen - len(q):] = q
    return out


def to_categorical(x, num_classes=None):
    """One-hot encode integer class labels: shape ``x.shape + (num_classes,)``, float32.

    A trailing axis of 1 is dropped first, as Keras does ((B, 1) -> (B, C)).
    """
    a = _array("x", x)
    if a.dtype.kind == "f" and (not np.all(np.isfinite(a)) or np.any(a != np.round(a))):
        raise ValueError("to_categorical needs integer class labels; got non-integer values")
    a = a.astype(np.int64)
    if a.ndim > 1 and a.shape[-1] == 1:
        a = a.reshape(a.shape[:-1])
    if np.any(a < 0):
        raise ValueError(f"class labels must be >= 0; got {int(a.min())}")
    if num_classes is None:
        num_classes = int(a.max()) + 1 if a.size else 0
    else:
        num_classes = _int("num_classes", num_classes, 1)
        if a.size and int(a.max()) >= num_classes:
            raise ValueError(f"label {int(a.max())} is out of range for num_classes="
                             f"{num_classes}")
    out = np.zeros(a.shape + (num_classes,), dtype=np.float32)
    np.put_along_axis(out, a[..., None], 1.0, axis=-1)
    return out


def batchify(series, batch_size):
    """Cut one long series into ``batch_size`` contiguous streams, batch-first.

    Stream b holds steps ``b * n .. (b + 1) * n - 1`` of the series, with
    ``n = N // batch_size``; the last ``N % batch_size`` steps are dropped.  This is
    ``batchify`` of PyTorch's word_language_model example (which returns the
    time-major transpose), so that a single series trains at batch width B, e.g.
    with a stateful model or truncated BPTT over the time axis.

    Parameters
    ----------
    series : array_like (N, ...)
        Time first: token ids (N,) or feature vectors (N, F).
    batch_size : int
        Streams B, 1 <= B <= N.

    Returns
    -------
    ndarray (B, N // B, ...)
        ``out[b, t] == series[b * (N // B) + t]``; a view of ``series`` when it is a
        C-contiguous array, else a new array.

    Examples
    --------
    >>> batchify(np.arange(10), 3)
    array([[0, 1, 2],
           [3, 4, 5],
           [6, 7, 8]])
    """
    a = _array("series", series)
    B = _int("batch_size", batch_size, 1)
    N = a.shape[0]
    if B > N:
        raise ValueError(f"batch_size ({B}) must be at most the series' length (series of "
                         f"shape {a.shape}: {N} steps), so that each stream has a step")
    n = N // B
    return np.ascontiguousarray(a[:B * n]).reshape((B, n) + a.shape[1:])
