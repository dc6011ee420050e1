"""Import Keras ``Sequential`` models: live objects, ``.keras`` archives, ``.weights.h5`` files.

Keras and cylstm share the weight layout (kernel (I, 4H), recurrent_kernel (H, 4H), bias
(4H,), gates i, f, c, o), so import is a matter of reading the architecture and the
arrays.  Files are read with :mod:`zipfile`, :mod:`json` and ``h5py`` only: neither Keras
nor TensorFlow is needed, and nothing in the file is ever executed.

A Keras 3 weights file stores each layer's variables under a key made from its class name
(``lstm``, ``lstm_1``, ``bidirectional``, ``dense``...), in the order of ``model.layers``:

    layers/lstm/cell/vars/{0,1,2}                       kernel, recurrent_kernel, bias
    layers/bidirectional/forward_layer/cell/vars/{...}  then backward_layer/cell/vars/...
    layers/dense/vars/{0,1}                             kernel, bias
"""
from __future__ import annotations

import io
import json
import os
import re
import zipfile
from typing import TYPE_CHECKING, Any

import numpy as np

from cylstm.interop._spec import (
    DENSE_ACTIVATIONS,
    BidirectionalSpec,
    DenseSpec,
    DropoutSpec,
    EmbeddingSpec,
    LSTMSpec,
    MaskingSpec,
    ModelSpec,
    build_sequential,
)
from cylstm.saving import CORRUPT_ARCHIVE_ERRORS

if TYPE_CHECKING:  # annotations only
    from cylstm.models import Sequential

__all__ = ["from_keras"]

_MAX_CONFIG_BYTES = 64 << 20       # a Sequential config is kilobytes; refuse zip bombs
_MAX_WEIGHTS_BYTES = 8 << 30
_ACT_ALIASES = {None: "linear", "linear": "linear", "relu": "relu", "tanh": "tanh",
                "sigmoid": "sigmoid", "softmax": "softmax"}


def _snake(name):
    # Keras's own rule for the keys of a weights file (keras.src.utils.naming.to_snake_case)
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()


def _dtype_name(cfg):
    d = cfg.get("dtype")
    if isinstance(d, dict):
        d = (d.get("config") or {}).get("name")
    return d if isinstance(d, str) else None


def _mixed(cfg):
    """"mixed_bfloat16" when a layer config has that policy (the imported layer keeps it:
    float32 variables, bf16 products, cylstm.mixed_precision), else None."""
    return "mixed_bfloat16" if _dtype_name(cfg) == "mixed_bfloat16" else None


def _act_name(value):
    """The name of an activation given as a string or a serialized object."""
    if isinstance(value, dict):  # {'class_name': ..., 'config': {'name': ...}}
        inner = value.get("config")
        got = inner.get("name") if isinstance(inner, dict) else None
        return got if got is not None else value.get("class_name")
    return value


def _activation(where, value, allowed):
    value = _act_name(value)
    name = _ACT_ALIASES.get(value, value)
    if name not in allowed:
        raise ValueError(f"{where}: activation {value!r} is not supported (supported: "
                         f"{list(allowed)})")
    return name


# --------------------------------------------------------------------------- config

def _layers_config(config):
    """The list of layer configs of a Keras Sequential config, in any of its spellings."""
    if isinstance(config, str):
        config = json.loads(config)
    if not isinstance(config, dict):
        raise TypeError(f"a Keras model config must be a dict; got {type(config).__name__}")
    if "class_name" in config:
        if config["class_name"] != "Sequential":
            raise ValueError(f"only Keras Sequential models are supported; got "
                             f"{config['class_name']!r}")
        config = config.get("config", {})
    layers = config.get("layers") if isinstance(config, dict) else None
    if not isinstance(layers, list):
        raise ValueError(  # noqa: TRY004 - a malformed file, not a wrong argument type
            "the Keras config has no 'layers' list (is it a Sequential config?)")
    return layers


