"""``Sequential``: a Keras-compatible model and trainer over cylstm's layers.

The model keeps every trainable weight in one flat contiguous array
(``layer.kernel`` etc. are reshaped views into it) and every gradient in a
second array of the same layout, so the optimizer updates all parameters in
one fused pass.  A training step is: the layers' forward over the whole
batch, the loss and its gradient, the layers' backward (each LSTM runs its
compiled BPTT over all time steps at once), then ``optimizer.update``.

NaN safety: a batch whose loss or gradients are not finite is never applied,
so the weights stay the last finite ones.  ``fit`` then stops if a callback
(``TerminateOnNaN``) asked it to, and otherwise raises ``FloatingPointError``
naming the epoch and batch (Keras would keep training on NaN weights; cylstm
refuses to produce them).
"""
import math
import numbers
import warnings

import numpy as np

from cylstm import _signals, _timechunk
from cylstm import layers as _layers
from cylstm._progress import Progbar

__all__ = ["Sequential", "load_model"]


def _check_int(name, v, minimum):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {v!r}")
    return int(v)


def _batches_from_pairs(x):
    """A list of (x_batch, y_batch[, sample_weight]) pairs -> stacked arrays."""
    xs, ys, ws = [], [], []
    for i, item in enumerate(x):
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
            raise TypeError(f"x[{i}] must be an (x_batch, y_batch) pair when y is None")
        xs.append(np.asarray(item[0]))
        ys.append(np.asarray(item[1]))
        if len(item) == 3:
            ws.append(np.asarray(item[2]))
    if not xs:
        raise ValueError("x is an empty list of batches")
    sw = np.concatenate(ws) if ws else None
    return np.concatenate(xs), np.concatenate(ys), sw, len(xs[0])


