"""LiRA: the likelihood-ratio attack of Carlini et al., "Membership Inference Attacks From First Principles"
(S&P 2022).

Statistic: φ = log(p_y / (1 − p_y)) of each model on each example (and query augmentation a). For example i,
the reference models give φ under models that trained on it (IN) and models that did not (OUT); each side is
modelled as a Gaussian N(μ, σ²) per example and query (μ: median or mean over the references; σ: per example,
or one pooled "fixed" σ for all examples, recommended below ~64 reference models). The target model's φ_a is
scored as

* online:   S = (1/A) Σ_a [ log N(φ_a; μ_in, σ_in²) − log N(φ_a; μ_out, σ_out²) ]   (likelihood ratio)
* offline:  S = (1/A) Σ_a log Φ((φ_a − μ_out) / σ_out)   (one-sided test against OUT only; monotone in the
  paper's Φ((φ − μ_out)/σ_out) for A = 1). ``offline_test="two_sided"`` gives the reference plot code's
  S = −(1/A) Σ_a log N(φ_a; μ_out, σ_out²) instead.

The pooled ("fixed") variance is σ² = Σ_{i,a} Σ_{m ∈ side(i)} (φ_{m,i,a} − mean_{i,a})² / (N_side − G), the
within-example variance pooled over examples (G groups with at least one reference). σ is floored at
``min_std``. Cost: M reference trainings plus M·n·A forward passes; offline needs OUT models only (for
unlearning: K models retrained without the forget set).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch

from .reference import check_keep, resolve_references, resolve_target
from .validate import check_choice, check_positive

__all__ = ["LiRA", "gaussian_fit", "log_normal_pdf"]


def log_normal_pdf(x: np.ndarray, mu: np.ndarray, std: np.ndarray) -> np.ndarray:
    """log N(x; μ, σ²) = −½((x − μ)/σ)² − log σ − ½ log 2π."""
    z = (x - mu) / std
    return -0.5 * z * z - np.log(std) - 0.5 * math.log(2 * math.pi)


def log_normal_cdf(z: np.ndarray) -> np.ndarray:
    """log Φ(z), accurate far into both tails."""
    return torch.special.log_ndtr(torch.from_numpy(np.asarray(z, dtype=np.float64))).numpy()


def gaussian_fit(
    stats: np.ndarray, mask: np.ndarray, estimator: str, fix_variance: bool, min_std: float, side: str
) -> tuple[np.ndarray, np.ndarray]:
    """Per-example ``(μ, σ)`` of ``stats (M, n, A)`` over the models where ``mask (M, n)`` is True."""
    counts = mask.sum(axis=0)
    if np.any(counts == 0):
        i = int(np.flatnonzero(counts == 0)[0])
        raise ValueError(
            f"example {i} (and {int((counts == 0).sum()) - 1} more) has no {side} reference model; "
            f"train more reference models or use a design in which every example has {side} models"
        )
    vals = np.where(mask[:, :, None], stats, np.nan)
    mean = np.nanmean(vals, axis=0)
    mu = np.nanmedian(vals, axis=0) if estimator == "median" else mean
    sq = np.where(mask[:, :, None], (stats - mean[None]) ** 2, 0.0)
    if fix_variance:
        dof = (counts.sum() - counts.size) * stats.shape[2]
        if dof <= 0:
            raise ValueError(f"the pooled {side} variance needs two {side} reference models for some example")
        std = np.full(mu.shape, math.sqrt(sq.sum() / dof))
    else:
        if np.any(counts < 2):
            raise ValueError(
                f"per-example variance needs at least two {side} reference models per example; "
                "use fix_variance=True (recommended below ~64 reference models) or train more"
            )
        std = np.sqrt(sq.sum(axis=0) / counts[:, None])  # np.std (ddof=0) per example, as the reference code
    return mu, np.maximum(std, min_std)


class LiRA:
    """Likelihood-ratio attack (see the module docstring for the maths).

    Parameters: ``mode`` ``"offline"`` (OUT references only) or ``"online"`` (IN and OUT); ``fix_variance``
    (one pooled σ per side); ``estimator`` ``"median"`` (reference code) or ``"mean"`` for μ;
    ``offline_test`` ``"one_sided"`` (paper) or ``"two_sided"``; ``min_std`` floor on σ.

    ``fit(references, keep)``: ``references`` are φ statistics ``(M, n)`` / ``(M, n, A)`` of M reference
    models
    on the n audited examples (or a list of models, with ``x=``, ``labels=`` and optional ``queries=``);
    ``keep (M, n)`` marks IN (required online; offline uses only its False entries, all models are OUT when
    omitted). The target model must never be among its own references (`leave_one_out` handles this).
    ``score(target)``: φ of the target model on the same examples ``(n,)`` / ``(n, A)`` or the model itself.
    """

    def __init__(
        self,
        mode: str = "offline",
        fix_variance: bool = True,
        estimator: str = "median",
        offline_test: str = "one_sided",
        min_std: float = 1e-6,
    ) -> None:
        self.mode = check_choice(mode, "mode", ("offline", "online"))
        self.fix_variance = bool(fix_variance)
        self.estimator = check_choice(estimator, "estimator", ("median", "mean"))
        self.offline_test = check_choice(offline_test, "offline_test", ("one_sided", "two_sided"))
        self.min_std = check_positive(min_std, "min_std")

    def fit(self, references: Any, keep: Any = None, **model_kwargs: Any) -> LiRA:
        """Fit the per-example Gaussians. ``model_kwargs``: ``x``, ``labels``, ``queries``, ``batch_size``,
        ``device`` (used only when ``references`` is a list of models)."""
        stats = resolve_references(references, "references", "phi", **model_kwargs)
        m, n, a = stats.shape
        if keep is None:
            if self.mode == "online":
                raise ValueError("online LiRA needs keep (which reference models trained on which example)")
            keep_arr = np.zeros((m, n), dtype=bool)
        else:
            keep_arr = check_keep(keep, (m, n))
        fit = dict(estimator=self.estimator, fix_variance=self.fix_variance, min_std=self.min_std)
        self.mu_out_, self.std_out_ = gaussian_fit(stats, ~keep_arr, side="OUT", **fit)
        if self.mode == "online":
            self.mu_in_, self.std_in_ = gaussian_fit(stats, keep_arr, side="IN", **fit)
        self.n_examples_, self.n_queries_ = n, a
        return self

    def score(self, target: Any, **model_kwargs: Any) -> np.ndarray:
        """Per-example score (higher = more likely a member) of the target's φ ``(n,)``/``(n, A)`` or
        model."""
        if not hasattr(self, "mu_out_"):
            raise RuntimeError("LiRA is not fitted; call fit(references, keep) first")
        phi = resolve_target(target, "target", "phi", self.n_examples_, self.n_queries_, **model_kwargs)
        if self.mode == "online":
            llr = log_normal_pdf(phi, self.mu_in_, self.std_in_) - log_normal_pdf(
                phi, self.mu_out_, self.std_out_
            )
            return llr.mean(axis=1)
        if self.offline_test == "one_sided":
            return log_normal_cdf((phi - self.mu_out_) / self.std_out_).mean(axis=1)
        return -log_normal_pdf(phi, self.mu_out_, self.std_out_).mean(axis=1)

    def leave_one_out(self, references: Any, keep: Any, targets: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """LiRA's evaluation: each model in ``targets`` (default: all) in turn is the target, attacked with
        the
        other M − 1 as references. Returns ``(scores, membership)``, both ``(len(targets), n)``; pass them to
        `attacks.metrics.evaluate` to pool the (model, example) pairs."""
        stats = resolve_references(references, "references", "phi")
        keep_arr = check_keep(keep, stats.shape[:2])
        idx = range(stats.shape[0]) if targets is None else [int(t) for t in targets]
        scores = []
        for t in idx:
            others = np.arange(stats.shape[0]) != t
            attack = copy.copy(self).fit(stats[others], keep_arr[others])
            scores.append(attack.score(stats[t]))
        return np.stack(scores), keep_arr[list(idx)]
