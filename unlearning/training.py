"""Training the original and Retrain models with the published recipe scaled to the dataset.

The published recipe (CIFAR-10, ResNet-18): SGD, lr 0.1, momentum 0.9, weight decay 5e-4, batch 256, 182
epochs; the papers use a cosine schedule for Retrain (η_e = η·½(1 + cos(π e / E))). Here the same `Recipe`
trains the original model (on the pool) and Retrain (on D_r), so the two differ only by D_f. Minimised loss:
the mean cross-entropy ``(1/|B|) Σ_{(x,y)∈B} −log softmax(f_θ(x))_y`` over shuffled mini-batches B. The final
epoch's weights are kept (no best-validation checkpoint: with cosine annealing the last epoch is the converged
one, and a validation pick would make Retrain depend on the validation set).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from . import cache
from .data_types import ArrayData, Augment
from .loop import SGDConfig, ce_loss, run_epochs


@dataclass(frozen=True)
class Recipe:
    """SGD training recipe: ``epochs`` epochs of mini-batch ``batch_size`` at rate ``lr``, scheduled."""

    epochs: int
    lr: float
    batch_size: int
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        self.sgd()  # validates lr, momentum, weight_decay and schedule

    def sgd(self) -> SGDConfig:
        return SGDConfig(self.lr, self.momentum, self.weight_decay, schedule=self.schedule)

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **changes) -> Recipe:
        return Recipe(**{**asdict(self), **{k: v for k, v in changes.items() if v is not None}})


# (dataset, model) -> recipe. The CIFAR-10 entry is the published one; the others are scaled so that a CPU
# trains them in seconds to the accuracy the papers' setting has (near 100% train, high test accuracy).
_RECIPES: dict[tuple[str, str], Recipe] = {
    ("digits", "mlp"): Recipe(epochs=20, lr=0.1, batch_size=64),
    ("digits", "cnn"): Recipe(epochs=20, lr=0.05, batch_size=64),
    ("digits", "resnet18"): Recipe(epochs=10, lr=0.05, batch_size=64),
    ("mnist5k", "mlp"): Recipe(epochs=20, lr=0.1, batch_size=128),
    ("mnist5k", "cnn"): Recipe(epochs=8, lr=0.05, batch_size=128),
    ("mnist5k", "resnet18"): Recipe(epochs=10, lr=0.05, batch_size=128),
    ("synthetic", "mlp"): Recipe(epochs=20, lr=0.05, batch_size=64),
    ("synthetic", "cnn"): Recipe(epochs=10, lr=0.05, batch_size=64),
    ("synthetic", "resnet18"): Recipe(epochs=5, lr=0.05, batch_size=64),
    ("cifar10", "mlp"): Recipe(epochs=40, lr=0.05, batch_size=256),
    ("cifar10", "cnn"): Recipe(epochs=40, lr=0.05, batch_size=256),
    ("cifar10", "resnet18"): Recipe(epochs=182, lr=0.1, batch_size=256),
}


def default_recipe(dataset: str, model: str) -> Recipe:
    """The default `Recipe` for ``(dataset, model)`` (a dataset name or an object with ``.name``)."""
    name = getattr(dataset, "name", dataset)
    key = (str(name).lower(), str(model).lower())
    if key not in _RECIPES:
        known = sorted({d for d, _ in _RECIPES}), sorted({m for _, m in _RECIPES})
        raise ValueError(
            f"no default recipe for dataset {name!r} and model {model!r}: datasets {known[0]}, "
            f"models {known[1]}"
        )
    return _RECIPES[key]


def train(
    model: nn.Module,
    data: ArrayData,
    recipe: Recipe,
    *,
    seed: int,
    augment: Augment | None = None,
    description: str = "training",
) -> nn.Module:
    """Train ``model`` in place on ``data`` with ``recipe`` and return it.

    Batches are reshuffled every epoch from one ``torch.Generator`` seeded with ``seed`` (which also drives
    ``augment``); the data are moved to the model's device.
    """
    if len(data) == 0:
        raise ValueError("cannot train on an empty dataset")
    device = next(model.parameters()).device
    data = data.to(device)
    generator = torch.Generator().manual_seed(int(seed))
    run_epochs(
        model,
        epochs=recipe.epochs,
        batches=lambda epoch: data.batches(
            recipe.batch_size, shuffle=True, generator=generator, augment=augment
        ),
        loss=ce_loss,
        sgd=recipe.sgd(),
        description=description,
    )
    model.eval()
    return model


def train_original(
    build: Callable[[], nn.Module],
    data: ArrayData,
    recipe: Recipe,
    *,
    seed: int,
    config: dict,
    augment: Augment | None = None,
    kind: str = "original",
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> cache.Trained:
    """``train(build(), data, recipe, seed=seed, augment=augment)``, cached on disk.

    The cache key is ``config`` (everything else that determines the weights: dataset, split, model, ...) plus
    the recipe, the seed, the augmentation and a fingerprint of ``data``. ``kind`` names the entry
    (``"original"`` or ``"retrain"``; Retrain is this same call on D_r).
    """
    full = {
        **config,
        "recipe": recipe.to_dict(),
        "train_seed": int(seed),
        "augment": repr(augment),
        "data": cache.fingerprint(data.x, data.y),
    }
    return cache.load_or_train(
        kind,
        full,
        build,
        lambda m: train(m, data, recipe, seed=seed, augment=augment, description=kind),
        cache_dir=cache_dir,
        use_cache=use_cache,
    )


def cache_config(
    config: dict, data: ArrayData, recipe: Recipe, *, seed: int, augment: Augment | None = None
) -> dict:
    """The model-cache configuration `train_original` stores a model under: ``config`` plus the recipe, the
    training seed, the augmentation and a fingerprint of ``data`` (for the DDP path, which must find and
    write the same entry)."""
    return {
        **config,
        "recipe": recipe.to_dict(),
        "train_seed": int(seed),
        "augment": repr(augment),
        "data": cache.fingerprint(data.x, data.y),
    }


def train_sharded(
    model: nn.Module,
    data: ArrayData,
    recipe: Recipe,
    *,
    seed: int,
    rank: int,
    world_size: int,
    augment: Augment | None = None,
    description: str = "training",
) -> nn.Module:
    """`train` as process ``rank`` of ``world_size`` under torch DDP (the process group initialised by the
    caller: gloo on CPU, NCCL on GPUs); returns the trained model (the same weights on every rank).

    Every process draws `train`'s batch stream (one generator seeded with ``seed``: the same permutations
    and augmentation) and keeps its shard of each global batch B: the rows rank, rank + N, rank + 2N, ...
    (N = ``world_size``; DistributedSampler's interleaved dealing, applied per batch so that no row is
    padded or dropped). It minimises L_r = (N/|B|) Σ_{i ∈ B_r} ℓ_i (ℓ the cross-entropy); DDP averages the
    gradients, (1/N) Σ_r ∇L_r = (1/|B|) Σ_{i ∈ B} ∇ℓ_i, the single-process gradient of the mean loss, so the
    SGD steps (momentum, weight decay, schedule) and the weights are `train`'s up to float rounding. On CUDA
    BatchNorm layers become SyncBatchNorm (statistics over B, as in one process); on CPU they stay per-shard.
    """
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    if len(data) == 0:
        raise ValueError("cannot train on an empty dataset")
    device = next(model.parameters()).device
    data = data.to(device)
    generator = torch.Generator().manual_seed(int(seed))
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ddp = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    def shards(epoch: int):
        for x, y, _ in data.batches(recipe.batch_size, shuffle=True, generator=generator, augment=augment):
            yield x[rank::world_size], y[rank::world_size], len(y)

    def loss(net: nn.Module, item: tuple, epoch: int) -> torch.Tensor:
        x, y, total = item
        return F.cross_entropy(net(x), y, reduction="sum") * (world_size / total)

    sgd = recipe.sgd()
    run_epochs(ddp, epochs=recipe.epochs, batches=shards, loss=loss, sgd=sgd, description=description)
    model.eval()
    return model