def _lstm_options(where, cfg):
    for k, default in (("activation", "tanh"), ("recurrent_activation", "sigmoid")):
        got = _act_name(cfg.get(k, default))
        if got != default:
            raise ValueError(f"{where}: {k}={got!r} is not supported (cylstm's LSTM computes "
                             f"{k}={default!r})")
    if cfg.get("return_state"):
        raise ValueError(f"{where}: return_state=True cannot be part of a Sequential model")
    if cfg.get("time_major"):
        raise ValueError(f"{where}: time_major=True is not supported")
    opts = {}
    for k in ("dropout", "recurrent_dropout"):
        if cfg.get(k):
            opts[k] = float(cfg[k])
    if cfg.get("stateful"):
        opts["stateful"] = True
    if cfg.get("zero_output_for_mask"):
        opts["zero_output_for_mask"] = True
    return opts


class _Plan:
    """One Keras layer: what it becomes and which weight arrays it needs, with shapes."""

    def __init__(self, kind, key, cfg, where):
        self.kind, self.key, self.cfg, self.where = kind, key, cfg, where


def _plan(layer_cfgs):
    """Check every layer and compute the weights-file key of each, in order."""
    plans, used = [], {}
    input_dim, dtype = None, None
    for i, entry in enumerate(layer_cfgs):
        if not isinstance(entry, dict) or "class_name" not in entry:
            raise ValueError(f"layer {i}: malformed config entry {entry!r:.80}")
        cls = entry["class_name"]
        cfg = entry.get("config") or {}
        if not isinstance(cfg, dict):
            raise ValueError(f"layer {i} ({cls}): malformed config")  # noqa: TRY004 - file
        where = f"layer {i} ({cls} {cfg.get('name', '?')!r})"
        dtype = dtype or _dtype_name(cfg)
        shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
        if shape and input_dim is None:
            if not isinstance(shape, (list, tuple)) or len(shape) not in (2, 3) or (
                    len(shape) == 3 and not isinstance(shape[-1], int)):
                raise ValueError(f"{where}: input shape {shape} is not (batch, time, features) "
                                 "or (batch, time) token ids")
            if len(shape) == 3:
                input_dim = shape[-1]
        if cls == "InputLayer":
            continue
        base = _snake(cls)
        if base in used:
            used[base] += 1
            key = f"{base}_{used[base]}"
        else:
            used[base] = 0
            key = base
        if cls not in ("LSTM", "Bidirectional", "Dense", "Masking", "Dropout", "Embedding"):
            raise ValueError(f"{where}: layer class {cls!r} is not supported (supported: "
                             "InputLayer, LSTM, Bidirectional(LSTM), Dense, Masking, Dropout, "
                             "and a first Embedding)")
        if cls == "Embedding":
            if plans:
                raise ValueError(f"{where}: an Embedding is supported as the first layer only")
            if cfg.get("lora_rank"):
                raise ValueError(f"{where}: lora_rank={cfg['lora_rank']} is not supported")
        elif cls == "LSTM":
            _lstm_options(where, cfg)
        elif cls == "Bidirectional":
            for part in ("layer", "backward_layer"):
                sub = cfg.get(part)
                if sub is None and part == "backward_layer":
                    continue
                if not isinstance(sub, dict) or sub.get("class_name") != "LSTM":
                    got = sub.get("class_name") if isinstance(sub, dict) else sub
                    raise ValueError(f"{where}: Bidirectional wraps {got!r}; only LSTM is "
                                     "supported")
                _lstm_options(where, sub.get("config") or {})
            if cfg.get("merge_mode", "concat") not in ("concat", "sum", "mul", "ave"):
                raise ValueError(f"{where}: merge_mode={cfg.get('merge_mode')!r} is not "
                                 "supported in a Sequential model")
        elif cls == "Dense":
            _activation(where, cfg.get("activation"), DENSE_ACTIVATIONS)
        plans.append(_Plan(cls, key, cfg, where))
    if not plans:
        raise ValueError("the Keras model has no layers")
    return plans, input_dim, dtype


