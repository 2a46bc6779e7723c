"""Generation stress test: each unlearning method on a random forget class versus its worst-case class.

For every seed s and method M: the candidate classes C (default all K ≤ 10) are each forgotten once by M
(`worst_class.exact_worst_class`, with the judge: UA, remaining-class accuracy and judge-space FID per
class); the **worst** class is argmin_c ℓ_c (the forget loss after unlearning, the classifier side's
objective) and the **random** class is drawn uniformly from C with a generator seeded s. The report
compares UA and FID on the two, per method, averaged over seeds; with ``search`` the bi-level class-wise
search runs too and the report counts how often its class equals the exact worst class
(`worst_class.agreement`).

The report is written after every (seed, method) cell, so a rerun with the same configuration resumes; another
configuration is refused (`ConfigMismatch`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from unlearning.generation import worst_class
from unlearning.generation.task import GenerationTask
from unlearning.io import jsonable, write_json, write_text


class ConfigMismatch(ValueError):
    """An output folder holds a run with another configuration."""


def load_report(path: Path, config: dict[str, Any], part: str = "cells") -> dict[str, Any]:
    """The report at ``path`` when its config equals ``config`` (resume), a fresh ``{"config": config,
    part: {}}`` when there is none; `ConfigMismatch` naming the differing keys otherwise."""
    import json

    config = jsonable(config)
    if not path.exists():
        return {"config": config, part: {}}
    report = json.loads(path.read_text())
    old = report.get("config", {})
    if old != config:
        keys = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
        raise ConfigMismatch(
            f"{path} holds a run with another configuration (differs in {', '.join(keys)}); "
            "use another --out or delete that folder"
        )
    return report


def random_class(classes: tuple[int, ...], seed: int) -> int:
    """A class drawn uniformly from ``classes`` by a generator seeded ``seed``."""
    gen = torch.Generator().manual_seed(int(seed))
    return int(classes[int(torch.randint(0, len(classes), (1,), generator=gen))])


def run_stress(
    original: Any,
    judge: Any,
    task: GenerationTask,
    methods: dict[str, Any],
    *,
    seeds: tuple[int, ...],
    classes: tuple[int, ...] | None,
    out: Path,
    config: dict[str, Any],
    metric_kw: dict[str, Any],
    search_kw: dict[str, Any] | None = None,
    progress: Callable[[str], None] = lambda text: None,
) -> dict[str, Any]:
    """Fill ``out/report.json`` cell by cell (see module) and return the report with its ``summary``."""
    path = out / "report.json"
    report = load_report(path, config)
    classes = tuple(range(task.num_classes)) if classes is None else tuple(classes)
    for seed in seeds:
        for name, method in methods.items():
            key = f"{name}/{seed}"
            if key in report["cells"]:
                progress(f"{key}: done (resumed)")
                continue
            start = time.perf_counter()
            cell = _cell(original, judge, task, method, seed, classes, metric_kw, search_kw)
            report["cells"][key] = {**cell, "seconds": time.perf_counter() - start}
            write_json(path, jsonable(report))
            progress(f"{key}: random class {cell['random']}, worst class {cell['worst']}")
    report["summary"] = summarise(report, list(methods), seeds)
    write_json(path, jsonable(report))
    write_text(out / "report.md", stress_markdown(report))
    stress_plot(report, out / "stress.png")
    return report


def _cell(original, judge, task, method, seed, classes, metric_kw, search_kw) -> dict[str, Any]:
    seeded = GenerationTask(task.data, (classes[0],), task.num_classes, seed=int(seed), train=task.train)
    exact = worst_class.exact_worst_class(
        method, original, seeded, classes=classes, judge=judge, metric_kw={**metric_kw, "seed": int(seed)}
    )
    rows = {r.cls: r for r in exact.rows}
    rnd = random_class(classes, seed)
    cell = {
        "random": rnd,
        "worst": exact.worst,
        "worst_ua": exact.worst_ua,
        "rows": exact.to_dict()["rows"],
        "random_row": _metrics(rows[rnd]),
        "worst_row": _metrics(rows[exact.worst]),
    }
    if search_kw is not None:
        try:
            found = worst_class.search_worst_class(method, original, seeded, **search_kw)
            cell["search"] = {"found": found.found, "v": found.v, "seconds": found.seconds}
        except TypeError as err:  # NoLowerLevelError: the method has no per-class objective
            cell["search"] = {"found": None, "error": str(err)}
    return cell


def _metrics(row: Any) -> dict[str, Any]:
    return {"ua": row.ua, "remain_acc": row.remain_acc, "fid": row.fid, "forget_loss": row.forget_loss}


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else None


def summarise(report: dict[str, Any], names: list[str], seeds: tuple[int, ...]) -> dict[str, Any]:
    """Per method: mean UA / remaining accuracy / FID on the random and on the worst class over seeds, and the
    search's agreement with the exact worst class (when it ran)."""
    summary: dict[str, Any] = {}
    exact, found = {}, {}
    for name in names:
        cells = [report["cells"][f"{name}/{s}"] for s in seeds if f"{name}/{s}" in report["cells"]]
        row = {"seeds": len(cells)}
        for which in ("random", "worst"):
            for metric in ("ua", "remain_acc", "fid"):
                row[f"{which}_{metric}"] = _mean([c[f"{which}_row"][metric] for c in cells])
        summary[name] = row
        for s in seeds:
            cell = report["cells"].get(f"{name}/{s}")
            if cell and cell.get("search", {}).get("found") is not None:
                exact[f"{name}/{s}"], found[f"{name}/{s}"] = cell["worst"], cell["search"]["found"]
    if found:
        summary["search_agreement"] = worst_class.agreement(exact, found)
    return summary


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def stress_markdown(report: dict[str, Any]) -> str:
    """The report as markdown: the summary table (random vs worst class) and the per-cell classes."""
    config = report["config"]
    lines = [
        "# Generation stress test: random vs worst-case forget class",
        "",
        f"dataset {config.get('dataset')}, seeds {config.get('seeds')}, candidate classes "
        f"{config.get('classes')}; UA and remaining accuracy in %, FID in the judge's feature space "
        "(not Inception-FID); worst class = lowest forget loss after unlearning.",
        "",
        "| method | UA random | UA worst | acc. random | acc. worst | FID random | FID worst |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in report["summary"].items():
        if name == "search_agreement":
            continue
        lines.append(
            f"| {name} | {_pct(row['random_ua'])} | {_pct(row['worst_ua'])} "
            f"| {_pct(row['random_remain_acc'])} | {_pct(row['worst_remain_acc'])} "
            f"| {_num(row['random_fid'])} | {_num(row['worst_fid'])} |"
        )
    lines += [
        "",
        "| cell | random class | worst class (loss) | worst class (UA) | search found |",
        "|---|---|---|---|---|",
    ]
    for key, cell in report["cells"].items():
        found = cell.get("search", {}).get("found")
        found = "-" if found is None else found
        lines.append(f"| {key} | {cell['random']} | {cell['worst']} | {cell['worst_ua']} | {found} |")
    agree = report["summary"].get("search_agreement")
    if agree:
        lines += [
            "",
            f"The bi-level search found the exact worst class in {agree['hits']} of {agree['total']} cells.",
        ]
    return "\n".join(lines) + "\n"


def stress_plot(report: dict[str, Any], path: Path) -> Path:
    """Bars of UA (random vs worst class) per method."""
    from unlearning.report import pyplot, save_figure

    plt = pyplot()
    names = [n for n in report["summary"] if n != "search_agreement"]
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(names), 3.2))
    xs = range(len(names))
    for offset, which in ((-0.2, "random"), (0.2, "worst")):
        values = [100 * (report["summary"][n][f"{which}_ua"] or 0.0) for n in names]
        ax.bar([x + offset for x in xs], values, width=0.4, label=f"{which} class")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names)
    ax.set_ylabel("UA (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    ax.set_title("Unlearning accuracy: random vs worst-case forget class", fontsize=9)
    return save_figure(fig, path)


__all__ = ["ConfigMismatch", "load_report", "random_class", "run_stress", "stress_markdown", "summarise"]
