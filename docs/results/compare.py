"""The tables of docs/results.md, from stress-test reports (``report.json`` of ``worstforget stress``).

    python docs/results/compare.py table docs/results/stress-digits        # one run, every method
    python docs/results/compare.py modes docs/results/modes/first_order docs/results/modes/unrolled ...
    python docs/results/compare.py ci docs/results/stress-digits-10seeds    # mean ± 95% CI over seeds
    python docs/results/compare.py sweep docs/results/salun-rl-sweep-digits [STRESS_DIR]
    python docs/results/compare.py classwise docs/results/classwise-hits-digits [--seeds]

``table``: per method (mean over the seeds whose run finished), UA, RA, TA, MIA-Efficacy and Avg. Gap to
Retrain on the random and worst-case sets, and the gap's change; a method that diverged on some seeds says so
(— where every seed diverged); the last row is the mean over the methods with a gap on both sets.

``modes``: for each report folder (holding ``report.json`` from ``worstforget stress --out DIR``), one row:
the hypergradient mode and upper steps of the search, its mean seconds per seed, the found sets' overlap with
the random start, Retrain's UA on the worst-case sets (lower = harder to tell apart from training data), the
mean Avg. Gap of the methods on the worst-case and random sets, and the methods whose gap grows the most.
Prints a markdown table.

``ci``: like ``table``, but each cell is mean ± the half-width of a 95% confidence interval of the mean over
the seeds (Student's t: t_{0.975, n-1} · s / √n, s the sample standard deviation, n the seeds whose run
finished), and Δ gap is the mean ± half-width of the per-seed paired difference worst − random, followed by
the number of seeds where it is positive. A rerun on
another machine (whose float32 kernels can differ, hence a slightly different search) is a new draw of the
same seeds' noise: its means fall inside these intervals about 83% of the time, and inside them widened by √2
(the prediction interval of a second mean of as many seeds) about 95% of the time.

``sweep``: a hyper-parameter sweep written by ``docs/results/tune_random.py`` (random forget sets, many
seeds). Per method: its default candidate, the candidate ``--tune`` would pick (smallest gap on the first
seed; its mean over the other seeds, so the choice is not scored on the seed that chose it), and the
candidate with the smallest mean gap over all seeds (the most favourable, optimistic reading); each as Avg.
Gap mean ± 95% CI, its standard deviation over seeds, and the mean UA / MIA. With STRESS_DIR (a ``stress``
report on the same dataset and seeds), the other methods' random-set rows at their defaults follow, after a
check that Retrain's rows are the same; a sweep run with ``--twin`` adds its second Retrain (seed + 1000),
the gap's noise floor. ``sweep DIR --grid`` prints every candidate's mean gap instead.

``classwise``: a ``docs/results/classwise_hits.py`` report (the exact class-wise worst case against the
relaxed search's variants, per seed). Per variant: in how many seeds the relaxed search returned the exact
worst class (the class of lowest F in the exhaustive ``per_class``), the mean rank of its class (1 = the
exact worst of the classes), its mean F − F(best) (how far above the exact optimum), in how many seeds it
returned its random start class, and its mean seconds. ``--seeds`` prints one line per seed instead (F at the
start class, the exact worst class and F there, each variant's class).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

from unlearning.methods import resolve

COLS = ("UA", "RA", "TA", "MIA", "avg_gap")


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


def half_width(values: list[float]) -> float:
    """Half-width of the 95% Student-t confidence interval of the mean of ``values`` (nan for n < 2)."""
    if len(values) < 2:
        return math.nan
    from scipy.stats import t

    return float(t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))


def _ci(values: list[float], sign: str = "") -> str:
    """Mean ± 95% CI half-width; the mean alone for one value, — for none."""
    if len(values) < 2:
        return f"{values[0]:{sign}.2f}" if values else "—"
    return f"{statistics.mean(values):{sign}.2f} ± {half_width(values):.2f}"


def _finished(rows: list[dict], method: str, selection: str | None = None) -> dict[int, dict]:
    """``{seed: row}`` of ``method``'s finished rows (on ``selection`` when given)."""
    return {
        r["seed"]: r
        for r in rows
        if r["method"] == method
        and (selection is None or r.get("selection") == selection)
        and r.get("avg_gap") is not None
    }


def _up(diffs: list[float]) -> str:
    """How many of the paired differences are positive, of how many."""
    return f"{sum(d > 0 for d in diffs)} / {len(diffs)}"


