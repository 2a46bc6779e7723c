"""Hypergradient accuracy against wall time, per method, on reference problems with closed-form answers.

    python -m benchmarks.accuracy_cost --out docs/      # docs/accuracy_cost.md and docs/accuracy_cost.png

For each problem (float64, seeded) every method starts from θ_0 = 0 at the same outer point and returns
∇F; the error is ‖∇F_method − ∇F_exact‖ / ‖∇F_exact‖ against the closed form at the *exact* inner solution,
so an unrolled method's error includes the bias of stopping after T steps. Inner steps are gradient descent
with lr = 1/L (L = largest eigenvalue of the inner Hessian at the solution). Implicit and first-order
methods get S = ⌈ln(1e10)·L/μ⌉ inner steps (enough for a 1e-10 inner error; capped at 3,000), included in
their time. Times are medians over interleaved rounds (every method once per round), with ``--threads``
torch threads, on the CPU (the reference problems of `bilevel.problems` build their data there).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bilevel import CG, FirstOrder, FixedPoint, Implicit, Neumann, Unrolled, optim, problems
from bilevel.inner import run_inner
from bilevel.problem import DataStream

from .race import race
from .report import write_atomic
from .workloads import bench_device, cpu_model

KS = (1, 3, 10, 30)
TS = (10, 30, 100, 300)
TRUNCATE = (10, 30, 100)
SIGMAS = (10.0, 100.0, 1000.0)
INNER_ALONE = "inner solve alone (S steps, no hypergradient)"


def _logistic_factory() -> Callable[..., Any] | None:
    fn = getattr(problems, "logistic", None)
    if fn is None:
        try:
            from bilevel.problems.logistic import logistic as fn  # not yet exported by bilevel.problems
        except ImportError:
            return None
    return fn


def problem_set(device: torch.device) -> dict[str, Callable[[], Any]]:
    """Problem label -> factory. Sizes: large enough that methods separate, small enough for seconds."""
    out: dict[str, Callable[[], Any]] = {
        "ridge, per-feature λ (n=400, p=200, 200 λ's, κ≈45)": lambda: problems.ridge(
            n=400, m=400, p=200, per_feature=True, lam=0.05, seed=0
        ),
    }
    logistic = _logistic_factory()
    if logistic is not None:
        out["logistic, digits softmax, per-pixel λ (640 inner, 64 λ's)"] = lambda: logistic(
            n=1000, m=500, multiclass=True, per_feature=True, seed=0
        )
    out["weighted ridge, data re-weighting (1,000 weights, p=100)"] = lambda: problems.weighted_ridge(
        n=1000, m=500, p=100, seed=0
    )
    return out


@dataclass
class Method:
    family: str  # one line / marker per family in the plot
    label: str
    knob: float | None  # the swept parameter (T, K, σ), for the plot's annotations
    fn: Callable[[], dict[str, torch.Tensor]]


def _to(params: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in params.items()}


def _torchopt_cg(
    ref: Any, outer: dict[str, torch.Tensor], init: dict[str, torch.Tensor], sgd: Any, S: int, K: int
) -> Callable[[], dict[str, torch.Tensor]]:
    """torchopt ``custom_root`` + ``solve_cg(maxiter=K)`` around the same S gradient-descent steps."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torchopt
    (okey,) = list(outer)
    ikeys = list(init)
    problem = ref.problem

    def g(inner: tuple[torch.Tensor, ...], lam: torch.Tensor) -> torch.Tensor:
        return problem.inner_loss(dict(zip(ikeys, inner)), {okey: lam}, None)

    def optimality(inner: tuple[torch.Tensor, ...], lam: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.func.grad(g)(inner, lam)

    @torchopt.diff.implicit.custom_root(
        optimality, argnums=1, solve=torchopt.linear_solve.solve_cg(maxiter=K, rtol=0.0)
    )
    def solver(inner: tuple[torch.Tensor, ...], lam: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # The very inner loop our Implicit runs (bilevel.inner.run_inner), so that the two differ only in
        # how they compute the hypergradient at θ_S.
        theta, _ = run_inner(
            problem, sgd, dict(zip(ikeys, inner)), {okey: lam.detach()}, DataStream(None), start=0, stop=S
        )
        return tuple(theta[k] for k in ikeys)

    def run() -> dict[str, torch.Tensor]:
        lam = outer[okey].detach().requires_grad_(True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            sol = solver(tuple(init[k] for k in ikeys), lam)
            f = problem.outer_loss(dict(zip(ikeys, sol)), {okey: lam}, None)
            return {okey: torch.autograd.grad(f, lam)[0]}

    return run


def methods(ref: Any, device: torch.device) -> tuple[list[Method], dict[str, Any]]:
    L, mu = float(ref.L), float(ref.mu)
    lr = 1.0 / L
    S = min(3000, math.ceil(math.log(1e10) * L / mu))
    sgd = optim.SGD(lr=lr)
    outer, init = _to(ref.outer, device), _to(ref.inner_init, device)
    problem = ref.problem

    def call(solver: Any) -> Callable[[], dict[str, torch.Tensor]]:
        return lambda: solver.hypergrad(problem, init, outer).grad

    out: list[Method] = []
    for T in TS:
        out.append(Method("Unrolled (T steps)", f"Unrolled T={T}", T, call(Unrolled(sgd, steps=T))))
    for K in TRUNCATE:
        out.append(
            Method(
                "Unrolled T=300, truncated to K",
                f"Unrolled T=300 truncate={K}",
                K,
                call(Unrolled(sgd, steps=300, truncate=K)),
            )
        )
    solvers = {
        "CG": lambda K: CG(max_iter=K, tol=0.0),
        "Neumann": lambda K: Neumann(alpha=lr, max_iter=K),
        "FixedPoint": lambda K: FixedPoint(alpha=lr, max_iter=K, tol=0.0),
    }
    for name, make in solvers.items():
        for K in KS:
            solver = Implicit(sgd, steps=S, linear_solver=make(K), warm_start=False)
            out.append(Method(f"Implicit {name} (K iters)", f"Implicit {name} K={K}", K, call(solver)))
    for K in KS:
        out.append(
            Method(
                "torchopt custom_root solve_cg (K iters)",
                f"torchopt CG K={K}",
                K,
                _torchopt_cg(ref, outer, init, sgd, S, K),
            )
        )
    out.append(Method("FirstOrder partial", "FirstOrder partial", None, call(FirstOrder(sgd, S, "partial"))))
    out.append(
        Method(
            "FirstOrder identity (c = lr)",
            "FirstOrder identity",
            None,
            call(FirstOrder(sgd, S, "identity", c=lr)),
        )
    )
    for sigma in SIGMAS:
        out.append(
            Method(
                "FirstOrder f2sa (σ)",
                f"FirstOrder f2sa σ={sigma:g}",
                sigma,
                call(FirstOrder(sgd, S, "f2sa", sigma=sigma)),
            )
        )
    return out, {"lr": lr, "S": S, "L": L, "mu": mu}


def relative_error(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    num = sum(float(((got[k].double().cpu() - want[k].double().cpu()) ** 2).sum()) for k in want)
    den = sum(float((want[k].double().cpu() ** 2).sum()) for k in want)
    return math.sqrt(num / max(den, 1e-300))


def run_problem(label: str, factory: Callable[[], Any], device: torch.device, rounds: int) -> dict[str, Any]:
    ref = factory()
    exact = ref.hypergrad(ref.outer)
    ms, meta = methods(ref, device)
    rows = []
    for m in ms:
        try:
            err = relative_error(m.fn(), exact)
        except Exception as exc:  # a method that fails is reported, not hidden
            rows.append({"method": m, "error": None, "note": f"{type(exc).__name__}: {exc}"})
            continue
        rows.append({"method": m, "error": err, "note": ""})
    timed = {r["method"].label: r["method"].fn for r in rows if r["error"] is not None}
    sgd, S = optim.SGD(lr=meta["lr"]), meta["S"]
    init, outer = _to(ref.inner_init, device), _to(ref.outer, device)
    timed[INNER_ALONE] = lambda: run_inner(ref.problem, sgd, init, outer, DataStream(None), start=0, stop=S)
    result = race(timed, rounds, device)
    for r in rows:
        if r["error"] is not None:
            r["seconds"] = result.median(r["method"].label)
    meta["inner_alone_s"] = result.median(INNER_ALONE)
    return {"label": label, "name": ref.name, "meta": meta, "rows": rows, "repr": repr(ref)}


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6.2 * len(results), 5.2), squeeze=False)
    markers = "os^vD<>Px*h"
    families: list[str] = []
    for res in results:
        for r in res["rows"]:
            if r["method"].family not in families:
                families.append(r["method"].family)
    colors = {f: plt.get_cmap("tab10")(i % 10) for i, f in enumerate(families)}
    floor = 1e-16
    for ax, res in zip(axes[0], results):
        for fam in families:
            pts = [
                (r["seconds"], max(r["error"], floor), r["method"].knob)
                for r in res["rows"]
                if r["method"].family == fam and r["error"] is not None
            ]
            if not pts:
                continue
            i = families.index(fam)
            ax.plot(
                [1e3 * p[0] for p in pts],
                [p[1] for p in pts],
                marker=markers[i % len(markers)],
                color=colors[fam],
                label=fam,
                linestyle="-" if len(pts) > 1 else "none",
            )
            for t, e, knob in pts:
                if knob is not None:
                    ax.annotate(
                        f"{knob:g}", (1e3 * t, e), fontsize=7, xytext=(3, 3), textcoords="offset points"
                    )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("wall time per hypergradient (ms)")
        ax.set_ylabel("relative error of ∇F")
        ax.set_title(res["label"], fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    seen = set(labels)
    for ax in axes[0][1:]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in seen:
                handles.append(h)
                labels.append(lab)
                seen.add(lab)
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def markdown(results: list[dict[str, Any]], device: torch.device, rounds: int, argv: list[str]) -> str:
    cmd = "python -m benchmarks.accuracy_cost " + " ".join(argv)
    lines = [
        "# Hypergradient accuracy against cost",
        "",
        f"<!-- Generated by `{cmd.strip()}`; do not edit by hand. -->",
        "",
        (__doc__ or "").split("\n\n", 2)[2].strip().replace("\n", " "),
        "",
        f"Machine: {cpu_model()} (lscpu), {os.cpu_count()} logical cores, torch "
        f"{torch.__version__}, {torch.get_num_threads()} thread(s), device `{device}`; {rounds} interleaved "
        "rounds per method, median time. Figure: [`accuracy_cost.png`](accuracy_cost.png).",
        "",
        "![relative error against wall time](accuracy_cost.png)",
        "",
    ]
    for res in results:
        meta = res["meta"]
        lines += [
            f"## {res['label']}",
            "",
            f"`{res['repr']}`; inner lr = 1/L = {meta['lr']:.4g}, S = {meta['S']} inner steps for "
            "implicit and first-order methods; those S steps alone take "
            f"{1e3 * meta['inner_alone_s']:.2f} ms of each of their times (same interleaved rounds).",
            "",
            "| method | time ms | relative error |",
            "|---|--:|--:|",
        ]
        ok = [r for r in res["rows"] if r["error"] is not None]
        for r in res["rows"]:
            if r["error"] is None:
                lines.append(f"| {r['method'].label} | — | failed: {r['note']} |")
            else:
                lines.append(f"| {r['method'].label} | {1e3 * r['seconds']:.2f} | {r['error']:.2e} |")
        best = {}
        for target in (1e-2, 1e-6):
            within = [r for r in ok if r["error"] <= target]
            if within:
                best[target] = min(within, key=lambda r: r["seconds"])
        lines.append("")
        for target, r in best.items():
            lines.append(
                f"- Cheapest to reach relative error ≤ {target:g}: **{r['method'].label}** "
                f"({1e3 * r['seconds']:.2f} ms, error {r['error']:.1e})."
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description="Hypergradient accuracy against wall time.")
    parser.add_argument("--out", default="docs/", help="directory for accuracy_cost.md and accuracy_cost.png")
    parser.add_argument(
        "--device", default=None, help="torch device (default $WORSTFORGET_BENCH_DEVICE or cpu)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds per method")
    args = parser.parse_args(argv)
    if args.threads or os.environ.get("WORSTFORGET_BENCH_THREADS"):
        torch.set_num_threads(int(args.threads or os.environ["WORSTFORGET_BENCH_THREADS"]))
    device = bench_device(args.device)
    if device.type != "cpu":
        # bilevel.problems builds its data with CPU generators and its losses close over those tensors.
        print(
            f"accuracy_cost: device {device} is not supported yet: bilevel.problems builds its data on the "
            "CPU (no device argument); run with --device cpu",
            file=sys.stderr,
        )
        return 2
    torch.manual_seed(0)
    results = []
    for label, factory in problem_set(device).items():
        print(f"[accuracy_cost] {label} ...", flush=True)
        results.append(run_problem(label, factory, device, args.rounds))
    out = Path(args.out)
    plot(results, out / "accuracy_cost.png")
    write_atomic(out / "accuracy_cost.md", markdown(results, device, args.rounds, argv))
    print(f"wrote {out / 'accuracy_cost.md'} and {out / 'accuracy_cost.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
