"""The unlearning metrics of the SalUn / Sparse / Worst-case papers, in percent.

For a model θ and a `Task` (D_f, D_r, D_test):

- ``UA = 100 − Acc(θ; D_f)``  (unlearning accuracy; higher = more forgotten; the target is Retrain's UA)
- ``RA = Acc(θ; D_r)``        (remaining accuracy)
- ``TA = Acc(θ; D_test)``     (test accuracy; class-wise tasks already lack the forgotten class)
- ``MIA = 100 · MIA-Efficacy``: an RBF-SVM (C = 3, gamma = "auto") on the true-class confidence p_y, fitted
  on members = the first |D_test| examples of D_r (pool order) and non-members = D_test, then
  MIA-Efficacy = fraction of D_f predicted non-member (`attacks.mia_efficacy`, the papers' protocol). When
  |D_r| < |D_test| the first |D_r| test examples are used, to keep both shadow sets the same size.
- ``avg_gap(m, m_retrain) = ¼ Σ_{k ∈ {UA, RA, TA, MIA}} |m_k − m_retrain,k|`` (run time excluded).

with ``Acc(θ; D) = 100 · (1/|D|) Σ_{(x,y)∈D} 𝟙[argmax_k f_θ(x)_k = y]``. Evaluation runs the model in eval
mode (train/eval flags restored afterwards), without augmentation, under ``no_grad``, in batches, on the
model's device.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .data_types import ArrayData, Task

KEYS = ("UA", "RA", "TA", "MIA")


def logits(model: nn.Module, data: ArrayData, batch_size: int = 512) -> Tensor:
    """``f_θ(x)`` for every row of ``data`` (eval mode, no grad, batched, on the model's device).

    ``FloatingPointError`` when any is NaN or infinite: the model diverged, and no metric of it means anything
    (an argmax over NaN would still return a class)."""
    from attacks import predict_logits

    out = predict_logits(model, data.x, batch_size=batch_size)
    if not bool(torch.isfinite(out).all()):
        raise FloatingPointError("the model's outputs are not finite (NaN or inf logits): it diverged")
    return out


def accuracy(model: nn.Module, data: ArrayData, batch_size: int = 512) -> float:
    """``Acc(θ; D)`` in percent."""
    if len(data) == 0:
        raise ValueError("accuracy of an empty dataset is undefined")
    pred = logits(model, data, batch_size).argmax(dim=1)
    return 100.0 * float((pred == data.y.cpu()).double().mean())


def mia_efficacy(model: nn.Module, task: Task, batch_size: int = 512, feature: str = "confidence") -> float:
    """MIA-Efficacy × 100 of ``model`` on ``task`` (the papers' SVC protocol; module docstring)."""
    from attacks import mia_efficacy as _efficacy

    retain, test, forget = task.retain, task.test, task.forget
    n = min(len(retain), len(test))
    retain, test = retain.subset(torch.arange(n)), test.subset(torch.arange(n))
    probs = [torch.softmax(logits(model, d, batch_size).double(), dim=1) for d in (retain, test, forget)]
    value = _efficacy(
        probs[0],
        retain.y.cpu(),
        probs[1],
        test.y.cpu(),
        probs[2],
        forget.y.cpu(),
        feature=feature,
        C=3,
        gamma="auto",
    )
    return 100.0 * float(value)


def evaluate(model: nn.Module, task: Task, *, batch_size: int = 512, mia: bool = True) -> dict[str, float]:
    """``{"UA", "RA", "TA", "MIA"}`` of ``model`` on ``task`` in percent (no ``MIA`` when ``mia=False``)."""
    out = {
        "UA": 100.0 - accuracy(model, task.forget, batch_size),
        "RA": accuracy(model, task.retain, batch_size),
        "TA": accuracy(model, task.test, batch_size),
    }
    if mia:
        out["MIA"] = mia_efficacy(model, task, batch_size)
    return out


def avg_gap(metrics: Mapping[str, float], retrain_metrics: Mapping[str, float], keys=KEYS) -> float:
    """Mean over ``keys`` (default UA, RA, TA, MIA) of ``|metrics[k] − retrain_metrics[k]|``."""
    missing = [k for k in keys if k not in metrics or k not in retrain_metrics]
    if missing:
        raise ValueError(f"avg_gap needs the metrics {list(keys)}; missing {missing}")
    return sum(abs(float(metrics[k]) - float(retrain_metrics[k])) for k in keys) / len(keys)
