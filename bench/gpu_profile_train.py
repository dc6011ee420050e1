"""Where a cylstm CUDA train step spends its time, per kernel (torch.profiler / CUPTI).

    python bench/gpu_profile_train.py [T B I H]     # default 25 16 1024 1024

Needs a ``CYLSTM_CUDA=1`` build and torch with CUDA (only for its profiler).  Prints
the synchronized times of a training forward, of forward + backward with the gradients
left on the device, and of the copy of the weight gradients back to NumPy; then, for
the backward's per-step ``dz @ U^T`` in cylstm's kernel and on cuBLAS, the GPU time of
each kernel over one train step (the cuBLAS kernels included: CUPTI sees every kernel
of the process).
"""
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _median_ms(fn, sync, reps=20, warmup=3):
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main(argv):
    from torch.profiler import ProfilerActivity, profile

    from cylstm import cuda
    from cylstm.cuda import functional as gpu

    T, B, I, H = (int(a) for a in argv) if argv else (25, 16, 1024, 1024)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    W = (rng.standard_normal((I, 4 * H)) / np.sqrt(I)).astype(np.float32)
    U = (rng.standard_normal((H, 4 * H)) / np.sqrt(H)).astype(np.float32)
    b = np.zeros(4 * H, np.float32)
    dy = rng.standard_normal((B, T, H)).astype(np.float32) * 0.01
    ver = gpu.new_weights_version()
    ctx = cuda.get_context()
    DA = cuda.DeviceArray
    xd, dyd = DA.from_host(ctx, x), DA.from_host(ctx, dy)
    sync = ctx.synchronize
    print(f"# {cuda.device_name()}  (T, B, I, H) = {(T, B, I, H)}, float32, ms")

    def fwd():
        return gpu.lstm_forward(xd, W, U, b, training=True, weights_version=ver,
                                output_on_device=True)

    def train(to_host=False):
        g = gpu.lstm_backward(fwd().cache, grad_output=dyd, dx_on_device=True,
                              grads_on_device=not to_host)
        return g

    g = train()
    sync()
    for max_batch, label in ((16, "dz @ U^T in cylstm's kernel"), (0, "dz @ U^T on cuBLAS")):
        ctx.set_bwd_kernel_max_batch(max_batch)
        print(f"\n## {label}")
        print(f"forward (training)            {_median_ms(fwd, sync):8.3f}")
        print(f"train, grads left on device   {_median_ms(train, sync):8.3f}")
        print(f"train, grads copied to NumPy  {_median_ms(lambda: train(True), sync):8.3f}")
        train()
        sync()
        try:
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                train()
                sync()
            rows = [e for e in prof.key_averages() if e.self_device_time_total > 0]
            rows.sort(key=lambda e: -e.self_device_time_total)
            tot = sum(e.self_device_time_total for e in rows)
            print(f"GPU time over one train step: {tot / 1e3:.3f} ms; by kernel:")
            for e in rows[:8]:
                print(f"  {e.self_device_time_total / 1e3:8.3f} ms  {e.count:4d}x  "
                      f"{e.key[:90]}")
        except Exception as e:  # noqa: BLE001 - the timings above stand without the profile
            print(f"torch.profiler failed: {e!r}")
    ctx.set_bwd_kernel_max_batch(16)
    print(f"\ncopy of dW + dU ({2 * g.dkernel.nbytes / 2**20:.0f} MiB) to NumPy: "
          f"{_median_ms(lambda: (g.dkernel.to_host(), g.drecurrent_kernel.to_host()), sync):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
