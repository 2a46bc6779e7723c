"""Workload 1 at a larger size: MLP 64-512-10, T = 100 SGD steps, ours against the peers."""

from __future__ import annotations

import pytest

from ._bench import run_benchmark
from .test_unrolled import _slug
from .workloads import UNROLLED, UNROLLED_FLOORS


@pytest.mark.parametrize("name", [*UNROLLED, *UNROLLED_FLOORS], ids=_slug)
def test_unrolled_large(benchmark, unrolled_large_setup, name, pytestconfig, device):
    run_benchmark(benchmark, unrolled_large_setup, name, pytestconfig, device)
