"""Tensor datasets and the `Task` an unlearning method receives.

Everything is an in-memory tensor pair ``(x, y)``: the datasets this project targets on a CPU (digits,
MNIST-5k,
synthetic, CIFAR-10 at 50k images) fit in memory, and tensor batching is faster and simpler to seed than a
``DataLoader``. ``x`` holds float images in ``[0, 1]`` (normalisation lives inside the model), ``y``
int64 labels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

# An augmentation maps a batch of images to a batch of images of the same shape, drawing from `generator`.
Augment = Callable[[Tensor, torch.Generator], Tensor]


@dataclass(frozen=True)
class ArrayData:
    """A labelled tensor dataset: ``x`` of shape (n, ...) and ``y`` of shape (n,) (int64 class indices)."""

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(
                f"x and y must have the same length, got {self.x.shape[0]} and {self.y.shape[0]}"
            )
        if self.y.dtype != torch.int64:
            raise ValueError(f"y must be int64 class indices, got {self.y.dtype}")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, index: Tensor) -> ArrayData:
        """Rows ``index`` (a LongTensor of positions or a boolean mask)."""
        return ArrayData(self.x[index], self.y[index])

    def to(self, device: torch.device | str) -> ArrayData:
        return ArrayData(self.x.to(device), self.y.to(device))

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        augment: Augment | None = None,
    ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Yield ``(x, y, index)`` mini-batches; ``index`` holds the rows' positions in this dataset.

        With ``shuffle`` the order is a permutation drawn from ``generator`` (required, for reproducibility);
        ``augment`` is applied per batch with the same generator.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(self)
        if shuffle:
            if generator is None:
                raise ValueError(
                    "shuffle=True needs a torch.Generator (pass generator=...) for reproducibility"
                )
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            idx_dev = idx.to(self.x.device)
            xb = self.x[idx_dev]
            if augment is not None:
                if generator is None:
                    raise ValueError("augment needs a torch.Generator (pass generator=...)")
                xb = augment(xb, generator)
            yield xb, self.y[idx_dev], idx


@dataclass(frozen=True)
class Task:
    """An unlearning task: the data a method may use, and what it is evaluated on.

    ``pool`` is the training pool the original model was trained on; ``forget_index`` selects D_f inside
    it and
    the rest is D_r. ``forget_class`` is set for class-wise forgetting (the test set then lacks that class).
    ``augment`` is the training augmentation (applied by iterative methods to forget and retain batches,
    as the
    published code does); evaluation never augments.
    """

    pool: ArrayData
    forget_index: Tensor
    val: ArrayData
    test: ArrayData
    num_classes: int
    augment: Augment | None = None
    batch_size: int = 128
    seed: int = 0
    forget_class: int | None = None
    name: str = ""
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        idx = self.forget_index
        if idx.dtype != torch.int64 or idx.dim() != 1:
            raise ValueError("forget_index must be a 1-D int64 tensor of positions in the pool")
        if idx.numel() == 0:
            raise ValueError("forget_index is empty: a forget set needs at least one example")
        if int(idx.min()) < 0 or int(idx.max()) >= len(self.pool):
            raise ValueError(f"forget_index out of range [0, {len(self.pool)})")
        if torch.unique(idx).numel() != idx.numel():
            raise ValueError("forget_index has repeated positions")

    @property
    def forget_mask(self) -> Tensor:
        """Boolean mask over the pool, True on D_f."""
        if "mask" not in self._cache:
            m = torch.zeros(len(self.pool), dtype=torch.bool)
            m[self.forget_index] = True
            self._cache["mask"] = m
        return self._cache["mask"]

    @property
    def forget(self) -> ArrayData:
        """D_f, in the order of ``forget_index``."""
        return self.pool.subset(self.forget_index.to(self.pool.x.device))

    @property
    def retain(self) -> ArrayData:
        """D_r = pool minus D_f, in pool order."""
        keep = (~self.forget_mask).nonzero().squeeze(1)
        return self.pool.subset(keep.to(self.pool.x.device))

    def to(self, device: torch.device | str) -> Task:
        """This task with ``pool``, ``val`` and ``test`` on ``device``; every other field is kept
        (``forget_index`` stays where it is: it indexes the pool, whatever device holds it)."""
        return replace(
            self, pool=self.pool.to(device), val=self.val.to(device), test=self.test.to(device), _cache={}
        )

    def generator(self, offset: int = 0) -> torch.Generator:
        """A CPU generator seeded from the task seed (``offset`` separates independent streams)."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + offset)
