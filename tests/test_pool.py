"""The worker pool (include/cylstm_pool.h) behind every threaded kernel call.

The caller can finish any job alone; workers join late, or not at all, and
pieces are claimed or committed once.  Whatever the timing, a threaded call
must give the same bits as a serial one.  These tests make workers late on
purpose (no spinning: every job must wake them; a process busy on a core)
and run each path many times.
"""
import multiprocessing as mp
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from reference import lstm_ref, lstm_ref_backward, random_lstm

from cylstm import _lstm, _tuning
from cylstm.functional import BackwardPlan, lstm_backward, lstm_forward

PATHS = ("rows", "units", "stacked")


def _buffers(x, W, U, dtype, path, nt, training):
    B, T, _ = x.shape
    H = U.shape[0]
    name = np.dtype(dtype).name
    span = _lstm.PANEL_UNITS_F32 if dtype == np.float32 else _lstm.PANEL_UNITS_F64
    G = np.zeros((B, T, 4 * H), dtype)
    C = np.zeros((B, T, H), dtype) if training else None
    Hp = np.zeros((B, T, H), dtype) if training else None
    if path == "rows":
        return G, C, Hp, np.zeros((B, 4 * H), dtype), None
    if path == "units":
        Z = np.zeros((nt, _lstm.units_scratch(B, H, name)), dtype)
        return G, C, Hp, Z, np.zeros(_lstm.packed_len(H, name), dtype)
    Z = np.zeros((nt, B * 4 * span), dtype)
    return G, C, Hp, Z, np.zeros(_lstm.stacked_len(x.shape[2], H, name), dtype)


def _state(B, H, dtype):
    rng = np.random.default_rng(1)
    return [(rng.standard_normal((B, H)) * 0.5).astype(dtype) for _ in range(2)]


def _run(path, x, W, U, b, nt, lengths=None, training=False, state=None):
    dtype = x.dtype
    B, T, _ = x.shape
    H = U.shape[0]
    G, C, Hp, Z, P = _buffers(x, W, U, dtype, path, nt, training)
    y = np.zeros((B, T, H), dtype)
    hs, cs = _state(B, H, dtype) if state is None else [s.copy() for s in state]
    args = (x, W, U, b, lengths, False, None, None, y, hs, cs, G, C, Hp, Z)
    if path == "rows":
        _lstm.forward_rows(*args, nt, 1, lengths is None)
    elif path == "units":
        _lstm.forward_units(*args, P, np.zeros((B, H), dtype), nt, 1)
    else:
        _lstm.forward_stacked(*args, P, np.zeros((B, H), dtype), nt, 1)
    out = [y, hs, cs]
    if training:
        out += [G, C, Hp]
    return out


