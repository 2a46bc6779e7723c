"""Membership-inference attacks and their metrics. Depends on torch, numpy and scikit-learn only.

Signals (`attacks.signals`): per-example features of softmax outputs, and `predict_logits` / `predict_probs`
to get those outputs from any ``nn.Module``. Population attacks fitted on known members / non-members
(`SVCMIA`, `ThresholdMIA`, `LossAttack`, and `mia_efficacy`, the unlearning papers' MIA-Efficacy protocol).
Reference-model attacks (`LiRA`, `RMIA`, `UnlearningLiRA`), with references given as precomputed statistics,
a list of models, or trained by a callable (`train_reference_models`). Metrics (`attacks.metrics`) and ROC
plots (`plot_roc`). Every attack scores per example, higher = more likely a member.
"""

from . import metrics, signals
from .lira import LiRA
from .metrics import (
    AttackReport,
    TPRAtFPR,
    auc,
    balanced_accuracy,
    evaluate,
    membership_advantage,
    null_auc_std,
    roc_curve,
    tpr_at_fpr,
)
from .plots import plot_roc
from .population import SVCMIA, LossAttack, PopulationAttack, ThresholdMIA, mia_efficacy
from .reference import random_keep, reference_statistics, train_reference_models
from .rmia import RMIA
from .signals import (
    confidence,
    correctness,
    entropy,
    hflip,
    logit_scaled_confidence,
    logit_scaled_confidence_from_logits,
    loss,
    membership_signal,
    modified_entropy,
    predict_logits,
    predict_probs,
    softmax,
)
from .unlearning_lira import UnlearningLiRA, UnlearningLiRAResult

__all__ = [
    # population attacks
    "SVCMIA",
    "LossAttack",
    "PopulationAttack",
    "ThresholdMIA",
    "mia_efficacy",
    # reference-model attacks
    "LiRA",
    "RMIA",
    "UnlearningLiRA",
    "UnlearningLiRAResult",
    "random_keep",
    "reference_statistics",
    "train_reference_models",
    # signals and model outputs
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
    # metrics and plots
    "AttackReport",
    "TPRAtFPR",
    "auc",
    "balanced_accuracy",
    "evaluate",
    "membership_advantage",
    "null_auc_std",
    "plot_roc",
    "roc_curve",
    "tpr_at_fpr",
    # submodules
    "metrics",
    "signals",
]
