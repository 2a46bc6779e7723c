"""``worstforget generate train|unlearn|stress``: unlearning a class from a class-conditional diffusion model.

``train`` trains (or loads from the cache) the original model and the judge, samples every class and writes
``metrics.json``, ``metrics.md`` and ``grid.png``. ``unlearn`` forgets ``--forget class:K`` with ``--method``
and writes rows for the original, Retrain and the method (UA, remaining-class accuracy, judge-space FID,
seconds) and the before/after grid; rows already in ``OUT/metrics.json`` for the same configuration are reused
(resume), another configuration is refused. ``stress`` compares each method on a random and on its worst-case
class (`unlearning.generation.stress`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import torch

from unlearning.commands import CLIError, check_out, coerce, parse_key_values, parse_opts

DESCRIPTION = """Unlearn a class from a class-conditional diffusion model (cross-attention on class tokens, as
Stable Diffusion is conditioned on text) and measure it with an independent judge classifier: UA (share of
the forgotten class's generations the judge does not call that class), accuracy of the remaining classes'
generations and FID on them in the judge's feature space (not Inception-FID). Trained models are cached
(--cache-dir, default $WORSTFORGET_CACHE or ~/.cache/worstforget).

Examples:
  worstforget generate train --out runs/gen-train
  worstforget generate unlearn --method salun --forget class:3 --out runs/gen-salun
  worstforget generate stress --methods rl,salun,esd --seeds 0,1,2 --out runs/gen-stress"""

DATASETS = ("digits", "mnist5k")
#: Adam steps of the iterative methods on a CPU (the published 1,000 are a GPU budget; docs/generation.md).
CPU_ITERATIONS = 100


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "generate",
        help="unlearn a class from a diffusion model (train | unlearn | stress)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=type(p))
    sub.required = True
    t = sub.add_parser("train", help="train (or load) the original model and the judge; sample every class")
    _common(t, "runs/gen-train")
    t.set_defaults(func=run_train)
    u = sub.add_parser("unlearn", help="forget one class with one method; rows for original, Retrain, method")
    _common(u, "runs/gen-unlearn")
    u.add_argument("--method", help="generation unlearning method (see --list-methods) or pkg.module:Class")
    u.add_argument("--forget", default="class:0", help="class:K or class:K1,K2 (default: class:0)")
    _method_flags(u)
    u.add_argument("--list-methods", action="store_true", help="list the methods and hyper-parameters, exit")
    u.set_defaults(func=run_unlearn)
    s = sub.add_parser("stress", help="each method on a random vs its worst-case forget class")
    _common(s, "runs/gen-stress")
    s.add_argument("--methods", default="rl,salun", help="comma-separated methods (default: rl,salun)")
    s.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    s.add_argument("--classes", help="candidate forget classes, comma-separated (default: every class)")
    s.add_argument("--search", action="store_true", help="also run the bi-level class-wise search")
    s.add_argument("--search-steps", type=int, default=10, help="upper steps of the search (default: 10)")
    _method_flags(s)
    s.set_defaults(func=run_stress)
    return p


def _common(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--dataset", default="digits", help=f"one of {', '.join(DATASETS)} (default: digits)")
    p.add_argument("--seed", type=int, default=0, help="seed of the method's draws and of the sampling")
    p.add_argument("--train-seed", type=int, default=0, help="seed of the original model's training")
    p.add_argument("--train-steps", type=int, help="training steps of the original and Retrain models")
    p.add_argument(
        "--unet-opt",
        action="append",
        metavar="KEY=VALUE",
        help="a UNetConfig field of the model, e.g. block_out_channels=[32,64] context_tokens=2 (repeatable)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--out", default=out, help=f"output folder (default: {out})")
    p.add_argument("--data-dir", help="folder holding dataset files")
    p.add_argument(
        "--cache-dir", help="trained-model cache (default: $WORSTFORGET_CACHE or ~/.cache/worstforget)"
    )
    p.add_argument("--per-class", type=int, default=100, help="generated images per class (default: 100)")
    p.add_argument("--sample-steps", type=int, default=50, help="DDIM sampling steps (default: 50)")
    p.add_argument(
        "--guidance", type=float, default=2.0, help="classifier-free guidance scale (default: 2.0)"
    )
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")


def _method_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--iterations", type=int, help=f"Adam steps (default: {CPU_ITERATIONS} on cpu, 1000 on cuda)"
    )
    p.add_argument("--lr", type=float, help="the method's learning rate (same as --hp lr=...)")
    p.add_argument("--batch-size", type=int, help="the method's batch size (same as --hp batch_size=...)")
    p.add_argument("--hp", action="append", metavar="KEY=VALUE", help="a method hyper-parameter (repeatable)")


# ------------------------------------------------------------------------------------------------ checks
def _check_common(args: argparse.Namespace) -> None:
    from unlearning.setup import resolve_device

    if args.dataset.lower() not in DATASETS:
        raise CLIError(
            f"argument --dataset: unknown dataset {args.dataset!r}; choose one of {', '.join(DATASETS)}"
        )
    try:
        resolve_device(args.device)
    except ValueError as err:
        raise CLIError(f"argument --device: {err}") from None
    check_out(args.out)
    for flag, value in (
        ("--per-class", args.per_class),
        ("--sample-steps", args.sample_steps),
        ("--train-steps", args.train_steps),
        ("--threads", args.threads),
    ):
        if value is not None and value < (2 if flag == "--per-class" else 1):
            low = 2 if flag == "--per-class" else 1
            raise CLIError(f"argument {flag}: must be an integer >= {low}, got {value}")
    if not args.guidance >= 0:
        raise CLIError(f"argument --guidance: must be >= 0, got {args.guidance}")


def parse_forget(spec: str, num_classes: int | None = None) -> tuple[int, ...]:
    """``class:K`` or ``class:K1,K2`` → the classes; a `CLIError` naming ``--forget`` otherwise."""
    kind, sep, value = str(spec).partition(":")
    try:
        classes = tuple(int(v) for v in value.split(",")) if sep and kind.strip() == "class" else ()
    except ValueError:
        classes = ()
    if not classes:
        raise CLIError(f"argument --forget: expected class:K or class:K1,K2 (e.g. class:3), got {spec!r}")
    if num_classes is not None:
        bad = [c for c in classes if not 0 <= c < num_classes]
        if bad:
            raise CLIError(f"argument --forget: class {bad[0]} is not in 0..{num_classes - 1}")
        if len(set(classes)) >= num_classes:
            raise CLIError("argument --forget: leave at least one class to remain")
    return classes


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values:
        raise CLIError(f"argument {flag}: expected comma-separated integers, e.g. 0,1,2; got {text!r}")
    return values


def method_from_args(args: argparse.Namespace, name: str) -> Any:
    """The method ``name`` with ``--iterations``, ``--lr``, ``--batch-size`` and ``--hp`` applied (the ones it
    has; ``--hp`` keys it lacks are refused); a `CLIError` naming the flag and the fix otherwise."""
    from unlearning.generation import methods as M

    if ":" in name:
        try:
            return M.resolve(name)
        except ValueError as err:
            raise CLIError(f"argument --method: {err}") from None
    cls = M.REGISTRY.get(name.lower())
    if cls is None:
        raise CLIError(f"argument --method: unknown method {name!r}; choose one of {', '.join(M.NAMES)}")
    known = cls.hyperparameters()
    hp: dict[str, Any] = {}
    iterations = args.iterations
    if iterations is None and str(args.device).startswith("cpu"):
        iterations = CPU_ITERATIONS
    for key, value in (("iterations", iterations), ("lr", args.lr), ("batch_size", args.batch_size)):
        if value is not None and key in known:
            hp[key] = value
    for key, text in parse_key_values(args.hp, "--hp").items():
        if key not in known:
            raise CLIError(
                f"argument --hp: method {cls.name} has no hyper-parameter {key!r}; valid: {', '.join(known)}"
            )
        hp[key] = coerce(text, known[key]["default"], f"argument --hp {key}")
    try:
        return M.make(cls.name, **hp)
    except ValueError as err:
        raise CLIError(f"argument --hp/--lr/--iterations/--batch-size: {err}") from None


# ---------------------------------------------------------------------------------------------- set-up
@dataclasses.dataclass
class Setup:
    """The dataset, the original model's recipe and the trained original and judge."""

    dataset: Any
    config: Any
    original: Any
    original_seconds: float
    judge: Any
    device: torch.device


def train_config(dataset: Any, args: argparse.Namespace) -> Any:
    """The training recipe of ``dataset``: `train.TrainConfig` with the data's classes and image shape (the
    UNet side padded up to a multiple of 2^(levels−1)), ``--train-seed`` and ``--train-steps``."""
    from unlearning.generation.model import UNetConfig
    from unlearning.generation.train import TrainConfig

    base = TrainConfig()
    levels = len(base.unet.block_out_channels)
    side = max(dataset.image_shape[1:])
    step = 2 ** (levels - 1)
    sample = max(base.unet.sample_size, -(-side // step) * step)
    unet = dataclasses.replace(
        base.unet, num_classes=dataset.num_classes, image_shape=tuple(dataset.image_shape), sample_size=sample
    )
    options = parse_opts(getattr(args, "unet_opt", None), "--unet-opt")
    known = {f.name for f in dataclasses.fields(UNetConfig)} - {"num_classes", "image_shape"}
    for key in options:
        if key not in known:
            raise CLIError(f"argument --unet-opt: unknown field {key!r}; valid: {', '.join(sorted(known))}")
    try:
        unet = dataclasses.replace(unet, **options)
    except (TypeError, ValueError) as err:
        raise CLIError(f"argument --unet-opt: {err}") from None
    steps = base.steps if args.train_steps is None else args.train_steps
    return dataclasses.replace(base, unet=unet, seed=args.train_seed, steps=steps)


def set_up(args: argparse.Namespace) -> Setup:
    """Load the dataset, then the original model and the judge (cached)."""
    from unlearning import datasets
    from unlearning.generation.judge import load_or_train_judge
    from unlearning.generation.train import load_or_train
    from unlearning.setup import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    try:
        dataset = datasets.load(args.dataset.lower(), args.data_dir, seed=0)
    except (ValueError, FileNotFoundError) as err:
        raise CLIError(f"argument --dataset/--data-dir: {err}") from None
    config = train_config(dataset, args)
    _say(f"original model: {args.dataset} ({config.steps} training steps, cached)")
    trained = load_or_train(dataset, config, cache_dir=args.cache_dir, device=device)
    judge = load_or_train_judge(dataset, cache_dir=args.cache_dir, device=device).model
    return Setup(dataset, config, trained.model, trained.seconds, judge, device)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _run_config(args: argparse.Namespace, setup: Setup, **extra: Any) -> dict[str, Any]:
    from unlearning.io import jsonable

    return jsonable(
        {
            "dataset": args.dataset.lower(),
            "train": setup.config.describe(),
            "seed": args.seed,
            "device": setup.device.type,
            "per_class": args.per_class,
            "sample_steps": args.sample_steps,
            "guidance": args.guidance,
            **extra,
        }
    )


def _evaluate(model: Any, setup: Setup, args: argparse.Namespace, forget: tuple[int, ...]) -> Any:
    from unlearning.generation.metrics import evaluate_generation

    return evaluate_generation(
        model,
        setup.judge,
        setup.dataset.train.to(setup.device),
        forget,
        per_class=args.per_class,
        steps=args.sample_steps,
        guidance=args.guidance,
        seed=args.seed,
    )


# ------------------------------------------------------------------------------------------------- runs
def run_train(args: argparse.Namespace) -> int:
    from unlearning.generation.grid import save_grid

    _check_common(args)
    setup = set_up(args)
    out = Path(args.out)
    metrics = _evaluate(setup.original, setup, args, ())
    row = {**metrics.as_dict(), "seconds": setup.original_seconds}
    report = {"config": _run_config(args, setup), "rows": {"original": row}}
    _write_rows(report, out)
    save_grid(out / "grid.png", metrics.images, None, (), titles=("original", ""))
    print(rows_markdown(report))
    return 0


def run_unlearn(args: argparse.Namespace) -> int:
    from unlearning.generation.grid import save_grid
    from unlearning.generation.methods import Retrain
    from unlearning.generation.task import GenerationTask

    if args.list_methods:
        return list_methods()
    if not args.method:
        raise CLIError("argument --method is required: e.g. --method salun (see --list-methods)")
    _check_common(args)
    _check_saved(Path(args.out) / "metrics.json", "rows")
    forget = parse_forget(args.forget)
    method = method_from_args(args, args.method)
    setup = set_up(args)
    forget = parse_forget(args.forget, setup.dataset.num_classes)
    hparams = method.hparams() if hasattr(method, "hparams") else {}
    config = _run_config(args, setup, forget=list(forget), method=method.name, hparams=hparams)
    out = Path(args.out)
    report = _load_rows(out / "metrics.json", config)
    task = GenerationTask(
        setup.dataset.train.to(setup.device),
        forget,
        setup.dataset.num_classes,
        seed=args.seed,
        train=(setup.dataset, setup.config, args.cache_dir),
    )
    images: dict[str, Any] = {}
    rows = (("original", None), ("retrain", Retrain()), (method.name, method))
    for name, meth in rows:
        images[name] = _row(report, out, name, meth, setup, task, args, forget)
    _write_rows(report, out)
    save_grid(
        out / "grid.png", images["original"], images[method.name], forget, titles=("original", method.name)
    )
    print(rows_markdown(report))
    return 0


def _row(report, out, name, method, setup, task, args, forget) -> torch.Tensor:
    """Compute (or reuse) the row ``name`` and return its images (K, n, C, H, W)."""
    path = out / f"images_{name}.pt"
    if name in report["rows"] and path.exists():
        _say(f"{name}: reused from {out}")
        return torch.load(path, weights_only=True)
    _say(f"{name}: running")
    if method is None:
        model, seconds, info = setup.original, setup.original_seconds, {}
    else:
        result = method.unlearn(setup.original, task)
        model, info = result.model, result.info
        seconds = info.get("train_seconds", result.seconds)
    metrics = _evaluate(model, setup, args, forget)
    report["rows"][name] = {**metrics.as_dict(), "seconds": seconds, "info": info}
    from unlearning.io import write_atomic

    write_atomic(path, lambda f: torch.save(metrics.images, f))
    _write_rows(report, out)
    return metrics.images


def _check_saved(path: Path, part: str) -> None:
    """A report a previous run left at ``path`` (resumed) is a JSON object with a ``config`` object and a
    ``part`` object; else a `CLIError` naming the file, before anything is trained."""
    import json

    if not path.exists():
        return
    fix = "delete it (or the folder) to start over, or choose another --out"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        why = " ".join(str(err).split())
        raise CLIError(f"argument --out: {path} is not readable JSON ({why}): {fix}") from None
    if not (isinstance(saved, dict) and isinstance(saved.get("config", {}), dict)):
        raise CLIError(f"argument --out: {path} is not a report (not a JSON object with a config): {fix}")
    if not isinstance(saved.get(part, {}), dict):
        raise CLIError(f"argument --out: {path}: {part!r} is not a JSON object (edited?): {fix}")


def _load_rows(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    from unlearning.generation.stress import ConfigMismatch, load_report

    try:
        return load_report(path, config, "rows")
    except ConfigMismatch as err:
        raise CLIError(f"argument --out: {err}") from None


def _write_rows(report: dict[str, Any], out: Path) -> None:
    from unlearning.io import jsonable, write_json, write_text

    write_json(out / "metrics.json", jsonable(report))
    write_text(out / "metrics.md", rows_markdown(report))


def rows_markdown(report: dict[str, Any]) -> str:
    """The rows as a markdown table (UA and accuracies in %, FID in the judge's feature space)."""
    config = report["config"]
    forget = config.get("forget")
    lines = [
        f"dataset {config['dataset']}, forget {forget if forget else '-'}, seed {config['seed']}, "
        f"{config['per_class']} images per class, {config['sample_steps']} DDIM steps, "
        f"guidance {config['guidance']}",
        "",
        "| model | UA % | remaining acc. % | FID (judge features) | seconds |",
        "|---|---|---|---|---|",
    ]
    for name, row in report["rows"].items():
        ua = "-" if row.get("ua") is None else f"{100 * row['ua']:.1f}"
        lines.append(
            f"| {name} | {ua} | {100 * row['remain_acc']:.1f} | {row['fid']:.3f} | {row['seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def run_stress(args: argparse.Namespace) -> int:
    from unlearning.generation.stress import ConfigMismatch
    from unlearning.generation.stress import run_stress as stress
    from unlearning.generation.task import GenerationTask

    _check_common(args)
    _check_saved(Path(args.out) / "report.json", "cells")
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    if not names:
        raise CLIError("argument --methods: name at least one method, e.g. --methods rl,salun")
    methods = {m.name: m for m in (method_from_args(args, n) for n in names)}
    seeds = _int_list(args.seeds, "--seeds")
    classes = None if args.classes is None else _int_list(args.classes, "--classes")
    if args.search_steps < 1:
        raise CLIError(f"argument --search-steps: must be an integer >= 1, got {args.search_steps}")
    setup = set_up(args)
    k = setup.dataset.num_classes
    if classes is not None and any(not 0 <= c < k for c in classes):
        raise CLIError(f"argument --classes: every class must be in 0..{k - 1}, got {args.classes}")
    hp = {n: getattr(m, "hparams", lambda: {})() for n, m in methods.items()}
    config = _run_config(
        args, setup, methods=names, hparams=hp, seeds=list(seeds), classes=classes, search=args.search
    )
    config["search_steps"] = args.search_steps if args.search else None
    task = GenerationTask(setup.dataset.train.to(setup.device), (0,), k, seed=seeds[0])
    metric_kw = {"per_class": args.per_class, "steps": args.sample_steps, "guidance": args.guidance}
    search_kw = {"outer_steps": args.search_steps} if args.search else None
    try:
        report = stress(
            setup.original,
            setup.judge,
            task,
            methods,
            seeds=seeds,
            classes=classes,
            out=Path(args.out),
            config=config,
            metric_kw=metric_kw,
            search_kw=search_kw,
            progress=_say,
        )
    except ConfigMismatch as err:
        raise CLIError(f"argument --out: {err}") from None
    from unlearning.generation.stress import stress_markdown

    print(stress_markdown(report))
    return 0


def list_methods() -> int:
    from unlearning.generation.methods import REGISTRY

    for name, cls in REGISTRY.items():
        print(name)
        for key, info in cls.hyperparameters().items():
            print(f"  {key} = {info['default']!r}  ({info['valid']}): {info['doc']}")
    return 0
