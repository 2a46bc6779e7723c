"""The engine's per-step overhead on a small float64 logistic problem (benchmarks/overhead.py): ours against
hand-written autograd loops of the same steps, interleaved in the same run; the ratios go to
docs/benchmarks.md ("Per-step overhead", via ``extra_info["kind"] = "overhead"``). Untimed under
``make test``: the hand loops and ours must agree (bit for bit without a graph)."""

from __future__ import annotations

import torch

from .overhead import CONTESTANTS, STEPS, logistic, race

QUICK_STEPS = 50


def test_hand_loops_and_ours_agree():
    w = logistic()
    torch.testing.assert_close(
        CONTESTANTS["ours solve_inner"](w, QUICK_STEPS),
        CONTESTANTS["hand detached"](w, QUICK_STEPS),
        rtol=0,
        atol=0,
    )
    torch.testing.assert_close(
        CONTESTANTS["ours Unrolled"](w, QUICK_STEPS),
        CONTESTANTS["hand unrolled"](w, QUICK_STEPS),
        rtol=1e-12,
        atol=1e-15,
    )


def test_overhead(benchmark):
    """Interleaved medians of the four contestants at 1,000 steps (timed runs only) and their ratios."""
    w = logistic()
    if benchmark.enabled:
        med = race(rounds=9, steps=STEPS)
        benchmark.extra_info.update(
            kind="overhead",
            steps=STEPS,
            median_s=med,
            solve_inner_ratio=med["ours solve_inner"] / med["hand detached"],
            unrolled_ratio=med["ours Unrolled"] / med["hand unrolled"],
        )
    benchmark.pedantic(CONTESTANTS["ours solve_inner"], args=(w, QUICK_STEPS), rounds=1, iterations=1)
