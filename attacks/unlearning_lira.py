"""A per-example unlearning attack in the style of U-LiRA (Hayes et al., "Inexact unlearning needs more
careful
evaluations to avoid a false sense of privacy", 2024), in the cheaper fixed-forget-set form.

For a fixed forget set D_f and each example x ∈ D_f:

* H1 ("unlearned"): φ(x) under K₁ models that trained on x and then unlearned D_f with the method under test
  (best: K₁ original models trained with different seeds, each unlearned once; or one original model
  unlearned K₁ times with different seeds, which captures only the unlearning randomness);
* H0 ("never trained on x"): φ(x) under K₀ models retrained from scratch on D_r with different seeds.

Each side is a Gaussian per example (μ: median or mean; σ: pooled "fixed" or per example), and a model's
φ_a(x)
is scored by the likelihood ratio (1/A) Σ_a [log N(φ_a; μ_U, σ_U²) − log N(φ_a; μ_R, σ_R²)]: higher = more
likely an unlearned model than a retrained one. Evaluated on held-out models (or leave-one-out over all
K₁ + K₀), the attack's AUC and TPR at low FPR over (example, model) pairs measure how distinguishable the
method is from exact retraining: 0.5 and FPR-level TPR mean indistinguishable, which Retrain achieves.
Cost: K₁ unlearning runs (plus K₁ original trainings in the fairer design) and K₀ retrainings; K = 8–16 per
side with fixed variance is a workable minimum.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .lira import LiRA
from .metrics import AttackReport, evaluate
from .reference import resolve_references

__all__ = ["UnlearningLiRA", "UnlearningLiRAResult"]


@dataclass
class UnlearningLiRAResult:
    """Scores and membership (1 = unlearned model, 0 = retrained) per (model, forget example), and the
    report."""

    scores: np.ndarray
    labels: np.ndarray
    report: AttackReport

    @property
    def auc(self) -> float:
        return self.report.auc

    def per_example_accuracy(self) -> np.ndarray:
        """For each forget example, the balanced accuracy of deciding "unlearned" iff score > 0 across the
        models (0.5 = indistinguishable from retraining)."""
        pred = self.scores > 0
        lab = self.labels.astype(bool)
        tpr = (pred & lab).sum(0) / np.maximum(lab.sum(0), 1)
        tnr = (~pred & ~lab).sum(0) / np.maximum((~lab).sum(0), 1)
        return 0.5 * (tpr + tnr)


class UnlearningLiRA:
    """Per-example test "unlearned" (H1) vs "retrained without it" (H0) on a fixed forget set.

    ``fit(unlearned, retrained)``: φ of the K₁ unlearned and K₀ retrained reference models on the forget
    examples,
    ``(K, n_f)`` or ``(K, n_f, A)`` (or lists of models with ``x=``, ``labels=`` and optional ``queries=``).
    ``score(target)``: log-likelihood ratio per forget example for one model's φ ``(n_f,)``/``(n_f, A)`` (or
    the
    model). ``audit(...)``: AUC and TPR at low FPR over (example, model) pairs.
    """

    def __init__(self, fix_variance: bool = True, estimator: str = "median", min_std: float = 1e-6) -> None:
        self._lira = LiRA(mode="online", fix_variance=fix_variance, estimator=estimator, min_std=min_std)
        self.fix_variance, self.estimator, self.min_std = fix_variance, estimator, min_std

    @staticmethod
    def _stack(unlearned: Any, retrained: Any, kw: dict) -> tuple[np.ndarray, np.ndarray]:
        u = resolve_references(unlearned, "unlearned", "phi", **kw)
        r = resolve_references(retrained, "retrained", "phi", **kw)
        if u.shape[1:] != r.shape[1:]:
            raise ValueError(
                f"unlearned has shape {u.shape} but retrained {r.shape}: give both on the same forget "
                "examples and queries"
            )
        keep = np.zeros((u.shape[0] + r.shape[0], u.shape[1]), dtype=bool)
        keep[: u.shape[0]] = True
        return np.concatenate([u, r]), keep

    def fit(self, unlearned: Any, retrained: Any, **model_kwargs: Any) -> UnlearningLiRA:
        stats, keep = self._stack(unlearned, retrained, model_kwargs)
        self._lira = copy.copy(self._lira).fit(stats, keep)
        self.n_unlearned_, self.n_retrained_ = int(keep[:, 0].sum()), int((~keep[:, 0]).sum())
        return self

    def score(self, target: Any, **model_kwargs: Any) -> np.ndarray:
        """log N(φ; μ_U, σ_U²) − log N(φ; μ_R, σ_R²) per forget example (mean over queries)."""
        if not hasattr(self, "n_unlearned_"):
            raise RuntimeError("UnlearningLiRA is not fitted; call fit(unlearned, retrained) first")
        return self._lira.score(target, **model_kwargs)

    def audit(
        self,
        unlearned: Any,
        retrained: Any,
        held_out_unlearned: Any = None,
        held_out_retrained: Any = None,
        fprs: Sequence[float] = (0.01, 0.001),
        **model_kwargs: Any,
    ) -> UnlearningLiRAResult:
        """Attack held-out models example by example and report over (example, model) pairs.

        With ``held_out_*`` given: fit on ``unlearned``/``retrained`` and score every held-out model. Without:
        leave-one-out, each of the K₁ + K₀ models in turn is the target, the others are the references.
        """
        if (held_out_unlearned is None) != (held_out_retrained is None):
            raise ValueError(
                "pass both held_out_unlearned and held_out_retrained, or neither (leave-one-out)"
            )
        if held_out_unlearned is None:
            stats, keep = self._stack(unlearned, retrained, model_kwargs)
            scores, labels = self._lira.leave_one_out(stats, keep)
        else:
            self.fit(unlearned, retrained, **model_kwargs)
            held_stats, labels = self._stack(held_out_unlearned, held_out_retrained, model_kwargs)
            scores = np.stack([self.score(s) for s in held_stats])
        report = evaluate(scores, labels, fprs=fprs, name="UnlearningLiRA")
        report.extra.update(n_models=int(scores.shape[0]), n_forget=int(scores.shape[1]))
        return UnlearningLiRAResult(scores=scores, labels=labels.astype(np.int64), report=report)
