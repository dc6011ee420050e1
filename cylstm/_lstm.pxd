# cython: language_level=3
"""What _lstm.pyx shares with the other extensions at C level."""


cdef void set_blas_threads(int n) noexcept nogil
