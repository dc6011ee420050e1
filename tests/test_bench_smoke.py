"""Smoke test of bench/compare.py: it runs, checks, and writes the JSON it documents.

No timing is asserted; only that the benchmark works end to end on one small case.
"""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "compare.py")


def _source_tree_is_built():
    src = os.path.join(ROOT, "cylstm")
    return any(f.startswith("_lstm.") and f.endswith((".so", ".pyd")) for f in os.listdir(src))


def _run(args, timeout=120):
    env = dict(os.environ)
    if _source_tree_is_built():
        # test the checkout's in-place build (as conftest.py does); after `pip install .`
        # the source tree has no extensions and the installed package is used
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("OMP_NUM_THREADS", None)
    return subprocess.run([sys.executable, SCRIPT] + args, check=False, capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)


def _load_compare():
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        spec = importlib.util.spec_from_file_location("bench_compare", SCRIPT)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.pop(0)


def test_quick_forward_case_writes_documented_json(tmp_path):
    out = tmp_path / "bench.json"
    png = tmp_path / "bench.png"
    p = _run(["--quick", "--only", "forward/100x32x10x50", "--threads", "1", "--repeat", "1",
              "--json", str(out), "--plot", str(png)])
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "sgemm rate" in p.stdout and "== forward" in p.stdout
    doc = json.loads(out.read_text())
    for key in ("schema", "command", "date", "quick", "threads", "repeat", "machine", "sgemm",
                "results", "skipped", "mismatches", "ok", "elapsed_s"):
        assert key in doc, key
    assert doc["schema"] == "cylstm-bench/1"
    assert doc["ok"] is True and doc["mismatches"] == []
    assert doc["threads"] == [1] and doc["quick"] is True
    m = doc["machine"]
    assert m["cores"] >= 1 and m["versions"]["numpy"] == np.__version__
    assert "cylstm" in m["versions"] and isinstance(m["blas_pools"], list)
    assert doc["sgemm"]["1"]["gflops"] > 0 and doc["sgemm"]["1"]["n"] == 1024

    assert len(doc["results"]) == 1
    res = doc["results"][0]
    assert res["outside_load_cores"] is None or res["outside_load_cores"] >= 0
    assert res["host_probe_gflops"] > 0 and 0 < res["host_probe_ratio"] <= 1
    assert (res["workload"], res["case"], res["threads"]) == ("forward", "100x32x10x50", 1)
    assert res["flops"] == 2 * 100 * 32 * (10 + 50) * 4 * 50
    rows = {r["impl"]: r for r in res["rows"]}
    assert {"cylstm", "numpy good"} <= set(rows)
    assert "numpy naive" not in rows  # --quick keeps the strongest variant of each peer
    for r in rows.values():
        assert r["status"] in ("ok", "skipped", "error"), r
        if r["status"] == "ok":
            assert 0 < r["min_s"] <= r["median_s"] <= r["max_s"]
            assert r["n_calls"] >= 1 and r["gflops"] > 0 and r["pct_sgemm"] > 0
            assert 0 <= r["max_abs_diff"] < 1e-4
            if r["impl"] != "cylstm":
                assert r["speedup"] > 0
        else:
            assert r["reason"]
    assert rows["cylstm"]["status"] == "ok" and rows["numpy good"]["status"] == "ok"
    # a peer that is missing is listed as skipped, with the reason
    for r in rows.values():
        if r["status"] == "skipped":
            assert any(s["impl"] == r["impl"] for s in doc["skipped"])
    if importlib.util.find_spec("matplotlib") is not None:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_workload_runs_and_reports(tmp_path):
    """One small case of each workload in one run: training step, streaming, epoch."""
    out = tmp_path / "all.json"
    p = _run(["--quick", "--threads", "1", "--repeat", "1", "--epochs", "2",
              "--only", "train/100x32x10x50,stream/64x128x1L,pool/64x128", "--only", "epoch",
              "--skip", "keras", "--json", str(out)], timeout=180)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["ok"] is True
    by_wl = {r["workload"]: r for r in doc["results"]}
    assert set(by_wl) == {"train", "stream", "pool", "epoch"}

    train = {r["impl"]: r for r in by_wl["train"]["rows"]}
    assert train["cylstm"]["status"] == "ok" and train["numpy"]["status"] == "ok"
    assert train["numpy"]["max_abs_diff"] < 1e-3  # dx, dW, dU, db agree with cylstm
    assert by_wl["train"]["flops"] == 3 * 2 * 100 * 32 * (10 + 50) * 4 * 50

    stream = {r["impl"]: r for r in by_wl["stream"]["rows"]}
    if "cylstm" in stream:  # bench/stream_bench.py present
        assert stream["cylstm"]["status"] == "ok"
        assert 0 < stream["cylstm"]["median_s"] <= stream["cylstm"]["p99_s"]
        assert by_wl["stream"]["case"] == "64x128x1L"
    else:
        assert all(r["status"] == "skipped" for r in stream.values())

    pool = {r["impl"]: r for r in by_wl["pool"]["rows"]}
    # one StreamPool.step of 32 streams, checked against 32 runners before timing
    assert pool["cylstm"]["status"] == "ok" and pool["cylstm runners"]["status"] == "ok"
    assert pool["cylstm runners"]["max_abs_diff"] == 0.0   # bit for bit
    assert pool["cylstm runners"]["speedup"] > 0 and pool["cylstm"]["median_s"] > 0
    assert by_wl["pool"]["flops"] == 32 * (2 * (64 + 128) * 4 * 128 + 2 * 128)
    for name in ("torch LSTMCell", "onnxruntime"):    # batched peers: checked or skipped
        assert pool[name]["status"] in ("ok", "skipped"), pool[name]
        if pool[name]["status"] == "ok":
            assert pool[name]["max_abs_diff"] < 1e-4

    epoch = {r["impl"]: r for r in by_wl["epoch"]["rows"]}
    assert not any(name.startswith("keras") for name in epoch)   # --skip keras
    cy = epoch["cylstm"]
    assert cy["status"] == "ok", cy
    assert len(cy["epoch_losses"]) == 2 and cy["first_epoch_s"] > 0
    assert cy["epoch_losses"][1] < cy["epoch_losses"][0] < 1.0   # it learns
    if importlib.util.find_spec("torch") is not None:
        t = epoch["torch (oneDNN)"]
        assert t["status"] == "ok" and t["max_abs_diff"] < 1e-4   # same start
        # same weights, batches and Adam: the losses agree closely
        assert t["final_loss"] == pytest.approx(cy["final_loss"], rel=0.05)


