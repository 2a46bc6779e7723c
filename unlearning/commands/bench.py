"""``worstforget bench``: `bilevel.profile` on a built-in problem: time, peak memory, HVPs and hypergradient
error per solver. Prints a table; writes ``OUT/bench.json``, ``OUT/bench.md`` and ``OUT/bench.png`` (error
against time, and peak memory per solver) atomically."""

from __future__ import annotations

import argparse
import math
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unlearning.commands import CLIError, check_at_least_one, check_device, check_out
from unlearning.report import wrote

if TYPE_CHECKING:
    from bilevel import Solver
    from bilevel.problems import ProfileCase

PROBLEMS = ("ridge", "weighted-ridge", "logistic", "quadratic", "mlp-reweight")
# problem -> (default --dim, default --outer-dim, what the two sizes are)
SIZES: dict[str, tuple[int, int | None, str]] = {
    "ridge": (50, None, "--dim features p; --outer-dim 1 (one λ) or p (one λ per feature)"),
    "weighted-ridge": (20, 500, "--dim features p; --outer-dim training rows n (one weight each)"),
    "logistic": (20, None, "--dim features p; --outer-dim 1 (one λ) or p (one λ per feature)"),
    "quadratic": (50, 10, "--dim inner size d_y; --outer-dim outer size d_x"),
    "mlp-reweight": (32, 500, "--dim hidden units; --outer-dim training digits n (one weight each)"),
}
SOLVERS = (
    "unrolled",
    "unrolled-checkpoint",
    "unrolled-truncated",
    "forward",
    "implicit-cg",
    "implicit-neumann",
    "implicit-fixed-point",
    "direct",
    "first-order-partial",
    "first-order-identity",
    "f2sa",
)
DEFAULT_SOLVERS = "unrolled,unrolled-checkpoint,implicit-cg,implicit-neumann,direct,first-order-partial"
# The MLP: no dense solve (d_θ HVPs per call), and CG damped (its Hessian is indefinite away from a minimum;
# CG stops at negative curvature and the table notes it).
MLP_DEFAULT_SOLVERS = (
    "unrolled,unrolled-checkpoint,unrolled-truncated,implicit-cg,implicit-neumann,first-order-partial"
)
MLP_DEFAULT_DAMPING = 0.05
REFERENCES = ("auto", "exact", "closed-form")
MLP_WEIGHT_DECAY = 1e-3
MLP_LR = 0.1


def _defaults(problem: str) -> str:
    dim, outer, _ = SIZES[problem]
    return f" (default {dim}, {outer if outer else dim})"


