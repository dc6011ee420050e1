"""The packed-weight cache of the panel paths (cylstm/_packcache.py): its results
against the float64 reference, and that no change to the weights, however made,
ever meets a stale pack."""
import threading

import numpy as np
import pytest
from reference import lstm_ref, random_lstm

from cylstm import _lstm, _packcache, _tuning
from cylstm.functional import lstm_forward, new_weights_version

TOL = {np.float32: {"rtol": 2e-4, "atol": 2e-5}, np.float64: {"rtol": 1e-9, "atol": 1e-11}}


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    monkeypatch.setenv("CYLSTM_TUNE", "0")
    _tuning.forget()
    _packcache.clear()
    yield
    _packcache.clear()
    _tuning.forget()


def _case(seed, B, T, I, H, dtype):
    x, W, U, b = random_lstm(np.random.default_rng(seed), B, T, I, H)
    return [np.ascontiguousarray(a, dtype) for a in (x, W, U, b)]


def _check(out, x, W, U, b, dtype, **kw):
    y, hT, cT, _ = lstm_ref(x, W, U, b, **kw)
    np.testing.assert_allclose(out.output, y, **TOL[dtype])
    np.testing.assert_allclose(out.h, hT, **TOL[dtype])
    np.testing.assert_allclose(out.c, cT, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("path,projection_rows", [("units", 48), ("units", 0), ("stacked", 0)])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("B,T,I,H", [(1, 9, 5, 3), (2, 6, 17, 33), (3, 5, 40, 70),
                                     (1, 7, 64, 130), (18, 3, 6, 21)])
def test_cached_calls_match_the_reference(monkeypatch, dtype, path, projection_rows, threads,
                                          B, T, I, H):
    """Both layouts (units: U's panels then W's; stacked: [W; U] per panel), with
    x @ W on the panels or on BLAS, padded last panels, 1 and 2 threads: the first
    call (a miss) and the next ones (hits) all match the float64 reference, and
    the hits give the same bits as each other."""
    monkeypatch.setattr(_tuning, "PANEL_PROJ_MAX_ROWS", projection_rows)   # any CPU
    monkeypatch.setattr(_tuning, "PANEL_PROJ_MAX_ROWS_AVX512", projection_rows)
    x, W, U, b = _case(B * 100 + H, B, T, I, H, dtype)
    outs = [lstm_forward(x, W, U, b, num_threads=threads, _plan=path) for _ in range(3)]
    for out in outs:
        _check(out, x, W, U, b, dtype)
    np.testing.assert_array_equal(outs[1].output, outs[2].output)
    s = _packcache.stats()
    assert (s["entries"], s["misses"], s["hits"]) == (1, 1, 2)


@pytest.mark.parametrize("path", ["units", "stacked"])
@pytest.mark.parametrize("how", ["item", "slice", "ufunc", "copyto", "view", "bias"])
def test_weights_changed_in_place_are_never_stale(path, how):
    """Any in-place change between calls, through the array or a view of it (the
    cache cannot see writes, so it compares bytes), reaches the next call."""
    x, W, U, b = _case(7, 2, 5, 6, 40, np.float32)
    lstm_forward(x, W, U, b, _plan=path)
    lstm_forward(x, W, U, b, _plan=path)
    if how == "item":
        U[-1, -1] += 0.5          # the very last byte the compare reads
    elif how == "slice":
        W[2:4] *= -1
    elif how == "ufunc":
        np.multiply(U, 0.5, out=U)
    elif how == "copyto":
        np.copyto(W, np.flipud(W).copy())
    elif how == "view":
        U.reshape(-1)[::7] = 0.1
    else:
        b[0] += 3.0
    out = lstm_forward(x, W, U, b, _plan=path)
    _check(out, x, W, U, b, np.float32)


def test_bias_none_and_a_new_array_at_the_same_id():
    """bias=None packs zeros; arrays freed and replaced (ids reused) are compared,
    not trusted."""
    x, W, U, b = _case(3, 1, 6, 4, 24, np.float64)
    zero = np.zeros_like(b)
    _check(lstm_forward(x, W, U, None, _plan="stacked"), x, W, U, zero, np.float64)
    _check(lstm_forward(x, W, U, None, _plan="stacked"), x, W, U, zero, np.float64)
    for seed in range(6):   # fresh arrays each round: CPython often reuses the ids
        del W, U
        _, W, U, _ = _case(seed, 1, 6, 4, 24, np.float64)
        _check(lstm_forward(x, W, U, b, _plan="units"), x, W, U, b, np.float64)


@pytest.mark.parametrize("path", ["units", "stacked"])
@pytest.mark.parametrize("threads", [1, 2])
def test_a_weights_version_skips_the_compare_and_keeps_the_bits(monkeypatch, path, threads):
    """A call under the version the entry holds, for the same arrays, is a hit
    without the byte compare (the compare is made to fail, so a compare would
    repack); it gives the plain call's bits and matches the reference."""
    x, W, U, b = _case(21, 2, 6, 9, 40, np.float32)
    plain = lstm_forward(x, W, U, b, num_threads=threads, _plan=path)
    v = new_weights_version()
    first = lstm_forward(x, W, U, b, num_threads=threads, _plan=path, weights_version=v)
    monkeypatch.setattr(_lstm, "same_weights", lambda *a, **k: False)
    again = lstm_forward(x, W, U, b, num_threads=threads, _plan=path, weights_version=v)
    s = _packcache.stats()
    assert (s["entries"], s["misses"], s["hits"], s["vouched"]) == (1, 1, 2, 1)
    for out in (first, again):
        np.testing.assert_array_equal(out.output, plain.output)
        np.testing.assert_array_equal(out.c, plain.c)
    _check(again, x, W, U, b, np.float32)


@pytest.mark.parametrize("change", ["new_version", "no_version", "new_arrays", "freed_ids"])
def test_a_weights_version_never_vouches_for_other_weights(change):
    """Changed weights under a new version, a later call without one, other array
    objects under the same version, and arrays freed and replaced at reused ids
    under the same version are all compared (and repacked), never trusted."""
    x, W, U, b = _case(22, 1, 5, 6, 24, np.float64)
    v = new_weights_version()
    for _ in range(2):
        lstm_forward(x, W, U, b, _plan="units", weights_version=v)
    if change == "new_version":
        U[3, 5] += 0.5
        out = lstm_forward(x, W, U, b, _plan="units", weights_version=new_weights_version())
    elif change == "no_version":
        W[0] *= -1
        out = lstm_forward(x, W, U, b, _plan="units")
    elif change == "new_arrays":
        W, U = W + 0.25, U[::-1].copy()
        out = lstm_forward(x, W, U, b, _plan="units", weights_version=v)
    else:
        for seed in range(6):   # CPython often reuses the ids of what it just freed
            del W, U
            _, W, U, _ = _case(seed, 1, 5, 6, 24, np.float64)
            out = lstm_forward(x, W, U, b, _plan="units", weights_version=v)
            _check(out, x, W, U, b, np.float64)
    _check(out, x, W, U, b, np.float64)
    assert _packcache.stats()["vouched"] == 1


def test_a_version_never_vouches_for_a_w_the_cache_did_not_check(monkeypatch):
    """A unit-path call whose x @ W runs on BLAS compares U only; a version given
    then must not vouch for the entry's W panels, which a later call projecting on
    the panels would read: that call compares W, finds it changed and repacks."""
    x, W, U, b = _case(24, 1, 5, 6, 24, np.float64)
    monkeypatch.setattr(_tuning, "PANEL_PROJ_MAX_ROWS", 0)           # x @ W on BLAS
    monkeypatch.setattr(_tuning, "PANEL_PROJ_MAX_ROWS_AVX512", 0)
    lstm_forward(x, W, U, b, _plan="units")
    W[1] += 0.5                                                       # unnoticed: U only
    v = new_weights_version()
    _check(lstm_forward(x, W, U, b, _plan="units", weights_version=v), x, W, U, b,
           np.float64)
    monkeypatch.setattr(_tuning, "PANEL_PROJ_MAX_ROWS", 1000)        # x @ W on the panels
    monkeypatch.setattr(_tuning, "PANEL_PROJ_MAX_ROWS_AVX512", 1000)
    _check(lstm_forward(x, W, U, b, _plan="units", weights_version=v), x, W, U, b,
           np.float64)
    assert _packcache.stats()["vouched"] == 0


def test_weights_version_must_be_hashable_and_training_ignores_it():
    x, W, U, b = _case(23, 1, 4, 5, 20, np.float32)
    with pytest.raises(TypeError, match="weights_version must be hashable.*got list"):
        lstm_forward(x, W, U, b, weights_version=[1])
    out = lstm_forward(x, W, U, b, training=True, _plan="units", weights_version="v1")
    _check(out, x, W, U, b, np.float32)
    assert _packcache.stats()["entries"] == 0


def test_weights_that_change_every_call_stop_being_cached():
    """A caller who changes its weights before every call (each lookup a miss)
    pays a couple of copies, then packs per call; results stay exact."""
    x, W, U, b = _case(11, 1, 4, 5, 20, np.float32)
    for k in range(12):
        U[k % 20, 0] += 0.25
        _check(lstm_forward(x, W, U, b, _plan="units"), x, W, U, b, np.float32)
    s = _packcache.stats()
    assert s["misses"] <= 4 and s["skipped"] >= 8 and s["hits"] == 0


def test_fresh_arrays_every_call_are_not_cached():
    """New arrays each call (kept alive, so never at a reused id): after a few
    misses in a row, unseen keys are skipped instead of filling the cache."""
    x, W, U, b = _case(12, 1, 4, 5, 20, np.float32)
    alive = []
    for _ in range(12):
        alive.append((W.copy(), U.copy()))
        _check(lstm_forward(x, *alive[-1], b, _plan="units"), x, W, U, b, np.float32)
    s = _packcache.stats()
    assert s["misses"] <= 5 and s["skipped"] >= 7 and s["entries"] <= 5


def test_vouched_callers_with_many_models_keep_every_model_cached():
    """A caller that vouches for its weights (``weights_version``) and serves several
    models, each new one called a few times: every model is packed once and then
    hit; its hits break the run of new keys, so the later models are not taken for
    fresh copies and skipped (they were, and packed on every call)."""
    _packcache.clear()
    for seed in range(8):
        x, W, U, b = _case(40 + seed, 2, 3, 5, 20, np.float32)
        v = new_weights_version()
        for _ in range(3):
            _check(lstm_forward(x, W, U, b, _plan="units", weights_version=v), x, W, U, b,
                   np.float32)
    s = _packcache.stats()
    assert (s["misses"], s["hits"], s["skipped"]) == (8, 16, 0)


def test_converted_weights_and_training_bypass_the_cache():
    """Weights the call had to convert (another dtype, not contiguous) are new
    arrays every call, and training changes them every step: neither is cached."""
    x, W, U, b = _case(5, 1, 4, 5, 20, np.float32)
    Uf = np.asfortranarray(U)
    for _ in range(2):
        _check(lstm_forward(x, W, Uf, b, _plan="units"), x, W, U, b, np.float32)
        out = lstm_forward(x, W, U, b, training=True, _plan="units")
        _check(out, x, W, U, b, np.float32)
    assert _packcache.stats()["entries"] == 0


def test_budget_bounds_the_cache(monkeypatch):
    x, W, U, b = _case(9, 1, 3, 8, 32, np.float32)
    one = _packcache.entry_bytes(8, 32, np.float32)
    monkeypatch.setattr(_tuning, "WEIGHT_CACHE_BYTES", 2 * one - 1)   # too big to cache
    lstm_forward(x, W, U, b, _plan="units")
    assert _packcache.stats()["entries"] == 0
    monkeypatch.setattr(_tuning, "WEIGHT_CACHE_BYTES", 3 * one)
    keep = []
    for seed in range(5):   # LRU: at most three entries, within the budget
        _, W2, U2, _ = _case(seed, 1, 3, 8, 32, np.float32)
        keep.append((W2, U2))
        _check(lstm_forward(x, W2, U2, b, _plan="units"), x, W2, U2, b, np.float32)
    s = _packcache.stats()
    assert 1 <= s["entries"] <= 3 and s["bytes"] <= 3 * one


def test_the_pack_is_read_only_and_shared_by_python_threads():
    """Four Python threads share two cached models (the GIL released in the
    kernels): every result is the serial one, bit for bit."""
    cases = []
    for k, (B, H, path) in enumerate([(1, 40, "units"), (16, 36, "stacked")]):
        x, W, U, b = _case(20 + k, B, 6, 7, H, np.float32)
        cases.append(((x, W, U, b), path, lstm_forward(x, W, U, b, num_threads=2,
                                                        _plan=path).output))
    errors = []

    def work(args, path, want):
        try:
            for _ in range(25):
                np.testing.assert_array_equal(
                    lstm_forward(*args, num_threads=2, _plan=path).output, want)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=cases[i % 2]) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    packs = [e.packed for e in _packcache._entries.values()]
    assert len(packs) == 2 and not any(p.flags.writeable for p in packs)
    assert all(p.ctypes.data % 64 == 0 for p in packs)


