"""The mixed_bfloat16 products on AMX tiles and on AVX512-BF16 dot products (issue
16; include/cylstm_bf16.h): each product and path test runs on both engines
(the ``engine`` fixture: AMX turned off for the dots, as on an AMD Zen 4) where
the CPU has them.

- the tile packer's layout against a NumPy rewrite of it (any CPU);
- the AMX product against float64 sums of the same bf16 operands, edge tiles
  included (CPUs with AMX-BF16 only: skipped with the reason elsewhere);
- ``lstm_forward`` on the "rows_bf16" paths against the float64 reference of the
  emulated semantics (tests/test_mixed_precision.py's, whose forward, lengths and
  gradient tests run the AMX paths too), with masks; the packed-weight cache;
- the planner with injected CPU facts (any CPU), and a forced AMX path refused
  where it cannot run (any CPU: the AMX kernel is turned off for it);
- the mixed_bfloat16 backward on tiles (dz packed per block, x^T and h^T rounded
  from their rows) and emulated with the kernel off, both against the float64
  reference that rounds dz where it multiplies.
"""
import dataclasses

import numpy as np
import pytest
from reference import bf16_round, random_lstm
from test_mixed_precision import F32, _check_grads, _f32, _grads_case, _keras_like, _ref_bf16

from cylstm import _cpu, _lstm, _packcache, _tuning
from cylstm.functional import BF16_PATHS, lstm_backward, lstm_forward, plan_backward, plan_forward

AMX_CODE, AMX_WHY = _lstm.amx_status()
needs_amx = pytest.mark.skipif(AMX_CODE != 5, reason=f"no AMX bf16 tiles here: {AMX_WHY}")
needs_bf16 = pytest.mark.skipif(_lstm.bf16_engine() is None,
                                reason=f"no bf16 kernel here: {_lstm._bf16_engine_why()}")


@pytest.fixture(params=["amx", "avx512_bf16"])
def engine(request):
    """The bf16 kernel on AMX tiles, or on AVX512-BF16 dot products alone (AMX
    turned off, as on an AMD Zen 4); each skips with the reason where the CPU
    lacks it."""
    if request.param == "amx" and AMX_CODE != 5:
        pytest.skip(f"no AMX bf16 tiles here: {AMX_WHY}")
    was = _lstm._force_amx(request.param == "amx")
    try:
        if _lstm.bf16_engine() != request.param:
            pytest.skip(f"no AVX512-BF16 here: {_lstm._bf16_engine_why()}")
        yield request.param
    finally:
        _lstm._force_amx(was)


@pytest.fixture
def bf16_off():
    """The bf16 hardware kernels (AMX and AVX512-BF16) turned off for one test, as
    on a CPU without them: the emulated paths."""
    was = _lstm._force_bf16_dots(False)
    yield
    _lstm._force_bf16_dots(was)


# ---------------------------------------------------------------------------
# The tile layout and the product
# ---------------------------------------------------------------------------

