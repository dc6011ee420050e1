"""The functional LSTM: NumPy arrays in, NumPy arrays out, compiled kernels inside.

All arrays are batch-first: ``x`` is (batch, time, features).  Weights use the
public Keras layout with gate blocks in the order i, f, c (= g), o:

    kernel            (input_dim, 4 * units)
    recurrent_kernel  (units, 4 * units)
    bias              (4 * units,)

PyTorch's ``weight_ih_l0`` is ``kernel.T`` and ``weight_hh_l0`` is
``recurrent_kernel.T`` (same gate order); its bias is ``bias_ih + bias_hh``.

Example
-------
>>> out = lstm_forward(x, W, U, b, training=True)
>>> grads = lstm_backward(out.cache, grad_output=dy)
"""
from collections import namedtuple
import numbers

import numpy as np

from cylstm import _config, _lstm, _stream
from cylstm._workspace import give, take

__all__ = ["lstm_forward", "lstm_backward", "LSTMForward", "LSTMGrads", "as_float_array"]

LSTMForward = namedtuple("LSTMForward", ["output", "h", "c", "cache"])
LSTMForward.__doc__ = """Result of :func:`lstm_forward`.

output : (B, T, H) when ``return_sequences`` else (B, H) (the final h)
h, c   : (B, H) final states (for each sample, the state after its last valid step)
cache  : what :func:`lstm_backward` needs (``training=True``), else None
"""
LSTMGrads = namedtuple(
    "LSTMGrads", ["dx", "dkernel", "drecurrent_kernel", "dbias", "dh0", "dc0"]
)

# Below this many samples per thread, splitting the batch costs more than it saves
# (measured in bench/compare.py: see README, "threads").
MIN_ROWS_PER_THREAD = 4

# The threads split the recurrent kernel's units instead of the batch (packed
# panels, one barrier per step: cylstm/_lstm.pyx) when
#  - the batch is too small to split and the recurrent kernel has at least
#    PANEL_TEAM_MIN_BYTES: below it the barrier costs more than the second core
#    saves (at 2 threads: (T, B, I, H) = (200, 1, 64, 96) 0.33 ms against 0.40
#    serial; (200, 1, 32, 64) no faster);
#  - or the recurrent kernel is at least half the last-level cache: split by
#    batch, every thread would stream all of it from memory each step; split by
#    units, each keeps its share in cache ((25, 16, 1024, 1024), 16 MiB of U,
#    41.4 -> 36.8 ms; (50, 16, 768, 768), 9 MiB, 38.5 -> 40.1 ms: not used).
#    On one thread too: the panel kernel's six-row blocks read the weights
#    fewer times than BLAS's tiles (86.5 -> 72.7 ms at (25, 16, 1024, 1024)).
PANEL_TEAM_MIN_BYTES = 128 * 1024

# Batches that split into slices of at least FUSE_MIN_ROWS samples per thread
# compute x_t @ W inside each step, next to h_prev @ U, instead of one input
# projection for all steps up front: the gate buffer (B, T, 4H) is then never
# written and read back (measured at 2 threads: (100, 32, 128, 256) 13.5 ->
# 12.7 ms, (100, 32, 10, 50) 0.67 -> 0.63 ms).  The weights are then read every
# step, so only while [W; U] fits in a quarter of the last-level cache
# ((25, 16, 1024, 1024), 32 MiB of weights, went 39 -> 72 ms).
FUSE_MIN_ROWS = 8

# Batches of at least STACKED_MIN_ROWS samples per thread, with H >= 256 and
# [W; U] in a quarter of the last-level cache, run each step as the streaming
# runner does: [x_t, h_prev] @ [W; U] on packed panels (six batch rows per
# weight load, 24 accumulators in AVX-512 registers: ~113 GFLOP/s on one Zen 4
# core, above OpenBLAS's 105), then the cell, panel by panel.  Measured:
# (50, 64, 512, 512) 134 -> 123 ms on one thread, 65.4 -> 64.2 on two;
# (100, 32, 128, 256) 25.5 -> 24.6 and 12.7 -> 12.2 ms.  Below 16 rows a thread
# runs too few six-row blocks ((100, 16, 256, 256) on two threads: 8.2 -> 9.6 ms)
# and below 256 units the per-panel cell calls cost what the kernel saves.
# Inference only: a training forward must also scatter each panel's gates into
# the (B, T, 4H) buffer the backward reads, which cost more than the kernel
# saved ((100, 32, 128, 256) training step 86.2 -> 90.2 ms on one thread).
STACKED_MIN_ROWS = 16
STACKED_MIN_UNITS = 256


