"""Tiny problems for the method-rule tests: a float64 MLP on 48 random 1x2x3 'images', K = 3 classes."""

from __future__ import annotations

import torch
from torch import nn

from unlearning.data_types import ArrayData, Task

K = 3


def tiny_task(n: int = 48, forget_every: int = 4, seed: int = 0, batch_size: int = 16) -> Task:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 2, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, K, (n,), generator=g)
    pool = ArrayData(x, y)
    held = ArrayData(
        torch.rand(12, 1, 2, 3, generator=g, dtype=torch.float64), torch.randint(0, K, (12,), generator=g)
    )
    return Task(
        pool=pool,
        forget_index=torch.arange(0, n, forget_every),
        val=held,
        test=held,
        num_classes=K,
        batch_size=batch_size,
        seed=seed,
        name="tiny",
    )


def tiny_model(seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, K))
    return model.double()


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
