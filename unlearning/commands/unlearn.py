"""``worstforget unlearn``: run one unlearning method on one forget set and compare it with Retrain.

Steps: `unlearning.setup.prepare` (dataset, split, forget set, original model; cached) → the method's
``unlearn(original, task)`` → Retrain (cached) → UA, RA, TA, MIA-Efficacy and run time of Original, Retrain
and the method, and Avg. Gap = ¼ Σ |method − Retrain| over {UA, RA, TA, MIA}. Prints a table and writes
``OUT/metrics.json`` and ``OUT/metrics.md`` atomically.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from unlearning.commands import (
    CLIError,
    check_at_least_one,
    check_experiment,
    check_no_op,
    check_out,
    coerce,
    parse_key_values,
    parse_opts,
)

DESCRIPTION = """Unlearn a forget set from a trained model with one method and compare it with Retrain.

Forget sets: random:F (a fraction F in (0, 1) of the training pool), class:K (every example of class K; the
test set then drops class K) or indices:FILE (positions in the pool: .json list or {"indices": [...]} such as
a worst-case search result, .npy, .pt or .txt). Trained original and Retrain models are cached (--cache-dir,
default $WORSTFORGET_CACHE or ~/.cache/worstforget), so repeated runs only pay for the method.

Example: worstforget unlearn --method salun --forget class:3 --out runs/salun"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "unlearn",
        help="run one unlearning method and compare it with Retrain",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--method", help="unlearning method (see --list-methods), e.g. salun, ft, ga, rl")
    p.add_argument(
        "--forget", default="random:0.1", help="random:F, class:K or indices:FILE (default: random:0.1)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split, forget set, training and method")
    p.add_argument("--out", default="runs/unlearn", help="output folder (default: runs/unlearn)")
    add_experiment_arguments(p)
    p.add_argument("--lr", type=float, help="the method's learning rate (same as --hp lr=...)")
    p.add_argument("--epochs", type=int, help="the method's epochs (same as --hp epochs=...)")
    p.add_argument(
        "--hp",
        action="append",
        metavar="KEY=VALUE",
        help="a method hyper-parameter (repeatable; --list-methods)",
    )
    p.add_argument(
        "--train-epochs", type=int, help="override the training recipe's epochs (original, Retrain)"
    )
    p.add_argument("--train-lr", type=float, help="override the training recipe's learning rate")
    p.add_argument("--batch-size", type=int, help="the unlearning batch size (default: the recipe's)")
    p.add_argument(
        "--list-methods", action="store_true", help="list the methods and their hyper-parameters, exit"
    )
    p.set_defaults(func=run)
    return p


def add_experiment_arguments(p: argparse.ArgumentParser) -> None:
    """The flags `prepare_from_args` reads, shared by the commands that prepare an experiment (besides
    ``--seed`` and ``--out``, whose meaning each command states)."""
    from unlearning import datasets, models

    p.add_argument(
        "--dataset", default="digits", help=f"one of {', '.join(datasets.NAMES)} (default: digits)"
    )
    p.add_argument("--model", default="mlp", help=f"one of {', '.join(models.NAMES)} (default: mlp)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--data-dir", help="folder holding dataset files (cifar10: cifar-10-python.tar.gz)")
    p.add_argument(
        "--cache-dir", help="trained-model cache (default: $WORSTFORGET_CACHE or ~/.cache/worstforget)"
    )
    p.add_argument("--no-cache", action="store_true", help="train the original (and Retrain) models afresh")
    p.add_argument(
        "--data-opt",
        action="append",
        metavar="KEY=VALUE",
        help="dataset option, e.g. shape=3x32x32, n=500, limit=5000",
    )
    p.add_argument(
        "--model-opt", action="append", metavar="KEY=VALUE", help="model option, e.g. hidden=[256,128]"
    )
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")


# ------------------------------------------------------------------------------------------------ checks


