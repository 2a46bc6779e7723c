"""Pieces the iterative methods share: their common hyper-parameters, batching, cross-entropy,
re-initialisation."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unlearning.data_types import ArrayData, Task
from unlearning.methods.base import Interval, Method, epochs_hp, hparam, lr_hp
from unlearning.rng import seeded


@dataclass
class Iterative(Method):
    """A method that runs SGD (momentum 0.9, weight decay 5e-4 as published) through ``loop.run_epochs``."""

    epochs: int = epochs_hp(10)
    lr: float = lr_hp(0.01)
    batch_size: int | None = hparam(
        None, Interval(int, 1, None, allow_none=True), "mini-batch size (None: the task's)"
    )
    momentum: float = hparam(0.9, Interval(float, 0, 1, closed="left"), "SGD momentum")
    weight_decay: float = hparam(5e-4, Interval(float, 0, None), "SGD weight decay (L2)")

    def size(self, task: Task) -> int:
        return self.batch_size or task.batch_size

    def loader(
        self, data: ArrayData, task: Task, generator: torch.Generator
    ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Shuffled mini-batches of ``data`` with the task's training augmentation (as the published code
        does)."""
        return data.batches(self.size(task), shuffle=True, generator=generator, augment=task.augment)


def ce_loss(model: nn.Module, item: Any, epoch: int) -> Tensor:
    """Mean cross-entropy of ``model`` on a batch ``(x, y, index)``: the ``loss`` FT, Retrain and EU/CF-k
    give the loop."""
    x, y = item[0], item[1]
    dev = next(model.parameters()).device
    return F.cross_entropy(model(x.to(dev)), y.to(dev))


def per_sample_ce(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y.to(logits.device), reduction="none")


def reinitialize(model: nn.Module, seed: int) -> nn.Module:
    """Fresh weights, seeded: the model's own ``reset_parameters()`` if it defines one, else every
    submodule's.

    Runs under ``torch.random.fork_rng`` so the global random state is left as it was.
    """
    with seeded(seed, next(model.parameters()).device), torch.no_grad():
        if callable(getattr(model, "reset_parameters", None)):
            model.reset_parameters()
        else:
            for module in model.modules():
                if module is not model and callable(getattr(module, "reset_parameters", None)):
                    module.reset_parameters()
    return model
