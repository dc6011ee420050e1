"""Argument rules shared by the CPU and CUDA entry points (cylstm.functional and
cylstm.cuda.functional), written once so that both refuse the same things with the
same words."""
import numpy as np

__all__ = ["check_grad_out"]


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
