"""The CUDA backend against the CPU path (cylstm.functional).

Each parity test runs twice: on a real GPU ("cuda": skipped with the reason when the
extension is not built with ``CYLSTM_CUDA=1`` or no CUDA device is usable), and on
tests/cuda_emulator.py ("emulated": everywhere), a NumPy stand-in for the compiled
module that replays the .cu file's launch sequence, so the Python layer and the
time-loop logic are checked even without a GPU.
Tolerances: float32 to 1e-4, float64 to 1e-10 (the GEMMs sum in a different order on
the GPU, and the float32 activations differ by a few ulps from the CPU's).
"""
import numpy as np
import pytest

from cylstm import cuda
from cylstm import functional as cpu

needs_gpu = pytest.mark.skipif(not cuda.is_available(),
                               reason=f"CUDA backend unavailable: {cuda.unavailable_reason()}")

TOL = {np.float32: 1e-4, np.float64: 1e-10}


def _gpu():
    from cylstm.cuda import functional as gpu

    return gpu


@pytest.fixture(params=["cuda-fused", "cuda-cublas", "emulated-fused", "emulated-cublas"])
def gpu(request, monkeypatch):
    """cylstm.cuda.functional on the real backend or the NumPy emulator, with small
    layers in the one-kernel time loop ("fused") or on cuBLAS per step ("cublas")."""
    from cylstm.cuda import functional as F

    if request.param.startswith("cuda"):
        if not cuda.is_available():
            pytest.skip(f"CUDA backend unavailable: {cuda.unavailable_reason()}")
    else:
        import cuda_emulator

        monkeypatch.setattr(cuda, "_load", lambda: cuda_emulator)
        monkeypatch.setattr(cuda, "_contexts", {})
        monkeypatch.setattr(cuda, "_ctx_locks", {})
    cuda.set_fused_max_units(128 if request.param.endswith("fused") else 0)
    F._weights.clear()
    yield F
    F._weights.clear()
    cuda.set_fused_max_units(128)


def _weights(rng, I, H, dtype, scale=0.4):
    W = (rng.standard_normal((I, 4 * H)) * scale / np.sqrt(I)).astype(dtype)
    U = (rng.standard_normal((H, 4 * H)) * scale / np.sqrt(H)).astype(dtype)
    b = (rng.standard_normal(4 * H) * 0.1).astype(dtype)
    return W, U, b


def _close(a, b, dtype, what):
    tol = TOL[dtype]
    scale = max(1.0, float(np.max(np.abs(b))) if np.size(b) else 1.0)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * scale, err_msg=what)


# ---------------------------------------------------------------- everywhere


def test_is_available_never_raises():
    assert isinstance(cuda.is_available(), bool)
    reason = cuda.unavailable_reason()
    if cuda.is_available():
        assert reason is None
    else:
        assert isinstance(reason, str) and reason


def test_unavailable_backend_raises_a_clear_error():
    if cuda.is_available():
        pytest.skip("the backend is available here")
    x = np.zeros((1, 2, 3), np.float32)
    W, U, b = _weights(np.random.default_rng(0), 3, 2, np.float32)
    with pytest.raises(cuda.CudaError, match="cylstm.cuda is not available"):
        _gpu().lstm_forward(x, W, U, b)


def test_resolve_device_spellings():
    assert cuda.resolve_device("cpu") == ("cpu", None)
    assert cuda.resolve_device(None) == ("cpu", None)
    with pytest.raises(ValueError, match="'cpu', 'cuda' or 'cuda:N'"):
        cuda.resolve_device("tpu")
    with pytest.raises(ValueError):
        cuda.resolve_device("cuda:x")
    if cuda.is_available():
        assert cuda.resolve_device("cuda") == ("cuda", 0)
        assert cuda.resolve_device("CUDA:0") == ("cuda", 0)
    else:
        with pytest.raises(cuda.CudaError, match="not available"):
            cuda.resolve_device("cuda")


def test_device_count_is_an_int():
    assert isinstance(cuda.device_count(), int) and cuda.device_count() >= 0


# ---------------------------------------------------------------- on a GPU

CASES = {
    "plain": {},
    "lengths": {"lengths": [5, 2, 7, 1]},
    "backwards": {"go_backwards": True},
    "backwards_lengths": {"go_backwards": True, "lengths": [3, 7, 1, 6]},
    "last_only": {"return_sequences": False},
    "initial_state": {"initial_state": True},
    "recurrent_mask": {"recurrent_mask": True, "lengths": [7, 4, 7, 2]},
}


