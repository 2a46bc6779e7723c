"""The bad-input campaign of issue 14: ≥ 150 bad or edge inputs (CLI and library, every class of the issue)
and a few good ones, each run and its outcome classified.

    .venv/bin/python -m tests.reliability.campaign [--json FILE] [--only WORD]

Not part of ``make test`` (it takes a few minutes: it trains tiny digits models into a temporary cache and
runs one small stress test to tamper with). CLI cases run `unlearning.cli.main` in this process (the code
the ``worstforget`` entry point runs; what escapes it is what a user would see as a traceback), a few run
it in a subprocess (signals, concurrent runs, terminal width). Outcomes:

- ``clear``: a bad input ended in exit 2 with one ``error: ...`` line naming the flag or file (CLI), or in a
  ``ValueError``/``TypeError``/``FileNotFoundError``/``FloatingPointError`` naming the argument (library);
  for a damaged cache entry, one warning naming the file and a retrained (correct) model;
- ``works``: a good input succeeded;
- ``traceback``: an exception escaped (CLI) or a raw ``KeyError``/``AttributeError``/... (library);
- ``silent``: a bad input was accepted (exit 0, or no exception);
- ``other``: anything else (a wrong exit code, an error that names neither flag nor file, several lines).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TINY = ["--methods", "ga", "--seeds", "0", "--upper-steps", "2", "--lower-steps", "2"]
TINY_SEARCH = ["search", "--method", "ga", "--upper-steps", "1", "--lower-steps", "1"]
LIB_ERRORS = (ValueError, TypeError, FileNotFoundError, FloatingPointError)


@dataclass
class Case:
    """One input: ``run()`` returns an outcome and a detail line."""

    name: str
    kind: str  # "cli" or "lib"
    run: Callable[[], tuple[str, str]]
    group: str = ""


@dataclass
class Campaign:
    root: Path
    cases: list[Case] = field(default_factory=list)

    def add(self, name: str, kind: str, run: Callable[[], tuple[str, str]]) -> None:
        self.cases.append(Case(name, kind, run))


# ------------------------------------------------------------------------------------------ classifiers
def run_cli(argv: list[str], expect: str, needles: tuple[str, ...] = ()) -> tuple[str, str]:
    """`cli.main(argv)` in this process; ``expect`` "error" or "ok"."""
    from unlearning import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            code = cli.main(argv)
        except SystemExit as exc:
            code = exc.code
        except BaseException as exc:  # noqa: BLE001 - what a user would see as a traceback
            return "traceback", f"{type(exc).__name__}: {exc}"[:300]
    return classify_exit(code, err.getvalue(), expect, needles)


def classify_exit(code: Any, stderr: str, expect: str, needles: tuple[str, ...]) -> tuple[str, str]:
    lines = [ln for ln in stderr.strip().splitlines() if "Warning" not in ln and ln.strip()]
    text = lines[-1] if lines else ""
    if "Traceback" in stderr:
        return "traceback", stderr.strip().splitlines()[-1][:300]
    if expect == "ok":
        return ("works", "") if code == 0 else ("other", f"exit {code}: {text}"[:300])
    if code == 0:
        return "silent", "exit 0"
    names_place = "argument --" in text or "/" in text or "method " in text
    if code == 2 and len(lines) == 1 and text.startswith("error: ") and names_place:
        if all(n in text for n in needles):
            return "clear", text[:300]
        return "other", f"names another place (wanted {needles}): {text}"[:300]
    return "other", f"exit {code}, {len(lines)} lines: {text}"[:300]


def run_lib(call: Callable[[], Any], expect: str, needles: tuple[str, ...] = ()) -> tuple[str, str]:
    """``call()``; ``expect`` "error", "ok" or "warn" (one warning naming ``needles``, then a result)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            call()
        except LIB_ERRORS as exc:
            text = " ".join(str(exc).split())
            if expect != "error":
                return "other", f"{type(exc).__name__}: {text}"[:300]
            ok = all(n in text for n in needles) and "\n" not in str(exc).strip()
            return ("clear" if ok else "other"), f"{type(exc).__name__}: {text}"[:300]
        except Exception as exc:  # noqa: BLE001
            return "traceback", f"{type(exc).__name__}: {exc}"[:300]
    shown = [str(w.message) for w in caught]
    if expect == "error":
        return "silent", "no exception"
    if expect == "warn":
        hit = [m for m in shown if all(n in m for n in needles)]
        return ("clear", hit[0][:300]) if len(hit) == 1 else ("silent", f"warnings: {shown}"[:300])
    return "works", ""


