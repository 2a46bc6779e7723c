"""Regression tests for defects found in review: each failed before its fix."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bilevel import (
    CG,
    BilevelProblem,
    Box,
    FirstOrder,
    FixedPoint,
    FunctionalModule,
    Implicit,
    Neumann,
    Unrolled,
    minimize,
    optim,
    problems,
)

from .helpers import rel_err


def lr_problem():
    """g = ½‖w − a‖², f = ½‖w‖²; the learning rate and the initialisation are outer variables."""
    a = torch.tensor([1.0, -2.0], dtype=torch.float64)
    return BilevelProblem(
        lambda i, o, b: 0.5 * ((i["w"] - a) ** 2).sum(), lambda i, o, b: 0.5 * (i["w"] ** 2).sum()
    )


def test_unrolled_reaches_outer_tensors_that_do_not_require_grad():
    problem = lr_problem()
    plain = {
        "lr": torch.tensor(0.1, dtype=torch.float64),
        "w0": torch.tensor([0.5, 0.5], dtype=torch.float64),
    }
    leaf = {k: v.clone().requires_grad_(True) for k, v in plain.items()}
    for checkpoint in (False, True):
        want = Unrolled(optim.SGD(lr=leaf["lr"]), 10, checkpoint=checkpoint).hypergrad(
            problem, {"w": leaf["w0"]}, leaf
        )
        got = Unrolled(optim.SGD(lr=plain["lr"]), 10, checkpoint=checkpoint).hypergrad(
            problem, {"w": plain["w0"]}, plain
        )
        assert float(want.grad["lr"].abs()) > 0
        assert rel_err(got.grad, want.grad) <= 1e-12
        assert not plain["lr"].requires_grad  # the caller's tensors are untouched


def test_minimize_learns_a_learning_rate_through_an_optimizer_factory():
    problem = lr_problem()
    outer0 = {"lr": torch.tensor(0.05, dtype=torch.float64)}
    solver = Unrolled(lambda outer: optim.SGD(lr=outer["lr"]), 10)
    res = minimize(
        problem,
        solver,
        outer0,
        optim.SGD(lr=1e-4),
        5,
        inner_init={"w": torch.zeros(2, dtype=torch.float64)},
        warm_start_inner=False,  # every step unrolls T steps from the same w0: F(lr) is a fixed function
    )
    assert all(h["grad_norm"] > 0 for h in res.history)
    # f = ½‖w_T‖² grows as w_T moves towards a, so the learned learning rate shrinks and f with it
    assert 0 < float(res.outer["lr"]) < 0.05
    assert res.history[-1]["outer_loss"] < res.history[0]["outer_loss"]


@pytest.mark.parametrize("kind", ["callable", "iterable"])
def test_checkpointed_replay_uses_the_forward_random_numbers(kind):
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(64, 5, generator=g, dtype=torch.float64), torch.randn(64, dtype=torch.float64)

    def draw(step):
        idx = torch.randint(0, 64, (16,))  # draws from the global RNG
        return X[idx], y[idx]

    if kind == "callable":
        data = draw
    else:
        torch.manual_seed(2)
        data = [draw(t) for t in range(17)]

    def inner(i, o, b):
        xb, yb = b
        pred = F.dropout(xb, 0.3, training=True) @ i["w"]
        return 0.5 * ((pred - yb) ** 2).mean() + o["c"] * (i["w"] ** 2).sum()

    problem = BilevelProblem(inner, lambda i, o, b: ((X @ i["w"] - y) ** 2).mean())
    outer, w0 = {"c": torch.tensor(0.1, dtype=torch.float64)}, {"w": torch.zeros(5, dtype=torch.float64)}
    torch.manual_seed(1)
    full = Unrolled(optim.SGD(lr=0.1), 16).hypergrad(problem, w0, outer, inner_data=data)
    torch.manual_seed(1)
    ckpt = Unrolled(optim.SGD(lr=0.1), 16, checkpoint=True).hypergrad(problem, w0, outer, inner_data=data)
    assert rel_err(ckpt.grad, full.grad) <= 1e-12


def test_nan_hessian_is_an_error_not_indefiniteness():
    problem = BilevelProblem(
        lambda i, o, b: (i["w"].abs() ** 1.5).sum() + (o["x"] * i["w"] ** 2).sum(),
        lambda i, o, b: (i["w"] ** 2).sum() + i["w"].sum(),
    )
    theta = {"w": torch.tensor([0.0, 1.0], dtype=torch.float64)}
    outer = {"x": torch.ones(2, dtype=torch.float64)}
    for solver in (CG(), CG(on_indefinite="warn"), FixedPoint(alpha=0.1)):
        with pytest.raises(FloatingPointError, match="Hessian-vector product"):
            Implicit(optim.SGD(lr=0.1), 0, linear_solver=solver).hypergrad(problem, theta, outer)


def test_minimize_with_f2sa_and_iterable_data_consumes_its_batches_in_order():
    ref = problems.ridge(seed=0)
    X, y = ref.data["X"], ref.data["y"]
    solver = FirstOrder(optim.SGD(lr=1.0 / ref.L), 5, "f2sa", penalty_steps=4)
    assert solver.batches_per_call == 9
    res = minimize(
        ref.problem,
        solver,
        ref.outer,
        optim.SGD(lr=0.01),
        3,
        inner_init=ref.inner_init,
        inner_data=[(X, y)] * 4,
    )
    assert len(res.history) == 3


def test_warm_start_is_not_reused_across_dtypes_or_by_solvers_that_ignore_it():
    solver = Implicit(optim.SGD(lr=0.1), 0, linear_solver=CG(tol=1e-12), hvp="forward")
    for dtype in (torch.float64, torch.float32):
        ref = problems.ridge(seed=1, dtype=dtype)
        hg = solver.hypergrad(ref.problem, ref.solve_inner(ref.outer), ref.outer)
        assert hg.grad["lam"].dtype == dtype and not hg.info["warm_started"]
    neumann = Implicit(optim.SGD(lr=0.1), 0, linear_solver=Neumann(max_iter=5))
    ref = problems.ridge(seed=1)
    neumann.hypergrad(ref.problem, ref.solve_inner(ref.outer), ref.outer)
    assert not neumann.hypergrad(ref.problem, ref.solve_inner(ref.outer), ref.outer).info["warm_started"]


def test_data_arguments_that_are_ambiguous_or_exhausted_are_named():
    ref = problems.ridge(seed=0)
    X, y = ref.data["X"], ref.data["y"]
    with pytest.raises(TypeError, match=r"\[batch\]"):
        Implicit(optim.SGD(lr=0.1), 3).hypergrad(ref.problem, ref.inner_init, ref.outer, inner_data=(X, y))
    with pytest.raises(ValueError, match="ran out after 3 batches"):
        Implicit(optim.SGD(lr=0.1), 3).hypergrad(
            ref.problem, ref.inner_init, ref.outer, inner_data=((X, y) for _ in range(3))
        )


def test_unrolled_with_a_constant_outer_loss_and_a_diverging_unused_entry():
    const = BilevelProblem(lambda i, o, b: ((i["w"] - o["x"]) ** 2).sum(), lambda i, o, b: torch.tensor(2.0))
    hg = Unrolled(optim.SGD(lr=0.1), 5).hypergrad(const, {"w": torch.zeros(2)}, {"x": torch.ones(2)})
    assert torch.equal(hg.grad["x"], torch.zeros(2))
    diverging = BilevelProblem(
        lambda i, o, b: ((i["w"] - o["x"]) ** 2).sum() - 1e3 * i["u"] ** 2,
        lambda i, o, b: (i["w"] ** 2).sum(),
    )
    with pytest.raises(FloatingPointError, match="inner iterate"):
        Unrolled(optim.SGD(lr=0.1), 200).hypergrad(
            diverging, {"w": torch.zeros(2), "u": torch.tensor(1.0)}, {"x": torch.ones(2)}
        )


def test_first_order_checks_the_outer_loss():
    problem = BilevelProblem(
        lambda i, o, b: ((i["w"] + 1) ** 2).sum() + 0 * o["x"],
        lambda i, o, b: torch.log(i["w"]).sum() + o["x"],
    )
    with pytest.raises(FloatingPointError, match="outer_loss"):
        FirstOrder(optim.SGD(lr=0.4), 50, "partial").hypergrad(
            problem, {"w": torch.zeros(1)}, {"x": torch.zeros(())}
        )


def test_box_with_tensor_bounds_keeps_dtype():
    w = torch.tensor([-1.0, 0.5, 2.0])
    assert torch.equal(Box(0.0, torch.ones(3)).project(w), torch.tensor([0.0, 0.5, 1.0]))
    out = Box(torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)).project(w)
    assert out.dtype == torch.float32


def test_functional_module_runs_batchnorm_with_float64_params():
    fm = FunctionalModule(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), buffers="track")
    out = fm(fm.params(dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64))
    assert out.dtype == torch.float64
    assert fm.buffers["1.running_mean"].dtype == torch.float32  # nothing recorded outside an inner step
