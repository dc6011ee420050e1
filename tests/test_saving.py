"""save/load_model and save/load_weights: round trips, resumable training,
atomic writes, corrupt and hostile files."""
import json
import os

import numpy as np
import pytest

from cylstm import saving
from cylstm.layers import LSTM, Bidirectional, Dense, Embedding, Masking
from cylstm.models import Sequential, load_model
from cylstm.optimizers import Adam


def _data(rng, n=40):
    x = rng.standard_normal((n, 6, 3)).astype(np.float32)
    y = x[:, :, 0].sum(1, keepdims=True).astype(np.float32)
    return x, y


def _model(seed=0):
    np.random.seed(seed)
    m = Sequential([Masking(input_shape=(None, 3)),
                    Bidirectional(LSTM(5, return_sequences=True), merge_mode="sum"),
                    LSTM(4, go_backwards=True), Dense(1)])
    m.compile(optimizer=Adam(learning_rate=0.01, clipnorm=1.0), loss="mse", metrics=["mae"])
    return m


def test_round_trip_predictions_and_config(tmp_path):
    rng = np.random.default_rng(0)
    x, y = _data(rng)
    model = _model()
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = load_model(path)
    assert loaded.get_config() == model.get_config()
    assert [l.name for l in loaded.layers] == [l.name for l in model.layers]
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert type(loaded.optimizer) is Adam and loaded.optimizer.clipnorm == 1.0
    assert loaded.optimizer.iterations == model.optimizer.iterations
    assert loaded.metrics_names == model.metrics_names
    # the file is a plain .npz readable without pickle
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(z["__cylstm__"].tobytes().decode())
    assert meta["format"] == "cylstm.model"


def test_training_resumes_exactly(tmp_path):
    rng = np.random.default_rng(1)
    x, y = _data(rng)
    a = _model()
    a.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0)
    a.save(tmp_path / "a.npz")
    a.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    b = load_model(tmp_path / "a.npz")
    b.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


def test_float64_and_embedding_model(tmp_path):
    m = Sequential([Embedding(7, 3, mask_zero=True, input_shape=(4,), dtype="float64"),
                    LSTM(2), Dense(2, activation="softmax")])
    m.compile("rmsprop", "sparse_categorical_crossentropy")
    x = np.array([[1, 2, 0, 0], [3, 4, 5, 6]])
    m.train_on_batch(x, np.array([0, 1]))
    m.save(tmp_path / "e.npz")
    back = load_model(tmp_path / "e.npz")
    assert back.dtype == np.float64
    np.testing.assert_array_equal(back.predict(x), m.predict(x))


def test_weights_only(tmp_path):
    m1 = _model(1)
    m2 = _model(2)
    assert not np.array_equal(m1.get_weights()[1], m2.get_weights()[1])
    m1.save_weights(tmp_path / "w.npz")
    m2.load_weights(tmp_path / "w.npz")
    for a, b in zip(m1.get_weights(), m2.get_weights()):
        np.testing.assert_array_equal(a, b)
    other = Sequential([LSTM(2, input_shape=(None, 3)), Dense(1)])
    with pytest.raises(ValueError, match="weight arrays"):
        other.load_weights(tmp_path / "w.npz")
    with pytest.raises(ValueError, match="not a model"):
        load_model(tmp_path / "w.npz")


def test_uncompiled_and_unbuilt(tmp_path):
    m = Sequential([LSTM(2, input_shape=(None, 3)), Dense(1)])
    m.save(tmp_path / "u.npz")
    back = load_model(tmp_path / "u.npz")
    assert not back.compiled and back.built
    with pytest.raises(ValueError, match="not built"):
        Sequential([LSTM(2), Dense(1)]).save(tmp_path / "v.npz")


def test_save_is_atomic(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    _x, _ = _data(rng, 5)
    m = _model()
    path = tmp_path / "m.npz"
    m.save(path)
    good = path.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(saving.np, "savez", boom)
    m.set_weights([w + 1 for w in m.get_weights()])
    with pytest.raises(RuntimeError, match="disk full"):
        m.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["m.npz"]  # no temp file left behind
    with pytest.raises(FileExistsError):
        m.save(path, overwrite=False)


def test_corrupt_and_hostile_files(tmp_path):
    m = _model()
    path = tmp_path / "m.npz"
    m.save(path)
    data = path.read_bytes()
    cases = {
        "garbage": b"this is not a model file at all",
        "truncated": data[: len(data) // 2],
        "empty": b"",
    }
    for name, content in cases.items():
        p = tmp_path / f"{name}.npz"
        p.write_bytes(content)
        with pytest.raises(ValueError, match="not a valid cylstm file"):
            load_model(p)
    # an .npz without the config entry
    p = tmp_path / "plain.npz"
    np.savez(p, a=np.zeros(3))
    with pytest.raises(ValueError, match="__cylstm__"):
        load_model(p)
    # an object array needs pickle: refused, never unpickled
    p = tmp_path / "pickle.npz"
    with open(p, "wb") as f:
        np.savez(f, __cylstm__=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError):
        load_model(p)
    # a config naming a class cylstm does not have
    meta = {"format": "cylstm.model", "version": 1, "n_weights": 0, "compile": None,
            "model": {"name": "s", "layers": [{"class_name": "os.system", "config": {}}]}}
    p = tmp_path / "evil.npz"
    with open(p, "wb") as f:
        np.savez(f, __cylstm__=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    with pytest.raises(ValueError, match="unknown layer class"):
        load_model(p)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.npz")


def test_layers_added_after_loading_get_fresh_names(tmp_path, monkeypatch):
    import collections

    from cylstm import layers

    m = Sequential([LSTM(2, input_shape=(None, 3)), Dense(2, name="dense")])
    m.save(tmp_path / "m.npz")
    back = load_model(tmp_path / "m.npz")
    # a fresh process: the name counters start again, so Dense() is named 'dense'
    monkeypatch.setattr(layers, "_name_counts", collections.defaultdict(int))
    back.add(Dense(1))
    names = [layer.name for layer in back.layers]
    assert len(set(names)) == 3 and names[1] == "dense" and names[2].startswith("dense_")
    with pytest.raises(ValueError, match="named"):
        back.add(Dense(1, name="dense"))


def test_keras_files_point_to_the_importer(tmp_path):
    import zipfile

    p = tmp_path / "model.keras"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("config.json", "{}")
        z.writestr("metadata.json", "{}")
    with pytest.raises(ValueError, match="from_keras"):
        load_model(p)
    h5 = tmp_path / "model.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(ValueError, match="from_keras"):
        load_model(h5)
