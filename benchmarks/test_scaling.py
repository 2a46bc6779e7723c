"""Scaling sweeps (time and memory against T, parameter count, outer dimension) and the issue-5 targets.

Each test runs its sweep once inside pytest-benchmark (one round: the timing that matters is inside, as
interleaved races per point) and stores the rows in ``extra_info``; `benchmarks.report` draws and tabulates
them. Quick mode (``make test``) runs every sweep at its two smallest, tiny points, untimed.
"""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import quick
from .reference import scaled_ridge
from .scaling import sweep_outer, sweep_params, sweep_T, target_checkpoint, target_implicit, target_warm_start

SWEEP_BUDGET_S = 20.0  # interleaved seconds per sweep point at most
TARGET_BUDGET_S = 40.0


def _run(benchmark: Any, group: str, kind: str, fn: Any) -> dict[str, Any]:
    benchmark.group = group
    box: dict[str, Any] = {}
    benchmark.pedantic(lambda: box.update(fn()), rounds=1, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(kind=kind, **box)
    return box


def _opts(config: pytest.Config) -> tuple[bool, int]:
    return not quick(config), config.getoption("--race-rounds")


def test_scaling_T(benchmark, pytestconfig, device):
    timed, rounds = _opts(pytestconfig)
    Ts = (25, 50, 100, 200) if timed else (2, 4)
    out = _run(
        benchmark,
        "scaling: unroll length T (full, truncated, checkpointed)",
        "sweep_T",
        lambda: sweep_T(Ts, device, timed, rounds, SWEEP_BUDGET_S),
    )
    for row in out["rows"]:  # checkpointing must not change the gradient
        assert row["checkpoint_rel_diff"] <= 1e-5, row


def test_scaling_params(benchmark, pytestconfig, device):
    timed, rounds = _opts(pytestconfig)
    hiddens = (32, 128, 512, 2048) if timed else (16,)
    _run(
        benchmark,
        "scaling: parameter count (MLP width)",
        "sweep_params",
        lambda: sweep_params(hiddens, device, timed, rounds, SWEEP_BUDGET_S),
    )


def test_scaling_outer(benchmark, pytestconfig, device):
    timed, rounds = _opts(pytestconfig)
    if timed:
        fn = lambda: sweep_outer((1, 4, 16, 64, 256, 1000), device, True, rounds, SWEEP_BUDGET_S)  # noqa: E731
    else:
        fn = lambda: sweep_outer((1, 4), device, False, rounds, SWEEP_BUDGET_S, p=100, T=5)  # noqa: E731
    _run(benchmark, "scaling: number of outer variables", "sweep_outer", fn)


def test_target_a_checkpoint(benchmark, pytestconfig, device):
    timed, rounds = _opts(pytestconfig)
    out = _run(
        benchmark,
        "targets: (a) checkpointed unrolling",
        "target",
        lambda: target_checkpoint(200 if timed else 4, device, timed, rounds, TARGET_BUDGET_S),
    )
    assert out["grad_rel_diff"] <= 1e-5, out["grad_rel_diff"]


def test_target_b_implicit(benchmark, pytestconfig, device):
    timed, rounds = _opts(pytestconfig)
    r = scaled_ridge(1000) if timed else scaled_ridge(100, T=10)
    out = _run(
        benchmark,
        "targets: (b) implicit CG against torchopt and against unrolling",
        "target",
        lambda: target_implicit(r, device, timed, rounds, TARGET_BUDGET_S),
    )
    same = out["same_accuracy"]  # same S and K: ours and torchopt's CG give the same hypergradient
    assert (
        abs(same["ours_rel_error"] - same["torchopt_rel_error"]) <= 1e-6 + 1e-3 * same["torchopt_rel_error"]
    )


def test_target_c_warm_start(benchmark, pytestconfig, device):
    timed, _ = _opts(pytestconfig)
    out = _run(
        benchmark,
        "targets: (c) warm-started implicit solves in an outer loop",
        "target",
        lambda: target_warm_start(30 if timed else 3, 20, timed),
    )
    assert out["progress_gap"] <= 1e-3, out["progress_gap"]
