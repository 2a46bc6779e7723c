"""The tables of docs/results.md, from stress-test reports (``report.json`` of ``worstforget stress``).

    python docs/results/compare.py table docs/results/stress-digits        # one run, every method
    python docs/results/compare.py modes docs/results/modes/first_order docs/results/modes/unrolled ...

``table``: per method (mean over the seeds whose run finished), UA, RA, TA, MIA-Efficacy and Avg. Gap to
Retrain on the random and worst-case sets, and the gap's change; a method that diverged on some seeds says so
(— where every seed diverged); the last row is the mean over the methods with a gap on both sets.

``modes``: for each report folder (holding ``report.json`` from ``worstforget stress --out DIR``), one row:
the hypergradient mode and upper steps of the search, its mean seconds per seed, the found sets' overlap with
the random start, Retrain's UA on the worst-case sets (lower = harder to tell apart from training data), the
mean Avg. Gap of the methods on the worst-case and random sets, and the methods whose gap grows the most.
Prints a markdown table.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def row(folder: Path) -> str:
    rep = json.loads((folder / "report.json").read_text())
    cfg, summary, inc = rep["config"], rep["summary"], rep["gap_increase"]
    searches = rep["searches"].values()
    seconds = statistics.mean(s["seconds"] for s in searches)
    overlap = statistics.mean(s["overlap_with_random"] / s["size"] for s in searches)
    names = [n for n in inc if n not in ("original", "retrain")]
    mean_gap = {
        sel: statistics.mean(summary[sel][n]["avg_gap"][0] for n in names) for sel in ("random", "worst")
    }
    top = ", ".join(f"{n} {inc[n]:+.2f}" for n in sorted(names, key=lambda n: -inc[n])[:3])
    ua = summary["worst"]["retrain"]["UA"]
    return (
        f"| {cfg['hypergrad']} | {cfg['search_options']['upper_steps']} | {seconds:.2f} | {overlap:.2f} | "
        f"{ua[0]:.2f} ± {ua[1]:.2f} | {mean_gap['worst']:.2f} | {mean_gap['random']:.2f} | {top} |"
    )


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def table(folder: Path) -> None:
    rep = json.loads((folder / "report.json").read_text())
    summary, inc = rep["summary"], rep["gap_increase"]
    names = [n for n in inc if n not in ("original", "retrain")]
    cols = ("UA", "RA", "TA", "MIA", "avg_gap")
    head = " | ".join(f"{c if c != 'avg_gap' else 'Avg. Gap'} rand / worst" for c in cols)
    print(f"| method | {head} | Δ gap |")
    print("|---|" + "--:|" * (len(cols) + 1))
    tested = [m["name"] for m in rep["config"]["methods"]]
    for name in ("original", "retrain", *tested):
        r, w = summary["random"][name], summary["worst"][name]
        cells = " | ".join(f"{_num(r[c][0])} / {_num(w[c][0])}" for c in cols)
        delta = f"{inc[name]:+.2f}" if name in inc else ""
        runs = [f"{r.get('diverged', 0)} random", f"{w.get('diverged', 0)} worst"]
        note = f" (diverged: {', '.join(runs)})" if r.get("diverged") or w.get("diverged") else ""
        print(f"| {name}{note} | {cells} | {delta} |")
    mean = {sel: statistics.mean(summary[sel][n]["avg_gap"][0] for n in names) for sel in ("random", "worst")}
    blank = " | ".join("" for _ in cols[:-1])
    print(
        f"| **mean of the {len(names)} methods** | {blank} | {mean['random']:.2f} / {mean['worst']:.2f} | "
        f"{mean['worst'] - mean['random']:+.2f} |"
    )


def modes(folders: list[str]) -> None:
    print(
        "| hypergrad | upper steps | search s / seed | overlap with random | Retrain UA (worst) "
        "| mean Avg. Gap worst | mean Avg. Gap random | largest gap increases |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|---|")
    for folder in folders:
        print(row(Path(folder)))


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("table", "modes"):
        sys.exit("usage: compare.py table DIR | compare.py modes DIR [DIR ...]")
    if sys.argv[1] == "table":
        table(Path(sys.argv[2]))
    else:
        modes(sys.argv[2:])
