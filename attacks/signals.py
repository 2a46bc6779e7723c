"""Per-example signals (features) a membership-inference attack reads from a classifier's outputs.

Conventions: ``probs`` are softmax probabilities of shape ``(n, K)`` or ``(n, A, K)`` (``A`` query
augmentations), ``labels`` are the true classes, shape ``(n,)``. Every function returns a float64 numpy array
of shape ``(n,)`` (or ``(n, A)``). Functions of probabilities floor every probability a log is taken of
at ``PROB_FLOOR`` = 1e-30, so p = 0 and p = 1 give finite values; the logit-based
`logit_scaled_confidence_from_logits` is exact and needs no floor.

Model helpers (`predict_logits`, `predict_probs`) run a module in ``eval()`` mode under
``torch.no_grad()``, in batches, on any device, and restore every submodule's train/eval mode afterwards.

Signals (``p_y`` = probability of the true class):

============================  ============================================================  ==================
name                          formula                                                       member tends to be
============================  ============================================================  ==================
``confidence``                p_y                                                           high
``loss``                      −log p_y                                                      low
``entropy``                   H(p) = −Σ_k p_k log p_k                                       low
``m_entropy``                 −(1−p_y) log p_y − Σ_{k≠y} p_k log(1−p_k)  (Song & Mittal)    low
``phi``                       log(p_y / (1−p_y)) = z_y − logsumexp_{k≠y} z_k   (LiRA)       high
``correctness``               1[argmax_k p_k = y]                                           1
============================  ============================================================  ==================
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .validate import check_choice, check_labels, check_positive, check_probs, check_real

#: Smallest probability a log is taken of (as in Song & Mittal's code): log(1e-30) ≈ −69.1.
PROB_FLOOR = 1e-30

#: Signal names accepted by `membership_signal` (higher = more likely a member).
SIGNALS = ("confidence", "loss", "entropy", "m_entropy", "phi", "correctness")

__all__ = [
    "PROB_FLOOR",
    "SIGNALS",
    "confidence",
    "correctness",
    "entropy",
    "hflip",
    "logit_scaled_confidence",
    "logit_scaled_confidence_from_logits",
    "loss",
    "membership_signal",
    "modified_entropy",
    "predict_logits",
    "predict_probs",
    "softmax",
]


# ----------------------------------------------------------------------------------------------------------
# helpers


def _probs_labels(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p = check_probs(probs, "probs")
    if p.ndim not in (2, 3):
        raise ValueError(f"probs must have shape (n, K) or (n, A, K), got {p.shape}")
    y = check_labels(labels, "labels", n=p.shape[0], n_classes=p.shape[-1])
    return p, y


def _index(y: np.ndarray, ndim: int) -> np.ndarray:
    """Labels shaped to index the last axis of an array with ``ndim`` dimensions."""
    return y.reshape((-1,) + (1,) * (ndim - 1))


def _true(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """p[i, ..., y_i]."""
    return np.take_along_axis(p, _index(y, p.ndim), axis=-1)[..., 0]


def _others(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Σ_{k≠y} p_k, summed directly (no cancellation in 1 − p_y when p_y ≈ 1)."""
    mask = np.arange(p.shape[-1]) == _index(y, p.ndim)
    return np.where(mask, 0.0, p).sum(axis=-1)


def _log(p: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(p, PROB_FLOOR))


# ----------------------------------------------------------------------------------------------------------
# signals of probabilities


