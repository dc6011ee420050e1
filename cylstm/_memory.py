"""The memory budget: ``set_memory_budget``, ``get_memory_budget``.

One number, in bytes, that bounds what one LSTM layer call may keep for its
backward pass (``checkpoint_every="auto"``, see :mod:`cylstm._checkpoint`) and
what a model's inference may hold in intermediate sequences before it runs
them a chunk of time steps at a time (:mod:`cylstm._timechunk`).

The default is 1 GiB; the ``CYLSTM_MEMORY_BUDGET`` environment variable (a
plain number of bytes, read at the first use) replaces it, and
:func:`set_memory_budget` replaces both.
"""
import math
import numbers
import os
import threading

__all__ = ["DEFAULT_MEMORY_BUDGET", "get_memory_budget", "set_memory_budget"]

DEFAULT_MEMORY_BUDGET = 2**30
ENV = "CYLSTM_MEMORY_BUDGET"

_lock = threading.Lock()
_budget = None


def _as_bytes(name, value):
    """``value`` as a positive int of bytes; ValueError/TypeError naming ``name``."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number of bytes; got {value!r}")
    if isinstance(value, numbers.Integral):
        n = int(value)
    elif isinstance(value, numbers.Real):
        if not math.isfinite(value) or value != int(value):
            raise ValueError(f"{name} must be a whole number of bytes; got {value!r}")
        n = int(value)
    else:
        raise TypeError(f"{name} must be a number of bytes; got {type(value).__name__}")
    if n <= 0:
        raise ValueError(f"{name} must be > 0 bytes; got {n}")
    return n


def _from_env():
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return DEFAULT_MEMORY_BUDGET
    try:
        value = float(raw) if any(ch in raw for ch in ".eE") else int(raw)
    except ValueError:
        raise ValueError(f"{ENV} must be a plain number of bytes; got {raw!r}") from None
    return _as_bytes(ENV, value)


def get_memory_budget():
    """Bytes one LSTM layer call may keep for its backward (and a model's inference
    may hold in intermediate sequences).

    Returns
    -------
    int
        The value given to :func:`set_memory_budget`, else ``CYLSTM_MEMORY_BUDGET``,
        else 1 GiB.
    """
    global _budget
    if _budget is None:
        with _lock:
            if _budget is None:
                _budget = _from_env()
    return _budget


def set_memory_budget(nbytes):
    """Set the memory budget, in bytes.

    Parameters
    ----------
    nbytes : int or None
        A positive number of bytes (a float with a whole value, e.g. ``2e9``, is
        accepted); None goes back to ``CYLSTM_MEMORY_BUDGET`` or the 1 GiB default.

    Raises
    ------
    ValueError
        ``nbytes`` is zero, negative or not whole.
    TypeError
        ``nbytes`` is not a number.

    Notes
    -----
    ``LSTM(checkpoint_every="auto")`` keeps the whole training cache of a layer
    call while it fits in the budget, and checkpoints every ~sqrt(T) steps when
    it does not; ``predict`` runs a model a chunk of time steps at a time when
    its intermediate sequences would not fit.
    """
    global _budget
    n = None if nbytes is None else _as_bytes("nbytes", nbytes)
    with _lock:
        _budget = _from_env() if n is None else n
