import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# Make tests/reference.py importable as `reference` wherever pytest runs from.
sys.path.insert(0, HERE)


def _source_tree_is_built():
    src = os.path.join(ROOT, "cylstm")
    return any(f.startswith("_lstm.") and f.endswith((".so", ".pyd")) for f in os.listdir(src))


# `python -m pytest` puts the repository root first on sys.path, so `import cylstm`
# would find the source tree.  After `pip install .` that tree has no compiled
# extensions: test the installed package instead.  (After an in-place build,
# `python setup.py build_ext --inplace`, the source tree is used.)
if not _source_tree_is_built():
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != ROOT]
    for name in [m for m in sys.modules if m == "cylstm" or m.startswith("cylstm.")]:
        del sys.modules[name]
