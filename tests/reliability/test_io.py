"""Atomic writes leave no debris a later run keeps, and an output folder is locked for a run (issue 14)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.reliability.conftest import hold_lock
from unlearning.io import FolderInUse, clean_debris, locked, write_json


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_next_write_removes_what_a_killed_writer_left(tmp_path):
    dead = tmp_path / f".report.json.{_dead_pid()}.abc123.tmp"
    mine = tmp_path / f".report.json.{os.getpid()}.def456.tmp"  # this process: maybe another thread's
    legacy = tmp_path / ".report.json.k2j3h4.tmp"  # an older version's name, no PID
    fresh_legacy = tmp_path / ".report.json.zz99zz.tmp"
    other = tmp_path / f".metrics.json.{_dead_pid()}.x.tmp"
    for p in (dead, mine, legacy, fresh_legacy, other):
        p.write_text("partial")
    old = time.time() - 3600
    os.utime(legacy, (old, old))
    write_json(tmp_path / "report.json", {"a": 1})
    assert not dead.exists() and not legacy.exists()
    assert mine.exists() and fresh_legacy.exists() and other.exists()  # live, recent, another file's
    assert clean_debris(tmp_path) == [other]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, fresh_legacy.name, "report.json"])


def test_the_temporary_name_carries_the_writer_pid(tmp_path, monkeypatch):
    seen = []
    real = os.replace

    def spy(src, dst):
        seen.append(os.path.basename(src))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    write_json(tmp_path / "x.json", [1])
    assert seen[0].startswith(f".x.json.{os.getpid()}.") and seen[0].endswith(".tmp")


def test_a_locked_folder_is_refused_or_waited_for(tmp_path):
    holder = hold_lock(tmp_path, 1.5)
    with pytest.raises(FolderInUse, match="in use by another run.*--wait"):
        with locked(tmp_path):
            pass
    start = time.perf_counter()
    with locked(tmp_path, wait=True):  # blocks until the holder lets go (it holds it ~1.5 s)
        waited = time.perf_counter() - start
    assert waited > 0.5
    holder.wait()


def test_a_killed_holder_releases_the_lock(tmp_path):
    holder = hold_lock(tmp_path, 60)
    holder.kill()
    holder.wait()
    with locked(tmp_path):  # the OS dropped the dead process's lock
        pass
