"""Scratch buffers reused across kernel calls.

A training step allocates the same few large buffers (gates, cell states,
previous h, per-step scratch) for every batch.  Fresh NumPy arrays of that
size come from mmap and cost a page fault per 4 KiB page on first touch and an
munmap on release: measured at ~30% of a training step of the Keras example
model.  Buffers that never leave cylstm are therefore taken from and given
back to a small per-thread pool.  Arrays returned to the caller are always
fresh.
"""
import math
import threading

import numpy as np

# Never keep more than this many bytes idle per thread.
POOL_LIMIT = 256 * 2**20


class _Pool(threading.local):
    def __init__(self):
        self.free = {}
        self.total = 0


_pool = _Pool()


def take(shape, dtype, zero=False, align=None):
    """An array of ``shape``/``dtype`` from the pool (contents undefined unless ``zero``).

    ``align``: bytes the first element's address must be a multiple of (NumPy
    only promises 16; the packed kernels stream 64-byte vectors).
    """
    dtype = np.dtype(dtype)
    n = int(math.prod(shape)) * dtype.itemsize   # (np.prod: 4 us a call)
    pad = 0 if align is None else int(align)
    key = max(n + pad, 1)
    lst = _pool.free.get(key)
    if lst:
        buf = lst.pop()
        _pool.total -= key
    else:
        buf = np.empty(key, np.uint8)
    off = 0 if not pad else (-buf.ctypes.data) % pad
    a = buf[off:off + n].view(dtype).reshape(shape)
    if zero:
        a.fill(0)
    return a


def give(*arrays):
    """Return arrays obtained from :func:`take` (None is ignored)."""
    for a in arrays:
        if a is None:
            continue
        root = a
        while root.base is not None:
            root = root.base
        if not isinstance(root, np.ndarray) or root.dtype != np.uint8:
            continue
        n = root.nbytes
        if _pool.total + n > POOL_LIMIT:
            continue
        _pool.free.setdefault(n, []).append(root)
        _pool.total += n


def clear():
    """Drop every idle buffer of the calling thread."""
    _pool.free.clear()
    _pool.total = 0
