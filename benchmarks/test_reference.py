"""Workloads 4-5: ridge at inner dim 10², 10³, 10⁴ and weighted ridge (data re-weighting), closed-form ∇F.

Every solver of ours (Implicit CG / Neumann / Direct, Unrolled full / checkpointed / truncated, Forward,
FirstOrder) against torchopt custom_root and MetaSGD and higher; each row also reports its error against the
closed form. Quick mode (``make test``) runs the smallest ridge and the weighted ridge only.
"""

from __future__ import annotations

import pytest

from ._bench import run_benchmark
from .conftest import QUICK_RIDGE_SIZES, quick, reference_names, reference_workloads
from .test_unrolled import _slug

CASES = [(key, name) for key in reference_workloads() for name in reference_names(key)]


@pytest.mark.parametrize(("key", "name"), CASES, ids=[f"{k}-{_slug(n)}" for k, n in CASES])
def test_reference(benchmark, reference_setups, key, name, pytestconfig, device):
    if quick(pytestconfig) and key.startswith("ridge-") and int(key.split("-")[1]) not in QUICK_RIDGE_SIZES:
        pytest.skip("quick mode (--benchmark-disable): the smallest ridge only")
    run_benchmark(benchmark, reference_setups(key), name, pytestconfig, device)
