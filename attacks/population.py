"""Population attacks: one decision rule for all examples, fitted on known members and non-members of the
model under attack, then applied per example.

Protocol (shared by `SVCMIA`, `ThresholdMIA` and `LossAttack`)::

    attack.fit(member_probs, member_labels, nonmember_probs, nonmember_labels)  # -> attack
    attack.score(probs, labels)     # (n,) float, higher = more likely a member
    attack.predict(probs, labels)   # (n,) bool, True = member

``probs`` are softmax probabilities ``(n, K)`` (numpy or torch), ``labels`` int class labels ``(n,)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import signals as sig
from .validate import PROB_SUM_ATOL, check_choice, check_positive, check_probs_labels

__all__ = ["LossAttack", "PopulationAttack", "SVCMIA", "ThresholdMIA", "mia_efficacy"]


class PopulationAttack:
    """Base class: validates the fit and scoring arrays; subclasses implement `_fit` and `_score`."""

    atol: float = PROB_SUM_ATOL

    def _pair(self, probs: Any, labels: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
        p, y = check_probs_labels(probs, labels, name, self.atol)
        if p.shape[0] == 0:
            raise ValueError(f"{name} is empty; pass at least one example")
        return p, y

    def fit(self, member_probs: Any, member_labels: Any, nonmember_probs: Any, nonmember_labels: Any):
        """Fit on known members (label 1) and known non-members (label 0) of the model under attack."""
        pm, ym = self._pair(member_probs, member_labels, "member_probs")
        pn, yn = self._pair(nonmember_probs, nonmember_labels, "nonmember_probs")
        if pm.shape[1] != pn.shape[1]:
            raise ValueError(
                f"member_probs has {pm.shape[1]} classes but nonmember_probs has {pn.shape[1]}; "
                "use outputs of the same model"
            )
        self.n_classes_ = pm.shape[1]
        self._fit(pm, ym, pn, yn)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "n_classes_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(...) first")

    def _target(self, probs: Any, labels: Any, name: str = "probs") -> tuple[np.ndarray, np.ndarray]:
        self._check_fitted()
        p, y = self._pair(probs, labels, name)
        if p.shape[1] != self.n_classes_:
            raise ValueError(
                f"{name} has {p.shape[1]} classes but the attack was fitted on {self.n_classes_}"
            )
        return p, y

    def score(self, probs: Any, labels: Any) -> np.ndarray:
        """Per-example membership score, higher = more likely a member."""
        return self._score(*self._target(probs, labels))

    def predict(self, probs: Any, labels: Any) -> np.ndarray:
        """Per-example decision, True = member."""
        return self.score(probs, labels) >= 0

    def _fit(self, pm, ym, pn, yn) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _score(self, p, y) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class SVCMIA(PopulationAttack):
    """The "MIA-Efficacy" attack of the unlearning papers (Jia et al. 2023; SalUn, Fan et al. 2024).

    An RBF support-vector classifier ``sklearn.svm.SVC(C, gamma, kernel="rbf")``, unscaled as in the original,
    fitted on one feature of known members (1) and non-members (0):

    * ``correctness``: 1[argmax p = y]; ``confidence``: p_y; ``entropy``: H(p) = −Σ p_k log p_k;
    * ``m_entropy``: Song & Mittal's modified entropy (``compat_m_entropy=True``: the OPTML helper, see
      `attacks.signals.modified_entropy`); ``prob``: the whole probability vector (K features).

    ``score`` is the SVC decision function (positive = member side), ``predict`` its decision, and
    ``efficacy(target) = 1 − mean(predict(target))``, the fraction of targets called *non-member*
    (TN/|D_f| when the targets are the forget set). MIA-Efficacy in the papers is
    ``100 · efficacy`` with feature ``"confidence"``; see `mia_efficacy` for their exact protocol.
    """

    FEATURES = ("correctness", "confidence", "entropy", "m_entropy", "prob")

    def __init__(
        self,
        feature: str = "confidence",
        C: float = 3,
        gamma: str | float = "auto",
        compat_m_entropy: bool = False,
        atol: float = PROB_SUM_ATOL,
    ) -> None:
        self.feature = check_choice(feature, "feature", self.FEATURES)
        self.C = check_positive(C, "C")
        if not (
            gamma in ("auto", "scale") or (not isinstance(gamma, str) and check_positive(gamma, "gamma"))
        ):
            raise ValueError(f"gamma must be 'auto', 'scale' or a positive number, got {gamma!r}")
        self.gamma = gamma
        self.compat_m_entropy = bool(compat_m_entropy)
        self.atol = check_positive(atol, "atol")

    def features(self, probs: Any, labels: Any) -> np.ndarray:
        """The SVC's input ``(n, d)``: d = 1, or K for ``"prob"``."""
        p, y = check_probs_labels(probs, labels, "probs", self.atol)
        if self.feature == "prob":
            return p
        if self.feature == "correctness":
            f = sig.correctness(p, y)
        elif self.feature == "confidence":
            f = sig.confidence(p, y)
        elif self.feature == "entropy":
            f = sig.entropy(p)
        else:
            f = sig.modified_entropy(p, y, compat=self.compat_m_entropy)
        return f.reshape(-1, 1)

    def _fit(self, pm, ym, pn, yn) -> None:
        from sklearn.svm import SVC

        x = np.concatenate([self.features(pm, ym), self.features(pn, yn)])
        target = np.r_[np.ones(len(pm), dtype=np.int64), np.zeros(len(pn), dtype=np.int64)]
        self.svc_ = SVC(C=self.C, gamma=self.gamma, kernel="rbf").fit(x, target)
        self.n_members_, self.n_nonmembers_ = len(pm), len(pn)

    def _score(self, p, y) -> np.ndarray:
        # classes_ is [0, 1]; the decision function is positive on the class-1 (member) side
        return self.svc_.decision_function(self.features(p, y)).astype(np.float64)

    def predict(self, probs: Any, labels: Any) -> np.ndarray:
        p, y = self._target(probs, labels)
        return self.svc_.predict(self.features(p, y)) == 1

    def efficacy(self, target_probs: Any, target_labels: Any) -> float:
        """Fraction of the targets predicted non-member, in [0, 1] (MIA-Efficacy / 100 when targets = D_f)."""
        return float(1.0 - self.predict(target_probs, target_labels).mean())


