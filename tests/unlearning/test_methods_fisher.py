"""FF (Fisher forgetting), the fourteenth method: its update equals the published ``fisher`` rule written out
by hand (per-sample autograd of the true-class log-probability, (g + 1e-8)² averaged over D_r, noise
σ = min(√(α/F), 1e-3), ×10 on tensors whose last dimension is the class count), it is seeded, it has no
lower level, and a mask restricts the noise."""

from __future__ import annotations

import pytest
import torch

from tests.unlearning.test_methods_helpers import K, state, tiny_model, tiny_task
from unlearning.methods import FF, REGISTRY, NoLowerLevelError, make
from unlearning.methods.fisher import fisher_diagonal
from unlearning.saliency import Masked


def published_fisher(model, retain, alpha, max_std, generator):
    """The published rule, transcribed as maths: F_j = mean_i (∂_j log p(y_i|x_i) + 1e-8)², then
    θ_j += min(√(α/F_j), max_std)·ε_j (×10 where the tensor's last dimension is K), one tensor at a time."""
    model = model.eval()
    params = list(model.parameters())
    fisher = [torch.zeros_like(p) for p in params]
    for x, y in zip(retain.x, retain.y):
        logp = torch.log_softmax(model(x.unsqueeze(0)), dim=-1)[0, y]
        grads = torch.autograd.grad(logp, params)
        for f, g in zip(fisher, grads):
            f += (g + 1e-8) ** 2
    out = {}
    for (name, p), f in zip(model.named_parameters(), fisher):
        std = torch.sqrt(alpha / (f / len(retain))).clamp(max=max_std)
        if p.shape[-1] == K:
            std = std * 10
        out[name] = p.detach() + std * torch.randn(p.shape, generator=generator, dtype=p.dtype)
    return out


@pytest.mark.parametrize("alpha,max_std", [(0.2, 1e-3), (1e-9, 10.0)])
def test_ff_equals_the_published_rule(alpha, max_std):
    """At the published constants the clamp decides almost every σ; with α tiny and the clamp lifted the
    Fisher term decides them: both match the hand-written rule."""
    model, task = tiny_model(), tiny_task()
    out = FF(alpha=alpha, max_std=max_std).unlearn(model, task)
    expected = published_fisher(tiny_model(), task.retain, alpha, max_std, task.generator(1301))
    got = dict(out.model.named_parameters())
    for name, value in expected.items():
        torch.testing.assert_close(got[name].detach(), value, rtol=1e-10, atol=1e-12)


def test_fisher_diagonal_matches_the_per_sample_loop():
    model, task = tiny_model(), tiny_task()
    flat = fisher_diagonal(model, task.retain, batch_size=7)
    params = list(model.parameters())
    total = torch.zeros_like(flat)
    for x, y in zip(task.retain.x, task.retain.y):
        logp = torch.log_softmax(model(x.unsqueeze(0)), dim=-1)[0, y]
        total += torch.cat([((g + 1e-8) ** 2).reshape(-1) for g in torch.autograd.grad(logp, params)])
    torch.testing.assert_close(flat, total / len(task.retain), rtol=1e-12, atol=1e-18)


def test_ff_is_seeded_registered_and_has_no_lower_level():
    model, task = tiny_model(), tiny_task()
    before = state(model)
    a, b = make("ff").unlearn(model, task), make("ff").unlearn(model, task)
    assert all(torch.equal(x, y) for x, y in zip(state(a.model).values(), state(b.model).values()))
    assert all(torch.equal(before[k], v) for k, v in state(model).items())  # the input is not mutated
    assert REGISTRY["ff"] is FF and list(REGISTRY)[-1] == "ff"
    with pytest.raises(NoLowerLevelError, match="FF has no lower_loss"):
        make("ff").bind(model, task)
    with pytest.raises(ValueError, match="max_std must be"):
        make("ff", max_std=0.0)


def test_a_mask_restricts_the_noise():
    model, task = tiny_model(), tiny_task()
    mask = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    first = next(iter(mask))
    mask[first] = torch.ones_like(mask[first])
    out = Masked(method=FF(), mask=mask).unlearn(model, task)
    for name, p in out.model.named_parameters():
        changed = not torch.equal(p.detach(), dict(model.named_parameters())[name].detach())
        assert changed == (name == first), name
