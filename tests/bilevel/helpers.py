"""Shared helpers of the bilevel tests."""

from __future__ import annotations

import torch

from bilevel import tree


def rel_err(got: dict, want: dict) -> float:
    g, w = tree.flatten(got).detach(), tree.flatten(want).detach()
    return float(torch.linalg.vector_norm(g - w) / torch.linalg.vector_norm(w).clamp_min(1e-300))
