#!/usr/bin/env python
"""Epoch times for ``fit(tbptt=k)`` and ``fit(bucket_by_length=True)`` (issue 13).

    python bench/tbptt_bench.py lm [--windows W] [--vocab V] [--threads N] [--torch]
    python bench/tbptt_bench.py bucket [--samples N] [--epochs E] [--seeds S] [--threads N]

``lm``: the issue's language-model case.  Embedding(V, 256) -> LSTM(256) ->
LSTM(256) -> Dense(V, softmax), sparse cross-entropy, SGD, on one series of
10^6 token ids batchified into 32 streams (31,250 steps each) and trained with
``tbptt=100``: 313 windows an epoch.  Only the first W windows are timed (after
one warm-up window) and the epoch time is extrapolated, so a run fits a shared
machine.  ``--torch`` times PyTorch's word_language_model loop (nn.Embedding,
a 2-layer nn.LSTM, nn.Linear, CrossEntropyLoss, ``repackage_hidden`` between
windows, SGD) over the same windows.

``bucket``: lengths uniform in [10, 1000], batch 32, LSTM(128) over 32
features behind a Masking layer, Dense(1), MSE, Adam: E epochs unbucketed and E
bucketed from the same weights and the same shuffle seed, timed, with the loss
of every epoch (``--seeds S`` repeats both with S shuffle orders, for the
run-to-run spread of the loss).  Float32 over long sequences meets subnormal
gradients in the backward; ``--ftz`` (with ``OPENBLAS_NUM_THREADS=1``) flushes
them, to time the steps without that slowdown.

Prints one JSON line per measurement.
"""
import argparse
import json
import math
import time

import numpy as np


def lm_cylstm(ids, V, k, windows):
    import cylstm
    from cylstm.layers import LSTM, Dense, Embedding, Input
    from cylstm.optimizers import SGD

    B = ids.shape[0]
    m = cylstm.Sequential([Input(shape=(None,), dtype="int64"), Embedding(V, 256, seed=1),
                           LSTM(256, return_sequences=True, seed=2),
                           LSTM(256, return_sequences=True, seed=3),
                           Dense(V, activation="softmax", seed=4)])
    m.compile(optimizer=SGD(learning_rate=1.0), loss="sparse_categorical_crossentropy")
    x, y = ids[:, :-1], ids[:, 1:]
    m.fit(x[:, :k], y[:, :k], batch_size=B, epochs=1, verbose=0, shuffle=False, tbptt=k)
    T = windows * k
    t = time.perf_counter()
    h = m.fit(x[:, k:k + T], y[:, k:k + T], batch_size=B, epochs=1, verbose=0, shuffle=False,
              tbptt=k)
    dt = time.perf_counter() - t
    return dt, h.history["loss"][0]


def lm_torch(ids, V, k, windows, threads):
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(0)

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Embedding(V, 256)
            self.rnn = nn.LSTM(256, 256, 2, batch_first=True)
            self.dec = nn.Linear(256, V)

        def forward(self, x, hidden):
            out, hidden = self.rnn(self.enc(x), hidden)
            return self.dec(out), hidden

    model = LM()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    crit = nn.CrossEntropyLoss()
    x = torch.from_numpy(ids[:, :-1].astype(np.int64))
    y = torch.from_numpy(ids[:, 1:].astype(np.int64))
    B = x.shape[0]
    hidden = (torch.zeros(2, B, 256), torch.zeros(2, B, 256))

    def window(t0, hidden):
        hidden = tuple(h.detach() for h in hidden)  # repackage_hidden
        opt.zero_grad()
        out, hidden = model(x[:, t0:t0 + k], hidden)
        loss = crit(out.reshape(-1, V), y[:, t0:t0 + k].reshape(-1))
        loss.backward()
        opt.step()
        return hidden, float(loss)

    hidden, _ = window(0, hidden)
    t = time.perf_counter()
    losses = []
    for w in range(windows):
        hidden, lo = window(k + w * k, hidden)
        losses.append(lo)
    return time.perf_counter() - t, float(np.mean(losses))


def run_lm(args):
    from cylstm.utils import batchify

    rng = np.random.default_rng(0)
    series = rng.integers(0, args.vocab, size=10 ** 6)
    ids = batchify(series, 32)
    k = 100
    n_windows = math.ceil((ids.shape[1] - 1) / k)
    dt, loss = lm_cylstm(ids, args.vocab, k, args.windows)
    print(json.dumps({"case": "lm", "impl": "cylstm", "windows_timed": args.windows,
                      "s_per_window": dt / args.windows, "epoch_s": dt / args.windows
                      * n_windows, "windows_per_epoch": n_windows, "loss": loss}), flush=True)
    if args.torch:
        dt, loss = lm_torch(ids, args.vocab, k, args.windows, args.threads)
        print(json.dumps({"case": "lm", "impl": "torch", "windows_timed": args.windows,
                          "s_per_window": dt / args.windows, "epoch_s": dt / args.windows
                          * n_windows, "windows_per_epoch": n_windows, "loss": loss}),
              flush=True)


def run_bucket(args):
    import cylstm
    from cylstm.layers import LSTM, Dense, Input, Masking
    from cylstm.optimizers import Adam

    rng = np.random.default_rng(0)
    n, T, F = args.samples, 1000, 32
    lengths = rng.integers(10, T + 1, size=n)
    x = rng.standard_normal((n, T, F)).astype(np.float32)
    x[np.arange(T)[None, :] >= lengths[:, None]] = 0.0
    y = (x[:, :, 0].sum(axis=1) / np.sqrt(lengths))[:, None].astype(np.float32)

    def model():
        m = cylstm.Sequential([Input(shape=(None, F)), Masking(0.0), LSTM(128, seed=1),
                               Dense(1, seed=2)])
        m.compile(optimizer=Adam(learning_rate=1e-3), loss="mse")
        return m

    ref = model()
    w0 = ref.get_weights()
    for seed in range(1, args.seeds + 1):
        for bucket in (False, True):
            m = model()
            m.set_weights(w0)
            m._shuffle_rng = np.random.default_rng(seed)  # the run-to-run spread: the order
            t = time.perf_counter()
            h = m.fit(x, y, batch_size=32, epochs=args.epochs, verbose=0,
                      bucket_by_length=bucket)
            dt = time.perf_counter() - t
            print(json.dumps({"case": "bucket", "bucket_by_length": bucket, "samples": n,
                              "shuffle_seed": seed, "epochs": args.epochs,
                              "epoch_s": dt / args.epochs, "losses": h.history["loss"]}),
                  flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("case", choices=["lm", "bucket"])
    p.add_argument("--windows", type=int, default=10)
    p.add_argument("--vocab", type=int, default=10000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--torch", action="store_true")
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seeds", type=int, default=1, help="shuffle orders to run (bucket)")
    p.add_argument("--ftz", action="store_true",
                   help="flush subnormals to zero on this thread (through torch), to see the "
                        "float32 backward without its subnormal slowdown on long sequences "
                        "(set OPENBLAS_NUM_THREADS=1 too: BLAS threads keep their own flags)")
    args = p.parse_args()
    if args.ftz:
        import torch

        torch.set_flush_denormal(True)
    import cylstm

    if hasattr(cylstm, "set_num_threads"):
        cylstm.set_num_threads(args.threads)
    run_lm(args) if args.case == "lm" else run_bucket(args)


if __name__ == "__main__":
    main()
