"""The stress test: how much worse does each unlearning method do on its worst-case forget set than on a
random one of the same size, measured against retraining from scratch?

For every seed s:

1. `prepare` the split and the original model θ_o (trained on the whole pool; cached);
2. `worst_case.search` the worst-case forget set W_s of ``search_method`` (budget m) from a random m-hot
   start R_s; R_s is the random forget set it is compared with (same size, same seed);
3. on each set D_f ∈ {R_s, W_s}: Retrain on D_r = pool ∖ D_f (cached), then every method in ``methods``
   from θ_o, and the metrics UA, RA, TA, MIA-Efficacy (percent) and run time of each;
4. Avg. Gap(method) = ¼ Σ_{M ∈ {UA, RA, TA, MIA}} |M(method) − M(Retrain on the same set)|.

The report holds every per-seed number and, per (set, method), the mean and standard deviation over seeds,
plus ``gap_increase`` = mean gap on W − mean gap on R (positive: the worst-case set exposes the method).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from . import metrics
from .methods import REGISTRY, make
from .setup import prepare
from .worst_case import HYPERGRADS, search

SETS = ("random", "worst")
DEFAULT_METHODS = tuple(name for name in REGISTRY if name != "retrain")
COLUMNS = ("UA", "RA", "TA", "MIA", "gap", "seconds")


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def validate(methods: Sequence[str], seeds: Sequence[int], search_method: str, hypergrad: str) -> list[str]:
    """Names checked before anything is trained; returns the lower-cased method list."""
    names = [m.strip().lower() for m in methods if m.strip()]
    if not names:
        raise ValueError("methods is empty: name at least one unlearning method (e.g. ft,rl,salun)")
    unknown = [m for m in names if m not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown methods {unknown}: choose from {', '.join(REGISTRY)}")
    if "retrain" in names:
        raise ValueError("retrain is the reference every method is compared with: leave it out of methods")
    if len(set(names)) != len(names):
        raise ValueError(f"methods has repeated names: {names}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and non-empty, got {list(seeds)}")
    if search_method.lower() not in REGISTRY:
        raise ValueError(f"unknown search method {search_method!r}: choose from {', '.join(REGISTRY)}")
    if hypergrad not in HYPERGRADS:
        raise ValueError(f"hypergrad must be one of {', '.join(HYPERGRADS)}, got {hypergrad!r}")
    return names


def run(
    *,
    dataset: str = "digits",
    model: str = "mlp",
    methods: Sequence[str] = DEFAULT_METHODS,
    budget: float = 0.1,
    seeds: Sequence[int] = (0, 1),
    search_method: str = "ft",
    hypergrad: str = "first_order",
    search_options: dict[str, Any] | None = None,
    method_hparams: dict[str, dict[str, Any]] | None = None,
    device: str = "cpu",
    data_dir: str | None = None,
    cache_dir: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the stress test (module docstring) and return the JSON-ready report."""
    names = validate(methods, seeds, search_method, hypergrad)
    method_hparams = {k.lower(): v for k, v in (method_hparams or {}).items()}
    for name in method_hparams:
        if name not in names:
            raise ValueError(f"hyper-parameters given for {name!r}, which is not among the methods {names}")
    for name in names:  # build each once to validate its hyper-parameters before any training
        make(name, **method_hparams.get(name, {}))
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    per_seed: list[dict[str, Any]] = []
    for seed in seeds:
        say(f"seed {seed}: original model and worst-case search ({search_method}, {hypergrad})")
        base = prepare(
            dataset,
            model,
            f"random:{budget}",
            seed=seed,
            device=device,
            data_dir=data_dir,
            cache_dir=cache_dir,
        )
        found = search(
            base,
            search_method,
            budget=budget,
            hypergrad=hypergrad,
            seed=seed,
            progress=False,
            **(search_options or {}),
        )
        entry: dict[str, Any] = {
            "seed": seed,
            "search": {
                "seconds": found.seconds,
                "objective": found.objective,
                "size": int(found.indices.numel()),
                "overlap_with_random": int(torch.isin(found.indices, found.initial_indices).sum()),
            },
            "sets": {},
        }
        for set_name, index in (("random", found.initial_indices), ("worst", found.indices)):
            prepared = prepare(
                dataset, model, index, seed=seed, device=device, data_dir=data_dir, cache_dir=cache_dir
            )
            task = prepared.task
            say(f"seed {seed}, {set_name} set: Retrain")
            retrain_model, retrain_seconds = prepared.retrain()
            retrain = {**metrics.evaluate(retrain_model, task), "seconds": retrain_seconds, "gap": 0.0}
            original = {**metrics.evaluate(prepared.original, task), "seconds": 0.0}
            original["gap"] = metrics.avg_gap(original, retrain)
            rows = {"original": original, "retrain": retrain}
            for name in names:
                say(f"seed {seed}, {set_name} set: {name}")
                torch.manual_seed(seed)
                result = make(name, **method_hparams.get(name, {})).unlearn(prepared.original, task)
                row = {**metrics.evaluate(result.model, task), "seconds": result.seconds}
                row["gap"] = metrics.avg_gap(row, retrain)
                rows[name] = row
            entry["sets"][set_name] = {"size": int(task.forget_index.numel()), "rows": rows}
        per_seed.append(entry)

    summary: dict[str, dict[str, dict[str, list[float]]]] = {}
    for set_name in SETS:
        summary[set_name] = {}
        for row in ("original", "retrain", *names):
            summary[set_name][row] = {
                col: list(_mean_std([e["sets"][set_name]["rows"][row][col] for e in per_seed]))
                for col in COLUMNS
            }
    gap_increase = {
        name: summary["worst"][name]["gap"][0] - summary["random"][name]["gap"][0] for name in names
    }
    return {
        "config": {
            "dataset": dataset,
            "model": model,
            "methods": names,
            "budget": budget,
            "seeds": list(seeds),
            "search_method": search_method,
            "hypergrad": hypergrad,
            "search_options": search_options or {},
            "method_hparams": method_hparams,
            "device": device,
        },
        "summary": summary,
        "gap_increase": gap_increase,
        "per_seed": per_seed,
        "seconds": time.perf_counter() - started,
    }


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown tables (mean ± std over seeds)."""
    cfg = report["config"]
    lines = [
        f"# Stress test: {cfg['dataset']}/{cfg['model']}, budget {cfg['budget']}, seeds {cfg['seeds']}",
        "",
        f"Worst-case sets searched for `{cfg['search_method']}` with the `{cfg['hypergrad']}` hypergradient; "
        "each compared with the random start set of the same size and seed. Metrics in percent, mean ± std "
        "over seeds; Avg. Gap is to Retrain on the same set.",
        "",
    ]
    for set_name in SETS:
        lines += [
            f"## {set_name} forget set",
            "",
            "| method | UA | RA | TA | MIA | Avg. Gap | seconds |",
            "|---|---|---|---|---|---|---|",
        ]
        for row, vals in report["summary"][set_name].items():
            cells = " | ".join(f"{vals[c][0]:.2f} ± {vals[c][1]:.2f}" for c in COLUMNS)
            lines.append(f"| {row} | {cells} |")
        lines.append("")
    lines += [
        "## Gap increase on the worst-case set",
        "",
        "| method | Avg. Gap random | Avg. Gap worst | increase |",
        "|---|---|---|---|",
    ]
    for name, inc in sorted(report["gap_increase"].items(), key=lambda kv: -kv[1]):
        r, w = report["summary"]["random"][name]["gap"][0], report["summary"]["worst"][name]["gap"][0]
        lines.append(f"| {name} | {r:.2f} | {w:.2f} | {inc:+.2f} |")
    lines += ["", f"Total time: {report['seconds']:.1f} s.", ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Any) -> None:
    """Grouped bars: Avg. Gap per method on the random and worst-case sets (error bars: std over seeds),
    and Retrain's UA on each set."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import write_atomic

    names = report["config"]["methods"]
    summary = report["summary"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [4, 1]})
    xs = range(len(names))
    for shift, set_name, color in ((-0.2, "random", "tab:blue"), (0.2, "worst", "tab:red")):
        means = [summary[set_name][n]["gap"][0] for n in names]
        stds = [summary[set_name][n]["gap"][1] for n in names]
        a.bar([x + shift for x in xs], means, width=0.4, yerr=stds, color=color, label=f"{set_name} set")
    a.set_xticks(list(xs), names, rotation=30)
    a.set_ylabel("Avg. Gap to Retrain (points)")
    a.legend()
    ua = [summary[s]["retrain"]["UA"][0] for s in SETS]
    b.bar(SETS, ua, yerr=[summary[s]["retrain"]["UA"][1] for s in SETS], color=["tab:blue", "tab:red"])
    b.set_ylabel("Retrain UA (%)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_atomic(path, lambda f: f.write(buf.getvalue()))
