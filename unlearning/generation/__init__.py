"""Unlearning in class-conditional image generation (issue 11).

A diffusion model conditioned through cross-attention on learned class tokens (`model`), its maths
(`diffusion`), training with caching (`train`), the judge classifier and metrics (`judge`, `metrics`), image
grids (`grid`); the unlearning methods and the worst-case class live beside them. Built on ``diffusers``;
imported only by ``unlearning`` code, never by ``bilevel`` or ``attacks``.
"""

from .diffusion import add_noise, diffusion_loss, guided_eps, sample
from .model import ConditionalDiffusion, UNetConfig, build_unet, noise_scheduler, sd_layout_unet

__all__ = [
    "ConditionalDiffusion",
    "UNetConfig",
    "add_noise",
    "build_unet",
    "diffusion_loss",
    "guided_eps",
    "noise_scheduler",
    "sample",
    "sd_layout_unet",
]