def _build_spec(plans, input_dim, dtype, weights_of):
    """Turn plans into specs; ``weights_of(plan, part, n)`` returns the plan's arrays."""
    specs = []
    feat = input_dim
    for p in plans:
        cfg = p.cfg
        if p.kind == "LSTM":
            spec = _lstm_spec(p, cfg, weights_of(p, None, 3 if cfg.get("use_bias", True)
                                                  else 2), feat)
            feat = spec.units
        elif p.kind == "Bidirectional":
            fcfg = cfg["layer"].get("config") or {}
            bsub = cfg.get("backward_layer")
            if bsub is None:
                bcfg = dict(fcfg, go_backwards=not fcfg.get("go_backwards", False))
            else:
                bcfg = bsub.get("config") or {}
            fw = _lstm_spec(p, fcfg, weights_of(p, "forward_layer",
                                                3 if fcfg.get("use_bias", True) else 2), feat)
            bw = _lstm_spec(p, bcfg, weights_of(p, "backward_layer",
                                                3 if bcfg.get("use_bias", True) else 2), feat)
            if fw.go_backwards == bw.go_backwards:
                raise ValueError(f"{p.where}: forward and backward layers both have "
                                 f"go_backwards={fw.go_backwards}")
            mode = cfg.get("merge_mode", "concat")
            spec = BidirectionalSpec(fw, bw, mode)
            feat = fw.units + bw.units if mode == "concat" else fw.units
        elif p.kind == "Dense":
            use_bias = cfg.get("use_bias", True)
            w = weights_of(p, None, 2 if use_bias else 1)
            k = w[0]
            if k.ndim != 2 or (feat is not None and k.shape[0] != feat) or (
                    "units" in cfg and k.shape[1] != cfg["units"]):
                raise ValueError(f"{p.where}: kernel has shape {k.shape}; expected "
                                 f"({feat}, {cfg.get('units')})")
            b = w[1] if use_bias else None
            if b is not None and b.shape != (k.shape[1],):
                raise ValueError(f"{p.where}: bias has shape {b.shape}; expected "
                                 f"({k.shape[1]},)")
            spec = DenseSpec(k, b, _activation(p.where, cfg.get("activation"),
                                               DENSE_ACTIVATIONS), dtype_policy=_mixed(cfg))
            feat = k.shape[1]
        elif p.kind == "Embedding":
            (table,) = weights_of(p, None, 1)
            want = (cfg.get("input_dim"), cfg.get("output_dim"))
            if table.ndim != 2 or any(w is not None and w != g for w, g in
                                      zip(want, table.shape)):
                raise ValueError(f"{p.where}: embeddings have shape {table.shape}; expected "
                                 f"{want}")
            spec = EmbeddingSpec(table, bool(cfg.get("mask_zero", False)))
            feat = table.shape[1]
        elif p.kind == "Masking":
            spec = MaskingSpec(float(cfg.get("mask_value", 0.0)))
        else:
            spec = DropoutSpec(float(cfg.get("rate", 0.0)))
        specs.append(spec)
    first = next((s for s in specs if isinstance(s, (LSTMSpec, BidirectionalSpec, DenseSpec))),
                 None)
    if isinstance(specs[0], EmbeddingSpec):
        input_dim = None  # token ids: no feature axis
    elif input_dim is None:
        if first is None:
            raise ValueError("the Keras model's input shape is unknown")
        input_dim = first.input_dim
    np_dtype = np.float64 if dtype == "float64" else np.float32
    return ModelSpec(specs, input_dim, np_dtype)