DESCRIPTION = f"""Profile hypergradient solvers on a built-in bi-level problem (bilevel.profile).

For every solver: wall time of one hypergradient (inner solve included; median of --repeats interleaved
calls after one warm-up, with the min-max spread), peak memory above the start (CUDA:
torch.cuda.max_memory_allocated; CPU: torch's allocator peak from the profiler's memory events), the
Hessian-vector products the solver reports, and the relative error |g - g_ref| / |g_ref| of its
hypergradient. Every solver runs --steps inner steps of gradient descent from the same start (lr = 1/L on
the convex problems, {MLP_LR} on the MLP); iterative linear solvers run --linear-iters iterations.

Problems and sizes:
  ridge           {SIZES["ridge"][2]}{_defaults("ridge")}
  weighted-ridge  {SIZES["weighted-ridge"][2]}{_defaults("weighted-ridge")}
  logistic        {SIZES["logistic"][2]}{_defaults("logistic")}
  quadratic       {SIZES["quadratic"][2]}{_defaults("quadratic")}
  mlp-reweight    {SIZES["mlp-reweight"][2]}{_defaults("mlp-reweight")}
                  (digits, MLP 64-H-10, per-sample weights sigmoid(x_i), weight decay {MLP_WEIGHT_DECAY})

Solvers (--solvers, comma list, or "all"):
  {", ".join(SOLVERS[:6])},
  {", ".join(SOLVERS[6:])}.
  unrolled-truncated differentiates the last --truncate steps; direct is Implicit with a dense solve;
  f2sa is FirstOrder(opt, steps, mode="f2sa", sigma=100). Forward costs one pass per outer entry
  (keep --outer-dim small); direct materialises the inner Hessian (one HVP per inner entry).

Reference (--reference): auto = the closed form on ridge, weighted-ridge, logistic and quadratic (computed in
float64) and the full unroll of the same steps on mlp-reweight (its Hessian is indefinite); exact =
bilevel.profile's default (Newton + dense solve near the most stationary inner point found; CG above 2048
inner entries); closed-form; or a solver name.

Examples:
  worstforget bench                                      # ridge, p = 50, 50 per-feature penalties
  worstforget bench --problem logistic --dim 20 --steps 200 --solvers all --out runs/bench
  worstforget bench --problem mlp-reweight --dim 32 --outer-dim 500 --steps 50"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench",
        help="profile hypergradient solvers: time, memory, HVPs, error (bilevel.profile)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--problem", default="ridge", choices=PROBLEMS, help="built-in problem (default: ridge)")
    p.add_argument("--dim", type=int, default=None, help="inner size (see above; default per problem)")
    p.add_argument("--outer-dim", type=int, default=None, help="outer size (see above; default per problem)")
    p.add_argument("--steps", type=int, default=100, help="inner steps T of every solver (default: 100)")
    p.add_argument(
        "--solvers",
        default=None,
        metavar="LIST",
        help=f"comma-separated solver names, or all (default: {DEFAULT_SOLVERS}; mlp-reweight: "
        f"{MLP_DEFAULT_SOLVERS})",
    )
    p.add_argument(
        "--linear-iters", type=int, default=20, help="CG / Neumann / fixed-point iterations (default: 20)"
    )
    p.add_argument(
        "--truncate", type=int, default=None, help="steps unrolled-truncated differentiates (default: T/4)"
    )
    p.add_argument(
        "--damping",
        type=float,
        default=None,
        help=f"CG damping δ: solves (H + δI)v = b (default: 0; mlp-reweight: {MLP_DEFAULT_DAMPING})",
    )
    p.add_argument(
        "--reference",
        default="auto",
        help=f"{', '.join(REFERENCES)}, or a solver name (default: auto, see above)",
    )
    p.add_argument("--repeats", type=int, default=5, help="timed calls per solver (default: 5)")
    p.add_argument("--dtype", default="float64", choices=("float64", "float32"), help="default: float64")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of the problem's data (default: 0)")
    p.add_argument("--out", default="runs/bench", help="output folder (default: runs/bench)")
    p.set_defaults(func=run)
    return p


# ------------------------------------------------------------------------------------------- checks


def parse_solvers(text: str) -> list[str]:
    names = [s.strip().lower() for s in text.split(",") if s.strip()]
    if names == ["all"]:
        return list(SOLVERS)
    if not names:
        raise CLIError(f"argument --solvers: empty; choose from {', '.join(SOLVERS)} (or all)")
    unknown = [n for n in names if n not in SOLVERS]
    if unknown:
        raise CLIError(
            f"argument --solvers: unknown solver {unknown[0]!r}; choose from {', '.join(SOLVERS)} (or all)"
        )
    return list(dict.fromkeys(names))


def sizes(args: argparse.Namespace) -> tuple[int, int]:
    """(dim, outer_dim) with the problem's defaults, checked."""
    dim_default, outer_default, _ = SIZES[args.problem]
    dim = dim_default if args.dim is None else args.dim
    if dim < 1:
        raise CLIError(f"argument --dim: must be >= 1, got {dim}")
    outer = args.outer_dim if args.outer_dim is not None else (outer_default or dim)
    if outer < 1:
        raise CLIError(f"argument --outer-dim: must be >= 1, got {outer}")
    if args.problem in ("ridge", "logistic") and outer not in (1, dim):
        raise CLIError(
            f"argument --outer-dim: {args.problem} has one penalty (1) or one per feature (--dim = {dim}), "
            f"got {outer}"
        )
    if args.problem == "mlp-reweight":
        pool = _digits(args.seed).train.x.shape[0]
        if outer > pool:
            raise CLIError(f"argument --outer-dim: at most {pool} training digits, got {outer}")
    return dim, outer


