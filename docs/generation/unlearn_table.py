"""The class-forgetting table of docs/generation.md: every method on several forget classes and seeds.

Loads (or trains) the default digits diffusion model and the judge from the cache, then for each cell
(method, forget class, seed) runs the method (`unlearning.generation.methods`) and scores it with
`metrics.evaluate_generation` (UA, remaining-class accuracy, judge-space FID). The original is evaluated
once per forget class and sampling seed (the methods' seeds, so that each method is compared with the
original sampled from the same noise); Retrain (one training per forget class) at the first seed. Cells
run in priority order (SalUn on every class and seed first, then Retrain, then the other methods at the
first seed, then the rest) and ``results.json`` is rewritten after each, so an interrupted run resumes
where it stopped. Writes ``results.json``, ``results.md`` and one ``grid_<method>_class<c>.png`` per
method at the first seed. Reproduce with the command in docs/generation.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from unlearning import datasets
from unlearning.generation import methods as M
from unlearning.generation.grid import save_grid
from unlearning.generation.judge import load_or_train_judge
from unlearning.generation.metrics import evaluate_generation
from unlearning.generation.task import GenerationTask
from unlearning.generation.train import TrainConfig, load_or_train
from unlearning.io import jsonable, write_json, write_text


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/generation/results")
    p.add_argument("--methods", default="salun,rl,ga,ft,esd,fmn")
    p.add_argument("--classes", default="1,3,8")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--hp", action="append", default=[], help="METHOD.KEY=VALUE (python literal)")
    p.add_argument("--per-class", type=int, default=30)
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument(
        "--retrain", default="", help="forget classes to Retrain (default: none; costs a training)"
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--budget", type=float, default=0, help="stop starting cells after this many minutes")
    return p.parse_args()


def cells(args) -> list[tuple[str, int, int]]:
    names = [m for m in args.methods.split(",") if m]
    classes = [int(c) for c in args.classes.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    order = [("salun", c, s) for s in seeds for c in classes if "salun" in names]
    order += [("retrain", int(c), 0) for c in args.retrain.split(",") if c]
    order += [(m, c, seeds[0]) for m in names if m != "salun" for c in classes]
    order += [(m, c, s) for s in seeds[1:] for m in names if m != "salun" for c in classes]
    return order


def hparams(args, name: str) -> dict:
    hp = {}
    known = M.REGISTRY[name].hyperparameters()
    for key, value in (("iterations", args.iterations), ("batch_size", args.batch_size)):
        if key in known and not (name in ("esd", "fmn") and key == "batch_size"):
            hp[key] = value
    for item in args.hp:
        target, _, rest = item.partition(".")
        key, _, value = rest.partition("=")
        if target == name:
            hp[key] = eval(value)  # noqa: S307 (a local results script)
    return hp


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    path = out / "results.json"
    report = json.loads(path.read_text()) if path.exists() else {"rows": {}}
    report["config"] = {k: v for k, v in vars(args).items() if k not in ("budget", "threads", "retrain")}
    ds = datasets.load("digits")
    config = TrainConfig()
    trained = load_or_train(ds, config)
    original, judge = trained.model, load_or_train_judge(ds).model
    kw = {"per_class": args.per_class, "steps": args.sample_steps}
    start = time.perf_counter()
    before: dict[int, torch.Tensor] = {}  # the original's samples (seed 0) per forget class, for the grids
    seeds = sorted({s for _, _, s in cells(args)})
    for c, seed in ((c, s) for c in sorted({c for _, c, _ in cells(args)}) for s in seeds):
        key = f"original/{c}/{seed}"  # the original sampled with each seed: seed-matched comparisons
        if key not in report["rows"]:
            m = evaluate_generation(original, judge, ds.train, (c,), seed=seed, **kw)
            report["rows"][key] = {**m.as_dict(), "seconds": trained.seconds}
            write_json(path, jsonable(report))
            if seed == 0:
                before[c] = m.images
    for name, c, seed in cells(args):
        key = f"{name}/{c}/{seed}"
        if key in report["rows"]:
            continue
        if args.budget and time.perf_counter() - start > 60 * args.budget:
            print("budget spent; rerun to continue", file=sys.stderr)
            break
        task = GenerationTask(ds.train, (c,), ds.num_classes, seed=seed, train=(ds, config, None))
        method = M.make(name, **({} if name == "retrain" else hparams(args, name)))
        result = method.unlearn(original, task)
        m = evaluate_generation(result.model, judge, ds.train, (c,), seed=seed, **kw)
        seconds = result.info.get("train_seconds", result.seconds)
        report["rows"][key] = {**m.as_dict(), "seconds": seconds, "hparams": method.hparams()}
        write_json(path, jsonable(report))
        print(
            f"{key}: UA {m.ua:.3f} acc {m.remain_acc:.3f} FID {m.fid:.3f} ({seconds:.0f} s)", file=sys.stderr
        )
        write_text(out / "results.md", markdown(report))
        if seed == 0:
            if c not in before:
                before[c] = evaluate_generation(original, judge, ds.train, (c,), seed=0, **kw).images
            save_grid(out / f"grid_{name}_class{c}.png", before[c], m.images, (c,), titles=("original", name))
    write_text(out / "results.md", markdown(report))


def markdown(report: dict) -> str:
    """Mean ± spread over seeds per (method, class); the original and Retrain rows per class."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for key, row in report["rows"].items():
        name, c, _ = key.split("/")
        groups.setdefault((name, int(c)), []).append(row)
    order = ["original", "retrain", "salun", "rl", "ga", "ft", "esd", "fmn"]
    lines = [
        "| method | forget class | seeds | UA % | remaining acc. % | FID (judge features) | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for (name, c), rows in sorted(groups.items(), key=lambda kv: (kv[0][1], order.index(kv[0][0]))):
        lines.append(
            f"| {name} | {c} | {len(rows)} | {_ms([r['ua'] for r in rows], 100)} | "
            f"{_ms([r['remain_acc'] for r in rows], 100)} | {_ms([r['fid'] for r in rows], 1)} | "
            f"{sum(r['seconds'] for r in rows) / len(rows):.0f} |"
        )
    return "\n".join(lines + [""] + paired(report)) + "\n"


def paired(report: dict) -> list[str]:
    """Each method against the original sampled with the same seed: the smallest UA, the largest drop of the
    remaining-class accuracy (points) and the largest ratio of FIDs over the seeds (the issue's bar: UA ≥
    99%, drop ≤ 3 points, ratio ≤ 1.2)."""
    rows = report["rows"]
    groups: dict[tuple[str, int], list[tuple[dict, dict]]] = {}
    for key, row in rows.items():
        name, c, seed = key.split("/")
        ref = rows.get(f"original/{c}/{seed}")
        if name != "original" and ref is not None:
            groups.setdefault((name, int(c)), []).append((row, ref))
    lines = [
        "| method | forget class | seeds | min UA % | max drop of remaining acc. (points) | max FID ratio |",
        "|---|---|---|---|---|---|",
    ]
    for (name, c), pairs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        drop = max(100 * (ref["remain_acc"] - row["remain_acc"]) for row, ref in pairs)
        ratio = max(row["fid"] / ref["fid"] for row, ref in pairs)
        ua = min(100 * row["ua"] for row, _ in pairs)
        lines.append(f"| {name} | {c} | {len(pairs)} | {ua:.1f} | {drop:.1f} | {ratio:.2f} |")
    return lines


def _ms(values: list[float], scale: float) -> str:
    t = torch.tensor(values, dtype=torch.float64) * scale
    if len(values) == 1:
        return f"{float(t[0]):.1f}"
    return f"{float(t.mean()):.1f} ± {float(t.std()):.1f}"


if __name__ == "__main__":
    main()