def _lstm_spec(p, cfg, w, feat):
    H = cfg.get("units")
    kernel, rk = w[0], w[1]
    if rk.ndim != 2 or rk.shape[1] != 4 * rk.shape[0] or (H is not None and rk.shape[0] != H):
        raise ValueError(f"{p.where}: recurrent_kernel has shape {rk.shape}; expected "
                         f"({H}, {None if H is None else 4 * H})")
    H = rk.shape[0]
    if kernel.ndim != 2 or kernel.shape[1] != 4 * H or (feat is not None
                                                        and kernel.shape[0] != feat):
        raise ValueError(f"{p.where}: kernel has shape {kernel.shape}; expected "
                         f"({feat}, {4 * H})")
    bias = w[2] if len(w) > 2 else None
    if bias is not None and bias.shape != (4 * H,):
        raise ValueError(f"{p.where}: bias has shape {bias.shape}; expected ({4 * H},)")
    return LSTMSpec(kernel, rk, bias, return_sequences=bool(cfg.get("return_sequences", False)),
                    go_backwards=bool(cfg.get("go_backwards", False)),
                    options=_lstm_options(p.where, cfg), dtype_policy=_mixed(cfg))


# --------------------------------------------------------------------------- weights

def _h5_reader(f, source):
    """``weights_of`` over an open Keras 3 weights file, checking every object it touches."""
    import h5py  # defers import cost: h5py is optional

    def get(path):
        node = f
        for part in path.split("/"):
            link = node.get(part, getlink=True) if isinstance(node, h5py.Group) else None
            if link is None:
                raise ValueError(f"{source}: missing {path!r} in the weights file (is it a "
                                 "Keras 3 weights file of this architecture?)")
            if not isinstance(link, h5py.HardLink):
                kind = type(link).__name__
                raise ValueError(  # noqa: TRY004 - the file's content, not an argument's type
                    f"{source}: {path!r} is a {kind}; only plain groups and datasets are read")
            node = node[part]
        return node

    def read(path):
        ds = get(path)
        if not isinstance(ds, h5py.Dataset):
            raise ValueError(f"{source}: {path!r} is not a dataset")  # noqa: TRY004
        if ds.external or ds.is_virtual:
            raise ValueError(f"{source}: dataset {path!r} refers to data outside the file")
        if ds.dtype.kind != "f" or ds.ndim not in (1, 2):
            raise ValueError(f"{source}: dataset {path!r} has dtype {ds.dtype} and shape "
                             f"{ds.shape}; expected a 1-D or 2-D float array")
        if ds.size * ds.dtype.itemsize > _MAX_WEIGHTS_BYTES:
            raise ValueError(f"{source}: dataset {path!r} is implausibly large ({ds.shape})")
        try:
            a = ds[()]
        except Exception as e:
            raise ValueError(f"{source}: cannot read dataset {path!r}: {e}") from e
        return np.asarray(a, np.float64 if a.dtype == np.float64 else np.float32)

    def weights_of(plan, part, n):
        base = f"layers/{plan.key}"
        if plan.kind in ("LSTM", "Bidirectional"):
            base += (f"/{part}" if part else "") + "/cell"
        grp = get(base + "/vars")
        names = sorted(grp.keys(), key=lambda s: int(s) if s.isdigit() else -1)
        if names != [str(k) for k in range(n)]:
            raise ValueError(f"{source}: {plan.where} expects {n} weight arrays at "
                             f"{base}/vars; found {names}")
        return [read(f"{base}/vars/{k}") for k in range(n)]

    return weights_of


def _open_h5(data_or_path, source):
    try:
        import h5py  # defers import cost: h5py is optional
    except ImportError as e:  # pragma: no cover - exercised only without h5py
        raise ImportError("reading Keras files needs h5py (pip install h5py)") from e
    try:
        return h5py.File(data_or_path, "r")
    except Exception as e:
        raise ValueError(f"{source}: not a readable HDF5 weights file ({e})") from e


def _spec_from_h5(f, layer_cfgs, source):
    plans, input_dim, dtype = _plan(layer_cfgs)
    try:
        if "model_config" in f.attrs or "model_weights" in f:
            raise ValueError(f"{source}: this is a legacy (Keras 2) HDF5 file; re-save the "
                             "model as .keras with Keras 3")
        return _build_spec(plans, input_dim, dtype, _h5_reader(f, source))
    except (OSError, RuntimeError, KeyError) as e:
        # HDF5's own checks on a damaged file (bad addresses, B-trees, dataspaces)
        raise ValueError(f"{source}: corrupt weights file ({type(e).__name__}: {e})") from e


