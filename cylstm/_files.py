"""Writing files so that a reader sees the old file or the new one, never half."""
import os
import tempfile


def atomic_write(path, write, *, binary=True, prefix=None, suffix=".tmp", fsync=True):
    """Write ``path`` through a temporary file in the same folder and ``os.replace``.

    ``write(f)`` writes the contents to the open file ``f``.  A failure (or an
    interrupt) removes the temporary file and leaves ``path`` as it was; a
    process killed mid-write leaves only the temporary file (named
    ``prefix + random + suffix``; ``prefix`` defaults to ``"." + name + "."``).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if prefix is None:
        prefix = "." + os.path.basename(path) + "."
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path
