# cython: language_level=3
"""The ISA level of include/cylstm_cpu.h, declared once.  Every extension that
runs kernels (_lstm, _stream) cimports it and exposes ``_force_cpu_level`` and
``_cpu_levels``, because each holds its own copy of the level; cylstm._cpu
drives them all together."""


cdef extern from "cylstm_cpu.h" nogil:
    int cyl_cpu_level() noexcept            # the level the kernels run now
    int cyl_cpu_detected_level() noexcept   # the level the CPU has
    int cyl_cpu_force(int level) noexcept   # -1: no override; returns the previous one
    int CYL_ISA_VARIANTS                    # 1: kernels built per level, 0: built once
    unsigned cyl_ftz_begin() noexcept       # flush subnormals in this thread; returns the old mode
    void cyl_ftz_end(unsigned old) noexcept
