"""Scaling sweeps and the issue-5 targets: time and memory against T, parameter count and outer dimension.

Each sweep returns ``{"rows": [...], ...}`` (JSON-ready; stored in the benchmark's ``extra_info`` and drawn by
`benchmarks.report`). Every point is an interleaved race of the solvers at that point (``race`` with a time
budget), so the ratios inside a point share the machine's load. Memory is measured on one extra call:
``peak_saved_bytes`` (bytes the autograd graph holds, saved-tensor hooks; not for ``torch.func`` code) and
``cpu_alloc_peak_bytes`` (torch's CPU allocator, from the profiler's memory events; sees everything).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from bilevel import CG, FirstOrder, Forward, Implicit, Unrolled, minimize, optim
from bilevel.inner import run_inner
from bilevel.problem import DataStream

from .race import race
from .reference import Ref, scaled_ridge, torchopt_custom_root
from .reference import weighted_ridge as ref_weighted_ridge
from .workloads import (
    SavedTensorMeter,
    cpu_allocator_peak,
    cuda_peak,
    make_reweighting,
    relative_error,
    synchronize,
)

Fns = dict[str, Callable[[], Tensor]]


def _memory(fn: Callable[[], Any], device: torch.device, allocator: bool = True) -> dict[str, Any]:
    """Saved-tensor bytes, and (``allocator``) the CPU allocator's or CUDA's peak, of one call."""
    out: dict[str, Any] = {}
    try:
        out.update(SavedTensorMeter().measure(fn))
    except RuntimeError as exc:
        if "saved tensor hooks" not in str(exc):
            raise
    if not allocator:
        pass
    elif device.type == "cpu":
        out.update(cpu_allocator_peak(fn))
    else:
        out["cuda_peak_bytes"] = cuda_peak(fn, device)
    return out


def _point(fns: Fns, device: torch.device, timed: bool, rounds: int, budget_s: float) -> dict[str, Any]:
    """Time (interleaved) and memory of every solver at one sweep point."""
    # The profiler behind the allocator peak takes seconds to start: only in timed (make bench) runs.
    out: dict[str, Any] = {name: _memory(fn, device, allocator=timed) for name, fn in fns.items()}
    if timed:
        res = race(fns, rounds, device, budget_s=budget_s, min_rounds=2)
        names = list(fns)
        for name in names:
            out[name]["median_s"] = res.median(name)
            out[name]["rounds"] = len(res.times[name])
            out[name]["ratio_to_first"] = res.paired_ratio(name, names[0])
    else:
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            synchronize(device)
            out[name]["once_s"] = time.perf_counter() - start
    return out


def _unrolled_fn(w: Any, **kwargs: Any) -> Callable[[], Tensor]:
    solver = Unrolled(optim.SGD(lr=w.lr), steps=w.steps, **kwargs)
    problem = w.problem

    def run() -> Tensor:
        return solver.hypergrad(problem, w.params0, {"x": w.logits}).grad["x"]

    return run


TRUNCATE_K = 10


def sweep_T(
    Ts: tuple[int, ...], device: torch.device, timed: bool, rounds: int, budget_s: float
) -> dict[str, Any]:
    """MLP re-weighting (workload 1, 64-128-10, float32) against T: full, truncated (K = 10), checkpointed."""
    rows = []
    for T in Ts:
        w = make_reweighting(device=device, steps=T)
        fns = {
            "full": _unrolled_fn(w),
            "checkpoint": _unrolled_fn(w, checkpoint=True),
            f"truncate K={TRUNCATE_K}": _unrolled_fn(w, truncate=TRUNCATE_K),
        }
        full, ck = fns["full"](), fns["checkpoint"]()
        point = _point(fns, device, timed, rounds, budget_s)
        rows.append({"T": T, "checkpoint_rel_diff": relative_error(ck, full), "solvers": point})
    return {"workload": "data re-weighting, digits, MLP 64-128-10, float32, SGD lr 0.1", "rows": rows}


def sweep_params(
    hiddens: tuple[int, ...], device: torch.device, timed: bool, rounds: int, budget_s: float, T: int = 20
) -> dict[str, Any]:
    """MLP re-weighting against the hidden width (parameter count), T = 20 for every solver."""
    rows = []
    for h in hiddens:
        w = make_reweighting(device=device, steps=T, hidden=h)
        problem, sgd = w.problem, optim.SGD(lr=w.lr)
        implicit = Implicit(
            sgd, T, CG(max_iter=20, tol=0.0, damping=0.05, on_indefinite="warn"), warm_start=False
        )
        first = FirstOrder(sgd, T, "identity", c=w.lr)

        def call(solver: Any, problem: Any = problem, w: Any = w) -> Callable[[], Tensor]:
            return lambda: solver.hypergrad(problem, w.params0, {"x": w.logits}).grad["x"]

        fns = {
            "Unrolled": _unrolled_fn(w),
            "Unrolled checkpoint": _unrolled_fn(w, checkpoint=True),
            "Implicit CG20 (S=T)": call(implicit),
            "FirstOrder identity (S=T)": call(first),
        }
        n_params = sum(p.numel() for p in w.params0.values())
        rows.append(
            {"hidden": h, "params": n_params, "solvers": _point(fns, device, timed, rounds, budget_s)}
        )
    return {"workload": f"data re-weighting, digits, MLP 64-h-10, float32, T = S = {T}", "rows": rows}


def _ref_call(r: Ref, solver: Any) -> Callable[[], Tensor]:
    def run() -> Tensor:
        if hasattr(solver, "reset"):
            solver.reset()
        return torch.cat(
            [v.reshape(-1) for v in solver.hypergrad(r.problem, r.inner_init, r.outer).grad.values()]
        )

    return run


FORWARD_SWEEP_MAX = 4  # Forward costs one full tangent pass per outer entry


def sweep_outer(
    dims: tuple[int, ...],
    device: torch.device,
    timed: bool,
    rounds: int,
    budget_s: float,
    p: int = 1000,
    T: int = 100,
) -> dict[str, Any]:
    """Ridge (inner dim ``p``) against the number of penalties (outer entries), T = S = ``T``, K = 20."""
    rows = []
    for d in dims:
        r = scaled_ridge(p, groups=d, T=T)
        sgd = optim.SGD(lr=r.lr)
        fns: Fns = {
            "Unrolled": _ref_call(r, Unrolled(sgd, T)),
            "Implicit CG20": _ref_call(r, Implicit(sgd, T, CG(max_iter=20, tol=0.0), warm_start=False)),
            "torchopt custom_root solve_cg(20)": torchopt_custom_root(r),
        }
        if d <= FORWARD_SWEEP_MAX:
            fns["Forward"] = _ref_call(r, Forward(sgd, T))
        errors = {name: r.error(fn()) for name, fn in fns.items()}
        point = _point(fns, device, timed, rounds, budget_s)
        for name in fns:
            point[name]["rel_error_closed_form"] = errors[name]
        rows.append({"outer_dim": d, "solvers": point})
    return {
        "workload": f"ridge p={p}, n=200, λ shared by groups of features, float64, T = S = {T}",
        "rows": rows,
    }


# ---------------------------------------------------------------------------------------------- targets


def profile_top(fn: Callable[[], Any], rows: int = 12) -> str:
    """torch.profiler's operators by self CPU time over one call (what a missed target spends its time on)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=48)


