"""Workload 2: implicit hypergradients on the same problem (inner solved once), ours against torchopt."""

from __future__ import annotations

import pytest

from ._bench import run_benchmark
from .test_unrolled import _slug
from .workloads import IMPLICIT


@pytest.mark.parametrize("name", list(IMPLICIT), ids=_slug)
def test_implicit(benchmark, implicit_setup, name, pytestconfig, device):
    run_benchmark(benchmark, implicit_setup, name, pytestconfig, device)