def test_unknown_only_is_refused():
    p = _run(["--only", "no-such-workload"], timeout=60)
    assert p.returncode == 2
    assert "no-such-workload" in p.stdout


def test_list_names_every_workload():
    p = _run(["--list"], timeout=60)
    assert p.returncode == 0
    for w in ("forward", "train", "stream", "epoch", "25x16x1024x1024"):
        assert w in p.stdout


def test_compare_flags_disagreement():
    mod = _load_compare()
    ref = (np.array([1.0, -2.0], np.float32),)
    mad, mrd, ok = mod.Bench.compare((ref[0] + 1e-6,), ref, 1e-4, 1e-4)
    assert ok and mad == pytest.approx(1e-6, rel=0.1)
    mad, mrd, ok = mod.Bench.compare((ref[0] * 1.01,), ref, 1e-4, 1e-4)
    assert not ok and mad == pytest.approx(0.02, rel=1e-3) and mrd == pytest.approx(0.01, 1e-3)
    assert not mod.Bench.compare((np.array([np.nan, 0.0]),), ref, 1e-4, 1e-4)[2]
    assert not mod.Bench.compare((np.zeros(3),), ref, 1e-4, 1e-4)[2]  # shape differs


def test_noisy_cases_are_marked_with_their_reason():
    """A case is noisy when other processes used CPU, or when the host probe after it
    ran below HOST_SLOW of the run's fastest; the footnote says which, with numbers."""
    mod = _load_compare()

    def res(load, ratio, case="100x32x10x50"):
        return {"workload": "forward", "case": case, "threads": 1, "outside_load_cores": load,
                "host_probe_ratio": ratio,
                "rows": [{"impl": "cylstm", "status": "ok", "reason": None, "median_s": 1e-3,
                          "min_s": 1e-3, "max_s": 1e-3}]}
    quiet = res(0.0, 0.99)
    assert not mod.is_noisy(quiet) and mod.noisy_footer([quiet]) is None
    assert not mod.is_noisy(res(None, None))        # unknown: not flagged
    busy, slow = res(0.5, 0.99), res(0.0, 0.70)
    assert mod.is_noisy(busy) and mod.is_noisy(slow)
    assert not mod.is_noisy(res(0.0, mod.HOST_SLOW))
    foot = mod.noisy_footer([quiet, busy, slow, res(0.1, 0.80)])
    assert "other processes used more than 0.2 cores (up to 0.5)" in foot
    assert "the host ran slow (an sgemm probe after the case at 70%-80% of the run's" in foot
    _, _, lines, _, footer = mod.table("forward", [quiet, slow])
    assert [ln[0] for ln in lines] == ["100x32x10x50", "100x32x10x50*"]
    assert footer == mod.noisy_footer([slow]) and "70%" in footer and "other" not in footer


