"""Argument rules shared by the CPU and CUDA entry points (cylstm.functional and
cylstm.cuda.functional), written once so that both refuse the same things with the
same words."""
import numpy as np

__all__ = ["as_float_array", "check_grad_out", "check_lengths", "check_output_grads",
           "check_states", "check_weights", "dtype_name", "real_array", "weights_dtype"]

_DTYPE_NAMES = {np.dtype(np.float32): "float32", np.dtype(np.float64): "float64"}


def dtype_name(dtype):
    """``np.dtype(dtype).name``, from a table for the two compute dtypes: NumPy 2's
    ``name`` is a Python property of ~2 us, and a forward call asked it five times
    (10 us of the ~55 us of Python around a (200, 1, 64, 128) call; AMD EPYC (2
    cores), Zen 4, numpy 2.4, 2026-12-06)."""
    name = _DTYPE_NAMES.get(dtype)
    return name if name is not None else np.dtype(dtype).name


def real_array(name, a):
    """``a`` as an ndarray (not copied when it is one) of a real numeric dtype; refuse
    complex, object, bytes, str, void, datetime and timedelta arrays."""
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
        arr = real_array(name, a)
    except (TypeError, ValueError) as e:
        if isinstance(e, TypeError) and str(e).startswith(name):
            raise
        raise TypeError(f"{name} must be a numeric array; got {type(a).__name__}") from e
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dims; got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=dtype)


def weights_dtype(kernel):
    """The dtype an LSTM call computes in: float64 for a float64 ``kernel``, else
    float32."""
    k = real_array("kernel", kernel)
    if k.dtype == np.float64:
        return np.dtype(np.float64)
    return np.dtype(np.float32)


def check_weights(x_shape, W, recurrent_kernel, bias, dtype):
    """Validate the weights against ``x_shape`` (B, T, I) and the kernel ``W``
    (already an array of ``dtype``); return (U, bias, units)."""
    _B, T, I = x_shape
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


def check_lengths(lengths, B, T, low=0):
    """Validated per-sample lengths (int64, C-contiguous) in [low, T], or None for
    all full.  A length of 0 is valid on CPU: that sample's outputs are zeros, its
    final state its initial one, and it takes no gradient but the one it passes
    straight to the initial state."""
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
    if B and (la.min() < low or la.max() > T):
        raise ValueError(
            f"lengths must lie in [{low}, {T}] (time steps of x); got min {la.min()}, "
            f"max {la.max()}"
        )
    la = np.ascontiguousarray(la, dtype=np.int64)
    if B and la.min() == T:
        return None  # all full: the fast path
    return la



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
    dL/dh_T, dL/dc_T) with a last-step-only ``grad_output`` folded into dL/dh_T."""
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


def check_grad_out(out, I, H, dtype):
    """``lstm_backward``'s ``out``: None, or 3 entries (dkernel, drecurrent_kernel,
    dbias), each None or a writeable C-contiguous array of that gradient's shape
    ((I, 4H), (H, 4H), (4H,)) and ``dtype``.  Returns the 3 entries as a list."""
    if out is None:
        return [None, None, None]
    outs = list(out)
    if len(outs) != 3:
        raise ValueError("out must be (dkernel, drecurrent_kernel, dbias)")
    shapes = (("dkernel", (I, 4 * H)), ("drecurrent_kernel", (H, 4 * H)), ("dbias", (4 * H,)))
    for k, ((name, shape), a) in enumerate(zip(shapes, outs)):
        if a is not None and (not isinstance(a, np.ndarray) or a.shape != shape
                              or a.dtype != dtype or not a.flags.c_contiguous
                              or not a.flags.writeable):
            raise ValueError(
                f"out[{k}] ({name}) must be a writeable C-contiguous {dtype} array of shape "
                f"{shape}; got {getattr(a, 'shape', type(a).__name__)}"
            )
    return outs
