"""CPU facts from injected sysfs / cpuinfo trees, the planner's choices on them,
forcing each path with ``_plan=`` against the NumPy reference, and the tuning
cache's robustness.  Nothing here depends on the CPU that runs it."""
import dataclasses
import json
import os
import warnings

import numpy as np
import pytest
from reference import lstm_ref, lstm_ref_backward, random_lstm

import cylstm
from cylstm import _tuning, functional
from cylstm._tuning import CpuFacts, detect_cpu
from cylstm.functional import ForwardPlan, lstm_backward, lstm_forward, plan_forward

MiB = 2**20
TOL = {np.float64: {"rtol": 1e-10, "atol": 1e-12}, np.float32: {"rtol": 1e-5, "atol": 2e-6}}
AVX512 = "fpu sse2 avx avx2 fma bmi1 bmi2 movbe f16c popcnt avx512f avx512bw avx512vl " \
         "avx512dq avx512cd"
AVX2 = "fpu sse2 avx avx2 fma bmi1 bmi2 movbe f16c popcnt"


def fake_machine(root, *, vendor, name, family, model, flags, caches, online):
    """Write a sysfs cpu tree and a cpuinfo file under ``root``; return their paths.
    ``caches``: (level, type, size, shared_cpu_list) for cpu0."""
    sysfs = root / "cpu"
    for k, (level, kind, size, shared) in enumerate(caches):
        d = sysfs / "cpu0" / "cache" / f"index{k}"
        d.mkdir(parents=True)
        for fname, value in (("level", level), ("type", kind), ("size", size),
                             ("shared_cpu_list", shared)):
            (d / fname).write_text(f"{value}\n")
    sysfs.mkdir(exist_ok=True)
    (sysfs / "online").write_text(online + "\n")
    info = root / "cpuinfo"
    block = (f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\n"
             f"model\t\t: {model}\nmodel name\t: {name}\nflags\t\t: {flags}\n\n")
    info.write_text(block + block.replace("processor\t: 0", "processor\t: 1"))
    return str(sysfs), str(info)


@pytest.fixture
def zen4(tmp_path):
    return fake_machine(
        tmp_path, vendor="AuthenticAMD", name="AMD Ryzen 7 7700X 8-Core Processor", family=25,
        model=97, flags=AVX512 + " avx512_bf16 avx512_vnni",
        caches=[(1, "Data", "32K", "0"), (1, "Instruction", "32K", "0"),
                (2, "Unified", "1024K", "0"), (3, "Unified", "32768K", "0-7")],
        online="0-7")


@pytest.fixture
def xeon_vm(tmp_path):
    """A 2-vCPU VM whose sysfs reports the host's whole 480 MiB L3."""
    return fake_machine(
        tmp_path, vendor="GenuineIntel", name="Intel(R) Xeon(R) Platinum 8480+", family=6,
        model=143, flags=AVX512 + " avx512_fp16 avx512_bf16 amx_tile amx_bf16 amx_int8",
        caches=[(1, "Data", "48K", "0"), (2, "Unified", "2048K", "0"),
                (3, "Unified", "491520K", "0-1")],
        online="0-1")


