# cython: language_level=3
"""The packed panels, for the streaming runner (_stream.pyx) and the sequence
kernels (_lstm.pyx) alike: the kernels of include/cylstm_panel.h, the panel
geometry, and the one product call both make.  The packers are in _lstm.pyx."""
from cython cimport floating
from libc.stdint cimport int8_t, int16_t, int64_t, uint16_t

from cylstm._cell cimport cell_forward_rows, cell_forward_units


cdef extern from "cylstm_panel.h" nogil:
    int cyl_panel_set_pf_rest(int on) noexcept
    void cyl_pack_t_f32(const float* src, Py_ssize_t sn, Py_ssize_t w, Py_ssize_t k0,
                        Py_ssize_t k1, float* dst, Py_ssize_t wp) noexcept
    int cyl_panel_set_pf_spread(int n) noexcept
    int cyl_panel_set_block_rows(int on) noexcept
    Py_ssize_t cyl_panel_set_kblock(Py_ssize_t nbytes) noexcept
    Py_ssize_t cyl_panel_get_kblock() noexcept
    Py_ssize_t cyl_panel_set_stream_min(Py_ssize_t nbytes) noexcept
    Py_ssize_t cyl_panel_get_stream_min() noexcept
    void cyl_panel_next_f32(const float* P, Py_ssize_t w, Py_ssize_t nrows,
                            const float* a0, Py_ssize_t ka, Py_ssize_t lda,
                            const float* b0, Py_ssize_t kb, Py_ssize_t ldb,
                            float* z0, Py_ssize_t ldz, const void* next,
                            int whole) noexcept
    void cyl_panel_next_f64(const double* P, Py_ssize_t w, Py_ssize_t nrows,
                            const double* a0, Py_ssize_t ka, Py_ssize_t lda,
                            const double* b0, Py_ssize_t kb, Py_ssize_t ldb,
                            double* z0, Py_ssize_t ldz, const void* next,
                            int whole) noexcept
    void cyl_panel_bf16(const uint16_t* P, Py_ssize_t w, Py_ssize_t nrows,
                        const float* a0, Py_ssize_t ka, Py_ssize_t lda,
                        const float* b0, Py_ssize_t kb, Py_ssize_t ldb,
                        float* z0, Py_ssize_t ldz) noexcept
    void cyl_panel_i8(const int8_t* P, const float* sa, const float* sb,
                      Py_ssize_t w, Py_ssize_t nrows, const int16_t* aq,
                      Py_ssize_t ka2, const float* ra, const int16_t* bq,
                      Py_ssize_t kb2, const float* rb, float* z0,
                      Py_ssize_t ldz) noexcept
    void cyl_panel_i8_b(const int8_t* P, const float* sb, Py_ssize_t w, Py_ssize_t nrows,
                        Py_ssize_t ka2, const int16_t* bq, Py_ssize_t kb2, const float* rb,
                        float* z0, Py_ssize_t ldz) noexcept
    int cyl_i8q_allow_vnni(int allowed) noexcept   # tests: 0, the AVX-512 body without VNNI
    float cyl_i8q_qmax(Py_ssize_t K2) noexcept
    void cyl_i8q_quantize(const float* x, Py_ssize_t nrows, Py_ssize_t n, Py_ssize_t ld,
                          Py_ssize_t n2, float qmax, int16_t* q, float* scale) noexcept
    const char* CYL_STREAM_CLONES_NAME
    void cyl_stream_barrier() noexcept
    int cyl_stream_team_size() noexcept
    int CYL_STREAM_VLF
    int CYL_STREAM_VLD


cdef enum:
    # LSTM units per packed panel: a panel's 4 gate blocks are one 64-byte vector
    # wide each (cylstm._lstm.PANEL_UNITS_F32 / _F64 from Python)
    PANEL_UNITS_F32_C = 16
    PANEL_UNITS_F64_C = 8


cdef inline Py_ssize_t panel_span(floating* kind) noexcept nogil:
    """LSTM units per panel for the element type of ``kind`` (never read)."""
    if floating is float:
        return PANEL_UNITS_F32_C
    else:
        return PANEL_UNITS_F64_C


cdef inline Py_ssize_t panel_vlen(floating* kind) noexcept nogil:
    """Elements per 64-byte vector of the layout."""
    if floating is float:
        return CYL_STREAM_VLF
    else:
        return CYL_STREAM_VLD


cdef inline Py_ssize_t padded_units(Py_ssize_t hb, Py_ssize_t vl) noexcept nogil:
    """Units a panel of hb units is stored as: a multiple of vl / 4, so that its
    width 4 * hb_pad is whole vectors (zero columns past hb)."""
    cdef Py_ssize_t q = vl // 4
    return ((hb + q - 1) // q) * q


cdef inline void panel_product(const floating* P, Py_ssize_t w, Py_ssize_t nrows,
                               const floating* a, Py_ssize_t ka, Py_ssize_t lda,
                               const floating* b, Py_ssize_t kb, Py_ssize_t ldb,
                               floating* z, Py_ssize_t ldz, const void* next,
                               bint whole=False) noexcept nogil:
    """z (nrows, w; rows ldz apart) = [a (nrows, ka), b (nrows, kb)] @ the panel P
    (K = ka + kb rows, w columns: whole vectors); kb may be 0.  ``next``: the
    panel the caller reads after this one, or NULL (the kernel may prefetch it).
    ``whole``: no K blocks (each z element stored once, final), for a product
    that another thread may redo into the same z at the same time."""
    if floating is float:
        cyl_panel_next_f32(P, w, nrows, a, ka, lda, b, kb, ldb, z, ldz, next, whole)
    else:
        cyl_panel_next_f64(P, w, nrows, a, ka, lda, b, kb, ldb, z, ldz, next, whole)


cdef inline void panel_cells(Py_ssize_t hb, Py_ssize_t hp, Py_ssize_t nrows,
                             floating* z, const floating* bias, floating* c,
                             floating* h, Py_ssize_t H, const int64_t* lengths,
                             Py_ssize_t s) noexcept nogil:
    """The cell on one panel's products, the second half of a panel step: z
    (nrows, 4 hp; the panel's hb units stored as hp) holds [x_t, h_prev] @ panel
    and gets the activated gates; c and h (rows H apart, at the panel's first
    unit) the new cell and hidden state.  ``bias``: the panel's (4 hp).  Rows with
    lengths[r] <= s are skipped (finished; lengths NULL: none)."""
    cdef Py_ssize_t r, w = 4 * hp
    if lengths == NULL:
        cell_forward_rows(hb, hp, nrows, z, w, bias, c, h, H)
        return
    for r in range(nrows):
        if s >= lengths[r]:
            continue
        cell_forward_units(hb, hp, z + r * w, NULL, hp, bias, c + r * H, z + r * w,
                           c + r * H, h + r * H)


cdef inline const void* stream_next(const void* nxt, Py_ssize_t nbytes) noexcept nogil:
    """``nxt`` (the panel a product reads next, for the kernel to stream in) where
    the weights the products walk over (``nbytes``) pass cyl_panel_get_stream_min
    (a core's L2), else NULL (include/cylstm_panel.h)."""
    return nxt if nbytes > cyl_panel_get_stream_min() else NULL
