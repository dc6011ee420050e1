"""Which x86-64 level (ISA) the kernels run, and forcing a lower one.

Levels, as include/cylstm_cpu.h numbers them:

    2  "avx512"    x86-64-v4 (AVX-512 F/BW/VL/DQ/CD)
    1  "avx2"      x86-64-v3 (AVX2 + FMA)
    0  "baseline"  x86-64 (SSE2), or any other CPU

The kernels run the CPU's own level unless a lower one is forced:

- for a whole process, by the environment variable ``CYLSTM_CPU`` (one of the
  names above, any case; unset or empty: the CPU's level).  ``import cylstm``
  checks it (:func:`check_env`), so a bad value is an error there, before any
  kernel runs;
- in-process, by :func:`forced_level` (tests), which overrides ``CYLSTM_CPU``
  while it is active.

Each compiled extension with kernels keeps its own copy of the level (C static
state); this module sets all of them together.  The planners that read the
level once at import (``cylstm.functional``) do not follow an in-process change.
"""
import contextlib
import os

from cylstm import _lstm, _stream

__all__ = ["LEVELS", "VARIANTS", "active_level", "check_env", "current_panel_kblock",
           "detected_level", "forced_level", "level_name", "panel_block_rows", "panel_kblock",
           "parse_cpu_env", "set_panel_kblock", "set_panel_stream_min"]

LEVELS = {"avx512": 2, "avx2": 1, "baseline": 0}
_NAMES = {level: name for name, level in LEVELS.items()}

# the extensions that include cylstm_cpu.h, each with its own forced level
_EXTENSIONS = (_lstm, _stream)

#: True where the kernels were compiled once per level (x86-64 Linux with GCC >= 12
#: or Clang); elsewhere they are built once and a forced level changes only the
#: level reported and the AVX-512-only passes it gates.
VARIANTS = _lstm.ISA_VARIANTS


def level_name(level):
    """The ``CYLSTM_CPU`` name of ISA ``level`` (2 -> ``"avx512"``)."""
    try:
        return _NAMES[level]
    except (KeyError, TypeError):
        raise ValueError(f"ISA level must be 0, 1 or 2; got {level!r}") from None


def parse_cpu_env(value):
    """The ISA level a ``CYLSTM_CPU`` value asks for.

    Parameters
    ----------
    value : str or None
        ``"avx512"``, ``"avx2"`` or ``"baseline"`` in any case; ``None`` or
        ``""`` (unset) asks for none.

    Returns
    -------
    int or None
        2, 1 or 0; ``None`` where the CPU's own level applies.

    Raises
    ------
    ValueError
        For any other value.  (It is not checked against the CPU here: see
        :func:`check_env`.)
    """
    if value is None or value == "":
        return None
    # ASCII only, as the C side compares it (cylstm_cpu.h)
    if isinstance(value, str) and value.isascii() and value.lower() in LEVELS:
        return LEVELS[value.lower()]
    names = ", ".join(repr(n) for n in LEVELS)
    raise ValueError(f"CYLSTM_CPU must be one of {names} (or unset); got {value!r}")


def detected_level():
    """The ISA level this CPU has (0 on CPUs other than x86-64)."""
    return _stream._cpu_levels()[0]


def active_level():
    """The ISA level the kernels run now: the detected one, or a lower forced one."""
    return _stream.cpu_level()


def _check_supported(level, what):
    detected = detected_level()
    if level > detected:
        raise ValueError(
            f"{what} asks for ISA level {level_name(level)!r}, but this CPU runs up to "
            f"{level_name(detected)!r} (detected level {detected})")


def check_env():
    """Validate ``CYLSTM_CPU``: return the level it forces (``None`` if unset).

    Raises ``ValueError`` for an unknown value or a level above the CPU's.
    """
    value = os.environ.get("CYLSTM_CPU")
    level = parse_cpu_env(value)
    if level is not None:
        _check_supported(level, f"CYLSTM_CPU={value!r}")
    return level


