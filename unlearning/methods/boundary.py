"""Boundary unlearning (Chen et al., CVPR 2023): BS, boundary shrink, and BE, boundary expanding
(§A.8-A.9)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bilevel.validate import BOOL, Interval
from unlearning.data_types import Task
from unlearning.methods.base import (
    LowerContext,
    Params,
    Run,
    default_context,
    device_of,
    epochs_hp,
    forget_mean,
    forward,
    hparam,
    lr_hp,
)
from unlearning.methods.common import Iterative, per_sample_ce
from unlearning.rng import seeded

_OFFSET_BS = 701
_OFFSET_BE = 801


# ------------------------------------------------------------------------------------------- boundary shrink
def fgsm(model: nn.Module, x: Tensor, y: Tensor, epsilon: float) -> Tensor:
    """x_adv = round₂₅₅(clip(x + ε·sign(∇_x ℓ(model(x), y)), 0, 1)): FGSM in [0, 1] pixel space."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        grad = torch.autograd.grad(F.cross_entropy(model(x), y), x)[0]
    return quantize(x.detach() + epsilon * grad.sign())


def quantize(x: Tensor) -> Tensor:
    return torch.round(x.clamp(0, 1) * 255) / 255


@dataclass
class BS(Iterative):
    """Boundary shrink, on D_f only: with a frozen copy f_o of the original model,
    x_adv = round₂₅₅(clip(x + ε sign ∇_x ℓ(f_o(x), y), 0, 1)), y_nbr = argmax f_o(x_adv), and SGD descends
    mean_B ℓ(θ; x, y_nbr) (y_nbr may equal y, as published). The frozen copy is evaluated in eval mode.

    Defaults: digits/MLP 10 epochs, lr 5e-4, ε = 0.1; paper (CIFAR-10) 10 epochs, lr ~[1e-6, 1e-4], ε = 0.1.

    ``lower_loss`` = mean_f^w ℓ(θ; x, y_nbr(x)) = Σ w_i ℓ(x_i, y_nbr,i) / Σ w_i on a full batch, with y_nbr
    computed per batch from θ_o (constant in θ and w), from θ_o.
    """

    name: ClassVar[str] = "bs"
    label: ClassVar[str] = "BS"
    stream: ClassVar[int] = _OFFSET_BS
    epochs: int = epochs_hp(10)
    lr: float = lr_hp(5e-4)
    epsilon: float = hparam(0.1, Interval(float, 0, 1, closed="right"), "FGSM step ε in [0, 1] pixel space")

    def _unlearn(self, model: nn.Module, task: Task, run: Run) -> tuple[nn.Module, dict]:
        frozen = copy.deepcopy(model).eval().requires_grad_(False)
        dev = device_of(model)
        changed = []

        def loss(module: nn.Module, item: Any, epoch: int) -> Tensor:
            x, y = item[0].to(dev), item[1].to(dev)
            with torch.no_grad():
                y_nbr = frozen(fgsm(frozen, x, y, self.epsilon)).argmax(1)
            changed.append(float((y_nbr != y).float().mean()))
            return F.cross_entropy(module(x), y_nbr)

        self.descend(model, run.hooks, loss, self.shuffled(task, task.forget))
        return model.eval(), {"neighbour_differs": sum(changed) / max(len(changed), 1)}

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
        anchor = ctx.params  # θ_o: the frozen copy

        def ce_at(xx: Tensor) -> Tensor:
            return F.cross_entropy(forward(ctx, anchor, buffers, xx), y, reduction="sum")

        x0 = x.detach()
        x_adv = quantize(x0 + self.epsilon * torch.func.grad(ce_at)(x0).sign())
        y_nbr = forward(ctx, anchor, buffers, x_adv).argmax(1).detach()
        return forget_mean(per_sample_ce(forward(ctx, params, buffers, x), y_nbr), index, weights)