def _read_keras_archive(path):
    try:
        z = zipfile.ZipFile(path)
    except CORRUPT_ARCHIVE_ERRORS as e:
        raise ValueError(f"{path!r} is not a readable .keras archive ({e})") from e
    with z:
        infos = {i.filename: i for i in z.infolist()}
        for need in ("config.json", "model.weights.h5"):
            if need not in infos:
                raise ValueError(f"{path!r}: the .keras archive has no {need!r} (found "
                                 f"{sorted(infos)[:10]})")
        if infos["config.json"].file_size > _MAX_CONFIG_BYTES:
            raise ValueError(f"{path!r}: config.json is implausibly large")
        if infos["model.weights.h5"].file_size > _MAX_WEIGHTS_BYTES:
            raise ValueError(f"{path!r}: model.weights.h5 is implausibly large")
        try:
            config = json.loads(z.read("config.json").decode("utf-8"))
            weights = z.read("model.weights.h5")
        except (ValueError, UnicodeDecodeError, RecursionError, *CORRUPT_ARCHIVE_ERRORS) as e:
            raise ValueError(f"{path!r}: corrupt .keras archive ({e})") from e
    return config, weights


def _config_from(config):
    """Layer configs from a dict / JSON text / .keras or .json path / cylstm Sequential."""
    if hasattr(config, "layers") and hasattr(config, "get_weights") and \
            type(config).__module__.startswith("cylstm"):
        from cylstm.layers import serialize  # defers import cost: the layers

        layers = []
        shape = config.input_shape
        if shape is not None:
            layers.append({"class_name": "InputLayer",
                           "config": {"batch_shape": list(shape)}})
        for lay in config.layers:
            layers.append(serialize(lay))
        return layers
    if isinstance(config, (str, os.PathLike)) and os.path.isfile(config):
        p = os.fspath(config)
        if p.endswith(".keras"):
            return _layers_config(_read_keras_archive(p)[0])
        if os.path.getsize(p) > _MAX_CONFIG_BYTES:
            raise ValueError(f"{p!r} is implausibly large for a model config")
        with open(p, encoding="utf-8") as fh:
            try:
                return _layers_config(json.load(fh))
            except json.JSONDecodeError as e:
                raise ValueError(f"{p!r} is not a JSON model config ({e})") from e
    if isinstance(config, str):
        try:
            return _layers_config(json.loads(config))
        except json.JSONDecodeError as e:
            raise ValueError("config is neither a file nor JSON text") from e
    return _layers_config(config)


def _live_spec(model):
    cfg = model.get_config()
    layer_cfgs = _layers_config(cfg)
    plans, input_dim, dtype = _plan(layer_cfgs)
    live = [lay for lay in model.layers if type(lay).__name__ != "InputLayer"]
    if len(live) != len(plans):
        raise ValueError(f"the Keras model has {len(live)} layers but its config lists "
                         f"{len(plans)}")
    by_plan = dict(zip(map(id, plans), live))
    if input_dim is None:
        try:
            shape = model.input_shape
            input_dim = shape[-1] if isinstance(shape, tuple) else None
        except (AttributeError, ValueError):
            input_dim = None

    def weights_of(plan, part, n):
        lay = by_plan[id(plan)]
        if part is not None:
            lay = getattr(lay, part)
        w = [np.asarray(a) for a in lay.get_weights()]
        if len(w) != n:
            raise ValueError(f"{plan.where}: expected {n} weight arrays; the layer has {len(w)}"
                             " (is the model built?)")
        return [np.asarray(a, np.float64 if a.dtype == np.float64 else np.float32) for a in w]

    return _build_spec(plans, input_dim, dtype, weights_of)


def keras_to_spec(model_or_path, config=None):
    """The :class:`ModelSpec` :func:`from_keras` would build."""
    try:
        return _keras_to_spec(model_or_path, config)
    except (AttributeError, KeyError, IndexError) as e:
        # a config entry of the wrong type or shape somewhere deep in the JSON
        raise ValueError(f"malformed Keras model config ({type(e).__name__}: {e})") from e


