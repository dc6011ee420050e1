"""cylstm.interop.from_torch: parity with PyTorch and refusal of what it cannot represent."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cylstm.interop import from_torch

TOL = {np.float32: {"rtol": 1e-5, "atol": 2e-6}, np.float64: {"rtol": 1e-10, "atol": 1e-12}}


# ---------------------------------------------------------------- NumPy float64 reference
def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def torch_lstm_reference(sd, x, num_layers, bidirectional):
    """PyTorch's documented nn.LSTM equations in float64, batch-first x (B, T, I)."""
    B, T, _ = x.shape
    inp = x.astype(np.float64)
    for layer in range(num_layers):
        outs = []
        for rev in ([False, True] if bidirectional else [False]):
            sfx = f"_l{layer}" + ("_reverse" if rev else "")
            Wi, Wh = sd["weight_ih" + sfx], sd["weight_hh" + sfx]
            b = sd["bias_ih" + sfx] + sd["bias_hh" + sfx]
            H = Wh.shape[1]
            h, c = np.zeros((B, H)), np.zeros((B, H))
            y = np.zeros((B, T, H))
            for t in (range(T - 1, -1, -1) if rev else range(T)):
                z = inp[:, t] @ Wi.T + h @ Wh.T + b
                i, f, g, o = np.split(z, 4, axis=1)
                c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
                h = _sigmoid(o) * np.tanh(c)
                y[:, t] = h
            outs.append(y)
        inp = np.concatenate(outs, axis=-1)
    return inp


def random_state_dict(rng, I, H, num_layers=1, bidirectional=False, dtype=np.float64):
    sd = {}
    D = 2 if bidirectional else 1
    for layer in range(num_layers):
        n_in = I if layer == 0 else D * H
        for rev in ([False, True] if bidirectional else [False]):
            sfx = f"_l{layer}" + ("_reverse" if rev else "")
            sd["weight_ih" + sfx] = rng.uniform(-0.5, 0.5, (4 * H, n_in)).astype(dtype)
            sd["weight_hh" + sfx] = rng.uniform(-0.5, 0.5, (4 * H, H)).astype(dtype)
            sd["bias_ih" + sfx] = rng.uniform(-0.5, 0.5, 4 * H).astype(dtype)
            sd["bias_hh" + sfx] = rng.uniform(-0.5, 0.5, 4 * H).astype(dtype)
    return sd


@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, False), (1, True),
                                                      (2, True)])
def test_numpy_state_dict_matches_float64_reference(num_layers, bidirectional):
    rng = np.random.default_rng(0)
    sd = random_state_dict(rng, 3, 5, num_layers, bidirectional)
    x = rng.standard_normal((4, 7, 3))
    model = from_torch(sd)
    assert model.dtype == np.float64
    y = model.predict(x, verbose=0)
    ref = torch_lstm_reference(sd, x, num_layers, bidirectional)
    assert y.shape == (4, 7, (2 if bidirectional else 1) * 5)
    np.testing.assert_allclose(y, ref, **TOL[np.float64])


