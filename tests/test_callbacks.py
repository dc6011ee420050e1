"""Callbacks driven by a tiny fake model (only the surface callbacks use), with a
fake fit loop that calls the hooks in Keras' order."""
import csv
import math
import os

import numpy as np
import pytest

from cylstm import callbacks as C


class FakeOptimizer:
    def __init__(self, lr=0.1):
        self.learning_rate = lr


class FakeModel:
    """Weights are one array whose value is the epoch that produced it."""

    def __init__(self):
        self.stop_training = False
        self.weights = [np.zeros(2)]
        self.optimizer = FakeOptimizer()
        self.saved = []

    def get_weights(self):
        return [w.copy() for w in self.weights]

    def set_weights(self, ws):
        self.weights = [np.array(w) for w in ws]

    def save(self, path):
        self.saved.append(("model", path, float(self.weights[0][0])))
        with open(path, "w") as f:
            f.write("model")

    def save_weights(self, path):
        self.saved.append(("weights", path, float(self.weights[0][0])))
        with open(path, "w") as f:
            f.write("weights")


def fit(model, callbacks, epoch_logs, steps=3, batch_losses=None):
    """Run the hooks as a Keras fit would; epoch_logs[e] are epoch e's logs."""
    history = C.History()
    cbl = C.CallbackList(list(callbacks) + [history], model=model,
                         params={"epochs": len(epoch_logs), "steps": steps, "verbose": 0})
    model.stop_training = False
    cbl.on_train_begin()
    for epoch, logs in enumerate(epoch_logs):
        cbl.on_epoch_begin(epoch)
        for b in range(steps):
            cbl.on_train_batch_begin(b)
            model.weights = [np.full(2, epoch + 1.0)]  # "training" changes weights
            loss = (batch_losses or {}).get((epoch, b), 1.0)
            cbl.on_train_batch_end(b, {"loss": loss})
            if model.stop_training:
                break
        logs = dict(logs)
        cbl.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    cbl.on_train_end(logs)
    return history


def val(*values, key="val_loss"):
    return [{"loss": 1.0, key: v} for v in values]


# ----------------------------------------------------------------------------- History
def test_history_records_logs_and_epochs():
    m = FakeModel()
    h = fit(m, [], [{"loss": 3.0, "mae": 1.0}, {"loss": 2.0, "mae": 0.5}])
    assert h.history == {"loss": [3.0, 2.0], "mae": [1.0, 0.5]}
    assert h.epoch == [0, 1]
    assert m.history is h
    assert h.params["epochs"] == 2 and h.model is m


# ----------------------------------------------------------------------------- EarlyStopping
def test_early_stopping_patience():
    m = FakeModel()
    es = C.EarlyStopping(patience=2)
    h = fit(m, [es], val(1.0, 0.8, 0.9, 0.85, 0.7, 0.6))
    # best at epoch 1; epochs 2, 3 do not improve -> stop after epoch 3
    assert h.epoch == [0, 1, 2, 3]
    assert es.stopped_epoch == 3 and es.best == 0.8 and es.best_epoch == 1


def test_early_stopping_restore_best_weights():
    m = FakeModel()
    es = C.EarlyStopping(patience=1, restore_best_weights=True)
    fit(m, [es], val(1.0, 0.5, 0.7, 0.9))
    assert es.stopped_epoch == 2
    np.testing.assert_array_equal(m.weights[0], [2.0, 2.0])  # epoch index 1 -> value 2


def test_early_stopping_restores_even_without_stop():
    # Keras 3 restores the best weights at train end whether or not it stopped
    m = FakeModel()
    es = C.EarlyStopping(patience=5, restore_best_weights=True)
    fit(m, [es], val(1.0, 0.2, 0.7))
    assert es.stopped_epoch == 0
    np.testing.assert_array_equal(m.weights[0], [2.0, 2.0])


def test_early_stopping_min_delta_mode_and_baseline():
    m = FakeModel()
    es = C.EarlyStopping(monitor="val_accuracy", min_delta=0.05, patience=1)
    assert fit(m, [es], val(0.5, 0.52, 0.6, key="val_accuracy")).epoch == [0, 1]
    es = C.EarlyStopping(monitor="val_loss", mode="max", patience=0)
    assert fit(m, [es], val(1.0, 0.9)).epoch == [0, 1]
    # baseline: epochs that improve on the best but not on the baseline still count
    # toward patience, so the first non-improving epoch stops training (Keras 3)
    es = C.EarlyStopping(baseline=0.5, patience=2)
    assert fit(m, [es], val(0.9, 0.8, 0.85, 0.4)).epoch == [0, 1, 2]
    es = C.EarlyStopping(patience=2)
    assert fit(m, [es], val(0.9, 0.8, 0.85, 0.4)).epoch == [0, 1, 2, 3]


