"""`batched`: one solver over many tasks at once, with ``torch.func.vmap`` over a leading task axis.

``batched(solver).hypergrad(problem, inner_init, outer, inner_data, outer_data)`` takes every tensor of
``inner_init``, ``outer`` and of each batch with a leading task axis of length B and returns per-task results
(``grad``, ``inner``, ``info["outer_loss"]``, ``info["inner_loss"]``, ``info["inner_grad_norm"]`` all with
that leading axis), equal to a Python loop of ``solver.hypergrad`` over the tasks (to rounding: the per-task
computation is written with ``torch.func`` transforms, which ``vmap`` requires, instead of
``torch.autograd.grad``). Meta-batches of iMAML/MAML tasks, several seeds of a search at once.

Per task, with θ_0, λ and the batches of that task:

- `Unrolled` (full or truncated): ∇F = d/dλ f(θ_T(λ), λ) by ``torch.func.grad`` through the T optimizer steps
  (the first T − K steps with λ and θ detached, as truncation prescribes);
- `Implicit` with `CG` or `Neumann` (fixed ``max_iter``, no warm start): θ_T by detached steps, then
  H v = ∂_θ f with H v = jvp(∇_θ g) and ∇F = ∂_λ f − vjp_λ(∇_θ g)(v);
- `FirstOrder("partial")`: ∂_λ f(θ_T, λ).

It is a `Solver` with a capturable path, so ``graphed(batched(solver), ...)`` captures the whole meta-batch in
one CUDA graph. A task's optimizer hyper-parameter that is an outer entry needs the factory form
(``lambda outer: optim.SGD(lr=outer["lr"])``): an optimizer built on a (B,)-shaped tensor is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

from . import tree
from .first_order import FirstOrder
from .hypergrad import Call, Solver, Step, as_solver
from .implicit import Implicit
from .linear_solvers import CG, IndefiniteHessianError, Neumann
from .problem import BilevelProblem, check_scalar
from .tree import Params
from .unrolled import Unrolled, optimizer_for

__all__ = ["Batched", "batched"]


def _batch_problem(solver: Solver) -> str | None:
    """Why ``solver`` cannot be batched, or None."""
    if isinstance(solver, Unrolled):
        return (
            "Unrolled(checkpoint=True) cannot be batched; use checkpoint=False" if solver.checkpoint else None
        )
    if isinstance(solver, Implicit):
        if not isinstance(solver.linear_solver, (CG, Neumann)) or solver.warm_start:
            return "Implicit is batched with CG or Neumann and warm_start=False only"
        return None
    if isinstance(solver, FirstOrder):
        return None if solver.mode == "partial" else "FirstOrder is batched in mode 'partial' only"
    return (
        f"{type(solver).__name__} cannot be batched (Unrolled, Implicit(CG/Neumann), FirstOrder('partial'))"
    )


def _grad_of(loss: Callable[[Params], Tensor]) -> Callable[[Params], tuple[Params, Tensor]]:
    """θ ↦ (∇_θ loss(θ), loss(θ)) by ``torch.func``."""
    return torch.func.grad_and_value(loss)


class Batched(Solver):
    """``solver`` over a leading task axis; see the module docstring."""

    def __init__(self, solver: Solver) -> None:
        self.solver = as_solver(solver)
        reason = _batch_problem(self.solver)
        if reason is not None:
            raise ValueError(f"batched(): {reason}")
        self.optimizer, self.steps = self.solver.optimizer, self.solver.steps
        self.on_divergence, self.max_growth = self.solver.on_divergence, self.solver.max_growth
        self.objective_depends_on_init = self.solver.objective_depends_on_init

    def __repr__(self) -> str:
        return f"batched({self.solver!r})"

    @property
    def batches_per_call(self) -> int:
        return self.solver.batches_per_call

    def capture_problem(self) -> str | None:
        return None

    def _step(self, call: Call) -> Step:
        """vmap of the per-task computation over the leading axis of every tensor."""
        sizes = {v.shape[0] if v.dim() else None for v in [*call.inner_init.values(), *call.outer.values()]}
        if len(sizes) != 1 or None in sizes:
            raise ValueError(
                "batched(): every tensor of inner_init and outer needs the same leading task axis, got "
                f"leading sizes {sorted(str(s) for s in sizes)}"
            )
        inner_b = [call.inner_data(t) for t in range(self.batches_per_call)]
        outer_b = call.outer_data(0)
        alias = {k: j for k, v in call.inner_init.items() for j, w in call.outer.items() if v is w}
        task = _Task(self.solver, call.problem, alias, {id(v): k for k, v in call.outer.items()})
        dims = pytree.tree_map(lambda x: 0 if isinstance(x, Tensor) else None, (inner_b, outer_b))
        grad, theta, f, g, g_norm, ok = torch.func.vmap(task, in_dims=(0, 0, *dims))(
            call.inner_init, call.outer, inner_b, outer_b
        )
        if isinstance(self.solver, Implicit):
            message = "CG met non-positive curvature in a task (batched Implicit): H is not positive definite"
            if call.capturable:
                call.monitor.require(ok.all(), message, IndefiniteHessianError)
            elif not bool(ok.all()):
                raise IndefiniteHessianError(message)
        return Step(
            grad=grad,
            inner=theta,
            outer_loss=f,
            outer=tree.detach(call.outer),
            checks=((grad, "the batched hypergradient"), (theta, "the batched inner solution")),
            info={"tasks": next(iter(sizes)), "inner_steps": self.steps},
            diagnostics={"inner_loss": g, "inner_grad_norm": g_norm},
        )


class _Task:
    """The computation for one task (called under vmap): (∇F, θ, f, g, ‖∇_θ g‖, ok)."""

    def __init__(self, solver: Solver, problem: BilevelProblem, alias: dict, outer_ids: dict) -> None:
        self.solver, self.problem, self.alias, self.outer_ids = solver, problem, alias, outer_ids

    def inner_loss(self, lam: Params, batch: Any) -> Callable[[Params], Tensor]:
        return lambda th: check_scalar(self.problem.inner_loss(th, lam, batch), "inner_loss")

    def run(self, opt: Any, theta: Params, lam: Params, batches: list, start: int, stop: int, state: Any):
        """Steps ``start .. stop − 1`` of ``opt`` on g(·, λ) (differentiable unless the inputs are
        detached)."""
        if state is None:
            state = opt.init(theta)
        for t in range(start, stop):
            grads, _ = _grad_of(self.inner_loss(lam, batches[t]))(theta)
            theta, state = opt.step(theta, grads, state)
        return theta, state

    def __call__(self, theta0: Params, lam: Params, inner_b: list, outer_b: Any) -> tuple:
        s, T = self.solver, self.solver.steps
        ok = torch.ones((), dtype=torch.bool, device=next(iter(lam.values())).device)
        if isinstance(s, Unrolled):
            grad, theta = self.unrolled(theta0, lam, inner_b, outer_b)
        else:
            lam_d = tree.detach(lam)
            theta, _ = self.run(s.optimizer, tree.detach(theta0), lam_d, inner_b, 0, T, None)
            theta = tree.detach(theta)
            if isinstance(s, Implicit):
                grad, ok = self.implicit(theta, lam_d, inner_b[T], outer_b)
            else:
                grad = torch.func.grad(lambda l: self.outer_value(theta, l, outer_b))(lam_d)
        f = self.outer_value(tree.detach(theta), tree.detach(lam), outer_b)
        g_grad, g_value = _grad_of(self.inner_loss(tree.detach(lam), inner_b[T]))(tree.detach(theta))
        return grad, tree.detach(theta), f.detach(), g_value.detach(), tree.norm(g_grad), ok

    def outer_value(self, theta: Params, lam: Params, batch: Any) -> Tensor:
        return check_scalar(self.problem.outer_loss(theta, lam, batch), "outer_loss")

    def unrolled(self, theta0: Params, lam: Params, inner_b: list, outer_b: Any) -> tuple[Params, Params]:
        s, T = self.solver, self.solver.steps
        K = T if s.truncate is None else min(s.truncate, T)

        def F(lam_: Params) -> tuple[Tensor, Params]:
            opt = optimizer_for(s.optimizer, lam_, {i: lam_[k] for i, k in self.outer_ids.items()})
            theta = {k: (lam_[self.alias[k]] if k in self.alias else v) for k, v in theta0.items()}
            state = None
            if K < T:
                theta, state = self.run(opt, tree.detach(theta), tree.detach(lam_), inner_b, 0, T - K, None)
                theta = tree.detach(theta)
                state = pytree.tree_map(lambda x: x.detach() if isinstance(x, Tensor) else x, state)
            theta, _ = self.run(opt, theta, lam_, inner_b, T - K, T, state)
            return self.outer_value(theta, lam_, outer_b), theta

        grad, theta = torch.func.grad(F, has_aux=True)(lam)
        return grad, theta

    def implicit(self, theta: Params, lam: Params, batch: Any, outer_b: Any) -> tuple[Params, Tensor]:
        """∇F = ∂_λ f − (∂_λ∇_θ g)ᵀ v with H v = ∂_θ f solved by the solver's capturable linear solve."""
        d_theta, d_lam = torch.func.grad(lambda t, l: self.outer_value(t, l, outer_b), argnums=(0, 1))(
            theta, lam
        )

        def grad_theta(t: Params, l: Params) -> Params:
            return torch.func.grad(
                lambda t_: check_scalar(self.problem.inner_loss(t_, l, batch), "inner_loss")
            )(t)

        def hvp(v: Params) -> Params:
            return torch.func.jvp(lambda t: grad_theta(t, lam), (theta,), (v,))[1]

        v, stats = self.solver.linear_solver.solve_capturable(hvp, d_theta)
        _, vjp = torch.func.vjp(lambda l: grad_theta(theta, l), lam)
        (mixed,) = vjp(v)
        device = next(iter(d_lam.values())).device
        ok = (
            ~stats["indefinite"] if "indefinite" in stats else torch.ones((), dtype=torch.bool, device=device)
        )
        return tree.sub(d_lam, mixed), ok


def batched(solver: Solver) -> Batched:
    """A `Solver` running ``solver`` over a leading task axis with ``torch.func.vmap``; see the module
    docstring."""
    return Batched(solver)
