"""Training callbacks with Keras 3's names, arguments and behaviour.

A callback sees the model through a small surface only: ``model.stop_training``,
``model.get_weights()``, ``model.set_weights()``, ``model.save(path)``,
``model.save_weights(path)`` and ``model.optimizer.learning_rate``, so any object
offering those can be driven by them (the tests use a fake one).

Hooks (all optional to override): ``on_train_begin/end(logs)``,
``on_epoch_begin/end(epoch, logs)``, ``on_train_batch_begin/end(batch, logs)``
(which call the legacy ``on_batch_begin/end``), ``on_test_begin/end``,
``on_test_batch_begin/end``, ``on_predict_begin/end``,
``on_predict_batch_begin/end``.
"""
import csv
import math
import numbers
import os
import warnings

import numpy as np

__all__ = [
    "CSVLogger",
    "Callback",
    "CallbackList",
    "EarlyStopping",
    "History",
    "LambdaCallback",
    "LearningRateScheduler",
    "ModelCheckpoint",
    "ReduceLROnPlateau",
    "TerminateOnNaN",
]


class Callback:
    """Base class for callbacks; ``self.model`` and ``self.params`` are set by the trainer."""

    def __init__(self):
        self.params = {}
        self._model = None

    def set_params(self, params):
        self.params = dict(params or {})

    def set_model(self, model):
        self._model = model

    @property
    def model(self):
        return self._model

    # training ------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        """Called once when ``fit`` starts."""

    def on_train_end(self, logs=None):
        """Called once when ``fit`` ends (also after an early stop)."""

    def on_epoch_begin(self, epoch, logs=None):
        """Called at the start of each epoch (``epoch`` counts from 0)."""

    def on_epoch_end(self, epoch, logs=None):
        """Called at the end of each epoch with that epoch's logs (loss, val_loss, ...)."""

    def on_batch_begin(self, batch, logs=None):
        """Legacy alias: called by :meth:`on_train_batch_begin`."""

    def on_batch_end(self, batch, logs=None):
        """Legacy alias: called by :meth:`on_train_batch_end`."""

    def on_train_batch_begin(self, batch, logs=None):
        self.on_batch_begin(batch, logs=logs)

    def on_train_batch_end(self, batch, logs=None):
        self.on_batch_end(batch, logs=logs)

    # evaluation / prediction --------------------------------------------------
    def on_test_begin(self, logs=None):
        """Called when ``evaluate`` starts."""

    def on_test_end(self, logs=None):
        """Called when ``evaluate`` ends."""

    def on_test_batch_begin(self, batch, logs=None):
        """Called before each ``evaluate`` batch."""

    def on_test_batch_end(self, batch, logs=None):
        """Called after each ``evaluate`` batch."""

    def on_predict_begin(self, logs=None):
        """Called when ``predict`` starts."""

    def on_predict_end(self, logs=None):
        """Called when ``predict`` ends."""

    def on_predict_batch_begin(self, batch, logs=None):
        """Called before each ``predict`` batch."""

    def on_predict_batch_end(self, batch, logs=None):
        """Called after each ``predict`` batch."""


_HOOKS = (
    "on_train_begin", "on_train_end", "on_test_begin", "on_test_end", "on_predict_begin",
    "on_predict_end",
)
_EPOCH_HOOKS = ("on_epoch_begin", "on_epoch_end")
_BATCH_HOOKS = (
    "on_batch_begin", "on_batch_end", "on_train_batch_begin", "on_train_batch_end",
    "on_test_batch_begin", "on_test_batch_end", "on_predict_batch_begin",
    "on_predict_batch_end",
)