def test_summary_fails_on_mismatch_or_cylstm_error():
    mod = _load_compare()

    def res(rows):
        return {"workload": "forward", "case": "1x1x1x1", "threads": 1, "rows": rows}

    ok = [res([{"impl": "cylstm", "status": "ok", "reason": None},
               {"impl": "keras/TF", "status": "skipped", "reason": "not installed"}])]
    s = mod.summarize(ok)
    assert s["ok"] and s["mismatches"] == [] and s["skipped"][0]["impl"] == "keras/TF"
    bad = [res([{"impl": "cylstm", "status": "ok", "reason": None},
                {"impl": "peer", "status": "mismatch", "reason": "differs",
                 "max_abs_diff": 0.5}])]
    s = mod.summarize(bad)
    assert not s["ok"] and s["mismatches"][0]["impl"] == "peer"
    broken = [res([{"impl": "cylstm", "status": "error", "reason": "boom"}])]
    assert not mod.summarize(broken)["ok"]


def test_longseq_workload_reports_memory(tmp_path):
    """The quick longseq case, cylstm only (each implementation is its own process):
    the checkpointed step saves a fraction of full BPTT's activations, holds and peaks
    at less, and computes the same gradients."""
    out = tmp_path / "ls.json"
    p = _run(["--quick", "--threads", "1", "--only", "longseq", "--skip", "torch",
              "--json", str(out)], timeout=240)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "== longseq" in p.stdout and "checkpointed / full BPTT step time" in p.stdout
    doc = json.loads(out.read_text())
    assert doc["ok"] is True
    (res,) = doc["results"]
    assert (res["workload"], res["case"], res["memory_budget"]) == ("longseq", "2000x8x16x64",
                                                                    4 * 10**6)
    rows = {r["impl"]: r for r in res["rows"]}
    assert set(rows) == {"cylstm", "cylstm full BPTT"}
    ck, full = rows["cylstm"], rows["cylstm full BPTT"]
    assert ck["status"] == full["status"] == "ok"
    # full BPTT keeps gates, c and h_prev of every step (and c0): 6H floats
    assert full["saved_bytes"] == 2000 * 8 * 6 * 64 * 4 + 8 * 64 * 4
    assert ck["saved_bytes"] == 45 * 2 * 8 * 64 * 4 and ck["impl_detail"].startswith("45 steps")
    assert ck["peak_rss_bytes"] < full["peak_rss_bytes"] / 4
    assert ck["max_abs_diff"] < 1e-5 and res["checkpoint_time_ratio"] > 0


def test_scale_quick_runs_without_engines():
    """bench/scale.py --quick with no engine: the one-process rows and both tables."""
    env = dict(os.environ)
    if _source_tree_is_built():
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "scale.py"), "--quick",
                        "--repeat", "1", "--engines", "no-such-engine"], check=False,
                       capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = p.stdout
    assert "skipped: no-such-engine: unknown engine 'no-such-engine'" in out
    assert "| - | one process | 1 x 2 threads |" in out
    assert "Data-parallel epoch of the Keras example (512 x 50 x 10" in out
    assert "MISMATCH" not in out


def test_stream_threads_runs_and_reports():
    """bench/stream_threads.py on one small case, quiet and busy: a row per condition."""
    env = dict(os.environ)
    if _source_tree_is_built():
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "stream_threads.py"),
                        "--cases", "8x40x2", "--rounds", "2", "--warm-steps", "20",
                        "--gap-ms", "1"], check=False, capture_output=True, text=True,
                       timeout=180, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "| 8x40x2 | quiet, 2 threads |" in p.stdout
    assert "| 8x40x2 | busy, 2 threads |" in p.stdout
    bad = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "stream_threads.py"),
                          "--cases", "8x40"], check=False, capture_output=True, text=True,
                         timeout=60, env=env, cwd=ROOT)
    assert bad.returncode != 0 and "a case is IxHxLAYERS" in bad.stderr
