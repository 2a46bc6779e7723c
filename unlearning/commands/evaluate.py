"""``worstforget evaluate``: Retrain and unlearning methods on one given forget set (`unlearning.evaluate`).

Steps: `unlearning.setup.prepare` with the forget set (``--forget``, e.g. ``indices:OUT/worst_case.json`` of
``worstforget search``; a file made for another dataset or split is refused) → Retrain (cached) → every method
from the original model → UA, RA, TA, MIA-Efficacy, run time and Avg. Gap to Retrain of each. Prints a table
and writes ``OUT/evaluate.json`` and ``OUT/evaluate.md`` atomically.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from unlearning.commands import (
    CLIError,
    check_at_least_one,
    check_experiment,
    check_no_op,
    check_out,
    coerce,
)

DESCRIPTION = """Evaluate Retrain and unlearning methods on a given forget set, against Retrain.

The forget set is usually a worst-case set found by `worstforget search`
(--forget indices:OUT/worst_case.json; a set found on another dataset, split seed or data option is refused,
since its positions would name other examples), or random:F, class:K or indices:FILE. Retrain (trained on the
rest of the pool; cached) is the reference; each method runs from the original model with the same seed, and
is scored by UA, RA, TA, MIA-Efficacy (percent), run time and Avg. Gap = mean |method - Retrain| over UA, RA,
TA, MIA.

Methods: registry names (see `worstforget unlearn --list-methods`) or your own as package.module:ClassName.
Hyper-parameters: --hp METHOD.KEY=VALUE, e.g. --hp salun.lr=0.02 (repeatable).

Example: worstforget evaluate --forget indices:runs/wc/worst_case.json --methods ft,rl,salun --out runs/ev"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from unlearning.commands.unlearn import add_experiment_arguments

    p = subparsers.add_parser(
        "evaluate",
        help="Retrain and methods on a given forget set (e.g. a worst-case set), against Retrain",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--forget",
        required=True,
        help="the forget set: indices:FILE (e.g. OUT/worst_case.json of worstforget search), random:F or "
        "class:K",
    )
    p.add_argument(
        "--methods",
        help="comma-separated methods: registry names or package.module:ClassName "
        "(default: every registry method but retrain, the reference)",
    )
    p.add_argument(
        "--hp",
        action="append",
        metavar="METHOD.KEY=VALUE",
        help="a method hyper-parameter, e.g. --hp salun.lr=0.02 (repeatable)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the split (the search's), training and methods (default 0)",
    )
    p.add_argument("--out", default="runs/evaluate", help="output folder (default: runs/evaluate)")
    add_experiment_arguments(p)
    p.set_defaults(func=run)
    return p


# ------------------------------------------------------------------------------------------------ inputs
def method_specs(text: str | None) -> list[str]:
    """``--methods``: registry names (lower-cased) or ``package.module:Attr`` specs; default: every registry
    method but Retrain."""
    from unlearning.evaluate import default_methods

    if text is None:
        return default_methods()
    specs = [s.strip() for s in text.split(",") if s.strip()]
    if not specs:
        raise CLIError(f"argument --methods: name at least one method (e.g. ft,rl,salun), got {text!r}")
    return [s if ":" in s else s.lower() for s in specs]


def method_hparams(items: list[str] | None, specs: list[str]) -> dict[str, dict[str, Any]]:
    """``--hp METHOD.KEY=VALUE`` items → ``{spec: {key: value}}``. METHOD is a spec of ``--methods`` or the
    name of the method it builds; a value takes the type of the hyper-parameter's default (JSON or text for a
    method that declares none)."""
    from unlearning.methods import resolve

    by_key: dict[str, tuple[str, Any]] = {}
    for spec in specs:
        built = resolve(spec)
        by_key[spec.lower()] = by_key[built.name.lower()] = (spec, built)
    out: dict[str, dict[str, Any]] = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        owner, dot, field = key.strip().rpartition(".")
        if not sep or not dot or not owner or not field:
            raise CLIError(f"argument --hp: expected METHOD.KEY=VALUE (e.g. salun.lr=0.02), got {item!r}")
        if owner.lower() not in by_key:
            raise CLIError(f"argument --hp: {owner!r} is not among --methods ({', '.join(specs)})")
        spec, built = by_key[owner.lower()]
        field = field.replace("-", "_")
        declared = type(built).hyperparameters() if hasattr(type(built), "hyperparameters") else None
        if declared is not None and field not in declared:
            valid = ", ".join(declared) or "(none)"
            raise CLIError(f"argument --hp: {built.name} has no hyper-parameter {field!r}; valid: {valid}")
        like = declared[field]["default"] if declared else None
        out.setdefault(spec, {})[field] = coerce(text.strip(), like, f"argument --hp {key.strip()}")
    return out


def _methods(args: argparse.Namespace) -> list[Any]:
    """The method objects, built and validated before anything is trained."""
    from unlearning.evaluate import build_methods

    specs = method_specs(args.methods)
    try:
        build_methods(specs)
    except ValueError as err:
        raise CLIError(f"argument --methods: {err}") from None
    hp = method_hparams(args.hp, specs)
    for name, values in hp.items():
        check_no_op(name, values, "argument --hp")
    try:
        return build_methods(specs, hp)
    except ValueError as err:
        raise CLIError(f"argument --hp: {err}") from None


# ---------------------------------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> int:
    import torch

    from unlearning import splits
    from unlearning.commands.unlearn import check_forget, prepare_from_args
    from unlearning.evaluate import evaluate_methods
    from unlearning.io import jsonable, write_json, write_text
    from unlearning.loop import progress_bar
    from unlearning.report import evaluate_markdown, evaluate_table

    check_experiment(args)
    check_forget(args.forget)
    check_at_least_one(args, "threads")
    check_out(args.out)
    methods = _methods(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    prepared = prepare_from_args(args, args.forget)  # refuses a file made for other data, before training
    task = prepared.task
    kind, value = splits.parse_spec(args.forget)
    meta = splits.indices_metadata(value) if kind == "indices" else {}

    bar = progress_bar()
    with bar:
        tid = bar.add_task("evaluate", total=1 + len(methods))

        def step(message: str) -> None:
            bar.update(tid, advance=1, description=message)

        result = evaluate_methods(prepared, methods, seed=args.seed, progress=step)
    report = {
        "config": {
            "dataset": prepared.dataset.name,
            "model": prepared.model_name,
            "forget": args.forget,
            "seed": args.seed,
            "device": str(prepared.device),
            "methods": result["methods"],
            "hparams": jsonable(result["hparams"]),
            "sizes": {"forget": len(task.forget_index), "retain": len(task.retain), "test": len(task.test)},
            "forget_class": task.forget_class,
            "data": splits.data_fingerprint(task.pool, dataset=prepared.dataset.name, split_seed=args.seed),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        "forget_set": {k: meta.get(k) for k in ("method", "mode", "budget", "objective") if k in meta},
        "rows": result["rows"],
    }
    out = Path(args.out)
    write_json(out / "evaluate.json", report)
    write_text(out / "evaluate.md", evaluate_markdown(report))
    evaluate_table(report, out)
    return 0
