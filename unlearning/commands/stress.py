"""``worstforget stress``: every unlearning method on its worst-case forget set and on a random one, against
Retrain, over seeds (`unlearning.stress`). Prints a table; writes ``OUT/stress.json``, ``OUT/stress.md`` and
``OUT/stress.png`` atomically."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from unlearning.commands import CLIError, check_at_least_one, check_experiment, coerce

DESCRIPTION = """Stress-test unlearning methods on the worst-case forget set.

For each seed: train (or load) the original model, search the worst-case forget set of --search-method by
bi-level optimization (budget = fraction of the training pool), take the random start set of the same size as
the baseline, then run Retrain and every method on both sets and report UA, RA, TA, MIA-Efficacy, run time and
the Avg. Gap to Retrain (mean and std over seeds).

Example: worstforget stress --methods ft,ga,rl,salun --seeds 0,1,2 --out runs/stress"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from unlearning.stress import DEFAULT_METHODS
    from unlearning.worst_case import HYPERGRADS

    p = subparsers.add_parser(
        "stress",
        help="worst-case vs random forget sets for every method, against Retrain",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dataset", default="digits", help="dataset (default: digits)")
    p.add_argument("--model", default="mlp", help="model (default: mlp)")
    p.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help="comma-separated methods to evaluate (default: all but retrain, the reference)",
    )
    p.add_argument(
        "--budget", type=float, default=0.1, help="forget-set size, fraction of the pool (default 0.1)"
    )
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds (default: 0,1)")
    p.add_argument("--search-method", default="ft", help="method whose worst case is searched (default: ft)")
    p.add_argument("--hypergrad", default="first_order", choices=HYPERGRADS, help="search hypergradient")
    p.add_argument("--upper-steps", type=int, default=20, help="upper-level steps of the search (default 20)")
    p.add_argument(
        "--inner-steps", type=int, default=10, help="lower-level steps per upper step (default 10)"
    )
    p.add_argument(
        "--hp",
        action="append",
        metavar="METHOD.KEY=VALUE",
        help="a method hyper-parameter, e.g. --hp rl.lr=0.02 (repeatable)",
    )
    p.add_argument("--out", default="runs/stress", help="output folder (default: runs/stress)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--data-dir", help="folder holding dataset files (cifar10: cifar-10-python.tar.gz)")
    p.add_argument(
        "--cache-dir", help="trained-model cache (default: $WORSTFORGET_CACHE or ~/.cache/worstforget)"
    )
    p.set_defaults(func=run)
    return p


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise CLIError(f"argument --seeds: expected comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise CLIError(f"argument --seeds: expected distinct integers such as 0,1,2, got {text!r}")
    return seeds


def _hparams(items: list[str] | None, methods: list[str]) -> dict[str, dict[str, Any]]:
    from unlearning.methods import REGISTRY

    out: dict[str, dict[str, Any]] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        name, dot, field = key.strip().partition(".")
        if not sep or not dot or not field:
            raise CLIError(f"argument --hp: expected METHOD.KEY=VALUE (e.g. rl.lr=0.02), got {item!r}")
        name = name.lower()
        if name not in methods:
            raise CLIError(f"argument --hp: {name!r} is not among --methods ({', '.join(methods)})")
        spec = REGISTRY[name].hyperparameters()
        field = field.replace("-", "_")
        if field not in spec:
            raise CLIError(
                f"argument --hp: {name} has no hyper-parameter {field!r}; choose from {', '.join(spec)}"
            )
        out.setdefault(name, {})[field] = coerce(
            value.strip(), spec[field]["default"], f"argument --hp {key}"
        )
    from unlearning.methods import make

    for name, hp in out.items():
        try:
            make(name, **hp)
        except ValueError as err:
            raise CLIError(f"argument --hp: {err}") from None
    return out


def run(args: argparse.Namespace) -> int:

    from unlearning import stress
    from unlearning.io import write_json, write_text
    from unlearning.loop import progress_bar

    check_experiment(args)
    if not 0 < args.budget < 1:
        raise CLIError(f"argument --budget: must be a fraction of the pool in (0, 1), got {args.budget}")
    check_at_least_one(args, "upper_steps", "inner_steps")
    seeds = _seeds(args.seeds)
    methods = [m.strip().lower() for m in args.methods.split(",") if m.strip()]
    try:
        methods = stress.validate(methods, seeds, args.search_method, args.hypergrad)
    except ValueError as err:
        flag = "--search-method" if "search method" in str(err) else "--methods"
        raise CLIError(f"argument {flag}: {err}") from None
    hparams = _hparams(args.hp, methods)

    total = len(seeds) * (1 + 2 * (1 + len(methods)))
    bar = progress_bar()
    with bar:
        task = bar.add_task("stress test", total=total)

        def step(message: str) -> None:
            bar.update(task, advance=1, description=message)

        report = stress.run(
            dataset=args.dataset.lower(),
            model=args.model.lower(),
            methods=methods,
            budget=args.budget,
            seeds=seeds,
            search_method=args.search_method.lower(),
            hypergrad=args.hypergrad,
            search_options={"upper_steps": args.upper_steps, "inner_steps": args.inner_steps},
            method_hparams=hparams,
            device=args.device,
            data_dir=args.data_dir,
            cache_dir=args.cache_dir,
            progress=step,
        )
    out = Path(args.out)
    write_json(out / "stress.json", report)
    write_text(out / "stress.md", stress.markdown(report))
    stress.plot(report, out / "stress.png")
    print_table(report, out)
    return 0


def print_table(report: dict[str, Any], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    cfg = report["config"]
    summary = report["summary"]
    table = Table(
        title=f"worst-case vs random forget sets ({cfg['dataset']}/{cfg['model']}, budget {cfg['budget']}, "
        f"{len(cfg['seeds'])} seeds; mean over seeds)"
    )
    for col in ("method", "UA rand", "UA worst", "MIA rand", "MIA worst", "Gap rand", "Gap worst", "Δ gap"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for name in ("original", "retrain", *cfg["methods"]):
        r, w = summary["random"][name], summary["worst"][name]
        delta = report["gap_increase"].get(name)
        table.add_row(
            name,
            f"{r['UA'][0]:.2f}",
            f"{w['UA'][0]:.2f}",
            f"{r['MIA'][0]:.2f}",
            f"{w['MIA'][0]:.2f}",
            f"{r['gap'][0]:.2f}",
            f"{w['gap'][0]:.2f}",
            "" if delta is None else f"{delta:+.2f}",
        )
    console = Console()
    console.print(table)
    console.print(f"wrote {out / 'stress.json'}, {out / 'stress.md'} and {out / 'stress.png'}")
