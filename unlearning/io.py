"""Atomic file writing: every report and cache entry is written to a temporary file in the same folder and
renamed into place (``os.replace``), so a reader never sees a half-written file and a crash leaves the
old one. The temporary file is ``.NAME.PID.XXXX.tmp`` (PID: the writing process); one left behind by a killed
process is removed by the next write of ``NAME`` (`clean_debris`)."""

from __future__ import annotations

import json
import math
import numbers
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a temporary binary file beside ``path``, flush it to disk, then rename
    it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_debris(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; a report gets the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


#: A temporary file without a writer's PID (older versions) is debris once it is this many seconds old.
STALE_SECONDS = 600.0


def clean_debris(folder: str | os.PathLike, name: str = "*") -> list[Path]:
    """Remove the temporary files ``.NAME.PID.XXXX.tmp`` in ``folder`` (of the file ``name``, or of any)
    that `write_atomic` left when its process was killed mid-write: those whose PID is not a running
    process (or, without a PID, older than `STALE_SECONDS`). Returns the removed paths; never raises."""
    removed = []
    try:
        candidates = list(Path(folder).glob(f".{name}.*.tmp"))
    except OSError:
        return removed
    for tmp in candidates:
        if _in_use(tmp):
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


def _in_use(tmp: Path) -> bool:
    """Whether a temporary file may still be written: its PID (the third dotted field from the end) runs."""
    parts = tmp.name.split(".")
    pid = parts[-3] if len(parts) >= 5 else ""
    if pid.isdigit():
        if int(pid) == os.getpid():
            return True  # this process (another thread may be writing it)
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except OSError:  # exists, owned by another user
            return True
        return True
    try:
        return time.time() - tmp.stat().st_mtime < STALE_SECONDS
    except OSError:
        return True


#: The lock file `locked` holds in an output folder for a run's duration.
LOCK_NAME = ".worstforget.lock"


class FolderInUse(RuntimeError):
    """Another process holds the lock of an output folder (`locked`)."""


@contextmanager
def locked(folder: str | os.PathLike, *, wait: bool = False) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (created if missing) for the ``with`` block: a real file lock
    (`filelock`, released by the OS when the process dies, even by SIGKILL) on ``folder/.worstforget.lock``.
    Taken by another process: wait for it (``wait``) or raise `FolderInUse` naming the folder."""
    from filelock import FileLock, Timeout

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / LOCK_NAME))
    try:
        lock.acquire(timeout=-1 if wait else 0)
    except Timeout:
        raise FolderInUse(
            f"{folder} is in use by another run (it holds {folder / LOCK_NAME}): wait for it to finish, "
            "rerun with --wait to start when it does, or choose another output folder"
        ) from None
    try:
        yield folder
    finally:
        lock.release()


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically (NaN and infinities are rejected)."""
    text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"
    return write_text(path, text)


def jsonable(x: Any) -> Any:
    """``x`` as plain JSON values: dicts (keys as strings), lists (from lists and tuples), numbers, strings,
    booleans and None; a tensor becomes its number or nested list, a non-finite float becomes None, anything
    else its ``str``. Every report, search result and cache record goes through this one function."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "tolist") and hasattr(x, "numel"):  # a torch tensor (io stays importable without torch)
        return jsonable(x.item() if x.numel() == 1 else x.tolist())
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if isinstance(x, numbers.Integral):
        return int(x)
    if isinstance(x, numbers.Real):
        return float(x) if math.isfinite(x) else None
    return str(x)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
