/*
 * cylstm_cuda.h -- the C interface of cylstm's optional CUDA backend.
 *
 * Built only with CYLSTM_CUDA=1 (see cylstm/cuda/_build_cuda.py); implemented in
 * cylstm/cuda/_kernels.cu (cuBLAS GEMMs + fused gate kernels), wrapped for Python
 * by cylstm/cuda/_cuda.pyx.
 *
 * Layout and semantics are those of the CPU kernels (cylstm/_lstm.pyx, cell math in
 * cylstm/_cell.pxd): row-major, batch-first, Keras gate order [i | f | g | o]:
 *
 *     x    (B, T, I)     input                 W    (I, 4H)   kernel
 *     U    (H, 4H)       recurrent kernel      bias (4H,)
 *     G    (B, T, 4H)    gate buffer: x @ W, then the activated gates (training),
 *                        then dL/dz (backward)
 *     C    (B, T, H)     cell state after each step (training)
 *     Hp   (B, T, H)     h_prev fed to each step (training)
 *     y    (B, T, H)     outputs by time index
 *
 * Time: sample b runs steps s = 0 .. L_b - 1 (L_b = lengths[b], or T when lengths is
 * NULL) at time index t = s, or t = L_b - 1 - s when `reverse` (PyTorch packed-sequence
 * semantics); its state freezes after its last step.  Rows of y and Hp past a sample's
 * length are never written: the caller zeroes them if it needs zeros there.
 *
 * Pointers: every array pointer below is a DEVICE pointer (from cyl_cuda_malloc or any
 * cudaMalloc'd memory of the context's device), C-contiguous with the shape given.
 * Unless a parameter says "may alias", distinct parameters must not overlap.
 * Sizes are int64_t; B*T, I, 4H must each fit in an int (cuBLAS dimensions), else
 * CYL_CUDA_ERR_ARG.
 *
 * Errors: every function returns a cyl_cuda_status.  On failure the context keeps a
 * human-readable message (what failed, the CUDA or cuBLAS error name and text, and
 * where) that cyl_cuda_last_error returns; functions without a context write it to a
 * caller buffer.  Every CUDA runtime and cuBLAS status is checked; kernel launches are
 * checked with cudaGetLastError; errors of asynchronous work surface at the next
 * synchronizing call (cyl_cuda_d2h, cyl_cuda_synchronize).
 *
 * Streams: all work of a context runs in order on its own stream; calls from several
 * host threads on one context must be serialized by the caller (the Python wrapper
 * holds a lock).
 */
#ifndef CYLSTM_CUDA_H
#define CYLSTM_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    CYL_CUDA_OK = 0,
    CYL_CUDA_ERR_CUDA = 1,      /* a CUDA runtime call failed */
    CYL_CUDA_ERR_CUBLAS = 2,    /* a cuBLAS call failed */
    CYL_CUDA_ERR_ARG = 3,       /* bad argument (sizes, NULL where required) */
    CYL_CUDA_ERR_NO_DEVICE = 4  /* no CUDA device, or the driver is missing */
} cyl_cuda_status;

/* Opaque: a device, a stream, a cuBLAS handle bound to that stream, scratch. */
typedef struct cyl_cuda_ctx cyl_cuda_ctx;

/* Number of visible CUDA devices in *count (0 when there is no driver or no device:
 * that returns CYL_CUDA_OK with *count = 0, never an error).  `msg` (msg_len bytes,
 * may be NULL) receives why there are none. */
cyl_cuda_status cyl_cuda_device_count(int* count, char* msg, size_t msg_len);

/* Create a context on `device`.  On failure *out is NULL and `msg` says why. */
cyl_cuda_status cyl_cuda_create(int device, cyl_cuda_ctx** out, char* msg, size_t msg_len);

/* Wait for the context's work, free its scratch, stream and handle.  NULL is a no-op. */
void cyl_cuda_destroy(cyl_cuda_ctx* ctx);

