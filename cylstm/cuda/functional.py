"""The functional LSTM on a CUDA GPU: the API of :mod:`cylstm.functional`.

``lstm_forward`` / ``lstm_backward`` take and return NumPy arrays exactly like their CPU
counterparts (same arguments, same results, same validation and error messages), so a
layer can dispatch to either.  Inside, the batch is copied to the device, the kernels of
``include/cylstm_cuda.h`` run there (cuBLAS GEMMs + fused cell kernels), and the results
are copied back.  The training cache stays on the device between the forward and the
backward call.

Weights stay resident: pass ``weights_version`` (any hashable value that changes
whenever the weights change, e.g. from :func:`new_weights_version`) and the device copy
of each weight array is reused while the version is unchanged.  Without it the weights
are uploaded on every call (always correct, slower for large layers).

Extra keyword arguments over the CPU API: ``weights_version``, ``device`` (the CUDA
device index), and for chaining layers without host round trips ``output_on_device``
(forward) and ``dx_on_device`` (backward); ``x`` and ``grad_output`` may then be
``DeviceArray``s (``cylstm.cuda.DeviceArray``) of the weights' dtype.  ``num_threads``
is accepted and ignored.

``lstm_backward(..., out=...)`` copies the weight gradients straight into the caller's
arrays (one cudaMemcpy each into a model's gradient buffer: host memory in use, no page
faults), as the CPU version writes them there.
"""
from collections import OrderedDict

import numpy as np

from cylstm import cuda
from cylstm._validate import (
    as_float_array,
    check_grad_out,
    check_lengths,
    check_output_grads,
    check_states,
    check_weights,
    weights_dtype,
)
from cylstm.functional import LSTMForward, LSTMGrads, new_weights_version

__all__ = ["lstm_backward", "lstm_forward", "new_weights_version"]

MAX_CACHED_WEIGHTS = 64  # device copies kept (LRU); a model has 3 per LSTM layer

_weights = OrderedDict()  # key -> (version, DeviceArray)
def _backend():
    ext = cuda._require()
    return cuda, ext


def _device_weight(ext, ctx, name, original, host, version):
    """Device copy of a weight array, reused while (array, version) is unchanged."""
    if version is None or not isinstance(original, np.ndarray):
        return ext.DeviceArray.from_host(ctx, host)
    key = (ctx.device, name, original.__array_interface__["data"][0], original.shape,
           original.strides, original.dtype.str, host.dtype.str)
    hit = _weights.get(key)
    if hit is not None and hit[0] == version:
        _weights.move_to_end(key)
        return hit[1]
    dev = ext.DeviceArray.from_host(ctx, host)
    _weights[key] = (version, dev)
    _weights.move_to_end(key)
    while len(_weights) > MAX_CACHED_WEIGHTS:
        _weights.popitem(last=False)
    return dev


