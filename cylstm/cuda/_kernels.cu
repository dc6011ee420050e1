// _kernels.cu -- cylstm's CUDA backend: cuBLAS GEMMs + fused LSTM cell kernels.
//
// The C interface, layouts and aliasing rules are documented in include/cylstm_cuda.h.
// The decomposition mirrors the CPU kernels (cylstm/_lstm.pyx) step for step, and the
// cell math is the one of cylstm/_cell.pxd, with the same step numbers (B1)..(B8),
// written once in cell_gate, cell_forward and cell_backward below:
//
//   z = x_t @ W + h_prev @ U + b,  blocks [i | f | g | o] of H each
//   i = sigmoid(z_i)  f = sigmoid(z_f)  g = tanh(z_g)  o = sigmoid(z_o)
//   c = f * c_prev + i * g,  h = o * tanh(c)
//
// All matrices are row-major.  cuBLAS is column-major, so every GEMM goes through
// rm_gemm below, which does the row-major trick once: row-major C = op(A) op(B) is
// column-major C^T = op(B)^T op(A)^T, i.e. swap the operands and m/n.

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "cylstm_cuda.h"

struct cyl_cuda_ctx {
    int device;
    int async_alloc;       // the device supports stream-ordered pools (cudaMallocAsync)
    cudaStream_t stream;
    cublasHandle_t blas;
    void* ones[2];         // a vector of ones (float, double) for db = dZ^T @ 1
    size_t ones_len[2];
    int64_t seq_max_h;     // H up to this runs the whole time loop in one kernel
                           // (0: never); see seq_fwd_kernel
    int64_t b7_max_batch;  // batches up to this run the backward's per-step
                           // dh_prev = dz @ U^T in dhprev_kernel, not cuBLAS (0: never)
    char msg[1024];
};

// ---------------------------------------------------------------- error handling

static void write_msg(char* buf, size_t len, const char* fmt, ...)
{
    if (buf == NULL || len == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, len, fmt, ap);
    va_end(ap);
}

static cyl_cuda_status cuda_fail(cyl_cuda_ctx* ctx, cudaError_t e, const char* what, int line)
{
    // clear a non-sticky error so that the next call starts clean
    (void)cudaGetLastError();
    write_msg(ctx->msg, sizeof(ctx->msg), "%s failed: %s (%s) [_kernels.cu:%d]", what,
              cudaGetErrorName(e), cudaGetErrorString(e), line);
    return CYL_CUDA_ERR_CUDA;
}

static cyl_cuda_status blas_fail(cyl_cuda_ctx* ctx, cublasStatus_t s, const char* what, int line)
{
    write_msg(ctx->msg, sizeof(ctx->msg), "%s failed: %s (%s) [_kernels.cu:%d]", what,
              cublasGetStatusName(s), cublasGetStatusString(s), line);
    return CYL_CUDA_ERR_CUBLAS;
}

static cyl_cuda_status arg_fail(cyl_cuda_ctx* ctx, const char* what)
{
    write_msg(ctx->msg, sizeof(ctx->msg), "%s", what);
    return CYL_CUDA_ERR_ARG;
}

