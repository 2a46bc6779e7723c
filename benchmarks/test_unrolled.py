"""Workload 1: the unrolled hypergradient of data re-weighting (20 SGD steps), ours against the peers."""

from __future__ import annotations

import pytest

from ._bench import run_benchmark
from .workloads import UNROLLED, UNROLLED_FLOORS


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


@pytest.mark.parametrize("name", [*UNROLLED, *UNROLLED_FLOORS], ids=_slug)
def test_unrolled(benchmark, unrolled_setup, name, pytestconfig, device):
    run_benchmark(benchmark, unrolled_setup, name, pytestconfig, device)
