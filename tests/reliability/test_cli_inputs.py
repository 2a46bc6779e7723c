"""Bad command-line inputs end in one line naming the flag (or file) and the fix, exit 2, before any
compute; nothing is silently accepted (issue 14). In-process `cli.main` (the entry point's code)."""

from __future__ import annotations

import os
import sys
import textwrap

import pytest

from tests.reliability.campaign import USER
from unlearning import cli
from unlearning.commands import unlearn as unlearn_cmd


def _main(capsys, *argv):
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(code, err, *needles):
    lines = [line for line in err.strip().splitlines() if "CacheWarning" not in line]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    assert all(n in lines[0] for n in needles), (needles, err)


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["--lr", "0.01", "--hp", "lr=0.02"], ["argument --lr:", "also given by --hp lr=0.02"]),
        (["--epochs", "3", "--hp", "epochs=4"], ["argument --epochs:", "give it once"]),
        (["--epochs", "0"], ["argument --epochs:", "original model unchanged"]),
        (["--hp", "epochs=0"], ["argument --hp epochs:", "epochs >= 1"]),
        (["--model-opt", "hidden=[-5]"], ["argument --model-opt:", "hidden", "integers >= 1"]),
        (["--model-opt", "hidden=5"], ["argument --model-opt:", "e.g. hidden=[256,128]"]),
        (["--model-opt", "width=4"], ["argument --model-opt:", "no option 'width'"]),
        (["--model", "cnn", "--model-opt", "channels=[8]"], ["argument --model-opt:", "channels"]),
        (["--seed", "99999999999999999999"], ["argument --seed:", "[0, 2^32)"]),
        (["--seed", "-1"], ["argument --seed:"]),
        (["--forget", "class:12"], ["argument --forget:"]),
        (["--dataset", "synthetic", "--data-opt", "n=5"], ["argument --data-opt:"]),
    ],
)
def test_unlearn_bad_values_name_their_flag(tmp_path, capsys, argv, needles):
    code, _, err = _main(capsys, "unlearn", "--method", "ft", *argv, "--out", str(tmp_path / "o"))
    _one_line(code, err, *needles)
    assert not (tmp_path / "o").exists()


def test_prepare_errors_carry_the_field_they_are_about():
    """(moved from tests/unlearning/test_cli.py::test_flag_mapping, which tested the keyword guesser this
    replaces) the flag comes from the field the error was raised for, not from words in its message."""
    from unlearning.setup import prepare

    for kwargs, flag in (({"forget": "class:12"}, "--forget"), ({"dataset_opts": {"n": 5}}, "--data-opt")):
        dataset = "synthetic" if "dataset_opts" in kwargs else "digits"
        with pytest.raises(ValueError) as info:
            prepare(dataset, "mlp", **{"forget": "random:0.1", **kwargs})
        assert unlearn_cmd._flag_of(info.value) == flag


def _outs(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    return [(blocker, "is a file"), (blocker / "sub", "lies under")]


@pytest.mark.parametrize("command", ["unlearn", "stress", "search", "evaluate", "hyperclean", "bench"])
def test_an_unwritable_out_is_refused_before_any_compute(tmp_path, capsys, cache_dir, command):
    extra = {
        "unlearn": ["--method", "ft"],
        "search": ["--method", "ga"],
        "evaluate": ["--methods", "ga", "--forget", "random:0.1"],
    }
    for out, words in _outs(tmp_path):
        code, _, err = _main(capsys, command, *extra.get(command, []), "--out", str(out))
        _one_line(code, err, "argument --out:", str(out), words)
    assert not list(cache_dir.glob("**/*.tmp"))


def test_a_read_only_parent_is_refused(tmp_path, capsys):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        code, _, err = _main(capsys, "unlearn", "--method", "ft", "--out", str(locked / "o"))
        _one_line(code, err, "argument --out:", "not writable")
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize(
    "module, attr, needles",
    [
        ("syntax", "M", ["argument --methods:", "SyntaxError", "line 1"]),
        ("raises", "M", ["argument --methods:", "RuntimeError: no GPU here"]),
        ("factory", "Make", ["argument --methods:", "KeyError"]),
        ("returns_none", "M", ["method mine:", "returned NoneType", "Unlearned"]),
        ("other_arch", "M", ["method mine:", "another architecture"]),
        ("fails", "M", ["method mine:", "raised KeyError", "fix the method"]),
    ],
)
def test_a_user_method_that_fails_is_one_line(tmp_path, capsys, monkeypatch, module, attr, needles):
    name = f"user_{module}_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER[module]))
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = [
        "stress",
        "--methods",
        f"{name}:{attr}",
        "--seeds",
        "0",
        "--upper-steps",
        "1",
        "--lower-steps",
        "1",
    ]
    code, _, err = _main(capsys, *argv, "--out", str(tmp_path / "o"))
    sys.modules.pop(name, None)
    _one_line(code, err, *needles)


@pytest.mark.parametrize("command, name", [("unlearn", "metrics.json"), ("stress", "report.json")])
@pytest.mark.parametrize("text", ["{", "[]", '{"config": {}, "rows": [], "cells": []}'])
def test_generate_refuses_a_broken_report_naming_it(tmp_path, capsys, command, name, text):
    (tmp_path / name).write_text(text)
    extra = ["--method", "ft"] if command == "unlearn" else []
    code, _, err = _main(capsys, "generate", command, *extra, "--out", str(tmp_path))
    _one_line(code, err, "argument --out:", str(tmp_path / name))


def test_stress_hp_zero_epochs_and_wait_flag(tmp_path, capsys):
    code, _, err = _main(capsys, "stress", "--methods", "ga", "--hp", "ga.epochs=0", "--out", str(tmp_path))
    _one_line(code, err, "argument --hp:", "0 epochs")
    assert not any(tmp_path.iterdir())


def test_unlearn_prints_its_paths_unwrapped_in_a_narrow_terminal(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "20")
    out = tmp_path / ("a-rather-long-folder-name-" * 3) / "run"
    code, printed, err = _main(capsys, "unlearn", "--method", "ga", "--epochs", "1", "--out", str(out))
    assert code == 0, err
    assert str(out / "metrics.json") in printed
