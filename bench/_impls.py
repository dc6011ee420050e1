"""The implementations bench/compare.py times: cylstm and its peers, same math, same data.

Each builder returns an :class:`Impl` (or raises :class:`Skip` with the reason
a peer cannot run here).  ``Impl.run()`` is the timed call and returns the
library's native result untouched; ``Impl.result(ret)`` turns that into NumPy
arrays in cylstm's batch-first layout, and is only used for the correctness
check, outside the timed region.

Every implementation gets its input in the layout it prefers, prepared once
outside the timed region: cylstm batch-first (B, T, I); PyTorch, ONNX Runtime
and the NumPy baselines time-major (T, B, I) — PyTorch's ``batch_first=False``
and ONNX's only supported ``layout=0`` — so no peer pays for a transpose
that cylstm does not.

Weights use cylstm's (Keras's) layout: kernel W (I, 4H), recurrent kernel
U (H, 4H), bias b (4H), gate blocks i, f, c (= g), o.  PyTorch's
``weight_ih_l0`` is W.T with the same gate order; ONNX orders the gates
i, o, f, c, and its B input is [Wb, Rb].
"""
import contextlib
import time
import warnings

import numpy as np
from _machine import quiet_stderr  # noqa: F401  (re-exported for compare.py)

F32 = np.float32


class Skip(Exception):
    """A peer that cannot run here; the message is the reason shown to the user."""


class Impl:
    """One implementation of one workload.

    Parameters
    ----------
    name : str
        Row label ("cylstm", "torch (oneDNN)", ...).
    family : str
        Library whose thread pools the call uses; the runner pauses when
        the next block belongs to another implementation.
    run : callable
        The timed call; returns the native result.
    result : callable or None
        Native result -> tuple of NumPy arrays comparable with cylstm's.
    """

    def __init__(self, name, family, run, result=None):
        self.name = name
        self.family = family
        self.run = run
        self.result = result or (lambda r: r if isinstance(r, tuple) else (r,))


# ---------------------------------------------------------------------------
# Data

def make_lstm_data(T, B, I, H, seed=0, train=False):
    """Inputs and PyTorch-style weights U(-1/sqrt(H), 1/sqrt(H)), float32."""
    rng = np.random.default_rng(seed)
    s = 1.0 / np.sqrt(H)
    d = {
        "x": rng.uniform(-1, 1, (B, T, I)).astype(F32),
        "W": rng.uniform(-s, s, (I, 4 * H)).astype(F32),
        "U": rng.uniform(-s, s, (H, 4 * H)).astype(F32),
        "b": rng.uniform(-s, s, 4 * H).astype(F32),
    }
    d["xt"] = np.ascontiguousarray(d["x"].transpose(1, 0, 2))
    if train:
        d["dy"] = rng.standard_normal((B, T, H)).astype(F32)
        d["dyt"] = np.ascontiguousarray(d["dy"].transpose(1, 0, 2))
    return d


def _bf(a):
    """Time-major (T, B, F) -> batch-first (B, T, F)."""
    return np.asarray(a).transpose(1, 0, 2)


# ---------------------------------------------------------------------------
# cylstm

def cylstm_forward(cylstm, d, num_threads=None, vouch=True):
    """cylstm's forward; ``num_threads`` overrides cylstm's thread setting.

    ``vouch``: pass a ``weights_version`` (the case's weights never change), so the
    panel paths take the weights they packed on the first call without reading them
    again, as ONNX Runtime's session packs once.  False: a plain call, which
    compares the weights with the packed copy's source, byte for byte, every call
    (the row "cylstm, weights compared")."""
    from cylstm.functional import lstm_forward, new_weights_version

    x, W, U, b = d["x"], d["W"], d["U"], d["b"]
    version = new_weights_version() if vouch else None

    def run():
        return lstm_forward(x, W, U, b, return_sequences=True,
                            num_threads=num_threads, weights_version=version).output

    name = "cylstm" if num_threads is None else f"cylstm {num_threads} thread"
    if not vouch:
        name += ", weights compared"
    return Impl(name, "cylstm", run)