def lstm_forward(x, kernel, recurrent_kernel, bias=None, *, initial_state=None,
                 lengths=None, go_backwards=False, return_sequences=True,
                 training=False, recurrent_mask=None, num_threads=None,
                 weights_version=None, device=0, output_on_device=False):
    """Run an LSTM over whole sequences on the GPU.

    Same parameters and result as :func:`cylstm.functional.lstm_forward`, plus:

    Parameters
    ----------
    weights_version : hashable or None
        Reuse the device copies of ``kernel``, ``recurrent_kernel`` and ``bias`` made
        under the same version (keyed by the arrays' memory, shape and dtype).  The
        caller promises the arrays did not change while the version stayed the same.
        None uploads them on every call.
    device : int
        CUDA device index.
    output_on_device : bool
        Return ``output``, ``h`` and ``c`` as DeviceArrays (no copy back, no wait).

    ``x`` may be a DeviceArray (B, T, I) of the weights' dtype on ``device``: it is
    used in place, not copied.

    Returns
    -------
    LSTMForward(output, h, c, cache): NumPy arrays (DeviceArrays with
    ``output_on_device``); ``cache`` holds device buffers and must go to
    :func:`cylstm.cuda.functional.lstm_backward` (not the CPU one).
    """
    cuda, ext = _backend()
    dtype = weights_dtype(kernel)
    W = as_float_array("kernel", kernel, dtype, 2)
    x_on_device = isinstance(x, ext.DeviceArray)
    if x_on_device:
        if x.dtype != dtype:
            raise TypeError(f"x on the device must have the weights' dtype {dtype}; "
                            f"got {x.dtype}")
        if x.ctx.device != int(device):
            raise ValueError(f"x lives on CUDA device {x.ctx.device}; device={device}")
    else:
        x = as_float_array("x", x, dtype)
    if x.ndim != 3:
        raise ValueError(f"x must have 3 dims (batch, time, features); got shape {x.shape}")
    B, T, I = x.shape
    U, b, H = check_weights(x.shape, W, recurrent_kernel, bias, dtype)
    lens = check_lengths(lengths, B, T, low=1)   # (length 0: not checked on a GPU yet)
    if initial_state is not None and isinstance(initial_state, (tuple, list)):
        # DeviceArrays (e.g. the h, c of an output_on_device call) come back to the
        # host: they are small, and the kernels update the state buffers in place
        initial_state = tuple(a.to_host() if isinstance(a, ext.DeviceArray) else a
                              for a in initial_state)
    hs, cs, rmask = check_states(initial_state, recurrent_mask, B, H, dtype)
    ctx = cuda.get_context(device)
    DA = ext.DeviceArray
    with cuda.context_lock(device):
        dW = _device_weight(ext, ctx, "kernel", kernel, W, weights_version)
        dU = _device_weight(ext, ctx, "recurrent_kernel", recurrent_kernel, U,
                            weights_version)
        db = _device_weight(ext, ctx, "bias", bias, b, weights_version if bias is not None
                            else None)
        dx = x if x_on_device else DA.from_host(ctx, x)
        dlens = DA.from_host(ctx, lens) if lens is not None else None
        max_len = int(lens.max()) if lens is not None else T
        h = DA.from_host(ctx, hs)
        c = DA.from_host(ctx, cs)
        c0 = DA.from_host(ctx, cs) if training else None
        dmask = DA.from_host(ctx, rmask) if rmask is not None else None
        hm = DA.empty(ctx, (B, H), dtype) if rmask is not None else None
        # rows past a sample's length are never written: zeros there, as on the CPU
        # (Hp too: its padding rows meet zero rows of dz in the dU GEMM, and 0 * NaN
        # from uninitialized memory would poison it)
        alloc = DA.zeros if lens is not None else DA.empty
        y = alloc(ctx, (B, T, H), dtype) if return_sequences else None
        G = DA.empty(ctx, (B, T, 4 * H), dtype)
        C = DA.empty(ctx, (B, T, H), dtype) if training else None
        Hp = alloc(ctx, (B, T, H), dtype) if training else None
        Z = DA.empty(ctx, (B, 4 * H), dtype)
        ext.forward(ctx, dx, dW, dU, db, dlens, max_len, bool(go_backwards), dmask, hm, y,
                    h, c, G, C, Hp, Z, bool(training))
        del Z, hm
        if output_on_device:
            out = y if return_sequences else DA.empty(ctx, (B, H), dtype).copy_from(h)
            h_host, c_host = h, c
        else:
            out = y.to_host() if return_sequences else None
            h_host = h.to_host()
            c_host = c.to_host()
    if out is None:
        out = h_host.copy()
    cache = None
    if training:
        cache = {
            "backend": "cuda", "device": int(device), "shape": (B, T, I, H),
            "dtype": dtype, "x": dx, "W": dW, "U": dU, "c0": c0, "lengths": dlens,
            "max_len": max_len, "reverse": bool(go_backwards), "G": G, "C": C, "Hp": Hp,
            "rmask": dmask, "return_sequences": bool(return_sequences), "used": False,
        }
    return LSTMForward(out, h_host, c_host, cache)


