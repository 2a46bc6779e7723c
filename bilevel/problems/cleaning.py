"""Data hyper-cleaning: learn per-sample weights that find mislabelled training examples.

The bi-level problem (Franceschi et al. 2017, with the worst-case forget-set paper's constraint set):

    min_{w ∈ [0,1]^n, Σw = k}  F(w) = CE(θ*(w); D_val)
    s.t.  θ*(w) = argmin_θ  (1/k) Σ_i w_i CE(θ; x_i, y_i) + (C/2)‖θ‖²

with a multinomial logistic-regression θ = (W, b) (a strongly convex inner problem, so implicit
differentiation is exact) and a fraction of the training labels flipped. The weights live on the capped
simplex (`bilevel.CappedSimplex`) and are binarised at the end by `bilevel.top_k`. A correct hypergradient
pushes the weights of the corrupted examples to 0: the share of corrupted examples among the k kept measures
it, and so does the test accuracy of a model retrained on the kept examples.

Torch only: `run` takes the rows ``X`` and labels ``y`` of a labelled data set (``worstforget hyperclean``
passes scikit-learn's digits, scaled to [0, 1]) and does the split, the label noise and the optimisation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..constraints import CappedSimplex, top_k
from ..first_order import FirstOrder
from ..hypergrad import Hypergrad, Solver
from ..implicit import Implicit
from ..inner import solve_inner
from ..linear_solvers import CG
from ..optim import SGD, Adam
from ..outer_loop import minimize
from ..problem import BilevelProblem
from ..unrolled import Unrolled

SOLVERS = ("implicit", "unrolled", "first_order")


@dataclass(frozen=True)
class CleaningData:
    x_train: Tensor
    y_train: Tensor  # the observed (partly corrupted) labels
    corrupted: Tensor  # bool, True where the label was flipped
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor

    @property
    def classes(self) -> int:
        return 1 + int(max(int(self.y_train.max()), int(self.y_val.max()), int(self.y_test.max())))


def make_data(
    X: Tensor,
    y: Tensor,
    *,
    noise: float,
    seed: int,
    n_train: int = 800,
    n_val: int = 300,
    device: str | torch.device = "cpu",
) -> CleaningData:
    """Rows ``X`` (float64) and labels ``y`` split into train / validation / test by a permutation seeded by
    ``seed``; ``noise`` of the training labels are replaced by a different class, drawn uniformly."""
    if not 0 <= noise < 1:
        raise ValueError(f"noise must be in [0, 1), got {noise}")
    if n_train + n_val >= len(y):
        raise ValueError(f"n_train + n_val must leave test rows: {n_train} + {n_val} >= {len(y)} rows")
    classes = 1 + int(y.max())
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    tr, va, te = perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]
    y_obs = y[tr].clone()
    corrupted = torch.rand(n_train, generator=g) < noise
    shift = torch.randint(1, classes, (n_train,), generator=g)
    y_obs[corrupted] = (y_obs[corrupted] + shift[corrupted]) % classes
    d = torch.device(device)
    return CleaningData(
        X[tr].to(d), y_obs.to(d), corrupted.to(d), X[va].to(d), y[va].to(d), X[te].to(d), y[te].to(d)
    )


def make_problem(data: CleaningData, *, k: float, C: float) -> BilevelProblem:
    """The hyper-cleaning `BilevelProblem` over inner ``{"W", "b"}`` and outer ``{"w"}``."""

    def logits(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return x @ p["W"] + p["b"]

    def inner_loss(p: dict[str, Tensor], o: dict[str, Tensor], batch: Any) -> Tensor:
        ce = nn.functional.cross_entropy(logits(p, data.x_train), data.y_train, reduction="none")
        return (o["w"] * ce).sum() / k + 0.5 * C * ((p["W"] ** 2).sum() + (p["b"] ** 2).sum())

    def outer_loss(p: dict[str, Tensor], o: dict[str, Tensor], batch: Any) -> Tensor:
        return nn.functional.cross_entropy(logits(p, data.x_val), data.y_val)

    return BilevelProblem(inner_loss, outer_loss)


def zero_model(data: CleaningData) -> dict[str, Tensor]:
    """θ = (W, b) = 0: d × classes and classes entries, in the data's dtype and device."""
    x = data.x_train
    return {
        "W": torch.zeros(x.shape[1], data.classes, dtype=x.dtype, device=x.device),
        "b": torch.zeros(data.classes, dtype=x.dtype, device=x.device),
    }


def fit_weighted(data: CleaningData, w: Tensor, *, C: float, steps: int = 300) -> dict[str, Tensor]:
    """θ*(w) by heavy-ball gradient descent from 0 (the inner problem is strongly convex)."""
    problem = make_problem(data, k=float(w.sum()), C=C)
    return solve_inner(problem, SGD(lr=1.0, momentum=0.9), steps, zero_model(data), {"w": w})


def accuracy(theta: dict[str, Tensor], x: Tensor, y: Tensor) -> float:
    return float(((x @ theta["W"] + theta["b"]).argmax(1) == y).double().mean() * 100)


