"""P2 general quadratic bi-level, P5 unrolled gradient descent on a quadratic, P6 iMAML proximal."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..problem import BilevelProblem
from ._base import (
    Params,
    ReferenceProblem,
    check_sizes,
    check_spectrum,
    eig_range,
    generator,
    randn,
    spd,
    spectrum,
)


def quadratic(
    dx: int = 3,
    dy: int = 5,
    mu: float = 0.5,
    L: float = 4.0,
    coupling: float = 1.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> ReferenceProblem:
    """P2. General quadratic bi-level problem (benchopt "simulated").

        g(x, y) = ½yᵀAy + ½xᵀBx + xᵀCy + aᵀy + bᵀx          A ≻ 0 with spectrum [mu, L], ‖C‖₂ = coupling
        f(x, y) = ½yᵀFy + ½xᵀHx + xᵀKy + f_yᵀy + h_xᵀx
        y*(x) = −A⁻¹(Cᵀx + a),   J = dy*/dx = −A⁻¹Cᵀ
        ∇F(x) = (Hx + Ky* + h_x) − C A⁻¹(Fy* + Kᵀx + f_y)
        F is quadratic in x with Hessian M = H + KJ + JᵀKᵀ + JᵀFJ (made ≻ 0 by construction), so
        ``optimum()`` returns x_opt = −M⁻¹q, q = JᵀF y₀ + K y₀ + Jᵀf_y + h_x, y₀ = −A⁻¹a, and F(x_opt).

    Inner ``{"y": (dy,)}``, outer ``{"x": (dx,)}``. No data: the loss ignores ``batch``.
    ``data`` holds every matrix and vector (``A, B, C, a, b, F, H, K, f_y, h_x``) and ``M``. ``device``: where
    the losses' tensors, ``inner_init`` and ``outer`` live (drawn on the CPU first, so every device gets the
    same numbers); default the CPU.
    """
    check_sizes(dx=dx, dy=dy)
    check_spectrum(mu, L)
    if coupling < 0:
        raise ValueError(f"coupling must be >= 0, got {coupling}")
    gen = generator(seed)
    A = spd(gen, spectrum(mu, L, dy, dtype))
    B = spd(gen, spectrum(0.5, 2.0, dx, dtype))
    C = randn(gen, dx, dy, dtype=dtype)
    C = C * (coupling / torch.linalg.matrix_norm(C, ord=2))
    a, b = randn(gen, dy, dtype=dtype), randn(gen, dx, dtype=dtype)
    G = randn(gen, dy, dy, dtype=dtype) / dy**0.5
    F = G @ G.T + 0.1 * torch.eye(dy, dtype=dtype)
    K = 0.5 * randn(gen, dx, dy, dtype=dtype) / dy**0.5
    f_y, h_x = randn(gen, dy, dtype=dtype), randn(gen, dx, dtype=dtype)
    J = -torch.linalg.solve(A, C.T)
    M0 = K @ J + J.T @ K.T + J.T @ F @ J
    shift = max(0.0, 0.5 - float(torch.linalg.eigvalsh((M0 + M0.T) / 2)[0]))
    H = spd(gen, spectrum(0.5, 2.0, dx, dtype)) + shift * torch.eye(dx, dtype=dtype)
    M = H + M0
    M = (M + M.T) / 2
    if device is not None:
        A, B, C, a, b, F, H, K, f_y, h_x, J, M = (
            t.to(device) for t in (A, B, C, a, b, F, H, K, f_y, h_x, J, M)
        )

    def inner_loss(inner: Params, outer: Params, batch: Any = None) -> Tensor:
        x, y = outer["x"], inner["y"]
        return 0.5 * y @ (A @ y) + 0.5 * x @ (B @ x) + x @ (C @ y) + a @ y + b @ x

    def outer_loss(inner: Params, outer: Params, batch: Any = None) -> Tensor:
        x, y = outer["x"], inner["y"]
        return 0.5 * y @ (F @ y) + 0.5 * x @ (H @ x) + x @ (K @ y) + f_y @ y + h_x @ x

    def solve_inner(outer: Params) -> Params:
        return {"y": -torch.linalg.solve(A, C.T @ outer["x"] + a)}

    def value(outer: Params) -> Tensor:
        return outer_loss(solve_inner(outer), outer)

    def hypergrad(outer: Params) -> Params:
        x = outer["x"]
        y = solve_inner(outer)["y"]
        return {"x": (H @ x + K @ y + h_x) - C @ torch.linalg.solve(A, F @ y + K.T @ x + f_y)}

    def optimum() -> tuple[Params, Tensor]:
        y0 = -torch.linalg.solve(A, a)
        q = J.T @ (F @ y0) + K @ y0 + J.T @ f_y + h_x
        x_opt = {"x": -torch.linalg.solve(M, q)}
        return x_opt, value(x_opt)

    mu_, L_ = eig_range(A)
    return ReferenceProblem(
        name="quadratic",
        problem=BilevelProblem(inner_loss, outer_loss),
        inner_init={"y": torch.zeros(dy, dtype=dtype, device=A.device)},
        outer={"x": randn(gen, dx, dtype=dtype).to(A.device)},
        solve_inner=solve_inner,
        value=value,
        hypergrad=hypergrad,
        inner_hessian=lambda outer: A,
        strongly_convex=True,
        mu=mu_,
        L=L_,
        optimum=optimum,
        data={"A": A, "B": B, "C": C, "a": a, "b": b, "F": F, "H": H, "K": K, "f_y": f_y, "h_x": h_x, "M": M},
    )


def unrolled_gd_quadratic(
    d: int = 4,
    steps: int = 10,
    lr: float = 0.1,
    mu: float = 0.5,
    L: float = 3.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> ReferenceProblem:
    """P5. T = ``steps`` plain gradient-descent steps on a quadratic; the outer variable is (η, w₀).

        g(w) = ½wᵀAw − bᵀw,  w* = A⁻¹b,  w_{t+1} = w_t − η(Aw_t − b)
        w_T = w* + (I − ηA)^T (w₀ − w*)
        F_T(η, w₀) = ½‖w_T − w_tgt‖²
        dF_T/dη  = (w_T − w_tgt)ᵀ(−T·A(I − ηA)^{T−1}(w₀ − w*))
        dF_T/dw₀ = (I − ηA)^T (w_T − w_tgt)          (MAML-style; (I − ηA)^T is symmetric)

    Outer ``{"lr": () 0-dim, "w0": (d,)}``, inner ``{"w": (d,)}``. The solver test builds
    ``optim.SGD(lr=outer["lr"])`` from the same tensor, starts from ``inner_init = {"w": outer["w0"]}``
    (this record's ``inner_init`` is that very tensor) and runs exactly ``steps`` steps;
    ``unrolled_value`` / ``unrolled_hypergrad`` / ``unrolled_inner`` give F_T, ∇F_T and w_T in closed form.

    As an argmin problem (what ``value`` / ``hypergrad`` / ``solve_inner`` describe) neither loss depends on
    (η, w₀): θ* = w*, F = ½‖w* − w_tgt‖² is constant and its hypergradient is exactly 0.
    ``mu``, ``L`` are A's extreme eigenvalues; the default ``lr`` satisfies ``lr < 2/L``.
    """
    check_sizes(d=d)
    check_spectrum(mu, L)
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    gen = generator(seed)
    A = spd(gen, spectrum(mu, L, d, dtype))
    b = randn(gen, d, dtype=dtype)
    w_tgt = randn(gen, d, dtype=dtype)
    w0 = randn(gen, d, dtype=dtype)
    w_star = torch.linalg.solve(A, b)
    eye = torch.eye(d, dtype=dtype)
    T = steps

    def inner_loss(inner: Params, outer: Params, batch: Any = None) -> Tensor:
        w = inner["w"]
        return 0.5 * w @ (A @ w) - b @ w

    def outer_loss(inner: Params, outer: Params, batch: Any = None) -> Tensor:
        r = inner["w"] - w_tgt
        return 0.5 * (r @ r)

    def unrolled_inner(outer: Params) -> Params:
        P = eye - outer["lr"] * A
        return {"w": w_star + torch.linalg.matrix_power(P, T) @ (outer["w0"] - w_star)}

    def unrolled_value(outer: Params) -> Tensor:
        return outer_loss(unrolled_inner(outer), outer)

    def unrolled_hypergrad(outer: Params) -> Params:
        P = eye - outer["lr"] * A
        e = unrolled_inner(outer)["w"] - w_tgt
        if T == 0:
            dlr = torch.zeros((), dtype=dtype)
        else:
            dwT = -T * A @ torch.linalg.matrix_power(P, T - 1) @ (outer["w0"] - w_star)
            dlr = e @ dwT
        return {"lr": dlr, "w0": torch.linalg.matrix_power(P, T).T @ e}

    def solve_inner(outer: Params) -> Params:
        return {"w": w_star.clone()}

    def value(outer: Params) -> Tensor:
        return outer_loss(solve_inner(outer), outer)

    def hypergrad(outer: Params) -> Params:
        return {k: torch.zeros_like(v) for k, v in outer.items()}

    outer0 = {"lr": torch.tensor(float(lr), dtype=dtype), "w0": w0}
    mu_, L_ = eig_range(A)
    return ReferenceProblem(
        name="unrolled_gd_quadratic",
        problem=BilevelProblem(inner_loss, outer_loss),
        inner_init={"w": outer0["w0"]},
        outer=outer0,
        solve_inner=solve_inner,
        value=value,
        hypergrad=hypergrad,
        inner_hessian=lambda outer: A,
        strongly_convex=True,
        mu=mu_,
        L=L_,
        unrolled_value=unrolled_value,
        unrolled_hypergrad=unrolled_hypergrad,
        unrolled_inner=unrolled_inner,
        steps=T,
        data={"A": A, "b": b, "w_tgt": w_tgt, "w_star": w_star},
    )


def imaml_proximal(
    d: int = 5,
    lam: float = 2.0,
    mu: float = 0.5,
    L: float = 4.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> ReferenceProblem:
    """P6. iMAML: a proximal inner problem around the meta-parameters θ, on a quadratic task.

        g(φ, θ) = ½φᵀAφ − bᵀφ + (λ/2)‖φ − θ‖²,   φ* = (A + λI)⁻¹(b + λθ),   dφ*/dθ = λ(A + λI)⁻¹
        f(φ)    = ½(φ − c)ᵀQ(φ − c)                (the task's validation loss; Q ≻ 0)
        ∇_θ F   = λ(A + λI)⁻¹ ∇f(φ*) = λ(A + λI)⁻¹ Q(φ* − c)

    Inner ``{"phi": (d,)}``, outer ``{"theta": (d,)}``; λ = ``lam`` is a constant. A has spectrum [mu, L],
    so the inner Hessian A + λI has spectrum [mu + λ, L + λ].
    """
    check_sizes(d=d)
    check_spectrum(mu, L)
    if not lam > 0:
        raise ValueError(f"lam must be > 0, got {lam}")
    gen = generator(seed)
    A = spd(gen, spectrum(mu, L, d, dtype))
    b = randn(gen, d, dtype=dtype)
    Q = spd(gen, spectrum(0.5, 2.0, d, dtype))
    c = randn(gen, d, dtype=dtype)
    Hm = A + lam * torch.eye(d, dtype=dtype)

    def inner_loss(inner: Params, outer: Params, batch: Any = None) -> Tensor:
        phi = inner["phi"]
        r = phi - outer["theta"]
        return 0.5 * phi @ (A @ phi) - b @ phi + 0.5 * lam * (r @ r)

    def outer_loss(inner: Params, outer: Params, batch: Any = None) -> Tensor:
        r = inner["phi"] - c
        return 0.5 * r @ (Q @ r)

    def solve_inner(outer: Params) -> Params:
        return {"phi": torch.linalg.solve(Hm, b + lam * outer["theta"])}

    def value(outer: Params) -> Tensor:
        return outer_loss(solve_inner(outer), outer)

    def hypergrad(outer: Params) -> Params:
        phi = solve_inner(outer)["phi"]
        return {"theta": lam * torch.linalg.solve(Hm, Q @ (phi - c))}

    mu_, L_ = eig_range(Hm)
    return ReferenceProblem(
        name="imaml_proximal",
        problem=BilevelProblem(inner_loss, outer_loss),
        inner_init={"phi": torch.zeros(d, dtype=dtype)},
        outer={"theta": randn(gen, d, dtype=dtype)},
        solve_inner=solve_inner,
        value=value,
        hypergrad=hypergrad,
        inner_hessian=lambda outer: Hm,
        strongly_convex=True,
        mu=mu_,
        L=L_,
        data={"A": A, "b": b, "Q": Q, "c": c, "lam": lam},
    )
