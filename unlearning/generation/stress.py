"""Generation stress test: each unlearning method on a random forget class versus its worst-case class.

For every seed s and method M: the candidate classes C (default all K ≤ 10) are each forgotten once by M
(`worst_class.exact_worst_class`, with the judge: UA, remaining-class accuracy and judge-space FID per
class); the **worst** class is argmin_c ℓ_c (the forget loss after unlearning, the classifier side's
objective and the search's), the **worst by UA** is argmin_c UA_c (the class whose generations are least
forgotten), and the **random** class is drawn uniformly from C with a generator seeded s. The report
compares UA, remaining accuracy and FID on the three, per method, averaged over seeds; with ``search`` the
bi-level class-wise search runs too and the report counts how often its class equals the exact worst class,
by forget loss and by UA (`worst_class.agreement`).

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
    rows = exact.to_dict()["rows"]
    by_class = {r["cls"]: r for r in rows}
    rnd = random_class(classes, seed)
    cell = {
        "random": rnd,
        "worst": exact.worst,
        "worst_ua": exact.worst_ua,
        "rows": rows,
        "random_row": _metrics(by_class[rnd]),
        "worst_row": _metrics(by_class[exact.worst]),
    }
    if search_kw is not None:
        try:
            found = worst_class.search_worst_class(method, original, seeded, **search_kw)
            cell["search"] = {"found": found.found, "v": found.v, "seconds": found.seconds}
        except TypeError as err:  # NoLowerLevelError: the method has no per-class objective
            cell["search"] = {"found": None, "error": str(err)}
    return cell


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else None


#: the classes a stress cell compares: the random class, the worst by the forget loss after unlearning (the
#: search's objective) and the worst by UA (the lowest share of the class's generations that is forgotten)
SELECTIONS = {"random": "random class", "worst": "worst by forget loss", "worst_by_ua": "worst by UA"}


def _selected(cell: dict[str, Any], which: str) -> dict[str, Any] | None:
    if which != "worst_by_ua":
        return cell[f"{which}_row"]
    rows = {r["cls"]: r for r in cell["rows"]}
    return None if cell.get("worst_ua") is None else _metrics(rows[cell["worst_ua"]])


def _metrics(row: dict[str, Any]) -> dict[str, Any]:
    """The metrics a cell keeps of one class's row (a dict of `worst_class.ExactResult.to_dict`)."""
    return {k: row.get(k) for k in ("ua", "remain_acc", "fid", "forget_loss")}


def summarise(report: dict[str, Any], names: list[str], seeds: tuple[int, ...]) -> dict[str, Any]:
    """Per method: mean UA / remaining accuracy / FID over seeds on each class of `SELECTIONS`, and the
    search's agreement with the exact worst class by forget loss (its objective) and by UA (when it ran)."""
    summary: dict[str, Any] = {}
    exact, by_ua, found = {}, {}, {}
    for name in names:
        cells = [report["cells"][f"{name}/{s}"] for s in seeds if f"{name}/{s}" in report["cells"]]
        row = {"seeds": len(cells)}
        for which in SELECTIONS:
            picked = [_selected(c, which) for c in cells]
            for metric in ("ua", "remain_acc", "fid"):
                row[f"{which}_{metric}"] = _mean([p[metric] for p in picked if p is not None])
        summary[name] = row
        for s in seeds:
            cell = report["cells"].get(f"{name}/{s}")
            if cell and cell.get("search", {}).get("found") is not None:
                key = f"{name}/{s}"
                exact[key], by_ua[key] = cell["worst"], cell.get("worst_ua")
                found[key] = cell["search"]["found"]
    if found:
        summary["search_agreement"] = worst_class.agreement(exact, found)
        if all(v is not None for v in by_ua.values()):
            summary["search_agreement_ua"] = worst_class.agreement(by_ua, found)
    return summary


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def stress_markdown(report: dict[str, Any]) -> str:
    """The report as markdown: per method, UA / remaining accuracy / FID on each class of `SELECTIONS`
    (means over seeds), then the classes each cell chose."""
    config = report["config"]
    lines = [
        "# Generation stress test: random vs worst-case forget class",
        "",
        f"dataset {config.get('dataset')}, seeds {config.get('seeds')}, candidate classes "
        f"{config.get('classes') or 'all'}; UA and remaining accuracy in %, FID in the judge's feature space "
        "(not Inception-FID); worst by forget loss = the class whose forget loss after unlearning is lowest "
        "(the search's objective), worst by UA = the class with the lowest UA.",
        "",
        "| method | forget class | UA | remaining acc. | FID |",
        "|---|---|---|---|---|",
    ]
    for name, row in report["summary"].items():
        if name.startswith("search_agreement"):
            continue
        for which, label in SELECTIONS.items():
            lines.append(
                f"| {name} | {label} | {_pct(row.get(f'{which}_ua'))} "
                f"| {_pct(row.get(f'{which}_remain_acc'))} | {_num(row.get(f'{which}_fid'))} |"
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
    for key, target in (("search_agreement", "forget loss"), ("search_agreement_ua", "UA")):
        agree = report["summary"].get(key)
        if agree:
            lines.append(
                f"\nThe bi-level search found the exact worst class by {target} in {agree['hits']} of "
                f"{agree['total']} cells."
            )
    return "\n".join(lines) + "\n"


def stress_plot(report: dict[str, Any], path: Path) -> Path:
    """Bars of UA (random vs worst class) per method."""
    from unlearning.report import pyplot, save_figure

    plt = pyplot()
    names = [n for n in report["summary"] if not n.startswith("search_agreement")]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(names), 3.2))
    xs = range(len(names))
    for offset, (which, label) in zip((-0.27, 0.0, 0.27), SELECTIONS.items()):
        values = [100 * (report["summary"][n].get(f"{which}_ua") or 0.0) for n in names]
        ax.bar([x + offset for x in xs], values, width=0.27, label=label)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names)
    ax.set_ylabel("UA (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    ax.set_title("UA: random vs worst-case forget class (mean over seeds)", fontsize=9)
    return save_figure(fig, path)


__all__ = ["ConfigMismatch", "load_report", "random_class", "run_stress", "stress_markdown", "summarise"]
