"""cylstm.interop.from_keras: live models and files, parity with Keras, and refusals."""
import json
import os
import zipfile

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from cylstm import layers as L
from cylstm.interop import from_keras
from cylstm.models import Sequential

TOL = {"rtol": 1e-5, "atol": 2e-6}
# Keras 3 on NumPy 2 warns about __array__(copy=...) inside its own code
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


# ---------------------------------------------------------------- hand-made Keras 3 files
# These need neither Keras nor TensorFlow: the archive is written exactly as Keras 3 lays it
# out (config.json + model.weights.h5 with layers/<key>/[cell/]vars/<i>), and the expected
# outputs come from a float64 NumPy LSTM with Keras's equations (gates i, f, c, o).
def _sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def keras_lstm_reference(x, kernel, rk, bias, return_sequences, go_backwards=False):
    B, T, _ = x.shape
    H = rk.shape[0]
    h, c = np.zeros((B, H)), np.zeros((B, H))
    outs = []
    for t in (range(T - 1, -1, -1) if go_backwards else range(T)):
        z = x[:, t] @ kernel + h @ rk + bias
        i, f, g, o = np.split(z, 4, axis=1)
        c = _sig(f) * c + _sig(i) * np.tanh(g)
        h = _sig(o) * np.tanh(c)
        outs.append(h)
    return np.stack(outs, 1) if return_sequences else h


def _lstm_cfg(name, units, **kw):
    cfg = {"name": name, "trainable": True,
           "dtype": {"module": "keras", "class_name": "DTypePolicy",
                     "config": {"name": "float32"}, "registered_name": None},
           "return_sequences": False, "return_state": False, "go_backwards": False,
           "stateful": False, "unroll": False, "zero_output_for_mask": False, "units": units,
           "activation": "tanh", "recurrent_activation": "sigmoid", "use_bias": True,
           "unit_forget_bias": True, "dropout": 0.0, "recurrent_dropout": 0.0, "seed": None}
    cfg.update(kw)
    return {"module": "keras.layers", "class_name": "LSTM", "config": cfg,
            "registered_name": None}


def hand_made_model(rng, I=3):
    """(config dict, {h5 path: array}, reference function) of a small Sequential."""
    w = {}
    k1 = rng.uniform(-0.5, 0.5, (I, 16)).astype(np.float32)
    r1 = rng.uniform(-0.5, 0.5, (4, 16)).astype(np.float32)
    b1 = rng.uniform(-0.5, 0.5, 16).astype(np.float32)
    w.update({"layers/lstm/cell/vars/0": k1, "layers/lstm/cell/vars/1": r1,
              "layers/lstm/cell/vars/2": b1})
    bi = {}
    for part in ("forward_layer", "backward_layer"):
        bi[part] = (rng.uniform(-0.5, 0.5, (4, 12)).astype(np.float32),
                    rng.uniform(-0.5, 0.5, (3, 12)).astype(np.float32),
                    rng.uniform(-0.5, 0.5, 12).astype(np.float32))
        for i, a in enumerate(bi[part]):
            w[f"layers/bidirectional/{part}/cell/vars/{i}"] = a
    kd = rng.uniform(-0.5, 0.5, (6, 2)).astype(np.float32)
    bd = rng.uniform(-0.5, 0.5, 2).astype(np.float32)
    w.update({"layers/dense/vars/0": kd, "layers/dense/vars/1": bd})
    for empty in ("layers/dropout/vars", "vars"):
        w[empty] = None
    config = {"module": "keras", "class_name": "Sequential", "config": {
        "name": "sequential", "trainable": True, "layers": [
            {"module": "keras.layers", "class_name": "InputLayer",
             "config": {"batch_shape": [None, None, I], "dtype": "float32", "sparse": False,
                        "name": "input_layer"}, "registered_name": None},
            _lstm_cfg("lstm", 4, return_sequences=True),
            {"module": "keras.layers", "class_name": "Bidirectional", "config": {
                "name": "bidirectional", "merge_mode": "concat",
                "layer": _lstm_cfg("forward_lstm_1", 3),
                "backward_layer": _lstm_cfg("backward_lstm_1", 3, go_backwards=True)},
             "registered_name": None},
            {"module": "keras.layers", "class_name": "Dropout",
             "config": {"name": "dropout", "rate": 0.5, "seed": None}},
            {"module": "keras.layers", "class_name": "Dense",
             "config": {"name": "dense", "units": 2, "activation": "sigmoid",
                        "use_bias": True}}]}}

    def reference(x):
        x = x.astype(np.float64)
        y = keras_lstm_reference(x, k1, r1, b1, True)
        f = keras_lstm_reference(y, *bi["forward_layer"], False)
        b = keras_lstm_reference(y, *bi["backward_layer"], False, go_backwards=True)
        return _sig(np.concatenate([f, b], 1) @ kd + bd)

    return config, w, reference


