"""RL: random labelling, the base objective of SalUn (reference §A.4)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from bilevel.validate import Interval, Options
from unlearning.data_types import ArrayData, Task
from unlearning.loop import StepHook
from unlearning.methods.base import (
    LowerContext,
    Params,
    Run,
    default_context,
    epochs_hp,
    forget_mean,
    forward,
    hparam,
    lr_hp,
    retain_mean,
)
from unlearning.methods.common import Iterative, per_sample_ce

_OFFSET = 401


def random_labels(n: int, num_classes: int, generator: torch.Generator) -> Tensor:
    """n labels drawn uniformly from all K classes {0, …, K−1} (a label may equal the true one, as
    published)."""
    return torch.randint(0, num_classes, (n,), generator=generator)


def weighted_ce_loss(model: nn.Module, item: Any, epoch: int) -> Tensor:
    """mean_B c_i ℓ(θ; x_i, y_i) for a batch ``(x, y, index, c)`` with per-sample (or scalar) weights c."""
    x, y, _, c = item
    dev = next(model.parameters()).device
    ce = per_sample_ce(model(x.to(dev)), y)
    return (ce * (c.to(dev) if isinstance(c, Tensor) else c)).mean()


@dataclass
class RL(Iterative):
    """Random labelling: min_θ mean_{D_f} ℓ(θ; x, y') + α mean_{D_r} ℓ(θ; x, y), y' ~ Uniform{0..K−1}.

    ``variant="sequential"`` (current published code for CIFAR-10): each epoch one pass over D_f with fresh
    random labels per batch (one step per batch), then one pass over D_r (loss ×α). ``variant="mixed"``
    (paper-era code; CIFAR-100): each epoch redraws labels for all of D_f, concatenates with D_r, shuffles,
    and
    trains one pass on mean_B c_i ℓ_i with c = 1 on D_f, α on D_r.

    Defaults: digits/MLP 10 epochs, lr 0.01, sequential, α = 1; paper (CIFAR-10) 10 epochs, lr ∈ [0.01, 0.1],
    α = 1.

    ``lower_loss`` = mean_f^w ℓ(θ; x, y') + α mean_r^w ℓ(θ; x, y), i.e. Σ w_i ℓ(x_i, y'_i)/Σ w_i +
    α Σ (1−w_i) ℓ_i / Σ(1−w_i) on a full batch, with y' drawn once per pool example at ``bind`` from the
    task's seeded generator; from θ_o.
    """

    name: ClassVar[str] = "rl"
    stream: ClassVar[int] = _OFFSET
    epochs: int = epochs_hp(10)
    lr: float = lr_hp(0.01)
    variant: str = hparam(
        "sequential", Options(("sequential", "mixed")), "forget then retain pass, or one mixed pass"
    )
    alpha: float = hparam(1.0, Interval(float, 0, None), "weight α of the retain loss")

    def _unlearn(self, model: nn.Module, task: Task, run: Run) -> tuple[nn.Module, dict]:
        self.train(model, task, run.hooks)
        return model.eval(), {"variant": self.variant}

    def train(
        self,
        model: nn.Module,
        task: Task,
        hooks: tuple[StepHook, ...] | list[StepHook] = (),
        on_epoch: Callable[[nn.Module, int], None] | None = None,
    ) -> nn.Module:
        """Run RL on ``model`` in place; ``on_epoch(model, epoch)`` is called at the start of every epoch."""
        forget, retain = task.forget, task.retain
        k = task.num_classes
        generator = task.generator(self.stream)
        labels = task.generator(_OFFSET + 1)

        def sequential(epoch: int) -> Iterator[Any]:
            for x, _, idx in self.loader(forget, task, generator):
                yield x, random_labels(len(idx), k, labels), idx, 1.0
            for x, y, idx in self.loader(retain, task, generator):
                yield x, y, idx, self.alpha

        def mixed(epoch: int) -> Iterator[Any]:
            y_forget = random_labels(len(forget), k, labels).to(forget.y.device)
            data = ArrayData(torch.cat([forget.x, retain.x]), torch.cat([y_forget, retain.y]))
            c = torch.cat([torch.ones(len(forget)), torch.full((len(retain),), float(self.alpha))])
            for x, y, idx in self.loader(data, task, generator):
                yield x, y, idx, c[idx]

        pick = sequential if self.variant == "sequential" else mixed

        def batches(epoch: int) -> Iterator[Any]:
            if on_epoch is not None:
                on_epoch(model, epoch)
            return pick(epoch)

        return self.descend(model, hooks, weighted_ce_loss, batches)

    def _bind(self, model: nn.Module, task: Task) -> LowerContext:
        ctx = default_context(model, task)
        ctx.extra["labels"] = random_labels(len(task.pool), task.num_classes, task.generator(_OFFSET + 2))
        return ctx

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
        logits = forward(ctx, params, buffers, x)
        y_random = ctx.extra["labels"].to(index.device)[index]
        forget_term = forget_mean(per_sample_ce(logits, y_random), index, weights)
        return forget_term + self.alpha * retain_mean(per_sample_ce(logits, y), index, weights)
