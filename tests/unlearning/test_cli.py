import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unlearning import cli


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_everywhere(capsys):
    for argv in (["--help"], ["unlearn", "--help"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert "usage: worstforget" in out
    assert "--forget" in out and "class:K" in out and "--hp KEY=VALUE" in out


def test_commands_are_registered_from_the_list():
    assert cli.COMMANDS[0] == "unlearning.commands.unlearn"
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) >= {"unlearn"}


def test_console_script():
    exe = Path(sys.executable).with_name("worstforget")
    exe = str(exe) if exe.exists() else shutil.which("worstforget")
    assert exe is not None, "worstforget console script not installed: run `make test` (pip install -e .)"
    done = subprocess.run([exe, "unlearn", "--method", "nope"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")
    assert "Traceback" not in done.stderr


def test_list_methods(capsys):
    code, out, _ = run_cli(capsys, "unlearn", "--list-methods")
    assert code == 0 and "salun" in out and "sparsity" in out


def test_unlearn_writes_metrics(tmp_path, capsys, digits_random):
    out_dir = tmp_path / "run"
    code, out, err = run_cli(
        capsys, "unlearn", "--method", "ft", "--epochs", "2", "--seed", "0", "--out", str(out_dir)
    )
    assert code == 0, err
    report = json.loads((out_dir / "metrics.json").read_text())
    for part in ("method", "retrain", "original"):
        assert {"UA", "RA", "TA", "MIA", "seconds"} <= set(report[part])
        assert all(isinstance(report[part][k], float) for k in ("UA", "RA", "TA", "MIA", "seconds"))
    assert report["method"]["name"] == "ft" and report["config"]["hparams"]["epochs"] == 2
    assert report["config"]["cached"]["original"]  # the fixture trained it into the same cache
    keys = ("UA", "RA", "TA", "MIA")
    gap = sum(abs(report["method"][k] - report["retrain"][k]) for k in keys) / 4
    assert report["avg_gap"] == pytest.approx(gap)
    md = (out_dir / "metrics.md").read_text()
    assert "| ft |" in md and "| Retrain |" in md
    assert "Avg. Gap" in out and "metrics.json" in out
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")]  # no temp files left


def test_unlearn_class_wise_with_hp(tmp_path, capsys, digits_class):
    out_dir = tmp_path / "cls"
    code, _, err = run_cli(
        capsys, "unlearn", "--method", "ga", "--forget", "class:3", "--hp", "lr=0.005", "--hp", "epochs=1",
        "--out", str(out_dir),
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((out_dir / "metrics.json").read_text())
    assert report["config"]["forget_class"] == 3 and report["config"]["hparams"]["lr"] == 0.005
    assert report["config"]["sizes"]["test"] == len(digits_class.task.test)


def _bad_inputs(tmp_path):
    (tmp_path / "far.json").write_text(json.dumps([0, 100000]))
    cases = [
        (["--method", "nope"], "--method"),
        (["--method", "ft", "--dataset", "imagenet"], "--dataset"),
        (["--method", "ft", "--model", "vgg"], "--model"),
        (["--method", "ft", "--forget", "random:1.5"], "--forget"),
        (["--method", "ft", "--forget", "random:0"], "--forget"),
        (["--method", "ft", "--forget", "half"], "--forget"),
        (["--method", "ft", "--forget", "class:12"], "--forget"),
        (["--method", "ft", "--forget", f"indices:{tmp_path / 'far.json'}"], "--forget"),
        (["--method", "ft", "--forget", f"indices:{tmp_path / 'missing.json'}"], "--forget"),
        (["--method", "ft", "--hp", "bogus=1"], "--hp"),
        (["--method", "ft", "--hp", "lr=fast"], "--hp"),
        (["--method", "ft", "--hp", "lr=-1"], "--hp"),
        (["--method", "ft", "--hp", "lr"], "--hp"),
        (["--method", "iu", "--lr", "0.1"], "--lr"),
        (["--method", "ft", "--seed", "x"], "--seed"),
        (["--method", "ft", "--dataset", "cifar10", "--data-dir", str(tmp_path)], "--data-dir"),
        (["--method", "ft", "--data-opt", "bogus=1"], "--data-opt"),
        ([], "--method"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--method", "ft", "--device", "cuda"], "--device"))
    return cases


def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys, monkeypatch, digits_random):
    monkeypatch.setenv("WORSTFORGET_OFFLINE", "1")
    for argv, flag in _bad_inputs(tmp_path):
        try:
            code = cli.main(["unlearn", *argv, "--out", str(tmp_path / "out")])
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
        _, err = capsys.readouterr()
        assert code == 2, (argv, err)
        assert err.startswith("error: ") and err.count("\n") == 1, (argv, err)
        assert flag in err, (argv, err)
        assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_no_traceback_env(monkeypatch):
    monkeypatch.setenv("WORSTFORGET_DEBUG", "1")
    with pytest.raises(Exception, match="unknown method"):
        cli.main(["unlearn", "--method", "nope"])
    assert os.environ["WORSTFORGET_DEBUG"] == "1"
