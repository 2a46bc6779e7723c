"""ℓ1-sparse: sparsity-aware unlearning, fine-tuning with a decaying ℓ1 penalty (reference §A.7)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from bilevel.validate import Interval
from unlearning.data_types import Task
from unlearning.loop import ce_loss
from unlearning.methods.base import LowerContext, Params, Run, epochs_hp, forward, hparam, lr_hp, retain_mean
from unlearning.methods.common import Iterative, per_sample_ce

_OFFSET = 601


def l1_norm(params: Any) -> Tensor:
    """‖θ‖₁ over all the given tensors (every parameter: weights, biases, BatchNorm)."""
    return torch.stack([p.abs().sum() for p in params]).sum()


@dataclass
class L1Sparse(Iterative):
    """Fine-tune on D_r with a linearly decayed ℓ1 penalty: at epoch t (0-based) of E, descend
    mean_B ℓ(θ; x, y) + γ_t ‖θ‖₁ over B ⊂ D_r, with γ_t = γ (1 − t/E) and ‖θ‖₁ over all parameters.

    Defaults: digits/MLP 10 epochs, lr 0.05, γ = 5e-4; paper (CIFAR-10) 10 epochs, lr 0.01, γ ∈ [5e-5, 1e-4].

    ``lower_loss`` = mean_r^w ℓ(θ; x, y) + γ‖θ‖₁ (γ at t = 0; the decay is a schedule of the run, not part of
    the objective), from θ_o.
    """

    name: ClassVar[str] = "l1_sparse"
    label: ClassVar[str] = "l1-sparse"
    stream: ClassVar[int] = _OFFSET
    epochs: int = epochs_hp(10)
    lr: float = lr_hp(0.05)
    gamma: float = hparam(5e-4, Interval(float, 0, None), "initial ℓ1 weight γ (decays linearly to 0)")

    def penalty(self, epoch: int) -> float:
        """γ_t = γ (1 − t/E)."""
        return self.gamma * (1.0 - epoch / max(self.epochs, 1))

    def _unlearn(self, model: nn.Module, task: Task, run: Run) -> tuple[nn.Module, dict]:
        def loss(module: nn.Module, item: Any, epoch: int) -> Tensor:
            return ce_loss(module, item, epoch) + self.penalty(epoch) * l1_norm(module.parameters())

        self.descend(model, run.hooks, loss, self.shuffled(task, task.retain))
        return model.eval(), {}

    def _lower_loss(
        self,
        ctx: LowerContext,
        params: Params,
        buffers: Params,
        x: Tensor,
        y: Tensor,
        index: Tensor,
        weights: Tensor,
    ) -> Tensor:
        fit = retain_mean(per_sample_ce(forward(ctx, params, buffers, x), y), index, weights)
        full = {**ctx.params, **params}
        return fit + self.gamma * l1_norm(full.values())
