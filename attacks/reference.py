"""Reference (shadow) models for per-example attacks: how they are given, trained and turned into signals.

Reference-model attacks (`LiRA`, `RMIA`, `UnlearningLiRA`) read a matrix of per-example statistics,
``stats[m, i]`` (or ``stats[m, i, a]`` for ``A`` query augmentations) of reference model ``m`` on example
``i``, and a membership matrix ``keep[m, i]`` (True = example ``i`` was in model ``m``'s training set).
References can be given

* as precomputed statistics (any framework): an array ``(M, n)`` or ``(M, n, A)``;
* as a list of ``nn.Module``: the statistic is computed here with `reference_statistics`;
* as a user training callable: `train_reference_models` draws the training subsets (seeded) and calls it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch import nn

from . import signals as sig
from .validate import check_choice, check_labels, check_positive, check_real, to_numpy

__all__ = [
    "STATISTICS",
    "random_keep",
    "reference_statistics",
    "resolve_references",
    "train_reference_models",
]

#: ``"phi"``: log(p_y/(1−p_y)) exactly from logits (LiRA); ``"confidence"``: p_y = softmax(z/T)_y (RMIA).
STATISTICS = ("phi", "confidence")


def reference_statistics(
    models: Sequence[nn.Module],
    x: Any,
    labels: Any,
    statistic: str = "phi",
    queries: Sequence[sig.Query] | None = None,
    temperature: float = 1.0,
    batch_size: int = 512,
    device: Any = None,
) -> np.ndarray:
    """``stats[m, i]`` (``(M, n)``, or ``(M, n, A)`` with queries) of each model on ``x`` with true
    ``labels``.

    ``"phi"`` = z_y − logsumexp_{k≠y} z_k (exact, temperature ignored); ``"confidence"`` = softmax(z/T)_y.
    Models run in eval mode without gradients (see `attacks.signals.predict_logits`).
    """
    check_choice(statistic, "statistic", STATISTICS)
    t = check_positive(temperature, "temperature")
    models = list(models)
    if not models:
        raise ValueError("models is empty; pass at least one reference model")
    out = []
    for i, model in enumerate(models):
        if not isinstance(model, nn.Module):
            raise TypeError(f"models[{i}] must be an nn.Module, got {type(model).__name__}")
        logits = sig.predict_logits(model, x, batch_size=batch_size, device=device, queries=queries)
        y = check_labels(labels, "labels", n=logits.shape[0], n_classes=logits.shape[-1])
        if statistic == "phi":
            out.append(sig.logit_scaled_confidence_from_logits(logits, y))
        else:
            out.append(sig.confidence(sig.softmax(logits, t), y))
    return np.stack(out)


def random_keep(
    n_examples: int, n_models: int, pkeep: float = 0.5, seed: int = 0, balanced: bool = True
) -> np.ndarray:
    """A seeded membership matrix ``keep`` ``(n_models, n_examples)``.

    ``balanced=True`` (LiRA's design): every example is in exactly round(pkeep·M) models (for each example,
    the
    models with the smallest uniform draws). ``balanced=False``: every model trains on exactly
    round(pkeep·n) examples drawn uniformly.
    """
    if int(n_examples) < 1 or int(n_models) < 1:
        raise ValueError(f"n_examples and n_models must be >= 1, got {n_examples} and {n_models}")
    if not 0 < pkeep < 1:
        raise ValueError(f"pkeep must be in (0, 1), got {pkeep}")
    rng = np.random.default_rng(seed)
    u = rng.random((int(n_models), int(n_examples)))
    if balanced:
        k = int(round(pkeep * n_models))
        return np.argsort(np.argsort(u, axis=0), axis=0) < k
    k = int(round(pkeep * n_examples))
    return np.argsort(np.argsort(u, axis=1), axis=1) < k


def train_reference_models(
    train_fn: Callable[[np.ndarray, int], nn.Module],
    n_examples: int,
    n_models: int,
    pkeep: float = 0.5,
    seed: int = 0,
    keep: Any = None,
    balanced: bool = True,
) -> tuple[list[nn.Module], np.ndarray]:
    """Train reference models with a user callable: ``train_fn(train_indices, seed) -> nn.Module``.

    Model ``m`` trains on ``np.flatnonzero(keep[m])`` (``keep`` drawn by `random_keep` from ``seed`` unless
    given) with its own seed drawn from ``seed``. Use the *same recipe* as the target model. Returns
    ``(models, keep)``.
    """
    if not callable(train_fn):
        raise TypeError("train_fn must be callable as train_fn(train_indices, seed) -> nn.Module")
    if keep is None:
        keep = random_keep(n_examples, n_models, pkeep, seed, balanced)
    else:
        keep = to_numpy(keep, "keep").astype(bool)
        if keep.shape != (n_models, n_examples):
            raise ValueError(
                f"keep must have shape (n_models, n_examples) = {(n_models, n_examples)}, got {keep.shape}"
            )
    seeds = np.random.default_rng([seed, 1]).integers(0, 2**31 - 1, size=n_models)
    models = []
    for m in range(n_models):
        model = train_fn(np.flatnonzero(keep[m]), int(seeds[m]))
        if not isinstance(model, nn.Module):
            raise TypeError(f"train_fn must return an nn.Module, got {type(model).__name__}")
        models.append(model)
    return models, keep


def resolve_references(
    references: Any,
    name: str,
    statistic: str,
    x: Any = None,
    labels: Any = None,
    **kwargs: Any,
) -> np.ndarray:
    """Statistics ``(M, n, A)`` float64 from precomputed statistics or from models run on ``(x, labels)``.

    ``kwargs`` (``queries``, ``temperature``, ``batch_size``, ``device``) are used only with models."""
    unknown = set(kwargs) - {"queries", "temperature", "batch_size", "device"}
    if unknown:
        raise TypeError(
            f"unexpected argument(s) {', '.join(sorted(unknown))}; with models pass x=, labels= and "
            "optionally queries=, batch_size=, device="
        )
    if isinstance(references, nn.Module):
        references = [references]
    if isinstance(references, (list, tuple)) and references and isinstance(references[0], nn.Module):
        if x is None or labels is None:
            raise ValueError(f"{name} is a list of models: pass the examples x= and their labels= too")
        references = reference_statistics(references, x, labels, statistic, **kwargs)
    stats = check_real(references, name, ndim=(2, 3))
    if stats.shape[0] < 1 or stats.shape[1] < 1:
        raise ValueError(f"{name} must hold at least one model and one example, got shape {stats.shape}")
    return stats if stats.ndim == 3 else stats[:, :, None]


def resolve_target(
    target: Any, name: str, statistic: str, n: int, n_queries: int, **kwargs: Any
) -> np.ndarray:
    """The target model's statistics ``(n, A)`` from an array ``(n,)``/``(n, A)`` or a model (needs x,
    labels)."""
    if isinstance(target, nn.Module):
        stats = resolve_references([target], name, statistic, **kwargs)[0]
    else:
        stats = check_real(target, name, ndim=(1, 2))
        stats = stats if stats.ndim == 2 else stats[:, None]
    if stats.shape != (n, n_queries):
        raise ValueError(
            f"{name} has shape {stats.shape} but the references give {n} examples x {n_queries} queries; "
            "score the same examples, in the same order, with the same queries"
        )
    return stats


def check_keep(keep: Any, shape: tuple[int, int], name: str = "keep") -> np.ndarray:
    k = to_numpy(keep, name)
    if k.shape != shape:
        raise ValueError(f"{name} must have shape (n_models, n_examples) = {shape}, got {k.shape}")
    if k.dtype != bool:
        if not np.all(np.isin(k, (0, 1))):
            raise ValueError(f"{name} must be boolean (True = example in that model's training set)")
        k = k.astype(bool)
    return k
