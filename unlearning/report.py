"""Output of results for people: terminal tables, markdown and PNG figures. Computing lives elsewhere; this
module only formats what it is given.

`save_figure` is the one way a figure reaches the disk: ``tight_layout``, PNG at 110 dpi, written atomically
(`unlearning.io.write_atomic`), the figure closed. `pyplot` returns matplotlib's pyplot on the headless Agg
backend.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

from .io import write_atomic

DPI = 110


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Lay out ``fig``, render it as PNG, write it to ``path`` atomically and close it; returns the path."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return write_atomic(Path(path), lambda f: f.write(buf.getvalue()))


def fmt(value: float | None, spec: str = ".2f", missing: str = "diverged") -> str:
    """A number formatted by ``spec``, or ``missing`` where there is none (None: every run of it diverged)."""
    return missing if value is None else format(value, spec)


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


# ------------------------------------------------------------------------------------------ stress test
#: The figures `stress_plots` writes, in its order.
PLOTS = ("avg_gap.png", "ua_mia.png", "search.png")
#: The columns of a stress-test summary table: (key in the summary, heading).
STRESS_COLUMNS = (
    ("UA", "UA"),
    ("RA", "RA"),
    ("TA", "TA"),
    ("MIA", "MIA"),
    ("avg_gap", "Avg. Gap"),
    ("seconds", "seconds"),
)


def describe_stress(config: dict[str, Any]) -> str:
    """One line naming a stress test from its recorded ``config``: data, model, forget-set size, seeds."""
    unit = "of the classes (class-wise)" if config["class_wise"] else "of the pool (data-wise)"
    return (
        f"{config['dataset']}/{config['model']}, forget fraction {config['forget_fraction']} {unit} = "
        f"{config['forget_size']} {'classes' if config['class_wise'] else 'examples'}, "
        f"seeds {config['seeds']}"
    )


def stress_markdown(report: dict[str, Any]) -> str:
    """A stress-test report (`unlearning.stress.stress_test`) as markdown: the set-up, per-selection tables
    (mean ± std over seeds), the gap increase, the tuning table and the searches."""
    lines = [
        *_stress_intro(report),
        *_selection_tables(report),
        *_gap_table(report),
        *_tuning_table(report),
        *_search_table(report),
        "",
        f"Total time: {report['seconds']:.1f} s.",
        "",
    ]
    return "\n".join(lines)


def _stress_intro(report: dict[str, Any]) -> list[str]:
    cfg = report["config"]
    hparams = (
        "tuned on the first seed's random set (below)."
        if cfg["tune"]
        else "the methods' defaults"
        + (f" with {cfg['method_hparams']}" if cfg["method_hparams"] else "")
        + "."
    )
    return [
        f"# Stress test: {describe_stress(cfg)}",
        "",
        f"Worst-case sets searched for `{cfg['search_method']['name']}` with the `{cfg['hypergrad']}` "
        f"hypergradient ({cfg['search_options']['upper_steps']} upper steps × "
        f"{cfg['search_options']['inner_steps']} lower steps); each compared with the random start set of "
        "the same size and seed. Metrics in percent, mean ± std over seeds; Avg. Gap is to Retrain on the "
        f"same set. Hyper-parameters: {hparams}",
        "",
    ]


def _selection_tables(report: dict[str, Any]) -> list[str]:
    """One table per selection (random, worst): each column's mean ± std over seeds."""
    lines: list[str] = []
    for selection, rows in report["summary"].items():
        lines += [
            f"## {selection} forget set",
            "",
            "| method | " + " | ".join(head for _, head in STRESS_COLUMNS) + " |",
            "|---" * (len(STRESS_COLUMNS) + 1) + "|",
        ]
        for name, vals in rows.items():
            if vals["avg_gap"][0] is None:
                cells = " | ".join("diverged" for _ in STRESS_COLUMNS)
            else:
                cells = " | ".join(f"{vals[c][0]:.2f} ± {vals[c][1]:.2f}" for c, _ in STRESS_COLUMNS)
            note = f" ({vals['diverged']} seed(s) diverged)" if vals.get("diverged") else ""
            lines.append(f"| {name}{note} | {cells} |")
        lines.append("")
    return lines


