"""The exact class-wise worst case against the relaxed (bi-level) class-wise search, over seeds (issue 15,
point 6).

    python docs/results/classwise_hits.py --out docs/results/classwise-hits-digits --seeds 0-9 \\
        --variant default --variant binarize5:binarize_every=5 --variant published:final_rule=published

For each seed: the split and original model of ``prepare(dataset, model, "random:0.1", seed=seed)``; the
exhaustive search (``search(..., classwise=True, exhaustive=True)``: F, the forget loss left after the
method's lower level, at every class, ``per_class``; the exact worst class is the one of lowest F); then the
relaxed search under each ``--variant NAME:KEY=VALUE,...`` (search options; ``default`` = none) from the same
random start class. Every result is a row of ``OUT/report.json``, written as it finishes (an interrupted run
resumes; another configuration is refused). ``python docs/results/compare.py classwise OUT`` prints, per
variant, how often the relaxed search found the exact worst class, the rank of its class, how far its F is
above the best, and how often it returned its start class.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from unlearning.io import write_json
from unlearning.setup import prepare
from unlearning.worst_case import search

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tune_random import _ints, open_report  # noqa: E402  (the sibling script's helpers)


def _variant(spec: str) -> tuple[str, dict]:
    name, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        options[key] = value if key == "final_rule" else (int(value) if value.isdigit() else float(value))
    return name, options


def _classes(result) -> list[int]:
    return [int(c) for c in result.classes.tolist()]


def main(argv: list[str]) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--model", default="mlp")
    p.add_argument("--method", default="ft")
    p.add_argument("--seeds", type=_ints, default=list(range(10)))
    p.add_argument("--budget", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=None, help="the search's lower-level mini-batch")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    variants = dict(_variant(v) for v in (args.variant or ["default"]))
    config = {
        "dataset": args.dataset,
        "model": args.model,
        "method": args.method,
        "budget": args.budget,
        "batch_size": args.batch_size,
        "variants": variants,
    }
    path = args.out / "report.json"
    report = open_report(path, config, args.seeds)
    done = {(r["seed"], r["variant"]) for r in report["rows"]}
    common = {"budget": args.budget, "classwise": True, "batch_size": args.batch_size, "progress": False}
    for seed in args.seeds:
        base = prepare(args.dataset, args.model, f"random:{args.budget}", seed=seed)
        for name, options in [("exhaustive", {"exhaustive": True}), *variants.items()]:
            if (seed, name) in done:
                continue
            found = search(base, args.method, seed=seed, **common, **options)
            start = sorted({int(c) for c in base.task.pool.y[found.initial_indices].tolist()})
            row = {
                "seed": seed,
                "variant": name,
                "classes": _classes(found),
                "start_classes": start,
                "objective": found.objective,
                "final_rule": found.config.get("final_rule"),
                "seconds": found.seconds,
            }
            if found.per_class is not None:
                row["per_class"] = found.per_class
            report["rows"].append(row)
            write_json(path, report)
            print(
                f"seed {seed} {name}: classes {row['classes']} (start {start}), {found.seconds:.1f} s",
                flush=True,
            )


if __name__ == "__main__":
    main(sys.argv[1:])