#define CK(call)                                                                    \
    do {                                                                            \
        cudaError_t e_ = (call);                                                    \
        if (e_ != cudaSuccess)                                                      \
            return cuda_fail(ctx, e_, #call, __LINE__);                             \
    } while (0)

#define CKB(call)                                                                   \
    do {                                                                            \
        cublasStatus_t s_ = (call);                                                 \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                            \
            return blas_fail(ctx, s_, #call, __LINE__);                             \
    } while (0)

#define CKS(call)                                                                   \
    do {                                                                            \
        cyl_cuda_status st_ = (call);                                               \
        if (st_ != CYL_CUDA_OK)                                                     \
            return st_;                                                             \
    } while (0)

// a kernel launch: configuration errors show at once, execution errors at the next sync
#define CK_LAUNCH(name) CK(cudaGetLastError())

// ---------------------------------------------------------------- device math

__device__ __forceinline__ float dsigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ double dsigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }
__device__ __forceinline__ float dtanh(float x) { return tanhf(x); }
__device__ __forceinline__ double dtanh(double x) { return tanh(x); }

// ---------------------------------------------------------------- the cell, written once
//
// Every kernel below runs the cell through these three functions (tests/cuda_emulator.py
// has one Python function for each).  The forward comes in two parts because the
// one-launch time loop (seq_fwd_kernel) splits it there: its 4H threads activate one gate
// each, then after a barrier its first H threads update one unit each; the per-step
// kernel calls both parts in one thread.

// Gate block q of z activated (q = 0, 1, 2, 3 for i, f, g, o): tanh for g, else sigmoid.
template <typename F>
__device__ __forceinline__ F cell_gate(int q, F z)
{
    return q == 2 ? dtanh(z) : dsigmoid(z);
}

// The update of one unit from its activated gates: c = f * c_prev + i * g,
// h = o * tanh(c).  Returns c and stores h in *h.
template <typename F>
__device__ __forceinline__ F cell_forward(F gi, F gf, F gg, F go, F c_prev, F* h)
{
    const F c = gf * c_prev + gi * gg;
    *h = go * dtanh(c);
    return c;
}

// Steps (B1)-(B6) of _cell.pxd's cell_backward for one unit: gi..go its activated gates
// in the forward step, c the cell that step made and c_prev the one it started from,
// dh the whole dL/dh reaching the step, dc dL/dc from the next step.  Stores dL/dz of
// the gates [i, f, g, o] in dz[0..3] and returns dL/dc_prev.
template <typename F>
__device__ __forceinline__ F cell_backward(F gi, F gf, F gg, F go, F c, F c_prev, F dh, F dc,
                                           F* dz)
{
    const F tc = dtanh(c);                                // (B1)
    const F dcj = dc + dh * go * ((F)1 - tc * tc);        // (B3)
    dz[0] = dcj * gg * gi * ((F)1 - gi);                  // (B4, B6) i
    dz[1] = dcj * c_prev * gf * ((F)1 - gf);              // f
    dz[2] = dcj * gi * ((F)1 - gg * gg);                  // g
    dz[3] = dh * tc * go * ((F)1 - go);                   // (B2, B6) o
    return dcj * gf;                                      // (B5)
}

// ---------------------------------------------------------------- kernels

static const int THREADS = 256;

static inline unsigned int blocks_for(int64_t n)
{
    return (unsigned int)((n + THREADS - 1) / THREADS);
}

// One forward step for every (sample b, unit j): _cell.pxd's cell_forward for one unit.
// G row (b, t) holds x_t @ W on entry and the activated gates on exit (kept for the
// backward when `store_gates`); Z row b holds h_prev @ U.  Each thread reads and
// writes only element j of its sample's h/c, and the GEMM that read h_prev ran
// before this kernel on the same stream, so updating h in place is safe.
template <typename F>
__global__ void fwd_step_kernel(int B, int T, int H, int s, int reverse,
                                const int64_t* __restrict__ lengths, F* __restrict__ G,
                                const F* __restrict__ Z, const F* __restrict__ bias,
                                F* __restrict__ h, F* __restrict__ c, F* __restrict__ y,
                                F* __restrict__ Cs, F* __restrict__ Hp,
                                const F* __restrict__ rmask, F* __restrict__ hm,
                                int store_gates)
{
    int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (int64_t)B * H)
        return;
    int b = (int)(idx / H);
    int j = (int)(idx - (int64_t)b * H);
    int L = lengths == NULL ? T : (int)lengths[b];
    if (s >= L)
        return;  // this sample is done: its state stays frozen
    int t = reverse ? L - 1 - s : s;
    int64_t row = (int64_t)b * T + t;
    F* g = G + row * 4 * H;
    const F* z = Z + (int64_t)b * 4 * H;
    F gi = cell_gate(0, g[j] + z[j] + bias[j]);
    F gf = cell_gate(1, g[H + j] + z[H + j] + bias[H + j]);
    F gg = cell_gate(2, g[2 * H + j] + z[2 * H + j] + bias[2 * H + j]);
    F go = cell_gate(3, g[3 * H + j] + z[3 * H + j] + bias[3 * H + j]);
    F hn;
    F cn = cell_forward(gi, gf, gg, go, c[idx], &hn);
    if (Hp != NULL)  // what the recurrent GEMM read: h_prev, masked under recurrent dropout
        Hp[row * H + j] = rmask != NULL ? hm[idx] : h[idx];
    if (store_gates) {
        g[j] = gi;
        g[H + j] = gf;
        g[2 * H + j] = gg;
        g[3 * H + j] = go;
    }
    c[idx] = cn;
    h[idx] = hn;
    if (rmask != NULL)  // the next step's recurrent GEMM reads h * mask
        hm[idx] = hn * rmask[idx];
    if (y != NULL)
        y[row * H + j] = hn;
    if (Cs != NULL)
        Cs[row * H + j] = cn;
}

// One backward step for every (b, j): steps (B1)-(B6) of _cell.pxd's cell_backward.
// dh = dL/dh reaching this step: the caller's dL/dh_T at the sample's first backward
// step (s == L - 1), else dHp (= dz_next @ U^T from the previous GEMM), plus dy.
// dz goes over the gates in G (for the weight GEMMs after the loop) and into D row b
// (for this step's B7 GEMM); finished samples (s >= L) put zeros in D.
template <typename F>
__global__ void bwd_step_kernel(int B, int T, int H, int s, int reverse,
                                const int64_t* __restrict__ lengths, F* __restrict__ G,
                                const F* __restrict__ Cs, const F* __restrict__ c0,
                                const F* __restrict__ dy, const F* __restrict__ dh_last,
                                const F* __restrict__ dHp, const F* __restrict__ rmask,
                                F* __restrict__ dc, F* __restrict__ D)
{
    int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (int64_t)B * H)
        return;
    int b = (int)(idx / H);
    int j = (int)(idx - (int64_t)b * H);
    int L = lengths == NULL ? T : (int)lengths[b];
    F* d = D + (int64_t)b * 4 * H;
    if (s >= L) {
        d[j] = 0;
        d[H + j] = 0;
        d[2 * H + j] = 0;
        d[3 * H + j] = 0;
        return;
    }
    int t = reverse ? L - 1 - s : s;
    int64_t row = (int64_t)b * T + t;
    F dhj;
    if (s == L - 1)
        dhj = dh_last[idx];
    else  // recurrent dropout: h_prev reached the next step only through h_prev * mask
        dhj = rmask != NULL ? dHp[idx] * rmask[idx] : dHp[idx];
    if (dy != NULL)
        dhj += dy[row * H + j];
    F cp;
    if (s == 0) {
        cp = c0[idx];
    } else {
        int tp = reverse ? t + 1 : t - 1;
        cp = Cs[((int64_t)b * T + tp) * H + j];
    }
    F* g = G + row * 4 * H;
    F dz[4];
    dc[idx] = cell_backward(g[j], g[H + j], g[2 * H + j], g[3 * H + j], Cs[row * H + j], cp,
                            dhj, dc[idx], dz);
    g[j] = dz[0];
    g[H + j] = dz[1];
    g[2 * H + j] = dz[2];
    g[3 * H + j] = dz[3];
    d[j] = dz[0];
    d[H + j] = dz[1];
    d[2 * H + j] = dz[2];
    d[3 * H + j] = dz[3];
}

// ---- the time loop in one launch (small H)
//
// For small H the per-step work is tiny and two launches per step (GEMM + cell) cost
// more than the math.  These kernels run a sample's whole sequence in one thread
// block: the block computes z = (x_t @ W)[precomputed] + h_prev @ U + b itself, one
// thread per gate element, with h_prev in shared memory and U read through the cache,
// then the cell update, then the next step.  Samples are independent, so the blocks
// never wait for each other: one launch for the whole recurrence.  blockDim.x is 4H
// rounded up to a warp (4H <= 1024); h and c of unit j live in thread j's registers.

