"""Time a host-optimizer GPU training step by each device-to-host copy path.

    python bench/gpu_train_step.py [--reps N] [--json FILE] [T,B,I,H ...]
    # default shapes 25,16,1024,1024 and 50,64,512,512

Needs a ``CYLSTM_CUDA=1`` build and a GPU.  For each shape and each value of
``CYLSTM_CUDA_D2H`` (see cylstm/cuda/functional.py):

* ``fresh``  - the old path: the gradients come back into new NumPy arrays (pageable
  cudaMemcpy), then are copied into the model's gradient buffer;
* ``direct`` - (the default) cudaMemcpy straight into the gradient buffer (host memory
  in use);
* ``pinned`` - through the context's pinned staging buffer into it;

it prints the median of ``--reps`` synchronized calls of

* ``step``: what ``model.fit`` does per LSTM layer: ``lstm_forward`` from NumPy x
  (weights resident, ``weights_version``), training, then ``lstm_backward`` of a NumPy
  output gradient with ``out=`` views of one flat gradient buffer, no dx;
* ``copy``: ``lstm_backward``'s share of it beyond the same backward with
  ``grads_on_device=True`` (i.e. what bringing dW, dU, db, dh0, dc0 back costs);
* ``train_on_batch``: a whole ``Sequential([LSTM(H), Dense(1)])`` step after
  ``model.to('cuda')`` with SGD (its host update of the 4(I+H)H weights included).
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


def _median_ms(fn, reps, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()  # every variant ends with a synchronizing copy or an explicit sync
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def run_shape(T, B, I, H, reps, modes):
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

    def step():
        f = gpu.lstm_forward(x, W, U, b, training=True, weights_version=v)
        gpu.lstm_backward(f.cache, grad_output=dy, need_input_grad=False, out=out)

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
    old = os.environ.get("CYLSTM_CUDA_D2H")
    try:
        for mode in modes:
            os.environ["CYLSTM_CUDA_D2H"] = mode
            s = _median_ms(step, reps)
            d = _median_ms(step_on_device, reps)
            m = _median_ms(lambda: model.train_on_batch(xm, ym), reps)
            rows[mode] = {"step_ms": s, "grads_on_device_ms": d, "copy_ms": s - d,
                          "train_on_batch_ms": m}
    finally:
        if old is None:
            os.environ.pop("CYLSTM_CUDA_D2H", None)
        else:
            os.environ["CYLSTM_CUDA_D2H"] = old
    return rows


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shapes", nargs="*", default=["25,16,1024,1024", "50,64,512,512"])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--modes", default="fresh,direct,pinned")
    ap.add_argument("--json")
    ap.add_argument("--emulate", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
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
        rows = run_shape(T, B, I, H, args.reps, args.modes.split(","))
        result["shapes"][text] = rows
        for mode, r in rows.items():
            print(f"{(T, B, I, H)!s:>22} {mode:>7} {r['step_ms']:8.2f} "
                  f"{r['grads_on_device_ms']:8.2f} {r['copy_ms']:8.2f} "
                  f"{r['train_on_batch_ms']:15.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
