"""P1 ridge regression with a learned L2 penalty, and P4 weighted ridge (data re-weighting)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..problem import BilevelProblem
from ._base import Params, ReferenceProblem, check_sizes, eig_range, generator, randn


def _regression_data(
    gen: torch.Generator,
    n: int,
    m: int,
    p: int,
    dtype: torch.dtype,
    noise: float = 0.1,
    rank: int | None = None,
    cond: float | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Train (X, y) of n rows and validation (X_v, y_v) of m rows, y = X w_true + noise.

    ``rank``: X = Z₁Z₂ with Z₁ n×rank, Z₂ rank×p (rank-deficient). ``cond``: X = √n·U diag(s) Vᵀ with s
    log-spaced from 1 to 1/cond (so cond(X) = cond, cond(XᵀX) = cond²); validation rows use the same V, s.
    """
    k = min(n, p) if rank is None else rank
    if cond is not None or rank is not None:
        v = torch.linalg.qr(torch.randn(p, k, generator=gen, dtype=torch.float64))[0]  # p×k orthonormal
        if cond is not None:
            s = torch.logspace(0.0, -math.log10(cond), k, dtype=torch.float64)
        else:
            s = 0.5 + torch.rand(k, generator=gen, dtype=torch.float64)

        def design(rows: int) -> Tensor:
            u = torch.linalg.qr(torch.randn(rows, k, generator=gen, dtype=torch.float64))[0]
            if rows < k:  # fewer rows than the rank: a Gaussian mix of the same directions
                u = torch.randn(rows, k, generator=gen, dtype=torch.float64) / rows**0.5
            return (rows**0.5) * (u * s) @ v.T

        X, Xv = design(n), design(m)
    else:
        X = torch.randn(n, p, generator=gen, dtype=torch.float64)
        Xv = torch.randn(m, p, generator=gen, dtype=torch.float64)
    w_true = torch.randn(p, generator=gen, dtype=torch.float64)
    y = X @ w_true + noise * torch.randn(n, generator=gen, dtype=torch.float64)
    yv = Xv @ w_true + noise * torch.randn(m, generator=gen, dtype=torch.float64)
    return X.to(dtype), y.to(dtype), Xv.to(dtype), yv.to(dtype)


def _xy(batch: Any, X: Tensor, y: Tensor, name: str) -> tuple[Tensor, Tensor]:
    if batch is None:
        return X, y
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise TypeError(f"{name} batch must be None or a tuple (X, y); got {type(batch).__name__}")
    return batch[0], batch[1]


