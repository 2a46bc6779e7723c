"""Workload 3: a learned inner learning rate (one outer entry, T = LR_STEPS), reverse against forward mode."""

from __future__ import annotations

import pytest

from ._bench import run_benchmark
from .test_unrolled import _slug
from .workloads import LEARNED_LR


@pytest.mark.parametrize("name", list(LEARNED_LR), ids=_slug)
def test_learned_lr(benchmark, learned_lr_setup, name, pytestconfig, device):
    run_benchmark(benchmark, learned_lr_setup, name, pytestconfig, device)
