"""Keras-like training progress output for ``fit``/``evaluate``/``predict``.

``verbose=1``: a live bar per epoch, redrawn in place on a terminal (at most
every ``interval`` seconds, so drawing never costs the training loop much)::

    32/64 ━━━━━━━━━━────────── 0s 4ms/step - loss: 0.1021

and on completion the elapsed time replaces the ETA.  Where stdout is not a
terminal (logs, CI) only the final line of each epoch is printed.
``verbose=2``: one line per epoch, no bar.
"""
import sys
import time

__all__ = ["Progbar", "format_logs"]


def _fmt_value(v):
    try:
        v = float(v)
    except (TypeError, ValueError):
        return str(v)
    return f"{v:.4f}" if v == 0 or abs(v) > 1e-3 else f"{v:.4e}"


def format_logs(logs):
    """`` - key: value`` for each entry, in order."""
    return "".join(f" - {k}: {_fmt_value(v)}" for k, v in logs.items())


def _fmt_duration(s):
    if s >= 3600:
        return f"{int(s // 3600)}:{int(s % 3600 // 60):02d}:{int(s % 60):02d}"
    if s >= 60:
        return f"{int(s // 60)}:{int(s % 60):02d}"
    return f"{int(s)}s"


def _fmt_step(s):
    if s >= 1:
        return f"{s:.0f}s/step"
    if s >= 1e-3:
        return f"{s * 1e3:.0f}ms/step"
    return f"{s * 1e6:.0f}us/step"


class Progbar:
    """Progress display for one epoch (or one evaluate/predict pass).

    Parameters
    ----------
    target : int
        Number of steps (batches).
    verbose : 1 (live bar) or 2 (one line at the end)
    width : bar width in characters
    interval : minimum seconds between redraws
    file : stream, default sys.stdout
    """

    def __init__(self, target, verbose=1, width=20, interval=0.05, file=None):
        self.target = int(target)
        self.verbose = verbose
        self.width = width
        self.interval = interval
        self.file = file if file is not None else sys.stdout
        isatty = getattr(self.file, "isatty", None)
        self._dynamic = bool(isatty and isatty()) or "ipykernel" in sys.modules
        self._start = time.perf_counter()
        self._last = 0.0
        self._prev_width = 0

    def _bar(self, current):
        digits = len(str(self.target))
        done = int(self.width * current / self.target) if self.target else self.width
        return f"{current:{digits}d}/{self.target} " + "━" * done + "─" * (self.width - done)

    def update(self, current, logs=None, finalize=False):
        """Show progress after ``current`` steps with the running ``logs`` (a dict)."""
        if self.verbose != 1 or not self._dynamic:
            if finalize:
                self._final(current, logs)
            return
        now = time.perf_counter()
        if not finalize and now - self._last < self.interval:
            return
        self._last = now
        if finalize:
            self._final(current, logs)
            return
        elapsed = now - self._start
        per = elapsed / max(current, 1)
        eta = per * (self.target - current)
        line = f"{self._bar(current)} {_fmt_duration(eta)} {_fmt_step(per)}"
        line += format_logs(logs or {})
        pad = " " * max(0, self._prev_width - len(line))
        self._prev_width = len(line)
        self.file.write("\r" + line + pad)
        self.file.flush()

    def _final(self, current, logs):
        elapsed = time.perf_counter() - self._start
        per = elapsed / max(current, 1)
        if self.verbose == 1:
            line = f"{self._bar(current)} {elapsed:.0f}s {_fmt_step(per)}"
        else:
            line = f"{current}/{self.target} - {elapsed:.0f}s - {_fmt_step(per)}"
        line += format_logs(logs or {})
        pad = " " * max(0, self._prev_width - len(line))
        prefix = "\r" if (self.verbose == 1 and self._dynamic) else ""
        self.file.write(prefix + line + pad + "\n")
        self.file.flush()
