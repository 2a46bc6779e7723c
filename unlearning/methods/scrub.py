"""SCRUB (Kurmanji et al., NeurIPS 2023) as in the worst-case paper's code: teacher-student max/min epochs
(§A.12)."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bilevel.validate import Interval
from unlearning.data_types import Task
from unlearning.loop import SGDConfig
from unlearning.methods.base import (
    LowerContext,
    Milestones,
    Params,
    Run,
    device_of,
    epochs_hp,
    forget_mean,
    forward,
    hparam,
    lr_hp,
    retain_mean,
)
from unlearning.methods.common import Iterative, per_sample_ce

_OFFSET = 901


def distill_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Per-sample T²·KL(softmax(t/T) ‖ softmax(s/T)) (its batch mean is SCRUB's distillation loss KL_T)."""
    log_s = F.log_softmax(student_logits / temperature, dim=1)
    log_t = F.log_softmax(teacher_logits / temperature, dim=1)
    return (log_t.exp() * (log_t - log_s)).sum(1) * temperature**2


@dataclass
class SCRUB(Iterative):
    """Student θ (from θ_o) against a frozen teacher θ_o. Epoch e (0-based) is either
    a max epoch (e ≤ m_steps), over D_f:  descend −mean_B KL_T(teacher ‖ student), pushing the student away;
    or a min epoch (e > m_steps), over D_r: descend mean_B [γ ℓ(θ; x, y) + α KL_T(teacher ‖ student)].
    KL_T is the T²-scaled distillation KL at temperature T. The lr is ×0.1 after each epoch in
    ``lr_decay_epochs`` (η_e = η·0.1^{#{m : e > m}}); the SWA smoothing term of the code has weight 0 and
    is left out.

    Defaults: digits/MLP 10 epochs, lr 0.1; paper (WC code, CIFAR-10) 10 epochs, lr ∈ [1e-4, 1e-1]; both
    m_steps = 1, T = 4, γ = 0.99, α = 0.001, decay after epochs (3, 5, 9).

    ``lower_loss`` = γ mean_r^w ℓ(θ; x, y) + α mean_r^w KL_T − mean_f^w KL_T (the two phases' objectives
    added;
    the teacher is θ_o), from θ_o.
    """

    name: ClassVar[str] = "scrub"
    label: ClassVar[str] = "SCRUB"
    stream: ClassVar[int] = _OFFSET
    epochs: int = epochs_hp(10)
    lr: float = lr_hp(0.1)
    m_steps: int = hparam(
        1, Interval(int, -1, None), "max epochs are e = 0..m_steps (on D_f), min epochs after"
    )
    temperature: float = hparam(4.0, Interval(float, 0, None, closed="neither"), "distillation temperature T")
    gamma: float = hparam(0.99, Interval(float, 0, None), "weight γ of the retain cross-entropy (min epochs)")
    alpha: float = hparam(
        0.001, Interval(float, 0, None), "weight α of the retain distillation KL (min epochs)"
    )
    lr_decay_epochs: tuple = hparam((3, 5, 9), Milestones(), "lr ×0.1 after each of these epochs")

    def is_max_epoch(self, epoch: int) -> bool:
        return epoch <= self.m_steps

    def sgd(self) -> SGDConfig:
        """SGD with the rate ×0.1 from epoch m + 1 on for each m in ``lr_decay_epochs`` (none: constant)."""
        milestones = tuple(m + 1 for m in self.lr_decay_epochs)
        if not milestones:
            return super().sgd()
        return dataclasses.replace(super().sgd(), schedule="multistep", milestones=milestones)

    def _unlearn(self, model: nn.Module, task: Task, run: Run) -> tuple[nn.Module, dict]:
        teacher = copy.deepcopy(model).eval().requires_grad_(False)
        dev = device_of(model)
        forget, retain = task.forget, task.retain
        batches = self.shuffled(task, lambda epoch: forget if self.is_max_epoch(epoch) else retain)

        def loss(student: nn.Module, item: Any, epoch: int) -> Tensor:
            x, y = item[0].to(dev), item[1].to(dev)
            logits = student(x)
            with torch.no_grad():
                target = teacher(x)
            kl = distill_kl(logits, target, self.temperature).mean()
            if self.is_max_epoch(epoch):
                return -kl
            return self.gamma * F.cross_entropy(logits, y) + self.alpha * kl

        self.descend(model, run.hooks, loss, batches)
        phases = ["max" if self.is_max_epoch(e) else "min" for e in range(self.epochs)]
        return model.eval(), {"phases": phases}

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
        target = forward(ctx, ctx.params, buffers, x).detach()
        kl = distill_kl(logits, target, self.temperature)
        retain = self.gamma * retain_mean(per_sample_ce(logits, y), index, weights)
        return retain + self.alpha * retain_mean(kl, index, weights) - forget_mean(kl, index, weights)