# ------------------------------------------------------------------------------------------------ cases
def unlearn_cases(c: Campaign) -> None:
    root = c.root
    files = {
        "bools.json": "[true, false, 3]",
        "nested.json": "[1, [2], 3]",
        "strings.json": '["1", "2"]',
        "empty.json": "[]",
        "far.json": "[0, 100000]",
        "dups.json": "[1, 1, 2]",
        "negative.json": "[-1, 2]",
        "object.json": '{"positions": [1, 2]}',
        "broken.json": "[1, 2",
        "words.txt": "one two",
        "list.csv": "1,2,3",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    blocker = root / "a-file"
    blocker.write_text("x")
    bad = [
        (["--method", "nope"], "--method"),
        ([], "--method"),
        (["--method", "ft", "--hp", "bogus=1"], "--hp"),
        (["--method", "ft", "--hp", "lr=fast"], "--hp"),
        (["--method", "ft", "--hp", "lr=-1"], "--hp"),
        (["--method", "ft", "--hp", "lr=nan"], "--hp"),
        (["--method", "ft", "--hp", "lr=inf"], "--hp"),
        (["--method", "ft", "--hp", "lr"], "--hp"),
        (["--method", "ft", "--hp", "=3"], "--hp"),
        (["--method", "ft", "--hp", "momentum=1.5"], "--hp"),
        (["--method", "ft", "--hp", "epochs=-1"], "--hp"),
        (["--method", "ft", "--hp", "epochs=0"], "--hp"),
        (["--method", "ft", "--epochs", "0"], "--epochs"),
        (["--method", "ft", "--epochs", "-2"], "--epochs"),
        (["--method", "ft", "--lr", "0"], "--lr"),
        (["--method", "ft", "--lr", "0.01", "--hp", "lr=0.02"], "--lr"),
        (["--method", "ft", "--epochs", "2", "--hp", "epochs=3"], "--epochs"),
        (["--method", "iu", "--lr", "0.1"], "--lr"),
        (["--method", "salun", "--hp", "sparsity=1.5"], "--hp"),
        (["--method", "rl", "--hp", "variant=sideways"], "--hp"),
        (["--method", "ft", "--forget", "random:1.5"], "--forget"),
        (["--method", "ft", "--forget", "random:0"], "--forget"),
        (["--method", "ft", "--forget", "random:-0.1"], "--forget"),
        (["--method", "ft", "--forget", "random:abc"], "--forget"),
        (["--method", "ft", "--forget", "half"], "--forget"),
        (["--method", "ft", "--forget", "class:12"], "--forget"),
        (["--method", "ft", "--forget", "class:-1"], "--forget"),
        (["--method", "ft", "--forget", "class:x"], "--forget"),
        (["--method", "ft", "--forget", f"indices:{root / 'missing.json'}"], "--forget"),
        *[(["--method", "ft", "--forget", f"indices:{root / n}"], "--forget") for n in files],
        (["--method", "ft", "--dataset", "imagenet"], "--dataset"),
        (["--method", "ft", "--model", "vgg"], "--model"),
        (["--method", "ft", "--model-opt", "hidden=[-5]"], "--model-opt"),
        (["--method", "ft", "--model-opt", "hidden=[0]"], "--model-opt"),
        (["--method", "ft", "--model-opt", "hidden=5"], "--model-opt"),
        (["--method", "ft", "--model-opt", "hidden=[1.5]"], "--model-opt"),
        (["--method", "ft", "--model-opt", "hidden=true"], "--model-opt"),
        (["--method", "ft", "--model-opt", "width=4"], "--model-opt"),
        (["--method", "ft", "--model-opt", "hidden"], "--model-opt"),
        (["--method", "ft", "--model", "cnn", "--model-opt", "channels=[8]"], "--model-opt"),
        (["--method", "ft", "--model", "cnn", "--model-opt", "hidden=-1"], "--model-opt"),
        (["--method", "ft", "--data-opt", "bogus=1"], "--data-opt"),
        (["--method", "ft", "--dataset", "synthetic", "--data-opt", "n=5"], "--data-opt"),
        (["--method", "ft", "--dataset", "cifar10", "--data-dir", str(root)], "--data-dir"),
        (["--method", "ft", "--seed", "99999999999999999999"], "--seed"),
        (["--method", "ft", "--seed", "-1"], "--seed"),
        (["--method", "ft", "--seed", "x"], "--seed"),
        (["--method", "ft", "--device", "cuda:7"], "--device"),
        (["--method", "ft", "--device", "tpu"], "--device"),
        (["--method", "ft", "--threads", "0"], "--threads"),
        (["--method", "ft", "--batch-size", "0"], "--batch-size"),
        (["--method", "ft", "--train-epochs", "0"], "--train-epochs"),
        (["--method", "ft", "--train-lr", "-1"], "--train-lr"),
        (["--method", "ft", "--out", str(blocker)], "--out"),
        (["--method", "ft", "--out", str(blocker / "sub")], "--out"),
    ]
    for i, (argv, flag) in enumerate(bad):
        out = root / f"u{i}"
        full = ["unlearn", *argv] + ([] if "--out" in argv else ["--out", str(out)])
        c.add(
            f"unlearn {' '.join(argv)}", "cli", lambda full=full, flag=flag: run_cli(full, "error", (flag,))
        )
    c.add(
        "unlearn ft --epochs 1 (good)",
        "cli",
        lambda: run_cli(["unlearn", "--method", "ft", "--epochs", "1", "--out", str(root / "ugood")], "ok"),
    )


USER = {
    "syntax": "def broken(:\n",
    "raises": "raise RuntimeError('no GPU here')\n",
    "imports": "import not_a_module_anywhere\n",
    "factory": "def Make(**kw):\n    raise KeyError('lr')\n",
    "noname": "class M:\n    name = ''\n    def unlearn(self, model, task):\n        return None\n",
    "notmethod": "M = 3\n",
    "returns_none": """
        from unlearning.methods import FT
        class M(FT):
            name = "mine"
            def unlearn(self, model, task):
                return None
    """,
    "returns_model": """
        from unlearning.methods import FT
        class M(FT):
            name = "mine"
            def unlearn(self, model, task):
                return model
    """,
    "identity": """
        import copy
        from unlearning.methods import FT, Unlearned
        class M(FT):
            name = "mine"
            def unlearn(self, model, task):
                return Unlearned(copy.deepcopy(model), 0.0)
    """,
    "other_arch": """
        import torch
        from unlearning.methods import FT, Unlearned
        class M(FT):
            name = "mine"
            def unlearn(self, model, task):
                return Unlearned(torch.nn.Linear(2, 2), 0.0)
    """,
    "fails": """
        from unlearning.methods import FT
        class M(FT):
            name = "mine"
            def unlearn(self, model, task):
                return {}["weights"]
    """,
    "nan": """
        import copy, torch
        from unlearning.methods import FT, Unlearned
        class M(FT):
            name = "mine"
            def unlearn(self, model, task):
                m = copy.deepcopy(model)
                with torch.no_grad():
                    next(m.parameters()).fill_(float("nan"))
                return Unlearned(m, 0.0)
    """,
}


def stress_cases(c: Campaign) -> None:
    root = c.root
    blocker = root / "s-file"
    blocker.write_text("x")
    bad = [
        (["--methods", ","], "--methods"),
        (["--methods", "nope"], "--methods"),
        (["--methods", "retrain"], "--methods"),
        (["--methods", "ga,ga"], "--methods"),
        (["--methods", "nomodule:Thing"], "--methods"),
        (["--forget-fraction", "0"], "--forget-fraction"),
        (["--forget-fraction", "1"], "--forget-fraction"),
        (["--forget-fraction", "-0.5"], "--forget-fraction"),
        (["--forget-fraction", "nan"], "--forget-fraction"),
        (["--forget-fraction", "0.99", "--class-wise"], "--forget-fraction"),
        (["--seeds", ""], "--seeds"),
        (["--seeds", "a"], "--seeds"),
        (["--seeds", "0,0"], "--seeds"),
        (["--seeds", "99999999999999999999"], "--seeds"),
        (["--seeds", "0,-1"], "--seeds"),
        (["--search-method", "nope"], "--search-method"),
        (["--hypergrad", "magic"], "--hypergrad"),
        (["--upper-steps", "0"], "--upper-steps"),
        (["--lower-steps", "-1"], "--lower-steps"),
        (["--search-batch-size", "0"], "--search-batch-size"),
        (["--hp", "ga.lr"], "--hp"),
        (["--hp", "lr=1"], "--hp"),
        (["--hp", "ft.lr=1", "--methods", "ga"], "--hp"),
        (["--hp", "ga.bogus=1", "--methods", "ga"], "--hp"),
        (["--hp", "ga.lr=-1", "--methods", "ga"], "--hp"),
        (["--hp", "ga.epochs=0", "--methods", "ga"], "--hp"),
        (["--threads", "0"], "--threads"),
        (["--device", "cuda:7"], "--device"),
        (["--dataset", "imagenet"], "--dataset"),
        (["--model", "vgg"], "--model"),
        (["--out", str(blocker)], "--out"),
        (["--out", str(blocker / "sub")], "--out"),
    ]
    for i, (argv, flag) in enumerate(bad):
        full = ["stress", *argv] + ([] if "--out" in argv else ["--out", str(root / f"s{i}")])
        c.add(f"stress {' '.join(argv)}", "cli", lambda full=full, flag=flag: run_cli(full, "error", (flag,)))
    sys.path.insert(0, str(root))
    wants = {
        "syntax": "--methods",
        "raises": "--methods",
        "imports": "--methods",
        "factory": "--methods",
        "noname": "--methods",
        "notmethod": "--methods",
        "returns_none": "method mine",
        "returns_model": "method mine",
        "identity": None,
        "other_arch": "method mine",
        "fails": "method mine",
        "nan": None,
    }
    for module, text in USER.items():
        name = f"campaign_user_{module}"
        (root / f"{name}.py").write_text(textwrap.dedent(text))
        attr = "Make" if module == "factory" else "M"
        argv = ["stress", "--methods", f"{name}:{attr}", *TINY[2:], "--out", str(root / f"user_{module}")]
        want = wants[module]
        if want is None:  # a valid method (identity, or one that diverges: recorded as a diverged row)
            c.add(f"stress user method {module} (good)", "cli", lambda argv=argv: run_cli(argv, "ok"))
        else:
            c.add(
                f"stress user method {module}", "cli", lambda argv=argv, w=want: run_cli(argv, "error", (w,))
            )


def search_cases(c: Campaign) -> None:
    root = c.root
    blocker = root / "q-file"
    blocker.write_text("x")
    bad = [
        (["--method", "nope"], "--method"),
        (["--method", "ga", "--budget", "0"], "--budget"),
        (["--method", "ga", "--budget", "1.5"], "--budget"),
        (["--method", "ga", "--budget", "5000"], "--budget"),
        (["--method", "ga", "--hypergrad", "magic"], "--hypergrad"),
        (["--method", "ga", "--upper-steps", "0"], "--upper-steps"),
        (["--method", "ga", "--seed", "99999999999999999999"], "--seed"),
        (["--method", "ga", "--model-opt", "hidden=[-5]"], "--model-opt"),
        (["--method", "ga", "--hp", "lr=-1"], "--hp"),
        (["--method", "ga", "--hp", "epochs=0"], "--hp"),
        (["--method", "ga", "--out", str(blocker)], "--out"),
    ]
    for i, (argv, flag) in enumerate(bad):
        full = ["search", *argv] + ([] if "--out" in argv else ["--out", str(root / f"q{i}")])
        c.add(f"search {' '.join(argv)}", "cli", lambda full=full, flag=flag: run_cli(full, "error", (flag,)))
    other = [
        (["evaluate", "--methods", "nope", "--forget", "random:0.1"], "--methods"),
        (["evaluate", "--methods", "ga", "--forget", "random:2"], "--forget"),
        (["evaluate", "--methods", "ga", "--forget", "random:0.1", "--hp", "ga.epochs=0"], "--hp"),
        (
            ["evaluate", "--methods", "ga", "--forget", "random:0.1", "--seed", "99999999999999999999"],
            "--seed",
        ),
        (["evaluate", "--methods", "ga", "--forget", "random:0.1", "--out", str(blocker)], "--out"),
        (["hyperclean", "--noise", "1.5"], "--noise"),
        (["hyperclean", "--steps", "0"], "--steps"),
        (["hyperclean", "--out", str(blocker)], "--out"),
        (["bench", "--problem", "nope"], "--problem"),
        (["bench", "--steps", "0"], "--steps"),
        (["bench", "--out", str(blocker / "x")], "--out"),
    ]
    for i, (argv, flag) in enumerate(other):
        full = argv + ([] if "--out" in argv else ["--out", str(root / f"o{i}")])
        c.add(" ".join(argv), "cli", lambda full=full, flag=flag: run_cli(full, "error", (flag,)))
    for name, text in {"truncated": "{", "a list": "[]", "rows a list": '{"config": {}, "rows": []}'}.items():
        folder = root / f"gen-{name.replace(' ', '-')}"
        folder.mkdir()
        (folder / "metrics.json").write_text(text)
        (folder / "report.json").write_text(text.replace("rows", "cells"))
        for command, extra in (("unlearn", ["--method", "ft"]), ("stress", [])):
            argv = ["generate", command, *extra, "--out", str(folder)]
            c.add(
                f"generate {command} resuming a report that is {name}",
                "cli",
                lambda argv=argv, f=str(folder): run_cli(argv, "error", ("--out", f)),
            )
    good = [*TINY_SEARCH, "--out", str(root / "qgood")]
    c.add("search ga tiny (good)", "cli", lambda: run_cli(good, "ok"))


# --------------------------------------------------------------------------------------------- tampering
def _base_run(root: Path) -> Path:
    out = root / "base"
    if not (out / "report.json").exists():
        code, detail = run_cli(["stress", *TINY, "--out", str(out)], "ok")
        assert code == "works", detail
    return out


def tamper_cases(c: Campaign) -> None:
    root = c.root

    def tampered(name: str, edit: Callable[[Path], None], needle: str) -> None:
        def go() -> tuple[str, str]:
            out = root / f"t-{name}"
            shutil.rmtree(out, ignore_errors=True)
            shutil.copytree(_base_run(root), out)
            edit(out)
            return run_cli(["stress", *TINY, "--out", str(out)], "error", ("--out", needle))

        c.add(f"resume with {name}", "cli", go)

    def set_edit(change: Callable[[dict], None]) -> Callable[[Path], None]:
        def edit(out: Path) -> None:
            path = out / "sets" / "seed0.json"
            data = json.loads(path.read_text())
            change(data)
            path.write_text(json.dumps(data))

        return edit

    def report_edit(change: Callable[[dict], Any]) -> Callable[[Path], None]:
        def edit(out: Path) -> None:
            path = out / "report.json"
            data = json.loads(path.read_text())
            change(data)
            path.write_text(json.dumps(data))

        return edit

    def text(t: str) -> Callable[[Path], None]:
        return lambda out: (out / "report.json").write_text(t)

    def other_seed(d: dict) -> None:
        fp = d["fingerprint"]
        fp["split_seed"], d["config"]["split_seed"] = 1, 1

    sets = {
        "set of another seed": (set_edit(other_seed), "seed0.json"),
        "set cut short": (set_edit(lambda d: d.__setitem__("indices", d["indices"][:-10])), "seed0.json"),
        "set cut consistently": (
            set_edit(
                lambda d: d.update(
                    indices=d["indices"][:-5],
                    initial_indices=d["initial_indices"][:-5],
                    size=len(d["indices"]) - 5,
                )
            ),
            "seed0.json",
        ),
        "set index changed": (
            set_edit(
                lambda d: d.__setitem__(
                    "indices",
                    sorted([*d["indices"][1:], next(i for i in range(9999) if i not in d["indices"])]),
                )
            ),
            "seed0.json",
        ),
        "set classes added": (set_edit(lambda d: d.__setitem__("classes", [3])), "seed0.json"),
        "set [true, false, 3]": (
            set_edit(lambda d: d.__setitem__("indices", [True, False, 3])),
            "seed0.json",
        ),
        "set seconds null": (set_edit(lambda d: d.__setitem__("seconds", None)), "seed0.json"),
        "set not json": (lambda out: (out / "sets" / "seed0.json").write_text("{"), "seed0.json"),
        "set a list": (lambda out: (out / "sets" / "seed0.json").write_text("[1,2]"), "seed0.json"),
        "set weights strings": (set_edit(lambda d: d.__setitem__("weights", ["a"])), "seed0.json"),
    }
    reports = {
        "report truncated": (
            lambda out: (out / "report.json").write_text((out / "report.json").read_text()[:200]),
            "report.json",
        ),
        "report empty": (text(""), "report.json"),
        "report a list": (text("[1, 2]"), "report.json"),
        "report a string": (text('"x"'), "report.json"),
        "report a number": (text("3"), "report.json"),
        "report binary": (lambda out: (out / "report.json").write_bytes(b"\xff\xfe\x00"), "report.json"),
        "report row a string": (report_edit(lambda d: d["results"].__setitem__(1, "edited")), "report.json"),
        "report row metric a string": (
            report_edit(lambda d: d["results"][0].__setitem__("UA", "x")),
            "report.json",
        ),
        "report results an object": (report_edit(lambda d: d.__setitem__("results", {})), "report.json"),
        "report config a list": (report_edit(lambda d: d.__setitem__("config", [])), "report.json"),
        "report searches entry a number": (
            report_edit(lambda d: d["searches"].__setitem__("0", 1)),
            "report.json",
        ),
        "report changed config": (report_edit(lambda d: d["config"].__setitem__("tune", True)), "tune"),
    }
    for name, (edit, needle) in {**sets, **reports}.items():
        tampered(name, edit, needle)

    def resume_untouched() -> tuple[str, str]:
        out = root / "t-untouched"
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(_base_run(root), out)
        return run_cli(["stress", *TINY, "--out", str(out)], "ok")

    c.add("resume untouched (good)", "cli", resume_untouched)


def cache_cases(c: Campaign) -> None:
    import hashlib

    import torch

    root = c.root

    def entry() -> tuple[Path, Path, Callable[[], Any]]:
        from unlearning.setup import prepare

        cache = root / f"cache-{len(list(root.glob('cache-*')))}"

        def again() -> Any:
            return prepare("digits", "mlp", "random:0.1", seed=0, cache_dir=cache)

        again()
        weights = next((cache / "models").glob("original-*.pt"))
        return weights, weights.with_suffix(".json"), again

    def meta(**changes: Any) -> Callable[[Path, Path], None]:
        return lambda w, m: m.write_text(json.dumps({**json.loads(m.read_text()), **changes}))

    def zeros(w: Path, m: Path) -> None:
        torch.save({k: torch.zeros_like(v) for k, v in torch.load(w, weights_only=True).items()}, w)

    def nan_rehashed(w: Path, m: Path) -> None:
        state = torch.load(w, weights_only=True)
        next(iter(state.values())).view(-1)[0] = float("nan")
        torch.save(state, w)
        m.write_text(
            json.dumps({**json.loads(m.read_text()), "sha256": hashlib.sha256(w.read_bytes()).hexdigest()})
        )

    def no_hash(w: Path, m: Path) -> None:
        info = json.loads(m.read_text())
        info.pop("sha256")
        m.write_text(json.dumps(info))

    tampers = {
        "weights zeroed (valid file)": zeros,
        "weights bytes zeroed": lambda w, m: w.write_bytes(bytes(len(w.read_bytes()))),
        "weights truncated": lambda w, m: w.write_bytes(w.read_bytes()[:100]),
        "weights NaN, hash updated": nan_rehashed,
        "meta seconds null": meta(seconds=None),
        "meta seconds text": meta(seconds="1"),
        "meta key changed": meta(key="x"),
        "meta a list": lambda w, m: m.write_text("[]"),
        "meta empty": lambda w, m: m.write_text(""),
        "weights deleted": lambda w, m: w.unlink(),
    }
    for name, tamper in tampers.items():

        def go(tamper: Callable[[Path, Path], None] = tamper) -> tuple[str, str]:
            weights, metafile, again = entry()
            tamper(weights, metafile)
            return run_lib(again, "warn", (str(weights),))

        c.add(f"cache: {name}", "lib", go)

    def swapped() -> tuple[str, str]:  # another valid model's weights and meta under this entry's names
        from unlearning.setup import prepare

        weights, metafile, again = entry()
        cache = weights.parent.parent
        prepare("digits", "mlp", "random:0.1", seed=1, cache_dir=cache)
        other = next(p for p in (cache / "models").glob("original-*.pt") if p != weights)
        weights.write_bytes(other.read_bytes())
        return run_lib(again, "warn", (str(weights),))

    c.add("cache: weights swapped for another model's", "lib", swapped)

    def legacy() -> tuple[str, str]:  # an entry of an older version (no hash): adopted, then checked
        weights, metafile, again = entry()
        no_hash(weights, metafile)
        outcome, detail = run_lib(again, "ok")
        if outcome != "works" or "sha256" not in json.loads(metafile.read_text()):
            return "other", f"not adopted: {detail}"
        zeros(weights, metafile)
        return run_lib(again, "warn", (str(weights),))

    c.add("cache: entry without hash adopted, then zeroed", "lib", legacy)


def library_cases(c: Campaign) -> None:
    from unlearning import models
    from unlearning.setup import prepare
    from unlearning.splits import load_indices
    from unlearning.stress import StressConfig
    from unlearning.worst_case import SearchResult

    root = c.root
    prep = {
        "seed 2**70": dict(seed=2**70),
        "seed True": dict(seed=True),
        "seed '0'": dict(seed="0"),
        "model_opts hidden=(-5,)": dict(model_opts={"hidden": (-5,)}),
        "model_opts depth=3": dict(model_opts={"depth": 3}),
        "forget class:42": dict(forget="class:42"),
        "forget random:2": dict(forget="random:2"),
        "dataset opts n=5": dict(dataset="synthetic", dataset_opts={"n": 5}),
        "device tpu": dict(device="tpu"),
        "model vgg": dict(model="vgg"),
    }
    for name, kw in prep.items():
        c.add(f"prepare({name})", "lib", lambda kw=kw: run_lib(lambda: prepare(**kw), "error"))
    configs = {
        "seeds []": dict(seeds=[]),
        "seeds [True]": dict(seeds=[True]),
        "seeds [0, 0]": dict(seeds=[0, 0]),
        "methods []": dict(methods=[]),
        "methods retrain": dict(methods=["retrain"]),
        "forget_fraction 2": dict(forget_fraction=2),
        "forget_fraction nan": dict(forget_fraction=float("nan")),
        "hypergrad x": dict(hypergrad="x"),
        "upper_steps 0": dict(upper_steps=0),
        "device x": dict(device="x"),
        "model x": dict(model="x"),
        "dataset x": dict(dataset="x"),
        "method_hparams for unlisted": dict(methods=["ga"], method_hparams={"ft": {"lr": 1}}),
    }
    for name, kw in configs.items():
        c.add(f"StressConfig({name})", "lib", lambda kw=kw: run_lib(lambda: StressConfig(**kw), "error"))
    for name, opts in {
        "mlp hidden=[-5]": {"hidden": [-5]},
        "mlp hidden=5": {"hidden": 5},
        "mlp width": {"width": 2},
    }.items():
        c.add(
            f"models.build({name})",
            "lib",
            lambda opts=opts: run_lib(
                lambda: models.build(
                    "mlp", image_shape=(1, 8, 8), num_classes=10, mean=(0.0,), std=(1.0,), **opts
                ),
                "error",
            ),
        )
    contents = {
        "bools": "[true, false, 3]",
        "nested": "[[1]]",
        "str": '"1,2"',
        "obj": '{"a": 1}',
        "float": "[1.5]",
        "none": "[null]",
    }
    for name, text in contents.items():
        path = root / f"lib-{name}.json"
        path.write_text(text)
        c.add(
            f"load_indices({name})",
            "lib",
            lambda p=path: run_lib(lambda: load_indices(p), "error", (str(p),)),
        )
    base = json.loads((_ensure_base(root) / "sets" / "seed0.json").read_text())
    results = {
        "classes added": {**base, "classes": [3]},
        "indices bools": {**base, "indices": [True, False, 3]},
        "size wrong": {**base, "size": 7},
        "initial short": {**base, "initial_indices": base["initial_indices"][:3]},
        "config a list": {**base, "config": []},
        "seconds null": {**base, "seconds": None},
        "weights text": {**base, "weights": "x"},
        "no indices": {k: v for k, v in base.items() if k != "indices"},
    }
    for name, data in results.items():
        path = root / f"result-{name.replace(' ', '-')}.json"
        path.write_text(json.dumps(data))
        c.add(
            f"SearchResult.load({name})",
            "lib",
            lambda p=path: run_lib(lambda: SearchResult.load(p), "error", (str(p),)),
        )
    good = root / "result-good.json"
    good.write_text(json.dumps(base))
    c.add("SearchResult.load(good)", "lib", lambda: run_lib(lambda: SearchResult.load(good), "ok"))


def _ensure_base(root: Path) -> Path:
    return _base_run(root)


def process_cases(c: Campaign) -> None:
    """Subprocess cases: a held --out (refused, then --wait), SIGINT and SIGKILL then resume, debris,
    terminal width."""
    root = c.root
    env = {**os.environ, "WORSTFORGET_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "unlearning.cli"]
    from tests.reliability.conftest import hold_lock

    def held(wait: bool) -> tuple[str, str]:
        out = root / f"held-{wait}"
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(_base_run(root), out)
        holder = hold_lock(out, 600)
        argv = [*cmd, "stress", *TINY, "--out", str(out), *(["--wait"] if wait else [])]
        p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if wait:
            time.sleep(3)
            if p.poll() is not None:
                return "other", "--wait did not wait"
        else:
            p.wait()
        holder.kill()
        _, err = p.communicate()
        return classify_exit(p.returncode, err, "ok" if wait else "error", ("--out", "in use"))

    c.add("stress on a folder another run holds", "cli", lambda: held(False))
    c.add("stress --wait on a folder another run holds (good)", "cli", lambda: held(True))

    def race() -> tuple[str, str]:
        out = root / "race"
        shutil.rmtree(out, ignore_errors=True)
        a = subprocess.Popen(
            [*cmd, "stress", *TINY, "--out", str(out)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
            stdout=subprocess.DEVNULL,
        )
        time.sleep(0.3)
        b = subprocess.Popen(
            [*cmd, "stress", *TINY[:1], "ft", *TINY[2:], "--out", str(out)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
            stdout=subprocess.DEVNULL,
        )
        results = [(p.wait(), p.stderr.read()) for p in (a, b)]
        codes = sorted(code for code, _ in results)
        if codes == [0, 0]:
            return "silent", "both exit 0"
        if codes != [0, 2]:
            return "other", str(results)[:300]
        err = next(e for code, e in results if code == 2)
        return classify_exit(2, err, "error", ("--out",))

    c.add("two stress runs 0.3 s apart, different --methods", "cli", race)

    def killed(sig: int) -> tuple[str, str]:
        out = root / f"killed-{sig}"
        shutil.rmtree(out, ignore_errors=True)
        cache = root / f"killcache-{sig}"
        full = {**env, "WORSTFORGET_CACHE": str(cache)}
        p = subprocess.Popen(
            [*cmd, "stress", *TINY, "--out", str(out)],
            env=full,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        report = out / "report.json"
        deadline = time.monotonic() + 120
        while p.poll() is None and not report.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        p.send_signal(sig)
        _, err = p.communicate()
        (out / ".report.json.999999999.x1y2.tmp").write_text("{")
        done = subprocess.run(
            [*cmd, "stress", *TINY, "--out", str(out)], env=full, capture_output=True, text=True
        )
        if done.returncode != 0:
            return "other", done.stderr[-300:]
        strip = lambda d: [{k: v for k, v in r.items() if k != "seconds"} for r in d["results"]]  # noqa: E731
        same = strip(json.loads(report.read_text())) == strip(
            json.loads((_base_run(root) / "report.json").read_text())
        )
        debris = list(out.rglob("*.tmp"))
        if "Traceback" in err:
            return "traceback", err.strip().splitlines()[-1]
        return ("works" if same and not debris else "silent"), f"same={same} debris={debris}"

    c.add("SIGINT mid-run, resume (good)", "cli", lambda: killed(signal.SIGINT))
    c.add("SIGKILL mid-run, resume (good)", "cli", lambda: killed(signal.SIGKILL))

    def narrow() -> tuple[str, str]:
        out = root / ("a-long-folder-name-" * 5) / "search"
        p = subprocess.run(
            [*cmd, *TINY_SEARCH, "--out", str(out)],
            env={**env, "COLUMNS": "20"},
            capture_output=True,
            text=True,
        )
        ok = p.returncode == 0 and str(out / "worst_case.json") in p.stdout
        return ("works" if ok else "other"), p.stdout.strip().splitlines()[-1][
            :300
        ] if p.stdout.strip() else ""

    c.add("search output in a 20-column terminal (good)", "cli", narrow)


# -------------------------------------------------------------------------------------------------- main
def build(root: Path) -> Campaign:
    c = Campaign(root)
    for group in (
        unlearn_cases,
        stress_cases,
        search_cases,
        tamper_cases,
        cache_cases,
        library_cases,
        process_cases,
    ):
        start = len(c.cases)
        group(c)
        for case in c.cases[start:]:
            case.group = group.__name__.removesuffix("_cases")
    return c


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write every case and its outcome to this file")
    parser.add_argument("--only", help="run only the cases whose name contains this text")
    args = parser.parse_args(argv)
    os.environ["WORSTFORGET_PROGRESS"] = "0"
    with tempfile.TemporaryDirectory(prefix="campaign-") as tmp:
        root = Path(tmp)
        os.environ["WORSTFORGET_CACHE"] = str(root / "cache")
        import torch

        torch.set_num_threads(1)
        campaign = build(root)
        rows = []
        for case in campaign.cases:
            if args.only and args.only not in case.name:
                continue
            start = time.perf_counter()
            try:
                outcome, detail = case.run()
            except Exception as exc:  # noqa: BLE001 - a broken case is counted, not fatal
                outcome, detail = "other", f"case failed: {traceback.format_exception_only(exc)[-1].strip()}"
            rows.append(
                {
                    "case": case.name,
                    "kind": case.kind,
                    "group": case.group,
                    "outcome": outcome,
                    "detail": detail,
                    "seconds": round(time.perf_counter() - start, 2),
                }
            )
            print(f"{outcome:9s} {case.kind:3s} {case.name}  {detail[:150]}", flush=True)
    counts = Counter(r["outcome"] for r in rows)
    kinds = Counter(r["kind"] for r in rows)
    print(
        f"\ntried {len(rows)} ({kinds['cli']} CLI, {kinds['lib']} library): "
        + ", ".join(f"{k} {counts[k]}" for k in ("clear", "works", "traceback", "silent", "other"))
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"counts": dict(counts), "cases": rows}, indent=1))
    return 0 if counts["traceback"] == counts["silent"] == counts["other"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