def mia_efficacy(
    retain_probs: Any,
    retain_labels: Any,
    test_probs: Any,
    test_labels: Any,
    forget_probs: Any,
    forget_labels: Any,
    feature: str = "confidence",
    C: float = 3,
    gamma: str | float = "auto",
    compat_m_entropy: bool = False,
) -> float:
    """MIA-Efficacy of the SalUn / sparse-unlearning papers, as a fraction in [0, 1] (the papers print ×100).

    Exactly their protocol, from one model's softmax outputs: members = the **first** |D_test| retain examples
    (in the order given, not a random sample), non-members = the whole test set, ``SVCMIA(feature, C, gamma)``
    fitted on them, and the result = fraction of forget examples predicted non-member = TN/|D_f|.

    Read it against Retrain's value on the same split (the papers rank by the gap |method − Retrain|): it is a
    one-sided population attack that rewards over-forgetting and overstates forgetting (see docs/attacks.md).
    """
    pr, yr = check_probs_labels(retain_probs, retain_labels, "retain_probs")
    pt, yt = check_probs_labels(test_probs, test_labels, "test_probs")
    n_test = pt.shape[0]
    if pr.shape[0] < n_test:
        raise ValueError(
            f"retain_probs has {pr.shape[0]} rows but the protocol takes the first |test| = {n_test} retain "
            "examples as members; pass a retain set at least as large as the test set"
        )
    attack = SVCMIA(feature=feature, C=C, gamma=gamma, compat_m_entropy=compat_m_entropy)
    attack.fit(pr[:n_test], yr[:n_test], pt, yt)
    return attack.efficacy(forget_probs, forget_labels)