class CallbackList(Callback):
    """Dispatches each hook to a list of callbacks, in order.

    Parameters
    ----------
    callbacks : list of Callback, optional
    model : object, optional
        Given to every callback's ``set_model``.
    params : dict, optional
        Given to every callback's ``set_params`` (``epochs``, ``steps``, ``verbose``);
        extra keyword arguments join it, as in Keras' ``CallbackList(..., **params)``.
    """

    def __init__(self, callbacks=None, model=None, params=None, add_history=False,
                 add_progbar=False, **kwargs):
        super().__init__()
        cbs = list(callbacks or [])
        for cb in cbs:
            if not isinstance(cb, Callback):
                raise TypeError(
                    f"callbacks must be cylstm.callbacks.Callback instances; got "
                    f"{type(cb).__name__}"
                )
        if add_history and not any(isinstance(cb, History) for cb in cbs):
            cbs.append(History())
        self.callbacks = cbs
        merged = dict(params or {})
        merged.update(kwargs)
        if merged:
            self.set_params(merged)
        if model is not None:
            self.set_model(model)

    def append(self, callback):
        if not isinstance(callback, Callback):
            raise TypeError(f"expected a Callback; got {type(callback).__name__}")
        self.callbacks.append(callback)
        if self._model is not None:
            callback.set_model(self._model)
        callback.set_params(self.params)

    def set_params(self, params):
        super().set_params(params)
        for cb in self.callbacks:
            cb.set_params(params)

    def set_model(self, model):
        super().set_model(model)
        for cb in self.callbacks:
            cb.set_model(model)

    def __iter__(self):
        return iter(self.callbacks)

    def __len__(self):
        return len(self.callbacks)


def _make_dispatch(name, kind):
    if kind == "plain":
        def hook(self, logs=None):
            for cb in self.callbacks:
                getattr(cb, name)(logs)
    else:
        def hook(self, index, logs=None):
            for cb in self.callbacks:
                getattr(cb, name)(index, logs)
    hook.__name__ = name
    hook.__doc__ = f"Call ``{name}`` on every callback."
    return hook


for _name in _HOOKS:
    setattr(CallbackList, _name, _make_dispatch(_name, "plain"))
for _name in _EPOCH_HOOKS + _BATCH_HOOKS:
    setattr(CallbackList, _name, _make_dispatch(_name, "indexed"))


class History(Callback):
    """Records the logs of each epoch: ``history.history["loss"]`` etc., ``history.epoch``."""

    def __init__(self):
        super().__init__()
        self.history = {}
        self.epoch = []

    def on_train_begin(self, logs=None):
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(v)
        if self.model is not None:
            try:
                self.model.history = self
            except AttributeError:  # a model object that refuses the attribute
                pass


# ----------------------------------------------------------------------------- monitors
_MAX_HINTS = ("acc", "auc", "precision", "recall", "fmeasure", "f1")
_MIN_NAMES = ("loss", "mae", "mse", "rmse", "mape", "msle", "ce", "crossentropy", "huber")


def _auto_direction(monitor, who):
    """'max' or 'min' for a monitored log key in ``mode='auto'``, as Keras decides."""
    low = monitor.removeprefix("val_").lower()
    if low in _MIN_NAMES or low.endswith(("_error", "crossentropy", "loss")):
        return "min"
    if any(h in low for h in _MAX_HINTS):
        return "max"
    raise ValueError(
        f"{who} received monitor={monitor!r} but cannot tell whether that metric should be "
        "maximized or minimized. Pass mode='max' to use its highest value, or mode='min' "
        "to use its lowest value."
    )


def _check_mode(mode, who):
    if mode not in ("auto", "min", "max"):
        warnings.warn(f"{who} mode {mode!r} is unknown, fallback to auto mode.", stacklevel=3)
        return "auto"
    return mode


def _scalar(value):
    """A log value as a float, or None if it is not a scalar number."""
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, np.ndarray) and value.size == 1:
        return float(value.reshape(()))
    return None


def _print(msg):
    print(msg, flush=True)