def write_weights(path, weights):
    with h5py.File(path, "w") as f:
        for name, a in weights.items():
            if a is None:
                f.require_group(name)
            else:
                f.create_dataset(name, data=a)


def write_keras(path, config, weights, tmp_path):
    h5 = tmp_path / "w.h5"
    write_weights(h5, weights)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3.0.0"}))
        z.writestr("config.json", json.dumps(config))
        z.write(h5, "model.weights.h5")
    return path


@pytest.fixture
def hand_made(tmp_path):
    rng = np.random.default_rng(0)
    config, weights, ref = hand_made_model(rng)
    x = rng.standard_normal((3, 6, 3)).astype(np.float32)
    return config, weights, ref, x


def test_hand_made_keras_archive(tmp_path, hand_made):
    config, weights, ref, x = hand_made
    p = write_keras(tmp_path / "m.keras", config, weights, tmp_path)
    model = from_keras(p)
    assert [type(l).__name__ for l in model.layers] == ["LSTM", "Bidirectional", "Dropout",
                                                        "Dense"]
    np.testing.assert_allclose(model.predict(x, verbose=0), ref(x), **TOL)


def test_hand_made_weights_file_with_each_kind_of_config(tmp_path, hand_made):
    config, weights, ref, x = hand_made
    h5 = tmp_path / "m.weights.h5"
    write_weights(h5, weights)
    js = tmp_path / "config.json"
    js.write_text(json.dumps(config))
    archive = write_keras(tmp_path / "m.keras", config, weights, tmp_path)
    first = from_keras(h5, config=config)
    for cfg in (json.dumps(config), str(js), archive, first, config["config"]):
        np.testing.assert_allclose(from_keras(h5, config=cfg).predict(x, verbose=0), ref(x),
                                   **TOL)
    with pytest.raises(ValueError, match="config="):
        from_keras(h5)


def test_hand_made_embedding_archive(tmp_path):
    rng = np.random.default_rng(6)
    table = rng.uniform(-1, 1, (7, 3)).astype(np.float32)
    k, r, b = (rng.uniform(-0.5, 0.5, s).astype(np.float32) for s in ((3, 8), (2, 8), (8,)))
    config = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "InputLayer", "config": {"batch_shape": [None, None], "dtype": "int32"}},
        {"class_name": "Embedding", "config": {"name": "embedding", "input_dim": 7,
                                               "output_dim": 3, "mask_zero": False}},
        _lstm_cfg("lstm", 2)]}}
    weights = {"layers/embedding/vars/0": table, "layers/lstm/cell/vars/0": k,
               "layers/lstm/cell/vars/1": r, "layers/lstm/cell/vars/2": b}
    model = from_keras(write_keras(tmp_path / "e.keras", config, weights, tmp_path))
    ids = rng.integers(0, 7, (2, 5))
    ref = keras_lstm_reference(table[ids].astype(np.float64), k, r, b, False)
    np.testing.assert_allclose(model.predict(ids, verbose=0), ref, **TOL)
    config["config"]["layers"][1]["config"]["input_dim"] = 8
    with pytest.raises(ValueError, match="embeddings"):
        from_keras(write_keras(tmp_path / "e2.keras", config, weights, tmp_path))


def test_weights_not_fitting_the_config(tmp_path, hand_made):
    config, weights, _, _ = hand_made
    weights["layers/dense/vars/0"] = np.zeros((5, 2), np.float32)
    with pytest.raises(ValueError, match=r"dense.*\(5, 2\)"):
        from_keras(write_keras(tmp_path / "m.keras", config, weights, tmp_path))


def test_missing_weights_are_named(tmp_path, hand_made):
    config, weights, _, _ = hand_made
    del weights["layers/bidirectional/backward_layer/cell/vars/2"]
    with pytest.raises(ValueError, match="backward_layer"):
        from_keras(write_keras(tmp_path / "m.keras", config, weights, tmp_path))