def target_checkpoint(
    T: int, device: torch.device, timed: bool, rounds: int, budget_s: float
) -> dict[str, Any]:
    """(a) checkpointed unrolling at T: peak memory ≤ 0.35× full, time ≤ 1.5×, identical gradient."""
    w = make_reweighting(device=device, steps=T)
    fns = {"full": _unrolled_fn(w), "checkpoint": _unrolled_fn(w, checkpoint=True)}
    diff = relative_error(fns["checkpoint"](), fns["full"]())
    mem = {name: _memory(fn, device, allocator=timed) for name, fn in fns.items()}
    saved = mem["checkpoint"]["peak_saved_bytes"] / mem["full"]["peak_saved_bytes"]
    alloc_key = "cpu_alloc_peak_bytes" if device.type == "cpu" else "cuda_peak_bytes"
    alloc = None
    if alloc_key in mem["full"] and alloc_key in mem["checkpoint"]:
        alloc = mem["checkpoint"][alloc_key] / mem["full"][alloc_key]
    out: dict[str, Any] = {
        "target": "a",
        "title": (
            f"checkpointed unrolling at T = {T}: peak memory ≤ 0.35× full, time ≤ 1.5×, identical gradient"
        ),
        "workload": "data re-weighting, digits, MLP 64-128-10, float32",
        "memory_ratio_saved": saved,
        "memory_ratio_allocator": alloc,
        "grad_rel_diff": diff,
        "memory": mem,
    }
    checks = [saved <= 0.35, alloc is None or alloc <= 0.35, diff <= 1e-6]
    if timed:
        res = race(fns, rounds, device, budget_s=budget_s, min_rounds=3)
        out["time_ratio"] = res.paired_ratio("checkpoint", "full")
        out["full_median_s"], out["checkpoint_median_s"] = res.median("full"), res.median("checkpoint")
        out["rounds"] = len(res.times["full"])
        checks.append(out["time_ratio"] <= 1.5)
        out["verdict"] = "PASS" if all(checks) else "MISS"
        if out["verdict"] == "MISS":
            out["profile"] = {name: profile_top(fn) for name, fn in fns.items()}
    else:
        out["verdict"] = "not timed (quick mode)"
    return out


