"""Metrics of a membership-inference attack, from per-example scores (higher = more likely a member) and
membership labels (1 = member, 0 = non-member), with n1 members and n0 non-members.

* ROC: for every threshold t among the scores, TPR(t) = P(s ≥ t | member), FPR(t) = P(s ≥ t | non-member).
* AUC = P(s_member > s_non-member) + ½ P(tie) (Mann–Whitney); under the null its standard deviation is
  ≈ sqrt((n0 + n1 + 1) / (12 n0 n1)) (`null_auc_std`).
* TPR at FPR α = max{TPR(t) : FPR(t) ≤ α}. The smallest non-zero FPR is 1/n0, so α is only resolved when
  α·n0 ≥ 1; `tpr_at_fpr` reports the number of false positives and non-members behind the value.
* Balanced accuracy at a threshold t: ½(TPR(t) + 1 − FPR(t)); with no threshold, the *oracle*
  max_t ½(TPR + 1 − FPR) on the same data, which is optimistic (≈ 0.5 + O(1/√n) under the null).
* Membership advantage = 2·BA − 1 (oracle: max_t TPR(t) − FPR(t)).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .validate import check_membership, check_real, check_scores, to_numpy

__all__ = [
    "AttackReport",
    "TPRAtFPR",
    "auc",
    "balanced_accuracy",
    "evaluate",
    "membership_advantage",
    "null_auc_std",
    "roc_curve",
    "tpr_at_fpr",
]


def _inputs(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = check_scores(scores, "scores")
    m = check_membership(labels, "labels", n=s.shape[0])
    return s, m


def roc_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` at every distinct score, thresholds decreasing, starting at (0, 0, +inf).

    Equal to ``sklearn.metrics.roc_curve(labels, scores, drop_intermediate=False)``.
    """
    s, m = _inputs(scores, labels)
    order = np.argsort(-s, kind="mergesort")
    s, m = s[order], m[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each run of equal scores
    tps = np.cumsum(m)[last]
    fps = (last + 1) - tps
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return fpr, tpr, np.r_[np.inf, s[last]]


def auc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve = P(s_member > s_non-member) + ½ P(tie), from mid-ranks."""
    s, m = _inputs(scores, labels)
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    mid_rank = (upper - (counts - 1) / 2.0)[inverse]  # 1-based average rank of each score
    n1 = float(m.sum())
    n0 = float(m.size - n1)
    return float((mid_rank[m].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def null_auc_std(n_members: int, n_nonmembers: int) -> float:
    """Standard deviation of the AUC of an uninformative attack: sqrt((n0 + n1 + 1) / (12 n0 n1))."""
    n1, n0 = float(n_members), float(n_nonmembers)
    return float(np.sqrt((n0 + n1 + 1) / (12 * n0 * n1)))


@dataclass(frozen=True)
class TPRAtFPR:
    """TPR at the last ROC point with FPR ≤ ``max_fpr``, and the counts behind it.

    ``float(result)`` is the TPR. ``resolved`` is False when ``max_fpr < 1/n_nonmembers``: then only the
    zero-false-positive point qualifies and the value says little about the rate α itself.
    """

    tpr: float
    fpr: float
    max_fpr: float
    threshold: float
    n_true_positives: int
    n_false_positives: int
    n_members: int
    n_nonmembers: int

    @property
    def resolved(self) -> bool:
        return self.max_fpr * self.n_nonmembers >= 1

    def __float__(self) -> float:
        return self.tpr

    def __str__(self) -> str:
        return (
            f"TPR {100 * self.tpr:.2f}% at FPR {100 * self.fpr:.3g}% <= {100 * self.max_fpr:.3g}% "
            f"({self.n_true_positives}/{self.n_members} members, "
            f"{self.n_false_positives}/{self.n_nonmembers} non-members)"
        )


def tpr_at_fpr(scores: Any, labels: Any, max_fpr: float = 1e-3) -> TPRAtFPR:
    """max{TPR(t) : FPR(t) ≤ max_fpr} (the ≤ convention), with the numbers of examples behind it."""
    a = float(max_fpr)
    if not 0 <= a <= 1:
        raise ValueError(f"max_fpr must be in [0, 1], got {max_fpr}")
    fpr, tpr, thr = roc_curve(scores, labels)
    m = check_membership(labels, "labels")
    n1, n0 = int(m.sum()), int(m.size - m.sum())
    # fpr is non-decreasing; the last point with fpr <= a has the largest tpr among them (tpr non-decreasing)
    i = int(np.searchsorted(fpr, a + 1e-12 / max(n0, 1), side="right")) - 1
    return TPRAtFPR(
        tpr=float(tpr[i]),
        fpr=float(fpr[i]),
        max_fpr=a,
        threshold=float(thr[i]),
        n_true_positives=int(round(tpr[i] * n1)),
        n_false_positives=int(round(fpr[i] * n0)),
        n_members=n1,
        n_nonmembers=n0,
    )


def balanced_accuracy(scores: Any, labels: Any, threshold: float | None = None) -> float:
    """½(TPR + TNR) deciding "member" iff score ≥ ``threshold``.

    ``threshold=None`` gives the oracle value max_t ½(TPR(t) + 1 − FPR(t)) over all thresholds on these same
    examples: optimistic, report it as such (choose thresholds on reference data for comparable numbers).
    """
    if threshold is None:
        fpr, tpr, _ = roc_curve(scores, labels)
        return float(np.max(0.5 * (tpr + 1.0 - fpr)))
    s, m = _inputs(scores, labels)
    t = float(threshold)
    if np.isnan(t):
        raise ValueError("threshold must be a number (or None for the oracle threshold), got NaN")
    pred = s >= t
    return float(0.5 * (pred[m].mean() + (~pred[~m]).mean()))


def membership_advantage(scores: Any, labels: Any, threshold: float | None = None) -> float:
    """Advantage = TPR − FPR = 2·BA − 1 at ``threshold``; oracle max_t (TPR(t) − FPR(t)) when None."""
    return 2.0 * balanced_accuracy(scores, labels, threshold) - 1.0


@dataclass
class AttackReport:
    """Threshold-free summary of an attack: AUC, TPR at the requested FPRs, oracle BA and advantage."""

    name: str
    n_members: int
    n_nonmembers: int
    auc: float
    tpr_at: dict[float, TPRAtFPR]
    balanced_accuracy: float
    advantage: float
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n_members": self.n_members,
            "n_nonmembers": self.n_nonmembers,
            "auc": self.auc,
            "tpr_at_fpr": {a: r.tpr for a, r in self.tpr_at.items()},
            "balanced_accuracy_oracle": self.balanced_accuracy,
            "advantage_oracle": self.advantage,
            **self.extra,
        }

    def __str__(self) -> str:
        tprs = ", ".join(f"TPR@{100 * a:g}%FPR={100 * r.tpr:.2f}%" for a, r in self.tpr_at.items())
        return (
            f"{self.name or 'attack'}: AUC={self.auc:.4f}, {tprs}, oracle BA={self.balanced_accuracy:.4f} "
            f"(n1={self.n_members}, n0={self.n_nonmembers})"
        )


def evaluate(scores: Any, labels: Any, fprs: Sequence[float] = (0.01, 0.001), name: str = "") -> AttackReport:
    """All metrics above for one set of scores. Scores/labels of any shape are flattened (e.g. the
    ``(models, examples)`` pairs of a leave-one-out evaluation)."""
    s = check_real(scores, "scores").ravel()
    m = check_membership(to_numpy(labels, "labels").ravel(), "labels", n=s.size)
    fpr, tpr, _ = roc_curve(s, m)
    ba = float(np.max(0.5 * (tpr + 1.0 - fpr)))
    return AttackReport(
        name=name,
        n_members=int(m.sum()),
        n_nonmembers=int(m.size - m.sum()),
        auc=auc(s, m),
        tpr_at={float(a): tpr_at_fpr(s, m, a) for a in fprs},
        balanced_accuracy=ba,
        advantage=2 * ba - 1,
    )
