"""``compile``/``fit``/``evaluate``/``predict`` and the train, test and predict steps.

Split as Keras splits its trainer: the data arrives through a data adapter
(:mod:`cylstm.engine.data_adapters`), epochs through an
:class:`~cylstm.engine.epoch_iterator.EpochIterator`, and each batch goes
through one step method (:meth:`Trainer._train_step`, ``_test_step``,
``_predict_step``).  The model class supplies the structure: how to prepare
inputs and targets, and ``_forward_values`` / ``_backward_values`` over lists
with one entry per model input or output.

Losses follow Keras: one loss per output (a single loss applies to all), the
total is ``sum(loss_weight_i * loss_i)`` plus the layers' regularization
losses, and with several outputs the logs also hold ``<output>_loss`` (the
weighted value) and ``<output>_<metric>``.

NaN safety: a batch whose loss or gradients are not finite is never applied,
so the weights stay the last finite ones.  ``fit`` then stops if a callback
(``TerminateOnNaN``) asked it to, and otherwise raises ``FloatingPointError``
naming the epoch and batch (Keras would keep training on NaN weights; cylstm
refuses to produce them).
"""
import json
import math
import numbers
import warnings

import numpy as np

from cylstm import _signals, _timechunk
from cylstm import callbacks as _cbm
from cylstm import layers as _layers
from cylstm import losses as _losses
from cylstm import metrics as _metrics
from cylstm import optimizers as _optimizers
from cylstm._progress import Progbar
from cylstm.engine import bucketing as _bucketing
from cylstm.engine import data_adapters as _da
from cylstm.engine import tbptt as _tbptt
from cylstm.engine.epoch_iterator import EpochIterator

__all__ = ["Trainer"]


def _check_int(name, v, minimum):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {v!r}")
    return int(v)


def _per_output(what, value, names, default, allow_broadcast=True):
    """A compile argument given once, as a list (one per output) or a dict by output name."""
    n = len(names)
    if isinstance(value, dict):
        unknown = [k for k in value if k not in names]
        if unknown:
            raise ValueError(f"{what} names unknown output(s) {unknown}; the model's outputs are "
                             f"{names}")
        return [value.get(k, default) for k in names]
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{what} is a list of {len(value)} but the model has {n} output(s) "
                             f"{names}; give one entry per output or a dict by output name")
        return list(value)
    if not allow_broadcast and n > 1:
        raise ValueError(f"{what} must be a list or a dict for a model with {n} outputs")
    return [value] * n



def _add_weighted(sums, vals, k):
    """Running sums of a batch's logged values, each weighted by its k samples."""
    if sums is None:
        return [v * k for v in vals]
    for i, v in enumerate(vals):
        sums[i] += v * k
    return sums

