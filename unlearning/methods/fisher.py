"""FF: Fisher forgetting (Golatkar et al., 2020) with the rule of the SalUn code's ``fisher`` (reference
§A; the worst-case paper lists it among the baselines)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from unlearning.data_types import Task
from unlearning.methods.base import Interval, LowerContext, Method, NoLowerLevelError, Params, Run, hparam
from unlearning.methods.influence import flat_mask, per_sample_gradients

_OFFSET = 1301
#: the ε the published code adds to every per-sample derivative before squaring it
FISHER_EPS = 1e-8

_NO_LOWER = (
    "FF has no lower_loss: it adds Gaussian noise scaled by the retain set's Fisher information to θ_o in "
    "one shot, it is not the minimiser of an objective; use FT or Retrain as the lower level for a "
    "worst-case search against FF"
)


def fisher_diagonal(model: nn.Module, data, batch_size: int) -> Tensor:
    """The published diagonal Fisher estimate, one flat vector in parameter order:

        F_j = (1/N) Σ_{i ≤ N} (∂_j log p_θ(y_i | x_i) + ε)²,   ε = `FISHER_EPS`,

    from per-sample gradients of the true-class log-probability (= −∇ℓ_i) at θ, eval mode, unshuffled,
    without augmentation."""
    total: Tensor | None = None
    for g in per_sample_gradients(model, data, batch_size, len(data)):
        term = (-g + FISHER_EPS) ** 2
        total = term if total is None else total + term
    if total is None:
        raise ValueError("FF needs a non-empty retain set to estimate the Fisher information")
    return total / len(data)


@dataclass
class FF(Method):
    """Fisher forgetting, one shot: θ_u = θ_o + σ ⊙ ε, ε ~ N(0, I) (seeded by the task), with

        σ_j = c_j · min(√(α / F_j), σ_max),   c_j = 10 if parameter j's tensor has last dimension K, else 1,

    F = `fisher_diagonal` on D_r at θ_o (the published ``fisher``: σ_max = 1e-3, and the ×10 for tensors whose
    last dimension is 10, CIFAR-10's class count, which here is the task's K). With a saliency mask m the
    noise is σ ⊙ ε ⊙ m.

    Defaults: α = 0.2 and σ_max = 1e-3, the published values (``--alpha`` 0.2; the clamp is a constant there).
    Because of the clamp, σ_j = σ_max wherever F_j < α/σ_max² (2e5 at the defaults), i.e. nearly everywhere:
    the published FF adds noise of standard deviation 1e-3 (1e-2 on the K-sized tensors).

    ``lower_loss``: none (raises `NoLowerLevelError`).
    """

    name: ClassVar[str] = "ff"
    #: the stress test's ``tune=True`` grid (`unlearning.stress.tune_grid`): α hardly matters under the clamp,
    #: σ_max sets the noise
    tune_grid: ClassVar[dict[str, tuple]] = {"max_std": (1e-3, 3e-3, 1e-2)}
    alpha: float = hparam(0.2, Interval(float, 0, None, closed="neither"), "noise scale α (σ² = α / F)")
    max_std: float = hparam(
        1e-3, Interval(float, 0, None, closed="neither"), "largest noise standard deviation σ_max (clamp)"
    )
    batch_size: int | None = hparam(
        None, Interval(int, 1, None, allow_none=True), "batch size of the per-sample gradient passes"
    )

    def _unlearn(self, model: nn.Module, task: Task, run: Run) -> tuple[nn.Module, dict]:
        model.eval()
        fisher = fisher_diagonal(model, task.retain, self.batch_size or task.batch_size)
        params = [p for p in model.parameters() if p.requires_grad]
        generator = task.generator(_OFFSET)
        m = flat_mask(model, run.mask)
        parts, start = [], 0
        for p in params:
            f = fisher[start : start + p.numel()].reshape(p.shape)
            start += p.numel()
            std = torch.sqrt(self.alpha / f).clamp(max=self.max_std)
            if p.shape[-1] == task.num_classes:
                std = std * 10
            noise = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
            parts.append((std * noise).reshape(-1))
        step = torch.cat(parts)
        step = step if m is None else step * m
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(torch.nn.utils.parameters_to_vector(params) + step, params)
        return model, {"noise_norm": float(step.norm()), "fisher_mean": float(fisher.mean())}

    def _bind(self, model: nn.Module, task: Task) -> LowerContext:
        raise NoLowerLevelError(_NO_LOWER)

    def lower_loss(self, params: Params, buffers: Params, batch, weights: Tensor) -> Tensor:
        raise NoLowerLevelError(_NO_LOWER)