def check_args(args: argparse.Namespace) -> tuple[list[str], int, int]:
    check_at_least_one(args, "steps", "repeats", "linear_iters", "truncate")
    mlp = args.problem == "mlp-reweight"
    if args.damping is None:
        args.damping = MLP_DEFAULT_DAMPING if mlp else 0.0
    if args.solvers is None:
        args.solvers = MLP_DEFAULT_SOLVERS if mlp else DEFAULT_SOLVERS
    if not (args.damping >= 0 and math.isfinite(args.damping)):
        raise CLIError(f"argument --damping: must be a finite number >= 0, got {args.damping}")
    names = parse_solvers(args.solvers)
    ref = args.reference.strip().lower()
    if ref not in REFERENCES and ref not in SOLVERS:
        raise CLIError(
            f"argument --reference: unknown {args.reference!r}; choose {', '.join(REFERENCES)} or a solver "
            f"name ({', '.join(SOLVERS)})"
        )
    if ref == "closed-form" and mlp:
        raise CLIError(
            "argument --reference: mlp-reweight has no closed form; use auto, exact or a solver name"
        )
    if ref == "auto":  # the closed form where there is one; the MLP: the full unroll of the same steps
        ref = "unrolled" if mlp else "closed-form"
    args.reference = ref
    check_device(args)
    dim, outer = sizes(args)
    return names, dim, outer


# ------------------------------------------------------------------------------------------- problems


def build(name: str, dim: int, outer_dim: int, *, seed: int, dtype: Any, device: Any) -> ProfileCase:
    """The problem on ``device``: `bilevel.problems.closed_form_case`, or the re-weighted MLP on digits."""
    from bilevel import problems

    if name == "mlp-reweight":
        return _mlp_reweight(dim, outer_dim, seed=seed, dtype=dtype, device=device)
    return problems.closed_form_case(name, dim, outer_dim, seed=seed, dtype=dtype, device=device)


def _digits(seed: int) -> Any:
    from unlearning import datasets

    return datasets.load("digits", seed=seed)


def _mlp_reweight(hidden: int, n: int, *, seed: int, dtype: Any, device: Any) -> ProfileCase:
    """`bilevel.problems.mlp_reweighting` on digits: n training digits drawn from the training split, the
    carved test split as the validation set, an MLP 64-H-10, weight decay ``MLP_WEIGHT_DECAY``."""
    from bilevel.problems import mlp_reweighting, reweighting_case

    data = _digits(seed)
    inst = mlp_reweighting(
        data.train.x,
        data.train.y,
        data.test.x,
        data.test.y,
        n=n,
        hidden=hidden,
        weight_decay=MLP_WEIGHT_DECAY,
        classes=10,
        seed=seed,
        dtype=dtype,
        device=device,
    )
    return reweighting_case(
        inst,
        lr=MLP_LR,
        description=(
            f"digits MLP 64-{hidden}-10 ({inst.inner_numel} inner parameters), {n} re-weighted training "
            f"digits, {inst.task.X_val.shape[0]} validation digits, weight decay {MLP_WEIGHT_DECAY}, "
            f"inner lr {MLP_LR}"
        ),
    )


# ------------------------------------------------------------------------------------------- solvers


