"""Arithmetic on parameter dicts (``dict[str, Tensor]``), the only container the engine uses."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Params = dict[str, Tensor]


def tmap(fn: Callable[..., Tensor], *trees: Params) -> Params:
    """``{k: fn(t1[k], t2[k], ...)}`` over the keys of the first dict."""
    return {k: fn(*(t[k] for t in trees)) for k in trees[0]}


def add(a: Params, b: Params, alpha: float | Tensor = 1.0) -> Params:
    """a + alpha·b."""
    return {k: a[k] + alpha * b[k] for k in a}


def sub(a: Params, b: Params) -> Params:
    return {k: a[k] - b[k] for k in a}


def scale(a: Params, c: float | Tensor) -> Params:
    return {k: c * v for k, v in a.items()}


def zeros_like(a: Params) -> Params:
    return {k: torch.zeros_like(v) for k, v in a.items()}


def dot(a: Params, b: Params) -> Tensor:
    """Σ_k ⟨a_k, b_k⟩ as a 0-dim tensor."""
    terms = [(a[k] * b[k]).sum() for k in a]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def norm(a: Params) -> Tensor:
    """Euclidean norm of all entries together."""
    return dot(a, a).clamp_min(0).sqrt()


def detach(a: Params) -> Params:
    return {k: v.detach() for k, v in a.items()}


def numel(a: Params) -> int:
    return sum(v.numel() for v in a.values())


def flatten(a: Params) -> Tensor:
    """Concatenate all entries (in key order) into one vector."""
    return torch.cat([v.reshape(-1) for v in a.values()]) if a else torch.zeros(0)


def unflatten(vec: Tensor, like: Params) -> Params:
    """Inverse of `flatten`: split ``vec`` into tensors shaped like ``like``."""
    out, start = {}, 0
    for k, v in like.items():
        out[k] = vec[start : start + v.numel()].reshape(v.shape)
        start += v.numel()
    if start != vec.numel():
        raise ValueError(f"vector has {vec.numel()} entries, the dict needs {start}")
    return out


def check_finite(a: Params | Tensor, where: str) -> None:
    """Raise ``FloatingPointError`` naming ``where`` and the entry if anything is NaN or Inf."""
    items = a.items() if isinstance(a, dict) else [("value", a)]
    for k, v in items:
        if not torch.isfinite(v).all():
            kind = "NaN" if torch.isnan(v).any() else "Inf"
            raise FloatingPointError(f"{kind} in {where} (entry {k!r}); check the losses and step sizes")


def as_params(a: Params, name: str) -> Params:
    """Validate a parameter dict argument: a non-empty dict of tensors with string keys."""
    if not isinstance(a, dict) or not a:
        raise TypeError(f"{name} must be a non-empty dict[str, Tensor], got {type(a).__name__}")
    for k, v in a.items():
        if not isinstance(k, str) or not isinstance(v, Tensor):
            raise TypeError(f"{name} must map str to Tensor; entry {k!r} is {type(v).__name__}")
    return a