def test_numpy_state_dict_does_not_import_torch(tmp_path):
    rng = np.random.default_rng(1)
    sd = random_state_dict(rng, 2, 3, 2, True, np.float32)
    np.savez(tmp_path / "sd.npz", **sd)
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        from cylstm.interop import from_torch
        sd = dict(np.load({str(tmp_path / 'sd.npz')!r}))
        m = from_torch(sd)
        y = m.predict(np.ones((1, 4, 2), np.float32), verbose=0)
        assert y.shape == (1, 4, 6) and y.dtype == np.float32, (y.shape, y.dtype)
        assert "torch" not in sys.modules, "torch was imported"
        print("ok")
    """)
    env = dict(os.environ)
    import cylstm

    # the cylstm under test (source tree or installed), whichever pytest imported
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(cylstm.__file__))]
                                        + sys.path)
    # cwd outside the repository: `python -c` puts the cwd first on sys.path, and
    # the source tree has no compiled extensions after `pip install .`
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120, check=False, cwd=tmp_path)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_float32_state_dict_gives_float32_model():
    rng = np.random.default_rng(2)
    sd = random_state_dict(rng, 3, 4, 1, False, np.float32)
    model = from_torch(sd)
    assert model.dtype == np.float32
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    ref = torch_lstm_reference({k: v.astype(np.float64) for k, v in sd.items()}, x, 1, False)
    np.testing.assert_allclose(model.predict(x, verbose=0), ref, **TOL[np.float32])


def test_prefixed_state_dict_of_a_parent_module():
    rng = np.random.default_rng(3)
    sd = {"encoder.rnn." + k: v for k, v in random_state_dict(rng, 3, 4, 2).items()}
    x = rng.standard_normal((2, 5, 3))
    ref = torch_lstm_reference({k.split(".")[-1]: v for k, v in sd.items()}, x, 2, False)
    np.testing.assert_allclose(from_torch(sd).predict(x, verbose=0), ref, **TOL[np.float64])


def test_state_dict_without_biases():
    rng = np.random.default_rng(4)
    sd = {k: v for k, v in random_state_dict(rng, 3, 4).items() if k.startswith("weight")}
    x = rng.standard_normal((2, 5, 3))
    ref = torch_lstm_reference(dict(sd, bias_ih_l0=np.zeros(16), bias_hh_l0=np.zeros(16)), x,
                               1, False)
    model = from_torch(sd)
    assert len(model.get_weights()) == 2  # use_bias=False
    np.testing.assert_allclose(model.predict(x, verbose=0), ref, **TOL[np.float64])


# ---------------------------------------------------------------- bad state dicts
@pytest.fixture
def sd2():
    return random_state_dict(np.random.default_rng(5), 3, 4, 2, True)


def test_missing_key_is_named(sd2):
    del sd2["weight_hh_l1_reverse"]
    with pytest.raises(ValueError, match="weight_hh_l1_reverse"):
        from_torch(sd2)


def test_missing_half_of_a_bias_pair_is_named(sd2):
    del sd2["bias_hh_l0"]
    with pytest.raises(ValueError, match="bias_hh_l0"):
        from_torch(sd2)


def test_missing_layer_is_named(sd2):
    for k in [k for k in sd2 if "_l1" in k]:
        sd2[k.replace("_l1", "_l2")] = sd2.pop(k)
    with pytest.raises(ValueError, match="weight_ih_l1"):
        from_torch(sd2)


def test_extra_key_is_named(sd2):
    sd2["fc.weight"] = np.zeros((2, 8))
    with pytest.raises(ValueError, match="fc.weight"):
        from_torch(sd2)


def test_misshaped_key_is_named(sd2):
    sd2["weight_ih_l1"] = sd2["weight_ih_l1"][:, :4]
    with pytest.raises(ValueError, match=r"weight_ih_l1.*\(16, 4\)"):
        from_torch(sd2)


def test_misshaped_bias_is_named(sd2):
    sd2["bias_ih_l0_reverse"] = np.zeros(15)
    with pytest.raises(ValueError, match="bias_ih_l0_reverse"):
        from_torch(sd2)


def test_projection_weights_are_refused(sd2):
    sd2["weight_hr_l0"] = np.zeros((2, 4))
    with pytest.raises(ValueError, match="proj_size"):
        from_torch(sd2)


def test_non_finite_weights_are_refused(sd2):
    sd2["weight_hh_l0"][0, 0] = np.nan
    with pytest.raises(ValueError, match="weight_hh_l0"):
        from_torch(sd2)


def test_cell_state_dict_with_extra_key():
    rng = np.random.default_rng(6)
    sd = {"weight_ih": rng.standard_normal((8, 3)), "weight_hh": rng.standard_normal((8, 2)),
          "bias_ih": np.zeros(8), "bias_hh": np.zeros(8), "weight_xx": np.zeros(1)}
    with pytest.raises(ValueError, match="weight_xx"):
        from_torch(sd)


@pytest.mark.parametrize("bad", [None, 3, [1, 2], {}, {"weight_ih_l0": "text"}])
def test_not_a_state_dict(bad):
    with pytest.raises((TypeError, ValueError)):
        from_torch(bad)


# ---------------------------------------------------------------- parity with PyTorch
torch = None


@pytest.fixture(scope="module")
def th():
    global torch
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    return torch


def _torch_forward(module, x, batch_first):
    """The module's first output, batch-first, for batch-first x."""
    with torch.no_grad():
        xt = torch.from_numpy(x if batch_first else np.ascontiguousarray(x.transpose(1, 0, 2)))
        y = module(xt)[0].numpy()
    return y if batch_first else y.transpose(1, 0, 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, False), (1, True),
                                                      (2, True)])