def softmax(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """softmax(z / T) along the last axis, computed as exp(z/T − logsumexp(z/T)) in float64."""
    t = check_positive(temperature, "temperature")
    z = check_real(logits, "logits") / t
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def confidence(probs: Any, labels: Any) -> np.ndarray:
    """True-class confidence p_y."""
    p, y = _probs_labels(probs, labels)
    return _true(p, y)


def loss(probs: Any, labels: Any) -> np.ndarray:
    """Cross-entropy loss −log p_y (p_y floored at ``PROB_FLOOR``, so at most ≈ 69.1)."""
    p, y = _probs_labels(probs, labels)
    return -_log(_true(p, y))


def entropy(probs: Any) -> np.ndarray:
    """Shannon entropy H(p) = −Σ_k p_k log p_k, with 0·log 0 = 0."""
    p = check_probs(probs, "probs")
    return -np.where(p > 0, p * _log(p), 0.0).sum(axis=-1)


def modified_entropy(probs: Any, labels: Any, compat: bool = False) -> np.ndarray:
    """Song & Mittal's modified entropy Mentr(p, y) = −(1−p_y)·log p_y − Σ_{k≠y} p_k·log(1−p_k).

    It is low for a confident correct prediction and high for a confident wrong one (plain entropy is low for
    both). ``1 − p_y`` is computed as Σ_{k≠y} p_k, and logs are floored at ``PROB_FLOOR``.

    ``compat=True`` reproduces the OPTML-Group (SalUn / Unlearn-Sparse) helper instead, for matching published
    numbers only. It is *not* the modified entropy: with S = the set of classes occurring anywhere in
    ``labels``, it returns −Σ_{k∈S} (1−p_k)·log p_k − Σ_{k∉S} p_k·log p_k for every row
    (so when every class occurs it is −Σ_k (1−p_k) log p_k and does not depend on the row's own label).
    """
    p, y = _probs_labels(probs, labels)
    if compat:
        in_s = np.zeros(p.shape[-1], dtype=bool)
        in_s[np.unique(y)] = True
        weight = np.where(in_s, 1.0 - p, p)
        return -(weight * _log(p)).sum(axis=-1)
    mask = np.arange(p.shape[-1]) == _index(y, p.ndim)
    p_y = _true(p, y)
    rest = _others(p, y)
    term_y = -rest * _log(p_y)
    term_k = -np.where(mask, 0.0, p * _log(1.0 - p)).sum(axis=-1)
    return term_y + term_k


def logit_scaled_confidence(probs: Any, labels: Any) -> np.ndarray:
    """LiRA's statistic φ = log(p_y / (1 − p_y)) = log p_y − log Σ_{k≠y} p_k, from probabilities.

    Both terms are floored at ``PROB_FLOOR``, so |φ| ≤ 69.1 and p_y ∈ {0, 1} is finite. Prefer
    `logit_scaled_confidence_from_logits` when logits are available: it is exact at any confidence.
    """
    p, y = _probs_labels(probs, labels)
    return _log(_true(p, y)) - _log(_others(p, y))


def logit_scaled_confidence_from_logits(logits: Any, labels: Any) -> np.ndarray:
    """φ = z_y − logsumexp_{k≠y} z_k (exactly log(p_y/(1−p_y)) for p = softmax(z)), in float64, never inf.

    ``logits`` has shape ``(n, K)`` or ``(n, A, K)``.
    """
    z = check_real(logits, "logits", ndim=(2, 3))
    y = check_labels(labels, "labels", n=z.shape[0], n_classes=z.shape[-1])
    mask = np.arange(z.shape[-1]) == _index(y, z.ndim)
    z_y = _true(z, y)
    rest = np.where(mask, -np.inf, z)
    m = rest.max(axis=-1, keepdims=True)
    lse_rest = m[..., 0] + np.log(np.exp(rest - m).sum(axis=-1))
    return z_y - lse_rest


def correctness(probs: Any, labels: Any) -> np.ndarray:
    """1[argmax_k p_k = y] as float64 (ties resolved to the lowest index, as ``argmax``)."""
    p, y = _probs_labels(probs, labels)
    return (p.argmax(axis=-1) == _index(y, p.ndim - 1)).astype(np.float64)


def membership_signal(
    probs: Any, labels: Any, signal: str = "confidence", compat: bool = False
) -> np.ndarray:
    """A signal oriented so that higher = more likely a member.

    ``confidence`` → p_y, ``phi`` → φ, ``correctness`` → 1[correct], ``loss`` → −loss, ``entropy`` → −H,
    ``m_entropy`` → −Mentr (``compat`` selects the OPTML variant, see `modified_entropy`).
    """
    check_choice(signal, "signal", SIGNALS)
    if signal == "confidence":
        return confidence(probs, labels)
    if signal == "phi":
        return logit_scaled_confidence(probs, labels)
    if signal == "correctness":
        return correctness(probs, labels)
    if signal == "loss":
        return -loss(probs, labels)
    if signal == "entropy":
        p, _ = _probs_labels(probs, labels)
        return -entropy(p)
    return -modified_entropy(probs, labels, compat=compat)


# ----------------------------------------------------------------------------------------------------------
# model outputs

Query = Callable[[Tensor], Tensor]


def hflip(x: Tensor) -> Tensor:
    """Horizontal flip of image batches ``(n, C, H, W)`` (the last axis is reversed): LiRA's second query."""
    return x.flip(-1)


def _batches(data: Any, batch_size: int) -> Iterable[Tensor]:
    if isinstance(data, Tensor):
        for i in range(0, data.shape[0], batch_size):
            yield data[i : i + batch_size]
        return
    if isinstance(data, torch.utils.data.DataLoader):
        loader = data
    elif isinstance(data, torch.utils.data.Dataset):
        loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    else:
        raise TypeError(
            f"x must be a Tensor, a torch Dataset or a DataLoader in a fixed order, got {type(data).__name__}"
        )
    for batch in loader:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


def _cpu(t: Tensor) -> Tensor:
    t = t.detach().cpu()
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _device_of(model: nn.Module, device: Any) -> torch.device:
    if device is not None:
        return torch.device(device)
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    x: Any,
    batch_size: int = 512,
    device: Any = None,
    queries: Sequence[Query] | None = None,
) -> Tensor:
    """Logits of ``model`` on ``x`` on the CPU, shape ``(n, K)``, or ``(n, A, K)`` with ``A = len(queries)``.

    Half precision is promoted to float32; other dtypes are kept.

    ``x`` is a Tensor, a Dataset yielding ``(input, label)`` or a DataLoader with a fixed order. The model
    runs in ``eval()`` mode under ``no_grad`` on ``device`` (default: where its parameters live);
    every submodule's train/eval flag is restored afterwards. ``queries`` are deterministic input transforms
    (e.g. ``(lambda x: x, hflip)``) applied to each batch; never pass random augmentations here.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if queries is not None and len(queries) == 0:
        raise ValueError("queries must be None or a non-empty sequence of input transforms")
    dev = _device_of(model, device)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        out = []
        for xb in _batches(x, int(batch_size)):
            xb = xb.to(dev)
            if queries is None:
                out.append(_cpu(model(xb)))
            else:
                out.append(torch.stack([_cpu(model(q(xb))) for q in queries], dim=1))
    finally:
        for m, mode in modes:
            m.training = mode
    if not out:
        raise ValueError("x is empty; pass at least one example")
    return torch.cat(out, dim=0)


def predict_probs(
    model: nn.Module,
    x: Any,
    batch_size: int = 512,
    device: Any = None,
    queries: Sequence[Query] | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """softmax(logits / T) of `predict_logits` (same shapes and dtype, on the CPU)."""
    t = check_positive(temperature, "temperature")
    return torch.softmax(predict_logits(model, x, batch_size, device, queries) / t, dim=-1)