class ThresholdMIA(PopulationAttack):
    """Song & Mittal (2021) threshold attack, one threshold per class.

    Signal v (oriented so higher = member): ``confidence`` p_y, ``entropy`` −H, ``m_entropy`` −Mentr, ``loss``
    −CE, ``phi`` log(p_y/(1−p_y)). For each class c the threshold is

        t_c = argmax_t ½[ P_members(v ≥ t | y=c) + P_non-members(v < t | y=c) ]

    over the candidate values t ∈ {v of class-c fit examples}; ties go to the smallest t (the first maximum,
    as in the original loop). A class without both members and non-members in the fit data uses the global
    threshold fitted on all examples (also used for every class when ``per_class=False``).
    ``score = v − t_y`` (a calibrated score usable for ROC/AUC) and ``predict = v ≥ t_y``.
    """

    SIGNALS = ("confidence", "entropy", "m_entropy", "loss", "phi")

    def __init__(
        self,
        signal: str = "confidence",
        per_class: bool = True,
        compat_m_entropy: bool = False,
        atol: float = PROB_SUM_ATOL,
    ) -> None:
        self.signal = check_choice(signal, "signal", self.SIGNALS)
        self.per_class = bool(per_class)
        self.compat_m_entropy = bool(compat_m_entropy)
        self.atol = check_positive(atol, "atol")

    def values(self, probs: Any, labels: Any) -> np.ndarray:
        """The oriented signal v (higher = member)."""
        return sig.membership_signal(probs, labels, self.signal, compat=self.compat_m_entropy)

    @staticmethod
    def best_threshold(v_in: np.ndarray, v_out: np.ndarray) -> tuple[float, float]:
        """``(t, BA)`` maximising ½[mean(v_in ≥ t) + mean(v_out < t)] over t ∈ v_in ∪ v_out; O(n log n)."""
        a, b = np.sort(v_in), np.sort(v_out)
        cand = np.unique(np.concatenate([a, b]))
        tpr = 1.0 - np.searchsorted(a, cand, side="left") / a.size
        tnr = np.searchsorted(b, cand, side="left") / b.size
        ba = 0.5 * (tpr + tnr)
        i = int(np.argmax(ba))
        return float(cand[i]), float(ba[i])

    def _fit(self, pm, ym, pn, yn) -> None:
        v_in, v_out = self.values(pm, ym), self.values(pn, yn)
        self.global_threshold_, _ = self.best_threshold(v_in, v_out)
        self.thresholds_ = np.full(self.n_classes_, self.global_threshold_)
        self.fallback_classes_ = []
        if self.per_class:
            for c in range(self.n_classes_):
                a, b = v_in[ym == c], v_out[yn == c]
                if a.size and b.size:
                    self.thresholds_[c], _ = self.best_threshold(a, b)
                else:
                    self.fallback_classes_.append(c)

    def _score(self, p, y) -> np.ndarray:
        return self.values(p, y) - self.thresholds_[y]


class LossAttack(PopulationAttack):
    """The global LOSS attack (Yeom et al. 2018): score = −CE loss = log p_y. Needs no fitting; ``fit`` only
    learns the single threshold maximising balanced accuracy on the fit data, used by ``predict``."""

    def __init__(self, atol: float = PROB_SUM_ATOL) -> None:
        self.atol = check_positive(atol, "atol")

    def _fit(self, pm, ym, pn, yn) -> None:
        self.threshold_, _ = ThresholdMIA.best_threshold(-sig.loss(pm, ym), -sig.loss(pn, yn))

    def score(self, probs: Any, labels: Any) -> np.ndarray:
        p, y = self._pair(probs, labels, "probs")
        return -sig.loss(p, y)

    def predict(self, probs: Any, labels: Any) -> np.ndarray:
        self._check_fitted()
        return self.score(probs, labels) >= self.threshold_
