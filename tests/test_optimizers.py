"""Optimizers against a float64 NumPy reference of Keras 3's update rules.

The reference below works per weight tensor (a list of arrays), as Keras does,
so it also checks that ``segments`` carve the flat vector into the tensors
``clipnorm`` clips separately.
"""
import json
import math
import warnings

import numpy as np
import pytest

import cylstm
from cylstm import optimizers
from cylstm.optimizers import SGD, Adam, AdamW, RMSprop


# ----------------------------------------------------------------------------- reference
class RefOptimizer:
    """Keras 3 (keras/src/optimizers/*.py) transcribed to float64 NumPy, per tensor."""

    def __init__(self, kind, lr, **kw):
        self.kind, self.lr, self.kw = kind, lr, kw
        self.t = 0
        self.slots = None

    def clip(self, grads):
        kw = self.kw
        if kw.get("clipnorm"):
            c = kw["clipnorm"]
            return [g * c / max(np.sqrt(np.sum(g * g)), c) for g in grads]
        if kw.get("global_clipnorm"):
            c = kw["global_clipnorm"]
            gn = np.sqrt(sum(np.sum(g * g) for g in grads))
            return [g * c / max(gn, c) for g in grads]
        if kw.get("clipvalue"):
            c = kw["clipvalue"]
            return [np.clip(g, -c, c) for g in grads]
        return grads

    def step(self, params, grads):
        grads = self.clip([np.asarray(g, dtype=np.float64) for g in grads])
        if self.slots is None:
            self.slots = [{k: np.zeros_like(p) for k in ("m", "v", "vhat", "a")}
                          for p in params]
        lr = self.lr
        wd = self.kw.get("weight_decay")
        out = []
        for p, g, s in zip(params, grads, self.slots):
            p = p.copy()
            if wd:
                p = p - p * wd * lr
            if self.kind == "adam":
                b1, b2 = self.kw.get("beta_1", 0.9), self.kw.get("beta_2", 0.999)
                eps = self.kw.get("epsilon", 1e-7)
                t = self.t + 1
                alpha = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
                s["m"] = s["m"] + (g - s["m"]) * (1 - b1)
                s["v"] = s["v"] + (g * g - s["v"]) * (1 - b2)
                v = s["v"]
                if self.kw.get("amsgrad"):
                    s["vhat"] = np.maximum(s["vhat"], s["v"])
                    v = s["vhat"]
                p = p - s["m"] * alpha / (np.sqrt(v) + eps)
            elif self.kind == "sgd":
                mom = self.kw.get("momentum", 0.0)
                if mom:
                    s["m"] = mom * s["m"] - lr * g
                    if self.kw.get("nesterov"):
                        p = p + mom * s["m"] - lr * g
                    else:
                        p = p + s["m"]
                else:
                    p = p - lr * g
            elif self.kind == "rmsprop":
                rho, mom = self.kw.get("rho", 0.9), self.kw.get("momentum", 0.0)
                eps = self.kw.get("epsilon", 1e-7)
                s["v"] = rho * s["v"] + (1 - rho) * g * g
                if self.kw.get("centered"):
                    s["a"] = rho * s["a"] + (1 - rho) * g
                    den = s["v"] - s["a"] ** 2 + eps
                else:
                    den = s["v"] + eps
                inc = lr * g / np.sqrt(den)
                if mom:
                    s["m"] = mom * s["m"] + inc
                    p = p - s["m"]
                else:
                    p = p - inc
            out.append(p)
        self.t += 1
        return out


SIZES = [7, 12, 5, 30]  # four "weight tensors"
SEGMENTS = [(0, 7), (7, 19), (19, 24), (24, 54)]

