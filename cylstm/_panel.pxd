# cython: language_level=3
"""The packed-panel kernel of include/cylstm_panel.h, declared once for the
streaming runner (_stream.pyx) and the sequence kernels (_lstm.pyx)."""
from libc.stdint cimport int8_t, int16_t, uint16_t


cdef extern from "cylstm_panel.h" nogil:
    void cyl_panel_next_f32(const float* P, Py_ssize_t w, Py_ssize_t nrows,
                            const float* a0, Py_ssize_t ka, Py_ssize_t lda,
                            const float* b0, Py_ssize_t kb, Py_ssize_t ldb,
                            float* z0, Py_ssize_t ldz, const void* next) noexcept
    void cyl_panel_next_f64(const double* P, Py_ssize_t w, Py_ssize_t nrows,
                            const double* a0, Py_ssize_t ka, Py_ssize_t lda,
                            const double* b0, Py_ssize_t kb, Py_ssize_t ldb,
                            double* z0, Py_ssize_t ldz, const void* next) noexcept
    void cyl_panel_bf16(const uint16_t* P, Py_ssize_t w, Py_ssize_t nrows,
                        const float* a0, Py_ssize_t ka, Py_ssize_t lda,
                        const float* b0, Py_ssize_t kb, Py_ssize_t ldb,
                        float* z0, Py_ssize_t ldz) noexcept
    void cyl_panel_i8(const int8_t* P, const float* sa, const float* sb,
                      Py_ssize_t w, Py_ssize_t nrows, const int16_t* aq,
                      Py_ssize_t ka2, const float* ra, const int16_t* bq,
                      Py_ssize_t kb2, const float* rb, float* z0,
                      Py_ssize_t ldz) noexcept
    float cyl_i8q_qmax(Py_ssize_t K2) noexcept
    void cyl_i8q_quantize(const float* x, Py_ssize_t nrows, Py_ssize_t n, Py_ssize_t ld,
                          Py_ssize_t n2, float qmax, int16_t* q, float* scale) noexcept
    const char* CYL_STREAM_CLONES_NAME
    void cyl_stream_barrier() noexcept
    int cyl_stream_team_size() noexcept
    int CYL_STREAM_VLF
    int CYL_STREAM_VLD