@pytest.mark.parametrize("change,match", [
    (lambda c: c["config"]["layers"].insert(2, {"class_name": "GRU", "config": {"units": 3}}),
     "GRU"),
    (lambda c: c["config"]["layers"][1]["config"].update(activation="relu"), "relu"),
    (lambda c: c["config"]["layers"][4]["config"].update(activation="elu"), "elu"),
    (lambda c: c.update(class_name="Functional"), "Sequential"),
])
def test_unsupported_layers_and_activations_are_named(tmp_path, hand_made, change, match):
    config, weights, _, _ = hand_made
    change(config)
    with pytest.raises(ValueError, match=match):
        from_keras(write_keras(tmp_path / "m.keras", config, weights, tmp_path))


def test_corrupt_and_hostile_files(tmp_path, hand_made):
    config, weights, _, _ = hand_made
    junk = tmp_path / "junk.keras"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(ValueError):
        from_keras(junk)
    # an archive without weights
    p = tmp_path / "noweights.keras"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("config.json", json.dumps(config))
    with pytest.raises(ValueError, match="model.weights.h5"):
        from_keras(p)
    # a weights file that is not HDF5
    bad_h5 = tmp_path / "bad.weights.h5"
    bad_h5.write_bytes(b"\x89HDF\r\n" + os.urandom(1000))
    with pytest.raises(ValueError):
        from_keras(bad_h5, config=config)
    # an external link pointing at another file must not be followed
    secret = tmp_path / "secret.h5"
    write_weights(secret, {"k": np.ones((3, 16), np.float32)})
    hostile = tmp_path / "hostile.weights.h5"
    write_weights(hostile, {k: v for k, v in weights.items() if k != "layers/lstm/cell/vars/0"})
    with h5py.File(hostile, "a") as f:
        f["layers/lstm/cell/vars/0"] = h5py.ExternalLink(str(secret), "k")
    with pytest.raises(ValueError, match="ExternalLink"):
        from_keras(hostile, config=config)
    # non-numeric dataset
    weights["layers/dense/vars/1"] = np.array([b"ab", b"cd"])
    with pytest.raises(ValueError, match="dtype"):
        from_keras(write_keras(tmp_path / "str.keras", config, weights, tmp_path))
    with pytest.raises(FileNotFoundError):
        from_keras(tmp_path / "nothing.keras")
    with pytest.raises(TypeError):
        from_keras(42)


def test_damaged_archives_give_clear_errors_only(tmp_path, hand_made):
    """Random byte flips in the weights and junk values in the config: ValueError/TypeError
    or a model, never another exception."""
    config, weights, _, _ = hand_made
    h5 = tmp_path / "w.h5"
    write_weights(h5, weights)
    base = h5.read_bytes()
    rng = np.random.default_rng(16)
    p = tmp_path / "bad.keras"
    for _ in range(100):
        b = bytearray(base)
        for pos in rng.integers(0, len(b), rng.integers(1, 6)):
            b[pos] = rng.integers(0, 256)
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("config.json", json.dumps(config))
            z.writestr("model.weights.h5", bytes(b))
        try:
            from_keras(p)
        except (ValueError, TypeError):
            pass
    junk = [None, -1, 0, "relu", "GRU", [], {}, [1, 2], 1.5, True]
    for _ in range(100):
        cfg = json.loads(json.dumps(config))
        layer = cfg["config"]["layers"][rng.integers(5)]
        target = layer if rng.random() < 0.3 else layer["config"]
        key = str(rng.choice(sorted(target)))
        target[key] = junk[rng.integers(len(junk))]
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("config.json", json.dumps(cfg))
            z.writestr("model.weights.h5", base)
        try:
            from_keras(p)
        except (ValueError, TypeError):
            pass


# ---------------------------------------------------------------- parity with real Keras
@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras as k
    except Exception as e:  # noqa: BLE001 - e.g. the default TensorFlow backend is missing
        pytest.skip(f"keras unavailable: {e}")
    return k


