"""Linear solvers for the implicit-function-theorem system H v = b, with H = ∇²_θθ g(θ*, λ) and b = ∇_θ f.

Each solver is a small frozen object with one method, ``solve(hvp, b, x0=None) -> (v, stats)``, where
``hvp(v) = H v`` on parameter dicts and ``stats`` holds ``iterations``, ``hvp_count`` and ``residual``
(‖Hv − b‖ / ‖b‖, measured with one extra HVP where the method does not track it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import tree
from .tree import Params
from .validate import nonnegative, positive_int

HVP = Callable[[Params], Params]


class IndefiniteHessianError(ArithmeticError):
    """CG met a direction of non-positive curvature: H is not positive definite at the inner solution."""


def _relative_residual(hvp: HVP, x: Params, b: Params, b_norm: float) -> float:
    r = tree.sub(b, hvp(x))
    return float(tree.norm(r)) / max(b_norm, 1e-300)


@dataclass(frozen=True)
class CG:
    """Conjugate gradient on (H + δI) v = b, for symmetric positive-definite H (an argmin's Hessian).

    Stops when ‖r_k‖ ≤ tol·‖b‖ or after ``max_iter`` iterations. If a search direction p has pᵀ(H+δI)p ≤ 0,
    H is not positive definite and CG's answer would be meaningless: ``on_indefinite="raise"``
    (default) raises
    `IndefiniteHessianError`, ``"warn"`` stops, returns the current iterate and sets ``stats["indefinite"]``.
    Unlike normal-equation CG (torchopt's and JAXopt's default) this does not square the condition number.
    """

    max_iter: int = 100
    tol: float = 1e-10
    damping: float = 0.0
    on_indefinite: str = "raise"

    def __post_init__(self) -> None:
        positive_int(self.max_iter, "max_iter")
        nonnegative(self.tol, "tol")
        nonnegative(self.damping, "damping")
        if self.on_indefinite not in ("raise", "warn"):
            raise ValueError(f"on_indefinite must be 'raise' or 'warn', got {self.on_indefinite!r}")

    def solve(self, hvp: HVP, b: Params, x0: Params | None = None) -> tuple[Params, dict[str, Any]]:
        op = hvp if self.damping == 0 else (lambda v: tree.add(hvp(v), v, self.damping))
        b_norm = float(tree.norm(b))
        stats: dict[str, Any] = {
            "iterations": 0,
            "hvp_count": 0,
            "indefinite": False,
            "warm_started": x0 is not None,
        }
        if b_norm == 0.0:
            stats["residual"] = 0.0
            return tree.zeros_like(b), stats
        if x0 is None:
            x, r = tree.zeros_like(b), dict(b)
        else:
            x = x0
            r = tree.sub(b, op(x))
            stats["hvp_count"] += 1
        p = dict(r)
        rs = tree.dot(r, r)
        target = (self.tol * b_norm) ** 2
        for _ in range(self.max_iter):
            if float(rs) <= target:
                break
            hp = op(p)
            stats["hvp_count"] += 1
            curvature = tree.dot(p, hp)
            if not math.isfinite(float(curvature)):
                raise FloatingPointError(
                    f"NaN/Inf in a Hessian-vector product (CG iteration {stats['iterations']}): the inner "
                    "loss has no finite second derivative at the returned solution"
                )
            if not float(curvature) > 0:
                stats["indefinite"] = True
                if self.on_indefinite == "raise":
                    raise IndefiniteHessianError(
                        f"CG met non-positive curvature pᵀHp = {float(curvature):.3e} at iteration "
                        f"{stats['iterations']}: the inner Hessian is not positive definite at the returned "
                        "solution (a saddle or an unconverged inner solve). Fixes: solve the inner problem "
                        "further, add CG(damping=...), or use Direct() / FixedPoint()."
                    )
                break
            alpha = rs / curvature
            x = tree.add(x, p, alpha)
            r = tree.add(r, hp, -alpha)
            rs_new = tree.dot(r, r)
            p = tree.add(r, p, rs_new / rs)
            rs = rs_new
            stats["iterations"] += 1
        stats["residual"] = math.sqrt(max(float(rs), 0.0)) / b_norm
        return x, stats

    def solve_capturable(self, hvp: HVP, b: Params) -> tuple[Params, dict[str, Any]]:
        """Exactly ``max_iter`` iterations from v = 0, no tolerance test and no host synchronisation (the path
        of `bilevel.graphed`). Where the eager loop would stop — r = 0 exactly, or pᵀ(H+δI)p ≤ 0 — the
        iterate is frozen by ``torch.where`` (α = β = 0), so the result equals the eager solve whenever that
        runs all ``max_iter`` iterations. ``stats``: ``indefinite`` (a bool tensor; the caller raises for
        ``on_indefinite="raise"``), ``residual`` (a tensor), ``iterations`` = ``hvp_count`` = ``max_iter``."""
        op = hvp if self.damping == 0 else (lambda v: tree.add(hvp(v), v, self.damping))
        b_norm = tree.norm(b)
        x, r = tree.zeros_like(b), dict(b)
        p = dict(r)
        rs = tree.dot(r, r)
        indefinite = torch.zeros((), dtype=torch.bool, device=rs.device)
        for _ in range(self.max_iter):
            hp = op(p)
            curvature = tree.dot(p, hp)
            live = rs > 0
            indefinite = indefinite | (live & ~(curvature > 0))
            go = live & ~indefinite
            alpha = torch.where(go, rs / torch.where(go, curvature, torch.ones_like(curvature)), 0.0)
            x = tree.add(x, p, alpha)
            r = tree.add(r, hp, -alpha)
            rs_new = tree.dot(r, r)
            beta = torch.where(go, rs_new / torch.where(go, rs, torch.ones_like(rs)), 0.0)
            p = tree.add(r, p, beta)
            rs = torch.where(go, rs_new, rs)
        residual = torch.where(b_norm > 0, rs.clamp_min(0).sqrt() / b_norm.clamp_min(1e-300), 0.0)
        stats = {"iterations": self.max_iter, "hvp_count": self.max_iter, "warm_started": False}
        stats.update(indefinite=indefinite, residual=residual)
        return x, stats


def _check_alpha(alpha: float | None) -> None:
    if alpha is not None and not (alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha must be a positive finite number (below 2/λ_max(H)), got {alpha!r}")


def _power_alpha(hvp: HVP, b: Params, iters: int = 20) -> tuple[float, int]:
    """α = 1 / λ_max(H) from a power iteration started at b (``iters`` HVPs)."""
    v = tree.scale(b, 1.0 / max(float(tree.norm(b)), 1e-300))
    lam = 0.0
    for _ in range(iters):
        hv = hvp(v)
        lam = float(tree.norm(hv))
        if lam == 0.0:
            break
        v = tree.scale(hv, 1.0 / lam)
    # A 5% margin: the power iteration under-estimates λ_max, and α must stay below 2/λ_max.
    return (1.0 / (1.05 * lam) if lam > 0 else 1.0), iters


def _alpha_and_stats(alpha: float | None, hvp: HVP, b: Params) -> tuple[float, dict[str, Any]]:
    """(α, stats): the given α, or α = 1/λ_max by `_power_alpha`, whose HVPs start ``stats["hvp_count"]``."""
    stats: dict[str, Any] = {"iterations": 0, "hvp_count": 0}
    if alpha is None:
        alpha, stats["hvp_count"] = _power_alpha(hvp, b)
    stats["alpha"] = alpha
    return alpha, stats


@dataclass(frozen=True)
class Neumann:
    """Truncated Neumann series: v_K = α Σ_{k=0}^{K} (I − αH)^k b  (Lorraine et al. 2020).

    Converges to H⁻¹b when 0 < α < 2/λ_max(H); the truncation error decays like (1 − αμ)^K. ``alpha=None``
    sets α = 1/λ_max from a 20-step power iteration. Always runs ``max_iter`` terms unless ``tol`` > 0 and
    the residual is below it (checked each ``check_every`` terms, one HVP each).
    """

    alpha: float | None = None
    max_iter: int = 100
    tol: float = 0.0
    check_every: int = 10

    def __post_init__(self) -> None:
        positive_int(self.max_iter, "max_iter")
        nonnegative(self.tol, "tol")
        positive_int(self.check_every, "check_every")
        _check_alpha(self.alpha)

    def solve(self, hvp: HVP, b: Params, x0: Params | None = None) -> tuple[Params, dict[str, Any]]:
        alpha, stats = _alpha_and_stats(self.alpha, hvp, b)
        b_norm = float(tree.norm(b))
        term = dict(b)  # (I − αH)^k b
        total = dict(b)
        for k in range(self.max_iter):
            term = tree.add(term, hvp(term), -alpha)
            total = tree.add(total, term)
            stats["hvp_count"] += 1
            stats["iterations"] = k + 1
            if self.tol > 0 and (k + 1) % self.check_every == 0:
                x = tree.scale(total, alpha)
                res = _relative_residual(hvp, x, b, b_norm)
                stats["hvp_count"] += 1
                if res <= self.tol:
                    stats["residual"] = res
                    return x, stats
        x = tree.scale(total, alpha)
        stats["residual"] = _relative_residual(hvp, x, b, b_norm)
        stats["hvp_count"] += 1
        return x, stats

    def solve_capturable(self, hvp: HVP, b: Params) -> tuple[Params, dict[str, Any]]:
        """Exactly ``max_iter`` terms (``tol`` is not tested), α = 1/λ_max by a 20-step power iteration on
        tensors when not given, the residual as a tensor: no host synchronisation (`bilevel.graphed`)."""
        stats: dict[str, Any] = {"iterations": self.max_iter, "hvp_count": self.max_iter + 1}
        alpha: float | Tensor = self.alpha if self.alpha is not None else _power_alpha_tensor(hvp, b)
        stats["hvp_count"] += 0 if self.alpha is not None else 20
        term, total = dict(b), dict(b)
        for _ in range(self.max_iter):
            term = tree.add(term, hvp(term), -alpha)
            total = tree.add(total, term)
        x = tree.scale(total, alpha)
        b_norm = tree.norm(b)
        stats["residual"] = tree.norm(tree.sub(b, hvp(x))) / b_norm.clamp_min(1e-300)
        stats["alpha"] = alpha
        return x, stats


def _power_alpha_tensor(hvp: HVP, b: Params, iters: int = 20) -> Tensor:
    """`_power_alpha` on tensors (no host read): α = 1/(1.05 λ_max), 1 where the iteration meets H v = 0."""
    v = tree.scale(b, 1.0 / tree.norm(b).clamp_min(1e-300))
    lam = torch.zeros((), dtype=tree.flatten(b).dtype, device=tree.flatten(b).device)
    alive = torch.ones((), dtype=torch.bool, device=lam.device)
    for _ in range(iters):
        hv = hvp(v)
        new = tree.norm(hv)
        alive = alive & (new != 0)
        lam = torch.where(alive, new, lam)
        inv = 1.0 / torch.where(alive, new, torch.ones_like(new))
        v = {k: torch.where(alive, inv * hv[k], v[k]) for k in v}
    return torch.where(lam > 0, 1.0 / (1.05 * torch.where(lam > 0, lam, torch.ones_like(lam))), 1.0)


@dataclass(frozen=True)
class FixedPoint:
    """Richardson / fixed-point iteration v ← v + α(b − Hv), warm-startable, stopped at ‖b − Hv‖ ≤ tol·‖b‖.

    The same contraction as `Neumann` (from v₀ = 0 the iterates coincide with its partial sums), but it
    tracks the residual at no extra cost and accepts a warm start.
    ``alpha=None``: α = 1/λ_max (power iteration).
    """

    alpha: float | None = None
    max_iter: int = 500
    tol: float = 1e-10

    def __post_init__(self) -> None:
        positive_int(self.max_iter, "max_iter")
        nonnegative(self.tol, "tol")
        _check_alpha(self.alpha)

    def solve(self, hvp: HVP, b: Params, x0: Params | None = None) -> tuple[Params, dict[str, Any]]:
        alpha, stats = _alpha_and_stats(self.alpha, hvp, b)
        b_norm = max(float(tree.norm(b)), 1e-300)
        x = tree.zeros_like(b) if x0 is None else x0
        r = dict(b) if x0 is None else tree.sub(b, hvp(x))
        stats["hvp_count"] += 0 if x0 is None else 1
        stats["warm_started"] = x0 is not None
        res = float(tree.norm(r)) / b_norm
        if not math.isfinite(res):
            raise FloatingPointError("NaN/Inf in a Hessian-vector product (FixedPoint, first residual)")
        while stats["iterations"] < self.max_iter and res > self.tol:
            x = tree.add(x, r, alpha)
            r = tree.sub(b, hvp(x))
            stats["hvp_count"] += 1
            stats["iterations"] += 1
            res = float(tree.norm(r)) / b_norm
            if math.isnan(res):
                raise FloatingPointError(
                    f"NaN in a Hessian-vector product (FixedPoint iteration {stats['iterations']}): the "
                    "inner loss has no finite second derivative at the returned solution"
                )
            if not math.isfinite(res):
                raise FloatingPointError(
                    f"FixedPoint diverged (residual {res}) with alpha={alpha}: alpha must be below 2/λ_max(H)"
                )
        stats["residual"] = res
        return x, stats


@dataclass(frozen=True)
class Direct:
    """Dense solve: materialise H column by column (d_θ HVPs), then ``torch.linalg.solve``.

    Exact up to rounding and valid for any non-singular H (indefinite included). Cost O(d_θ) HVPs plus
    O(d_θ³); refused above ``max_dim`` unknowns.
    """

    max_dim: int = 4096

    def matrix(self, hvp: HVP, like: Params) -> Tensor:
        """The dense d_θ × d_θ matrix of ``hvp`` (columns H e_j)."""
        n = tree.numel(like)
        if n > self.max_dim:
            raise ValueError(
                f"Direct() would materialise a {n}x{n} Hessian (max_dim={self.max_dim}); "
                "use CG() for large inner problems or raise max_dim"
            )
        flat = tree.flatten(like)
        cols = []
        for j in range(n):
            e = torch.zeros_like(flat)
            e[j] = 1.0
            cols.append(tree.flatten(hvp(tree.unflatten(e, like))))
        return torch.stack(cols, dim=1)

    def solve(self, hvp: HVP, b: Params, x0: Params | None = None) -> tuple[Params, dict[str, Any]]:
        H = self.matrix(hvp, b)
        bf = tree.flatten(b)
        try:
            xf = torch.linalg.solve(H, bf)
        except RuntimeError as exc:  # singular
            raise ArithmeticError(
                "Direct(): the inner Hessian is singular at the returned solution; regularise the inner "
                "problem or use CG(damping=...)"
            ) from exc
        res = float(torch.linalg.vector_norm(H @ xf - bf)) / max(float(torch.linalg.vector_norm(bf)), 1e-300)
        stats = {"iterations": 1, "hvp_count": H.shape[0], "residual": res}
        return tree.unflatten(xf, b), stats