def ci(folder: Path) -> None:
    rep = json.loads((folder / "report.json").read_text())
    rows = rep["results"]
    seeds = rep["config"]["seeds"]
    tested = [m["name"] for m in rep["config"]["methods"]]
    head = " | ".join(f"{c if c != 'avg_gap' else 'Avg. Gap'} rand / worst" for c in COLS)
    print(f"| method | seeds | {head} | Δ gap (paired) | seeds Δ > 0 |")
    print("|---|--:|" + "--:|" * (len(COLS) + 2))
    for name in ("original", "retrain", *tested):
        r, w = _finished(rows, name, "random"), _finished(rows, name, "worst")
        cells = " | ".join(
            f"{_ci([x[c] for x in r.values()])} / {_ci([x[c] for x in w.values()])}" for c in COLS
        )
        both = sorted(set(r) & set(w))
        diffs = [w[s]["avg_gap"] - r[s]["avg_gap"] for s in both]
        delta = f"{_ci(diffs, '+')} | {_up(diffs)}" if name != "retrain" else " | "
        n = f"{len(r)} / {len(w)}" if len(r) != len(w) or len(r) != len(seeds) else str(len(r))
        print(f"| {name} | {n} | {cells} | {delta} |")
    done = {(n, sel): _finished(rows, n, sel) for n in tested for sel in ("random", "worst")}
    complete = [s for s in seeds if all(s in seen for seen in done.values())]
    if not complete:  # a run still under way: no seed has every method on both sets yet
        return
    per_seed = {
        sel: [statistics.mean(done[(n, sel)][s]["avg_gap"] for n in tested) for s in complete]
        for sel in ("random", "worst")
    }
    diff = [w - r for r, w in zip(per_seed["random"], per_seed["worst"])]
    blank = " | ".join("" for _ in COLS[:-1])
    print(
        f"| **mean of the {len(tested)} methods** | {len(complete)} | {blank} | {_ci(per_seed['random'])} / "
        f"{_ci(per_seed['worst'])} | {_ci(diff, '+')} | {_up(diff)} |"
    )


def _key(overrides: dict) -> str:
    return json.dumps(overrides, sort_keys=True)


def _label(overrides: dict) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in overrides.items()) or "defaults"


def _sweep_line(name: str, how: str, overrides: dict, rows: dict[int, dict], seeds: list[int]) -> str:
    """One candidate over ``seeds``: ``rows`` maps a seed to its row (finished, or diverged: no gap)."""
    done = [rows[s] for s in seeds if s in rows and rows[s].get("avg_gap") is not None]
    gaps = [r["avg_gap"] for r in done]
    diverged = len([s for s in seeds if s in rows]) - len(done)
    std = f"{statistics.stdev(gaps):.2f}" if len(gaps) > 1 else "—"
    means = " | ".join(f"{statistics.mean(r[c] for r in done):.2f}" if done else "—" for c in ("UA", "MIA"))
    note = f" ({diverged} diverged)" if diverged else ""
    return f"| {name} | {how} | {_label(overrides)} | {len(gaps)}{note} | {_ci(gaps)} | {std} | {means} |"


def _changed(spec: dict) -> dict:
    """The numeric hyper-parameters a stress report's method ran with that differ from its registry
    default."""
    built = resolve(spec["name"])
    return {
        k: v
        for k, v in spec["hparams"].items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and getattr(built, k, v) != v
    }


def _sweep_cells(rep: dict) -> dict[str, list[tuple[dict, dict[int, dict]]]]:
    """``{method: [(candidate, {seed: row}), ...]}`` of a ``tune_random.py`` report (a diverged row has
    ``diverged`` and no metrics; tune_random.py writes ``avg_gap`` only for finished runs)."""
    cfg = rep["config"]
    grids = cfg.get("grids") or {m: cfg["grid"] for m in cfg["methods"]}
    return {
        m: [
            (
                c,
                {r["seed"]: r for r in rep["rows"] if r["method"] == m and _key(r["overrides"]) == _key(c)},
            )
            for c in grids[m]
        ]
        for m in cfg["methods"]
    }


def _sweep_grid(cells: dict[str, list[tuple[dict, dict[int, dict]]]]) -> None:
    print("| method | candidate | seeds | Avg. Gap mean ± 95% CI | std | UA | RA | TA | MIA |")
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|")
    for m, cands in cells.items():
        for c, every in cands:
            rows = {s: r for s, r in every.items() if "diverged" not in r}
            means = " | ".join(
                f"{statistics.mean(r[k] for r in rows.values()):.2f}" if rows else "—" for k in COLS[:4]
            )
            gaps = [r["avg_gap"] for r in rows.values()]
            std = f"{statistics.stdev(gaps):.2f}" if len(gaps) > 1 else "—"
            print(f"| {m} | {_label(c)} | {len(rows)} | {_ci(gaps)} | {std} | {means} |")


def _check_same_retrain(rep: dict, stress: dict) -> None:
    ref = _finished(stress["results"], "retrain", "random")
    for s in rep["seeds"]:
        mine = next(r for r in rep["rows"] if r["seed"] == s and r["method"] == "retrain")
        if any(abs(mine[c] - ref[s][c]) > 1e-9 for c in ("UA", "RA", "TA", "MIA")):
            sys.exit(f"Retrain's random-set row of seed {s} differs between the sweep and the stress report")


