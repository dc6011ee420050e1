# cython: language_level=3
"""The LSTM cell, written once.  Forward, backward and the streaming step use
these inline functions; nothing else in cylstm computes gate math.

Notation (used in comments throughout the kernels, the NumPy reference in
tests/reference.py and the docs).  We are at one time step of one sample:

    x_t      input, (I,)            h_prev, c_prev  state before the step, (H,)
    z        gate pre-activations, (4H,) = x_t @ W + h_prev @ U + b,
             laid out as four blocks [i | f | g | o] of H each (Keras order
             i, f, c, o; PyTorch calls the c block g)
    i = sigmoid(z_i)   f = sigmoid(z_f)   g = tanh(z_g)   o = sigmoid(z_o)
    c = f * c_prev + i * g
    h = o * tanh(c)

Backward, given dh (dL/dh, from the output and from the next step) and dc
(dL/dc from the next step), numbered as in tests/reference.py:

    (B1) tc = tanh(c)
    (B2) do = dh * tc
    (B3) dc = dc + dh * o * (1 - tc^2)
    (B4) di = dc * g,  dg = dc * i,  df = dc * c_prev
    (B5) dc_prev = dc * f
    (B6) dz_i = di i (1 - i),  dz_f = df f (1 - f),  dz_g = dg (1 - g^2),
         dz_o = do o (1 - o)
    (B7) dh_prev = dz @ U^T  (a GEMM, in the kernel, not here)
    (B8) dW = sum_t x_t^T dz_t,  dU = sum_t h_prev^T dz_t,  db = sum_t dz_t
         (GEMMs over all steps, after the time loop)
"""
from cython cimport floating


cdef extern from "cylstm_math.h" nogil:
    float cyl_sigmoidf(float x) noexcept
    float cyl_tanhf(float x) noexcept
    double cyl_sigmoid(double x) noexcept
    double cyl_tanh(double x) noexcept
    float cyl_bf16_roundf(float x) noexcept

cdef extern from "cylstm_cell.h" nogil:
    # The loops live in C (include/cylstm_cell.h) so that they vectorize and
    # get per-ISA clones; these declarations are their only doorway.
    void cyl_cell_forward_f32(Py_ssize_t H, Py_ssize_t gs, const float* za, const float* zb,
                              Py_ssize_t gzb,
                              const float* bias, const float* c_prev, float* gates,
                              float* c_out, float* h_out) noexcept
    void cyl_cell_forward_f64(Py_ssize_t H, Py_ssize_t gs, const double* za, const double* zb,
                              Py_ssize_t gzb,
                              const double* bias, const double* c_prev, double* gates,
                              double* c_out, double* h_out) noexcept
    void cyl_cell_rows_f32(Py_ssize_t hb, Py_ssize_t hp, Py_ssize_t nrows, float* z,
                           Py_ssize_t zs, const float* bias, float* c, float* h,
                           Py_ssize_t ldc) noexcept
    void cyl_cell_panels_f32(Py_ssize_t hb, Py_ssize_t hp, Py_ssize_t npanels, float* g,
                             const float* zb, const float* bias, float* c,
                             float* h) noexcept
    void cyl_cell_backward_f32(Py_ssize_t H, Py_ssize_t gs, const float* gates, const float* c,
                               const float* c_prev, const float* dh, float* dc,
                               float* dz) noexcept
    void cyl_cell_backward_f64(Py_ssize_t H, Py_ssize_t gs, const double* gates, const double* c,
                               const double* c_prev, const double* dh, double* dc,
                               double* dz) noexcept


cdef inline floating sigmoid(floating x) noexcept nogil:
    if floating is float:
        return cyl_sigmoidf(x)
    else:
        return cyl_sigmoid(x)


cdef inline floating tanh_(floating x) noexcept nogil:
    if floating is float:
        return cyl_tanhf(x)
    else:
        return cyl_tanh(x)


cdef inline floating bf16_round(floating x) noexcept nogil:
    """``x`` rounded to bfloat16 (nearest even), kept as float32: the mixed_bfloat16
    policy's operands (include/cylstm_math.h).  float32 only: a float64 call gets
    ``x`` back, and the kernels' wrappers refuse bfloat16 products on float64."""
    if floating is float:
        return cyl_bf16_roundf(x)
    else:
        return x


