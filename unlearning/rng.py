"""Seeded blocks that leave the caller's random state as it was."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str | None = None) -> Iterator[None]:
    """Run a block with the global generator seeded to ``seed``: the CPU one always, and the CUDA one of
    ``device`` when it is a CUDA device. Every state touched is restored afterwards (``torch.manual_seed``
    alone would also reseed every CUDA generator for good)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    index = None
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
    with torch.random.fork_rng(devices=[] if index is None else [index]):
        torch.random.default_generator.manual_seed(int(seed))
        if index is not None:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(int(seed))
        yield
