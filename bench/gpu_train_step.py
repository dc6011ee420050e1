"""Time a host-optimizer GPU training step by each way of bringing the gradients back.

    python bench/gpu_train_step.py [--reps N] [--paths direct,fresh] [--json FILE]
                                   [T,B,I,H ...]
    # default shapes 25,16,1024,1024 and 50,64,512,512

Needs a ``CYLSTM_CUDA=1`` build and a GPU.  For each shape and each path:

* ``direct`` - the library's: ``lstm_backward(..., out=...)`` copies the weight gradients
  with one cudaMemcpy each straight into the model's gradient buffer (host memory in use);
* ``fresh``  - the old path, rebuilt here from the public API for comparison: the
  gradients stay on the device (``grads_on_device=True``), come back into new NumPy
  arrays (``DeviceArray.to_host()``), and are then copied into the gradient buffer;

it prints the median of ``--reps`` synchronized calls of

* ``step``: what ``model.fit`` does per LSTM layer: ``lstm_forward`` from NumPy x
  (weights resident, ``weights_version``), training, then ``lstm_backward`` of a NumPy
  output gradient into the gradient buffer by that path, no dx;
* ``copy``: the step's share beyond the same backward with ``grads_on_device=True``
  (i.e. what bringing dW, dU, db, dh0, dc0 back costs);
* ``train_on_batch``: a whole ``Sequential([LSTM(H), Dense(1)])`` step after
  ``model.to('cuda')`` with SGD (its host update of the 4(I+H)H weights included); the
  layers always take the library's path, so this is measured for ``direct`` only.

A third path, a pinned staging buffer per context, was measured beside these on an H100
(README.md, "Gradient copy for the host optimizer"), lost to ``direct``, and was removed
from the library.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


PATHS = ("direct", "fresh")


def _median_ms(fn, reps, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()  # every variant ends with a synchronizing copy or an explicit sync
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def run_shape(T, B, I, H, reps, paths):
    from cylstm import cuda, layers, models
    from cylstm.cuda import functional as gpu

    rng = np.random.default_rng(0)
    dt = np.float32
    x = rng.standard_normal((B, T, I)).astype(dt)
    W = (rng.standard_normal((I, 4 * H)) * 0.1 / np.sqrt(I)).astype(dt)
    U = (rng.standard_normal((H, 4 * H)) * 0.1 / np.sqrt(H)).astype(dt)
    b = np.zeros(4 * H, dt)
    dy = rng.standard_normal((B, T, H)).astype(dt)
    v = gpu.new_weights_version()
    flat = np.zeros(I * 4 * H + H * 4 * H + 4 * H, dt)  # a model's flat gradient buffer
    out = (flat[:I * 4 * H].reshape(I, 4 * H),
           flat[I * 4 * H:(I + H) * 4 * H].reshape(H, 4 * H), flat[(I + H) * 4 * H:])
    ctx = cuda.get_context(0)

    def step_direct():
        f = gpu.lstm_forward(x, W, U, b, training=True, weights_version=v)
        gpu.lstm_backward(f.cache, grad_output=dy, need_input_grad=False, out=out)

    def step_fresh():
        f = gpu.lstm_forward(x, W, U, b, training=True, weights_version=v)
        g = gpu.lstm_backward(f.cache, grad_output=dy, need_input_grad=False,
                              grads_on_device=True)
        for dev, buf in zip((g.dkernel, g.drecurrent_kernel, g.dbias), out):
            np.copyto(buf, dev.to_host())  # a new array, then into the buffer
        g.dh0.to_host()
        g.dc0.to_host()

    steps = {"direct": step_direct, "fresh": step_fresh}

    def step_on_device():
        f = gpu.lstm_forward(x, W, U, b, training=True, weights_version=v)
        gpu.lstm_backward(f.cache, grad_output=dy, need_input_grad=False,
                          grads_on_device=True)
        ctx.synchronize()

    xm = rng.standard_normal((B, T, I)).astype(dt)
    ym = rng.standard_normal((B, 1)).astype(dt)
    model = models.Sequential()
    model.add(layers.LSTM(units=H, input_shape=(T, I), seed=1))
    model.add(layers.Dense(units=1))
    model.compile(optimizer="sgd", loss="mean_squared_error")
    model.train_on_batch(xm, ym)  # build on the CPU, then move
    model.to("cuda")

    rows = {}
    for path in paths:
        s = _median_ms(steps[path], reps)
        d = _median_ms(step_on_device, reps)
        m = (_median_ms(lambda: model.train_on_batch(xm, ym), reps) if path == "direct"
             else None)
        rows[path] = {"step_ms": s, "grads_on_device_ms": d, "copy_ms": s - d,
                      "train_on_batch_ms": m}
    return rows


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shapes", nargs="*", default=["25,16,1024,1024", "50,64,512,512"])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--paths", default=",".join(PATHS))
    ap.add_argument("--json")
    ap.add_argument("--emulate", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    paths = args.paths.split(",")
    if not set(paths) <= set(PATHS):
        ap.error(f"--paths: choose from {', '.join(PATHS)}; got {args.paths!r}")
    from cylstm import cuda

    if args.emulate:  # check this script without a GPU (tests/cuda_emulator.py)
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        import cuda_emulator

        cuda._load = lambda: cuda_emulator
    elif not cuda.is_available():
        print("CUDA backend unavailable:", cuda.unavailable_reason())
        return 1
    name = cuda.device_name()
    print(f"device: {name}; float32, median of {args.reps} calls, ms")
    print(f"{'(T, B, I, H)':>22} {'path':>7} {'step':>8} {'on GPU':>8} {'copy':>8} "
          f"{'train_on_batch':>15}")
    result = {"device": name, "reps": args.reps, "shapes": {}}
    for text in args.shapes:
        T, B, I, H = (int(t) for t in text.split(","))
        rows = run_shape(T, B, I, H, args.reps, paths)
        result["shapes"][text] = rows
        for path, r in rows.items():
            tob = r["train_on_batch_ms"]
            print(f"{(T, B, I, H)!s:>22} {path:>7} {r['step_ms']:8.2f} "
                  f"{r['grads_on_device_ms']:8.2f} {r['copy_ms']:8.2f} "
                  f"{'-' if tob is None else f'{tob:.2f}':>15}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