// hsrc's length in seq_fwd_kernel's shared memory: H rounded up to 32 elements
__host__ __device__ __forceinline__ int seq_fwd_hpad(int64_t H)
{
    return (int)((H + 31) & ~(int64_t)31);
}

template <typename F>
__global__ void seq_fwd_kernel(int T, int H, int reverse, const int64_t* __restrict__ lengths,
                               F* __restrict__ G, const F* __restrict__ U,
                               const F* __restrict__ bias, F* __restrict__ h,
                               F* __restrict__ c, F* __restrict__ y, F* __restrict__ Cs,
                               F* __restrict__ Hp, const F* __restrict__ rmask,
                               int store_gates)
{
    extern __shared__ __align__(16) unsigned char smem_raw[];
    // (H, padded to seq_fwd_hpad): what the recurrent product reads; the padding keeps
    // gate off hsrc's last 16-byte chunk (compute-sanitizer's racecheck flagged the
    // phase-1 reads of hsrc[H-1] against the gate[0] writes when they shared one)
    F* hsrc = reinterpret_cast<F*>(smem_raw);
    F* gate = hsrc + seq_fwd_hpad(H);           // (4H): activated gates of this step
    const int b = blockIdx.x;
    const int k = threadIdx.x;
    const int q = k / H;  // the gate block of thread k < 4H
    const int H4 = 4 * H;
    const int L = lengths == NULL ? T : (int)lengths[b];
    const int64_t base = (int64_t)b * H;
    F h_reg = 0, c_reg = 0;
    if (k < H) {
        h_reg = h[base + k];
        c_reg = c[base + k];
        hsrc[k] = rmask != NULL ? h_reg * rmask[base + k] : h_reg;
    }
    __syncthreads();
    for (int s = 0; s < L; ++s) {
        const int t = reverse ? L - 1 - s : s;
        const int64_t row = (int64_t)b * T + t;
        if (k < H4) {
            // z_k = (x_t @ W)_k + b_k + sum_m h_prev[m] U[m, k]
            F acc = G[row * H4 + k] + bias[k];
            const F* u = U + k;
#pragma unroll 4
            for (int m = 0; m < H; ++m)
                acc += hsrc[m] * __ldg(u + (int64_t)m * H4);
            F a = cell_gate(q, acc);
            gate[k] = a;
            if (store_gates)
                G[row * H4 + k] = a;
        }
        __syncthreads();  // all gates written, all reads of hsrc done
        if (k < H) {
            c_reg = cell_forward(gate[k], gate[H + k], gate[2 * H + k], gate[3 * H + k], c_reg,
                                 &h_reg);
            if (Hp != NULL)
                Hp[row * H + k] = hsrc[k];
            if (y != NULL)
                y[row * H + k] = h_reg;
            if (Cs != NULL)
                Cs[row * H + k] = c_reg;
            hsrc[k] = rmask != NULL ? h_reg * rmask[base + k] : h_reg;
        }
        __syncthreads();  // the new h is visible before the next step reads it
    }
    if (k < H) {
        h[base + k] = h_reg;
        c[base + k] = c_reg;
    }
}

// BPTT of one sample per block, all its steps in one launch.  Per step: threads j < H
// run (B1)-(B6) for unit j (dc_j in a register) and put dz in shared memory and over
// the gates in G; then (B7) dh_prev = dz @ U^T with one warp per row of U (lanes
// stride over the 4H columns, coalesced, then a warp reduction).
template <typename F>
__global__ void seq_bwd_kernel(int T, int H, int reverse, const int64_t* __restrict__ lengths,
                               F* __restrict__ G, const F* __restrict__ Cs,
                               const F* __restrict__ c0, const F* __restrict__ U,
                               const F* __restrict__ dy, F* __restrict__ dh,
                               F* __restrict__ dc, const F* __restrict__ rmask)
{
    extern __shared__ __align__(16) unsigned char smem_raw[];
    F* dz = reinterpret_cast<F*>(smem_raw);  // (4H)
    F* dhp = dz + 4 * H;                      // (H): dL/dh_prev from the last B7
    const int b = blockIdx.x;
    const int k = threadIdx.x;
    const int H4 = 4 * H;
    const int L = lengths == NULL ? T : (int)lengths[b];
    const int64_t base = (int64_t)b * H;
    const int lane = k & 31, warp = k >> 5, nwarps = (blockDim.x + 31) >> 5;
    F dc_reg = k < H ? dc[base + k] : (F)0;
    for (int s = L - 1; s >= 0; --s) {
        const int t = reverse ? L - 1 - s : s;
        const int64_t row = (int64_t)b * T + t;
        if (k < H) {
            F dhj = (s == L - 1) ? dh[base + k] : dhp[k];
            if (dy != NULL)
                dhj += dy[row * H + k];
            F cp;
            if (s == 0) {
                cp = c0[base + k];
            } else {
                const int tp = reverse ? t + 1 : t - 1;
                cp = Cs[((int64_t)b * T + tp) * H + k];
            }
            F* g = G + row * H4;
            F d[4];
            dc_reg = cell_backward(g[k], g[H + k], g[2 * H + k], g[3 * H + k], Cs[row * H + k],
                                   cp, dhj, dc_reg, d);
            g[k] = d[0];
            g[H + k] = d[1];
            g[2 * H + k] = d[2];
            g[3 * H + k] = d[3];
            dz[k] = d[0];
            dz[H + k] = d[1];
            dz[2 * H + k] = d[2];
            dz[3 * H + k] = d[3];
        }
        __syncthreads();  // dz complete; every read of dhp for this step done
        // (B7) dh_prev[m] = sum_k dz[k] U[m, k]  (times the recurrent mask)
        for (int m = warp; m < H; m += nwarps) {
            const F* u = U + (int64_t)m * H4;
            F acc = 0;
            for (int q = lane; q < H4; q += 32)
                acc += dz[q] * __ldg(u + q);
            for (int off = 16; off > 0; off >>= 1)
                acc += __shfl_down_sync(0xffffffffu, acc, off);
            if (lane == 0)
                dhp[m] = rmask != NULL ? acc * rmask[base + m] : acc;
        }
        __syncthreads();  // dhp complete before the next step reads it
    }
    if (k < H) {  // every sample runs its step 0 last: dhp is dL/dh0
        dh[base + k] = dhp[k];
        dc[base + k] = dc_reg;
    }
}

