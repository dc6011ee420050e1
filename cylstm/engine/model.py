"""``Model``: weights, structure and I/O shared by functional models and ``Sequential``.

``Model(inputs, outputs)`` is Keras's functional model: the graph between
symbolic inputs (:func:`cylstm.Input`) and outputs, with any number of each
(lists or dicts), shared layers, nested models, merge layers and LSTM states as
values.  Training, evaluation and prediction come from
:class:`cylstm.engine.trainer.Trainer`.

Every trainable weight of the model lives in one flat array (each layer's
``kernel`` etc. are views into it) and every gradient in a second one, so the
optimizer updates all of them in one fused pass; a layer shared by two models
is re-pointed to the buffer of the model being trained.
"""
import threading

import numpy as np

from cylstm import _timechunk, saving
from cylstm import layers as _layers
from cylstm.engine import graph as _graph
from cylstm.engine.trainer import Trainer

__all__ = ["Model"]

_MAX_NESTING = 16


def _flatten_struct(what, obj):
    """(flat list, structure) of a tensor, list/tuple of tensors or dict of tensors."""
    if isinstance(obj, dict):
        keys = list(obj)
        if not all(isinstance(k, str) for k in keys):
            raise TypeError(f"{what} dict keys must be strings; got {keys!r}")
        return [obj[k] for k in keys], keys
    if isinstance(obj, (list, tuple)):
        if not obj:
            raise ValueError(f"{what} is an empty list")
        return list(obj), "list"
    return [obj], None



def params_footer(total, trainable, itemsize, width):
    """summary()'s closing lines: the parameter counts and their sizes."""
    def size(c):
        b = c * itemsize
        for unit in ("B", "KB", "MB", "GB"):
            if b < 1024 or unit == "GB":
                return f"{b:.2f} {unit}"
            b /= 1024

    return [f"Total params: {total:,} ({size(total)})",
            f"Trainable params: {trainable:,} ({size(trainable)})",
            f"Non-trainable params: {total - trainable:,} ({size(total - trainable)})",
            "_" * width]

