"""Implicit differentiation (AID): hypergradient from the implicit function theorem at the inner solution.

    ∇F(λ) = ∂_λ f − ∇²_λθ g · v,      where  ∇²_θθ g · v = ∂_θ f        (all at (θ*(λ), λ))

θ* is approximated by ``steps`` steps of the inner optimizer; v by a linear solver using Hessian-vector
products only (`CG`, `Neumann`, `FixedPoint`) or a dense solve (`Direct`).
"""

from __future__ import annotations

import weakref
from typing import Any

from . import tree
from .hypergrad import Call, Hypergrad, Solver, Step, check_optimizer
from .linear_solvers import CG, Direct, FixedPoint, IndefiniteHessianError, Neumann
from .linearize import linearize, outer_partials
from .monitor import MAX_GROWTH
from .problem import BilevelProblem
from .tree import Params
from .validate import positive_int

LinearSolver = CG | Neumann | FixedPoint | Direct


class Implicit(Solver):
    """Implicit-function-theorem hypergradient.

    Parameters
    ----------
    optimizer: a `bilevel.optim` optimizer for the inner problem (not differentiated through).
    steps: inner iterations from ``inner_init``; 0 means ``inner_init`` already is the inner solution.
    linear_solver: `CG` (default, H must be SPD), `Neumann`, `FixedPoint` or `Direct`.
    warm_start: start the linear solve from the previous call's v (AmIGO-style amortisation across outer
        steps), only when that call was on the same ``problem`` object (a v is specific to its task: a
        meta-batch of tasks, each its own `BilevelProblem`, never shares one) and v has the same shapes,
        dtype and device; ``reset()`` forgets it (do that between tasks that share one problem object).
    hvp: ``"reverse"`` (reverse-over-reverse on one retained graph; default) or ``"forward"``
        (forward-over-reverse with ``torch.func.jvp``; no retained graph).

    Cost per call: ``steps`` inner gradients + 1 outer gradient + 1 inner gradient with graph + K HVPs +
    1 mixed product. Memory: O(d_θ) plus one graph of ∇_θ g.
    on_divergence, max_growth: runaway growth of the inner iterate (see `Unrolled`, `bilevel.monitor`).
    The linear system uses the inner batch of step ``steps`` (the batch after the last inner step).
    """

    def __init__(
        self,
        optimizer: Any,
        steps: int,
        linear_solver: LinearSolver | None = None,
        warm_start: bool = True,
        hvp: str = "reverse",
        *,
        on_divergence: str = "raise",
        max_growth: float = MAX_GROWTH,
    ) -> None:
        self.optimizer = optimizer
        self._set_divergence(on_divergence, max_growth)
        self.steps = positive_int(steps, "steps", allow_zero=True)
        self.linear_solver = CG() if linear_solver is None else linear_solver
        if not hasattr(self.linear_solver, "solve"):
            raise TypeError("linear_solver must be CG(...), Neumann(...), FixedPoint(...) or Direct(...)")
        if hvp not in ("reverse", "forward"):
            raise ValueError(f"hvp must be 'reverse' or 'forward', got {hvp!r}")
        if steps > 0 or optimizer is not None:
            check_optimizer(optimizer)
        self.warm_start = warm_start
        self.hvp = hvp
        self._previous_v: Params | None = None
        self._previous_problem: weakref.ref | None = None

    objective_depends_on_init = False  # θ* does not depend on where the inner iterations start

    def reset(self) -> None:
        """Forget the warm-start solution."""
        self._previous_v = None
        self._previous_problem = None

    def __repr__(self) -> str:
        return (
            f"Implicit(optimizer={self.optimizer!r}, steps={self.steps}, "
            f"linear_solver={self.linear_solver!r}, "
            f"warm_start={self.warm_start}, hvp={self.hvp!r})"
        )

    def capture_problem(self) -> str | None:
        """Capturable with `CG` or `Neumann` run for exactly ``max_iter`` iterations and no warm start (a v
        carried between calls would make the captured call differ from the eager one)."""
        if not isinstance(self.linear_solver, (CG, Neumann)):
            name = type(self.linear_solver).__name__
            return (
                f"Implicit with {name}() has no fixed iteration count (it tests its residual on the host); "
                "use CG(max_iter=K) or Neumann(max_iter=K) to capture"
            )
        if self.warm_start:
            return "Implicit(warm_start=True) carries v between calls; pass warm_start=False to capture"
        return None

    def _step(self, call: Call) -> Step:
        """θ from ``steps`` inner steps; then at (θ, λ) solve ∇²_θθ g · v = ∂_θ f by the linear solver (from
        the previous call's v when warm-starting) and return ∇F = ∂_λ f − ∇²_λθ g · v."""
        problem, monitor = call.problem, call.monitor
        theta, lam = self._inner_solution(call)
        inner_batch = call.inner_data(self.steps)
        outer_batch = call.outer_data(0)
        x0 = None if call.capturable else self._warm(theta, problem)
        d_theta, d_lam, f_value = outer_partials(problem, theta, lam, outer_batch)
        monitor.finite(f_value, "outer_loss at the inner solution")
        monitor.finite(d_theta, "∂f/∂θ at the inner solution")
        monitor.finite(d_lam, "∂f/∂λ at the inner solution")
        lin = linearize(problem, theta, lam, inner_batch, hvp=self.hvp)
        monitor.finite(lin.inner_grad, "∇_θ g at the inner solution")
        v, stats = (
            self._solve(lin.hvp, d_theta, x0, monitor)
            if call.capturable
            else (self.linear_solver.solve(lin.hvp, d_theta, x0))
        )
        name = type(self.linear_solver).__name__
        monitor.finite(v, f"the solution of the linear system H v = ∂f/∂θ ({name})")
        if self.warm_start:
            self._previous_v = tree.detach(v)
            self._previous_problem = weakref.ref(problem)
        grad = tree.sub(d_lam, lin.mixed(v))
        monitor.finite(grad, "the hypergradient")
        info: dict[str, Any] = {
            "inner_steps": self.steps,
            "residual": stats.get("residual"),
            "iterations": stats.get("iterations"),
            "hvp_count": lin.counter["hvp"],
            "linear_solver": name,
            "warm_started": bool(stats.get("warm_started", False)),
        }
        for key in ("indefinite", "alpha"):
            if key in stats:
                info[key] = stats[key]
        if call.capturable:
            diagnostics = {"inner_loss": lin.inner_value, "inner_grad_norm": tree.norm(lin.inner_grad)}
        else:
            diagnostics = {"inner_loss": float(lin.inner_value), "inner_grad_norm": lin.inner_grad_norm}
        return Step(grad=grad, inner=theta, outer_loss=f_value, outer=lam, diagnostics=diagnostics, info=info)

    def _solve(self, hvp: Any, b: Params, x0: Any, monitor: Any) -> tuple[Params, dict[str, Any]]:
        """The capturable linear solve; CG's non-positive curvature becomes a deferred
        `IndefiniteHessianError` (with ``on_indefinite="raise"``)."""
        v, stats = self.linear_solver.solve_capturable(hvp, b)
        if isinstance(self.linear_solver, CG) and self.linear_solver.on_indefinite == "raise":
            monitor.require(
                ~stats["indefinite"],
                "CG met non-positive curvature pᵀHp <= 0: the inner Hessian is not positive definite at the "
                "returned solution (a saddle or an unconverged inner solve). Fixes: solve the inner problem "
                "further, add CG(damping=...), or use Direct() / FixedPoint() (eagerly).",
                IndefiniteHessianError,
            )
        return v, stats

    def _warm(self, like: Params, problem: BilevelProblem) -> Params | None:
        """The previous call's v if it may start this solve: same problem object, shapes, dtype, device."""
        v = self._previous_v
        if not self.warm_start or v is None:
            return None
        if self._previous_problem is None or self._previous_problem() is not problem:
            return None
        if v.keys() != like.keys() or any(
            v[k].shape != like[k].shape or v[k].dtype != like[k].dtype or v[k].device != like[k].device
            for k in v
        ):
            return None
        return v


def implicit_from_solution(
    problem: BilevelProblem,
    theta: Params,
    lam: Params,
    *,
    inner_batch: Any,
    outer_batch: Any,
    linear_solver: LinearSolver,
    hvp: str = "reverse",
) -> Hypergrad:
    """The IFT hypergradient at a given inner point θ: `Implicit` with ``steps=0`` and no warm start, on the
    batches ``inner_batch`` and ``outer_batch`` (`check_hypergrad` and `profile` use it for references)."""
    solver = Implicit(None, 0, linear_solver, warm_start=False, hvp=hvp)
    return solver.hypergrad(problem, theta, lam, inner_data=[inner_batch], outer_data=[outer_batch])
