"""IU: influence unlearning with the published WoodFisher approximation of the inverse Hessian (reference
§A.5)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unlearning.data_types import ArrayData, Task
from unlearning.methods.base import (
    Interval,
    LowerContext,
    Method,
    NoLowerLevelError,
    Params,
    Run,
    device_of,
    hparam,
)

#: The constant N of the published recursion: it damps every rank-1 update and bounds the number of
#: per-sample retain gradients used (N + 2).
WOODFISHER_N = 1000

_NO_LOWER = (
    "IU has no lower_loss: it is a one-shot perturbation θ_o + α·H⁻¹v computed from gradients at θ_o, "
    "not the minimiser of an objective, so there is no weighted loss whose optimum is IU's output; "
    "use FT or Retrain as the lower level for a worst-case search against IU"
)


def woodfisher_recursion(v: Tensor, grads: Iterable[Tensor], n: int = WOODFISHER_N) -> Tensor:
    """k ≈ H⁻¹ v by the published rank-1 recursion over per-sample gradients g_0, g_1, … (flat vectors):

        o ← g_0;  for j ≥ 1:  t = oᵀg_j,  k ← k − (kᵀg_j / (n + t))·o,  o ← o − (t / (n + t))·o

    with k starting at v; it stops after j > n (so at most n + 2 gradients are read). Equivalently
    k = A_J ⋯ A_1 v with A_j = I − c_{j−1} g_0 g_jᵀ / (n + c_{j−1} g_0ᵀg_j), c_0 = 1,
    c_j = c_{j−1} n / (n + c_{j−1} g_0ᵀg_j) (o = c_j g_0 stays parallel to g_0). Reproduced as published.
    """
    k = v.clone()
    o: Tensor | None = None
    for j, g in enumerate(grads):
        if o is None:
            o = g.clone()
        else:
            t = o @ g
            k = k - (k @ g) / (n + t) * o
            o = o - t / (n + t) * o
        if j > n:
            break
    return k


def summed_gradient(model: nn.Module, data: ArrayData, batch_size: int) -> Tensor:
    """Σ_{i∈data} ∇_θ ℓ(θ; x_i, y_i) as one flat vector (per-batch n_b·∇ mean_b ℓ, summed; unshuffled)."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = torch.zeros(sum(p.numel() for p in params), device=params[0].device, dtype=params[0].dtype)
    dev = params[0].device
    for x, y, _ in data.batches(batch_size):
        loss = F.cross_entropy(model(x.to(dev)), y.to(dev), reduction="sum")
        grads = torch.autograd.grad(loss, params)
        total += torch.cat([g.reshape(-1) for g in grads])
    return total


def per_sample_gradients(model: nn.Module, data: ArrayData, batch_size: int, limit: int) -> Iterator[Tensor]:
    """Flat ∇_θ ℓ(θ; x_i, y_i) for the first ``limit`` examples of ``data``, in order (torch.func.vmap)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    dev = device_of(model)

    def loss_one(p: Params, x: Tensor, y: Tensor) -> Tensor:
        logits = torch.func.functional_call(model, (p, buffers), (x.unsqueeze(0),), strict=False)
        return F.cross_entropy(logits, y.unsqueeze(0))

    per_sample = torch.func.vmap(torch.func.grad(loss_one), in_dims=(None, 0, 0))
    seen = 0
    for x, y, _ in data.batches(batch_size):
        if seen >= limit:
            return
        x, y = x[: limit - seen].to(dev), y[: limit - seen].to(dev)
        grads = per_sample(params, x, y)
        rows = torch.cat([grads[n].reshape(x.shape[0], -1) for n in names], dim=1)
        seen += x.shape[0]
        yield from rows


def flat_mask(model: nn.Module, mask: Params | None) -> Tensor | None:
    """The mask as one flat 0/1 vector in parameter order (parameters absent from the mask are kept: 1)."""
    if mask is None:
        return None
    parts = [
        (mask[n].to(p.device, p.dtype) if n in mask else torch.ones_like(p)).reshape(-1)
        for n, p in model.named_parameters()
        if p.requires_grad
    ]
    return torch.cat(parts)


@dataclass
class IU(Method):
    """Influence unlearning, one shot: θ_u = θ_o + α·k (θ_o + α·(k ⊙ m) with a saliency mask m), where

        v = (1/N) Σ_{D_f} ∇ℓ_i − N_f/(N N_r) Σ_{D_r} ∇ℓ_i = (N_f/N)(mean_f ∇ℓ − mean_r ∇ℓ)

    and k = `woodfisher_recursion` (v, per-sample retain gradients in order, n = 1000). All gradients at θ_o
    in eval mode, without augmentation.

    Defaults: digits/MLP α = 50; paper α ∈ [1, 20] (users report α < 1 on some models).

    ``lower_loss``: none (raises `NoLowerLevelError`); IU is not the minimiser of an objective.
    """

    name: ClassVar[str] = "iu"
    alpha: float = hparam(
        50.0, Interval(float, 0, None, closed="neither"), "step α along the influence direction"
    )
    batch_size: int | None = hparam(
        None, Interval(int, 1, None, allow_none=True), "batch size of the gradient passes"
    )

    def _unlearn(self, model: nn.Module, task: Task, run: Run) -> tuple[nn.Module, dict]:
        model.eval()
        forget, retain = task.forget, task.retain
        size = self.batch_size or task.batch_size
        n_f, n_r = len(forget), len(retain)
        n = n_f + n_r
        v = summed_gradient(model, forget, size) / n - summed_gradient(model, retain, size) * (
            n_f / (n * n_r)
        )
        k = woodfisher_recursion(v, per_sample_gradients(model, retain, size, WOODFISHER_N + 2), WOODFISHER_N)
        m = flat_mask(model, run.mask)
        step = self.alpha * (k if m is None else k * m)
        with torch.no_grad():
            params = [p for p in model.parameters() if p.requires_grad]
            torch.nn.utils.vector_to_parameters(torch.nn.utils.parameters_to_vector(params) + step, params)
        return model, {"k_norm": float(k.norm()), "v_norm": float(v.norm())}

    def _bind(self, model: nn.Module, task: Task) -> LowerContext:
        raise NoLowerLevelError(_NO_LOWER)

    def lower_loss(self, params: Params, buffers: Params, batch, weights: Tensor) -> Tensor:
        raise NoLowerLevelError(_NO_LOWER)
