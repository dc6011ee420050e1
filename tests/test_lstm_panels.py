"""The packed-panel forward (small batches, threads splitting the units) against
the NumPy float64 reference, the BLAS path and itself at other thread counts."""
import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from isa_levels import LEVELS
from reference import lstm_ref, lstm_ref_backward, random_lstm

from cylstm import _cpu, _lstm, _tuning, _workspace, functional
from cylstm._tuning import CpuFacts
from cylstm.functional import lstm_backward, lstm_forward

TOL = {np.float64: {"rtol": 1e-10, "atol": 1e-12}, np.float32: {"rtol": 1e-5, "atol": 2e-6}}
SPAN = {np.float32: _lstm.PANEL_UNITS_F32, np.float64: _lstm.PANEL_UNITS_F64}
VL = {np.float32: 16, np.float64: 8}


def _pack_numpy(U, dtype):
    """The documented layout, written independently: panel p (units j0..j0+hb)
    is (H, 4 hp) row-major, gate blocks hp wide, hp = hb rounded up to VL/4,
    padding columns zero; panel p starts at p * H * 4 * span."""
    H = U.shape[0]
    span, q = SPAN[dtype], VL[dtype] // 4
    out = []
    for j0 in range(0, H, span):
        hb = min(span, H - j0)
        hp = -(-hb // q) * q
        panel = np.zeros((H, 4, hp), dtype)
        for g in range(4):
            panel[:, g, :hb] = U[:, g * H + j0:g * H + j0 + hb]
        out.append(panel.reshape(-1))
    return np.concatenate(out)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("H", [1, 3, 8, 16, 17, 33, 50])
def test_pack_recurrent_layout(dtype, H):
    U = np.random.default_rng(H).standard_normal((H, 4 * H)).astype(dtype)
    want = _pack_numpy(U, dtype)
    assert _lstm.packed_len(H, np.dtype(dtype).name) == want.size
    got = np.full(want.size, np.nan, dtype)
    _lstm.pack_recurrent(U, got)
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="packed_len"):
        _lstm.pack_recurrent(U, np.empty(want.size + 1, dtype))


MiB = 2**20
# A 2-core-class Zen 4 as the thresholds were measured on: AVX-512, 1 MiB L2 per
# core, 32 MiB L3 shared by 8 cores (a 32 MiB budget, the whole L3 the old rules used).
ZEN4 = CpuFacts(vendor="AuthenticAMD", model_name="AMD Ryzen 7 7700X", family=25, model=97,
                n_cores=8, isa_level=2, isa_name="avx512", fma512_ports=1,
                l2_per_core=MiB, l3_total=32 * MiB, l3_shared_by=8, l3_per_core=4 * MiB,
                l3_source="test", llc_budget=32 * MiB, blas_core="SkylakeX")


@pytest.fixture(autouse=True)
def no_tuned_cache(monkeypatch):
    """Plans from the model rules only: a user's tuned cache must not change them."""
    monkeypatch.setenv("CYLSTM_TUNE", "0")
    _tuning.forget()
    yield
    _tuning.forget()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("B,H,threads", [(1, 40, 2), (3, 17, 2), (7, 33, 3), (2, 50, 2),
                                         (16, 36, 2)])