def make_solvers(
    names: list[str], *, lr: float, steps: int, iters: int, truncate: int, damping: float
) -> dict[str, Solver]:
    """Solver name -> solver object, every one with ``steps`` inner SGD steps of learning rate ``lr``."""
    from bilevel import CG, Direct, FirstOrder, FixedPoint, Forward, Implicit, Neumann, Unrolled, optim

    sgd = optim.SGD(lr=lr)
    table = {
        "unrolled": lambda: Unrolled(sgd, steps),
        "unrolled-checkpoint": lambda: Unrolled(sgd, steps, checkpoint=True),
        "unrolled-truncated": lambda: Unrolled(sgd, steps, truncate=min(truncate, steps)),
        "forward": lambda: Forward(sgd, steps, max_directions=10**6),
        "implicit-cg": lambda: Implicit(
            sgd, steps, CG(max_iter=iters, tol=1e-12, damping=damping, on_indefinite="warn")
        ),
        "implicit-neumann": lambda: Implicit(sgd, steps, Neumann(alpha=lr, max_iter=iters)),
        "implicit-fixed-point": lambda: Implicit(sgd, steps, FixedPoint(alpha=lr, max_iter=iters, tol=0.0)),
        "direct": lambda: Implicit(sgd, steps, Direct()),
        "first-order-partial": lambda: FirstOrder(sgd, steps, "partial"),
        "first-order-identity": lambda: FirstOrder(sgd, steps, "identity", c=lr),
        "f2sa": lambda: FirstOrder(sgd, steps, "f2sa", sigma=100.0),
    }
    return {n: table[n]() for n in names}


def reference_for(name: str, case: ProfileCase, solvers: dict[str, Solver], **solver_kw: Any) -> Any:
    """`bilevel.profile`'s ``reference`` for ``--reference name`` (``auto`` already resolved): the closed
    form, None (an exact implicit solve), a profiled solver's name, or one more solver built alike."""
    if name == "closed-form":
        return case.closed_form
    if name == "exact":
        return None
    if name in solvers:
        return name
    return make_solvers([name], **solver_kw)[name]


# ------------------------------------------------------------------------------------------- running