@pytest.fixture
def avx2_desktop(tmp_path):
    return fake_machine(
        tmp_path, vendor="GenuineIntel", name="Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz",
        family=6, model=158, flags=AVX2,
        caches=[(1, "Data", "32K", "0,6"), (2, "Unified", "256K", "0,6"),
                (3, "Unified", "12M", "0-11")],
        online="0-11")


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Every test gets its own empty tuning cache, tuning on, nothing memoized."""
    d = tmp_path / "cache"
    monkeypatch.setenv("CYLSTM_CACHE_DIR", str(d))
    monkeypatch.delenv("CYLSTM_TUNE", raising=False)
    _tuning.forget()
    yield d
    _tuning.forget()


# ------------------------------------------------------------------ CPU facts
def test_zen4_facts(zen4):
    f = detect_cpu(*zen4)
    assert (f.vendor, f.family, f.model, f.n_cores) == ("AuthenticAMD", 25, 97, 8)
    assert (f.isa_level, f.isa_name, f.fma512_ports) == (2, "avx512", 1)
    assert f.flags == {"avx512_bf16", "avx512_vnni"}
    assert f.l2_per_core == MiB and f.l3_per_core == 4 * MiB and f.llc_budget == 32 * MiB
    assert (f.l3_total, f.l3_shared_by) == (32 * MiB, 8)


def test_xeon_vm_facts_cap_the_host_l3(xeon_vm):
    f = detect_cpu(*xeon_vm)
    assert (f.n_cores, f.isa_level, f.fma512_ports) == (2, 2, 2)
    assert {"amx_tile", "amx_bf16", "amx_int8", "avx512_fp16"} <= f.flags
    assert f.l3_total == 480 * MiB and f.l3_shared_by == 2
    assert f.l3_per_core == _tuning.L3_PER_CORE_CAP == 16 * MiB
    assert f.llc_budget == 32 * MiB and "capped" in f.l3_source
    assert f.l2_per_core == 2 * MiB


def test_avx2_desktop_facts(avx2_desktop):
    f = detect_cpu(*avx2_desktop)
    assert (f.isa_level, f.isa_name, f.fma512_ports, f.n_cores) == (1, "avx2+fma", 0, 12)
    assert f.l2_per_core == 128 * 1024          # 256K shared by two hyperthreads
    assert f.l3_per_core == MiB and f.llc_budget == 12 * MiB
    assert f.flags == frozenset()


def test_no_sysfs_gives_defaults(tmp_path):
    f = detect_cpu(str(tmp_path / "none"), str(tmp_path / "no-cpuinfo"))
    assert (f.vendor, f.model_name, f.isa_level, f.fma512_ports, f.n_cores) == \
        ("unknown", "unknown", 0, 0, 1)
    assert f.l2_per_core == MiB and f.l3_per_core == 2 * MiB and f.llc_budget == 2 * MiB
    # overrides still apply
    f = detect_cpu(str(tmp_path / "none"), str(tmp_path / "no-cpuinfo"), n_cores=4,
                   isa_level=1)
    assert (f.n_cores, f.isa_level, f.llc_budget) == (4, 1, 8 * MiB)


def test_unreadable_cache_entries_are_skipped(zen4, tmp_path):
    sysfs, info = zen4
    with open(os.path.join(sysfs, "cpu0", "cache", "index3", "size"), "w") as fh:
        fh.write("lots\n")
    f = detect_cpu(sysfs, info)
    assert f.l3_total == 0 and f.l3_per_core == MiB   # no readable L3: the L2 is the last


@pytest.mark.parametrize("txt,want", [("48K", 48 * 1024), ("32M", 32 * MiB), ("1G", 2**30),
                                      ("512", 512), ("", None), ("x", None), (None, None)])
def test_parse_size(txt, want):
    assert _tuning._parse_size(txt) == want


@pytest.mark.parametrize("txt,want", [("0", 1), ("0-7", 8), ("0,8", 2), ("0-3,8-11", 8),
                                      ("", None), ("a-b", None)])
def test_count_cpu_list(txt, want):
    assert _tuning._count_cpu_list(txt) == want


@pytest.mark.parametrize("vendor,family,model,name,extra,want", [
    ("AuthenticAMD", 25, 97, "AMD Ryzen 9 7950X", "", 1),          # Zen 4: split halves
    ("AuthenticAMD", 26, 68, "AMD Ryzen 9 9950X", "", 2),          # Zen 5 desktop
    ("AuthenticAMD", 26, 36, "AMD Ryzen AI 9 HX 370", "", 1),      # Zen 5 mobile
    ("GenuineIntel", 6, 85, "Intel(R) Xeon(R) Gold 6148", "", 2),  # Skylake-SP
    ("GenuineIntel", 6, 167, "Intel(R) Xeon(R) Processor", " amx_tile", 2),  # VM-masked SPR
    ("GenuineIntel", 6, 140, "11th Gen Intel(R) Core(TM) i7-1185G7", "", 1),  # Tiger Lake
])
def test_fma512_ports_heuristic(vendor, family, model, name, extra, want):
    flags = frozenset((AVX512 + extra).split())
    assert _tuning._fma512_ports(vendor, family, model, name, flags) == want
    assert _tuning._fma512_ports(vendor, family, model, name, frozenset(AVX2.split())) == 0


# ------------------------------------------------------------------ plans on injected facts
def _path(facts, B, T, I, H, n, **kw):
    return plan_forward(B, T, I, H, np.float32, n, facts=facts, **kw)


def test_zen4_plans(zen4):
    f = detect_cpu(*zen4, blas_core="SkylakeX")
    p = _path(f, 16, 25, 1024, 1024, 2)
    assert p.path == "units" and "LLC budget" in p.reason
    assert _path(f, 64, 25, 512, 512, 2).path == "stacked"
    assert _path(f, 32, 100, 128, 256, 2).path == "stacked"
    assert _path(f, 32, 100, 128, 128, 2).path == "rows_fused"
    assert _path(f, 1, 200, 64, 96, 2).path == "units"
    assert _path(f, 1, 200, 32, 64, 2).path == "rows"


def test_xeon_vm_does_not_fuse_the_big_shape(xeon_vm):
    f = detect_cpu(*xeon_vm, blas_core="SapphireRapids")
    p = _path(f, 16, 25, 1024, 1024, 2)
    assert p.path != "rows_fused"
    assert p.path == "units"


def test_avx2_plans(avx2_desktop):
    f = detect_cpu(*avx2_desktop)
    # U beyond a core's L2 (128 KiB here): the unit split keeps shares in L2
    p = _path(f, 16, 25, 1024, 1024, 2)
    assert p.path == "units" and "L2" in p.reason
    # 8 MiB of [W; U]: stacked from STACKED_WIDE_MIN_ROWS rows per thread, else units
    p = _path(f, 64, 25, 512, 512, 2)
    assert p.path == "stacked" and "STACKED_WIDE_MIN_ROWS" in p.reason
    assert _path(f, 63, 25, 512, 512, 2).path == "units"
    assert _path(f, 64, 25, 768, 768, 2).path == "units"      # 18 MiB: not stacked
    assert _path(f, 16, 25, 512, 512, 1).path == "units"
    # one thread, 64 rows: the unit path in inference up to
    # UNITS_L2_SERIAL_MAX_BATCH_INFERENCE (in training, UNITS_TRAIN_L2_MAX_BATCH)
    assert _path(f, 64, 25, 768, 768, 1).path == "units"
    assert _path(f, 65, 25, 768, 768, 1).path in ("rows", "rows_fused")
    assert _path(f, 64, 25, 512, 512, 1).path == "stacked"   # (STACKED_WIDE_MIN_ROWS)
    assert _path(f, 65, 25, 512, 512, 1, training=True).path == "rows"
    # batch 1: U's panels where this BLAS's gemv is the slower stream (its
    # core packs every per-step call: UNITS_SERIAL_B1_MIN_BYTES), else BLAS's gemv
    p = _path(f, 1, 25, 512, 512, 1)
    assert p.path == "units" and "UNITS_SERIAL_B1_MIN_BYTES" in p.reason
    assert _path(f, 1, 25, 64, 127, 1).path == "rows"                  # 252 KiB of U
    assert _path(f, 1, 25, 512, 512, 1, training=True).path == "units"  # (rule 6)
    g1 = dataclasses.replace(f, blas_core="SkylakeX")
    assert _path(g1, 1, 25, 512, 512, 1).path == "rows"
    # no small-matrix BLAS kernels known ("unknown" core): the stacked step on AVX2
    p = _path(f, 32, 25, 64, 128, 2)
    assert p.path == "stacked" and "STACKED_PACKING_BLAS_MAX_BYTES" in p.reason
    # in training too, the gates kept per panel (STACKED_TRAIN_MIN_ROWS rows a thread)
    p = _path(f, 65, 25, 64, 128, 2, training=True)
    assert p.path == "stacked" and "STACKED_TRAIN_MIN_ROWS" in p.reason
    g = dataclasses.replace(f, blas_core="SkylakeX")     # (BLAS kernels as on AVX-512)
    assert _path(g, 32, 25, 64, 128, 2).path == "rows_fused"
    assert _path(f, 1, 25, 64, 128, 2).path == "units"        # small batch: still split
    # 2 rows are below MIN_ROWS_PER_THREAD, and this BLAS would repack U every step:
    # U's panels (SMALL_BATCH_UNITS_MIN_BYTES); with small-matrix kernels, BLAS
    p = _path(f, 2, 25, 256, 256, 1)
    assert p.path == "units" and "SMALL_BATCH_UNITS_MIN_BYTES" in p.reason
    assert _path(g, 2, 25, 256, 256, 1).path == "rows"
    # a recurrent mask keeps a multi-thread call off the unit split
    assert _path(f, 64, 25, 512, 512, 2, has_mask=True).path == "stacked"   # (batch split)
    assert _path(f, 64, 25, 768, 768, 2, has_mask=True).path == "rows"
    assert _path(f, 16, 25, 512, 512, 1, has_mask=True).path == "units"


def test_training_stacked_rule_where_blas_packs_each_step(avx2_desktop, monkeypatch):
    """Rule 5c: training on AVX2 takes the stacked step (the gates kept per panel)
    from STACKED_TRAIN_MIN_ROWS rows per thread while [W; U] is at most
    STACKED_TRAIN_MAX_BYTES on one thread, STACKED_TRAIN_TEAM_MAX_BYTES on more."""
    f = detect_cpu(*avx2_desktop)        # BLAS core unknown: packs every per-step call
    t = _tuning
    rows, one, team = t.STACKED_TRAIN_MIN_ROWS, t.STACKED_TRAIN_MAX_BYTES, \
        t.STACKED_TRAIN_TEAM_MAX_BYTES
    for n in (1, 2):
        p = _path(f, n * rows, 100, 64, 128, n, training=True)
        assert p.path == "stacked" and "STACKED_TRAIN_MIN_ROWS" in p.reason, n
        assert _path(f, n * rows - 1, 100, 64, 128, n, training=True).path != "stacked"
        assert _path(f, n * rows, 100, 64, 128, n, training=True, has_lengths=True,
                     reverse=True).path != "stacked"
    # [W; U] bytes: (I + H) 4 H 4; I = H = 256 is 2 MiB, I = H = 512 is 8 MiB
    assert _path(f, rows, 100, 256, 256, 1, training=True).path == "stacked"
    assert _path(f, rows, 100, 257, 256, 1, training=True).path != "stacked"
    assert (256 + 256) * 4 * 256 * 4 == one and (512 + 512) * 4 * 512 * 4 == team
    assert _path(f, 2 * rows, 100, 512, 512, 2, training=True).path == "stacked"
    assert _path(f, 2 * rows, 100, 513, 512, 2, training=True).path != "stacked"
    # AVX-512, or a BLAS with small-matrix kernels: not this rule
    g = dataclasses.replace(f, blas_core="SkylakeX")
    assert _path(g, rows, 100, 64, 128, 1, training=True).path != "stacked"
    v4 = dataclasses.replace(f, isa_level=2)
    assert _path(v4, rows, 100, 64, 128, 1, training=True).path != "stacked"


def test_training_unit_rule_where_blas_packs_each_step(avx2_desktop, monkeypatch):
    f = detect_cpu(*avx2_desktop)        # BLAS core unknown: packs every per-step call
    t = _tuning
    monkeypatch.setattr(t, "STACKED_TRAIN_MIN_ROWS", 10**9)   # rule 6 alone (not 5c)
    for n in (1, 2):
        for B in ((1,) if n == 1 else ()) + (8, t.UNITS_TRAIN_MAX_BATCH):
            p = _path(f, B, 100, 64, 128, n, training=True)
            assert p.path == "units" and "UNITS_TRAIN_MAX_BATCH" in p.reason, (B, n)
        # up to UNITS_TRAIN_WIDE_MAX_BATCH (256 KiB of U: enough for a team too)
        p = _path(f, t.UNITS_TRAIN_WIDE_MAX_BATCH, 100, 64, 128, n, training=True)
        assert p.path == "units" and "UNITS_TRAIN_WIDE_MAX_BATCH" in p.reason
        # beyond it only where U is larger than a core's L2 (128 KiB here), up to
        # UNITS_TRAIN_L2_MAX_BATCH
        B = t.UNITS_TRAIN_WIDE_MAX_BATCH + 1
        assert _path(f, B, 100, 64, 64, n, training=True).path == "rows"     # 64 KiB
        p = _path(f, B, 100, 64, 128, n, training=True)                      # 256 KiB
        assert p.path == "units" and "UNITS_TRAIN_L2_MAX_BATCH" in p.reason
        assert _path(f, t.UNITS_TRAIN_L2_MAX_BATCH + 1, 100, 64, 128, n,
                     training=True).path == "rows"   # (not rows_fused on this BLAS)
        # inference (the stacked step) keeps its own rules
        assert _path(f, 8, 100, 64, 128, n).path == "stacked"
    # above UNITS_TRAIN_MAX_BATCH a team needs UNITS_TRAIN_TEAM_MIN_BYTES of U
    B = t.UNITS_TRAIN_MAX_BATCH + 1
    assert _path(f, B, 100, 10, 64, 1, training=True).path == "units"      # 64 KiB
    assert _path(f, B, 100, 10, 64, 2, training=True).path == "units"
    assert _path(f, B, 100, 10, 63, 1, training=True).path == "units"      # 62 KiB
    assert _path(f, B, 100, 10, 63, 2, training=True).path == "rows"
    assert _path(f, t.UNITS_TRAIN_MAX_BATCH, 100, 10, 63, 2, training=True).path == "units"
    # one panel: nothing to split; a mask on two threads: the threads share h_prev
    assert _path(f, 8, 100, 64, 16, 1, training=True).path != "units"
    assert _path(f, 8, 100, 64, 128, 2, training=True, has_mask=True).path != "units"
    assert _path(f, 8, 100, 64, 128, 1, training=True, has_mask=True).path == "units"
    # where BLAS has small-matrix kernels for the per-step tiles, BLAS's step stays
    g = dataclasses.replace(f, blas_core="SkylakeX")
    assert _path(g, 8, 100, 64, 128, 1, training=True).path != "units"


def test_serial_unit_rules(xeon_vm):
    f = detect_cpu(*xeon_vm, blas_core="SapphireRapids")        # AVX-512, 2 MiB L2 per core
    t = _tuning
    for B in (1, t.UNITS_SERIAL_MAX_BATCH):
        p = _path(f, B, 100, 256, 256, 1)
        assert p.path == "units" and "UNITS_SERIAL_MAX_BATCH" in p.reason
    assert _path(f, t.UNITS_SERIAL_MAX_BATCH + 28, 100, 128, 256, 1).path == "stacked"
    p = _path(f, 32, 100, 128, 256, 1, training=True)
    assert p.path == "units" and "UNITS_SERIAL_MIN_UNITS" in p.reason
    assert _path(f, 32, 100, 64, 128, 1, training=True).path != "units"
    # one panel only: nothing to split or snake
    assert _path(f, 1, 100, 8, 16, 1).path == "rows"
    # U of 4 MiB > the 2 MiB L2: units on two threads in training
    p = _path(f, 64, 50, 512, 512, 2, training=True)
    assert p.path == "units" and "L2" in p.reason
    assert _path(f, 32, 100, 128, 256, 2, training=True).path == "rows_fused"


def test_no_sysfs_plans(tmp_path):
    f = detect_cpu(str(tmp_path / "none"), str(tmp_path / "none"), n_cores=2)
    assert _path(f, 16, 25, 1024, 1024, 2).path == "rows"
    assert _path(f, 0, 25, 8, 8, 2).path == "rows"


def test_backward_plan(monkeypatch):
    monkeypatch.setattr(_tuning, "BACKWARD_UNITS_MAX_ROWS", 0)   # the batch split here
    assert functional.plan_backward(16, 2).n_threads == 2
    assert functional.plan_backward(7, 2).n_threads == 1
    assert functional.plan_backward(7, 2).blas_threads == 2
    with pytest.raises(ValueError, match="num_threads"):
        functional.plan_backward(7, 0)
    # the weight gradients over the whole batch where a slice's rows (samples x T)
    # are fewer than the gradient's (I + H); never on one slice, nor without sizes
    assert functional.plan_backward(16, 2, T=25, I=1024, H=1024).whole_grads
    assert not functional.plan_backward(64, 2, T=50, I=512, H=512).whole_grads
    assert not functional.plan_backward(7, 2, T=2, I=1024, H=1024).whole_grads
    assert not functional.plan_backward(16, 2).whole_grads


def test_backward_plan_splits_the_time_loop_by_units_for_few_rows_and_a_large_u():
    """At most BACKWARD_UNITS_MAX_ROWS samples a thread and U^T (4H x H float32)
    past a core's L2 (injected facts): the unit split, on every thread even where
    the batch split could not split at all; never on one thread or for bf16."""
    small_l2 = dataclasses.replace(_tuning.detected_cpu(), l2_per_core=2**19)
    big_l2 = dataclasses.replace(_tuning.detected_cpu(), l2_per_core=2**24)
    p = functional.plan_backward(16, 2, T=25, I=1024, H=1024, facts=small_l2)
    assert p.units and p.n_threads == 2 and p.blas_threads == 2 and not p.whole_grads
    assert functional.plan_backward(1, 2, T=150, I=256, H=256, facts=small_l2).n_threads == 2
    rows = _tuning.BACKWARD_UNITS_MAX_ROWS
    assert not functional.plan_backward(2 * rows + 2, 2, T=9, I=8, H=1024,
                                        facts=small_l2).units
    assert functional.plan_backward(2 * rows + 1, 2, T=9, I=8, H=1024, facts=small_l2).units
    # 4 x 256 x 256 x 4 bytes = 1 MiB of U^T against the L2
    assert functional.plan_backward(4, 2, T=9, I=8, H=256, facts=small_l2).units
    assert not functional.plan_backward(4, 2, T=9, I=8, H=256, facts=big_l2).units
    assert not functional.plan_backward(4, 1, T=9, I=8, H=1024, facts=small_l2).units
    assert not functional.plan_backward(4, 2, T=9, I=8, H=1024, facts=small_l2,
                                        bf16=True).units
    assert not functional.plan_backward(4, 2, facts=small_l2).units   # no sizes given
    # float64's U^T is twice float32's: H = 181 passes 512 KiB in float64 only
    assert not functional.plan_backward(4, 2, T=9, I=8, H=181, facts=small_l2).units
    assert functional.plan_backward(4, 2, T=9, I=8, H=181, facts=small_l2,
                                    dtype=np.float64).units


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("whole", [False, True])
@pytest.mark.parametrize("lengths", [False, True])
def test_backward_split_both_ways_matches_reference(monkeypatch, dtype, whole, lengths):
    # 2 slices of 5 samples x 3 steps = 15 rows < I + H = 36: the whole-batch GEMMs
    monkeypatch.setattr(_tuning, "BACKWARD_WHOLE_GRADS", whole)
    monkeypatch.setattr(_tuning, "BACKWARD_UNITS_MAX_ROWS", 0)
    B, T, I, H = 10, 3, 20, 16
    assert functional.plan_backward(B, 2, T=T, I=I, H=H).whole_grads == whole
    x, W, U, b = random_lstm(np.random.default_rng(5), B, T, I, H)
    lens = np.array([3, 1, 0, 2, 3, 3, 2, 1, 3, 2]) if lengths else None
    dy = np.random.default_rng(6).standard_normal((B, T, H))
    if lengths:
        dy = dy * (np.arange(T)[None, :] < lens[:, None])[..., None]
    out = lstm_forward(*(a.astype(dtype) for a in (x, W, U, b)), lengths=lens,
                       training=True, num_threads=2)
    g = lstm_backward(out.cache, grad_output=dy.astype(dtype), num_threads=2)
    _, _, _, tape = lstm_ref(x, W, U, b, lengths=lens)
    want = lstm_ref_backward(x, W, U, tape, dy)
    tol = {"rtol": 2e-4, "atol": 2e-5} if dtype == np.float32 else {"rtol": 1e-9, "atol": 1e-11}
    for name, got, ref in zip(("dx", "dW", "dU", "db"), g[:4], want[:4]):
        np.testing.assert_allclose(got, ref, **tol, err_msg=name)


# ------------------------------------------------------------------ forcing paths
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("path", _tuning.PATHS)
def test_forced_path_matches_reference(path, threads, dtype):
    B, T, I, H = 9, 5, 4, 37
    x, W, U, b = random_lstm(np.random.default_rng(3), B, T, I, H)
    rng = np.random.default_rng(4)
    h0, c0 = rng.standard_normal((2, B, H)) * 0.5
    y, hT, cT, tape = lstm_ref(x, W, U, b, h0, c0)
    cast = [a.astype(dtype) for a in (x, W, U, b)]
    training = True   # every path trains ("stacked" too: the gates kept per panel)
    out = lstm_forward(*cast, initial_state=(h0, c0), num_threads=threads, training=training,
                       _plan=path)
    for got, want in ((out.output, y), (out.h, hT), (out.c, cT)):
        np.testing.assert_allclose(got, want, **TOL[dtype])
    if training:
        dy = rng.standard_normal((B, T, H))
        ref = lstm_ref_backward(x, W, U, tape, dy)
        g = lstm_backward(out.cache, dy.astype(dtype), num_threads=threads)
        tol = TOL[dtype] if dtype == np.float64 else {"rtol": 1e-4, "atol": 2e-5}
        for got, want, name in zip(g, ref, ["dx", "dW", "dU", "db", "dh0", "dc0"]):
            np.testing.assert_allclose(got, want, err_msg=name, **tol)


def test_forced_plan_object_and_kernel_arguments(monkeypatch):
    x, W, U, b = (a.astype(np.float32) for a in random_lstm(np.random.default_rng(0),
                                                            3, 4, 5, 40))
    calls = []
    for name in ("forward_rows", "forward_units", "forward_stacked"):
        real = getattr(functional._lstm, name)
        monkeypatch.setattr(functional._lstm, name,
                            lambda *a, _n=name, _r=real: calls.append((_n,) + a[15:]) or _r(*a))
    functional._packcache.clear()  # (earlier tests' fresh weights may have paused it)
    p = plan_forward(3, 4, 5, 40, np.float32, 2, force="units")
    lstm_forward(x, W, U, b, num_threads=2, _plan=p)
    lstm_forward(x, W, U, b, num_threads=2, _plan="rows_fused")
    lstm_forward(x, W, U, b, num_threads=2, _plan="stacked")
    # (entry point, [packed, h buffer,] threads, BLAS threads[, fuse | prepacked,
    # panel projection | tiles, bf16]): batch 3 runs one batch thread; inference takes
    # the packed weights from the cache, and 12 rows of x project on the panels
    assert [(c[0],) + (c[1:] if c[0] == "forward_rows" else c[3:]) for c in calls] == [
        ("forward_units", 2, 2, True, True),
        ("forward_rows", 1, 2, True, plan_forward(3, 4, 5, 40, np.float32, 2,
                                                  force="rows_fused").tile_steps, False),
        ("forward_stacked", 1, 2, True)]


@pytest.mark.parametrize("core,tiled", [("SkylakeX", True), ("Cooperlake", True),
                                        ("SapphireRapids", True), ("Haswell", False),
                                        ("Zen", False), ("unknown", False)])
def test_step_tiles_follow_the_blas_core(zen4, core, tiled):
    """Per-step BLAS products go as small tiles only to OpenBLAS cores with
    small-matrix kernels (STEP_TILE_BLAS_CORES); the plan carries the choice."""
    f = detect_cpu(*zen4, blas_core=core)
    assert f.blas_core == core and f.blas_tiles_steps is tiled
    for path in ("rows", "rows_fused"):
        assert _path(f, 32, 10, 16, 64, 2, force=path).tile_steps is tiled
    assert not _path(f, 32, 10, 16, 64, 2, force="units").tile_steps
    assert detect_cpu(*zen4).blas_core == "unknown"   # injected files: no BLAS to ask


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("path", ["rows", "rows_fused"])
def test_tiled_and_whole_step_products_match_the_reference(path, dtype):
    """Both ways of running a step's BLAS products give the reference (tiles over
    rows, columns and K: about 2^19 multiply-adds each)."""
    B, T, I, H = 24, 5, 600, 160   # K above 2 x 256: K tiles too
    x, W, U, b = random_lstm(np.random.default_rng(5), B, T, I, H)
    want = lstm_ref(x, W, U, b)
    tol = {"rtol": 2e-4, "atol": 2e-5} if dtype == np.float32 else {"rtol": 1e-10,
                                                                      "atol": 1e-12}
    args = [a.astype(dtype) for a in (x, W, U, b)]
    for tiled in (False, True):
        plan = dataclasses.replace(plan_forward(B, T, I, H, dtype, 1, force=path),
                                   tile_steps=tiled)
        out = lstm_forward(*args, num_threads=1, _plan=plan)
        np.testing.assert_allclose(out.output, want[0], **tol)
        np.testing.assert_allclose(out.c, want[2], **tol)


@pytest.mark.parametrize("path,kw,match", [
    ("units", {"recurrent_mask": np.ones((3, 40))}, "recurrent mask"),
    ("stacked", {"lengths": [1, 2, 4], "go_backwards": True}, "backwards"),
    ("rows_fused", {"lengths": [1, 2, 4]}, "lengths"),
    ("fastest", {}, "unknown path"),
])
def test_invalid_forced_paths_say_why(path, kw, match):
    x, W, U, b = random_lstm(np.random.default_rng(0), 3, 4, 5, 40)
    with pytest.raises(ValueError, match=match) as info:
        lstm_forward(x, W, U, b, num_threads=2, _plan=path, **kw)
    assert path in str(info.value)


def test_forced_path_type_and_allowed_edge_cases():
    x, W, U, b = random_lstm(np.random.default_rng(0), 3, 4, 5, 40)
    with pytest.raises(TypeError, match="_plan"):
        lstm_forward(x, W, U, b, _plan=3)
    ref = lstm_forward(x, W, U, b, recurrent_mask=np.ones((3, 40)), num_threads=1)
    # one thread runs the unit split with a mask (no team shares h_prev)
    out = lstm_forward(x, W, U, b, recurrent_mask=np.ones((3, 40)), num_threads=1,
                       _plan="units")
    np.testing.assert_allclose(out.output, ref.output, **TOL[np.float64])
    assert lstm_forward(x[:0], W, U, b, _plan="units").output.shape == (0, 4, 40)


# ------------------------------------------------------------------ the tuning cache
def _plan_now(B=2, I=3, H=20, n=2, **kw):
    return plan_forward(B, 4, I, H, np.float32, n, **kw)


def _identity():
    return _tuning._identity(_tuning.detected_cpu())


def _write(cache_dir, text):
    """Write the cache file as another process would, and let RESTAT_S pass."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    (cache_dir / "tuning.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    _tuning.forget()


