"""Input validation shared by every attack and metric.

Every check converts its input to a ``numpy`` array (``float64`` for real values, ``int64`` for labels) and
raises ``ValueError`` naming the argument and the fix. Torch tensors on any device are accepted (detached and
copied to the CPU).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

#: Allowed deviation of a probability row's sum from 1 (float32 softmax rows are off by ~1e-7).
PROB_SUM_ATOL = 1e-3
#: Allowed excursion of a probability below 0 or above 1 (round-off only).
PROB_RANGE_ATOL = 1e-6


def to_numpy(x: Any, name: str = "input") -> np.ndarray:
    """Return ``x`` as a numpy array (tensors are detached and moved to the CPU)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return x.numpy()
    try:
        return np.asarray(x)
    except Exception as err:  # pragma: no cover - exotic inputs
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}") from err


def check_real(x: Any, name: str, ndim: int | tuple[int, ...] | None = None) -> np.ndarray:
    """A finite float64 array with the given number of dimensions."""
    arr = to_numpy(x, name)
    if arr.dtype == bool:
        arr = arr.astype(np.float64)
    if not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"{name} must hold numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if arr.ndim not in allowed:
            raise ValueError(
                f"{name} must have {' or '.join(map(str, allowed))} dimensions, got shape {arr.shape}"
            )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf; compute it from finite model outputs")
    return arr


def check_probs(probs: Any, name: str = "probs", atol: float = PROB_SUM_ATOL) -> np.ndarray:
    """Softmax probabilities, shape ``(n, K)`` (or ``(..., K)``), every entry in [0, 1], rows summing to 1.

    Entries within ``PROB_RANGE_ATOL`` outside [0, 1] are clipped; anything further out is an error, as is a
    row whose sum differs from 1 by more than ``atol`` (pass probabilities, not logits: apply softmax first).
    """
    arr = check_real(probs, name)
    if arr.ndim < 2:
        raise ValueError(
            f"{name} must have shape (n, n_classes), got shape {arr.shape}; pass softmax outputs"
        )
    if arr.shape[-1] < 2:
        raise ValueError(f"{name} must have at least 2 classes in its last dimension, got shape {arr.shape}")
    lo, hi = arr.min(initial=0.0), arr.max(initial=1.0)
    if lo < -PROB_RANGE_ATOL or hi > 1 + PROB_RANGE_ATOL:
        raise ValueError(
            f"{name} must be probabilities in [0, 1], found values in [{lo:.4g}, {hi:.4g}]; "
            "if these are logits apply softmax first (attacks.signals.softmax)"
        )
    sums = arr.sum(axis=-1)
    worst = np.max(np.abs(sums - 1.0), initial=0.0)
    if worst > atol:
        raise ValueError(
            f"rows of {name} must sum to 1 (tolerance {atol:g}), worst row sums to {1 + worst:.6g} or "
            f"{1 - worst:.6g}; pass softmax probabilities over all classes"
        )
    return np.clip(arr, 0.0, 1.0)


def check_labels(
    labels: Any, name: str = "labels", n: int | None = None, n_classes: int | None = None
) -> np.ndarray:
    """Integer class labels, shape ``(n,)``, each in ``[0, n_classes)``."""
    arr = to_numpy(labels, name)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (one label per example), got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if (
            np.issubdtype(arr.dtype, np.floating)
            and np.all(np.isfinite(arr))
            and np.all(arr == np.round(arr))
        ):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"{name} must hold integer class labels, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} entries but the matching probabilities have {n} rows")
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} must be >= 0, found {arr.min()}")
    if n_classes is not None and arr.size and arr.max() >= n_classes:
        raise ValueError(
            f"{name} contains class {arr.max()} but the probabilities have only {n_classes} columns"
        )
    return arr


def check_probs_labels(probs: Any, labels: Any, name: str = "probs", atol: float = PROB_SUM_ATOL):
    """Validate ``(probs, labels)``: ``probs`` is ``(n, K)``, ``labels`` is ``(n,)`` with values < K."""
    p = check_probs(probs, name, atol)
    if p.ndim != 2:
        raise ValueError(f"{name} must have shape (n, n_classes), got shape {p.shape}")
    y = check_labels(labels, f"labels for {name}", n=p.shape[0], n_classes=p.shape[1])
    return p, y


def check_membership(labels: Any, name: str = "labels", n: int | None = None) -> np.ndarray:
    """Binary membership labels (1 = member, 0 = non-member) with both classes present."""
    arr = to_numpy(labels, name)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} entries but scores has {n}; pass one label per score")
    if arr.dtype != bool:
        if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isin(arr, (0, 1))):
            raise ValueError(
                f"{name} must be 0/1 (1 = member, 0 = non-member), found values {np.unique(arr)[:5]}"
            )
    arr = arr.astype(bool)
    n1 = int(arr.sum())
    if n1 == 0 or n1 == arr.size:
        which = "non-members (0)" if n1 == arr.size else "members (1)"
        raise ValueError(
            f"{name} contains a single class: no {which}; membership metrics need members and non-members"
        )
    return arr


def check_scores(scores: Any, name: str = "scores") -> np.ndarray:
    """Finite one-dimensional attack scores."""
    return check_real(scores, name, ndim=1)


def check_choice(value: Any, name: str, choices: tuple) -> Any:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_positive(value: Any, name: str, allow_zero: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a number, got {value!r}") from err
    ok = v >= 0 if allow_zero else v > 0
    if not (ok and np.isfinite(v)):
        raise ValueError(
            f"{name} must be a {'non-negative' if allow_zero else 'positive'} finite number, got {value}"
        )
    return v
