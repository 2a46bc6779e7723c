"""Weight saliency: the mask's definition and exact size; `Masked` freezes exactly the masked-out weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.unlearning.test_methods_helpers import tiny_model, tiny_task
from unlearning.methods import FT, GA, IU, Retrain, SalUn
from unlearning.methods.last_layers import CFk, EUk
from unlearning.saliency import Masked, gradient_saliency, mask_fraction, saliency_mask, top_fraction


def test_saliency_is_abs_of_summed_batch_gradients_in_eval_mode():
    model, task = tiny_model(), tiny_task()
    model.train()
    scores = gradient_saliency(model, task.forget, batch_size=5)
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    for start in range(0, len(task.forget), 5):
        x, y = task.forget.x[start : start + 5], task.forget.y[start : start + 5]
        for acc, g in zip(total, torch.autograd.grad(-F.cross_entropy(model.eval()(x), y), params)):
            acc += g
    for (name, s), g in zip(scores.items(), total):
        torch.testing.assert_close(s, g.abs(), msg=name)


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.73, 1.0])
@pytest.mark.parametrize("per_layer", [False, True])
def test_mask_keeps_exactly_the_requested_fraction(sparsity, per_layer):
    model, task = tiny_model(), tiny_task()
    mask = saliency_mask(model, task.forget, sparsity=sparsity, per_layer=per_layer)
    assert set(mask) == {n for n, _ in model.named_parameters()}
    assert all(m.dtype == torch.bool for m in mask.values())
    if per_layer:
        for name, m in mask.items():
            assert int(m.sum()) == int(sparsity * m.numel()), name
    else:
        total = sum(m.numel() for m in mask.values())
        assert sum(int(m.sum()) for m in mask.values()) == int(sparsity * total)
        # global top-k: every kept score ≥ every dropped score
        scores = gradient_saliency(model, task.forget)
        kept = torch.cat([scores[n][mask[n]] for n in mask])
        dropped = torch.cat([scores[n][~mask[n]] for n in mask])
        if kept.numel() and dropped.numel():
            assert kept.min() >= dropped.max()


def test_ties_are_broken_deterministically():
    scores = {"a": torch.zeros(3, 3), "b": torch.ones(4), "c": torch.zeros(5)}
    mask = top_fraction(scores, 0.5)  # 9 of 18: the 4 ones, then the first 5 zeros in order
    assert mask["b"].all() and mask["a"].reshape(-1)[:5].all() and not mask["a"].reshape(-1)[5:].any()
    assert not mask["c"].any() and mask_fraction(mask) == 0.5


def _masked_ft(freeze: str):
    model, task = tiny_model(), tiny_task()
    mask = saliency_mask(model, task.forget, sparsity=0.5)
    method = Masked(method=FT(epochs=3, lr=0.1, weight_decay=0.05), mask=mask, freeze=freeze)
    return model, mask, method.unlearn(model, task)


def test_masked_ft_hard_freeze_keeps_masked_out_weights_bit_identical():
    model, mask, out = _masked_ft("hard")
    moved = total = 0
    for name, p in out.model.named_parameters():
        old = dict(model.named_parameters())[name]
        assert torch.equal(p[~mask[name]], old[~mask[name]]), (
            name
        )  # frozen, weight decay and momentum included
        moved += int((p[mask[name]] != old[mask[name]]).sum())
        total += int(mask[name].sum())
    assert moved == total  # every salient weight moved (weight decay alone moves each one)
    assert out.info["mask_fraction"] == pytest.approx(0.5, abs=0.01) and out.info["freeze"] == "hard"


def test_masked_gradient_only_lets_weight_decay_move_frozen_weights():
    model, mask, out = _masked_ft("grad")
    old = dict(model.named_parameters())
    for name, p in out.model.named_parameters():
        frozen = ~mask[name] & (old[name] != 0)
        # weight decay (through the step and momentum) shrinks the frozen weights toward 0
        assert (p[frozen].abs() < old[name][frozen].abs()).all(), name


def test_masked_wraps_any_gradient_method_and_iu():
    model, task = tiny_model(), tiny_task()
    mask = saliency_mask(model, task.forget, sparsity=0.3)
    for method in (GA(epochs=2), IU(alpha=5.0)):
        out = Masked(method=method, mask=lambda m, t: mask).unlearn(model, task).model
        for name, p in out.named_parameters():
            old = dict(model.named_parameters())[name]
            assert torch.equal(p[~mask[name]], old[~mask[name]])
            assert not torch.equal(p[mask[name]], old[mask[name]])


def test_masked_last_layer_methods_keep_masked_weights_even_through_reinitialisation():
    """EU-k re-initialises its layers outside the optimizer: frozen entries still keep θ_o exactly."""
    model, task = tiny_model(), tiny_task()
    mask = saliency_mask(model, task.forget, sparsity=0.5)
    for method in (EUk(epochs=2), CFk(epochs=2)):
        out = Masked(method=method, mask=lambda m, t: mask).unlearn(model, task).model
        for name, p in out.named_parameters():
            old = dict(model.named_parameters())[name]
            assert torch.equal(p[~mask[name]], old[~mask[name]]), (method.name, name)


def test_masked_rejects_bad_masks_and_methods():
    model, task = tiny_model(), tiny_task()
    with pytest.raises(ValueError, match="Retrain starts from a fresh initialisation"):
        Masked(method=Retrain(), mask={})
    with pytest.raises(TypeError, match="Masked needs an unlearning Method"):
        Masked(method="ft", mask={})
    with pytest.raises(ValueError, match="freeze must be one of 'hard', 'grad'"):
        Masked(method=FT(), mask={}, freeze="soft")
    with pytest.raises(ValueError, match="'nope' is not a parameter"):
        Masked(method=FT(), mask={"nope": torch.ones(2, dtype=torch.bool)}).unlearn(model, task)
    with pytest.raises(ValueError, match="has shape"):
        Masked(method=FT(), mask={"1.bias": torch.ones(2, dtype=torch.bool)}).unlearn(model, task)


def test_salun_is_masked_rl_and_times_the_mask():
    model, task = tiny_model(), tiny_task()
    out = SalUn(epochs=2).unlearn(model, task)
    mask = saliency_mask(model, task.forget, sparsity=0.5, batch_size=task.batch_size)
    for name, p in out.model.named_parameters():
        old = dict(model.named_parameters())[name]
        assert torch.equal(p[~mask[name]], old[~mask[name]])
    assert out.info["mask_fraction"] == pytest.approx(0.5, abs=0.01)
    assert out.info["variant"] == "sequential" and out.seconds > 0
