"""A small workload for compute-sanitizer: every kernel of the CUDA backend, both
time-loop paths, float32 and float64, ragged lengths, go_backwards, recurrent dropout.

bench/gpu_check.sh runs it under ``compute-sanitizer --tool memcheck`` (out-of-bounds
and misaligned accesses, leaks of device memory) and ``--tool racecheck`` (shared-memory
races in the one-kernel time loop).  Exit status 0 when every result matched the CPU.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    from cylstm import cuda
    from cylstm import functional as cpu
    from cylstm.cuda import functional as gpu

    if not cuda.is_available():
        print(f"cylstm.cuda unavailable: {cuda.unavailable_reason()}")
        return 2
    rng = np.random.default_rng(0)
    worst = 0.0
    for fused in (128, 0):
        cuda.set_fused_max_units(fused)
        for dtype in (np.float32, np.float64):
            for kw in ({}, {"lengths": [4, 1, 3]}, {"go_backwards": True, "lengths": [2, 4, 1]},
                       {"recurrent_mask": True}):
                B, T, I, H = 3, 4, 5, 33  # H not a multiple of the warp size on purpose
                x = rng.standard_normal((B, T, I)).astype(dtype)
                W = (rng.standard_normal((I, 4 * H)) * 0.3).astype(dtype)
                U = (rng.standard_normal((H, 4 * H)) * 0.3).astype(dtype)
                b = (rng.standard_normal(4 * H) * 0.1).astype(dtype)
                kw = dict(kw)
                if kw.pop("recurrent_mask", False):
                    kw["recurrent_mask"] = ((rng.random((B, H)) < 0.7) / 0.7).astype(dtype)
                ref = cpu.lstm_forward(x, W, U, b, training=True, **kw)
                got = gpu.lstm_forward(x, W, U, b, training=True, **kw)
                dy = rng.standard_normal(ref.output.shape).astype(dtype)
                gr = cpu.lstm_backward(ref.cache, grad_output=dy)
                gg = gpu.lstm_backward(got.cache, grad_output=dy)
                pairs = [(got.output, ref.output), (got.h, ref.h), (got.c, ref.c)]
                pairs += [(getattr(gg, f), getattr(gr, f)) for f in gr._fields]
                err = max(float(np.max(np.abs(a - r))) for a, r in pairs)
                worst = max(worst, err / (1e-4 if dtype == np.float32 else 1e-10))
                print(f"fused<={fused:3d} {np.dtype(dtype).name} {sorted(kw)}: "
                      f"max abs diff {err:.2e}")
    cuda.get_context().synchronize()
    print("OK" if worst <= 1 else "MISMATCH")
    return 0 if worst <= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