def cylstm_forward_reduced(cylstm, d, precision):
    """cylstm's forward in reduced precision (issue 16), to be read against its float32
    row: "bf16" is the mixed_bfloat16 policy's products (``compute_dtype="bfloat16"``:
    bf16 operands, float32 accumulation; emulated where the CPU has no BF16
    instructions), "int8" the weights of ``model.quantize("int8")`` (per-output-
    channel symmetric int8, as a quantized LSTM layer runs them: on the int8 kernel,
    ``weights_dtype="int8"``, each step's rows quantized to int16, but for the wide
    batches of narrow layers where float32 products on the int8 values are faster,
    ``functional.int8_kernel_pays``)."""
    from cylstm import quantization
    from cylstm.functional import int8_kernel_pays, lstm_forward, new_weights_version

    x, W, U, b = d["x"], d["W"], d["U"], d["b"]
    if precision == "bf16":
        # fixed weights, vouched for as the float32 row's are: on AMX tiles the
        # bf16 pack is made once and kept (cylstm/_packcache.py)
        version = new_weights_version()

        def run():
            return lstm_forward(x, W, U, b, return_sequences=True, compute_dtype="bfloat16",
                                weights_version=version).output
    elif precision == "int8":
        # the weights of model.quantize("int8"): int8 values, which the kernel packs as
        # they are; fixed weights, packed once (cylstm_forward); the products a
        # quantized LSTM layer runs: the int8 kernel, or float32 where that is faster
        Wq, Uq = (quantization.dequantize_int8(*quantization.quantize_int8(w)) for w in (W, U))
        Wq, Uq = np.ascontiguousarray(Wq, F32), np.ascontiguousarray(Uq, F32)
        version = new_weights_version()

        def run():   # (the rule reads the threads the run has)
            kw = ({"weights_dtype": "int8"}
                  if int8_kernel_pays(x.shape[0], U.shape[0], cylstm.get_num_threads()) else {})
            return lstm_forward(x, Wq, Uq, b, return_sequences=True,
                                weights_version=version, **kw).output
    else:
        raise ValueError(f"precision must be 'bf16' or 'int8'; got {precision!r}")
    return Impl(f"cylstm {precision}", "cylstm", run)


def cylstm_train(cylstm, d, bf16=False):
    """One training step; ``bf16``: under the mixed_bfloat16 policy's products
    (``compute_dtype="bfloat16"``: the forward on AMX tiles where the CPU has them,
    the backward emulated)."""
    from cylstm.functional import lstm_backward, lstm_forward

    x, W, U, b, dy = d["x"], d["W"], d["U"], d["b"], d["dy"]
    cd = "bfloat16" if bf16 else None

    def run():
        out = lstm_forward(x, W, U, b, return_sequences=True, training=True, compute_dtype=cd)
        return lstm_backward(out.cache, grad_output=dy)

    def result(g):
        return g.dx, g.dkernel, g.drecurrent_kernel, g.dbias

    return Impl("cylstm bf16" if bf16 else "cylstm", "cylstm", run, result)


# ---------------------------------------------------------------------------
# NumPy baselines

def numpy_naive_forward(d):
    """Per step ``x_t @ W + h @ U + b`` with fresh arrays: what a first NumPy LSTM looks like."""
    xt, W, U, b = d["xt"], d["W"], d["U"], d["b"]
    T, B, _ = xt.shape
    H = U.shape[0]

    def run():
        h = np.zeros((B, H), F32)
        c = np.zeros((B, H), F32)
        ys = []
        with np.errstate(over="ignore"):  # exp(-z) may overflow to inf: sigmoid -> 0, fine
            for t in range(T):
                z = xt[t] @ W + h @ U + b
                i = 1.0 / (1.0 + np.exp(-z[:, :H]))
                f = 1.0 / (1.0 + np.exp(-z[:, H:2 * H]))
                g = np.tanh(z[:, 2 * H:3 * H])
                o = 1.0 / (1.0 + np.exp(-z[:, 3 * H:]))
                c = f * c + i * g
                h = o * np.tanh(c)
                ys.append(h)
        return np.stack(ys)

    return Impl("numpy naive", "numpy", run, lambda y: (_bf(y),))


