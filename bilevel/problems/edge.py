"""P7 edge cases for solver tests: 0-dim tensors, several tensors with an unused entry, a saddle, NaN."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..problem import BilevelProblem
from ..tree import unflatten
from ._base import Params, ReferenceProblem, check_sizes, eig_range, generator, randn, spd, spectrum


def scalar_inner(
    lam: float = 0.5,
    target: float = 1.0,
    beta: float = 0.1,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> ReferenceProblem:
    """A strongly convex 1-D problem whose inner and outer variables are both **0-dim** tensors.

        g(t, λ) = ½(1 + λ²)t² − λt                  (curvature 1 + λ² ≥ 1)
        t*(λ)   = λ / (1 + λ²),     dt*/dλ = (1 − λ²) / (1 + λ²)²
        f(t, λ) = ½(t − c)² + (β/2)λ²
        dF/dλ   = (t* − c)·dt*/dλ + βλ

    Inner ``{"t": ()}``, outer ``{"lam": ()}``. Peers have returned 0 here (torchopt #222: CG with
    ``maxiter = 10·sum(shape) = 0``). ``data["dt_dlam"](outer)`` is dt*/dλ. Nothing is random (``seed``
    is accepted for a uniform signature).
    """
    c = torch.tensor(float(target), dtype=dtype)

    def inner_loss(inner: Params, outer: Params, batch: Any = None) -> Tensor:
        t, lam_ = inner["t"], outer["lam"]
        return 0.5 * (1 + lam_**2) * t**2 - lam_ * t

    def outer_loss(inner: Params, outer: Params, batch: Any = None) -> Tensor:
        return 0.5 * (inner["t"] - c) ** 2 + 0.5 * beta * outer["lam"] ** 2

    def solve_inner(outer: Params) -> Params:
        lam_ = outer["lam"]
        return {"t": lam_ / (1 + lam_**2)}

    def dt_dlam(outer: Params) -> Tensor:
        lam_ = outer["lam"]
        return (1 - lam_**2) / (1 + lam_**2) ** 2

    def value(outer: Params) -> Tensor:
        return outer_loss(solve_inner(outer), outer)

    def hypergrad(outer: Params) -> Params:
        t = solve_inner(outer)["t"]
        return {"lam": (t - c) * dt_dlam(outer) + beta * outer["lam"]}

    def inner_hessian(outer: Params) -> Tensor:
        return (1 + outer["lam"] ** 2).reshape(1, 1)

    lam0 = torch.tensor(float(lam), dtype=dtype)
    curv = 1 + float(lam) ** 2
    return ReferenceProblem(
        name="scalar_inner",
        problem=BilevelProblem(inner_loss, outer_loss),
        inner_init={"t": torch.tensor(0.0, dtype=dtype)},
        outer={"lam": lam0},
        solve_inner=solve_inner,
        value=value,
        hypergrad=hypergrad,
        inner_hessian=inner_hessian,
        strongly_convex=True,
        mu=curv,
        L=curv,
        data={"dt_dlam": dt_dlam, "target": c, "beta": beta},
    )


def multi_tensor(
    n: int = 12, m: int = 8, p: int = 3, k: int = 2, seed: int = 0, dtype: torch.dtype = torch.float64
) -> ReferenceProblem:
    """Several inner tensors of different shapes (a matrix, a vector, a 0-dim) and several outer entries,
    one of which neither loss uses.

    A multi-output linear model Z = XW + 1bᵀ + s·11ᵀ, θ = (W (p×k), b (k,), s ()), flattened in key order
    (vec(W) row-major, then b, then s) as θ = Φ-coordinates with Φ = [X ⊗ I_k, 1_n ⊗ I_k, 1_{nk}]:

        g(θ; α, u) = (1/2n)‖Φθ − vec(Y + 1uᵀ)‖² + (α/2)‖θ‖²        (b and s are collinear: α > 0 is what
                                                                        makes g strongly convex)
        f(θ; u)    = (1/2m)‖Φ_v θ − vec(Y_v)‖² + (β/2)‖u‖²
        H = ΦᵀΦ/n + αI,  θ* = H⁻¹Φᵀvec(Y + 1uᵀ)/n,  v = H⁻¹∇_θ f
        ∂F/∂α = −θ*ᵀv,   ∇_u F = βu + EᵀΦv/n (E = 1_n ⊗ I_k),   ∇_unused F = 0 exactly

    Inner ``{"W": (p, k), "b": (k,), "s": ()}``; outer ``{"alpha": (), "u": (k,), "unused": (2, 2)}``.
    """
    check_sizes(n=n, m=m, p=p, k=k)
    gen = generator(seed)
    X, Xv = randn(gen, n, p, dtype=dtype), randn(gen, m, p, dtype=dtype)
    W_true = randn(gen, p, k, dtype=dtype)
    Y = X @ W_true + 1.0 + 0.1 * randn(gen, n, k, dtype=dtype)
    Yv = Xv @ W_true + 1.0 + 0.1 * randn(gen, m, k, dtype=dtype)
    beta = 0.2
    eye_k = torch.eye(k, dtype=dtype)

    def phi(Xd: Tensor) -> Tensor:
        rows = Xd.shape[0]
        ones = torch.ones(rows, 1, dtype=dtype)
        return torch.cat(
            [torch.kron(Xd, eye_k), torch.kron(ones, eye_k), torch.ones(rows * k, 1, dtype=dtype)], 1
        )

    Phi, Phiv = phi(X), phi(Xv)
    E = torch.kron(torch.ones(n, 1, dtype=dtype), eye_k)
    like = {
        "W": torch.zeros(p, k, dtype=dtype),
        "b": torch.zeros(k, dtype=dtype),
        "s": torch.zeros((), dtype=dtype),
    }
    d = p * k + k + 1

    def predict(inner: Params, Xd: Tensor) -> Tensor:
        return Xd @ inner["W"] + inner["b"] + inner["s"]

    def inner_loss(inner: Params, outer: Params, batch: Any = None) -> Tensor:
        r = predict(inner, X) - (Y + outer["u"])
        sq = sum((v * v).sum() for v in inner.values())
        return 0.5 * (r * r).sum() / n + 0.5 * outer["alpha"] * sq

    def outer_loss(inner: Params, outer: Params, batch: Any = None) -> Tensor:
        r = predict(inner, Xv) - Yv
        return 0.5 * (r * r).sum() / m + 0.5 * beta * (outer["u"] @ outer["u"])

    def hessian(outer: Params) -> Tensor:
        return Phi.T @ Phi / n + outer["alpha"] * torch.eye(d, dtype=dtype)

    def theta_flat(outer: Params) -> Tensor:
        return torch.linalg.solve(hessian(outer), Phi.T @ (Y + outer["u"]).reshape(-1) / n)

    def solve_inner(outer: Params) -> Params:
        return unflatten(theta_flat(outer), like)

    def value(outer: Params) -> Tensor:
        return outer_loss(solve_inner(outer), outer)

    def hypergrad(outer: Params) -> Params:
        th = theta_flat(outer)
        gf = Phiv.T @ (Phiv @ th - Yv.reshape(-1)) / m
        v = torch.linalg.solve(hessian(outer), gf)
        return {
            "alpha": -(th @ v),
            "u": beta * outer["u"] + E.T @ (Phi @ v) / n,
            "unused": torch.zeros_like(outer["unused"]),
        }

    outer0 = {
        "alpha": torch.tensor(0.3, dtype=dtype),
        "u": randn(gen, k, dtype=dtype),
        "unused": randn(gen, 2, 2, dtype=dtype),
    }
    mu, L = eig_range(hessian(outer0))
    return ReferenceProblem(
        name="multi_tensor",
        problem=BilevelProblem(inner_loss, outer_loss),
        inner_init={
            "W": randn(gen, p, k, dtype=dtype),
            "b": torch.zeros(k, dtype=dtype),
            "s": torch.tensor(0.0, dtype=dtype),
        },
        outer=outer0,
        solve_inner=solve_inner,
        value=value,
        hypergrad=hypergrad,
        inner_hessian=hessian,
        strongly_convex=True,
        mu=mu,
        L=L,
        data={"X": X, "Y": Y, "X_val": Xv, "Y_val": Yv, "Phi": Phi, "Phi_val": Phiv, "beta": beta},
    )


def saddle(d: int = 4, dx: int = 2, seed: int = 0, dtype: torch.dtype = torch.float64) -> ReferenceProblem:
    """The inner "solution" is a saddle: ∇²_θθ g is symmetric, invertible and **indefinite**.

        g(θ, x) = ½θᵀMθ − (a + Cᵀx)ᵀθ,  M = Q diag(−1, 0.5, …, 2) Qᵀ  (one negative eigenvalue)
        θ*(x) = M⁻¹(a + Cᵀx)   (the unique stationary point, not a minimiser)
        f(θ, x) = ½‖θ − c‖² + ½‖x‖²
        ∇F(x) = x + C M⁻¹(θ* − c)       (the implicit-function formula still holds at a stationary point)

    ``strongly_convex`` is False and ``mu`` < 0. CG's curvature pᵀMp must turn ≤ 0 within d iterations
    (the right-hand side has a component along the negative direction; Sylvester's inertia), so a solver
    that checks it reports non-SPD; a dense or indefinite solver (Direct, MINRES, GMRES) gets ∇F.
    Inner ``{"theta": (d,)}``, outer ``{"x": (dx,)}``.
    """
    if not isinstance(d, int) or d < 2:
        raise ValueError(f"d must be an int >= 2 (one negative and one positive direction), got {d!r}")
    if not isinstance(dx, int) or dx < 1:
        raise ValueError(f"dx must be a positive int, got {dx!r}")
    gen = generator(seed)
    eigs = torch.cat([torch.tensor([-1.0], dtype=dtype), spectrum(0.5, 2.0, d - 1, dtype)])
    M = spd(gen, eigs)
    a, c = randn(gen, d, dtype=dtype), randn(gen, d, dtype=dtype)
    C = randn(gen, dx, d, dtype=dtype) / math.sqrt(d)

    def inner_loss(inner: Params, outer: Params, batch: Any = None) -> Tensor:
        th = inner["theta"]
        return 0.5 * th @ (M @ th) - (a + C.T @ outer["x"]) @ th

    def outer_loss(inner: Params, outer: Params, batch: Any = None) -> Tensor:
        r = inner["theta"] - c
        return 0.5 * (r @ r) + 0.5 * (outer["x"] @ outer["x"])

    def solve_inner(outer: Params) -> Params:
        return {"theta": torch.linalg.solve(M, a + C.T @ outer["x"])}

    def value(outer: Params) -> Tensor:
        return outer_loss(solve_inner(outer), outer)

    def hypergrad(outer: Params) -> Params:
        th = solve_inner(outer)["theta"]
        return {"x": outer["x"] + C @ torch.linalg.solve(M, th - c)}

    mu, L = eig_range(M)
    return ReferenceProblem(
        name="saddle",
        problem=BilevelProblem(inner_loss, outer_loss),
        inner_init={"theta": torch.zeros(d, dtype=dtype)},
        outer={"x": randn(gen, dx, dtype=dtype)},
        solve_inner=solve_inner,
        value=value,
        hypergrad=hypergrad,
        inner_hessian=lambda outer: M,
        strongly_convex=False,
        mu=mu,
        L=L,
        data={"M": M, "a": a, "c": c, "C": C},
    )


def nan_outer(where: str = "outer", seed: int = 0, dtype: torch.dtype = torch.float64) -> ReferenceProblem:
    """A small well-posed quadratic (`quadratic`'s g) into which NaN is injected, for the NaN guards.

    - ``where="outer"``: f returns NaN (f = f_quadratic + NaN·y₀), so ∇_θ f and ∇_λ f are NaN too;
      the inner problem is fine (``solve_inner`` is exact and finite);
    - ``where="inner"``: g returns NaN (its gradient is NaN), so any inner solver meets NaN at step 0;
    - ``where="inner_grad"``: g is finite but ∇_θ g is NaN (g adds 0·√|y₀ − stopgrad(y₀)|, which is 0,
      but whose derivative is 0·∞ = NaN): a guard must check gradients, not just losses.

    ``value`` and ``hypergrad`` are NaN (undefined); a solver should raise naming where the NaN appeared.
    Inner ``{"y": (3,)}``, outer ``{"x": (2,)}``.
    """
    from .quadratic import quadratic

    if where not in ("outer", "inner", "inner_grad"):
        raise ValueError(f"where must be 'outer', 'inner' or 'inner_grad', got {where!r}")
    base = quadratic(dx=2, dy=3, seed=seed, dtype=dtype)
    nan = torch.tensor(float("nan"), dtype=dtype)
    g0, f0 = base.problem.inner_loss, base.problem.outer_loss

    def inner_loss(inner: Params, outer: Params, batch: Any = None) -> Tensor:
        out = g0(inner, outer, batch)
        y0 = inner["y"][0]
        if where == "inner":
            return out + nan * y0
        if where == "inner_grad":
            return out + 0.0 * torch.sqrt((y0 - y0.detach()).abs())
        return out

    def outer_loss(inner: Params, outer: Params, batch: Any = None) -> Tensor:
        out = f0(inner, outer, batch)
        return out + nan * inner["y"][0] if where == "outer" else out

    def solve_inner(outer: Params) -> Params:
        sol = base.solve_inner(outer)
        return sol if where != "inner" else {k: torch.full_like(v, math.nan) for k, v in sol.items()}

    def value(outer: Params) -> Tensor:
        return nan.clone()

    def hypergrad(outer: Params) -> Params:
        return {k: torch.full_like(v, math.nan) for k, v in outer.items()}

    return ReferenceProblem(
        name=f"nan_{where}",
        problem=BilevelProblem(inner_loss, outer_loss),
        inner_init=dict(base.inner_init),
        outer=dict(base.outer),
        solve_inner=solve_inner,
        value=value,
        hypergrad=hypergrad,
        inner_hessian=base.inner_hessian,
        strongly_convex=base.strongly_convex,
        mu=base.mu,
        L=base.L,
        data=dict(base.data),
    )