def _as_level(name_or_int):
    if isinstance(name_or_int, str):
        if name_or_int.isascii() and name_or_int.lower() in LEVELS:
            return LEVELS[name_or_int.lower()]
    elif type(name_or_int) is int and name_or_int in _NAMES:   # not bool
        return name_or_int
    names = ", ".join(repr(n) for n in LEVELS)
    raise ValueError(f"forced_level expects one of {names} or 0, 1, 2; got {name_or_int!r}")


@contextlib.contextmanager
def forced_level(name_or_int):
    """Run the kernels of every extension at one ISA level inside the block.

    Parameters
    ----------
    name_or_int : {"avx512", "avx2", "baseline"} or {2, 1, 0}
        Not above :func:`detected_level` (``ValueError`` otherwise).  It
        overrides ``CYLSTM_CPU`` inside the block; the previous forcing (or
        none) comes back on exit, also on an exception.  Not for use while
        kernels run on other threads.

    Yields
    ------
    int
        The level forced.
    """
    level = _as_level(name_or_int)
    _check_supported(level, f"forced_level({name_or_int!r})")
    with _on_every_extension("_force_cpu_level", level):
        yield level


@contextlib.contextmanager
def _on_every_extension(setter, value):
    """Call each extension's ``setter`` with ``value`` inside the block (each
    returns its previous value), and with that previous value after it."""
    previous = [getattr(ext, setter)(value) for ext in _EXTENSIONS]
    try:
        yield
    finally:
        for ext, p in zip(_EXTENSIONS, previous):
            getattr(ext, setter)(p)


def set_panel_kblock(nbytes):
    """Set the K-block budget of the AVX2 six-row panel passes in every extension
    (bytes of one panel a pass of row blocks reads before the next K block; 0:
    whole panels) and return the previous one.  ``import cylstm`` sets it from the
    core's L2 (:func:`cylstm._tuning.panel_kblock_bytes`); results do not depend
    on it, bit for bit."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"nbytes must be an int >= 0; got {nbytes!r}")
    previous = [ext._set_panel_kblock(nbytes) for ext in _EXTENSIONS]
    return previous[0]


def current_panel_kblock():
    """The K-block budget the panel passes use now (bytes; 0: whole panels)."""
    return _lstm._panel_kblock()


def set_panel_stream_min(nbytes):
    """Set, in every extension, the size (bytes) the weights of a panel product
    must pass for its kernel to stream in the next panel while it computes, and
    return the previous one.  ``import cylstm`` sets it to a core's L2
    (:class:`cylstm._tuning.CpuFacts`); 0 streams always.  Prefetches only:
    results do not depend on it, bit for bit."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"nbytes must be an int >= 0; got {nbytes!r}")
    previous = [ext._set_panel_stream_min(nbytes) for ext in _EXTENSIONS]
    return previous[0]


@contextlib.contextmanager
def panel_spread(n):
    """Inside the block, every extension's AVX2 six-row passes spread the stream
    of the next K block over their first ``n`` passes (0: all in the first, with
    no prefetch of a pass's own rows: the earlier scheme, for measuring), and the
    AVX-512 six-row blocks the stream of the next panel over their first ``n``
    (0: no stream, the earlier scheme); the
    default (include/cylstm_panel.h, CYL_PANEL_PF_SPREAD) after it.  Prefetches
    only: results do not change, bit for bit."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0; got {n!r}")
    with _on_every_extension("_set_panel_spread", n):
        yield n


@contextlib.contextmanager
def panel_block_rows(on):
    """Inside the block, every extension's AVX2 passes over K-blocked panels split
    their rows so that no block leaves fewer than four (``True``, the default:
    include/cylstm_panel.h, CYL_ROWS6_NEXT) or as over whole panels (``False``,
    for measuring); the previous setting after it.  Results do not change, bit
    for bit."""
    if not isinstance(on, bool):
        raise TypeError(f"on must be a bool; got {on!r}")
    with _on_every_extension("_set_panel_block_rows", on):
        yield on


@contextlib.contextmanager
def panel_kblock(nbytes):
    """:func:`set_panel_kblock` inside the block, the previous budget after it."""
    previous = set_panel_kblock(nbytes)
    try:
        yield nbytes
    finally:
        set_panel_kblock(previous)