def ridge(
    n: int = 40,
    m: int = 30,
    p: int = 5,
    per_feature: bool = False,
    log_lambda: bool = False,
    ill_conditioned: bool = False,
    rank_deficient: bool = False,
    lam: float | Tensor | None = None,
    cond: float = 1e4,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> ReferenceProblem:
    """P1. Ridge regression with a scalar or per-feature penalty.

        g(w, λ) = (1/2n)‖Xw − y‖² + ½ Σ_j λ_j w_j²          (scalar λ: λ_j = λ)
        f(w)    = (1/2m)‖X_v w − y_v‖²
        H = XᵀX/n + diag(λ),   w* = H⁻¹Xᵀy/n,   ∇_w f = X_vᵀ(X_v w* − y_v)/m
        scalar:      dF/dλ = −w*ᵀ H⁻¹ ∇_w f
        per-feature: ∇_λ F = −w* ⊙ (H⁻¹ ∇_w f)
        log_lambda:  the outer variable is t = log λ (key ``"log_lam"``), ∇_t F = λ ⊙ ∇_λ F.

    Inner ``{"w": (p,)}``; outer ``{"lam": ()}`` (0-dim), ``{"lam": (p,)}`` with ``per_feature``, or
    ``{"log_lam": ...}`` with ``log_lambda``. Losses accept ``batch=None`` (full data) or ``(X, y)`` (inner:
    a training mini-batch; outer: a validation mini-batch; the means are over the batch).

    Variants: ``ill_conditioned`` gives cond(X) = ``cond`` (default 1e4, so cond(XᵀX) = 1e8) and λ = 1e-4
    by default; ``rank_deficient`` gives rank(X) = min(n, p) // 2 and λ = 1e-3 by default (H ≻ 0 only
    through λ). Default λ otherwise: 0.5 (scalar), uniform in [0.2, 1] (per feature). ``lam`` overrides.
    Finite differences of small λ need a step relative to λ: test those variants with ``log_lambda``.
    """
    check_sizes(n=n, m=m, p=p)
    if rank_deficient and min(n, p) < 2:
        raise ValueError(f"rank_deficient needs min(n, p) >= 2, got n={n}, p={p}")
    if ill_conditioned and not cond > 1:
        raise ValueError(f"cond must be > 1, got {cond}")
    gen = generator(seed)
    rank = min(n, p) // 2 if rank_deficient else None
    X, y, Xv, yv = _regression_data(gen, n, m, p, dtype, rank=rank, cond=cond if ill_conditioned else None)
    shape = (p,) if per_feature else ()
    if lam is None:
        if ill_conditioned:
            lam_t = torch.full(shape, 1e-4, dtype=dtype)
        elif rank_deficient:
            lam_t = torch.full(shape, 1e-3, dtype=dtype)
        elif per_feature:
            lam_t = (0.2 + 0.8 * torch.rand(p, generator=gen, dtype=torch.float64)).to(dtype)
        else:
            lam_t = torch.tensor(0.5, dtype=dtype)
    else:
        lam_t = torch.as_tensor(lam, dtype=dtype).detach().clone()
        if lam_t.dim() == 0 and per_feature:
            lam_t = lam_t.expand(p).clone()
        if lam_t.shape != shape:
            raise ValueError(
                f"lam must have shape {shape} (per_feature={per_feature}), got {tuple(lam_t.shape)}"
            )
    if not bool((lam_t > 0).all()):
        raise ValueError("lam must be > 0")
    key = "log_lam" if log_lambda else "lam"

    def lam_of(outer: Params) -> Tensor:
        return outer[key].exp() if log_lambda else outer[key]

    def inner_loss(inner: Params, outer: Params, batch: Any = None) -> Tensor:
        Xb, yb = _xy(batch, X, y, "inner")
        w = inner["w"]
        r = Xb @ w - yb
        return 0.5 * (r @ r) / Xb.shape[0] + 0.5 * (lam_of(outer) * w * w).sum()

    def outer_loss(inner: Params, outer: Params, batch: Any = None) -> Tensor:
        Xb, yb = _xy(batch, Xv, yv, "outer")
        r = Xb @ inner["w"] - yb
        return 0.5 * (r @ r) / Xb.shape[0]

    eye = torch.eye(p, dtype=dtype)

    def hessian(outer: Params) -> Tensor:
        return X.T @ X / n + lam_of(outer) * eye

    def solve_inner(outer: Params) -> Params:
        return {"w": torch.linalg.solve(hessian(outer), X.T @ y / n)}

    def value(outer: Params) -> Tensor:
        return outer_loss(solve_inner(outer), outer)

    def hypergrad(outer: Params) -> Params:
        h = hessian(outer)
        w = torch.linalg.solve(h, X.T @ y / n)
        v = torch.linalg.solve(h, Xv.T @ (Xv @ w - yv) / m)
        g = -w * v if per_feature else -(w @ v)
        if log_lambda:
            g = g * lam_of(outer)
        return {key: g}

    outer0 = {key: lam_t.log() if log_lambda else lam_t}
    mu, L = eig_range(hessian(outer0))
    variant = "".join(
        f"-{s}"
        for s, on in (
            ("per_feature", per_feature),
            ("log", log_lambda),
            ("ill", ill_conditioned),
            ("rankdef", rank_deficient),
        )
        if on
    )
    return ReferenceProblem(
        name=f"ridge{variant}",
        problem=BilevelProblem(inner_loss, outer_loss),
        inner_init={"w": torch.zeros(p, dtype=dtype)},
        outer=outer0,
        solve_inner=solve_inner,
        value=value,
        hypergrad=hypergrad,
        inner_hessian=hessian,
        strongly_convex=True,
        mu=mu,
        L=L,
        data={"X": X, "y": y, "X_val": Xv, "y_val": yv},
    )


def weighted_ridge(
    n: int = 20,
    m: int = 15,
    p: int = 4,
    C: float = 0.1,
    weights: str = "sigmoid",
    gamma: float = 0.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> ReferenceProblem:
    """P4. Data re-weighting on ridge regression: one outer variable per training sample.

        s = σ(x) (``weights="sigmoid"``, outer ``{"x": (n,)}`` logits) or s = x (``weights="direct"``,
        outer ``{"weights": (n,)}``, w ∈ [0,1]^n: the worst-case forget-set shape)
        g(w, s) = (1/2n) Σ_i s_i (x_iᵀw − y_i)² + (C/2)‖w‖²
        f(w, s) = (1/2m)‖X_v w − y_v‖² + (γ/2)‖s‖²
        H = XᵀSX/n + CI,  w* = H⁻¹XᵀSy/n,  r_i = x_iᵀw* − y_i,  ∇_w f = X_vᵀ(X_v w* − y_v)/m
        sigmoid: ∂F/∂x_i = −(σ(x_i)(1 − σ(x_i))/n)·r_i·x_iᵀH⁻¹∇_w f + γ σ(x_i)σ'(x_i)
        direct:  ∂F/∂w_i = −(1/n)·r_i·x_iᵀH⁻¹∇_w f + γ w_i

    Inner ``{"w": (p,)}``. The test point for ``direct`` lies on the capped simplex
    {w ∈ [0.1, 0.9]^n, Σw = n/2}. Inner batches are ``(X_b, y_b, idx)`` (``idx`` picks the weights of the
    rows; the mean is over the batch); outer batches are ``(X_v, y_v)``; ``None`` means full data.
    """
    check_sizes(n=n, m=m, p=p)
    if not C > 0:
        raise ValueError(f"C must be > 0 (it makes g strongly convex for any weights), got {C}")
    if weights not in ("sigmoid", "direct"):
        raise ValueError(f"weights must be 'sigmoid' or 'direct', got {weights!r}")
    gen = generator(seed)
    X, y, Xv, yv = _regression_data(gen, n, m, p, dtype, noise=0.3)
    # Corrupt a few training labels so the re-weighting has something to do.
    flip = torch.randperm(n, generator=gen)[: max(1, n // 5)]
    y = y.clone()
    y[flip] = y[flip] + 3.0 * randn(gen, flip.numel(), dtype=dtype)
    sigmoid = weights == "sigmoid"
    key = "x" if sigmoid else "weights"
    if sigmoid:
        x0 = randn(gen, n, dtype=dtype)
    else:
        d = 0.4 * torch.rand(n, generator=gen, dtype=torch.float64) - 0.2
        x0 = (0.5 + d - d.mean()).to(dtype)  # in [0.1, 0.9], sums to n/2
    eye = torch.eye(p, dtype=dtype)

    def s_of(v: Tensor) -> Tensor:
        return torch.sigmoid(v) if sigmoid else v

    def inner_loss(inner: Params, outer: Params, batch: Any = None) -> Tensor:
        s = s_of(outer[key])
        if batch is None:
            Xb, yb = X, y
        else:
            if not (isinstance(batch, (tuple, list)) and len(batch) == 3):
                raise TypeError("weighted_ridge inner batch must be None or (X_b, y_b, idx)")
            Xb, yb, idx = batch
            s = s[idx]
        w = inner["w"]
        r = Xb @ w - yb
        return 0.5 * (s * r * r).sum() / Xb.shape[0] + 0.5 * C * (w @ w)

    def outer_loss(inner: Params, outer: Params, batch: Any = None) -> Tensor:
        Xb, yb = _xy(batch, Xv, yv, "outer")
        r = Xb @ inner["w"] - yb
        out = 0.5 * (r @ r) / Xb.shape[0]
        if gamma:
            s = s_of(outer[key])
            out = out + 0.5 * gamma * (s @ s)
        return out

    def hessian(outer: Params) -> Tensor:
        s = s_of(outer[key])
        return (X.T * s) @ X / n + C * eye

    def solve_inner(outer: Params) -> Params:
        s = s_of(outer[key])
        return {"w": torch.linalg.solve(hessian(outer), X.T @ (s * y) / n)}

    def value(outer: Params) -> Tensor:
        return outer_loss(solve_inner(outer), outer)

    def hypergrad(outer: Params) -> Params:
        v_ = outer[key]
        s = s_of(v_)
        h = hessian(outer)
        w = torch.linalg.solve(h, X.T @ (s * y) / n)
        r = X @ w - y
        v = torch.linalg.solve(h, Xv.T @ (Xv @ w - yv) / m)
        ds = torch.sigmoid(v_) * (1 - torch.sigmoid(v_)) if sigmoid else torch.ones_like(v_)
        g = -(ds / n) * r * (X @ v) + gamma * s * ds
        return {key: g}

    outer0 = {key: x0}
    mu, L = eig_range(hessian(outer0))
    return ReferenceProblem(
        name=f"weighted_ridge-{weights}",
        problem=BilevelProblem(inner_loss, outer_loss),
        inner_init={"w": torch.zeros(p, dtype=dtype)},
        outer=outer0,
        solve_inner=solve_inner,
        value=value,
        hypergrad=hypergrad,
        inner_hessian=hessian,
        strongly_convex=True,
        mu=mu,
        L=L,
        data={"X": X, "y": y, "X_val": Xv, "y_val": yv, "C": C, "gamma": gamma},
    )
