"""The worst-case search's time per upper step by hypergradient mode (and the lower level's share), and each
unlearning method's run time relative to Retrain (RTE ratio); digits / MLP."""

from __future__ import annotations

import pytest

from .conftest import quick
from .unlearn import MODES, prepared, search_timing, unlearning_rte


@pytest.fixture(scope="session")
def digits_mlp(device):
    return prepared(device)


@pytest.mark.parametrize("mode", MODES)
def test_worst_case_search(benchmark, digits_mlp, mode, pytestconfig):
    timed = not quick(pytestconfig)
    box = {}
    benchmark.group = "worst-case search: seconds per upper step by hypergradient mode (digits / MLP, ft)"
    benchmark.pedantic(
        lambda: box.update(search_timing(digits_mlp, mode, 10 if timed else 2, 10)),
        rounds=1,
        iterations=1,
        warmup_rounds=0,
    )
    benchmark.extra_info.update(kind="search", **box)
    assert box["upper_steps"] >= 1


def test_unlearning_rte(benchmark, digits_mlp, pytestconfig):
    timed = not quick(pytestconfig)
    box = {}
    benchmark.group = "unlearning: run time relative to Retrain (RTE ratio), digits / MLP"
    benchmark.pedantic(
        lambda: box.update(unlearning_rte(digits_mlp, 3 if timed else 1)),
        rounds=1,
        iterations=1,
        warmup_rounds=0,
    )
    benchmark.extra_info.update(kind="rte", **box)
    assert box["methods"]["retrain"]["rte_ratio"] == 1.0
