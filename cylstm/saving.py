"""Safe model files: NumPy arrays plus a JSON config in one ``.npz``.

Layout of a file written by :func:`save_model`:

``__cylstm__``
    uint8 array holding UTF-8 JSON: ``{"format": "cylstm.model", "version": 1,
    "model": <Sequential.get_config()>, "compile": {...} or null,
    "n_weights": N, "weight_names": [...], "optimizer_state": [keys]}``
``weight_00000`` ... ``weight_{N-1}``
    the weights in ``model.get_weights()`` order
``optimizer/<key>``
    ``optimizer.get_state()`` (slots and iterations), so training resumes

Files are read with ``np.load(allow_pickle=False)`` and configs may only
name cylstm's own classes, so loading an untrusted file never runs code.
:func:`model_to_bytes` / :func:`model_from_bytes` are the same format in memory:
``pickle`` and ``copy.deepcopy`` of a model go through them.
Writes go to a temporary file in the same directory that is then renamed
over the target (``os.replace``), so a crash mid-save leaves the previous
file intact.
"""
import io
import json
import math
import os
import zipfile
import zlib

import numpy as np

from cylstm import losses, optimizers
from cylstm._files import atomic_write

__all__ = ["load_model", "load_weights", "model_from_bytes", "model_to_bytes", "save_model",
           "save_weights"]

try:
    from lzma import LZMAError
except ImportError:  # a Python built without lzma cannot open such entries at all
    LZMAError = OSError

# What reading a damaged zip archive can raise besides BadZipFile (a bit flip in a
# header may turn a stored entry into an "encrypted", "deflated" or "lzma" one).
CORRUPT_ARCHIVE_ERRORS = (zipfile.BadZipFile, OSError, EOFError, NotImplementedError,
                          RuntimeError, zlib.error, LZMAError)

_META = "__cylstm__"
_VERSION = 1


def _encode(meta):
    return np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)


def _atomic_savez(filepath, arrays, overwrite):
    path = os.fspath(filepath)
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{path} exists and overwrite=False")
    atomic_write(path, lambda f: np.savez(f, **arrays))


# A hostile file must not make the loader allocate without bound: entries may not
# declare more than this multiple of the file's size uncompressed (cylstm writes them
# stored, ratio 1), and no array header may claim more bytes than its entry holds.
_MAX_EXPANSION = 16


def _check_archive(path, size=None):
    """Refuse zip bombs and array headers larger than their data, before np.load.

    ``path`` is a file name, or a seekable binary file of ``size`` bytes.
    """
    if not zipfile.is_zipfile(path):
        raise ValueError("not an .npz (zip) archive")
    if size is None:
        size = os.path.getsize(path)
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        declared = sum(i.file_size for i in infos)
        if declared > _MAX_EXPANSION * size + 2**20:
            raise ValueError(f"its entries declare {declared} bytes uncompressed in a "
                             f"{size}-byte file (a zip bomb?)")
        for info in infos:
            if not info.filename.endswith(".npy"):
                continue
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            need = math.prod(shape) * dtype.itemsize
            if need > info.file_size:
                raise ValueError(f"entry {info.filename!r} claims shape {shape} ({need} bytes) "
                                 f"but holds {info.file_size} bytes")


def _read(filepath):
    """(meta dict, {name: array}) of a cylstm file; ValueError if it is not one."""
    path = os.fspath(filepath)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    return _read_archive(path, None, repr(path))


