"""Worst-case forget class on the digits diffusion model: the exact per-class evaluation against the bi-level
class-wise search (docs/generation.md, "The worst-case forget class").

For each method and seed: `worst_class.exact_worst_class` (the method run once per class, the forget loss
ℓ_c after unlearning; no sampling, so no UA here) gives the exact worst class argmin_c ℓ_c, and
`worst_class.search_worst_class` (first-order bi-level search over class weights on the capped simplex)
gives its guess argmax_c v_c; `agreement` counts the hits. Writes ``worst_class.json`` and
``worst_class.md``; resumes per (method, seed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from unlearning import datasets
from unlearning.generation import methods as M
from unlearning.generation import worst_class as W
from unlearning.generation.task import GenerationTask
from unlearning.generation.train import TrainConfig, load_or_train
from unlearning.io import jsonable, write_json, write_text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/generation/results")
    p.add_argument("--methods", default="rl,salun")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--outer-steps", type=int, default=10)
    p.add_argument("--inner-steps", type=int, default=5)
    p.add_argument("--inner-lr", type=float, default=1e-4)
    p.add_argument("--per-class", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    path = Path(args.out) / "worst_class.json"
    report = json.loads(path.read_text()) if path.exists() else {"cells": {}}
    report["config"] = {k: v for k, v in vars(args).items() if k != "threads"}
    ds = datasets.load("digits")
    original = load_or_train(ds, TrainConfig()).model
    for name in args.methods.split(","):
        method = M.make(name, iterations=args.iterations, batch_size=args.batch_size, lr=args.lr)
        for seed in (int(s) for s in args.seeds.split(",")):
            key = f"{name}/{seed}"
            if key in report["cells"]:
                continue
            task = GenerationTask(ds.train, (0,), ds.num_classes, seed=seed)
            exact = W.exact_worst_class(method, original, task, per_class=args.per_class)
            found = W.search_worst_class(
                method,
                original,
                task,
                outer_steps=args.outer_steps,
                inner_steps=args.inner_steps,
                inner_lr=args.inner_lr,
                batch_size=args.batch_size,
                per_class=args.per_class,
            )
            report["cells"][key] = {"exact": exact.to_dict(), "search": found.to_dict()}
            write_json(path, jsonable(report))
            print(f"{key}: exact worst {exact.worst}, search found {found.found}", file=sys.stderr)
    cells = report["cells"]
    agree = W.agreement(
        {k: c["exact"]["worst"] for k, c in cells.items()},
        {k: c["search"]["found"] for k, c in cells.items()},
    )
    report["agreement"] = agree
    write_json(path, jsonable(report))
    write_text(Path(args.out) / "worst_class.md", markdown(report))


def markdown(report: dict) -> str:
    lines = [
        "| method/seed | forget loss after unlearning, classes 0-9 | exact worst | search v | found | hit |",
        "|---|---|---|---|---|---|",
    ]
    for key, cell in report["cells"].items():
        losses = " ".join(f"{r['forget_loss']:.1f}" for r in cell["exact"]["rows"])
        v = " ".join(f"{x:.2f}" for x in cell["search"]["v"])
        hit = cell["exact"]["worst"] == cell["search"]["found"]
        worst, found = cell["exact"]["worst"], cell["search"]["found"]
        lines.append(f"| {key} | {losses} | {worst} | {v} | {found} | {'yes' if hit else 'no'} |")
    a = report["agreement"]
    lines += ["", f"The search found the exact worst class in {a['hits']} of {a['total']} cases."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