def _serial(path, x, W, U, b, nt, lengths=None, training=False):
    """What ``nt`` threads must give, bit for bit, computed by one thread.

    The panel paths run cylstm's own kernels, whose bits do not depend on how
    the batch is split: one serial call is the reference.  The rows path runs
    BLAS on each thread's slice of the batch, and a BLAS may round a row
    differently with another number of rows (OpenBLAS's AVX2 sgemm on Zen 3
    does, its AVX-512 one on Sapphire Rapids does not): its reference is one
    serial call per slice, with the slices the threads get."""
    if path != "rows":
        return _run(path, x, W, U, b, 1, lengths, training)
    B = x.shape[0]
    n = min(nt, B)
    state = _state(B, U.shape[0], x.dtype)
    parts = []
    for c in range(n):
        sl = slice(c * B // n, (c + 1) * B // n)
        parts.append(_run(path, x[sl], W, U, b, 1, None if lengths is None else lengths[sl],
                          training, [s[sl] for s in state]))
    return [np.concatenate(p) for p in zip(*parts)]


@pytest.fixture(autouse=True)
def no_backoff():
    """Workers join every job (no back-off from a busy machine), so that the
    tests exercise them; test_backoff_runs_jobs_alone covers the back-off."""
    _lstm.set_pool_backoff_ns(0)
    yield
    _lstm.set_pool_backoff_ns(_tuning.POOL_BACKOFF_NS)


@pytest.fixture(params=[0, 50_000], ids=["workers-sleep", "workers-spin"])
def spin(request):
    _lstm.set_pool_spin_ns(request.param)
    yield request.param
    _lstm.set_pool_spin_ns(_tuning.POOL_SPIN_NS)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("path", PATHS)
def test_threads_give_the_serial_bits_however_late_the_workers(spin, path, dtype):
    B = 1 if path == "units" else 24
    T, I, H = 12, 7, 70
    x, W, U, b = (a.astype(dtype) for a in random_lstm(np.random.default_rng(3), B, T, I, H))
    want = _run(path, x, W, U, b, 1)
    ref = lstm_ref(x.astype(np.float64), W.astype(np.float64), U.astype(np.float64),
                   b.astype(np.float64),
                   *(np.random.default_rng(1).standard_normal((2, B, H)) * 0.5))
    tol = {"rtol": 1e-5, "atol": 2e-6} if dtype == np.float32 else {"rtol": 1e-10,
                                                                      "atol": 1e-12}
    np.testing.assert_allclose(want[0], ref[0], **tol)
    wants = {nt: _serial(path, x, W, U, b, nt) for nt in (2, 3, 4)}
    for rep in range(40):
        nt = 2 + rep % 3
        got = _run(path, x, W, U, b, nt)
        for g, w, w1 in zip(got, wants[nt], want):
            np.testing.assert_array_equal(g, w)
            np.testing.assert_allclose(g, w1, **tol)


@pytest.mark.parametrize("path", ["units", "rows", "stacked"])
def test_training_buffers_match_serial_with_lengths(spin, path):
    B = 3 if path == "units" else 16
    T, I, H = 9, 5, 40
    x, W, U, b = (a.astype(np.float32) for a in random_lstm(np.random.default_rng(8), B, T, I, H))
    lengths = np.random.default_rng(9).integers(1, T + 1, B).astype(np.int64)
    wants = {nt: _serial(path, x, W, U, b, nt, lengths, training=True) for nt in (2, 3)}
    for rep in range(20):
        nt = 2 + rep % 2
        got = _run(path, x, W, U, b, nt, lengths, training=True)
        for g, w in zip(got, wants[nt]):
            np.testing.assert_array_equal(g, w)


@pytest.fixture
def one_slice():
    """The batch split starts in one slice, the caller's: every row another thread
    runs was handed over at a step boundary (_lstm.pyx, _stacked_rows)."""
    _lstm.set_steal(True, 2, 1)
    yield
    _lstm.set_steal(True, _tuning.STEAL_MIN_ROWS)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
def test_rows_handed_over_between_steps_keep_the_serial_bits(spin, one_slice, dtype,
                                                             training):
    B, T, I, H = 23, 15, 6, 37
    x, W, U, b = (a.astype(dtype) for a in random_lstm(np.random.default_rng(11), B, T, I, H))
    lengths = np.random.default_rng(12).integers(1, T + 1, B).astype(np.int64)
    for lens in (None, lengths):
        want = _run("stacked", x, W, U, b, 1, lens, training)
        ref = lstm_ref(x.astype(np.float64), W.astype(np.float64), U.astype(np.float64),
                       b.astype(np.float64),
                       *(np.random.default_rng(1).standard_normal((2, B, H)) * 0.5),
                       lengths=lens)
        tol = {"rtol": 1e-5, "atol": 2e-6} if dtype == np.float32 else {"rtol": 1e-10,
                                                                          "atol": 1e-12}
        np.testing.assert_allclose(want[0], ref[0], **tol)
        grants0 = _lstm.get_steal()[3]
        for rep in range(200):
            nt = 2 + rep % 3
            got = _run("stacked", x, W, U, b, nt, lens, training)
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g, w)
            if rep >= 30 and _lstm.get_steal()[3] > grants0:
                break
        # the workers joined and took rows from the caller's slice
        assert _lstm.get_steal()[3] > grants0


