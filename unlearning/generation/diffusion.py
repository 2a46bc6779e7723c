"""The diffusion maths shared by training, unlearning and evaluation: forward process, loss, guided sampling.

Forward process (DDPM): x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, ε ~ N(0, I), ᾱ_t = Π_{s≤t} (1 − β_s) with the
linear β schedule of `model.noise_scheduler` (T = 1000). Every loss in the package goes through
`diffusion_loss` (ε prediction): ℓ(x_0, c) = ‖ε − ε_θ(x_t, t, c)‖² summed over the pixels, t ~ U{0..T−1}
(antithetic: t for the first half of the batch and T − 1 − t for the second, as in the published code).
Images enter in the data range [0, 1] and are mapped by ``model.encode``; `sample` returns ``model.decode``
of the final x_0, i.e. images in the data range again.

Classifier-free guidance: ε̃ = ε_θ(x_t, ∅) + s·(ε_θ(x_t, c) − ε_θ(x_t, ∅)) (s = 1: plain conditional; s = 0:
unconditional).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .model import ConditionalDiffusion, noise_scheduler

SAMPLERS = ("ddim", "ddpm")
_ALPHA_BARS: dict[str, Tensor] = {}


def alphas_cumprod(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """ᾱ_t = Π_{s≤t} (1 − β_s) for t = 0..T−1 of the training schedule, the product taken in float64
    (cached per device and dtype)."""
    key = f"{device}|{dtype}"
    if key not in _ALPHA_BARS:
        abar = torch.cumprod(1.0 - noise_scheduler().betas.double(), 0)
        _ALPHA_BARS[key] = abar.to(device=device, dtype=dtype)
    return _ALPHA_BARS[key]


def add_noise(x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, per sample (``t`` of shape (B,)); ``x0`` in diffusion space."""
    a = alphas_cumprod(x0.device, x0.dtype)[t.long()].view(-1, *([1] * (x0.ndim - 1)))
    return a.sqrt() * x0 + (1.0 - a).sqrt() * noise


def sample_timesteps(
    n: int, *, generator: torch.Generator | None = None, antithetic: bool = False, device="cpu", T: int = 1000
) -> Tensor:
    """t ~ U{0, …, T−1}, shape (n,); antithetic: the second half is T − 1 − (the first half)."""
    if not antithetic:
        return torch.randint(0, T, (n,), generator=generator, device=device)
    half = torch.randint(0, T, ((n + 1) // 2,), generator=generator, device=device)
    return torch.cat([half, T - 1 - half])[:n]


def diffusion_loss(
    model: ConditionalDiffusion,
    x0: Tensor,
    labels: Tensor,
    *,
    generator: torch.Generator | None = None,
    reduction: str = "mean",
    antithetic: bool = False,
    t: Tensor | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """ℓ = ‖ε − ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t, c)‖² summed over pixels; mean over the batch, or per sample
    (``reduction="none"``). ``x0`` in the data range [0, 1]; ``labels`` may hold −1 / ``num_classes`` (∅).
    ``t`` and ``noise`` (diffusion-space shape) may be given to make the draw explicit."""
    if reduction not in ("mean", "none", "sum"):
        raise ValueError(f"reduction: must be 'mean', 'sum' or 'none', got {reduction!r}")
    z0 = model.encode(x0)
    if t is None:
        t = sample_timesteps(
            z0.shape[0],
            generator=generator,
            antithetic=antithetic,
            device=z0.device,
            T=model.num_train_timesteps,
        )
    if noise is None:
        noise = torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
    eps = model(add_noise(z0, noise, t), t, labels=labels)
    per_sample = (noise - eps).pow(2).flatten(1).sum(1)
    if reduction == "none":
        return per_sample
    return per_sample.sum() if reduction == "sum" else per_sample.mean()


def guided_eps(model: ConditionalDiffusion, x_t: Tensor, t, context: Tensor, guidance: float) -> Tensor:
    """ε̃ = ε(x_t, ∅) + s·(ε(x_t, c) − ε(x_t, ∅)) in one batched UNet call (s = ``guidance``)."""
    if guidance == 1.0:
        return model(x_t, t, context=context)
    null = model.context(torch.full((x_t.shape[0],), model.null_label, device=x_t.device))
    t = torch.as_tensor(t, device=x_t.device)
    t2 = t.expand(x_t.shape[0]).repeat(2) if t.ndim == 0 else t.repeat(2)
    eps = model(torch.cat([x_t, x_t]), t2, context=torch.cat([context, null]))
    cond, uncond = eps.chunk(2)
    return uncond + guidance * (cond - uncond)


def sampling_scheduler(sampler: str = "ddim", steps: int = 50, clip: bool = False):
    """A ``DDIMScheduler`` / ``DDPMScheduler`` with the training betas, set to ``steps`` inference steps;
    with ``clip`` x̂_0 is clipped to [−1, 1] at every step (``clip_sample``)."""
    from diffusers import DDIMScheduler, DDPMScheduler

    if sampler not in SAMPLERS:
        raise ValueError(f"sampler: choose from {SAMPLERS}, got {sampler!r}")
    if int(steps) < 1:
        raise ValueError(f"steps: must be a positive integer, got {steps!r}")
    base = noise_scheduler().config
    cls = DDIMScheduler if sampler == "ddim" else DDPMScheduler
    scheduler = cls.from_config(base, clip_sample=bool(clip), clip_sample_range=1.0)
    scheduler.set_timesteps(int(steps))
    return scheduler


@torch.no_grad()
def sample(
    model: ConditionalDiffusion,
    labels: Tensor,
    *,
    steps: int = 50,
    guidance: float = 2.0,
    generator: torch.Generator | None = None,
    sampler: str = "ddim",
    eta: float = 0.0,
    batch_size: int = 500,
    context: Tensor | None = None,
    clip: bool = False,
) -> Tensor:
    """Generate one image per label with classifier-free guidance (scale ``guidance``), by ``steps`` DDIM
    (η = ``eta``) or DDPM ancestral steps from x_T ~ N(0, I); returns images in the data range [0, 1].
    ``context`` (B, L, D) replaces the class tokens when given (e.g. an edited concept); ``clip``: x̂_0 clipped
    to [−1, 1] at every step."""
    device = next(model.parameters()).device
    labels = torch.as_tensor(labels, device=device).long().reshape(-1)
    ctx = model.context(labels) if context is None else context.to(device)
    was_training = model.training
    model.eval()
    try:
        chunks = [
            _sample_chunk(model, ctx[i : i + batch_size], steps, guidance, generator, sampler, eta, clip)
            for i in range(0, ctx.shape[0], batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(chunks) if chunks else torch.empty(0, *model.image_shape, device=device)


def _sample_chunk(model, ctx, steps, guidance, generator, sampler, eta, clip) -> Tensor:
    scheduler = sampling_scheduler(sampler, steps, clip)
    device = ctx.device
    z = torch.randn((ctx.shape[0], *model.latent_shape), generator=generator, device=device)
    for t in scheduler.timesteps:
        eps = guided_eps(model, z, t.to(device), ctx, guidance)
        if sampler == "ddim":
            z = scheduler.step(eps, t, z, eta=eta, generator=generator).prev_sample
        else:
            z = scheduler.step(eps, t, z, generator=generator).prev_sample
    return model.decode(z)
