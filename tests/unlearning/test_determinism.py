"""Same seed, same numbers on CPU: training, forget sets, methods and the CLI's report."""

import json

import torch

from unlearning import cli, metrics
from unlearning.methods import make
from unlearning.setup import prepare
from unlearning.training import Recipe

RECIPE = Recipe(epochs=4, lr=0.1, batch_size=64)


def _state_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_same_seed_same_models_and_metrics(tmp_path):
    runs = [prepare("digits", "mlp", "random:0.1", seed=5, recipe=RECIPE, use_cache=False) for _ in range(2)]
    assert torch.equal(runs[0].task.forget_index, runs[1].task.forget_index)
    assert _state_equal(runs[0].original, runs[1].original)
    retrains = [r.retrain()[0] for r in runs]
    assert _state_equal(*retrains)
    results = []
    for r in runs:
        torch.manual_seed(0)
        out = make("rl", epochs=1).unlearn(r.original, r.task)
        results.append(metrics.evaluate(out.model, r.task))
    assert results[0] == results[1]
    other = prepare("digits", "mlp", "random:0.1", seed=6, recipe=RECIPE, use_cache=False)
    assert not torch.equal(other.task.forget_index, runs[0].task.forget_index)
    assert not _state_equal(other.original, runs[0].original)


def test_cli_reports_are_identical_for_the_same_seed(tmp_path, capsys):
    reports = []
    for i in range(2):
        out = tmp_path / f"r{i}"
        argv = [
            "unlearn",
            "--method",
            "ga",
            "--epochs",
            "1",
            "--seed",
            "3",
            "--train-epochs",
            "3",
            "--no-cache",
        ]
        assert cli.main([*argv, "--out", str(out)]) == 0
        reports.append(json.loads((out / "metrics.json").read_text()))
    capsys.readouterr()
    for part in ("method", "retrain", "original"):
        for key in ("UA", "RA", "TA", "MIA"):
            assert reports[0][part][key] == reports[1][part][key]
    assert reports[0]["avg_gap"] == reports[1]["avg_gap"]