def sweep(folder: Path, stress_dir: Path | None = None, grid: bool = False) -> None:
    rep = json.loads((folder / "report.json").read_text())
    seeds, cells = rep["seeds"], _sweep_cells(rep)
    if grid:
        _sweep_grid(cells)
        return
    print("| method | candidate | hyper-parameters | seeds | Avg. Gap mean ± 95% CI | std | UA | MIA |")
    print("|---|---|---|--:|--:|--:|--:|--:|")
    first, rest = seeds[0], seeds[1:] or seeds[:1]
    for m, cands in cells.items():
        built = resolve(m)
        for c, rows in cands:
            if all(getattr(built, k) == v for k, v in c.items()):
                print(_sweep_line(m, "default", c, rows, seeds))
        ran = [(c, r) for c, r in cands if "avg_gap" in r.get(first, {})]
        c, rows = min(ran, key=lambda cr: cr[1][first]["avg_gap"])
        how = f"tuned on seed {first}" + (", scored on the other seeds" if len(seeds) > 1 else "")
        print(_sweep_line(m, how, c, rows, rest))
        complete = [(c, r) for c, r in cands if all("avg_gap" in r.get(s, {}) for s in seeds)]
        if len(seeds) > 1 and complete:
            c, rows = min(complete, key=lambda cr: statistics.mean(cr[1][s]["avg_gap"] for s in seeds))
            print(_sweep_line(m, "best mean over all seeds", c, rows, seeds))
    twin = {r["seed"]: r for r in rep["rows"] if r["method"] == "retrain_twin"}
    if twin:
        print(
            _sweep_line("retrain_twin", "Retrain again, seed + 1000 (the gap's noise floor)", {}, twin, seeds)
        )
    if stress_dir is not None:
        stress = json.loads((stress_dir / "report.json").read_text())
        _check_same_retrain(rep, stress)
        for spec in stress["config"]["methods"]:
            m = spec["name"]
            rows = {
                r["seed"]: r for r in stress["results"] if r["method"] == m and r["selection"] == "random"
            }
            print(_sweep_line(m, "stress run (its hyper-parameters)", _changed(spec), rows, seeds))


def _key_of(classes: list[int]) -> str:
    return ",".join(map(str, classes))


def _classwise_seeds(rep: dict, exact: dict[int, dict], variants: list[str]) -> None:
    print("| seed | start class (F) | exact worst class (F) | " + " | ".join(variants) + " |")
    print("|--:|--:|--:|" + "--:|" * len(variants))
    for seed, ex in sorted(exact.items()):
        f, start, best = ex["per_class"], _key_of(ex["start_classes"]), _key_of(ex["classes"])
        found = {r["variant"]: _key_of(r["classes"]) for r in rep["rows"] if r["seed"] == seed}
        cells = " | ".join(f"{found[v]} ({f[found[v]]:.2f})" if v in found else "—" for v in variants)
        print(f"| {seed} | {start} ({f[start]:.2f}) | {best} ({f[best]:.2f}) | {cells} |")


def classwise(folder: Path, per_seed: bool = False) -> None:
    rep = json.loads((folder / "report.json").read_text())
    exact = {r["seed"]: r for r in rep["rows"] if r["variant"] == "exhaustive"}
    variants = list(rep["config"]["variants"])
    if per_seed:
        _classwise_seeds(rep, exact, variants)
        return
    print(
        "| search | seeds | exact worst class found | mean rank of its class | mean F − F(best) "
        "| start class kept | s / seed |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|")
    for variant in ["exhaustive", *variants]:
        runs = [r for r in rep["rows"] if r["variant"] == variant and r["seed"] in exact]
        hits = ranks = excess = kept = 0
        for r in runs:
            f = exact[r["seed"]]["per_class"]
            key = _key_of(r["classes"])
            hits += key == _key_of(exact[r["seed"]]["classes"])
            ranks += 1 + sum(v < f[key] for v in f.values())
            excess += f[key] - min(f.values())
            kept += r["classes"] == r["start_classes"]
        n = len(runs)
        seconds = statistics.mean(r["seconds"] for r in runs)
        cells = f"{hits} / {n} | {ranks / n:.1f} | {excess / n:.2f} | {kept} / {n} | {seconds:.1f}"
        print(f"| {variant} | {n} | {cells} |")


def modes(folders: list[str]) -> None:
    print(
        "| hypergrad | upper steps | search s / seed | overlap with random | Retrain UA (worst) "
        "| mean Avg. Gap worst | mean Avg. Gap random | largest gap increases |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|---|")
    for folder in folders:
        print(row(Path(folder)))


USAGE = (
    "usage: compare.py table DIR | compare.py ci DIR | compare.py modes DIR [DIR ...] | "
    "compare.py sweep DIR [STRESS_DIR] [--grid] | compare.py classwise DIR [--seeds]"
)

if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("table", "modes", "ci", "sweep", "classwise"):
        sys.exit(USAGE)
    if sys.argv[1] == "table":
        table(Path(sys.argv[2]))
    elif sys.argv[1] == "classwise":
        classwise(Path(sys.argv[2]), per_seed="--seeds" in sys.argv[3:])
    elif sys.argv[1] == "ci":
        ci(Path(sys.argv[2]))
    elif sys.argv[1] == "sweep":
        extra = [a for a in sys.argv[3:] if a != "--grid"]
        sweep(Path(sys.argv[2]), Path(extra[0]) if extra else None, grid="--grid" in sys.argv[3:])
    else:
        modes(sys.argv[2:])