def method_hparams(args: argparse.Namespace, recipe=None) -> tuple[str, dict[str, Any]]:
    """The method name and its hyper-parameters from ``--method``, ``--lr``, ``--epochs`` and ``--hp``."""
    from unlearning.methods import REGISTRY

    if not args.method:
        raise CLIError("argument --method is required: choose one of " + ", ".join(REGISTRY))
    name = args.method.lower()
    if name not in REGISTRY:
        raise CLIError(
            f"argument --method: unknown method {args.method!r}; choose one of {', '.join(REGISTRY)}"
        )
    known = REGISTRY[name].hyperparameters()
    raw = parse_key_values(args.hp, "--hp")
    for flag, key, value in (("--lr", "lr", args.lr), ("--epochs", "epochs", args.epochs)):
        if value is not None:
            if key not in known:
                raise CLIError(f"argument {flag}: method {name} has no hyper-parameter {key}")
            if key in raw:
                raise CLIError(
                    f"argument {flag}: {key} is also given by --hp {key}={raw[key]}; give it once "
                    f"(either {flag} {value} or --hp {key}=...)"
                )
            raw[key] = str(value)
    hp: dict[str, Any] = {}
    if name == "retrain" and recipe is not None:
        # the Retrain *method* trains with the reference Retrain's recipe; it starts from its own seeded fresh
        # initialisation (the reference reuses the original model's), so the two differ by that draw only
        hp.update({k: v for k, v in recipe.to_dict().items() if k in known})
    for key, text in raw.items():
        if key not in known:
            raise CLIError(
                f"argument --hp: method {name} has no hyper-parameter {key!r}; valid: {', '.join(known)}"
            )
        hp[key] = coerce(text, known[key]["default"], f"argument --hp {key}")
    flag = "--epochs" if args.epochs is not None else "--hp epochs"
    check_no_op(name, hp, f"argument {flag}")
    return name, hp


def _make_method(args: argparse.Namespace, hp: dict[str, Any]):
    """``make(method, **hp)``; a bad value is reported against the flag it came from."""
    from unlearning.methods import make

    try:
        return make(args.method.lower(), **hp)
    except ValueError as err:
        text = str(err)
        flag = "--hp"
        if args.lr is not None and "hyper-parameter lr " in text:
            flag = "--lr"
        elif args.epochs is not None and "hyper-parameter epochs " in text:
            flag = "--epochs"
        raise CLIError(f"argument {flag}: {err}") from None


def check_forget(spec: str) -> None:
    """``--forget`` is a well-formed spec whose file (``indices:FILE``) exists and holds positions, else a
    `CLIError` naming it; whether the file fits the data is checked by `prepare_from_args`."""
    from unlearning import splits

    try:
        kind, value = splits.parse_spec(spec)
        if kind == "random":
            splits.forget_indices(spec, _Sized(10**6), 0)  # validates the fraction only
        elif kind == "indices":
            splits.load_indices(value)
    except (ValueError, FileNotFoundError) as err:
        raise CLIError(f"argument --forget: {err}") from None


def check_inputs(args: argparse.Namespace) -> None:
    """Fail fast, before any training, on inputs that can be checked cheaply."""
    check_experiment(args)
    check_forget(args.forget)
    check_at_least_one(args, "train_epochs", "batch_size", "threads")
    check_out(args.out)


def prepare_from_args(args: argparse.Namespace, forget: str, **options: Any) -> Any:
    """`unlearning.setup.prepare` from the shared flags (``--dataset --model --seed --device --data-dir
    --cache-dir``, and ``--data-opt --model-opt --no-cache`` where the command has them) and ``options``
    (``recipe``, ``batch_size``); its errors become `CLIError` s naming the flag, e.g. a forget file made
    for another dataset or split (``--forget``)."""
    from unlearning.setup import prepare

    model_opts = parse_opts(getattr(args, "model_opt", None), "--model-opt")
    dataset_opts = parse_opts(getattr(args, "data_opt", None), "--data-opt")
    try:  # the seed and model options are checked first, before any data is loaded
        return prepare(
            args.dataset.lower(),
            args.model.lower(),
            forget,
            seed=args.seed,
            device=args.device,
            data_dir=args.data_dir,
            cache_dir=args.cache_dir,
            model_opts=model_opts,
            dataset_opts=dataset_opts,
            use_cache=not getattr(args, "no_cache", False),
            **options,
        )
    except (FileNotFoundError, TypeError, ValueError) as err:
        raise CLIError(f"argument {_flag_of(err)}: {err}") from None


