"""The engine's per-step overhead on a small float64 logistic problem (benchmarks/overhead.py): ours against
hand-written autograd loops of the same steps, in the same run (the ratio is what docs/benchmarks.md
records). Untimed under ``make test``: the hand loops and ours must agree."""

from __future__ import annotations

import pytest
import torch

from .overhead import CONTESTANTS, logistic

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


@pytest.mark.parametrize("name", list(CONTESTANTS))
def test_overhead(benchmark, name):
    w = logistic()
    fn = CONTESTANTS[name]
    steps = 1000 if benchmark.enabled else QUICK_STEPS
    benchmark.extra_info["steps"] = steps
    benchmark.pedantic(fn, args=(w, steps), rounds=5 if benchmark.enabled else 1, warmup_rounds=1)