def test_early_stopping_start_from_epoch_and_missing_monitor():
    m = FakeModel()
    es = C.EarlyStopping(patience=0, start_from_epoch=2)
    assert fit(m, [es], val(1.0, 2.0, 3.0, 4.0)).epoch == [0, 1, 2, 3]
    es = C.EarlyStopping(monitor="val_mae", patience=0)
    with pytest.warns(UserWarning, match="val_mae"):
        assert fit(m, [es], [{"loss": 1.0}] * 3).epoch == [0, 1, 2]


def test_early_stopping_nan_is_not_an_improvement():
    m = FakeModel()
    es = C.EarlyStopping(patience=1, restore_best_weights=True)
    fit(m, [es], val(1.0, math.nan, 0.1))
    assert es.stopped_epoch == 1 and es.best == 1.0
    np.testing.assert_array_equal(m.weights[0], [1.0, 1.0])


def test_early_stopping_unknown_direction():
    m = FakeModel()
    with pytest.raises(ValueError, match="mode='max'"):
        fit(m, [C.EarlyStopping(monitor="val_weirdness")], val(1.0, key="val_weirdness"))
    with pytest.warns(UserWarning, match="unknown"):
        C.EarlyStopping(mode="largest")
    with pytest.raises(ValueError, match="patience"):
        C.EarlyStopping(patience=-1)


# ----------------------------------------------------------------------------- ModelCheckpoint
def test_checkpoint_every_epoch_with_format(tmp_path):
    m = FakeModel()
    path = str(tmp_path / "sub" / "ckpt-{epoch:02d}-{val_loss:.2f}.npz")
    fit(m, [C.ModelCheckpoint(path)], val(0.9, 0.456))
    names = sorted(os.listdir(tmp_path / "sub"))
    assert names == ["ckpt-01-0.90.npz", "ckpt-02-0.46.npz"]
    assert [s[0] for s in m.saved] == ["model", "model"]


def test_checkpoint_best_only_weights(tmp_path):
    m = FakeModel()
    path = str(tmp_path / "best.npz")
    cb = C.ModelCheckpoint(path, save_best_only=True, save_weights_only=True)
    fit(m, [cb], val(1.0, 0.7, 0.8, 0.5, 0.6))
    # saved at epochs 0, 1, 3 with those epochs' weights
    assert [(s[0], s[2]) for s in m.saved] == [("weights", 1.0), ("weights", 2.0),
                                                ("weights", 4.0)]
    assert cb.best == 0.5


def test_checkpoint_max_mode_auto_for_accuracy(tmp_path):
    m = FakeModel()
    cb = C.ModelCheckpoint(str(tmp_path / "a.npz"), monitor="val_acc", save_best_only=True)
    fit(m, [cb], val(0.5, 0.4, 0.9, key="val_acc"))
    assert [s[2] for s in m.saved] == [1.0, 3.0]
    cb = C.ModelCheckpoint(str(tmp_path / "b.npz"), save_best_only=True,
                           initial_value_threshold=0.6)
    m = FakeModel()
    fit(m, [cb], val(0.7, 0.5))
    assert [s[2] for s in m.saved] == [2.0]


def test_checkpoint_batch_frequency(tmp_path):
    m = FakeModel()
    path = str(tmp_path / "b-{epoch}-{batch}.npz")
    fit(m, [C.ModelCheckpoint(path, save_freq=2)], val(1.0, 1.0), steps=3)
    # 6 batches in all, every 2nd: epoch1 batch2, epoch2 batch1, epoch2 batch3
    assert sorted(os.listdir(tmp_path)) == ["b-1-2.npz", "b-2-1.npz", "b-2-3.npz"]


def test_checkpoint_errors(tmp_path):
    m = FakeModel()
    with pytest.raises(KeyError, match="val_mae"):
        fit(m, [C.ModelCheckpoint(str(tmp_path / "{val_mae}.npz"))], val(1.0))
    with pytest.raises(IsADirectoryError):
        fit(m, [C.ModelCheckpoint(str(tmp_path))], val(1.0))
    with pytest.raises(ValueError, match="save_freq"):
        C.ModelCheckpoint("x.npz", save_freq="batch")
    with pytest.warns(UserWarning, match="val_loss"):
        fit(m, [C.ModelCheckpoint(str(tmp_path / "c.npz"), save_best_only=True)],
            [{"loss": 1.0}])


# ----------------------------------------------------------------------------- TerminateOnNaN
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_terminate_on_nan(bad, capsys):
    m = FakeModel()
    h = fit(m, [C.TerminateOnNaN()], val(1.0, 1.0, 1.0), batch_losses={(1, 1): bad})
    assert m.stop_training
    assert h.epoch == [0, 1]
    assert "Invalid loss" in capsys.readouterr().out


