"""Packed weights kept from call to call, used only while they are still exact.

The panel paths of :func:`cylstm.functional.lstm_forward` ("units", "stacked")
read [W; U] packed in panels (cylstm/_lstm.pyx, ``pack_stacked``).  Packing is a
pass over both matrices, and without it the unit path's projection ``x @ W``
goes to BLAS, which repacks W on every call: at (T, B, I, H) = (25, 1, 512, 512)
on one thread that was about 40% of a call (perf: OpenBLAS ``sgemm_itcopy`` 24%,
cylstm's packing 18%; Intel Xeon, Sapphire Rapids class, 2026-12-02).  ONNX
Runtime packs once per session.

The functional calls take plain arrays that a caller may change in place between
calls (an optimizer step, ``layer.kernel[...] = ...``), so nothing here trusts
an array's identity.  An entry holds a private copy of the bytes it was packed
from, and a lookup compares the caller's arrays with it (``memcmp``, with the GIL
released): any changed byte is a miss and a repack, never a stale result.  The
compare reads each weight once more, which costs less than half a pack (4 MiB of
U: 0.4 ms against 1.0 ms for the pack on the Xeon above), and it saves
OpenBLAS's repacking of W besides.

Entries are found by the arrays' ids, shapes and dtype, kept in LRU order
within :data:`cylstm._tuning.WEIGHT_CACHE_BYTES` (copies and packs together).
A key whose content keeps changing (every call a miss) stops being cached for a
while, and so do keys never seen before when several come in a row (a caller
passing fresh copies each call): a caller who changes its weights every call
pays a few wasted copies, then packs per call as before.

A caller that owns its weights can skip the compare: ``lstm_forward(...,
weights_version=v)`` promises that the arrays have not changed since the last
call with ``v`` (as the CUDA backend's resident weights do).  The entry then
keeps weak references to the caller's arrays besides its copies, and a lookup
with the version it holds, for those very objects (not a reused id), is a hit
without reading them.  At (25, 1, 512, 512) on one thread the compare and the
cache misses it causes (it reads 16 MiB: the caller's W and U and the copies,
pushing the 8 MiB pack out of L3) were 1.1-1.7 ms of 3.9-5.0 (AMD EPYC (2 cores),
Zen 3, 2026-12-02).
"""
import collections
import threading
import weakref

import numpy as np

from cylstm import _lstm, _tuning
from cylstm._validate import dtype_name

__all__ = ["clear", "lookup", "stats"]

# after this many misses in a row on one key (its bytes changed each time), the
# key is skipped for SKIP_CALLS lookups before it is tried again
MISSES_BEFORE_SKIP = 2
SKIP_CALLS = 16

_lock = threading.Lock()
_entries = collections.OrderedDict()   # key -> _Entry, least recently used first
_counts = {"hits": 0, "misses": 0, "skipped": 0, "vouched": 0}
_new_streak = 0   # misses in a row on keys never seen
_new_skip = 0     # lookups of unseen keys left to skip


class _Entry:
    __slots__ = ("copies", "misses", "nbytes", "packed", "refs", "skip", "version")

    def __init__(self, copies, packed):
        self.copies = copies
        self.packed = packed
        self.nbytes = packed.nbytes + sum(c.nbytes for c in copies if c is not None)
        self.misses = 0
        self.skip = 0
        self.version = None   # the caller's weights_version, with weak refs to its arrays
        self.refs = None

    def vouched(self, version, arrays):
        """Whether the caller vouches for these very arrays under this version."""
        return (version is not None and self.refs is not None and version == self.version
                and all((r is None and a is None) or (r is not None and r() is a)
                        for r, a in zip(self.refs, arrays)))

    def vouch(self, version, arrays):
        self.version = version
        self.refs = None if version is None else \
            tuple(None if a is None else weakref.ref(a) for a in arrays)


def entry_bytes(I, H, dtype):
    """Bytes one entry of (I, H) weights holds: the copies of W, U, bias and the pack."""
    dtype = np.dtype(dtype)
    return ((I + H + 1) * 4 * H + _lstm.stacked_len(I, H, dtype_name(dtype))) * dtype.itemsize


def cacheable(I, H, dtype):
    """Whether weights of this size may be cached at all (half the budget at most)."""
    return 2 * entry_bytes(I, H, dtype) <= _tuning.WEIGHT_CACHE_BYTES