def _gate_major_halved(W, U, b):
    """Reorder gate blocks i,f,c,o -> i,f,o,c and halve the sigmoid gates' columns.

    Then one ``tanh`` over all 4H pre-activations yields tanh(z/2) for i, f, o
    (sigmoid(z) = 0.5 * tanh(z/2) + 0.5) and tanh(z) for c, and the three
    sigmoid gates are one contiguous block.
    """
    H = U.shape[0]
    order = np.r_[0:H, H:2 * H, 3 * H:4 * H, 2 * H:3 * H]
    scale = np.ones(4 * H, F32)
    scale[:3 * H] = 0.5
    return (W[:, order] * scale).astype(F32), (U[:, order] * scale).astype(F32), \
        (b[order] * scale).astype(F32)


def numpy_good_forward(d):
    """The best plain NumPy: one GEMM for every step's input projection, then per step
    one ``h @ U`` into a preallocated gate-major buffer and one tanh for all gates."""
    xt = d["xt"]
    T, B, I = xt.shape
    Wg, Ug, bg = _gate_major_halved(d["W"], d["U"], d["b"])
    H = Ug.shape[0]

    def run():
        P = xt.reshape(T * B, I) @ Wg
        P += bg
        P = P.reshape(T, B, 4 * H)
        y = np.empty((T, B, H), F32)
        z = np.empty((B, 4 * H), F32)
        c = np.zeros((B, H), F32)
        tmp = np.empty((B, H), F32)
        h = np.zeros((B, H), F32)
        sig, i, f, o, g = z[:, :3 * H], z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
        for t in range(T):
            np.matmul(h, Ug, out=z)
            z += P[t]
            np.tanh(z, out=z)
            sig *= 0.5
            sig += 0.5
            c *= f
            np.multiply(i, g, out=tmp)
            c += tmp
            np.tanh(c, out=tmp)
            h = y[t]
            np.multiply(o, tmp, out=h)
        return y

    return Impl("numpy good", "numpy", run, lambda y: (_bf(y),))


def numpy_train(d):
    """Forward keeping the gates, BPTT per step, weight gradients as GEMMs after the loop."""
    xt, W, U, b, dyt = d["xt"], d["W"], d["U"], d["b"], d["dyt"]
    T, B, I = xt.shape
    H = U.shape[0]

    def sigmoid_(a):
        np.multiply(a, 0.5, out=a)
        np.tanh(a, out=a)
        a *= 0.5
        a += 0.5

    def run():
        X2 = xt.reshape(T * B, I)
        A = (X2 @ W).reshape(T, B, 4 * H)
        A += b
        C = np.empty((T, B, H), F32)
        Hs = np.empty((T + 1, B, H), F32)
        Hs[0] = 0.0
        c = np.zeros((B, H), F32)
        for t in range(T):
            z = A[t]
            z += Hs[t] @ U
            sigmoid_(z[:, :2 * H])
            np.tanh(z[:, 2 * H:3 * H], out=z[:, 2 * H:3 * H])
            sigmoid_(z[:, 3 * H:])
            i, f, g, o = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
            c = f * c + i * g
            C[t] = c
            np.multiply(o, np.tanh(c), out=Hs[t + 1])
        dZ = np.empty((T, B, 4 * H), F32)
        dh_next = np.zeros((B, H), F32)
        dc = np.zeros((B, H), F32)
        zeros = np.zeros((B, H), F32)
        for t in range(T - 1, -1, -1):
            z = A[t]
            i, f, g, o = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
            tc = np.tanh(C[t])
            dh = dyt[t] + dh_next
            c_prev = C[t - 1] if t > 0 else zeros
            dc = dc + dh * o * (1.0 - tc * tc)
            dz = dZ[t]
            dz[:, :H] = dc * g * i * (1.0 - i)
            dz[:, H:2 * H] = dc * c_prev * f * (1.0 - f)
            dz[:, 2 * H:3 * H] = dc * i * (1.0 - g * g)
            dz[:, 3 * H:] = dh * tc * o * (1.0 - o)
            dc = dc * f
            dh_next = dz @ U.T
        D2 = dZ.reshape(T * B, 4 * H)
        dW = X2.T @ D2
        dU = Hs[:T].reshape(T * B, H).T @ D2
        db = D2.sum(axis=0)
        dx = (D2 @ W.T).reshape(T, B, I)
        return dx, dW, dU, db

    def result(r):
        return _bf(r[0]), r[1], r[2], r[3]

    return Impl("numpy", "numpy", run, result)


