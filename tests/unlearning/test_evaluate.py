"""``worstforget evaluate`` and `unlearning.evaluate.evaluate_methods`: Retrain and methods on a given forget
set (a worst-case search result), against Retrain; a custom method by ``package.module:Class``; a forget file
made for other data, a missing file or a file that is not one is a one-line error with exit status 2."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import pytest

from unlearning import cli, metrics
from unlearning.evaluate import COLUMNS, build_methods, default_methods, evaluate_methods
from unlearning.methods import FT, REGISTRY
from unlearning.worst_case import search


@dataclass
class MyFT(FT):
    """A user's method, named by ``tests.unlearning.test_evaluate:MyFT``."""

    name: ClassVar[str] = "my_ft"


def run_cli(capsys, *argv):
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def found(digits_random, tmp_path_factory):
    """A (short) worst-case search result for FT on digits, saved as ``worstforget search`` does."""
    result = search(digits_random, "ft", upper_steps=3, inner_steps=3, progress=False)
    return result, result.save(tmp_path_factory.mktemp("found") / "worst_case.json")


# --------------------------------------------------------------------------------------------- the API
def test_build_methods_checks_names_and_hparams():
    built = build_methods(["FT", "tests.unlearning.test_evaluate:MyFT"], {"my_ft": {"lr": 0.02}})
    assert [m.name for m in built] == ["ft", "my_ft"] and built[1].lr == 0.02
    assert default_methods() == [n for n in REGISTRY if n != "retrain"]
    for methods, hp, match in (
        ([], None, "empty"),
        (["retrain"], None, "reference"),
        (["ft", "ft"], None, "share the name"),
        (["original"], None, "unknown unlearning method"),
        (["nope"], None, "unknown"),
        (["ft"], {"ga": {"lr": 0.1}}, "not among the methods"),
        (["ft"], {"ft": {"nope": 1}}, "nope"),
    ):
        with pytest.raises(ValueError, match=match):
            build_methods(methods, hp)


# --------------------------------------------------------------------------------------------- the CLI
def test_evaluate_help(capsys):
    code, out, _ = run_cli(capsys, "evaluate", "--help")
    assert code == 0 and "Example: worstforget evaluate --forget indices:" in out
    for flag in ("--forget", "--methods", "--hp", "--dataset", "--model", "--seed", "--device", "--out"):
        assert flag in out
    assert "--data-dir" in out and "--cache-dir" in out
    assert "unlearning.commands.evaluate" in cli.COMMANDS


def test_evaluate_a_search_result(tmp_path, capsys, found, cache_dir):
    """Every row against the same Retrain; a method's row equals ``worstforget unlearn`` with that seed; a
    custom method by spec, with ``--hp`` applied; both report files written."""
    result, path = found
    out = tmp_path / "ev"
    code, stdout, err = run_cli(
        capsys, "evaluate", "--forget", f"indices:{path}", "--seed", 0, "--out", out,
        "--methods", "ft,tests.unlearning.test_evaluate:MyFT", "--hp", "my_ft.lr=0.02",
    )  # fmt: skip
    assert code == 0, err
    assert "Avg. Gap" in stdout and "my_ft" in stdout
    report = json.loads((out / "evaluate.json").read_text())
    assert "| my_ft |" in (out / "evaluate.md").read_text()
    rows = report["rows"]
    assert list(rows) == ["original", "retrain", "ft", "my_ft"]
    assert all(set(COLUMNS) <= set(row) for row in rows.values())
    assert rows["retrain"]["avg_gap"] == 0.0
    for name in ("original", "ft", "my_ft"):
        assert rows[name]["avg_gap"] == pytest.approx(metrics.avg_gap(rows[name], rows["retrain"]))
    assert (
        report["config"]["hparams"]["my_ft"]["lr"] == 0.02 and report["config"]["hparams"]["ft"]["lr"] != 0.02
    )
    assert report["config"]["sizes"]["forget"] == result.indices.numel()
    assert report["forget_set"]["method"] == "ft" and report["forget_set"]["mode"] == "first_order"

    code, _, err = run_cli(
        capsys,
        "unlearn",
        "--method",
        "ft",
        "--forget",
        f"indices:{path}",
        "--seed",
        0,
        "--out",
        tmp_path / "u",
    )
    assert code == 0, err
    single = json.loads((tmp_path / "u" / "metrics.json").read_text())
    for key in ("UA", "RA", "TA", "MIA"):
        assert rows["ft"][key] == pytest.approx(single["method"][key])
        assert rows["retrain"][key] == pytest.approx(single["retrain"][key])


