"""`worstforget` as a user runs it, in subprocesses: interrupted runs (SIGINT, SIGKILL) resume to the clean
run's rows, two runs on one --out never lose rows, a path is never wrapped (issue 14)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tests.reliability.campaign import TINY_SEARCH
from tests.reliability.conftest import TINY_ARGS as TINY_BOTH
from tests.reliability.conftest import cli, hold_lock, one_line_error

#: one seed of the session's finished run: half the work per subprocess run
TINY_ARGS = [a if a != "0,1" else "0" for a in TINY_BOTH]


def _rows(path):
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [{k: v for k, v in r.items() if k != "seconds"} for r in data.get("results", [])]


def _start(out, env, *extra):
    command = [sys.executable, "-m", "unlearning.cli", "stress", *TINY_ARGS, "--out", str(out), *extra]
    full = {**os.environ, "WORSTFORGET_PROGRESS": "0", **env}
    return subprocess.Popen(command, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stop_after(proc, report, rows, sig):
    """Send ``sig`` once ``report`` holds more than ``rows`` rows (or the run ended); the rows then."""
    deadline = time.monotonic() + 240
    while proc.poll() is None and len(_rows(report)) <= rows and time.monotonic() < deadline:
        time.sleep(0.02)
    if proc.poll() is None:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err, _rows(report)


def test_sigint_then_sigkill_then_resume_equals_a_clean_run(tmp_path, finished_run):
    out, env = tmp_path / "run", {}  # models come from the session cache: the rows are the slow part
    code, err, first = _stop_after(_start(out, env), out / "report.json", 0, signal.SIGINT)
    if code != 0:  # interrupted: exit 130 and the one-line note
        assert code == 130 and "interrupted" in err and "Traceback" not in err, err
    code, _, second = _stop_after(_start(out, env), out / "report.json", len(first), signal.SIGKILL)
    assert second[: len(first)] == first  # no finished row lost
    (out / f".report.json.{_dead_pid()}.a1b2c3.tmp").write_text("{")  # what a kill mid-write leaves
    done = cli("stress", *TINY_ARGS, "--out", str(out), env=env)
    assert done.returncode == 0, done.stderr
    clean = [r for r in _rows(finished_run / "report.json") if r["seed"] == 0]
    assert _rows(out / "report.json") == clean
    assert not list(out.rglob("*.tmp"))


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_two_runs_on_one_out_never_lose_rows(tmp_path, finished_run):
    """Started 0.3 s apart with different --methods: one finishes, the other is refused in one line (the
    folder is in use, or holds the other configuration); --wait queues a run behind the first."""
    out = tmp_path / "run"
    a = _start(out, {})
    time.sleep(0.3)
    b = _start(out, {}, "--methods", "ft")
    results = [(p.wait(timeout=300), p.communicate()) for p in (a, b)]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, (_, err) in results if code == 2)
    assert loser.startswith("error: argument --out:") and loser.count("\n") == 1
    assert "in use by another run" in loser or "different configuration" in loser
    winner = json.loads((out / "report.json").read_text())
    assert winner["complete"] and len(winner["results"]) == 2 * 3

    holder = hold_lock(out, 600)  # another run holds the folder (until killed)
    won = TINY_ARGS if winner["config"]["methods"][0]["name"] == "ga" else ["--methods", "ft", *TINY_ARGS[2:]]
    refused = cli("stress", *won, "--out", str(out))
    assert one_line_error(refused, "argument --out:", "in use by another run", "--wait")
    waiting = _start(out, {}, *won[:2], "--wait")
    time.sleep(3)
    assert waiting.poll() is None  # queued behind the holder
    holder.kill()  # the OS releases a dead holder's lock: the queued run starts and resumes
    assert waiting.wait(timeout=300) == 0, waiting.communicate()[1]
    assert json.loads((out / "report.json").read_text())["results"] == winner["results"]


def test_printed_paths_are_never_wrapped(tmp_path):
    out = tmp_path / ("a-rather-long-folder-name-" * 4) / "search"
    proc = cli(*TINY_SEARCH, "--out", str(out), env={"COLUMNS": "20"})
    assert proc.returncode == 0, proc.stderr
    assert str(out / "worst_case.json") in proc.stdout.splitlines()[-1]
