"""Fixtures for the reliability suite (issue 14): a session model cache (never the user's), one CPU thread, a
finished tiny stress run to copy and tamper with, and `cli` to run ``worstforget`` in a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

#: The tiny stress test every resume/tamper test starts from: two seeds, one method, a short search.
TINY = {"methods": ["ga"], "seeds": [0, 1], "upper_steps": 2, "lower_steps": 2}
TINY_ARGS = ["--methods", "ga", "--seeds", "0,1", "--upper-steps", "2", "--lower-steps", "2"]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("reliability-cache")


@pytest.fixture(autouse=True)
def _isolated(cache_dir, monkeypatch):
    monkeypatch.setenv("WORSTFORGET_CACHE", str(cache_dir))
    monkeypatch.setenv("WORSTFORGET_PROGRESS", "0")
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, cache_dir):
    """The folder of a finished `TINY` stress test (library call; do not modify: copy it)."""
    from unlearning.stress import stress_test

    out = tmp_path_factory.mktemp("finished") / "run"
    stress_test(**TINY, cache_dir=str(cache_dir), out=out)
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A fresh copy of `finished_run` to tamper with."""
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


#: ``python -c HOLD FOLDER SECONDS``: hold `unlearning.io.locked` on FOLDER, print "held", sleep.
HOLD = """
import sys, time
from unlearning.io import locked
with locked(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def hold_lock(folder: Path, seconds: float) -> subprocess.Popen:
    """A process holding ``folder``'s run lock for ``seconds`` (returned once it holds it)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def cli(*args: str, env: dict | None = None, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    """``worstforget ARGS`` in a subprocess (the installed entry point's code path), text output."""
    full = {**os.environ, "WORSTFORGET_PROGRESS": "0", **(env or {})}
    command = [sys.executable, "-m", "unlearning.cli", *args]
    return subprocess.run(command, env=full, capture_output=True, text=True, timeout=timeout, **popen)


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> bool:
    """Exit 2 with one ``error: ...`` line on stderr containing every needle, and no traceback."""
    err = proc.stderr.strip()
    lines = [line for line in err.splitlines() if not line.startswith(("warning", "  warnings.warn"))]
    return (
        proc.returncode == 2
        and len(lines) == 1
        and lines[0].startswith("error: ")
        and "Traceback" not in err
        and all(n in lines[0] for n in needles)
    )