def test_static_split_and_hand_overs_give_the_same_bits(spin):
    x, W, U, b = (a.astype(np.float32) for a in random_lstm(np.random.default_rng(13), 32, 20,
                                                             9, 50))
    want = _run("stacked", x, W, U, b, 1)
    try:
        for on in (False, True, False, True):
            _lstm.set_steal(on, _tuning.STEAL_MIN_ROWS)
            assert _lstm.get_steal()[0] is on
            for _ in range(10):
                for g, w in zip(_run("stacked", x, W, U, b, 2), want):
                    np.testing.assert_array_equal(g, w)
    finally:
        _lstm.set_steal(True, _tuning.STEAL_MIN_ROWS)


@pytest.mark.parametrize("args", [(True, 0), (True, -3), (True, 5, -1)])
def test_set_steal_refuses_bad_values(args):
    with pytest.raises(ValueError, match="min_rows"):
        _lstm.set_steal(*args)
    assert _lstm.get_steal()[:3] == (True, _tuning.STEAL_MIN_ROWS, 0)


@pytest.fixture
def busy_core():
    """Another process spinning on one core, as on a shared machine."""
    code = "import time\nt = time.time() + 60\nwhile time.time() < t: pass\n"
    p = subprocess.Popen([sys.executable, "-c", code])
    try:
        yield p
    finally:
        p.kill()
        p.wait()


@pytest.mark.parametrize("path", PATHS)
def test_threads_beside_a_busy_core_give_the_serial_bits(busy_core, path):
    B = 1 if path == "units" else 24
    x, W, U, b = (a.astype(np.float32) for a in random_lstm(np.random.default_rng(4), B, 30, 6, 48))
    want = _serial(path, x, W, U, b, 2)
    for _ in range(30):
        got = _run(path, x, W, U, b, 2)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)


def test_backward_threads_give_the_same_bits_every_time(spin):
    """Slices are summed in a fixed order: which thread ran which slice does not
    show in the bits (a different thread count sums differently, within rounding)."""
    x, W, U, b = random_lstm(np.random.default_rng(6), 20, 8, 5, 12)
    dy = np.random.default_rng(7).standard_normal((20, 8, 12))

    def grads(nt):
        out = lstm_forward(x, W, U, b, training=True, num_threads=nt)
        return lstm_backward(out.cache, dy, num_threads=nt)

    serial = grads(1)
    for nt in (2, 3, 4):
        want = grads(nt)
        for g, w in zip(want, serial):
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)
        for _ in range(8):
            for g, w in zip(grads(nt), want):
                np.testing.assert_array_equal(g, w)


def _unit_split_case(dtype, lengths, reverse, rmask, every=None, grad_seq=True):
    B, T, I, H = 5, 9, 6, 150     # 3 panels of U^T (float32), 5 (float64)
    rng = np.random.default_rng(11)
    x, W, U, b = (a.astype(dtype) for a in random_lstm(rng, B, T, I, H))
    lens = np.array([9, 1, 4, 0, 7]) if lengths else None
    mask = (rng.random((B, H)) < 0.8).astype(dtype) / 0.8 if rmask else None
    dy = rng.standard_normal((B, T, H)).astype(dtype) if grad_seq else None
    dh = rng.standard_normal((B, H)).astype(dtype)

    def grads(plan, nt):
        out = lstm_forward(x, W, U, b, lengths=lens, go_backwards=reverse, training=True,
                           recurrent_mask=mask, checkpoint_every=every, num_threads=1)
        return lstm_backward(out.cache, grad_output=dy, grad_h=dh, num_threads=nt,
                             _plan=plan)
    return grads


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", ["plain", "lengths", "reverse", "rmask", "checkpointed",
                                  "grad_h only"])
def test_backward_unit_split_gives_the_serial_bits(spin, dtype, case):
    """The backward's time loop split by units (BackwardPlan.units: every sample on
    each thread, a piece's columns of dh_prev and its cells per step) gives the
    bits of the serial loop over the whole batch, whose weight-gradient GEMMs run
    on the same BLAS threads; 2-4 threads, workers sleeping or spinning, the
    threads' pieces claimed in any order (8 repeats)."""
    grads = _unit_split_case(dtype, case == "lengths", case == "reverse", case == "rmask",
                             every=3 if case == "checkpointed" else None,
                             grad_seq=case != "grad_h only")
    for nt in (2, 3, 4):
        want = grads(BackwardPlan(1, nt), nt)
        for _ in range(8):
            got = grads(BackwardPlan(nt, nt, units=True), nt)
            for name, g, w in zip(want._fields, got, want):
                if w is not None:
                    np.testing.assert_array_equal(g, w, err_msg=f"{name}, {nt} threads")


