"""GA: gradient ascent on the forget set (reference §A.3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from unlearning.data_types import Task
from unlearning.methods.base import LowerContext, Params, Run, epochs_hp, forget_mean, forward, lr_hp
from unlearning.methods.common import Iterative, per_sample_ce

_OFFSET = 301


def negative_ce_loss(model: nn.Module, item: Any, epoch: int) -> Tensor:
    """−mean_B ℓ(θ; x, y): descending it ascends the forget loss."""
    x, y = item[0], item[1]
    dev = next(model.parameters()).device
    return -F.cross_entropy(model(x.to(dev)), y.to(dev))


@dataclass
class GA(Iterative):
    """Gradient ascent on D_f: θ ← θ + η ∇ mean_B ℓ(θ; x, y), B ⊂ D_f (SGD on −ℓ), for E epochs.

    Defaults: digits/MLP 5 epochs, lr 0.01; paper (CIFAR-10) 5 epochs, lr 1e-4 (class-wise), search
    [1e-5, 1e-3].

    ``lower_loss`` = −mean_f^w ℓ(θ; x, y) = −Σ w_i ℓ_i / Σ w_i on a full batch, from θ_o (unbounded below:
    meaningful for a few steps only, as GA itself).
    """

    name: ClassVar[str] = "ga"
    label: ClassVar[str] = "GA"
    stream: ClassVar[int] = _OFFSET
    epochs: int = epochs_hp(5)
    lr: float = lr_hp(0.01)

    def _unlearn(self, model: nn.Module, task: Task, run: Run) -> tuple[nn.Module, dict]:
        self.descend(model, run.hooks, negative_ce_loss, self.shuffled(task, task.forget))
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
        return -forget_mean(per_sample_ce(forward(ctx, params, buffers, x), y), index, weights)
