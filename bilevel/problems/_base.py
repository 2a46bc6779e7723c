"""The `ReferenceProblem` record, finite differences, and small seeded linear-algebra builders."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..problem import BilevelProblem
from ..tree import Params


@dataclass(frozen=True)
class ReferenceProblem:
    """A bi-level problem together with its exact inner solution and closed-form hypergradient.

    ``F(λ) = f(θ*(λ), λ)`` with ``θ*(λ) = argmin_θ g(θ, λ)`` (a stationary point for `saddle`).

    - ``problem``: the `BilevelProblem` (losses close over their data, so ``batch=None`` works);
    - ``inner_init``: a starting point for inner solvers (not the solution); ``outer``: where to test;
    - ``solve_inner(outer)``: θ*(outer), exact (linear solve, or Newton to ‖∇g‖ ≤ 1e-13). Differentiable
      with respect to ``outer`` (autograd through it gives the true dθ*/dλ);
    - ``value(outer)``: F(outer) with the exact inner solve; ``hypergrad(outer)``: the closed-form ∇F, a dict
      shaped like ``outer``; ``inner_hessian(outer)``: dense ∇²_θθ g at θ*(outer), flattened in key order
      (``d_θ × d_θ``, the order of `bilevel.tree.flatten`);
    - ``strongly_convex``, ``mu``, ``L``: whether g is strongly convex in θ, and the smallest / largest
      eigenvalue of ``inner_hessian(outer)`` (pick inner step sizes with ``lr < 2 / L``);
    - ``optimum()``: ``(outer_opt, F(outer_opt))`` where F has a closed-form minimiser (`quadratic`),
      else None;
    - ``unrolled_value`` / ``unrolled_hypergrad`` / ``unrolled_inner`` / ``steps``: F and ∇F after exactly
      ``steps`` inner GD steps (`unrolled_gd_quadratic`), else None;
    - ``data``: the tensors the losses close over (and other constants) for users who stream mini-batches.
    """

    name: str
    problem: BilevelProblem
    inner_init: Params
    outer: Params
    solve_inner: Callable[[Params], Params]
    value: Callable[[Params], Tensor]
    hypergrad: Callable[[Params], Params]
    inner_hessian: Callable[[Params], Tensor]
    strongly_convex: bool
    mu: float
    L: float
    optimum: Callable[[], tuple[Params, Tensor]] | None = None
    unrolled_value: Callable[[Params], Tensor] | None = None
    unrolled_hypergrad: Callable[[Params], Params] | None = None
    unrolled_inner: Callable[[Params], Params] | None = None
    steps: int | None = None
    data: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        shapes = {k: tuple(v.shape) for k, v in self.outer.items()}
        inner = {k: tuple(v.shape) for k, v in self.inner_init.items()}
        return (
            f"ReferenceProblem({self.name!r}, inner={inner}, outer={shapes}, "
            f"strongly_convex={self.strongly_convex}, mu={self.mu:.3g}, L={self.L:.3g})"
        )


def finite_difference(
    ref: ReferenceProblem,
    outer: Params | None = None,
    eps: float = 1e-5,
    fn: Callable[[Params], Tensor] | None = None,
) -> Params:
    """Central differences of ``fn`` (default ``ref.value``), entry by entry:

        ∂F/∂λ_k ≈ (F(λ + ε e_k) − F(λ − ε e_k)) / 2ε.

    Costs 2·dim(λ) exact inner solves. Returns a dict shaped like ``outer`` (default ``ref.outer``).
    Pass ``fn=ref.unrolled_value`` to difference the T-step unrolled objective instead.
    """
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    outer = ref.outer if outer is None else outer
    fn = ref.value if fn is None else fn
    base = {k: v.detach().clone() for k, v in outer.items()}
    out: Params = {}
    with torch.no_grad():
        for key, v in base.items():
            g = torch.zeros_like(v)
            gflat = g.view(-1)
            for i in range(v.numel()):
                vals = []
                for sign in (1.0, -1.0):
                    pert = dict(base)
                    t = v.clone()
                    t.view(-1)[i] += sign * eps
                    pert[key] = t
                    vals.append(fn(pert))
                gflat[i] = (vals[0] - vals[1]) / (2 * eps)
            out[key] = g
    return out


# ----------------------------------------------------------------------------------------------- builders


def generator(seed: int) -> torch.Generator:
    if not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return torch.Generator().manual_seed(seed)


def check_sizes(**sizes: int) -> None:
    """Raise a ValueError naming the argument if a size is not a positive int."""
    for name, v in sizes.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")


def check_spectrum(mu: float, L: float, what: str = "mu, L") -> None:
    if not (mu > 0 and L >= mu):
        raise ValueError(f"{what}: need 0 < mu <= L, got mu={mu}, L={L}")


def randn(gen: torch.Generator, *shape: int, dtype: torch.dtype) -> Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def orthogonal(gen: torch.Generator, d: int, dtype: torch.dtype) -> Tensor:
    """A random d×d orthogonal matrix (QR of a Gaussian, signs fixed so it is deterministic)."""
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(()))
    return q.to(dtype)


def spd(gen: torch.Generator, eigenvalues: Tensor) -> Tensor:
    """Q diag(eigenvalues) Qᵀ with a random orthogonal Q: a symmetric matrix of exactly that spectrum."""
    d = eigenvalues.numel()
    q = orthogonal(gen, d, eigenvalues.dtype)
    a = (q * eigenvalues) @ q.T
    return (a + a.T) / 2


def spectrum(mu: float, L: float, d: int, dtype: torch.dtype) -> Tensor:
    """d eigenvalues from mu to L (both ends included when d ≥ 2, geometric spacing)."""
    if d == 1:
        return torch.tensor([float(mu)], dtype=dtype)
    return torch.logspace(math.log10(mu), math.log10(L), d, dtype=torch.float64).to(dtype)


def eig_range(h: Tensor) -> tuple[float, float]:
    ev = torch.linalg.eigvalsh((h + h.T) / 2)
    return float(ev[0]), float(ev[-1])
