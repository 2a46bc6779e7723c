"""``worstforget hyperclean``: bi-level hyper-cleaning finds mislabelled examples and writes its reports."""

from __future__ import annotations

import json

import pytest

from unlearning.cli import main


def test_hyperclean_finds_mislabelled_examples(tmp_path, capsys):
    assert (
        main(["hyperclean", "--out", str(tmp_path), "--steps", "15", "--inner-steps", "30", "--seed", "1"])
        == 0
    )
    report = json.loads((tmp_path / "hyperclean.json").read_text())
    assert report["corrupted_pct_in_train"] > 30
    # a correct hypergradient moves weight off the flipped labels
    assert report["corrupted_pct_in_kept"] < report["corrupted_pct_in_train"] / 3
    assert report["mean_weight"]["clean"] > 2 * report["mean_weight"]["corrupted"]
    acc = report["test_accuracy"]
    assert acc["kept_by_bilevel"] > acc["all_examples"] + 3
    assert len(report["curve"]) == 15 and report["curve"][-1]["val_loss"] < report["curve"][0]["val_loss"]
    assert (tmp_path / "hyperclean.png").stat().st_size > 10_000
    assert "hyper-cleaning" in (tmp_path / "hyperclean.md").read_text()
    assert "test accuracy" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, flag",
    [(["--noise", "1.5"], "--noise"), (["--steps", "0"], "--steps"), (["--device", "tpu"], "--device")],
)
def test_hyperclean_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, flag):
    assert main(["hyperclean", "--out", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and flag in err and "\n" not in err
