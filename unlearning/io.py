"""Atomic file writing: every report and cache entry is written to a temporary file in the same folder and
renamed into place (``os.replace``), so a reader never sees a half-written file and a crash leaves the
old one."""

from __future__ import annotations

import json
import math
import numbers
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a temporary binary file beside ``path``, flush it to disk, then rename
    it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
