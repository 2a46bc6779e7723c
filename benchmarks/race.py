"""Interleaved timing: every contestant of a workload runs once per round, in a rotating order.

On a shared machine the load changes from second to second; timing contestant A for ten seconds and then
B for ten seconds compares A's luck with B's. Interleaving puts every contestant under the same load, and
the *paired* ratio (median over rounds of t_A / t_B within a round) cancels most of what remains.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .workloads import synchronize


@dataclass
class RaceResult:
    """Seconds per call, ``times[name][round]``, all measured in the same interleaved run."""

    times: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    def paired_ratio(self, name: str, reference: str) -> float:
        """Median over rounds of t_name / t_reference (same round, so under the same load)."""
        return statistics.median(a / b for a, b in zip(self.times[name], self.times[reference]))

    def summary(self, name: str, reference: str) -> dict[str, Any]:
        """The ``extra_info`` entries of one contestant, as the report reads them."""
        return {
            "race_rounds": len(self.times[name]),
            "race_median_s": self.median(name),
            "race_reference": reference,
            "race_ratio_to_reference": self.paired_ratio(name, reference),
        }


def race(
    fns: dict[str, Callable[[], Any]],
    rounds: int,
    device: torch.device,
    warmup: int = 1,
    budget_s: float | None = None,
    min_rounds: int = 3,
) -> RaceResult:
    """Run each function ``warmup`` times (untimed), then ``rounds`` interleaved timed rounds.

    ``budget_s``: cap the rounds so that the timed part takes about that long, judged from the last warm-up
    round (never fewer than ``min_rounds``): large workloads get fewer rounds instead of minutes each.
    """
    names = list(fns)
    start = time.perf_counter()
    for _ in range(warmup):
        start = time.perf_counter()
        for name in names:
            fns[name]()
    synchronize(device)
    if budget_s is not None and warmup:
        per_round = max(time.perf_counter() - start, 1e-9)
        rounds = max(min(rounds, min_rounds), min(rounds, int(budget_s / per_round)))
    result = RaceResult({name: [] for name in names})
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate: no contestant always goes first
        for name in order:
            start = time.perf_counter()
            fns[name]()
            synchronize(device)
            result.times[name].append(time.perf_counter() - start)
    return result
