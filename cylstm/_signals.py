"""Ctrl-C (SIGINT) during training stops at a batch boundary.

``Sequential.fit`` iterates its batches through :func:`interruptible`.  While that
loop runs in the main thread with Python's default SIGINT handler in place, a
first SIGINT only sets a flag; the loop raises ``KeyboardInterrupt`` before the
next batch starts, so the weights and the optimizer state are exactly those
after the last completed update and the model stays usable (call ``fit`` again
to continue).  This is what a Keras user sees -- ``KeyboardInterrupt`` out of
``fit`` -- minus the risk of stopping between the backward pass and the update.

A second SIGINT before the boundary raises at once (the escape hatch when one
batch takes too long), as does any SIGINT that arrives after the loop has left
its caller.  The previous handler is restored when the loop ends, however it
ends.  Off the main thread, or when the application installed its own SIGINT
handler, nothing is changed.
"""
import signal
import sys
import threading

__all__ = ["interruptible"]


def _on_stack(frame, target):
    while frame is not None:
        if frame is target:
            return True
        frame = frame.f_back
    return False


def interruptible(iterable, what="training"):
    """Yield from ``iterable``; after a SIGINT, raise KeyboardInterrupt between items."""
    current = signal.getsignal(signal.SIGINT)
    # a handler of ours left behind by a loop that ended by an exception (its generator
    # not yet collected) counts as the default handler it replaced
    previous = getattr(current, "_cylstm_previous", current)
    if (threading.current_thread() is not threading.main_thread()
            or previous is not signal.default_int_handler):
        yield from iterable
        return
    caller = sys._getframe(1)  # the loop that consumes us (fit)
    hit = []

    def handler(signum, frame):
        if hit or not _on_stack(frame, caller):
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        hit.append(True)

    handler._cylstm_previous = previous
    signal.signal(signal.SIGINT, handler)
    try:
        for i, item in enumerate(iterable):
            yield item
            if hit:
                raise KeyboardInterrupt(
                    f"{what} interrupted (SIGINT) after batch {i}; the weights and optimizer "
                    "state are those after that batch's update")
    finally:
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is handler):
            signal.signal(signal.SIGINT, previous)