def _inputs(rng, B, T, I, H, dtype, case):
    x = rng.standard_normal((B, T, I)).astype(dtype)
    kw = dict(case)
    if kw.pop("initial_state", False):
        kw["initial_state"] = (rng.standard_normal((B, H)).astype(dtype) * 0.5,
                               rng.standard_normal((B, H)).astype(dtype) * 0.5)
    if kw.pop("recurrent_mask", False):
        kw["recurrent_mask"] = ((rng.random((B, H)) < 0.7) / 0.7).astype(dtype)
    return x, kw


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(CASES))
def test_forward_backward_match_cpu(gpu, dtype, name):
    rng = np.random.default_rng(1)
    B, T, I, H = 4, 7, 5, 6
    x, kw = _inputs(rng, B, T, I, H, dtype, CASES[name])
    W, U, b = _weights(rng, I, H, dtype)
    ref = cpu.lstm_forward(x, W, U, b, training=True, **kw)
    got = gpu.lstm_forward(x, W, U, b, training=True, **kw)
    for what, a, r in (("output", got.output, ref.output), ("h", got.h, ref.h),
                       ("c", got.c, ref.c)):
        assert a.dtype == dtype and a.shape == r.shape
        _close(a, r, dtype, f"{name}: {what}")
    dout = rng.standard_normal(ref.output.shape).astype(dtype)
    gh = rng.standard_normal((B, H)).astype(dtype)
    gc = rng.standard_normal((B, H)).astype(dtype)
    gref = cpu.lstm_backward(ref.cache, grad_output=dout, grad_h=gh, grad_c=gc)
    ggot = gpu.lstm_backward(got.cache, grad_output=dout, grad_h=gh, grad_c=gc)
    for f in gref._fields:
        _close(getattr(ggot, f), getattr(gref, f), dtype, f"{name}: {f}")


# right padding, left padding, holes; each with an all-masked row (length 0, which the
# CUDA backend refuses until checked on a GPU: the layer works around it there)
LAYER_MASKS = {
    "right": np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], bool),
    "left": np.array([[0, 0, 1, 1, 1], [0, 0, 0, 0, 0], [0, 0, 0, 0, 1]], bool),
    "holes": np.array([[1, 0, 1, 0, 1], [0, 0, 0, 0, 0], [1, 1, 0, 0, 0]], bool),
}


@pytest.mark.parametrize("kind", sorted(LAYER_MASKS))
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_masked_layer_matches_cpu(gpu, kind, go_backwards, return_sequences):
    """An LSTM layer on the device under a mask with an all-masked row: outputs, final
    state and every gradient (dh0, dc0 through the initial state) as on the CPU."""
    from cylstm.layers import LSTM

    rng = np.random.default_rng(4)
    mask = LAYER_MASKS[kind]
    B, T = mask.shape
    x = rng.standard_normal((B, T, 2))
    h0, c0 = rng.standard_normal((2, B, 3))
    Ry = rng.standard_normal((B, T, 3) if return_sequences else (B, 3))
    Rh, Rc = rng.standard_normal((2, B, 3))
    runs = []
    for device in (None, ("cuda", 0)):
        layer = LSTM(3, go_backwards=go_backwards, return_sequences=return_sequences,
                     seed=5, dtype="float64")
        layer.build((None, None, 2))
        layer._device = device
        y, _ = layer._forward(x, mask, True, initial_state=[h0, c0])
        h, c = layer._last_state
        dx = layer._backward(Ry, True, grad_h=Rh, grad_c=Rc)
        runs.append([y, h, c, dx, *(np.array(layer._grads[n]) for n in
                                    ("kernel", "recurrent_kernel", "bias")),
                     *layer._state_grads])
    names = ("y", "h", "c", "dx", "dW", "dU", "db", "dh0", "dc0")
    for name, got, want in zip(names, runs[1], runs[0]):
        _close(got, want, np.float64, f"{kind}: {name}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1, 3, 2), (3, 1, 4, 5), (1, 9, 2, 3), (33, 12, 17, 40)])
def test_edge_shapes_match_cpu(gpu, dtype, shape):
    B, T, I, H = shape
    rng = np.random.default_rng(2)
    x = rng.standard_normal((B, T, I)).astype(dtype)
    W, U, b = _weights(rng, I, H, dtype)
    ref = cpu.lstm_forward(x, W, U, b, training=True)
    got = gpu.lstm_forward(x, W, U, b, training=True)
    _close(got.output, ref.output, dtype, "output")
    dout = rng.standard_normal(ref.output.shape).astype(dtype)
    gref = cpu.lstm_backward(ref.cache, grad_output=dout, need_input_grad=False)
    ggot = gpu.lstm_backward(got.cache, grad_output=dout, need_input_grad=False)
    assert ggot.dx is None
    for f in ("dkernel", "drecurrent_kernel", "dbias", "dh0", "dc0"):
        _close(getattr(ggot, f), getattr(gref, f), dtype, f)


def test_inference_without_bias_and_non_contiguous_inputs(gpu):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 5, 8)).astype(np.float64)[:, :, ::2]  # strided view
    W, U, _ = _weights(rng, 4, 3, np.float64)
    ref = cpu.lstm_forward(x, W, U, None)
    got = gpu.lstm_forward(x, W, U, None)
    _close(got.output, ref.output, np.float64, "output")
    assert got.cache is None


