"""Hyper-parameter sweep of unlearning methods on random forget sets, over many seeds (issue 15, point 10).

    python docs/results/tune_random.py --out docs/results/salun-rl-sweep-digits \\
        --methods salun,rl --lr 0.005,0.01,0.02,0.05 --epochs 5,10,20 --alpha 0.5,1,2 --seeds 0-9
    python docs/results/tune_random.py --out OUT --dataset mnist5k --model cnn --seeds 0 \\
        --methods scrub,iu --grid scrub.lr=0.001,0.01 --grid iu.alpha=1,10

For each seed: the split, original model and random forget set of ``prepare(dataset, model,
"random:<fraction>", seed=seed)`` (the same set as the random set of ``worstforget stress`` with that seed,
checked through Retrain's row), Retrain's row (the reference of every gap), then every method at every
point of the grid ``lr × epochs × alpha`` (``alpha``: the weight of the retain loss of RL and SalUn, i.e.
how much the retain data counts against the forget pass). ``--grid METHOD.KEY=V1,V2,...`` (repeatable)
gives each method its own grid instead (the product of its keys' values; any hyper-parameter of the
method). ``--twin`` adds a second Retrain per seed, trained with seed + 1000 (another initialisation and
batch order, same retain set and recipe), as the row ``retrain_twin``: its Avg. Gap to Retrain is the noise
floor of the gap, what a perfect unlearning method would still score. Each row (the method's UA, RA, TA,
MIA-Efficacy, Avg. Gap to Retrain, seconds; or ``diverged``) is appended to ``OUT/report.json`` as it
finishes, so an interrupted run resumes; a rerun with a different grid or dataset is refused. Two processes
on disjoint seeds (two ``--out`` folders) are joined with ``--out A --merge B`` (same flags otherwise).

The tables come from ``python docs/results/compare.py sweep OUT`` (per candidate: mean ± 95% CI of the gap
over seeds; the candidate chosen on seed 0 as ``--tune`` does, and the best mean over all seeds).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

from unlearning import cache, metrics, training
from unlearning.evaluate import build_methods, method_row
from unlearning.io import write_json
from unlearning.setup import prepare


def code_version() -> dict:
    """The commit the run started from and whether the working tree differed from it (the numbers of a
    dirty tree are those of the code as it was then)."""
    import subprocess

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent)
        return done.stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


def open_report(path: Path, config: dict, seeds: list[int]) -> dict:
    """The report at ``path`` to resume (refused, exiting, when its ``config`` differs) or a new one; the
    seeds and this run's `code_version` are added."""
    report = json.loads(path.read_text()) if path.exists() else {"config": config, "seeds": [], "rows": []}
    if report["config"] != config:
        sys.exit(f"{path} holds another configuration; use another --out")
    report["seeds"] = sorted(set(report["seeds"]) | set(seeds))
    report.setdefault("code", []).append(code_version())
    return report


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def _ints(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return out


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--model", default="mlp")
    p.add_argument("--methods", default="salun,rl")
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--seeds", type=_ints, default=list(range(10)))
    p.add_argument("--lr", type=_floats)
    p.add_argument("--epochs", type=_ints)
    p.add_argument("--alpha", type=_floats, default=[1.0])
    p.add_argument("--grid", action="append", default=[], metavar="METHOD.KEY=V1,V2")
    p.add_argument("--twin", action="store_true", help="add a Retrain trained with seed + 1000")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--merge",
        type=Path,
        metavar="DIR",
        help="add the rows of DIR/report.json (a run of the same configuration on other seeds, e.g. a second "
        "process) that OUT lacks, then exit",
    )
    return p.parse_args(argv)


def _row(seed: int, name: str, overrides: dict, values: dict | None) -> dict:
    keep = ("UA", "RA", "TA", "MIA", "avg_gap", "seconds")
    return {
        "seed": seed,
        "method": name,
        "overrides": overrides,
        **({k: float(values[k]) for k in keep} if values is not None else {"diverged": True}),
    }


INT_KEYS = ("epochs", "k", "m_steps", "batch_size")


def _value(key: str, text: str) -> float | int:
    return int(text) if key in INT_KEYS else float(text)