static int seq_threads(int64_t H)
{
    return (int)(((4 * H + 31) / 32) * 32);
}

// ---- (B7) of the per-step backward for small batches
//
// dHp (B, H) = D (B, 4H) @ U^T, U stored (H, 4H).  For a batch of 16 and H = 1024 this
// is a GEMM with a 16 x 1024 result and K = 4096; cuBLAS (FP32) ran it as two kernels,
// 35 us per step on an H100, this kernel in 19 us (2026-11-27, CUPTI over a train step
// at (T, B, I, H) = (25, 16, 1024, 1024): GPU time 1.69 -> 1.29 ms; `python
// bench/gpu_profile_train.py`).  Here a block takes R rows of U and the
// whole batch (up to BT samples), its 256 threads split K in 16-byte vectors (float4
// or double2: 4H is a multiple of 4), each keeps R x BT partial dot products in
// registers, and a warp shuffle then a pass over shared memory add them in a fixed
// order (deterministic).  U is read once per step, D (B x 4H, L2-resident) once per
// block.
static const int B7_THREADS = 256;
static const int B7_MAX_BATCH = 16;

template <typename F> struct vec16;
template <> struct vec16<float> { typedef float4 type; };
template <> struct vec16<double> { typedef double2 type; };

__device__ __forceinline__ float dot16(float4 a, float4 b, float acc)
{
    acc = fmaf(a.x, b.x, acc);
    acc = fmaf(a.y, b.y, acc);
    acc = fmaf(a.z, b.z, acc);
    return fmaf(a.w, b.w, acc);
}

__device__ __forceinline__ double dot16(double2 a, double2 b, double acc)
{
    acc = fma(a.x, b.x, acc);
    return fma(a.y, b.y, acc);
}

template <typename F, int R, int BT>
__global__ void __launch_bounds__(B7_THREADS)
    dhprev_kernel(int B, int H, const F* __restrict__ D, const F* __restrict__ U,
                  F* __restrict__ dHp)
{
    typedef typename vec16<F>::type V;
    const int nvec = (4 * H) / (int)(sizeof(V) / sizeof(F));  // vectors per row
    const int m0 = blockIdx.x * R;
    const V* __restrict__ Dv = reinterpret_cast<const V*>(D);
    const V* __restrict__ Uv = reinterpret_cast<const V*>(U);
    F acc[R][BT];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int b = 0; b < BT; ++b)
            acc[r][b] = 0;
    for (int v = threadIdx.x; v < nvec; v += B7_THREADS) {
        V u[R];
#pragma unroll
        for (int r = 0; r < R; ++r)
            if (m0 + r < H)
                u[r] = __ldg(Uv + (int64_t)(m0 + r) * nvec + v);
            else
                u[r] = V();
#pragma unroll
        for (int b = 0; b < BT; ++b) {
            if (b < B) {
                const V d = __ldg(Dv + (int64_t)b * nvec + v);
#pragma unroll
                for (int r = 0; r < R; ++r)
                    acc[r][b] = dot16(u[r], d, acc[r][b]);
            }
        }
    }
    __shared__ F red[B7_THREADS / 32][R * BT];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int b = 0; b < BT; ++b) {
            F a = acc[r][b];
            for (int off = 16; off > 0; off >>= 1)
                a += __shfl_down_sync(0xffffffffu, a, off);
            if (lane == 0)
                red[warp][r * BT + b] = a;
        }
    __syncthreads();
    for (int i = threadIdx.x; i < R * BT; i += B7_THREADS) {
        const int r = i / BT, b = i - (i / BT) * BT;
        if (m0 + r < H && b < B) {
            F sum = 0;
#pragma unroll
            for (int w = 0; w < B7_THREADS / 32; ++w)
                sum += red[w][i];
            dHp[(int64_t)b * H + m0 + r] = sum;
        }
    }
}

// rows of U per block: float keeps 4 x BT partial sums in registers, double 2 x BT
template <typename F> struct b7_rows { static const int value = 4; };
template <> struct b7_rows<double> { static const int value = 2; };

template <typename F>
static void launch_dhprev(cudaStream_t stream, int64_t B, int64_t H, const F* D, const F* U,
                          F* dHp)
{
    const int R = b7_rows<F>::value;
    const unsigned int grid = (unsigned int)((H + R - 1) / R);
    if (B <= 4)
        dhprev_kernel<F, R, 4><<<grid, B7_THREADS, 0, stream>>>((int)B, (int)H, D, U, dHp);
    else if (B <= 8)
        dhprev_kernel<F, R, 8><<<grid, B7_THREADS, 0, stream>>>((int)B, (int)H, D, U, dHp);
    else
        dhprev_kernel<F, R, 16><<<grid, B7_THREADS, 0, stream>>>((int)B, (int)H, D, U, dHp);
}

// Zero the gate rows past each sample's length: they must contribute nothing to the
// weight-gradient GEMMs over all B*T rows (B8).
template <typename F>
__global__ void zero_padding_kernel(int B, int T, int H4, const int64_t* __restrict__ lengths,
                                    F* __restrict__ G)
{
    int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (int64_t)B * T * H4)
        return;
    int64_t row = idx / H4;
    int b = (int)(row / T);
    int t = (int)(row - (int64_t)b * T);
    if (t >= (int)lengths[b])
        G[idx] = 0;
}

