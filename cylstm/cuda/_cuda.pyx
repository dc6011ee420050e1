# cython: language_level=3
"""Thin Python wrapper of the CUDA backend's C interface (include/cylstm_cuda.h).

``Context`` owns a device, a stream and a cuBLAS handle; ``DeviceArray`` owns one
C-contiguous device allocation (float32, float64 or int64) of a context.  ``forward`` and
``backward`` check that the arrays they are given agree in dtype and shape (a wrong shape
would make the kernels write out of bounds), then call the C functions with the GIL
released.  Every non-zero status becomes a ``CudaError`` carrying the backend's message.
Input validation for users lives in cylstm.cuda.functional.
"""
from libc.stdint cimport int64_t
from libc.stddef cimport size_t

import numpy as np


cdef extern from "cylstm_cuda.h" nogil:
    ctypedef int cyl_cuda_status
    ctypedef struct cyl_cuda_ctx:
        pass
    cyl_cuda_status cyl_cuda_device_count(int* count, char* msg, size_t msg_len)
    cyl_cuda_status cyl_cuda_create(int device, cyl_cuda_ctx** out, char* msg, size_t msg_len)
    void cyl_cuda_destroy(cyl_cuda_ctx* ctx)
    const char* cyl_cuda_last_error(const cyl_cuda_ctx* ctx)
    cyl_cuda_status cyl_cuda_device_name(cyl_cuda_ctx* ctx, char* buf, size_t len)
    cyl_cuda_status cyl_cuda_set_tf32(cyl_cuda_ctx* ctx, int enable)
    cyl_cuda_status cyl_cuda_set_fused_max_units(cyl_cuda_ctx* ctx, int64_t max_units)
    cyl_cuda_status cyl_cuda_set_bwd_kernel_max_batch(cyl_cuda_ctx* ctx, int64_t max_batch)
    cyl_cuda_status cyl_cuda_malloc(cyl_cuda_ctx* ctx, void** ptr, size_t nbytes)
    cyl_cuda_status cyl_cuda_free(cyl_cuda_ctx* ctx, void* ptr)
    cyl_cuda_status cyl_cuda_memset0(cyl_cuda_ctx* ctx, void* ptr, size_t nbytes)
    cyl_cuda_status cyl_cuda_h2d(cyl_cuda_ctx* ctx, void* dst, const void* src, size_t nbytes)
    cyl_cuda_status cyl_cuda_d2h(cyl_cuda_ctx* ctx, void* dst, const void* src, size_t nbytes)
    cyl_cuda_status cyl_cuda_d2d(cyl_cuda_ctx* ctx, void* dst, const void* src, size_t nbytes)
    cyl_cuda_status cyl_cuda_synchronize(cyl_cuda_ctx* ctx)
    cyl_cuda_status cyl_cuda_lstm_forward_f32(
        cyl_cuda_ctx* ctx, int64_t B, int64_t T, int64_t I, int64_t H,
        const float* x, const float* W, const float* U, const float* bias,
        const int64_t* lengths, int64_t max_len, int reverse,
        const float* rmask, float* hm, float* y, float* h, float* c, float* G, float* C,
        float* Hp, float* Z,
        int training)
    cyl_cuda_status cyl_cuda_lstm_forward_f64(
        cyl_cuda_ctx* ctx, int64_t B, int64_t T, int64_t I, int64_t H,
        const double* x, const double* W, const double* U, const double* bias,
        const int64_t* lengths, int64_t max_len, int reverse,
        const double* rmask, double* hm, double* y, double* h, double* c, double* G, double* C,
        double* Hp, double* Z,
        int training)
    cyl_cuda_status cyl_cuda_lstm_backward_f32(
        cyl_cuda_ctx* ctx, int64_t B, int64_t T, int64_t I, int64_t H,
        const float* x, const float* W, const float* U, const float* c0,
        const int64_t* lengths, int64_t max_len, int reverse, const float* rmask,
        float* G, const float* C, const float* Hp, const float* dy,
        float* dh, float* dc, float* D, float* dHp,
        float* dx, float* dW, float* dU, float* db)
    cyl_cuda_status cyl_cuda_lstm_backward_f64(
        cyl_cuda_ctx* ctx, int64_t B, int64_t T, int64_t I, int64_t H,
        const double* x, const double* W, const double* U, const double* c0,
        const int64_t* lengths, int64_t max_len, int reverse, const double* rmask,
        double* G, const double* C, const double* Hp, const double* dy,
        double* dh, double* dc, double* D, double* dHp,
        double* dx, double* dW, double* dU, double* db)


