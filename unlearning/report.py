"""Output of results for people: terminal tables, markdown and PNG figures. Computing lives elsewhere; this
module only formats what it is given.

`save_figure` is the one way a figure reaches the disk: ``tight_layout``, PNG at 110 dpi, written atomically
(`unlearning.io.write_atomic`), the figure closed. `pyplot` returns matplotlib's pyplot on the headless Agg
backend.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from .io import write_atomic

DPI = 110


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Lay out ``fig``, render it as PNG, write it to ``path`` atomically and close it; returns the path."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return write_atomic(Path(path), lambda f: f.write(buf.getvalue()))