def _valid(choices, **extra):
    return json.dumps({"format": 1, **_identity(), "choices": choices, **extra})


def test_cache_path_precedence(monkeypatch, tmp_path):
    assert _tuning.cache_path() == str(tmp_path / "cache" / "tuning.json")
    monkeypatch.delenv("CYLSTM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _tuning.cache_path() == str(tmp_path / "xdg" / "cylstm" / "tuning.json")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _tuning.cache_path() == str(tmp_path / "home" / ".cache" / "cylstm" / "tuning.json")


def test_stored_choice_is_used_when_valid(cache_dir):
    key = _tuning.shape_class(2, 3, 20, "float32", 2)
    assert key == "float32/t2/B2/I2/H16"
    _write(cache_dir, _valid({key: {"path": "units"}}))
    p = _plan_now()
    assert p.path == "units" and p.reason.startswith("tuned cache")
    assert _plan_now(B=3, H=31).path == "units"          # same class
    assert not _plan_now(training=True).reason.startswith("tuned")   # inference only
    assert not _plan_now(n=1).reason.startswith("tuned")             # another thread count
    x, W, U, b = (a.astype(np.float32) for a in random_lstm(np.random.default_rng(1),
                                                            2, 4, 3, 20))
    np.testing.assert_allclose(lstm_forward(x, W, U, b, num_threads=2).output,
                               lstm_forward(x, W, U, b, num_threads=2, _plan="rows").output,
                               rtol=1e-5, atol=1e-6)


def test_cache_file_and_environment_are_looked_at_again_after_restat_s(cache_dir,
                                                                       monkeypatch):
    key = _tuning.shape_class(2, 3, 20, "float32", 2)
    _write(cache_dir, _valid({key: {"path": "units"}}))
    assert _plan_now().reason.startswith("tuned cache")
    # within RESTAT_S a file another process rewrites, or a changed environment,
    # is not looked at (a forward call does not stat the file or read the environment)
    monkeypatch.setattr(_tuning, "RESTAT_S", 3600.0)
    (cache_dir / "tuning.json").write_text(_valid({key: {"path": "rows"}}))
    monkeypatch.setenv("CYLSTM_TUNE", "0")
    assert _plan_now().reason == "tuned cache (float32/t2/B2/I2/H16)"
    assert _plan_now().path == "units"
    # once it has passed, both are
    monkeypatch.setattr(_tuning, "RESTAT_S", 0.0)
    assert not _plan_now().reason.startswith("tuned")
    monkeypatch.delenv("CYLSTM_TUNE")
    p = _plan_now()
    assert p.path == "rows" and p.reason.startswith("tuned cache")


def test_stored_choice_invalid_for_the_call_falls_back(cache_dir):
    key = _tuning.shape_class(2, 3, 20, "float32", 2)
    _write(cache_dir, _valid({key: {"path": "rows_fused"}}))
    p = _plan_now(has_lengths=True)
    assert p.path != "rows_fused" and not p.reason.startswith("tuned")


@pytest.mark.parametrize("content,problem", [
    (b"\x00\xffgarbage", "invalid JSON"),
    ("{\"format\": 1, \"cpu\": \"x\", \"choi", "invalid JSON"),      # truncated
    ("[1, 2]", "unknown format"),
    ("OTHER_CPU", "another cpu"),
    ("OTHER_VERSION", "another version"),
    ("BAD_PATH", "bad entry"),
])
def test_bad_cache_files_are_ignored_and_rewritten(cache_dir, content, problem):
    key = _tuning.shape_class(2, 3, 20, "float32", 2)
    if content == "OTHER_CPU":
        content = json.dumps({"format": 1, **_identity(), "cpu": "Some Other CPU 9000",
                              "choices": {key: {"path": "units"}}})
    elif content == "OTHER_VERSION":
        content = json.dumps({"format": 1, **_identity(), "version": "0.0.1",
                              "choices": {key: {"path": "units"}}})
    elif content == "BAD_PATH":
        content = _valid({key: {"path": "turbo"}})
    _write(cache_dir, content)
    data, why = _tuning.read_cache()
    assert data is None and problem in why
    model = plan_forward(2, 4, 3, 20, np.float32, 2, facts=_tuning.cpu_facts())
    p = _plan_now()
    assert not p.reason.startswith("tuned") and p.path == model.path
    # the next tune() rewrites the file for this CPU and version
    res = cylstm.tune([(2, 2, 3, 20)], num_threads=2, repeats=1, probe=False)
    assert set(res) == {key} and res[key]["path"] in _tuning.PATHS
    data, why = _tuning.read_cache()
    assert why is None and set(data["choices"]) == {key}
    assert data["cpu"] == _identity()["cpu"] and data["version"] == cylstm.__version__
    assert _plan_now().reason.startswith("tuned cache")
    assert [f.name for f in cache_dir.iterdir()] == ["tuning.json"]   # no temp files left


def test_tune_merges_and_writes_atomically(cache_dir, monkeypatch):
    cylstm.tune([(2, 2, 3, 20)], num_threads=1, repeats=1, probe=False)
    before = (cache_dir / "tuning.json").read_bytes()
    cylstm.tune([(2, 1, 3, 40)], num_threads=1, repeats=1, probe=False)
    data, _ = _tuning.read_cache()
    assert len(data["choices"]) == 2
    for entry in data["choices"].values():
        assert set(entry["ms"]) <= set(_tuning.PATHS) and entry["path"] in entry["ms"]

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    (cache_dir / "tuning.json").write_bytes(before)
    with pytest.raises(OSError, match="disk full"):
        cylstm.tune([(2, 4, 3, 20)], num_threads=1, repeats=1, probe=False)
    assert (cache_dir / "tuning.json").read_bytes() == before     # the old file stands
    assert [f.name for f in cache_dir.iterdir()] == ["tuning.json"]


def test_tune_off_reads_and_measures_nothing(cache_dir, monkeypatch):
    key = _tuning.shape_class(2, 3, 20, "float32", 2)
    _write(cache_dir, _valid({key: {"path": "units"}}))
    monkeypatch.setenv("CYLSTM_TUNE", "0")
    assert not _plan_now().reason.startswith("tuned")
    before = (cache_dir / "tuning.json").read_bytes()
    with pytest.warns(UserWarning, match="CYLSTM_TUNE=0"):
        assert cylstm.tune([(2, 2, 3, 20)], num_threads=2) == {}
    assert (cache_dir / "tuning.json").read_bytes() == before


def test_tune_validates_shapes():
    with pytest.raises(ValueError, match="shapes"):
        cylstm.tune([(0, 2, 3, 4)], num_threads=1, probe=False)
    with pytest.raises(ValueError, match="num_threads"):
        cylstm.tune([(1, 2, 3, 4)], num_threads=0, probe=False)


def test_probe_raises_the_l3_bound_only_within_sysfs(cache_dir, monkeypatch, xeon_vm):
    facts = detect_cpu(*xeon_vm)
    monkeypatch.setattr(_tuning, "_detected", facts)
    _write(cache_dir, _valid({}, l3_per_core_probe=64 * MiB))    # above the cap
    f = _tuning.cpu_facts()
    assert f.l3_per_core == 64 * MiB and f.llc_budget == 128 * MiB and "probe" in f.l3_source
    _write(cache_dir, _valid({}, l3_per_core_probe=1024 * MiB))   # above the sysfs share
    assert _tuning.cpu_facts().l3_per_core == 240 * MiB
    _write(cache_dir, _valid({}, l3_per_core_probe=MiB))          # below the cap: cap stands
    assert _tuning.cpu_facts() == facts
    _write(cache_dir, _valid({}, l3_per_core_probe="big"))
    assert _tuning.read_cache()[0] is None and _tuning.cpu_facts() == facts


def test_probe_is_quick_and_returns_a_size_or_none():
    import time

    t0 = time.perf_counter()
    knee = _tuning.probe_l3_per_core(max_bytes=8 * MiB, budget_s=0.05)
    assert time.perf_counter() - t0 < 0.5
    assert knee is None or (isinstance(knee, int) and MiB <= knee <= 8 * MiB)


def test_command_line_and_callable_module(cache_dir, capsys):
    import cylstm.tune as tune_module

    assert callable(cylstm.tune)
    assert tune_module.main(["--shapes", "2,2,3,20", "--threads", "1", "--no-probe"]) == 0
    out = capsys.readouterr().out
    assert "float32/t1/B2/I2/H16" in out and "tuning.json" in out
    with pytest.raises(SystemExit):
        tune_module.main(["--shapes", "2,2,3"])
    res = cylstm.tune([(1, 1, 2, 8)], num_threads=1, repeats=1, probe=False)
    assert list(res) == ["float32/t1/B1/I2/H8"]


def test_show_config_reports_facts_thresholds_and_cache(cache_dir, capsys, monkeypatch):
    import io

    buf = io.StringIO()
    cylstm.show_config(file=buf)
    text = buf.getvalue()
    for want in ("BLAS", "OpenMP", "CUDA", "CPU:", "LLC budget", "PANEL_TEAM_MIN_BYTES = ",
                 "FUSE_MIN_ROWS = 8: default", str(cache_dir / "tuning.json"),
                 "no cache file"):
        assert want in text, want
    monkeypatch.setattr(_tuning, "FUSE_MIN_ROWS", 5)
    cylstm.tune([(1, 1, 2, 8)], num_threads=1, repeats=1, probe=False)
    buf = io.StringIO()
    cylstm.show_config(file=buf)
    text = buf.getvalue()
    assert "FUSE_MIN_ROWS = 5: overridden (default 8)" in text
    assert "1 shape classes measured" in text and "float32/t1/B1/I2/H8" in text
    monkeypatch.setenv("CYLSTM_TUNE", "0")
    buf = io.StringIO()
    cylstm.show_config(file=buf)
    assert "tuned cache: off" in buf.getvalue()


def test_patched_thresholds_in_tuning_change_the_plan(monkeypatch, zen4):
    f = detect_cpu(*zen4, blas_core="SkylakeX")
    assert _path(f, 16, 5, 8, 20, 2).path == "rows_fused"
    monkeypatch.setattr(_tuning, "FUSE_MIN_ROWS", 9)
    assert _path(f, 16, 5, 8, 20, 2).path == "rows"


def test_cpufacts_is_frozen():
    f = CpuFacts()
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.n_cores = 3
    assert isinstance(plan_forward(1, 1, 1, 1, np.float32, 1, facts=f), ForwardPlan)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert f.with_l3_per_core(MiB, "x").llc_budget == MiB


def test_show_config_names_the_reduced_precision_instructions(xeon_vm):
    # the line that says how bf16 / int8 weights run, and which of the CPU's bf16 and
    # int8 dot-product instructions exist: facts injected
    from cylstm import _config

    f = detect_cpu(*xeon_vm, isa_level=2)
    line = _config._reduced_precision_line(f)
    assert "amx_bf16 amx_int8 avx512_bf16" in line
    assert ("vpdpwssd (AVX512-VNNI)" if "avx512_vnni" in f.flags else "vpmaddwd (AVX-512)") in line
    no_vnni = dataclasses.replace(f, flags=f.flags - {"avx512_vnni"})
    assert "vpmovsxbw + vpmaddwd (AVX-512)" in _config._reduced_precision_line(no_vnni)


def test_show_config_says_none_without_those_instructions(avx2_desktop):
    from cylstm import _config

    line = _config._reduced_precision_line(detect_cpu(*avx2_desktop, isa_level=1))
    assert "instructions: none" in line and "vpmaddwd (AVX2)" in line


# ---------------------------------------------------------------------------
# Small "units" calls: a team timed against one thread (_tuning.team_threads)
# ---------------------------------------------------------------------------

def _drive(key, n, alone_ns, team_ns, calls):
    """Feed team_threads / note_team_time ``calls`` calls whose times per step are
    ``alone_ns`` on one thread and ``team_ns`` on ``n``: the threads each took."""
    took = []
    for _ in range(calls):
        threads, how = _tuning.team_threads(key, n)
        _tuning.note_team_time(key, threads, alone_ns if threads == 1 else team_ns, how)
        took.append(threads)
    return took


@pytest.fixture
def fresh_teams():
    _tuning.clear_teams()
    yield
    _tuning.clear_teams()


@pytest.mark.parametrize(("team_ns", "kept"), [(50.0, True), (95.0, False), (150.0, False)])
def test_a_team_is_kept_only_where_it_measured_faster(fresh_teams, team_ns, kept):
    key = ("units", 1, 8, 40, "float32", 2, False)
    took = _drive(key, 2, 100.0, team_ns, 3 * _tuning.TEAM_PROBE_EVERY)
    assert took[:2] == [1, 1]                          # cold first calls: one thread
    assert 2 in took[2:12] and 1 in took[2:12]         # both measured early on
    steady = took[12:]
    want = 2 if kept else 1
    # the other choice only in the probes, three calls each: after TEAM_PROBE_MIN
    # calls, then at doubling intervals up to every TEAM_PROBE_EVERY
    probes, gap, left = 0, _tuning.TEAM_PROBE_MIN, len(took)
    while left > 0:
        probes, left, gap = probes + 1, left - gap, min(2 * gap, _tuning.TEAM_PROBE_EVERY)
    assert sum(t != want for t in steady) <= 3 * probes
    assert steady[-_tuning.TEAM_PROBE_EVERY:].count(want) >= _tuning.TEAM_PROBE_EVERY - 3
    calls, alone, team = _tuning.team_stats()[key]
    assert calls == 3 * _tuning.TEAM_PROBE_EVERY and (alone, team) == (100.0, team_ns)


def test_a_changed_machine_is_seen_at_the_next_probe(fresh_teams):
    key = ("units", 1, 8, 40, "float32", 2, False)
    _drive(key, 2, 100.0, 50.0, 2 * _tuning.TEAM_PROBE_EVERY)   # the team pays
    # then a busy neighbour: the team takes twice one thread's time
    took = _drive(key, 2, 100.0, 200.0, 3 * _tuning.TEAM_PROBE_EVERY)
    # one thread from the probe on, but for the next probes of the team (3 calls)
    assert took[-_tuning.TEAM_PROBE_EVERY:].count(2) <= 3


def test_a_choice_made_in_a_disturbed_moment_is_undone_soon(fresh_teams):
    key = ("units", 1, 8, 40, "float32", 2, False)
    _drive(key, 2, 100.0, 50.0, 3 * _tuning.TEAM_PROBE_EVERY)   # the team pays, settled
    # the second core taken for a few calls (a peer's threads still spinning): the
    # team slow, so the running average moves the choice to one thread
    took = _drive(key, 2, 100.0, 400.0, 6)
    assert took[-4:] == [1] * 4
    # the core free again: the team is timed again within a few calls, not 64
    took = _drive(key, 2, 100.0, 50.0, 3 * _tuning.TEAM_PROBE_MIN)
    first = took.index(2)
    assert first < _tuning.TEAM_PROBE_MIN
    # the team from then on, but for one early probe of one thread (a new choice)
    assert took[first + 3:].count(1) <= 3


def test_small_unit_calls_time_the_team_and_keep_the_bits(fresh_teams):
    # batch 1 and U >= PANEL_TEAM_MIN_BYTES: the threads split the units on any CPU
    B, T, I, H = 1, 12, 8, 96
    assert H * 4 * H * 4 >= _tuning.PANEL_TEAM_MIN_BYTES
    x, W, U, b = (np.asarray(a, np.float32) for a in random_lstm(np.random.default_rng(3),
                                                                  B, T, I, H))
    p = plan_forward(B, T, I, H, np.float32, 2)
    assert (p.path, p.n_threads) == ("units", 2), p.reason
    one = lstm_forward(x, W, U, b, num_threads=1, _plan="units").output
    for _ in range(12):
        np.testing.assert_array_equal(lstm_forward(x, W, U, b, num_threads=2).output, one)
    calls, alone, team = _tuning.team_stats()[("units", B, I, H, "float32", 2, False)]
    assert calls == 12 and alone > 0 and team > 0
    # forced plans are never re-threaded nor timed
    _tuning.clear_teams()
    lstm_forward(x, W, U, b, num_threads=2, _plan="units")
    assert _tuning.team_stats() == {}


def test_tune_off_times_no_team(fresh_teams, monkeypatch):
    monkeypatch.setenv("CYLSTM_TUNE", "0")
    B, T, I, H = 1, 6, 8, 40
    x, W, U, b = (np.asarray(a, np.float32) for a in random_lstm(np.random.default_rng(4),
                                                                  B, T, I, H))
    for _ in range(4):
        lstm_forward(x, W, U, b, num_threads=2)
    assert _tuning.team_stats() == {}


def test_calls_after_an_idle_gap_are_not_timed(fresh_teams, monkeypatch):
    key = ("units", 1, 8, 40, "float32", 2, False)
    _drive(key, 2, 100.0, 50.0, 20)                 # the team pays
    monkeypatch.setattr(_tuning, "TEAM_GAP_NS", -1)  # every call now "after a gap"
    took = _drive(key, 2, 100.0, 500.0, 20)         # slow wake-ups: not counted
    assert took == [2] * 20
    assert _tuning.team_stats()[key][2] == 50.0
