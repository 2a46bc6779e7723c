"""The body every benchmark shares: record the set-up's findings, assert agreement, time the call."""

from __future__ import annotations

from typing import Any

import pytest

from .workloads import synchronize


def run_benchmark(benchmark: Any, setup: Any, name: str, config: pytest.Config, device: Any) -> None:
    benchmark.group = setup.group
    benchmark.extra_info.update(setup.info[name])
    # Asserted once, outside the timed function: a race between two different computations is worthless.
    assert name not in setup.failures, setup.failures.get(name)
    fn = setup.fns[name]

    def timed() -> None:
        fn()
        synchronize(device)

    rounds = config.getoption("--bench-rounds")
    per_call = setup.info[name].get("race_median_s")
    if per_call:  # a slow contestant gets fewer rounds (at least 3): ``--bench-budget`` seconds each
        rounds = max(min(rounds, 3), min(rounds, int(config.getoption("--bench-budget") / per_call)))
    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=1)
