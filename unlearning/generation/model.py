"""A class-conditional diffusion model conditioned the way Stable Diffusion is on text.

`ConditionalDiffusion` wraps a `diffusers` ``UNet2DConditionModel``: the class enters ONLY through the
cross-attention context ``encoder_hidden_states``, a learned token sequence ``tokens[c] ∈ R^{L×D}`` per class
(``L = context_tokens``, ``D = cross_attention_dim``), so ESD, FMN and anything else written for SD's text
conditioning applies unchanged. Row ``num_classes`` of the token table is the null (unconditional) context ∅
of classifier-free guidance; label ``-1`` also means ∅. With ``start_token`` (default) one learned token
``start ∈ R^D`` shared by every class and ∅ comes first, as SD's start-of-text token does: the context is
[start, tokens[c]] of length L + 1, and attention can be re-steered away from the class tokens onto it (FMN).

Data space vs diffusion space (SD's latent space, here an affine map instead of a VAE): ``encode(x) = 2x − 1``
maps images in the data range [0, 1] to [−1, 1] and pads them with the background value −1 to
``sample_size``; ``decode(z) = clamp((z + 1) / 2, 0, 1)`` crops back. The network predicts ε (the published
DDPM code's target) for the linear β schedule of `noise_scheduler`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

NUM_TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END = 1e-4, 0.02
PREDICTION_TYPE = "epsilon"


@dataclass(frozen=True)
class UNetConfig:
    """The architecture of a `ConditionalDiffusion` (frozen; part of every cache key).

    ``image_shape`` is the data's (C, H, W); ``sample_size`` the side the UNet sees (images are padded
    centrally to it; it must be divisible by 2^(number of blocks − 1)). ``down_block_types`` are diffusers
    block names (``CrossAttnDownBlock2D`` / ``DownBlock2D``); the up blocks mirror them.
    """

    num_classes: int = 10
    image_shape: tuple[int, int, int] = (1, 8, 8)
    sample_size: int = 8
    block_out_channels: tuple[int, ...] = (32, 64)
    down_block_types: tuple[str, ...] = ("DownBlock2D", "CrossAttnDownBlock2D")
    layers_per_block: int = 1
    cross_attention_dim: int = 32
    context_tokens: int = 1
    start_token: bool = True
    attention_head_dim: int = 32
    norm_num_groups: int = 16

    def __post_init__(self) -> None:
        _check(self.num_classes >= 1, "num_classes", "must be at least 1")
        _check(len(self.image_shape) == 3, "image_shape", "must be (C, H, W)")
        c, h, w = self.image_shape
        _check(self.sample_size >= max(h, w), "sample_size", f"must be at least the image side {max(h, w)}")
        levels = len(self.block_out_channels)
        _check(
            levels == len(self.down_block_types), "down_block_types", "needs one entry per block_out_channels"
        )
        _check(
            self.sample_size % 2 ** (levels - 1) == 0, "sample_size", f"must be divisible by 2^{levels - 1}"
        )
        for n in self.block_out_channels:
            _check(
                n % self.norm_num_groups == 0,
                "block_out_channels",
                f"must be multiples of {self.norm_num_groups}",
            )
        for name in self.down_block_types:
            _check(name in _UP, "down_block_types", f"choose from {sorted(_UP)}")
        _check(self.context_tokens >= 1 and self.cross_attention_dim >= 1, "context_tokens", "must be >= 1")

    def describe(self) -> dict:
        """A JSON-able description (cache keys, reports)."""
        return asdict(self)


_UP = {"CrossAttnDownBlock2D": "CrossAttnUpBlock2D", "DownBlock2D": "UpBlock2D"}


def _check(ok: bool, name: str, fix: str) -> None:
    if not ok:
        raise ValueError(f"UNetConfig.{name}: {fix}")


class ConditionalDiffusion(nn.Module):
    """ε_θ(x_t, t, c): a ``UNet2DConditionModel`` whose only conditioning is the cross-attention context
    ``tokens[c]`` (shape (L, D)); ``tokens[num_classes]`` is the null context ∅."""

    def __init__(
        self,
        unet: nn.Module,
        num_classes: int,
        image_shape: tuple[int, int, int],
        *,
        context_tokens: int = 1,
        start_token: bool = True,
        config: UNetConfig | None = None,
    ) -> None:
        super().__init__()
        self.unet = unet
        self.num_classes = int(num_classes)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.num_train_timesteps = NUM_TRAIN_TIMESTEPS
        self.context_tokens = int(context_tokens)
        self.cross_attention_dim = int(unet.config.cross_attention_dim)
        self.sample_size = int(unet.config.sample_size)
        self.config = config
        self.tokens = nn.Embedding(self.num_classes + 1, self.cross_attention_dim * self.context_tokens)
        nn.init.normal_(self.tokens.weight, std=1.0)
        self.start = nn.Parameter(torch.randn(self.cross_attention_dim)) if start_token else None

    @property
    def null_label(self) -> int:
        """The label of the null (unconditional) context: ``num_classes``."""
        return self.num_classes

    @property
    def context_length(self) -> int:
        """Tokens in a context: ``context_tokens`` (+ 1 with the shared start token)."""
        return self.context_tokens + (self.start is not None)

    def context(self, labels: Tensor) -> Tensor:
        """The cross-attention context (B, context_length, D) of ``labels``: [start, tokens[c]] (or tokens[c]
        without a start token); ``-1`` or ``num_classes`` give ∅."""
        labels = torch.as_tensor(labels, device=self.tokens.weight.device).long().reshape(-1)
        bad = (labels < -1) | (labels > self.num_classes)
        if bool(bad.any()):
            raise ValueError(
                f"labels: must lie in [-1, {self.num_classes}] (-1 or {self.num_classes} = null)"
            )
        labels = torch.where(labels < 0, torch.full_like(labels, self.num_classes), labels)
        ctx = self.tokens(labels).view(-1, self.context_tokens, self.cross_attention_dim)
        if self.start is None:
            return ctx
        return torch.cat([self.start.view(1, 1, -1).expand(ctx.shape[0], 1, -1), ctx], dim=1)

    def forward(
        self, x_t: Tensor, t: Tensor, labels: Tensor | None = None, context: Tensor | None = None
    ) -> Tensor:
        """ε̂ = ε_θ(x_t, t, context); give exactly one of ``labels`` (mapped by `context`) or ``context``."""
        if (labels is None) == (context is None):
            raise ValueError("forward: give exactly one of labels= or context=")
        if context is None:
            context = self.context(labels)
        t = torch.as_tensor(t, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        return self.unet(x_t, t, encoder_hidden_states=context, return_dict=False)[0]

    def encode(self, x: Tensor) -> Tensor:
        """Data range [0, 1] (C, H, W) → diffusion space: 2x − 1, padded with −1 to ``sample_size``."""
        z = 2.0 * x - 1.0
        h, w = z.shape[-2:]
        top, left = (self.sample_size - h) // 2, (self.sample_size - w) // 2
        if top or left or h != self.sample_size or w != self.sample_size:
            pad = (left, self.sample_size - w - left, top, self.sample_size - h - top)
            z = nn.functional.pad(z, pad, value=-1.0)
        return z

    def decode(self, z: Tensor) -> Tensor:
        """Diffusion space → data range: crop to ``image_shape``, (z + 1) / 2 clamped to [0, 1]."""
        _, h, w = self.image_shape
        top, left = (self.sample_size - h) // 2, (self.sample_size - w) // 2
        z = z[..., top : top + h, left : left + w]
        return ((z + 1.0) / 2.0).clamp(0.0, 1.0)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, sample_size, sample_size): the shape the UNet sees."""
        return (self.image_shape[0], self.sample_size, self.sample_size)