def _equal_error_search(
    r: Ref, inner_solvers: dict[str, Any], err_unrolled: float
) -> tuple[dict[str, tuple[int, int, Callable[[], Tensor], float]], list[dict[str, Any]]]:
    """Per inner solver, the first (S, K) (S growing, then K) whose `Implicit` CG hypergradient error is at
    most ``err_unrolled``: ``{label: (S, K, fn, error)}``, and every (S, K) tried with its error."""
    candidates: dict[str, tuple[int, int, Callable[[], Tensor], float]] = {}
    tried = []
    for label, inner_opt in inner_solvers.items():
        for S in sorted({max(5, r.T * k // 10) for k in range(1, 11)}):
            found = None
            for K in (5, 10, 20, 40):
                fn = _ref_call(r, Implicit(inner_opt, S, CG(max_iter=K, tol=0.0), warm_start=False))
                err = r.error(fn())
                tried.append({"inner": label, "S": S, "K": K, "rel_error": err})
                if err <= err_unrolled:
                    found = (S, K, fn, err)
                    break
            if found:
                candidates[label] = found
                break
    return candidates, tried


def _race_with_unrolled(
    r: Ref,
    device: torch.device,
    rounds: int,
    budget_s: float,
    implicit: Callable[[], Tensor],
    unrolled: Callable[[], Tensor],
    inner_opt: Any,
    S: int,
) -> dict[str, Any]:
    """The equal-error `Implicit` raced against the full unroll and against its own S inner steps alone:
    the speed-up over the unroll, both medians, and the inner loop's share of the implicit time."""
    pair = {
        "ours Implicit (equal error)": implicit,
        "ours Unrolled": unrolled,
        "inner loop alone (S steps)": lambda: run_inner(
            r.problem, inner_opt, r.inner_init, r.outer, DataStream(None), start=0, stop=S
        )[0]["w"],
    }
    res = race(pair, rounds, device, budget_s=budget_s / 2, min_rounds=3)
    return {
        "speedup_over_unrolled": 1.0 / res.paired_ratio("ours Implicit (equal error)", "ours Unrolled"),
        "implicit_median_s": res.median("ours Implicit (equal error)"),
        "unrolled_median_s": res.median("ours Unrolled"),
        # What the implicit time is made of: the S inner steps it must take before its linear solve.
        "inner_alone_median_s": res.median("inner loop alone (S steps)"),
        "inner_share_of_implicit": res.paired_ratio(
            "inner loop alone (S steps)", "ours Implicit (equal error)"
        ),
    }


def target_implicit(
    r: Ref, device: torch.device, timed: bool, rounds: int, budget_s: float
) -> dict[str, Any]:
    """(b) ours Implicit CG ≤ 1.0× torchopt custom_root at equal accuracy (same S, K: same error), and ≥ 2×
    faster than our full unroll at T = r.T for the same hypergradient error (the cheapest (S, K) whose
    error is at most the unroll's; S inner steps included in its time)."""
    sgd = optim.SGD(lr=r.lr)
    unrolled = _ref_call(r, Unrolled(sgd, r.T))
    err_unrolled = r.error(unrolled())
    # The implicit hypergradient depends on the inner *solution*, not on the path to it, so any inner solver
    # may be used: plain gradient descent (what the unroll differentiates through) and Nesterov's method with
    # the strongly convex momentum β = (√κ − 1)/(√κ + 1), which needs ~√κ instead of ~κ steps per digit.
    root = (r.L / r.mu) ** 0.5
    inner_solvers = {
        "gradient descent": sgd,
        "Nesterov": optim.SGD(lr=r.lr, momentum=(root - 1) / (root + 1), nesterov=True),
    }
    candidates, tried = _equal_error_search(r, inner_solvers, err_unrolled)
    # the cheapest candidate by work: S inner gradients + K HVPs (an HVP costs about two gradients)
    chosen_label = min(candidates, key=lambda k: candidates[k][0] + 2 * candidates[k][1], default=None)
    chosen = candidates.get(chosen_label) if chosen_label else None
    same_acc = {
        "ours Implicit CG": _ref_call(r, Implicit(sgd, r.S, CG(max_iter=r.K, tol=0.0), warm_start=False)),
        "torchopt custom_root": torchopt_custom_root(r),
    }
    e_ours, e_peer = (r.error(fn()) for fn in same_acc.values())
    out: dict[str, Any] = {
        "target": "b",
        "title": (
            f"ours Implicit CG ≤ 1.0× torchopt custom_root time at equal accuracy, and ≥ 2× faster than our "
            f"full unroll at T = {r.T} for the same hypergradient error ({r.name}, strongly convex)"
        ),
        "workload": r.name,
        "unrolled_T": r.T,
        "unrolled_rel_error": err_unrolled,
        "same_accuracy": {"S": r.S, "K": r.K, "ours_rel_error": e_ours, "torchopt_rel_error": e_peer},
        "equal_error_search": tried,
    }
    if chosen is not None:
        out["equal_error_config"] = {
            "inner": chosen_label,
            "S": chosen[0],
            "K": chosen[1],
            "rel_error": chosen[3],
        }
    if not timed:
        out["verdict"] = "not timed (quick mode)"
        return out
    res = race(same_acc, rounds, device, budget_s=budget_s / 2, min_rounds=3)
    out["ratio_to_torchopt"] = res.paired_ratio("ours Implicit CG", "torchopt custom_root")
    checks = [out["ratio_to_torchopt"] <= 1.0]
    if chosen is not None:
        inner_opt = inner_solvers[chosen_label]
        out.update(
            _race_with_unrolled(r, device, rounds, budget_s, chosen[2], unrolled, inner_opt, chosen[0])
        )
        checks.append(out["speedup_over_unrolled"] >= 2.0)
    else:
        checks.append(False)
    out["verdict"] = "PASS" if all(checks) else "MISS"
    if out["verdict"] == "MISS":
        prof = {
            "ours Implicit CG": same_acc["ours Implicit CG"],
            "torchopt custom_root": same_acc["torchopt custom_root"],
        }
        if chosen is not None:
            prof["ours Implicit (equal error)"] = chosen[2]
            prof["ours Unrolled"] = unrolled
        out["profile"] = {name: profile_top(fn) for name, fn in prof.items()}
    return out


def target_warm_start(outer_steps: int, inner_steps: int, timed: bool) -> dict[str, Any]:
    """(c) `bilevel.minimize` with Implicit warm_start=True vs False: total HVPs for the same outer progress.

    Weighted ridge (1,000 per-sample logits, p = 100), outer SGD; CG stops at relative residual 1e-8 (so a
    good starting point saves iterations); the inner solve is warm-started across outer steps in both runs.
    """
    r = ref_weighted_ridge(n=1000, p=100)
    sgd = optim.SGD(lr=r.lr)
    runs = {}
    for warm in (False, True):
        solver = Implicit(sgd, inner_steps, CG(max_iter=200, tol=1e-8), warm_start=warm)
        start = time.perf_counter()
        res = minimize(r.problem, solver, r.outer, optim.SGD(lr=300.0), outer_steps, inner_init=r.inner_init)
        seconds = time.perf_counter() - start
        hvps = [h["info"].get("hvp_count") or 0 for h in res.history]
        its = [h["info"].get("iterations") or 0 for h in res.history]
        losses = [h["outer_loss"] for h in res.history]
        runs["warm" if warm else "cold"] = {
            "total_hvps": int(sum(hvps)),
            "total_cg_iterations": int(sum(its)),
            "seconds": seconds,
            "outer_loss_first": losses[0],
            "outer_loss_last": losses[-1],
            "hvps_per_step": hvps,
            "outer_loss": losses,
        }
    cold, warm = runs["cold"], runs["warm"]
    progress_gap = abs(warm["outer_loss_last"] - cold["outer_loss_last"]) / max(
        abs(cold["outer_loss_first"] - cold["outer_loss_last"]), 1e-300
    )
    ratio = warm["total_hvps"] / max(cold["total_hvps"], 1)
    out = {
        "target": "c",
        "title": (
            "warm-started implicit solves in an outer loop: fewer total HVPs than cold for the same outer "
            "progress"
        ),
        "workload": (
            f"bilevel.minimize, weighted ridge n=1000 p=100, {outer_steps} outer SGD steps, Implicit with "
            f"{inner_steps} inner steps (warm inner start) and CG(tol=1e-8, max_iter=200)"
        ),
        "hvp_ratio_warm_to_cold": ratio,
        "progress_gap": progress_gap,
        "runs": runs,
        "verdict": "PASS" if ratio < 1.0 and progress_gap <= 1e-3 else "MISS",
    }
    if not timed:
        out["note"] = "quick mode: counts only"
    return out


def median(xs: list[float]) -> float:
    return statistics.median(xs)
