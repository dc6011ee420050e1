"""Streaming inference: one time step per call, batch 1 first, no allocation.

A service that receives one frame (sensor reading, audio frame, market tick)
at a time calls :meth:`StreamRunner.step` with it and gets the model's output
for that step; the runner carries the LSTM states from call to call.

>>> runner = model.streamer()            # batch_size=1
>>> for frame in frames:                 # frame: (1, features) float32
...     y = runner.step(frame)           # (1, units of the last layer)
>>> runner.reset()                       # a new stream

How it is fast
--------------
- One call into compiled code per step for the whole stack of layers, with
  the GIL released; no Python object and no array is allocated per step.
- At creation the weights of every LSTM layer are laid out once as one fused
  matrix [kernel; recurrent_kernel] cut into column panels that each hold the
  four gates of a few units, in the order the product kernel reads them
  (include/cylstm_panel.h).  That packed copy is made once per model and
  weights version and shared by every runner of the model.
- Small batches use that kernel (a BLAS GEMV call costs more than the
  arithmetic at these sizes; it takes six rows per pass over the weights on
  AVX-512 and AVX2, four on the baseline, and the last rows in smaller blocks);
  batches of :data:`BLAS_MIN_BATCH` rows and more use SciPy's BLAS per panel.
  When the weights do not fit in one core's cache (or are close to it) a step's
  panels are shared by two threads on cylstm's worker pool
  (include/cylstm_pool.h), claimed by whichever thread gets to them, so that a
  late or preempted worker never holds a step up; small models run on the
  calling thread.
"""
from __future__ import annotations

import collections
import hashlib
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from cylstm import _config, _lstm, _stream, _tuning
from cylstm import quantization as _quant
from cylstm._typing import ArrayLike

if TYPE_CHECKING:  # annotations only: the runner does not need the models
    from typing import TypeAlias

    from cylstm.engine.model import Model

    # StreamPool.step: {key: frame}, or (keys, frames stacked (n, features))
    _PoolFrames: TypeAlias = Mapping[Hashable, ArrayLike] | tuple[Sequence[Hashable], ArrayLike]
    _PoolOutputs: TypeAlias = dict[Hashable, np.ndarray] | tuple[list[Hashable], np.ndarray]

__all__ = ["BLAS_MIN_BATCH", "PARALLEL_MIN_BYTES", "PoolFullError", "StreamPool", "StreamRunner"]

# BLAS_MIN_BATCH (batches from which a step uses SciPy's BLAS per panel) and
# PARALLEL_MIN_BYTES (packed bytes times batch from which a step splits its panels
# across two threads) are measured thresholds: their values and measurements live
# in cylstm/_tuning.py with the others.  This module reads its own names, so
# patching them here changes its choices.
BLAS_MIN_BATCH = _tuning.BLAS_MIN_BATCH
PARALLEL_MIN_BYTES = _tuning.PARALLEL_MIN_BYTES

# LSTM units per panel: the sequence kernels' (cylstm/_lstm.pyx), whose packers lay
# out the runner's weights too
_PANEL_UNITS = {np.dtype(np.float32): _lstm.PANEL_UNITS_F32,
                np.dtype(np.float64): _lstm.PANEL_UNITS_F64}
_VL = {np.dtype(np.float32): _stream.VECTOR_FLOATS, np.dtype(np.float64): _stream.VECTOR_DOUBLES}
_ALIGN = 64


def _aligned_empty(n, dtype):
    """A 1-D array of n elements whose data starts on a 64-byte boundary."""
    dtype = np.dtype(dtype)
    raw = np.empty(n * dtype.itemsize + _ALIGN, np.uint8)
    off = (-raw.ctypes.data) % _ALIGN
    return raw[off:off + n * dtype.itemsize].view(dtype)


class _LayerPack:
    """One layer, laid out for the kernel (read-only; shared by runners)."""

    __slots__ = ("K", "P", "activation", "bias", "kind", "n_in", "n_out", "n_panels", "ncols",
                 "scale", "span")


def _bf16_slots(wv):
    """Memory position of each column in a bfloat16 panel row (cyl_bf16_slot in
    include/cylstm_panel.h: groups of 32 interleaved, a last 16 plain)."""
    j = np.arange(wv)
    g, m = j // 32, j % 32
    slot = g * 32 + np.where(m < 16, 2 * m, 2 * (m - 16) + 1)
    plain = g * 32 + 32 > wv
    slot[plain] = j[plain]
    return slot


def _to_bf16(a):
    """float32 -> bfloat16 bits (uint16), rounded to nearest even
    (:func:`cylstm.quantization.bfloat16_bits`, the one definition).  Packed
    weights must be finite: a NaN or inf weight is refused here."""
    a = np.ascontiguousarray(a, np.float32)
    if not np.all(np.isfinite(a)):
        raise ValueError("bfloat16 weights: the weights must be finite")
    return _quant.bfloat16_bits(a)


# The layout.  Every layer is packed by the sequence kernels' own packers in
# cylstm/_lstm.pyx (one layout for the runner and the sequence kernels): an
# LSTM layer by pack_stacked, [kernel; recurrent_kernel] in panels of `span`
# units whose four gate blocks are each padded with zero columns to whole
# vectors (include/cylstm_panel.h); a Dense layer by pack_plain, panels of
# whole vectors.  bfloat16 and int8 weights are variants of that layout: the
# same panels and columns, the values converted (bf16: columns interleaved in
# groups of 32) or stored as k pairs (int8, cyl_panel_i8).