cdef inline void cell_forward(Py_ssize_t H, const floating* za,
                              const floating* zb, const floating* bias,
                              const floating* c_prev, floating* gates,
                              floating* c_out, floating* h_out) noexcept nogil:
    """One step of one sample.

    z = za + zb + bias (each 4H; ``zb`` may be NULL).  Writes the activated
    gates [i|f|g|o] to ``gates`` (4H; may alias ``za``: each element is read
    before it is written), the new cell to ``c_out`` (H; may alias ``c_prev``)
    and the new hidden state to ``h_out`` (H).
    """
    if floating is float:
        cyl_cell_forward_f32(H, H, za, zb, H, bias, c_prev, gates, c_out, h_out)
    else:
        cyl_cell_forward_f64(H, H, za, zb, H, bias, c_prev, gates, c_out, h_out)


cdef inline void cell_forward_units(Py_ssize_t n, Py_ssize_t gs, const floating* za,
                                    const floating* zb, Py_ssize_t gzb,
                                    const floating* bias, const floating* c_prev,
                                    floating* gates, floating* c_out,
                                    floating* h_out) noexcept nogil:
    """:func:`cell_forward` for ``n`` units of a wider layer.

    ``za``, ``bias`` and ``gates`` point at the first unit's i-gate entry with
    their gate blocks ``gs`` apart (the layer's width); ``zb`` (may be NULL)
    has its blocks ``gzb`` apart (``n`` for a packed panel's product).
    ``c_prev``, ``c_out``, ``h_out`` point at the first unit.
    """
    if floating is float:
        cyl_cell_forward_f32(n, gs, za, zb, gzb, bias, c_prev, gates, c_out, h_out)
    else:
        cyl_cell_forward_f64(n, gs, za, zb, gzb, bias, c_prev, gates, c_out, h_out)


cdef inline void cell_forward_rows(Py_ssize_t hb, Py_ssize_t hp, Py_ssize_t nrows,
                                   floating* z, Py_ssize_t zs, const floating* bias,
                                   floating* c, floating* h,
                                   Py_ssize_t ldc) noexcept nogil:
    """:func:`cell_forward_units` on ``nrows`` rows of one packed panel's products:
    row r's ``hb`` units at ``z + r zs`` (gate blocks ``hp`` apart; the gates
    overwrite them), its cell and hidden state at ``c + r ldc`` and ``h + r ldc``
    (the cell in place).  The same bits as one call per row, in fewer calls
    whose passes run over all the rows (include/cylstm_cell.h)."""
    cdef Py_ssize_t r
    if floating is float:
        cyl_cell_rows_f32(hb, hp, nrows, z, zs, bias, c, h, ldc)
    else:
        for r in range(nrows):
            cyl_cell_forward_f64(hb, hp, z + r * zs, NULL, hp, bias, c + r * ldc,
                                 z + r * zs, c + r * ldc, h + r * ldc)


cdef inline void cell_backward(Py_ssize_t H, const floating* gates,
                               const floating* c, const floating* c_prev,
                               const floating* dh, floating* dc,
                               floating* dz) noexcept nogil:
    """Steps (B1)-(B6) for one sample.

    ``gates`` are the activated [i|f|g|o] of the forward step, ``c`` its new
    cell, ``c_prev`` the cell before it, ``dh`` the total gradient reaching h.
    ``dc`` holds dL/dc from the next step on entry and dL/dc_prev on exit.
    Writes dL/dz to ``dz`` (4H; may alias ``gates``).
    """
    cell_backward_units(H, H, gates, c, c_prev, dh, dc, dz)


cdef inline void cell_backward_units(Py_ssize_t n, Py_ssize_t gs, const floating* gates,
                                     const floating* c, const floating* c_prev,
                                     const floating* dh, floating* dc,
                                     floating* dz) noexcept nogil:
    """:func:`cell_backward` for ``n`` units of a row whose gate blocks (of
    ``gates`` and ``dz``) are ``gs`` apart: units [u, u + n) of a sample are
    ``cell_backward_units(n, H, gates + u, c + u, ...)``, the same bits as that
    sample's whole-row call (each unit on its own, the same operations)."""
    if floating is float:
        cyl_cell_backward_f32(n, gs, gates, c, c_prev, dh, dc, dz)
    else:
        cyl_cell_backward_f64(n, gs, gates, c, c_prev, dh, dc, dz)