#: `unlearning.setup.Experiment` field (the ``param`` of a `prepare` error) -> the flag that sets it.
FLAGS = {
    "device": "--device",
    "seed": "--seed",
    "model_opts": "--model-opt",
    "model": "--model/--model-opt",
    "dataset": "--dataset",
    "dataset_opts": "--data-opt",
    "forget": "--forget",
    "val_fraction": "--dataset/--data-opt",
}


def _flag_of(err: Exception) -> str:
    """The flag a `prepare` error is about: the field it names (``err.param``, set where it was raised), a
    missing dataset file (``--data-dir``) or, failing both, the training recipe's flags."""
    param = getattr(err, "param", None)
    if isinstance(err, FileNotFoundError) and param != "forget":
        return "--data-dir"
    return FLAGS.get(param, "--train-epochs/--train-lr")


class _Sized:
    """A stand-in pool of a given size (only ``len`` is used by random forget specs)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


# ---------------------------------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    if args.list_methods:
        return list_methods()
    from unlearning import metrics
    from unlearning.evaluate import run_method
    from unlearning.io import jsonable, write_json, write_text
    from unlearning.report import unlearn_markdown, unlearn_table
    from unlearning.training import default_recipe

    check_inputs(args)
    try:
        recipe = default_recipe(args.dataset.lower(), args.model.lower()).replace(
            epochs=args.train_epochs, lr=args.train_lr
        )
    except ValueError as err:
        raise CLIError(f"argument --train-epochs/--train-lr: {err}") from None
    _, early = method_hparams(args, recipe)
    _make_method(args, early)  # validate names and values before training anything
    if args.threads:
        torch.set_num_threads(args.threads)
    prepared = prepare_from_args(args, args.forget, recipe=recipe, batch_size=args.batch_size)
    name, hp = method_hparams(args, prepared.recipe)
    method = _make_method(args, hp)
    task = prepared.task

    torch.manual_seed(args.seed)
    result = run_method(method, prepared.original, task)
    retrain_model, retrain_seconds = prepared.retrain()

    original = {**metrics.evaluate(prepared.original, task), "seconds": prepared.original_seconds}
    retrain = {**metrics.evaluate(retrain_model, task), "seconds": retrain_seconds}
    unlearned = {**metrics.evaluate(result.model, task), "seconds": result.seconds}
    report = {
        "config": {
            "dataset": prepared.dataset.name,
            "model": prepared.model_name,
            "method": name,
            "forget": args.forget,
            "seed": args.seed,
            "device": str(prepared.device),
            "hparams": jsonable(method.hparams()),
            "recipe": prepared.recipe.to_dict(),
            "sizes": {"forget": len(task.forget_index), "retain": len(task.retain), "test": len(task.test)},
            "forget_class": task.forget_class,
            "cached": {
                "original": prepared.original_from_cache,
                "retrain": bool(prepared.retrain_from_cache),
            },
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        "method": {"name": name, **unlearned},
        "retrain": retrain,
        "original": original,
        "avg_gap": metrics.avg_gap(unlearned, retrain),
        "avg_gap_original": metrics.avg_gap(original, retrain),
    }
    out = Path(args.out)
    write_json(out / "metrics.json", report)
    write_text(out / "metrics.md", unlearn_markdown(report))
    unlearn_table(report, out)
    return 0


def list_methods() -> int:
    from rich.console import Console
    from rich.table import Table

    from unlearning.methods import REGISTRY

    table = Table(title="unlearning methods (--method NAME, --hp KEY=VALUE)")
    for col in ("method", "hyper-parameter", "default", "valid", "meaning"):
        table.add_column(col)
    for name, cls in REGISTRY.items():
        hps = cls.hyperparameters() or {"-": {"default": "", "valid": "", "doc": ""}}
        for i, (key, info) in enumerate(hps.items()):
            table.add_row(name if i == 0 else "", key, str(info["default"]), info["valid"], info["doc"])
    Console().print(table)
    return 0
