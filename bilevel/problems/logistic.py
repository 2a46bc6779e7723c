"""P3 L2-regularized logistic regression (binary on synthetic data; multiclass on sklearn's digits)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as Fn
from torch import Tensor

from ..problem import BilevelProblem
from ._base import Params, ReferenceProblem, check_sizes, eig_range, generator


def _binary_data(gen: torch.Generator, n: int, m: int, p: int, dtype: torch.dtype):
    w_true = 2.0 * torch.randn(p, generator=gen, dtype=torch.float64) / p**0.5

    def draw(rows: int) -> tuple[Tensor, Tensor]:
        X = torch.randn(rows, p, generator=gen, dtype=torch.float64)
        logit = X @ w_true
        y = torch.where(
            torch.rand(rows, generator=gen, dtype=torch.float64) < torch.sigmoid(logit), 1.0, -1.0
        )
        return X.to(dtype), y.to(dtype)

    (X, y), (Xv, yv) = draw(n), draw(m)
    return X, y, Xv, yv


def _digits_data(gen: torch.Generator, n: int, m: int, p: int | None, classes: int, dtype: torch.dtype):
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    data = load_digits()
    keep = torch.as_tensor(data.target < classes)
    Xall = torch.as_tensor(data.data, dtype=torch.float64)[keep]
    yall = torch.as_tensor(data.target, dtype=torch.long)[keep]
    if n + m > Xall.shape[0]:
        raise ValueError(f"n + m = {n + m} exceeds the {Xall.shape[0]} digits of classes < {classes}")
    perm = torch.randperm(Xall.shape[0], generator=gen)
    tr, va = perm[:n], perm[n : n + m]
    mean, std = Xall[tr].mean(0), Xall[tr].std(0)
    if p is not None:  # the p pixels with the largest training variance
        cols = torch.argsort(std, descending=True)[:p].sort().values
        Xall, mean, std = Xall[:, cols], mean[cols], std[cols]
    std = torch.where(std > 0, std, torch.ones_like(std))
    Xall = (Xall - mean) / std
    return Xall[tr].to(dtype), yall[tr], Xall[va].to(dtype), yall[va]


def logistic(
    n: int = 60,
    m: int = 40,
    p: int | None = None,
    lam: float | Tensor | None = None,
    per_feature: bool = False,
    multiclass: bool = False,
    classes: int = 10,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> ReferenceProblem:
    """P3. L2-regularized logistic regression with a learned penalty.

    Binary (labels ±1, synthetic Gaussian features, p = 5 by default), inner ``{"w": (p,)}``:

        g(w, λ) = (1/n) Σ_i log(1 + exp(−y_i x_iᵀw)) + ½ Σ_j λ_j w_j²
        H = XᵀDX/n + diag(λ),  D = diag(σ(z_i)σ(−z_i)),  z_i = y_i x_iᵀw*
        f(w) = validation logistic loss,  ∇_w f = −(1/m) X_vᵀ(y_v ⊙ σ(−y_v ⊙ X_v w*))

    ``multiclass=True``: softmax regression on sklearn's bundled ``load_digits`` (standardized; the first
    ``classes`` digits; all 64 pixels, or the ``p`` of largest variance), inner ``{"W": (p, K)}``:

        g(W, λ) = (1/n) Σ_i CE(Wᵀx_i, y_i) + ½ Σ_j λ_j ‖W_j,:‖²,   ∇_W g = Xᵀ(P − Y)/n + diag(λ)W
        H = (1/n) Σ_i x_i x_iᵀ ⊗ (diag(p_i) − p_i p_iᵀ) + diag(λ) ⊗ I_K   (vec(W) row-major)

    In both: w* has no closed form; ``solve_inner`` runs damped Newton to ‖∇_w g‖ ≤ 1e-13 (float64) and
    then takes one more Newton step *with* the graph to λ, which leaves w* unchanged but makes it
    differentiable with the implicit derivative dw*/dλ = −H⁻¹ ∂_λ∇_w g. Closed forms at w*:

        scalar λ: dF/dλ = −vec(w*)ᵀ H⁻¹ vec(∇_w f);   per-feature: ∂F/∂λ_j = −Σ_k w*_jk (H⁻¹∇_w f)_jk

    Outer ``{"lam": ()}`` (0-dim) or ``{"lam": (p,)}``. Default λ: 0.1 (binary), 0.05 (multiclass);
    per-feature defaults are uniform in [0.5λ, 1.5λ]. Losses accept ``batch=None`` or ``(X, y)``.
    """
    check_sizes(n=n, m=m, classes=classes)
    if p is not None:
        check_sizes(p=p)
    gen = generator(seed)
    if multiclass:
        if not 2 <= classes <= 10:
            raise ValueError(f"classes must be in 2..10 for the digits, got {classes}")
        if p is not None and p > 64:
            raise ValueError(f"p must be <= 64 for the digits (8×8 pixels), got {p}")
        X, y, Xv, yv = _digits_data(gen, n, m, p, classes, dtype)
        K = classes
        Y, Yv = Fn.one_hot(y, K).to(dtype), Fn.one_hot(yv, K).to(dtype)
    else:
        p = 5 if p is None else p
        X, y, Xv, yv = _binary_data(gen, n, m, p, dtype)
        K = 1
    p = X.shape[1]
    shape = (p,) if per_feature else ()
    base = 0.05 if multiclass else 0.1
    if lam is None:
        if per_feature:
            lam_t = (base * (0.5 + torch.rand(p, generator=gen, dtype=torch.float64))).to(dtype)
        else:
            lam_t = torch.tensor(base, dtype=dtype)
    else:
        lam_t = torch.as_tensor(lam, dtype=dtype).detach().clone()
        if lam_t.dim() == 0 and per_feature:
            lam_t = lam_t.expand(p).clone()
        if lam_t.shape != shape:
            raise ValueError(
                f"lam must have shape {shape} (per_feature={per_feature}), got {tuple(lam_t.shape)}"
            )
    if not bool((lam_t > 0).all()):
        raise ValueError("lam must be > 0 (it makes g strongly convex)")
    wkey = "W" if multiclass else "w"
    wshape = (p, K) if multiclass else (p,)
    d = p * K

    def reg(lam_: Tensor, w: Tensor) -> Tensor:
        lam_rows = lam_.reshape(-1, 1) if (multiclass and lam_.dim() == 1) else lam_
        return 0.5 * (lam_rows * w * w).sum()

    def data_loss(w: Tensor, Xb: Tensor, yb: Tensor) -> Tensor:
        if multiclass:
            return Fn.cross_entropy(Xb @ w, yb)
        return Fn.softplus(-yb * (Xb @ w)).mean()

    def batch_of(batch: Any, Xd: Tensor, yd: Tensor) -> tuple[Tensor, Tensor]:
        if batch is None:
            return Xd, yd
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise TypeError(f"logistic batch must be None or a tuple (X, y); got {type(batch).__name__}")
        return batch[0], batch[1]

    def inner_loss(inner: Params, outer: Params, batch: Any = None) -> Tensor:
        Xb, yb = batch_of(batch, X, y)
        w = inner[wkey]
        return data_loss(w, Xb, yb) + reg(outer["lam"], w)

    def outer_loss(inner: Params, outer: Params, batch: Any = None) -> Tensor:
        Xb, yb = batch_of(batch, Xv, yv)
        return data_loss(inner[wkey], Xb, yb)

    def lam_diag(lam_: Tensor) -> Tensor:
        return (
            (lam_.repeat_interleave(K) if lam_.dim() == 1 else lam_.expand(d))
            if multiclass
            else lam_.expand(d)
        )

    def grad_w(w: Tensor, lam_: Tensor) -> Tensor:
        """Flat ∇_w g."""
        if multiclass:
            P = torch.softmax(X @ w, dim=1)
            return (X.T @ (P - Y) / n).reshape(-1) + lam_diag(lam_) * w.reshape(-1)
        z = y * (X @ w)
        return -X.T @ (y * torch.sigmoid(-z)) / n + lam_diag(lam_) * w

    def hess(w: Tensor, lam_: Tensor) -> Tensor:
        if multiclass:
            P = torch.softmax(X @ w, dim=1)
            S = torch.diag_embed(P) - P[:, :, None] * P[:, None, :]  # n×K×K
            XX = (X[:, :, None] * X[:, None, :]).reshape(X.shape[0], p * p)
            H4 = (XX.T @ S.reshape(-1, K * K)).reshape(p, p, K, K)  # Σ_i x_il x_im S_i,jk at [l, m, j, k]
            H = H4.permute(0, 2, 1, 3).reshape(d, d) / n
        else:
            z = y * (X @ w)
            D = torch.sigmoid(z) * torch.sigmoid(-z)
            H = (X.T * D) @ X / n
        return H + torch.diag(lam_diag(lam_))

    def g_value(w: Tensor, lam_: Tensor) -> Tensor:
        return data_loss(w, X, y) + reg(lam_, w)

    tol = 1e-13 if dtype == torch.float64 else 1e-5

    def newton(lam_: Tensor) -> Tensor:
        """Damped Newton from 0: a step is taken when it lowers g or ‖∇g‖ (near w* g stops resolving)."""
        w = torch.zeros(wshape, dtype=dtype)
        gr = grad_w(w, lam_)
        for _ in range(100):
            gnorm = float(gr.norm())
            if gnorm <= tol:
                return w
            step = torch.linalg.solve(hess(w, lam_), gr).reshape(wshape)
            g0, slope, t = float(g_value(w, lam_)), float(gr @ step.reshape(-1)), 1.0
            while True:
                w_new = w - t * step
                gr_new = grad_w(w_new, lam_)
                if float(g_value(w_new, lam_)) <= g0 - 1e-4 * t * slope or float(gr_new.norm()) < gnorm:
                    break
                t *= 0.5
                if t < 1e-10:
                    raise RuntimeError(f"logistic: Newton line search failed at ‖∇g‖ = {gnorm:.2e}")
            w, gr = w_new, gr_new
        raise RuntimeError(f"logistic: Newton did not reach ‖∇g‖ <= {tol} in 100 iterations")

    def solve_inner(outer: Params) -> Params:
        lam_ = outer["lam"]
        with torch.no_grad():
            w = newton(lam_.detach())
        # One Newton step at w* with the graph to λ: same value, implicit derivative.
        w = w - torch.linalg.solve(hess(w, lam_), grad_w(w, lam_)).reshape(wshape)
        return {wkey: w}

    def value(outer: Params) -> Tensor:
        return outer_loss(solve_inner(outer), outer)

    def hypergrad(outer: Params) -> Params:
        lam_ = outer["lam"]
        with torch.no_grad():
            w = newton(lam_.detach())
        if multiclass:
            gf = (Xv.T @ (torch.softmax(Xv @ w, dim=1) - Yv) / m).reshape(-1)
        else:
            gf = -Xv.T @ (yv * torch.sigmoid(-yv * (Xv @ w))) / m
        v = torch.linalg.solve(hess(w, lam_), gf).reshape(wshape)
        prod = w * v
        if per_feature:
            g = prod.sum(1) if multiclass else prod
        else:
            g = prod.sum()
        return {"lam": -g}

    def inner_hessian(outer: Params) -> Tensor:
        with torch.no_grad():
            w = newton(outer["lam"].detach())
        return hess(w, outer["lam"])

    outer0 = {"lam": lam_t}
    mu, L = eig_range(inner_hessian(outer0))
    name = "logistic" + ("-multiclass" if multiclass else "") + ("-per_feature" if per_feature else "")
    return ReferenceProblem(
        name=name,
        problem=BilevelProblem(inner_loss, outer_loss),
        inner_init={wkey: torch.zeros(wshape, dtype=dtype)},
        outer=outer0,
        solve_inner=solve_inner,
        value=value,
        hypergrad=hypergrad,
        inner_hessian=inner_hessian,
        strongly_convex=True,
        mu=mu,
        L=L,
        data={"X": X, "y": y, "X_val": Xv, "y_val": yv, "classes": K if multiclass else 2},
    )
