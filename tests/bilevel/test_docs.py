"""The worked examples of docs/solvers.md run and do what they say."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "solvers.md"


@pytest.fixture(scope="module")
def scope() -> dict:
    """The namespace after the doc's blocks, run in order (the custom solver continues the worked example)."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 2  # the worked example, then "Your own solver"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    return namespace


def test_solvers_doc_example_runs(scope):
    hg, result = scope["hg"], scope["result"]
    assert hg.info["residual"] <= 1e-12
    assert result.history[-1]["outer_loss"] < result.history[0]["outer_loss"]
    check = scope["check_hypergrad"](scope["problem"], scope["solver"], scope["inner0"], scope["outer0"])
    assert check.ok(1e-6)


def test_solvers_doc_custom_solver_runs(scope):
    mine, problem, inner0, outer0 = scope["mine"], scope["problem"], scope["inner0"], scope["outer0"]
    assert isinstance(mine, scope["Solver"])
    assert scope["check_hypergrad"](problem, mine, inner0, outer0).ok(1e-6)
    history = scope["mine_result"].history
    assert len(history) == 20 and history[-1]["outer_loss"] < history[0]["outer_loss"]