def _llc_bytes():
    """Size of the CPU's last-level cache (Linux sysfs), or 8 MiB if unknown."""
    import glob

    best = 0
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            with open(path) as f:
                txt = f.read().strip().upper()
            mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(txt[-1:], 1)
            best = max(best, int(txt.rstrip("KMG")) * mult)
        except (OSError, ValueError):
            continue
    return best or 8 * 2**20


_LLC = _llc_bytes()

# The panel kernel's six-row body (what makes the stacked path and the unit split
# of large batches beat BLAS) is compiled for AVX-512 only: elsewhere those
# shapes stay on BLAS.
_PANELS_FAST = _stream.cpu_level() == 2


def _dtype_of(name, a):
    a = np.asarray(a) if not isinstance(a, np.ndarray) else a
    k = a.dtype.kind
    if k in "cOSUVMm":
        raise TypeError(f"{name} must be a real numeric array; got dtype {a.dtype}")
    return a


def as_float_array(name, a, dtype, ndim=None):
    """Return ``a`` as a C-contiguous array of ``dtype``; refuse complex/object."""
    if a is None:
        raise TypeError(f"{name} must be an array; got None")
    try:
        arr = _dtype_of(name, a)
    except (TypeError, ValueError) as e:
        if isinstance(e, TypeError) and str(e).startswith(name):
            raise
        raise TypeError(f"{name} must be a numeric array; got {type(a).__name__}") from e
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dims; got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=dtype)


def _weights_dtype(kernel):
    k = _dtype_of("kernel", kernel)
    if k.dtype == np.float64:
        return np.dtype(np.float64)
    return np.dtype(np.float32)


def _forward_plan(B, H, W, U, dtype, nt, n_total, rmask, lens, reverse, training=False):
    """How :func:`cylstm._lstm.forward` runs: (mode, fuse).

    mode 0: threads split the batch, per-step products on BLAS (``fuse``: x_t @ W
    inside each step); mode 1: threads split the units, packed panels of U;
    mode 2: threads split the batch, packed panels of [W; U].
    """
    if B == 0 or H == 0:
        return 0, False
    fits = (W.nbytes + U.nbytes) * 4 <= _LLC
    if rmask is None and H > _panel_units(dtype):  # two panels at least
        small_batch = n_total >= 2 and nt == 1 and U.nbytes >= PANEL_TEAM_MIN_BYTES
        if small_batch or (_PANELS_FAST and 2 * U.nbytes >= _LLC):
            return 1, False
    if (_PANELS_FAST and not training and B // nt >= STACKED_MIN_ROWS
            and H >= STACKED_MIN_UNITS and fits and not (lens is not None and reverse)):
        return 2, False
    return 0, lens is None and B // nt >= FUSE_MIN_ROWS and fits


def _panel_units(dtype):
    return _lstm.PANEL_UNITS_F32 if dtype == np.float32 else _lstm.PANEL_UNITS_F64


