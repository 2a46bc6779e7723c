"""CLI errors found in review: each names the flag it is about, exits 2, and comes before any training."""

from __future__ import annotations

import pytest

from unlearning.cli import main


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--lr", "-1"], "--lr"),
        (["--epochs", "-3"], "--epochs"),
        (["--hp", "lr=-2"], "--hp"),
        (["--train-lr", "-1"], "--train-lr"),
    ],
)
def test_bad_values_name_their_flag_before_training(tmp_path, capsys, monkeypatch, argv, flag):
    cache = tmp_path / "cache"
    monkeypatch.setenv("WORSTFORGET_CACHE", str(cache))
    assert main(["unlearn", "--method", "ft", "--out", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: argument ") and flag in err.split(":")[1] and "\n" not in err
    assert not cache.exists() or not any(cache.rglob("*.pt"))  # nothing was trained


def test_a_diverging_method_is_a_one_line_error(tmp_path, capsys):
    assert main(["unlearn", "--method", "ga", "--lr", "1e6", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "lower the learning rate" in err and "\n" not in err
    assert not (tmp_path / "metrics.json").exists()


def test_equivalent_forget_specs_share_the_retrain_model(tmp_path, capsys):
    for spec in ("random:0.1", "random:0.10"):
        assert (
            main(["unlearn", "--method", "ga", "--epochs", "1", "--forget", spec, "--out", str(tmp_path)])
            == 0
        )
    import json

    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["config"]["cached"]["retrain"] is True