def _keras_models(k):
    kl = k.layers
    yield "masked-stack", k.Sequential([
        k.Input((None, 3)), kl.Masking(0.0), kl.LSTM(4, return_sequences=True),
        kl.Bidirectional(kl.LSTM(5, return_sequences=True)), kl.Dropout(0.1),
        kl.LSTM(3, go_backwards=True), kl.Dense(3, activation="softmax")])
    for mode in ("sum", "ave", "mul"):
        yield f"bidirectional-{mode}", k.Sequential([
            k.Input((None, 3)),
            kl.Bidirectional(kl.LSTM(4, return_sequences=True, use_bias=False),
                             merge_mode=mode),
            kl.Bidirectional(kl.LSTM(3), merge_mode=mode), kl.Dense(2, activation="tanh")])
    yield "sequence-heads", k.Sequential([
        k.Input((None, 3)), kl.LSTM(4, return_sequences=True, dropout=0.2),
        kl.Dense(3, activation="relu"), kl.Dense(2, activation="sigmoid", use_bias=False),
        kl.Dense(2)])


def _perturb(k, model, rng):
    # random biases: zeros (Keras's initializer) would hide a gate-order mistake there
    for layer in model.layers:
        w = layer.get_weights()
        if w:
            layer.set_weights([a + rng.uniform(-0.3, 0.3, a.shape).astype(a.dtype) for a in w])


def test_keras_parity_live_and_files(tmp_path, keras):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 6, 3)).astype(np.float32)
    x[0, 4:] = 0.0  # right padding
    x[1, :2] = 0.0  # left padding: masked steps carry the state
    for name, km in _keras_models(keras):
        _perturb(keras, km, rng)
        want = km.predict(x, verbose=0)
        ka, kw = tmp_path / f"{name}.keras", tmp_path / f"{name}.weights.h5"
        km.save(ka)
        km.save_weights(kw)
        for label, model in (("live", from_keras(km)), ("keras", from_keras(ka)),
                             ("weights+config", from_keras(kw, config=km.get_config())),
                             ("weights+archive", from_keras(kw, config=ka))):
            np.testing.assert_allclose(model.predict(x, verbose=0), want, **TOL,
                                       err_msg=f"{name} via {label}")
        m = from_keras(km)
        lstms = [l for l in m.layers if type(l).__name__ == "LSTM"]
        if name == "sequence-heads":
            assert lstms[0].dropout == pytest.approx(0.2)  # kept for fine-tuning


@pytest.mark.parametrize("mask_zero", [False, True])
def test_keras_embedding_model(tmp_path, keras, mask_zero):
    kl = keras.layers
    km = keras.Sequential([keras.Input((None,), dtype="int32"),
                           kl.Embedding(12, 4, mask_zero=mask_zero),
                           kl.LSTM(5, return_sequences=True), kl.Bidirectional(kl.LSTM(3)),
                           kl.Dense(2)])
    _perturb(keras, km, np.random.default_rng(4))
    x = np.random.default_rng(5).integers(1, 12, (3, 6))
    x[0, 4:] = 0
    x[1, :2] = 0
    want = km.predict(x, verbose=0)
    km.save(tmp_path / "e.keras")
    for model in (from_keras(km), from_keras(tmp_path / "e.keras")):
        assert type(model.layers[0]).__name__ == "Embedding"
        assert model.layers[0].mask_zero == mask_zero
        np.testing.assert_allclose(model.predict(x, verbose=0), want, **TOL)


def test_keras_unsupported_layer_is_named(keras):
    km = keras.Sequential([keras.Input((None, 3)), keras.layers.GRU(4)])
    with pytest.raises(ValueError, match="GRU"):
        from_keras(km)
    km = keras.Sequential([keras.Input((None, 3)), keras.layers.LSTM(4, activation="relu")])
    with pytest.raises(ValueError, match="relu"):
        from_keras(km)


def test_cylstm_model_as_config_for_a_keras_weights_file(tmp_path, keras):
    km = keras.Sequential([keras.Input((None, 3)), keras.layers.LSTM(4),
                           keras.layers.Dense(2)])
    _perturb(keras, km, np.random.default_rng(2))
    km.save_weights(tmp_path / "w.weights.h5")
    twin = Sequential([L.LSTM(4, input_shape=(None, 3)), L.Dense(2)])
    before = [w.copy() for w in twin.get_weights()]
    model = from_keras(tmp_path / "w.weights.h5", config=twin)
    x = np.random.default_rng(3).standard_normal((2, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x, verbose=0), km.predict(x, verbose=0), **TOL)
    for a, b in zip(before, twin.get_weights()):
        np.testing.assert_array_equal(a, b)  # the template is left alone