def test_weights_version_reuses_device_copies(gpu):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 4, 5)).astype(np.float64)
    W, U, b = _weights(rng, 5, 6, np.float64)
    v1 = gpu.new_weights_version()
    first = gpu.lstm_forward(x, W, U, b, weights_version=v1).output
    W += 0.5  # in place: the same version still means the old weights (documented)
    stale = gpu.lstm_forward(x, W, U, b, weights_version=v1).output
    np.testing.assert_array_equal(stale, first)
    fresh = gpu.lstm_forward(x, W, U, b, weights_version=gpu.new_weights_version()).output
    _close(fresh, cpu.lstm_forward(x, W, U, b).output, np.float64, "new version")
    _close(gpu.lstm_forward(x, W, U, b).output, fresh, np.float64, "no version")
    cuda.clear_cache()


def test_bad_input_raises_like_the_cpu(gpu):
    W, U, b = _weights(np.random.default_rng(5), 3, 2, np.float32)
    with pytest.raises(ValueError, match="x must have 3 dims"):
        gpu.lstm_forward(np.zeros((2, 3)), W, U, b)
    with pytest.raises(ValueError, match="kernel must have shape"):
        gpu.lstm_forward(np.zeros((2, 3, 4)), W, U, b)
    with pytest.raises(ValueError, match="lengths must lie in"):
        gpu.lstm_forward(np.zeros((2, 3, 3)), W, U, b, lengths=[0, 3])
    out = gpu.lstm_forward(np.zeros((2, 3, 3)), W, U, b, training=True)
    gpu.lstm_backward(out.cache)
    with pytest.raises(ValueError, match="already used"):
        gpu.lstm_backward(out.cache)
    with pytest.raises(TypeError, match="cylstm.cuda.functional.lstm_forward"):
        gpu.lstm_backward(cpu.lstm_forward(np.zeros((2, 3, 3)), W, U, b, training=True).cache)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_out_gets_the_weight_gradients(gpu, dtype):
    """``out=`` as on the CPU: the weight gradients land in the caller's arrays (views
    of one flat buffer, as a model's)."""
    rng = np.random.default_rng(11)
    B, T, I, H = 3, 5, 4, 6
    x, kw = _inputs(rng, B, T, I, H, dtype, {"lengths": [5, 2, 4]})
    W, U, b = _weights(rng, I, H, dtype)
    ref = cpu.lstm_forward(x, W, U, b, training=True, **kw)
    got = gpu.lstm_forward(x, W, U, b, training=True, **kw)
    _close(got.output, ref.output, dtype, "output")
    dout = rng.standard_normal(ref.output.shape).astype(dtype)
    gref = cpu.lstm_backward(ref.cache, grad_output=dout)
    flat = np.full(I * 4 * H + H * 4 * H + 1, 7.0, dtype)  # sentinel past the views
    dW = flat[:I * 4 * H].reshape(I, 4 * H)
    dU = flat[I * 4 * H:-1].reshape(H, 4 * H)
    ggot = gpu.lstm_backward(got.cache, grad_output=dout, out=(dW, dU, None))
    assert ggot.dkernel is dW and ggot.drecurrent_kernel is dU
    assert flat[-1] == 7.0
    for f in gref._fields:
        _close(getattr(ggot, f), getattr(gref, f), dtype, f)


def test_backward_out_is_checked_like_the_cpu(gpu):
    rng = np.random.default_rng(12)
    W, U, b = _weights(rng, 3, 2, np.float32)
    x = rng.standard_normal((2, 3, 3)).astype(np.float32)
    bad = [(np.zeros((3, 8), np.float32), np.zeros((2, 8), np.float32)),   # 2 entries
           (np.zeros((3, 8), np.float64), None, None),                     # dtype
           (None, np.zeros((8, 2), np.float32).T, None),                   # not C-order
           (None, None, np.zeros(7, np.float32))]                          # shape
    for out in bad:
        with pytest.raises(ValueError, match="out"):
            cpu.lstm_backward(cpu.lstm_forward(x, W, U, b, training=True).cache, out=out)
        with pytest.raises(ValueError, match="out"):
            gpu.lstm_backward(gpu.lstm_forward(x, W, U, b, training=True).cache, out=out)
    with pytest.raises(ValueError, match="grads_on_device"):
        gpu.lstm_backward(gpu.lstm_forward(x, W, U, b, training=True).cache,
                          grads_on_device=True, out=(None, None, None))