def run(args: argparse.Namespace) -> int:
    import torch

    from bilevel import profile

    names, dim, outer_dim = check_args(args)
    check_out(args.out)
    device = torch.device(args.device)
    dtype = {"float64": torch.float64, "float32": torch.float32}[args.dtype]
    case = build(args.problem, dim, outer_dim, seed=args.seed, dtype=dtype, device=device)
    truncate = args.truncate or max(1, args.steps // 4)
    kw = dict(lr=case.lr, steps=args.steps, iters=args.linear_iters, truncate=truncate, damping=args.damping)
    solvers = make_solvers(names, **kw)
    print(f"profiling {len(solvers)} solver(s) on {args.problem}: {case.description}", flush=True)
    prof = profile(
        solvers=solvers,
        reference=reference_for(args.reference, case, solvers, **kw),
        repeats=args.repeats,
        device=device,
        **case.profile_args(),
    )
    if args.reference == "closed-form":
        prof.reference = "closed form (float64)"
    config = {
        "problem": args.problem,
        "dim": dim,
        "outer_dim": outer_dim,
        "steps": args.steps,
        "solvers": names,
        "linear_iters": args.linear_iters,
        "truncate": truncate,
        "damping": args.damping,
        "reference": args.reference,
        "repeats": args.repeats,
        "dtype": args.dtype,
        "device": str(device),
        "seed": args.seed,
    }
    write(Path(args.out), config, case.description, prof)
    return 0


def write(out: Path, config: dict[str, Any], problem: str, prof: Any) -> None:
    """``bench.json`` (via `unlearning.io`), ``bench.md`` and ``bench.png`` in ``out``; the table on the
    terminal."""
    from unlearning.io import write_json, write_text

    report = {"command": command_line(config, out), "config": config, "problem": problem}
    report["profile"] = prof.to_dict()
    write_json(out / "bench.json", report)
    write_text(out / "bench.md", markdown(report, prof))
    plot(prof, out / "bench.png", title=f"{config['problem']} ({config['dtype']}, {config['device']})")
    print_table(prof, config["problem"])
    wrote(out / "bench.json", out / "bench.md", out / "bench.png")


def command_line(config: dict[str, Any], out: Path) -> str:
    """The ``worstforget bench`` command that reproduces ``config`` (every option spelled out)."""
    opts = {k: v for k, v in config.items() if k not in ("dim", "outer_dim", "solvers")}
    parts = ["worstforget bench", f"--dim {config['dim']}", f"--outer-dim {config['outer_dim']}"]
    parts.append(f"--solvers {','.join(config['solvers'])}")
    parts += [f"--{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in opts.items()]
    return " ".join(parts + [f"--out {shlex.quote(str(out))}"])


def markdown(report: dict[str, Any], prof: Any) -> str:
    m = prof.machine
    gpu = f", GPU {m['gpu']}" if "gpu" in m else ""
    return "\n".join(
        [
            f"# worstforget bench: {report['config']['problem']}",
            "",
            f"Problem: {report['problem']}. {report['config']['steps']} inner steps per solver.",
            "",
            prof.table("markdown"),
            *[f"{line}\n" for line in indefinite_notes(prof)],
            f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, torch {m['torch']} "
            f"({m['torch_threads']} threads){gpu}.",
            "",
            f"Reproduce: `{report['command']}`",
            "",
        ]
    )


def print_table(prof: Any, problem: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from bilevel.profile import row_cells

    table = Table(title=f"hypergradient solvers on {problem}")
    for i, head in enumerate(["solver", "time ms", "min-max ms", "peak mem", "HVPs", "rel. error"]):
        table.add_column(head, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for row in prof.rows:
        table.add_row(*row_cells(row))
    console = Console()
    console.print(table)
    console.print(f"reference: {prof.reference}; memory: {prof.memory_kind}; {prof.repeats} repeats")
    for line in prof.failures():
        console.print(f"failed: {line}", markup=False)
    for line in indefinite_notes(prof):
        console.print(line, markup=False)


def indefinite_notes(prof: Any) -> list[str]:
    """A line per CG solve that met negative curvature (``CG(on_indefinite="warn")`` stops there)."""
    return [
        f"note: {r.name}: CG met negative curvature (the inner Hessian is indefinite at the returned point) "
        "and stopped early; its hypergradient is unreliable: raise --damping or --steps"
        for r in prof.rows
        if r.info.get("indefinite")
    ]


def plot(prof: Any, path: Path, title: str) -> None:
    """Two panels: relative error against median time (log-log), and peak memory per solver."""
    from unlearning.report import pyplot, save_figure

    plt = pyplot()
    ok = [r for r in prof.rows if r.failed is None]
    floor = 1e-17  # an exact 0 error is drawn at the floor
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.4))
    cmap = plt.get_cmap("tab10")
    markers = "os^vD<>Px*h"
    for i, r in enumerate(ok):
        style = {"color": cmap(i % 10), "marker": markers[i % len(markers)]}
        a.scatter(1e3 * r.time_s, max(r.rel_error, floor), label=r.name, zorder=3, **style)
        a.errorbar(
            1e3 * r.time_s,
            max(r.rel_error, floor),
            xerr=[[1e3 * (r.time_s - r.time_min_s)], [1e3 * (r.time_max_s - r.time_s)]],
            color=cmap(i % 10),
            alpha=0.5,
        )
    a.set_xscale("log")
    a.set_yscale("log")
    a.set_xlabel("time per hypergradient, ms (median; bars: min-max)")
    a.set_ylabel("relative error of the hypergradient")
    a.set_title(f"error against time: {title}", fontsize=9)
    a.grid(True, which="both", alpha=0.3)
    a.legend(fontsize=7)
    mem = [r for r in ok if r.peak_bytes is not None]
    b.barh(
        [r.name for r in mem],
        [r.peak_bytes / 2**20 for r in mem],
        color=[cmap(ok.index(r) % 10) for r in mem],
    )
    b.invert_yaxis()
    b.set_xlabel(f"peak memory, MiB ({prof.memory_kind})")
    b.set_title("peak memory per hypergradient", fontsize=9)
    save_figure(fig, path)
