"""`bilevel.Solver`: a user's own solver, written as the docs show, works with `minimize` and
`check_hypergrad`; the shared part (validation, streams, checks, info) comes from the base class."""

from __future__ import annotations

import pytest
import torch

from bilevel import (
    FirstOrder,
    Forward,
    Implicit,
    Solver,
    Unrolled,
    check_hypergrad,
    minimize,
    optim,
    problems,
    tree,
)
from bilevel.hypergrad import Call, Step

from .helpers import rel_err


class DenseImplicit(Solver):
    """A user's solver: ``steps`` inner steps, then ∇F = ∂_λ f − (∂_λ∇_θ g)ᵀ H⁻¹ ∂_θ f with the dense
    Hessian H = ∇²_θθ g from ``torch.func`` (small inner problems only)."""

    objective_depends_on_init = False  # it approximates θ*(λ): minimize may warm-start the inner problem

    def __init__(self, optimizer, steps):
        self.optimizer, self.steps = optimizer, steps

    def _step(self, call: Call) -> Step:
        theta, lam = self._inner_solution(call)
        inner_batch, outer_batch = call.inner_data(self.steps), call.outer_data(0)

        def g(t, l):
            return call.problem.inner_loss(tree.unflatten(t, theta), tree.unflatten(l, lam), inner_batch)

        def f(t, l):
            return call.problem.outer_loss(tree.unflatten(t, theta), tree.unflatten(l, lam), outer_batch)

        t, l = tree.flatten(theta), tree.flatten(lam)
        H = torch.func.hessian(g, argnums=0)(t, l)
        mixed = torch.func.jacrev(torch.func.grad(g, argnums=0), argnums=1)(t, l)  # ∂_λ ∇_θ g, d_θ × d_λ
        f_theta, f_lam = torch.func.grad(f, argnums=(0, 1))(t, l)
        grad = f_lam - mixed.T @ torch.linalg.solve(H, f_theta)
        return Step(
            grad=tree.unflatten(grad, lam),
            inner=theta,
            outer_loss=f(t, l),
            outer=lam,
            batch=inner_batch,
            checks=((grad, "the dense hypergradient"),),
            info={"hvp_count": 0},
        )


def test_a_custom_solver_gets_the_shared_part_and_is_exact():
    ref = problems.ridge(seed=0)
    solver = DenseImplicit(optim.SGD(lr=1.0 / ref.L), steps=400)
    hg = solver.hypergrad(ref.problem, ref.inner_init, ref.outer)
    assert rel_err(hg.grad, ref.hypergrad(ref.outer)) <= 1e-8
    assert rel_err(hg.inner, ref.solve_inner(ref.outer)) <= 1e-8
    assert {"seconds", "outer_loss", "inner_loss", "inner_grad_norm", "hvp_count"} <= set(hg.info)
    assert hg.value == pytest.approx(float(ref.value(ref.outer)), rel=1e-10)
    assert solver.batches_per_call == 401
    solver.reset()  # the base's reset: no state to forget
    with pytest.raises(TypeError, match="problem must be a BilevelProblem"):
        solver.hypergrad(object(), ref.inner_init, ref.outer)  # the base validates every call
    with pytest.raises(TypeError, match="inner_data"):
        solver.hypergrad(ref.problem, ref.inner_init, ref.outer, inner_data=(1, 2))  # and builds the streams


def test_a_custom_solver_works_with_check_hypergrad_and_minimize():
    ref = problems.quadratic(seed=0, dx=3, dy=5)
    solver = DenseImplicit(optim.SGD(lr=1.0 / ref.L), steps=200)
    assert check_hypergrad(ref.problem, solver, ref.inner_init, ref.outer).ok(1e-6)
    x_opt, f_opt = ref.optimum()
    solver.steps = 20  # the inner solution carries from one outer step to the next
    res = minimize(ref.problem, solver, ref.outer, optim.Adam(lr=0.05), steps=300, inner_init=ref.inner_init)
    assert rel_err(res.outer, x_opt) <= 1e-3
    assert res.history[-1]["outer_loss"] == pytest.approx(float(f_opt), rel=1e-5, abs=1e-8)


def test_the_base_checks_the_steps_result_for_non_finite_values():
    class Broken(DenseImplicit):
        def _step(self, call):
            step = super()._step(call)
            nan = {k: torch.full_like(v, float("nan")) for k, v in step.grad.items()}
            return Step(nan, step.inner, step.outer_loss, step.outer, step.batch, ((nan, "my estimate"),))

    ref = problems.ridge(seed=0)
    with pytest.raises(FloatingPointError, match="NaN in my estimate"):
        Broken(optim.SGD(lr=1.0 / ref.L), steps=5).hypergrad(ref.problem, ref.inner_init, ref.outer)


def test_every_built_in_solver_is_a_solver_and_a_subclass_needs_a_step():
    sgd = optim.SGD(lr=0.1)
    for solver in (Unrolled(sgd, 3), Implicit(sgd, 3), FirstOrder(sgd, 3), Forward(sgd, 3)):
        assert isinstance(solver, Solver) and solver.optimizer is sgd and solver.steps == 3
        solver.reset()

    class NoStep(Solver):
        pass

    with pytest.raises(TypeError, match="abstract"):
        NoStep()


def test_a_non_solver_gets_a_clear_type_error():
    ref = problems.ridge(seed=0)

    class Lookalike:  # has hypergrad, but is not a bilevel.Solver
        steps = 3

        def hypergrad(self, *args, **kwargs):
            return Implicit(optim.SGD(lr=0.1), 3).hypergrad(*args, **kwargs)

    for bad in (object(), Lookalike()):
        with pytest.raises(TypeError, match=r"solver must be a hypergradient solver \(a bilevel.Solver\)"):
            minimize(ref.problem, bad, ref.outer, optim.SGD(lr=1.0), 1, inner_init=ref.inner_init)
        with pytest.raises(TypeError, match=r"solver must be a hypergradient solver \(a bilevel.Solver\)"):
            check_hypergrad(ref.problem, bad, ref.inner_init, ref.outer)
    # a precomputed hypergradient needs no solver
    hg = Implicit(optim.SGD(lr=1.0 / ref.L), 400).hypergrad(ref.problem, ref.inner_init, ref.outer)
    assert check_hypergrad(ref.problem, None, ref.inner_init, ref.outer, hypergrad=hg).ok(1e-6)
