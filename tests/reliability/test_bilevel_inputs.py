"""Bad and surprising inputs to the bilevel library (issue 14): each gives one clear error naming the argument
and the fix, or an explicit, documented behaviour; never a silent wrong result."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from bilevel import (
    CG,
    BilevelProblem,
    FirstOrder,
    Forward,
    FunctionalModule,
    Implicit,
    Unrolled,
    check_hypergrad,
    minimize,
    optim,
    problems,
    solve_inner,
)


@pytest.fixture()
def ridge():
    return problems.ridge(seed=0)


# -- a mode string never becomes the optimizer -------------------------------------------------------------


@pytest.mark.parametrize(
    "form", [lambda: FirstOrder("f2sa", sigma=100), lambda: FirstOrder("identity", c=0.5)]
)
def test_firstorder_mode_in_the_optimizer_place_is_refused(form):
    with pytest.raises(TypeError, match=r"first argument is the inner optimizer.*mode="):
        form()


def test_firstorder_documented_forms_compute_nonzero_hypergradients(ridge):
    sgd = optim.SGD(lr=1.0 / ridge.L)
    for solver in (
        FirstOrder(sgd, 50, mode="f2sa", sigma=100.0),
        FirstOrder(sgd, 50, mode="identity", c=0.5),
        FirstOrder(sgd, 50, "partial"),
    ):
        hg = solver.hypergrad(ridge.problem, ridge.inner_init, ridge.outer)
        assert any(bool(v.abs().sum() > 0) for v in hg.grad.values()) or solver.mode == "partial"
    with pytest.raises(ValueError, match="mode must be one of"):
        FirstOrder(sgd, 5, mode=3)


# -- optimizer hyper-parameters ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, field",
    [
        (lambda: optim.SGD(lr=0.1, momentum=1.5), r"SGD: momentum must lie in \[0, 1\)"),
        (lambda: optim.SGD(lr=0.1, momentum=1.0), r"SGD: momentum must lie in \[0, 1\)"),
        (lambda: optim.SGD(lr=0.0), r"SGD: lr must lie in \(0"),
        (lambda: optim.SGD(lr=-1.0), r"SGD: lr must lie in \(0"),
        (lambda: optim.SGD(lr=0.1, momentum=0.9, dampening=1.5), r"SGD: dampening must lie in \[0, 1\]"),
        (lambda: optim.SGD(lr=0.1, weight_decay=-0.1), r"SGD: weight_decay must lie in \[0"),
        (lambda: optim.SGD(lr=0.1, nesterov=True), r"SGD: nesterov=True needs momentum > 0"),
        (lambda: optim.Adam(lr=0.1, betas=(1.0, 0.999)), r"Adam: betas\[0\] must lie in \[0, 1\)"),
        (lambda: optim.Adam(lr=0.1, betas=(0.9, 1.5)), r"Adam: betas\[1\] must lie in \[0, 1\)"),
        (lambda: optim.AdamW(lr=0.1, eps=0.0), r"AdamW: eps must lie in \(0"),
        (lambda: optim.AdamW(lr=float("nan")), r"AdamW: lr must lie in"),
        (lambda: optim.SignSGD(lr=0.0), r"SignSGD: lr must lie in \(0"),
    ],
)
def test_bad_optimizer_hyperparameters_name_the_field(build, field):
    with pytest.raises(ValueError, match=field):
        build()


def test_tensor_hyperparameters_stay_allowed():
    lr = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    opt = optim.SGD(lr=lr, momentum=torch.tensor(0.5, dtype=torch.float64))
    assert opt.lr is lr
    with pytest.raises(ValueError, match="momentum must lie"):
        optim.SGD(lr=lr, momentum=torch.tensor(1.2, dtype=torch.float64))


# -- runaway growth of a finite inner run --------------------------------------------------------------------


def _quadratic_growth():
    ref = problems.quadratic(seed=0, dx=3, dy=5)
    return ref, optim.SGD(lr=100.0)


@pytest.mark.parametrize("kind", ["unrolled", "truncated", "implicit", "first_order", "forward"])
def test_a_diverging_but_finite_inner_run_raises_naming_the_step(kind):
    ref, sgd = _quadratic_growth()
    solver = {
        "unrolled": lambda: Unrolled(sgd, 50),
        "truncated": lambda: Unrolled(sgd, 50, truncate=5),
        "implicit": lambda: Implicit(sgd, 50, CG(max_iter=5)),
        "first_order": lambda: FirstOrder(sgd, 50, mode="partial"),
        "forward": lambda: Forward(sgd, 50),
    }[kind]()
    with pytest.raises(
        FloatingPointError, match=r"runaway growth: the inner (iterate at step|solution after) \d+"
    ):
        solver.hypergrad(ref.problem, ref.inner_init, ref.outer)


def test_solve_inner_and_the_warning_option():
    ref, sgd = _quadratic_growth()
    with pytest.raises(FloatingPointError, match="runaway growth: the inner iterate at step 50"):
        solve_inner(ref.problem, sgd, 50, ref.inner_init, ref.outer)
    solver = Unrolled(sgd, 50, on_divergence="warn")
    with pytest.warns(RuntimeWarning, match="runaway growth"):
        hg = solver.hypergrad(ref.problem, ref.inner_init, ref.outer)
    assert torch.isfinite(hg.grad["x"]).all()
    with pytest.raises(ValueError, match="on_divergence must be one of raise, warn"):
        Unrolled(sgd, 5, on_divergence="ignore")
    with pytest.raises(ValueError, match="max_growth must be > 1"):
        Implicit(sgd, 5, max_growth=0.5)


def test_a_converging_run_is_not_flagged(ridge):
    hg = Unrolled(optim.SGD(lr=1.0 / ridge.L), 200).hypergrad(ridge.problem, ridge.inner_init, ridge.outer)
    assert torch.isfinite(hg.grad["lam"]).all()


# -- keys, dtypes, optimizer classes, check_hypergrad, NaN in outer -----------------------------------------


def _named_problem():
    X = torch.randn(20, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = X.sum(1)

    def inner_loss(inner, outer, batch):
        return ((X @ inner["w"] - y) ** 2).mean() + outer["lam"].exp() * (inner["w"] ** 2).sum()

    def outer_loss(inner, outer, batch):
        return ((X @ inner["w"] - y) ** 2).mean()

    return BilevelProblem(inner_loss, outer_loss)


def test_keys_that_do_not_match_the_losses_name_the_key_and_the_dicts():
    problem = _named_problem()
    w = {"w": torch.zeros(3, dtype=torch.float64)}
    lam = {"lam": torch.zeros((), dtype=torch.float64)}
    solver = Implicit(optim.SGD(lr=0.1), 5)
    with pytest.raises(
        KeyError,
        match=r"read the key 'lam'.*neither inner_init \(keys \['w'\]\) nor outer \(keys \['log_lam'\]\)",
    ):
        solver.hypergrad(problem, w, {"log_lam": lam["lam"]})
    with pytest.raises(KeyError, match=r"read the key 'w'.*neither inner_init \(keys \['weights'\]\)"):
        Unrolled(optim.SGD(lr=0.1), 3).hypergrad(problem, {"weights": w["w"]}, lam)
    with pytest.raises(KeyError, match=r"outer has no 'w'"):
        Unrolled(optim.SGD(lr=0.1), 3).hypergrad(
            BilevelProblem(lambda i, o, b: (i["w"] * o["w"]).sum(), lambda i, o, b: i["w"].sum()), w, lam
        )


def test_a_loss_failing_on_mixed_dtypes_names_them():
    """float64 sample weights on a float32 model are legitimate (the worst-case search); a loss that fails on
    the mix is reported with the two dtypes and the fix, not as a raw RuntimeError from inside the loss."""
    problem = _named_problem()  # its data is float64
    with pytest.raises(
        TypeError,
        match=r"mixed dtypes: inner_init\['w'\] is torch.float32 but outer\['lam'\] is torch.float64",
    ):
        Implicit(optim.SGD(lr=0.1), 5).hypergrad(
            problem, {"w": torch.zeros(3)}, {"lam": torch.zeros((), dtype=torch.float64)}
        )
    hg = Implicit(optim.SGD(lr=0.1), 5).hypergrad(  # a mix the losses handle is fine
        problem, {"w": torch.zeros(3, dtype=torch.float64)}, {"lam": torch.zeros(())}
    )
    assert hg.grad["lam"].dtype == torch.float32


@pytest.mark.parametrize("torch_opt", [torch.optim.SGD, torch.optim.Adam])
def test_torch_optimizers_are_refused_pointing_at_bilevel_optim(torch_opt, ridge):
    name = torch_opt.__name__
    for build in (
        lambda: Unrolled(torch_opt, 5),
        lambda: Implicit(torch_opt, 5),
        lambda: Forward(torch_opt, 5),
    ):
        with pytest.raises(TypeError, match=rf"torch.optim.{name}.*bilevel.optim.{name}\(lr=0.1\)"):
            build()
    with pytest.raises(TypeError, match=r"torch.optim"):
        FirstOrder(torch_opt, 5)
    instance = torch_opt([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(TypeError, match=r"torch.optim"):
        minimize(
            ridge.problem,
            Implicit(optim.SGD(lr=0.1), 5),
            ridge.outer,
            instance,
            1,
            inner_init=ridge.inner_init,
        )
    with pytest.raises(TypeError, match=r"the class SGD, not an optimizer: pass an instance"):
        Unrolled(optim.SGD, 5)


def test_check_hypergrad_without_a_solver_or_a_hypergrad(ridge):
    with pytest.raises(TypeError, match=r"check_hypergrad needs a solver .* hypergrad="):
        check_hypergrad(ridge.problem, None, ridge.inner_init, ridge.outer)


def test_nan_in_outer_is_reported_as_nan_in_outer(ridge):
    bad = {k: torch.full_like(v, float("nan")) for k, v in ridge.outer.items()}
    for solver in (
        Unrolled(optim.SGD(lr=0.1), 3),
        Implicit(optim.SGD(lr=0.1), 3),
        FirstOrder(mode="partial"),
    ):
        with pytest.raises(FloatingPointError, match=r"NaN in outer \(the outer variable passed in\)"):
            solver.hypergrad(ridge.problem, ridge.inner_init, bad)
    bad_inner = {k: torch.full_like(v, float("inf")) for k, v in ridge.inner_init.items()}
    with pytest.raises(FloatingPointError, match=r"Inf in inner_init"):
        Implicit(optim.SGD(lr=0.1), 3).hypergrad(ridge.problem, bad_inner, ridge.outer)


# -- library defaults that surprised -------------------------------------------------------------------------


def test_minimize_warm_starts_the_inner_problem_only_where_the_objective_allows(ridge):
    """Unrolled's objective is the T-step trajectory from inner_init: every outer step starts there. Implicit
    approximates θ*(λ): the previous inner solution is carried (amortisation)."""
    seen = []
    solver = Unrolled(optim.SGD(lr=1.0 / ridge.L), 5)
    minimize(
        ridge.problem,
        solver,
        ridge.outer,
        optim.SGD(lr=0.01),
        3,
        inner_init=ridge.inner_init,
        callback=lambda k, outer, hg: seen.append(({kk: v.clone() for kk, v in outer.items()}, hg)) and False,
    )
    again = solver.hypergrad(ridge.problem, ridge.inner_init, seen[1][0])  # step 2 started at inner_init
    assert torch.equal(again.inner["w"], seen[2][1].inner["w"])
    implicit = Implicit(optim.SGD(lr=1.0 / ridge.L), 5, CG(max_iter=20))
    res_i = minimize(ridge.problem, implicit, ridge.outer, optim.SGD(lr=0.01), 3, inner_init=ridge.inner_init)
    fresh = implicit.hypergrad(ridge.problem, ridge.inner_init, seen[1][0])
    assert not torch.equal(fresh.inner["w"], res_i.inner["w"])  # carried across steps
    off = []
    minimize(
        ridge.problem,
        implicit,
        ridge.outer,
        optim.SGD(lr=0.01),
        3,
        inner_init=ridge.inner_init,
        warm_start_inner=False,
        callback=lambda k, outer, hg: off.append((dict(outer), hg)) and False,
    )
    again = Implicit(optim.SGD(lr=1.0 / ridge.L), 5, CG(max_iter=20)).hypergrad(
        ridge.problem, ridge.inner_init, off[1][0]
    )
    assert torch.equal(off[2][1].inner["w"], again.inner["w"])


def test_minimize_history_has_exactly_the_documented_keys(ridge):
    res = minimize(
        ridge.problem,
        Implicit(optim.SGD(lr=0.1), 3),
        ridge.outer,
        optim.SGD(lr=0.01),
        2,
        inner_init=ridge.inner_init,
    )
    for entry in res.history:
        assert list(entry) == ["step", "outer_loss", "grad_norm", "seconds", "info"]
        assert {"seconds", "outer_loss", "inner_loss", "inner_grad_norm", "hvp_count"} <= set(entry["info"])


def test_implicit_warm_start_is_kept_per_problem():
    a, b = problems.ridge(seed=0), problems.ridge(seed=1)
    solver = Implicit(optim.SGD(lr=1.0 / a.L), 20, CG(max_iter=5))
    solver.hypergrad(a.problem, a.inner_init, a.outer)
    other = solver.hypergrad(b.problem, b.inner_init, b.outer)
    assert other.info["warm_started"] is False  # another task: its own linear system
    same = solver.hypergrad(b.problem, b.inner_init, b.outer)
    assert same.info["warm_started"] is True
    fresh = Implicit(optim.SGD(lr=1.0 / a.L), 20, CG(max_iter=5)).hypergrad(b.problem, b.inner_init, b.outer)
    assert torch.equal(other.grad["lam"], fresh.grad["lam"])


def _bn_setup(carry_over=None):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).double()
    x = torch.randn(16, 3, dtype=torch.float64)
    y = torch.randn(16, 1, dtype=torch.float64)
    fm = FunctionalModule(net, buffers="track", carry_over=carry_over)

    def inner_loss(inner, outer, batch):
        return ((fm(inner, x) - y) ** 2).mean() + outer["wd"] * sum((v**2).sum() for v in inner.values())

    def outer_loss(inner, outer, batch):
        return ((fm(inner, x) - y) ** 2).mean()

    return fm, BilevelProblem(inner_loss, outer_loss), {"wd": torch.tensor(0.01, dtype=torch.float64)}


def test_track_buffers_across_calls_are_explicit():
    fm, problem, outer = _bn_setup()
    solver = Unrolled(optim.SGD(lr=0.1), 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        solver.hypergrad(problem, fm.params(), outer)  # the first call: nothing carried
    with pytest.warns(UserWarning, match="continues from running statistics updated 3 times"):
        solver.hypergrad(problem, fm.params(), outer)
    assert fm.updates == 6
    fm, problem, outer = _bn_setup(carry_over=False)
    solver.hypergrad(problem, fm.params(), outer)
    first = {k: v.clone() for k, v in fm.buffers.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        solver.hypergrad(problem, fm.params(), outer)
    assert fm.updates == 3 and all(torch.equal(first[k], fm.buffers[k]) for k in first)
    fm, problem, outer = _bn_setup(carry_over=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        solver.hypergrad(problem, fm.params(), outer)
        solver.hypergrad(problem, fm.params(), outer)
    assert fm.updates == 6
    with pytest.raises(ValueError, match="carry_over must be None, True or False"):
        FunctionalModule(nn.Linear(2, 2), carry_over="yes")


def test_frozen_buffers_of_a_fresh_net_warn_and_of_a_trained_one_do_not():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    with pytest.warns(UserWarning, match=r"never updated.*mean 0 and variance 1"):
        FunctionalModule(net, buffers="frozen")
    net.train()
    net(torch.randn(8, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FunctionalModule(net, buffers="frozen")
        FunctionalModule(nn.Linear(2, 2), buffers="frozen")
