"""The shape DESIGN.md promises, checked on the source: one-way package arrows, short functions, and no module
reaching into another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bilevel", "unlearning", "attacks")
MAX_LINES = 80
#: the closed-form problem builders (long formulas, on purpose) and declarative argparse set-up
EXEMPT_DIRS = (ROOT / "bilevel" / "problems",)
EXEMPT_NAMES = ("add_parser",)


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, imported names, level) of every ``import`` / ``from ... import`` in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, [], 0) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", [a.name for a in node.names], node.level))
    return found


@pytest.mark.parametrize(
    "package, forbidden", [("bilevel", ("unlearning", "attacks")), ("attacks", ("unlearning", "bilevel"))]
)
def test_dependency_arrows_point_one_way(package, forbidden):
    bad = [
        f"{p.relative_to(ROOT)} imports {mod}"
        for p in _sources(package)
        for mod, _, level in _imports(p)
        if level == 0 and mod.split(".")[0] in forbidden
    ]
    assert not bad, bad


def test_no_function_longer_than_80_lines():
    long = []
    for package in PACKAGES:
        for p in _sources(package):
            if any(d in p.parents for d in EXEMPT_DIRS):
                continue
            for node in ast.walk(ast.parse(p.read_text())):
                if (
                    isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                    and node.name not in EXEMPT_NAMES
                ):
                    n = node.end_lineno - node.lineno + 1
                    if n > MAX_LINES:
                        long.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "split these into named steps:\n" + "\n".join(long)


def test_no_module_imports_another_modules_private_names():
    bad = []
    for package in PACKAGES:
        for p in _sources(package):
            for mod, names, level in _imports(p):
                if level == 0 and mod.split(".")[0] not in PACKAGES:
                    continue  # a third-party module's layout is not ours to judge
                bad += [f"{p.relative_to(ROOT)}: from {mod} import {n}" for n in names if n.startswith("_")]
    assert not bad, bad
