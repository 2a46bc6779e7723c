"""`Iterative`: the one SGD run of the iterative methods (`descend`, `shuffled`, `sgd`) does what each
method's own ``run_epochs`` call did, bit for bit, and keeps each method's name in the divergence error."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from tests.unlearning.test_methods_helpers import state, tiny_model, tiny_task
from unlearning.loop import SGDConfig, ce_loss, run_epochs
from unlearning.methods import FT, SCRUB, Iterative, Retrain, make
from unlearning.saliency import Masked


def test_ft_is_run_epochs_on_shuffled_retain_batches():
    task, model = tiny_task(), tiny_model()
    out = FT(epochs=3, lr=0.05, batch_size=7).unlearn(model, task).model
    manual = tiny_model()
    generator = task.generator(FT.stream)
    run_epochs(
        manual,
        epochs=3,
        batches=lambda epoch: task.retain.batches(7, shuffle=True, generator=generator, augment=task.augment),
        loss=ce_loss,
        sgd=SGDConfig(lr=0.05, momentum=0.9, weight_decay=5e-4),
        description="FT",
    )
    assert all(torch.equal(a, b) for a, b in zip(state(out).values(), state(manual.eval()).values()))


def test_sgd_carries_each_methods_schedule():
    assert FT().sgd() == SGDConfig(lr=0.05, momentum=0.9, weight_decay=5e-4)
    assert Retrain(schedule="multistep").sgd().schedule == "multistep"
    assert Retrain().sgd() == SGDConfig(lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine")
    assert SCRUB().sgd().milestones == (4, 6, 10) and SCRUB().sgd().schedule == "multistep"
    assert SCRUB(lr_decay_epochs=()).sgd().schedule == "constant"


@dataclass
class _Descent(Iterative):
    """A user's iterative method: plain SGD on the retain loss, through `descend` (as docs/custom-method.md
    shows)."""

    name: ClassVar[str] = "descent"

    def _unlearn(self, model, task, run):
        self.descend(model, run.hooks, ce_loss, self.shuffled(task, task.retain))
        return model.eval(), {}


def test_a_user_subclass_gets_the_loop_and_masks():
    task, model = tiny_task(), tiny_model()
    plain = _Descent(epochs=2, lr=0.1).unlearn(model, task)
    assert plain.info["hparams"]["epochs"] == 2
    assert not all(torch.equal(a, b) for a, b in zip(state(plain.model).values(), state(model).values()))
    mask = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    frozen = Masked(method=_Descent(epochs=2, lr=0.1), mask=mask).unlearn(model, task).model
    assert all(torch.equal(a, b) for a, b in zip(state(frozen).values(), state(model).values()))


@pytest.mark.parametrize(
    ("name", "label"), [("ft", "FT"), ("ga", "GA"), ("l1_sparse", "l1-sparse"), ("retrain", "retrain")]
)
def test_divergence_error_names_the_method(name, label, monkeypatch):
    task, model = tiny_task(), tiny_model()

    def nan_loss(*args, **kwargs):  # a diverged loss, whatever the method's cross-entropy term
        return torch.tensor(math.nan, requires_grad=True)

    for module in ("finetune", "gradient_ascent", "sparse", "retrain"):
        for attr in ("ce_loss", "negative_ce_loss"):
            monkeypatch.setattr(f"unlearning.methods.{module}.{attr}", nan_loss, raising=False)
    with pytest.raises(FloatingPointError, match=f"^{label}: loss became nan at epoch 0"):
        make(name, epochs=1).unlearn(model, task)
