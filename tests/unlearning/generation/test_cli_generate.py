"""``worstforget generate``: --help everywhere, one-line errors with exit 2 naming the flag, an end-to-end
unlearn run on a tiny model (rows for original, Retrain and the method, grid), resume, a refused changed
config, and a tiny stress run."""

from __future__ import annotations

import json

import pytest

from unlearning.cli import main

TINY = [
    "--train-steps",
    "2",
    "--unet-opt",
    "block_out_channels=[8,16]",
    "--unet-opt",
    "norm_num_groups=4",
    "--unet-opt",
    "cross_attention_dim=8",
    "--unet-opt",
    "attention_head_dim=8",
    "--per-class",
    "3",
    "--sample-steps",
    "2",
    "--iterations",
    "1",
    "--batch-size",
    "4",
]


@pytest.mark.parametrize(
    "argv", [["generate"], ["generate", "train"], ["generate", "unlearn"], ["generate", "stress"]]
)
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    assert "usage: worstforget generate" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["unlearn"], "--method is required"),
        (["unlearn", "--method", "nope"], "argument --method: unknown method 'nope'"),
        (["unlearn", "--method", "rl", "--forget", "random:0.1"], "argument --forget: expected class:K"),
        (
            ["unlearn", "--method", "rl", "--hp", "eta=1"],
            "argument --hp: method rl has no hyper-parameter 'eta'",
        ),
        (["unlearn", "--method", "rl", "--lr", "-1"], "hyper-parameter lr must be"),
        (["unlearn", "--method", "rl", "--dataset", "cifar10"], "argument --dataset: unknown dataset"),
        (["unlearn", "--method", "rl", "--device", "tpu"], "argument --device"),
        (["unlearn", "--method", "rl", "--per-class", "1"], "argument --per-class: must be an integer >= 2"),
        (["unlearn", "--method", "my.mod:Nope"], "argument --method: method 'my.mod:Nope': cannot import"),
        (["stress", "--seeds", "a,b"], "argument --seeds: expected comma-separated integers"),
        (["stress", "--methods", ","], "argument --methods: name at least one method"),
    ],
)
def test_errors_are_one_line_exit_2(argv, flag, capsys):
    assert main(["generate", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and flag in err and err.count("\n") == 1


def test_bad_unet_option_and_forget_class(tmp_path, capsys):
    base = ["generate", "unlearn", "--method", "ft", "--out", str(tmp_path / "x"), *TINY]
    assert main([*base, "--unet-opt", "depth=3"]) == 2
    assert "argument --unet-opt: unknown field 'depth'" in capsys.readouterr().err
    assert main([*base, "--forget", "class:12"]) == 2
    assert "argument --forget: class 12 is not in 0..9" in capsys.readouterr().err


def test_list_methods(capsys):
    assert main(["generate", "unlearn", "--list-methods"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("retrain", "salun", "esd", "fmn")) and "sparsity" in out


def test_unlearn_writes_rows_grid_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["generate", "unlearn", "--method", "rl", "--forget", "class:3", "--out", str(out), *TINY]
    assert main(argv) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert list(report["rows"]) == ["original", "retrain", "rl"]
    assert report["config"]["forget"] == [3] and report["config"]["hparams"]["iterations"] == 1
    for row in report["rows"].values():
        assert 0.0 <= row["ua"] <= 1.0 and 0.0 <= row["remain_acc"] <= 1.0 and row["fid"] >= 0
    assert (out / "grid.png").stat().st_size > 0 and "| rl |" in (out / "metrics.md").read_text()
    capsys.readouterr()
    assert main(argv) == 0  # resume: every row reused, identical numbers
    assert capsys.readouterr().err.count("reused") == 3
    assert json.loads((out / "metrics.json").read_text())["rows"] == report["rows"]
    assert main([*argv, "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "argument --out:" in err and "differs in seed" in err


def test_stress_tiny(tmp_path, capsys):
    out = tmp_path / "stress"
    argv = ["generate", "stress", "--methods", "ga,rl", "--classes", "1,2", "--search", "--search-steps", "1"]
    assert main([*argv, "--out", str(out), *TINY]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["cells"]) == {"ga/0", "rl/0"}
    for cell in report["cells"].values():
        assert cell["random"] in (1, 2) and cell["worst"] in (1, 2) and cell["search"]["found"] in range(10)
    summary = report["summary"]
    assert summary["search_agreement"]["total"] == 2 and summary["search_agreement_ua"]["total"] == 2
    for name in ("ga", "rl"):  # one seed: the class with the lowest UA has the lowest UA of the three
        row, cell = summary[name], report["cells"][f"{name}/0"]
        assert row["worst_by_ua_ua"] == min(r["ua"] for r in cell["rows"])
        assert row["worst_by_ua_ua"] <= min(row["random_ua"], row["worst_ua"])
    text = (out / "report.md").read_text()
    assert (out / "stress.png").exists()
    assert "| rl | worst by UA |" in text and "| ga | random class |" in text
    assert "worst by forget loss" in capsys.readouterr().out