def test_backward_unit_split_beside_a_busy_core_gives_the_serial_bits(busy_core):
    grads = _unit_split_case(np.float32, True, False, False)
    want = grads(BackwardPlan(1, 2), 2)
    for _ in range(20):
        for g, w in zip(grads(BackwardPlan(2, 2, units=True), 2), want):
            np.testing.assert_array_equal(g, w)


def test_backward_unit_split_matches_the_reference():
    """Against the float64 NumPy reference (not only the serial kernel)."""
    B, T, I, H = 4, 6, 5, 130
    x, W, U, b = random_lstm(np.random.default_rng(12), B, T, I, H)
    lens = np.array([6, 2, 5, 1])
    dy = np.random.default_rng(13).standard_normal((B, T, H))
    dy = dy * (np.arange(T)[None, :] < lens[:, None])[..., None]
    out = lstm_forward(x, W, U, b, lengths=lens, training=True)
    g = lstm_backward(out.cache, grad_output=dy, num_threads=2,
                      _plan=BackwardPlan(2, 2, units=True))
    _, _, _, tape = lstm_ref(x, W, U, b, lengths=lens)
    want = lstm_ref_backward(x, W, U, tape, dy)
    for name, got, ref in zip(("dx", "dW", "dU", "db"), g[:4], want[:4]):
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-11, err_msg=name)


def test_backward_unit_split_refuses_what_it_cannot_run():
    x, W, U, b = random_lstm(np.random.default_rng(14), 2, 3, 4, 5)
    out = lstm_forward(x, W, U, b, training=True)
    with pytest.raises(TypeError, match="_plan must be a BackwardPlan"):
        lstm_backward(out.cache, np.ones((2, 3, 5)), _plan="units")
    B, T, I, H = 2, 3, 4, 5
    f = np.zeros
    args = [f((B, T, I)), f((I, 4 * H)), f(_lstm.transposed_len(H, "float64")), f((B, H)),
            np.array([3, 2]), False, None, f((B, T, 4 * H)), f((B, T, H)), f((B, T, H)),
            None, f((B, H)), f((B, H)), f((B, 4 * H)),
            f((B, _lstm.transposed_width(H, "float64"))), f((B, T, I)), f((I, 4 * H)),
            f((H, 4 * H)), f(4 * H), None, 2, 2]
    with pytest.raises(ValueError, match=r"D must be \(2B, 4H\) = \(4, 20\); got \(2, 20\)"):
        _lstm.backward(*args, units=True)
    with pytest.raises(ValueError, match="units takes no bf16"):
        _lstm.backward(*args, bf16=True, units=True)
    with pytest.raises(ValueError, match=r"units must be >= 0 \(pieces a thread\); got -1"):
        _lstm.backward(*args, units=-1)


def test_concurrent_callers_share_the_pool():
    """Python threads calling threaded kernels at once: one gets the workers,
    the others run alone; all give the serial bits."""
    x, W, U, b = random_lstm(np.random.default_rng(10), 1, 40, 6, 64)
    x, W, U, b = (a.astype(np.float32) for a in (x, W, U, b))
    want = _run("units", x, W, U, b, 1)
    errors = []

    def work():
        try:
            for _ in range(25):
                got = _run("units", x, W, U, b, 2)
                for g, w in zip(got, want):
                    np.testing.assert_array_equal(g, w)
        except Exception as e:  # noqa: BLE001  # pragma: no cover - any failure, reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def _child(q):
    x, W, U, b = (a.astype(np.float32) for a in random_lstm(np.random.default_rng(11), 1, 20,
                                                            5, 40))
    q.put(_run("units", x, W, U, b, 2)[0].tobytes())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_starts_its_own_workers():
    x, W, U, b = (a.astype(np.float32) for a in random_lstm(np.random.default_rng(11), 1, 20,
                                                            5, 40))
    want = _run("units", x, W, U, b, 2)[0]   # the parent has workers now
    assert _lstm.pool_workers() >= 1
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q,))
    p.start()
    got = q.get(timeout=60)
    p.join(60)
    assert p.exitcode == 0
    assert got == want.tobytes()


