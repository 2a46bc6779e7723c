"""ROC plots written to PNG, headless: matplotlib is imported lazily and draws on an Agg canvas without
pyplot, so no display is needed and the process's pyplot backend is left alone."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import auc, roc_curve

__all__ = ["plot_roc"]


def plot_roc(
    curves: Mapping[str, tuple[Any, Any]],
    path: str | Path,
    title: str = "Membership inference ROC",
    scales: tuple[str, ...] = ("linear", "log"),
) -> Path:
    """Plot ROC curves ``{name: (scores, labels)}`` side by side on linear and log-log axes; write a PNG.

    The log-log panel is the one to read for low-FPR behaviour (LiRA's recommendation); its x axis starts at
    the resolution 1/n0 of the curve with the most non-members. Returns the path written.
    """
    if not curves:
        raise ValueError("curves is empty; pass {name: (scores, labels)}")
    for s in scales:
        if s not in ("linear", "log"):
            raise ValueError(f"scales must contain 'linear' and/or 'log', got {s!r}")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    computed = {name: roc_curve(s, m) + (auc(s, m),) for name, (s, m) in curves.items()}
    n0_max = max(int(np.round(1 / np.min(f[f > 0]))) if np.any(f > 0) else 1 for f, *_ in computed.values())
    fig = Figure(figsize=(5 * len(scales), 4.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(scales), squeeze=False)
    for ax, scale in zip(axes[0], scales):
        for name, (fpr, tpr, _, a) in computed.items():
            ax.plot(fpr, tpr, label=f"{name} (AUC {a:.3f})", drawstyle="steps-post")
        lo = 1.0 / max(n0_max, 1)
        grid = np.logspace(np.log10(lo), 0, 100) if scale == "log" else np.linspace(0, 1, 100)
        ax.plot(grid, grid, "k--", lw=0.8, label="chance")
        if scale == "log":
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlim(lo, 1)
            ax.set_ylim(lo, 1)
        else:
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(f"{title} ({scale})")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=100)
    return out
