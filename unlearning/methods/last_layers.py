"""EU-k and CF-k (Goel et al., 2022) as in the worst-case paper's code: train only the last k layers on D_r
(§A.12)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from bilevel.validate import Interval
from unlearning.data_types import Task
from unlearning.loop import ce_loss
from unlearning.methods.base import (
    LowerContext,
    Params,
    Run,
    clone,
    default_context,
    epochs_hp,
    forward,
    hparam,
    lr_hp,
    retain_mean,
)
from unlearning.methods.common import Iterative, per_sample_ce

_OFFSET = 1001


def last_layers(model: nn.Module, k: int) -> list[tuple[str, nn.Module]]:
    """The last k ``nn.Linear`` / ``nn.Conv2d`` modules in ``model.modules()`` order, as (name, module)."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if k > len(layers):
        raise ValueError(f"k = {k} exceeds the model's {len(layers)} Linear/Conv2d layers")
    return layers[len(layers) - k :]


def layer_parameter_names(model: nn.Module, k: int) -> list[str]:
    """Names of the trainable parameters, as the published ``reinit_and_freeze_layers`` unfreezes them: walk
    ``model.named_modules()`` backwards and unfreeze every module met until the k-th ``nn.Linear`` /
    ``nn.Conv2d`` (inclusive), so the BatchNorm layers between the last k layers train too (k = 1: the last
    layer only). A container is met after all its children, whose parameters are already in, so its own
    (non-recursive) parameters are what it adds; the result is in ``model.named_parameters()`` order."""
    last_layers(model, k)  # the k check and its message
    names: set[str] = set()
    counted = 0
    for n, m in reversed(list(model.named_modules())):
        if counted >= k:
            break
        names.update(f"{n}.{p}" if n else p for p, _ in m.named_parameters(recurse=False))
        counted += isinstance(m, (nn.Linear, nn.Conv2d))
    return [n for n, _ in model.named_parameters() if n in names]


def reinit_layers(model: nn.Module, k: int, generator: torch.Generator) -> None:
    """Re-initialise the last k layers as the published code does: Linear weight ~ N(0, 1), bias 0; Conv
    weight
    Xavier-uniform, bias 0. Draws from ``generator`` (on CPU, then copied)."""
    with torch.no_grad():
        for _, module in last_layers(model, k):
            w = torch.empty(module.weight.shape, dtype=module.weight.dtype)
            if isinstance(module, nn.Linear):
                nn.init.normal_(w, 0.0, 1.0, generator=generator)
            else:
                nn.init.xavier_uniform_(w, generator=generator)
            module.weight.copy_(w)
            if module.bias is not None:
                module.bias.zero_()


@dataclass
class _LastLayers(Iterative):
    """Fine-tune only the last k layers on D_r: θ_L ← θ_L − η ∇ mean_B ℓ, B ⊂ D_r, all other weights frozen.
    EU-k re-initialises those layers at the start of **every** epoch (as published; the last epoch is the one
    that counts) and builds a fresh optimizer each epoch; CF-k does not re-initialise."""

    reinit: ClassVar[bool] = False
    stream: ClassVar[int] = _OFFSET
    epochs: int = epochs_hp(10)
    lr: float = lr_hp(0.1)
    k: int = hparam(1, Interval(int, 1, None), "number of last Linear/Conv2d layers trained")

    def _unlearn(self, model: nn.Module, task: Task, run: Run) -> tuple[nn.Module, dict]:
        names = set(layer_parameter_names(model, self.k))
        batches = self.shuffled(task, task.retain)
        init = task.generator(_OFFSET + 1)
        flags = {n: p.requires_grad for n, p in model.named_parameters()}
        try:
            for n, p in model.named_parameters():
                p.requires_grad_(n in names)
            trainable = [p for n, p in model.named_parameters() if n in names]
            for _ in range(self.epochs):  # one run per epoch: a fresh optimizer each epoch, as published
                if self.reinit:
                    reinit_layers(model, self.k, init)
                self.descend(model, run.hooks, ce_loss, batches, epochs=1, params=trainable)
        finally:
            for n, p in model.named_parameters():
                p.requires_grad_(flags[n])
        return model.eval(), {"trained": sorted(names)}

    def _bind(self, model: nn.Module, task: Task) -> LowerContext:
        module = copy.deepcopy(model)
        if self.reinit:
            reinit_layers(module, self.k, task.generator(_OFFSET + 1))
        ctx = default_context(model, task)  # module and ctx.params hold θ_o (the frozen part)
        names = layer_parameter_names(model, self.k)
        ctx.extra["start"] = {n: p.detach().clone() for n, p in module.named_parameters() if n in names}
        ctx.extra["trainable"] = names
        return ctx

    def initial_state(self) -> tuple[Params, Params]:
        """Only the last k layers' parameters (the others stay at θ_o), and the buffers."""
        ctx = self._context()
        return clone(ctx.extra["start"]), clone(ctx.buffers)

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
        trainable = {n: params[n] for n in ctx.extra["trainable"] if n in params}
        return retain_mean(per_sample_ce(forward(ctx, trainable, buffers, x), y), index, weights)


@dataclass
class EUk(_LastLayers):
    """EU-k, exact unlearning of the last k layers: re-initialise them every epoch (Linear ~ N(0,1)),
    freeze the rest, fine-tune on D_r.

    Defaults: digits/MLP 10 epochs, lr 0.2, k = 1; paper (WC code, CIFAR-10) 10 epochs, lr ∈ [1e-4, 1e-1],
    k = 1.

    ``lower_loss`` = mean_r^w ℓ(θ; x, y) over the last k layers' parameters only (the rest fixed at θ_o);
    ``initial_state`` holds those layers re-initialised.
    """

    name: ClassVar[str] = "eu_k"
    reinit: ClassVar[bool] = True
    lr: float = lr_hp(0.2)


@dataclass
class CFk(_LastLayers):
    """CF-k, catastrophic forgetting of the last k layers: freeze all but the last k layers, fine-tune them on
    D_r from θ_o.

    Defaults: digits/MLP 10 epochs, lr 0.1, k = 1; paper (WC code, CIFAR-10) 10 epochs, lr ∈ [1e-4, 1e-1],
    k = 1.

    ``lower_loss`` = mean_r^w ℓ(θ; x, y) over the last k layers' parameters only (the rest fixed at θ_o),
    from θ_o.
    """

    name: ClassVar[str] = "cf_k"
