"""Retrain: exact unlearning, the gold standard (reference §A.1)."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from bilevel.validate import Options
from unlearning.data_types import Task
from unlearning.loop import SGDConfig, ce_loss
from unlearning.methods.base import (
    LowerContext,
    Params,
    Run,
    default_context,
    epochs_hp,
    forward,
    hparam,
    lr_hp,
    retain_mean,
)
from unlearning.methods.common import Iterative, per_sample_ce
from unlearning.models import INITS, initialize

_OFFSET = 101


@dataclass
class Retrain(Iterative):
    """Train a fresh, seeded re-initialisation of the model on D_r: θ_u = argmin_θ mean_{D_r} ℓ(θ).

    Defaults are the digits/MLP recipe (20 epochs, lr 0.1, cosine), the same as the original model's; the
    papers use 182 epochs, lr 0.1, batch 256, cosine on CIFAR-10 (`from_recipe` takes a
    ``unlearning.training.Recipe``).

    The initial weights are the original model's initialisation: `unlearning.models.initialize` with the task
    seed redraws exactly what `unlearning.models.build` drew for the original (the seed `prepare` trains it
    from), so this method and ``prepare(...).retrain()`` start from one initialisation. ``init`` picks
    another scheme of `unlearning.models.INITS` drawn from the same seed ("xavier": the published worst-case
    code's Retrain lower level, ``model.apply(weights_init)``; "original", the default, is the model's own).

    ``lower_loss`` = mean_r^w ℓ(θ; x, y), i.e. Σ(1−w_i)ℓ_i / Σ(1−w_i) on a full batch, started from the fresh
    initialisation (``initial_state``).
    """

    name: ClassVar[str] = "retrain"
    stream: ClassVar[int] = _OFFSET
    mask_unsupported: ClassVar[str | None] = (
        "Retrain starts from a fresh initialisation; a saliency mask computed at the original weights "
        "has no meaning there"
    )
    epochs: int = epochs_hp(20)
    lr: float = lr_hp(0.1)
    schedule: str = hparam("cosine", Options(("cosine", "multistep", "constant")), "learning-rate schedule")
    init: str = hparam(
        "original", Options(("original", *INITS)), "initial weights: the original's scheme, or one of INITS"
    )

    @classmethod
    def from_recipe(cls, recipe: Any) -> Retrain:
        """Retrain with the hyper-parameters of a training recipe (anything with these attributes)."""
        keys = ("epochs", "lr", "batch_size", "momentum", "weight_decay", "schedule")
        return cls(**{k: getattr(recipe, k) for k in keys if hasattr(recipe, k)})

    def fresh(self, model: nn.Module, task: Task) -> nn.Module:
        """``model`` re-initialised in place from the task seed (see the class docstring)."""
        return initialize(model, seed=task.seed, init=None if self.init == "original" else self.init)

    def _unlearn(self, model: nn.Module, task: Task, run: Run) -> tuple[nn.Module, dict]:
        self.fresh(model, task)
        self.descend(model, run.hooks, ce_loss, self.shuffled(task, task.retain))
        return model.eval(), {}

    def sgd(self) -> SGDConfig:
        """SGD with the ``schedule`` of the learning rate (cosine by default)."""
        return dataclasses.replace(super().sgd(), schedule=self.schedule)

    def _bind(self, model: nn.Module, task: Task) -> LowerContext:
        return default_context(model, task, module=self.fresh(copy.deepcopy(model), task))

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
