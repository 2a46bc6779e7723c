"""Implicit differentiation (AID): hypergradient from the implicit function theorem at the inner solution.

    ∇F(λ) = ∂_λ f − ∇²_λθ g · v,      where  ∇²_θθ g · v = ∂_θ f        (all at (θ*(λ), λ))

θ* is approximated by ``steps`` steps of the inner optimizer; v by a linear solver using Hessian-vector
products only (`CG`, `Neumann`, `FixedPoint`) or a dense solve (`Direct`).
"""

from __future__ import annotations

import time
from typing import Any

from . import tree
from .hypergrad import Hypergrad, positive_int, validate_call
from .inner import run_inner
from .linear_solvers import CG, Direct, FixedPoint, Neumann
from .linearize import linearize, outer_partials
from .problem import BilevelProblem, Data, DataStream
from .tree import Params, check_finite

LinearSolver = CG | Neumann | FixedPoint | Direct


class Implicit:
    """Implicit-function-theorem hypergradient.

    Parameters
    ----------
    optimizer: a `bilevel.optim` optimizer for the inner problem (not differentiated through).
    steps: inner iterations from ``inner_init``; 0 means ``inner_init`` already is the inner solution.
    linear_solver: `CG` (default, H must be SPD), `Neumann`, `FixedPoint` or `Direct`.
    warm_start: start the linear solve from the previous call's v (AmIGO-style amortisation across outer
        steps); ``reset()`` forgets it.
    hvp: ``"reverse"`` (reverse-over-reverse on one retained graph; default) or ``"forward"``
        (forward-over-reverse with ``torch.func.jvp``; no retained graph).

    Cost per call: ``steps`` inner gradients + 1 outer gradient + 1 inner gradient with graph + K HVPs +
    1 mixed product. Memory: O(d_θ) plus one graph of ∇_θ g.
    The linear system uses the inner batch of step ``steps`` (the batch after the last inner step).
    """

    def __init__(
        self,
        optimizer: Any,
        steps: int,
        linear_solver: LinearSolver | None = None,
        warm_start: bool = True,
        hvp: str = "reverse",
    ) -> None:
        self.optimizer = optimizer
        self.steps = positive_int(steps, "steps", allow_zero=True)
        self.linear_solver = CG() if linear_solver is None else linear_solver
        if not hasattr(self.linear_solver, "solve"):
            raise TypeError("linear_solver must be CG(...), Neumann(...), FixedPoint(...) or Direct(...)")
        if hvp not in ("reverse", "forward"):
            raise ValueError(f"hvp must be 'reverse' or 'forward', got {hvp!r}")
        if steps > 0 and not hasattr(optimizer, "step"):
            raise TypeError(
                "optimizer must be a bilevel.optim optimizer (with init and step), e.g. optim.SGD(lr=0.1)"
            )
        self.warm_start = warm_start
        self.hvp = hvp
        self._previous_v: Params | None = None

    @property
    def batches_per_call(self) -> int:
        """Inner batches one `hypergrad` call consumes (steps 0 .. ``steps`` of ``inner_data``)."""
        return self.steps + 1

    def reset(self) -> None:
        """Forget the warm-start solution."""
        self._previous_v = None

    def __repr__(self) -> str:
        return (
            f"Implicit(optimizer={self.optimizer!r}, steps={self.steps}, "
            f"linear_solver={self.linear_solver!r}, "
            f"warm_start={self.warm_start}, hvp={self.hvp!r})"
        )

    def hypergrad(
        self,
        problem: BilevelProblem,
        inner_init: Params,
        outer: Params,
        inner_data: Data = None,
        outer_data: Data = None,
    ) -> Hypergrad:
        start = time.perf_counter()
        validate_call(problem, inner_init, outer)
        inner_stream = DataStream(inner_data, "inner_data")
        outer_stream = DataStream(outer_data, "outer_data")
        lam = tree.detach(outer)
        theta = tree.detach(inner_init)
        if self.steps:
            theta, _ = run_inner(problem, self.optimizer, theta, lam, inner_stream, start=0, stop=self.steps)
        check_finite(theta, f"the inner solution after {self.steps} steps")
        return implicit_from_solution(
            problem,
            theta,
            lam,
            inner_batch=inner_stream(self.steps),
            outer_batch=outer_stream(0),
            linear_solver=self.linear_solver,
            hvp=self.hvp,
            x0=self._warm(theta),
            remember=self._remember if self.warm_start else None,
            started=start,
            extra={"inner_steps": self.steps},
        )

    def _warm(self, like: Params) -> Params | None:
        v = self._previous_v
        if not self.warm_start or v is None:
            return None
        if v.keys() != like.keys() or any(
            v[k].shape != like[k].shape or v[k].dtype != like[k].dtype or v[k].device != like[k].device
            for k in v
        ):
            return None
        return v

    def _remember(self, v: Params) -> None:
        self._previous_v = tree.detach(v)


def implicit_from_solution(
    problem: BilevelProblem,
    theta: Params,
    lam: Params,
    *,
    inner_batch: Any,
    outer_batch: Any,
    linear_solver: LinearSolver,
    hvp: str = "reverse",
    x0: Params | None = None,
    remember: Any = None,
    started: float | None = None,
    extra: dict[str, Any] | None = None,
) -> Hypergrad:
    """The IFT hypergradient at a given inner point θ (no inner iterations). Used by `Implicit` and checks."""
    start = time.perf_counter() if started is None else started
    d_theta, d_lam, f_value = outer_partials(problem, theta, lam, outer_batch)
    check_finite(f_value, "outer_loss at the inner solution")
    check_finite(d_theta, "∂f/∂θ at the inner solution")
    check_finite(d_lam, "∂f/∂λ at the inner solution")
    lin = linearize(problem, theta, lam, inner_batch, hvp=hvp)
    check_finite(lin.inner_grad, "∇_θ g at the inner solution")
    v, stats = linear_solver.solve(lin.hvp, d_theta, x0)
    check_finite(v, f"the solution of the linear system H v = ∂f/∂θ ({type(linear_solver).__name__})")
    if remember is not None:
        remember(v)
    grad = tree.sub(d_lam, lin.mixed(v))
    check_finite(grad, "the hypergradient")
    info: dict[str, Any] = dict(extra or {})
    info.update(
        seconds=time.perf_counter() - start,
        outer_loss=float(f_value),
        inner_loss=float(lin.inner_value),
        inner_grad_norm=lin.inner_grad_norm,
        residual=stats.get("residual"),
        iterations=stats.get("iterations"),
        hvp_count=lin.counter["hvp"],
        linear_solver=type(linear_solver).__name__,
        warm_started=bool(stats.get("warm_started", False)),
    )
    for key in ("indefinite", "alpha"):
        if key in stats:
            info[key] = stats[key]
    return Hypergrad(grad=tree.detach(grad), inner=tree.detach(theta), info=info)