/* The message of the last failed call on `ctx` ("" if none).  Owned by ctx. */
const char* cyl_cuda_last_error(const cyl_cuda_ctx* ctx);

/* Device name and compute capability, e.g. "NVIDIA H100 80GB HBM3 (sm_90)". */
cyl_cuda_status cyl_cuda_device_name(cyl_cuda_ctx* ctx, char* buf, size_t len);

/* Allow cuBLAS to use TF32 tensor cores for float32 GEMMs (enable != 0); default off,
 * which keeps float32 GEMMs in full FP32 (parity with the CPU to ~1e-5). */
cyl_cuda_status cyl_cuda_set_tf32(cyl_cuda_ctx* ctx, int enable);

/* Run the whole time loop of a layer in one kernel launch (a thread block per sample,
 * no cuBLAS call per step) when units H <= max_units (and 4H <= 1024); larger layers
 * use one cuBLAS GEMM + one fused cell kernel per step.  Default 128; 0 disables. */
cyl_cuda_status cyl_cuda_set_fused_max_units(cyl_cuda_ctx* ctx, int64_t max_units);

/* The backward's per-step dh_prev = dz @ U^T (B7) of the per-step path (H above the
 * fused limit) runs in the backend's own kernel (U read once per step, the batch's
 * dot products in registers) when the batch B <= max_batch (capped at 16), else as a
 * cuBLAS GEMM (on an H100 at B = 16, H = 1024: 19 us per step against cuBLAS's 35).
 * Default 16; 0: always cuBLAS. */
cyl_cuda_status cyl_cuda_set_bwd_kernel_max_batch(cyl_cuda_ctx* ctx, int64_t max_batch);

/* Memory, stream-ordered on the context's stream (cudaMallocAsync pools).
 * malloc of 0 bytes returns NULL and CYL_CUDA_OK; free(NULL) is a no-op. */
cyl_cuda_status cyl_cuda_malloc(cyl_cuda_ctx* ctx, void** ptr, size_t bytes);
cyl_cuda_status cyl_cuda_free(cyl_cuda_ctx* ctx, void* ptr);
cyl_cuda_status cyl_cuda_memset0(cyl_cuda_ctx* ctx, void* ptr, size_t bytes);
/* host -> device (dst device, src host; returns once src may be reused) */
cyl_cuda_status cyl_cuda_h2d(cyl_cuda_ctx* ctx, void* dst, const void* src, size_t bytes);
/* device -> host (synchronizes: reports errors of all earlier work of ctx) */
cyl_cuda_status cyl_cuda_d2h(cyl_cuda_ctx* ctx, void* dst, const void* src, size_t bytes);
/* device -> device; the ranges must not overlap */
cyl_cuda_status cyl_cuda_d2d(cyl_cuda_ctx* ctx, void* dst, const void* src, size_t bytes);
cyl_cuda_status cyl_cuda_synchronize(cyl_cuda_ctx* ctx);

/*
 * Forward over whole sequences.
 *
 *   x       (B, T, I)   in
 *   W       (I, 4H)     in
 *   U       (H, 4H)     in
 *   bias    (4H,)       in
 *   lengths (B,) int64  in, device, each in [1, T]; or NULL (all T)
 *   max_len             max(lengths) (T when lengths is NULL): the number of steps
 *   reverse             nonzero: go_backwards
 *   rmask   (B, H)      in, or NULL: recurrent dropout as in Keras, one mask per
 *                       sequence (already scaled by 1/(1-rate)); the recurrent GEMM
 *                       reads h_prev * rmask, the carried state and y stay unmasked
 *   hm      (B, H)      scratch for h * rmask (may be NULL when rmask is NULL)
 *   y       (B, T, H)   out, or NULL (not needed)
 *   h, c    (B, H)      in: initial state, out: final state (per sample, after its
 *                       last valid step)
 *   G       (B, T, 4H)  out: scratch; with `training` the activated gates
 *   C       (B, T, H)   out (training) or NULL
 *   Hp      (B, T, H)   out (training) or NULL: the h_prev the recurrent GEMM read
 *                       (masked under recurrent dropout)
 *   Z       (B, 4H)     scratch
 *   training            nonzero: C and Hp must be given; G keeps the gates
 *
 * Launches: one GEMM for x @ W over all steps, then per step one GEMM (h @ U) and
 * one fused kernel (bias, activations, cell update, all stores); for small H (see
 * cyl_cuda_set_fused_max_units) a single kernel for all steps instead.  Z and hm are
 * then unused.
 */
