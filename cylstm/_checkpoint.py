"""Checkpointed BPTT: exact gradients of an LSTM layer in bounded memory.

A training forward normally keeps, for every sample and step, the activated
gates, the cell state, the previous hidden state and the output: 7 H floats,
2.1 GiB for one layer at (T, B, H) = (10000, 32, 256) in float32.  With
``checkpoint_every=k`` (:func:`cylstm.functional.lstm_forward`) it keeps only
the state (h, c) at the start of each segment of k steps.  The backward then
walks the segments from the last to the first: it reruns a segment's forward
from its checkpoint (the same kernel call, with the same plan, as the forward
made: the recomputed gates are bit-identical to the forward's), back-propagates
through that segment with the ordinary BPTT kernel, and carries dL/dh, dL/dc
into the segment before it.  The gradients are full BPTT's; the extra cost is
one forward pass.

Segments are cut along each sample's *steps* s = 0 .. L_b - 1, not along time
indices: with per-sample lengths and ``go_backwards`` sample b's step s is at
time L_b - 1 - s, so one segment's steps lie in a different time window per
sample.  Each segment is gathered into a (B, k, I) block laid out so that the
kernels see an ordinary call (sample b's steps at block rows 0 .. n_b - 1, n_b
its steps in this segment, possibly 0 once it has finished), run, and its
outputs (dx, y) are scattered back.  So the input projection x @ W, the gate
buffer and everything else the kernels need are one segment long: the only
full-length arrays of a step are the input, the output sequence (when the
layer returns one) and their gradients.

No second cell exists: the segments run the kernels of :mod:`cylstm._lstm`
through :func:`cylstm.functional._run_forward_plan`.
"""
import dataclasses
import math
import numbers

import numpy as np

from cylstm import _lstm, _memory
from cylstm._validate import dtype_name
from cylstm._workspace import give, take

__all__ = ["CheckpointPlan", "cache_nbytes", "check_every", "plan_checkpoints"]

# floats per sample and step a full training cache holds: gates (4H), c, h_prev, y
FULL_FLOATS_PER_STEP = 7


@dataclasses.dataclass(frozen=True)
class CheckpointPlan:
    """How a checkpointed training forward cuts its steps.

    every : steps per segment (the last one may be shorter).
    n_segments : segments over the longest sample's steps.
    saved_bytes : what is kept from the forward to the backward: one (h, c) per
        segment (the cache's :func:`cache_nbytes`).
    segment_bytes : the scratch of one segment, forward and backward (its input
        block, gates, c, h_prev, outputs and their gradients), plus the
        per-call scratch that does not grow with T.
    full_bytes : what full BPTT would keep (7 H floats per sample and step).
    budget : the memory budget the plan was made under.
    reason : why this ``every``.
    """

    every: int
    n_segments: int
    saved_bytes: int
    segment_bytes: int
    full_bytes: int
    budget: int
    reason: str = ""

    @property
    def peak_bytes(self):
        """Checkpoints plus one segment's scratch: the most the step holds beyond
        its full-length input, output and gradients."""
        return self.saved_bytes + self.segment_bytes


def check_every(value, name="checkpoint_every"):
    """Validate a ``checkpoint_every`` argument: None, a positive int, or "auto"."""
    if value is None:
        return None
    if isinstance(value, str):
        if value == "auto":
            return "auto"
        raise ValueError(f"{name} must be None, a positive int or 'auto'; got {value!r}")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        # (a ValueError, as for every other bad value: one error to catch)
        raise ValueError(  # noqa: TRY004
            f"{name} must be None, a positive int or 'auto'; got {value!r} "
            f"({type(value).__name__})")
    if int(value) < 1:
        raise ValueError(f"{name} must be >= 1 (steps per segment); got {int(value)}")
    return int(value)


def _mib(n):
    if n >= 2**20:
        return f"{n / 2**20:.1f} MiB"
    return f"{n / 2**10:.1f} KiB" if n >= 2**10 else f"{n} B"


