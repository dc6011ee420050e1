"""Fused optimizer updates: one pass over the flat parameter vector.

Each update reads a gradient element once and writes its parameter and slots
once: gradient clipping (a per-segment scale from ``clipnorm`` or
``global_clipnorm``, then ``clipvalue``), decoupled weight decay and the update
rule all happen in registers.  :func:`grad_sumsq` is the read-only pass before
it: per-segment sums of squares (for the clip norms) and a NaN/inf check, so a
bad gradient is refused before anything is written.

Layout: ``p``, ``g`` and the slots are 1-D C-contiguous arrays of one size and
dtype (float32 or float64); ``seg`` is an (S, 2) int64 array of (start, stop)
offsets tiling ``[0, n)`` (one per weight tensor), ``scale`` its (S,) clip
factors.  Formulas are Keras 3's; see ``cylstm/optimizers.py``, whose NumPy path
is the reference these kernels are tested against.

Threads: with ``n_threads > 1`` the vector is cut into ``n_threads`` contiguous
chunks, one per thread (``schedule='static'``); the caller (optimizers.py) asks
for more than one thread only for vectors large enough to pay for the team.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt, sqrtf
from libc.stdint cimport int64_t

import numpy as np


cdef inline floating _sqrt(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline floating _clipped(floating g, double scale, double clipvalue) noexcept nogil:
    """The clipped gradient ``clip(g * scale, -clipvalue, clipvalue)``.

    ``clipvalue`` is +inf when clipping by value is off and ``scale`` 1.0 when no
    norm clipping applies, so there is no branch to stop the loops vectorizing.
    The product is formed in double, as the NumPy reference does, so float32
    results agree bit for bit.
    """
    cdef double x = <double> g * scale
    x = x if x < clipvalue else clipvalue
    x = x if x > -clipvalue else -clipvalue
    return <floating> x


# ----------------------------------------------------------------------------- checks
cdef void _sumsq_range(Py_ssize_t lo, Py_ssize_t hi, const floating* g,
                       const int64_t* seg, Py_ssize_t nseg, double* acc) noexcept nogil:
    """acc[k] += sum of g^2 (in double) over segment k within [lo, hi).

    A NaN or inf in g makes the sum NaN or inf, which is how the caller detects
    it (a float32 square cannot overflow a double).  Four accumulators break the
    add chain: without reassociation flags the compiler will not do it for us.
    """
    cdef Py_ssize_t k, i, a, b, b4
    cdef double s0, s1, s2, s3, x0, x1, x2, x3
    for k in range(nseg):
        a = seg[2 * k] if seg[2 * k] > lo else lo
        b = seg[2 * k + 1] if seg[2 * k + 1] < hi else hi
        if a >= b:
            continue
        s0 = s1 = s2 = s3 = 0.0
        b4 = a + (b - a) // 4 * 4
        i = a
        while i < b4:
            x0 = <double> g[i]
            x1 = <double> g[i + 1]
            x2 = <double> g[i + 2]
            x3 = <double> g[i + 3]
            s0 = s0 + x0 * x0
            s1 = s1 + x1 * x1
            s2 = s2 + x2 * x2
            s3 = s3 + x3 * x3
            i = i + 4
        while i < b:
            x0 = <double> g[i]
            s0 = s0 + x0 * x0
            i = i + 1
        acc[k] += (s0 + s1) + (s2 + s3)


def grad_sumsq(const floating[::1] g, const int64_t[:, ::1] seg, double[::1] out,
               int n_threads=1):
    """Per-segment sums of squares of ``g`` into ``out``; return True if ``g`` is all finite."""
    cdef Py_ssize_t n = g.shape[0], nseg = seg.shape[0], c, nchunks
    if seg.shape[1] != 2 or out.shape[0] != nseg:
        raise ValueError(f"seg must be (S, 2) and out (S,); got ({seg.shape[0]}, {seg.shape[1]}), "
                         f"{out.shape[0]}")
    out[:] = 0.0
    if n == 0 or nseg == 0:
        return True
    nchunks = n_threads if 1 < n_threads < n else 1
    partial_arr = np.zeros((nchunks, nseg), dtype=np.float64)
    cdef double[:, ::1] partial = partial_arr
    cdef const floating* gp = &g[0]
    cdef const int64_t* sp = &seg[0, 0]
    with nogil:
        if nchunks == 1:
            _sumsq_range(0, n, gp, sp, nseg, &partial[0, 0])
        else:
            for c in prange(nchunks, num_threads=nchunks, schedule="static"):
                _sumsq_range(c * n // nchunks, (c + 1) * n // nchunks, gp, sp, nseg,
                             &partial[c, 0])
    total = partial_arr.sum(axis=0)
    for c in range(nseg):
        out[c] = total[c]
    if np.isfinite(total).all():
        return True
    # inf/NaN: a bad value, or (float64 only) squares beyond 1e308 from finite values
    return bool(np.isfinite(np.asarray(g)).all())


cdef int _check(Py_ssize_t n, object name, Py_ssize_t size) except -1:
    if size != n:
        raise ValueError(f"{name} has {size} elements; params has {n}")
    return 0


cdef int _check_seg(const int64_t[:, ::1] seg, const double[::1] scale,
                    Py_ssize_t n) except -1:
    cdef Py_ssize_t k, pos = 0
    if seg.shape[1] != 2 or scale.shape[0] != seg.shape[0]:
        raise ValueError(f"seg must be (S, 2) with scale (S,); got seg ({seg.shape[0]}, "
                         f"{seg.shape[1]}), scale ({scale.shape[0]},)")
    for k in range(seg.shape[0]):
        if seg[k, 0] != pos or seg[k, 1] < seg[k, 0]:
            raise ValueError("seg must tile [0, n) in order")
        pos = seg[k, 1]
    if pos != n:
        raise ValueError(f"seg covers [0, {pos}); params has {n} elements")
    return 0


# ----------------------------------------------------------------------------- Adam
cdef void _adam_span(Py_ssize_t a, Py_ssize_t b, floating* p, const floating* g,
                     floating* m, floating* v, floating* vh, double scale, double clipvalue,
                     floating decay, floating alpha, floating one_m_b1, floating one_m_b2,
                     floating eps) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating gi, pi, mi, vi
    if vh == NULL:
        for i in range(a, b):
            gi = _clipped(g[i], scale, clipvalue)
            pi = p[i]
            pi = pi - pi * decay                       # decoupled weight decay first
            mi = m[i] + (gi - m[i]) * one_m_b1         # m += (g - m)(1 - b1)
            vi = v[i] + (gi * gi - v[i]) * one_m_b2    # v += (g^2 - v)(1 - b2)
            m[i] = mi
            v[i] = vi
            p[i] = pi - mi * alpha / (_sqrt(vi) + eps)  # alpha = lr sqrt(1-b2^t)/(1-b1^t)
    else:
        for i in range(a, b):                          # amsgrad: vhat = max(vhat, v)
            gi = _clipped(g[i], scale, clipvalue)
            pi = p[i]
            pi = pi - pi * decay
            mi = m[i] + (gi - m[i]) * one_m_b1
            vi = v[i] + (gi * gi - v[i]) * one_m_b2
            m[i] = mi
            v[i] = vi
            vi = vh[i] if vh[i] > vi else vi
            vh[i] = vi
            p[i] = pi - mi * alpha / (_sqrt(vi) + eps)


cdef void _adam_range(Py_ssize_t lo, Py_ssize_t hi, const int64_t* seg, Py_ssize_t nseg,
                      const double* scale, floating* p, const floating* g, floating* m,
                      floating* v, floating* vh, double clipvalue, floating decay,
                      floating alpha, floating one_m_b1, floating one_m_b2,
                      floating eps) noexcept nogil:
    cdef Py_ssize_t k, a, b
    for k in range(nseg):
        a = seg[2 * k] if seg[2 * k] > lo else lo
        b = seg[2 * k + 1] if seg[2 * k + 1] < hi else hi
        if a < b:
            _adam_span(a, b, p, g, m, v, vh, scale[k], clipvalue, decay, alpha, one_m_b1,
                       one_m_b2, eps)


def adam(floating[::1] p, const floating[::1] g, floating[::1] m, floating[::1] v,
         floating[::1] vhat, const int64_t[:, ::1] seg, const double[::1] scale,
         double clipvalue, double decay, double alpha, double beta_1, double beta_2,
         double epsilon, bint amsgrad, int n_threads=1):
    """Adam/AdamW step in place (``vhat`` is used only with ``amsgrad``)."""
    cdef Py_ssize_t n = p.shape[0], c, nchunks
    _check(n, "g", g.shape[0])
    _check(n, "m", m.shape[0])
    _check(n, "v", v.shape[0])
    if amsgrad:
        _check(n, "vhat", vhat.shape[0])
    _check_seg(seg, scale, n)
    if n == 0:
        return
    cdef floating* pp = &p[0]
    cdef const floating* gp = &g[0]
    cdef floating* mp = &m[0]
    cdef floating* vp = &v[0]
    cdef floating* vhp = &vhat[0] if amsgrad else NULL
    cdef const int64_t* sp = &seg[0, 0]
    cdef const double* scp = &scale[0]
    cdef Py_ssize_t nseg = seg.shape[0]
    cdef floating f_decay = <floating> decay, f_alpha = <floating> alpha
    cdef floating f_b1 = <floating> (1.0 - beta_1), f_b2 = <floating> (1.0 - beta_2)
    cdef floating f_eps = <floating> epsilon
    nchunks = n_threads if 1 < n_threads < n else 1
    with nogil:
        if nchunks == 1:
            _adam_range(0, n, sp, nseg, scp, pp, gp, mp, vp, vhp, clipvalue, f_decay,
                        f_alpha, f_b1, f_b2, f_eps)
        else:
            for c in prange(nchunks, num_threads=nchunks, schedule="static"):
                _adam_range(c * n // nchunks, (c + 1) * n // nchunks, sp, nseg, scp, pp, gp,
                            mp, vp, vhp, clipvalue, f_decay, f_alpha, f_b1, f_b2, f_eps)


# ----------------------------------------------------------------------------- SGD
cdef void _sgd_span(Py_ssize_t a, Py_ssize_t b, floating* p, const floating* g, floating* m,
                    double scale, double clipvalue, floating decay, floating lr,
                    floating momentum, bint nesterov) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating gi, pi, mi
    for i in range(a, b):
        gi = _clipped(g[i], scale, clipvalue)
        pi = p[i]
        pi = pi - pi * decay
        if m != NULL:
            mi = m[i] * momentum - gi * lr             # m = momentum m - lr g
            m[i] = mi
            if nesterov:
                pi = pi + (mi * momentum - gi * lr)    # p += momentum m - lr g
            else:
                pi = pi + mi
        else:
            pi = pi - gi * lr
        p[i] = pi


cdef void _sgd_range(Py_ssize_t lo, Py_ssize_t hi, const int64_t* seg, Py_ssize_t nseg,
                     const double* scale, floating* p, const floating* g, floating* m,
                     double clipvalue, floating decay, floating lr, floating momentum,
                     bint nesterov) noexcept nogil:
    cdef Py_ssize_t k, a, b
    for k in range(nseg):
        a = seg[2 * k] if seg[2 * k] > lo else lo
        b = seg[2 * k + 1] if seg[2 * k + 1] < hi else hi
        if a < b:
            _sgd_span(a, b, p, g, m, scale[k], clipvalue, decay, lr, momentum, nesterov)


def sgd(floating[::1] p, const floating[::1] g, floating[::1] m, const int64_t[:, ::1] seg,
        const double[::1] scale, double clipvalue, double decay, double lr, double momentum,
        bint nesterov, int n_threads=1):
    """SGD step in place; ``m`` is used (and must have ``p``'s size) iff momentum != 0."""
    cdef Py_ssize_t n = p.shape[0], c, nchunks
    _check(n, "g", g.shape[0])
    if momentum != 0:
        _check(n, "m", m.shape[0])
    _check_seg(seg, scale, n)
    if n == 0:
        return
    cdef floating* pp = &p[0]
    cdef const floating* gp = &g[0]
    cdef floating* mp = &m[0] if momentum != 0 else NULL
    cdef const int64_t* sp = &seg[0, 0]
    cdef const double* scp = &scale[0]
    cdef Py_ssize_t nseg = seg.shape[0]
    cdef floating f_decay = <floating> decay, f_lr = <floating> lr
    cdef floating f_mom = <floating> momentum
    nchunks = n_threads if 1 < n_threads < n else 1
    with nogil:
        if nchunks == 1:
            _sgd_range(0, n, sp, nseg, scp, pp, gp, mp, clipvalue, f_decay, f_lr, f_mom,
                       nesterov)
        else:
            for c in prange(nchunks, num_threads=nchunks, schedule="static"):
                _sgd_range(c * n // nchunks, (c + 1) * n // nchunks, sp, nseg, scp, pp, gp, mp,
                           clipvalue, f_decay, f_lr, f_mom, nesterov)


# ----------------------------------------------------------------------------- RMSprop
cdef void _rms_span(Py_ssize_t a, Py_ssize_t b, floating* p, const floating* g, floating* v,
                    floating* mom, floating* avg, double scale, double clipvalue,
                    floating decay, floating lr, floating rho, floating one_m_rho,
                    floating momentum, floating eps) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating gi, pi, vi, ai, den, inc
    for i in range(a, b):
        gi = _clipped(g[i], scale, clipvalue)
        pi = p[i]
        pi = pi - pi * decay
        vi = rho * v[i] + one_m_rho * gi * gi         # v = rho v + (1 - rho) g^2
        v[i] = vi
        if avg != NULL:                                # centered: subtract the mean^2
            ai = rho * avg[i] + one_m_rho * gi
            avg[i] = ai
            den = vi - ai * ai + eps
        else:
            den = vi + eps
        inc = lr * gi / _sqrt(den)
        if mom != NULL:
            inc = momentum * mom[i] + inc
            mom[i] = inc
        p[i] = pi - inc


cdef void _rms_range(Py_ssize_t lo, Py_ssize_t hi, const int64_t* seg, Py_ssize_t nseg,
                     const double* scale, floating* p, const floating* g, floating* v,
                     floating* mom, floating* avg, double clipvalue, floating decay,
                     floating lr, floating rho, floating one_m_rho, floating momentum,
                     floating eps) noexcept nogil:
    cdef Py_ssize_t k, a, b
    for k in range(nseg):
        a = seg[2 * k] if seg[2 * k] > lo else lo
        b = seg[2 * k + 1] if seg[2 * k + 1] < hi else hi
        if a < b:
            _rms_span(a, b, p, g, v, mom, avg, scale[k], clipvalue, decay, lr, rho,
                      one_m_rho, momentum, eps)


def rmsprop(floating[::1] p, const floating[::1] g, floating[::1] v, floating[::1] mom,
            floating[::1] avg, const int64_t[:, ::1] seg, const double[::1] scale,
            double clipvalue, double decay, double lr, double rho, double momentum,
            double epsilon, bint centered, int n_threads=1):
    """RMSprop step in place; ``mom`` used iff momentum > 0, ``avg`` iff centered."""
    cdef Py_ssize_t n = p.shape[0], c, nchunks
    _check(n, "g", g.shape[0])
    _check(n, "v", v.shape[0])
    if momentum > 0:
        _check(n, "mom", mom.shape[0])
    if centered:
        _check(n, "avg", avg.shape[0])
    _check_seg(seg, scale, n)
    if n == 0:
        return
    cdef floating* pp = &p[0]
    cdef const floating* gp = &g[0]
    cdef floating* vp = &v[0]
    cdef floating* mp = &mom[0] if momentum > 0 else NULL
    cdef floating* ap = &avg[0] if centered else NULL
    cdef const int64_t* sp = &seg[0, 0]
    cdef const double* scp = &scale[0]
    cdef Py_ssize_t nseg = seg.shape[0]
    cdef floating f_decay = <floating> decay, f_lr = <floating> lr, f_rho = <floating> rho
    cdef floating f_omr = <floating> (1.0 - rho), f_mom = <floating> momentum
    cdef floating f_eps = <floating> epsilon
    nchunks = n_threads if 1 < n_threads < n else 1
    with nogil:
        if nchunks == 1:
            _rms_range(0, n, sp, nseg, scp, pp, gp, vp, mp, ap, clipvalue, f_decay, f_lr,
                       f_rho, f_omr, f_mom, f_eps)
        else:
            for c in prange(nchunks, num_threads=nchunks, schedule="static"):
                _rms_range(c * n // nchunks, (c + 1) * n // nchunks, sp, nseg, scp, pp, gp,
                           vp, mp, ap, clipvalue, f_decay, f_lr, f_rho, f_omr, f_mom, f_eps)