cyl_cuda_status cyl_cuda_lstm_forward_f32(
    cyl_cuda_ctx* ctx, int64_t B, int64_t T, int64_t I, int64_t H,
    const float* x, const float* W, const float* U, const float* bias,
    const int64_t* lengths, int64_t max_len, int reverse,
    const float* rmask, float* hm, float* y, float* h, float* c, float* G, float* C, float* Hp,
    float* Z,
    int training);
cyl_cuda_status cyl_cuda_lstm_forward_f64(
    cyl_cuda_ctx* ctx, int64_t B, int64_t T, int64_t I, int64_t H,
    const double* x, const double* W, const double* U, const double* bias,
    const int64_t* lengths, int64_t max_len, int reverse,
    const double* rmask, double* hm, double* y, double* h, double* c, double* G, double* C,
    double* Hp, double* Z,
    int training);

/*
 * Backpropagation through time after a training forward.
 *
 *   x, W, U, lengths, max_len, reverse, rmask   as given to the forward
 *   c0      (B, H)      in: the initial cell state of the forward
 *   G       (B, T, 4H)  in: the forward's activated gates; out: dL/dz (rows past a
 *                       sample's length are set to zero)
 *   C, Hp   (B, T, H)   in: from the forward
 *   dy      (B, T, H)   in: dL/dy, or NULL (only the final states have gradients)
 *   dh, dc  (B, H)      in: dL/dh_T, dL/dc_T (of the final states); out: dL/dh0, dL/dc0
 *   D       (B, 4H)     scratch
 *   dHp     (B, H)      scratch
 *   dx      (B, T, I)   out: dL/dx, or NULL (not needed)
 *   dW      (I, 4H)     out
 *   dU      (H, 4H)     out
 *   db      (4H,)       out
 *
 * Launches: per step one fused kernel (steps B1-B6 of _cell.pxd) and one GEMM
 * (B7: dh_prev = dz @ U^T; for B <= 16 the backend's own kernel, see
 * cyl_cuda_set_bwd_kernel_max_batch), or for small H one kernel for all steps (D and
 * dHp are then unused); then (B8) three GEMMs/GEMV over all B*T rows: dW, dU, db, and one
 * GEMM for dx.
 */
cyl_cuda_status cyl_cuda_lstm_backward_f32(
    cyl_cuda_ctx* ctx, int64_t B, int64_t T, int64_t I, int64_t H,
    const float* x, const float* W, const float* U, const float* c0,
    const int64_t* lengths, int64_t max_len, int reverse, const float* rmask,
    float* G, const float* C, const float* Hp, const float* dy,
    float* dh, float* dc, float* D, float* dHp,
    float* dx, float* dW, float* dU, float* db);
cyl_cuda_status cyl_cuda_lstm_backward_f64(
    cyl_cuda_ctx* ctx, int64_t B, int64_t T, int64_t I, int64_t H,
    const double* x, const double* W, const double* U, const double* c0,
    const int64_t* lengths, int64_t max_len, int reverse, const double* rmask,
    double* G, const double* C, const double* Hp, const double* dy,
    double* dh, double* dc, double* D, double* dHp,
    double* dx, double* dW, double* dU, double* db);

#ifdef __cplusplus
}
#endif

#endif /* CYLSTM_CUDA_H */
