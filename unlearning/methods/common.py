"""Pieces the iterative methods share: their common hyper-parameters, the one SGD run (`Iterative.descend`),
shuffled batching, cross-entropy."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bilevel.validate import Interval
from unlearning.data_types import ArrayData, Task
from unlearning.loop import SGDConfig, StepHook, run_epochs
from unlearning.methods.base import Method, epochs_hp, hparam, lr_hp

#: ``loss(model, batch, epoch) -> scalar``: what `unlearning.loop.run_epochs` descends.
Loss = Callable[[nn.Module, Any, int], Tensor]


@dataclass
class Iterative(Method):
    """A method that runs SGD (momentum 0.9, weight decay 5e-4 as published) through ``loop.run_epochs``.

    A subclass says what it descends and on which batches; `descend` runs it with the method's epochs, SGD
    (`sgd`), the wrapper's hooks (e.g. a saliency mask) and its ``label``. ``stream`` is the offset of the
    task generator (`Task.generator`) that shuffles its batches: fixed per method, so the same task gives the
    same model, and different across methods, so their streams are independent.
    """

    #: Offset of the task generator that shuffles the batches (`shuffled`).
    stream: ClassVar[int] = 0
    #: The run's name in progress bars and in the divergence error ("<label>: loss became nan at epoch e").
    label: ClassVar[str] = ""

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

    def shuffled(
        self, task: Task, data: ArrayData | Callable[[int], ArrayData]
    ) -> Callable[[int], Iterator[tuple[Tensor, Tensor, Tensor]]]:
        """``epoch -> `loader` of data`` (of ``data(epoch)`` when ``data`` is a function), every epoch drawn
        from one generator ``task.generator(stream)`` made now."""
        generator = task.generator(self.stream)
        if isinstance(data, ArrayData):
            return lambda epoch: self.loader(data, task, generator)
        return lambda epoch: self.loader(data(epoch), task, generator)

    def sgd(self) -> SGDConfig:
        """SGD(lr, momentum, weight_decay) at a constant rate; a method with a schedule overrides this."""
        return SGDConfig(lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)

    def descend(
        self,
        model: nn.Module,
        hooks: Sequence[StepHook],
        loss: Loss,
        batches: Callable[[int], Iterable[Any]],
        *,
        epochs: int | None = None,
        params: Sequence[Tensor] | None = None,
    ) -> nn.Module:
        """``run_epochs`` on ``model`` in place: for e < ``epochs`` (default ``self.epochs``), one SGD step
        θ ← θ − η_e ∇ loss(θ; b, e) (`sgd`: momentum, weight decay, schedule) per batch b of ``batches(e)``,
        with ``hooks`` around each step; ``params`` restricts the step (default: all that require grad)."""
        return run_epochs(
            model,
            epochs=self.epochs if epochs is None else epochs,
            batches=batches,
            loss=loss,
            sgd=self.sgd(),
            params=params,
            hooks=hooks,
            description=self.label or self.name,
        )


def per_sample_ce(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y.to(logits.device), reduction="none")