def build_unet(config: UNetConfig | None = None) -> ConditionalDiffusion:
    """A fresh, randomly initialised `ConditionalDiffusion` of ``config`` (default: the digits model).

    Built from the config only; nothing is downloaded.
    """
    from diffusers import UNet2DConditionModel

    config = config or UNetConfig()
    channels = config.image_shape[0]
    unet = UNet2DConditionModel(
        sample_size=config.sample_size,
        in_channels=channels,
        out_channels=channels,
        down_block_types=tuple(config.down_block_types),
        up_block_types=tuple(_UP[name] for name in reversed(config.down_block_types)),
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        cross_attention_dim=config.cross_attention_dim,
        attention_head_dim=config.attention_head_dim,
        norm_num_groups=config.norm_num_groups,
    )
    return ConditionalDiffusion(
        unet,
        config.num_classes,
        config.image_shape,
        context_tokens=config.context_tokens,
        start_token=config.start_token,
        config=config,
    )


def sd_layout_unet(
    num_classes: int = 3,
    image_shape: tuple[int, int, int] = (1, 8, 8),
    *,
    channels: int = 8,
    cross_attention_dim: int = 16,
    context_tokens: int = 2,
    seed: int = 0,
) -> ConditionalDiffusion:
    """A tiny randomly initialised UNet with Stable Diffusion's block layout, wrapped the same way (tests).

    SD v1: ``CrossAttnDownBlock2D`` ×3 + ``DownBlock2D``, a cross-attention mid block, the mirrored up blocks,
    2 layers per block; here channels (c, 2c, 4c, 4c) instead of (320, 640, 1280, 1280), ``sample_size`` 16
    (8x8 images are padded) so that the three downsamplings stay ≥ 2 pixels.
    """
    config = UNetConfig(
        num_classes=num_classes,
        image_shape=image_shape,
        sample_size=max(16, max(image_shape[1:])),
        block_out_channels=(channels, 2 * channels, 4 * channels, 4 * channels),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        layers_per_block=2,
        cross_attention_dim=cross_attention_dim,
        context_tokens=context_tokens,
        attention_head_dim=channels,
        norm_num_groups=min(channels, 32),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_unet(config)


def noise_scheduler():
    """The training noise schedule of the published DDPM code: ``DDPMScheduler`` with T = 1000 steps,
    linear β_t from 1e-4 to 0.02, ε prediction; ᾱ_t = Π_{s≤t} (1 − β_s)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        beta_schedule="linear",
        beta_start=BETA_START,
        beta_end=BETA_END,
        prediction_type=PREDICTION_TYPE,
    )