def _pack_ref(W):
    """The layout of include/cylstm_bf16.h, written apart: K padded to 32, N to 16,
    blocks of 32 k x 16 columns (k pairs interleaved per column), a column block's
    K blocks one after the other."""
    K, N = W.shape
    kp, np_ = -(-K // 32) * 32, -(-N // 16) * 16
    bits = np.zeros((kp, np_), np.uint16)
    u = np.asarray(bf16_round(W), np.float32).view(np.uint32) >> 16
    bits[:K, :N] = u.astype(np.uint16)
    # (kb, r, e, nb, c) -> block (nb, kb), row r, element 2c + e
    t = bits.reshape(kp // 32, 16, 2, np_ // 16, 16)
    return t.transpose(3, 0, 1, 4, 2).reshape(-1)


@pytest.mark.parametrize(("K", "N"), [(1, 1), (31, 15), (32, 16), (33, 17), (64, 200), (7, 48)])
def test_tile_packer_layout(K, N):
    W = np.random.default_rng(K * N).standard_normal((K, N)).astype(np.float32)
    W[0, 0] = np.float32(1 + 2**-8)   # a tie: rounds to even (1.0)
    out = np.full(_lstm.bf16_tiles_len(K, N), 0xABCD, np.uint16)
    _lstm.bf16_tiles_pack(W, out)
    np.testing.assert_array_equal(out, _pack_ref(W))
    assert out[0] == 0x3F80


@pytest.mark.parametrize(("K", "N"), [(1, 1), (31, 15), (33, 17), (64, 200), (7, 48)])
def test_tile_packer_reads_a_transposed_matrix(K, N):
    # the backward's U^T and W^T, packed from U and W as they are stored
    W = np.random.default_rng(K + N).standard_normal((K, N)).astype(np.float32)
    out = np.full(_lstm.bf16_tiles_len(K, N), 0xABCD, np.uint16)
    _lstm.bf16_tiles_pack(np.ascontiguousarray(W.T), out, transposed=True)
    np.testing.assert_array_equal(out, _pack_ref(W))


@needs_bf16
@pytest.mark.parametrize(("K", "N"), [(1, 1), (31, 15), (32, 16), (33, 17), (64, 200), (513, 48)])
def test_hardware_tile_packer_rounds_as_the_scalar_one(K, N):
    # the AVX-512 BF16 pack of dz (normal numbers: it flushes subnormals, as AMX does)
    W = np.random.default_rng(K * N + 1).standard_normal((K, N)).astype(np.float32)
    W[0, 0] = np.float32(1 + 2**-8)            # a tie to even (down)
    W[-1, -1] = np.float32(1 + 3 * 2**-8)      # a tie to even (up)
    out = np.full(_lstm.bf16_tiles_len(K, N), 0xABCD, np.uint16)
    _lstm.bf16_tiles_pack(W, out, hardware=True)
    np.testing.assert_array_equal(out, _pack_ref(W))
    out[:] = 0xABCD   # the transposed read (U^T, W^T from U, W)
    _lstm.bf16_tiles_pack(np.ascontiguousarray(W.T), out, transposed=True, hardware=True)
    np.testing.assert_array_equal(out, _pack_ref(W))


def test_tile_packer_refuses_a_wrong_length():
    W = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="out must hold 512 elements for a 3 x 4 matrix"):
        _lstm.bf16_tiles_pack(W, np.empty(100, np.uint16))


def _product(seed, M, N, Ks, accumulate, **kw):
    """amx_gemm over random operands (Ks: one K, or two for the fused pass) and the
    check against float64 sums of the same bf16 products: float32 sums of K exact
    products are within K ulps of the largest partial sum."""
    rng = np.random.default_rng(seed)
    As = [rng.standard_normal((M, K)).astype(np.float32) for K in Ks]
    Ws = [rng.standard_normal((K, N)).astype(np.float32) for K in Ks]
    Ps = [np.empty(_lstm.bf16_tiles_len(K, N), np.uint16) for K in Ks]
    for W, P in zip(Ws, Ps):
        _lstm.bf16_tiles_pack(W, P)
    C0 = rng.standard_normal((M, N)).astype(np.float32)
    C = C0.copy()
    A = np.ascontiguousarray(As[0].T) if kw.get("transa") else As[0]
    if len(Ks) == 2:
        kw.update(A2=As[1], P2=Ps[1])
    _lstm.amx_gemm(A, Ps[0], C, accumulate, **kw)
    base = C0 if accumulate else 0
    want = sum(bf16_round(a) @ bf16_round(w) for a, w in zip(As, Ws)) + base
    scale = sum(np.abs(bf16_round(a)) @ np.abs(bf16_round(w)) for a, w in zip(As, Ws))
    assert np.all(np.abs(C - want) <= 2 * max(sum(Ks), 1) * 2**-24 * (scale + np.abs(base))
                  + 1e-30)


@pytest.mark.parametrize(("M", "N", "K"), [
    (1, 16, 32), (15, 17, 33), (16, 32, 32), (17, 48, 64), (32, 32, 512), (33, 200, 50),
    (64, 2048, 40), (300, 77, 7), (257, 96, 31), (5, 3, 1), (40, 64, 0),
    (7, 70, 2100)])   # the dots' passes of 1024 k (CYL_BF16_DOT_KB): three here
@pytest.mark.parametrize("accumulate", [False, True])
def test_amx_product_matches_float64_sums(engine, M, N, K, accumulate):
    _product(M + 7 * N + 13 * K, M, N, [K], accumulate)


@pytest.mark.parametrize(("M", "N", "K"), [(1, 16, 32), (15, 17, 33), (33, 200, 50),
                                           (300, 77, 7), (257, 96, 513)])
@pytest.mark.parametrize("accumulate", [False, True])
def test_amx_product_of_a_transposed_a(engine, M, N, K, accumulate):
    # the backward's x^T dz and h^T dz: A stored K x M, rounded from its rows
    _product(M + 3 * N + 5 * K, M, N, [K], accumulate, transa=True)


@pytest.mark.parametrize("dots", [0, 4])
@pytest.mark.parametrize(("M", "N", "K", "K2"), [(1, 16, 32, 32), (3, 17, 5, 40), (15, 33, 64, 7),
                                                 (32, 200, 50, 128), (40, 48, 128, 256),
                                                 (300, 64, 20, 30),
                                                 # a pass of the dots (1024 k) that ends
                                                 # inside the second product
                                                 (9, 40, 900, 200), (13, 70, 1100, 30)])
@pytest.mark.parametrize("accumulate", [False, True])
def test_two_products_in_one_pass(engine, M, N, K, K2, accumulate, dots):
    # a fused step's x_t @ W + h_prev @ U, the sums kept in the tiles between them
    was = _lstm._set_bf16_dot_rows(dots)
    try:
        _product(M + 5 * N + 7 * K + 11 * K2, M, N, [K, K2], accumulate)
    finally:
        _lstm._set_bf16_dot_rows(was)


@pytest.fixture(params=[0, 4], ids=["tiles", "dots"])
def dot_rows(request):
    """Products of a few rows on the tiles (0) or on the AVX512-BF16 dots (up to 4)."""
    was = _lstm._set_bf16_dot_rows(request.param)
    yield request.param
    _lstm._set_bf16_dot_rows(was)


@needs_amx
@pytest.mark.parametrize(("M", "N", "K"), [(1, 16, 32), (2, 17, 33), (3, 70, 64), (4, 200, 513),
                                           (1, 1, 1), (4, 48, 7)])
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("transa", [False, True])
def test_products_of_a_few_rows_both_ways(dot_rows, M, N, K, accumulate, transa):
    # a batch-1 step's products: four column blocks at a time, partial ones, odd K
    _product(M + 11 * N + 17 * K, M, N, [K], accumulate, transa=transa)


@needs_bf16
def test_amx_product_refuses_mismatched_buffers():
    A = np.ones((4, 8), np.float32)
    P = np.empty(_lstm.bf16_tiles_len(8, 16), np.uint16)
    with pytest.raises(ValueError, match=r"C must have 4 rows \(A's\)"):
        _lstm.amx_gemm(A, P, np.empty((5, 16), np.float32))
    with pytest.raises(ValueError, match="P must hold"):
        _lstm.amx_gemm(A, P[:-1], np.empty((4, 16), np.float32))


def test_amx_product_is_refused_where_it_cannot_run(bf16_off):
    A = np.ones((4, 8), np.float32)
    P = np.empty(_lstm.bf16_tiles_len(8, 16), np.uint16)
    with pytest.raises(ValueError, match="bf16 kernel cannot run here: AVX512-BF16 turned off"):
        _lstm.amx_gemm(A, P, np.empty((4, 16), np.float32))


# ---------------------------------------------------------------------------
# lstm_forward on the AMX paths
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", BF16_PATHS)
def test_forward_amx_with_recurrent_mask_matches_reference(engine, path):
    B, T, I, H = 20, 9, 7, 10
    x, W, U, b = _f32(*random_lstm(np.random.default_rng(21), B, T, I, H))
    rng = np.random.default_rng(22)
    rmask = ((rng.random((B, H)) < 0.7) / 0.7).astype(np.float32)
    out = lstm_forward(x, W, U, b, recurrent_mask=rmask, compute_dtype="bfloat16",
                       num_threads=2, _plan=path)
    y, hT, cT, _ = _ref_bf16(x, W, U, b, out.output, rmask=rmask)
    np.testing.assert_allclose(out.output, y, **F32)
    np.testing.assert_allclose(out.h, hT, **F32)
    np.testing.assert_allclose(out.c, cT, **F32)


def test_amx_accuracy_against_float32_over_100_steps(engine):
    # issue 16's bound, and the same model as the emulated path computes (within the
    # float32 rounding of sums added in another order, which a bf16 rounding of h can
    # amplify to a bf16 ulp of h times the weights)
    T, B, I, H = 100, 32, 10, 50
    x, W, U, b = _keras_like(np.random.default_rng(3), T, B, I, H)
    f32 = lstm_forward(x, W, U, b)
    emulated = lstm_forward(x, W, U, b, compute_dtype="bfloat16", _plan="rows")
    for path in BF16_PATHS:
        bf = lstm_forward(x, W, U, b, compute_dtype="bfloat16", _plan=path)
        err = float(np.abs(bf.output - f32.output).max())
        assert 0 < err <= 1e-2, (path, err)
        assert float(np.abs(bf.output - emulated.output).max()) <= 2e-3


def test_amx_pack_is_cached_and_never_stale(engine):
    B, T, I, H = 32, 6, 24, 40
    x, W, U, b = _f32(*random_lstm(np.random.default_rng(7), B, T, I, H))
    _packcache.clear()
    first = lstm_forward(x, W, U, b, compute_dtype="bfloat16", _plan="rows_bf16_fused").output
    again = lstm_forward(x, W, U, b, compute_dtype="bfloat16", _plan="rows_bf16_fused").output
    np.testing.assert_array_equal(again, first)
    assert _packcache.stats()["hits"] >= 1
    U[3, 5] += 0.5   # changed in place: a new pack, not the old one
    changed = lstm_forward(x, W, U, b, compute_dtype="bfloat16", _plan="rows_bf16_fused")
    y, _, _, _ = _ref_bf16(x, W, U, b, changed.output)
    np.testing.assert_allclose(changed.output, y, **F32)
    assert np.abs(changed.output - first).max() > 1e-4


# ---------------------------------------------------------------------------
# The planner, and forced paths
# ---------------------------------------------------------------------------

MiB = 2**20
AMX = _tuning.CpuFacts(vendor="GenuineIntel", model_name="test Xeon", n_cores=2, isa_level=2,
                       isa_name="avx512", flags=frozenset({"amx_bf16", "avx512_bf16"}),
                       fma512_ports=2, l2_per_core=2 * MiB, l3_total=32 * MiB,
                       l3_shared_by=2, l3_per_core=16 * MiB, l3_source="test",
                       llc_budget=32 * MiB, blas_core="SkylakeX", amx_bf16=True)


@pytest.mark.parametrize(("B", "I", "H", "n", "lengths", "training", "want", "threads"), [
    (64, 512, 512, 2, False, False, "rows_bf16_fused", 2),
    (32, 128, 256, 2, False, True, "rows_bf16_fused", 2),
    (16, 1024, 1024, 2, False, False, "rows_bf16", 1),     # bf16 W > AMX_FUSE_MAX_BYTES
    (1, 512, 512, 2, False, False, "rows_bf16", 1),        # one row: one thread, projection
    (40, 10, 50, 2, True, False, "rows_bf16", 2),          # lengths: the projection first
    (24, 10, 50, 2, False, False, "rows_bf16_fused", 1)])  # 12 rows a thread < 16
def test_the_planner_takes_amx_where_the_cpu_has_it(B, I, H, n, lengths, training, want,
                                                      threads):
    p = plan_forward(B, 20, I, H, np.float32, n, training, has_lengths=lengths, facts=AMX,
                     compute_dtype="bfloat16")
    assert (p.path, p.n_threads, p.bf16) == (want, threads, True)
    assert "AMX" in p.reason
    assert p.abuf == (threads, _lstm.bf16_abuf2_len(I, H))
    assert p.prepacked == (not training)
    # float32 calls never take them, nor bf16 calls on a CPU without AMX
    assert plan_forward(B, 20, I, H, np.float32, n, training, has_lengths=lengths,
                        facts=AMX).path not in BF16_PATHS
    no = dataclasses.replace(AMX, amx_bf16=False, flags=frozenset())
    p = plan_forward(B, 20, I, H, np.float32, n, training, has_lengths=lengths, facts=no,
                     compute_dtype="bfloat16")
    assert p.path in ("rows", "rows_fused") and "emulated" in p.reason


# an AMD Zen 4 as the planner sees it: AVX512-BF16, no AMX, one 512-bit FMA port
ZEN4 = dataclasses.replace(AMX, vendor="AuthenticAMD", model_name="test EPYC (Zen 4)",
                           flags=frozenset({"avx512_bf16", "avx512_vnni"}), fma512_ports=1,
                           amx_bf16=False)


@pytest.mark.parametrize(("B", "I", "H", "n", "lengths", "want", "threads"), [
    (64, 512, 512, 2, False, "rows_bf16_fused", 2),
    (16, 1024, 1024, 2, False, "rows_bf16", 2),   # dots split 8 rows a thread (AMX: 1)
    (4, 64, 128, 2, False, "rows_bf16", 2),       # 2 rows a thread < AMX_FUSE_MIN_ROWS
    (1, 512, 512, 2, False, "rows_bf16", 1),
    (40, 10, 50, 2, True, "rows_bf16", 2)])
def test_the_planner_takes_avx512_bf16_dots_without_amx(B, I, H, n, lengths, want, threads):
    p = plan_forward(B, 20, I, H, np.float32, n, has_lengths=lengths, facts=ZEN4,
                     compute_dtype="bfloat16")
    assert (p.path, p.n_threads, p.bf16) == (want, threads, True)
    assert "AVX512-BF16 dot products (no AMX)" in p.reason
    assert p.abuf == (threads, _lstm.bf16_abuf2_len(I, H))
    # an Intel core without AMX takes them too (they beat the emulated path there)
    xeon = dataclasses.replace(AMX, amx_bf16=False, flags=frozenset({"avx512_bf16"}))
    assert plan_forward(B, 20, I, H, np.float32, n, has_lengths=lengths, facts=xeon,
                        compute_dtype="bfloat16").path == want
    # without AVX512-BF16, or below the AVX-512 level: emulated
    for f in (dataclasses.replace(ZEN4, flags=frozenset()),
              dataclasses.replace(ZEN4, isa_level=1, isa_name="avx2")):
        p = plan_forward(B, 20, I, H, np.float32, n, has_lengths=lengths, facts=f,
                         compute_dtype="bfloat16")
        assert p.path in ("rows", "rows_fused") and "emulated" in p.reason


def test_the_planner_emulates_where_the_process_cannot_use_the_bf16_kernels(bf16_off):
    # the facts say AVX512-BF16 (on such a CPU), the process has it turned off
    assert _lstm.bf16_engine() is None
    p = plan_forward(32, 10, 64, 64, np.float32, 2, compute_dtype="bfloat16")
    assert p.path in ("rows", "rows_fused") and "emulated" in p.reason
    assert not plan_backward(32, 2, bf16=True).amx


def test_detected_facts_say_amx_only_with_the_flags_at_avx512():
    # the facts come from /proc/cpuinfo's flags and the level; the planner checks the
    # process itself (amx_usable) before it plans from this machine's facts
    f = _tuning.detected_cpu()
    assert f.amx_bf16 == (f.isa_level == 2 and {"amx_bf16", "avx512_bf16"} <= f.flags)


def test_a_forced_amx_path_is_refused_where_it_cannot_run(bf16_off):
    x, W, U, b = _f32(*random_lstm(np.random.default_rng(74), 8, 3, 3, 40))
    for path in BF16_PATHS:
        with pytest.raises(ValueError, match=f"_plan='{path}' cannot run this call: .*"
                                             "needs AMX tiles or AVX512-BF16.*"
                                             "turned off"):
            lstm_forward(x, W, U, b, compute_dtype="bfloat16", _plan=path)
    # and the planner takes the emulated paths meanwhile
    p = plan_forward(8, 3, 3, 40, np.float32, 2, compute_dtype="bfloat16")
    assert p.path in ("rows", "rows_fused")


@pytest.mark.parametrize("path", BF16_PATHS)
def test_amx_paths_take_bfloat16_calls_only(path):
    x, W, U, b = _f32(*random_lstm(np.random.default_rng(75), 8, 3, 3, 40))
    with pytest.raises(ValueError, match=f"'{path}' multiplies bfloat16 operands on the bf16 "
                                         "hardware: it takes compute_dtype='bfloat16' only"):
        lstm_forward(x, W, U, b, _plan=path)


@needs_bf16
def test_the_fused_amx_path_refuses_lengths():
    x, W, U, b = _f32(*random_lstm(np.random.default_rng(76), 8, 3, 3, 40))
    with pytest.raises(ValueError, match="'rows_bf16_fused' cannot take lengths"):
        lstm_forward(x, W, U, b, lengths=np.array([3, 2] * 4), compute_dtype="bfloat16",
                     _plan="rows_bf16_fused")


@pytest.mark.skipif(_cpu.detected_level() < 2, reason="needs an AVX-512 CPU to force avx2 on")
def test_a_forced_lower_level_turns_amx_off():
    with _cpu.forced_level("avx2"):
        assert not _lstm.amx_usable()
        assert _lstm.amx_status()[0] == 3
        assert _lstm.bf16_engine() is None
        assert "a level below AVX-512 is forced" in _lstm._bf16_engine_why()
        p = plan_forward(64, 10, 64, 64, np.float32, 1, compute_dtype="bfloat16")
        assert p.path not in BF16_PATHS


# ---------------------------------------------------------------------------
# The mixed_bfloat16 backward
# ---------------------------------------------------------------------------

def _bf16_grads(B, threads, mask, T=7, I=5, H=6, lengths=None, every=None):
    x, W, U, b, h0, c0, dy, dhT, dcT, rmask = _grads_case(43, B=B, T=T, I=I, H=H, mask=mask)
    if lengths is not None:
        dy = dy * (np.arange(T)[None, :] < lengths[:, None])[..., None]
    out = lstm_forward(x, W, U, b, initial_state=(h0, c0), recurrent_mask=rmask,
                       lengths=lengths, training=True, compute_dtype="bfloat16",
                       num_threads=threads, checkpoint_every=every)
    y = out.output.copy()
    g = lstm_backward(out.cache, grad_output=dy, grad_h=dhT, grad_c=dcT, num_threads=threads)
    _check_grads(g, x, W, U, b, y, h0, c0, dy, dhT, dcT, rmask, lengths=lengths,
                 bound=None if B * T * H < 2000 else 1e-3)


# B = 34 on 2 threads: slices of 17 rows (edge tiles); (I, H) = (40, 36): 4H = 144
# columns, two tile pairs and an edge; T = 40 at B = 34: 1360 rows of dz, three
# blocks of AMX_BACK_ROWS_C (the last partial) accumulated into dW and dU
_BACKWARD_CASES = [(34, 1, False, 7, 5, 6, None), (34, 2, True, 7, 5, 6, None),
                   (17, 1, False, 40, 40, 36, None), (34, 2, False, 40, 40, 36, None),
                   (9, 1, False, 7, 5, 6, "lengths"), (34, 2, True, 12, 40, 36, 5),
                   (64, 2, True, 50, 64, 64, None)]


def _lengths(kind, B, T):
    return None if kind != "lengths" else np.random.default_rng(B).integers(0, T + 1, B)


@pytest.mark.parametrize(("B", "threads", "mask", "T", "I", "H", "extra"), _BACKWARD_CASES)
def test_backward_on_amx_tiles_matches_the_reference(engine, B, threads, mask, T, I, H,
                                                      extra):
    assert plan_backward(B, threads, bf16=True).amx
    _bf16_grads(B, threads, mask, T, I, H, _lengths(extra, B, T),
                extra if isinstance(extra, int) else None)


@pytest.mark.parametrize(("B", "threads", "mask", "T", "I", "H", "extra"), _BACKWARD_CASES)
def test_backward_emulated_matches_the_reference(bf16_off, B, threads, mask, T, I, H, extra):
    # the same semantics without bf16 hardware (any CPU; where the CPU has it, the
    # kernels are turned off)
    assert not plan_backward(B, threads, bf16=True).amx
    _bf16_grads(B, threads, mask, T, I, H, _lengths(extra, B, T),
                extra if isinstance(extra, int) else None)


def test_the_compiled_thresholds_are_the_tuned_ones():
    assert _lstm.AMX_BACK_ROWS == _tuning.AMX_BACK_ROWS
    assert _lstm.BF16_DOT_ROWS == _tuning.BF16_DOT_ROWS


def test_the_backward_plan_takes_amx_where_the_cpu_has_it():
    p = plan_backward(64, 2, bf16=True, facts=AMX)
    assert p.amx and "AMX" in p.reason
    p = plan_backward(64, 2, bf16=True, facts=ZEN4)
    assert p.amx and "AVX512-BF16 dots" in p.reason
    no = dataclasses.replace(AMX, amx_bf16=False, flags=frozenset())
    p = plan_backward(64, 2, bf16=True, facts=no)
    assert not p.amx and "emulated" in p.reason
    assert not plan_backward(64, 2, facts=AMX).amx   # float32 training never does


def test_an_amx_forward_cache_trains_where_the_backward_has_no_amx(engine):
    # the AMX training forward keeps the caller's operands (the AMX backward rounds
    # them as it packs); a backward planned without AMX rounds copies itself
    x, W, U, b, h0, c0, dy, dhT, dcT, _ = _grads_case(47, B=34)
    keep = [a.copy() for a in (x, W, U)]
    out = lstm_forward(x, W, U, b, initial_state=(h0, c0), training=True,
                       compute_dtype="bfloat16", _plan="rows_bf16")
    assert out.cache["rounded"] is False and out.cache["W"] is W
    y = out.output.copy()
    was = _lstm._force_bf16_dots(False)
    try:
        g = lstm_backward(out.cache, grad_output=dy, grad_h=dhT, grad_c=dcT)
    finally:
        _lstm._force_bf16_dots(was)
    _check_grads(g, x, W, U, b, y, h0, c0, dy, dhT, dcT)
    for a, k in zip((x, W, U), keep):
        np.testing.assert_array_equal(a, k)   # the caller's arrays untouched
