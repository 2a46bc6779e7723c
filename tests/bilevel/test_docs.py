"""Every code snippet of docs/solvers.md runs and does what it says: the fenced Python blocks (in order),
every inline solver or linear-solver constructor (the tables' forms are real calls), the signature shown."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch

import bilevel

DOC = Path(__file__).resolve().parents[2] / "docs" / "solvers.md"
CONSTRUCTORS = r"(?:Unrolled|Implicit|FirstOrder|Forward|CG|Neumann|FixedPoint|Direct)"


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


def test_every_fenced_block_is_run_or_a_checked_signature():
    fences = re.findall(r"^```(\w+)$", DOC.read_text(), flags=re.M)
    assert sorted(fences) == ["python", "python", "text"]


def test_the_shown_hypergrad_signature_is_the_real_one():
    text = re.search(r"```text\n(.*?)```", DOC.read_text(), flags=re.S).group(1)
    shown = re.search(r"solver\.hypergrad\((.*?)\)\n", text).group(1)
    real = list(inspect.signature(bilevel.Solver.hypergrad).parameters.values())[1:]
    assert shown == ", ".join(
        p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default}" for p in real
    )


def _inline_constructors() -> list[str]:
    spans = re.findall(r"`([^`]*)`", DOC.read_text())
    return sorted({s for s in spans if re.fullmatch(rf"{CONSTRUCTORS}\(.*\)", s)})


@pytest.mark.parametrize("snippet", _inline_constructors())
def test_every_inline_constructor_in_the_doc_builds_what_it_names(snippet):
    """The tables' forms (``FirstOrder(opt, steps, mode="f2sa", sigma=100.0)``, ...) are real calls: with
    ``opt`` an optimizer and ``steps``/``T``/``K`` integers they build the solver they name, with the mode
    they name (a form that made a mode string the optimizer once built a zero-returning solver)."""
    namespace = {name: getattr(bilevel, name) for name in bilevel.__all__}
    outer = {"lr": torch.tensor(0.1, dtype=torch.float64, requires_grad=True)}
    namespace.update(
        opt=bilevel.optim.SGD(lr=0.1), steps=20, T=20, K=5, α=0.1, ξ=0.5, δ=1e-3, σ=100.0, outer=outer
    )
    built = eval(snippet, namespace)  # noqa: S307 (the doc's own snippets)
    assert type(built).__name__ == snippet.split("(")[0]
    mode = re.search(r'mode="(\w+)"', snippet)
    if mode:
        assert built.mode == mode.group(1)
    if isinstance(built, bilevel.Solver) and "opt" in snippet:
        assert bilevel.hypergrad.is_optimizer(built.optimizer) or "lambda" in snippet
        assert built.steps == 20
