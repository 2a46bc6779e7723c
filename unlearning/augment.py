"""Training-time image augmentation in torch: random crop with zero padding and horizontal flip.

An augmentation is ``(x, generator) -> x`` on a batch (n, C, H, W) (`unlearning.data_types.Augment`); all
randomness is drawn from ``generator`` (a CPU ``torch.Generator``), so a seeded run is
reproducible on any device.

Per dataset (`default_augment`): ``cifar10`` and ``synthetic`` images ≥ 16 px use ``RandomCrop(H, padding=4)``
+ ``RandomHorizontalFlip`` as the published CIFAR recipe does. ``digits`` and ``mnist5k`` use none: a flip
changes what a digit is (2/5, 3/ε, 7), and a 4-pixel shift on an 8x8 digit moves half the image out of frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class RandomCropFlip:
    """``x'_i = flip_i(pad_p(x_i)[:, a_i : a_i + H, b_i : b_i + W])`` with offsets a_i, b_i uniform on
    {0, …, 2p} and flip_i (mirror along the width) with probability ``flip`` (0.5 by default)."""

    padding: int = 4
    flip: float = 0.5

    def __post_init__(self) -> None:
        if self.padding < 0:
            raise ValueError(f"padding must be >= 0, got {self.padding}")
        if not 0 <= self.flip <= 1:
            raise ValueError(f"flip must be a probability in [0, 1], got {self.flip}")

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"augmentation needs a batch (n, C, H, W), got shape {tuple(x.shape)}")
        n, _, h, w = x.shape
        p = self.padding
        # Draw everything first (fixed order) so the random stream does not depend on the flags in use.
        rows0 = torch.randint(0, 2 * p + 1, (n,), generator=generator)
        cols0 = torch.randint(0, 2 * p + 1, (n,), generator=generator)
        flips = torch.rand(n, generator=generator) < self.flip
        out = x
        if p > 0:
            padded = F.pad(x, (p, p, p, p))
            dev = x.device
            rows = (rows0[:, None] + torch.arange(h)).to(dev)  # (n, H)
            cols = (cols0[:, None] + torch.arange(w)).to(dev)  # (n, W)
            batch = torch.arange(n, device=dev)[:, None, None]
            # Advanced indexing on dims 0, 2, 3 puts the channel last: (n, H, W, C) -> (n, C, H, W).
            out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        if self.flip > 0:
            mask = flips.to(x.device)[:, None, None, None]
            out = torch.where(mask, out.flip(-1), out)
        return out.contiguous()


def random_crop_flip(padding: int = 4, flip: float = 0.5) -> RandomCropFlip:
    """The CIFAR training augmentation: ``RandomCrop(size, padding)`` then ``RandomHorizontalFlip(flip)``."""
    return RandomCropFlip(padding=padding, flip=flip)


def default_augment(dataset: str, image_shape: tuple[int, int, int]) -> RandomCropFlip | None:
    """The training augmentation for ``dataset`` (see the module docstring for the choice)."""
    if dataset == "cifar10":
        return random_crop_flip(4)
    if dataset == "synthetic" and min(image_shape[1:]) >= 16:
        return random_crop_flip(4)
    return None