// out = a * m elementwise (the recurrent dropout mask); out may alias a
template <typename F>
__global__ void mul_kernel(int64_t n, const F* a, const F* __restrict__ m, F* out)
{
    int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx < n)
        out[idx] = a[idx] * m[idx];
}

template <typename F>
__global__ void fill_kernel(int64_t n, F value, F* __restrict__ out)
{
    int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx < n)
        out[idx] = value;
}

// ---------------------------------------------------------------- cuBLAS, row-major

static cublasStatus_t xgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb,
                            int m, int n, int k, const float* alpha, const float* A, int lda,
                            const float* B, int ldb, const float* beta, float* C, int ldc)
{
    return cublasSgemm(h, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

static cublasStatus_t xgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb,
                            int m, int n, int k, const double* alpha, const double* A,
                            int lda, const double* B, int ldb, const double* beta, double* C,
                            int ldc)
{
    return cublasDgemm(h, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

static cublasStatus_t xgemv(cublasHandle_t h, cublasOperation_t t, int m, int n,
                            const float* alpha, const float* A, int lda, const float* x,
                            const float* beta, float* y)
{
    return cublasSgemv(h, t, m, n, alpha, A, lda, x, 1, beta, y, 1);
}

static cublasStatus_t xgemv(cublasHandle_t h, cublasOperation_t t, int m, int n,
                            const double* alpha, const double* A, int lda, const double* x,
                            const double* beta, double* y)
{
    return cublasDgemv(h, t, m, n, alpha, A, lda, x, 1, beta, y, 1);
}

// Row-major C (M, N) = op(A) (M, K) @ op(B) (K, N) (+ beta C); lda/ldb/ldc are row
// strides of the stored matrices.  Column-major: C^T = op(B)^T op(A)^T.
template <typename F>
static cyl_cuda_status rm_gemm(cyl_cuda_ctx* ctx, bool trans_a, bool trans_b, int64_t M,
                               int64_t N, int64_t K, const F* A, int64_t lda, const F* Bm,
                               int64_t ldb, F beta, F* C, int64_t ldc, const char* what)
{
    const F one = 1;
    if (M == 0 || N == 0)
        return CYL_CUDA_OK;
    cublasStatus_t s = xgemm(ctx->blas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                             trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, (int)N, (int)M, (int)K,
                             &one, Bm, (int)ldb, A, (int)lda, &beta, C, (int)ldc);
    if (s != CUBLAS_STATUS_SUCCESS)
        return blas_fail(ctx, s, what, __LINE__);
    return CYL_CUDA_OK;
}

template <typename F> static int dtype_slot();
template <> int dtype_slot<float>() { return 0; }
template <> int dtype_slot<double>() { return 1; }

template <typename F>
static cyl_cuda_status ones_vector(cyl_cuda_ctx* ctx, int64_t n, const F** out)
{
    int k = dtype_slot<F>();
    if (ctx->ones_len[k] < (size_t)n) {
        if (ctx->ones[k] != NULL) {
            CK(cudaStreamSynchronize(ctx->stream));
            CK(cudaFree(ctx->ones[k]));
            ctx->ones[k] = NULL;
            ctx->ones_len[k] = 0;
        }
        void* p = NULL;
        CK(cudaMalloc(&p, (size_t)n * sizeof(F)));
        ctx->ones[k] = p;
        ctx->ones_len[k] = (size_t)n;
        fill_kernel<F><<<blocks_for(n), THREADS, 0, ctx->stream>>>(n, (F)1, (F*)p);
        CK_LAUNCH("fill_kernel");
    }
    *out = (const F*)ctx->ones[k];
    return CYL_CUDA_OK;
}

static cyl_cuda_status check_dims(cyl_cuda_ctx* ctx, int64_t B, int64_t T, int64_t I,
                                  int64_t H, int64_t max_len)
{
    const int64_t lim = 2147483647;
    if (B < 0 || T < 1 || I < 1 || H < 1)
        return arg_fail(ctx, "lstm: need B >= 0, T >= 1, I >= 1, H >= 1");
    if (B * T > lim || 4 * H > lim || I > lim || B * T * 4 * H / 4 / H != B * T)
        return arg_fail(ctx, "lstm: B*T, I or 4H exceeds the int range of cuBLAS");
    if (max_len < 0 || max_len > T)
        return arg_fail(ctx, "lstm: max_len must lie in [0, T]");
    return CYL_CUDA_OK;
}

// ---------------------------------------------------------------- forward / backward

template <typename F>
static cyl_cuda_status lstm_forward(cyl_cuda_ctx* ctx, int64_t B, int64_t T, int64_t I,
                                    int64_t H, const F* x, const F* W, const F* U,
                                    const F* bias, const int64_t* lengths, int64_t max_len,
                                    int reverse, const F* rmask, F* hm, F* y, F* h, F* c,
                                    F* G, F* C, F* Hp, F* Z, int training)
{
    if (ctx == NULL)
        return CYL_CUDA_ERR_ARG;
    CKS(check_dims(ctx, B, T, I, H, max_len));
    if (training && (C == NULL || Hp == NULL))
        return arg_fail(ctx, "lstm_forward: training needs C and Hp");
    if (B == 0)
        return CYL_CUDA_OK;
    if (!x || !W || !U || !bias || !h || !c || !G || !Z)
        return arg_fail(ctx, "lstm_forward: x, W, U, bias, h, c, G, Z must not be NULL");
    if (rmask != NULL && hm == NULL)
        return arg_fail(ctx, "lstm_forward: a recurrent mask needs the hm scratch");
    CK(cudaSetDevice(ctx->device));
    const int64_t H4 = 4 * H;
    // G (B*T, 4H) = X (B*T, I) @ W (I, 4H): one GEMM for every step; bias joins in the cell
    CKS(rm_gemm<F>(ctx, false, false, B * T, H4, I, x, I, W, H4, (F)0, G, H4,
                   "cublas gemm G = X @ W"));
    if (H <= ctx->seq_max_h && 4 * H <= 1024) {  // the whole time loop in one launch
        size_t smem = (size_t)(seq_fwd_hpad(H) + 4 * H) * sizeof(F);
        seq_fwd_kernel<F><<<(unsigned int)B, seq_threads(H), smem, ctx->stream>>>(
            (int)T, (int)H, reverse, lengths, G, U, bias, h, c, y, training ? C : (F*)NULL,
            training ? Hp : (F*)NULL, rmask, training);
        CK_LAUNCH("seq_fwd_kernel");
        return CYL_CUDA_OK;
    }
    const F* hsrc = h;
    if (rmask != NULL) {  // hm = h0 * mask; the step kernels keep it current
        mul_kernel<F><<<blocks_for(B * H), THREADS, 0, ctx->stream>>>(B * H, h, rmask, hm);
        CK_LAUNCH("mul_kernel");
        hsrc = hm;
    }
    for (int64_t s = 0; s < max_len; ++s) {
        // Z (B, 4H) = h_prev (B, H) @ U (H, 4H)   (h_prev * mask under recurrent dropout)
        CKS(rm_gemm<F>(ctx, false, false, B, H4, H, hsrc, H, U, H4, (F)0, Z, H4,
                       "cublas gemm Z = h @ U"));
        fwd_step_kernel<F><<<blocks_for(B * H), THREADS, 0, ctx->stream>>>(
            (int)B, (int)T, (int)H, (int)s, reverse, lengths, G, Z, bias, h, c, y,
            training ? C : (F*)NULL, training ? Hp : (F*)NULL, rmask, hm, training);
        CK_LAUNCH("fwd_step_kernel");
    }
    return CYL_CUDA_OK;
}

template <typename F>
static cyl_cuda_status lstm_backward(cyl_cuda_ctx* ctx, int64_t B, int64_t T, int64_t I,
                                     int64_t H, const F* x, const F* W, const F* U,
                                     const F* c0, const int64_t* lengths, int64_t max_len,
                                     int reverse, const F* rmask, F* G, const F* C,
                                     const F* Hp, const F* dy, F* dh, F* dc, F* D, F* dHp,
                                     F* dx, F* dW, F* dU, F* db)
{
    if (ctx == NULL)
        return CYL_CUDA_ERR_ARG;
    CKS(check_dims(ctx, B, T, I, H, max_len));
    if (!dW || !dU || !db)
        return arg_fail(ctx, "lstm_backward: dW, dU, db must not be NULL");
    CK(cudaSetDevice(ctx->device));
    const int64_t H4 = 4 * H;
    if (B == 0) {
        CK(cudaMemsetAsync(dW, 0, (size_t)(I * H4) * sizeof(F), ctx->stream));
        CK(cudaMemsetAsync(dU, 0, (size_t)(H * H4) * sizeof(F), ctx->stream));
        CK(cudaMemsetAsync(db, 0, (size_t)H4 * sizeof(F), ctx->stream));
        return CYL_CUDA_OK;
    }
    if (!x || !W || !U || !c0 || !G || !C || !Hp || !dh || !dc || !D || !dHp)
        return arg_fail(ctx, "lstm_backward: a required pointer is NULL");
    if (lengths != NULL) {  // padding rows take no gradient
        zero_padding_kernel<F><<<blocks_for(B * T * H4), THREADS, 0, ctx->stream>>>(
            (int)B, (int)T, (int)H4, lengths, G);
        CK_LAUNCH("zero_padding_kernel");
    }
    if (H <= ctx->seq_max_h && 4 * H <= 1024) {  // the whole time loop in one launch
        size_t smem = (size_t)(5 * H) * sizeof(F);
        seq_bwd_kernel<F><<<(unsigned int)B, seq_threads(H), smem, ctx->stream>>>(
            (int)T, (int)H, reverse, lengths, G, C, c0, U, dy, dh, dc, rmask);
        CK_LAUNCH("seq_bwd_kernel");
        max_len = 0;  // skip the per-step loop and the dh hand-over below
    }
    const bool small_batch_b7 = B <= ctx->b7_max_batch && B <= B7_MAX_BATCH;
    for (int64_t s = max_len - 1; s >= 0; --s) {
        // (B1)-(B6): dz over the gates and into D
        bwd_step_kernel<F><<<blocks_for(B * H), THREADS, 0, ctx->stream>>>(
            (int)B, (int)T, (int)H, (int)s, reverse, lengths, G, C, c0, dy, dh, dHp, rmask,
            dc, D);
        CK_LAUNCH("bwd_step_kernel");
        // (B7) dh_prev (B, H) = dz (B, 4H) @ U^T, U stored (H, 4H)
        if (small_batch_b7) {
            launch_dhprev<F>(ctx->stream, B, H, D, U, dHp);
            CK_LAUNCH("dhprev_kernel");
        } else {
            CKS(rm_gemm<F>(ctx, false, true, B, H, H4, D, H4, U, H4, (F)0, dHp, H,
                           "cublas gemm dh_prev = dz @ U^T"));
        }
    }
    // every sample is active at s = 0, so dHp (times the mask) is dL/dh0 for all of them
    if (max_len > 0 && rmask != NULL) {
        mul_kernel<F><<<blocks_for(B * H), THREADS, 0, ctx->stream>>>(B * H, dHp, rmask, dh);
        CK_LAUNCH("mul_kernel");
    } else if (max_len > 0) {
        CK(cudaMemcpyAsync(dh, dHp, (size_t)(B * H) * sizeof(F), cudaMemcpyDeviceToDevice,
                           ctx->stream));
    }
    // (B8) over all B*T rows (padding rows are zero in dz)
    // dW (I, 4H) = X^T (I, B*T) @ dz (B*T, 4H)
    CKS(rm_gemm<F>(ctx, true, false, I, H4, B * T, x, I, G, H4, (F)0, dW, H4,
                   "cublas gemm dW = X^T @ dz"));
    // dU (H, 4H) = Hp^T (H, B*T) @ dz (B*T, 4H)
    CKS(rm_gemm<F>(ctx, true, false, H, H4, B * T, Hp, H, G, H4, (F)0, dU, H4,
                   "cublas gemm dU = Hp^T @ dz"));
    // db (4H) = dz^T @ 1: row-major dz (B*T, 4H) is column-major (4H, B*T), lda 4H
    const F* ones = NULL;
    CKS(ones_vector<F>(ctx, B * T, &ones));
    {
        const F one = 1, zero = 0;
        CKB(xgemv(ctx->blas, CUBLAS_OP_N, (int)H4, (int)(B * T), &one, G, (int)H4, ones,
                  &zero, db));
    }
    if (dx != NULL) {
        // dx (B*T, I) = dz (B*T, 4H) @ W^T, W stored (I, 4H)
        CKS(rm_gemm<F>(ctx, false, true, B * T, I, H4, G, H4, W, H4, (F)0, dx, I,
                       "cublas gemm dx = dz @ W^T"));
    }
    return CYL_CUDA_OK;
}

// ---------------------------------------------------------------- the C interface

extern "C" {

cyl_cuda_status cyl_cuda_device_count(int* count, char* msg, size_t msg_len)
{
    int n = 0;
    if (count == NULL)
        return CYL_CUDA_ERR_ARG;
    *count = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        write_msg(msg, msg_len, "cudaGetDeviceCount: %s (%s)", cudaGetErrorName(e),
                  cudaGetErrorString(e));
        return CYL_CUDA_OK;
    }
    if (n == 0)
        write_msg(msg, msg_len, "no CUDA device visible");
    *count = n;
    return CYL_CUDA_OK;
}

cyl_cuda_status cyl_cuda_create(int device, cyl_cuda_ctx** out, char* msg, size_t msg_len)
{
    if (out == NULL)
        return CYL_CUDA_ERR_ARG;
    *out = NULL;
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        (void)cudaGetLastError();
        write_msg(msg, msg_len, "no CUDA device: %s",
                  e != cudaSuccess ? cudaGetErrorString(e) : "none visible");
        return CYL_CUDA_ERR_NO_DEVICE;
    }
    if (device < 0 || device >= n) {
        write_msg(msg, msg_len, "device %d out of range: %d CUDA device(s) visible", device, n);
        return CYL_CUDA_ERR_ARG;
    }
    cyl_cuda_ctx* ctx = (cyl_cuda_ctx*)calloc(1, sizeof(cyl_cuda_ctx));
    if (ctx == NULL) {
        write_msg(msg, msg_len, "out of host memory");
        return CYL_CUDA_ERR_ARG;
    }
    ctx->device = device;
    ctx->seq_max_h = 128;
    ctx->b7_max_batch = B7_MAX_BATCH;
    cyl_cuda_status st = CYL_CUDA_OK;
    int pools = 0;
    cublasStatus_t bs;
    if ((e = cudaSetDevice(device)) != cudaSuccess)
        goto cuda_error;
    if ((e = cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, device)) !=
        cudaSuccess)
        goto cuda_error;
    ctx->async_alloc = pools != 0;
    if (ctx->async_alloc) {
        // keep freed blocks in the pool across synchronizations (the default threshold
        // of 0 hands them back to the driver at every sync, and the next batch pays
        // for mapping them again)
        cudaMemPool_t pool;
        if (cudaDeviceGetDefaultMemPool(&pool, device) == cudaSuccess) {
            uint64_t keep = UINT64_MAX;
            (void)cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep);
        }
        (void)cudaGetLastError();
    }
    if ((e = cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking)) != cudaSuccess)
        goto cuda_error;
    bs = cublasCreate(&ctx->blas);
    if (bs == CUBLAS_STATUS_SUCCESS)
        bs = cublasSetStream(ctx->blas, ctx->stream);
    if (bs == CUBLAS_STATUS_SUCCESS)  // full FP32 unless the user opts into TF32
        bs = cublasSetMathMode(ctx->blas, CUBLAS_DEFAULT_MATH);
    if (bs != CUBLAS_STATUS_SUCCESS) {
        write_msg(msg, msg_len, "cuBLAS initialization failed: %s (%s)", cublasGetStatusName(bs),
                  cublasGetStatusString(bs));
        st = CYL_CUDA_ERR_CUBLAS;
        goto fail;
    }
    *out = ctx;
    return CYL_CUDA_OK;