def _keras_to_spec(model_or_path, config):
    obj = model_or_path
    if isinstance(obj, (str, bytes, os.PathLike)):
        path = os.fsdecode(os.fspath(obj))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no Keras file at {path!r}")
        if path.endswith(".keras") or (zipfile.is_zipfile(path) and not path.endswith(".h5")):
            if config is not None:
                raise ValueError("a .keras archive carries its own config; do not pass config=")
            cfg, weights = _read_keras_archive(path)
            layer_cfgs = _layers_config(cfg)
            with _open_h5(io.BytesIO(weights), path) as f:
                return _spec_from_h5(f, layer_cfgs, path)
        if path.endswith((".h5", ".hdf5")):
            if config is None:
                with _open_h5(path, path) as f:
                    if "model_config" in f.attrs or "model_weights" in f:
                        raise ValueError(f"{path!r} is a legacy (Keras 2) HDF5 model; re-save "
                                         "it as .keras with Keras 3")
                raise ValueError(f"{path!r} holds weights only: pass the architecture as "
                                 "config= (a Keras model config dict or JSON, a .keras or "
                                 ".json file, or a cylstm Sequential of the same layers)")
            layer_cfgs = _config_from(config)
            with _open_h5(path, path) as f:
                return _spec_from_h5(f, layer_cfgs, path)
        raise ValueError(f"{path!r}: expected a .keras archive or a .weights.h5 file")
    if hasattr(obj, "get_config") and hasattr(obj, "layers") and \
            type(obj).__module__.split(".")[0] == "keras":
        if type(obj).__name__ != "Sequential":
            raise ValueError(f"only Keras Sequential models are supported; got "
                             f"{type(obj).__name__}")
        return _live_spec(obj)
    raise TypeError(f"from_keras expects a Keras Sequential model or a path to a .keras / "
                    f".weights.h5 file; got {type(obj).__name__}")


def from_keras(model_or_path: Any, *, config: Any = None,
               name: str | None = None) -> Sequential:
    """Build a cylstm ``Sequential`` from a Keras ``Sequential``.

    Supported layers: ``InputLayer``, ``LSTM``, ``Bidirectional(LSTM)`` (merge modes concat,
    sum, mul, ave), ``Dense`` (linear, relu, tanh, sigmoid, softmax), ``Masking``,
    ``Dropout``, and ``Embedding`` as the first layer (``mask_zero`` included).

    Parameters
    ----------
    model_or_path : keras.Sequential, str or os.PathLike
        A live Keras 3 model; a ``.keras`` archive (architecture and weights); or a
        Keras 3 ``.weights.h5`` file, which holds weights only and so needs ``config``.
        Files are read with ``zipfile``/``json``/``h5py``: Keras and TensorFlow are not
        needed, and nothing in the file is executed.
    config : optional, only for a ``.weights.h5`` file
        The architecture: a Keras model config (``model.get_config()``, or the JSON of
        ``model.to_json()`` as a dict or string), a path to a ``.keras`` archive or a
        ``.json`` file holding such a config, or a cylstm ``Sequential`` with the same
        layers (its weights are not touched; a new model is returned).
    name : str, optional
        Name of the returned model.

    Returns
    -------
    cylstm.models.Sequential
        Same layers and weights; ``predict`` gives what Keras's ``predict`` gives.
        LSTM ``dropout`` / ``recurrent_dropout`` / ``stateful`` settings are kept (they
        matter only when training or carrying state).

    Raises
    ------
    ValueError
        For a layer class other than InputLayer, LSTM, Bidirectional(LSTM), Dense, Masking,
        Dropout and a first Embedding, an activation other than the LSTM's tanh/sigmoid or
        Dense's linear, relu, tanh, sigmoid, softmax (the message names the layer and the
        value), weights
        that do not fit the architecture, and corrupt or hostile files (external links,
        external datasets, implausible sizes).
    """
    return build_sequential(keras_to_spec(model_or_path, config), name=name)