def _lstm_columns(H, span, vl):
    """Per panel, the source column (of 4H) of each packed column, -1 for padding."""
    q = vl // 4
    out = []
    for j0 in range(0, H, span):
        hb = min(H, j0 + span) - j0
        hp = -(-hb // q) * q
        cols = np.full((4, hp), -1, np.int64)
        cols[:, :hb] = np.arange(4)[:, None] * H + j0 + np.arange(hb)
        out.append(cols.ravel())
    return out


def _plain_columns(N, pw, vl):
    """:func:`_lstm_columns` for a plain matrix of N columns (panels of pw)."""
    out = []
    for j0 in range(0, N, pw):
        w = min(N, j0 + pw) - j0
        cols = np.full(-(-w // vl) * vl, -1, np.int64)
        cols[:w] = np.arange(j0, j0 + w)
        out.append(cols)
    return out


def _bf16_panels(P, col_groups, K):
    """The float32 panels P (as packed) as bfloat16 bits, columns interleaved."""
    out = _aligned_empty(P.size, np.uint16)
    w_full = len(col_groups[0])
    for p, cols in enumerate(col_groups):
        w, off = len(cols), p * K * w_full
        panel = P[off:off + K * w].reshape(K, w)
        rows = np.empty_like(panel)
        rows[:, _bf16_slots(w)] = panel
        out[off:off + K * w] = _to_bf16(rows).ravel()
    return out


def _pack_int8(M, col_groups, ka):
    """Pack int8 M (K, N) for cyl_panel_i8 (include/cylstm_panel.h): per
    panel, its columns (``col_groups``, -1 a zero padding column) then zero
    columns up to a multiple of 8, the first ``ka`` rows (the kernel) then the
    rest (the recurrent kernel, none for Dense), each part padded to an even
    row count and stored as k pairs: for pair t and group g of 8 columns,
    q[2t, c0], q[2t + 1, c0], ..., q[2t + 1, c7]."""
    parts = [M[:ka], M[ka:]]
    chunks = []
    for cols in col_groups:
        wp = -(-len(cols) // 8) * 8
        real = np.flatnonzero(cols >= 0)
        for part in parts:
            if part.shape[0] == 0:
                continue
            k2 = part.shape[0] + part.shape[0] % 2
            Q = np.zeros((k2, wp), np.int8)
            Q[:part.shape[0], real] = part[:, cols[real]]
            chunks.append(Q.reshape(k2 // 2, 2, wp // 8, 8).transpose(0, 2, 3, 1).ravel())
    out = _aligned_empty(sum(c.size for c in chunks), np.int8)
    out[:] = np.concatenate(chunks)
    return out


def _int8_scales(scales, order):
    """The kernel's and the recurrent kernel's column scales (None: Dense, unused)
    in packed column order (``order``: -1 for a padding column, scale 0), as one
    float32 array (2 x columns, then 8 zeros: the kernel reads whole groups of
    8 columns)."""
    n = len(order)
    out = np.zeros(2 * n + 8, np.float32)
    real = np.flatnonzero(order >= 0)
    for i, s in enumerate(scales):
        if s is not None:
            out[i * n + real] = s[order[real]]
    return out


def _frozen(*arrays):
    for a in arrays:
        a.flags.writeable = False


def _pack_lstm(kernel, recurrent_kernel, bias, dtype, wd):
    I, H4 = kernel.shape
    H = H4 // 4
    span = _PANEL_UNITS[dtype]
    groups = _lstm_columns(H, span, _VL[dtype])
    ncols = sum(len(c) for c in groups)
    lp = _LayerPack()
    lp.kind, lp.activation = "lstm", "linear"
    lp.n_in, lp.n_out, lp.K, lp.span, lp.n_panels = I, H, I + H, span, len(groups)
    lp.scale = None
    lp.ncols = ncols
    # the sequence kernels' packer: the panels, then the bias in panel order
    packed = _aligned_empty(_lstm.stacked_len(I, H, dtype), dtype)
    _lstm.pack_stacked(np.ascontiguousarray(kernel, dtype),
                       np.ascontiguousarray(recurrent_kernel, dtype),
                       np.ascontiguousarray(np.reshape(bias, -1), dtype), packed)
    P, lp.bias = packed[:(I + H) * ncols], packed[(I + H) * ncols:]
    if wd == "int8":
        (qw, sw), (qu, su) = _quant.quantize_int8(kernel), _quant.quantize_int8(recurrent_kernel)
        order = np.concatenate(groups)
        lp.scale = _int8_scales((sw, su), order)
        lp.P = _pack_int8(np.concatenate([qw, qu], axis=0), groups, I)
        _frozen(lp.scale)
    elif wd == "bfloat16":
        lp.P = _bf16_panels(P, groups, I + H)
    else:
        lp.P = P
    _frozen(lp.P, lp.bias)
    return lp


def _pack_dense(kernel, bias, activation, dtype, wd):
    K, U = kernel.shape
    span = _lstm.plain_width(dtype)
    groups = _plain_columns(U, span, _VL[dtype])
    lp = _LayerPack()
    lp.kind, lp.activation = "dense", activation
    lp.n_in, lp.n_out, lp.K, lp.span, lp.n_panels = K, U, K, span, len(groups)
    lp.scale = None
    lp.ncols = sum(len(c) for c in groups)
    if wd == "int8":
        M, s = _quant.quantize_int8(kernel)
        lp.scale = _int8_scales((s, None), np.concatenate(groups))
        lp.P = _pack_int8(M, groups, K)
        _frozen(lp.scale)
    else:
        P = _aligned_empty(_lstm.plain_len(K, U, dtype), dtype)
        _lstm.pack_plain(np.ascontiguousarray(kernel, dtype), P)
        P = P[:K * lp.ncols]  # the last panel is stored lp.ncols % span wide
        lp.P = _bf16_panels(P, groups, K) if wd == "bfloat16" else P
    lp.bias = np.array(bias, dtype).reshape(U)
    _frozen(lp.P, lp.bias)
    return lp


class _Pack:
    """The packed weights of one model (one weights version), shared by runners."""

    def __init__(self, specs, dtype, weights_dtype=None):
        self.dtype = np.dtype(dtype)
        if self.dtype not in _PANEL_UNITS:
            raise TypeError(f"a streaming runner computes in float32 or float64; got {dtype}")
        self.weights_dtype = wd = _weights_dtype(weights_dtype, self.dtype)
        self.layers = []
        for s in specs:
            if s["type"] == "lstm":
                self.layers.append(_pack_lstm(s["kernel"], s["recurrent_kernel"], s["bias"],
                                              self.dtype, wd))
            else:
                self.layers.append(_pack_dense(s["kernel"], s["bias"], s["activation"],
                                               self.dtype, wd))
        self.nbytes = sum(lp.P.nbytes for lp in self.layers)


def _weights_dtype(weights_dtype, dtype):
    """Canonical name of the packed weights' type: the runner's dtype, 'bfloat16'
    or 'int8'."""
    if weights_dtype is None:
        return np.dtype(dtype).name
    name = str(weights_dtype).lower()
    if name in ("bfloat16", "bf16", "int8"):
        name = "int8" if name == "int8" else "bfloat16"
        if np.dtype(dtype) != np.float32:
            raise ValueError(f"weights_dtype={name!r} needs a float32 model; got {dtype}")
        return name
    try:
        same = np.dtype(weights_dtype) == np.dtype(dtype)
    except TypeError:
        same = False
    if not same:
        raise ValueError(f"weights_dtype must be None, {np.dtype(dtype).name!r}, "
                         f"'bfloat16' or 'int8'; got {weights_dtype!r}")
    return np.dtype(dtype).name


def _check_specs(specs, dtype):
    """Validate a list of layer descriptions; return them with arrays of ``dtype``."""
    if not specs:
        raise ValueError("a streaming runner needs at least one LSTM or Dense layer")
    out = []
    n_prev = None
    for i, s in enumerate(specs):
        kind = s.get("type")
        if kind == "lstm":
            W = np.asarray(s["kernel"])
            U = np.asarray(s["recurrent_kernel"])
            if W.ndim != 2 or U.ndim != 2 or U.shape[1] != 4 * U.shape[0] \
                    or W.shape[1] != U.shape[1]:
                raise ValueError(
                    f"layer {i}: LSTM weights must be kernel (I, 4H) and recurrent_kernel "
                    f"(H, 4H); got {W.shape} and {U.shape}")
            H = U.shape[0]
            b = s.get("bias")
            b = np.zeros(4 * H) if b is None else np.asarray(b)
            if b.shape != (4 * H,):
                raise ValueError(f"layer {i}: LSTM bias must have shape ({4 * H},); got {b.shape}")
            n_in, n_out = W.shape[0], H
            d = {"type": "lstm", "kernel": W.astype(dtype),
                 "recurrent_kernel": U.astype(dtype), "bias": b.astype(dtype)}
        elif kind == "dense":
            W = np.asarray(s["kernel"])
            if W.ndim != 2:
                raise ValueError(f"layer {i}: Dense kernel must be 2-D (in, units); got {W.shape}")
            b = s.get("bias")
            b = np.zeros(W.shape[1]) if b is None else np.asarray(b)
            if b.shape != (W.shape[1],):
                raise ValueError(
                    f"layer {i}: Dense bias must have shape ({W.shape[1]},); got {b.shape}")
            act = s.get("activation") or "linear"
            if act not in _stream.ACTIVATIONS:
                raise ValueError(f"layer {i}: Dense activation must be one of "
                                 f"{sorted(_stream.ACTIVATIONS)}; got {act!r}")
            n_in, n_out = W.shape
            d = {"type": "dense", "kernel": W.astype(dtype), "bias": b.astype(dtype),
                 "activation": act}
        else:
            raise ValueError(f"layer {i}: type must be 'lstm' or 'dense'; got {kind!r}")
        if n_prev is not None and n_in != n_prev:
            raise ValueError(f"layer {i} expects {n_in} input features but the layer before "
                             f"it outputs {n_prev}")
        n_prev = n_out
        out.append(d)
    return out


def _specs_from_model(model):
    """Layer descriptions of a cylstm Sequential (weights referenced, not copied)."""
    from cylstm import layers as L  # defers import cost: the layers

    if not hasattr(model, "layers"):
        raise TypeError(f"StreamRunner needs a cylstm Sequential model; got "
                        f"{type(model).__name__}")
    if not getattr(model, "built", False):
        shape = getattr(model, "input_shape", None)
        if shape is None or not hasattr(model, "build"):
            raise ValueError("the model is not built: give its first layer input_shape= (or "
                             "call it on data) before creating a streamer")
        model.build(shape)
    specs = []
    for layer in model.layers:
        name = f"{type(layer).__name__} {getattr(layer, 'name', '')!r}"
        if isinstance(layer, L.Dropout):
            continue  # the identity at inference
        if isinstance(layer, L.LSTM):
            if layer.go_backwards:
                raise ValueError(f"{name} has go_backwards=True: a stream only moves forward "
                                 "in time, so it cannot run a reversed LSTM")
            if layer.activation != "tanh" or layer.recurrent_activation != "sigmoid":
                raise ValueError(f"{name}: the streaming runner computes activation='tanh', "
                                 "recurrent_activation='sigmoid'")
            specs.append({"type": "lstm", "kernel": layer.kernel,
                          "recurrent_kernel": layer.recurrent_kernel, "bias": layer.bias})
        elif isinstance(layer, L.Dense):
            specs.append({"type": "dense", "kernel": layer.kernel,
                          "bias": layer.bias if layer.use_bias else None,
                          "activation": layer.activation or "linear"})
        elif isinstance(layer, getattr(L, "Bidirectional", ())):
            # ValueError, as for any model the runner cannot run (not a wrong argument type)
            raise ValueError(  # noqa: TRY004
                f"{name}: a bidirectional layer needs the future of the sequence; "
                "a streaming runner supports unidirectional LSTM, Dense and Dropout layers")
        else:
            raise ValueError(  # noqa: TRY004
                f"{name} is not supported by the streaming runner (it runs "
                "LSTM, Dense and Dropout layers)")
    if not specs:
        raise ValueError("the model has no LSTM or Dense layer to stream")
    return specs


def _model_weights_dtype(model, dtype, weights_dtype):
    """``weights_dtype``, or for None: 'int8' when ``model`` (a float32 chain) was
    quantized by ``model.quantize('int8')`` -- every LSTM and Dense layer of it --
    so the runner reads int8 panels; 'bfloat16' when every LSTM layer of it has the
    mixed_bfloat16 policy (:mod:`cylstm.mixed_precision`); else None (the model's
    own dtype)."""
    if weights_dtype is not None or np.dtype(dtype) != np.float32:
        return weights_dtype
    from cylstm import layers as L  # defers import cost: the layers

    modes = {getattr(layer, "quantization_mode", None) for layer in model.layers
             if isinstance(layer, (L.LSTM, L.Dense))}
    if modes == {"int8"}:
        return "int8"
    lstms = [layer for layer in model.layers if isinstance(layer, L.LSTM)]
    if lstms and all(layer.compute_dtype == "bfloat16" for layer in lstms):
        return "bfloat16"
    return None


def _fingerprint(specs, dtype):
    h = hashlib.blake2b(digest_size=16)
    h.update(str(np.dtype(dtype)).encode())
    for s in specs:
        h.update(repr((s["type"], s.get("activation"))).encode())
        for key in ("kernel", "recurrent_kernel", "bias"):
            a = s.get(key)
            if a is None:
                h.update(b"none")
                continue
            a = np.ascontiguousarray(a)
            h.update(repr((a.shape, str(a.dtype))).encode())
            h.update(memoryview(a).cast("B"))
    return h.digest()


_cache_lock = threading.Lock()
# model -> (fingerprint, _Pack); weak keys: the cache dies with the model
_pack_cache = weakref.WeakKeyDictionary()


def _pack_for_model(model, specs, dtype, weights_dtype=None):
    """The shared packed weights of ``model`` at its current weights (made once)."""
    wd = _weights_dtype(weights_dtype, dtype)
    key = _fingerprint(specs, dtype)
    with _cache_lock:
        try:
            per_model = _pack_cache.setdefault(model, {})
        except TypeError:  # not weak-referenceable: no sharing
            per_model = {}
        hit = per_model.get(wd)
        if hit is not None and hit[0] == key:
            return hit[1]
        pack = _Pack(_check_specs(specs, dtype), dtype, wd)
        per_model[wd] = (key, pack)
        return pack


class StreamRunner(_stream.Core):
    """Run a model one time step at a time, carrying the LSTM states.

    Parameters
    ----------
    model : cylstm.models.Sequential
        Unidirectional ``LSTM`` layers, ``Dense`` layers (activation linear,
        relu, tanh, sigmoid or softmax) and ``Dropout`` (the identity here), in
        any order that makes a valid model.  Usually created with
        ``model.streamer(batch_size)``.
    batch_size : int
        Independent streams stepped together (rows of ``x_t``).
    num_threads : int, optional
        Threads one step may use.  By default one, or two (never more than
        :func:`cylstm.get_num_threads`) when the packed weights' bytes times
        ``batch_size`` reach :data:`PARALLEL_MIN_BYTES`.
    weights_dtype : None, 'bfloat16' or 'int8'
        Opt-in reduced precision for float32 models: the packed weights are
        rounded to bfloat16 (8 significant bits), halving the bytes a step
        reads; inputs, states and sums stay float32.  1.4x (weights in L2) to
        1.9x (weights from L3) faster in bench/stream_bench.py on a 2-core
        Zen 4, at an error of a few 1e-3 relative in the outputs (about 3e-3
        of the largest output there; tests/test_stream.py bounds it) -- check
        it on your model before serving.  'int8' packs per-output-channel int8
        weights (:mod:`cylstm.quantization`), a quarter of the bytes, which
        multiply each step's rows quantized to int16 (exact integer sums; see
        ``cyl_panel_i8`` in include/cylstm_panel.h).  None
        (the default) means 'int8' for a float32 model whose LSTM and Dense
        layers were all quantized by ``model.quantize('int8')``, 'bfloat16' for
        one whose LSTM layers all have the mixed_bfloat16 policy, else the
        model's own dtype.

    Notes
    -----
    **mixed_bfloat16 models.**  Their runner reads bfloat16 weights (its Dense
    layers' too) but multiplies them with the float32 activations as they are:
    it does not round x or h_prev, as ``predict`` does under the policy.  So
    the runner and ``predict`` are both within the bf16 error of the float32
    model, not equal bit for bit (tests/test_mixed_precision.py bounds their
    difference); pass ``weights_dtype='float32'`` for the float32 model's
    numbers.

    **Weights.**  The runner uses the weights the model had when the runner
    was created (a packed copy, made once per model and weights version and
    shared by all its runners -- creating more runners does not copy them).
    After ``fit`` or ``set_weights``, create a new runner.

    **Outputs.**  ``step`` returns an array owned by the runner that the next
    ``step`` overwrites; keep a copy (``y.copy()``) or pass ``out=``.

    **Threads.**  Runners are independent: many runners over one model can
    step at the same time from different threads and give exactly the serial
    results.  One runner is not thread-safe: give each thread its own (a step
    that finds the runner busy in another thread raises RuntimeError).  With
    ``num_threads=2`` a step's panels (layer by layer) go to whichever of the
    calling thread and a worker of cylstm's pool (include/cylstm_pool.h) takes
    them first, as do a block's in :meth:`run`: a late or preempted worker
    never holds a call up, and the bits are those of one thread.  The worker
    spins for ``POOL_SPIN_NS`` (50 us) between calls, then sleeps; waking it
    costs the caller a system call (8-30 us in a VM), so a step too small to
    pay for that (``_tuning.POOL_WAKE_MIN_BYTES``) runs alone while it sleeps,
    and the third of a stream of such steps wakes it.

    **Inputs.**  ``x_t`` of the runner's dtype, C-contiguous, shape
    ``(batch_size, features)`` (or ``(features,)`` at batch size 1, giving a
    1-D output) takes the zero-copy path.  Other real arrays and sequences
    (e.g. float64 into a float32 runner, strided views) are cast and copied
    into an internal buffer first -- the same casting ``model.predict`` does;
    complex, object and string inputs raise TypeError, wrong shapes
    ValueError.  A refused step leaves the state untouched.

    Examples
    --------
    >>> runner = model.streamer()
    >>> y = runner.step(x[:, 0])                 # (1, units)
    >>> saved = runner.state                     # [(h, c)] per LSTM layer
    >>> runner.reset()
    >>> runner.state = saved                     # resume
    """

    def __init__(self, model: Model, batch_size: int = 1, num_threads: int | None = None,
                 weights_dtype: str | None = None) -> None:
        specs = _specs_from_model(model)
        dtype = np.dtype(getattr(model, "dtype", np.float32))
        weights_dtype = _model_weights_dtype(model, dtype, weights_dtype)
        pack = _pack_for_model(model, specs, dtype, weights_dtype)
        self._init_from_pack(pack, batch_size, num_threads)

    @classmethod
    def _from_specs(cls, specs, batch_size=1, num_threads=None, dtype=np.float32,
                    weights_dtype=None):
        """A runner over raw weights, without a model (tests, interop).

        ``specs``: list of dicts ``{"type": "lstm", "kernel": (I, 4H),
        "recurrent_kernel": (H, 4H), "bias": (4H,) or None}`` and ``{"type":
        "dense", "kernel": (in, units), "bias": (units,) or None, "activation":
        name}``, Keras layouts, gate order i, f, c, o.
        """
        self = cls.__new__(cls)
        dtype = np.dtype(dtype)
        self._init_from_pack(_Pack(_check_specs(specs, dtype), dtype, weights_dtype),
                             batch_size, num_threads)
        return self

    @classmethod
    def _over_pack(cls, pack, batch_size, num_threads):
        """A runner over an existing ``_Pack`` (``lstm_forward(weights_dtype='int8')``
        runs its sequences on one, over the packed-weight cache's pack)."""
        self = cls.__new__(cls)
        self._init_from_pack(pack, batch_size, num_threads)
        return self

    def _init_from_pack(self, pack, batch_size, num_threads):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
            raise TypeError(f"batch_size must be an int; got {type(batch_size).__name__}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        cap = _config.get_num_threads()
        if num_threads is None:
            nt = min(2, cap) if pack.nbytes * batch_size >= PARALLEL_MIN_BYTES else 1
        else:
            if isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)):
                raise TypeError(f"num_threads must be an int; got {type(num_threads).__name__}")
            if num_threads < 1:
                raise ValueError(f"num_threads must be >= 1; got {num_threads}")
            nt = int(num_threads)
        nt = min(nt, max(p.n_panels for p in pack.layers))
        # BLAS has no bfloat16 GEMM: bfloat16 weights always take the kernel
        use_blas = batch_size >= BLAS_MIN_BATCH and pack.weights_dtype not in ("bfloat16",
                                                                                "int8")
        if use_blas:
            _config._blas()  # installs BLAS's thread setter (once per process)
        self._setup(pack, int(batch_size), nt, use_blas, cap)

    # ---- public API; step() is the compiled Core.step (no Python frame per step) -------
    def reset(self) -> None:
        """Zero every LSTM state (the start of a new stream)."""
        self._reset()

    @property
    def state(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Copies of the states: a list with one ``(h, c)`` per LSTM layer, each
        ``(batch_size, units)``.  Assign such a list (or None for zeros) to set them."""
        return self._get_state()

    @state.setter
    def state(self, value: Sequence[Sequence[ArrayLike]] | None) -> None:
        if value is None:
            self.reset()
            return
        shapes = self._state_shapes
        if isinstance(value, np.ndarray) or not hasattr(value, "__len__"):
            raise TypeError("state must be a list with one (h, c) pair per LSTM layer; got "
                            f"{type(value).__name__}")
        if len(value) != len(shapes):
            raise ValueError(f"state must hold {len(shapes)} (h, c) pair(s), one per LSTM "
                             f"layer; got {len(value)}")
        dtype = self.dtype
        checked = []
        for i, (pair, shape) in enumerate(zip(value, shapes)):
            if isinstance(pair, np.ndarray) or not hasattr(pair, "__len__") or len(pair) != 2:
                raise ValueError(f"state[{i}] must be a pair (h, c)")
            arrs = []
            for name, a in zip("hc", pair):
                a = np.asarray(a)
                if a.dtype.kind not in "fiu":
                    raise TypeError(f"state[{i}] {name} must be a real array; got dtype "
                                    f"{a.dtype}")
                if a.shape == shape[1:] and shape[0] == 1:
                    a = a.reshape(shape)
                if a.shape != shape:
                    raise ValueError(f"state[{i}] {name} must have shape {shape} "
                                     f"(batch_size, units); got {a.shape}")
                arrs.append(a.astype(dtype, copy=False))
            checked.append(tuple(arrs))
        self._set_state(checked)   # all validated first: a refused state changes nothing

    @property
    def batch_size(self) -> int:
        return self._info["batch_size"]

    @property
    def weights_dtype(self) -> str:
        """'float32', 'float64' or 'bfloat16': the type of the packed weights."""
        return self._shared_pack.weights_dtype

    @property
    def num_threads(self) -> int:
        return self._info["num_threads"]

    @property
    def dtype(self) -> np.dtype:
        return self._info["dtype"]

    @property
    def input_shape(self) -> tuple[int, int]:
        """(batch_size, features) of ``x_t``."""
        i = self._info
        return (i["batch_size"], i["n_in"])

    @property
    def output_shape(self) -> tuple[int, int]:
        """(batch_size, units) of what :meth:`step` returns."""
        i = self._info
        return (i["batch_size"], i["n_out"])

    def __repr__(self):
        i = self._info
        return (f"<StreamRunner batch_size={i['batch_size']} in={i['n_in']} out={i['n_out']} "
                f"dtype={np.dtype(i['dtype']).name} threads={i['num_threads']}>")


def _choose_threads(num_threads, cap):
    """The most threads a step may use: ``num_threads`` checked, or two by default."""
    if num_threads is None:
        return min(2, cap)
    if isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)):
        raise TypeError(f"num_threads must be an int; got {type(num_threads).__name__}")
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1; got {num_threads}")
    return int(num_threads)


class PoolFullError(RuntimeError):
    """A :class:`StreamPool` has no free slot for a new stream."""


class StreamPool:
    """Many independent streams of one model, stepped together in one batched call.

    A service with many live sessions (voice activity, keyword spotting,
    sensor streams) gets frames from several of them at once.  One call of
    :meth:`step` with all of them gathers those streams' states into one
    batch, runs one step of the whole model over it with the GIL released --
    one pass over the weights for all rows instead of one per stream -- and
    scatters the new states back.  Usually created with
    ``model.stream_pool(max_streams, idle_timeout)``.

    Parameters
    ----------
    model : cylstm.models.Sequential
        A model :class:`StreamRunner` accepts (unidirectional LSTM, Dense,
        Dropout).  The pool uses the packed weights the model's runners share
        (made once per model and weights version).
    max_streams : int
        Most streams live at once.  A step or :meth:`start` that would go
        beyond it raises :class:`PoolFullError`.
    idle_timeout : float or None
        Seconds after its last use (step, run, start, reset) after which a
        stream is evicted, or None (default) to keep streams until
        :meth:`end`.  Eviction happens when the pool is next used (any
        method), by the clock below; a frame for an evicted key starts a new
        stream from zeros, and :meth:`end` or :meth:`reset` of it raise KeyError.
    num_threads : int, optional
        Most threads one step may use.  A step uses two (at most
        :func:`cylstm.get_num_threads`) when the packed weights' bytes times
        the streams in the step reach :data:`PARALLEL_MIN_BYTES`, else one.
    weights_dtype : None, 'bfloat16' or 'int8'
        As for :class:`StreamRunner` (None: 'int8' for a quantized model,
        'bfloat16' for a mixed_bfloat16 one, with the runner's difference from
        ``predict``).
    clock : callable, optional
        Returns the time in seconds, never going back (default
        :func:`time.monotonic`); inject another to test eviction.

    Notes
    -----
    **Results.**  Every stream gets bit for bit what its own batch-1
    :class:`StreamRunner` would give from the same inputs, whichever other
    streams share its steps and in whatever order they join and leave.  The
    pooled step runs the runner's panel kernel (never BLAS) over several rows
    per weight load; that kernel sums each output with one accumulator in k
    order whatever the row blocking (int8 weights: exact integer sums), so the
    blocking never changes a bit.  Rows never mix: NaN or Inf
    in one stream's frame stays in that stream.

    **Threads.**  Any number of threads may call any method of one pool.
    Calls are serialised (one step at a time; the batch is the parallelism);
    the compute runs with the GIL released, so other Python threads run
    meanwhile.

    **Inputs.**  Frames are real arrays of shape ``(features,)``, cast to the
    model's dtype.  A frame of the wrong shape or dtype, or a key named twice,
    raises ValueError naming it before anything changes: no stream's state
    moves when any frame of the call is refused.

    Examples
    --------
    >>> pool = model.stream_pool(max_streams=64, idle_timeout=30.0)
    >>> out = pool.step({"alice": fa, "bob": fb})        # {key: (units,)}
    >>> keys, y = pool.step((["alice", "bob"], x))       # x (2, features) -> y (2, units)
    >>> y = pool.run("carol", block)                     # (T, features) -> (T, units)
    >>> pool.end("bob")
    """

    def __init__(self, model: Model, max_streams: int = 64, idle_timeout: float | None = None,
                 num_threads: int | None = None, weights_dtype: str | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        specs = _specs_from_model(model)
        dtype = np.dtype(getattr(model, "dtype", np.float32))
        weights_dtype = _model_weights_dtype(model, dtype, weights_dtype)
        self._init(_pack_for_model(model, specs, dtype, weights_dtype), max_streams,
                   idle_timeout, num_threads, clock)

    @classmethod
    def _from_specs(cls, specs, max_streams=64, idle_timeout=None, num_threads=None,
                    dtype=np.float32, weights_dtype=None, clock=None):
        """A pool over raw weights (the specs of :meth:`StreamRunner._from_specs`)."""
        self = cls.__new__(cls)
        dtype = np.dtype(dtype)
        self._init(_Pack(_check_specs(specs, dtype), dtype, weights_dtype), max_streams,
                   idle_timeout, num_threads, clock)
        return self

    def _init(self, pack, max_streams, idle_timeout, num_threads, clock):
        if isinstance(max_streams, bool) or not isinstance(max_streams, (int, np.integer)):
            raise TypeError(f"max_streams must be an int; got {type(max_streams).__name__}")
        if max_streams < 1:
            raise ValueError(f"max_streams must be >= 1; got {max_streams}")
        if idle_timeout is not None:
            if isinstance(idle_timeout, bool) or not isinstance(
                    idle_timeout, (int, float, np.integer, np.floating)):
                raise TypeError("idle_timeout must be a number of seconds or None; got "
                                f"{type(idle_timeout).__name__}")
            if not idle_timeout >= 0:
                raise ValueError(f"idle_timeout must be >= 0 seconds; got {idle_timeout}")
            idle_timeout = float(idle_timeout)
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be callable; got {type(clock).__name__}")
        self._cap_threads = _config.get_num_threads()
        nt = _choose_threads(num_threads, self._cap_threads)
        nt = min(nt, max(p.n_panels for p in pack.layers))
        self._explicit_threads = num_threads is not None
        self._max_threads = nt
        self._pack = pack
        self._core = _stream.PoolCore()
        self._core._pool_setup(pack, int(max_streams), nt)
        self._max_streams = int(max_streams)
        self._idle_timeout = idle_timeout
        self._clock = clock or time.monotonic
        self._lock = threading.Lock()
        self._slots = collections.OrderedDict()   # key -> slot, least recently used first
        self._last = {}                           # key -> time of last use
        self._free = list(range(self._max_streams - 1, -1, -1))
        info = self._core._info
        self._dtype = info["dtype"]
        self._n_in, self._n_out = info["n_in"], info["n_out"]
        self._units = [cbuf.shape[1] for _, cbuf in self._core._slot_states]

    # ---- properties ----------------------------------------------------------
    @property
    def max_streams(self) -> int:
        return self._max_streams

    @property
    def idle_timeout(self) -> float | None:
        return self._idle_timeout

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def weights_dtype(self) -> str:
        """'float32', 'float64' or 'bfloat16': the type of the packed weights."""
        return self._pack.weights_dtype

    @property
    def input_shape(self) -> tuple[int]:
        """(features,) of one stream's frame."""
        return (self._n_in,)

    @property
    def output_shape(self) -> tuple[int]:
        """(units,) of one stream's output."""
        return (self._n_out,)

    # ---- bookkeeping (callers hold the lock) ---------------------------------
    def _evict(self, now):
        if self._idle_timeout is None:
            return
        while self._slots:
            key = next(iter(self._slots))
            if now - self._last[key] <= self._idle_timeout:
                break
            self._drop(key)

    def _drop(self, key):
        self._free.append(self._slots.pop(key))
        del self._last[key]

    def _touch(self, key, now):
        self._slots.move_to_end(key)
        self._last[key] = now

    def _zero(self, slot):
        for hs, cs in self._core._slot_states:
            hs[slot] = 0
            cs[slot] = 0

    def _full(self, n_new):
        return PoolFullError(
            f"the pool is full: {len(self._slots)} stream(s) live of max_streams="
            f"{self._max_streams}, and this call starts {n_new} new one(s); end() streams, "
            "raise max_streams or set idle_timeout")

    def _admit(self, keys, now):
        """Slots for ``keys`` (new ones start from zero); all or nothing."""
        new = [k for k in keys if k not in self._slots]
        if len(new) > len(self._free):
            raise self._full(len(new))
        for k in new:
            slot = self._free.pop()
            self._zero(slot)
            self._slots[k] = slot
            self._last[k] = now
        return [self._slots[k] for k in keys]

    def _threads_for(self, n):
        if self._explicit_threads:
            return self._max_threads
        big = self._pack.nbytes * n >= PARALLEL_MIN_BYTES
        return self._max_threads if big else 1

    # ---- input checks (no lock: nothing changes) -----------------------------
    def _frame(self, key, a):
        try:
            a = np.asarray(a)
        except Exception as e:
            raise ValueError(f"frame for key {key!r} must be an array of shape "
                             f"({self._n_in},); got {type(a).__name__}") from e
        if a.dtype.kind not in "fiu":
            raise ValueError(f"frame for key {key!r} must be a real numeric array of shape "
                             f"({self._n_in},); got dtype {a.dtype}, shape {a.shape}")
        if a.shape != (self._n_in,):
            raise ValueError(f"frame for key {key!r} must have shape ({self._n_in},) "
                             f"(features); got shape {a.shape}")
        return a

    def _parse(self, frames):
        """(keys, X (n, F) of the pool's dtype, C-contiguous, 'dict' or 'pair')."""
        if isinstance(frames, dict):
            keys = list(frames)
            X = np.empty((len(keys), self._n_in), self._dtype)
            for i, (k, a) in enumerate(frames.items()):
                X[i] = self._frame(k, a)
            return keys, X, "dict"
        if isinstance(frames, tuple) and len(frames) == 2:
            keys, arr = frames
            if isinstance(keys, (str, bytes)) or not hasattr(keys, "__len__"):
                raise TypeError("frames=(keys, array): keys must be a sequence of keys; got "
                                f"{type(keys).__name__}")
            keys = list(keys)
            n = len(keys)
            a = np.asarray(arr)
            if a.dtype.kind not in "fiu":
                raise ValueError(f"frames array for keys {keys!r} must be a real numeric "
                                 f"array of shape ({n}, {self._n_in}); got dtype {a.dtype}")
            if a.shape != (n, self._n_in):
                raise ValueError(f"frames array for keys {keys!r} must have shape "
                                 f"({n}, {self._n_in}) (one row per key, features); "
                                 f"got shape {a.shape}")
            if len(set(keys)) != n:
                seen = set()
                dup = next(k for k in keys if k in seen or seen.add(k))
                raise ValueError(f"key {dup!r} is named twice in one step")
            return keys, np.ascontiguousarray(a, self._dtype), "pair"
        raise TypeError("frames must be a dict {key: array (features,)} or a pair "
                        f"(keys, array (n, features)); got {type(frames).__name__}")

    def _check_state(self, key, initial_state):
        units = self._units
        if isinstance(initial_state, np.ndarray) or not hasattr(initial_state, "__len__"):
            raise TypeError(f"initial_state for key {key!r} must be a list with one (h, c) "
                            f"pair per LSTM layer; got {type(initial_state).__name__}")
        if len(initial_state) != len(units):
            raise ValueError(f"initial_state for key {key!r} must hold {len(units)} (h, c) "
                             f"pair(s), one per LSTM layer; got {len(initial_state)}")
        out = []
        for i, (pair, H) in enumerate(zip(initial_state, units)):
            if isinstance(pair, np.ndarray) or not hasattr(pair, "__len__") or len(pair) != 2:
                raise ValueError(f"initial_state[{i}] for key {key!r} must be a pair (h, c)")
            arrs = []
            for name, a in zip("hc", pair):
                a = np.asarray(a)
                if a.dtype.kind not in "fiu":
                    raise TypeError(f"initial_state[{i}] {name} for key {key!r} must be a "
                                    f"real array; got dtype {a.dtype}")
                if a.shape not in ((H,), (1, H)):
                    raise ValueError(f"initial_state[{i}] {name} for key {key!r} must have "
                                     f"shape ({H},) or (1, {H}); got {a.shape}")
                arrs.append(a.reshape(H).astype(self._dtype))
            out.append(arrs)
        return out

    def _known(self, key):
        try:
            return self._slots[key]
        except KeyError:
            raise KeyError(f"no live stream with key {key!r} in this pool (never started, "
                           "ended, or evicted after idle_timeout)") from None

    # ---- public API ----------------------------------------------------------
    def step(self, frames: _PoolFrames) -> _PoolOutputs:
        """Advance every stream named in ``frames`` by one time step, in one call.

        Parameters
        ----------
        frames : dict {key: array (features,)} or tuple (keys, array (n, features))
            One frame per stream.  Keys are any hashables, each at most once.
            A key not live yet starts from a zero state.

        Returns
        -------
        dict {key: array (units,)} or tuple (keys, array (n, units))
            The outputs in the form of ``frames`` (new arrays; the dict's
            values are rows of one array).

        Raises
        ------
        ValueError
            A frame of the wrong shape or dtype, or a key named twice.
        PoolFullError
            New keys beyond ``max_streams`` live streams.
        """
        keys, X, form = self._parse(frames)
        n = len(keys)
        Y = np.empty((n, self._n_out), self._dtype)
        if n:
            with self._lock:
                now = self._clock()
                self._evict(now)
                slots = np.array(self._admit(keys, now), np.intp)
                self._core._pool_step(X, slots, Y, self._threads_for(n))
                for k in keys:
                    self._touch(k, now)
        if form == "dict":
            return dict(zip(keys, Y))
        return keys, Y

    def run(self, key: Hashable, block: ArrayLike) -> np.ndarray:
        """Run a whole block of one stream's frames in one call, carrying its state on.

        Parameters
        ----------
        key : hashable
            The stream (a new key starts from a zero state).
        block : array (T, features)

        Returns
        -------
        array (T, units)
            Bit for bit what T calls of :meth:`step` with this stream give.
        """
        a = np.asarray(block)
        if a.dtype.kind not in "fiu":
            raise ValueError(f"block for key {key!r} must be a real numeric array of shape "
                             f"(T, {self._n_in}); got dtype {a.dtype}")
        if a.ndim != 2 or a.shape[1] != self._n_in:
            raise ValueError(f"block for key {key!r} must have shape (T, {self._n_in}) "
                             f"(time, features); got shape {a.shape}")
        hash(key)
        X = np.ascontiguousarray(a, self._dtype)
        Y = np.empty((X.shape[0], self._n_out), self._dtype)
        with self._lock:
            now = self._clock()
            self._evict(now)
            (slot,) = self._admit([key], now)
            self._core._pool_run(X, slot, Y, self._threads_for(1))
            self._touch(key, now)
        return Y

    def start(self, key: Hashable,
              initial_state: Sequence[tuple[ArrayLike, ArrayLike]] | None = None) -> None:
        """Start (or restart) stream ``key`` from ``initial_state``, or from zeros.

        Parameters
        ----------
        key : hashable
        initial_state : list of (h, c), optional
            One pair per LSTM layer, each of shape ``(units,)`` or ``(1, units)``:
            the layout a batch-1 runner's ``state`` takes.
        """
        hash(key)
        state = None if initial_state is None else self._check_state(key, initial_state)
        with self._lock:
            now = self._clock()
            self._evict(now)
            (slot,) = self._admit([key], now)
            self._zero(slot)
            if state is not None:
                for (hs, cs), (h, c) in zip(self._core._slot_states, state):
                    hs[slot] = h
                    cs[slot] = c
            self._touch(key, now)

    def end(self, key: Hashable) -> None:
        """End stream ``key`` and free its slot (KeyError if it is not live)."""
        with self._lock:
            self._evict(self._clock())
            self._known(key)
            self._drop(key)

    def reset(self, key: Hashable) -> None:
        """Zero the state of stream ``key`` (KeyError if it is not live)."""
        with self._lock:
            now = self._clock()
            self._evict(now)
            self._zero(self._known(key))
            self._touch(key, now)

    def state(self, key: Hashable) -> list[tuple[np.ndarray, np.ndarray]]:
        """Copies of stream ``key``'s state: one ``(h, c)`` per LSTM layer, each (units,)."""
        with self._lock:
            self._evict(self._clock())
            slot = self._known(key)
            return [(hs[slot].copy(), cs[slot].copy()) for hs, cs in self._core._slot_states]

    def keys(self) -> list[Hashable]:
        """The live streams' keys, least recently used first."""
        with self._lock:
            self._evict(self._clock())
            return list(self._slots)

    def __len__(self):
        with self._lock:
            self._evict(self._clock())
            return len(self._slots)

    def __contains__(self, key):
        with self._lock:
            self._evict(self._clock())
            return key in self._slots

    def __repr__(self):
        return (f"<StreamPool live={len(self._slots)} max_streams={self._max_streams} "
                f"in={self._n_in} out={self._n_out} dtype={np.dtype(self._dtype).name}>")
