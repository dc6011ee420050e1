# cython: language_level=3
"""What _lstm.pyx shares with the other extensions at C level."""


cdef void set_blas_threads(int n) noexcept nogil
from libc.stdint cimport int64_t

# The worker pool (include/cylstm_pool.h, held by this extension only: its state is
# static, one pool per process), for the streaming runner's pooled block
ctypedef void (*pool_fn)(void* arg, int tid) noexcept nogil
cdef void pool_run(pool_fn fn, void* arg, int n_threads) noexcept nogil
cdef void pool_run_small(pool_fn fn, void* arg, int n_threads) noexcept nogil
cdef bint pool_small_alone(int n_threads) noexcept nogil
cdef void pool_small_alone_end() noexcept nogil
cdef bint pool_workers_awake(int n_threads) noexcept nogil
cdef int64_t pool_now_ns() noexcept nogil
cdef bint pool_claim(int64_t* flag) noexcept nogil
cdef void pool_claim_done(int64_t* flag) noexcept nogil
cdef void pool_claim_wait(int64_t* flag) noexcept nogil
cdef int64_t pool_load(const int64_t* word) noexcept nogil
cdef void pool_release() noexcept nogil
cdef bint pool_acquire() noexcept nogil
cdef bint pool_job_open() noexcept nogil
cdef void pool_tick_set(int64_t v) noexcept nogil
cdef int64_t pool_tick_get() noexcept nogil
cdef void pool_relax() noexcept nogil
