"""Membership-inference attacks and their metrics (depends on torch, numpy and scikit-learn only)."""

from . import metrics, signals
from .metrics import (
    AttackReport,
    auc,
    balanced_accuracy,
    evaluate,
    membership_advantage,
    roc_curve,
    tpr_at_fpr,
)
from .plots import plot_roc
from .population import SVCMIA, LossAttack, ThresholdMIA, mia_efficacy
from .signals import predict_logits, predict_probs

__all__ = [
    "SVCMIA",
    "AttackReport",
    "LossAttack",
    "ThresholdMIA",
    "auc",
    "balanced_accuracy",
    "evaluate",
    "membership_advantage",
    "metrics",
    "mia_efficacy",
    "plot_roc",
    "predict_logits",
    "predict_probs",
    "roc_curve",
    "signals",
    "tpr_at_fpr",
]
