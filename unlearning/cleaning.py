"""Data hyper-cleaning on digits: learn per-sample weights that find mislabelled training examples.

The bi-level problem (Franceschi et al. 2017, with the worst-case paper's constraint set):

    min_{w ∈ [0,1]^n, Σw = k}  F(w) = CE(θ*(w); D_val)
    s.t.  θ*(w) = argmin_θ  (1/k) Σ_i w_i CE(θ; x_i, y_i) + (C/2)‖θ‖²

with a multinomial logistic-regression θ (strongly convex inner problem, so implicit differentiation is exact)
and a fraction of the training labels flipped. The weights live on the same capped simplex as the worst-case
forget-set search (`bilevel.CappedSimplex`), binarised at the end by `bilevel.top_k`. A correct hypergradient
pushes the weights of the corrupted examples to 0: the share of corrupted examples among the k kept measures
it, and so does the test accuracy of a model retrained on the kept examples.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

import bilevel
from bilevel import BilevelProblem, CappedSimplex, optim, top_k

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


def make_data(
    *, noise: float, seed: int, n_train: int = 800, n_val: int = 300, device: str = "cpu"
) -> CleaningData:
    """Digits (sklearn, bundled) split into train / validation / test; ``noise`` of the training labels are
    replaced by a different class drawn uniformly."""
    from sklearn.datasets import load_digits

    if not 0 <= noise < 1:
        raise ValueError(f"noise must be in [0, 1), got {noise}")
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float64)
    y = torch.tensor(y, dtype=torch.int64)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    tr, va, te = perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]
    y_obs = y[tr].clone()
    corrupted = torch.rand(n_train, generator=g) < noise
    shift = torch.randint(1, 10, (n_train,), generator=g)
    y_obs[corrupted] = (y_obs[corrupted] + shift[corrupted]) % 10
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


def fit_weighted(data: CleaningData, w: Tensor, *, C: float, steps: int = 300) -> dict[str, Tensor]:
    """θ*(w) by heavy-ball gradient descent (the inner problem is strongly convex)."""
    k = float(w.sum())
    problem = make_problem(data, k=k, C=C)
    theta = {
        "W": torch.zeros(data.x_train.shape[1], 10, dtype=data.x_train.dtype, device=data.x_train.device),
        "b": torch.zeros(10, dtype=data.x_train.dtype, device=data.x_train.device),
    }
    return bilevel.solve_inner(problem, optim.SGD(lr=1.0, momentum=0.9), steps, theta, {"w": w})


def accuracy(theta: dict[str, Tensor], x: Tensor, y: Tensor) -> float:
    return float(((x @ theta["W"] + theta["b"]).argmax(1) == y).double().mean() * 100)


def make_solver(name: str, inner_steps: int) -> Any:
    opt = optim.SGD(lr=1.0, momentum=0.9)
    if name == "implicit":
        return bilevel.Implicit(opt, steps=inner_steps, linear_solver=bilevel.CG(max_iter=50, tol=1e-8))
    if name == "unrolled":
        return bilevel.Unrolled(opt, steps=inner_steps)
    if name == "first_order":
        return bilevel.FirstOrder(opt, steps=inner_steps, mode="identity")
    raise ValueError(f"solver must be one of {SOLVERS}, got {name!r}")


def run(
    *,
    seed: int = 0,
    noise: float = 0.4,
    outer_steps: int = 60,
    inner_steps: int = 40,
    solver: str = "implicit",
    outer_lr: float = 0.05,
    C: float = 1e-3,
    device: str = "cpu",
    progress: Any = None,
) -> dict[str, Any]:
    """Run hyper-cleaning and return the results (all numbers are plain floats, JSON-ready)."""
    torch.manual_seed(seed)
    data = make_data(noise=noise, seed=seed, device=device)
    n = data.x_train.shape[0]
    k = float(round((1 - noise) * n))
    problem = make_problem(data, k=k, C=C)
    constraint = CappedSimplex(k)
    w0 = constraint.project(torch.full((n,), k / n, dtype=torch.float64, device=data.x_train.device))
    theta0 = {
        "W": torch.zeros(64, 10, dtype=torch.float64, device=data.x_train.device),
        "b": torch.zeros(10, dtype=torch.float64, device=data.x_train.device),
    }
    curve: list[dict[str, float]] = []

    def callback(step: int, outer: dict[str, Tensor], hg: bilevel.Hypergrad) -> None:
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

    started = time.perf_counter()
    result = bilevel.minimize(
        problem,
        make_solver(solver, inner_steps),
        {"w": w0},
        optim.Adam(lr=outer_lr),
        steps=outer_steps,
        constraint=constraint,
        callback=callback,
        inner_init=theta0,
    )
    seconds = time.perf_counter() - started
    w = result.outer["w"]
    kept = top_k(w, int(k))
    uniform = fit_weighted(data, torch.ones(n, dtype=torch.float64, device=w.device), C=C)
    cleaned = fit_weighted(data, kept, C=C)
    oracle = fit_weighted(data, (~data.corrupted).double(), C=C)
    return {
        "config": {
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
        },
        "corrupted_pct_in_train": float(data.corrupted.double().mean() * 100),
        "corrupted_pct_in_kept": float(data.corrupted[kept.bool()].double().mean() * 100),
        "test_accuracy": {
            "all_examples": accuracy(uniform, data.x_test, data.y_test),
            "kept_by_bilevel": accuracy(cleaned, data.x_test, data.y_test),
            "oracle_clean": accuracy(oracle, data.x_test, data.y_test),
        },
        "mean_weight": {
            "clean": float(w[~data.corrupted].mean()),
            "corrupted": float(w[data.corrupted].mean()),
        },
        "seconds": seconds,
        "curve": curve,
        "weights": w.cpu().tolist(),
        "corrupted": data.corrupted.cpu().tolist(),
    }
