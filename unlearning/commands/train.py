"""``worstforget train``: train one experiment's original model (or, with ``--retrain``, its Retrain model)
into the model cache, in this process or over N processes with torch DDP under torchrun
(`unlearning.distributed.ddp`). Later ``stress`` / ``unlearn`` runs with the same data, model, seed and
device type load it from the cache."""

from __future__ import annotations

import argparse

from unlearning.commands import CLIError, check_at_least_one, check_experiment, parse_opts

DESCRIPTION = """Train a model into the model cache, on one process or on several with DDP.

The original model is trained on the training pool of --seed's split (Retrain with --retrain: on the pool
without the --forget set), with the default recipe of the dataset and model (--train-epochs/--train-lr
change it, and so the cache entry), and stored in the model cache, where `stress` and `unlearn` runs with
the same data, model, seed and device type find it. Under torchrun every process trains its shard of each
batch (gloo on CPU, NCCL on GPUs) and rank 0 writes the model, once; the weights are the one-process ones up
to float rounding.

Examples:
  worstforget train --dataset digits --model mlp --seed 0
  torchrun --nproc_per_node 2 -m unlearning.cli train --dataset digits --model mlp --seed 0
  torchrun --nproc_per_node 8 -m unlearning.cli train --dataset cifar10 --model resnet18 --device cuda \\
      --data-dir data --cache-dir /shared/worstforget --seed 0
  torchrun --nproc_per_node 8 -m unlearning.cli train --dataset cifar10 --model resnet18 --device cuda \\
      --data-dir data --cache-dir /shared/worstforget --seed 0 --retrain \\
      --forget indices:runs/c10/sets/seed0.json"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from unlearning.commands.unlearn import add_experiment_arguments

    p = subparsers.add_parser(
        "train",
        help="train an original (or Retrain) model into the model cache; DDP under torchrun",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split, initial weights and batch order")
    p.add_argument(
        "--retrain",
        action="store_true",
        help="train Retrain (on the pool without the --forget set) instead of the original model",
    )
    p.add_argument(
        "--forget",
        default="random:0.1",
        help="with --retrain: the forget set, random:F, class:K or indices:FILE (e.g. a stress run's "
        "sets/seed0.json) (default: random:0.1)",
    )
    add_experiment_arguments(p)
    p.add_argument("--train-epochs", type=int, help="override the training recipe's epochs")
    p.add_argument("--train-lr", type=float, help="override the training recipe's learning rate")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from unlearning.commands.unlearn import check_forget
    from unlearning.distributed.ddp import Launch, train_to_cache
    from unlearning.setup import Experiment
    from unlearning.training import default_recipe

    check_experiment(args)
    check_forget(args.forget)
    check_at_least_one(args, "train_epochs", "threads")
    if args.no_cache:
        raise CLIError("argument --no-cache: train writes the model cache; delete its entry to train again")
    try:
        recipe = default_recipe(args.dataset.lower(), args.model.lower()).replace(
            epochs=args.train_epochs, lr=args.train_lr
        )
    except ValueError as err:
        raise CLIError(f"argument --train-epochs/--train-lr: {err}") from None
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    experiment = Experiment(
        dataset=args.dataset.lower(),
        model=args.model.lower(),
        forget=args.forget,
        seed=args.seed,
        device=args.device,
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
        recipe=recipe,
        model_opts=parse_opts(args.model_opt, "--model-opt"),
        dataset_opts=parse_opts(args.data_opt, "--data-opt"),
    )
    launch = Launch.from_env()
    trained = train_to_cache(experiment, retrain=args.retrain, launch=launch)
    if trained is not None:
        kind = "Retrain" if args.retrain else "original"
        how = "found in the cache" if trained.from_cache else f"trained in {trained.seconds:.1f} s"
        where = (
            f" on {launch.world_size} processes" if launch.world_size > 1 and not trained.from_cache else ""
        )
        print(f"{kind} model {how}{where}: {trained.path}")
    return 0
