"""docs/custom-method.md runs: its method module, its Python stress test and its command, at a small size."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest

from unlearning import stress
from unlearning.cli import main

DOC = Path(__file__).resolve().parents[2] / "docs" / "custom-method.md"
SMALL = {"seeds": [0], "upper_steps": 2, "lower_steps": 2}
SMALL_ARGS = ["--seeds", "0", "--upper-steps", "2", "--lower-steps", "2"]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.fixture
def mypkg(tmp_path, monkeypatch):
    """The doc's first Python block, saved where it says (``mypkg/mymodule.py``) and importable."""
    module = blocks("python")[0]
    first = module.splitlines()[0]
    assert first.startswith("# ") and first.endswith(".py")
    path = tmp_path / "src" / first[2:].strip()
    path.parent.mkdir(parents=True)
    (path.parent / "__init__.py").write_text("")
    path.write_text(module)
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    monkeypatch.delitem(sys.modules, "mypkg", raising=False)
    monkeypatch.delitem(sys.modules, "mypkg.mymodule", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_doc_method_and_python_stress_test(mypkg, cache_dir, monkeypatch):
    real = stress.stress_test
    monkeypatch.setattr(stress, "stress_test", lambda **kw: real(**{**kw, **SMALL, "cache_dir": cache_dir}))
    exec(compile(blocks("python")[1], str(DOC), "exec"), {})
    rep = json.loads((mypkg / "runs" / "graddiff" / "report.json").read_text())
    assert rep["complete"] and rep["config"]["search_method"]["name"] == "graddiff"
    assert {r["method"] for r in rep["results"]} == {"original", "retrain", "graddiff", "salun"}
    from mypkg.mymodule import GradDiff

    with pytest.raises(ValueError, match="lr"):
        GradDiff(lr=-1)


def test_doc_command(mypkg, cache_dir):
    (line,) = [ln for b in blocks("bash") for ln in b.splitlines() if "worstforget stress" in ln]
    argv = shlex.split(line.split("worstforget", 1)[1])
    out = mypkg / "cli-out"
    assert argv[0] == "stress" and "mypkg.mymodule:GradDiff" in line
    assert main([*argv, *SMALL_ARGS, "--out", str(out), "--cache-dir", str(cache_dir)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert [m["spec"] for m in rep["config"]["methods"]] == ["salun", "mypkg.mymodule:GradDiff"]
    assert {r["method"] for r in rep["results"]} >= {"graddiff", "salun"}