# ---------------------------------------------------------------------------
# PyTorch

def import_torch():
    try:
        import torch
    except Exception as e:
        raise Skip(f"torch not importable ({type(e).__name__}: {e})".splitlines()[0]) from e
    return torch


@contextlib.contextmanager
def torch_onednn(torch, enabled):
    """Run with torch's oneDNN (mkldnn) backend on or off, restoring the previous flag."""
    prev = torch._C._get_mkldnn_enabled()
    torch._C._set_mkldnn_enabled(bool(enabled))
    try:
        yield
    finally:
        torch._C._set_mkldnn_enabled(prev)


def _torch_lstm(torch, W, U, b, requires_grad=False):
    I, H4 = W.shape
    H = H4 // 4
    m = torch.nn.LSTM(I, H)  # time-major: torch's native layout
    with torch.no_grad():
        m.weight_ih_l0.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
        m.weight_hh_l0.copy_(torch.from_numpy(np.ascontiguousarray(U.T)))
        m.bias_ih_l0.copy_(torch.from_numpy(b))
        m.bias_hh_l0.zero_()
    m.requires_grad_(requires_grad)
    return m


def _torch_label(onednn):
    return "torch (oneDNN)" if onednn else "torch (oneDNN off)"


def torch_forward(d, onednn=True):
    torch = import_torch()
    if onednn and not torch.backends.mkldnn.is_available():
        raise Skip("this torch build has no oneDNN (mkldnn)")
    m = _torch_lstm(torch, d["W"], d["U"], d["b"]).eval()
    xt = torch.from_numpy(d["xt"])

    def run():
        with torch.inference_mode(), torch_onednn(torch, onednn):
            return m(xt)[0]

    return Impl(_torch_label(onednn), "torch", run, lambda y: (_bf(y.numpy()),))


def torch_forward_bf16(d):
    """PyTorch's nn.LSTM in bfloat16 (``model.to(torch.bfloat16)``, bf16 input), the
    peer of "cylstm bf16": oneDNN's bf16 kernels (AMX tiles where the CPU has them).
    PyTorch refuses bf16 LSTMs on CPUs without AVX512-BF16 (pytorch issue 88136):
    a Skip with its message."""
    torch = import_torch()
    if not torch.backends.mkldnn.is_available():
        raise Skip("this torch build has no oneDNN (mkldnn)")
    m = _torch_lstm(torch, d["W"], d["U"], d["b"]).eval().to(torch.bfloat16)
    xt = torch.from_numpy(d["xt"]).to(torch.bfloat16)

    def run():
        with torch.inference_mode():
            return m(xt)[0]

    try:
        run()
    except RuntimeError as e:
        raise Skip(f"torch's bf16 LSTM does not run on this CPU: {str(e)[:120]}") from None
    return Impl("torch bf16", "torch", run, lambda y: (_bf(y.float().numpy()),))