try:  # one exception class for the whole backend
    from cylstm.cuda import CudaError
except ImportError:  # built and loaded outside the package (tests of the build)
    class CudaError(RuntimeError):
        """A CUDA runtime or cuBLAS call of the backend failed (the message says which)."""


_STATUS = {1: "CUDA error", 2: "cuBLAS error", 3: "invalid argument", 4: "no CUDA device"}
_DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int64))


def device_count():
    """(number of visible CUDA devices, reason when there are none)."""
    cdef int n = 0
    cdef char msg[512]
    msg[0] = 0
    cyl_cuda_device_count(&n, msg, sizeof(msg))
    return n, msg.decode("utf-8", "replace")


cdef class Context:
    """A CUDA device with its own stream and cuBLAS handle."""
    cdef cyl_cuda_ctx* ctx
    cdef readonly int device

    def __cinit__(self, int device=0):
        cdef char msg[1024]
        cdef cyl_cuda_status st
        msg[0] = 0
        self.ctx = NULL
        self.device = device
        with nogil:
            st = cyl_cuda_create(device, &self.ctx, msg, sizeof(msg))
        if st != 0:
            raise CudaError(f"cylstm.cuda: cannot use CUDA device {device}: "
                            f"{msg.decode('utf-8', 'replace')}")

    def __dealloc__(self):
        if self.ctx != NULL:
            cyl_cuda_destroy(self.ctx)
            self.ctx = NULL

    cdef int check(self, cyl_cuda_status st, str what) except -1:
        if st != 0:
            text = cyl_cuda_last_error(self.ctx).decode("utf-8", "replace")
            raise CudaError(f"cylstm.cuda {what}: {_STATUS.get(st, st)}: {text}")
        return 0

    @property
    def name(self):
        cdef char buf[256]
        buf[0] = 0
        self.check(cyl_cuda_device_name(self.ctx, buf, sizeof(buf)), "device_name")
        return buf.decode("utf-8", "replace")

    def set_tf32(self, bint enable):
        """Let float32 GEMMs use TF32 tensor cores (faster, ~1e-3 relative error)."""
        self.check(cyl_cuda_set_tf32(self.ctx, enable), "set_tf32")

    def set_fused_max_units(self, int64_t n):
        """Layers with at most ``n`` units run the time loop in one kernel (0: never)."""
        self.check(cyl_cuda_set_fused_max_units(self.ctx, n), "set_fused_max_units")

    def set_bwd_kernel_max_batch(self, int64_t n):
        """Backward of the per-step path: batches of at most ``n`` (capped at 16) run
        dh_prev = dz @ U^T in the backend's kernel, larger ones on cuBLAS (0: always)."""
        self.check(cyl_cuda_set_bwd_kernel_max_batch(self.ctx, n), "set_bwd_kernel_max_batch")

    def synchronize(self):
        """Wait for all queued work; raises the error of any failed kernel."""
        cdef cyl_cuda_status st
        with nogil:
            st = cyl_cuda_synchronize(self.ctx)
        self.check(st, "synchronize")


