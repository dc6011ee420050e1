"""A NumPy stand-in for the compiled ``cylstm.cuda._cuda`` module, for machines without
a GPU.

It has the extension's Python interface (``Context``, ``DeviceArray``, ``forward``,
``backward``, ``device_count``) and executes the launch sequence of
cylstm/cuda/_kernels.cu line by line: the same GEMM calls (``rm_gemm``, with the same
operands, transposes and leading dimensions, down to the column-major cuBLAS call it
makes, whose semantics ``xgemm``/``xgemv`` implement from the cuBLAS documentation),
and each kernel as a loop over its threads with the kernel's exact indexing.  Keep it in
step with the .cu file: it is how the time-loop logic (ragged lengths, go_backwards, the dh
hand-over between steps, recurrent dropout, padding) is checked against the CPU kernels where no
GPU is available.  What it cannot check: the CUDA code compiling to the same thing
(the build test covers compiling), launch configurations and memory races.

Fresh device memory is filled with NaN, so reading memory the kernels never wrote
shows up as NaN in the results.
"""
import numpy as np


class CudaError(RuntimeError):
    pass


def device_count():
    return 1, ""


class Context:
    def __init__(self, device=0):
        self.device = device
        self.name = "NumPy emulator (sm_00)"
        self.seq_max_h = 128
        self.b7_max_batch = 16

    def set_tf32(self, enable):
        pass

    def set_fused_max_units(self, n):
        self.seq_max_h = max(0, int(n))

    def set_bwd_kernel_max_batch(self, n):
        self.b7_max_batch = max(0, int(n))

    def synchronize(self):
        pass


class DeviceArray:
    def __init__(self, ctx, shape, dtype):
        self.ctx = ctx
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.a = np.empty(self.shape, self.dtype)
        if self.dtype.kind == "f":
            self.a.fill(np.nan)  # uninitialized device memory
        else:
            self.a.fill(-(2 ** 40))
        self.nbytes = self.a.nbytes

    @staticmethod
    def empty(ctx, shape, dtype):
        return DeviceArray(ctx, shape, dtype)

    @staticmethod
    def zeros(ctx, shape, dtype):
        d = DeviceArray(ctx, shape, dtype)
        d.a[...] = 0
        return d

    @staticmethod
    def from_host(ctx, arr):
        arr = np.ascontiguousarray(arr)
        d = DeviceArray(ctx, arr.shape, arr.dtype)
        d.a[...] = arr
        return d

    @property
    def ndim(self):
        return len(self.shape)

    def to_host(self, out=None):
        # as _cuda.pyx: a new array, or a copy into the caller's
        if out is None:
            return self.a.copy()
        if (not isinstance(out, np.ndarray) or out.shape != self.shape
                or out.dtype != self.dtype or not out.flags.c_contiguous
                or not out.flags.writeable):
            raise ValueError(f"to_host: out must be a writeable C-contiguous {self.shape} "
                             f"{self.dtype} array")
        out[...] = self.a
        return out

    def copy_from(self, other):
        assert other.shape == self.shape and other.dtype == self.dtype
        self.a[...] = other.a
        return self

    def copy_from_host(self, arr):
        self.a[...] = arr
        return self


def _flat(d):
    return None if d is None else d.a.reshape(-1)


def _colmajor(buf, rows, cols, ld):
    """Column-major (rows, cols) view of a flat buffer with leading dimension ld."""
    return np.lib.stride_tricks.as_strided(buf, (rows, cols), (buf.itemsize, ld * buf.itemsize))


def xgemm(trans_a, trans_b, m, n, k, A, lda, B, ldb, beta, C, ldc):
    """cublas{S,D}gemm with alpha = 1, as the cuBLAS documentation defines it:
    column-major C (m, n) = op(A) (m, k) @ op(B) (k, n) + beta C."""
    assert lda >= (k if trans_a else m) and ldb >= (n if trans_b else k) and ldc >= m
    opA = _colmajor(A, k, m, lda).T if trans_a else _colmajor(A, m, k, lda)
    opB = _colmajor(B, n, k, ldb).T if trans_b else _colmajor(B, k, n, ldb)
    Cm = _colmajor(C, m, n, ldc)
    prod = opA @ opB
    Cm[...] = prod if beta == 0 else prod + beta * Cm


