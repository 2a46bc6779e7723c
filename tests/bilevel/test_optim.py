"""bilevel.optim: trajectories equal torch.optim (float64), differentiability, validation."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from bilevel import optim

DT = torch.float64
STEPS = 50


# ---------------------------------------------------------------------------------------------------------
# a small nonconvex problem with several tensors, a 0-dim one, and one the loss does not use
# ---------------------------------------------------------------------------------------------------------


def _data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(8, 4, generator=g, dtype=DT)
    u = torch.randn(3, generator=g, dtype=DT)
    y = torch.randn(8, generator=g, dtype=DT)
    init = {
        "W": 0.5 * torch.randn(4, 3, generator=g, dtype=DT),
        "b": 0.1 * torch.randn(3, generator=g, dtype=DT),
        "s": torch.tensor(0.7, dtype=DT),
        "unused": torch.randn(2, generator=g, dtype=DT),
    }
    return X, u, y, init


X, U, Y, INIT = _data()


def loss_fn(p):
    pred = torch.tanh(X @ p["W"] + p["b"]) @ U * p["s"]
    return ((pred - Y) ** 2).mean() + 0.05 * torch.cos(3 * p["W"]).sum() + 0.1 * p["s"] ** 4


def grads_of(p):
    return torch.func.grad(loss_fn)(p)


def run_ours(opt, init, steps=STEPS):
    p = {k: v.clone() for k, v in init.items()}
    state = opt.init(p)
    traj = []
    for _ in range(steps):
        p, state = opt.step(p, grads_of(p), state)
        traj.append({k: v.detach().clone() for k, v in p.items()})
    return traj, state


def run_torch(cls, kwargs, init, steps=STEPS):
    p = {k: v.clone().requires_grad_(True) for k, v in init.items()}
    opt = cls(list(p.values()), **kwargs)
    traj = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss_fn(p).backward()
        for v in p.values():
            if v.grad is None:  # torch.optim would skip it; give it the zero gradient we pass
                v.grad = torch.zeros_like(v)
        opt.step()
        traj.append({k: v.detach().clone() for k, v in p.items()})
    return traj


def max_rel_dev(a, b):
    """max over steps and tensors of max|a - b| / max|b|."""
    worst = 0.0
    for pa, pb in zip(a, b):
        for k in pb:
            scale = pb[k].abs().max().clamp_min(1e-300)
            worst = max(worst, float((pa[k] - pb[k]).abs().max() / scale))
    return worst


def assert_traj_close(ours, ref):
    assert len(ours) == len(ref)
    for t, (pa, pb) in enumerate(zip(ours, ref)):
        for k in pb:
            torch.testing.assert_close(pa[k], pb[k], rtol=1e-10, atol=1e-14, msg=f"step {t + 1}, {k}")


SGD_CASES = [
    dict(lr=0.05),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.05, weight_decay=0.1),
    dict(lr=0.03, momentum=0.5, dampening=0.1, weight_decay=0.1),
    dict(lr=0.03, momentum=0.8, nesterov=True, weight_decay=0.05),
]
ADAM_CASES = [
    dict(lr=0.01),
    dict(lr=0.01, weight_decay=0.1),
    dict(lr=0.01, amsgrad=True),
    dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05, amsgrad=True),
]
ADAMW_CASES = [
    dict(lr=0.01),
    dict(lr=0.01, weight_decay=0.1, amsgrad=True),
    dict(lr=0.02, betas=(0.5, 0.9), eps=1e-4, weight_decay=0.3),
]
TRAJ_CASES = (
    [(optim.SGD, torch.optim.SGD, kw) for kw in SGD_CASES]
    + [(optim.Adam, torch.optim.Adam, kw) for kw in ADAM_CASES]
    + [(optim.AdamW, torch.optim.AdamW, kw) for kw in ADAMW_CASES]
)


@pytest.mark.parametrize(("ours_cls", "torch_cls", "kwargs"), TRAJ_CASES, ids=lambda x: str(x))
def test_trajectory_equals_torch_optim(ours_cls, torch_cls, kwargs):
    ours, _ = run_ours(ours_cls(**kwargs), INIT)
    ref = run_torch(torch_cls, kwargs, INIT)
    assert_traj_close(ours, ref)
    # the problem is not trivial: parameters moved, the unused one stays put without decay
    assert float((ref[-1]["W"] - INIT["W"]).abs().max()) > 1e-2
    if not kwargs.get("weight_decay", 0.0 if ours_cls is not optim.AdamW else 1e-2):
        assert torch.equal(ours[-1]["unused"], INIT["unused"])


def test_signsgd_formula():
    opt = optim.SignSGD(lr=0.01)
    p = dict(INIT)
    state = opt.init(p)
    for t in range(20):
        g = grads_of(p)
        g["b"] = torch.where(torch.arange(3) == 0, torch.zeros(()), g["b"])  # a zero entry: sign(0) = 0
        expect = {k: p[k] - 0.01 * torch.sign(g[k]) for k in p}
        p, state = opt.step(p, g, state)
        assert state["t"] == t + 1
        for k in p:
            torch.testing.assert_close(p[k], expect[k], rtol=0, atol=0)
    assert torch.equal(p["unused"], INIT["unused"])


def test_matches_torchopt_functional():
    """torchopt's functional sgd/adam/adamw. torchopt computes Adam's bias corrections 1 - β^t from an int64
    step counter, i.e. in the *default* dtype (float32 unless changed: then it is ~4e-6 off torch.optim in
    float64), so the comparison runs with float64 as the default dtype."""
    torchopt = pytest.importorskip("torchopt")
    old_default = torch.get_default_dtype()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.set_default_dtype(DT)
        cases = [
            (optim.Adam(lr=0.01), torchopt.adam(lr=0.01)),
            (optim.AdamW(lr=0.01, weight_decay=0.1), torchopt.adamw(lr=0.01, weight_decay=0.1)),
            (
                optim.SGD(lr=0.05, momentum=0.9, nesterov=True),
                torchopt.sgd(lr=0.05, momentum=0.9, nesterov=True),
            ),
        ]
        for ours_opt, to in cases:
            ours, _ = run_ours(ours_opt, INIT, steps=30)
            p = {k: v.clone() for k, v in INIT.items()}
            st = to.init(p)
            ref = []
            for _ in range(30):
                upd, st = to.update(grads_of(p), st, params=p, inplace=False)
                p = torchopt.apply_updates(p, upd, inplace=False)
                ref.append({k: v.detach().clone() for k, v in p.items()})
            assert max_rel_dev(ours, ref) < 1e-10, type(ours_opt).__name__
        torch.set_default_dtype(old_default)


# ---------------------------------------------------------------------------------------------------------
# differentiability
# ---------------------------------------------------------------------------------------------------------


def unrolled_loss(make_opt, theta0, steps):
    p = {k: v if v.requires_grad else v.clone().requires_grad_(True) for k, v in theta0.items()}
    opt = make_opt()
    state = opt.init(p)
    for _ in range(steps):
        g = torch.autograd.grad(loss_fn(p), list(p.values()), create_graph=True, materialize_grads=True)
        p, state = opt.step(p, dict(zip(p.keys(), g)), state)
    return loss_fn(p)


def _theta0_leaf():
    return {k: v.clone().requires_grad_(True) for k, v in INIT.items()}


def _h(x):
    return torch.tensor(x, dtype=DT, requires_grad=True)


HYPER_CASES = {
    "sgd": (
        lambda lr, a, b, wd: optim.SGD(lr, momentum=a, dampening=b, weight_decay=wd),
        (0.05, 0.9, 0.2, 0.1),
    ),
    "sgd-nesterov": (
        lambda lr, a, b, wd: optim.SGD(lr, momentum=a, dampening=b * 0, nesterov=True, weight_decay=wd),
        (0.05, 0.7, 0.0, 0.1),
    ),
    "adam": (
        lambda lr, a, b, wd: optim.Adam(lr, betas=(a, b), eps=1e-3, weight_decay=wd),
        (0.02, 0.8, 0.95, 0.1),
    ),
    "adam-amsgrad": (
        lambda lr, a, b, wd: optim.Adam(lr, betas=(a, b), eps=wd, amsgrad=True),
        (0.02, 0.8, 0.95, 1e-2),
    ),
    "adamw": (lambda lr, a, b, wd: optim.AdamW(lr, betas=(a, b), weight_decay=wd), (0.02, 0.8, 0.95, 0.3)),
}


@pytest.mark.parametrize("name", list(HYPER_CASES))
def test_gradcheck_hyperparameters_and_init(name):
    """d(loss after T steps)/d(hyper-parameters, θ₀) against finite differences (torch.autograd.gradcheck)."""
    factory, values = HYPER_CASES[name]
    hyper = tuple(_h(v) for v in values)
    theta = _theta0_leaf()
    keys = list(theta)

    def f(*args):
        hp, th = args[:4], dict(zip(keys, args[4:]))
        return unrolled_loss(lambda: factory(*hp), th, steps=6)

    assert torch.autograd.gradcheck(f, hyper + tuple(theta.values()), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_d_loss_d_lr_matches_central_differences_long_run():
    """Adam, 30 steps, learning rate a tensor: autograd vs a central difference of the whole run."""
    theta = {k: v.clone() for k, v in INIT.items()}
    lr = _h(0.01)
    (d,) = torch.autograd.grad(unrolled_loss(lambda: optim.Adam(lr), theta, 30), lr)
    h = 1e-6
    fp = unrolled_loss(lambda: optim.Adam(0.01 + h), theta, 30).detach()
    fm = unrolled_loss(lambda: optim.Adam(0.01 - h), theta, 30).detach()
    fd = (fp - fm) / (2 * h)
    assert math.isclose(float(d), float(fd), rel_tol=1e-6)


def test_signsgd_derivatives():
    """sign has derivative 0: ∂θ_T/∂θ_0 = I and ∂θ_T/∂η = -Σ sign(g_t)."""
    lr = _h(0.01)
    theta = _theta0_leaf()
    opt = optim.SignSGD(lr)
    p, st = theta, opt.init(theta)
    total_sign = {k: torch.zeros_like(v) for k, v in INIT.items()}
    for _ in range(5):
        g = torch.autograd.grad(loss_fn(p), list(p.values()), create_graph=True, materialize_grads=True)
        g = dict(zip(p.keys(), g))
        total_sign = {k: total_sign[k] + torch.sign(g[k].detach()) for k in g}
        p, st = opt.step(p, g, st)
    c = {k: torch.randn_like(v) for k, v in p.items()}
    out = sum((c[k] * p[k]).sum() for k in p)
    grads = torch.autograd.grad(out, [lr, *theta.values()])
    expect_lr = -sum((c[k] * total_sign[k]).sum() for k in c)
    torch.testing.assert_close(grads[0], expect_lr, rtol=1e-12, atol=1e-12)
    for gk, k in zip(grads[1:], theta):
        torch.testing.assert_close(gk, c[k], rtol=0, atol=0)


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("opt_cls", [optim.Adam, optim.AdamW])
def test_adam_backward_through_zero_gradient_entries_is_finite_and_correct(opt_cls, amsgrad):
    """Inner gradient g = λ ⊙ θ with some λ_i = 0: those entries have v = 0 at every step. A naive √v
    gives NaN; ours gives the true derivative (checked by central differences, which are exact here up to
    O(h/eps) because the update is odd in λ_i)."""
    lam = torch.tensor([0.0, 0.5, 0.0, -0.3], dtype=DT, requires_grad=True)
    theta0 = torch.tensor([1.0, -2.0, 0.5, 0.3], dtype=DT)
    c = torch.tensor([0.3, -1.0, 2.0, 0.7], dtype=DT)

    def run(lam, mode="reverse"):
        opt = opt_cls(lr=0.1, eps=1e-2, amsgrad=amsgrad, weight_decay=0.01)
        p = {"x": theta0}
        st = opt.init(p)
        for _ in range(5):
            p, st = opt.step(p, {"x": lam * p["x"]}, st)
        return (c * p["x"]).sum()

    (d,) = torch.autograd.grad(run(lam), lam)
    assert torch.isfinite(d).all()
    h = 1e-8
    fd = torch.stack(
        [(run(lam.detach() + h * e) - run(lam.detach() - h * e)) / (2 * h) for e in torch.eye(4, dtype=DT)]
    )
    torch.testing.assert_close(d, fd, rtol=1e-5, atol=1e-7)
    assert d[0].abs() > 1e-3 and d[2].abs() > 1e-3  # the zero-gradient entries do carry a derivative
    # forward mode (jvp) is finite too
    _, tangent = torch.func.jvp(run, (lam.detach(),), (torch.ones(4, dtype=DT),))
    torch.testing.assert_close(tangent, d.sum(), rtol=1e-10, atol=1e-12)


def test_torch_func_grad_through_unrolled_steps_equals_autograd():
    opt = optim.Adam(lr=0.02, weight_decay=0.1)

    def f(theta):
        p, st = theta, opt.init(theta)
        for _ in range(4):
            p, st = opt.step(p, torch.func.grad(loss_fn)(p), st)
        return loss_fn(p)

    g_func = torch.func.grad(f)({k: v.clone() for k, v in INIT.items()})
    theta = _theta0_leaf()
    g_auto = torch.autograd.grad(
        unrolled_loss(lambda: opt, theta, 4), list(theta.values()), allow_unused=True, materialize_grads=True
    )
    for gf, ga in zip(g_func.values(), g_auto):
        torch.testing.assert_close(gf, ga, rtol=1e-12, atol=1e-14)


def test_second_order_gradgradcheck_through_steps():
    theta = {k: v.clone().requires_grad_(True) for k, v in INIT.items() if k != "unused"}
    keys = list(theta)

    def f(*vals):
        p = dict(zip(keys, vals))
        p["unused"] = INIT["unused"]
        return unrolled_loss(lambda: optim.Adam(0.02, eps=1e-3, amsgrad=True), p, 2)

    assert torch.autograd.gradgradcheck(f, tuple(theta.values()), eps=1e-6, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------
# purity, state, dtypes
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "opt",
    [
        optim.SGD(0.1, momentum=0.9, weight_decay=0.1),
        optim.Adam(amsgrad=True, weight_decay=0.1),
        optim.AdamW(),
        optim.SignSGD(0.1),
    ],
    ids=lambda o: type(o).__name__,
)
def test_step_is_pure_and_state_is_shaped_like_params(opt):
    p = {k: v.clone() for k, v in INIT.items()}
    state = opt.init(p)
    assert state["t"] == 0 and isinstance(state["t"], int)
    for key, val in state.items():
        if key != "t":
            assert val.keys() == p.keys() and all(val[k].shape == p[k].shape for k in p)
    p1, state1 = opt.step(p, grads_of(p), state)
    g = grads_of(p1)
    snap_p = {k: v.clone() for k, v in p1.items()}
    snap_g = {k: v.clone() for k, v in g.items()}
    snap_s = {
        key: ({k: v.clone() for k, v in val.items()} if key != "t" else val) for key, val in state1.items()
    }
    versions = [v._version for v in [*p1.values(), *g.values()]]
    p2, state2 = opt.step(p1, g, state1)
    assert state2["t"] == 2 and state1["t"] == 1
    assert versions == [v._version for v in [*p1.values(), *g.values()]]
    for k in p1:
        assert torch.equal(p1[k], snap_p[k]) and torch.equal(g[k], snap_g[k])
    for key, val in state1.items():
        if key != "t":
            for k in val:
                assert torch.equal(val[k], snap_s[key][k])
    assert p2 is not p1 and all(p2[k] is not p1[k] for k in p1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_is_kept_and_float32_matches_torch(dtype):
    init = {k: v.to(dtype) for k, v in INIT.items() if k != "unused"}
    opt = optim.Adam(lr=0.01)
    p, st = init, opt.init(init)
    ref = {k: v.clone().requires_grad_(True) for k, v in init.items()}
    topt = torch.optim.Adam(list(ref.values()), lr=0.01)
    for _ in range(10):
        g = {k: torch.cos(v) for k, v in p.items()}
        p, st = opt.step(p, g, st)
        for v in ref.values():
            v.grad = torch.cos(v.detach())
        topt.step()
    for k in p:
        assert p[k].dtype == dtype
        torch.testing.assert_close(
            p[k], ref[k].detach(), rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=0
        )


def test_hyperparameters_and_protocol():
    lr = _h(0.1)
    assert optim.SGD(lr, momentum=0.9).hyperparameters() == {
        "lr": lr,
        "momentum": 0.9,
        "dampening": 0.0,
        "nesterov": False,
        "weight_decay": 0.0,
    }
    hp = optim.Adam().hyperparameters()
    assert hp == {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False}
    assert optim.AdamW().hyperparameters()["weight_decay"] == 1e-2
    assert optim.SignSGD(0.5).hyperparameters() == {"lr": 0.5}
    with pytest.raises(dataclasses_frozen_error()):
        optim.Adam().lr = 2.0

    class Halve:  # duck-typed user optimizer
        def init(self, params):
            return {"t": 0}

        def step(self, params, grads, state):
            return {k: v / 2 for k, v in params.items()}, {"t": state["t"] + 1}

    assert isinstance(Halve(), optim.Optimizer)
    assert isinstance(optim.Adam(), optim.Optimizer)
    assert not isinstance(object(), optim.Optimizer)


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


# ---------------------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: optim.SGD(0.0), "lr"),
        (lambda: optim.SGD(-1.0), "lr"),
        (lambda: optim.SGD(float("nan")), "lr"),
        (lambda: optim.SGD(0.1, momentum=-0.1), "momentum"),
        (lambda: optim.SGD(0.1, dampening=1.5), "dampening"),
        (lambda: optim.SGD(0.1, weight_decay=-1.0), "weight_decay"),
        (lambda: optim.SGD(0.1, nesterov=True), "nesterov"),
        (lambda: optim.SGD(0.1, momentum=0.9, dampening=0.1, nesterov=True), "nesterov"),
        (lambda: optim.SGD(torch.tensor(-0.1, requires_grad=True)), "lr"),
        (lambda: optim.Adam(betas=(1.0, 0.9)), r"betas\[0\]"),
        (lambda: optim.Adam(betas=(0.9, -0.1)), r"betas\[1\]"),
        (lambda: optim.Adam(eps=0.0), "eps"),
        (lambda: optim.AdamW(weight_decay=-0.1), "weight_decay"),
        (lambda: optim.SignSGD(0.0), "lr"),
    ],
)
def test_bad_hyperparameters_raise_value_error_naming_them(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: optim.SGD(torch.ones(2)), "lr"),
        (lambda: optim.SGD(True), "lr"),
        (lambda: optim.SGD("0.1"), "lr"),
        (lambda: optim.SGD(torch.tensor(1)), "lr"),
        (lambda: optim.Adam(betas=0.9), "betas"),
        (lambda: optim.Adam(amsgrad=1), "amsgrad"),
        (lambda: optim.SGD(0.1, momentum=0.5, nesterov=1), "nesterov"),
    ],
)
def test_bad_hyperparameter_types_raise_type_error(make, match):
    with pytest.raises(TypeError, match=match):
        make()


def test_bad_grads_raise():
    p = {"a": torch.zeros(2, dtype=DT), "b": torch.zeros((), dtype=DT)}
    for opt in (optim.SGD(0.1), optim.Adam(), optim.SignSGD(0.1)):
        st = opt.init(p)
        with pytest.raises(ValueError, match=r"missing \['b'\]"):
            opt.step(p, {"a": torch.ones(2, dtype=DT)}, st)
        with pytest.raises(ValueError, match="grads\\['b'\\] is None"):
            opt.step(p, {"a": torch.ones(2, dtype=DT), "b": None}, st)


def test_nonfinite_grads_propagate_without_hidden_checks():
    p = {"a": torch.zeros(2, dtype=DT)}
    opt = optim.Adam()
    out, _ = opt.step(p, {"a": torch.tensor([float("nan"), 1.0], dtype=DT)}, opt.init(p))
    assert torch.isnan(out["a"][0]) and torch.isfinite(out["a"][1])


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (optim.SGD, dict(lr=0.03, momentum=0.8, dampening=0.1, weight_decay=0.05)),
        (optim.SGD, dict(lr=0.03, momentum=0.8, nesterov=True, weight_decay=0.05)),
        (optim.Adam, dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05, amsgrad=True)),
        (optim.AdamW, dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)),
        (optim.SignSGD, dict(lr=0.01)),
    ],
    ids=lambda x: getattr(x, "__name__", ""),
)
def test_tensor_hyperparameters_give_the_same_trajectory(cls, kwargs):
    """Tensor hyper-parameters (requiring grad) take the generic arithmetic path: same values to rounding."""

    def as_tensor(v):
        if isinstance(v, tuple):
            return tuple(as_tensor(x) for x in v)
        if isinstance(v, bool):
            return v
        return torch.tensor(v, dtype=DT, requires_grad=True)

    ours, _ = run_ours(cls(**kwargs), INIT, steps=20)
    tens, _ = run_ours(cls(**{k: as_tensor(v) for k, v in kwargs.items()}), INIT, steps=20)
    assert max_rel_dev(tens, ours) < 1e-12