# ---------------------------------------------------------------------------------------- boundary expanding
def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """The name and module of the last ``nn.Linear`` in ``model.modules()`` (the classifier)."""
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = (name, module)
    if found is None or found[0] == "":
        raise ValueError("BE needs a model whose classifier is an nn.Linear submodule")
    return found


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def expand_classifier(model: nn.Module, num_classes: int, seed: int) -> nn.Module:
    """Swap the last Linear (K outputs) for one with K+1: rows 0..K−1 copied, the shadow row K freshly
    initialised (PyTorch default init, seeded). In place; returns ``model``."""
    name, fc = last_linear(model)
    if fc.out_features != num_classes:
        raise ValueError(
            f"the last nn.Linear has {fc.out_features} outputs, expected num_classes = {num_classes}"
        )
    with seeded(seed):  # built on the CPU, then moved
        new = nn.Linear(fc.in_features, num_classes + 1, bias=fc.bias is not None)
    new = new.to(fc.weight.device, fc.weight.dtype)
    with torch.no_grad():
        new.weight[:num_classes] = fc.weight
        if fc.bias is not None:
            new.bias[:num_classes] = fc.bias
    _replace(model, name, new)
    return model


def drop_shadow(model: nn.Module, num_classes: int) -> nn.Module:
    """Prune the shadow logit: the last Linear keeps its first K rows. In place; returns ``model``."""
    name, fc = last_linear(model)
    new = nn.Linear(fc.in_features, num_classes, bias=fc.bias is not None).to(
        fc.weight.device, fc.weight.dtype
    )
    with torch.no_grad():
        new.weight.copy_(fc.weight[:num_classes])
        if fc.bias is not None:
            new.bias.copy_(fc.bias[:num_classes])
    _replace(model, name, new)
    return model


@dataclass
class BE(Iterative):
    """Boundary expanding, on D_f only: add a shadow class K to the classifier (K+1 logits), descend
    mean_B ℓ(θ; x, K) over B ⊂ D_f, then prune the shadow logit (the returned model has K logits, as in the BE
    paper; ``keep_shadow=True`` keeps K+1 logits as the SalUn code does).

    Defaults: digits/MLP 10 epochs, lr 5e-4; paper (CIFAR-10) 10 epochs, lr ~[1e-6, 1e-4]. A saliency mask
    cannot be applied (the classifier's shape changes).

    ``lower_loss`` = mean_f^w ℓ(θ; x, K) = Σ w_i ℓ(x_i, K) / Σ w_i on a full batch, evaluated on the expanded
    (K+1)-logit module (``bound.module``; ``initial_state`` holds its weights).
    """

    name: ClassVar[str] = "be"
    label: ClassVar[str] = "BE"
    stream: ClassVar[int] = _OFFSET_BE
    mask_unsupported: ClassVar[str | None] = (
        "BE changes the classifier's shape (K+1 outputs), so a mask computed on the K-output model "
        "does not fit"
    )
    epochs: int = epochs_hp(10)
    lr: float = lr_hp(5e-4)
    keep_shadow: bool = hparam(
        False, BOOL, "return the model with its K+1 logits (the SalUn code's behaviour)"
    )

    def _unlearn(self, model: nn.Module, task: Task, run: Run) -> tuple[nn.Module, dict]:
        if run.mask is not None:
            raise ValueError(self.mask_unsupported)
        k = task.num_classes
        expand_classifier(model, k, seed=task.seed * 1_000_003 + _OFFSET_BE)
        dev = device_of(model)

        def loss(module: nn.Module, item: Any, epoch: int) -> Tensor:
            x = item[0].to(dev)
            return F.cross_entropy(module(x), torch.full((x.shape[0],), k, dtype=torch.long, device=dev))

        self.descend(model, run.hooks, loss, self.shuffled(task, task.forget))
        if not self.keep_shadow:
            drop_shadow(model, k)
        return model.eval(), {"shadow_kept": self.keep_shadow}

    def _bind(self, model: nn.Module, task: Task) -> LowerContext:
        expanded = expand_classifier(
            copy.deepcopy(model), task.num_classes, task.seed * 1_000_003 + _OFFSET_BE
        )
        return default_context(model, task, module=expanded)

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
        shadow = torch.full((x.shape[0],), ctx.num_classes, dtype=torch.long, device=logits.device)
        return forget_mean(per_sample_ce(logits, shadow), index, weights)