class Model(Trainer):
    """A functional model, as ``keras.Model(inputs, outputs)``.

    Parameters
    ----------
    inputs : KerasTensor, list or dict of KerasTensor
        Made by :func:`cylstm.Input`.
    outputs : KerasTensor, list or dict of KerasTensor
        Tensors computed from ``inputs`` by calling layers.  With a dict, the
        keys name the outputs (for losses, metrics and ``predict``'s result).
    name : str, optional
    trainable : bool

    Examples
    --------
    >>> inp = cylstm.Input(shape=(None, 8))
    >>> seq, h, c = cylstm.layers.LSTM(16, return_sequences=True, return_state=True)(inp)
    >>> out = cylstm.layers.Dense(1)(cylstm.layers.concatenate([h, c]))
    >>> model = cylstm.Model(inp, out)
    """

    _config_class = "Functional"

    def __init__(self, inputs=None, outputs=None, name=None, trainable=True, **kwargs):
        if inputs is None or outputs is None:
            raise TypeError("cylstm.Model needs inputs= and outputs= (the functional API); "
                            "subclassed models with a Python call() are not supported (use "
                            "Model(inputs, outputs) or Sequential)")
        if kwargs:
            raise TypeError(f"Model() got unexpected keyword argument(s) {sorted(kwargs)}")
        self._init_model(name or _layers._unique_name("functional"), trainable)
        self._init_graph(inputs, outputs)

    # ------------------------------------------------------------------ common state
    def _init_model(self, name, trainable):
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string; got {name!r}")
        self.name = name
        self._auto_name = False
        self.trainable = bool(trainable)
        self._dtype = None
        self.built = False
        self._init_trainer()
        self._flat = None
        self._flat_grad = None
        self._segments = None
        self._flat_sig = None
        self._on_device = False
        self._chain = None

    def _init_graph(self, inputs, outputs):
        flat_in, self._in_struct = _flatten_struct("inputs", inputs)
        flat_out, self._out_struct = _flatten_struct("outputs", outputs)
        seen_names = {}
        for k, t in enumerate(flat_in):
            if not isinstance(t, _graph.KerasTensor):
                raise TypeError(f"inputs[{k}] must be a symbolic tensor from cylstm.Input(...); "
                                f"got {type(t).__name__}")
            if t._keras_history is not None:
                raise ValueError(f"inputs[{k}] ({t!r}) is the output of layer "
                                 f"{t._keras_history[0].name!r}, not an Input; a model's inputs "
                                 "must be Input(...) tensors")
            if any(t is u for u in flat_in[:k]):
                raise ValueError(f"input {t.name!r} is given twice in inputs=")
            if t.name in seen_names:
                raise ValueError(f"two inputs are named {t.name!r} (shapes "
                                 f"{_graph._shape_str(seen_names[t.name].shape)} and "
                                 f"{_graph._shape_str(t.shape)}); input names must be unique")
            seen_names[t.name] = t
        for k, t in enumerate(flat_out):
            if not isinstance(t, _graph.KerasTensor):
                raise TypeError(f"outputs[{k}] must be a symbolic tensor; got "
                                f"{type(t).__name__}")
        plan = _graph.GraphPlan(flat_in, flat_out)
        names = {}
        for layer in plan.layers:
            other = names.get(layer.name)
            if other is not None and other is not layer:
                raise ValueError(f"two layers of model {self.name!r} are named {layer.name!r} "
                                 f"({type(other).__name__} and {type(layer).__name__}); layer "
                                 "names must be unique")
            names[layer.name] = layer
        for t in plan.unused_inputs:
            raise ValueError(f"input {t.name!r} of shape {_graph._shape_str(t.shape)} is not "
                             "connected to any output")
        self._plan = plan
        self.inputs, self.outputs = flat_in, flat_out
        self.layers = list(plan.layers)
        keys = self._in_struct if isinstance(self._in_struct, list) else None
        self.input_names = list(keys) if keys else [t.name for t in flat_in]
        if isinstance(self._out_struct, list):
            onames = list(self._out_struct)
        else:
            onames, used = [], set()
            for t in flat_out:
                base = t._keras_history[0].name if t._keras_history else t.name
                nm, i = base, 1
                while nm in used:
                    nm, i = f"{base}_{i}", i + 1
                used.add(nm)
                onames.append(nm)
        self.output_names = onames
        self._dtype = self._resolve_dtype()
        self._index_inputs = tuple(self._is_index_input(t) for t in flat_in)
        self.built = True
        self._bind_flat()

    def _resolve_dtype(self):
        found = {}
        for t in self.inputs:
            if t.dtype is not None and np.dtype(t.dtype).kind == "f":
                found[f"input {t.name}"] = np.dtype(t.dtype)
        labels = {}
        for layer in self._leaf_layers():
            if layer._dtype is not None:
                found[layer.name] = np.dtype(layer._dtype)
                labels[layer.name] = _layers._variable_dtype_label(layer)
        kinds = set(found.values())
        if len(kinds) > 1:
            shown = {k: labels.get(k, v.name) for k, v in found.items()}
            raise ValueError(f"layers disagree on dtype: {shown}; give all layers (and float "
                             "Inputs) the same dtype")
        return kinds.pop() if kinds else np.dtype(np.float32)

    def _is_index_input(self, t):
        if t.dtype is not None and np.dtype(t.dtype).kind in "iu":
            return True
        consumers = [n for n in self._plan.nodes if any(u is t for u in n.inbound)]
        return bool(consumers) and all(getattr(n.layer, "_index_input", False)
                                       for n in consumers)

    # ------------------------------------------------------------------ structure
    @property
    def dtype(self):
        return self._dtype if self._dtype is not None else np.dtype(np.float32)

    @property
    def input_shape(self):
        shapes = [t.shape for t in self.inputs]
        return shapes[0] if len(shapes) == 1 else shapes

    @property
    def output_shape(self):
        shapes = [t.shape for t in self.outputs]
        return shapes[0] if len(shapes) == 1 else shapes

    @property
    def input(self):
        return self._pack_inputs(self.inputs)

    @property
    def output(self):
        return self._pack(self.outputs)

    def _input_specs(self):
        """(name, batch shape, dtype or None, index input?) of each input."""
        return [(n, t.shape, t.dtype, ix)
                for n, t, ix in zip(self.input_names, self.inputs, self._index_inputs)]

    def _output_shapes(self):
        return [t.shape for t in self.outputs]

    def _prep_inputs(self, x, name="x"):
        """Input arrays as a list in :attr:`input_names` order, cast and shape-checked."""
        names = self.input_names
        if isinstance(x, dict):
            unknown = [k for k in x if k not in names]
            missing = [k for k in names if k not in x]
            if unknown or missing:
                raise ValueError(f"{name} dict must have the keys {names}"
                                 + (f"; missing {missing}" if missing else "")
                                 + (f"; unknown {unknown}" if unknown else ""))
            items = [x[k] for k in names]
        elif len(names) == 1:
            if isinstance(x, (list, tuple)) and len(x) == 1 and isinstance(x[0], np.ndarray):
                x = x[0]
            items = [x]
        elif isinstance(x, (list, tuple)):
            if len(x) != len(names):
                raise ValueError(f"model {self.name!r} takes {len(names)} inputs {names}; "
                                 f"{name} holds {len(x)}")
            items = list(x)
        else:
            raise ValueError(f"model {self.name!r} takes {len(names)} inputs {names}: {name} "
                             f"must be a list or a dict of arrays; got one "
                             f"{type(x).__name__}")
        out = []
        n = None
        for nm, v, (_, shape, _dt, index) in zip(names, items, self._input_specs()):
            label = name if len(names) == 1 else f"{name}[{nm!r}]"
            out.append(self._prep_one(v, label, shape, index))
            if n is None:
                n = out[-1].shape[0]
            elif out[-1].shape[0] != n:
                raise ValueError(f"all inputs must have the same number of samples; "
                                 f"{names[0]!r} has {n} and {nm!r} has {out[-1].shape[0]}")
        return out

    def _prep_one(self, x, label, shape, index):
        if x is None or isinstance(x, (str, bytes)) or hasattr(x, "__next__"):
            raise TypeError(f"{label} must be a NumPy array; got {type(x).__name__}")
        a = np.asarray(x)
        if index:
            a = _layers._as_index(a, label)
        else:
            if a.dtype.kind not in "biuf":
                raise TypeError(f"{label} must be a real numeric array; got dtype {a.dtype}")
            a = np.ascontiguousarray(a, dtype=self.dtype)
        if a.ndim != len(shape):
            raise ValueError(f"{label} must have {len(shape)} dims {_graph._shape_str(shape)}; "
                             f"got shape {a.shape}")
        for d, (want, got) in enumerate(zip(shape[1:], a.shape[1:]), 1):
            if want is not None and want != got:
                raise ValueError(f"{label} has shape {a.shape} but the model expects "
                                 f"{_graph._shape_str(shape)} (axis {d}: {want}, got {got})")
        return a

    def _ensure_built_inputs(self, xs):
        pass

    def _fusion_candidates(self):
        """The Dense layer making each output, where nothing else uses that output."""
        plan = self._plan
        out = []
        for t in self.outputs:
            hist = t._keras_history
            cand = None
            if hist is not None and isinstance(hist[0], _layers.Dense) \
                    and hist[1].kind == _graph.SINGLE:
                layer = hist[0]
                uses = sum(1 for n in plan.nodes if n.layer is layer)
                consumed = any(t is u for n in plan.nodes for u in n.inbound)
                twice = sum(1 for u in self.outputs if u is t) > 1
                if uses == 1 and not consumed and not twice:
                    cand = layer
            out.append(cand)
        return out

    def _pack(self, flat):
        """Outputs in the model's structure (one value, a list or a dict)."""
        s = self._out_struct
        if s is None:
            return flat[0]
        if s == "list":
            return list(flat)
        return dict(zip(s, flat))

    def _pack_inputs(self, flat):
        s = self._in_struct
        if s is None:
            return flat[0]
        if s == "list":
            return list(flat)
        return dict(zip(s, flat))

    def get_layer(self, name=None, index=None):
        """The layer called ``name`` (or at ``index`` in :attr:`layers`)."""
        if index is not None:
            if not -len(self.layers) <= index < len(self.layers):
                raise ValueError(f"model {self.name!r} has {len(self.layers)} layers; got "
                                 f"index={index}")
            return self.layers[index]
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(f"no layer named {name!r} in model {self.name!r}; it has "
                         f"{[lay.name for lay in self.layers]}")

    def _leaf_layers(self):
        """Every layer with its own weights and caches, nested models flattened, once each."""
        out, seen = [], set()
        for layer in self.layers:
            subs = layer._leaf_layers() if isinstance(layer, Model) else [layer]
            for sub in subs:
                if id(sub) not in seen:
                    seen.add(id(sub))
                    out.append(sub)
        return out

    def _trainable_layers(self):
        if not self.trainable:
            return []
        out, seen = [], set()
        for layer in self.layers:
            if isinstance(layer, Model):
                subs = layer._trainable_layers()
            else:
                subs = [layer] if layer.trainable else []
            for sub in subs:
                if id(sub) not in seen:
                    seen.add(id(sub))
                    out.append(sub)
        return out

    # ------------------------------------------------------------------ the flat buffer
    def _bind_flat(self):
        """Put all trainable weights into one flat buffer (and their gradients in another)."""
        items = []
        trainable = self._trainable_layers()
        for layer in trainable:
            items.extend(layer._param_items())
        sizes = [getattr(o, n).size for o, n in items]
        total = int(sum(sizes))
        flat = np.empty(total, self.dtype)
        grad = np.zeros(total, self.dtype)
        segs, off = [], 0
        views_w, views_g = {}, {}
        for (o, n), sz in zip(items, sizes):
            shape = getattr(o, n).shape
            views_w[id(o), n] = flat[off:off + sz].reshape(shape)
            views_g[id(o), n] = grad[off:off + sz].reshape(shape)
            segs.append((off, off + sz))
            off += sz
        for layer in trainable:
            its = layer._param_items()
            layer._bind([views_w[id(o), n] for o, n in its], [views_g[id(o), n] for o, n in its])
        for layer in self._leaf_layers():
            layer._flat_owner = self
        self._flat, self._flat_grad = flat, grad
        self._segments = np.array(segs, dtype=np.int64).reshape(-1, 2)
        self._after_bind({id(layer) for layer in trainable})
        self._flat_sig = self._signature()

    def _after_bind(self, trainable_ids):
        self._plan.prepare(trainable_ids)
        for layer in self.layers:
            if isinstance(layer, Model):
                layer._prepare_nested(trainable_ids)
        self._reg_layers = [lay for lay in self._leaf_layers()
                            if hasattr(lay, "_regularization_loss")]
        self._constraint_layers = [lay for lay in self._leaf_layers()
                                   if hasattr(lay, "_apply_constraints")]

    def _prepare_nested(self, trainable_ids):
        """Used as a layer of an outer model: its steps' flags follow the outer binding."""
        self._plan.prepare(trainable_ids)
        for layer in self.layers:
            if isinstance(layer, Model):
                layer._prepare_nested(trainable_ids)

    def _signature(self):
        sig = [self.trainable]
        for layer in self.layers:
            if isinstance(layer, Model):
                sig.append(("model", id(layer), layer.trainable))
        for layer in self._leaf_layers():
            sig.append((id(layer), layer.trainable, id(getattr(layer, "_flat_owner", None))))
        return tuple(sig)

    def _ensure_bound(self):
        if self._flat_sig != self._signature():
            self._bind_flat()

    # ------------------------------------------------------------------ weights
    def _param_items(self):
        items = []
        for layer in self._leaf_layers():
            items.extend(layer._param_items())
        return items

    @property
    def weights(self):
        return [getattr(o, n) for o, n in self._param_items()]

    @property
    def trainable_weights(self):
        out = []
        for layer in self._trainable_layers():
            out.extend(getattr(o, n) for o, n in layer._param_items())
        return out

    @property
    def non_trainable_weights(self):
        ids = {id(w) for w in self.trainable_weights}
        return [w for w in self.weights if id(w) not in ids]

    @property
    def losses(self):
        """Regularization losses of the layers (floats), as ``keras.Model.losses``."""
        out = []
        for layer in self._leaf_layers():
            out.extend(getattr(layer, "losses", []) or [])
        return out

    def get_weights(self):
        """Copies of all weights, layer by layer in Keras order."""
        self._require_built("get_weights")
        return [np.array(getattr(o, n)) for o, n in self._param_items()]

    def set_weights(self, weights):
        """Set all weights from a list like :meth:`get_weights`'s (checked before any write)."""
        self._require_built("set_weights")
        items = self._param_items()
        _layers.assign_weights(items, weights,
                               f"model {self.name!r} has {len(items)} weight arrays")
        self._weights_changed()

    # ------------------------------------------------------------------ int8 quantization
    def quantize(self, mode, **kwargs):
        """Quantize the weights to int8 for inference, as Keras 3's ``model.quantize``.

        ``mode="int8"`` rounds the kernel and recurrent kernel of every LSTM
        (also inside Bidirectional) and the kernel of every Dense layer (also
        inside TimeDistributed and nested models) to per-output-channel
        symmetric int8 (:func:`cylstm.quantization.quantize_int8`); biases stay
        float.  Each rounded weight is replaced in place by the value it stands
        for, ``q * scale`` (float32; a float64 model holds the same values in
        float64), so ``predict``, ``evaluate``, the layers called on their own
        and the exports all compute the int8 model's numbers on the float
        kernels, and ``get_weights``/``set_weights`` keep their Keras layouts.
        Each quantized layer gets ``quantization_mode = "int8"`` (None
        otherwise), which its config keeps (``save``/``load_model``,
        ``get_config``/``from_config``).

        Afterwards:

        * ``streamer()`` and ``stream_pool()`` of a float32 model read int8
          weight panels (``weights_dtype="int8"``) unless told otherwise, when
          every LSTM and Dense layer of the chain is quantized;
        * ``set_weights`` (and ``load_weights``) round what they are given to
          int8 again, so the model stays quantized (weights that already are
          int8 values are kept bit for bit);
        * ``fit`` and ``train_on_batch`` refuse to train a quantized layer
          (ValueError); set ``trainable = False`` on the quantized layers to
          train the others.

        Quantizing a quantized model again changes nothing (Keras raises
        instead); writing ``layer.kernel[...]`` directly bypasses all of this.

        Parameters
        ----------
        mode : 'int8'

        Raises
        ------
        ValueError
            Another ``mode``, a model that is not built, or one without Dense or
            LSTM layers.
        """
        if kwargs:
            raise TypeError(f"quantize() got unexpected keyword argument(s) {sorted(kwargs)}")
        _layers._check_quantization_mode(mode)
        if not self.built:
            raise ValueError(f"model {self.name!r} must be built before quantize(): give the "
                             "first layer input_shape= (or add Input(shape=...)), or call the "
                             "model on data first")
        targets = [lay for leaf in self._leaf_layers() for lay in _layers.quantizable_layers(leaf)]
        if not targets:
            raise ValueError(f"no quantizable layers in model {self.name!r}: quantize() rounds "
                             "the weights of Dense and LSTM layers")
        _layers.quantize_layers(targets, mode)
        self._weights_changed()

    def _quantized_layers(self, trainable_only=False):
        """The quantized Dense / LSTM layers (of the trainable layers only, if asked)."""
        leaves = self._trainable_layers() if trainable_only else self._leaf_layers()
        return [lay for leaf in leaves for lay in _layers.quantizable_layers(leaf)
                if lay.quantization_mode is not None]

    def _refuse_quantized(self, what):
        """``what`` (training) cannot move int8 weights: refuse while any is trainable."""
        found = self._quantized_layers(trainable_only=True)
        if found:
            names = [lay.name for lay in found]
            raise ValueError(
                f"{what}: model {self.name!r} was quantized to {found[0].quantization_mode} for "
                f"inference (layers {names}); training would move its int8 weights off the "
                "int8 grid.  Train the float model and quantize it afterwards, or set "
                "trainable = False on the quantized layers to train the others")

    def count_params(self):
        self._require_built("count_params")
        return int(sum(getattr(o, n).size for o, n in self._param_items()))

    def _require_built(self, what):
        if not self.built:
            raise ValueError(f"model {self.name!r} is not built, so {what} is not available: "
                             "give the first layer input_shape= (or add Input(shape=...)), "
                             "or call the model on data first")

    def reset_states(self):
        """Zero the carried state of every stateful LSTM."""
        for layer in self._leaf_layers():
            layer._reset_state()

    reset_state = reset_states  # Keras 3 spelling

    def _reset_state(self):
        self.reset_states()

    # ------------------------------------------------------------------ as a layer
    def __call__(self, inputs, training=False, mask=None, time_chunk=None):
        """On symbolic tensors: a node of an outer model.  On arrays: the outputs
        (one pass over the whole input; in inference, ``time_chunk`` as
        :meth:`predict`)."""
        if _graph.is_symbolic(inputs):
            return _graph.symbolic_call(self, inputs, training=training, mask=mask)
        if training and time_chunk is not None:
            raise ValueError("time_chunk runs inference only; got training=True")
        _timechunk.check_time_chunk(time_chunk)
        xs = self._prep_inputs(inputs, "inputs")
        self._ensure_built_inputs(xs)
        try:
            if training:
                ys, _ = self._forward_values(xs, True)
            else:
                ys = self._predict_step(xs, time_chunk)
        finally:
            self._clear_caches()
        return self._pack(ys)

    def _forward_values(self, xs, training, in_masks=None):
        return self._plan.forward(xs, training, in_masks)

    def _backward_values(self, dys, need_input_grad=False):
        return self._plan.backward(dys, need_input_grad)

    def _caches_get(self):
        return self._plan.caches_get()

    def _caches_set(self, c):
        self._plan.caches_set(c)

    def _clear_caches(self):
        self._plan.clear()

    # one-input, one-output models also serve as a layer of a Sequential model
    @property
    def _cache(self):
        return self._caches_get()

    @_cache.setter
    def _cache(self, c):
        self._caches_set(c)

    @property
    def _build_shape(self):
        return self._input_specs()[0][1] if self.built else None

    @property
    def _batch_input_shape(self):
        return self._build_shape

    @property
    def _index_input(self):
        return bool(self._input_specs()[0][3]) if self.built else False

    def _single(self, what):
        if len(self.input_names) != 1 or len(self.output_names) != 1:
            raise ValueError(f"model {self.name!r} has {len(self.input_names)} inputs and "
                             f"{len(self.output_names)} outputs; {what} needs one of each")

    def build(self, input_shape=None):
        """A functional model is built when it is made; this checks ``input_shape``."""

    def compute_output_shape(self, input_shape):
        self._single("a Sequential model")
        return (input_shape[0],) + tuple(self.outputs[0].shape[1:])

    def _forward(self, x, mask, training):
        ys, ms = self._forward_values([x], training, [mask])
        return ys[0], ms[0]

    def _backward(self, dy, need_input_grad=True):
        return self._backward_values([dy], need_input_grad)[0]

    def _set_dtype(self, dtype):
        if self.dtype != np.dtype(dtype):
            raise ValueError(f"model {self.name!r} computes in {self.dtype.name}; the outer "
                             f"model in {np.dtype(dtype).name}")

    def _bind(self, w_views, g_views):
        k = 0
        for layer in self._trainable_layers():
            n = len(layer._param_items())
            layer._bind(w_views[k:k + n], g_views[k:k + n])
            k += n

    # ------------------------------------------------------------------ devices / export
    def _lstm_layers(self):
        out = []
        for layer in self._leaf_layers():
            if isinstance(layer, _layers.Bidirectional):
                out += [layer.forward_layer, layer.backward_layer]
            elif isinstance(layer, _layers.LSTM):
                out.append(layer)
        return out

    def _weights_changed(self):
        """Give device-resident LSTMs a new weights version (they re-upload once)."""
        if self._on_device:
            for layer in self._lstm_layers():
                layer._weights_changed()

    def to(self, device):
        """Run the LSTM layers on ``device``: 'cpu', 'cuda' or 'cuda:N'.

        Needs cylstm built with its CUDA backend (see ``cylstm/cuda/README.md``);
        raises ``ValueError``/``cylstm.cuda.CudaError`` saying why otherwise.  The
        other layers and the optimizer stay on the host.  Returns the model.
        """
        from cylstm import cuda  # defers import cost: cylstm.cuda looks for a GPU

        kind, index = cuda.resolve_device(device)
        dev = None if kind == "cpu" else (kind, index)
        for layer in self._lstm_layers():   # every layer agrees before any moves
            layer._check_device(dev)
        for layer in self._lstm_layers():
            layer._device = dev
        self._on_device = dev is not None
        self._weights_changed()
        return self

    def _chain_layers(self, what):
        """The layers of a graph that is a plain chain (one input, one output, each
        layer called once on the previous one's output), nested chains flattened."""
        plan = self._plan
        why = None
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            why = f"it has {len(self.inputs)} inputs and {len(self.outputs)} outputs"
        prev = self.inputs[0] if self.inputs else None
        out = []
        for node in plan.nodes if why is None else ():
            if node.kind not in (_graph.SINGLE, _graph.MODEL) or len(node.inputs) != 1 \
                    or node.states or len(node.outputs) != 1:
                why = f"layer {node.layer.name!r} takes or returns several tensors"
                break
            if node.inputs[0] is not prev:
                why = f"layer {node.layer.name!r} does not take the previous layer's output"
                break
            if node.kind == _graph.MODEL:
                out.extend(node.layer._chain_layers(what))
            else:
                out.append(node.layer)
            prev = node.outputs[0]
        if why is None and prev is not self.outputs[0]:
            why = "its output is not the last layer's"
        if why is None and len({id(lay) for lay in out}) != len(out):
            why = "a layer is shared"
        if why is not None:
            raise ValueError(f"{what} runs a chain of layers (one input, each layer on the "
                             f"previous one's output); model {self.name!r} is not one: {why}")
        return out

    def _as_chain(self, what):
        layers = self._chain_layers(what)
        chain = self._chain
        if chain is None or [id(lay) for lay in chain.layers] != [id(lay) for lay in layers]:
            chain = self._chain = _Chain(self, layers)
        return chain

    def streamer(self, batch_size=1, **kwargs):
        """A step-by-step runner for streaming inference (:class:`cylstm.stream.StreamRunner`).

        The model must be a chain of layers the runner supports (LSTM, Dense,
        Dropout).  Keyword arguments (``num_threads``, ``weights_dtype``) go to the runner;
        ``weights_dtype`` defaults to 'int8' after :meth:`quantize`.
        """
        from cylstm.stream import StreamRunner  # defers import cost: the streaming runner

        return StreamRunner(self._as_chain("streamer()"), batch_size=batch_size, **kwargs)

    def stream_pool(self, max_streams=64, idle_timeout=None, **kwargs):
        """Many streams stepped together in one batched call (:class:`cylstm.stream.StreamPool`).

        ``max_streams`` live streams at most; ``idle_timeout`` seconds (or None: never)
        after which an unused stream is evicted.  Keyword arguments (``num_threads``,
        ``weights_dtype``, ``clock``) go to the pool.
        """
        from cylstm.stream import StreamPool  # defers import cost: the streaming runner

        return StreamPool(self._as_chain("stream_pool()"), max_streams=max_streams,
                          idle_timeout=idle_timeout, **kwargs)

    def to_onnx(self, path, **kwargs):
        """Export the model to ONNX (:func:`cylstm.interop.onnx.to_onnx`); the model must be
        a chain of layers.  ``dtype='float32'`` exports a float64 model as float32;
        quantized LSTMs become ``DynamicQuantizeLSTM`` unless ``quantized='float'``."""
        from cylstm.interop.onnx import to_onnx  # defers import cost: the ONNX exporter

        return to_onnx(self._as_chain("to_onnx()"), path, **kwargs)

    # ------------------------------------------------------------------ io
    def save(self, filepath, overwrite=True, include_optimizer=True, **kwargs):
        """Save architecture, weights, compile settings and optimizer state to one
        ``.npz`` file (written atomically).  See :func:`cylstm.saving.save_model`."""
        saving.save_model(self, filepath, overwrite=overwrite,
                          include_optimizer=include_optimizer)

    def save_weights(self, filepath, overwrite=True, **kwargs):
        """Save the weights only (atomic ``.npz``)."""
        saving.save_weights(self, filepath, overwrite=overwrite)

    def load_weights(self, filepath, skip_mismatch=False, **kwargs):
        """Load weights written by :meth:`save_weights` (or :meth:`save`)."""
        saving.load_weights(self, filepath)

    # ------------------------------------------------------------------ summary
    def summary(self, line_length=None, positions=None, print_fn=None, expand_nested=False,
                show_trainable=False, layer_range=None):
        """Print a Keras-like table: layer (type), output shape, parameters, connected to."""
        if print_fn is None:
            print_fn = print
        width = line_length or 98
        pos = positions or [0.3, 0.6, 0.7, 1.0]
        if pos[-1] <= 1:
            pos = [int(width * p) for p in pos]
        cols = [pos[0], pos[1] - pos[0], pos[2] - pos[1], pos[3] - pos[2]]

        def row(fields):
            return "".join(str(f)[:w - 1].ljust(w) for f, w in zip(fields, cols)).rstrip()

        node_index = {}
        for node in self._plan.nodes:
            k = sum(1 for n in self._plan.nodes[:self._plan.nodes.index(node)]
                    if n.layer is node.layer)
            node_index[id(node)] = k

        def ref(t):
            if t._keras_history is None:
                return f"{t.name}[0][0]"
            layer, node, k = t._keras_history
            return f"{layer.name}[{node_index.get(id(node), 0)}][{k}]"

        lines = [f'Model: "{self.name}"', "_" * width,
                 row(["Layer (type)", "Output Shape", "Param #", "Connected to"]), "=" * width]
        entries = [(t.name, "InputLayer", _graph._shape_str(t.shape), "0", ["-"])
                   for t in self.inputs]
        for layer in self.layers:
            nodes = [n for n in self._plan.nodes if n.layer is layer]
            outs = nodes[0].outputs
            shp = ", ".join(_graph._shape_str(t.shape) for t in outs)
            conn = [", ".join(ref(t) for t in n.inbound) for n in nodes]
            entries.append((layer.name, type(layer).__name__, shp,
                            f"{layer.count_params():,}", conn))
        for i, (nm, kind, shp, cnt, conn) in enumerate(entries):
            lines.append(row([f"{nm} ({kind})", shp, cnt, conn[0]]))
            for extra in conn[1:]:
                lines.append(row(["", "", "", extra]))
            lines.append("=" * width if i == len(entries) - 1 else "_" * width)
        total = self.count_params()
        trainable = int(sum(w.size for w in self.trainable_weights))
        isz = self.dtype.itemsize
        lines += params_footer(total, trainable, isz, width)
        for line in lines:
            print_fn(line)

    # ------------------------------------------------------------------ config
    def get_config(self):
        """The graph as JSON-able data: layer configs, nodes and input/output references."""
        nodes = self._plan.nodes
        index = {id(n): j for j, n in enumerate(nodes)}
        in_index = {id(t): i for i, t in enumerate(self.inputs)}

        def ref(t):
            if id(t) in in_index:
                return ["input", in_index[id(t)], 0]
            return ["node", index[id(t._keras_history[1])], t._keras_history[2]]

        node_cfgs = []
        for n in nodes:
            c = {"layer": n.layer.name, "args": [ref(t) for t in n.inputs],
                 "list_input": bool(n.list_input)}
            if n.states:
                c["initial_state"] = [ref(t) for t in n.states]
            if n.training is not None:
                c["training"] = bool(n.training)
            node_cfgs.append(c)
        return {
            "name": self.name, "trainable": self.trainable, "dtype": self.dtype.name,
            "inputs": [{"name": t.name, "batch_shape": list(t.shape),
                        "dtype": None if t.dtype is None else np.dtype(t.dtype).name}
                       for t in self.inputs],
            "input_keys": self._in_struct if isinstance(self._in_struct, list) else None,
            "input_list": self._in_struct == "list",
            "layers": [_layers.serialize(lay) for lay in self.layers],
            "nodes": node_cfgs,
            "outputs": [ref(t) for t in self.outputs],
            "output_keys": self._out_struct if isinstance(self._out_struct, list) else None,
            "output_list": self._out_struct == "list",
        }

    @classmethod
    def from_config(cls, config):
        """Rebuild a model from :meth:`get_config`'s output (only cylstm's own classes)."""
        if not isinstance(config, dict):
            raise ValueError("a functional model config must be a dict")  # noqa: TRY004
        try:
            dt = config.get("dtype")
            dt = None if dt is None else _layers._canon_dtype(dt)
            inputs = []
            for spec in config["inputs"]:
                idt = spec.get("dtype")
                inputs.append(_layers.Input(batch_shape=spec["batch_shape"], name=spec["name"],
                                            dtype=idt))
            layers = {}
            for lc in config["layers"]:
                layer = _deserialize(lc)
                if dt is not None and not isinstance(layer, Model) and layer._dtype is None:
                    layer._dtype = dt
                layers[layer.name] = layer
            made = []

            def resolve(r):
                kind, i, k = r
                if kind == "input":
                    return inputs[int(i)]
                return made[int(i)][int(k)]

            for nc in config["nodes"]:
                layer = layers[nc["layer"]]
                args = [resolve(r) for r in nc["args"]]
                arg = args if nc.get("list_input") else args[0]
                kw = {}
                if nc.get("initial_state"):
                    kw["initial_state"] = [resolve(r) for r in nc["initial_state"]]
                if "training" in nc:
                    kw["training"] = nc["training"]
                out = layer(arg, **kw)
                if isinstance(out, dict):
                    out = list(out.values())
                made.append(out if isinstance(out, list) else [out])
            outs = [resolve(r) for r in config["outputs"]]
        except (KeyError, IndexError, TypeError) as e:
            raise ValueError(f"invalid functional model config: {type(e).__name__}: {e}") from e
        ik, ok = config.get("input_keys"), config.get("output_keys")
        inp = dict(zip(ik, inputs)) if ik else (inputs if config.get("input_list") else inputs[0])
        out = dict(zip(ok, outs)) if ok else (outs if config.get("output_list") else outs[0])
        return cls(inp, out, name=config.get("name"), trainable=config.get("trainable", True))

    # ------------------------------------------------------------------ pickle / copy
    def __reduce__(self):
        # Through the safe .npz format (arrays + JSON config, optimizer state included):
        # what unpickles is cylstm.saving.model_from_bytes on plain bytes, which builds
        # only cylstm's own classes, so a model travels to Dask/Ray workers as data.
        return (saving.model_from_bytes, (saving.model_to_bytes(self),))

    def __deepcopy__(self, memo):
        new = saving.model_from_bytes(saving.model_to_bytes(self))
        memo[id(self)] = new
        return new

    def __repr__(self):
        return (f"<Functional name={self.name!r} inputs={len(self.inputs)} "
                f"outputs={len(self.outputs)} layers={len(self.layers)}>")