def _grids(args: argparse.Namespace) -> dict:
    """``{"grid": [candidates]}`` (one lr × epochs × alpha grid for every method) or, with ``--grid``,
    ``{"grids": {method: [candidates]}}``."""
    if not args.grid:
        if not args.lr or not args.epochs:
            sys.exit("give --lr and --epochs, or --grid METHOD.KEY=V1,V2,...")
        combos = itertools.product(args.lr, args.epochs, args.alpha)
        return {"grid": [{"lr": lr, "epochs": e, "alpha": a} for lr, e, a in combos]}
    axes: dict[str, dict[str, list]] = {m: {} for m in args.methods.split(",")}
    for spec in args.grid:
        target, _, values = spec.partition("=")
        method, _, key = target.partition(".")
        if method not in axes or not key or not values:
            sys.exit(f"--grid {spec!r}: expected METHOD.KEY=V1,V2 with METHOD in --methods")
        axes[method][key] = [_value(key, v) for v in values.split(",")]
    return {
        "grids": {
            m: [dict(zip(a, combo)) for combo in itertools.product(*a.values())] for m, a in axes.items()
        }
    }


def _twin(prepared, retrain: dict, seed: int) -> dict:
    """Retrain again with seed + 1000 (cached like any Retrain) and its metrics and gap to ``retrain``."""
    config = {**prepared._config, "forget_index": cache.fingerprint(prepared.task.forget_index)}
    trained = training.train_original(
        prepared.build_model,
        prepared.task.retain,
        prepared.recipe,
        seed=seed + 1000,
        config=config,
        augment=prepared.augment,
        kind="retrain",
        cache_dir=prepared.cache_dir,
        use_cache=prepared.use_cache,
    )
    values = metrics.evaluate(trained.model, prepared.task)
    return dict(values, avg_gap=metrics.avg_gap(values, retrain), seconds=trained.seconds)


def merge(path: Path, other: Path, config: dict) -> None:
    """Add to the report at ``path`` the rows of the report at ``other`` that it lacks (same configuration,
    checked; a (seed, method, overrides) both hold must agree, else the merge is refused), atomically."""
    report, more = (json.loads(p.read_text()) for p in (path, other))
    for r in (report, more):
        if r["config"] != config:
            sys.exit(f"--merge: {path if r is report else other} holds another configuration")

    def key(row: dict) -> tuple:
        return row["seed"], row["method"], json.dumps(row["overrides"], sort_keys=True)

    def values(row: dict) -> dict:
        return {k: v for k, v in row.items() if k != "seconds"}

    have = {key(r): r for r in report["rows"]}
    for row in more["rows"]:
        if key(row) in have and values(have[key(row)]) != values(row):
            sys.exit(f"--merge: {key(row)} differs between the two runs")
    report["rows"] += [r for r in more["rows"] if key(r) not in have]
    report["seeds"] = sorted(set(report["seeds"]) | set(more["seeds"]))
    report["code"] = report.get("code", []) + more.get("code", [])
    write_json(path, report)
    print(f"{path}: {len(report['rows'])} rows, seeds {report['seeds']}")


def main(argv: list[str]) -> None:
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    grids = _grids(args)
    config = {
        "dataset": args.dataset,
        "model": args.model,
        "methods": args.methods.split(","),
        "fraction": args.fraction,
        **grids,
        **({"twin": True} if args.twin else {}),
    }
    per_method = grids.get("grids") or {m: grids["grid"] for m in config["methods"]}
    path = args.out / "report.json"
    if args.merge is not None:
        return merge(path, args.merge / "report.json", config)
    report = open_report(path, config, args.seeds)
    done = {(r["seed"], r["method"], json.dumps(r["overrides"], sort_keys=True)) for r in report["rows"]}
    for seed in args.seeds:
        prepared = prepare(args.dataset, args.model, f"random:{args.fraction}", seed=seed)
        if (seed, "retrain", "{}") not in done:
            model, seconds = prepared.retrain()
            values = dict(metrics.evaluate(model, prepared.task), avg_gap=0.0, seconds=seconds)
            report["rows"].append(_row(seed, "retrain", {}, values))
            write_json(path, report)
        retrain = next(r for r in report["rows"] if r["seed"] == seed and r["method"] == "retrain")
        if args.twin and (seed, "retrain_twin", "{}") not in done:
            report["rows"].append(_row(seed, "retrain_twin", {}, _twin(prepared, retrain, seed)))
            write_json(path, report)
        for name, overrides in ((m, c) for m in config["methods"] for c in per_method[m]):
            if (seed, name, json.dumps(overrides, sort_keys=True)) in done:
                continue
            (method,) = build_methods([name], {name: overrides})
            started = time.perf_counter()
            try:
                values = method_row(prepared, method, retrain, seed)
            except FloatingPointError:
                values = None
            report["rows"].append(_row(seed, name, overrides, values))
            write_json(path, report)
            print(f"seed {seed} {name} {overrides}: {time.perf_counter() - started:.1f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
