"""`GenerationTask`: what a generation unlearning method receives.

A class-conditional generative model was trained on ``data`` (images in the model's data range, int64 class
labels 0..K−1). Unlearning class set C_f ⊂ {0..K−1} ("forget") means: after unlearning, prompting the model
with c ∈ C_f no longer produces images of c, while every remaining class c ∉ C_f is still generated as well as
before. The task holds

- ``data``: the whole training set D (ArrayData);
- ``forget``: the forgotten classes C_f (a sorted tuple of ints);
- ``num_classes``: K;
- ``seed``: the seed of every random draw a method makes (batches, noise, timesteps, pseudo-labels);
- ``train``: optional ``(dataset, TrainConfig, cache_dir)`` so Retrain can train (or load) a model on D_r
  with the same recipe; ``None`` when only the data is known (Retrain then trains with the default config).

D_f = {(x, y) ∈ D : y ∈ C_f} and D_r = D ∖ D_f.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from unlearning.data_types import ArrayData


@dataclass(frozen=True)
class GenerationTask:
    """Forget the classes ``forget`` of a class-conditional generator trained on ``data`` (see module)."""

    data: ArrayData
    forget: tuple[int, ...]
    num_classes: int
    seed: int = 0
    train: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.data, ArrayData):
            raise TypeError(
                f"data must be an unlearning.data_types.ArrayData, got {type(self.data).__name__}"
            )
        k = self.num_classes
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {k!r}")
        forget = (self.forget,) if isinstance(self.forget, int) else tuple(self.forget)
        if not forget:
            raise ValueError("forget must name at least one class, e.g. forget=(3,)")
        for c in forget:
            if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < k:
                raise ValueError(f"forget: class {c!r} is not in 0..{k - 1} (num_classes={k})")
        if len(set(forget)) == k:
            raise ValueError("forget must leave at least one class to remain; it names every class")
        present = set(torch.unique(self.data.y).tolist())
        missing = [c for c in forget if c not in present]
        if missing:
            raise ValueError(f"forget: class(es) {missing} have no example in data")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        object.__setattr__(self, "forget", tuple(sorted(set(forget))))

    # ------------------------------------------------------------------------------------------- views
    @property
    def forget_mask(self) -> Tensor:
        """Boolean mask over ``data``: y ∈ C_f."""
        return torch.isin(self.data.y, torch.tensor(self.forget, device=self.data.y.device))

    @property
    def forget_data(self) -> ArrayData:
        """D_f: every training example of a forgotten class."""
        return self.data.subset(self.forget_mask)

    @property
    def remain_data(self) -> ArrayData:
        """D_r: every training example of a remaining class."""
        return self.data.subset(~self.forget_mask)

    @property
    def remain_classes(self) -> tuple[int, ...]:
        return tuple(c for c in range(self.num_classes) if c not in self.forget)

    def generator(self, offset: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
        """A generator on ``device`` seeded with ``seed + offset`` (one per independent stream of draws)."""
        return torch.Generator(device=device).manual_seed(int(self.seed) + int(offset))

    def with_forget(self, forget: int | tuple[int, ...]) -> GenerationTask:
        """The same task with another forget class set."""
        return dataclasses.replace(self, forget=forget)

    def to(self, device: torch.device | str) -> GenerationTask:
        return dataclasses.replace(self, data=self.data.to(device))


__all__ = ["GenerationTask"]