class Trainer:
    """The training half of a model (mixed into :class:`cylstm.engine.model.Model`)."""

    def _init_trainer(self):
        self.optimizer = None
        self.loss = None
        self._loss_fn = None
        self._metric_ids = []
        self._metric_fns = []
        self._out_losses = None
        self._loss_weights = None
        self._out_metrics = None
        self._fused = None
        self._compile_args = None
        self.compiled = False
        self.stop_training = False
        self.history = None
        self._shuffle_rng = None
        self._reg_layers = []
        self._constraint_layers = []

    def _shuffle_generator(self):
        if self._shuffle_rng is None:
            self._shuffle_rng = _layers._make_rng(None)
        return self._shuffle_rng

    # ------------------------------------------------------------------ compile
    def compile(self, optimizer="rmsprop", loss=None, metrics=None, loss_weights=None,
                weighted_metrics=None, run_eagerly=False, steps_per_execution=1,
                jit_compile="auto", auto_scale_loss=True):
        """Configure training: optimizer, loss(es), loss weights and metrics (Keras names
        or objects).

        With several outputs, ``loss``, ``loss_weights`` and ``metrics`` may be lists (one
        entry per output) or dicts keyed by output name; a single loss applies to
        every output.  ``run_eagerly``, ``steps_per_execution``, ``jit_compile`` and
        ``auto_scale_loss`` are accepted for compatibility and have no effect.
        """
        if loss is None:
            raise ValueError("compile needs a loss, e.g. loss='mse'")
        names = list(self.output_names)
        opt = _optimizers.get(optimizer)
        raw_losses = _per_output("loss", loss, names, None)
        out_losses = [None if lo is None else _losses.get(lo) for lo in raw_losses]
        if all(lo is None for lo in out_losses):
            raise ValueError(f"compile needs a loss for at least one output of {names}")
        if loss_weights is None:
            weights = [1.0] * len(names)
        else:
            if isinstance(loss_weights, numbers.Real) and len(names) == 1:
                loss_weights = [loss_weights]
            weights = _per_output("loss_weights", loss_weights, names, 1.0, False)
            for nm, w in zip(names, weights):
                if isinstance(w, bool) or not isinstance(w, numbers.Real) or \
                        not math.isfinite(w):
                    raise ValueError(f"loss_weights for output {nm!r} must be a finite "
                                     f"number; got {w!r}")
            weights = [float(w) for w in weights]
        ids = [[] for _ in names]
        for group in (metrics, weighted_metrics):
            if group is None:
                continue
            for i, g in enumerate(self._metric_groups(group, names)):
                ids[i].extend(g)
        fns = [[_metrics.get(m, loss=out_losses[i]) for m in ids[i]] for i in range(len(names))]
        self.optimizer, self.loss = opt, loss
        self._out_losses, self._loss_weights, self._out_metrics = out_losses, weights, fns
        self._loss_fn = out_losses[0]
        self._metric_ids, self._metric_fns = ids[0], fns[0]
        self._compile_args = {"loss": raw_losses, "loss_weights": loss_weights,
                              "metrics": ids}
        self.compiled = True
        self._setup_fusion()
        if self.built:
            self._ensure_bound()

    @staticmethod
    def _metric_groups(group, names):
        n = len(names)
        if isinstance(group, dict):
            unknown = [k for k in group if k not in names]
            if unknown:
                raise ValueError(f"metrics name unknown output(s) {unknown}; the model's "
                                 f"outputs are {names}")
            out = []
            for k in names:
                g = group.get(k) or []
                out.append(list(g) if isinstance(g, (list, tuple)) else [g])
            return out
        if isinstance(group, str) or callable(group) or not isinstance(group, (list, tuple)):
            return [[group] for _ in names]
        if n > 1 and len(group) == n and all(g is None or isinstance(g, (list, tuple))
                                             for g in group):
            return [list(g or []) for g in group]
        return [list(group) for _ in names]

    @property
    def metrics_names(self):
        """Names of the logged values, in the order ``evaluate`` returns them."""
        names = ["loss"]
        outs = list(self.output_names)
        multi = len(outs) > 1
        if multi and self._out_losses is not None:
            names += [f"{o}_loss" for o, lo in zip(outs, self._out_losses) if lo is not None]
        for o, ms in zip(outs, self._out_metrics or [[]] * len(outs)):
            names += [f"{o}_{m.name}" if multi else m.name for m in ms]
        return names

    def _setup_fusion(self):
        """Train a sigmoid/softmax output on its logits when the loss allows it.

        TF-Keras computes binary/categorical cross-entropy from the logits
        under a sigmoid/softmax output layer instead of from clipped
        probabilities: exact, and the gradient does not vanish on saturated
        outputs.  cylstm does the same (loss values and gradients then equal
        those of the loss with ``from_logits=True`` on the pre-activations),
        for every output that a Dense layer makes and nothing else consumes.
        """
        for layer in self._leaf_layers():
            if isinstance(layer, _layers.Dense):
                layer._logits_out = False
                layer._logits = None
        fused = []
        cands = self._fusion_candidates()
        for i, cand in enumerate(cands):
            fn = self._out_losses[i] if self._out_losses else None
            act = getattr(fn, "fusable_activation", None)
            ok = (cand is not None and act is not None and cand.activation == act
                  and hasattr(fn, "value_and_grad_from_logits"))
            fused.append(cand if ok else None)
            if ok:
                cand._logits_out = True
        self._fused = fused

    def _compile_config(self):
        """JSON form of the compile settings (None, with a warning, if they cannot be saved)."""
        if not self.compiled:
            return None
        opt = self.optimizer
        try:
            opt_cfg = {"class_name": type(opt).__name__, "config": opt.get_config()}
            json.dumps(opt_cfg)
        except (TypeError, ValueError):
            warnings.warn("the optimizer's config (e.g. a learning-rate schedule) cannot be "
                          "saved as JSON; the file is saved without compile settings",
                          stacklevel=3)
            return None
        loss_cfgs = []
        for raw, fn in zip(self._compile_args["loss"], self._out_losses):
            if raw is None or isinstance(raw, str):
                loss_cfgs.append(raw)
                continue
            try:
                c = _losses.serialize(fn)
                json.dumps(c)
            except (TypeError, ValueError):
                warnings.warn(f"loss {raw!r} cannot be saved; the file is saved without "
                              "compile settings", stacklevel=3)
                return None
            loss_cfgs.append(c)
        metrics = [[mid if isinstance(mid, str) else fn.name for mid, fn in zip(ids, fns)]
                   for ids, fns in zip(self._compile_args["metrics"], self._out_metrics)]
        names = list(self.output_names)
        single = len(names) == 1
        return {"optimizer": opt_cfg, "loss": loss_cfgs[0] if single else dict(zip(names,
                                                                                  loss_cfgs)),
                "loss_weights": None if self._compile_args["loss_weights"] is None
                else dict(zip(names, self._loss_weights)),
                "metrics": (metrics[0] or None) if single else dict(zip(names, metrics))}

    def _require_compiled(self, what):
        if not self.compiled:
            raise ValueError(f"you must call compile() before {what}()")

    # ------------------------------------------------------------------ data preparation
    def _prep_targets(self, y, n, what="y"):
        """Targets as a list with one entry per output (None for outputs without a loss)."""
        names = list(self.output_names)
        losses = self._out_losses or [True] * len(names)
        if len(names) == 1:
            if isinstance(y, dict):
                y = y.get(names[0])
            elif isinstance(y, (list, tuple)) and len(y) == 1 and isinstance(y[0], np.ndarray):
                y = y[0]
            if y is None and losses[0] is None:
                return [None]
            return [self._prep_y(y, n, what)]
        if isinstance(y, dict):
            unknown = [k for k in y if k not in names]
            if unknown:
                raise ValueError(f"{what} names unknown output(s) {unknown}; the model's outputs "
                                 f"are {names}")
            items = [y.get(k) for k in names]
        elif isinstance(y, (list, tuple)):
            if len(y) != len(names):
                raise ValueError(f"{what} must hold {len(names)} arrays, one per output "
                                 f"{names}; got {len(y)}")
            items = list(y)
        elif y is None:
            raise ValueError(f"{what} is required")
        else:
            raise ValueError(f"the model has {len(names)} outputs {names}: {what} must be a "
                             f"list or a dict of arrays; got one {type(y).__name__}")
        out = []
        for nm, v, lo in zip(names, items, losses):
            if v is None:
                if lo is not None:
                    raise ValueError(f"{what} has no target for output {nm!r}, which has a loss")
                out.append(None)
            else:
                out.append(self._prep_y(v, n, f"{what}[{nm!r}]"))
        return out

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

    def _sample_weights(self, y, n, sample_weight, class_weight, name="sample_weight"):
        sw = None
        if sample_weight is not None:
            sw = np.asarray(sample_weight, dtype=self.dtype)
            if sw.ndim == 0 or sw.shape[0] != n:
                raise ValueError(f"{name} must have one entry per sample ({n}); got "
                                 f"shape {sw.shape}")
            self._check_finite(name, sw)
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

    def _prep_sample_weights(self, ys, n, sample_weight, class_weight):
        """One sample-weight array (or None) per output."""
        names = list(self.output_names)
        if class_weight is not None and len(names) > 1:
            raise ValueError("class_weight is only supported for models with one output; "
                             f"this one has {names}")
        if sample_weight is None and class_weight is None:
            return None
        if isinstance(sample_weight, dict):
            unknown = [k for k in sample_weight if k not in names]
            if unknown:
                raise ValueError(f"sample_weight names unknown output(s) {unknown}; the "
                                 f"model's outputs are {names}")
            raw = [sample_weight.get(k) for k in names]
        elif isinstance(sample_weight, (list, tuple)) and len(names) > 1 and \
                len(sample_weight) == len(names) and not np.isscalar(sample_weight[0]):
            raw = list(sample_weight)
        else:
            raw = [sample_weight] * len(names)
        out = []
        for nm, y, sw in zip(names, ys, raw):
            label = "sample_weight" if len(names) == 1 else f"sample_weight[{nm!r}]"
            out.append(None if y is None else
                       self._sample_weights(y, n, sw, class_weight, label))
        return out

    def _prepare_arrays(self, x, y, sample_weight, class_weight, need_y, what):
        """Whole arrays for an array adapter: cast, checked, and the model built."""
        label = "x" if what in ("fit", "evaluate", "predict") else f"{what} x"
        xs = self._prep_inputs(x, label)
        self._ensure_built_inputs(xs)
        n = xs[0].shape[0]
        if n == 0:
            raise ValueError(f"{label} has no samples")
        if not need_y:
            return xs, None, None
        ylabel = "y" if label == "x" else f"{what} y"
        ys = self._prep_targets(y, n, ylabel)
        if what == "fit":
            for k, a in enumerate(xs):
                self._check_finite("x" if len(xs) == 1 else f"x[{k}]", a)
            for k, a in enumerate(ys):
                self._check_finite("y" if len(ys) == 1 else f"y[{k}]", a)
        sws = self._prep_sample_weights(ys, n, sample_weight, class_weight)
        return xs, ys, sws

    def _prepare_batch(self, x, y, sample_weight, class_weight, need_y):
        """One ready-made batch (from a generator, dataset or list of batches)."""
        xs = self._prep_inputs(x, "x")
        self._ensure_built_inputs(xs)
        n = xs[0].shape[0]
        if not need_y:
            return xs, None, None, n
        if y is None:
            raise ValueError("it has no targets y; a training batch must be (x, y) or "
                             "(x, y, sample_weight)")
        ys = self._prep_targets(y, n)
        for a in xs:
            self._check_finite("x", a)
        for a in ys:
            self._check_finite("y", a)
        return xs, ys, self._prep_sample_weights(ys, n, sample_weight, class_weight), n

    # ------------------------------------------------------------------ steps
    def _compute_loss(self, ys, preds, masks, sws, with_grads):
        """(total loss, weighted loss per output, gradient per output)."""
        total = 0.0
        parts, dys = [], []
        fused = self._fused
        for i, fn in enumerate(self._out_losses):
            if fn is None:
                parts.append(None)
                dys.append(None)
                continue
            y, pred, mask = ys[i], preds[i], masks[i]
            sw = None if sws is None else sws[i]
            if mask is not None and (pred.ndim < 2 or mask.shape != pred.shape[:2]):
                mask = None
            kw = {} if mask is None else {"mask": mask}
            f = fused[i]
            if f is not None:
                logits, f._logits = f._logits, None
                v, d = fn.value_and_grad_from_logits(y, logits, sample_weight=sw, mask=mask)
            elif with_grads:
                v, d = fn.value_and_grad(y, pred, sample_weight=sw, **kw)
            else:
                v, d = fn(y, pred, sample_weight=sw, **kw), None
            v = float(v)
            w = self._loss_weights[i]
            if w != 1.0:
                v *= w
                if d is not None:
                    d = d * d.dtype.type(w)
            total += v
            parts.append(v)
            dys.append(d)
        return total, parts, dys

    def _regularization(self):
        reg = 0.0
        for layer in self._reg_layers:
            reg += float(layer._regularization_loss())
        return reg

    def _train_step(self, xs, ys, sws):
        """One update.  Returns (loss, per-output losses, predictions); raises
        FloatingPointError (and applies nothing) when the loss or the gradients are
        not finite."""
        try:
            preds, masks = self._forward_values(xs, True)
            loss, parts, dys = self._compute_loss(ys, preds, masks, sws, True)
            if self._reg_layers:
                loss += self._regularization()
            if not math.isfinite(loss):
                raise FloatingPointError(f"the loss is {loss}")
            self._backward_values(dys)
        except BaseException:
            self._clear_caches()
            raise
        opt = self.optimizer
        # per-tensor segments only matter to clipnorm; skipping them saves Python work
        opt.update(self._flat, self._flat_grad,
                   self._segments if getattr(opt, "clipnorm", None) else None)
        for layer in self._constraint_layers:
            layer._apply_constraints()
        if self._on_device:
            self._weights_changed()
        return loss, parts, preds

    def _test_step(self, xs, ys, sws):
        preds, masks = self._forward_values(xs, False)
        loss, parts, _ = self._compute_loss(ys, preds, masks, sws, False)
        if self._reg_layers:
            loss += self._regularization()
        return loss, parts, preds

    def _predict_step(self, xs, time_chunk=None):
        if time_chunk is not None:
            raise ValueError(f"time_chunk={time_chunk!r} runs a Sequential model (a chain of "
                             f"layers over time); {type(self).__name__} {self.name!r} is a "
                             "graph: predict it without time_chunk")
        return self._forward_values(xs, False)[0]

    def _batch_logs(self, loss, parts, ys, preds):
        """The logged values of one batch, in :attr:`metrics_names` order."""
        vals = [loss]
        if len(parts) > 1:
            vals += [p for p in parts if p is not None]
        for i, ms in enumerate(self._out_metrics):
            for m in ms:
                vals.append(float(m(ys[i], preds[i])))
        return vals

    def _forward_backward(self, x, y, sample_weight=None):
        """Loss and gradients for one batch, without updating anything.

        Used by the gradient checks.  Runs in training mode (dropout active
        if the layers have any).

        Returns
        -------
        (loss, grads) : float and a list of arrays in :meth:`get_weights` order.
        """
        self._require_compiled("_forward_backward")
        xs = self._prep_inputs(x)
        self._ensure_built_inputs(xs)
        self._ensure_bound()
        n = xs[0].shape[0]
        ys = self._prep_targets(y, n)
        sws = self._prep_sample_weights(ys, n, sample_weight, None)
        try:
            preds, masks = self._forward_values(xs, True)
            loss, _, dys = self._compute_loss(ys, preds, masks, sws, True)
            if self._reg_layers:
                loss += self._regularization()
            self._backward_values(dys)
        except BaseException:
            self._clear_caches()
            raise
        return loss, [np.array(o._grads[n]) for o, n in self._param_items()]

    # ------------------------------------------------------------------ fit
    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
            sample_weight=None, initial_epoch=0, steps_per_epoch=None, validation_steps=None,
            validation_batch_size=None, validation_freq=1, tbptt=None, bucket_by_length=False):
        """Train for ``epochs`` epochs (Keras semantics).

        Parameters
        ----------
        x : array, list/dict of arrays (one per input), or a source of batches
            Arrays are cut into ``batch_size`` batches.  A list (or other
            iterable) of ``(x, y)`` / ``(x, y, sample_weight)`` batches, a dataset
            such as :func:`cylstm.utils.timeseries_dataset_from_array`'s, a
            Python generator or a :class:`cylstm.utils.PyDataset` give their own
            batches (then ``y`` and ``sample_weight`` stay None).
        y : array, or list/dict of arrays (one per output)
        batch_size : int, default 32
        epochs : int
        verbose : 'auto' (= 1), 0, 1 or 2
        callbacks : list of cylstm.callbacks.Callback
        validation_split : float in [0, 1)
            Fraction of the array data (taken from the end, before shuffling)
            held out for validation.
        validation_data : (x_val, y_val), (x_val, y_val, sample_weight_val), or any
            of the batch sources above.
        shuffle : bool
            Reshuffle the training samples (arrays) or the batch order
            (``PyDataset``) every epoch.
        class_weight, sample_weight : optional per-class / per-sample loss weights
            (``sample_weight`` may be a list or dict with one array per output).
        initial_epoch : int
            Epoch to start from (for resuming).
        steps_per_epoch : int, optional
            Batches per epoch.  A generator continues from where the previous
            epoch stopped; arrays and re-iterable data start over.
        validation_steps : int, optional
            Batches of ``validation_data`` per validation.
        validation_batch_size : int, optional
        validation_freq : int
        tbptt : int, optional
            Truncated back-propagation through time: walk each batch's time axis
            in windows of ``tbptt`` steps, one optimizer update per window, every
            LSTM carrying its (h, c) from one window to the next with the
            gradient cut at the window edge (see :mod:`cylstm.engine.tbptt`).
            ``y`` must be per step, (batch, time, ...), and the model's output a
            sequence.  Callbacks and the progress bar count windows as batches;
            ``steps_per_epoch`` still counts batches of data.  With
            ``tbptt >= time`` every step is an ordinary fit step.
        bucket_by_length : bool or int, default False
            For masked data (a ``Masking`` layer or ``Embedding(mask_zero=True)``
            on the input): inside each shuffled window of batches (``True``: 32
            batches; an int: that many), group the samples by length and cut each
            batch's time axis after its longest sample, so fewer steps are
            computed.  Every sample is still seen once per epoch, in a shuffled
            order (see :mod:`cylstm.engine.bucketing`).

        Returns
        -------
        History : its ``.history`` holds 'loss' (and 'val_loss', metrics) per epoch.
        """
        self._require_compiled("fit")
        self._refuse_quantized("fit")
        if x is None:
            raise ValueError("fit needs x")
        if batch_size is not None:
            batch_size = _check_int("batch_size", batch_size, 1)
        epochs = _check_int("epochs", epochs, 0)
        initial_epoch = _check_int("initial_epoch", initial_epoch, 0)
        verbose = self._verbose(verbose)
        if not isinstance(validation_split, numbers.Real) or not 0 <= validation_split < 1:
            raise ValueError(f"validation_split must be in [0, 1); got {validation_split!r}")
        validation_freq = _check_int("validation_freq", validation_freq, 1)
        if steps_per_epoch is not None:
            steps_per_epoch = _check_int("steps_per_epoch", steps_per_epoch, 1)
        if validation_steps is not None:
            validation_steps = _check_int("validation_steps", validation_steps, 1)
        tbptt = _tbptt.check_tbptt(tbptt)
        bucket_by_length = _bucketing.check_bucket_by_length(bucket_by_length)

        adapter = _da.get_data_adapter(self, x, y, sample_weight, class_weight, batch_size,
                                       shuffle, True, "fit")
        vbs = batch_size or 32
        if validation_batch_size is not None:
            vbs = _check_int("validation_batch_size", validation_batch_size, 1)
        val = None
        if validation_data is not None:
            val = _da.get_validation_adapter(self, validation_data, vbs)
        elif validation_split:
            if not isinstance(adapter, _da.ArrayDataAdapter):
                raise ValueError("validation_split is only supported for array inputs; with a "
                                 f"{type(x).__name__} pass validation_data= instead")
            adapter, val = adapter.split(validation_split)
            if validation_batch_size is not None:
                val = val.with_batch_size(vbs)
        if bucket_by_length:
            adapter = _bucketing.bucketed(self, adapter, bucket_by_length)
        it = EpochIterator(adapter, steps_per_epoch)
        if tbptt is not None:
            it = _tbptt.WindowIterator(self, it, tbptt)  # windows count as batches
        if self.built:
            self._ensure_bound()

        history = _cbm.History()
        cb_list = list(callbacks or [])
        steps = it.num_steps
        cbl = _cbm.CallbackList(cb_list + [history], model=self,
                                params={"epochs": epochs, "steps": steps, "verbose": verbose})
        hook_names = ("on_train_batch_begin", "on_train_batch_end", "on_batch_begin",
                      "on_batch_end")
        # calling per-batch hooks costs Python time: only when a callback has them
        batch_hooks = any(getattr(type(cb), h, None) is not getattr(_cbm.Callback, h, None)
                          for cb in cb_list for h in hook_names)
        names = None
        check_bound = not isinstance(adapter, _da.ArrayDataAdapter)
        self.stop_training = False
        self.history = history
        cbl.on_train_begin()
        logs = {}
        for epoch in range(initial_epoch, epochs):
            cbl.on_epoch_begin(epoch)
            if verbose == 1:
                print(f"Epoch {epoch + 1}/{epochs}")
            steps = it.num_steps
            bar = Progbar(steps or 0, verbose) if verbose else None
            sums = None
            seen = 0
            # Ctrl-C stops between batches, never between a backward pass and its update
            for b, (xs, ys, sws, k) in enumerate(_signals.interruptible(it.epoch())):
                if check_bound:
                    self._ensure_bound()
                    check_bound = False
                if names is None:
                    names = self.metrics_names
                if batch_hooks:
                    cbl.on_train_batch_begin(b)
                try:
                    loss, parts, preds = self._train_step(xs, ys, sws)
                except FloatingPointError as err:
                    self._non_finite(cbl, batch_hooks, b, epoch, err)
                    break
                sums = _add_weighted(sums, self._batch_logs(loss, parts, ys, preds), k)
                seen += k
                if bar is not None or batch_hooks:
                    blogs = {nm: s / seen for nm, s in zip(names, sums)}
                    if bar is not None:
                        bar.target = max(bar.target, b + 1)
                        bar.update(b + 1, blogs)
                    if batch_hooks:
                        cbl.on_train_batch_end(b, blogs)
                if self.stop_training:
                    break
            adapter.on_epoch_end()
            names = names or self.metrics_names
            if sums is None:
                logs = {nm: float("nan") for nm in names}
            else:
                logs = {nm: s / seen for nm, s in zip(names, sums)}
            if val is not None and (epoch + 1 - initial_epoch) % validation_freq == 0 and seen:
                cbl.on_test_begin()
                vres = self._evaluate_adapter(val, validation_steps)
                cbl.on_test_end(dict(zip(self.metrics_names, vres)))
                for nm, v in zip(self.metrics_names, vres):
                    logs["val_" + nm] = v
            if bar is not None:
                bar.update(seen and bar.target, logs, finalize=True)
            if it.exhausted and epoch + 1 < epochs:
                it.warn_if_exhausted(steps_per_epoch)
                self.stop_training = True
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
    def _evaluate_adapter(self, adapter, steps=None):
        sums, seen = None, 0
        for xs, ys, sws, k in EpochIterator(adapter, steps).epoch():
            loss, parts, preds = self._test_step(xs, ys, sws)
            sums = _add_weighted(sums, self._batch_logs(loss, parts, ys, preds), k)
            seen += k
        if not seen:
            raise ValueError("the evaluation data has no samples")
        return [s / seen for s in sums]

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None,
                 steps=None, callbacks=None, return_dict=False):
        """Loss (and metrics) on ``(x, y)`` in inference mode; ``x`` takes every form
        :meth:`fit` takes.

        Returns a float when only the loss is logged, else a list in
        :attr:`metrics_names` order (or a dict with ``return_dict=True``).
        """
        self._require_compiled("evaluate")
        if batch_size is not None:
            batch_size = _check_int("batch_size", batch_size, 1)
        if steps is not None:
            steps = _check_int("steps", steps, 1)
        verbose = self._verbose(verbose)
        adapter = _da.get_data_adapter(self, x, y, sample_weight, None, batch_size, False,
                                       True, "evaluate")
        steps_n = EpochIterator(adapter, steps).num_steps or 0
        bar = Progbar(steps_n, verbose) if verbose else None
        cbl = self._callback_list(callbacks, steps_n, verbose)
        if cbl is not None:
            cbl.on_test_begin()
        res = self._evaluate_adapter(adapter, steps)
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
        """Outputs for ``x`` in inference mode, computed ``batch_size`` (32) samples at a
        time; ``x`` takes every form :meth:`fit` takes (targets in the batches are
        ignored).  Returns an array, or a list/dict for a model with several outputs.

        ``time_chunk=k`` (Sequential models) runs all layers over k time steps at a
        time, carrying the LSTMs' states (bounded memory for long sequences; see
        :func:`cylstm._timechunk.run_forward`); None does so when the intermediate
        sequences would exceed :func:`cylstm.get_memory_budget`.
        """
        _timechunk.check_time_chunk(time_chunk)
        if batch_size is not None:
            batch_size = _check_int("batch_size", batch_size, 1)
        if steps is not None:
            steps = _check_int("steps", steps, 1)
        verbose = self._verbose(verbose)
        adapter = _predict_adapter(self, x, batch_size)
        it = EpochIterator(adapter, steps)
        nb = it.num_steps or 0
        bar = Progbar(nb, verbose) if verbose == 1 and nb else None
        cbl = self._callback_list(callbacks, nb, verbose)
        if cbl is not None:
            cbl.on_predict_begin()
        total = getattr(adapter, "num_samples", None)
        if steps is not None:
            total = None
        outs = None
        chunks = None
        s = 0
        for xs, _, _, k in _signals.interruptible(it.epoch(), "prediction"):
            ys = self._predict_step(xs, time_chunk)
            if total is not None:
                if outs is None:
                    outs = [np.empty((total,) + yb.shape[1:], yb.dtype) for yb in ys]
                for o, yb in zip(outs, ys):
                    o[s:s + k] = yb
            else:
                if chunks is None:
                    chunks = [[] for _ in ys]
                for c, yb in zip(chunks, ys):
                    c.append(yb)
            s += k
        if chunks is not None:
            outs = [np.concatenate(c, axis=0) for c in chunks]
        if outs is None:
            outs = self._empty_outputs()
        if bar is not None:
            bar.update(bar.target, {}, finalize=True)
        if cbl is not None:
            cbl.on_predict_end()
        return self._pack(outs)

    def _empty_outputs(self):
        return [np.empty(tuple(0 if d is None else d for d in ((0,) + tuple(s[1:]))),
                         self.dtype) for s in self._output_shapes()]

    def predict_on_batch(self, x):
        return self(x)

    def train_on_batch(self, x, y=None, sample_weight=None, class_weight=None,
                       return_dict=False):
        """One optimizer step on one batch; returns the loss (and metrics) before the step."""
        self._require_compiled("train_on_batch")
        self._refuse_quantized("train_on_batch")
        xs = self._prep_inputs(x)
        self._ensure_built_inputs(xs)
        n = xs[0].shape[0]
        ys = self._prep_targets(y, n)
        for a in xs:
            self._check_finite("x", a)
        for a in ys:
            self._check_finite("y", a)
        sws = self._prep_sample_weights(ys, n, sample_weight, class_weight)
        self._ensure_bound()
        try:
            loss, parts, preds = self._train_step(xs, ys, sws)
        except FloatingPointError as err:
            raise FloatingPointError(
                f"non-finite loss or gradient ({err}); the update was skipped, so the weights "
                "are unchanged") from err
        res = self._batch_logs(loss, parts, ys, preds)
        if return_dict:
            return dict(zip(self.metrics_names, res))
        return res[0] if len(res) == 1 else res

    def test_on_batch(self, x, y=None, sample_weight=None, return_dict=False):
        self._require_compiled("test_on_batch")
        xs = self._prep_inputs(x)
        self._ensure_built_inputs(xs)
        n = xs[0].shape[0]
        ys = self._prep_targets(y, n)
        sws = self._prep_sample_weights(ys, n, sample_weight, None)
        loss, parts, preds = self._test_step(xs, ys, sws)
        res = self._batch_logs(loss, parts, ys, preds)
        if return_dict:
            return dict(zip(self.metrics_names, res))
        return res[0] if len(res) == 1 else res


def _predict_adapter(model, x, batch_size):
    return _da.get_data_adapter(model, x, batch_size=batch_size, need_y=False, what="predict")
