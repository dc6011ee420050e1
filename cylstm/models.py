"""``Sequential``: a Keras-compatible linear stack of layers, and ``Model``.

``Sequential`` is a :class:`cylstm.engine.model.Model` whose graph is a plain
list of layers: its forward pass is a loop over them, its backward the same loop
reversed.  Training (``compile``/``fit``/``evaluate``/``predict``) is shared
with functional models (:mod:`cylstm.engine.trainer`).  The model keeps every
trainable weight in one flat contiguous array (``layer.kernel`` etc. are
reshaped views into it) and every gradient in a second array of the same
layout, so the optimizer updates all parameters in one fused pass.
"""
import warnings

import numpy as np

from cylstm import _timechunk, saving
from cylstm import layers as _layers
from cylstm.engine import graph as _graph
from cylstm.engine.model import Model, params_footer
from cylstm.engine.model import _deserialize as _model_deserialize

__all__ = ["Model", "Sequential", "load_model"]


class Sequential(Model):
    """A linear stack of layers, as ``keras.Sequential``.

    Parameters
    ----------
    layers : list of layers, optional
        May start with :class:`cylstm.layers.Input`.  A functional model with one
        input and one output may be a layer too.
    name : str, optional

    Examples
    --------
    >>> model = Sequential()
    >>> model.add(LSTM(50, return_sequences=True, input_shape=(None, 10)))
    >>> model.add(LSTM(20))
    >>> model.add(Dense(1))
    >>> model.compile(optimizer=Adam(learning_rate=0.001), loss="mean_squared_error")
    >>> history = model.fit(x, y, epochs=10, batch_size=32)
    """

    _config_class = "Sequential"

    def __init__(self, layers=None, name=None, trainable=True):
        self._init_model(name or _layers._unique_name("sequential"), trainable)
        self.layers = []
        self._input = None
        self._need_dx = ()
        if layers is not None:
            for layer in layers:
                self.add(layer)

    # ------------------------------------------------------------------ structure
    @property
    def dtype(self):
        """The compute dtype (float32 unless a layer or Input says float64)."""
        return self._dtype if self._dtype is not None else self._resolve_dtype()

    @property
    def input_shape(self):
        if self._input is not None:
            return self._input.batch_shape
        if self.layers:
            return self.layers[0].input_shape
        return None

    @property
    def output_shape(self):
        if not self.built:
            raise AttributeError(f"model {self.name!r} is not built; it has no output_shape")
        return self.layers[-1].output_shape

    def add(self, layer):
        """Append a layer (or set the input with :class:`cylstm.layers.Input`)."""
        if isinstance(layer, _layers.Input):
            if self.layers:
                raise ValueError("Input(...) must come first in a Sequential model")
            self._input = layer
            return
        if isinstance(layer, Sequential):
            for sub in layer.layers:
                self.add(sub)
            return
        if isinstance(layer, Model):
            layer._single("a layer of a Sequential model")
        elif not isinstance(layer, _layers.Layer):
            raise TypeError(f"Sequential.add expects a cylstm layer; got {type(layer).__name__}")
        if any(layer is lay for lay in self.layers):
            raise ValueError(f"layer {layer.name!r} is already in the model")
        taken = {lay.name for lay in self.layers}
        if layer.name in taken and getattr(layer, "_auto_name", False):
            # e.g. a loaded model's 'dense' and a new Dense(): rename the new one
            base = _layers._snake(type(layer).__name__)
            while layer.name in taken:
                layer.name = _layers._unique_name(base)
        if layer.name in taken:
            raise ValueError(f"the model already has a layer named {layer.name!r}; layer "
                             "names must be unique")
        self.layers.append(layer)
        try:
            if self.built:
                self._build_layers(self.layers[0]._build_shape)
            elif self._known_input_shape() is not None:
                self.build()
        except Exception:
            self.layers.pop()
            raise

    def pop(self):
        """Remove the last layer."""
        if not self.layers:
            raise TypeError("there are no layers in the model")
        layer = self.layers.pop()
        if isinstance(layer, _layers.Dense):
            layer._logits_out = False
        if self.built:
            if self.layers:
                self._build_layers(self.layers[0]._build_shape)
            else:
                self.built = False
        return layer

    def _known_input_shape(self):
        if self._input is not None:
            return self._input.batch_shape
        if self.layers:
            first = self.layers[0]
            if first._batch_input_shape is not None:
                return first._batch_input_shape
            if first.built:
                return first._build_shape
        return None

    def _resolve_dtype(self):
        found = {}
        if self._input is not None and self._input.dtype is not None \
                and self._input.dtype.kind == "f":
            found["Input"] = _layers._canon_dtype(self._input.dtype)
        labels = {}
        for layer in self.layers:
            if layer._dtype is not None:
                found[layer.name] = layer._dtype
                labels[layer.name] = _layers._variable_dtype_label(layer)
        kinds = set(found.values())
        if len(kinds) > 1:
            shown = {k: labels.get(k, v.name) for k, v in found.items()}
            raise ValueError(f"layers disagree on dtype: {shown}")
        return kinds.pop() if kinds else np.dtype(np.float32)

    def build(self, input_shape=None):
        """Build every layer for inputs of ``input_shape`` (batch axis included)."""
        if not self.layers:
            raise ValueError("cannot build an empty Sequential model; add layers first")
        if input_shape is None:
            input_shape = self._known_input_shape()
            if input_shape is None:
                raise ValueError("the model's input shape is unknown: give the first layer "
                                 "input_shape=, start with Input(shape=...), or call fit/predict")
        self._build_layers(tuple(input_shape))

    def _build_layers(self, input_shape):
        dtype = self._resolve_dtype()
        shape = tuple(input_shape)
        for i, layer in enumerate(self.layers):
            if isinstance(shape, list):
                msg = (f"layer {self.layers[i - 1].name!r} returns several outputs "
                       "(return_state=True or merge_mode=None); it cannot feed another layer "
                       "of a Sequential model")
                raise ValueError(msg)  # noqa: TRY004
            layer._set_dtype(dtype)
            if not layer.built:
                layer.build(shape)
            else:
                got = layer._build_shape
                if len(got) != len(shape) or got[-1] != shape[-1]:
                    raise ValueError(f"layer {layer.name!r} was built for inputs {got}; the "
                                     f"model feeds it {shape}")
            shape = layer.compute_output_shape(shape)
        if isinstance(shape, list):
            msg = (f"the last layer {self.layers[-1].name!r} returns several outputs "
                   "(return_state=True or merge_mode=None); a Sequential model needs one output")
            raise ValueError(msg)  # noqa: TRY004
        self._dtype = dtype
        self.built = True
        self._bind_flat()
        if self.compiled:
            self._setup_fusion()

    def _after_bind(self, trainable_ids):
        # does anything before layer i have weights that take gradients?
        need, seen = [], False
        for layer in self.layers:
            need.append(seen)
            if isinstance(layer, Model):
                layer._prepare_nested(trainable_ids)
            seen = seen or _graph._has_trainable(layer, trainable_ids)
        self._need_dx = tuple(need)
        leaves = self._leaf_layers()
        self._reg_layers = [lay for lay in leaves if hasattr(lay, "_regularization_loss")]
        self._constraint_layers = [lay for lay in leaves if hasattr(lay, "_apply_constraints")]

    def _prepare_nested(self, trainable_ids):
        self._after_bind(trainable_ids)

    # ------------------------------------------------------------------ the model interface
    @property
    def input_names(self):
        return [self._input.name if self._input is not None else "input_layer"]

    @property
    def output_names(self):
        return [self.layers[-1].name if self.layers else "output"]

    def _input_specs(self):
        shape = self.layers[0]._build_shape if self.built else self._known_input_shape()
        dt = self._input.dtype if self._input is not None else None
        index = bool(self.layers) and getattr(self.layers[0], "_index_input", False)
        return [(self.input_names[0], shape, dt, index)]

    def _output_shapes(self):
        return [self.output_shape]

    def _pack(self, flat):
        return flat[0]

    def _fusion_candidates(self):
        last = self.layers[-1] if self.layers else None
        return [last if isinstance(last, _layers.Dense) else None]

    def _prep_inputs(self, x, name="x"):
        if isinstance(x, dict):
            key = self.input_names[0]
            if len(x) != 1:
                raise ValueError(f"{name} is a dict of {len(x)} arrays {sorted(x)}; a "
                                 "Sequential model has one input")
            x = next(iter(x.values())) if key not in x else x[key]
        return [self._prep_x(x, name)]

    def _ensure_built_inputs(self, xs):
        self._ensure_built(xs[0])

    def _forward_values(self, xs, training, in_masks=None):
        y, m = self._run_forward(xs[0], training, None if in_masks is None else in_masks[0])
        return [y], [m]

    def _backward_values(self, dys, need_input_grad=False):
        return [self._run_backward(dys[0], need_input_grad)]

    def _caches_get(self):
        return tuple(_graph.cache_get(lay) for lay in self.layers)

    def _caches_set(self, c):
        for layer, ci in zip(self.layers, c if c is not None else [None] * len(self.layers)):
            _graph.cache_set(layer, ci)

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.layers:
            shape = layer.compute_output_shape(shape)
        return shape

    # ------------------------------------------------------------------ data
    def _prep_x(self, x, name="x"):
        if hasattr(x, "__next__") or (not isinstance(x, (np.ndarray, list, tuple))
                                      and not hasattr(x, "__array__")
                                      and not np.isscalar(x)):
            raise TypeError(f"{name} must be a NumPy array (fit also takes a list of "
                            f"(x_batch, y_batch) pairs); got {type(x).__name__}")
        if isinstance(x, (list, tuple)):
            x = np.asarray(x)
        if not isinstance(x, np.ndarray):
            x = np.asarray(x)
        if self.layers and getattr(self.layers[0], "_index_input", False):
            return _layers._as_index(x, self.layers[0].name)
        if x.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be a real numeric array; got dtype {x.dtype}")
        x = np.ascontiguousarray(x, dtype=self.dtype)
        shape = self._known_input_shape() if not self.built else self.layers[0]._build_shape
        if shape is not None:
            if x.ndim != len(shape):
                raise ValueError(f"{name} must have {len(shape)} dims {self._shape_str(shape)}; "
                                 f"got shape {x.shape}")
            for d, (want, got) in enumerate(zip(shape[1:], x.shape[1:]), 1):
                if want is not None and want != got:
                    raise ValueError(f"{name} has shape {x.shape} but the model expects "
                                     f"{self._shape_str(shape)} (axis {d}: {want}, got {got})")
        return x

    @staticmethod
    def _shape_str(shape):
        return "(" + ", ".join("batch" if i == 0 else ("any" if d is None else str(d))
                               for i, d in enumerate(shape)) + ")"

    def _ensure_built(self, x):
        if not self.built:
            if not self.layers:
                raise ValueError("the model has no layers")
            self.build((None,) + tuple(x.shape[1:]))

    # ------------------------------------------------------------------ core steps
    def _predict_step(self, xs, time_chunk=None):
        # a chain of layers may run a chunk of time steps at a time (bounded memory)
        return [_timechunk.run_forward(self, xs[0], time_chunk)]

    def _run_forward(self, x, training, mask=None):
        for layer in self.layers:
            x, mask = layer._forward(x, mask, training)
        return x, mask

    def _run_backward(self, dy, need_input_grad=False):
        layers, need = self.layers, self._need_dx
        for i in range(len(layers) - 1, 0, -1):
            dy = layers[i]._backward(dy, need[i])
            if dy is None:
                return None  # nothing below takes gradients (frozen leading layers)
        return layers[0]._backward(dy, need_input_grad or need[0]) if layers else None

    def _clear_caches(self):
        for layer in self.layers:
            _graph.cache_set(layer, None)

    # ------------------------------------------------------------------ summary / config
    def summary(self, line_length=None, positions=None, print_fn=None, expand_nested=False,
                show_trainable=False, layer_range=None):
        """Print a Keras-like table: layer (type), output shape, parameter count."""
        if print_fn is None:
            print_fn = print
        width = line_length or 80
        pos = positions or [0.45, 0.8, 1.0]
        if pos[-1] <= 1:
            pos = [int(width * p) for p in pos]
        cols = [pos[0], pos[1] - pos[0], pos[2] - pos[1]]

        def row(fields):
            return "".join(str(f)[:w - 1].ljust(w) for f, w in zip(fields, cols)).rstrip()

        def shape_str(s):
            if isinstance(s, list):
                return ", ".join(shape_str(t) for t in s)
            return "(" + ", ".join("None" if d is None else str(d) for d in s) + \
                   ("," if len(s) == 1 else "") + ")"

        lines = [f'Model: "{self.name}"', "_" * width,
                 row(["Layer (type)", "Output Shape", "Param #"]), "=" * width]
        total = trainable = 0
        for i, layer in enumerate(self.layers):
            if layer.built:
                shp = shape_str(layer.output_shape)
                cnt = layer.count_params()
            else:
                shp, cnt = "?", 0
            total += cnt
            if layer.trainable and self.trainable:
                trainable += cnt
            kind = type(layer).__name__
            lines.append(row([f"{layer.name} ({kind})", shp, f"{cnt:,}" if layer.built
                              else "0 (unbuilt)"]))
            lines.append("=" * width if i == len(self.layers) - 1 else "_" * width)
        if not self.layers:
            lines.append("=" * width)
        isz = np.dtype(self.dtype).itemsize
        lines += params_footer(total, trainable, isz, width)
        for line in lines:
            print_fn(line)

    def get_config(self):
        """Keras's Sequential config: the layers in order, and the build shape."""
        cfg = {"name": self.name, "trainable": self.trainable, "layers": []}
        if self._input is not None:
            cfg["layers"].append(_layers.serialize(self._input))
        cfg["layers"].extend(_layers.serialize(lay) for lay in self.layers)
        if self.built:
            cfg["build_input_shape"] = list(self.layers[0]._build_shape)
            cfg["dtype"] = np.dtype(self._dtype).name
        return cfg

    @classmethod
    def from_config(cls, config):
        """Rebuild a model from :meth:`get_config`'s output (only cylstm's own classes)."""
        if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
            msg = "a Sequential config must be a dict with a 'layers' list"
            raise ValueError(msg)  # noqa: TRY004
        model = cls(name=config.get("name"), trainable=config.get("trainable", True))
        for lc in config["layers"]:
            model.add(_deserialize(lc))
        shape = config.get("build_input_shape")
        if shape is not None and not model.built and model.layers:
            dt = config.get("dtype")
            if dt is not None:
                dt = _layers._canon_dtype(dt)
                for layer in model.layers:
                    if layer._dtype is None:
                        layer._dtype = dt
            model.build(tuple(shape))
        return model

    def streamer(self, batch_size=1, **kwargs):
        """A step-by-step runner for streaming inference (:class:`cylstm.stream.StreamRunner`).

        Keyword arguments (``num_threads``, ``weights_dtype``) go to the runner;
        ``weights_dtype`` defaults to 'int8' after :meth:`quantize`.
        """
        from cylstm.stream import StreamRunner  # defers import cost: the streaming runner

        return StreamRunner(self, batch_size=batch_size, **kwargs)

    def stream_pool(self, max_streams=64, idle_timeout=None, **kwargs):
        """Many streams stepped together in one batched call (:class:`cylstm.stream.StreamPool`).

        ``max_streams`` live streams at most; ``idle_timeout`` seconds (or None: never)
        after which an unused stream is evicted.  Keyword arguments (``num_threads``,
        ``weights_dtype``, ``clock``) go to the pool.
        """
        from cylstm.stream import StreamPool  # defers import cost: the streaming runner

        return StreamPool(self, max_streams=max_streams, idle_timeout=idle_timeout, **kwargs)

    def to_onnx(self, path, **kwargs):
        """Export the model to ONNX (:func:`cylstm.interop.onnx.to_onnx`).

        ``dtype='float32'`` exports a float64 model as float32 (ONNX Runtime's
        CPU LSTM runs float32 only).
        """
        from cylstm.interop.onnx import to_onnx  # defers import cost: the ONNX exporter

        return to_onnx(self, path, **kwargs)

    def __repr__(self):
        return f"<Sequential name={self.name!r} layers={len(self.layers)} built={self.built}>"



def _deserialize(config):
    return _model_deserialize(config)


def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
    """Load a model written by ``model.save`` (never runs code from the file)."""
    if custom_objects:
        warnings.warn("custom_objects is ignored: cylstm files only name cylstm's own classes",
                      stacklevel=2)
    return saving.load_model(filepath, compile=compile)
