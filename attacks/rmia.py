"""RMIA: Zarifzadeh, Liu & Shokri, "Low-Cost High-Power Membership Inference Attacks" (ICML 2024).

Signal: P(x|θ) = the model's probability of the true class, p_y = softmax(z/T)_y. With reference models θ':

* P(x) = ½(P_IN(x) + P_OUT(x)) online (means over the IN and OUT references of x);
* P(x) = ½((1 + a)·P_OUT(x) + (1 − a)) offline, from the linear approximation P_IN ≈ a·P_OUT + (1 − a)
  (a ∈ [0, 1]; the research configs use a = 0.3 for CIFAR-10, a = 1 when unknown);
* population points z (non-members of every model, e.g. a test set): P(z) = mean over the references
  (offline: the same linear approximation applied to that mean).

Pairwise likelihood ratio LR(x, z) = [P(x|θ)/P(x)] / [P(z|θ)/P(z)] and score

    S(x) = Pr_z[ LR(x, z) > γ ] = #{z : ratio_z < ratio_x / γ} / |Z|,   ratio_· = P(·|θ)/P(·),

computed by sorting ratio_z and `numpy.searchsorted` (O((n + |Z|) log |Z|), never an n × |Z| matrix). With A
query augmentations the score is the mean of the per-query scores (the research code takes a majority vote
of per-query decisions instead). P(·) is floored at 1e-30. For one target model S is a monotone function of
ratio_x, so the population matters for calibration across models and for γ, not for a single model's AUC.
Cost: 1–4 reference models suffice (offline), plus forward passes on x and z.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from torch import nn

from .reference import check_keep, resolve_references, resolve_target
from .signals import PROB_FLOOR
from .validate import check_choice, check_positive

__all__ = ["RMIA"]


def _check_unit(stats: np.ndarray, name: str) -> None:
    if stats.min() < 0 or stats.max() > 1:
        raise ValueError(
            f"{name} must be probabilities of the true class p_y in [0, 1], found [{stats.min():.4g}, "
            f"{stats.max():.4g}]; pass attacks.signals.confidence(probs, labels) or the models themselves"
        )


class RMIA:
    """Relative membership inference attack (see the module docstring for the maths).

    ``mode`` ``"offline"`` (OUT references only, uses ``a``) or ``"online"`` (needs ``keep`` with IN and OUT
    references for every audited example); ``gamma`` γ ≥ 0 of the test LR > γ; ``temperature`` T of the
    softmax
    when the signal is computed here from models.

    ``fit(references, population_references, keep=None)``: p_y of M reference models on the n audited examples
    ``(M, n[, A])`` and on the population ``(M, |Z|[, A])``; or lists of models with ``x=``, ``labels=``,
    ``z=``, ``z_labels=``. ``score(target, target_population)``: the target's p_y on the same examples and
    population, or the target model itself.
    """

    def __init__(
        self, mode: str = "offline", a: float = 0.3, gamma: float = 1.0, temperature: float = 1.0
    ) -> None:
        self.mode = check_choice(mode, "mode", ("offline", "online"))
        self.a = float(a)
        if not 0 <= self.a <= 1:
            raise ValueError(f"a must be in [0, 1] (P_IN ≈ a·P_OUT + 1 − a), got {a}")
        self.gamma = check_positive(gamma, "gamma", allow_zero=True)
        self.temperature = check_positive(temperature, "temperature")

    def _offline(self, p_out: np.ndarray) -> np.ndarray:
        return 0.5 * ((1 + self.a) * p_out + (1 - self.a))

    def _stats(self, refs: Any, name: str, x: Any, labels: Any, kw: dict) -> np.ndarray:
        stats = resolve_references(
            refs, name, "confidence", x=x, labels=labels, temperature=self.temperature, **kw
        )
        _check_unit(stats, name)
        return stats

    def fit(
        self,
        references: Any,
        population_references: Any,
        keep: Any = None,
        *,
        x: Any = None,
        labels: Any = None,
        z: Any = None,
        z_labels: Any = None,
        **model_kwargs: Any,
    ) -> RMIA:
        """Estimate P(x) for the audited examples and P(z) for the population."""
        stats = self._stats(references, "references", x, labels, model_kwargs)
        pop = self._stats(population_references, "population_references", z, z_labels, model_kwargs)
        m, n, a = stats.shape
        if pop.shape[0] != m or pop.shape[2] != a:
            raise ValueError(
                f"population_references has shape {pop.shape} but references {stats.shape}: use the same "
                "reference models and queries for both"
            )
        if keep is None:
            if self.mode == "online":
                raise ValueError("online RMIA needs keep (which reference models trained on which example)")
            keep_arr = np.zeros((m, n), dtype=bool)
        else:
            keep_arr = check_keep(keep, (m, n))
        out = ~keep_arr
        if np.any(out.sum(0) == 0):
            raise ValueError("some audited example has no OUT reference model; train more reference models")
        p_out = np.nanmean(np.where(out[:, :, None], stats, np.nan), axis=0)
        if self.mode == "online":
            if np.any(keep_arr.sum(0) == 0):
                raise ValueError(
                    "online RMIA needs an IN reference model for every example; use mode='offline'"
                )
            p_in = np.nanmean(np.where(keep_arr[:, :, None], stats, np.nan), axis=0)
            self.p_x_ = 0.5 * (p_in + p_out)
            self.p_z_ = pop.mean(axis=0)
        else:
            self.p_x_ = self._offline(p_out)
            self.p_z_ = self._offline(pop.mean(axis=0))
        self.p_x_ = np.maximum(self.p_x_, PROB_FLOOR)
        self.p_z_ = np.maximum(self.p_z_, PROB_FLOOR)
        return self

    def ratios(
        self,
        target: Any,
        target_population: Any = None,
        *,
        x: Any = None,
        labels: Any = None,
        z: Any = None,
        z_labels: Any = None,
        **model_kwargs: Any,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(ratio_x (n, A), ratio_z (|Z|, A))`` with ratio = P(·|θ)/P(·).

        ``target``: the target's p_y on the audited examples, or the target model (then pass ``x``,
        ``labels``,
        ``z``, ``z_labels``); ``target_population``: its p_y on the population (defaults to the model)."""
        if not hasattr(self, "p_x_"):
            raise RuntimeError("RMIA is not fitted; call fit(references, population_references) first")
        n, a = self.p_x_.shape
        kw = dict(temperature=self.temperature, **model_kwargs)
        px = resolve_target(target, "target", "confidence", n, a, x=x, labels=labels, **kw)
        if target_population is None:
            if not isinstance(target, nn.Module):
                raise ValueError(
                    "pass target_population (the target's p_y on the population) or a target model"
                )
            target_population = target
        m = self.p_z_.shape[0]
        pz = resolve_target(
            target_population, "target_population", "confidence", m, a, x=z, labels=z_labels, **kw
        )
        _check_unit(px, "target")
        _check_unit(pz, "target_population")
        return px / self.p_x_, pz / self.p_z_

    def score(self, target: Any, target_population: Any = None, **kwargs: Any) -> np.ndarray:
        """S(x) = Pr_z[LR(x, z) > γ] per audited example (mean over queries), in [0, 1]. Arguments as
        `ratios`."""
        rx, rz = self.ratios(target, target_population, **kwargs)
        s = np.empty_like(rx)
        for q in range(rx.shape[1]):
            sorted_z = np.sort(rz[:, q])
            # strict LR > γ  <=>  ratio_z < ratio_x / γ  (γ = 0: every z counts)
            bound = rx[:, q] / self.gamma if self.gamma > 0 else np.full(rx.shape[0], np.inf)
            s[:, q] = np.searchsorted(sorted_z, bound, side="left") / sorted_z.size
        return s.mean(axis=1)

    def leave_one_out(
        self, references: Any, population_references: Any, keep: Any, targets: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each model in ``targets`` (default: all) in turn is the target, with the other M − 1 as references.
        Returns ``(scores, membership)``, both ``(len(targets), n)``."""
        stats = resolve_references(references, "references", "confidence")
        pop = resolve_references(population_references, "population_references", "confidence")
        keep_arr = check_keep(keep, stats.shape[:2])
        idx = range(stats.shape[0]) if targets is None else [int(t) for t in targets]
        scores = []
        for t in idx:
            others = np.arange(stats.shape[0]) != t
            attack = copy.copy(self).fit(stats[others], pop[others], keep_arr[others])
            scores.append(attack.score(stats[t], pop[t]))
        return np.stack(scores), keep_arr[list(idx)]
