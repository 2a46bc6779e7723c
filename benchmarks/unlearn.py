"""Unlearning-side measurements: the worst-case search per hypergradient mode, and each method's run time
relative to Retrain (RTE ratio), on digits / MLP (``prepare("digits", "mlp", "random:0.1")``).
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import torch

from bilevel import Solver
from bilevel.inner import run_inner
from bilevel.problem import DataStream

SETUP = ("digits", "mlp", "random:0.1")
MODES = ("first_order", "unrolled", "implicit")


def prepared(device: torch.device) -> Any:
    os.environ.setdefault("WORSTFORGET_PROGRESS", "0")
    from unlearning.setup import prepare

    return prepare(*SETUP, seed=0, device=device)


class _Recorder(Solver):
    """Wraps the search's solver. Before each hypergradient call it re-runs the lower level's K steps alone
    (no graph; same problem, optimizer, start point, outer point and data) and records how long that took,
    so the lower level's time is measured next to each step, under the same load. A `bilevel.Solver` (the
    search takes no other), delegating ``optimizer``, ``steps``, ``batches_per_call`` and ``reset`` to the
    wrapped one."""

    def __init__(self, solver: Solver, inner_steps: int) -> None:
        self._solver = solver
        self._k = inner_steps
        self.lower_s: list[float] = []

    @property
    def optimizer(self) -> Any:  # type: ignore[override]
        return self._solver.optimizer

    @property
    def steps(self) -> int:  # type: ignore[override]
        return self._solver.steps

    @property
    def batches_per_call(self) -> int:
        return self._solver.batches_per_call

    def reset(self) -> None:
        self._solver.reset()

    def hypergrad(
        self, problem: Any, inner_init: Any, outer: Any, inner_data: Any = None, outer_data: Any = None
    ) -> Any:
        theta = {k: v.detach() for k, v in inner_init.items()}
        lam = {k: v.detach() for k, v in outer.items()}
        start = time.perf_counter()
        run_inner(problem, self._solver.optimizer, theta, lam, DataStream(inner_data), start=0, stop=self._k)
        self.lower_s.append(time.perf_counter() - start)
        return self._solver.hypergrad(problem, inner_init, outer, inner_data, outer_data)

    def _step(self, call: Any) -> Any:  # never reached: hypergrad is the wrapped solver's
        raise NotImplementedError("_Recorder.hypergrad delegates to the wrapped solver")


def search_timing(p: Any, mode: str, upper_steps: int, inner_steps: int) -> dict[str, Any]:
    """Seconds per upper step of ``search(p, "ft", hypergrad=mode)``, split into the hypergradient call (K
    lower-level steps plus the hypergradient) and the rest of the step (projection, top-k, bookkeeping), and
    the K lower-level steps alone (re-run before each step; subtracted from the step's time)."""
    from unlearning import worst_case

    recorders: list[_Recorder] = []
    original = worst_case.make_solver

    def make_solver(*args: Any, **kwargs: Any) -> Any:
        rec = _Recorder(original(*args, **kwargs), inner_steps)
        recorders.append(rec)
        return rec

    worst_case.make_solver = make_solver
    try:
        start = time.perf_counter()
        result = worst_case.search(
            p, "ft", hypergrad=mode, upper_steps=upper_steps, inner_steps=inner_steps, progress=False
        )
        total = time.perf_counter() - start
    finally:
        worst_case.make_solver = original
    hist = result.history
    lower = [t for rec in recorders for t in rec.lower_s]
    lower = lower[: len(hist)] + [0.0] * (len(hist) - len(lower))
    steps = [h["seconds"] - extra for h, extra in zip(hist, lower)]  # without our extra lower-level run
    hyper = [h["hypergrad_seconds"] for h in hist]
    return {
        "mode": mode,
        "upper_steps": len(hist),
        "inner_steps": inner_steps,
        "total_s": total - sum(lower),
        "step_median_s": statistics.median(steps),
        "hypergrad_median_s": statistics.median(hyper),
        "rest_median_s": statistics.median(s - h for s, h in zip(steps, hyper)),
        "lower_alone_median_s": statistics.median(lower),
        "lower_share_of_step": statistics.median(lo / s for lo, s in zip(lower, steps)),
        "hvp_count_median": statistics.median(h.get("hvp_count") or 0 for h in hist),
        "objective_first": hist[0]["objective"],
        "objective_last": hist[-1]["objective"],
    }


def unlearning_rte(p: Any, reps: int) -> dict[str, Any]:
    """Median ``unlearn(...).seconds`` of each registry method over ``reps`` runs; its ratio to Retrain."""
    from unlearning.methods import REGISTRY, make

    secs: dict[str, list[float]] = {name: [] for name in REGISTRY}
    for _ in range(reps):  # interleaved: every method once per repetition, under the same load
        for name in REGISTRY:
            secs[name].append(float(make(name).unlearn(p.original, p.task).seconds))
    rows = {name: {"median_s": statistics.median(s), "runs": len(s)} for name, s in secs.items()}
    base = rows["retrain"]["median_s"]
    for row in rows.values():
        row["rte_ratio"] = row["median_s"] / base
    return {"setup": "digits / MLP, forget random:0.1, seed 0", "methods": rows}
