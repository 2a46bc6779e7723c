"""``worstforget stress``: every unlearning method on its worst-case forget set and on a random one, against
Retrain, over seeds (`unlearning.stress.stress_test`). Prints a table; writes ``OUT/report.json`` (row by
row, resumable), ``OUT/report.md``, the plots and ``OUT/sets/seed<S>.json``."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unlearning.commands import CLIError, check_no_op, check_out, coerce

if TYPE_CHECKING:
    from unlearning.stress import StressConfig, StressInputError

DESCRIPTION = """Stress-test unlearning methods on their worst-case forget set.

For each seed: train (or load from the cache) the original model; search the worst-case forget set of
--search-method by bi-level optimization (size: --forget-fraction of the training pool, or of the classes
with --class-wise); take the search's random start set of the same size as the baseline; run Retrain and
every method on both sets with the same hyper-parameters; report UA, RA, TA, MIA-Efficacy, run time and the
Avg. Gap to Retrain (mean ± std over seeds).

Outputs in --out: report.json (config + one row per selection/seed/method, written as each finishes),
report.md, avg_gap.png, ua_mia.png, search.png, sets/seed<S>.json (each worst-case set). Rerunning the same
command with the same --out resumes: finished rows and sets are reused, only missing ones are computed.

Examples:
  worstforget stress                                  # digits, MLP, all methods, seeds 0,1,2
  worstforget stress --methods ft,rl,salun --tune --out runs/stress
  worstforget stress --methods salun,mypkg.mymodule:MyMethod --out runs/mine
  worstforget stress --class-wise --forget-fraction 0.1 --out runs/classwise
  worstforget stress --dataset mnist5k --model cnn --search-batch-size 256 --out runs/mnist
  worstforget stress --dataset cifar10 --model resnet18 --device cuda --search-batch-size 256 \\
      --data-dir data"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from unlearning.stress import StressConfig
    from unlearning.worst_case import HYPERGRADS

    d = {f.name: f.default for f in dataclasses.fields(StressConfig)}  # the defaults: the config's

    p = subparsers.add_parser(
        "stress",
        help="worst-case vs random forget sets for every method, against Retrain",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--dataset",
        default=d["dataset"],
        help=f"dataset: digits, mnist5k, synthetic, cifar10 (default: {d['dataset']})",
    )
    p.add_argument("--model", default=d["model"], help=f"model: mlp, cnn, resnet18 (default: {d['model']})")
    p.add_argument(
        "--methods",
        default=",".join(d["methods"]),
        metavar="LIST",
        help="comma-separated methods to test: registry names or package.module:Class for your own "
        "(default: every method but retrain, the reference)",
    )
    p.add_argument(
        "--forget-fraction",
        type=float,
        default=d["forget_fraction"],
        metavar="F",
        help="forget-set size as a fraction in (0, 1) of the training pool, or of the classes with "
        f"--class-wise (default: {d['forget_fraction']})",
    )
    p.add_argument(
        "--class-wise",
        action="store_true",
        help="class-wise forgetting: search over whole classes; the random set is random classes",
    )
    p.add_argument(
        "--seeds",
        default=",".join(map(str, d["seeds"])),
        metavar="LIST",
        help="comma-separated seeds; each gives a split, an original model and its two forget sets "
        f"(default: {','.join(map(str, d['seeds']))})",
    )
    p.add_argument(
        "--search-method",
        default=d["search_method"],
        metavar="METHOD",
        help=f"method whose worst-case set is searched (name or package.module:Class; default: "
        f"{d['search_method']})",
    )
    p.add_argument(
        "--hypergrad",
        default=d["hypergrad"],
        metavar="MODE",
        help=f"hypergradient of the search: {', '.join(HYPERGRADS)} (default: {d['hypergrad']})",
    )
    p.add_argument(
        "--upper-steps",
        type=int,
        default=d["upper_steps"],
        help=f"upper-level steps of the search (default: {d['upper_steps']})",
    )
    p.add_argument(
        "--lower-steps",
        type=int,
        default=d["lower_steps"],
        help=f"lower-level steps per upper step of the search (default: {d['lower_steps']})",
    )
    p.add_argument(
        "--search-batch-size",
        type=int,
        metavar="N",
        help="mini-batch size of the search's lower level (seeded shuffles of the pool); default: the full "
        "pool, exact but slow for cnn/resnet18 (e.g. 256 there)",
    )
    p.add_argument(
        "--no-graph",
        action="store_true",
        help="the search's hypergradients eagerly (default on CUDA: one captured CUDA graph, replayed per "
        "step)",
    )
    p.add_argument(
        "--tune",
        action="store_true",
        help="grid-search each method's hyper-parameters (lr x 0.5/1/2 and one knob) on the first seed's "
        "random set by smallest Avg. Gap, then use them on both sets and all seeds; --hp values stay fixed",
    )
    p.add_argument(
        "--hp",
        action="append",
        metavar="METHOD.KEY=VALUE",
        help="a registry method's hyper-parameter, e.g. --hp rl.lr=0.02 (repeatable; never tuned)",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        default="runs/stress",
        help="output folder; rerunning with the same options resumes there (default: runs/stress)",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="if another run is using --out, wait for it to finish instead of stopping with an error",
    )
    p.add_argument("--device", default=d["device"], help=f"cpu or cuda (default: {d['device']})")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="N",
        help="CPU threads for torch (default: 1, fastest for the small digits models, above all on a shared "
        "machine; raise it for cnn/resnet18 on CPU)",
    )
    p.add_argument(
        "--data-dir", metavar="DIR", help="folder holding dataset files (cifar10: cifar-10-python.tar.gz)"
    )
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="trained-model cache (default: $WORSTFORGET_CACHE or ~/.cache/worstforget)",
    )
    p.add_argument(
        "--executor",
        default=d["executor"],
        metavar="NAME",
        help="where the grid runs: local (this process, in order) or ray (each unit a Ray task, on "
        "--ray-address; pip install 'worstforget[ray]'); same numbers either way (default: local)",
    )
    p.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="Ray cluster to use with --executor ray: auto (the cluster this node belongs to) or HOST:6379; "
        "default: a new Ray instance on this machine",
    )
    p.add_argument(
        "--gpus-per-task",
        type=float,
        default=d["gpus_per_task"],
        metavar="G",
        help="GPUs each Ray task asks for (0.5 packs two tasks on a GPU; needed with --device cuda) "
        f"(default: {d['gpus_per_task']:g})",
    )
    p.add_argument(
        "--cpus-per-task",
        type=float,
        default=d["cpus_per_task"],
        metavar="C",
        help="CPUs each Ray task asks for; it runs torch on that many threads "
        f"(default: {d['cpus_per_task']:g})",
    )
    p.set_defaults(func=run)
    return p


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise CLIError(f"argument --seeds: expected comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise CLIError(f"argument --seeds: expected distinct integers such as 0,1,2, got {text!r}")
    from unlearning.setup import check_seed

    for seed in seeds:
        try:
            check_seed(seed)
        except ValueError as err:
            raise CLIError(f"argument --seeds: {err}") from None
    return seeds


def _hparams(items: list[str] | None, methods: list[str]) -> dict[str, dict[str, Any]]:
    """``--hp`` values, typed like the registry method's defaults."""
    from unlearning.methods import REGISTRY, make

    out: dict[str, dict[str, Any]] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        name, dot, field = key.strip().partition(".")
        if not sep or not dot or not field:
            raise CLIError(f"argument --hp: expected METHOD.KEY=VALUE (e.g. rl.lr=0.02), got {item!r}")
        name = name.lower()
        if name not in methods:
            raise CLIError(f"argument --hp: {name!r} is not among --methods ({', '.join(methods)})")
        if name not in REGISTRY:
            raise CLIError(f"argument --hp: {name!r} is not a registry method; set its values in its class")
        spec = REGISTRY[name].hyperparameters()
        field = field.replace("-", "_")
        if field not in spec:
            raise CLIError(
                f"argument --hp: {name} has no hyper-parameter {field!r}; choose from {', '.join(spec)}"
            )
        out.setdefault(name, {})[field] = coerce(
            value.strip(), spec[field]["default"], f"argument --hp {key}"
        )
    for name, hp in out.items():
        check_no_op(name, hp, "argument --hp")
        try:
            make(name, **hp)
        except ValueError as err:
            raise CLIError(f"argument --hp: {err}") from None
    return out


#: `StressConfig` field (or `stress_test` argument) → the flag that sets it, where the names differ.
FLAGS = {"method_hparams": "--hp"}


def _search_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """``--search-batch-size`` and ``--no-graph`` as the search's options (None when neither is given)."""
    options: dict[str, Any] = {}
    if args.search_batch_size is not None:
        options["batch_size"] = args.search_batch_size
    if getattr(args, "no_graph", False):
        options["graph"] = False
    return options or None


def config_from_args(args: argparse.Namespace) -> StressConfig:
    """The `unlearning.stress.StressConfig` of the command line: every flag mapped onto its field (the one
    place that does so); a bad value is a `CLIError` naming the flag."""
    from unlearning.commands import check_at_least_one, check_experiment
    from unlearning.stress import StressConfig, StressInputError

    # on Ray the device is the workers' (a CPU head may drive GPU workers): StressConfig only parses it
    workers = argparse.Namespace(**{**vars(args), "device": "cpu"})
    check_experiment(args if args.executor == "local" else workers)
    check_at_least_one(args, "threads", "search_batch_size")
    seeds = _seeds(args.seeds)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    hparams = _hparams(args.hp, [m.lower() for m in methods if ":" not in m])
    try:
        return StressConfig(
            dataset=args.dataset.lower(),
            model=args.model.lower(),
            methods=[m if ":" in m else m.lower() for m in methods],
            forget_fraction=args.forget_fraction,
            class_wise=args.class_wise,
            seeds=seeds,
            search_method=args.search_method,
            hypergrad=args.hypergrad,
            upper_steps=args.upper_steps,
            lower_steps=args.lower_steps,
            search_options=_search_options(args),
            method_hparams=hparams,
            tune=args.tune,
            device=args.device,
            data_dir=args.data_dir,
            cache_dir=args.cache_dir,
            executor=args.executor,
            ray_address=args.ray_address,
            gpus_per_task=args.gpus_per_task,
            cpus_per_task=args.cpus_per_task,
        )
    except StressInputError as err:
        raise flag_error(err) from None


def flag_error(err: StressInputError) -> CLIError:
    """A `unlearning.stress.StressInputError` as the one-line error of the flag that sets its parameter."""
    return CLIError(f"argument {FLAGS.get(err.param, '--' + err.param.replace('_', '-'))}: {err.message}")


def run(args: argparse.Namespace) -> int:
    from unlearning import stress
    from unlearning.io import FolderInUse, locked
    from unlearning.loop import progress_bar
    from unlearning.report import stress_table

    config = config_from_args(args)
    check_out(args.out)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    bar = progress_bar()
    task = None

    def step(done: int, total: int, message: str) -> None:
        nonlocal task
        if task is None:
            task = bar.add_task("stress test", total=total)
        bar.update(task, completed=done, total=total, description=message)

    try:
        with locked(args.out, wait=args.wait), bar:  # one run at a time in --out: no row is lost
            report = stress.stress_test(config=config, out=args.out, progress=step)
    except FolderInUse as err:
        raise CLIError(f"argument --out: {err}") from None
    except stress.StressInputError as err:  # the output folder holds another configuration
        raise flag_error(err) from None
    stress_table(report, Path(args.out))
    return 0
