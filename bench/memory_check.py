"""Peak memory of training against what backward has to keep (issue 7).

    python bench/memory_check.py                      # (T, B, I, H) = (50, 64, 512, 512)
    python bench/memory_check.py --shape 20 32 64 64 --batches 8 --check

One epoch of ``batches`` batches of an ``LSTM(H) -> Dense(1)`` model with Adam
runs in a fresh process.  The resident set size is read just before the model
is created (the data already exists: it is the caller's, not training's) and
the process's peak RSS after the epoch; their difference is what training
cost.  It is compared with the theoretical minimum:

* saved activations, per (sample, step): the activated gates (4H), the cell
  state (H), the previous hidden state (H) and the output (H), i.e. 7H values;
* weights (I + H + 1) * 4H (+ the Dense layer), their gradients, and the
  optimizer state (Adam: two slots of the same size).

``--check`` exits with status 1 when the ratio exceeds 1.5.
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

CHILD = r"""
import json, os, resource, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from cylstm.layers import LSTM, Dense
from cylstm.models import Sequential

T, B, I, H, nb = (int(v) for v in sys.argv[2:7])
page = os.sysconf("SC_PAGE_SIZE")

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page

rng = np.random.default_rng(0)
x = rng.standard_normal((B * nb, T, I), dtype=np.float32)
y = rng.standard_normal((B * nb, 1), dtype=np.float32)
# warm the interpreter and the kernels on a tiny model (code pages, BLAS buffers)
w = Sequential([LSTM(4, input_shape=(None, I)), Dense(1)])
w.compile(optimizer="adam", loss="mse")
w.fit(x[:2, :2], y[:2], batch_size=2, epochs=1, verbose=0)
del w
base = rss()
peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
m = Sequential([LSTM(H, input_shape=(None, I)), Dense(1)])
m.compile(optimizer="adam", loss="mse")
m.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
n_params = sum(int(a.size) for a in m.get_weights())
print(json.dumps({"base": base, "peak": peak, "peak_before": peak_before,
                  "n_params": n_params, "threads": __import__("cylstm").get_num_threads()}))
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", nargs=4, type=int, default=[50, 64, 512, 512],
                    metavar=("T", "B", "I", "H"))
    ap.add_argument("--batches", type=int, default=4, help="batches in the epoch")
    ap.add_argument("--check", action="store_true", help="fail if the ratio exceeds 1.5")
    args = ap.parse_args(argv)
    T, B, I, H = args.shape
    out = subprocess.run([sys.executable, "-c", CHILD, ROOT, str(T), str(B), str(I), str(H),
                          str(args.batches)], capture_output=True, text=True, check=False)
    if out.returncode:
        sys.stderr.write(out.stderr)
        return out.returncode
    r = json.loads(out.stdout.strip().splitlines()[-1])
    f32 = 4
    acts = B * T * 7 * H * f32
    weights = r["n_params"] * f32
    opt = 2 * weights  # Adam: m and v
    grads = weights
    used = r["peak"] - r["base"]
    theory = acts + weights + opt
    mib = 2**20
    print(f"shape (T, B, I, H) = ({T}, {B}, {I}, {H}), float32, Adam, "
          f"{args.batches} batches, {r['threads']} thread(s)")
    print(f"  saved activations (7H per sample-step)  {acts / mib:9.1f} MiB")
    print(f"  weights ({r['n_params']} params)          {weights / mib:9.1f} MiB")
    print(f"  gradients                               {grads / mib:9.1f} MiB")
    print(f"  optimizer state (2 slots)               {opt / mib:9.1f} MiB")
    print(f"  theory: activations + weights + opt     {theory / mib:9.1f} MiB")
    print(f"  measured: peak RSS - RSS before model   {used / mib:9.1f} MiB "
          f"(peak {r['peak'] / mib:.1f} MiB, base {r['base'] / mib:.1f} MiB)")
    ratio = used / theory
    print(f"  ratio measured / theory                 {ratio:9.2f}x "
          f"({used / (theory + grads):.2f}x counting gradients too)")
    if r["peak_before"] > r["peak"] - 1:
        print("  note: the peak was reached before training; the ratio is an upper bound")
    if args.check and ratio > 1.5:
        print("FAIL: above 1.5x")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