def _read_archive(src, size, label):
    """:func:`_read` of a file name (``size`` None) or a binary file of ``size`` bytes."""
    path = label  # how the messages name the source
    try:
        _check_archive(src, size)
        if size is not None:
            src.seek(0)
        with np.load(src, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise ValueError("not an .npz archive")
            if _META not in z.files:
                raise ValueError(f"no {_META!r} entry")
            raw = z[_META]
            if raw.dtype != np.uint8 or raw.ndim != 1:
                raise ValueError(f"{_META!r} entry is not a uint8 byte array")
            meta = json.loads(raw.tobytes().decode("utf-8"))
            arrays = {k: z[k] for k in z.files if k != _META}
    except FileNotFoundError:
        raise
    except (ValueError, KeyError, UnicodeDecodeError, AttributeError, RecursionError,
            *CORRUPT_ARCHIVE_ERRORS) as e:
        hint = _foreign_hint(src) if size is None else ""
        raise ValueError(f"{path} is not a valid cylstm file (corrupt or another format): "
                         f"{type(e).__name__}: {e}{hint}") from e
    if not isinstance(meta, dict) or not str(meta.get("format", "")).startswith("cylstm."):
        raise ValueError(f"{path} is not a cylstm file (unknown format "
                         f"{meta.get('format') if isinstance(meta, dict) else meta!r})")
    if not isinstance(meta.get("version", 0), int) or meta.get("version", 0) > _VERSION:
        raise ValueError(f"{path} was written by a newer cylstm (format version "
                         f"{meta['version']}; this one reads {_VERSION})")
    return meta, arrays


def _foreign_hint(path):
    """A pointer to the importers when the file is a Keras or ONNX model."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
        if head.startswith(b"\x89HDF"):
            kind = "a Keras HDF5 file"
        elif head.startswith(b"PK") and "config.json" in zipfile.ZipFile(path).namelist():
            kind = "a Keras .keras file"
        else:
            return ""
    except Exception:  # noqa: BLE001 - only a hint: a corrupt file may fail any way
        return ""
    return f" (it looks like {kind}: import it with cylstm.interop.from_keras)"


def _weight_names(model):
    return [f"{o.name}/{n}" for o, n in model._param_items()]


def _weights_list(meta, arrays, path):
    try:
        n = int(meta["n_weights"])
        return [arrays[f"weight_{i:05d}"] for i in range(n)]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path} is corrupt: missing weight arrays ({e})") from e


def _compile_config(model):
    return model._compile_config()


def _model_arrays(model, include_optimizer):
    """The entries of a model file: weights, optimizer state and the JSON meta."""
    ws = model.get_weights() if model.built else []
    arrays = {f"weight_{i:05d}": w for i, w in enumerate(ws)}
    comp = _compile_config(model)
    state_keys = []
    if comp is not None and include_optimizer:
        for k, v in model.optimizer.get_state().items():
            arrays["optimizer/" + k] = np.asarray(v)
            state_keys.append(k)
    meta = {"format": "cylstm.model", "version": _VERSION,
            "class_name": getattr(model, "_config_class", "Sequential"),
            "model": model.get_config(),
            "compile": comp, "n_weights": len(ws),
            "weight_names": _weight_names(model) if model.built else [],
            "optimizer_state": state_keys}
    arrays[_META] = _encode(meta)
    return arrays


def save_model(model, filepath, overwrite=True, include_optimizer=True):
    """Write ``model`` (architecture, weights, compile settings, optimizer state).

    Parameters
    ----------
    model : cylstm.models.Sequential or cylstm.Model
    filepath : str or path-like
        Written exactly as given (any extension; ``.npz`` content).
    overwrite : bool
    include_optimizer : bool
        Also save the optimizer state, so ``fit`` continues where it stopped.
    """
    model._require_built("save")
    _atomic_savez(filepath, _model_arrays(model, include_optimizer), overwrite)


def model_to_bytes(model, include_optimizer=True):
    """``model`` as the bytes of a :func:`save_model` file (nothing touches the disk).

    Unlike :func:`save_model` an unbuilt model is accepted (its config and
    compile settings travel; it has no weights yet).

    Parameters
    ----------
    model : cylstm.models.Sequential or cylstm.Model
    include_optimizer : bool
        Also keep the optimizer state (slots and iterations).

    Returns
    -------
    bytes
    """
    buf = io.BytesIO()
    np.savez(buf, **_model_arrays(model, include_optimizer))
    return buf.getvalue()


def model_from_bytes(data, compile=True):
    """The model held by bytes from :func:`model_to_bytes` (or a model file's bytes).

    As :func:`load_model`, only cylstm's own classes are built and no pickle is
    ever read, so untrusted bytes cannot run code.

    Parameters
    ----------
    data : bytes, bytearray or memoryview
    compile : bool
        Restore the compile settings and the optimizer state.

    Raises
    ------
    TypeError
        ``data`` is not bytes-like.
    ValueError
        The bytes are corrupt, not a cylstm model, or name unknown classes.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes; got {type(data).__name__}")
    data = bytes(data)
    meta, arrays = _read_archive(io.BytesIO(data), len(data), "the model bytes")
    return _model_from_parts(meta, arrays, "the model bytes", compile, allow_unbuilt=True)


def _optimizer_from_config(cfg):
    cls_name = cfg.get("class_name") if isinstance(cfg, dict) else None
    cls = getattr(optimizers, cls_name, None) if isinstance(cls_name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, optimizers.Optimizer)):
        raise ValueError(f"unknown optimizer class {cls_name!r}")  # noqa: TRY004
    return cls.from_config(dict(cfg.get("config", {})))


def load_model(filepath, compile=True):
    """Read a model written by :func:`save_model`.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        The file is corrupt, not a cylstm model, or names unknown classes.
    """
    path = os.fspath(filepath)
    meta, arrays = _read(path)
    return _model_from_parts(meta, arrays, repr(path), compile)


def _model_from_parts(meta, arrays, path, compile, allow_unbuilt=False):
    """Build the model a file's meta and arrays describe; ``path`` names it in errors."""
    from cylstm.engine.model import Model  # breaks a cycle: it imports this module
    from cylstm.models import Sequential  # breaks a cycle (the same)

    if meta.get("format") != "cylstm.model":
        raise ValueError(f"{path} holds {meta.get('format')!r}, not a model; use "
                         "model.load_weights for weights files")
    kind = meta.get("class_name", "Sequential")
    if kind not in ("Sequential", "Functional"):
        raise ValueError(f"{path} holds an unknown model class {kind!r}")
    try:
        cls = Sequential if kind == "Sequential" else Model
        model = cls.from_config(meta["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path} has an invalid model config: {e}") from e
    if model.built:
        try:
            model.set_weights(_weights_list(meta, arrays, path))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path} does not match its own config: {e}") from e
    elif not allow_unbuilt:
        raise ValueError(f"{path} holds an unbuilt model (no input shape); nothing to load")
    elif meta.get("n_weights"):
        raise ValueError(f"{path} holds {meta.get('n_weights')!r} weight arrays for an "
                         "unbuilt model")
    comp = meta.get("compile")
    if compile and comp:
        try:
            opt = _optimizer_from_config(comp["optimizer"])
            model.compile(optimizer=opt, loss=_loss_from_config(comp["loss"]),
                          loss_weights=comp.get("loss_weights"),
                          metrics=comp.get("metrics") or None)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path} has invalid compile settings: {e}") from e
        keys = meta.get("optimizer_state") or []
        if keys:
            try:
                state = {k: arrays["optimizer/" + k] for k in keys}
                model.optimizer.set_state(state)
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{path} has an invalid optimizer state: {e}") from e
    return model


