"""`Forward` (forward-mode unrolling) against the closed form of P5 and against `Unrolled` (float64)."""

from __future__ import annotations

import pytest
import torch

from bilevel import Forward, Unrolled, minimize, optim, problems

from .helpers import rel_err


def test_forward_equals_the_closed_form_on_p5():
    ref = problems.unrolled_gd_quadratic(seed=0)
    outer = {k: v.detach().clone() for k, v in ref.outer.items()}
    hg = Forward(optim.SGD(lr=outer["lr"]), ref.steps).hypergrad(ref.problem, {"w": outer["w0"]}, outer)
    want = ref.unrolled_hypergrad(outer)
    for k in want:
        assert rel_err({k: hg.grad[k]}, {k: want[k]}) <= 1e-10
    assert hg.info["outer_loss"] == pytest.approx(float(ref.unrolled_value(outer).detach()), rel=1e-12)
    assert hg.info["directions"] == 1 + outer["w0"].numel()


@pytest.mark.parametrize(
    "make_opt",
    [lambda: optim.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3), lambda: optim.Adam(lr=0.05)],
    ids=["sgd_nesterov", "adam"],
)
def test_forward_equals_reverse_unrolling(make_opt):
    ref = problems.ridge(seed=2, per_feature=True, p=4)
    rev = Unrolled(make_opt(), 25).hypergrad(ref.problem, ref.inner_init, ref.outer)
    fwd = Forward(make_opt(), 25).hypergrad(ref.problem, ref.inner_init, ref.outer)
    assert rel_err(fwd.grad, rev.grad) <= 1e-12
    assert rel_err(fwd.inner, rev.inner) <= 1e-12


def test_forward_learns_a_learning_rate_with_a_factory_and_refuses_large_outer():
    a = torch.tensor([1.0, -2.0], dtype=torch.float64)
    from bilevel import BilevelProblem

    problem = BilevelProblem(
        lambda i, o, b: 0.5 * ((i["w"] - a) ** 2).sum(), lambda i, o, b: 0.5 * ((i["w"] - 0.5 * a) ** 2).sum()
    )
    solver = Forward(lambda outer: optim.SGD(lr=outer["lr"]), 10)
    res = minimize(
        problem,
        solver,
        {"lr": torch.tensor(0.3, dtype=torch.float64)},
        optim.Adam(lr=0.02),
        30,
        inner_init={"w": torch.zeros(2, dtype=torch.float64)},
        warm_start_inner=False,
    )
    assert res.history[-1]["outer_loss"] < 0.2 * res.history[0]["outer_loss"]
    ref = problems.weighted_ridge(seed=0, n=300)
    with pytest.raises(ValueError, match="max_directions"):
        Forward(optim.SGD(lr=0.1), 5).hypergrad(ref.problem, ref.inner_init, ref.outer)
