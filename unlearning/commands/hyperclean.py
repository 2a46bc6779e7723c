"""``worstforget hyperclean``: the bi-level engine on bundled data, end to end, in seconds.

Data hyper-cleaning on scikit-learn's digits (`bilevel.problems.cleaning`; this command loads the digits and
writes the reports): 40% of the training labels are flipped,
and per-sample weights on the capped simplex {w ∈ [0,1]^n : Σw = k} are learned by projected descent on the
validation loss with a hypergradient solver (`--solver implicit|unrolled|first_order`). Prints a table and
writes ``OUT/hyperclean.json``, ``.md`` and ``.png`` atomically.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from unlearning.commands import CLIError, check_at_least_one, check_device, check_out
from unlearning.report import wrote

DESCRIPTION = """Learn which training labels are wrong, by bi-level optimization (data hyper-cleaning).

Upper level: per-sample weights w on {w in [0,1]^n : sum w = k}. Lower level: a logistic-regression model
trained on the w-weighted examples. The hypergradient of the validation loss with respect to w moves weight
away from mislabelled examples; the k largest weights are kept and a model is retrained on them.

Example: worstforget hyperclean --solver implicit --seed 0 --out runs/hyperclean"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from bilevel.problems.cleaning import SOLVERS

    p = subparsers.add_parser(
        "hyperclean",
        help="bi-level data hyper-cleaning on bundled digits (seconds, CPU)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="runs/hyperclean", help="output folder (default: runs/hyperclean)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the label noise and the run")
    p.add_argument(
        "--solver", default="implicit", choices=SOLVERS, help="hypergradient solver (default: implicit)"
    )
    p.add_argument(
        "--noise", type=float, default=0.4, help="fraction of flipped training labels (default: 0.4)"
    )
    p.add_argument("--steps", type=int, default=60, help="outer (upper-level) steps (default: 60)")
    p.add_argument("--inner-steps", type=int, default=40, help="inner steps per hypergradient (default: 40)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.set_defaults(func=run)
    return p


def digits() -> tuple[Any, Any]:
    """scikit-learn's bundled digits (1,797 rows): pixels scaled to [0, 1] (float64), labels (int64)."""
    import torch
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return torch.tensor(X / 16.0, dtype=torch.float64), torch.tensor(y, dtype=torch.int64)


def run(args: argparse.Namespace) -> int:
    from bilevel.problems.cleaning import run as clean
    from unlearning.io import write_json, write_text
    from unlearning.loop import progress_bar

    if not 0 <= args.noise < 1:
        raise CLIError(f"argument --noise: must be in [0, 1), got {args.noise}")
    check_at_least_one(args, "steps", "inner_steps")
    check_device(args)
    check_out(args.out)
    out = Path(args.out)

    bar = progress_bar()
    with bar:
        task = bar.add_task(f"hyper-cleaning ({args.solver})", total=args.steps)
        report = clean(
            *digits(),
            seed=args.seed,
            noise=args.noise,
            outer_steps=args.steps,
            inner_steps=args.inner_steps,
            solver=args.solver,
            device=args.device,
            progress=lambda done, total: bar.update(task, completed=done),
        )
    write_json(out / "hyperclean.json", report)
    write_text(out / "hyperclean.md", markdown(report))
    plot(report, out / "hyperclean.png")
    print_table(report, out)
    return 0


def _rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    acc = report["test_accuracy"]
    return [
        ("mislabelled among all training examples", f"{report['corrupted_pct_in_train']:.1f}%"),
        ("mislabelled among the k kept by bi-level", f"{report['corrupted_pct_in_kept']:.1f}%"),
        (
            "mean weight: clean / mislabelled",
            f"{report['mean_weight']['clean']:.3f} / {report['mean_weight']['corrupted']:.3f}",
        ),
        ("test accuracy: all examples", f"{acc['all_examples']:.2f}%"),
        ("test accuracy: kept by bi-level", f"{acc['kept_by_bilevel']:.2f}%"),
        ("test accuracy: oracle (clean only)", f"{acc['oracle_clean']:.2f}%"),
        ("seconds", f"{report['seconds']:.1f}"),
    ]


def markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    lines = [
        "# worstforget hyperclean: bi-level data hyper-cleaning on digits",
        "",
        f"Solver `{cfg['solver']}`, {cfg['outer_steps']} outer steps x {cfg['inner_steps']} inner steps, "
        f"label noise {cfg['noise']:.0%}, budget k = {cfg['budget_k']:.0f} of {cfg['n_train']}, "
        f"seed {cfg['seed']}, "
        f"device {cfg['device']}.",
        "",
        "| quantity | value |",
        "|---|---|",
        *[f"| {a} | {b} |" for a, b in _rows(report)],
        "",
        "Reproduce: `worstforget hyperclean "
        f"--solver {cfg['solver']} --seed {cfg['seed']} --noise {cfg['noise']} --steps {cfg['outer_steps']} "
        f"--inner-steps {cfg['inner_steps']}`",
        "",
    ]
    return "\n".join(lines)


def print_table(report: dict[str, Any], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"bi-level hyper-cleaning on digits ({report['config']['solver']})")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for a, b in _rows(report):
        table.add_row(a, b)
    console = Console()
    console.print(table)
    wrote(out / "hyperclean.json", out / "hyperclean.md", out / "hyperclean.png")


def plot(report: dict[str, Any], path: Path) -> None:
    """The validation loss, the share of mislabelled examples among the top k per outer step, and the
    learned weights of clean and mislabelled examples."""
    from unlearning.report import pyplot, save_figure

    curve = report["curve"]
    steps = [c["step"] for c in curve]
    fig, (a, b, c) = pyplot().subplots(1, 3, figsize=(13, 3.6))
    a.plot(steps, [c["val_loss"] for c in curve])
    a.set_xlabel("outer step")
    a.set_ylabel("validation loss F(w)")
    b.plot(steps, [c["corrupted_pct_in_kept"] for c in curve], color="tab:red")
    b.axhline(report["corrupted_pct_in_train"], ls="--", color="grey", label="in the whole training set")
    b.set_xlabel("outer step")
    b.set_ylabel("% mislabelled among top-k")
    b.legend()
    w, bad = report["weights"], report["corrupted"]
    c.hist([x for x, m in zip(w, bad) if not m], bins=20, alpha=0.7, label="clean")
    c.hist([x for x, m in zip(w, bad) if m], bins=20, alpha=0.7, label="mislabelled")
    c.set_xlabel("learned weight w_i")
    c.legend()
    save_figure(fig, path)
