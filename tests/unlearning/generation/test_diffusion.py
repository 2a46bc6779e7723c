"""The diffusion maths: forward process against the closed form of the β schedule, the loss against a hand
computation, antithetic timesteps, classifier-free guidance, sampling."""

from __future__ import annotations

import pytest
import torch

from unlearning.generation.diffusion import (
    add_noise,
    alphas_cumprod,
    diffusion_loss,
    guided_eps,
    sample,
    sample_timesteps,
    sampling_scheduler,
)
from unlearning.generation.model import noise_scheduler


def test_forward_process_matches_the_closed_form():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    assert torch.allclose(alphas_cumprod(dtype=torch.float64), abar, rtol=1e-5)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 1, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(5, 1, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 250, 998, 999])
    a = abar[t].view(-1, 1, 1, 1)
    expected = a.sqrt() * x0 + (1 - a).sqrt() * eps
    assert torch.allclose(add_noise(x0, eps, t), expected, rtol=1e-5, atol=1e-7)
    ref = noise_scheduler().add_noise(x0.float(), eps.float(), t)
    assert torch.allclose(add_noise(x0.float(), eps.float(), t), ref, atol=1e-6)
    # the end of the chain is almost pure noise: ᾱ_{T-1} ≈ 4e-5
    assert abar[-1] < 1e-4


def test_loss_equals_a_hand_computation(tiny_model):
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 1, 8, 8, generator=g)
    labels = torch.tensor([0, 1, 2, -1])
    t = torch.tensor([3, 400, 999, 17])
    noise = torch.randn(4, 1, 8, 8, generator=g)
    z0 = 2 * x0 - 1
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)[t].view(-1, 1, 1, 1)
    x_t = abar.sqrt() * z0 + (1 - abar).sqrt() * noise
    eps = tiny_model.unet(x_t, t, encoder_hidden_states=tiny_model.context(labels)).sample
    per = ((noise - eps) ** 2).sum(dim=(1, 2, 3))
    got = diffusion_loss(tiny_model, x0, labels, t=t, noise=noise, reduction="none")
    assert torch.allclose(got, per, rtol=1e-4, atol=1e-5)
    assert torch.allclose(diffusion_loss(tiny_model, x0, labels, t=t, noise=noise), per.mean(), rtol=1e-4)
    assert torch.allclose(
        diffusion_loss(tiny_model, x0, labels, t=t, noise=noise, reduction="sum"), per.sum(), rtol=1e-4
    )
    with pytest.raises(ValueError, match="reduction"):
        diffusion_loss(tiny_model, x0, labels, reduction="max")


def test_loss_draws_are_seeded_and_antithetic(tiny_model):
    x0, labels = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    a = diffusion_loss(tiny_model, x0, labels, generator=torch.Generator().manual_seed(3), antithetic=True)
    b = diffusion_loss(tiny_model, x0, labels, generator=torch.Generator().manual_seed(3), antithetic=True)
    assert torch.equal(a, b)
    t = sample_timesteps(7, generator=torch.Generator().manual_seed(0), antithetic=True)
    assert t.shape == (7,)
    assert torch.equal(t[4:], 999 - t[:3])
    assert torch.equal(t[3], 999 - t[3]) or t[3].item() in range(1000)


def test_classifier_free_guidance_combination(tiny_model):
    x = torch.randn(3, 1, 8, 8)
    t = torch.tensor(321)
    ctx = tiny_model.context(torch.tensor([0, 1, 2]))
    cond = tiny_model(x, t.expand(3), context=ctx)
    uncond = tiny_model(x, t.expand(3), labels=torch.full((3,), 3))
    for s in (0.0, 1.0, 2.0, 7.5):
        assert torch.allclose(guided_eps(tiny_model, x, t, ctx, s), uncond + s * (cond - uncond), atol=1e-5)
    assert torch.allclose(guided_eps(tiny_model, x, t, ctx, 0.0), uncond, atol=1e-5)


def test_sample_is_seeded_in_range_and_restores_mode(tiny_model):
    labels = torch.tensor([0, 1, 2, 0])
    tiny_model.train()
    a = sample(tiny_model, labels, steps=3, generator=torch.Generator().manual_seed(0))
    b = sample(tiny_model, labels, steps=3, generator=torch.Generator().manual_seed(0), batch_size=3)
    assert a.shape == (4, 1, 8, 8) and torch.allclose(a, b, atol=1e-5)
    assert a.min() >= 0 and a.max() <= 1
    assert tiny_model.training
    c = sample(tiny_model, labels, steps=3, sampler="ddpm", generator=torch.Generator().manual_seed(0))
    assert c.shape == a.shape
    with pytest.raises(ValueError, match="sampler"):
        sampling_scheduler("euler", 3)
    with pytest.raises(ValueError, match="steps"):
        sampling_scheduler("ddim", 0)


def test_sampler_does_not_clip_x0_by_default(tiny_model):
    """x̂_0 is left unclipped by default (clipping in a deterministic guided DDIM run lowers sample accuracy,
    docs/generation.md); ``clip=True`` clips it, and then the samples differ."""
    assert sampling_scheduler().config.clip_sample is False
    assert sampling_scheduler(clip=True).config.clip_sample is True
    labels = torch.tensor([0, 1])
    with torch.no_grad():  # push x̂_0 far outside [−1, 1] so that clipping must change the result
        tiny_model.unet.conv_out.bias.add_(-3.0)
    kw = {"steps": 3, "guidance": 2.0}
    free = sample(tiny_model, labels, generator=torch.Generator().manual_seed(0), **kw)
    same = sample(tiny_model, labels, generator=torch.Generator().manual_seed(0), clip=False, **kw)
    clipped = sample(tiny_model, labels, generator=torch.Generator().manual_seed(0), clip=True, **kw)
    assert torch.equal(free, same)
    assert not torch.allclose(free, clipped)