def test_nn_lstm_parity(th, num_layers, bidirectional, batch_first, dtype):
    m = th.nn.LSTM(3, 5, num_layers=num_layers, bidirectional=bidirectional,
                   batch_first=batch_first, dropout=0.3 if num_layers > 1 else 0.0)
    m = m.to(th.float64 if dtype == np.float64 else th.float32).eval()
    x = np.random.default_rng(7).standard_normal((4, 6, 3)).astype(dtype)
    model = from_torch(m)
    assert model.dtype == dtype
    kinds = {type(l).__name__ for l in model.layers}
    assert kinds == {"Bidirectional" if bidirectional else "LSTM"}
    assert len(model.layers) == num_layers
    np.testing.assert_allclose(model.predict(x, verbose=0), _torch_forward(m, x, batch_first),
                               **TOL[dtype])


@pytest.mark.parametrize("as_numpy", [False, True])
def test_state_dict_of_tensors_and_of_arrays(th, as_numpy):
    m = th.nn.LSTM(4, 3, num_layers=2, bidirectional=True, batch_first=True).eval()
    sd = m.state_dict()
    if as_numpy:
        sd = {k: v.numpy() for k, v in sd.items()}
    x = np.random.default_rng(8).standard_normal((2, 5, 4)).astype(np.float32)
    np.testing.assert_allclose(from_torch(sd).predict(x, verbose=0),
                               _torch_forward(m, x, True), **TOL[np.float32])


def test_lstm_cell_runs_over_the_sequence(th):
    cell = th.nn.LSTMCell(3, 4).eval()
    x = np.random.default_rng(9).standard_normal((2, 6, 3)).astype(np.float32)
    with th.no_grad():
        h = c = th.zeros(2, 4)
        hs = []
        for t in range(x.shape[1]):
            h, c = cell(th.from_numpy(x[:, t]), (h, c))
            hs.append(h)
        ref = th.stack(hs, 1).numpy()
    for obj in (cell, cell.state_dict(), {k: v.numpy() for k, v in cell.state_dict().items()}):
        np.testing.assert_allclose(from_torch(obj).predict(x, verbose=0), ref,
                                   **TOL[np.float32])


def test_imported_model_streams_like_the_torch_cell(th):
    """The serving path of the issue: trained in PyTorch, stepped one tick at a time here."""
    pytest.importorskip("cylstm.stream")
    lstm = th.nn.LSTM(3, 4, num_layers=2).eval()
    model = from_torch(lstm)
    runner = model.streamer(batch_size=1)
    x = np.random.default_rng(12).standard_normal((1, 6, 3)).astype(np.float32)
    with th.no_grad():
        state = None
        for t in range(x.shape[1]):
            y, state = lstm(th.from_numpy(x[:, t:t + 1]).transpose(0, 1), state)
            got = runner.step(x[:, t])
            np.testing.assert_allclose(got, y[0].numpy(), **TOL[np.float32])


def test_module_without_bias(th):
    m = th.nn.LSTM(3, 4, bias=False, batch_first=True).eval()
    x = np.random.default_rng(10).standard_normal((2, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(from_torch(m).predict(x, verbose=0), _torch_forward(m, x, True),
                               **TOL[np.float32])


def test_proj_size_module_is_refused(th):
    with pytest.raises(ValueError, match="proj_size"):
        from_torch(th.nn.LSTM(3, 4, proj_size=2))
    with pytest.raises(ValueError, match="proj_size"):
        from_torch(th.nn.LSTM(3, 4, proj_size=2).state_dict())


def test_other_modules_are_refused(th):
    with pytest.raises(TypeError, match="GRU"):
        from_torch(th.nn.GRU(3, 4))


def test_half_precision_module(th):
    m = th.nn.LSTM(3, 4, batch_first=True).eval()
    x = np.random.default_rng(11).standard_normal((2, 5, 3)).astype(np.float32)
    ref = _torch_forward(m, x, True)
    model = from_torch(m.to(th.bfloat16))
    assert model.dtype == np.float32
    # bfloat16 keeps 8 bits of mantissa: the weights themselves moved by ~0.4%
    np.testing.assert_allclose(model.predict(x, verbose=0), ref, atol=3e-2)