def test_terminate_on_nan_quiet_on_finite():
    m = FakeModel()
    h = fit(m, [C.TerminateOnNaN()], val(1.0, 1.0))
    assert h.epoch == [0, 1] and not m.stop_training


# ----------------------------------------------------------------------------- ReduceLROnPlateau
def test_reduce_lr_on_plateau():
    m = FakeModel()
    cb = C.ReduceLROnPlateau(factor=0.5, patience=2, min_lr=0.02)
    h = fit(m, [cb], val(1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5))
    # plateaus: epochs 1-2 -> 0.05; epochs 4-5 -> 0.025; epochs 6-7 -> 0.02 (min_lr)
    lrs = h.history["learning_rate"]
    assert lrs[:3] == [0.1, 0.1, 0.1]  # logged before the reduction at that epoch's end
    assert lrs[3] == pytest.approx(0.05)
    assert lrs[6] == pytest.approx(0.025)
    assert m.optimizer.learning_rate == pytest.approx(0.02)


def test_reduce_lr_cooldown_and_min_delta():
    m = FakeModel()
    cb = C.ReduceLROnPlateau(factor=0.1, patience=1, cooldown=2)
    fit(m, [cb], val(1.0, 1.0, 1.0, 1.0, 1.0))
    # reduce at epoch 1, cooldown epochs 2-3, reduce again at epoch 4
    assert m.optimizer.learning_rate == pytest.approx(0.001)
    m = FakeModel()
    cb = C.ReduceLROnPlateau(factor=0.5, patience=1, min_delta=0.1)
    fit(m, [cb], val(1.0, 0.95))  # 0.05 better is not better than min_delta
    assert m.optimizer.learning_rate == pytest.approx(0.05)
    with pytest.raises(ValueError, match="factor"):
        C.ReduceLROnPlateau(factor=1.5)


def test_reduce_lr_max_mode_for_accuracy():
    m = FakeModel()
    cb = C.ReduceLROnPlateau(monitor="val_acc", factor=0.5, patience=1)
    fit(m, [cb], val(0.5, 0.6, 0.7, key="val_acc"))
    assert m.optimizer.learning_rate == 0.1


# ----------------------------------------------------------------------------- others
def test_learning_rate_scheduler():
    m = FakeModel()
    h = fit(m, [C.LearningRateScheduler(lambda epoch, lr: lr * 0.5)], val(1, 1, 1))
    assert h.history["learning_rate"] == [0.05, 0.025, 0.0125]
    m = FakeModel()
    fit(m, [C.LearningRateScheduler(lambda epoch: 0.01 * (epoch + 1))], val(1, 1))
    assert m.optimizer.learning_rate == pytest.approx(0.02)
    with pytest.raises(ValueError, match="finite"):
        fit(FakeModel(), [C.LearningRateScheduler(lambda e, lr: float("nan"))], val(1))


def test_lambda_callback_and_order():
    seen = []
    cb = C.LambdaCallback(on_epoch_end=lambda e, logs: seen.append(("epoch", e)),
                          on_train_batch_end=lambda b, logs: seen.append(("batch", b)),
                          on_train_end=lambda logs: seen.append("end"))
    fit(FakeModel(), [cb], val(1.0), steps=2)
    assert seen == [("batch", 0), ("batch", 1), ("epoch", 0), "end"]
    with pytest.raises(TypeError, match="unknown hook"):
        C.LambdaCallback(on_epoch_ending=print)


def test_legacy_batch_hooks_are_called():
    calls = []

    class Legacy(C.Callback):
        def on_batch_end(self, batch, logs=None):
            calls.append(batch)

    fit(FakeModel(), [Legacy()], val(1.0), steps=3)
    assert calls == [0, 1, 2]


def test_csv_logger(tmp_path):
    path = tmp_path / "log.csv"
    fit(FakeModel(), [C.CSVLogger(path)], [{"loss": 1.5, "val_loss": 2.0}] * 2)
    fit(FakeModel(), [C.CSVLogger(path, append=True)], [{"loss": 0.5, "val_loss": 1.0}])
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [r["loss"] for r in rows] == ["1.5", "1.5", "0.5"]
    assert [r["epoch"] for r in rows] == ["0", "1", "0"]


def test_callback_list_validates():
    with pytest.raises(TypeError, match="Callback"):
        C.CallbackList([object()])
    cbl = C.CallbackList(add_history=True, model=FakeModel(), epochs=3)
    assert isinstance(cbl.callbacks[0], C.History)
    assert cbl.callbacks[0].params == {"epochs": 3}