def torch_train(d, onednn=True):
    torch = import_torch()
    if onednn and not torch.backends.mkldnn.is_available():
        raise Skip("this torch build has no oneDNN (mkldnn)")
    m = _torch_lstm(torch, d["W"], d["U"], d["b"], requires_grad=True).train()
    xt = torch.from_numpy(d["xt"].copy()).requires_grad_(True)
    dyt = torch.from_numpy(d["dyt"])
    params = list(m.parameters())

    def run():
        xt.grad = None
        for p in params:
            p.grad = None
        with torch_onednn(torch, onednn):
            y, _ = m(xt)
            y.backward(dyt)
        return xt.grad, m.weight_ih_l0.grad, m.weight_hh_l0.grad, m.bias_ih_l0.grad

    def result(r):
        return _bf(r[0].numpy()), r[1].numpy().T, r[2].numpy().T, r[3].numpy()

    return Impl(_torch_label(onednn), "torch", run, result)


# ---------------------------------------------------------------------------
# ONNX Runtime

def onnx_lstm_model(W, U, b):
    """An ONNX model with one LSTM node (W, R, B initializers), input X (T, B, I).

    Keras gate blocks i, f, c, o become ONNX's i, o, f, c; ONNX adds two
    biases (Wb + Rb), so Rb is zero.
    """
    try:
        from onnx import TensorProto, helper, numpy_helper
    except Exception as e:
        raise Skip(f"onnx not importable ({type(e).__name__}); needed to build the graph") from e
    I, H4 = W.shape
    H = H4 // 4
    order = np.r_[0:H, 3 * H:4 * H, H:2 * H, 2 * H:3 * H]  # i, o, f, c
    Wo = np.ascontiguousarray(W[:, order].T)[None]           # (1, 4H, I)
    Ro = np.ascontiguousarray(U[:, order].T)[None]           # (1, 4H, H)
    Bo = np.concatenate([b[order], np.zeros(4 * H, F32)])[None].astype(F32)  # (1, 8H)
    X = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", I])
    Y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["T", 1, "B", H])
    node = helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y"], hidden_size=H)
    graph = helper.make_graph(
        [node], "lstm", [X], [Y],
        initializer=[numpy_helper.from_array(Wo, "W"), numpy_helper.from_array(Ro, "R"),
                     numpy_helper.from_array(Bo, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8  # readable by older runtimes too
    return model


def ort_session(model, n_threads):
    try:
        import onnxruntime as ort
    except Exception as e:
        raise Skip(f"onnxruntime not importable ({type(e).__name__}: {e})".splitlines()[0]) from e
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(n_threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])


def onnx_dq_lstm_model(W, U, b):
    """:func:`onnx_lstm_model` as ONNX Runtime's ``com.microsoft.DynamicQuantizeLSTM``:
    the kernels as per-column int8 (cylstm.quantization's values, so the same weights
    as "cylstm int8"), stored as uint8 with zero point 128 (ORT's int8-weight kernel
    saturates without VNNI, bench/stream_bench.py), activations quantized to 8 bits
    by ORT at run time."""
    try:
        from onnx import TensorProto, helper, numpy_helper
    except Exception as e:
        raise Skip(f"onnx not importable ({type(e).__name__}: {e})".splitlines()[0]) from e
    from cylstm.quantization import quantize_int8

    I, H4 = W.shape
    H = H4 // 4
    order = np.r_[0:H, 3 * H:4 * H, H:2 * H, 2 * H:3 * H]  # i, o, f, c
    inits = []
    for name, M in (("W", W), ("R", U)):
        q, sc = quantize_int8(np.ascontiguousarray(M[:, order]))   # (n, 4H), ONNX order
        inits += [numpy_helper.from_array((q.astype(np.int16) + 128).astype(np.uint8)[None],
                                          name),
                  numpy_helper.from_array(sc[None].astype(F32), f"{name}s"),
                  numpy_helper.from_array(np.full((1, 4 * H), 128, np.uint8), f"{name}z")]
    Bo = np.concatenate([b[order], np.zeros(4 * H, F32)])[None].astype(F32)
    inits.append(numpy_helper.from_array(Bo, "B"))
    X = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", I])
    Y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["T", 1, "B", H])
    node = helper.make_node("DynamicQuantizeLSTM",
                            ["X", "W", "R", "B", "", "", "", "", "Ws", "Wz", "Rs", "Rz"],
                            ["Y"], hidden_size=H, domain="com.microsoft")
    graph = helper.make_graph([node], "dq_lstm", [X], [Y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model


def ort_forward(d, n_threads, int8=False):
    """ONNX Runtime's LSTM over the case (``int8``: its DynamicQuantizeLSTM)."""
    model = (onnx_dq_lstm_model if int8 else onnx_lstm_model)(d["W"], d["U"], d["b"])
    sess = ort_session(model, n_threads)
    feed = {"X": d["xt"]}

    def run():
        return sess.run(None, feed)[0]

    return Impl("onnxruntime int8" if int8 else "onnxruntime", "ort", run,
                lambda y: (_bf(y[:, 0]),))


# ---------------------------------------------------------------------------
# Keras / TensorFlow

_tf_threads = None


def import_tf(n_threads):
    """TensorFlow with its pools sized to ``n_threads`` (possible once per process)."""
    global _tf_threads
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # no C++ info/warning lines in the tables
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import keras
            import tensorflow as tf
    except Exception as e:
        msg = f"tensorflow/keras not importable ({type(e).__name__}: {e})".splitlines()[0]
        raise Skip(msg) from e
    backend = getattr(getattr(keras, "backend", None), "backend", lambda: "tensorflow")()
    if backend != "tensorflow":
        raise Skip(f"keras runs on its {backend!r} backend here (KERAS_BACKEND), not TensorFlow")
    if _tf_threads is None:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(int(n_threads))
            tf.config.threading.set_inter_op_parallelism_threads(1)
            _tf_threads = int(n_threads)
        except RuntimeError as e:
            raise Skip(f"TensorFlow already started, cannot size its pools ({e})") from e
    elif _tf_threads != int(n_threads):
        raise Skip(f"TensorFlow's pools were sized to {_tf_threads} threads and cannot be "
                   f"resized in one process; run with --threads {n_threads} to measure it")
    return tf, keras


def keras_forward(d, n_threads, xla=False):
    tf, keras = import_tf(n_threads)
    B, T, I = d["x"].shape
    H = d["U"].shape[0]
    layer = keras.layers.LSTM(H, return_sequences=True)
    layer.build((B, T, I))
    layer.set_weights([d["W"], d["U"], d["b"]])
    fn = tf.function(lambda v: layer(v), jit_compile=bool(xla))
    x = tf.constant(d["x"])

    def run():
        return fn(x)

    name = "keras/TF XLA" if xla else "keras/TF tf.function"
    return Impl(name, "tf", run, lambda y: (y.numpy(),))


# ---------------------------------------------------------------------------
# Training epoch of the Keras example model:
#   LSTM(50, return_sequences=True, input_shape=(None, 10)) -> LSTM(20) -> Dense(1),
#   Adam(learning_rate=0.001), mean squared error, batch 32.

EPOCH_UNITS = (50, 20)


def make_epoch_data(n=2048, T=50, F=10, seed=0):
    """Noisy sines of random frequency and phase; the target is feature 0's next value.

    Learnable in a few epochs (an LSTM must estimate frequency and phase),
    and predicting the mean scores about 0.5, so a falling loss is visible.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(T + 1, dtype=np.float64)
    freq = rng.uniform(0.05, 0.4, (n, 1, F))
    phase = rng.uniform(0, 2 * np.pi, (n, 1, F))
    s = np.sin(freq * t[None, :, None] + phase) + 0.05 * rng.standard_normal((n, T + 1, F))
    return s[:, :T].astype(F32), s[:, T, :1].astype(F32)


def keras_initial_weights(F=10, units=EPOCH_UNITS, seed=1):
    """Keras's default initial weights for the example model, drawn once and given to
    every implementation: glorot_uniform kernels, orthogonal recurrent kernels, zero
    biases with the forget-gate block at 1 (unit_forget_bias), as ``get_weights()`` lists them.
    """
    rng = np.random.default_rng(seed)

    def glorot(shape):
        lim = np.sqrt(6.0 / (shape[0] + shape[1]))
        return rng.uniform(-lim, lim, shape).astype(F32)

    def orthogonal(rows, cols):
        a = rng.standard_normal((max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(a)
        q *= np.sign(np.diag(r))
        q = q if rows >= cols else q.T
        return q[:rows, :cols].astype(F32)

    weights, n_in = [], F
    for H in units:
        b = np.zeros(4 * H, F32)
        b[H:2 * H] = 1.0
        weights += [glorot((n_in, 4 * H)), orthogonal(H, 4 * H), b]
        n_in = H
    weights += [glorot((n_in, 1)), np.zeros(1, F32)]
    return weights


def epoch_flops(n=2048, T=50, F=10, units=EPOCH_UNITS):
    """FLOPs of one epoch: 3x the LSTM forward GEMM work (forward, dW/dU, dx/dh)."""
    fwd, n_in = 0, F
    for H in units:
        fwd += 2 * T * n * (n_in + H) * 4 * H
        n_in = H
    return 3 * fwd


class EpochImpl:
    """A model that trains one epoch per ``epoch()`` call.

    ``epoch()`` returns (the epoch's mean training loss, seconds).  For
    ``fit``-based implementations the seconds run from the framework's
    ``on_epoch_begin`` to its ``on_epoch_end`` callback, so the per-call set-up
    of ``fit`` (data adapters, callback lists) is not charged to the epoch.
    """

    def __init__(self, name, family, epoch, predict):
        self.name = name
        self.family = family
        self.epoch = epoch
        self.predict = predict


def _epoch_timer(base):
    """A callback (subclass of the framework's ``base``) that times one epoch."""

    class EpochTimer(base):
        secs = None

        def on_epoch_begin(self, epoch, logs=None):
            self.secs = None
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.secs = time.perf_counter() - self._t0

    return EpochTimer()


def _fit_one_epoch(model, x, y, batch_size, timer):
    t0 = time.perf_counter()
    h = model.fit(x, y, epochs=1, batch_size=batch_size, shuffle=False, verbose=0,
                  callbacks=[timer])
    wall = time.perf_counter() - t0
    hist = getattr(h, "history", h)
    return float(hist["loss"][-1]), (timer.secs if timer.secs is not None else wall)


def cylstm_keras_example(weights, F=10):
    """The Keras example model in cylstm, compiled, with ``weights`` (also bench/scale.py's)."""
    try:
        from cylstm.layers import LSTM, Dense
        from cylstm.models import Sequential
        from cylstm.optimizers import Adam
    except ImportError as e:
        raise Skip(f"cylstm's Keras-style API is not available yet ({e})") from e
    model = Sequential()
    model.add(LSTM(units=EPOCH_UNITS[0], return_sequences=True, input_shape=(None, F)))
    model.add(LSTM(units=EPOCH_UNITS[1]))
    model.add(Dense(units=1))
    model.compile(optimizer=Adam(learning_rate=0.001), loss="mean_squared_error")
    model.set_weights(weights)
    return model


def cylstm_epoch(cylstm, x, y, weights, batch_size=32):
    from cylstm.callbacks import Callback

    model = cylstm_keras_example(weights, x.shape[2])
    timer = _epoch_timer(Callback)

    def epoch():
        return _fit_one_epoch(model, x, y, batch_size, timer)

    def predict(xs):
        return np.asarray(model.predict(xs, verbose=0))

    return EpochImpl("cylstm", "cylstm", epoch, predict)


def torch_epoch(x, y, weights, batch_size=32, onednn=True):
    torch = import_torch()
    if onednn and not torch.backends.mkldnn.is_available():
        raise Skip("this torch build has no oneDNN (mkldnn)")
    nn = torch.nn
    F = x.shape[2]
    H1, H2 = EPOCH_UNITS

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm1 = nn.LSTM(F, H1, batch_first=True)
            self.lstm2 = nn.LSTM(H1, H2, batch_first=True)
            self.fc = nn.Linear(H2, 1)

        def forward(self, v):
            v, _ = self.lstm1(v)
            v, _ = self.lstm2(v)
            return self.fc(v[:, -1])

    net = Net()
    k1, r1, b1, k2, r2, b2, dk, db = weights
    with torch.no_grad():
        for lstm, k, r, b in ((net.lstm1, k1, r1, b1), (net.lstm2, k2, r2, b2)):
            lstm.weight_ih_l0.copy_(torch.from_numpy(np.ascontiguousarray(k.T)))
            lstm.weight_hh_l0.copy_(torch.from_numpy(np.ascontiguousarray(r.T)))
            lstm.bias_ih_l0.copy_(torch.from_numpy(b))
            lstm.bias_hh_l0.zero_()
            # nn.LSTM has two bias vectors (b_ih + b_hh) where Keras has one; Adam would
            # move their sum twice as fast.  Freezing b_hh at zero trains exactly Keras's
            # parameters, so the losses of all implementations can be compared.
            lstm.bias_hh_l0.requires_grad_(False)
        net.fc.weight.copy_(torch.from_numpy(np.ascontiguousarray(dk.T)))
        net.fc.bias.copy_(torch.from_numpy(db))
    # Keras's Adam epsilon (1e-7) so both optimizers take the same steps.
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=0.001,
                           eps=1e-7)
    loss_fn = nn.MSELoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    batches = [(xt[i:i + batch_size], yt[i:i + batch_size]) for i in range(0, len(x), batch_size)]

    def epoch():
        t0 = time.perf_counter()
        net.train()
        total, seen = 0.0, 0
        with torch_onednn(torch, onednn):
            for xb, yb in batches:
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(net(xb), yb)
                loss.backward()
                opt.step()
                total += loss.item() * len(xb)
                seen += len(xb)
        return total / seen, time.perf_counter() - t0

    def predict(xs):
        net.eval()
        with torch.no_grad(), torch_onednn(torch, onednn):
            return net(torch.from_numpy(xs)).numpy()

    return EpochImpl(_torch_label(onednn), "torch", epoch, predict)


def keras_epoch(x, y, weights, n_threads, batch_size=32, xla=False):
    _tf, keras = import_tf(n_threads)
    F = x.shape[2]
    model = keras.Sequential([
        keras.Input(shape=(None, F)),
        keras.layers.LSTM(EPOCH_UNITS[0], return_sequences=True),
        keras.layers.LSTM(EPOCH_UNITS[1]),
        keras.layers.Dense(1),
    ])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.001),
                  loss="mean_squared_error", jit_compile=bool(xla))
    model.set_weights(weights)
    timer = _epoch_timer(keras.callbacks.Callback)

    def epoch():
        return _fit_one_epoch(model, x, y, batch_size, timer)

    def predict(xs):
        return np.asarray(model.predict(xs, verbose=0))

    return EpochImpl("keras/TF fit XLA" if xla else "keras/TF fit", "tf", epoch, predict)