CASES = [
    ("adam", Adam, {}),
    ("adam", Adam, {"amsgrad": True}),
    ("adam", Adam, {"beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-3, "weight_decay": 0.05}),
    ("adam", Adam, {"clipnorm": 0.7}),
    ("adam", Adam, {"global_clipnorm": 0.9, "amsgrad": True}),
    ("adam", Adam, {"clipvalue": 0.3}),
    ("adam", AdamW, {"weight_decay": 0.004}),
    ("sgd", SGD, {}),
    ("sgd", SGD, {"momentum": 0.9}),
    ("sgd", SGD, {"momentum": 0.8, "nesterov": True, "clipnorm": 0.5}),
    ("sgd", SGD, {"momentum": 0.5, "weight_decay": 0.1, "clipvalue": 0.2}),
    ("rmsprop", RMSprop, {}),
    ("rmsprop", RMSprop, {"centered": True}),
    ("rmsprop", RMSprop, {"momentum": 0.6, "rho": 0.8}),
    ("rmsprop", RMSprop, {"momentum": 0.3, "centered": True, "global_clipnorm": 1.0}),
]


def _split(flat):
    return [flat[a:b].copy() for a, b in SEGMENTS]


@pytest.mark.parametrize("impl", ["compiled", "numpy"])
@pytest.mark.parametrize("kind,cls,kw", CASES, ids=[f"{c[1].__name__}-{c[2]}" for c in CASES])
def test_matches_keras_reference(kind, cls, kw, impl):
    rng = np.random.default_rng(0)
    lr = 0.05
    p = rng.standard_normal(sum(SIZES))
    opt = cls(learning_rate=lr, **kw)
    opt._impl = impl
    ref_kw = dict(kw)
    if cls is AdamW:
        ref_kw.setdefault("weight_decay", 0.004)
    ref = RefOptimizer(kind, lr, **ref_kw)
    ref_params = _split(p)
    for _ in range(6):
        g = rng.standard_normal(p.size) * 2.0
        opt.update(p, g, SEGMENTS)
        ref_params = ref.step(ref_params, _split(g))
        np.testing.assert_allclose(p, np.concatenate(ref_params), rtol=1e-12, atol=1e-14)
    assert opt.iterations == 6


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kind,cls,kw", CASES, ids=[f"{c[1].__name__}-{c[2]}" for c in CASES])
def test_compiled_equals_numpy_path(kind, cls, kw, dtype, threads, monkeypatch):
    """The fused kernel against the NumPy path (bit-identical in float32, one thread)."""
    monkeypatch.setattr(optimizers, "PARALLEL_MIN_SIZE", 0)  # exercise the thread team
    old = cylstm.get_num_threads()
    cylstm.set_num_threads(threads)
    try:
        rng = np.random.default_rng(1)
        n = 1001
        segs = [(0, 100), (100, 101), (101, 640), (640, n)]
        p0 = rng.standard_normal(n).astype(dtype)
        a, b = cls(learning_rate=0.01, **kw), cls(learning_rate=0.01, **kw)
        b._impl = "numpy"
        pa, pb = p0.copy(), p0.copy()
        for _ in range(4):
            g = rng.standard_normal(n).astype(dtype)
            a.update(pa, g, segs)
            b.update(pb, g, segs)
        # the float64 norm sums run in a different order; float32 has no slack
        rtol = 1e-6 if dtype == np.float32 else 1e-13
        np.testing.assert_allclose(pa, pb, rtol=rtol, atol=rtol * 1e-2)
        for k in a.get_state():
            np.testing.assert_allclose(a.get_state()[k], b.get_state()[k], rtol=rtol,
                                       atol=rtol * 1e-2)
        if dtype == np.float32 and threads == 1 and not (
                kw.get("clipnorm") or kw.get("global_clipnorm")):
            np.testing.assert_array_equal(pa, pb)
        assert pa.dtype == dtype
    finally:
        cylstm.set_num_threads(old)


def test_large_vector_threaded_matches_serial():
    rng = np.random.default_rng(2)
    n = optimizers.PARALLEL_MIN_SIZE + 12345
    p0 = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    old = cylstm.get_num_threads()
    try:
        out = []
        for t in (1, 2):
            cylstm.set_num_threads(t)
            p = p0.copy()
            opt = Adam(clipvalue=1.0)
            opt.update(p, g)
            opt.update(p, g)
            out.append(p)
        np.testing.assert_array_equal(out[0], out[1])
    finally:
        cylstm.set_num_threads(old)


# ----------------------------------------------------------------------------- torch parity
def _torch_run(torch_opt_fn, our_opt, steps=5, n=40):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal(n)
    grads = [rng.standard_normal(n) for _ in range(steps)]
    tp = torch.nn.Parameter(torch.tensor(p0.copy(), dtype=torch.float64))
    topt = torch_opt_fn([tp])
    p = p0.copy()
    for g in grads:
        tp.grad = torch.tensor(g, dtype=torch.float64)
        topt.step()
        our_opt.update(p, g)
    np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-9, atol=1e-12)


def test_torch_adam():
    torch = pytest.importorskip("torch")
    # Keras adds eps to sqrt(v) after bias-correcting lr, torch to sqrt(v_hat): with
    # a negligible eps the two are the same update.
    _torch_run(lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.9, 0.99), eps=1e-300),
               Adam(learning_rate=0.01, beta_2=0.99, epsilon=1e-300))