def lookup(W, U, bias, layout, with_w=True, n_threads=1, version=None, make=None):
    """The weights packed in ``layout`` (a read-only array), or None when this call
    should pack for itself (too big, a key whose bytes keep changing, or a run of
    calls each with arrays never seen before).

    layout : "stacked" ([W; U] per panel and the bias, ``_lstm.pack_stacked``: the
        batch split's steps), "units" (U's panels, then W's and the bias:
        ``_lstm.pack_units``) or another name with ``make``.
    make : None, or ``make(W, U, bias)`` that packs for ``layout`` (the copies are
        passed; any object with ``nbytes``: the int8 layer pack of
        ``lstm_forward(weights_dtype="int8")``).
    W, U, bias : C-contiguous arrays of one float dtype, validated by the caller;
        ``bias`` may be None (zeros).
    with_w : compare W too (False: the caller reads W itself, not its panels; a
        changed W then goes unnoticed until a lookup with ``with_w``, which
        repacks).
    n_threads : threads the call may use; the byte compare is split over them
        from ``_tuning.COMPARE_PARALLEL_MIN_BYTES`` on.
    version : the caller's ``weights_version`` (hashable) or None: with the version
        an entry holds for these same array objects, no compare."""
    global _new_streak, _new_skip
    dtype = W.dtype
    I, H = W.shape[0], U.shape[0]
    if not cacheable(I, H, dtype):
        return None
    # the arrays' ids only find the entry: its copies decide (an id may be reused)
    key = (layout, id(W), id(U), id(bias), dtype.str, W.shape, U.shape)
    arrays = (W, U, bias)
    with _lock:
        e = _entries.get(key)
        if e is not None:
            _entries.move_to_end(key)
            if e.vouched(version, arrays):
                # (a hit breaks a run of unseen keys, as a compared hit does: else a
                # caller that vouches for its weights, between its first calls on
                # new weights, looked like one passing fresh copies every call, and
                # its later new keys were skipped, packed again on every call)
                _new_streak = 0
                _counts["hits"] += 1
                _counts["vouched"] += 1
                return e.packed
            if e.skip > 0:
                e.skip -= 1
                _counts["skipped"] += 1
                return None
        elif _new_skip > 0:   # callers passing fresh copies every call: do not churn
            _new_skip -= 1
            _counts["skipped"] += 1
            return None
    if e is not None and _lstm.same_weights(W, U, bias, *e.copies, with_w, n_threads,
                                            _tuning.COMPARE_PARALLEL_MIN_BYTES):
        with _lock:
            e.misses = 0
            _new_streak = 0
            _counts["hits"] += 1
            if with_w:   # a version vouches only for an entry this call checked whole
                e.vouch(version, arrays)
        return e.packed
    misses = 0 if e is None else e.misses + 1
    copies = (np.array(W), np.array(U), None if bias is None else np.array(bias))
    if make is not None:
        packed = make(*copies)
    else:
        packed = _aligned(_lstm.stacked_len(I, H, dtype_name(dtype)), dtype)
        pack = _lstm.pack_units if layout == "units" else _lstm.pack_stacked
        pack(copies[0], copies[1], np.zeros(4 * H, dtype) if bias is None else copies[2],
             packed)
        packed.flags.writeable = False
    new = _Entry(copies, packed)
    new.vouch(version, arrays)
    new.misses = misses
    if misses >= MISSES_BEFORE_SKIP:
        new.skip, new.misses = SKIP_CALLS, 0
    with _lock:
        _counts["misses"] += 1
        if e is None:
            _new_streak += 1
            if _new_streak >= MISSES_BEFORE_SKIP * 2:
                _new_streak, _new_skip = 0, SKIP_CALLS
        _entries.pop(key, None)
        _entries[key] = new
        total = sum(x.nbytes for x in _entries.values())
        while total > _tuning.WEIGHT_CACHE_BYTES and len(_entries) > 1:
            _, old = _entries.popitem(last=False)
            total -= old.nbytes
    return packed


def _aligned(n, dtype):
    """A 64-byte aligned array of ``n`` elements (the panel kernel's loads)."""
    item = np.dtype(dtype).itemsize
    raw = np.empty(n * item + 64, np.uint8)
    off = (-raw.ctypes.data) % 64
    return raw[off:off + n * item].view(dtype)


def clear():
    """Drop every entry (tests; or to give the memory back)."""
    global _new_streak, _new_skip
    with _lock:
        _new_streak = _new_skip = 0
        _entries.clear()
        for k in _counts:
            _counts[k] = 0


def stats():
    """{"entries", "bytes", "budget", "hits", "misses", "skipped", "vouched"} ("vouched":
    the hits a ``weights_version`` made without a compare, counted in "hits" too)."""
    with _lock:
        return {"entries": len(_entries), "bytes": sum(e.nbytes for e in _entries.values()),
                "budget": _tuning.WEIGHT_CACHE_BYTES, **_counts}
