"""Behaviour on digits with the MLP: SalUn forgets a class, Retrain a random 10%; every method runs."""

from __future__ import annotations

import pytest
import torch

from unlearning.methods import REGISTRY, make
from unlearning.metrics import evaluate
from unlearning.setup import prepare


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("methods-cache")


@pytest.fixture(scope="module")
def classwise(cache_dir):
    return prepare(dataset="digits", model="mlp", forget="class:3", seed=0, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def random10(cache_dir):
    return prepare(dataset="digits", model="mlp", forget="random:0.1", seed=0, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def runs(random10):
    """Every method with its defaults on the 10% random forget set (run once, checked by several tests)."""
    return {name: make(name).unlearn(random10.original, random10.task) for name in REGISTRY}


def test_salun_forgets_a_class(classwise):
    task = classwise.task
    assert task.forget_class == 3 and not (task.test.y == 3).any()  # TA is on the other classes
    original = evaluate(classwise.original, task)
    out = make("salun").unlearn(classwise.original, task)
    got = evaluate(out.model, task)
    assert got["UA"] >= 99.0
    assert got["MIA"] >= 95.0
    assert abs(got["TA"] - original["TA"]) <= 3.0
    assert out.info["mask_fraction"] == pytest.approx(0.5, abs=1e-3)


def test_retrain_forgets_random_ten_percent(random10, runs):
    original = evaluate(random10.original, random10.task)
    retrained = evaluate(runs["retrain"].model, random10.task)
    assert retrained["UA"] > original["UA"]


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_method_runs_end_to_end_with_defaults(name, random10, runs):
    out = runs[name]
    task = random10.task
    assert out.seconds > 0 and out.info["method"] == name
    metrics = evaluate(out.model, task)
    assert set(metrics) == {"UA", "RA", "TA", "MIA"}
    assert all(0.0 <= v <= 100.0 for v in metrics.values())
    logits = out.model(task.test.x[:8])
    assert logits.shape == (8, task.num_classes) and torch.isfinite(logits).all()
    # defaults are sensible: the model still classifies the retained data
    assert metrics["RA"] > 80.0, metrics