cuda_error:
    (void)cudaGetLastError();
    write_msg(msg, msg_len, "CUDA initialization failed on device %d: %s (%s)", device,
              cudaGetErrorName(e), cudaGetErrorString(e));
    st = CYL_CUDA_ERR_CUDA;
fail:
    if (ctx->blas)
        cublasDestroy(ctx->blas);
    if (ctx->stream)
        cudaStreamDestroy(ctx->stream);
    free(ctx);
    return st;
}

void cyl_cuda_destroy(cyl_cuda_ctx* ctx)
{
    if (ctx == NULL)
        return;
    cudaSetDevice(ctx->device);
    cudaStreamSynchronize(ctx->stream);
    for (int k = 0; k < 2; ++k)
        if (ctx->ones[k])
            cudaFree(ctx->ones[k]);
    cublasDestroy(ctx->blas);
    cudaStreamDestroy(ctx->stream);
    (void)cudaGetLastError();
    free(ctx);
}

const char* cyl_cuda_last_error(const cyl_cuda_ctx* ctx)
{
    return ctx == NULL ? "no CUDA context" : ctx->msg;
}

cyl_cuda_status cyl_cuda_device_name(cyl_cuda_ctx* ctx, char* buf, size_t len)
{
    if (ctx == NULL || buf == NULL)
        return CYL_CUDA_ERR_ARG;
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, ctx->device));
    write_msg(buf, len, "%s (sm_%d%d)", prop.name, prop.major, prop.minor);
    return CYL_CUDA_OK;
}