cdef class DeviceArray:
    """One C-contiguous array in device memory (float32, float64 or int64).

    Create with ``DeviceArray.empty(ctx, shape, dtype)``, ``.zeros(...)`` or
    ``.from_host(ctx, ndarray)``; read back with ``.to_host()``.  Freed (stream-ordered)
    when the object is collected.
    """
    cdef readonly Context ctx
    cdef void* data
    cdef readonly tuple shape
    cdef readonly object dtype
    cdef readonly size_t nbytes

    def __cinit__(self, Context ctx, shape, dtype):
        cdef cyl_cuda_status st
        cdef void* p = NULL
        cdef size_t nbytes
        cdef Py_ssize_t n = 1, d
        self.data = NULL
        self.ctx = ctx
        self.shape = tuple([int(d) for d in shape])
        self.dtype = np.dtype(dtype)
        if self.dtype not in _DTYPES:
            raise TypeError(f"DeviceArray dtype must be float32, float64 or int64; "
                            f"got {self.dtype}")
        for d in self.shape:  # (not np.prod: this runs ~10 times per LSTM call)
            if d < 0:
                raise ValueError(f"DeviceArray shape must be non-negative; got {self.shape}")
            n *= d
        nbytes = <size_t> n * <size_t> self.dtype.itemsize
        self.nbytes = nbytes
        with nogil:
            st = cyl_cuda_malloc(ctx.ctx, &p, nbytes)
        ctx.check(st, f"malloc of {nbytes} bytes")
        self.data = p

    def __dealloc__(self):
        if self.data != NULL and self.ctx is not None:
            # errors here (e.g. the driver already shut down at exit) cannot be raised
            cyl_cuda_free(self.ctx.ctx, self.data)
            self.data = NULL

    @staticmethod
    def empty(Context ctx, shape, dtype):
        return DeviceArray(ctx, shape, dtype)

    @staticmethod
    def zeros(Context ctx, shape, dtype):
        a = DeviceArray(ctx, shape, dtype)
        a.zero_()
        return a

    @staticmethod
    def from_host(Context ctx, arr):
        arr = np.ascontiguousarray(arr)
        a = DeviceArray(ctx, arr.shape, arr.dtype)
        a.copy_from_host(arr)
        return a

    @property
    def ptr(self):
        return <size_t> self.data

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def size(self):
        return self.nbytes // self.dtype.itemsize

    def __repr__(self):
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype}, device={self.ctx.device})"

    def zero_(self):
        self.ctx.check(cyl_cuda_memset0(self.ctx.ctx, self.data, self.nbytes), "memset")
        return self

    def copy_from_host(self, arr):
        """Copy a host array of the same shape and dtype into this array."""
        cdef cyl_cuda_status st
        cdef const unsigned char[::1] view
        arr = np.ascontiguousarray(arr)
        if arr.shape != self.shape or arr.dtype != self.dtype:
            raise ValueError(f"copy_from_host: expected {self.shape} {self.dtype}; "
                             f"got {arr.shape} {arr.dtype}")
        if self.nbytes == 0:
            return self
        view = arr.reshape(-1).view(np.uint8)
        with nogil:
            st = cyl_cuda_h2d(self.ctx.ctx, self.data, &view[0], self.nbytes)
        self.ctx.check(st, "host-to-device copy")
        return self

    def copy_from(self, DeviceArray other):
        """Device-to-device copy from an array of the same shape and dtype."""
        if other.shape != self.shape or other.dtype != self.dtype:
            raise ValueError(f"copy_from: expected {self.shape} {self.dtype}; "
                             f"got {other.shape} {other.dtype}")
        self.ctx.check(cyl_cuda_d2d(self.ctx.ctx, self.data, other.data, self.nbytes),
                       "device-to-device copy")
        return self

    def to_host(self, out=None):
        """Copy to a new (or the given C-contiguous) host array; synchronizes.

        One cudaMemcpy straight into ``out``.  Give ``out`` an array already in use
        (e.g. a model's gradient buffer) where you can: writing freshly allocated host
        memory costs page faults on top of the copy.
        """
        cdef cyl_cuda_status st
        cdef unsigned char[::1] view
        cdef void* dst
        if out is None:
            out = np.empty(self.shape, self.dtype)
        elif (not isinstance(out, np.ndarray) or out.shape != self.shape
              or out.dtype != self.dtype or not out.flags.c_contiguous
              or not out.flags.writeable):
            raise ValueError(f"to_host: out must be a writeable C-contiguous {self.shape} "
                             f"{self.dtype} array")
        if self.nbytes == 0:
            return out
        view = out.reshape(-1).view(np.uint8)
        dst = &view[0]
        with nogil:
            st = cyl_cuda_d2h(self.ctx.ctx, dst, self.data, self.nbytes)
        self.ctx.check(st, "device-to-host copy")
        return out


