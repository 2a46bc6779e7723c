"""``worstforget search``: the worst-case forget set of one unlearning method (`unlearning.worst_case`).

Steps: `unlearning.setup.prepare` (dataset, split, original model; cached) → `worst_case.search` (bi-level
search over the training pool) → the method run on the found set and on the random start set of the same size
(forget loss and UA of each) → a table, and ``OUT/worst_case.json`` (the `SearchResult`, with key
``indices``, readable by ``worstforget unlearn --forget indices:OUT/worst_case.json``), ``OUT/worst_case.md``
and ``OUT/worst_case.png`` (the upper objective over the steps), all written atomically.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

from unlearning.commands import CLIError, check_at_least_one, check_experiment, check_out
from unlearning.report import wrote

DESCRIPTION = """Find the forget set an unlearning method handles worst, by bi-level optimisation.

Upper level: forget weights w in [0,1]^N over the training pool with sum w = m (the budget), minimising
F(w) = sum_i w_i loss_i(theta(w)) + gamma |w|^2: the forget loss left after the method has unlearned w, i.e.
the points the method fails to forget. Lower level: the method's own weighted objective, run from the original
model (a fresh init for retrain). The hypergradient is the paper's first-order signSGD rule (default), or
unrolled / implicit differentiation through an SGD lower level (implicit: the lower level is proximal,
g + rho/2 |theta - theta_o|^2, --proximal, and CG starts from the previous step's solution). The final set is
the top-m of w; --reverse finds the best case (the easiest set to forget) instead, --classwise searches over
whole classes.

The method is then run on the found set and on a random set of the same size (the search's start), and their
forget losses and UA are compared. The set is saved as OUT/worst_case.json (with the dataset, split seed and a
fingerprint of the pool, so it is refused on other data), which
`worstforget unlearn --forget indices:OUT/worst_case.json` and `worstforget evaluate` read.

Example: worstforget search --dataset digits --model mlp --method ft --budget 0.1 --seed 0 --out runs/wc"""


def _budget(text: str) -> float | int:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a fraction in (0, 1) or a whole number of examples, got {text!r}"
        ) from None
    if value >= 1:
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"a fraction must be below 1 ({text!r} would select the whole pool); a count of examples "
                f"(or classes) is a whole number such as 130, got {text!r}"
            ) from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1) or a count >= 1, got {text!r}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from unlearning.commands.unlearn import add_experiment_arguments
    from unlearning.worst_case import DEFAULT_PROXIMAL, FINAL_RULES, HYPERGRADS

    p = subparsers.add_parser(
        "search",
        help="find the worst-case forget set of an unlearning method (bi-level)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--method",
        "--search-method",
        dest="method",
        default="ft",
        help="unlearning method whose worst case is searched (default: ft; see unlearn --list-methods); "
        "its upper step defaults to the method's (docs/worst_case.md, 'Method-aware defaults')",
    )
    p.add_argument(
        "--budget",
        type=_budget,
        default=0.1,
        help="forget-set size: a fraction of the pool in (0, 1) or a count (--classwise: of the classes); "
        "default 0.1",
    )
    p.add_argument(
        "--hypergrad",
        default="first_order",
        choices=HYPERGRADS,
        help="hypergradient: first_order (signSGD lower level, the paper's rule; default), unrolled, "
        "implicit",
    )
    p.add_argument("--upper-steps", type=int, default=20, help="upper-level steps (default: 20)")
    p.add_argument(
        "--lower-steps",
        type=int,
        default=10,
        help="lower-level steps K per upper step, from the original model (default: 10)",
    )
    p.add_argument(
        "--inner-lr", type=float, help="lower-level step (default: 1e-2 signSGD, the method's lr for SGD)"
    )
    p.add_argument(
        "--proximal",
        type=float,
        help="rho of the proximal lower level g(theta, w) + rho/2 |theta - theta_o|^2 (default: "
        f"{DEFAULT_PROXIMAL:g} for --hypergrad implicit, whose CG solve needs H + rho I > 0; 0 otherwise)",
    )
    p.add_argument(
        "--no-warm-start",
        action="store_true",
        help="implicit: start each CG solve from 0, not from the previous upper step's solution",
    )
    p.add_argument("--upper-lr", type=float, help="upper-level step on w (default: 30; --classwise: 1)")
    p.add_argument("--gamma", type=float, default=0.0, help="upper regulariser gamma |w|^2 (default: 0)")
    p.add_argument(
        "--binarize-every",
        type=int,
        default=20,
        help="w <- top-m(w) every N upper steps; 0 = never (default 20)",
    )
    p.add_argument("--batch-size", type=int, help="lower-level mini-batch size (default: the full pool)")
    p.add_argument(
        "--classwise", action="store_true", help="search over classes (budget = number of classes)"
    )
    p.add_argument("--reverse", action="store_true", help="the best case: the set easiest to forget")
    p.add_argument(
        "--exhaustive",
        action="store_true",
        help="with --classwise: the exact worst case, F at every set of --budget classes (one lower-level "
        "run each), written as per_class in worst_case.json",
    )
    p.add_argument(
        "--final-rule",
        choices=FINAL_RULES,
        help="the returned set: best (the binary set of lowest F met: the start, each binarisation, the last "
        "top-m; default) or published (top-m of the last w, as the published code)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the training and the search")
    p.add_argument("--out", default="runs/search", help="output folder (default: runs/search)")
    p.add_argument("--hp", action="append", metavar="KEY=VALUE", help="a method hyper-parameter (repeatable)")
    p.add_argument("--no-compare", action="store_true", help="skip running the method on the two sets")
    p.add_argument(
        "--no-graph",
        action="store_true",
        help="compute each hypergradient eagerly (default on CUDA: one captured CUDA graph, replayed per "
        "step)",
    )
    add_experiment_arguments(p)
    p.set_defaults(func=run)
    return p


def _check(args: argparse.Namespace) -> None:
    check_experiment(args)
    check_at_least_one(args, "upper_steps", "lower_steps", "batch_size", "threads")
    if args.exhaustive and not args.classwise:
        raise CLIError(
            "argument --exhaustive: needs --classwise (the exact search runs once per set of classes)"
        )
    if args.binarize_every < 0:
        raise CLIError(f"argument --binarize-every: must be >= 0 (0 = never), got {args.binarize_every}")
    for flag in ("inner_lr", "upper_lr"):
        value = getattr(args, flag)
        if value is not None and not value > 0:
            raise CLIError(f"argument --{flag.replace('_', '-')}: must be > 0, got {value}")
    for flag in ("gamma", "proximal"):
        value = getattr(args, flag)
        if value is not None and not 0 <= value < float("inf"):
            raise CLIError(f"argument --{flag}: must be a finite number >= 0, got {value}")


def search_config(args: argparse.Namespace) -> Any:
    """The `unlearning.worst_case.SearchConfig` of the flags: the one place they map onto the search's
    options (``--lower-steps`` is ``inner_steps``, ``--binarize-every 0`` is None, ``--no-warm-start`` is
    ``warm_start=False``, ``--no-graph`` is ``graph=False``)."""
    from unlearning.worst_case import SearchConfig

    return SearchConfig(
        budget=args.budget,
        hypergrad=args.hypergrad,
        upper_steps=args.upper_steps,
        inner_steps=args.lower_steps,
        inner_lr=args.inner_lr,
        upper_lr=args.upper_lr,
        gamma=args.gamma,
        binarize_every=args.binarize_every or None,
        classwise=args.classwise,
        reverse=args.reverse,
        batch_size=args.batch_size,
        proximal=args.proximal,
        warm_start=not args.no_warm_start,
        seed=args.seed,
        final_rule=args.final_rule,
        exhaustive=args.exhaustive,
        graph=False if getattr(args, "no_graph", False) else None,
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from unlearning.commands.unlearn import method_hparams, prepare_from_args
    from unlearning.io import write_json, write_text
    from unlearning.methods import make
    from unlearning.worst_case import resolve_budget, search

    _check(args)
    check_out(args.out)
    mh = argparse.Namespace(method=args.method, hp=args.hp, lr=None, epochs=None)
    method_hparams(mh)  # unknown method / hyper-parameter: fail before training
    if args.threads:
        torch.set_num_threads(args.threads)
    prepared = prepare_from_args(args, "random:0.1")
    task = prepared.task
    n_units = len(set(task.pool.y.tolist())) if args.classwise else len(task.pool)
    try:
        resolve_budget(args.budget, n_units, what="set of classes" if args.classwise else "pool")
    except ValueError as err:
        raise CLIError(f"argument --budget: {err}") from None
    name, hp = method_hparams(mh, prepared.recipe)
    try:
        method = make(name, **hp)
    except ValueError as err:
        raise CLIError(f"argument --hp: {err}") from None

    from unlearning.loop import progress_enabled

    try:
        result = search(
            prepared, method, config=search_config(args), progress=None if progress_enabled() else False
        )
    except ValueError as err:
        raise CLIError(f"argument --method/--hp: {err}") from None
    report = result.to_dict()
    report["comparison"] = None if args.no_compare else compare(prepared, method, result, args.seed)
    report["config"]["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    out = Path(args.out)
    write_json(out / "worst_case.json", report)
    write_text(out / "worst_case.md", markdown(report))
    plot(report, out / "worst_case.png")
    print_table(report, out)
    return 0


def compare(prepared: Any, method: Any, result: Any, seed: int) -> dict[str, Any]:
    """The method run on the found set and on the random start set: mean forget loss before (original model)
    and after, UA after, and the method's seconds."""
    import torch

    from unlearning import metrics, splits
    from unlearning.worst_case import forget_loss

    out: dict[str, Any] = {}
    pool = prepared.task.pool
    for label, index in (("found", result.indices), ("random", result.initial_indices)):
        task = splits.make_task(
            prepared.split,
            index,
            num_classes=prepared.task.num_classes,
            seed=prepared.task.seed,
            augment=prepared.task.augment,
            batch_size=prepared.task.batch_size,
        ).to(prepared.device)
        torch.manual_seed(seed)
        unlearned = copy.deepcopy(method).unlearn(prepared.original, task)
        out[label] = {
            "size": int(index.numel()),
            "forget_loss_original": forget_loss(prepared.original, pool, index),
            "forget_loss_after": forget_loss(unlearned.model, pool, index),
            "UA_original": 100.0 - metrics.accuracy(prepared.original, task.forget),
            "UA_after": 100.0 - metrics.accuracy(unlearned.model, task.forget),
            "seconds": unlearned.seconds,
        }
    return out


def _label(report: dict) -> str:
    return "best-case" if report["config"]["reverse"] else "worst-case"


def _rows(report: dict) -> list[tuple[str, str, str]]:
    c, h = report["config"], report["history"]
    rows = [
        (
            "upper objective F at the binary set",
            f"{report['objective']['final']:.4f}",
            f"{report['objective']['initial']:.4f}",
        )
    ]
    comp = report.get("comparison")
    if comp:
        f, r = comp["found"], comp["random"]
        rows += [
            (
                "mean forget loss, original model",
                f"{f['forget_loss_original']:.4f}",
                f"{r['forget_loss_original']:.4f}",
            ),
            (
                f"mean forget loss after {c['method']}",
                f"{f['forget_loss_after']:.4f}",
                f"{r['forget_loss_after']:.4f}",
            ),
            (f"UA after {c['method']} (%)", f"{f['UA_after']:.2f}", f"{r['UA_after']:.2f}"),
        ]
    per_step = sorted(e["seconds"] for e in h)[len(h) // 2] if h else 0.0
    totals = report.get("totals") or {}
    if totals.get("hvp"):
        rows.append(
            ("Hessian-vector products (CG iterations)", f"{totals['hvp']} ({totals['cg_iterations']})", "")
        )
    rows += [
        ("search seconds (median per upper step)", f"{report['seconds']:.2f} ({per_step:.3f})", ""),
        ("overlap with the random start", f"{_overlap(report):.0%}", ""),
    ]
    return rows


def _note(report: dict) -> str | None:
    """A warning when the search ended no better than its random start (F at the binary sets)."""
    o = report["objective"]
    if o["final"] < o["initial"]:
        return None
    return (
        f"note: F at the found set ({o['final']:.4g}) is not below F at the random start "
        f"({o['initial']:.4g}): the upper steps overshoot for this method; "
        "lower --upper-lr (e.g. 1 or 0.1) or add --gamma"
    )


def _where(config: dict) -> str:
    return f"{config.get('dataset', '?')}/{config.get('model', '?')}"


def _overlap(report: dict) -> float:
    a, b = set(report["indices"]), set(report["initial_indices"])
    return len(a & b) / max(1, len(a))


def _implicit_settings(config: dict) -> str:
    if config.get("hypergrad") != "implicit":
        return ""
    return (
        f"; proximal rho {config.get('proximal', 0.0):g}, CG <= {config.get('cg_iters')} iterations to "
        f"{config.get('cg_tol', 0.0):g}, warm start {'on' if config.get('warm_start') else 'off'}"
    )


def markdown(report: dict) -> str:
    c = report["config"]
    unit = "classes" if c["classwise"] else "examples"
    lines = [
        f"# {_label(report).capitalize()} forget set: {c['method']} on {_where(c)}, seed {c['seed']}",
        "",
        f"Budget m = {c['size']} {unit} of {c['pool_size'] if not c['classwise'] else 'the classes'} "
        f"(|D_f| = {report['size']}); hypergradient `{c['hypergrad']}` ({c['solver']}); "
        f"{c['upper_steps']} upper steps (lr {c['upper_lr']:g}) x {c['inner_steps']} lower steps "
        f"(lr {c['inner_lr']:g}); gamma {c['gamma']:g}; binarise every {c['binarize_every']}"
        f"{_implicit_settings(c)}.",
        "",
        f"| quantity | {_label(report)} set | random set (search start) |",
        "|---|---:|---:|",
        *[f"| {a} | {b} | {d} |" for a, b, d in _rows(report)],
        "",
    ]
    if report.get("classes") is not None:
        lines += [f"Classes selected: {report['classes']}.", ""]
    if report.get("per_class"):
        ranked = sorted(report["per_class"].items(), key=lambda kv: kv[1])
        lines += [
            "Exact search: F at every set of classes (lowest first).",
            "",
            "| classes | F |",
            "|---|---:|",
            *[f"| {k} | {v:.4f} |" for k, v in ranked],
            "",
        ]
    if _note(report):
        lines += [f"**{_note(report)}**", ""]
    flags = " --classwise" * c["classwise"] + " --reverse" * c["reverse"]
    flags += " --exhaustive" * bool(c.get("exhaustive"))
    flags += " --final-rule published" if c.get("final_rule") == "published" else ""
    flags += f" --proximal {c.get('proximal', 0.0):g}" if c.get("proximal") else ""
    flags += " --no-warm-start" if c.get("warm_start") is False else ""
    lines += [
        "Reproduce: `worstforget search "
        f"--dataset {c.get('dataset', 'digits')} --model {c.get('model', 'mlp')} --method {c['method']} "
        f"--budget {c['budget']} --hypergrad {c['hypergrad']} --upper-steps {c['upper_steps']} "
        f"--lower-steps {c['inner_steps']} --upper-lr {c['upper_lr']:g} --inner-lr {c['inner_lr']:g} "
        f"--gamma {c['gamma']:g} --binarize-every {c['binarize_every'] or 0} --seed {c['seed']}{flags}`",
        "",
    ]
    return "\n".join(lines)


def print_table(report: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    c = report["config"]
    table = Table(
        title=f"{_label(report)} forget set for {c['method']} on {_where(c)} "
        f"(m = {c['size']}, {c['hypergrad']}, seed {c['seed']})"
    )
    table.add_column("quantity")
    table.add_column(f"{_label(report)} set", justify="right")
    table.add_column("random set", justify="right")
    for row in _rows(report):
        table.add_row(*row)
    console = Console()
    console.print(table)
    if _note(report):
        console.print(_note(report), style="yellow")
    wrote(out / "worst_case.json", out / "worst_case.md", out / "worst_case.png")


def plot(report: dict, path: Path) -> None:
    """The upper objective over the steps (with F at the final and the start set) and the overlap of each
    step's top-m with the final set, as a PNG (`unlearning.report.save_figure`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from unlearning.report import save_figure

    h = report["history"]
    steps = [e["step"] for e in h]
    fig = Figure(figsize=(10, 3.6))
    FigureCanvasAgg(fig)
    a, b = fig.subplots(1, 2)
    a.plot(steps, [e["objective"] for e in h], marker="o", ms=3, label="F(w_k) (continuous w)")
    a.axhline(report["objective"]["final"], ls="--", color="tab:red", label="F(final set)")
    a.axhline(report["objective"]["initial"], ls=":", color="grey", label="F(random start)")
    for e in h:
        if e.get("binarized"):
            a.axvline(e["step"], color="k", alpha=0.15)
    a.set_xlabel("upper step")
    a.set_ylabel("upper objective F")
    a.legend(fontsize=8)
    b.plot(steps, [e["overlap_final"] for e in h], label="|top-m(w_k) ∩ final| / m")
    b.set_ylim(0, 1.05)
    b.set_xlabel("upper step")
    b.set_ylabel("overlap with the final set")
    b2 = b.twinx()
    b2.bar(steps, [e["changed"] for e in h], alpha=0.3, color="tab:orange")
    b2.set_ylabel("entries entering top-m", color="tab:orange")
    save_figure(fig, path)