def make_solver(name: str, inner_steps: int) -> Solver:
    """The hypergradient solver ``name`` (one of `SOLVERS`), every one with ``inner_steps`` heavy-ball steps
    (lr 1, momentum 0.9) on the inner problem."""
    opt = SGD(lr=1.0, momentum=0.9)
    if name == "implicit":
        return Implicit(opt, steps=inner_steps, linear_solver=CG(max_iter=50, tol=1e-8))
    if name == "unrolled":
        return Unrolled(opt, steps=inner_steps)
    if name == "first_order":
        return FirstOrder(opt, steps=inner_steps, mode="identity")
    raise ValueError(f"solver must be one of {SOLVERS}, got {name!r}")


def _recorder(
    data: CleaningData, k: float, outer_steps: int, progress: Callable[[int, int], Any] | None
) -> tuple[list[dict[str, float]], Callable[[int, dict[str, Tensor], Hypergrad], None]]:
    """The learning curve (one point per outer step) and the `minimize` callback that fills it."""
    curve: list[dict[str, float]] = []

    def callback(step: int, outer: dict[str, Tensor], hg: Hypergrad) -> None:
        kept = top_k(outer["w"], int(k)).bool()
        curve.append(
            {
                "step": step + 1,
                "val_loss": hg.value,
                "corrupted_pct_in_kept": float(data.corrupted[kept].double().mean() * 100),
                "hypergrad_seconds": float(hg.info["seconds"]),
            }
        )
        if progress is not None:
            progress(step + 1, outer_steps)

    return curve, callback


def _evaluate(data: CleaningData, w: Tensor, k: float, C: float) -> dict[str, Any]:
    """What the weights ``w`` found: mislabelled shares, mean weights, and the test accuracy of models fitted
    on every example, on the k kept (top-k of ``w``) and on the clean ones only (the oracle)."""
    kept = top_k(w, int(k))
    ones = torch.ones(w.shape[0], dtype=torch.float64, device=w.device)
    fits = {
        "all_examples": fit_weighted(data, ones, C=C),
        "kept_by_bilevel": fit_weighted(data, kept, C=C),
        "oracle_clean": fit_weighted(data, (~data.corrupted).double(), C=C),
    }
    return {
        "corrupted_pct_in_train": float(data.corrupted.double().mean() * 100),
        "corrupted_pct_in_kept": float(data.corrupted[kept.bool()].double().mean() * 100),
        "test_accuracy": {name: accuracy(theta, data.x_test, data.y_test) for name, theta in fits.items()},
        "mean_weight": {
            "clean": float(w[~data.corrupted].mean()),
            "corrupted": float(w[data.corrupted].mean()),
        },
    }


def run(
    X: Tensor,
    y: Tensor,
    *,
    seed: int = 0,
    noise: float = 0.4,
    outer_steps: int = 60,
    inner_steps: int = 40,
    solver: str = "implicit",
    outer_lr: float = 0.05,
    C: float = 1e-3,
    device: str = "cpu",
    progress: Callable[[int, int], Any] | None = None,
    n_train: int = 800,
    n_val: int = 300,
) -> dict[str, Any]:
    """Hyper-cleaning on rows ``X`` (float64) and labels ``y``: `make_data`, then ``outer_steps`` of projected
    Adam (lr ``outer_lr``) on w from the uniform k/n, k = round((1 − noise)·n), each hypergradient by
    ``solver`` from θ = 0. Returns the results (plain floats, JSON-ready); ``progress(done, total)`` is called
    after every outer step. ``n_train``, ``n_val``: the split's training and validation rows (the rest are
    the test rows)."""
    torch.manual_seed(seed)
    data = make_data(X, y, noise=noise, seed=seed, n_train=n_train, n_val=n_val, device=device)
    n = data.x_train.shape[0]
    k = float(round((1 - noise) * n))
    constraint = CappedSimplex(k)
    w0 = constraint.project(torch.full((n,), k / n, dtype=torch.float64, device=data.x_train.device))
    curve, callback = _recorder(data, k, outer_steps, progress)
    started = time.perf_counter()
    result = minimize(
        make_problem(data, k=k, C=C),
        make_solver(solver, inner_steps),
        {"w": w0},
        Adam(lr=outer_lr),
        steps=outer_steps,
        constraint=constraint,
        callback=callback,
        inner_init=zero_model(data),
    )
    seconds = time.perf_counter() - started
    w = result.outer["w"]
    config = {
        "seed": seed,
        "noise": noise,
        "outer_steps": outer_steps,
        "inner_steps": inner_steps,
        "solver": solver,
        "outer_lr": outer_lr,
        "C": C,
        "budget_k": k,
        "n_train": n,
        "device": device,
    }
    return {
        "config": config,
        **_evaluate(data, w, k, C),
        "seconds": seconds,
        "curve": curve,
        "weights": w.cpu().tolist(),
        "corrupted": data.corrupted.cpu().tolist(),
    }
