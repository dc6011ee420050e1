"""Time cylstm's CUDA backend against torch.nn.LSTM on CUDA (cuDNN).

Run by bench/gpu_check.sh on a machine with an NVIDIA GPU (after a ``CYLSTM_CUDA=1``
build); standalone: ``python bench/gpu_bench.py [--json out.json] [--quick]``.

For each shape (T, B, I, H), float32, one LSTM layer, batch-first:

* forward: inference over the whole sequence, returning all outputs;
* train step: forward (training) + backward of a fixed upstream gradient, producing
  the weight gradients and dx.

cylstm is timed twice: with NumPy arrays in and out (its public API: the batch is
copied in and the results out, every call), and with the batch already on the device
and the outputs left there (``x`` a DeviceArray, ``output_on_device``), which is the
situation torch is timed in (tensors already on the GPU); its "dev" train step still
copies the weight gradients back (NumPy), and a third time leaves them on the device
too (``grads_on_device``), as torch does.  Where the backward's per-step
``dz @ U^T`` runs in cylstm's own kernel (H > 128, B <= 16), the train step is also
timed with it on cuBLAS.  Times are the median of
repeated calls after warm-up, each call synchronized.  cuDNN runs with PyTorch's
defaults (``torch.backends.cudnn.allow_tf32`` is on by default, so its float32 GEMMs
may use TF32); cylstm runs full FP32 unless ``--tf32``.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHAPES = [(50, 64, 512, 512), (25, 16, 1024, 1024), (100, 32, 10, 50)]


def _time(fn, sync, min_time=0.4, max_reps=50, warmup=3):
    for _ in range(warmup):
        fn()
    sync()
    times = []
    start = time.perf_counter()
    while len(times) < max_reps and (time.perf_counter() - start < min_time or len(times) < 5):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_cylstm(T, B, I, H, seed=0):
    from cylstm import cuda
    from cylstm.cuda import functional as gpu

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    W = (rng.standard_normal((I, 4 * H)) / np.sqrt(I)).astype(np.float32)
    U = (rng.standard_normal((H, 4 * H)) / np.sqrt(H)).astype(np.float32)
    b = np.zeros(4 * H, np.float32)
    dy = rng.standard_normal((B, T, H)).astype(np.float32) * 0.01
    ver = gpu.new_weights_version()
    ctx = cuda.get_context()
    DA = cuda._require().DeviceArray
    xd = DA.from_host(ctx, x)
    dyd = DA.from_host(ctx, dy)
    sync = ctx.synchronize
    res = {}

    def fwd_host():
        gpu.lstm_forward(x, W, U, b, weights_version=ver)

    def train_host():
        o = gpu.lstm_forward(x, W, U, b, training=True, weights_version=ver)
        gpu.lstm_backward(o.cache, grad_output=dy)

    def fwd_dev():
        gpu.lstm_forward(xd, W, U, b, weights_version=ver, output_on_device=True)

    def train_dev():
        o = gpu.lstm_forward(xd, W, U, b, training=True, weights_version=ver,
                             output_on_device=True)
        gpu.lstm_backward(o.cache, grad_output=dyd, dx_on_device=True)

    def train_dev_grads_dev():  # the weight gradients left on the device, as torch's
        o = gpu.lstm_forward(xd, W, U, b, training=True, weights_version=ver,
                             output_on_device=True)
        gpu.lstm_backward(o.cache, grad_output=dyd, dx_on_device=True, grads_on_device=True)

    res["cylstm_fwd_host"] = _time(fwd_host, sync)
    res["cylstm_train_host"] = _time(train_host, sync)
    res["cylstm_fwd_dev"] = _time(fwd_dev, sync)
    res["cylstm_train_dev"] = _time(train_dev, sync)
    res["cylstm_train_dev_grads_dev"] = _time(train_dev_grads_dev, sync)
    if H > 128 and B <= 16:  # the backward's dh_prev = dz @ U^T on cuBLAS instead
        ctx.set_bwd_kernel_max_batch(0)
        try:
            res["cylstm_train_dev_b7_cublas"] = _time(train_dev, sync)
        finally:
            ctx.set_bwd_kernel_max_batch(16)
    if H <= 256:  # the other time-loop path, to place the one-kernel threshold
        cuda.set_fused_max_units(0 if H <= 128 else 256)
        try:
            res["cylstm_fwd_dev_other_path"] = _time(fwd_dev, sync)
            res["cylstm_train_dev_other_path"] = _time(train_dev, sync)
        finally:
            cuda.set_fused_max_units(128)
    return res


def bench_torch(T, B, I, H, seed=0, device="cuda"):
    import torch

    torch.manual_seed(seed)
    dev = torch.device(device)
    lstm = torch.nn.LSTM(I, H, batch_first=True).to(dev)
    x = torch.randn(B, T, I, device=dev)
    g = torch.randn(B, T, H, device=dev) * 0.01
    xh = x.cpu().numpy()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    res = {}

    def fwd():
        with torch.no_grad():
            lstm(x)

    def train():
        xr = x.requires_grad_(True)
        out, _ = lstm(xr)
        out.backward(g)

    def fwd_host():
        with torch.no_grad():
            lstm(torch.from_numpy(xh).to(dev))[0].cpu()

    res["torch_fwd_dev"] = _time(fwd, sync)
    res["torch_train_dev"] = _time(train, sync)
    res["torch_fwd_host"] = _time(fwd_host, sync)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--quick", action="store_true", help="shorter timing loops")
    ap.add_argument("--tf32", action="store_true", help="let cylstm's fp32 GEMMs use TF32")
    args = ap.parse_args(argv)
    from cylstm import cuda

    if not cuda.is_available():
        print(f"cylstm.cuda unavailable: {cuda.unavailable_reason()}")
        return 2
    if args.tf32:
        cuda.set_tf32(True)
    global _time
    if args.quick:
        base = _time

        def _time(fn, sync):
            return base(fn, sync, min_time=0.1, max_reps=10, warmup=2)

    try:
        import torch

        have_torch = torch.cuda.is_available()
        torch_info = f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}"
    except ImportError:
        have_torch, torch_info = False, "torch not installed"
    info = {
        "date": time.strftime("%Y-%m-%d"), "device": cuda.device_name(),
        "python": platform.python_version(), "torch": torch_info,
        "cylstm_tf32": bool(args.tf32), "dtype": "float32", "rows": [],
    }
    print(f"# {info['date']}  {info['device']}  {torch_info}  cylstm TF32={args.tf32}")
    head = (f"{'T,B,I,H':>18} | {'fwd cylstm':>10} {'dev':>8} {'torch':>8} {'torch+cp':>8} |"
            f" {'train cylstm':>12} {'dev':>8} {'torch':>8} | {'train ratio':>11}")
    print(head)
    print("-" * len(head))
    for T, B, I, H in SHAPES:
        row = {"T": T, "B": B, "I": I, "H": H}
        row.update(bench_cylstm(T, B, I, H))
        if have_torch:
            row.update(bench_torch(T, B, I, H))
        ms = {k: v * 1e3 for k, v in row.items() if isinstance(v, float)}
        tt = ms.get("torch_train_dev")
        ratio = ms["cylstm_train_dev"] / tt if tt else float("nan")
        row["train_ratio_dev"] = ratio
        print(f"{(T, B, I, H)!s:>18} | {ms['cylstm_fwd_host']:10.3f} "
              f"{ms['cylstm_fwd_dev']:8.3f} {ms.get('torch_fwd_dev', float('nan')):8.3f} "
              f"{ms.get('torch_fwd_host', float('nan')):8.3f} | "
              f"{ms['cylstm_train_host']:12.3f} {ms['cylstm_train_dev']:8.3f} "
              f"{ms.get('torch_train_dev', float('nan')):8.3f} | {ratio:10.2f}x", flush=True)
        print(f"{'':>18}   train, gradients left on the device: "
              f"{ms['cylstm_train_dev_grads_dev']:.3f}")
        if "cylstm_train_dev_b7_cublas" in ms:
            print(f"{'':>18}   train with the backward's dz @ U^T on cuBLAS: "
                  f"{ms['cylstm_train_dev_b7_cublas']:.3f}")
        if "cylstm_train_dev_other_path" in ms:
            other = "cuBLAS per step" if H <= 128 else "one kernel"
            print(f"{'':>18}   other time-loop path ({other}): "
                  f"fwd {ms['cylstm_fwd_dev_other_path']:.3f}, "
                  f"train {ms['cylstm_train_dev_other_path']:.3f}")
        info["rows"].append(row)
    print("times in ms (median); 'dev': data already on the GPU, as torch's; "
          "'torch+cp': torch with the host<->device copies; "
          "train ratio: cylstm dev / torch (< 1: cylstm faster)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(info, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
