"""Training a `ConditionalDiffusion` with classifier-free guidance, and its on-disk cache.

Recipe (the published DDPM code's, sized for a CPU): minimise `diffusion_loss` (ε prediction, linear β
schedule) with the class label replaced by ∅ with probability ``label_dropout`` = 0.1; Adam (learning rate
``lr`` after a linear warm-up of ``warmup`` steps), gradient norm clipped to ``grad_clip`` = 1.0; an
exponential moving average of the weights θ̄ ← d·θ̄ + (1 − d)·θ with d = min(``ema_decay``, (1 + n)/(10 + n))
at step n (the warm-up keeps the average from being mostly the random initialisation in a short run).
`train` returns the EMA model. `load_or_train` caches it like the classifiers (`unlearning.cache`: atomic,
keyed by the dataset, a fingerprint of the training data, the full config and the device type);
``exclude_classes`` trains without those classes (the Retrain reference of class forgetting).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from ..cache import Trained, fingerprint
from ..cache import load_or_train as cached
from ..data_types import ArrayData
from .diffusion import diffusion_loss
from .model import ConditionalDiffusion, UNetConfig, build_unet


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained diffusion model (frozen; ``asdict`` is its cache key)."""

    unet: UNetConfig = field(default_factory=UNetConfig)
    steps: int = 750
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 100
    ema_decay: float = 0.999
    label_dropout: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    exclude_classes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(
                    f"TrainConfig.{name}: must be a positive integer, got {getattr(self, name)!r}"
                )
        if not (self.lr > 0 and self.grad_clip > 0):
            raise ValueError("TrainConfig.lr and grad_clip: must be positive")
        if not (0.0 <= self.ema_decay < 1.0 and 0.0 <= self.label_dropout < 1.0):
            raise ValueError("TrainConfig.ema_decay and label_dropout: must lie in [0, 1)")
        if int(self.warmup) < 0:
            raise ValueError(f"TrainConfig.warmup: must be >= 0, got {self.warmup!r}")
        bad = [c for c in self.exclude_classes if not 0 <= int(c) < self.unet.num_classes]
        if bad:
            raise ValueError(f"TrainConfig.exclude_classes: {bad} not in [0, {self.unet.num_classes - 1}]")

    def describe(self) -> dict:
        """A JSON-able description."""
        return asdict(self)


def training_data(data, exclude_classes=()) -> ArrayData:
    """``data`` (an `ArrayData`, or a `Dataset` whose train split is used) without ``exclude_classes``."""
    data = getattr(data, "train", data)
    if not isinstance(data, ArrayData):
        raise TypeError(f"data: give an ArrayData or a Dataset, got {type(data).__name__}")
    if exclude_classes:
        keep = ~torch.isin(data.y, torch.as_tensor(list(exclude_classes), device=data.y.device))
        data = data.subset(keep)
    if len(data) == 0:
        raise ValueError("data: no training images left (every class excluded?)")
    return data


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """θ̄ ← d·θ̄ + (1 − d)·θ for every parameter (buffers copied)."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def drop_labels(labels: Tensor, p: float, null: int, generator: torch.Generator) -> Tensor:
    """Classifier-free guidance training: each label becomes ``null`` with probability ``p``."""
    drop = torch.rand(labels.shape, generator=generator) < p
    return torch.where(drop.to(labels.device), torch.full_like(labels, null), labels)


def train(
    config: TrainConfig,
    data,
    *,
    device: torch.device | str = "cpu",
    model: ConditionalDiffusion | None = None,
    callback: Callable[[int, ConditionalDiffusion, float], None] | None = None,
    callback_every: int = 0,
) -> ConditionalDiffusion:
    """Train ``model`` (default: ``build_unet(config.unet)`` seeded by ``config.seed``) for ``config.steps``
    Adam steps on ``data`` and return the EMA model (eval mode). ``callback(step, ema, seconds)`` runs every
    ``callback_every`` steps (its time is not counted in ``seconds``)."""
    data = training_data(data, config.exclude_classes).to(device)
    gen = torch.Generator().manual_seed(int(config.seed))
    model = (_seeded(config) if model is None else model).to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda n: min(1.0, (n + 1) / max(1, config.warmup)))
    n, seconds, start = len(data), 0.0, time.perf_counter()
    for step in range(1, config.steps + 1):
        idx = torch.randint(0, n, (min(config.batch_size, n),), generator=gen).to(data.x.device)
        labels = drop_labels(data.y[idx], config.label_dropout, model.null_label, gen)
        loss = diffusion_loss(model, data.x[idx], labels, generator=_device_generator(gen, device))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"train: the diffusion loss is {loss.item()} at step {step} (lower lr?)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        sched.step()
        ema_update(ema, model, min(config.ema_decay, (1.0 + step) / (10.0 + step)))
        if callback is not None and callback_every and step % callback_every == 0:
            seconds += time.perf_counter() - start
            callback(step, ema, seconds)
            start = time.perf_counter()
    return ema.requires_grad_(True)  # as a model loaded from the cache: trainable by the unlearning methods


def _device_generator(gen: torch.Generator, device) -> torch.Generator | None:
    """The CPU generator on CPU; on another device a generator there seeded from it."""
    if torch.device(device).type == "cpu":
        return gen
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    return torch.Generator(device=device).manual_seed(seed)


def load_or_train(
    dataset,
    config: TrainConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    *,
    use_cache: bool = True,
) -> Trained:
    """The trained EMA model of ``config`` on ``dataset``'s train split, from the cache or trained now
    (`unlearning.cache.load_or_train`: ``.pt`` + ``.json`` written atomically, keyed by the config)."""
    config = config or TrainConfig()
    data = training_data(dataset, config.exclude_classes)
    key = {
        "dataset": dataset.describe() if hasattr(dataset, "describe") else None,
        "data": fingerprint(data.x, data.y),
        "train": config.describe(),
        "device": torch.device(device).type,
    }

    def build() -> ConditionalDiffusion:
        return build_unet(config.unet).to(device)

    def fit(_: ConditionalDiffusion) -> ConditionalDiffusion:  # a fresh model seeded by config.seed
        return train(config, data, device=device)

    return cached("diffusion", key, build, fit, cache_dir=cache_dir, use_cache=use_cache)


def _seeded(config: TrainConfig) -> ConditionalDiffusion:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(config.seed))
        return build_unet(config.unet)
