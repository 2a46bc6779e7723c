"""GPU figures of issue 12: graphed hypergradients against eager ones and the peers, batched tasks.

    python -m benchmarks.gpu --device cuda --out DIR      (benchmarks/gpu_check.sh runs it)

For each table every contestant first gives its hypergradient once (the graphed ones must equal the eager
`bilevel` result: float32 to 1e-5 relative, or the check fails), then interleaved rounds are timed with
``torch.cuda.synchronize`` around each call; medians are reported. Tables:

1. unrolled data re-weighting on digits (benchmarks/workloads.py, workload 1): MLP 64-128-10, T = 20, and
   MLP 64-2048-10, T = 100; ours eager, ours graphed, higher, torchopt MetaSGD, the plain autograd unroll;
2. implicit (workload 2, CG with 20 iterations, tol 0): ours eager, ours graphed, torchopt custom_root;
3. a worst-case search upper step (unlearning.worst_case.search on digits, FT, first-order rule,
   20 lower steps): per-step hypergradient seconds eager (``graph=False``) against graphed (default);
4. batched: 16 re-weighting tasks (MLP 64-128-10, T = 20), a Python loop of ``solver.hypergrad`` against
   ``batched(solver)`` and ``graphed(batched(solver))``.

Writes ``gpu.json`` and ``gpu.md`` (markdown tables with the machine) under ``--out``. Nothing here is a
test; on CPU it runs too (``--device cpu``), where graphed = the capturable code run eagerly.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bilevel import CG, Implicit, Unrolled, batched, graphed, optim

from .workloads import (
    IMPLICIT,
    REFERENCE_IMPLICIT,
    UNROLLED,
    make_reweighting,
    relative_error,
    solved_inner,
    synchronize,
)

PEERS_UNROLLED = ("higher innerloop_ctx", "torchopt MetaSGD", "plain autograd unroll")


def timed(fns: dict[str, Callable[[], Any]], device: torch.device, rounds: int) -> dict[str, float]:
    """Interleaved medians in milliseconds (one warm-up call each first)."""
    for fn in fns.values():
        fn()
    synchronize(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def _agree(got: torch.Tensor, ref: torch.Tensor, what: str, tol: float = 1e-5) -> float:
    err = relative_error(got, ref)
    if not err <= tol:
        raise AssertionError(f"{what}: relative error {err:.2e} against eager > {tol:g}")
    return err


def unrolled_table(device: torch.device, hidden: int, steps: int, rounds: int) -> dict[str, Any]:
    w = make_reweighting(device=device, hidden=hidden, steps=steps)
    solver = Unrolled(optim.SGD(lr=w.lr), steps=w.steps)
    outer = {"x": w.logits}
    hg = graphed(solver, w.problem, w.params0, outer)
    fns = {"ours Unrolled (eager)": lambda: solver.hypergrad(w.problem, w.params0, outer).grad["x"]}
    fns["ours Unrolled (graphed)"] = lambda: hg(outer).grad["x"]
    for name in PEERS_UNROLLED:
        try:
            fns[name] = UNROLLED[name](w)
        except ImportError:  # a peer that is not installed
            continue
    eager = fns["ours Unrolled (eager)"]()
    errors = {name: relative_error(fn(), eager) for name, fn in fns.items()}
    _agree(fns["ours Unrolled (graphed)"](), eager, "graphed Unrolled")
    ms = timed(fns, device, rounds)
    return {"hidden": hidden, "steps": steps, "ms": ms, "errors": errors, "captured": hg.captured}


def implicit_table(device: torch.device, rounds: int) -> dict[str, Any]:
    w = make_reweighting(device=device)
    theta = solved_inner(w)
    outer = {"x": w.logits}
    solver = Implicit(optim.SGD(lr=w.lr), 0, CG(max_iter=20, tol=0.0, damping=w.damping), warm_start=False)
    hg = graphed(solver, w.problem, theta, outer)
    fns = {
        "ours Implicit CG20 (eager)": lambda: solver.hypergrad(w.problem, theta, outer).grad["x"],
        "ours Implicit CG20 (graphed)": lambda: hg(outer).grad["x"],
    }
    try:
        fns[REFERENCE_IMPLICIT] = IMPLICIT[REFERENCE_IMPLICIT](w)
    except ImportError:
        pass
    eager = fns["ours Implicit CG20 (eager)"]()
    errors = {name: relative_error(fn(), eager) for name, fn in fns.items()}
    _agree(fns["ours Implicit CG20 (graphed)"](), eager, "graphed Implicit")
    return {"ms": timed(fns, device, rounds), "errors": errors, "captured": hg.captured}


def batched_table(device: torch.device, tasks: int, rounds: int) -> dict[str, Any]:
    ws = [make_reweighting(device=device, seed=s) for s in range(tasks)]
    solver = Unrolled(optim.SGD(lr=ws[0].lr), steps=ws[0].steps)
    keys = list(ws[0].params0)
    X, y = torch.stack([w.X for w in ws]), torch.stack([w.y for w in ws])
    Xv, yv = torch.stack([w.Xv[:500] for w in ws]), torch.stack([w.yv[:500] for w in ws])
    problem = ws[0].batch_problem() if hasattr(ws[0], "batch_problem") else _batch_problem(ws[0], keys)
    inner = {k: torch.stack([w.params0[k] for w in ws]) for k in keys}
    outer = {"x": torch.stack([w.logits for w in ws])}
    data = {"inner_data": [(X, y)], "outer_data": [(Xv, yv)]}
    one = batched(solver)
    hg = graphed(one, problem, inner, outer, **data)

    def loop() -> torch.Tensor:
        return torch.stack(
            [
                solver.hypergrad(
                    problem,
                    {k: inner[k][i] for k in keys},
                    {"x": outer["x"][i]},
                    inner_data=[(X[i], y[i])],
                    outer_data=[(Xv[i], yv[i])],
                ).grad["x"]
                for i in range(tasks)
            ]
        )

    fns = {
        "loop of solver.hypergrad": loop,
        "batched(solver)": lambda: one.hypergrad(problem, inner, outer, **data).grad["x"],
        "graphed(batched(solver))": lambda: hg(outer).grad["x"],
    }
    ref = loop()
    errors = {name: relative_error(fn(), ref) for name, fn in fns.items()}
    _agree(fns["batched(solver)"](), ref, "batched vs loop")
    return {"tasks": tasks, "ms": timed(fns, device, rounds), "errors": errors}


def _batch_problem(w: Any, keys: list[str]) -> Any:
    """The re-weighting losses with the data as the batch (so each task brings its own rows)."""
    import torch.nn.functional as F

    from bilevel import BilevelProblem
    from bilevel.problems import mlp

    def inner_loss(inner: dict, outer: dict, batch: Any) -> torch.Tensor:
        X, y = batch
        ce = F.cross_entropy(mlp({k: inner[k] for k in keys}, X), y, reduction="none")
        return (torch.sigmoid(outer["x"]) * ce).sum() / X.shape[0]

    def outer_loss(inner: dict, outer: dict, batch: Any) -> torch.Tensor:
        X, y = batch
        return F.cross_entropy(mlp({k: inner[k] for k in keys}, X), y)

    return BilevelProblem(inner_loss, outer_loss)


def search_table(device: torch.device) -> dict[str, Any]:
    """Median hypergradient seconds per upper step of a worst-case search, eager against graphed."""
    from unlearning.setup import prepare
    from unlearning.worst_case import search

    prepared = prepare("digits", "mlp", device=str(device), seed=0)
    out: dict[str, Any] = {}
    for label, graph in (("eager", False), ("graphed", None)):
        result = search(prepared, "ft", budget=0.1, upper_steps=12, inner_steps=20, graph=graph)
        secs = [h["hypergrad_seconds"] for h in result.history[2:]]
        out[label] = statistics.median(secs) * 1e3
        out[f"{label}_indices"] = sorted(int(i) for i in result.indices)[:10]
    out["same_set"] = out["eager_indices"] == out["graphed_indices"]
    return out


def machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__} (CUDA {torch.version.cuda})"
    return f"{cpu}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def markdown(results: dict[str, Any]) -> str:
    lines = [f"Measured on {results['machine']} by `python -m benchmarks.gpu` (medians, ms).", ""]
    for key in ("unrolled_small", "unrolled_large"):
        t = results.get(key)
        if t:
            lines += [
                f"**Unrolled, MLP 64-{t['hidden']}-10, T = {t['steps']}** (captured: {t['captured']})",
                "",
            ]
            lines += ["| contestant | ms | rel. error vs ours eager |", "|---|--:|--:|"]
            lines += [f"| {n} | {ms:.2f} | {t['errors'][n]:.1e} |" for n, ms in t["ms"].items()]
            lines.append("")
    for key, title in (("implicit", "Implicit, CG 20 (tol 0)"), ("batched", "16 tasks")):
        t = results.get(key)
        if t:
            lines += [f"**{title}**", "", "| contestant | ms | rel. error |", "|---|--:|--:|"]
            lines += [f"| {n} | {ms:.2f} | {t['errors'][n]:.1e} |" for n, ms in t["ms"].items()]
            lines.append("")
    s = results.get("search")
    if s:
        lines += [
            "**Worst-case search upper step (digits, FT, first-order, K = 20)**: hypergradient "
            f"{s['eager']:.2f} ms eager, {s['graphed']:.2f} ms graphed ({s['eager'] / s['graphed']:.1f}x); "
            f"same set: {s['same_set']}",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default="benchmarks/gpu_results")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--skip", default="", help="comma-separated tables to skip: large,search,batched")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    skip = set(filter(None, args.skip.split(",")))
    results: dict[str, Any] = {"machine": machine(device)}
    results["unrolled_small"] = unrolled_table(device, 128, 20, args.rounds)
    if "large" not in skip:
        results["unrolled_large"] = unrolled_table(device, 2048, 100, max(3, args.rounds // 3))
    results["implicit"] = implicit_table(device, args.rounds)
    if "batched" not in skip:
        results["batched"] = batched_table(device, 16, max(3, args.rounds // 3))
    if "search" not in skip:
        results["search"] = search_table(device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(results, indent=2))
    (out / "gpu.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