def test_torch_adam_amsgrad():
    torch = pytest.importorskip("torch")
    _torch_run(lambda ps: torch.optim.Adam(ps, lr=0.01, eps=1e-300, amsgrad=True),
               Adam(learning_rate=0.01, epsilon=1e-300, amsgrad=True))


def test_torch_adamw():
    torch = pytest.importorskip("torch")
    _torch_run(lambda ps: torch.optim.AdamW(ps, lr=0.01, eps=1e-300, weight_decay=0.1),
               AdamW(learning_rate=0.01, epsilon=1e-300, weight_decay=0.1))


@pytest.mark.parametrize("nesterov", [False, True])
def test_torch_sgd_momentum(nesterov):
    torch = pytest.importorskip("torch")
    _torch_run(lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=nesterov),
               SGD(learning_rate=0.05, momentum=0.9, nesterov=nesterov))


@pytest.mark.parametrize("centered", [False, True])
def test_torch_rmsprop(centered):
    torch = pytest.importorskip("torch")
    _torch_run(lambda ps: torch.optim.RMSprop(ps, lr=0.01, alpha=0.9, eps=1e-300,
                                              momentum=0.5, centered=centered),
               RMSprop(learning_rate=0.01, rho=0.9, epsilon=1e-300, momentum=0.5,
                       centered=centered))


# ----------------------------------------------------------------------------- behaviour
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("impl", ["compiled", "numpy"])
def test_nonfinite_gradient_changes_nothing(bad, impl):
    rng = np.random.default_rng(4)
    p = rng.standard_normal(20)
    opt = Adam(clipnorm=1.0)
    opt._impl = impl
    opt.update(p, rng.standard_normal(20))
    p_before, state_before = p.copy(), opt.get_state()
    g = rng.standard_normal(20)
    g[13] = bad
    with pytest.raises(FloatingPointError, match="index 13"):
        opt.update(p, g)
    np.testing.assert_array_equal(p, p_before)
    assert opt.iterations == 1
    for k, v in opt.get_state().items():
        np.testing.assert_array_equal(v, state_before[k])


def test_huge_finite_float64_gradient_is_not_refused():
    # squares overflow to inf; that is not a NaN gradient
    p = np.zeros(3)
    opt = SGD(learning_rate=1e-300)
    opt.update(p, np.array([1e200, -1e200, 0.0]))
    assert np.all(np.isfinite(p)) and p[0] < 0 < p[1]


