"""``python -m cylstm.tune [--shapes T,B,I,H ...] [--threads N]``: measure the forward
paths on this machine and store the fastest (see :func:`cylstm._tuning.tune`).

``cylstm.tune(...)`` is the same function; importing this module keeps it callable.
"""
import argparse
import sys
import types

from cylstm._tuning import cache_path
from cylstm._tuning import tune as _tune


def _shape(text):
    try:
        parts = tuple(int(v) for v in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 4 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"a shape is T,B,I,H (four positive ints); got {text!r}")
    return parts


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m cylstm.tune", description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", nargs="+", type=_shape, metavar="T,B,I,H",
                    help="shapes to measure (default: a few of each path's regime)")
    ap.add_argument("--threads", type=int, default=None, help="threads (default: cylstm's)")
    ap.add_argument("--no-probe", action="store_true", help="skip the cache bandwidth probe")
    args = ap.parse_args(argv)
    results = _tune(args.shapes, args.threads, probe=not args.no_probe, verbose=True)
    if results:
        print(f"stored in {cache_path()}")
    return 0


class _CallableModule(types.ModuleType):
    """``import cylstm.tune`` binds the module as ``cylstm.tune``; keep it callable."""

    def __call__(self, *args, **kwargs):
        return _tune(*args, **kwargs)


if __name__ == "__main__":
    sys.exit(main())
else:
    sys.modules[__name__].__class__ = _CallableModule
