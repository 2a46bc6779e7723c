"""docs/worst_case.md is true: its Python example runs as written and shows what its comments say, and every
``worstforget`` command line in it parses with the CLI."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import torch

from unlearning import cli

DOC = Path(__file__).resolve().parents[2] / "docs" / "worst_case.md"


def _blocks(language: str) -> list[str]:
    """The fenced code blocks of the doc whose info string is ``language`` ("" for plain fences)."""
    blocks, current, info = [], None, ""
    for line in DOC.read_text().splitlines():
        if line.strip().startswith("```"):  # fences may be indented (inside a list item)
            if current is None:
                current, info = [], line.strip()[3:].strip()
            else:
                if info == language:
                    blocks.append("\n".join(current) + "\n")
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def test_python_example_runs_as_written(tmp_path, monkeypatch, digits_random):
    (code,) = _blocks("python")
    monkeypatch.chdir(tmp_path)  # it saves wc.json in the working directory
    scope: dict = {}
    exec(compile(code, str(DOC), "exec"), scope)  # noqa: S102 - the documented example itself
    result, same = scope["result"], scope["same"]
    assert result.indices.numel() == 130 and torch.equal(same.indices, result.indices)
    assert set(result.objective) == {"initial", "final", "last"}
    assert {"objective", "changed", "overlap_previous", "overlap_final", "seconds"} <= set(result.history[0])
    fp = result.fingerprint
    assert (fp["dataset"], fp["split_seed"], fp["pool_size"]) == ("digits", 0, 1295) and len(
        fp["pool_sha256"]
    ) == 64
    assert result.totals() == {"upper_steps": 20, "hvp": 0, "cg_iterations": 0}
    assert (tmp_path / "wc.json").is_file()
    assert scope["found"].task.forget_index.numel() == 130


def _command_lines() -> list[str]:
    lines = []
    for block in _blocks(""):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split(" # ")[0].strip()
            if line.startswith("worstforget "):
                for var, value in (("$hg", "first_order"), ("$s", "0"), ("$lr", "0.1"), ("$rho", "0.1")):
                    line = line.replace(var, value)
                lines.append(line)
    return lines


@pytest.mark.parametrize("line", _command_lines())
def test_command_lines_parse(line):
    args = cli.build_parser().parse_args(shlex.split(line)[1:])
    assert callable(args.func)


def test_the_doc_has_command_lines_for_each_command():
    commands = {line.split()[1] for line in _command_lines()}
    assert {"search", "unlearn", "evaluate"} <= commands