cdef inline void* _p(DeviceArray a):
    return NULL if a is None else a.data


cdef int _want(DeviceArray a, str name, tuple shape, object dtype,
               bint optional=False) except -1:
    if a is None:
        if optional:
            return 0
        raise ValueError(f"{name} is required")
    if a.shape != shape or a.dtype != dtype:
        raise ValueError(f"{name} must be a {shape} {dtype} device array; "
                         f"got {a.shape} {a.dtype}")
    return 0


def forward(Context ctx, DeviceArray x, DeviceArray W, DeviceArray U, DeviceArray bias,
            DeviceArray lengths, int64_t max_len, bint reverse, DeviceArray rmask,
            DeviceArray hm, DeviceArray y, DeviceArray h, DeviceArray c, DeviceArray G,
            DeviceArray C, DeviceArray Hp,
            DeviceArray Z, bint training):
    """Run cyl_cuda_lstm_forward_{f32,f64}; see include/cylstm_cuda.h."""
    cdef int64_t B, T, I, H
    cdef cyl_cuda_status st
    cdef cyl_cuda_ctx* cx = ctx.ctx
    cdef const int64_t* lp
    if x is None or x.ndim != 3 or U is None or U.ndim != 2:
        raise ValueError("forward: x must be (B, T, I) and U (H, 4H) device arrays")
    B, T, I = x.shape
    H = U.shape[0]
    dt = x.dtype
    if dt == np.int64:
        raise TypeError("forward: x must be float32 or float64")
    _want(W, "W", (I, 4 * H), dt)
    _want(U, "U", (H, 4 * H), dt)
    _want(bias, "bias", (4 * H,), dt)
    _want(lengths, "lengths", (B,), np.dtype(np.int64), True)
    _want(rmask, "rmask", (B, H), dt, True)
    _want(hm, "hm", (B, H), dt, rmask is None)
    _want(y, "y", (B, T, H), dt, True)
    _want(h, "h", (B, H), dt)
    _want(c, "c", (B, H), dt)
    _want(G, "G", (B, T, 4 * H), dt)
    _want(C, "C", (B, T, H), dt, not training)
    _want(Hp, "Hp", (B, T, H), dt, not training)
    _want(Z, "Z", (B, 4 * H), dt)
    lp = <const int64_t*> _p(lengths)
    cdef bint f32 = dt == np.float32
    cdef void* px = _p(x)
    cdef void* pW = _p(W)
    cdef void* pU = _p(U)
    cdef void* pb = _p(bias)
    cdef void* prm = _p(rmask)
    cdef void* phm = _p(hm)
    cdef void* py = _p(y)
    cdef void* ph = _p(h)
    cdef void* pc = _p(c)
    cdef void* pG = _p(G)
    cdef void* pC = _p(C) if training else NULL
    cdef void* pHp = _p(Hp) if training else NULL
    cdef void* pZ = _p(Z)
    with nogil:
        if f32:
            st = cyl_cuda_lstm_forward_f32(
                cx, B, T, I, H, <const float*> px, <const float*> pW, <const float*> pU,
                <const float*> pb, lp, max_len, reverse, <const float*> prm, <float*> phm,
                <float*> py, <float*> ph, <float*> pc, <float*> pG, <float*> pC, <float*> pHp,
                <float*> pZ, training)
        else:
            st = cyl_cuda_lstm_forward_f64(
                cx, B, T, I, H, <const double*> px, <const double*> pW, <const double*> pU,
                <const double*> pb, lp, max_len, reverse, <const double*> prm, <double*> phm,
                <double*> py, <double*> ph, <double*> pc, <double*> pG, <double*> pC,
                <double*> pHp, <double*> pZ, training)
    ctx.check(st, "lstm forward")