_nesting = threading.local()


def _deserialize(config, depth=0):
    """A layer or a nested model from its serialized form.  Models nest at most
    ``_MAX_NESTING`` deep, however the configs reach each other (a hostile file
    must not exhaust the stack)."""
    kind = config.get("class_name") if isinstance(config, dict) else None
    if kind not in ("Functional", "Model", "Sequential"):
        return _layers.deserialize(config)
    level = getattr(_nesting, "level", 0)
    if level >= _MAX_NESTING:
        raise ValueError(f"models nested more than {_MAX_NESTING} deep")
    _nesting.level = level + 1
    try:
        if kind == "Sequential":
            from cylstm.models import Sequential  # breaks a cycle: it imports this module

            return Sequential.from_config(config.get("config", {}))
        return Model.from_config(config.get("config", {}))
    finally:
        _nesting.level = level


class _Chain:
    """A chain-shaped functional model seen as a Sequential (for the streaming
    runner and the ONNX exporter, which run stacks of layers)."""

    def __init__(self, model, layers):
        self.model = model
        self.layers = layers
        self.name = model.name
        self.built = True

    @property
    def dtype(self):
        return self.model.dtype

    @property
    def input_shape(self):
        return self.model.inputs[0].shape

    def build(self, input_shape=None):
        pass