def _sizes(B, I, H, item, n_threads):
    """(bytes of scratch per segment step, constant scratch, bytes per checkpoint)."""
    per_step = B * (2 * I + 8 * H) * item  # x, dx blocks; gates 4H, c, h_prev, y, dy
    const = item * (2 * 4 * H * H + n_threads * (I + H + 1) * 4 * H
                    + B * H * (16 + 6 * n_threads))
    return per_step, const, 2 * B * H * item


def plan_checkpoints(B, T, I, H, dtype, every, *, n_threads=1, max_steps=None, budget=None):
    """Choose the segments of a checkpointed training forward.

    Parameters
    ----------
    B, T, I, H : batch, time steps, features, units.
    dtype : the compute dtype.
    every : None, a positive int or "auto" (see :func:`check_every`).
    n_threads : threads the backward may split the batch into (its weight-gradient
        partial sums are scratch too).
    max_steps : the longest sample's steps (per-sample lengths), default T.
    budget : bytes, default :func:`cylstm.get_memory_budget`.

    Returns
    -------
    CheckpointPlan, or None for full BPTT (``every`` None, or "auto" while the
    full cache fits in the budget).

    Raises
    ------
    MemoryError
        Before anything is allocated, when the checkpoints plus one segment do not
        fit in the budget (for "auto": not for any segment length).
    """
    every = check_every(every)
    if every is None:
        return None
    item = np.dtype(dtype).itemsize
    budget = _memory.get_memory_budget() if budget is None else int(budget)
    L = T if max_steps is None else int(max_steps)
    full = B * T * FULL_FLOATS_PER_STEP * H * item
    per_step, const, per_ckpt = _sizes(B, I, H, item, max(1, int(n_threads)))

    def peak(k):
        return -(-L // k) * per_ckpt + k * per_step + const

    shape = f"(B, T, I, H) = ({B}, {T}, {I}, {H}) {np.dtype(dtype).name}"
    if every == "auto":
        if full <= budget:
            return None
        k = -(-L // max(1, math.isqrt(L - 1) + 1)) if L > 1 else 1  # ceil(L / ceil(sqrt L))
        reason = (f"auto: the full cache ({_mib(full)}) exceeds the memory budget "
                  f"({_mib(budget)}): sqrt(T) segments")
        if peak(k) > budget:
            # the smallest footprint: sqrt(L * per_ckpt / per_step) steps per segment
            k_min = max(1, min(L, round(math.sqrt(L * per_ckpt / per_step))))
            k_min = min((c for c in (k_min - 1, k_min, k_min + 1) if 1 <= c <= L), key=peak)
            if peak(k_min) > budget:
                raise MemoryError(
                    f"checkpointed BPTT of {shape} cannot fit the memory budget of "
                    f"{_mib(budget)}: at best ({k_min} steps per segment) it needs "
                    f"{_mib(peak(k_min))} ({-(-L // k_min)} checkpoints of "
                    f"{_mib(per_ckpt)} and one segment of {_mib(k_min * per_step + const)}); "
                    "raise it with cylstm.set_memory_budget() or CYLSTM_MEMORY_BUDGET, or "
                    "use a smaller batch")
            # the segment length nearest sqrt(T) that fits (peak is convex in k)
            lo, hi = (k_min, k) if k > k_min else (k, k_min)
            want_large = k > k_min
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if (peak(mid) <= budget) == want_large:
                    lo = mid
                else:
                    hi = mid
            k = lo if want_large else hi
            if peak(k) > budget:
                k = k_min
            reason += f" do not fit, {k} steps per segment do"
    else:
        k = min(every, L)
        if peak(k) > budget:
            raise MemoryError(
                f"checkpoint_every={every} on {shape}: the checkpoints "
                f"({-(-L // k)} x {_mib(per_ckpt)}) and one segment of {k} steps "
                f"({_mib(k * per_step + const)}) need {_mib(peak(k))}, over the memory budget "
                f"of {_mib(budget)}; use a smaller checkpoint_every, 'auto', or raise the "
                "budget with cylstm.set_memory_budget() or CYLSTM_MEMORY_BUDGET")
        reason = f"checkpoint_every={every}"
    if B * k > 2**31 - 1:
        raise ValueError(f"a segment of {k} steps of a batch of {B} exceeds the BLAS index "
                         "range (batch * steps < 2**31); use a smaller checkpoint_every")
    n_seg = -(-L // k)
    return CheckpointPlan(k, n_seg, n_seg * per_ckpt, k * per_step + const, full, budget,
                          reason)


def cache_nbytes(cache):
    """Bytes of activations a training cache keeps for the backward.

    For a full-BPTT cache of :func:`cylstm.functional.lstm_forward`: its gates,
    cell states, previous hidden states and initial c; for a checkpointed one: its
    checkpoints.  The input, the weights and the recurrent mask are not counted
    (they are the caller's arrays).  0 once the backward has consumed the cache.
    """
    if not isinstance(cache, dict):
        raise TypeError("cache must be the cache of lstm_forward(..., training=True)")
    if cache.get("used"):
        return 0
    keys = ("checkpoints",) if "checkpoints" in cache else ("G", "C", "Hp", "c0")
    return int(sum(cache[k].nbytes for k in keys if cache.get(k) is not None))


# ---------------------------------------------------------------------------
# Where a segment's steps lie in time
# ---------------------------------------------------------------------------

class _Layout:
    """Segment si's steps [s0, s1) of every sample, in the (B, kk, .) block the
    kernels run on: sample b's n_b steps at block rows 0 .. n_b - 1.

    ``lens`` : the kernels' lengths for the block (None: all kk steps);
    ``start`` : the time index of block row 0 when it is the same for every
    sample (then the block is the slice x[:, start:start + kk]), else None and
    (``bi``, ``ji``, ``ti``) list every valid (sample, block row, time index).
    """

    __slots__ = ("bi", "ji", "kk", "lens", "start", "ti", "valid")

    def __init__(self, si, k, T, L, Lmax, reverse):
        s0 = si * k
        s1 = min(s0 + k, Lmax)
        kk = self.kk = s1 - s0
        self.valid = self.bi = self.ji = self.ti = None
        if L is None:
            self.lens = None
            self.start = T - s1 if reverse else s0
            return
        n = np.clip(L - s0, 0, kk)
        self.lens = None if bool((n == kk).all()) else np.ascontiguousarray(n, np.int64)
        if not reverse:
            self.start = s0
            if self.lens is not None:
                self.valid = np.arange(kk)[None, :] < n[:, None]
            return
        # reversed with lengths: sample b's steps s0 .. s0 + n_b - 1 are at times
        # L_b - 1 - s; block row j (reverse again inside the block) is time
        # L_b - s0 - n_b + j
        if self.lens is None and bool((L == L[0]).all()):
            self.start = int(L[0]) - s1
            return
        self.start = None
        self.bi, self.ji = np.nonzero(np.arange(kk)[None, :] < n[:, None])
        self.ti = (L - s0 - n)[self.bi] + self.ji

    def gather(self, src, dst, zero_rest):
        """dst (B, kk, F) = this segment's rows of src (B, T, F); rows past a
        sample's steps are zeroed when ``zero_rest`` (the weight-gradient GEMMs
        read every row, and 0 * NaN would poison them)."""
        if self.start is not None:
            dst[...] = src[:, self.start:self.start + self.kk]
            if zero_rest and self.valid is not None:
                dst[~self.valid] = 0
        else:
            if zero_rest:
                dst.fill(0)
            dst[self.bi, self.ji] = src[self.bi, self.ti]

    def scatter(self, dst, src):
        """This segment's valid rows of dst (B, T, F) = src (B, kk, F)."""
        if self.start is not None:
            view = dst[:, self.start:self.start + self.kk]
            if self.valid is None:
                view[...] = src
            else:
                view[self.valid] = src[self.valid]
        else:
            dst[self.bi, self.ti] = src[self.bi, self.ji]


def _block(buf, shape):
    """A C-contiguous (B, kk, F) view at the start of a flat scratch buffer."""
    return buf[:math.prod(shape)].reshape(shape)


class _Runner:
    """Runs segments of one checkpointed call (the forward, and the recomputation in
    the backward: same blocks, same plans, so the same results bit for bit)."""

    def __init__(self, c):
        from cylstm import functional as F  # breaks a cycle: cylstm.functional imports this module

        self.F = F
        self.c = c
        x = c["x"]
        B, T, I = x.shape
        H = c["U"].shape[0]
        k = c["plan"].every
        dtype = x.dtype
        self.B, self.T, self.I, self.H, self.k, self.dtype = B, T, I, H, k, dtype
        self.xs = take((B * k * I,), dtype)
        self.G = take((B * k * 4 * H,), dtype)
        self.C = take((B * k * H,), dtype)
        self.Hp = take((B * k * H,), dtype)
        # the recurrent operand of each step (h_prev * mask and/or bf16(h_prev))
        self.hm = None if c["rmask"] is None and not c["bf16"] else take((B, H), dtype)
        self.plans = {}  # (steps, ragged): the forward plan (the planner costs ~0.1 ms)

    def layout(self, si):
        c = self.c
        return _Layout(si, self.k, self.T, c["lengths"], c["max_steps"], c["reverse"])

    def run(self, lay, hs, cs, y=None):
        """One segment's training forward from (hs, cs) (updated in place); returns
        its (x block, G, C, Hp) views."""
        c, B, I, H, kk = self.c, self.B, self.I, self.H, lay.kk
        xs = _block(self.xs, (B, kk, I))
        lay.gather(c["x"], xs, zero_rest=True)
        G = _block(self.G, (B, kk, 4 * H))
        C = _block(self.C, (B, kk, H))
        Hp = _block(self.Hp, (B, kk, H))
        if lay.lens is not None:
            Hp.fill(0)  # its padding rows meet zero rows of dz in the dU GEMM
        key = (kk, lay.lens is not None)
        plan = self.plans.get(key)
        if plan is None:
            plan = self.plans[key] = self.F.plan_forward(
                B, kk, I, H, self.dtype, c["n_threads"], True, c["rmask"] is not None,
                lay.lens is not None, c["reverse"], force=c["force"],
                compute_dtype="bfloat16" if c["bf16"] else None)
        self.F._run_forward_plan(plan, xs, c["W"], c["U"], c["b"], lay.lens, c["reverse"],
                                 c["rmask"], self.hm, y, hs, cs, G, C, Hp)
        return xs, G, C, Hp

    def close(self):
        give(self.xs, self.G, self.C, self.Hp, self.hm)
        self.xs = self.G = self.C = self.Hp = self.hm = None


def forward(x, W, U, b, lens, hs, cs, rmask, reverse, return_sequences, n_threads, plan,
            force=None, bf16=False):
    """The checkpointed training forward (arguments validated by
    :func:`cylstm.functional.lstm_forward`; ``hs``/``cs`` hold the initial state
    and receive the final one).  ``bf16``: the bfloat16 products
    (``compute_dtype="bfloat16"``; x, W and U come rounded): the segments, and
    their recomputation in the backward, round h_prev as the full forward does.
    Returns (output or None, cache)."""
    B, T, _ = x.shape
    H = U.shape[0]
    Lmax = T if lens is None else int(lens.max())
    n_seg = -(-Lmax // plan.every)
    ckpt = take((n_seg, 2, B, H), x.dtype)
    cache = {"checkpoints": ckpt, "plan": plan, "x": x, "W": W, "U": U, "b": b,
             "lengths": lens, "max_steps": Lmax, "reverse": bool(reverse), "rmask": rmask,
             "return_sequences": bool(return_sequences), "n_threads": n_threads,
             "force": force, "bf16": bool(bf16), "used": False}
    y = None
    if return_sequences:
        y = np.zeros((B, T, H), x.dtype) if lens is not None else np.empty((B, T, H), x.dtype)
    run = _Runner(cache)
    ys = take((B * plan.every * H,), x.dtype) if return_sequences else None
    try:
        for si in range(n_seg):
            ckpt[si, 0] = hs
            ckpt[si, 1] = cs
            lay = run.layout(si)
            yb = None if ys is None else _block(ys, (B, lay.kk, H))
            run.run(lay, hs, cs, yb)
            if y is not None:
                lay.scatter(y, yb)
    finally:
        run.close()
        give(ys)
    return y, cache


def backward(cache, dy, dhs, dcs, need_input_grad, bplan, outs):
    """BPTT through a checkpointed cache, segment by segment from the last.

    ``dy`` (B, T, H) or None, ``dhs``/``dcs`` dL/dh_T, dL/dc_T (updated in place
    to dL/dh0, dL/dc0), ``outs`` the (dW, dU, db) arrays to write.  Returns dx or
    None."""
    x, W, U, ckpt = cache["x"], cache["W"], cache["U"], cache["checkpoints"]
    B, T, I = x.shape
    H = U.shape[0]
    k = cache["plan"].every
    dtype = x.dtype
    ragged = cache["lengths"] is not None
    nt, n_total = bplan.n_threads, bplan.blas_threads
    dx = None
    if need_input_grad:
        dx = np.zeros((B, T, I), dtype) if ragged else np.empty((B, T, I), dtype)
    dW, dU, db = outs
    run = _Runner(cache)
    hs = take((B, H), dtype)
    cs = take((B, H), dtype)
    D = take((2 * B if bplan.units else B, 4 * H), dtype)
    dHp = take((B, _lstm.transposed_width(H, np.dtype(dtype).name)), dtype)
    from cylstm import functional as F  # (a cycle, as in _Runner)
    UT = amx = None
    if bplan.amx:  # U^T and W^T tile-packed for the AMX backward
        amx = F._amx_backward_pack(W, U)
    else:
        UT = take((_lstm.transposed_len(H, dtype_name(dtype)),), dtype, align=64)
        _lstm.pack_transposed(U, UT)  # U^T in the panel kernel's layout, once per call
    parts = take((nt - 1, I + H + 1, 4 * H), dtype) if nt > 1 and not bplan.units else None
    acc = take((I + H + 1, 4 * H), dtype)  # one segment's weight gradients
    sW, sU, sb = acc[:I], acc[I:I + H], acc[I + H]
    dys = take((B * k * H,), dtype) if dy is not None else None
    dxs = take((B * k * I,), dtype) if need_input_grad else None
    first = True
    try:
        for si in range(ckpt.shape[0] - 1, -1, -1):
            lay = run.layout(si)
            kk = lay.kk
            hs[...] = ckpt[si, 0]
            cs[...] = ckpt[si, 1]
            xs, G, C, Hp = run.run(lay, hs, cs)
            dyb = None
            if dy is not None:
                dyb = _block(dys, (B, kk, H))
                lay.gather(dy, dyb, zero_rest=False)
            dxb = None if dxs is None else _block(dxs, (B, kk, I))
            D.fill(0)
            tW, tU, tb = (dW, dU, db) if first else (sW, sU, sb)
            _lstm.backward(xs, W, UT, ckpt[si, 1], lay.lens, cache["reverse"], cache["rmask"],
                           G, C, Hp, dyb, dhs, dcs, D, dHp, dxb, tW, tU, tb, parts, nt,
                           n_total, cache["bf16"], amx, bplan.whole_grads,
                           bplan.units_pieces())
            if not first:
                dW += sW
                dU += sU
                db += sb
            first = False
            if dxb is not None:
                lay.scatter(dx, dxb)
    finally:
        run.close()
        give(hs, cs, D, dHp, UT, amx, parts, acc, dys, dxs, ckpt)
        cache["checkpoints"] = None  # the checkpoints go back to the pool now
    return dx