def _threads_for(B, num_threads):
    n = _config.get_num_threads() if num_threads is None else int(num_threads)
    if n < 1:
        raise ValueError(f"num_threads must be >= 1; got {n}")
    return n, max(1, min(n, B // MIN_ROWS_PER_THREAD))


_INT_MAX = 2**31 - 1  # BLAS (LP64) dimensions and leading dimensions are C ints


def _mem_available():
    """Bytes the kernel may still get (Linux MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _check_sizes(B, T, I, H, itemsize, training):
    """Refuse, before allocating anything, work that cannot be done.

    Element indices are 64-bit throughout the kernels; what stays 32-bit is
    each BLAS dimension (rows B*T of the input projection, columns 4H, and
    the inner size I).  Large buffers are checked against the memory
    available, so an impossible request is a clear error, not the OOM killer.
    """
    if B * T > _INT_MAX or 4 * H > _INT_MAX or I > _INT_MAX:
        raise ValueError(
            f"x of shape ({B}, {T}, {I}) with {H} units exceeds the BLAS index range "
            f"(batch*time={B * T}, 4*units={4 * H}, features={I}; each must be < 2**31)"
        )
    per_row = 4 * H + H  # gate buffer + outputs
    if training:
        per_row += 2 * H  # cell states and previous h
    need = B * T * per_row * itemsize
    if need > 2**30:
        avail = _mem_available()
        if avail is not None and need > avail:
            raise MemoryError(
                f"lstm_forward on x of shape ({B}, {T}, {I}) with {H} units needs about "
                f"{need / 2**30:.1f} GiB of buffers; only {avail / 2**30:.1f} GiB is available "
                f"(use a smaller batch{'' if training else ' or return_sequences=False'})"
            )


def _check_lengths(lengths, B, T):
    if lengths is None:
        return None
    la = np.asarray(lengths)
    if la.dtype.kind not in "iu":
        if la.dtype.kind == "f" and np.all(np.isfinite(la)) and np.all(la == np.round(la)):
            la = la.astype(np.int64)
        else:
            raise TypeError(f"lengths must be integers; got dtype {la.dtype}")
    if la.shape != (B,):
        raise ValueError(f"lengths must have shape ({B},) (one per sample); got {la.shape}")
    if B and (la.min() < 1 or la.max() > T):
        raise ValueError(
            f"lengths must lie in [1, {T}] (time steps of x); got min {la.min()}, "
            f"max {la.max()}"
        )
    la = np.ascontiguousarray(la, dtype=np.int64)
    if B and la.min() == T:
        return None  # all full: the fast path
    return la


def check_weights(x_shape, W, recurrent_kernel, bias, dtype):
    """Validate the weights against ``x_shape`` (B, T, I) and the kernel ``W``
    (already an array of ``dtype``); return (U, bias, units).  Shared by the
    CPU and CUDA entry points."""
    B, T, I = x_shape
    if W.shape[0] != I or W.shape[1] % 4 or W.shape[1] == 0:
        raise ValueError(
            f"kernel must have shape (input_dim={I}, 4*units); got {W.shape} for x of shape "
            f"{tuple(x_shape)}"
        )
    H = W.shape[1] // 4
    U = as_float_array("recurrent_kernel", recurrent_kernel, dtype, 2)
    if U.shape != (H, 4 * H):
        raise ValueError(
            f"recurrent_kernel must have shape ({H}, {4 * H}) for kernel of shape {W.shape}; "
            f"got {U.shape}"
        )
    if bias is None:
        b = np.zeros(4 * H, dtype)
    else:
        b = as_float_array("bias", bias, dtype, 1)
        if b.shape != (4 * H,):
            raise ValueError(f"bias must have shape ({4 * H},); got {b.shape}")
    if T == 0:
        raise ValueError(f"x has zero time steps (shape {tuple(x_shape)}); an LSTM needs T >= 1")
    if I == 0:
        raise ValueError(f"x has zero features (shape {tuple(x_shape)})")
    return U, b, H


def check_states(initial_state, recurrent_mask, B, H, dtype):
    """Return fresh (h, c) state buffers (the kernels update them in place, so
    the caller's arrays are always copied) and the recurrent mask or None."""
    if initial_state is None:
        hs = np.zeros((B, H), dtype)
        cs = np.zeros((B, H), dtype)
    else:
        if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 2:
            raise TypeError("initial_state must be a pair (h0, c0)")
        hs = np.array(as_float_array("h0", initial_state[0], dtype), dtype=dtype, order="C")
        cs = np.array(as_float_array("c0", initial_state[1], dtype), dtype=dtype, order="C")
        for name, a in (("h0", hs), ("c0", cs)):
            if a.shape != (B, H):
                raise ValueError(f"{name} must have shape (batch={B}, units={H}); got {a.shape}")
    rmask = None
    if recurrent_mask is not None:
        rmask = as_float_array("recurrent_mask", recurrent_mask, dtype)
        if rmask.shape != (B, H):
            raise ValueError(
                f"recurrent_mask must have shape (batch={B}, units={H}); got {rmask.shape}"
            )
    return hs, cs, rmask


def check_output_grads(grad_output, grad_h, grad_c, return_sequences, B, T, H, dtype):
    """Validate the incoming gradients of a backward call; return (dy or None,
    dL/dh_T, dL/dc_T) with a last-step-only ``grad_output`` folded into dL/dh_T.
    Shared by the CPU and CUDA entry points."""
    dhs = np.zeros((B, H), dtype)
    dcs = np.zeros((B, H), dtype)
    dy = None
    if grad_output is not None:
        g = as_float_array("grad_output", grad_output, dtype)
        if return_sequences:
            if g.shape != (B, T, H):
                raise ValueError(f"grad_output must have shape {(B, T, H)}; got {g.shape}")
            dy = g
        else:
            if g.shape != (B, H):
                raise ValueError(f"grad_output must have shape {(B, H)}; got {g.shape}")
            dhs += g
    for name, g, dst in (("grad_h", grad_h, dhs), ("grad_c", grad_c, dcs)):
        if g is not None:
            g = as_float_array(name, g, dtype)
            if g.shape != (B, H):
                raise ValueError(f"{name} must have shape {(B, H)}; got {g.shape}")
            dst += g
    return dy, dhs, dcs


def lstm_forward(x, kernel, recurrent_kernel, bias=None, *, initial_state=None,
                 lengths=None, go_backwards=False, return_sequences=True,
                 training=False, recurrent_mask=None, num_threads=None):
    """Run an LSTM over whole sequences.

    Parameters
    ----------
    x : array (B, T, I)
        Input; integer arrays are cast, complex and object arrays refused.
    kernel, recurrent_kernel, bias : arrays (I, 4H), (H, 4H), (4H,) or None
        Weights in Keras layout (gates i, f, c, o).  Their dtype (float32 or
        float64) is the compute dtype; other inputs are cast to it.
    initial_state : (h0, c0), each (B, H), or None for zeros.
    lengths : int array (B,) or None
        Valid steps per sample (1 <= L <= T), PyTorch packed-sequence
        semantics: outputs past a sample's length are zero, its final state
        is the one after its last valid step, and with ``go_backwards`` it
        runs from its own last valid step back to step 0.
    go_backwards : bool
        Process time in reverse.  ``output[:, t]`` is still the state
        computed at time ``t`` (PyTorch's convention; the Keras layer flips).
    return_sequences : bool
        Return all outputs (B, T, H) or only the final h (B, H).
    training : bool
        Keep what :func:`lstm_backward` needs (the activated gates, cell
        states and previous hidden states); inference keeps nothing extra.
    recurrent_mask : array (B, H) or None
        Recurrent dropout as in Keras: one mask per sequence (already scaled
        by 1 / (1 - rate)) that multiplies h_prev in the recurrent product
        ``h_prev @ U`` at every step; the carried state is not masked.
    num_threads : int or None
        Defaults to :func:`cylstm.get_num_threads`.

    Returns
    -------
    LSTMForward(output, h, c, cache)
    """
    dtype = _weights_dtype(kernel)
    W = as_float_array("kernel", kernel, dtype, 2)
    xs = np.shape(x) if isinstance(x, np.ndarray) else np.shape(_dtype_of("x", x))
    if len(xs) != 3:
        raise ValueError(f"x must have 3 dims (batch, time, features); got shape {xs}")
    if W.shape[1] % 4 == 0 and W.shape[1]:
        _check_sizes(xs[0], xs[1], xs[2], W.shape[1] // 4, dtype.itemsize, training)
    x = as_float_array("x", x, dtype)
    B, T, I = x.shape
    U, b, H = check_weights(x.shape, W, recurrent_kernel, bias, dtype)
    lens = _check_lengths(lengths, B, T)
    hs, cs, rmask = check_states(initial_state, recurrent_mask, B, H, dtype)
    hm = None if rmask is None else np.empty((B, H), dtype)
    c0 = cs.copy() if training else None
    n_total, nt = _threads_for(B, num_threads)
    _config._blas()

    ragged = lens is not None
    alloc = np.zeros if ragged else np.empty
    mode, fuse = _forward_plan(B, H, W, U, dtype, nt, n_total, rmask, lens, go_backwards,
                               training)
    # the gate buffer: x @ W for every step (modes 0 unfused, 1), the gates (training)
    G = take((B, T, 4 * H), dtype) if (training or mode == 1 or (mode == 0 and not fuse)) \
        else None
    y = alloc((B, T, H), dtype) if (return_sequences or training) else None
    C = take((B, T, H), dtype) if training else None
    Hp = take((B, T, H), dtype, zero=ragged) if training else None
    Pu = hs2 = None
    span = _panel_units(dtype)
    if mode == 0:
        Z = take((B, 4 * H), dtype)
    elif mode == 1:  # per-thread panel products and cell results, packed U, other half of h
        n_z = min(n_total, -(-H // span))
        Z = take((n_z, _lstm.units_scratch(B, H, dtype.name)), dtype, align=64)
        Pu = take((_lstm.packed_len(H, dtype.name),), dtype, align=64)
        hs2 = take((B, H), dtype)
    else:  # per-thread panel products, packed [W; U], the other half of h
        Z = take((nt, B * 4 * span), dtype, align=64)
        Pu = take((_lstm.stacked_len(I, H, dtype.name),), dtype, align=64)
        hs2 = take((B, H), dtype)
    if B:  # an empty batch has nothing to run (the kernel addresses element 0 of x)
        args = (x, W, U, b, lens, bool(go_backwards), rmask, hm, y, hs, cs, G, C, Hp, Z)
        if mode == 0:
            _lstm.forward_rows(*args, nt, n_total, fuse)
        elif mode == 1:
            _lstm.forward_units(*args, Pu, hs2, n_total, n_total)
        else:
            _lstm.forward_stacked(*args, Pu, hs2, nt, n_total)
    give(Z, Pu, hs2)
    if not training:
        give(G)
    cache = None
    if training:
        cache = {
            "x": x, "W": W, "U": U, "c0": c0, "lengths": lens,
            "reverse": bool(go_backwards), "G": G, "C": C, "Hp": Hp, "rmask": rmask,
            "return_sequences": bool(return_sequences), "used": False,
        }
    out = y if return_sequences else hs.copy()
    return LSTMForward(out, hs, cs, cache)


def lstm_backward(cache, grad_output=None, grad_h=None, grad_c=None, *,
                  need_input_grad=True, num_threads=None, out=None):
    """Backpropagate through a training-mode :func:`lstm_forward`.

    Parameters
    ----------
    cache : the ``cache`` of a ``lstm_forward(..., training=True)`` call.
        It is consumed (its gate buffer becomes dL/dz): call backward once.
    grad_output : dL/d output, same shape as the forward's ``output``, or None.
    grad_h, grad_c : dL/d final h and c, (B, H) each, or None.
    need_input_grad : compute dL/dx (skip it for a first layer).
    out : (dkernel, drecurrent_kernel, dbias) arrays to write the weight
        gradients into (C-contiguous, the weights' shapes and dtype; any may be
        None), e.g. views of a model's flat gradient buffer.

    Returns
    -------
    LSTMGrads(dx, dkernel, drecurrent_kernel, dbias, dh0, dc0); ``dx`` is None
    when ``need_input_grad`` is False.
    """
    if not isinstance(cache, dict) or "G" not in cache:
        raise TypeError("cache must be the cache of lstm_forward(..., training=True)")
    if cache["used"]:
        raise ValueError("this cache was already used by lstm_backward; run the forward again")
    x, W, U, G = cache["x"], cache["W"], cache["U"], cache["G"]
    dtype = W.dtype
    B, T, I = x.shape
    H = U.shape[0]
    dy, dhs, dcs = check_output_grads(grad_output, grad_h, grad_c, cache["return_sequences"],
                                      B, T, H, dtype)
    n_total, nt = _threads_for(B, num_threads)
    _config._blas()
    cache["used"] = True
    if B == 0:  # no samples, zero gradients (the kernel would address element 0 of empty dy)
        give(cache["G"], cache["C"], cache["Hp"])
        cache["G"] = cache["C"] = cache["Hp"] = None
        return LSTMGrads(np.zeros((0, T, I), dtype) if need_input_grad else None,
                         np.zeros((I, 4 * H), dtype), np.zeros((H, 4 * H), dtype),
                         np.zeros(4 * H, dtype), dhs, dcs)
    D = take((B, 4 * H), dtype, zero=True)
    dHp = take((B, H), dtype)
    dx = np.empty((B, T, I), dtype) if need_input_grad else None
    outs = [None, None, None] if out is None else list(out)
    if len(outs) != 3:
        raise ValueError("out must be (dkernel, drecurrent_kernel, dbias)")
    scratch = []
    for k, (name, shape) in enumerate((("dkernel", (I, 4 * H)),
                                       ("drecurrent_kernel", (H, 4 * H)),
                                       ("dbias", (4 * H,)))):
        a = outs[k]
        if a is None:
            outs[k] = np.empty(shape, dtype) if out is None else take(shape, dtype)
            if out is not None:
                scratch.append(outs[k])
        elif (not isinstance(a, np.ndarray) or a.shape != shape or a.dtype != dtype
              or not a.flags.c_contiguous or not a.flags.writeable):
            raise ValueError(
                f"out[{k}] ({name}) must be a writeable C-contiguous {dtype} array of shape "
                f"{shape}; got {getattr(a, 'shape', type(a).__name__)}"
            )
    dW, dU, db = outs
    parts = take((nt - 1, I + H + 1, 4 * H), dtype) if nt > 1 else None
    UT = take((4 * H, H), dtype)
    UT[...] = U.T
    _lstm.backward(x, W, UT, cache["c0"], cache["lengths"], cache["reverse"], cache["rmask"], G,
                   cache["C"], cache["Hp"], dy, dhs, dcs, D, dHp, dx, dW, dU, db,
                   parts, nt, n_total)
    give(D, dHp, parts, UT, G, cache["C"], cache["Hp"], *scratch)
    for k in ("G", "C", "Hp"):
        cache[k] = None  # the activations go back to the pool now
    return LSTMGrads(dx, dW, dU, db, dhs, dcs)
