"""Data re-weighting of a small network: one weight σ(x_i) per training example, learned on a validation loss.

The problem (the re-weighting workload of the speed benchmarks and of ``worstforget bench --problem
mlp-reweight``), on training rows (a_i, b_i), i = 1..n, and validation rows (a_j^val, b_j^val), j = 1..m:

    g(θ, x) = (1/n) Σ_i σ(x_i) CE(f_θ(a_i), b_i) + (wd/2)‖θ‖²      (inner; the decay term only when wd ≠ 0)
    f(θ, x) = (1/m) Σ_j CE(f_θ(a_j^val), b_j^val)                   (outer; x enters through θ*(x) only)
    ∇_x F   = −(∂²g/∂x∂θ) H⁻¹ ∇_θ f  at θ*(x),   H = ∇²_θθ g          (implicit)
    ∂²g/∂x_i∂θ = (1/n) σ'(x_i) ∇_θ CE(f_θ(a_i), b_i)

f_θ is any model ``model(params, inputs) -> logits``; the default, `mlp`, is a ReLU network over the linear
layers in ``params`` (in order). The inner problem is non-convex for an MLP: no closed form, and its Hessian
can be indefinite away from a minimum (use a damped CG, or the T-step unroll as the reference).

Everything here takes tensors: the caller loads and splits its data (the CLI and the benchmarks load digits
themselves). `Reweighting` is the problem; `mlp_reweighting` builds a seeded instance from a pool of rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import Tensor

from ..problem import BilevelProblem
from ._base import Params, check_sizes


def mlp(params: Params, inputs: Tensor) -> Tensor:
    """A ReLU network over the linear layers of ``params``, in order: ``(W₁, b₁, W₂, b₂, …)`` gives
    ``W_L ReLU(… ReLU(W₁ a + b₁) …) + b_L`` (``F.linear`` per layer, the rows of ``inputs`` as a batch)."""
    tensors = list(params.values())
    if not tensors or len(tensors) % 2:
        raise ValueError(
            f"mlp: params must hold (weight, bias) pairs, one per linear layer; got {len(tensors)} tensors "
            f"({list(params)})"
        )
    out = inputs
    for i in range(0, len(tensors), 2):
        if i:
            out = F.relu(out)
        out = F.linear(out, tensors[i], tensors[i + 1])
    return out


@dataclass(frozen=True, eq=False)
class Reweighting:
    """The re-weighting problem on fixed data (see the module docstring): outer ``{"x": (n,)}`` (the logits
    of the weights), inner the parameters of ``model``.

    ``X``, ``y``: the n training rows and labels; ``X_val``, ``y_val``: the validation rows;
    ``weight_decay``: wd; ``model(params, inputs) -> logits``: f_θ (default `mlp`).
    """

    X: Tensor
    y: Tensor
    X_val: Tensor
    y_val: Tensor
    weight_decay: float = 0.0
    model: Callable[[Params, Tensor], Tensor] = field(default=mlp)

    def __post_init__(self) -> None:
        if self.X.shape[0] != self.y.shape[0] or self.X_val.shape[0] != self.y_val.shape[0]:
            raise ValueError(
                f"Reweighting: X and y (and X_val and y_val) need one label per row; got {self.X.shape[0]} "
                f"and {self.y.shape[0]} ({self.X_val.shape[0]} and {self.y_val.shape[0]})"
            )
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")

    @property
    def n(self) -> int:
        """Training rows: one outer entry each."""
        return self.X.shape[0]

    def inner_value(self, params: Params, logits: Tensor) -> Tensor:
        """g(θ, x) = (1/n) Σ_i σ(x_i) CE(f_θ(a_i), b_i) + (wd/2)‖θ‖²."""
        ce = F.cross_entropy(self.model(params, self.X), self.y, reduction="none")
        loss = (torch.sigmoid(logits) * ce).sum() / self.n
        if self.weight_decay:
            loss = loss + 0.5 * self.weight_decay * sum((p * p).sum() for p in params.values())
        return loss

    def outer_value(self, params: Params) -> Tensor:
        """f(θ) = (1/m) Σ_j CE(f_θ(a_j^val), b_j^val)."""
        return F.cross_entropy(self.model(params, self.X_val), self.y_val)

    @cached_property
    def problem(self) -> BilevelProblem:
        """The `BilevelProblem` over outer ``{"x"}`` (the losses ignore ``batch``: the data is fixed)."""
        return BilevelProblem(
            inner_loss=lambda inner, outer, batch: self.inner_value(inner, outer["x"]),
            outer_loss=lambda inner, outer, batch: self.outer_value(inner),
        )


@dataclass(frozen=True, eq=False)
class ReweightingInstance:
    """A seeded `Reweighting` with its start: ``inner_init`` (θ₀) and ``outer`` (``{"x": x₀}``)."""

    task: Reweighting
    inner_init: Params
    outer: Params
    hidden: int

    @property
    def problem(self) -> BilevelProblem:
        return self.task.problem

    @property
    def inner_numel(self) -> int:
        return sum(v.numel() for v in self.inner_init.values())


def mlp_init(sizes: tuple[int, ...], gen: torch.Generator) -> Params:
    """Float64 parameters ``W1, b1, W2, b2, …`` of an MLP with layer widths ``sizes``: every weight uniform
    in ±1/√fan_in (drawn from ``gen`` layer by layer), every bias 0."""
    params: Params = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        bound = 1.0 / math.sqrt(fan_in)
        params[f"W{i}"] = (2 * torch.rand(fan_out, fan_in, generator=gen, dtype=torch.float64) - 1) * bound
        params[f"b{i}"] = torch.zeros(fan_out, dtype=torch.float64)
    return params


def mlp_reweighting(
    X_pool: Tensor,
    y_pool: Tensor,
    X_val: Tensor,
    y_val: Tensor,
    *,
    n: int,
    hidden: int,
    weight_decay: float = 0.0,
    classes: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> ReweightingInstance:
    """An MLP ``d-hidden-classes`` re-weighting instance, deterministic under ``seed``.

    With one generator seeded by ``seed``, in this order: n training rows drawn from the pool without
    replacement (``randperm``); inputs flattened, standardised by the training rows' mean and standard
    deviation (clamped at 1e-3), the validation rows likewise; θ₀ by `mlp_init`; x₀ ~ N(0, 0.25) per row.
    ``classes``: default ``1 + max label``. The tensors end on ``device`` in ``dtype`` (labels stay int).
    """
    check_sizes(n=n, hidden=hidden)
    if n > X_pool.shape[0]:
        raise ValueError(f"n must be at most the pool's {X_pool.shape[0]} rows, got {n}")
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randperm(X_pool.shape[0], generator=gen)[:n]
    X, y = X_pool[rows].flatten(1).double(), y_pool[rows]
    Xv = X_val.flatten(1).double()
    mean, std = X.mean(0), X.std(0).clamp_min(1e-3)
    X, Xv = (X - mean) / std, (Xv - mean) / std
    if classes is None:
        classes = 1 + int(max(int(y_pool.max()), int(y_val.max())))
    params = mlp_init((X.shape[1], hidden, classes), gen)
    logits = 0.5 * torch.randn(n, generator=gen, dtype=torch.float64)

    def on(t: Tensor) -> Tensor:
        return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)

    task = Reweighting(on(X), on(y), on(Xv), on(y_val), weight_decay=weight_decay)
    return ReweightingInstance(
        task=task,
        inner_init={k: on(v) for k, v in params.items()},
        outer={"x": on(logits)},
        hidden=hidden,
    )
