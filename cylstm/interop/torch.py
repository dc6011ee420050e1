"""Import PyTorch ``nn.LSTM`` / ``nn.LSTMCell`` modules or their state dicts.

PyTorch and cylstm use the same gate order (PyTorch's i, f, g, o is Keras's i, f, c, o),
so the conversion is a transpose and a bias sum per direction and layer:

    kernel           = weight_ih.T      (input, 4H)
    recurrent_kernel = weight_hh.T      (H, 4H)
    bias             = bias_ih + bias_hh

PyTorch itself is only needed when a module or tensors are passed: a state dict of NumPy
arrays is converted without importing torch.
"""
from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

from cylstm.interop._spec import BidirectionalSpec, LSTMSpec, ModelSpec, build_sequential

if TYPE_CHECKING:  # annotations only
    from cylstm.models import Sequential

__all__ = ["from_torch", "torch_state_dict_to_spec"]

_LSTM_KEY = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?$")
_CELL_KEYS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def _is_torch_tensor(v):
    # Checked by module name so that NumPy input never imports torch.
    return type(v).__module__.split(".")[0] == "torch" and hasattr(v, "detach")


def _to_numpy(key, v):
    if _is_torch_tensor(v):
        v = v.detach()
        if v.is_floating_point() and v.dtype not in (_torch().float32, _torch().float64):
            v = v.float()  # float16 / bfloat16 have no NumPy (or cylstm) kernel
        v = v.cpu().numpy()
    try:
        a = np.asarray(v)
    except Exception as e:
        raise TypeError(f"state_dict[{key!r}] must be a tensor or array; got "
                        f"{type(v).__name__}") from e
    if a.dtype.kind not in "fiu":
        raise TypeError(f"state_dict[{key!r}] must be a real numeric array; got dtype {a.dtype}")
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise ValueError(f"state_dict[{key!r}] holds NaN or infinite values")
    return a


def _torch():
    import torch  # defers import cost: torch is optional

    return torch


def _strip_prefix(keys):
    """The dotted prefix all keys share (``"lstm."`` for a parent module's state dict)."""
    keys = list(keys)
    if not keys or not all("." in k for k in keys):
        return ""
    prefixes = {k.rsplit(".", 1)[0] + "." for k in keys}
    return prefixes.pop() if len(prefixes) == 1 else ""


def _dtype_of(arrays):
    if any(a.dtype == np.float64 for a in arrays):
        return np.float64
    return np.float32


def _cell_spec(sd):
    for k in ("weight_ih", "weight_hh"):
        if k not in sd:
            raise ValueError(f"LSTMCell state_dict is missing key {k!r}; got keys "
                             f"{sorted(sd)}")
    w_ih, w_hh = sd["weight_ih"], sd["weight_hh"]
    if w_hh.ndim != 2 or w_hh.shape[0] != 4 * w_hh.shape[1] or w_hh.shape[1] == 0:
        raise ValueError(f"state_dict['weight_hh'] must have shape (4*hidden, hidden); got "
                         f"{w_hh.shape}")
    H = w_hh.shape[1]
    if w_ih.ndim != 2 or w_ih.shape[0] != 4 * H or w_ih.shape[1] == 0:
        raise ValueError(f"state_dict['weight_ih'] must have shape ({4 * H}, input_size); got "
                         f"{w_ih.shape}")
    bias = _bias(sd, "bias_ih", "bias_hh", H)
    spec = LSTMSpec(w_ih.T.copy(), w_hh.T.copy(), bias, return_sequences=True)
    return ModelSpec([spec], w_ih.shape[1], _dtype_of(sd.values()))


def _bias(sd, k_ih, k_hh, H):
    have = [k in sd for k in (k_ih, k_hh)]
    if not any(have):
        return None
    if not all(have):
        missing = k_hh if have[0] else k_ih
        raise ValueError(f"state_dict is missing key {missing!r} (it has "
                         f"{k_ih if have[0] else k_hh!r}; biases come in pairs)")
    for k in (k_ih, k_hh):
        if sd[k].shape != (4 * H,):
            raise ValueError(f"state_dict[{k!r}] must have shape ({4 * H},); got "
                             f"{sd[k].shape}")
    return sd[k_ih].astype(np.float64) + sd[k_hh]