def xgemv(trans, m, n, A, lda, x, y):
    """cublas{S,D}gemv, alpha = 1, beta = 0: y = op(A) x, A column-major (m, n)."""
    Am = _colmajor(A, m, n, lda)
    y[...] = (Am.T if trans else Am) @ x


def rm_gemm(trans_a, trans_b, M, N, K, A, lda, B, ldb, beta, C, ldc):
    """_kernels.cu's rm_gemm: row-major C (M, N) = op(A) op(B) as column-major
    C^T = op(B)^T op(A)^T -- the operands and m/n swapped, the flags kept."""
    if M == 0 or N == 0:
        return
    xgemm(trans_b, trans_a, N, M, K, B, ldb, A, lda, beta, C, ldc)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


# _kernels.cu's cell, written once there and once here; each kernel below calls these
# where the .cu kernel calls them (over the whole vector of threads at once)


def cell_gate(q, z):
    """Gate block q (0, 1, 2, 3 for i, f, g, o; per thread) of z activated."""
    return np.where(np.asarray(q) == 2, np.tanh(z), _sigmoid(z))


def cell_forward(gi, gf, gg, go, c_prev):
    """The update of each unit from its activated gates: (c, h)."""
    c = gf * c_prev + gi * gg
    return c, go * np.tanh(c)


def cell_backward(gi, gf, gg, go, c, c_prev, dh, dc):
    """Steps (B1)-(B6) of each unit: ((dz_i, dz_f, dz_g, dz_o), dL/dc_prev)."""
    tc = np.tanh(c)                               # (B1)
    dcj = dc + dh * go * (1 - tc * tc)            # (B3)
    dz = (dcj * gg * gi * (1 - gi),               # (B4, B6) i
          dcj * c_prev * gf * (1 - gf),           # f
          dcj * gi * (1 - gg * gg),               # g
          dh * tc * go * (1 - go))                # (B2, B6) o
    return dz, dcj * gf                           # (B5)


def fwd_step_kernel(B, T, H, s, reverse, lengths, G, Z, bias, h, c, y, Cs, Hp, rmask, hm,
                    store_gates):
    j = np.arange(H)  # the threads of one sample, run together
    for b in range(B):
        L = T if lengths is None else int(lengths[b])
        if s >= L:
            continue
        t = L - 1 - s if reverse else s
        row = b * T + t
        g = G[row * 4 * H:(row + 1) * 4 * H]
        z = Z[b * 4 * H:(b + 1) * 4 * H]
        idx = b * H + j
        gi = cell_gate(0, g[j] + z[j] + bias[j])
        gf = cell_gate(1, g[H + j] + z[H + j] + bias[H + j])
        gg = cell_gate(2, g[2 * H + j] + z[2 * H + j] + bias[2 * H + j])
        go = cell_gate(3, g[3 * H + j] + z[3 * H + j] + bias[3 * H + j])
        cn, hn = cell_forward(gi, gf, gg, go, c[idx])
        if Hp is not None:
            Hp[row * H + j] = hm[idx] if rmask is not None else h[idx]
        if store_gates:
            g[j], g[H + j], g[2 * H + j], g[3 * H + j] = gi, gf, gg, go
        c[idx] = cn
        h[idx] = hn
        if rmask is not None:
            hm[idx] = hn * rmask[idx]
        if y is not None:
            y[row * H + j] = hn
        if Cs is not None:
            Cs[row * H + j] = cn


def bwd_step_kernel(B, T, H, s, reverse, lengths, G, Cs, c0, dy, dh_last, dHp, rmask, dc, D):
    j = np.arange(H)
    for b in range(B):
        L = T if lengths is None else int(lengths[b])
        d = D[b * 4 * H:(b + 1) * 4 * H]
        if s >= L:
            d[j] = d[H + j] = d[2 * H + j] = d[3 * H + j] = 0
            continue
        t = L - 1 - s if reverse else s
        row = b * T + t
        idx = b * H + j
        if s == L - 1:
            dhj = dh_last[idx].copy()
        else:
            dhj = dHp[idx] * rmask[idx] if rmask is not None else dHp[idx].copy()
        if dy is not None:
            dhj = dhj + dy[row * H + j]
        if s == 0:
            cp = c0[idx]
        else:
            tp = t + 1 if reverse else t - 1
            cp = Cs[(b * T + tp) * H + j]
        g = G[row * 4 * H:(row + 1) * 4 * H]
        dz, dc[idx] = cell_backward(g[j], g[H + j], g[2 * H + j], g[3 * H + j],
                                    Cs[row * H + j], cp, dhj, dc[idx])
        g[j], g[H + j], g[2 * H + j], g[3 * H + j] = dz
        d[j], d[H + j], d[2 * H + j], d[3 * H + j] = dz