@pytest.mark.parametrize("n", [0, 1, 1023])
def test_to_host_copies_exactly(gpu, n):
    """to_host gives the bytes, into a new array or into the caller's."""
    ctx = cuda.get_context(0)
    src = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    dev = cuda.DeviceArray.from_host(ctx, src)
    np.testing.assert_array_equal(dev.to_host(), src)
    out = np.full(n, np.nan, np.float32)
    assert dev.to_host(out=out) is out
    np.testing.assert_array_equal(out, src)
    with pytest.raises(ValueError, match="to_host: out"):
        dev.to_host(out=np.zeros(n + 1, np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_device_resident_chain_matches_cpu(gpu, dtype):
    """Two stacked layers with the activations and dx kept on the device."""
    rng = np.random.default_rng(8)
    B, T, I, H1, H2 = 3, 6, 4, 5, 7
    x = rng.standard_normal((B, T, I)).astype(dtype)
    W1, U1, b1 = _weights(rng, I, H1, dtype)
    W2, U2, b2 = _weights(rng, H1, H2, dtype)
    dy = rng.standard_normal((B, T, H2)).astype(dtype)
    r1 = cpu.lstm_forward(x, W1, U1, b1, training=True)
    r2 = cpu.lstm_forward(r1.output, W2, U2, b2, training=True)
    q2 = cpu.lstm_backward(r2.cache, grad_output=dy)
    q1 = cpu.lstm_backward(r1.cache, grad_output=q2.dx)

    DA = cuda.DeviceArray
    ctx = cuda.get_context()
    g1 = gpu.lstm_forward(DA.from_host(ctx, x), W1, U1, b1, training=True,
                          output_on_device=True)
    assert isinstance(g1.output, DA) and isinstance(g1.h, DA)
    g2 = gpu.lstm_forward(g1.output, W2, U2, b2, training=True, output_on_device=True)
    _close(g2.output.to_host(), r2.output, dtype, "output")
    _close(g2.c.to_host(), r2.c, dtype, "c")
    p2 = gpu.lstm_backward(g2.cache, grad_output=DA.from_host(ctx, dy), dx_on_device=True)
    assert isinstance(p2.dx, DA)
    p1 = gpu.lstm_backward(g1.cache, grad_output=p2.dx)
    for f in q1._fields:
        _close(getattr(p1, f), getattr(q1, f), dtype, f"layer 1 {f}")
    _close(p2.drecurrent_kernel, q2.drecurrent_kernel, dtype, "layer 2 dU")
    # the device-resident final state seeds the next call (stateful use)
    nxt = gpu.lstm_forward(x, W1, U1, b1, initial_state=(g1.h, g1.c))
    ref_nxt = cpu.lstm_forward(x, W1, U1, b1, initial_state=(r1.h, r1.c))
    _close(nxt.output, ref_nxt.output, dtype, "seeded by device state")
    with pytest.raises(TypeError, match="weights' dtype"):
        other = np.float64 if dtype == np.float32 else np.float32
        gpu.lstm_forward(DA.from_host(ctx, x.astype(other)), W1, U1, b1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("max_batch", [16, 0])
def test_per_step_backward_dh_paths_match_cpu(gpu, dtype, max_batch):
    """The per-step backward's dh_prev = dz @ U^T (H > 128: the per-step path in both
    fixtures) in the backend's kernel (batches up to 16, in tiles of 4, 8 and 16 samples;
    H not a multiple of its rows per block) or on cuBLAS (max_batch 0); the gradients
    also left on the device."""
    rng = np.random.default_rng(9)
    ctx = cuda.get_context()
    ctx.set_bwd_kernel_max_batch(max_batch)
    try:
        for B, T, I, H in ((3, 4, 5, 130), (7, 3, 4, 131), (16, 2, 3, 133)):
            x = rng.standard_normal((B, T, I)).astype(dtype)
            W, U, b = _weights(rng, I, H, dtype)
            dy = rng.standard_normal((B, T, H)).astype(dtype)
            ref = cpu.lstm_backward(cpu.lstm_forward(x, W, U, b, training=True).cache,
                                    grad_output=dy)
            got = gpu.lstm_backward(gpu.lstm_forward(x, W, U, b, training=True).cache,
                                    grad_output=dy)
            dev = gpu.lstm_backward(gpu.lstm_forward(x, W, U, b, training=True).cache,
                                    grad_output=dy, grads_on_device=True)
            for f in ref._fields:
                _close(getattr(got, f), getattr(ref, f), dtype, f"B={B} H={H} {f}")
                d = getattr(dev, f)
                if f != "dx":
                    assert isinstance(d, cuda.DeviceArray)
                    d = d.to_host()
                _close(d, getattr(ref, f), dtype, f"B={B} H={H} on device {f}")
    finally:
        ctx.set_bwd_kernel_max_batch(16)


def _train_example(F, dtype, steps=6, **kw):
    """The Keras example (LSTM(50, return_sequences) -> LSTM(20) -> Dense(1), MSE) trained
    with plain SGD through the functional API; returns the losses."""
    rng = np.random.default_rng(7)
    B, T, I = 16, 12, 10
    x = rng.standard_normal((B, T, I)).astype(dtype)
    t = np.sin(x.sum(axis=(1, 2)) / 5)[:, None].astype(dtype)
    W1, U1, b1 = _weights(rng, I, 50, dtype, 1.0)
    W2, U2, b2 = _weights(rng, 50, 20, dtype, 1.0)
    Wd = (rng.standard_normal((20, 1)) * 0.3).astype(dtype)
    bd = np.zeros(1, dtype)
    params = [W1, U1, b1, W2, U2, b2, Wd, bd]
    losses = []
    for _ in range(steps):
        o1 = F.lstm_forward(x, W1, U1, b1, training=True, **kw)
        o2 = F.lstm_forward(o1.output, W2, U2, b2, return_sequences=False, training=True, **kw)
        y = o2.output @ Wd + bd
        losses.append(float(np.mean((y - t) ** 2)))
        dy = 2 * (y - t) / y.size
        g2 = F.lstm_backward(o2.cache, grad_output=dy @ Wd.T)
        g1 = F.lstm_backward(o1.cache, grad_output=g2.dx, need_input_grad=False)
        grads = [g1.dkernel, g1.drecurrent_kernel, g1.dbias, g2.dkernel,
                 g2.drecurrent_kernel, g2.dbias, o2.output.T @ dy, dy.sum(axis=0)]
        for p, g in zip(params, grads):
            p -= 0.5 * g.astype(dtype)
    return np.array(losses)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_training_the_example_matches_cpu(gpu, dtype):
    ref = _train_example(cpu, dtype)
    got = _train_example(gpu, dtype)
    assert ref[-1] < ref[0]  # it learns
    np.testing.assert_allclose(got, ref, rtol=TOL[dtype] * 10, atol=TOL[dtype])


@pytest.mark.parametrize("backend", ["cuda", "emulated"])
def test_model_fit_on_gpu_matches_cpu(backend, monkeypatch):
    """The Keras example through cylstm.models with model.to('cuda')."""
    from cylstm import layers, models
    if backend == "cuda":
        if not cuda.is_available():
            pytest.skip(f"CUDA backend unavailable: {cuda.unavailable_reason()}")
        n, T = 64, 15
    else:
        import cuda_emulator

        monkeypatch.setattr(cuda, "_load", lambda: cuda_emulator)
        monkeypatch.setattr(cuda, "_contexts", {})
        monkeypatch.setattr(cuda, "_ctx_locks", {})
        n, T = 32, 6

    w0 = []

    def run(device):
        model = models.Sequential()
        model.add(layers.LSTM(units=50, return_sequences=True, input_shape=(None, 10),
                              seed=1, dtype="float64"))
        model.add(layers.LSTM(units=20, seed=2, dtype="float64"))
        model.add(layers.Dense(units=1))
        model.compile(optimizer="adam", loss="mean_squared_error")
        if not w0:
            w0.extend(model.get_weights())
        model.set_weights(w0)  # the same start (Dense has no seed)
        if device == "cuda":
            model.to("cuda")
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, T, 10))
        y = np.sin(x.sum(axis=(1, 2)) / 5)[:, None]
        hist = model.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
        return np.array(hist.history["loss"]), model.predict(x[:8])

    loss_cpu, pred_cpu = run("cpu")
    loss_gpu, pred_gpu = run("cuda")
    assert loss_cpu[-1] < loss_cpu[0]
    np.testing.assert_allclose(loss_gpu, loss_cpu, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(pred_gpu, pred_cpu, rtol=1e-8, atol=1e-10)
