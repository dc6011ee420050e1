#!/usr/bin/env python
"""One training step over a very long sequence, measured in a fresh process (issue 13).

    python bench/longseq_bench.py IMPL T B I H THREADS STEPS GRADS.npz [BUDGET]

IMPL is one of:

    cylstm             checkpoint_every="auto" (under BUDGET bytes when given, else the
                       default memory budget)
    cylstm-full        full BPTT (checkpoint_every=None)
    torch-full         torch.nn.LSTM, full BPTT
    torch-checkpoint   torch.nn.LSTM over ceil(sqrt(T))-step chunks, each wrapped in
                       torch.utils.checkpoint (use_reentrant=False), (h, c) carried: the
                       recipe PyTorch users write by hand

The step is a first layer's: loss = sum(h_T * g) for a fixed g (B, H), gradients of the
weights and the bias (no dx).  Float32.  The data are made before the baseline RSS is
read, so they do not count.  One warm-up step, then STEPS timed steps.  The last stdout
line is JSON:

    impl, status ("ok" | "skipped" | "error"), reason, step_s [seconds per timed step],
    saved_bytes (activations kept from forward to backward, by the implementation's own
    count: cylstm's cache_nbytes; torch full: the tensors autograd saved, through
    saved_tensors_hooks, less the input and the parameters; torch checkpoint: the (h, c)
    each chunk keeps as its checkpoint), held_bytes (RSS after the forward less RSS
    before it, the same measure for all), peak_rss_bytes (the process's peak RSS over
    the run less the RSS before the first step), loss

and GRADS.npz receives dW (I, 4H), dU (H, 4H), db (4H,) in Keras layout, so the caller
can check every implementation against the others.
"""
import json
import math
import os
import resource
import sys
import time

import numpy as np

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def reset_peak():
    """Restart the peak-RSS count here (Linux >= 4.0); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss():
    """The peak RSS since :func:`reset_peak` (VmHWM), else since the process started."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_data(T, B, I, H, seed=0):
    """PyTorch-style weights U(-1/sqrt(H), 1/sqrt(H)); x U(-1, 1); g N(0, 1)."""
    rng = np.random.default_rng(seed)
    s = 1.0 / np.sqrt(H)
    x = rng.uniform(-1, 1, (B, T, I)).astype(np.float32)
    W = rng.uniform(-s, s, (I, 4 * H)).astype(np.float32)
    U = rng.uniform(-s, s, (H, 4 * H)).astype(np.float32)
    b = rng.uniform(-s, s, 4 * H).astype(np.float32)
    g = rng.standard_normal((B, H)).astype(np.float32)
    return x, W, U, b, g


def cylstm_impl(x, W, U, b, g, every, budget, threads):
    import cylstm
    from cylstm.functional import cache_nbytes, lstm_backward, lstm_forward

    cylstm.set_num_threads(threads)
    if budget:
        cylstm.set_memory_budget(budget)
    info = {}

    def forward():
        f = lstm_forward(x, W, U, b, training=True, return_sequences=False,
                         checkpoint_every=every)
        info["saved"] = cache_nbytes(f.cache)
        plan = f.cache.get("plan")
        info["detail"] = (f"{plan.every} steps x {plan.n_segments} segments" if plan
                          else "full cache")
        return f

    def backward(f):
        r = lstm_backward(f.cache, grad_output=g, need_input_grad=False)
        return float(np.sum(f.h * g)), (r.dkernel, r.drecurrent_kernel, r.dbias)

    return forward, backward, info


def torch_impl(x, W, U, b, g, chunked, threads):
    try:
        import torch
        from torch.utils.checkpoint import checkpoint
    except Exception as e:  # an absent peer is a skipped row
        raise LookupError(f"torch not importable ({type(e).__name__})") from e
    torch.set_num_threads(threads)
    B, T, I = x.shape
    H = U.shape[0]
    m = torch.nn.LSTM(I, H)  # time-major, torch's native layout
    with torch.no_grad():
        m.weight_ih_l0.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
        m.weight_hh_l0.copy_(torch.from_numpy(np.ascontiguousarray(U.T)))
        m.bias_ih_l0.copy_(torch.from_numpy(b))
        m.bias_hh_l0.zero_()
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2)))
    gt = torch.from_numpy(g)
    params = list(m.parameters())
    k = math.ceil(math.sqrt(T))
    info = {"detail": f"chunks of {k} steps" if chunked else "nn.LSTM"}
    skip = {p.data_ptr() for p in params} | {xt.data_ptr()}

    def seg(xc, h, c):
        _, (h2, c2) = m(xc, (h, c))
        return h2, c2

    def forward():
        for p in params:
            p.grad = None
        seen = {}

        def pack(t):
            # autograd's saved tensors, counted once per storage, less input and weights
            ptr = t.untyped_storage().data_ptr()
            if ptr not in skip and ptr not in seen:
                seen[ptr] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            if chunked:
                h = torch.zeros(1, B, H)
                c = torch.zeros(1, B, H)
                for t0 in range(0, T, k):
                    h, c = checkpoint(seg, xt[t0:t0 + k], h, c, use_reentrant=False)
                # what checkpoint keeps (its own hooks, not these): each chunk's (h, c)
                info["saved"] = 2 * math.ceil(T / k) * B * H * 4
            else:
                _, (h, c) = m(xt)
                info["saved"] = sum(seen.values())
        return h

    def backward(h):
        loss = (h[0] * gt).sum()
        loss.backward()
        return float(loss.detach()), (m.weight_ih_l0.grad.numpy().T, m.weight_hh_l0.grad.numpy().T,
                             m.bias_ih_l0.grad.numpy())

    return forward, backward, info


def main(argv):
    impl, T, B, I, H, threads, steps, npz = (argv[0], *map(int, argv[1:7]), argv[7])
    budget = int(float(argv[8])) if len(argv) > 8 and argv[8] not in ("", "0") else None
    out = {"impl": impl, "status": "ok", "reason": None}
    x, W, U, b, g = make_data(T, B, I, H)
    try:
        if impl in ("cylstm", "cylstm-full"):
            fwd, bwd, info = cylstm_impl(x, W, U, b, g, "auto" if impl == "cylstm" else None,
                                         budget, threads)
        elif impl in ("torch-full", "torch-checkpoint"):
            fwd, bwd, info = torch_impl(x, W, U, b, g, impl == "torch-checkpoint", threads)
        else:
            raise ValueError(f"unknown implementation {impl!r}")
    except LookupError as e:
        out.update(status="skipped", reason=str(e))
        print(json.dumps(out))
        return 0
    out["peak_reset"] = reset_peak()
    base = rss()
    times, held = [], []
    loss = grads = None
    try:
        for i in range(steps + 1):
            t0 = time.perf_counter()
            r0 = rss()
            f = fwd()
            held.append(rss() - r0)
            loss, grads = bwd(f)
            del f
            if i:
                times.append(time.perf_counter() - t0)
    except MemoryError as e:
        out.update(status="error", reason=f"MemoryError: {e}"[:300])
        print(json.dumps(out))
        return 0
    np.savez(npz, dW=grads[0], dU=grads[1], db=grads[2])
    out.update(step_s=times, saved_bytes=info.get("saved"), held_bytes=max(held),
               peak_rss_bytes=peak_rss() - base, loss=loss, detail=info.get("detail"),
               threads=threads)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
