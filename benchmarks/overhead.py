"""The engine's per-step overhead on a small problem: `solve_inner` and `Unrolled` against hand-written loops.

Workload: L2-regularised logistic regression in float64, n = 200 examples, d = 20 features, the outer
variable a log weight decay, g(θ, λ) = mean softplus(−y x·θ) + ½ e^λ ‖θ‖², f = the same loss on validation
rows. 1,000 SGD steps (lr 0.5). The hand-written loops are what a user writes with plain autograd:

- detached: ``g = autograd.grad(loss(θ), θ)``; ``θ ← θ − η g`` under ``no_grad`` (compared with
  ``bilevel.solve_inner``);
- unrolled: the same steps with ``create_graph=True`` and one ``autograd.grad`` of f w.r.t. λ at the end
  (compared with ``Unrolled(optim.SGD(lr), T).hypergrad``, whose extra work is the diagnostics: one inner
  gradient at θ_T and the finiteness and growth checks).

``python -m benchmarks.overhead`` prints interleaved medians and the ratios (a run of a few seconds);
``benchmarks/test_overhead.py`` checks that the hand loops and ours agree and times them with
pytest-benchmark under ``make bench``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from bilevel import BilevelProblem, Unrolled, optim, solve_inner

STEPS = 1000
LR = 0.5


def logistic(n: int = 200, d: int = 20, seed: int = 0) -> dict[str, Any]:
    """The seeded workload: data, the problem, θ_0 and λ."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=gen, dtype=torch.float64)
    w = torch.randn(d, generator=gen, dtype=torch.float64)
    y = torch.sign(X @ w + 0.5 * torch.randn(n, generator=gen, dtype=torch.float64))
    Xv, yv = X[: n // 2] + 0.1, y[: n // 2]

    def inner_loss(inner: dict, outer: dict, batch: Any) -> torch.Tensor:
        theta = inner["theta"]
        return F.softplus(-y * (X @ theta)).mean() + 0.5 * outer["log_decay"].exp() * (theta * theta).sum()

    def outer_loss(inner: dict, outer: dict, batch: Any) -> torch.Tensor:
        return F.softplus(-yv * (Xv @ inner["theta"])).mean()

    return {
        "problem": BilevelProblem(inner_loss, outer_loss),
        "inner": {"theta": torch.zeros(d, dtype=torch.float64)},
        "outer": {"log_decay": torch.tensor(-2.0, dtype=torch.float64)},
        "inner_loss": inner_loss,
        "outer_loss": outer_loss,
    }


def hand_detached(w: dict[str, Any], steps: int = STEPS) -> torch.Tensor:
    """θ_T by a plain autograd loop."""
    lam = w["outer"]
    theta = w["inner"]["theta"].clone()
    for _ in range(steps):
        theta.requires_grad_(True)
        (g,) = torch.autograd.grad(w["inner_loss"]({"theta": theta}, lam, None), theta)
        with torch.no_grad():
            theta = theta - LR * g
    return theta


def ours_detached(w: dict[str, Any], steps: int = STEPS) -> torch.Tensor:
    return solve_inner(w["problem"], optim.SGD(lr=LR), steps, w["inner"], w["outer"])["theta"]


def hand_unrolled(w: dict[str, Any], steps: int = STEPS) -> torch.Tensor:
    """dF/dλ through ``steps`` unrolled SGD steps by a plain autograd loop."""
    lam = {"log_decay": w["outer"]["log_decay"].detach().requires_grad_(True)}
    theta = w["inner"]["theta"].clone().requires_grad_(True)
    for _ in range(steps):
        (g,) = torch.autograd.grad(w["inner_loss"]({"theta": theta}, lam, None), theta, create_graph=True)
        theta = theta - LR * g
    (grad,) = torch.autograd.grad(w["outer_loss"]({"theta": theta}, lam, None), lam["log_decay"])
    return grad


def ours_unrolled(w: dict[str, Any], steps: int = STEPS) -> torch.Tensor:
    solver = Unrolled(optim.SGD(lr=LR), steps)
    return solver.hypergrad(w["problem"], w["inner"], w["outer"]).grad["log_decay"]


CONTESTANTS: dict[str, Callable[..., torch.Tensor]] = {
    "hand detached": hand_detached,
    "ours solve_inner": ours_detached,
    "hand unrolled": hand_unrolled,
    "ours Unrolled": ours_unrolled,
}


def race(
    rounds: int = 9,
    steps: int = STEPS,
    clock: Callable[[], float] = time.process_time,
    stat: Callable[[list[float]], float] = statistics.median,
) -> dict[str, float]:
    """Interleaved rounds of every contestant, after one warm-up call each; ``stat`` (median by default,
    ``min`` on a busy machine) of each one's seconds. ``clock``: the process's CPU time by default (with one
    torch thread it is the work done, and it does not count the time other processes of a shared machine
    hold the cores); ``time.perf_counter`` for wall time."""
    w = logistic()
    times: dict[str, list[float]] = {name: [] for name in CONTESTANTS}
    for fn in CONTESTANTS.values():
        fn(w, steps)
    for _ in range(rounds):
        for name, fn in CONTESTANTS.items():
            start = clock()
            fn(w, steps)
            times[name].append(clock() - start)
    return {name: stat(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--wall", action="store_true", help="wall-clock time instead of CPU time")
    parser.add_argument("--min", action="store_true", help="the fastest round instead of the median")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.wall else time.process_time
    med = race(args.rounds, clock=clock, stat=min if args.min else statistics.median)
    what = f"{'wall' if args.wall else 'CPU'} time, {'min' if args.min else 'median'} of {args.rounds} rounds"
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s)"
    )
    print(what)
    for name, sec in med.items():
        print(f"{name:>18}: {sec * 1e3:8.1f} ms")
    print(f"solve_inner / hand loop: {med['ours solve_inner'] / med['hand detached']:.3f}")
    print(f"Unrolled / hand unroll:  {med['ours Unrolled'] / med['hand unrolled']:.3f}")


if __name__ == "__main__":
    main()