def backward(Context ctx, DeviceArray x, DeviceArray W, DeviceArray U, DeviceArray c0,
             DeviceArray lengths, int64_t max_len, bint reverse, DeviceArray rmask,
             DeviceArray G, DeviceArray C, DeviceArray Hp, DeviceArray dy, DeviceArray dh,
             DeviceArray dc, DeviceArray D, DeviceArray dHp, DeviceArray dx,
             DeviceArray dW, DeviceArray dU, DeviceArray db):
    """Run cyl_cuda_lstm_backward_{f32,f64}; see include/cylstm_cuda.h."""
    cdef int64_t B, T, I, H
    cdef cyl_cuda_status st
    cdef cyl_cuda_ctx* cx = ctx.ctx
    cdef const int64_t* lp
    if x is None or x.ndim != 3 or U is None or U.ndim != 2:
        raise ValueError("backward: x must be (B, T, I) and U (H, 4H) device arrays")
    B, T, I = x.shape
    H = U.shape[0]
    dt = x.dtype
    if dt == np.int64:
        raise TypeError("backward: x must be float32 or float64")
    _want(W, "W", (I, 4 * H), dt)
    _want(U, "U", (H, 4 * H), dt)
    _want(c0, "c0", (B, H), dt)
    _want(lengths, "lengths", (B,), np.dtype(np.int64), True)
    _want(rmask, "rmask", (B, H), dt, True)
    _want(G, "G", (B, T, 4 * H), dt)
    _want(C, "C", (B, T, H), dt)
    _want(Hp, "Hp", (B, T, H), dt)
    _want(dy, "dy", (B, T, H), dt, True)
    _want(dh, "dh", (B, H), dt)
    _want(dc, "dc", (B, H), dt)
    _want(D, "D", (B, 4 * H), dt)
    _want(dHp, "dHp", (B, H), dt)
    _want(dx, "dx", (B, T, I), dt, True)
    _want(dW, "dW", (I, 4 * H), dt)
    _want(dU, "dU", (H, 4 * H), dt)
    _want(db, "db", (4 * H,), dt)
    lp = <const int64_t*> _p(lengths)
    cdef bint f32 = dt == np.float32
    cdef void* px = _p(x)
    cdef void* pW = _p(W)
    cdef void* pU = _p(U)
    cdef void* pc0 = _p(c0)
    cdef void* prm = _p(rmask)
    cdef void* pG = _p(G)
    cdef void* pC = _p(C)
    cdef void* pHp = _p(Hp)
    cdef void* pdy = _p(dy)
    cdef void* pdh = _p(dh)
    cdef void* pdc = _p(dc)
    cdef void* pD = _p(D)
    cdef void* pdHp = _p(dHp)
    cdef void* pdx = _p(dx)
    cdef void* pdW = _p(dW)
    cdef void* pdU = _p(dU)
    cdef void* pdb = _p(db)
    with nogil:
        if f32:
            st = cyl_cuda_lstm_backward_f32(
                cx, B, T, I, H, <const float*> px, <const float*> pW, <const float*> pU,
                <const float*> pc0, lp, max_len, reverse, <const float*> prm,
                <float*> pG, <const float*> pC, <const float*> pHp, <const float*> pdy,
                <float*> pdh, <float*> pdc,
                <float*> pD, <float*> pdHp, <float*> pdx, <float*> pdW, <float*> pdU,
                <float*> pdb)
        else:
            st = cyl_cuda_lstm_backward_f64(
                cx, B, T, I, H, <const double*> px, <const double*> pW, <const double*> pU,
                <const double*> pc0, lp, max_len, reverse, <const double*> prm,
                <double*> pG, <const double*> pC, <const double*> pHp, <const double*> pdy,
                <double*> pdh, <double*> pdc,
                <double*> pD, <double*> pdHp, <double*> pdx, <double*> pdW, <double*> pdU,
                <double*> pdb)
    ctx.check(st, "lstm backward")
