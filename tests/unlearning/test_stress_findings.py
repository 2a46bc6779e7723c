"""The paper's two findings, computed end to end by the stress test on digits / MLP, 10% data-wise forgetting,
3 seeds, every approximate method (a shorter search than the default: 8 upper steps)."""

from __future__ import annotations

import pytest

from unlearning import stress, stress_test


@pytest.mark.slow
def test_worst_case_sets_are_harder_than_random_ones(cache_dir):
    rep = stress_test(
        dataset="digits",
        model="mlp",
        forget_fraction=0.1,
        seeds=[0, 1, 2],
        upper_steps=8,
        cache_dir=cache_dir,
    )
    names = list(stress.DEFAULT_METHODS)
    assert [m["name"] for m in rep["config"]["methods"]] == names
    assert len(rep["results"]) == 3 * 2 * (2 + len(names))
    summary = rep["summary"]
    # 1. Retrain forgets the worst-case sets less: its mean UA there is below its mean UA on random sets.
    assert summary["worst"]["retrain"]["UA"][0] < summary["random"]["retrain"]["UA"][0]
    # 2. The approximate methods are further from Retrain on the worst-case sets (mean over the methods of
    #    the mean Avg. Gap over seeds).
    gap = {s: sum(summary[s][n]["avg_gap"][0] for n in names) / len(names) for s in stress.SELECTIONS}
    assert gap["worst"] > gap["random"]