cyl_cuda_status cyl_cuda_set_tf32(cyl_cuda_ctx* ctx, int enable)
{
    if (ctx == NULL)
        return CYL_CUDA_ERR_ARG;
    CKB(cublasSetMathMode(ctx->blas, enable ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
    return CYL_CUDA_OK;
}

cyl_cuda_status cyl_cuda_set_fused_max_units(cyl_cuda_ctx* ctx, int64_t max_units)
{
    if (ctx == NULL)
        return CYL_CUDA_ERR_ARG;
    ctx->seq_max_h = max_units < 0 ? 0 : max_units;
    return CYL_CUDA_OK;
}

cyl_cuda_status cyl_cuda_set_bwd_kernel_max_batch(cyl_cuda_ctx* ctx, int64_t max_batch)
{
    if (ctx == NULL)
        return CYL_CUDA_ERR_ARG;
    ctx->b7_max_batch = max_batch < 0 ? 0 : max_batch;
    return CYL_CUDA_OK;
}

cyl_cuda_status cyl_cuda_malloc(cyl_cuda_ctx* ctx, void** ptr, size_t bytes)
{
    if (ctx == NULL || ptr == NULL)
        return CYL_CUDA_ERR_ARG;
    *ptr = NULL;
    if (bytes == 0)
        return CYL_CUDA_OK;
    CK(cudaSetDevice(ctx->device));
    if (ctx->async_alloc)
        CK(cudaMallocAsync(ptr, bytes, ctx->stream));
    else
        CK(cudaMalloc(ptr, bytes));
    return CYL_CUDA_OK;
}

cyl_cuda_status cyl_cuda_free(cyl_cuda_ctx* ctx, void* ptr)
{
    if (ctx == NULL)
        return CYL_CUDA_ERR_ARG;
    if (ptr == NULL)
        return CYL_CUDA_OK;
    CK(cudaSetDevice(ctx->device));
    if (ctx->async_alloc)
        CK(cudaFreeAsync(ptr, ctx->stream));
    else
        CK(cudaFree(ptr));
    return CYL_CUDA_OK;
}

cyl_cuda_status cyl_cuda_memset0(cyl_cuda_ctx* ctx, void* ptr, size_t bytes)
{
    if (ctx == NULL || (ptr == NULL && bytes))
        return CYL_CUDA_ERR_ARG;
    if (bytes)
        CK(cudaMemsetAsync(ptr, 0, bytes, ctx->stream));
    return CYL_CUDA_OK;
}

cyl_cuda_status cyl_cuda_h2d(cyl_cuda_ctx* ctx, void* dst, const void* src, size_t bytes)
{
    if (ctx == NULL || ((dst == NULL || src == NULL) && bytes))
        return CYL_CUDA_ERR_ARG;
    if (bytes == 0)
        return CYL_CUDA_OK;
    CK(cudaSetDevice(ctx->device));
    // from pageable memory this returns once `src` has been staged, so the caller may
    // free or change it at once; the copy itself is ordered on the stream
    CK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, ctx->stream));
    return CYL_CUDA_OK;
}