@pytest.mark.parametrize("path", PATHS)
def test_backoff_runs_jobs_alone_with_the_same_bits(path):
    """While backing off from a busy machine the caller runs each job alone
    (no job reaches the workers) and gets the bits the workers would have."""
    B = 1 if path == "units" else 24
    x, W, U, b = (a.astype(np.float32) for a in random_lstm(np.random.default_rng(12), B, 10, 6,
                                                            48))
    want = _run(path, x, W, U, b, 2)
    _lstm.set_pool_backoff_ns(10 * 10**9)
    _lstm._pool_back_off_now()
    jobs = _lstm.pool_stats()["jobs"]
    got = _run(path, x, W, U, b, 2)
    assert _lstm.pool_stats()["jobs"] == jobs
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    _lstm.set_pool_backoff_ns(0)      # ends the back-off
    _run(path, x, W, U, b, 2)
    assert _lstm.pool_stats()["jobs"] == jobs + 1


_ONE_CPU_SCRIPT = """
import os, sys
import numpy as np
os.sched_setaffinity(0, {int(sys.argv[1])})   # the caller and its workers share one CPU
from cylstm import _lstm
from cylstm.functional import lstm_forward
rng = np.random.default_rng(3)
B, T, I, H = 2, 30, 5, 70
x = rng.standard_normal((B, T, I)).astype(np.float32)
W = (rng.standard_normal((I, 4 * H)) * 0.3).astype(np.float32)
U = (rng.standard_normal((H, 4 * H)) * 0.3).astype(np.float32)
b = np.zeros(4 * H, np.float32)
for path in ("units", "rows"):
    one = lstm_forward(x, W, U, b, num_threads=1, _plan=path).output
    for _ in range(20):   # workers woken beside the caller, again and again
        two = lstm_forward(x, W, U, b, num_threads=2, _plan=path).output
        assert np.array_equal(two, one), path
print("ok", _lstm.pool_workers())
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity")
def test_workers_on_the_callers_only_cpu_neither_hang_nor_change_results(tmp_path):
    """With one CPU allowed, every worker wakes beside its caller: it cannot move
    off that CPU, so it leaves the job to the caller and sleeps; calls on two
    threads still finish, with the one-thread bits."""
    cpu = min(os.sched_getaffinity(0))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(_lstm.__file__)))]
        + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
    # (run outside the checkout: a -c script puts its cwd first on sys.path, and
    # an installed cylstm must not be shadowed by the unbuilt source tree)
    p = subprocess.run([sys.executable, "-c", _ONE_CPU_SCRIPT, str(cpu)], env=env,
                       cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.startswith("ok")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_unit_split_bits_do_not_depend_on_the_pieces(monkeypatch, dtype):
    """Any number of pieces a thread (one piece of several U^T panels, or one panel
    a piece; a patched 0 runs as 1) gives the serial loop's bits, with lengths."""
    B, T, I, H = 3, 5, 4, 300     # 5-19 panels of U^T, by ISA level and dtype
    rng = np.random.default_rng(15)
    x, W, U, b = (a.astype(dtype) for a in random_lstm(rng, B, T, I, H))
    lens = np.array([5, 2, 4])
    dy = rng.standard_normal((B, T, H)).astype(dtype)

    def grads(plan, nt):
        out = lstm_forward(x, W, U, b, lengths=lens, training=True, num_threads=1)
        return lstm_backward(out.cache, grad_output=dy, num_threads=nt, _plan=plan)
    for nt in (2, 3):
        want = grads(BackwardPlan(1, nt), nt)
        for pieces in (0, 1, 2, 3, 4, 7, 64):   # (0 runs as 1)
            monkeypatch.setattr(_tuning, "BACKWARD_UNITS_PIECES", pieces)
            got = grads(BackwardPlan(nt, nt, units=True), nt)
            for name, g, w in zip(want._fields, got, want):
                if w is not None:
                    np.testing.assert_array_equal(g, w, err_msg=f"{name}, {nt} threads, "
                                                                f"{pieces} pieces a thread")
