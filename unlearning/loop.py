"""The one training loop every iterative procedure uses: original training, Retrain and all gradient-based
unlearning methods.

A method is described by what it feeds the loop: per epoch, an iterable of batches and a loss. Hooks see the
model after ``backward`` (``before_step``: e.g. multiply gradients by a saliency mask) and after the optimizer
step (``after_step``: e.g. restore frozen weights exactly). This is what lets ``Masked`` wrap *any*
gradient-based
method without knowing it.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class StepHook(Protocol):
    """Called around each optimizer step of `run_epochs`."""

    def before_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None: ...

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None: ...


@dataclass(frozen=True)
class SGDConfig:
    """SGD as the published code uses it: ``SGD(lr, momentum=0.9, weight_decay=5e-4)``.

    ``schedule`` scales the learning rate per epoch: ``"constant"``, ``"cosine"`` (η_e = η·½(1+cos(π e/E))) or
    ``"multistep"`` (×0.1 at 50% and 75% of the epochs, the 91/136-of-182 recipe scaled, or ×0.1 at each epoch
    of ``milestones`` reached, when given: η_e = η·0.1^{#{m ∈ milestones : e ≥ m}}).
    """

    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "constant"
    milestones: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive finite number, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.schedule not in ("constant", "cosine", "multistep"):
            raise ValueError(f"schedule must be 'constant', 'cosine' or 'multistep', got {self.schedule!r}")
        if self.milestones and (self.schedule != "multistep" or any(int(m) < 0 for m in self.milestones)):
            raise ValueError("milestones need schedule='multistep' and non-negative epochs")

    def make(self, params: Iterable[Tensor]) -> torch.optim.SGD:
        return torch.optim.SGD(
            params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay, nesterov=self.nesterov
        )

    def factor(self, epoch: int, epochs: int) -> float:
        """Learning-rate multiplier for ``epoch`` (0-based) of ``epochs``."""
        if self.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * epoch / max(epochs, 1)))
        if self.schedule == "multistep":
            marks = self.milestones or (int(0.5 * epochs), int(0.75 * epochs))
            return 0.1 ** sum(epoch >= m for m in marks)
        return 1.0


def ce_loss(model: nn.Module, batch: Any, epoch: int) -> Tensor:
    """(1/|B|) Σ_{(x,y)∈B} −log softmax(f_θ(x))_y: the mean cross-entropy of ``model`` on a batch
    ``(x, y, ...)`` (moved to the model's device), the ``loss`` of training, Retrain, FT and EU/CF-k."""
    x, y = batch[0], batch[1]
    dev = next(model.parameters()).device
    return F.cross_entropy(model(x.to(dev)), y.to(dev))


def progress_enabled() -> bool:
    """Progress bars are on in a terminal, unless ``WORSTFORGET_PROGRESS=0`` (tests set it);
    ``WORSTFORGET_PROGRESS=1`` forces them on elsewhere too."""
    flag = os.environ.get("WORSTFORGET_PROGRESS")
    if flag is not None:
        return flag != "0"
    return sys.stdout.isatty()


def run_epochs(
    model: nn.Module,
    *,
    epochs: int,
    batches: Callable[[int], Iterable[Any]],
    loss: Callable[[nn.Module, Any, int], Tensor],
    sgd: SGDConfig,
    params: Sequence[Tensor] | None = None,
    hooks: Sequence[StepHook] = (),
    train_mode: bool = True,
    description: str = "training",
) -> nn.Module:
    """Run ``epochs`` epochs of SGD on ``model`` in place and return it.

    For epoch e, each item of ``batches(e)`` is passed to ``loss(model, item, e)``; the scalar is
    back-propagated, every hook's ``before_step`` runs, the optimizer steps, then every hook's ``after_step``.
    ``params`` restricts the optimizer (default: all parameters that require grad).
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    trainable = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
    optimizer = sgd.make(trainable)
    model.train(train_mode)
    show = progress_enabled() and epochs > 0
    ctx = _progress(description, epochs) if show else None
    try:
        for epoch in range(epochs):
            for group in optimizer.param_groups:
                group["lr"] = sgd.lr * sgd.factor(epoch, epochs)
            for item in batches(epoch):
                optimizer.zero_grad(set_to_none=True)
                value = loss(model, item, epoch)
                if not torch.isfinite(value):
                    raise FloatingPointError(f"{description}: loss became {value.item()} at epoch {epoch}")
                value.backward()
                for hook in hooks:
                    hook.before_step(model, optimizer)
                optimizer.step()
                for hook in hooks:
                    hook.after_step(model, optimizer)
            if ctx is not None:
                ctx[0].advance(ctx[1])
    finally:
        if ctx is not None:
            ctx[0].stop()
    return model


def progress_bar(*, enabled: bool | None = None):
    """The project's one progress-bar layout (description, bar, done/total, elapsed; transient). Disabled
    when ``enabled`` is False, or when None and `progress_enabled` says so."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
        disable=not (progress_enabled() if enabled is None else enabled),
    )


def _progress(description: str, total: int):
    bar = progress_bar(enabled=True)
    task = bar.add_task(description, total=total)
    bar.start()
    return bar, task