def _loss_from_config(loss):
    """A saved loss: a name, a serialized loss, or a dict of those by output name."""
    if isinstance(loss, dict) and "class_name" in loss:
        return losses.deserialize(loss)
    if isinstance(loss, dict):
        return {k: losses.deserialize(v) if isinstance(v, dict) else v for k, v in loss.items()}
    return loss


def save_weights(model, filepath, overwrite=True):
    """Write only the weights (with their names and shapes, for checking on load)."""
    model._require_built("save_weights")
    ws = model.get_weights()
    arrays = {f"weight_{i:05d}": w for i, w in enumerate(ws)}
    meta = {"format": "cylstm.weights", "version": _VERSION, "n_weights": len(ws),
            "weight_names": _weight_names(model),
            "shapes": [list(w.shape) for w in ws]}
    arrays[_META] = _encode(meta)
    _atomic_savez(filepath, arrays, overwrite)


def load_weights(model, filepath):
    """Set ``model``'s weights from a file of :func:`save_weights` or :func:`save_model`."""
    path = os.fspath(filepath)
    meta, arrays = _read(path)
    ws = _weights_list(meta, arrays, repr(path))
    model._require_built("load_weights")
    n_model = len(model._param_items())
    if len(ws) != n_model:
        raise ValueError(f"{path!r} holds {len(ws)} weight arrays; model {model.name!r} has "
                         f"{n_model}")
    model.set_weights(ws)