cyl_cuda_status cyl_cuda_d2h(cyl_cuda_ctx* ctx, void* dst, const void* src, size_t bytes)
{
    if (ctx == NULL || ((dst == NULL || src == NULL) && bytes))
        return CYL_CUDA_ERR_ARG;
    CK(cudaSetDevice(ctx->device));
    if (bytes)
        CK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, ctx->stream));
    CK(cudaStreamSynchronize(ctx->stream));
    return CYL_CUDA_OK;
}

cyl_cuda_status cyl_cuda_d2d(cyl_cuda_ctx* ctx, void* dst, const void* src, size_t bytes)
{
    if (ctx == NULL || ((dst == NULL || src == NULL) && bytes))
        return CYL_CUDA_ERR_ARG;
    if (bytes)
        CK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, ctx->stream));
    return CYL_CUDA_OK;
}

cyl_cuda_status cyl_cuda_synchronize(cyl_cuda_ctx* ctx)
{
    if (ctx == NULL)
        return CYL_CUDA_ERR_ARG;
    CK(cudaSetDevice(ctx->device));
    CK(cudaStreamSynchronize(ctx->stream));
    return CYL_CUDA_OK;
}

#define CYL_DEFINE(SFX, F)                                                                \
    cyl_cuda_status cyl_cuda_lstm_forward_##SFX(                                        \
        cyl_cuda_ctx* ctx, int64_t B, int64_t T, int64_t I, int64_t H, const F* x,      \
        const F* W, const F* U, const F* bias, const int64_t* lengths, int64_t max_len, \
        int reverse, const F* rmask, F* hm, F* y, F* h, F* c, F* G, F* C, F* Hp, F* Z,  \
        int training)                                                                   \
    {                                                                                   \
        return lstm_forward<F>(ctx, B, T, I, H, x, W, U, bias, lengths, max_len,        \
                               reverse, rmask, hm, y, h, c, G, C, Hp, Z, training);     \
    }                                                                                   \
    cyl_cuda_status cyl_cuda_lstm_backward_##SFX(                                       \
        cyl_cuda_ctx* ctx, int64_t B, int64_t T, int64_t I, int64_t H, const F* x,      \
        const F* W, const F* U, const F* c0, const int64_t* lengths, int64_t max_len,   \
        int reverse, const F* rmask, F* G, const F* C, const F* Hp, const F* dy, F* dh, \
        F* dc, F* D, F* dHp, F* dx, F* dW, F* dU, F* db)                                \
    {                                                                                   \
        return lstm_backward<F>(ctx, B, T, I, H, x, W, U, c0, lengths, max_len,         \
                                reverse, rmask, G, C, Hp, dy, dh, dc, D, dHp, dx, dW,   \
                                dU, db);                                                \
    }

CYL_DEFINE(f32, float)
CYL_DEFINE(f64, double)

}  // extern "C"
