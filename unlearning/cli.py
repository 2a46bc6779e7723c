"""The ``worstforget`` command line: ``worstforget COMMAND [options]`` (``--help`` on every command).

Commands are modules listed in `COMMANDS`; each exposes ``add_parser(subparsers)``, so adding one is one line.
A bad input prints one line ``error: ...`` naming the argument and the fix on stderr and exits with status 2
(no traceback; set ``WORSTFORGET_DEBUG=1`` to see one).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from unlearning.commands import CLIError

COMMANDS: list[str] = [
    "unlearning.commands.unlearn",
    "unlearning.commands.hyperclean",
    "unlearning.commands.stress",
    "unlearning.commands.search",
    "unlearning.commands.bench",
    "unlearning.commands.evaluate",
    "unlearning.commands.generate",
    "unlearning.commands.train",
]


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr, exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> Parser:
    parser = Parser(
        prog="worstforget",
        description="Bi-level optimization and worst-case stress tests for machine unlearning.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 on success, 2 on a bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FloatingPointError as err:  # a diverging method or training: the fix is a smaller step
        if os.environ.get("WORSTFORGET_DEBUG"):
            raise
        message = " ".join(str(err).split())
        hint = "lower the learning rate (--lr / --hp) or the method's strength"
        print(f"error: {message}: {hint}", file=sys.stderr)
        return 2
    except (CLIError, ValueError, FileNotFoundError) as err:
        if os.environ.get("WORSTFORGET_DEBUG"):
            raise
        message = " ".join(str(err).split())  # one line
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "error: interrupted; what was written is kept (`worstforget stress` resumes when rerun with the "
            "same --out)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