def _lstm_spec(sd):
    parsed = {}
    for k in sd:
        m = _LSTM_KEY.match(k)
        if m is None:
            raise ValueError(f"unexpected key {k!r} in an nn.LSTM state_dict (expected "
                             "weight_ih_l<k>, weight_hh_l<k>, bias_ih_l<k>, bias_hh_l<k>, "
                             "optionally with _reverse)")
        kind, layer, rev = m.group(1), int(m.group(2)), bool(m.group(3))
        if kind == "weight_hr":
            raise ValueError(f"state_dict has {k!r}: LSTMs with projections (proj_size > 0) "
                             "are not supported by cylstm")
        parsed[(kind, layer, rev)] = k
    layers = sorted({lay for _, lay, _ in parsed})
    n_layers = layers[-1] + 1
    bidirectional = any(rev for _, _, rev in parsed)
    dirs = (False, True) if bidirectional else (False,)
    for lay in range(n_layers):
        for rev in dirs:
            for kind in ("weight_ih", "weight_hh"):
                if (kind, lay, rev) not in parsed:
                    key = f"{kind}_l{lay}{'_reverse' if rev else ''}"
                    what = f"{n_layers} layer(s)" + (", bidirectional" if bidirectional else "")
                    raise ValueError(f"state_dict is missing key {key!r} (it describes {what})")
    # Biases are all-or-none across the module (nn.LSTM(bias=...) is one flag).
    has_bias = {(lay, rev): ("bias_ih", lay, rev) in parsed or ("bias_hh", lay, rev) in parsed
                for lay in range(n_layers) for rev in dirs}
    if len(set(has_bias.values())) > 1:
        lay, rev = next(lr for lr, b in has_bias.items() if not b)
        raise ValueError(f"state_dict is missing key 'bias_ih_l{lay}{'_reverse' if rev else ''}' "
                         "(other layers have biases)")

    w_hh0 = sd["weight_hh_l0"]
    if w_hh0.ndim != 2 or w_hh0.shape[1] == 0 or w_hh0.shape[0] != 4 * w_hh0.shape[1]:
        raise ValueError(f"state_dict['weight_hh_l0'] must have shape (4*hidden, hidden); got "
                         f"{w_hh0.shape}")
    H = w_hh0.shape[1]
    D = len(dirs)
    input_dim = None
    specs = []
    for lay in range(n_layers):
        halves = []
        for rev in dirs:
            sfx = f"_l{lay}{'_reverse' if rev else ''}"
            w_ih, w_hh = sd["weight_ih" + sfx], sd["weight_hh" + sfx]
            if w_hh.shape != (4 * H, H):
                raise ValueError(f"state_dict['weight_hh{sfx}'] must have shape "
                                 f"({4 * H}, {H}); got {w_hh.shape}")
            n_in = (w_ih.shape[1] if w_ih.ndim == 2 else -1) if lay == 0 else D * H
            if lay == 0 and input_dim is None:
                input_dim = n_in
            if w_ih.shape != (4 * H, n_in) or n_in <= 0:
                expect = "input_size" if lay == 0 else str(D * H)
                raise ValueError(f"state_dict['weight_ih{sfx}'] must have shape "
                                 f"({4 * H}, {expect}); got {w_ih.shape}")
            bias = _bias(sd, "bias_ih" + sfx, "bias_hh" + sfx, H)
            halves.append(LSTMSpec(w_ih.T.copy(), w_hh.T.copy(), bias,
                                   return_sequences=True, go_backwards=rev))
        specs.append(halves[0] if D == 1 else BidirectionalSpec(*halves, merge_mode="concat"))
    return ModelSpec(specs, input_dim, _dtype_of(sd.values()))