def seq_fwd_kernel(B, T, H, reverse, lengths, G, U, bias, h, c, y, Cs, Hp, rmask,
                   store_gates):
    """One block per sample; the phases between __syncthreads run in order."""
    H4 = 4 * H
    k = np.arange(H4)  # threads k < 4H (the padding threads do nothing)
    q = k // H  # the gate block of each thread
    j = np.arange(H)
    for b in range(B):
        L = T if lengths is None else int(lengths[b])
        base = b * H
        h_reg = h[base + j].copy()
        c_reg = c[base + j].copy()
        hsrc = h_reg * rmask[base + j] if rmask is not None else h_reg.copy()
        for s in range(L):
            t = L - 1 - s if reverse else s
            row = b * T + t
            acc = G[row * H4 + k] + bias[k]
            for m in range(H):
                acc = acc + hsrc[m] * U[m * H4 + k]
            gate = cell_gate(q, acc)
            if store_gates:
                G[row * H4 + k] = gate
            # __syncthreads()
            c_reg, h_reg = cell_forward(gate[j], gate[H + j], gate[2 * H + j], gate[3 * H + j],
                                        c_reg)
            if Hp is not None:
                Hp[row * H + j] = hsrc
            if y is not None:
                y[row * H + j] = h_reg
            if Cs is not None:
                Cs[row * H + j] = c_reg
            hsrc = h_reg * rmask[base + j] if rmask is not None else h_reg.copy()
            # __syncthreads()
        h[base + j] = h_reg
        c[base + j] = c_reg


def seq_bwd_kernel(B, T, H, reverse, lengths, G, Cs, c0, U, dy, dh, dc, rmask):
    H4 = 4 * H
    j = np.arange(H)
    for b in range(B):
        L = T if lengths is None else int(lengths[b])
        base = b * H
        dc_reg = dc[base + j].copy()
        dhp = None
        for s in range(L - 1, -1, -1):
            t = L - 1 - s if reverse else s
            row = b * T + t
            dhj = dh[base + j].copy() if s == L - 1 else dhp.copy()
            if dy is not None:
                dhj = dhj + dy[row * H + j]
            if s == 0:
                cp = c0[base + j]
            else:
                tp = t + 1 if reverse else t - 1
                cp = Cs[(b * T + tp) * H + j]
            g = G[row * H4:(row + 1) * H4]
            d, dc_reg = cell_backward(g[j], g[H + j], g[2 * H + j], g[3 * H + j],
                                      Cs[row * H + j], cp, dhj, dc_reg)
            g[j], g[H + j], g[2 * H + j], g[3 * H + j] = d
            dz = np.concatenate(d)
            # __syncthreads(); (B7) one warp per row m of U
            Um = U.reshape(H, H4)
            acc = np.array([np.sum(dz * Um[m]) for m in range(H)])
            dhp = acc * rmask[base + j] if rmask is not None else acc
            # __syncthreads()
        dh[base + j] = dhp
        dc[base + j] = dc_reg


B7_THREADS = 256
B7_MAX_BATCH = 16


