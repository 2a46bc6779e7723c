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

    benchmark.pedantic(timed, rounds=config.getoption("--bench-rounds"), iterations=1, warmup_rounds=1)