def test_pack_functions_refuse_inconsistent_buffers():
    W = np.zeros((5, 16), np.float32)
    U = np.zeros((4, 16), np.float32)
    n = _lstm.stacked_len(5, 4, "float32")
    with pytest.raises(ValueError, match="stacked_len"):
        _lstm.pack_units(W, U, np.zeros(16, np.float32), np.zeros(n - 1, np.float32))
    with pytest.raises(ValueError, match="U"):
        _lstm.pack_units(W, np.zeros((4, 12), np.float32), np.zeros(16, np.float32),
                         np.zeros(n, np.float32))
    with pytest.raises(ValueError, match="bias"):
        _lstm.pack_stacked(W, U, np.zeros(15, np.float32), np.zeros(n, np.float32))
    assert not _lstm.same_weights(W, U, None, W, np.zeros((3, 12), np.float32), None)
    assert not _lstm.same_weights(W, U, None, W, U, np.zeros(16, np.float32))
    assert _lstm.same_weights(W, U, None, W.copy(), U.copy(), None)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("where", ["bias", "W0", "Wmid", "Ulast", "none"])
def test_threaded_compare_finds_any_changed_byte(threads, where):
    """The cache's compare split over pool threads (chunks of 256 KiB, every
    array its own pieces): one changed element anywhere is found, and equal
    weights are equal, whatever the thread count."""
    rng = np.random.default_rng(7)
    W = rng.standard_normal((300, 1200)).astype(np.float32)   # 1.4 MB: several chunks
    U = rng.standard_normal((300, 1200)).astype(np.float32)
    b = rng.standard_normal(1200).astype(np.float32)
    W2, U2, b2 = W.copy(), U.copy(), b.copy()
    if where == "bias":
        b2[-1] += 1
    elif where == "W0":
        W2[0, 0] = np.nextafter(W2[0, 0], np.inf)
    elif where == "Wmid":
        W2.reshape(-1)[W.size // 2 + 3] *= -1
    elif where == "Ulast":
        U2[-1, -1] += 1
    same = _lstm.same_weights(W, U, b, W2, U2, b2, True, threads, 0)
    assert same == (where == "none")
    # with_w=False leaves W out of the compare
    assert _lstm.same_weights(W, U, b, W2, U2, b2, False, threads, 0) == (
        where in ("none", "W0", "Wmid"))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("I", [7, 700])
def test_a_call_gives_the_same_bits_cached_or_not(monkeypatch, I, threads):
    """Whether the cache has the weights (a hit) or skips them (churn), the unit
    path's x @ W runs on the same panels: the same bits.  (BLAS's projection
    rounds differently: I = 700 spans its K blocks.)"""
    monkeypatch.setattr(_tuning, "PANEL_PROJ_MAX_ROWS", None)   # any CPU: panel x @ W
    monkeypatch.setattr(_tuning, "PANEL_PROJ_MAX_ROWS_AVX512", None)
    x, W, U, b = (a.astype(np.float32)
                  for a in random_lstm(np.random.default_rng(I), 2, 20, I, 40))
    _packcache.clear()
    monkeypatch.setattr(_packcache, "_new_skip", 3)   # as after a run of fresh arrays
    skipped = lstm_forward(x, W, U, b, num_threads=threads, _plan="units").output
    assert _packcache.stats()["skipped"] == 1
    monkeypatch.setattr(_packcache, "_new_skip", 0)
    lstm_forward(x, W, U, b, num_threads=threads, _plan="units")
    hit = lstm_forward(x, W, U, b, num_threads=threads, _plan="units").output
    assert _packcache.stats()["hits"] >= 1
    np.testing.assert_array_equal(skipped, hit)
    want = lstm_ref(x, W, U, b)[0]
    np.testing.assert_allclose(hit, want, rtol=2e-4, atol=2e-5)