def test_lr_alias_warns_and_sets_learning_rate():
    with pytest.warns(DeprecationWarning, match="learning_rate"):
        opt = Adam(lr=0.02)
    assert opt.learning_rate == 0.02
    with pytest.warns(DeprecationWarning, match="learning_rate"):
        SGD(lr=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Adam(learning_rate=0.02)  # the new spelling does not warn


def test_learning_rate_settable_and_used():
    p1, p2 = np.ones(4), np.ones(4)
    g = np.full(4, 0.5)
    a, b = SGD(learning_rate=0.1), SGD(learning_rate=0.1)
    b.learning_rate = 0.01
    assert b.learning_rate == 0.01 and isinstance(b.learning_rate, float)
    a.update(p1, g)
    b.update(p2, g)
    np.testing.assert_allclose(p1, 1 - 0.05)
    np.testing.assert_allclose(p2, 1 - 0.005)
    with pytest.raises(ValueError, match="learning_rate"):
        b.learning_rate = -1.0
    with pytest.raises(TypeError, match="learning_rate"):
        b.learning_rate = "fast"


def test_learning_rate_schedule():
    opt = SGD(learning_rate=lambda step: 0.1 / (1 + step))
    p = np.zeros(2)
    for _ in range(3):
        opt.update(p, np.ones(2))
    np.testing.assert_allclose(p, -(0.1 + 0.05 + 0.1 / 3))
    assert opt.learning_rate == pytest.approx(0.025)


def test_state_roundtrip_resumes_exactly():
    rng = np.random.default_rng(5)
    grads = [rng.standard_normal(30).astype(np.float32) for _ in range(6)]
    p_full = np.linspace(-1, 1, 30).astype(np.float32)
    full = Adam(amsgrad=True)
    for g in grads:
        full.update(p_full, g)
    p = np.linspace(-1, 1, 30).astype(np.float32)
    first = Adam(amsgrad=True)
    for g in grads[:3]:
        first.update(p, g)
    state = first.get_state()
    assert set(state) == {"iterations", "momentums", "velocities", "velocity_hats"}
    second = Adam.from_config(json.loads(json.dumps(first.get_config())))
    second.set_state(state)
    assert second.iterations == 3
    for g in grads[3:]:
        second.update(p, g)
    np.testing.assert_array_equal(p, p_full)


def test_set_state_validates():
    opt = SGD(momentum=0.9)
    opt.update(np.zeros(5), np.ones(5))
    with pytest.raises(ValueError, match="size"):
        opt.set_state({"iterations": np.array(1), "momentums": np.zeros(6)})
    with pytest.raises(ValueError, match="slots"):
        opt.set_state({"iterations": np.array(1), "velocities": np.zeros(5)})
    with pytest.raises(ValueError, match="iterations"):
        opt.set_state({"momentums": np.zeros(5)})
    with pytest.raises(ValueError, match="NaN"):
        opt.set_state({"iterations": np.array(1), "momentums": np.full(5, np.nan)})


def test_config_roundtrip_json():
    for opt in (Adam(learning_rate=0.003, amsgrad=True, clipnorm=1.0),
                AdamW(weight_decay=0.01), SGD(momentum=0.9, nesterov=True, clipvalue=2.0),
                RMSprop(centered=True, rho=0.8, global_clipnorm=3.0)):
        cfg = json.loads(json.dumps(optimizers.serialize(opt)))
        again = optimizers.deserialize(cfg)
        assert type(again) is type(opt)
        assert again.get_config() == opt.get_config()


def test_get():
    assert isinstance(optimizers.get("adam"), Adam)
    assert isinstance(optimizers.get("Adam"), Adam)
    assert isinstance(optimizers.get("SGD"), SGD)
    assert isinstance(optimizers.get("rmsprop"), RMSprop)
    assert isinstance(optimizers.get("adamw"), AdamW)
    o = SGD()
    assert optimizers.get(o) is o
    assert optimizers.get({"class_name": "Adam", "config": {"learning_rate": 0.5}}
                          ).learning_rate == 0.5
    with pytest.raises(ValueError, match="adam.*sgd.*rmsprop"):
        optimizers.get("adagrad_plus")
    with pytest.raises(TypeError):
        optimizers.get(3)


def test_keras_defaults():
    a = Adam()
    assert (a.learning_rate, a.beta_1, a.beta_2, a.epsilon, a.amsgrad) == (
        0.001, 0.9, 0.999, 1e-7, False)
    s = SGD()
    assert (s.learning_rate, s.momentum, s.nesterov) == (0.01, 0.0, False)
    r = RMSprop()
    assert (r.learning_rate, r.rho, r.momentum, r.epsilon, r.centered) == (
        0.001, 0.9, 0.0, 1e-7, False)
    w = AdamW()
    assert (w.learning_rate, w.weight_decay) == (0.001, 0.004)


def test_bad_input():
    opt = Adam()
    with pytest.raises(TypeError, match="dtype"):
        opt.update(np.zeros(3, np.float32), np.zeros(3, np.float64))
    with pytest.raises(ValueError, match=r"\(3,\).*\(4,\)"):
        opt.update(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="1-D"):
        opt.update(np.zeros((3, 2)), np.zeros((3, 2)))
    with pytest.raises(TypeError, match="float32 or float64"):
        opt.update(np.zeros(3, np.int64), np.zeros(3, np.int64))
    with pytest.raises(TypeError, match="ndarray"):
        opt.update([0.0, 1.0], np.zeros(2))
    ro = np.zeros(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        opt.update(ro, np.zeros(3))
    opt.update(np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match="built for 3"):
        opt.update(np.zeros(4), np.ones(4))
    with pytest.raises(ValueError, match="overlap"):
        Adam().update(np.zeros(4), np.ones(4), [(0, 3), (2, 4)])
    with pytest.raises(ValueError, match="stop"):
        Adam().update(np.zeros(4), np.ones(4), [(0, 5)])
    with pytest.raises(ValueError, match="only one"):
        Adam(clipnorm=1.0, global_clipnorm=1.0)
    with pytest.raises(TypeError, match="unexpected"):
        Adam(learnin_rate=0.1)
    with pytest.raises(ValueError, match="beta_1"):
        Adam(beta_1=1.5)
    with pytest.raises(TypeError, match="amsgrad"):
        Adam(amsgrad="yes")


def test_segment_gaps_are_their_own_tensors():
    # clipnorm with a gap: the gap [3, 6) is clipped as a tensor of its own
    p = np.zeros(8)
    g = np.array([3.0, 4.0, 0.0, 6.0, 8.0, 0.0, 0.0, 0.5])
    SGD(learning_rate=1.0, clipnorm=1.0).update(p, g, [(0, 3), (6, 8)])
    np.testing.assert_allclose(p, -np.array([0.6, 0.8, 0, 0.6, 0.8, 0, 0, 0.5]))


def test_apply_gradients_matches_flat_update():
    rng = np.random.default_rng(6)
    w = [rng.standard_normal((3, 4)), rng.standard_normal(4)]
    grads = [[rng.standard_normal((3, 4)), rng.standard_normal(4)] for _ in range(3)]
    flat = np.concatenate([x.ravel() for x in w])
    a, b = Adam(clipnorm=0.5), Adam(clipnorm=0.5)
    for gs in grads:
        a.apply_gradients(zip(gs, w))
        b.update(flat, np.concatenate([g.ravel() for g in gs]), [(0, 12), (12, 16)])
    np.testing.assert_array_equal(np.concatenate([x.ravel() for x in w]), flat)
    with pytest.raises(ValueError, match="shape"):
        a.apply_gradients([(np.zeros(3), np.zeros(4))])


def test_iterations_and_bias_correction_first_step():
    # first Adam step moves every weight by ~lr * sign(g) (bias correction)
    p = np.zeros(5)
    g = np.array([0.05, -2.0, 5.0, -0.1, 1.0])
    Adam(learning_rate=0.1).update(p, g)
    np.testing.assert_allclose(p, -0.1 * np.sign(g), rtol=1e-3)
    assert math.isclose(Adam()._alpha(1.0), math.sqrt(1 - 0.999) / (1 - 0.9))


def test_clipvalue_ignored_with_a_norm_clip_as_keras():
    for impl in ("compiled", "numpy"):
        p = np.zeros(2)
        opt = SGD(learning_rate=1.0, clipnorm=10.0, clipvalue=0.1)
        opt._impl = impl
        opt.update(p, np.array([3.0, 4.0]))  # norm 5 < 10: no clipping at all
        np.testing.assert_allclose(p, [-3.0, -4.0])


def test_zero_argument_learning_rate_callable():
    box = {"lr": 0.5}
    opt = SGD(learning_rate=lambda: box["lr"])
    p = np.zeros(1)
    opt.update(p, np.ones(1))
    box["lr"] = 0.25
    opt.update(p, np.ones(1))
    np.testing.assert_allclose(p, [-0.75])


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grad_sumsq_kernel(threads, dtype):
    _optim = pytest.importorskip("cylstm._optim")
    rng = np.random.default_rng(7)
    g = rng.standard_normal(1003).astype(dtype)
    seg = np.array([[0, 1], [1, 500], [500, 500], [500, 1003]], dtype=np.int64)
    out = np.zeros(4)
    assert _optim.grad_sumsq(g, seg, out, threads)
    ref = [np.sum(g[a:b].astype(np.float64) ** 2) for a, b in seg]
    np.testing.assert_allclose(out, ref, rtol=1e-12)
    g[700] = np.nan
    assert not _optim.grad_sumsq(g, seg, out, threads)


def test_kernel_wrappers_check_layout():
    _optim = pytest.importorskip("cylstm._optim")
    p, g = np.zeros(5), np.ones(5)
    m, v = np.zeros(5), np.zeros(5)
    good = np.array([[0, 5]], dtype=np.int64)
    with pytest.raises(ValueError, match="tile"):
        _optim.adam(p, g, m, v, v, np.array([[1, 5]], dtype=np.int64), np.ones(1),
                    np.inf, 0.0, 0.1, 0.9, 0.999, 1e-7, False, 1)
    with pytest.raises(ValueError, match="covers"):
        _optim.sgd(p, g, m, np.array([[0, 4]], dtype=np.int64), np.ones(1), np.inf, 0.0,
                   0.1, 0.0, False, 1)
    with pytest.raises(ValueError, match="m has 4"):
        _optim.adam(p, g, np.zeros(4), v, v, good, np.ones(1), np.inf, 0.0, 0.1, 0.9, 0.999,
                    1e-7, False, 1)
    with pytest.raises(ValueError, match="scale"):
        _optim.rmsprop(p, g, v, m, m, good, np.ones(2), np.inf, 0.0, 0.1, 0.9, 0.0, 1e-7,
                       False, 1)


def test_lr_warning_points_at_the_callers_line():
    # Python shows DeprecationWarnings attributed to __main__: blame the user's line,
    # not the constructor chain inside cylstm (AdamW -> Adam -> Optimizer)
    for cls in (Adam, AdamW, SGD, RMSprop):
        with pytest.warns(DeprecationWarning, match="learning_rate") as rec:
            cls(lr=0.01)
        assert rec[0].filename == __file__
