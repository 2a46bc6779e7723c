"""FT: fine-tune on the retain set (reference §A.2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from unlearning.data_types import Task
from unlearning.loop import ce_loss
from unlearning.methods.base import LowerContext, Params, Run, epochs_hp, forward, lr_hp, retain_mean
from unlearning.methods.common import Iterative, per_sample_ce

_OFFSET = 201


@dataclass
class FT(Iterative):
    """Fine-tune θ_o on D_r by SGD: θ ← θ − η ∇ mean_B ℓ(θ; x, y), B ⊂ D_r, for E epochs.

    Defaults: digits/MLP 10 epochs, lr 0.05; paper (CIFAR-10) 10 epochs, lr 0.01, search [0.01, 0.1].

    ``lower_loss`` = mean_r^w ℓ(θ; x, y) = Σ(1−w_i)ℓ_i / Σ(1−w_i) on a full batch, from θ_o.
    """

    name: ClassVar[str] = "ft"
    label: ClassVar[str] = "FT"
    stream: ClassVar[int] = _OFFSET
    epochs: int = epochs_hp(10)
    lr: float = lr_hp(0.05)

    def _unlearn(self, model: nn.Module, task: Task, run: Run) -> tuple[nn.Module, dict]:
        self.descend(model, run.hooks, ce_loss, self.shuffled(task, task.retain))
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
        return retain_mean(per_sample_ce(forward(ctx, params, buffers, x), y), index, weights)
