"""The worked example of docs/solvers.md runs and does what it says."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "solvers.md"


def test_solvers_doc_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1
    scope: dict = {}
    exec(compile(blocks[0], str(DOC), "exec"), scope)
    hg, result = scope["hg"], scope["result"]
    assert hg.info["residual"] <= 1e-12
    assert result.history[-1]["outer_loss"] < result.history[0]["outer_loss"]
    check = scope["check_hypergrad"](scope["problem"], scope["solver"], scope["inner0"], scope["outer0"])
    assert check.ok(1e-6)
