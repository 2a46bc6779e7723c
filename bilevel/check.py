"""``check_hypergrad``: is a solver's hypergradient right on *your* problem?

It compares the solver's ∇F(λ) with two references computed independently of it:

1. **exact implicit**: θ* refined by Newton's method with the dense Hessian (to ‖∇_θ g‖ ≤ ``newton_tol``),
   then ∇F = ∂_λ f − ∇²_λθ g · H⁻¹ ∂_θ f with a dense solve;
2. **finite differences** of F(λ) = f(θ*(λ), λ) with exact (Newton) inner solves:
   ∂F/∂λ_j ≈ [F(λ + ε e_j) − F(λ − ε e_j)] / 2ε for every coordinate when λ has at most ``max_fd_coords``
   entries, otherwise directional derivatives along ``fd_directions`` random unit directions.

Both references need a small inner problem (dense d_θ × d_θ Hessian) that is strongly convex near θ*, and
deterministic losses: the batch of step 0 of each data argument is used throughout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from . import tree
from .hypergrad import Hypergrad, Solver, as_solver
from .implicit import implicit_from_solution
from .linear_solvers import Direct
from .linearize import linearize
from .problem import BilevelProblem, Data, DataStream, check_scalar
from .tree import Params


@dataclass
class HypergradCheck:
    """Relative errors ‖ĝ − g‖/‖g‖ and cosines of the solver's hypergradient ĝ against both references."""

    rel_error_exact: float
    cosine_exact: float
    rel_error_fd: float
    cosine_fd: float
    grad: Params
    exact: Params
    fd: Tensor  # coordinates (or directional derivatives) by finite differences
    solver_fd_view: Tensor  # the same coordinates / directional derivatives of the solver's ĝ
    inner_grad_norm: float  # at the refined inner solution
    info: dict[str, Any] = field(default_factory=dict)

    def ok(self, rtol: float = 1e-6) -> bool:
        return self.rel_error_exact <= rtol and self.rel_error_fd <= max(rtol, 1e-6)

    def __str__(self) -> str:
        return (
            f"hypergradient check: vs exact implicit rel.err {self.rel_error_exact:.2e} "
            f"cos {self.cosine_exact:.6f}; "
            f"vs finite differences rel.err {self.rel_error_fd:.2e} cos {self.cosine_fd:.6f}; "
            f"reference ‖∇θ g‖ = {self.inner_grad_norm:.1e}"
        )


def _rel(a: Tensor, b: Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-300))


def _cos(a: Tensor, b: Tensor) -> float:
    den = torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b)
    return float((a @ b) / den) if float(den) > 0 else float(torch.equal(a, b))


def newton_inner(
    problem: BilevelProblem,
    theta: Params,
    outer: Params,
    batch: Any,
    *,
    tol: float = 1e-12,
    max_iter: int = 50,
) -> tuple[Params, float]:
    """Newton's method θ ← θ − H⁻¹∇_θ g with backtracking on ‖∇_θ g‖; returns (θ, final ‖∇_θ g‖)."""
    dense = Direct(max_dim=10**5)
    theta = tree.detach(theta)
    lin = linearize(problem, theta, outer, batch)
    gnorm = lin.inner_grad_norm
    for _ in range(max_iter):
        if gnorm <= tol:
            break
        H = dense.matrix(lin.hvp, theta)
        step = torch.linalg.lstsq(H, tree.flatten(lin.inner_grad).unsqueeze(1)).solution.squeeze(1)
        t = 1.0
        while True:
            cand = tree.add(theta, tree.unflatten(step, theta), -t)
            cand_lin = linearize(problem, cand, outer, batch)
            if cand_lin.inner_grad_norm < gnorm or t < 1e-8:
                break
            t *= 0.5
        theta, lin, gnorm = cand, cand_lin, cand_lin.inner_grad_norm
    return theta, gnorm


def check_hypergrad(
    problem: BilevelProblem,
    solver: Solver | None,
    inner_init: Params,
    outer: Params,
    inner_data: Data = None,
    outer_data: Data = None,
    *,
    hypergrad: Hypergrad | None = None,
    fd_eps: float = 1e-5,
    max_fd_coords: int = 64,
    fd_directions: int = 8,
    newton_tol: float = 1e-12,
    seed: int = 0,
) -> HypergradCheck:
    """Compare ``solver.hypergrad(problem, inner_init, outer, ...)`` (or a given ``hypergrad``) with an exact
    implicit solve and with central finite differences of F; see the module docstring. ``solver`` is a
    `bilevel.Solver`, or None when ``hypergrad`` is given."""
    if hypergrad is None:
        if solver is None:
            raise TypeError(
                "check_hypergrad needs a solver (a bilevel.Solver such as Implicit(...)) or, with "
                "solver=None, the hypergradient to check: hypergrad=solver.hypergrad(...)"
            )
        hypergrad = as_solver(solver).hypergrad(
            problem, inner_init, outer, inner_data=inner_data, outer_data=outer_data
        )
    elif solver is not None:
        as_solver(solver)
    inner_batch = DataStream(inner_data, "inner_data")(0)
    outer_batch = DataStream(outer_data, "outer_data")(0)
    lam = tree.detach(outer)
    theta_star, gnorm = newton_inner(problem, hypergrad.inner, lam, inner_batch, tol=newton_tol)
    exact = implicit_from_solution(
        problem,
        theta_star,
        lam,
        inner_batch=inner_batch,
        outer_batch=outer_batch,
        linear_solver=Direct(max_dim=10**5),
    ).grad

    def F(lam_: Params) -> float:
        th, _ = newton_inner(problem, theta_star, lam_, inner_batch, tol=newton_tol)
        with torch.no_grad():
            return float(check_scalar(problem.outer_loss(th, lam_, outer_batch), "outer_loss"))

    flat_lam = tree.flatten(lam)
    n = flat_lam.numel()
    if n <= max_fd_coords:
        directions = torch.eye(n, dtype=flat_lam.dtype, device=flat_lam.device)
    else:
        gen = torch.Generator().manual_seed(seed)
        directions = torch.randn(fd_directions, n, generator=gen, dtype=flat_lam.dtype).to(flat_lam.device)
        directions = directions / torch.linalg.vector_norm(directions, dim=1, keepdim=True)
    fd = []
    for u in directions:
        plus = F(tree.unflatten(flat_lam + fd_eps * u, lam))
        minus = F(tree.unflatten(flat_lam - fd_eps * u, lam))
        fd.append((plus - minus) / (2 * fd_eps))
    fd_t = torch.tensor(fd, dtype=flat_lam.dtype, device=flat_lam.device)
    g = tree.flatten(hypergrad.grad)
    view = directions @ g
    e = tree.flatten(exact)
    return HypergradCheck(
        rel_error_exact=_rel(g, e),
        cosine_exact=_cos(g, e),
        rel_error_fd=_rel(view, fd_t),
        cosine_fd=_cos(view, fd_t),
        grad=hypergrad.grad,
        exact=exact,
        fd=fd_t,
        solver_fd_view=view,
        inner_grad_norm=gnorm,
        info={"fd_coordinates": n <= max_fd_coords, "fd_eps": fd_eps, "solver_info": hypergrad.info},
    )