def torch_state_dict_to_spec(state_dict):
    """Convert an ``nn.LSTM`` / ``nn.LSTMCell`` state dict into a :class:`ModelSpec`.

    The number of layers, directions and hidden size are inferred from the key names and
    shapes; anything inconsistent raises ``ValueError`` naming the offending key.
    """
    if not hasattr(state_dict, "keys") or not hasattr(state_dict, "__getitem__"):
        raise TypeError(f"expected an nn.LSTM, nn.LSTMCell or a state_dict mapping; got "
                        f"{type(state_dict).__name__}")
    keys = list(state_dict.keys())
    if not keys:
        raise ValueError("state_dict is empty")
    for k in keys:
        if not isinstance(k, str):
            raise TypeError(f"state_dict keys must be strings; got {k!r}")
    prefix = _strip_prefix(keys)
    sd = {k[len(prefix):]: _to_numpy(k, state_dict[k]) for k in keys}
    if any(k in sd for k in _CELL_KEYS) and not any(_LSTM_KEY.match(k) for k in sd):
        extra = sorted(set(sd) - set(_CELL_KEYS))
        if extra:
            raise ValueError(f"unexpected key {prefix + extra[0]!r} in an nn.LSTMCell "
                             f"state_dict (expected {list(_CELL_KEYS)})")
        return _cell_spec(sd)
    return _lstm_spec(sd)


def _module_spec(module):
    torch = sys.modules.get("torch")
    nn = torch.nn
    if isinstance(module, nn.LSTMCell):
        return torch_state_dict_to_spec(module.state_dict())
    if not isinstance(module, nn.LSTM):
        raise TypeError(f"from_torch supports nn.LSTM and nn.LSTMCell modules (or the "
                        f"state_dict() of one); got {type(module).__name__}")
    if getattr(module, "proj_size", 0):
        raise ValueError(f"nn.LSTM with proj_size={module.proj_size} (projected hidden state)"
                         " is not supported by cylstm")
    spec = torch_state_dict_to_spec(module.state_dict())
    # Cross-check what the keys implied against the module's own hyperparameters.
    n_layers = len(spec.layers)
    bi = isinstance(spec.layers[0], BidirectionalSpec)
    if (n_layers, bi, spec.input_dim) != (module.num_layers, module.bidirectional,
                                          module.input_size):
        raise ValueError(f"nn.LSTM state_dict describes {n_layers} layer(s), bidirectional="
                         f"{bi}, input_size={spec.input_dim}, but the module says "
                         f"num_layers={module.num_layers}, bidirectional="
                         f"{module.bidirectional}, input_size={module.input_size}")
    return spec


def from_torch(obj: Any, *, name: str | None = None) -> Sequential:
    """Build a cylstm ``Sequential`` equal to a PyTorch LSTM.

    Parameters
    ----------
    obj : ``torch.nn.LSTM``, ``torch.nn.LSTMCell``, or the ``state_dict()`` of either
        A state dict may hold tensors or NumPy arrays (then torch is not imported); it may
        carry a common dotted prefix (``"lstm.weight_ih_l0"``, from a parent module).
        The number of layers, the directions and the sizes are read from the keys and
        shapes.
    name : str, optional
        Name of the returned model.

    Returns
    -------
    cylstm.models.Sequential
        ``predict(x)`` takes batch-first ``x`` of shape (batch, time, input_size) whatever
        the module's ``batch_first`` was, and returns the module's first output, the full
        output sequence, batch-first: (batch, time, D * hidden_size) with D = 2 for a
        bidirectional module (forward and backward halves concatenated, as PyTorch does).
        For an ``nn.LSTMCell`` the model runs the cell over every time step from a zero
        state and returns the sequence of h.  The model is float64 when the weights are,
        float32 otherwise.

    Raises
    ------
    TypeError
        For an object that is not one of the above.
    ValueError
        For ``proj_size > 0``, missing, extra or mis-shaped state-dict keys, or non-finite
        weights.  Nothing half-converted is ever returned.

    Notes
    -----
    Layers are ``LSTM(hidden_size, return_sequences=True)``, or
    ``Bidirectional(LSTM(...), merge_mode='concat')`` for a bidirectional module, one per
    PyTorch layer.  PyTorch's inter-layer ``dropout`` only acts in training and is not
    carried over: the imported model is for inference (it can be fine-tuned, without that
    dropout).
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.nn.Module):
        spec = _module_spec(obj)
    else:
        spec = torch_state_dict_to_spec(obj)
    return build_sequential(spec, name=name)
