"""The judge: an independent classifier of generated images (UA, remaining-class accuracy, FID features).

As in the published evaluation (a classifier trained on the same data labels the generated images), here an
MLP ``x ↦ W₃ relu(W₂ relu(W₁ vec(x)))`` (hidden widths 256, 128) trained on the real training images of the
dataset with cross-entropy, Adam, and Gaussian-noise augmentation x + σ·ξ, σ ~ U(0, ``noise``), ξ ~ N(0, I),
clamped to [0, 1], so that mild sampling speckle does not change its verdict. Its 128-dimensional penultimate
activations are the feature space of `metrics.fid` (not Inception: no Inception weights can be downloaded
here). It never sees a generated image in training, and it is trained on all classes (it must recognise the
forgotten one). docs/generation.md compares its verdicts with an RBF SVC's.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from ..cache import Trained, fingerprint
from ..cache import load_or_train as cached
from ..data_types import ArrayData


@dataclass(frozen=True)
class JudgeConfig:
    """The judge's recipe (frozen; its cache key)."""

    hidden: tuple[int, int] = (256, 128)
    epochs: int = 60
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    noise: float = 0.15
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.epochs, self.batch_size, *self.hidden) < 1:
            raise ValueError("JudgeConfig.epochs, batch_size and hidden: must be positive integers")
        if not (self.lr > 0 and self.noise >= 0 and self.weight_decay >= 0):
            raise ValueError("JudgeConfig.lr: must be > 0; noise and weight_decay: >= 0")


class Judge(nn.Module):
    """MLP classifier with a feature map: ``features(x)`` (penultimate activations), ``forward`` (logits)."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, hidden: tuple[int, int]) -> None:
        super().__init__()
        d = math.prod(image_shape)
        self.image_shape = tuple(image_shape)
        self.num_classes = int(num_classes)
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(d, hidden[0]), nn.ReLU(), nn.Linear(hidden[0], hidden[1]), nn.ReLU()
        )
        self.head = nn.Linear(hidden[1], num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations φ(x) (the FID feature space)."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))

    @torch.no_grad()
    def predict(self, x: Tensor, batch_size: int = 1024) -> Tensor:
        """argmax of the logits, in eval mode."""
        self.eval()
        return torch.cat([self(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def train_judge(data: ArrayData, num_classes: int, config: JudgeConfig | None = None, device="cpu") -> Judge:
    """Fit a `Judge` on real images ``data`` (x in [0, 1]) with noise augmentation; returned in eval mode."""
    config = config or JudgeConfig()
    gen = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        judge = Judge(tuple(data.x.shape[1:]), num_classes, config.hidden).to(device)
    data = data.to(device)
    opt = torch.optim.Adam(judge.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    judge.train()
    for _ in range(config.epochs):
        for xb, yb, _ in data.batches(config.batch_size, shuffle=True, generator=gen):
            sigma = torch.rand(len(xb), 1, 1, 1, generator=gen).to(device) * config.noise
            xb = (xb + sigma * torch.randn(xb.shape, generator=gen).to(device)).clamp(0.0, 1.0)
            loss = nn.functional.cross_entropy(judge(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return judge.eval()


def load_or_train_judge(
    dataset, config: JudgeConfig | None = None, cache_dir: str | os.PathLike | None = None, device="cpu"
) -> Trained:
    """The judge of ``dataset`` (trained on its train split), cached like every trained model."""
    config = config or JudgeConfig()
    data = dataset.train
    key = {
        "dataset": dataset.describe(),
        "data": fingerprint(data.x, data.y),
        "judge": asdict(config),
        "device": torch.device(device).type,
    }

    def build() -> Judge:
        return Judge(dataset.image_shape, dataset.num_classes, config.hidden).to(device)

    def fit(_: Judge) -> Judge:
        return train_judge(data, dataset.num_classes, config, device)

    return cached("judge", key, build, fit, cache_dir=cache_dir)