def test_evaluate_methods_matches_the_command_rows(digits_random):
    """The shared function on a prepared experiment: the reference and original rows, one per method."""
    report = evaluate_methods(digits_random, ["ga"], {"ga": {"lr": 1e-4}}, seed=0)
    assert list(report["rows"]) == ["original", "retrain", "ga"] and report["methods"] == ["ga"]
    assert report["hparams"]["ga"]["lr"] == 1e-4
    ga = report["rows"]["ga"]
    assert ga["avg_gap"] == pytest.approx(metrics.avg_gap(ga, report["rows"]["retrain"]))
    assert 0 <= ga["UA"] <= 100 and ga["seconds"] > 0


@pytest.mark.parametrize("command", ["evaluate", "unlearn"])
@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--seed", "1"], "pass --seed 0"),  # another split
        (["--dataset", "synthetic"], "pass --dataset digits --seed 0"),  # another dataset
        (["--data-opt", "test_fraction=0.3"], "pass --dataset digits --seed 0"),  # another digits pool
    ],
)
def test_a_forget_file_for_other_data_is_refused(tmp_path, capsys, found, command, argv, needle):
    _, path = found
    method = ["--methods", "ft"] if command == "evaluate" else ["--method", "ft"]
    code, _, err = run_cli(
        capsys, command, *method, "--forget", f"indices:{path}", "--out", tmp_path / "x", *argv
    )
    assert code == 2
    assert err.startswith("error: argument --forget: ") and err.count("\n") == 1 and "Traceback" not in err
    assert needle in err
    assert not (tmp_path / "x").exists()


def _bad_files(tmp_path):
    (tmp_path / "object.json").write_text('{"weights": [1, 2]}')
    (tmp_path / "words.txt").write_text("hello world")
    (tmp_path / "broken.json").write_text("{oops")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    return {
        "missing": (tmp_path / "missing.json", "does not exist"),
        "object": (tmp_path / "object.json", "not a search result or indices file"),
        "words": (tmp_path / "words.txt", "is not an indices file"),
        "broken": (tmp_path / "broken.json", "is not an indices file"),
        "image": (tmp_path / "image.png", "must end in .json"),
    }


@pytest.mark.parametrize("which", ["missing", "object", "words", "broken", "image"])
def test_a_forget_file_that_is_not_one_is_refused(tmp_path, capsys, which):
    path, needle = _bad_files(tmp_path)[which]
    code, _, err = run_cli(capsys, "evaluate", "--forget", f"indices:{path}", "--out", tmp_path / "x")
    assert code == 2
    assert err.startswith("error: argument --forget: ") and err.count("\n") == 1
    assert needle in err


@pytest.mark.parametrize(
    "argv,flag",
    [
        ([], "--forget"),  # required
        (["--forget", "random:0.1", "--methods", "nope"], "--methods"),
        (["--forget", "random:0.1", "--methods", "ft,retrain"], "--methods"),
        (["--forget", "random:0.1", "--methods", "ft,ft"], "--methods"),
        (["--forget", "random:0.1", "--methods", "no.such.module:X"], "--methods"),
        (["--forget", "random:0.1", "--methods", " , "], "--methods"),
        (["--forget", "random:0.1", "--methods", "ft", "--hp", "ga.lr=0.1"], "--hp"),
        (["--forget", "random:0.1", "--methods", "ft", "--hp", "ft.nope=1"], "--hp"),
        (["--forget", "random:0.1", "--methods", "ft", "--hp", "ftlr=1"], "--hp"),
        (["--forget", "random:0.1", "--methods", "ft", "--hp", "ft.lr=abc"], "--hp"),
        (["--forget", "random:0.1", "--methods", "ft", "--hp", "ft.lr=-1"], "--hp"),
        (["--forget", "random:1.5"], "--forget"),
        (["--forget", "random:0.1", "--dataset", "imagenet"], "--dataset"),
        (["--forget", "random:0.1", "--threads", "0"], "--threads"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, flag):
    code, _, err = run_cli(capsys, "evaluate", "--out", tmp_path / "x", *argv)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert flag in err
    assert not (tmp_path / "x").exists()
