"""OpenMP, where the build has it: one shim so the rest of cylstm never writes
``#ifdef _OPENMP``.  A build without OpenMP runs every ``prange`` serially."""

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define CYLSTM_OPENMP_ENABLED 1
    static int cylstm_omp_max_threads(void) { return omp_get_max_threads(); }
    static int cylstm_omp_num_procs(void) { return omp_get_num_procs(); }
    #else
    #define CYLSTM_OPENMP_ENABLED 0
    static int cylstm_omp_max_threads(void) { return 1; }
    static int cylstm_omp_num_procs(void) { return 1; }
    #endif
    """
    int CYLSTM_OPENMP_ENABLED
    int cylstm_omp_max_threads() noexcept nogil
    int cylstm_omp_num_procs() noexcept nogil


def openmp_enabled():
    """True when the extensions were compiled with OpenMP."""
    return bool(CYLSTM_OPENMP_ENABLED)


def omp_max_threads():
    """OpenMP's default team size (honours ``OMP_NUM_THREADS``); 1 without OpenMP."""
    return cylstm_omp_max_threads()