def mean_gaps(report: dict[str, Any]) -> dict[str, float]:
    """Per selection, the mean Avg. Gap over the methods with a gap on both sets (those in ``gap_increase``);
    0 where there are none."""
    ran = list(report["gap_increase"])
    return {
        selection: sum(rows[n]["avg_gap"][0] for n in ran) / max(1, len(ran))
        for selection, rows in report["summary"].items()
    }


def _gap_table(report: dict[str, Any]) -> list[str]:
    """The gap increase per method (largest first), the mean over the methods, the diverged runs and
    Retrain's UA on both sets."""
    summary, names = report["summary"], [m["name"] for m in report["config"]["methods"]]
    lines = [
        "## Gap increase on the worst-case set",
        "",
        "| method | Avg. Gap random | Avg. Gap worst | increase |",
        "|---|---|---|---|",
    ]
    for name, inc in sorted(report["gap_increase"].items(), key=lambda kv: -kv[1]):
        r, w = summary["random"][name]["avg_gap"][0], summary["worst"][name]["avg_gap"][0]
        lines.append(f"| {name} | {r:.2f} | {w:.2f} | {inc:+.2f} |")
    ran = len(report["gap_increase"])
    mean = mean_gaps(report)
    ua_r, ua_w = summary["random"]["retrain"]["UA"][0], summary["worst"]["retrain"]["UA"][0]
    lines += [
        f"| **mean of the methods** | {mean['random']:.2f} | {mean['worst']:.2f} | "
        f"{mean['worst'] - mean['random']:+.2f} |",
        "",
        *(
            [f"Mean over the {ran} of {len(names)} methods that ran on both sets."]
            if ran < len(names)
            else []
        ),
        *(
            f"Diverged: {r['method']} on the {r['selection']} set of seed {r['seed']} ({r['error']})."
            for r in report["results"]
            if r.get("error")
        ),
        "",
        f"Retrain's UA: {ua_r:.2f} on the random sets, {ua_w:.2f} on the worst-case sets.",
        "",
    ]
    return lines


def _tuning_table(report: dict[str, Any]) -> list[str]:
    """Every ``tune=True`` candidate with its UA, MIA and gap, ✓ on the chosen one (none: no table)."""
    if not report.get("tuning"):
        return []
    lines = [
        "## Tuning (first seed's random set; smallest Avg. Gap chosen)",
        "",
        "| method | candidate | UA | MIA | Avg. Gap | chosen |",
        "|---|---|---|---|---|---|",
    ]
    for t in report["tuning"]:
        label = ", ".join(
            f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["overrides"].items()
        )
        chosen = report["hparams"][t["method"]]
        mark = "✓" if all(chosen.get(k) == v for k, v in t["overrides"].items()) else ""
        ua, mia = fmt(t["UA"], missing=""), fmt(t["MIA"], missing="")
        lines.append(
            f"| {t['method']} | {label or '(defaults)'} | {ua} | {mia} | {fmt(t['avg_gap'])} | {mark} |"
        )
    lines.append("")
    return lines


def _search_table(report: dict[str, Any]) -> list[str]:
    """Per seed, the search objective at the random start and at the found set, their overlap, time, file."""
    lines = [
        "## Searches",
        "",
        "| seed | F(random start) | F(worst set) | overlap with random | seconds | set |",
        "|---|---|---|---|---|---|",
    ]
    for seed, s in report["searches"].items():
        lines.append(
            f"| {seed} | {s['objective']['initial']:.4g} | {s['objective']['final']:.4g} | "
            f"{s['overlap_with_random']}/{s['size']} | {s['seconds']:.1f} | {s['file'] or ''} |"
        )
    return lines


