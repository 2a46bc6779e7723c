"""Image grids of generated samples: one row per class, before and after unlearning side by side.

`save_grid(path, before, after, forget_classes)` takes image tensors of shape (K, n, C, H, W) in [0, 1] (as
`metrics.evaluate_generation` returns them), shows the first ``columns`` samples of every class of ``before``
in the left panel and of ``after`` in the right one, and marks the forgotten classes' rows (red frame and a
"forgotten" label); written through `unlearning.report.save_figure`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor

from ..report import pyplot, save_figure


def tile(images: Tensor, columns: int, gap: int = 1) -> Tensor:
    """(K, n, C, H, W) → one (K·(H+gap), columns·(W+gap), C) mosaic of the first ``columns`` images of each
    row, each followed by a ``gap``-pixel grey (0.5) separator to its right and below."""
    if images.ndim != 5:
        raise ValueError(f"images: expected shape (K, n, C, H, W), got {tuple(images.shape)}")
    cols = min(columns, images.shape[1])
    cells = images[:, :cols].detach().float().cpu().clamp(0, 1)
    cells = torch.nn.functional.pad(cells, (0, gap, 0, gap), value=0.5)
    k, _, c, h, w = cells.shape
    return cells.permute(0, 3, 1, 4, 2).reshape(k * h, cols * w, c)


def save_grid(
    path: str | os.PathLike,
    before: Tensor,
    after: Tensor | None = None,
    forget_classes: Iterable[int] = (),
    *,
    columns: int = 8,
    titles: tuple[str, str] = ("before", "after"),
) -> Path:
    """Write the before / after grid PNG (rows = classes, forgotten rows framed in red); returns the path."""
    plt = pyplot()
    panels = [before] if after is None else [before, after]
    forget = {int(c) for c in forget_classes}
    k, _, c, h, _ = before.shape
    h += 1  # the separator row of `tile`
    fig, axes = plt.subplots(1, len(panels), figsize=(1.6 + 0.35 * columns * len(panels), 0.4 * k + 0.8))
    axes = [axes] if len(panels) == 1 else list(axes)
    for ax, images, title in zip(axes, panels, titles):
        mosaic = tile(images, columns)
        ax.imshow(mosaic.squeeze(-1).numpy() if c == 1 else mosaic.numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([(i + 0.5) * h for i in range(k)])
        ax.set_yticklabels([f"{i} (forgotten)" if i in forget else str(i) for i in range(k)], fontsize=7)
        width = mosaic.shape[1]
        for i in sorted(forget):
            ax.add_patch(
                plt.Rectangle((-0.5, i * h - 0.5), width, h, fill=False, edgecolor="red", linewidth=1.5)
            )
            ax.get_yticklabels()[i].set_color("red")
    return save_figure(fig, path)


def stack_by_class(images: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Images with labels → (K, n, C, H, W), n = the smallest class count (for grids of real data)."""
    groups = [images[labels == k] for k in range(num_classes)]
    n = min(len(g) for g in groups)
    return torch.stack([g[:n] for g in groups])