def dhprev_kernel(B, H, D, U, dHp, dtype):
    """(B7) for small batches: dHp (B, H) = D (B, 4H) @ U^T.  Block m0 = R rows; its
    threads split the 4H columns in 16-byte vectors (v = thread, thread + 256, ...);
    each thread's partial sums are then added across the 256 threads."""
    nv = 16 // np.dtype(dtype).itemsize  # elements per vector
    R = 4 if np.dtype(dtype) == np.float32 else 2
    H4 = 4 * H
    Dm = D[:B * H4].reshape(B, H4)
    Um = U[:H * H4].reshape(H, H4)
    for m0 in range(0, H, R):
        rows = Um[m0:m0 + R]  # rows past H are not read (u = 0)
        # the 4H columns a thread covers, summed per thread, then over the threads
        part = np.zeros((B7_THREADS, B, rows.shape[0]), dtype)
        for v0 in range(0, H4 // nv, B7_THREADS):
            cols = slice(v0 * nv, min(H4, (v0 + B7_THREADS) * nv))
            prod = Dm[:, None, cols] * rows[None, :, cols]  # (B, R, cols)
            nthr = prod.shape[2] // nv
            part[:nthr] += prod.reshape(B, rows.shape[0], nthr, nv).sum(3).transpose(2, 0, 1)
        out = part.sum(0)  # (B, R)
        for r in range(rows.shape[0]):
            dHp[np.arange(B) * H + m0 + r] = out[:, r]


def forward(ctx, x, W, U, bias, lengths, max_len, reverse, rmask, hm, y, h, c, G, C, Hp, Z,
            training):
    B, T, I = x.shape
    H = U.shape[0]
    H4 = 4 * H
    if training and (C is None or Hp is None):
        raise CudaError("lstm_forward: training needs C and Hp")
    if B == 0:
        return
    f = _flat
    lens = None if lengths is None else lengths.a
    rm_gemm(False, False, B * T, H4, I, f(x), I, f(W), H4, 0, f(G), H4)
    if H <= ctx.seq_max_h and 4 * H <= 1024:
        seq_fwd_kernel(B, T, H, reverse, lens, f(G), f(U), f(bias), f(h), f(c), f(y),
                       f(C) if training else None, f(Hp) if training else None, f(rmask),
                       training)
        return
    hsrc = f(h)
    if rmask is not None:
        f(hm)[:] = f(h) * f(rmask)
        hsrc = f(hm)
    for s in range(max_len):
        rm_gemm(False, False, B, H4, H, hsrc, H, f(U), H4, 0, f(Z), H4)
        fwd_step_kernel(B, T, H, s, reverse, lens, f(G), f(Z), f(bias), f(h), f(c), f(y),
                        f(C) if training else None, f(Hp) if training else None, f(rmask),
                        f(hm), training)


def backward(ctx, x, W, U, c0, lengths, max_len, reverse, rmask, G, C, Hp, dy, dh, dc, D,
             dHp, dx, dW, dU, db):
    B, T, I = x.shape
    H = U.shape[0]
    H4 = 4 * H
    f = _flat
    if B == 0:
        f(dW)[:] = 0
        f(dU)[:] = 0
        f(db)[:] = 0
        return
    lens = None if lengths is None else lengths.a
    if lens is not None:  # zero_padding_kernel
        Gf = f(G)
        for i in range(B * T * H4):
            row = i // H4
            b = row // T
            t = row - b * T
            if t >= lens[b]:
                Gf[i] = 0
    if H <= ctx.seq_max_h and 4 * H <= 1024:
        seq_bwd_kernel(B, T, H, reverse, lens, f(G), f(C), f(c0), f(U), f(dy), f(dh), f(dc),
                       f(rmask))
        max_len = 0
    for s in range(max_len - 1, -1, -1):
        bwd_step_kernel(B, T, H, s, reverse, lens, f(G), f(C), f(c0), f(dy), f(dh), f(dHp),
                        f(rmask), f(dc), f(D))
        if B <= ctx.b7_max_batch and B <= B7_MAX_BATCH:
            dhprev_kernel(B, H, f(D), f(U), f(dHp), G.dtype)
        else:
            rm_gemm(False, True, B, H, H4, f(D), H4, f(U), H4, 0, f(dHp), H)
    if max_len > 0 and rmask is not None:
        f(dh)[:] = f(dHp) * f(rmask)
    elif max_len > 0:
        f(dh)[:] = f(dHp)
    rm_gemm(True, False, I, H4, B * T, f(x), I, f(G), H4, 0, f(dW), H4)
    rm_gemm(True, False, H, H4, B * T, f(Hp), H, f(G), H4, 0, f(dU), H4)
    # db (4H) = dz^T @ 1: row-major dz (B*T, 4H) is column-major (4H, B*T), lda 4H
    xgemv(False, H4, B * T, f(G), H4, np.ones(B * T, G.dtype), f(db))
    if dx is not None:
        rm_gemm(False, True, B * T, I, H4, f(G), H4, f(W), H4, 0, f(dx), I)