def lstm_backward(cache, grad_output=None, grad_h=None, grad_c=None, *,
                  need_input_grad=True, recurrent_mask=None, num_threads=None,
                  dx_on_device=False, grads_on_device=False, out=None):
    """Backpropagate through a training-mode GPU :func:`lstm_forward`.

    Same parameters and result as :func:`cylstm.functional.lstm_backward` (NumPy
    gradients), ``out`` included: (dkernel, drecurrent_kernel, dbias) host arrays
    (any may be None) that the weight gradients are copied into, e.g. views of a
    model's flat gradient buffer; host memory already in use takes the copy several
    times faster than new arrays (page faults).  ``num_threads`` is ignored, and so is
    ``recurrent_mask``: the cache carries the forward's mask.  The cache is consumed:
    its device buffers are freed.  ``grad_output`` may be a DeviceArray;
    ``dx_on_device`` returns ``dx`` as one, and ``grads_on_device`` the other gradients
    (weights, bias, initial states): no copy back and no wait, for an optimizer that
    runs on the device (the weight gradients are 2 x 16 MB at I = H = 1024); it
    excludes ``out``.
    """
    if not isinstance(cache, dict) or cache.get("backend") != "cuda":
        raise TypeError("cache must be the cache of cylstm.cuda.functional.lstm_forward("
                        "..., training=True)")
    if cache["used"]:
        raise ValueError("this cache was already used by lstm_backward; run the forward again")
    cuda, ext = _backend()
    B, T, I, H = cache["shape"]
    dtype = cache["dtype"]
    if grads_on_device and out is not None:
        raise ValueError("out (host arrays) and grads_on_device exclude each other")
    outs = check_grad_out(out, I, H, dtype)  # the CPU lstm_backward's rules
    dy_dev = None
    if isinstance(grad_output, ext.DeviceArray):
        want = (B, T, H) if cache["return_sequences"] else (B, H)
        if grad_output.shape != want or grad_output.dtype != dtype:
            raise ValueError(f"grad_output must have shape {want} and dtype {dtype}; got "
                             f"{grad_output.shape} {grad_output.dtype}")
        if cache["return_sequences"]:
            dy_dev, grad_output = grad_output, None
        else:
            grad_output = grad_output.to_host()
    if isinstance(grad_h, ext.DeviceArray):
        grad_h = grad_h.to_host()
    if isinstance(grad_c, ext.DeviceArray):
        grad_c = grad_c.to_host()
    dy_host, dhs, dcs = check_output_grads(grad_output, grad_h, grad_c,
                                           cache["return_sequences"], B, T, H, dtype)
    device = cache["device"]
    ctx = cuda.get_context(device)
    DA = ext.DeviceArray
    cache["used"] = True
    with cuda.context_lock(device):
        dy = DA.from_host(ctx, dy_host) if dy_host is not None else dy_dev
        dh = DA.from_host(ctx, dhs)
        dc = DA.from_host(ctx, dcs)
        D = DA.empty(ctx, (B, 4 * H), dtype)
        dHp = DA.empty(ctx, (B, H), dtype)
        dx = DA.empty(ctx, (B, T, I), dtype) if need_input_grad else None
        dW = DA.empty(ctx, (I, 4 * H), dtype)
        dU = DA.empty(ctx, (H, 4 * H), dtype)
        db = DA.empty(ctx, (4 * H,), dtype)
        try:
            ext.backward(ctx, cache["x"], cache["W"], cache["U"], cache["c0"],
                         cache["lengths"], cache["max_len"], cache["reverse"], cache["rmask"],
                         cache["G"], cache["C"], cache["Hp"], dy, dh, dc, D, dHp, dx, dW, dU,
                         db)
        finally:
            for k in ("x", "G", "C", "Hp", "c0"):
                cache[k] = None  # free the activations (stream-ordered, after the kernels)
        if dx is not None and not dx_on_device:
            dx = dx.to_host()
        if grads_on_device:
            grads = LSTMGrads(dx, dW, dU, db, dh, dc)
        else:
            grads = LSTMGrads(dx, dW.to_host(out=outs[0]), dU.to_host(out=outs[1]),
                              db.to_host(out=outs[2]), dh.to_host(), dc.to_host())
    return grads