class EarlyStopping(Callback):
    """Stop training when a monitored quantity has stopped improving.

    Parameters
    ----------
    monitor : str, default "val_loss"
    min_delta : float, default 0
        An improvement must exceed this (absolute) margin.
    patience : int, default 0
        Epochs without improvement after which training stops.
    verbose : int, default 0
    mode : {"auto", "min", "max"}
    baseline : float, optional
        Until the monitored value beats it, the patience counter is not reset.
    restore_best_weights : bool, default False
        At the end of training, put back the weights of the best epoch (if a best
        epoch was seen; Keras 3 restores them whether or not training stopped early).
    start_from_epoch : int, default 0
        Warm-up epochs that are not monitored.
    """

    def __init__(self, monitor="val_loss", min_delta=0, patience=0, verbose=0, mode="auto",
                 baseline=None, restore_best_weights=False, start_from_epoch=0):
        super().__init__()
        if not isinstance(monitor, str):
            raise TypeError(f"monitor must be a str; got {type(monitor).__name__}")
        if isinstance(patience, bool) or not isinstance(patience, numbers.Integral) \
                or patience < 0:
            raise ValueError(f"patience must be an int >= 0; got {patience!r}")
        if isinstance(start_from_epoch, bool) or not isinstance(
                start_from_epoch, numbers.Integral) or start_from_epoch < 0:
            raise ValueError(f"start_from_epoch must be an int >= 0; got {start_from_epoch!r}")
        self.monitor = monitor
        self.patience = int(patience)
        self.verbose = verbose
        self.baseline = baseline
        self.min_delta = abs(float(min_delta))
        self.restore_best_weights = bool(restore_best_weights)
        self.start_from_epoch = int(start_from_epoch)
        self.mode = _check_mode(mode, "EarlyStopping")
        self._direction = None
        self.wait = 0
        self.stopped_epoch = 0
        self.best = None
        self.best_weights = None
        self.best_epoch = 0

    def _is_improvement(self, value, reference):
        if reference is None:
            return True
        # an improvement must beat the reference by more than min_delta
        if self._direction == "min":
            return value + self.min_delta < reference
        return value - self.min_delta > reference

    def on_train_begin(self, logs=None):
        self.wait = 0
        self.stopped_epoch = 0
        self.best = None
        self.best_weights = None
        self.best_epoch = 0

    def get_monitor_value(self, logs):
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is None:
            warnings.warn(
                f"Early stopping conditioned on metric `{self.monitor}` which is not "
                f"available. Available metrics are: {','.join(logs)}", stacklevel=3,
            )
            return None
        return _scalar(value)

    def on_epoch_end(self, epoch, logs=None):
        if self._direction is None:
            self._direction = (self.mode if self.mode != "auto"
                               else _auto_direction(self.monitor, "EarlyStopping"))
        current = self.get_monitor_value(logs)
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            # nothing better seen yet: the current weights are the best so far
            self.best_weights = self.model.get_weights()
            self.best_epoch = epoch
        self.wait += 1
        if not math.isnan(current) and self._is_improvement(current, self.best):
            self.best = current
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            # reset patience only when beating the baseline as well as the best
            if self.baseline is None or self._is_improvement(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose > 0:
            _print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                _print("Restoring model weights from the end of the best epoch: "
                       f"{self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)


class ModelCheckpoint(Callback):
    """Save the model (or its weights) during training.

    Parameters
    ----------
    filepath : str or os.PathLike
        May contain ``{epoch}`` (1-based) and log keys, e.g.
        ``"ckpt-{epoch:02d}-{val_loss:.2f}.npz"``; ``{batch}`` too with an integer
        ``save_freq``.  Missing directories are created.
    monitor : str, default "val_loss"
    verbose : int, default 0
    save_best_only : bool, default False
        Save only when ``monitor`` improves on the best value seen.
    save_weights_only : bool, default False
        ``model.save_weights(path)`` instead of ``model.save(path)`` (both atomic).
    mode : {"auto", "min", "max"}
    save_freq : "epoch" or int
        Save at every epoch end, or every ``save_freq`` batches.
    initial_value_threshold : float, optional
        The best value to beat before the first save (``save_best_only``).
    """

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False,
                 save_weights_only=False, mode="auto", save_freq="epoch",
                 initial_value_threshold=None):
        super().__init__()
        if not isinstance(filepath, (str, os.PathLike)):
            raise TypeError(f"filepath must be a str or path; got {type(filepath).__name__}")
        self.filepath = os.fspath(filepath)
        self.monitor = monitor
        self.verbose = verbose
        self.save_best_only = bool(save_best_only)
        self.save_weights_only = bool(save_weights_only)
        if save_freq != "epoch" and (isinstance(save_freq, bool)
                                     or not isinstance(save_freq, numbers.Integral)
                                     or save_freq < 1):
            raise ValueError(
                f"Unrecognized save_freq: {save_freq!r}. Expected save_freq to be 'epoch' or "
                "a positive integer"
            )
        self.save_freq = save_freq
        mode = _check_mode(mode, "ModelCheckpoint")
        if mode == "auto":
            # Keras' rule here: accuracy-like names are maximized, everything else minimized
            mode = "max" if ("acc" in monitor or monitor.startswith("fmeasure")) else "min"
        self.mode = mode
        if initial_value_threshold is not None:
            self.best = float(initial_value_threshold)
        else:
            self.best = math.inf if mode == "min" else -math.inf
        self._current_epoch = 0
        self._batches_seen_since_last_saving = 0
        self._last_batch_seen = 0

    def _better(self, current):
        return current < self.best if self.mode == "min" else current > self.best

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self._should_save_on_batch(batch):
            self._save_model(self._current_epoch, batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save_model(epoch, None, logs)

    def _should_save_on_batch(self, batch):
        if self.save_freq == "epoch":
            return False
        if batch <= self._last_batch_seen:  # a new epoch started
            add = batch + 1
        else:
            add = batch - self._last_batch_seen
        self._batches_seen_since_last_saving += add
        self._last_batch_seen = batch
        if self._batches_seen_since_last_saving >= self.save_freq:
            self._batches_seen_since_last_saving = 0
            return True
        return False

    def _get_file_path(self, epoch, batch, logs):
        logs = dict(logs or {})
        try:
            if batch is None or "batch" in logs:
                return self.filepath.format(epoch=epoch + 1, **logs)
            return self.filepath.format(epoch=epoch + 1, batch=batch + 1, **logs)
        except KeyError as e:
            raise KeyError(
                f'Failed to format this callback filepath: "{self.filepath}". Reason: {e} is '
                f"not among the logs ({', '.join(logs) or 'none'})"
            ) from None

    def _write(self, filepath):
        if os.path.isdir(filepath):
            raise IsADirectoryError(
                "Please specify a non-directory filepath for ModelCheckpoint. Filepath used "
                f"is an existing directory: {filepath}"
            )
        if self.save_weights_only:
            self.model.save_weights(filepath)
        else:
            self.model.save(filepath)

    def _save_model(self, epoch, batch, logs):
        logs = logs or {}
        filepath = self._get_file_path(epoch, batch, logs)
        dirname = os.path.dirname(filepath)
        if dirname:
            os.makedirs(dirname, exist_ok=True)
        if not self.save_best_only:
            if self.verbose > 0:
                _print(f"\nEpoch {epoch + 1}: saving model to {filepath}")
            self._write(filepath)
            return
        raw = logs.get(self.monitor)
        current = None if raw is None else _scalar(raw)
        if raw is None:
            warnings.warn(f"Can save best model only with {self.monitor} available, skipping.",
                          stacklevel=3)
        elif current is None:
            warnings.warn(f"Can save best model only when {self.monitor} is a scalar; got "
                          f"{raw!r}, skipping.", stacklevel=3)
        elif not math.isnan(current) and self._better(current):
            if self.verbose > 0:
                _print(f"\nEpoch {epoch + 1}: {self.monitor} improved from {self.best:.5f} to "
                       f"{current:.5f}, saving model to {filepath}")
            self.best = current
            self._write(filepath)
        elif self.verbose > 0:
            _print(f"\nEpoch {epoch + 1}: {self.monitor} did not improve from {self.best:.5f}")


class TerminateOnNaN(Callback):
    """Stop training as soon as a batch's loss is NaN or infinite.

    With cylstm the offending update is never applied (the optimizer refuses
    non-finite gradients), so the model keeps its last finite weights.
    """

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        v = None if loss is None else _scalar(loss)
        if v is not None and not math.isfinite(v):
            _print(f"Batch {batch}: Invalid loss, terminating training")
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        v = None if loss is None else _scalar(loss)
        if v is not None and not math.isfinite(v):
            _print(f"Epoch {epoch + 1}: Invalid loss, terminating training")
            self.model.stop_training = True


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when a metric stops improving.

    Parameters
    ----------
    monitor : str, default "val_loss"
    factor : float, default 0.1
        ``new_lr = lr * factor`` (must be < 1).
    patience : int, default 10
    verbose : int, default 0
    mode : {"auto", "min", "max"}
        ``auto``: maximize when ``"acc"`` is in the monitor's name, else minimize.
    min_delta : float, default 1e-4
    cooldown : int, default 0
        Epochs to wait after a reduction before counting again.
    min_lr : float, default 0.0
    """

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto",
                 min_delta=1e-4, cooldown=0, min_lr=0.0, **kwargs):
        super().__init__()
        if "epsilon" in kwargs:  # Keras 2's name for min_delta
            min_delta = kwargs.pop("epsilon")
            warnings.warn("`epsilon` argument is deprecated; use `min_delta`",
                          DeprecationWarning, stacklevel=2)
        if kwargs:
            raise TypeError(f"ReduceLROnPlateau got unexpected keyword argument(s) "
                            f"{sorted(kwargs)}")
        if isinstance(factor, bool) or not isinstance(factor, numbers.Real):
            raise TypeError(f"factor must be a float; got {type(factor).__name__}")
        if factor >= 1.0:
            raise ValueError(
                f"ReduceLROnPlateau does not support a factor >= 1.0. Received factor={factor}"
            )
        self.monitor = monitor
        self.factor = float(factor)
        self.min_lr = float(min_lr)
        self.min_delta = float(min_delta)
        self.patience = int(patience)
        self.verbose = verbose
        self.cooldown = int(cooldown)
        self.mode = _check_mode(mode, "ReduceLROnPlateau")
        self._reset()

    def _reset(self):
        self._maximize = not (self.mode == "min" or (self.mode == "auto"
                                                      and "acc" not in self.monitor))
        self.best = -math.inf if self._maximize else math.inf
        self.cooldown_counter = 0
        self.wait = 0

    def _better(self, current):
        if self._maximize:
            return current > self.best + self.min_delta
        return current < self.best - self.min_delta

    def in_cooldown(self):
        return self.cooldown_counter > 0

    def on_train_begin(self, logs=None):
        self._reset()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        opt = self.model.optimizer
        logs["learning_rate"] = float(opt.learning_rate)
        raw = logs.get(self.monitor)
        current = None if raw is None else _scalar(raw)
        if current is None:
            warnings.warn(
                f"Learning rate reduction is conditioned on metric `{self.monitor}` which is "
                f"not available. Available metrics are: {','.join(logs)}.", stacklevel=2,
            )
            return
        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0
        if self._better(current):
            self.best = current
            self.wait = 0
        elif not self.in_cooldown():
            self.wait += 1
            if self.wait >= self.patience:
                old_lr = float(opt.learning_rate)
                # Keras compares in float32, so a rate already at min_lr stays put
                if old_lr > np.float32(self.min_lr):
                    new_lr = max(old_lr * self.factor, self.min_lr)
                    opt.learning_rate = new_lr
                    if self.verbose > 0:
                        _print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning "
                               f"rate to {new_lr}.")
                    self.cooldown_counter = self.cooldown
                    self.wait = 0


class LearningRateScheduler(Callback):
    """Set the learning rate at each epoch start to ``schedule(epoch, lr)``.

    ``schedule`` may also take only ``epoch`` (Keras 1 style).
    """

    def __init__(self, schedule, verbose=0):
        super().__init__()
        if not callable(schedule):
            raise TypeError(f"schedule must be callable; got {type(schedule).__name__}")
        self.schedule = schedule
        self.verbose = verbose

    def on_epoch_begin(self, epoch, logs=None):
        opt = self.model.optimizer
        lr = float(opt.learning_rate)
        try:
            new = self.schedule(epoch, lr)
        except TypeError:  # one-argument schedules
            new = self.schedule(epoch)
        v = _scalar(new)
        if v is None or not math.isfinite(v):
            raise ValueError(
                f'The output of the "schedule" function should be a finite float; got {new!r}'
            )
        opt.learning_rate = v
        if self.verbose > 0:
            _print(f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate to {v}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(self.model.optimizer.learning_rate)


class LambdaCallback(Callback):
    """A callback from plain functions: ``LambdaCallback(on_epoch_end=lambda e, logs: ...)``.

    Hooks take the arguments of the method they replace (``(logs)`` or
    ``(epoch_or_batch, logs)``).  The hooks are real methods of this class, so a
    trainer that skips per-batch calls when no callback defines them still calls them.
    """

    _NAMES = _HOOKS + _EPOCH_HOOKS + _BATCH_HOOKS

    def __init__(self, **hooks):
        super().__init__()
        unknown = set(hooks) - set(self._NAMES)
        if unknown:
            raise TypeError(f"LambdaCallback: unknown hook(s) {sorted(unknown)}; valid: "
                            f"{', '.join(self._NAMES)}")
        for name, fn in hooks.items():
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable; got {type(fn).__name__}")
        self._fns = {k: v for k, v in hooks.items() if v is not None}


def _lambda_hook(name, indexed):
    if indexed:
        def hook(self, index, logs=None):
            fn = self._fns.get(name)
            if fn is not None:
                fn(index, logs)
            if name == "on_train_batch_begin":
                self.on_batch_begin(index, logs)
            elif name == "on_train_batch_end":
                self.on_batch_end(index, logs)
    else:
        def hook(self, logs=None):
            fn = self._fns.get(name)
            if fn is not None:
                fn(logs)
    hook.__name__ = name
    return hook


for _name in _HOOKS:
    setattr(LambdaCallback, _name, _lambda_hook(_name, False))
for _name in _EPOCH_HOOKS + _BATCH_HOOKS:
    setattr(LambdaCallback, _name, _lambda_hook(_name, True))


class CSVLogger(Callback):
    """Stream epoch results to a CSV file (``epoch`` then the log keys, sorted).

    Parameters
    ----------
    filename : str or os.PathLike
    separator : str, default ","
    append : bool, default False
        Append to an existing file (continuing training) instead of overwriting.
    """

    def __init__(self, filename, separator=",", append=False):
        super().__init__()
        self.filename = os.fspath(filename)
        self.sep = separator
        self.append = bool(append)
        self.keys = None
        self._file = None
        self._writer = None
        self._header_needed = True

    def on_train_begin(self, logs=None):
        exists = os.path.exists(self.filename) and os.path.getsize(self.filename) > 0
        self._header_needed = not (self.append and exists)
        self._file = open(self.filename, "a" if self.append else "w", newline="",  # noqa: SIM115
                          encoding="utf-8")
        self._writer = None
        self.keys = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self._file is None:
            self.on_train_begin()
        if self.keys is None:
            self.keys = sorted(logs)
        if self._writer is None:
            self._writer = csv.DictWriter(self._file, fieldnames=["epoch", *self.keys],
                                          delimiter=self.sep)
            if self._header_needed:
                self._writer.writeheader()
        row = {"epoch": epoch}
        for k in self.keys:
            v = logs.get(k, "NA")
            s = _scalar(v)
            row[k] = s if s is not None else v
        self._writer.writerow(row)
        self._file.flush()

    def on_train_end(self, logs=None):
        if self._file is not None:
            self._file.close()
        self._file = None
        self._writer = None
