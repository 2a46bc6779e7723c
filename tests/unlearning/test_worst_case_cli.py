"""``worstforget search``: a run writes the report files, its JSON round-trips through
``worstforget unlearn --forget indices:FILE``, and bad inputs are one-line errors with exit status 2."""

from __future__ import annotations

import json

import pytest

from unlearning import cli


def run_cli(capsys, *argv):
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_search_help_has_an_example(capsys):
    code, out, _ = run_cli(capsys, "search", "--help")
    assert code == 0
    assert "Example: worstforget search" in out
    flags = ("--budget", "--hypergrad", "--upper-steps", "--lower-steps", "--proximal", "--no-warm-start")
    for flag in (*flags, "--classwise", "--reverse", "--out", "--device", "--data-opt"):
        assert flag in out
    assert "unlearning.commands.search" in cli.COMMANDS


def test_search_run_and_round_trip_through_unlearn(tmp_path, capsys, digits_random):
    out_dir = tmp_path / "wc"
    code, out, err = run_cli(
        capsys,
        "search",
        "--dataset", "digits", "--model", "mlp", "--method", "ft", "--budget", "0.1",
        "--hypergrad", "first_order", "--upper-steps", "5", "--seed", "0", "--out", str(out_dir),
    )  # fmt: skip
    assert code == 0, err
    assert "worst-case set" in out and "random set" in out
    for name in ("worst_case.json", "worst_case.md", "worst_case.png"):
        assert (out_dir / name).stat().st_size > 0
    report = json.loads((out_dir / "worst_case.json").read_text())
    assert len(report["indices"]) == report["size"] == 130
    assert report["config"]["method"] == "ft" and len(report["history"]) == 5
    comp = report["comparison"]
    assert comp["found"]["forget_loss_original"] < comp["random"]["forget_loss_original"]
    assert "Reproduce: `worstforget search" in (out_dir / "worst_case.md").read_text()

    run_dir = tmp_path / "unlearn"
    code, _, err = run_cli(
        capsys,
        "unlearn", "--method", "ft", "--epochs", "1", "--seed", "0",
        "--forget", f"indices:{out_dir / 'worst_case.json'}", "--out", str(run_dir),
    )  # fmt: skip
    assert code == 0, err
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["config"]["sizes"]["forget"] == 130


def test_search_classwise_reverse_without_comparison(tmp_path, capsys, digits_random):
    out_dir = tmp_path / "cw"
    code, out, err = run_cli(
        capsys,
        "search", "--classwise", "--reverse", "--budget", "1", "--upper-steps", "2", "--lower-steps", "2",
        "--no-compare", "--out", str(out_dir),
    )  # fmt: skip
    assert code == 0, err
    assert "best-case" in out
    report = json.loads((out_dir / "worst_case.json").read_text())
    assert len(report["classes"]) == 1 and report["comparison"] is None


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["--budget", "0"], "--budget"),
        (["--budget", "1.5"], "--budget"),
        (["--budget", "-0.2"], "--budget"),
        (["--budget", "abc"], "--budget"),
        (["--budget", "1295"], "--budget"),  # the whole pool
        (["--budget", "1.0"], "--budget"),  # a fraction that selects everything
        (["--budget", "2000"], "--budget"),  # more than the pool
        (["--budget", "10", "--classwise"], "--budget"),  # every class
        (["--method", "nope"], "--method"),
        (["--method", "iu"], "--method"),  # no lower level
        (["--hypergrad", "newton"], "--hypergrad"),
        (["--upper-steps", "0"], "--upper-steps"),
        (["--lower-steps", "0"], "--lower-steps"),
        (["--inner-steps", "5"], "--inner-steps"),  # renamed --lower-steps: one name only
        (["--hypergrad", "implicit", "--proximal", "-1"], "--proximal"),
        (["--upper-lr", "-1"], "--upper-lr"),
        (["--dataset", "imagenet"], "--dataset"),
        (["--device", "tpu"], "--device"),
        (["--exhaustive"], "--exhaustive"),  # needs --classwise
        (["--final-rule", "last"], "--final-rule"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, digits_random, argv, flag):
    code, _, err = run_cli(capsys, "search", "--out", str(tmp_path / "x"), "--upper-steps", "1", *argv)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert flag in err
    assert not (tmp_path / "x" / "worst_case.json").exists()


def test_note_when_the_search_ends_above_its_start():
    from unlearning.commands.search import _note

    assert _note({"objective": {"initial": 2.0, "final": 1.0}}) is None
    assert "--upper-lr" in _note({"objective": {"initial": 1.0, "final": 2.0}})


def test_search_results_carry_their_split_and_class_into_unlearn(tmp_path, capsys):
    """A class-wise result read by ``--forget indices:FILE`` is a class-wise task (the test set drops the
    class), and a result is refused under another split seed (its positions mean other examples)."""
    from unlearning.cli import main
    from unlearning.splits import forget_class_of

    out = tmp_path / "cw"
    argv = [
        "search",
        "--classwise",
        "--budget",
        "1",
        "--upper-steps",
        "2",
        "--lower-steps",
        "2",
        "--no-compare",
    ]
    assert main([*argv, "--out", str(out)]) == 0
    result = out / "worst_case.json"
    chosen = json.loads(result.read_text())["classes"]
    assert forget_class_of(f"indices:{result}") == chosen[0]
    capsys.readouterr()
    assert (
        main(
            [
                "unlearn",
                "--method",
                "ft",
                "--seed",
                "1",
                "--forget",
                f"indices:{result}",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "--forget" in err and "split seed 0" in err


def test_exhaustive_classwise_run_writes_per_class(tmp_path, capsys, digits_random):
    """``--classwise --exhaustive``: F at every class in the JSON (``per_class``) and the markdown, the lowest
    chosen; ``--search-method`` names the method like ``--method``."""
    out_dir = tmp_path / "ex"
    code, out, err = run_cli(
        capsys,
        "search", "--search-method", "ft", "--classwise", "--exhaustive", "--budget", "1",
        "--lower-steps", "2", "--no-compare", "--seed", "0", "--out", str(out_dir),
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((out_dir / "worst_case.json").read_text())
    assert sorted(report["per_class"], key=int) == [str(c) for c in range(10)]
    best = min(report["per_class"], key=report["per_class"].get)
    assert report["classes"] == [int(best)] and report["config"]["final_rule"] == "exhaustive"
    assert report["config"]["method"] == "ft" and report["history"] == []
    md = (out_dir / "worst_case.md").read_text()
    assert "Exact search: F at every set of classes" in md and "--classwise --exhaustive" in md
