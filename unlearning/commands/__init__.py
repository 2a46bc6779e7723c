"""Sub-commands of the ``worstforget`` CLI: one module per command, each exposing ``add_parser(subparsers)``
which registers the command and sets ``func(args) -> int`` as its handler (see `unlearning.cli.COMMANDS`)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class CLIError(Exception):
    """A bad command-line input: printed as one ``error: ...`` line, exit status 2."""


def parse_key_values(items: Sequence[str] | None, argument: str) -> dict[str, str]:
    """``["a=1", "b=x"] -> {"a": "1", "b": "x"}``; a malformed item is a `CLIError` naming ``argument``."""
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CLIError(f"argument {argument}: expected KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def coerce(text: str, like: Any, name: str) -> Any:
    """Convert ``text`` to the type of the default value ``like`` (bool, int, float, str, tuple of ints, or
    anything JSON when the default is None)."""
    try:
        if isinstance(like, bool):
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if isinstance(like, int):
            return int(text)
        if isinstance(like, float):
            return float(text)
        if isinstance(like, tuple):
            return tuple(int(t) for t in text.replace(",", " ").split())
        if isinstance(like, str):
            return text
        if text.lower() == "none":
            return None
        return json.loads(text)
    except (ValueError, json.JSONDecodeError):
        if like is None:
            return text
        kind = "true/false" if isinstance(like, bool) else type(like).__name__
        raise CLIError(f"{name}: expected a {kind} value, got {text!r}") from None


def parse_opts(items: Sequence[str] | None, argument: str) -> dict[str, Any]:
    """KEY=VALUE options with values read as JSON when possible (``hidden=[64,32]``, ``n=500``), else text."""
    out: dict[str, Any] = {}
    for key, value in parse_key_values(items, argument).items():
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out[key] = tuple(parsed) if isinstance(parsed, list) else parsed
    return out


def check_device(args: Any) -> None:
    """``--device`` exists here (`unlearning.setup.resolve_device`), else a `CLIError` naming it."""
    from unlearning.setup import resolve_device

    try:
        resolve_device(args.device)
    except ValueError as err:
        raise CLIError(f"argument --device: {err}") from None


def check_experiment(args: Any) -> None:
    """``--dataset``, ``--model`` and ``--device`` name things that exist, else a `CLIError` naming it."""
    from unlearning import datasets, models

    if args.dataset.lower() not in datasets.NAMES:
        raise CLIError(
            f"argument --dataset: unknown dataset {args.dataset!r}; choose one of {', '.join(datasets.NAMES)}"
        )
    if args.model.lower() not in models.NAMES:
        raise CLIError(
            f"argument --model: unknown model {args.model!r}; choose one of {', '.join(models.NAMES)}"
        )
    check_device(args)


def check_at_least_one(args: Any, *flags: str) -> None:
    """Each integer option in ``flags`` (attribute names) is None or >= 1 (`bilevel.validate.Interval`), else
    a `CLIError` naming it."""
    from bilevel.validate import Interval  # imported on use: `import unlearning.commands` stays light

    at_least_one = Interval(int, 1, allow_none=True)
    for flag in flags:
        value = getattr(args, flag)
        if not at_least_one.check(value):
            raise CLIError(f"argument --{flag.replace('_', '-')}: must be >= 1, got {value}")


def check_out(path: str | os.PathLike, flag: str = "--out") -> Path:
    """The output folder ``path`` can be written, checked before any compute: not a file, not under a file,
    and its nearest existing folder writable; else a `CLIError` naming ``flag`` and the fix."""
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise CLIError(f"argument {flag}: {out} is a file, not a folder: choose a folder path (or remove it)")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise CLIError(f"argument {flag}: {out} lies under {parent}, which is a file: choose a folder path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CLIError(
            f"argument {flag}: {parent} is not writable, so {out} cannot be written: choose a folder you can "
            "write to"
        )
    return out


def check_no_op(method: str, hparams: dict[str, Any], argument: str) -> None:
    """``epochs=0`` would hand back the original model as "unlearned" (no step is taken): a `CLIError`
    naming ``argument`` (e.g. ``argument --epochs``) and the fix."""
    if hparams.get("epochs") == 0:
        raise CLIError(
            f"{argument}: 0 epochs would return the original model unchanged as {method}'s result (no "
            "unlearning); give epochs >= 1"
        )