class Sequential:
    """A linear stack of layers, as ``keras.Sequential``.

    Parameters
    ----------
    layers : list of layers, optional
        May start with :class:`cylstm.layers.Input`.
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

    def __init__(self, layers=None, name=None, trainable=True):
        self.name = name or _layers._unique_name("sequential")
        self.layers = []
        self.trainable = bool(trainable)
        self._input = None
        self._dtype = None
        self.built = False
        self.optimizer = None
        self.loss = None
        self._loss_fn = None
        self._metric_ids = []
        self._metric_fns = []
        self.compiled = False
        self.stop_training = False
        self.history = None
        self._flat = None
        self._flat_grad = None
        self._segments = None
        self._flat_sig = None
        self._need_dx = ()
        self._shuffle_rng = None
        self._fuse = False
        self._on_device = False
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
        if not isinstance(layer, _layers.Layer):
            raise TypeError(f"Sequential.add expects a cylstm layer; got {type(layer).__name__}")
        if any(layer is l for l in self.layers):
            raise ValueError(f"layer {layer.name!r} is already in the model")
        taken = {l.name for l in self.layers}
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
        for layer in self.layers:
            if layer._dtype is not None:
                found[layer.name] = layer._dtype
        kinds = set(found.values())
        if len(kinds) > 1:
            raise ValueError(f"layers disagree on dtype: { {k: v.name for k, v in found.items()} }")
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
        self._setup_fusion()

    def _trainable_layers(self):
        return [l for l in self.layers if l.trainable] if self.trainable else []

    def _bind_flat(self):
        """Put all trainable weights into one flat buffer (and their gradients in another)."""
        items = []
        for layer in self._trainable_layers():
            items.extend(layer._param_items())
        sizes = [getattr(o, n).size for o, n in items]
        total = int(sum(sizes))
        flat = np.empty(total, self._dtype)
        grad = np.zeros(total, self._dtype)
        segs, off = [], 0
        views_w, views_g = {}, {}
        for (o, n), sz in zip(items, sizes):
            shape = getattr(o, n).shape
            views_w[id(o), n] = flat[off:off + sz].reshape(shape)
            views_g[id(o), n] = grad[off:off + sz].reshape(shape)
            segs.append((off, off + sz))
            off += sz
        for layer in self._trainable_layers():
            its = layer._param_items()
            layer._bind([views_w[id(o), n] for o, n in its], [views_g[id(o), n] for o, n in its])
        self._flat, self._flat_grad = flat, grad
        self._segments = np.array(segs, dtype=np.int64).reshape(-1, 2)
        self._flat_sig = self._signature()
        # does anything before layer i have weights that take gradients?
        need, seen = [], False
        for layer in self.layers:
            need.append(seen)
            seen = seen or (layer.trainable and self.trainable and bool(layer._param_items()))
        self._need_dx = tuple(need)

    def _signature(self):
        return tuple((id(l), l.trainable) for l in self.layers) + (self.trainable,)

    # ------------------------------------------------------------------ weights
    def _param_items(self):
        items = []
        for layer in self.layers:
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

    def get_weights(self):
        """Copies of all weights, layer by layer in Keras order."""
        self._require_built("get_weights")
        return [np.array(getattr(o, n)) for o, n in self._param_items()]

    def set_weights(self, weights):
        """Set all weights from a list like :meth:`get_weights`'s (checked before any write)."""
        self._require_built("set_weights")
        items = self._param_items()
        if isinstance(weights, np.ndarray) or not hasattr(weights, "__len__"):
            raise TypeError(f"set_weights expects a list of arrays; got {type(weights).__name__}")
        weights = list(weights)
        if len(weights) != len(items):
            raise ValueError(f"model {self.name!r} has {len(items)} weight arrays; set_weights "
                             f"got {len(weights)}")
        checked = []
        for (o, n), w in zip(items, weights):
            w = np.asarray(w)
            dst = getattr(o, n)
            if w.dtype.kind not in "biuf":
                raise TypeError(f"weight {o.name}/{n} must be numeric; got dtype {w.dtype}")
            if w.shape != dst.shape:
                raise ValueError(f"weight {o.name}/{n} must have shape {dst.shape}; got "
                                 f"{w.shape}")
            checked.append((dst, w))
        for dst, w in checked:
            dst[...] = w
        self._weights_changed()

    def count_params(self):
        self._require_built("count_params")
        return int(sum(l.count_params() for l in self.layers))

    def _require_built(self, what):
        if not self.built:
            raise ValueError(f"model {self.name!r} is not built, so {what} is not available: "
                             "give the first layer input_shape= (or add Input(shape=...)), "
                             "or call the model on data first")

    def reset_states(self):
        """Zero the carried state of every stateful LSTM."""
        for layer in self.layers:
            layer._reset_state()

    reset_state = reset_states  # Keras 3 spelling

    # ------------------------------------------------------------------ compile
    def compile(self, optimizer="rmsprop", loss=None, metrics=None, loss_weights=None,
                weighted_metrics=None, run_eagerly=False, steps_per_execution=1,
                jit_compile="auto", auto_scale_loss=True):
        """Configure training: optimizer, loss and metrics (Keras names or objects).

        ``run_eagerly``, ``steps_per_execution``, ``jit_compile`` and
        ``auto_scale_loss`` are accepted for compatibility and have no effect.
        """
        from cylstm import losses as _losses
        from cylstm import optimizers as _optimizers

        if loss is None:
            raise ValueError("compile needs a loss, e.g. loss='mse'")
        if loss_weights is not None:
            raise NotImplementedError("loss_weights is for multi-output models; a Sequential "
                                      "model has one output")
        opt = _optimizers.get(optimizer)
        loss_fn = _losses.get(loss)
        mids = []
        for group in (metrics, weighted_metrics):
            if group is None:
                continue
            if isinstance(group, (str, dict)) or callable(group):
                group = [group]
            mids.extend(group)
        fns = self._resolve_metrics(mids, loss_fn)
        self.optimizer, self.loss, self._loss_fn = opt, loss, loss_fn
        self._metric_ids, self._metric_fns = mids, fns
        self.compiled = True
        self._setup_fusion()
        if self.built and self._flat_sig != self._signature():
            self._bind_flat()

    @staticmethod
    def _resolve_metrics(ids, loss_fn):
        if not ids:
            return []
        from cylstm import metrics as _metrics

        return [_metrics.get(m, loss=loss_fn) for m in ids]

    @property
    def metrics_names(self):
        return ["loss"] + [m.name for m in self._metric_fns]

    def _require_compiled(self, what):
        if not self.compiled:
            raise ValueError(f"you must call compile() before {what}()")

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

    def _prep_y(self, y, n, name="y"):
        if y is None:
            raise ValueError(f"{name} is required")
        y = np.asarray(y)
        if y.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be a real numeric array; got dtype {y.dtype}")
        if y.ndim == 0 or y.shape[0] != n:
            raise ValueError(f"x and {name} must have the same number of samples; got x with "
                             f"{n} and {name} with shape {y.shape}")
        if y.dtype.kind == "f" or y.dtype.kind == "b":
            y = np.ascontiguousarray(y, dtype=self.dtype)
        else:
            y = np.ascontiguousarray(y)
        return y

    @staticmethod
    def _check_finite(name, a):
        if a is not None and a.dtype.kind == "f" and not np.isfinite(a).all():
            bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
            raise ValueError(f"{name} contains {bad} NaN or infinite value(s); clean the data "
                             "before training")

    def _sample_weights(self, y, n, sample_weight, class_weight):
        sw = None
        if sample_weight is not None:
            sw = np.asarray(sample_weight, dtype=self.dtype)
            if sw.ndim == 0 or sw.shape[0] != n:
                raise ValueError(f"sample_weight must have one entry per sample ({n}); got "
                                 f"shape {sw.shape}")
            self._check_finite("sample_weight", sw)
        if class_weight is not None:
            if not isinstance(class_weight, dict):
                raise TypeError("class_weight must be a dict {class index: weight}")
            if y.ndim >= 2 and y.shape[-1] > 1:
                cls = np.argmax(y, axis=-1)
            else:
                cls = np.rint(y.reshape(n, -1)[:, 0]).astype(np.int64)
            if cls.ndim > 1:
                raise ValueError("class_weight needs one class per sample (2-D targets)")
            table = np.ones(int(max(max(class_weight), cls.max() if cls.size else 0)) + 1,
                            self.dtype)
            for k, v in class_weight.items():
                table[int(k)] = v
            cw = table[cls]
            sw = cw if sw is None else sw * cw.reshape(cw.shape + (1,) * (sw.ndim - 1))
        return None if sw is None else np.ascontiguousarray(sw, dtype=self.dtype)

    # ------------------------------------------------------------------ core steps
    def _run_forward(self, x, training):
        mask = None
        for layer in self.layers:
            x, mask = layer._forward(x, mask, training)
        return x, mask

    def _run_backward(self, dy):
        layers, need = self.layers, self._need_dx
        for i in range(len(layers) - 1, -1, -1):
            dy = layers[i]._backward(dy, need[i])

    def _clear_caches(self):
        for layer in self.layers:
            layer._cache = None
            for sub in (getattr(layer, "forward_layer", None),
                        getattr(layer, "backward_layer", None), getattr(layer, "layer", None)):
                if sub is not None:
                    sub._cache = None

    def _setup_fusion(self):
        """Train a sigmoid/softmax output on its logits when the loss allows it.

        TF-Keras computes binary/categorical cross-entropy from the logits
        under a sigmoid/softmax output layer instead of from clipped
        probabilities: exact, and the gradient does not vanish on saturated
        outputs.  cylstm does the same (loss values and gradients then equal
        those of the loss with ``from_logits=True`` on the pre-activations).
        """
        for layer in self.layers:
            if isinstance(layer, _layers.Dense):
                layer._logits_out = False
                layer._logits = None
        last = self.layers[-1] if self.layers else None
        act = getattr(self._loss_fn, "fusable_activation", None)
        self._fuse = bool(isinstance(last, _layers.Dense) and act is not None
                          and last.activation == act
                          and hasattr(self._loss_fn, "value_and_grad_from_logits"))
        if self._fuse:
            last._logits_out = True

    def _loss_value_grad(self, yb, y_pred, mask, swb):
        if mask is None or y_pred.ndim < 2 or mask.shape != y_pred.shape[:2]:
            mask = None
        if self._fuse:
            last = self.layers[-1]
            logits, last._logits = last._logits, None
            return self._loss_fn.value_and_grad_from_logits(yb, logits, sample_weight=swb,
                                                           mask=mask)
        if mask is None:
            return self._loss_fn.value_and_grad(yb, y_pred, sample_weight=swb)
        return self._loss_fn.value_and_grad(yb, y_pred, sample_weight=swb, mask=mask)

    def _loss_and_grad(self, xb, yb, swb):
        y_pred, mask = self._run_forward(xb, True)
        loss, dy = self._loss_value_grad(yb, y_pred, mask, swb)
        return loss, dy, y_pred

    def _train_step(self, xb, yb, swb):
        """One update.  Returns (loss, y_pred); raises FloatingPointError (and
        applies nothing) when the loss or the gradients are not finite."""
        try:
            loss, dy, y_pred = self._loss_and_grad(xb, yb, swb)
            if not math.isfinite(loss):
                raise FloatingPointError(f"the loss is {loss}")
            self._run_backward(dy)
        except BaseException:
            self._clear_caches()
            raise
        opt = self.optimizer
        # per-tensor segments only matter to clipnorm; skipping them saves Python work
        opt.update(self._flat, self._flat_grad,
                   self._segments if getattr(opt, "clipnorm", None) else None)
        if self._on_device:
            self._weights_changed()
        return loss, y_pred

    def _forward_backward(self, x, y, sample_weight=None):
        """Loss and gradients for one batch, without updating anything.

        Used by the gradient checks.  Runs in training mode (dropout active
        if the layers have any).

        Returns
        -------
        (loss, grads) : float and a list of arrays in :meth:`get_weights` order.
        """
        self._require_compiled("_forward_backward")
        x = self._prep_x(x)
        self._ensure_built(x)
        y = self._prep_y(y, x.shape[0])
        sw = self._sample_weights(y, x.shape[0], sample_weight, None)
        loss, dy, _ = self._loss_and_grad(x, y, sw)
        self._run_backward(dy)
        return loss, [np.array(o._grads[n]) for o, n in self._param_items()]

    # ------------------------------------------------------------------ fit
    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
            sample_weight=None, initial_epoch=0, steps_per_epoch=None, validation_steps=None,
            validation_batch_size=None, validation_freq=1):
        """Train for ``epochs`` epochs (Keras semantics).

        Parameters
        ----------
        x, y : arrays
            Inputs (batch, time, features) and targets.  ``x`` may also be a
            list of ``(x_batch, y_batch)`` pairs (e.g. from
            ``cylstm.utils.timeseries_dataset_from_array``), used in order.
        batch_size : int, default 32
        epochs : int
        verbose : 'auto' (= 1), 0, 1 or 2
        callbacks : list of cylstm.callbacks.Callback
        validation_split : float in [0, 1)
            Fraction of the data (taken from the end, before shuffling) held
            out for validation.
        validation_data : (x_val, y_val) or (x_val, y_val, sample_weight_val)
        shuffle : bool
            Reshuffle the training samples every epoch.
        class_weight, sample_weight : optional per-class / per-sample loss weights
        initial_epoch : int
            Epoch to start from (for resuming).
        steps_per_epoch : int, optional
            Batches per epoch (at most the number available).

        Returns
        -------
        History : its ``.history`` holds 'loss' (and 'val_loss', metrics) per epoch.
        """
        from cylstm import callbacks as _cbm

        self._require_compiled("fit")
        if y is None and isinstance(x, (list, tuple)) and len(x) and \
                isinstance(x[0], (tuple, list)):
            x, y, sw_from_pairs, pair_bs = _batches_from_pairs(x)
            if sample_weight is None:
                sample_weight = sw_from_pairs
            if batch_size is None:
                batch_size = pair_bs
            shuffle = False  # a list of batches is used in order, as Keras uses a dataset
        if x is None:
            raise ValueError("fit needs x")
        bs = 32 if batch_size is None else _check_int("batch_size", batch_size, 1)
        epochs = _check_int("epochs", epochs, 0)
        initial_epoch = _check_int("initial_epoch", initial_epoch, 0)
        verbose = self._verbose(verbose)
        if not isinstance(validation_split, numbers.Real) or not 0 <= validation_split < 1:
            raise ValueError(f"validation_split must be in [0, 1); got {validation_split!r}")
        validation_freq = _check_int("validation_freq", validation_freq, 1)

        x = self._prep_x(x)
        self._ensure_built(x)
        n = x.shape[0]
        y = self._prep_y(y, n)
        self._check_finite("x", x)
        self._check_finite("y", y)
        sw = self._sample_weights(y, n, sample_weight, class_weight)

        val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise ValueError("validation_data must be (x_val, y_val) or "
                                 "(x_val, y_val, sample_weight_val)")
            xv = self._prep_x(validation_data[0], "validation_data x")
            yv = self._prep_y(validation_data[1], xv.shape[0], "validation_data y")
            swv = None
            if len(validation_data) == 3 and validation_data[2] is not None:
                swv = self._sample_weights(yv, xv.shape[0], validation_data[2], None)
            val = (xv, yv, swv)
        elif validation_split:
            split = math.floor(n * (1.0 - validation_split))
            if split < 1 or split >= n:
                raise ValueError(f"validation_split={validation_split} leaves no training or no "
                                 f"validation samples out of {n}")
            val = (x[split:], y[split:], None if sw is None else sw[split:])
            x, y = x[:split], y[:split]
            sw = None if sw is None else sw[:split]
            n = split
        if n == 0:
            raise ValueError("x has no samples")
        vbs = bs if validation_batch_size is None else _check_int(
            "validation_batch_size", validation_batch_size, 1)

        if self._flat_sig != self._signature():
            self._bind_flat()
        steps = (n + bs - 1) // bs
        if steps_per_epoch is not None:
            steps = min(steps, _check_int("steps_per_epoch", steps_per_epoch, 1))

        history = _cbm.History()
        cb_list = list(callbacks or [])
        cbl = _cbm.CallbackList(cb_list + [history], model=self,
                                params={"epochs": epochs, "steps": steps, "verbose": verbose})
        hook_names = ("on_train_batch_begin", "on_train_batch_end", "on_batch_begin",
                      "on_batch_end")
        # calling per-batch hooks costs Python time: only when a callback has them
        batch_hooks = any(getattr(type(cb), h, None) is not getattr(_cbm.Callback, h, None)
                          for cb in cb_list for h in hook_names)
        if shuffle and n > 1:
            if self._shuffle_rng is None:
                self._shuffle_rng = _layers._make_rng(None)
            xs, ys = np.empty_like(x), np.empty_like(y)
            sws = None if sw is None else np.empty_like(sw)
        else:
            xs, ys, sws = x, y, sw

        metric_fns = self._metric_fns
        self.stop_training = False
        self.history = history
        cbl.on_train_begin()
        logs = {}
        epoch = initial_epoch
        for epoch in range(initial_epoch, epochs):
            cbl.on_epoch_begin(epoch)
            if verbose == 1:
                print(f"Epoch {epoch + 1}/{epochs}")
            bar = Progbar(steps, verbose) if verbose else None
            if shuffle and n > 1:
                perm = self._shuffle_rng.permutation(n)
                np.take(x, perm, axis=0, out=xs)
                np.take(y, perm, axis=0, out=ys)
                if sw is not None:
                    np.take(sw, perm, axis=0, out=sws)
            tot, seen = 0.0, 0
            mtot = [0.0] * len(metric_fns)
            blogs = {}
            # Ctrl-C stops between batches, never between a backward pass and its update
            for b in _signals.interruptible(range(steps)):
                s = b * bs
                e = min(s + bs, n)
                if batch_hooks:
                    cbl.on_train_batch_begin(b)
                swb = None if sws is None else sws[s:e]
                try:
                    loss, y_pred = self._train_step(xs[s:e], ys[s:e], swb)
                except FloatingPointError as err:
                    self._non_finite(cbl, batch_hooks, b, epoch, err)
                    break
                k = e - s
                tot += loss * k
                seen += k
                if metric_fns:
                    for i, m in enumerate(metric_fns):
                        mtot[i] += float(m(ys[s:e], y_pred)) * k
                if bar is not None or batch_hooks:
                    blogs = {"loss": tot / seen}
                    for i, m in enumerate(metric_fns):
                        blogs[m.name] = mtot[i] / seen
                    if bar is not None:
                        bar.update(b + 1, blogs)
                    if batch_hooks:
                        cbl.on_train_batch_end(b, blogs)
                if self.stop_training:
                    break
            logs = {"loss": tot / seen if seen else float("nan")}
            for i, m in enumerate(metric_fns):
                logs[m.name] = mtot[i] / seen if seen else float("nan")
            if val is not None and (epoch + 1 - initial_epoch) % validation_freq == 0 \
                    and seen:
                cbl.on_test_begin()
                vres = self._evaluate_arrays(val[0], val[1], val[2], vbs)
                cbl.on_test_end(dict(zip(self.metrics_names, vres)))
                logs["val_loss"] = vres[0]
                for i, m in enumerate(metric_fns):
                    logs["val_" + m.name] = vres[i + 1]
            if bar is not None:
                bar.update(seen and ((seen + bs - 1) // bs), logs, finalize=True)
            cbl.on_epoch_end(epoch, logs)
            if self.stop_training:
                break
        cbl.on_train_end(logs)
        return history

    def _non_finite(self, cbl, batch_hooks, b, epoch, err):
        """A batch gave a non-finite loss or gradient: nothing was applied."""
        self.stop_training = False
        if batch_hooks:
            cbl.on_train_batch_end(b, {"loss": float("nan")})
        if self.stop_training:
            return  # TerminateOnNaN (or another callback) asked to stop
        raise FloatingPointError(
            f"non-finite loss or gradient at epoch {epoch + 1}, batch {b} ({err}); the update "
            "was skipped, so the weights are the last finite ones. Lower the learning rate, "
            "add clipnorm= to the optimizer, check the data, or pass "
            "callbacks=[TerminateOnNaN()] to stop training instead of raising"
        ) from err

    def _callback_list(self, callbacks, steps, verbose):
        if not callbacks:
            return None
        from cylstm import callbacks as _cbm

        return _cbm.CallbackList(list(callbacks), model=self,
                                 params={"steps": steps, "verbose": verbose})

    @staticmethod
    def _verbose(verbose):
        if verbose == "auto":
            return 1
        if verbose in (0, 1, 2) and not isinstance(verbose, bool) or verbose is False:
            return int(verbose)
        if verbose is True:
            return 1
        raise ValueError(f"verbose must be 'auto', 0, 1 or 2; got {verbose!r}")

    # ------------------------------------------------------------------ evaluate / predict
    def _evaluate_arrays(self, x, y, sw, bs):
        n = x.shape[0]
        tot, mt = 0.0, [0.0] * len(self._metric_fns)
        for s in range(0, n, bs):
            e = min(s + bs, n)
            y_pred, mask = self._run_forward(x[s:e], False)
            swb = None if sw is None else sw[s:e]
            if self._fuse:
                loss = self._loss_value_grad(y[s:e], y_pred, mask, swb)[0]
            elif mask is not None and y_pred.ndim >= 2 and mask.shape == y_pred.shape[:2]:
                loss = self._loss_fn(y[s:e], y_pred, sample_weight=swb, mask=mask)
            else:
                loss = self._loss_fn(y[s:e], y_pred, sample_weight=swb)
            tot += float(loss) * (e - s)
            for i, m in enumerate(self._metric_fns):
                mt[i] += float(m(y[s:e], y_pred)) * (e - s)
        return [tot / n] + [v / n for v in mt]

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None,
                 steps=None, callbacks=None, return_dict=False):
        """Loss (and metrics) on ``(x, y)`` in inference mode.

        Returns a float when there are no metrics, else ``[loss, *metrics]``
        (or a dict with ``return_dict=True``).
        """
        self._require_compiled("evaluate")
        if y is None and isinstance(x, (list, tuple)) and len(x) and \
                isinstance(x[0], (tuple, list)):
            x, y, sample_weight, pbs = _batches_from_pairs(x)
            batch_size = batch_size or pbs
        bs = 32 if batch_size is None else _check_int("batch_size", batch_size, 1)
        verbose = self._verbose(verbose)
        x = self._prep_x(x)
        self._ensure_built(x)
        y = self._prep_y(y, x.shape[0])
        if x.shape[0] == 0:
            raise ValueError("x has no samples")
        sw = self._sample_weights(y, x.shape[0], sample_weight, None)
        steps_n = (x.shape[0] + bs - 1) // bs
        bar = Progbar(steps_n, verbose) if verbose else None
        cbl = self._callback_list(callbacks, steps_n, verbose)
        if cbl is not None:
            cbl.on_test_begin()
        res = self._evaluate_arrays(x, y, sw, bs)
        names = self.metrics_names
        if cbl is not None:
            cbl.on_test_end(dict(zip(names, res)))
        if bar is not None:
            bar.update(steps_n, dict(zip(names, res)), finalize=True)
        if return_dict:
            return dict(zip(names, res))
        return res[0] if len(res) == 1 else res

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None,
                time_chunk=None):
        """Outputs for ``x`` in inference mode, computed ``batch_size`` (32) samples at a time.

        ``time_chunk=k`` runs all layers over k time steps at a time, carrying the
        LSTMs' states (bounded memory for long sequences; see
        :func:`cylstm._timechunk.run_forward`); None does so when the intermediate
        sequences would exceed :func:`cylstm.get_memory_budget`.
        """
        _timechunk.check_time_chunk(time_chunk)
        bs = 32 if batch_size is None else _check_int("batch_size", batch_size, 1)
        verbose = self._verbose(verbose)
        x = self._prep_x(x)
        self._ensure_built(x)
        n = x.shape[0]
        out = None
        bar = Progbar((n + bs - 1) // bs, verbose) if verbose == 1 and n else None
        cbl = self._callback_list(callbacks, (n + bs - 1) // bs, verbose)
        if cbl is not None:
            cbl.on_predict_begin()
        for s in range(0, n, bs):
            e = min(s + bs, n)
            yb = _timechunk.run_forward(self, x[s:e], time_chunk)
            if out is None:
                out = np.empty((n,) + yb.shape[1:], yb.dtype)
            out[s:e] = yb
        if out is None:
            shape = (0,) + x.shape[1:]
            for layer in self.layers:  # each layer's output is the next one's input
                shape = layer.compute_output_shape(shape)
            out = np.empty(tuple(0 if d is None else d for d in shape), self.dtype)
        if bar is not None:
            bar.update(bar.target, {}, finalize=True)
        if cbl is not None:
            cbl.on_predict_end()
        return out

    def __call__(self, inputs, training=False, mask=None, time_chunk=None):
        """The model's output for ``inputs`` (one pass over the whole array; in
        inference, ``time_chunk`` as :meth:`predict`)."""
        x = self._prep_x(inputs, "inputs")
        self._ensure_built(x)
        if training and time_chunk is not None:
            raise ValueError("time_chunk runs inference only; got training=True")
        if training:
            y, _ = self._run_forward(x, True)
        else:
            y = _timechunk.run_forward(self, x, time_chunk)
        self._clear_caches()
        return y

    def predict_on_batch(self, x):
        return self(x)

    def train_on_batch(self, x, y=None, sample_weight=None, class_weight=None,
                       return_dict=False):
        """One optimizer step on one batch; returns the loss (and metrics) before the step."""
        self._require_compiled("train_on_batch")
        x = self._prep_x(x)
        self._ensure_built(x)
        y = self._prep_y(y, x.shape[0])
        self._check_finite("x", x)
        self._check_finite("y", y)
        sw = self._sample_weights(y, x.shape[0], sample_weight, class_weight)
        if self._flat_sig != self._signature():
            self._bind_flat()
        try:
            loss, y_pred = self._train_step(x, y, sw)
        except FloatingPointError as err:
            raise FloatingPointError(
                f"non-finite loss or gradient ({err}); the update was skipped, so the weights "
                "are unchanged") from err
        res = [loss] + [float(m(y, y_pred)) for m in self._metric_fns]
        if return_dict:
            return dict(zip(self.metrics_names, res))
        return res[0] if len(res) == 1 else res

    def test_on_batch(self, x, y=None, sample_weight=None, return_dict=False):
        self._require_compiled("test_on_batch")
        x = self._prep_x(x)
        self._ensure_built(x)
        y = self._prep_y(y, x.shape[0])
        sw = self._sample_weights(y, x.shape[0], sample_weight, None)
        res = self._evaluate_arrays(x, y, sw, max(1, x.shape[0]))
        if return_dict:
            return dict(zip(self.metrics_names, res))
        return res[0] if len(res) == 1 else res

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

        def size(c):
            b = c * isz
            for unit in ("B", "KB", "MB", "GB"):
                if b < 1024 or unit == "GB":
                    return f"{b:.2f} {unit}"
                b /= 1024

        lines += [f"Total params: {total:,} ({size(total)})",
                  f"Trainable params: {trainable:,} ({size(trainable)})",
                  f"Non-trainable params: {total - trainable:,} ({size(total - trainable)})",
                  "_" * width]
        for line in lines:
            print_fn(line)

    def get_config(self):
        cfg = {"name": self.name, "trainable": self.trainable, "layers": []}
        if self._input is not None:
            cfg["layers"].append(_layers.serialize(self._input))
        cfg["layers"].extend(_layers.serialize(l) for l in self.layers)
        if self.built:
            cfg["build_input_shape"] = list(self.layers[0]._build_shape)
            cfg["dtype"] = np.dtype(self._dtype).name
        return cfg

    @classmethod
    def from_config(cls, config):
        if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
            msg = "a Sequential config must be a dict with a 'layers' list"
            raise ValueError(msg)  # noqa: TRY004
        model = cls(name=config.get("name"), trainable=config.get("trainable", True))
        for lc in config["layers"]:
            model.add(_layers.deserialize(lc))
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

    # ------------------------------------------------------------------ io / delegations
    def save(self, filepath, overwrite=True, include_optimizer=True, **kwargs):
        """Save architecture, weights, compile settings and optimizer state to one
        ``.npz`` file (written atomically).  See :func:`cylstm.saving.save_model`."""
        from cylstm import saving

        saving.save_model(self, filepath, overwrite=overwrite,
                          include_optimizer=include_optimizer)

    def save_weights(self, filepath, overwrite=True, **kwargs):
        """Save the weights only (atomic ``.npz``)."""
        from cylstm import saving

        saving.save_weights(self, filepath, overwrite=overwrite)

    def load_weights(self, filepath, skip_mismatch=False, **kwargs):
        """Load weights written by :meth:`save_weights` (or :meth:`save`)."""
        from cylstm import saving

        saving.load_weights(self, filepath)

    def _lstm_layers(self):
        out = []
        for layer in self.layers:
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
        from cylstm import cuda

        kind, index = cuda.resolve_device(device)
        dev = None if kind == "cpu" else (kind, index)
        for layer in self._lstm_layers():
            layer._device = dev
        self._on_device = dev is not None
        self._weights_changed()
        return self

    def streamer(self, batch_size=1, **kwargs):
        """A step-by-step runner for streaming inference (:class:`cylstm.stream.StreamRunner`).

        Keyword arguments (``num_threads``, ``weights_dtype``) go to the runner.
        """
        from cylstm.stream import StreamRunner

        return StreamRunner(self, batch_size=batch_size, **kwargs)

    def to_onnx(self, path, **kwargs):
        """Export the model to ONNX (:func:`cylstm.interop.onnx.to_onnx`).

        ``dtype='float32'`` exports a float64 model as float32 (ONNX Runtime's
        CPU LSTM runs float32 only).
        """
        from cylstm.interop.onnx import to_onnx

        return to_onnx(self, path, **kwargs)

    def __repr__(self):
        return f"<Sequential name={self.name!r} layers={len(self.layers)} built={self.built}>"



def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
    """Load a model written by :meth:`Sequential.save` (never runs code from the file)."""
    from cylstm import saving

    if custom_objects:
        warnings.warn("custom_objects is ignored: cylstm files only name cylstm's own classes")
    return saving.load_model(filepath, compile=compile)
