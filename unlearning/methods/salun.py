"""SalUn (ICLR 2024): random labelling restricted to the salient weights, and its soft-threshold variant
(§A.10-11)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from bilevel.validate import BOOL, Interval, Options
from unlearning.data_types import Task
from unlearning.methods.base import LowerContext, Params, Run, epochs_hp, hparam, lr_hp
from unlearning.methods.random_label import RL


def _rl_part(method: RL) -> RL:
    """The plain RL with ``method``'s RL hyper-parameters."""
    keys = {f.name for f in dataclasses.fields(RL) if "valid" in f.metadata}
    return RL(**{k: v for k, v in method.hparams().items() if k in keys})


@dataclass
class SalUn(RL):
    """SalUn = ``Masked(RL, saliency_mask)``: m = top-``sparsity`` of |Σ_batches ∇(−ℓ)| over D_f at θ_o (eval
    mode, global ranking), then RL (see `RL`) with only the salient weights moving:
    θ_u = m ⊙ (θ_o + Δθ) + (1 − m) ⊙ θ_o. ``seconds`` includes the mask computation.

    Defaults: digits/MLP 10 epochs, lr 0.01, sequential RL, sparsity 0.5, hard freeze; paper (CIFAR-10,
    README for 10% random) 10 epochs, lr 0.013 (search [5e-3, 2e-2]), sparsity 0.5; the paper-era code masked
    gradients only (``freeze="grad"``) and mixed forget/retain batches (``variant="mixed"``).

    ``lower_loss`` = RL's objective at θ̃ = m ⊙ θ + (1 − m) ⊙ θ_o (mask computed at ``bind``), from θ_o:
    the bound method delegates ``unlearn``, ``bind`` and ``lower_loss`` to `masked`.
    """

    name: ClassVar[str] = "salun"
    epochs: int = epochs_hp(10)
    lr: float = lr_hp(0.01)
    sparsity: float = hparam(0.5, Interval(float, 0, 1), "fraction of weights kept salient (trainable)")
    per_layer: bool = hparam(False, BOOL, "rank saliency within each tensor instead of globally")
    freeze: str = hparam(
        "hard", Options(("hard", "grad")), "hard: frozen weights never change; grad: mask gradients only"
    )

    def masked(self):
        """The equivalent ``Masked(RL(...), saliency_mask, freeze)``."""
        from unlearning.saliency import Masked, saliency_mask

        def mask_fn(model: nn.Module, task: Task) -> dict[str, Tensor]:
            size = self.batch_size or task.batch_size
            return saliency_mask(
                model, task.forget, sparsity=self.sparsity, per_layer=self.per_layer, batch_size=size
            )

        return Masked(method=_rl_part(self), mask=mask_fn, freeze=self.freeze)

    def _unlearn(self, model: nn.Module, task: Task, run: Run) -> tuple[nn.Module, dict]:
        return self.masked()._unlearn(model, task, run)

    def _bind(self, model: nn.Module, task: Task) -> LowerContext:
        """The bound ``Masked(RL)``'s context, which also holds that bound method (``extra["masked"]``)."""
        masked = self.masked().bind(model, task)
        ctx = masked._context()
        return dataclasses.replace(ctx, extra={**ctx.extra, "masked": masked})

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
        masked = ctx.extra["masked"]
        return masked._lower_loss(masked._context(), params, buffers, x, y, index, weights)


class SoftThreshold:
    """Loop hook of SalUn-soft: after step s of T, with d = θ − θ_anchor (θ_anchor = the weights at the
    start of
    the epoch, over all parameters together), r = ⌊ρ (T − s)/T · P⌋ and τ = the r-th smallest |d|,

        θ ← θ_anchor + sign(d) · max(|d| − τ, 0)      (soft-thresholding toward the anchor)

    so early steps keep only the largest changes and the threshold relaxes to 0 by the end of the run."""

    def __init__(self, ratio: float, total_steps: int) -> None:
        self.ratio = ratio
        self.total = max(total_steps, 1)
        self.step = 0
        self.anchor: Tensor | None = None

    def set_anchor(self, model: nn.Module, epoch: int) -> None:
        self.anchor = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()

    def before_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        pass

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.step += 1
        params = list(model.parameters())
        theta = torch.nn.utils.parameters_to_vector(params).detach()
        diff = theta - self.anchor
        r = int(self.ratio * (self.total - self.step) / self.total * diff.numel())
        if r <= 0:
            return
        tau = diff.abs().kthvalue(r).values
        shrunk = self.anchor + diff.sign() * (diff.abs() - tau).clamp_min(0)
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(shrunk, params)


@dataclass
class SalUnSoft(RL):
    """SalUn-soft (``RL_proximal``): RL, with no hard mask; after every SGD step the weights are
    soft-thresholded
    toward the epoch's starting weights (`SoftThreshold`, ratio ρ = ``mask_ratio``), so only the largest
    changes
    survive early in the run.

    Defaults: digits/MLP 10 epochs, lr 0.02, mixed RL (as the published ``RL_pro.py``), ρ = 0.5; the published
    code reads ``mask_ratio`` without defining it (no paper default).

    ``lower_loss`` = RL's objective (the proximal step belongs to the optimiser, not the objective), from θ_o.
    """

    name: ClassVar[str] = "salun_soft"
    epochs: int = epochs_hp(10)
    lr: float = lr_hp(0.02)
    variant: str = hparam(
        "mixed", Options(("sequential", "mixed")), "forget then retain pass, or one mixed pass"
    )
    mask_ratio: float = hparam(
        0.5, Interval(float, 0, 1), "initial fraction ρ of weight changes thresholded to 0"
    )

    def _unlearn(self, model: nn.Module, task: Task, run: Run) -> tuple[nn.Module, dict]:
        size = self.size(task)
        n_f, n_r = len(task.forget_index), len(task.pool) - len(task.forget_index)
        if self.variant == "sequential":
            per_epoch = -(-n_f // size) + -(-n_r // size)
        else:
            per_epoch = -(-(n_f + n_r) // size)
        hook = SoftThreshold(self.mask_ratio, self.epochs * per_epoch)
        self.train(model, task, hooks=(*run.hooks, hook), on_epoch=hook.set_anchor)
        return model.eval(), {"variant": self.variant, "steps": hook.step}