def test_team_forward_and_backward_match_reference(dtype, reverse, with_lengths, B, H,
                                                   threads):
    T, I = 9, 6
    x, W, U, b = random_lstm(np.random.default_rng(B * H), B, T, I, H)
    rng = np.random.default_rng(1)
    h0, c0 = rng.standard_normal((2, B, H)) * 0.5
    lengths = rng.integers(0, T + 1, B) if with_lengths else None
    if with_lengths:
        lengths[-1] = 0   # a valid length: outputs zeros, the final state the initial one
    y, hT, cT, tape = lstm_ref(x, W, U, b, h0, c0, lengths, reverse)
    cast = [a.astype(dtype) for a in (x, W, U, b)]
    out = lstm_forward(*cast, initial_state=(h0, c0), lengths=lengths, go_backwards=reverse,
                       training=True, num_threads=threads, _plan="units")
    np.testing.assert_allclose(out.output, y, **TOL[dtype])
    np.testing.assert_allclose(out.h, hT, **TOL[dtype])
    np.testing.assert_allclose(out.c, cT, **TOL[dtype])
    if with_lengths:  # outputs past each length are exactly zero
        for n, L in enumerate(lengths):
            assert not out.output[n, L:].any()
    # the training cache the panel path filled (gates, cells, h_prev) drives BPTT
    dy = rng.standard_normal((B, T, H))
    ref = lstm_ref_backward(x, W, U, tape, dy)
    g = lstm_backward(out.cache, dy.astype(dtype), num_threads=threads)
    tol = TOL[dtype] if dtype == np.float64 else {"rtol": 1e-4, "atol": 2e-5}
    for got, want, name in zip(g, ref, ["dx", "dW", "dU", "db", "dh0", "dc0"]):
        np.testing.assert_allclose(got, want, err_msg=name, **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_team_is_bitwise_equal_to_serial_panels(dtype):
    """Each output is summed in k order by the same code whichever thread owns
    its panel: 1, 2 and 3 threads give the same bits."""
    B, T, I, H = 3, 20, 5, 40
    x, W, U, b = (a.astype(dtype) for a in random_lstm(np.random.default_rng(4), B, T, I, H))
    outs = []
    for nt in (1, 2, 3):
        P = np.empty(_lstm.packed_len(H, np.dtype(dtype).name), dtype)
        _lstm.pack_recurrent(U, P)
        y = np.zeros((B, T, H), dtype)
        hs, cs = np.zeros((2, B, H), dtype)
        G = np.empty((B, T, 4 * H), dtype)
        Z = np.empty((nt, _lstm.units_scratch(B, H, np.dtype(dtype).name)), dtype)
        _lstm.forward_units(x, W, U, b, None, False, None, None, y, hs, cs, G, None, None, Z,
                            P, np.empty((B, H), dtype), nt, 1)
        outs.append((y, hs, cs))
    for other in outs[1:]:
        for a, c in zip(outs[0], other):
            np.testing.assert_array_equal(a, c)
    ref = lstm_forward(x, W, U, b, num_threads=1)  # the BLAS path
    np.testing.assert_allclose(outs[0][0], ref.output, **TOL[dtype])


@pytest.mark.parametrize("path", ["stacked", "units"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_panel_prefetch_changes_no_bit(path, dtype):
    """The AVX2 six-row blocks' prefetch of their own weight rows (on by default)
    reads ahead and computes nothing: the same bits with it off, and both equal
    the float64 reference.  (On other ISA levels the switch has nothing to turn.)"""
    B, T, I, H = 23, 7, 40, 48     # AVX2: blocks of 6 + 6 + 6 + 5 rows, 3 panels
    x, W, U, b = (a.astype(dtype) for a in random_lstm(np.random.default_rng(6), B, T, I, H))
    plan = functional.plan_forward(B, T, I, H, dtype, 1, force=path)
    was = _lstm._set_panel_prefetch(False)
    try:
        off = lstm_forward(x, W, U, b, num_threads=1, _plan=plan)
        assert _lstm._set_panel_prefetch(True) is False
        on = lstm_forward(x, W, U, b, num_threads=1, _plan=plan)
    finally:
        _lstm._set_panel_prefetch(was)
    np.testing.assert_array_equal(on.output, off.output)
    np.testing.assert_array_equal(on.c, off.c)
    y_ref = lstm_ref(x.astype(np.float64), W.astype(np.float64), U.astype(np.float64),
                     b.astype(np.float64))[0]
    np.testing.assert_allclose(on.output, y_ref, **TOL[dtype])


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("path,n_threads", [("stacked", 1), ("units", 1), ("units", 2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_panel_kblocks_change_no_bit(level, path, n_threads, dtype):
    """K blocks of the AVX2 six-row passes (a later block goes on from the sums in
    z) give the whole panel's bits: blocks of 16 k rows here, the stacked path's
    crossing the x / h boundary (I = 40), 23 rows in 6 + 6 + 6 + 5; a 2-row batch
    (one pass) and the float64 reference too; so does each spread of the next
    block's stream over the passes, and each split of a pass's rows into blocks
    (_cpu.panel_block_rows).  Other levels: nothing to block."""
    B, T, I, H = 23, 6, 40, 48
    x, W, U, b = (a.astype(dtype) for a in random_lstm(np.random.default_rng(8), B, T, I, H))
    plan = functional.plan_forward(B, T, I, H, dtype, n_threads, force=path)
    y_ref = lstm_ref(x.astype(np.float64), W.astype(np.float64), U.astype(np.float64),
                     b.astype(np.float64))[0]
    with _cpu.forced_level(level):
        with _cpu.panel_kblock(0):
            whole = lstm_forward(x, W, U, b, num_threads=n_threads, _plan=plan)
            two = lstm_forward(x[:2], W, U, b, num_threads=1, _plan=path)
        with _cpu.panel_kblock(1024):
            assert _cpu.current_panel_kblock() == 1024
            blocked = lstm_forward(x, W, U, b, num_threads=n_threads, _plan=plan)
            two_b = lstm_forward(x[:2], W, U, b, num_threads=1, _plan=path)
            # the next block's stream spread over 1, 2, 4 or all passes, or all
            # in the first (0): prefetches only, the same bits
            spread = {}
            for n in (0, 1, 2, 4, 12):
                with _cpu.panel_spread(n):
                    spread[n] = lstm_forward(x, W, U, b, num_threads=n_threads, _plan=plan)
            # batches that K-blocked passes split otherwise than whole panels do
            # (8 = 4 + 4, not 6 + 2; 13 = 5 + 4 + 4; 14 = 6 + 4 + 4), each split
            split = {(n, on): None for n in (7, 8, 13, 14) for on in (True, False)}
            for n, on in split:
                with _cpu.panel_block_rows(on):
                    split[n, on] = lstm_forward(x[:n], W, U, b, num_threads=n_threads,
                                                _plan=path)
        rows = {n: lstm_forward(x[:n], W, U, b, num_threads=n_threads, _plan=path)
                for n in (7, 8, 13, 14)}
    np.testing.assert_array_equal(blocked.output, whole.output)
    for (n, on), out in split.items():
        np.testing.assert_array_equal(out.output, rows[n].output, err_msg=f"{n} rows, {on}")
        np.testing.assert_array_equal(out.output, whole.output[:n], err_msg=f"{n} rows")
    np.testing.assert_array_equal(blocked.c, whole.c)
    np.testing.assert_array_equal(two_b.output, two.output)
    for n, out in spread.items():
        np.testing.assert_array_equal(out.output, whole.output, err_msg=f"spread {n}")
    np.testing.assert_allclose(blocked.output, y_ref, **TOL[dtype])


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("path,n_threads", [("stacked", 1), ("units", 1), ("units", 2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_next_panel_stream_changes_no_bit(level, path, n_threads, dtype):
    """The next panel streamed in by the six-row blocks (AVX-512: the first n blocks
    of a pass, 1/n each; AVX2: the K blocks' passes) wherever it is allowed
    (stream threshold 0), spread over 0 (AVX-512: none), 1, 2, 3 or 12 blocks, gives
    the bits of no stream at all (a threshold no weights pass), for batches of
    one, two and three six-row blocks and a last 1, 4 or 5 rows; and the float64
    reference's values."""
    from cylstm import _stream
    B, T, I, H = 23, 5, 24, 48
    x, W, U, b = (a.astype(dtype) for a in random_lstm(np.random.default_rng(9), B, T, I, H))
    y_ref = lstm_ref(x.astype(np.float64), W.astype(np.float64), U.astype(np.float64),
                     b.astype(np.float64))[0]
    default = _cpu.set_panel_stream_min(2**62)
    try:
        with _cpu.forced_level(level):
            off = {n: lstm_forward(x[:n], W, U, b, num_threads=n_threads, _plan=path)
                   for n in (6, 7, 10, 12, 13, 16, 23)}
            _cpu.set_panel_stream_min(0)
            assert _lstm._panel_stream_min() == 0 and _stream._set_panel_stream_min(0) == 0
            for spread in (0, 1, 2, 3, 12):
                with _cpu.panel_spread(spread):
                    for n, ref in off.items():
                        on = lstm_forward(x[:n], W, U, b, num_threads=n_threads, _plan=path)
                        np.testing.assert_array_equal(on.output, ref.output,
                                                      err_msg=f"{n} rows, spread {spread}")
                        np.testing.assert_array_equal(on.c, ref.c)
    finally:
        _cpu.set_panel_stream_min(default)
    np.testing.assert_allclose(off[23].output, y_ref, **TOL[dtype])


def test_panel_stream_min_from_l2_and_refuses_bad_values():
    """``import cylstm`` sets the stream threshold to a core's L2 in every
    extension; the setter returns the previous value and refuses what is not a
    byte count."""
    from cylstm import _stream
    l2 = _tuning.detected_cpu().l2_per_core
    assert _lstm._panel_stream_min() == l2
    assert _cpu.set_panel_stream_min(l2) == l2
    assert _stream._set_panel_stream_min(l2) == l2
    for bad in (-1, 1.5, "64", True, None):
        with pytest.raises(ValueError, match="nbytes"):
            _cpu.set_panel_stream_min(bad)
    assert _lstm._panel_stream_min() == l2


def test_panel_kblock_budget_from_l2():
    """The budget follows the core's L2 (injected facts), and the setter refuses
    what is not a byte count."""
    assert _tuning.panel_kblock_bytes(dataclasses.replace(ZEN4, l2_per_core=2**19)) == \
        2**19 // _tuning.PANEL_KBLOCK_L2_FRACTION
    assert _tuning.panel_kblock_bytes(dataclasses.replace(ZEN4, l2_per_core=2**21)) == \
        2**21 // _tuning.PANEL_KBLOCK_L2_FRACTION
    for bad in (-1, 1.5, "64", True):
        with pytest.raises(ValueError, match="nbytes"):
            _cpu.set_panel_kblock(bad)


def test_panel_spread_switch_sets_every_extension_and_restores():
    """The measuring switch of the panel passes' stream: both extensions see the
    value inside the block and get their previous one back; bad values refused."""
    from cylstm import _stream
    default = _lstm._set_panel_spread(5)
    assert _stream._set_panel_spread(5) == default
    try:
        with _cpu.panel_spread(0):
            assert _lstm._set_panel_spread(0) == 0 and _stream._set_panel_spread(0) == 0
        assert _lstm._set_panel_spread(5) == 5 and _stream._set_panel_spread(5) == 5
    finally:
        _lstm._set_panel_spread(default)
        _stream._set_panel_spread(default)
    for bad in (-1, 1.5, "2", True):
        with pytest.raises(ValueError, match="n must"), _cpu.panel_spread(bad):
            pass


def test_panel_block_rows_switch_sets_every_extension_and_restores():
    """The measuring switch of the K-blocked passes' row split: both extensions see
    it inside the block and get their previous setting back; non-bools refused."""
    from cylstm import _stream
    with _cpu.panel_block_rows(False):
        assert _lstm._set_panel_block_rows(False) is False
        assert _stream._set_panel_block_rows(False) is False
    assert _lstm._set_panel_block_rows(True) is True
    assert _stream._set_panel_block_rows(True) is True
    for bad in (0, 1, None, "yes"):
        with pytest.raises(TypeError, match="on must be a bool"), _cpu.panel_block_rows(bad):
            pass


def _path(B, H, n_threads, I=8, facts=ZEN4, mask=False, lens=False, reverse=False,
          training=False, dtype=np.float32):
    return functional.plan_forward(B, 25, I, H, dtype, n_threads, training, mask, lens,
                                   reverse, facts=facts).path


def test_plan_keeps_blas_where_it_is_faster():
    """The model rules on an injected Zen 4 (not on whatever CPU runs the test:
    the old version of this test asserted a plan that depended on this machine's
    L3 and failed on a Xeon VM)."""
    assert _path(1, 128, 2) == "units"      # batch 1, 256 KiB of U, a second core
    assert _path(1, 128, 1) == "units"      # one thread, AVX-512: the panel step
    assert _path(8, 128, 1) != "units"      # ... for batches up to UNITS_SERIAL_MAX_BATCH
    assert _path(1, 128, 1, mask=True) == "units"   # one thread takes a recurrent mask
    assert _path(8, 128, 2) == "rows"       # the batch splits (4 rows each: not fused)
    assert _path(1, 128, 2, mask=True) == "rows"
    assert _path(1, 32, 2) == "rows"        # 16 KiB of U: the barrier costs more
    # a recurrent kernel of half the cache budget: split the units, any batch
    for n in (2, 1):
        assert _path(64, 1024, n) == "units"        # 16 MiB of U, 32 MiB budget
    # 16+ rows per thread and 256+ units, [W; U] in a quarter of the budget: stacked
    assert _path(32, 256, 2, I=128) == "stacked"
    assert _path(16, 256, 2, I=128) == "rows_fused"   # 8 rows per thread
    assert _path(32, 128, 2, I=128) == "rows_fused"   # too few units
    assert _path(32, 256, 2, I=128, lens=True) == "stacked"
    assert _path(32, 256, 2, I=128, lens=True, reverse=True) == "rows"
    assert _path(32, 256, 2, I=128, training=True) == "rows_fused"   # inference only
    # the shape of the issue: 32 MiB of [W; U] never fits a quarter of 32 MiB
    assert _path(16, 1024, 2, I=1024) == "units"


def test_plan_reads_the_budget_not_the_whole_l3():
    """Regression (issue "Fast on every CPU"): a Xeon VM's sysfs reports the host's
    480 MiB L3; keyed on it, (25, 16, 1024, 1024) took the fused per-step path,
    measured 39 -> 72 ms.  Keyed on the capped per-core budget it does not."""
    host_l3 = CpuFacts(vendor="GenuineIntel", model_name="Intel(R) Xeon(R) Platinum",
                       family=6, model=143, n_cores=2, isa_level=2, isa_name="avx512",
                       fma512_ports=2, l2_per_core=2 * MiB, l3_total=480 * MiB,
                       l3_shared_by=2, l3_per_core=240 * MiB, llc_budget=480 * MiB)
    # keyed on the whole L3 the budget rule does not split the units (the old
    # choice was the fused path, which FUSE_MAX_BYTES now also refuses); the L2
    # rule, which no L3 report changes, still does
    p = functional.plan_forward(16, 25, 1024, 1024, np.float32, 2, facts=host_l3)
    assert p.path == "units" and "L2" in p.reason
    capped = host_l3.with_l3_per_core(_tuning.L3_PER_CORE_CAP, "capped")
    assert capped.llc_budget == 32 * MiB
    p = functional.plan_forward(16, 25, 1024, 1024, np.float32, 2, facts=capped)
    assert p.path == "units" and "LLC budget" in p.reason


def test_plan_without_avx512_keeps_large_batches_on_blas():
    avx2 = dataclasses.replace(ZEN4, isa_level=1, isa_name="avx2+fma", fma512_ports=0,
                               l3_per_core=MiB // 8, llc_budget=MiB)
    assert _path(1, 128, 2, facts=avx2) == "units"     # batch 1: still split
    assert _path(16, 256, 2, facts=avx2) == "rows"     # big U: BLAS
    assert _path(64, 256, 2, I=8, facts=avx2) == "rows"
    # an OpenBLAS that packs every per-step call (core Haswell: AVX2 CPUs): the
    # stacked step while [W; U] is small, BLAS beyond STACKED_PACKING_BLAS_MAX_BYTES
    haswell = dataclasses.replace(avx2, blas_core="Haswell")
    assert _path(16, 256, 2, facts=haswell) == "stacked"
    # training: the stacked step (the gates kept per panel) from STACKED_TRAIN_MIN_ROWS
    # rows per thread while [W; U] is at most STACKED_TRAIN_MAX_BYTES on one thread,
    # STACKED_TRAIN_TEAM_MAX_BYTES on two; else the unit split up to
    # UNITS_TRAIN_WIDE_MAX_BATCH, and up to UNITS_TRAIN_L2_MAX_BATCH where U is larger
    # than a core's L2
    assert _path(16, 256, 2, facts=haswell, training=True) == "units"     # 8 rows a thread
    assert _path(32, 256, 2, facts=haswell, training=True) == "stacked"   # 16, 1 MiB
    assert _path(16, 256, 1, facts=haswell, training=True) == "stacked"
    assert _path(16, 512, 1, I=512, facts=haswell, training=True) == "units"     # 8 MiB
    assert _path(32, 512, 2, I=512, facts=haswell, training=True) == "stacked"   # 8 MiB
    assert _path(32, 600, 2, I=512, facts=haswell, training=True) == "units"     # 10.7 MiB
    assert _path(32, 256, 2, facts=haswell, training=True, lens=True, reverse=True) == "units"
    assert _path(32, 256, 2, facts=avx2, training=True) != "stacked"   # BLAS step kernels
    assert _path(64, 300, 2, I=2000, facts=haswell, training=True) == "units"   # 1.4 MiB of U
    assert _path(65, 300, 2, I=2000, facts=haswell, training=True) == "rows"
    assert _path(64, 256, 2, I=2000, facts=haswell, training=True) == "rows"    # 1 MiB: the L2
    assert _path(4, 256, 1, facts=haswell) == "stacked"
    # batches 2 and 3 (< MIN_ROWS_PER_THREAD, no thread split): BLAS would repack U
    # every step; U's panels from SMALL_BATCH_UNITS_MIN_BYTES, else the stacked step
    assert _path(2, 256, 1, facts=haswell) == "units"
    assert _path(3, 91, 1, facts=haswell) == "units"               # 129 KiB of U
    assert _path(3, 90, 1, facts=haswell) == "stacked"             # 127 KiB
    assert _path(2, 32, 2, facts=haswell) == "stacked"             # no team below 128 KiB
    assert _path(2, 256, 1, facts=haswell, training=True) == "units"   # (rule 6)
    assert _path(1, 32, 1, facts=haswell) == "rows"                # batch 1: BLAS's gemv
    assert _path(2, 256, 1, facts=avx2) == "rows"                  # BLAS with step kernels
    assert _path(64, 1024, 2, I=1024, facts=haswell) == "units"   # 32 MiB of [W; U]


def test_plan_threads_and_scratch():
    p = functional.plan_forward(1, 5, 8, 128, np.float32, 3, facts=ZEN4)
    assert p.path == "units" and p.n_threads == 3 and p.blas_threads == 3
    assert p.gates == (1, 5, 512) and p.hs2 == (1, 128)
    assert p.z == (3, _lstm.units_scratch(1, 128, "float32"))
    assert p.packed == _lstm.packed_len(128, "float32")
    assert not p.fuse and "units" in p.reason
    p = functional.plan_forward(1, 5, 8, 20, np.float64, 8, force="units")   # 3 panels
    assert p.n_threads == 3 and p.reason == "forced"
    p = functional.plan_forward(9, 5, 8, 20, np.float32, 8, facts=ZEN4)
    assert p.n_threads == 2 and p.z == (9, 80) and p.packed == 0
    p = functional.plan_forward(40, 5, 128, 256, np.float32, 2, facts=ZEN4)
    assert (p.path, p.gates, p.z) == ("stacked", None, (2, 40 * 4 * SPAN[np.float32]))
    assert p.packed == _lstm.stacked_len(128, 256, "float32")
    assert functional.plan_forward(16, 5, 8, 20, np.float32, 2, facts=ZEN4).path == \
        "rows_fused"
    assert functional.plan_forward(16, 5, 8, 20, np.float32, 2, facts=ZEN4).gates is None
    assert functional.plan_forward(16, 5, 8, 20, np.float32, 2, True, facts=ZEN4).gates == \
        (16, 5, 80)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reverse,with_lengths", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("masked", [False, True])
def test_stacked_forward_and_backward_match_reference(monkeypatch, dtype, reverse,
                                                      with_lengths, threads, masked):
    """Mode 2: [x_t, h_prev] @ packed [W; U] per step, threads splitting the batch."""
    monkeypatch.setattr(_tuning, "STACKED_MIN_ROWS", 1)
    monkeypatch.setattr(_tuning, "STACKED_MIN_UNITS", 1)
    B, T, I, H = 7, 6, 5, 37     # a padded last panel for both dtypes
    x, W, U, b = random_lstm(np.random.default_rng(5), B, T, I, H)
    rng = np.random.default_rng(6)
    h0, c0 = rng.standard_normal((2, B, H)) * 0.5
    lengths = rng.integers(0, T + 1, B) if with_lengths else None
    if with_lengths:
        lengths[-1] = 0   # a valid length: outputs zeros, the final state the initial one
    rmask = (rng.random((B, H)) > 0.3) / 0.7 if masked else None
    plan = [_path(B, H, threads, I=I, lens=with_lengths, reverse=reverse, training=training,
                  dtype=dtype) for training in (False, True)]
    assert plan[0] == "stacked" and plan[1] != "stacked"  # training keeps the BLAS path
    y, hT, cT, tape = lstm_ref(x, W, U, b, h0, c0, lengths, reverse, rmask=rmask)
    cast = [a.astype(dtype) for a in (x, W, U, b)]
    kw = {"initial_state": (h0, c0), "lengths": lengths, "go_backwards": reverse,
          "num_threads": threads, "recurrent_mask": rmask}
    inf = lstm_forward(*cast, _plan="stacked", **kw)
    out = lstm_forward(*cast, training=True, **kw)
    # the stacked kernel with the training buffers (gates, cells, h_prev) filled
    # as the BLAS path fills them
    G2, C2, H2 = (np.zeros((B, T, n), dtype) for n in (4 * H, H, H))
    hs, cs = np.array(h0, dtype), np.array(c0, dtype)
    lens64 = None if lengths is None else lengths.astype(np.int64)
    rm = None if rmask is None else rmask.astype(dtype)
    span = SPAN[dtype]
    _lstm.forward_stacked(*cast, lens64, reverse, rm,
                          None if rm is None else np.empty((B, H), dtype),
                          np.zeros((B, T, H), dtype), hs, cs, G2, C2, H2,
                          np.empty((threads, B * 4 * span), dtype),
                          np.empty(_lstm.stacked_len(I, H, np.dtype(dtype).name), dtype),
                          np.empty((B, H), dtype), threads, 1)
    valid = np.ones((B, T), bool) if lengths is None else np.arange(T) < lengths[:, None]
    for got, want in ((G2, out.cache["G"]), (C2, out.cache["C"]), (H2, out.cache["Hp"])):
        np.testing.assert_allclose(got[valid], want[valid], **TOL[dtype])
    for o in (inf, out):
        np.testing.assert_allclose(o.output, y, **TOL[dtype])
        np.testing.assert_allclose(o.h, hT, **TOL[dtype])
        np.testing.assert_allclose(o.c, cT, **TOL[dtype])
    if with_lengths:
        for n, L in enumerate(lengths):
            assert not out.output[n, L:].any()
    dy = rng.standard_normal((B, T, H))
    ref = lstm_ref_backward(x, W, U, tape, dy, rmask=rmask)
    g = lstm_backward(out.cache, dy.astype(dtype), num_threads=threads)
    tol = TOL[dtype] if dtype == np.float64 else {"rtol": 1e-4, "atol": 2e-5}
    for got, want, name in zip(g, ref, ["dx", "dW", "dU", "db", "dh0", "dc0"]):
        np.testing.assert_allclose(got, want, err_msg=name, **tol)
    # the stacked step itself in training (rule 5c on AVX2), its gate buffer from a
    # pool whose last buffer of that size was all NaN: the step writes the gates of
    # running rows only, and the backward must not read the rest
    poison = _workspace.take((B, T, 4 * H), dtype)
    poison.fill(np.nan)
    _workspace.give(poison)
    so = lstm_forward(*cast, training=True, _plan="stacked", **kw)
    for got, want in ((so.output, y), (so.h, hT), (so.c, cT)):
        np.testing.assert_allclose(got, want, **TOL[dtype])
    gs = lstm_backward(so.cache, dy.astype(dtype), num_threads=threads)
    for got, want, name in zip(gs, ref, ["dx", "dW", "dU", "db", "dh0", "dc0"]):
        np.testing.assert_allclose(got, want, err_msg=f"stacked {name}", **tol)


def test_kernel_refuses_inconsistent_panel_buffers():
    B, T, I, H = 1, 3, 2, 20
    x, W, U, b = (a.astype(np.float32) for a in random_lstm(np.random.default_rng(0), B, T, I, H))

    def args(Z, lengths=None, reverse=False):
        return (x, W, U, b, lengths, reverse, None, None, None, np.zeros((B, H), np.float32),
                np.zeros((B, H), np.float32), np.empty((B, T, 4 * H), np.float32), None, None,
                Z)

    P = np.empty(_lstm.packed_len(H, "float32"), np.float32)
    Z = np.empty((2, _lstm.units_scratch(B, H, "float32")), np.float32)
    h2 = np.empty((B, H), np.float32)
    with pytest.raises(ValueError, match="packed_len"):
        _lstm.forward_units(*args(Z), P[:-1], h2, 2, 1)
    with pytest.raises(ValueError, match="hs2"):
        _lstm.forward_units(*args(Z), P, None, 2, 1)
    with pytest.raises(ValueError, match="Z too small"):
        _lstm.forward_units(*args(Z[:1]), P, h2, 2, 1)
    with pytest.raises(ValueError, match="Z too small"):
        _lstm.forward_units(*args(np.empty((2, Z.shape[1] - 1), np.float32)), P, h2, 2, 1)
    # the stacked scratch, and no lengths run backwards
    S = np.empty(_lstm.stacked_len(I, H, "float32"), np.float32)
    Zs = np.empty((2, B * 64), np.float32)
    _lstm.forward_stacked(*args(Zs), S, h2, 2, 1)
    with pytest.raises(ValueError, match="stacked_len"):
        _lstm.forward_stacked(*args(Zs), P, h2, 2, 1)
    with pytest.raises(ValueError, match="backwards"):
        _lstm.forward_stacked(*args(Zs, np.array([3], np.int64), True), S, h2, 2, 1)
    with pytest.raises(ValueError, match="Z must be"):
        _lstm.forward_rows(*args(Zs), 2, 1, False)


@settings(max_examples=60, deadline=None)
@given(B=st.integers(1, 9), T=st.integers(1, 5), I=st.integers(1, 6), H=st.integers(1, 40),
       reverse=st.booleans(), ragged=st.booleans(), threads=st.integers(1, 3),
       dtype=st.sampled_from([np.float32, np.float64]), force=st.sampled_from(_tuning.PATHS),
       seed=st.integers(0, 2**16))
def test_random_shapes_on_every_path(B, T, I, H, reverse, ragged, threads, dtype, force, seed):
    """Hypothesis over small shapes (batch 1, T = 1, one unit, padded panels), each
    forced onto a path (the batch path where the forced one cannot take the case):
    the inference output matches the float64 reference."""
    if functional._path_error(force, B, H, np.dtype(dtype), threads, False, False, ragged,
                              reverse):
        force = "rows"
    rng = np.random.default_rng(seed)
    x, W, U, b = random_lstm(rng, B, T, I, H)
    h0, c0 = rng.standard_normal((2, B, H)) * 0.5
    lengths = rng.integers(1, T + 1, B) if ragged else None
    y, hT, cT, _ = lstm_ref(x, W, U, b, h0, c0, lengths=lengths, reverse=reverse)
    cast = [a.astype(dtype) for a in (x, W, U, b)]
    out = lstm_forward(*cast, initial_state=(h0, c0), lengths=lengths,
                       go_backwards=reverse, num_threads=threads, _plan=force)
    np.testing.assert_allclose(out.output, y, **TOL[dtype])
    np.testing.assert_allclose(out.h, hT, **TOL[dtype])
    np.testing.assert_allclose(out.c, cT, **TOL[dtype])


def test_panel_paths_from_many_python_threads_match_serial():
    """Each call makes its own OpenMP team (its barriers are the team's) and takes
    its scratch from its own thread's pool: four Python threads running the unit
    split and the stacked path at once give the serial results, bit for bit."""
    import threading

    cases = []
    for k, (B, H, path) in enumerate([(1, 40, "units"), (3, 33, "units"), (16, 36, "stacked"),
                                      (12, 20, "stacked")]):
        x, W, U, b = (a.astype(np.float32)
                      for a in random_lstm(np.random.default_rng(30 + k), B, 25, 7, H))
        cases.append(((x, W, U, b), path,
                      lstm_forward(x, W, U, b, num_threads=2, _plan=path).output))
    errors = []

    def work(args, path, want):
        try:
            for _ in range(30):
                np.testing.assert_array_equal(
                    lstm_forward(*args, num_threads=2, _plan=path).output, want)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=c) for c in cases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


@pytest.mark.parametrize("isa_level,rows,want", [
    (2, 10_000, True),                  # AVX-512: the panels project any number of rows
    (1, 256, True), (1, 257, False),    # AVX2: BLAS above PANEL_PROJ_MAX_ROWS
    (0, 256, True), (0, 257, False),
])
def test_panel_projection_rule_follows_the_isa(isa_level, rows, want):
    """Inference on the unit path projects x @ W on the cached panels: on AVX-512
    whatever the rows (B T), elsewhere up to PANEL_PROJ_MAX_ROWS (injected facts,
    so the answer does not depend on the machine running the test)."""
    facts = dataclasses.replace(ZEN4, isa_level=isa_level)
    p = functional.plan_forward(1, rows, 64, 128, np.float32, 1, facts=facts, force="units")
    assert (p.prepacked, p.panel_projection) == (True, want)
    assert p.gates == ((1, rows, _lstm.packed_len(128, "float32") // 128) if want
                       else (1, rows, 512))
    # training never takes cached panels
    p = functional.plan_forward(1, rows, 64, 128, np.float32, 1, training=True, facts=facts,
                     force="units")
    assert (p.prepacked, p.panel_projection) == (False, False)


def _unpack_plain(P, K, N, dtype):
    """The (K, N) matrix in plain panels P, read back from the documented layout
    (panels of 4 vectors, the last rounded up to whole vectors), checking that
    the padding columns are zero."""
    vl = 64 // np.dtype(dtype).itemsize
    pw = 4 * vl
    cols = []
    for p in range(-(-N // pw)):
        w = min(pw, N - p * pw)
        wp = -(-w // vl) * vl
        block = P[p * K * pw:p * K * pw + K * wp].reshape(K, wp)
        np.testing.assert_array_equal(block[:, w:], 0)
        cols.append(block[:, :w])
    return np.hstack(cols)


@pytest.mark.parametrize("level", [lv for lv in (0, 1, 2) if lv <= _cpu.detected_level()])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("H", [1, 5, 16, 50, 64, 70, 130, 300])
def test_packed_transpose_is_u_transposed_zero_padded(dtype, H, level):
    """pack_transposed lays U^T out in panels of whole vectors, the columns past H
    zero (no transposed tail): rebuilt from the layout, it is U^T exactly (H = 130
    and 300: K = 4H crosses the packer's 128 KiB blocks of panel rows, and a last
    panel of 2 or 12 columns ends in columns that are not a group of four or
    eight; odd H: K = 4H ends in half an 8 x 8 block), on every ISA level this CPU
    runs (float32 moves 8 x 8 blocks through registers from AVX2 on)."""
    rng = np.random.default_rng(H)
    U = rng.standard_normal((H, 4 * H)).astype(dtype)
    P = np.full(_lstm.transposed_len(H, dtype), np.nan, dtype)
    with _cpu.forced_level(level):
        _lstm.pack_transposed(U, P)
    np.testing.assert_array_equal(_unpack_plain(P, 4 * H, H, dtype), U.T)
    vl = 64 // np.dtype(dtype).itemsize
    assert _lstm.transposed_width(H, dtype) == -(-H // vl) * vl


def test_backward_refuses_a_dhp_scratch_of_the_wrong_width(monkeypatch):
    B, T, I, H = 2, 3, 4, 50
    x, W, U, b = random_lstm(np.random.default_rng(0), B, T, I, H)
    out = lstm_forward(x, W, U, b, return_sequences=True, training=True)
    real = _lstm.backward

    def narrow(*a):
        a = list(a)
        a[14] = np.zeros((B, H))   # dHp: (B, H) instead of (B, transposed_width(H))
        return real(*a)

    monkeypatch.setattr(_lstm, "backward", narrow)
    with pytest.raises(ValueError, match=r"dHp must be \(B, transposed_width\(H\)\)"):
        lstm_backward(out.cache, grad_output=np.ones((B, T, H)))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("N", [1, 5, 16, 64, 70, 130])
def test_pack_plain_is_m_zero_padded(dtype, N):
    """pack_plain lays M (K, N) out in panels of plain_width columns, the last one
    rounded up to whole vectors with zero columns: rebuilt, it is M exactly."""
    rng = np.random.default_rng(N)
    K = 7
    M = rng.standard_normal((K, N)).astype(dtype)
    P = np.full(_lstm.plain_len(K, N, dtype), np.nan, dtype)
    _lstm.pack_plain(M, P)
    assert _lstm.plain_width(dtype) == 4 * (64 // np.dtype(dtype).itemsize)
    np.testing.assert_array_equal(_unpack_plain(P, K, N, dtype), M)
    with pytest.raises(ValueError, match="plain_len"):
        _lstm.pack_plain(M, np.empty(P.size + 1, dtype))
    with pytest.raises(ValueError, match="plain_len"):
        _lstm.pack_plain(np.empty((0, N), dtype), np.empty(0, dtype))


@pytest.mark.parametrize(("T", "I", "H"), [(30, 64, 128), (20, 7, 50), (9, 5, 17), (10, 3, 16),
                                           (12, 40, 8)])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("sequences", [True, False])
def test_batch_one_whole_steps_match_the_panel_split(T, I, H, reverse, sequences):
    # batch 1 on one thread runs whole steps (_units_step_b1: every panel's product,
    # then all the cells in one call); two threads split the panels and run the
    # cell per panel: the same bits, and both the float64 reference's numbers
    x, W, U, b = (np.asarray(a, np.float32) for a in random_lstm(np.random.default_rng(H + T),
                                                                  1, T, I, H))
    p = functional.plan_forward(1, T, I, H, np.float32, 1, force="units")
    assert (p.path, p.panel_projection) == ("units", True), p.reason
    kw = {"go_backwards": reverse, "return_sequences": sequences}
    one = lstm_forward(x, W, U, b, num_threads=1, _plan="units", **kw)
    two = lstm_forward(x, W, U, b, num_threads=2, _plan="units", **kw)
    for a, c in zip((one.output, one.h, one.c), (two.output, two.h, two.c)):
        np.testing.assert_array_equal(a, c)
    ys, hT, cT, _ = lstm_ref(*(a.astype(np.float64) for a in (x, W, U, b)), reverse=reverse)
    np.testing.assert_allclose(one.output, ys if sequences else hT, atol=2e-6)
    np.testing.assert_allclose(one.c, cT, atol=2e-6)