def stress_table(report: dict[str, Any], out: str | os.PathLike) -> None:
    """The stress-test summary in the terminal (rich): per method, UA, MIA and Avg. Gap on both sets (seed
    means; n/a where every seed diverged), the mean over the methods, the diverged runs, the files written."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    out = Path(out)
    summary = report["summary"]
    table = Table(
        title=f"worst-case vs random forget sets ({describe_stress(report['config'])}; mean over seeds)",
        box=box.SIMPLE_HEAD,
    )
    for col in ("method", "UA rand", "UA worst", "MIA rand", "MIA worst", "Gap rand", "Gap worst", "Δ gap"):
        table.add_column(col, justify="left" if col == "method" else "right", no_wrap=col == "method")
    for name in summary["random"]:
        r, w = summary["random"][name], summary["worst"][name]
        delta = report["gap_increase"].get(name)
        table.add_row(
            name,
            *(fmt(v[c][0], missing="n/a") for c in ("UA", "MIA", "avg_gap") for v in (r, w)),
            "" if delta is None else f"{delta:+.2f}",
            end_section=name == "retrain",
        )
    mean = mean_gaps(report)
    table.add_row(
        "mean",
        "",
        "",
        "",
        "",
        f"{mean['random']:.2f}",
        f"{mean['worst']:.2f}",
        f"{mean['worst'] - mean['random']:+.2f}",
    )
    console = Console()
    console.print(table)
    failed = [r for r in report["results"] if r.get("error")]
    if failed:
        console.print(
            "n/a: diverged on every seed; diverged runs (left out of the means): "
            + "; ".join(f"{r['method']} ({r['selection']}, seed {r['seed']})" for r in failed)
        )
    wrote(*(out / f for f in ("report.json", "report.md", *PLOTS)), f"{out / 'sets'}/")


def _bars(ax: Any, summary: dict[str, Any], rows: list[str], column: str, label: str) -> None:
    """Grouped bars of ``column`` per method in ``rows``: random (blue) beside worst (red), std as error."""
    colors = {"random": "tab:blue", "worst": "tab:red"}
    xs = range(len(rows))
    for shift, selection in ((-0.2, "random"), (0.2, "worst")):
        means = [_nan(summary[selection][n][column][0]) for n in rows]
        stds = [_nan(summary[selection][n][column][1]) for n in rows]
        ax.bar([x + shift for x in xs], means, 0.4, yerr=stds, color=colors[selection], label=selection)
    ax.set_xticks(list(xs), rows, rotation=30, ha="right")
    ax.set_ylabel(label)
    ax.legend(title="forget set")


def stress_plots(report: dict[str, Any], out: str | os.PathLike) -> list[Path]:
    """Three PNGs in ``out`` (`PLOTS`): Avg. Gap per method on the random and worst-case sets (error bars:
    std over seeds); UA and MIA-Efficacy per method, Retrain included, on both; the search objective F per
    upper step, one curve per seed."""
    plt = pyplot()
    out = Path(out)
    names = [m["name"] for m in report["config"]["methods"]]
    summary = report["summary"]

    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(names) + 2), 4))
    _bars(ax, summary, names, "avg_gap", "Avg. Gap to Retrain (points)")
    ax.set_title("Avg. Gap to Retrain: random vs worst-case forget set")
    written = [save_figure(fig, out / PLOTS[0])]

    fig, axes = plt.subplots(1, 2, figsize=(max(10, 1.2 * len(names) + 4), 4))
    for ax, col, label in ((axes[0], "UA", "UA (%)"), (axes[1], "MIA", "MIA-Efficacy (%)")):
        _bars(ax, summary, ["retrain", *names], col, label)
        ax.set_title(f"{label}: random vs worst-case forget set")
    written.append(save_figure(fig, out / PLOTS[1]))

    fig, ax = plt.subplots(figsize=(6, 4))
    for seed, s in report["searches"].items():
        ax.plot(range(1, len(s["curve"]) + 1), s["curve"], marker=".", label=f"seed {seed}")
    if all(v > 0 for s in report["searches"].values() for v in s["curve"]):
        ax.set_yscale("log")
    ax.set_xlabel("upper step")
    ax.set_ylabel("search objective F(w)")
    ax.set_title(f"worst-case search for {report['config']['search_method']['name']}")
    ax.legend()
    written.append(save_figure(fig, out / PLOTS[2]))
    return written


# ------------------------------------------------------------------------------- unlearn and evaluate
#: The metric columns of the ``unlearn`` and ``evaluate`` tables, in order (percent, then seconds).
METRIC_CELLS = ("UA", "RA", "TA", "MIA", "seconds")


def _unlearn_rows(report: dict[str, Any]) -> list[tuple[str, dict[str, Any], float]]:
    return [
        ("Original", report["original"], report["avg_gap_original"]),
        ("Retrain", report["retrain"], 0.0),
        (report["method"]["name"], report["method"], report["avg_gap"]),
    ]


def unlearn_markdown(report: dict[str, Any]) -> str:
    """A ``worstforget unlearn`` report (``metrics.json``) as a markdown table: Original, Retrain and the
    method, with their Avg. Gap to Retrain, and the method's hyper-parameters."""
    c = report["config"]
    lines = [
        f"# Unlearning: {c['method']} on {c['dataset']}/{c['model']}, forget {c['forget']}, seed {c['seed']}",
        "",
        f"|D_f| = {c['sizes']['forget']}, |D_r| = {c['sizes']['retain']}, |D_test| = {c['sizes']['test']}. "
        "Metrics in %; Avg. Gap = mean |Δ| to Retrain over UA, RA, TA, MIA.",
        "",
        "| model | UA | RA | TA | MIA | seconds | Avg. Gap |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, m, gap in _unlearn_rows(report):
        lines.append(f"| {label} | " + " | ".join(f"{m[k]:.2f}" for k in METRIC_CELLS) + f" | {gap:.2f} |")
    hp = ", ".join(f"{k}={v}" for k, v in c["hparams"].items())
    lines += ["", f"Hyper-parameters: {hp or '(none)'}.", ""]
    return "\n".join(lines)


def unlearn_table(report: dict[str, Any], out: str | os.PathLike) -> None:
    """The ``worstforget unlearn`` table in the terminal (rich), then the files written in ``out``."""
    from rich.console import Console
    from rich.table import Table

    c, out = report["config"], Path(out)
    table = Table(
        title=f"{c['method']} on {c['dataset']}/{c['model']}, forget {c['forget']} (seed {c['seed']})"
    )
    for col in ("model", *METRIC_CELLS, "Avg. Gap"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for label, m, gap in _unlearn_rows(report):
        table.add_row(label, *(f"{m[k]:.2f}" for k in METRIC_CELLS), f"{gap:.2f}")
    console = Console()
    console.print(table)
    wrote(out / "metrics.json", out / "metrics.md")


#: The columns of the ``evaluate`` table.
EVALUATE_HEADER = ("model", "UA", "RA", "TA", "MIA", "seconds", "Avg. Gap")


def _evaluate_cells(row: dict[str, Any]) -> list[str]:
    return [f"{row[k]:.2f}" for k in (*METRIC_CELLS, "avg_gap")]


def _evaluate_title(report: dict[str, Any]) -> str:
    c, found = report["config"], report.get("forget_set") or {}
    origin = f" ({found['method']} worst case, {found['mode']})" if found.get("method") else ""
    return (
        f"{c['dataset']}/{c['model']}, forget {c['forget']}{origin}, |D_f| = {c['sizes']['forget']}, "
        f"seed {c['seed']}"
    )


def evaluate_markdown(report: dict[str, Any]) -> str:
    """A ``worstforget evaluate`` report (``evaluate.json``) as a markdown table, one row per model."""
    lines = [
        f"# Evaluation: {_evaluate_title(report)}",
        "",
        "Metrics in %; Avg. Gap = mean |method − Retrain| over UA, RA, TA, MIA; seconds = run time "
        "(Retrain and Original: training time).",
        "",
        "| " + " | ".join(EVALUATE_HEADER) + " |",
        "|---|" + "---:|" * (len(EVALUATE_HEADER) - 1),
    ]
    lines += [
        f"| {name} | " + " | ".join(_evaluate_cells(row)) + " |" for name, row in report["rows"].items()
    ]
    hps = report["config"]["hparams"]
    lines += ["", "Hyper-parameters: " + ("; ".join(f"{n}: {hp}" for n, hp in hps.items()) or "(none)"), ""]
    return "\n".join(lines)


def evaluate_table(report: dict[str, Any], out: str | os.PathLike) -> None:
    """The ``worstforget evaluate`` table in the terminal (rich), then the files written in ``out``."""
    from rich.console import Console
    from rich.table import Table

    out = Path(out)
    table = Table(title=_evaluate_title(report))
    for col in EVALUATE_HEADER:
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, row in report["rows"].items():
        table.add_row(name, *_evaluate_cells(row))
    console = Console()
    console.print(table)
    wrote(out / "evaluate.json", out / "evaluate.md")


def wrote(*paths: str | os.PathLike) -> None:
    """Print ``wrote A, B and C`` as one unwrapped line: a path a user copies is never broken, whatever the
    terminal width (rich would wrap at 80 columns in a non-terminal)."""
    names = [str(p) for p in paths]
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    print(f"wrote {listed}", flush=True)
