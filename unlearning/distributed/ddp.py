"""One model trained over several processes with torch DistributedDataParallel, into the model cache.

Launched by ``torchrun --nproc_per_node N -m unlearning.cli train --dataset D --model M ...`` (torchrun sets
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and the rendezvous); without torchrun (``WORLD_SIZE`` unset or 1)
the same command trains in this one process. Backend: NCCL on GPUs (rank r on ``cuda:LOCAL_RANK``), gloo on
CPU. Every rank builds the same experiment (`unlearning.setup.Experiment`: split, seeded initial weights,
recipe); `unlearning.training.train_sharded` splits each of `train`'s global batches over the ranks, so the
model is the single-process one up to float rounding, and it is stored under the same cache key
(`unlearning.training.cache_config`): a later ``stress`` / ``unlearn`` / ``prepare`` with the same data,
model, seed and device type loads it instead of training. Rank 0 alone looks the entry up and writes it
(`unlearning.cache.load_or_train`, atomic), once; it tells the other ranks whether to train.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .. import cache, training
from ..setup import Experiment, Prepared


@dataclasses.dataclass(frozen=True)
class Launch:
    """This process's place in the job: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls) -> Launch:
        """From torchrun's ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` (one process when unset)."""
        try:
            values = {k: int(os.environ.get(k.upper(), d)) for k, d in (("rank", 0), ("local_rank", 0))}
            world = int(os.environ.get("WORLD_SIZE", 1))
        except ValueError as err:
            raise ValueError(
                f"torchrun environment (RANK, LOCAL_RANK, WORLD_SIZE) not integers: {err}"
            ) from None
        if world < 1 or not 0 <= values["rank"] < world:
            raise ValueError(f"torchrun environment: RANK {values['rank']} not in [0, WORLD_SIZE={world})")
        return cls(world_size=world, **values)


def train_to_cache(experiment: Experiment, *, retrain: bool = False, launch: Launch | None = None) -> Any:
    """Train ``experiment``'s original model (``retrain``: its Retrain model, on D_r = pool ∖ forget set)
    over the processes of ``launch`` (default: `Launch.from_env`) and store it in the model cache, unless
    it is there already. Returns the `unlearning.cache.Trained` entry on rank 0, None on the other ranks."""
    import torch.distributed as dist

    launch = launch or Launch.from_env()
    if launch.world_size == 1:
        return _train(experiment, retrain, launch, lambda flag: flag)
    device = torch.device(experiment.device)
    if device.type == "cuda":
        torch.cuda.set_device(launch.local_rank)
        experiment = dataclasses.replace(experiment, device=f"cuda:{launch.local_rank}")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        result = _train(experiment, retrain, launch, _broadcast)
        # Every rank leaves together: a rank that tears its gloo pairs down while another still has traffic
        # on them makes that one abort ("terminate called without an active exception").
        dist.barrier()
        return result
    finally:
        dist.destroy_process_group()


def _broadcast(flag: bool | None) -> bool:
    """Rank 0's ``flag`` (True: train; False: the model is in the cache), received by every rank."""
    import torch.distributed as dist

    box = [flag]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


def _train(experiment: Experiment, retrain: bool, launch: Launch, tell: Callable[[bool | None], bool]) -> Any:
    """One process: `training.train_original`, the very call `prepare` / `Prepared.retrain` make. Several:
    rank 0 runs `cache.load_or_train`, whose fit first tells the others to train; the others wait for the
    word and train their shards (`training.train_sharded`)."""
    from ..setup import build

    prepared = build(experiment)
    kind, data, config = _entry(prepared, retrain)
    if launch.world_size == 1:
        return training.train_original(
            prepared.build_model,
            data,
            prepared.recipe,
            seed=prepared.seed,
            config=config,
            augment=prepared.augment,
            kind=kind,
            cache_dir=prepared.cache_dir,
            use_cache=True,
            val=prepared.task.val,
        )
    if prepared.recipe.checkpoint != "last":
        raise ValueError(
            f"recipe checkpoint {prepared.recipe.checkpoint!r}: DDP training keeps the last epoch only; "
            "train this recipe in one process (without torchrun)"
        )

    def fit(model: nn.Module) -> nn.Module:
        return training.train_sharded(
            model,
            data,
            prepared.recipe,
            seed=prepared.seed,
            rank=launch.rank,
            world_size=launch.world_size,
            augment=prepared.augment,
            description=kind,
        )

    if launch.rank != 0:
        if tell(None):
            fit(prepared.build_model())
        return None

    def fit_and_tell(model: nn.Module) -> nn.Module:
        tell(True)
        return fit(model)

    full = training.cache_config(config, data, prepared.recipe, seed=prepared.seed, augment=prepared.augment)
    trained = cache.load_or_train(
        kind, full, prepared.build_model, fit_and_tell, cache_dir=prepared.cache_dir, use_cache=True
    )
    if trained.from_cache:
        tell(False)
    return trained


def _entry(prepared: Prepared, retrain: bool) -> tuple[str, Any, dict]:
    """The entry's kind, training data and configuration (before the recipe, seed, augmentation and data
    are added), as `unlearning.setup.prepare` (original, on the pool) and `Prepared.retrain` (Retrain, on
    D_r, the forget set by content) key them."""
    task = prepared.task
    if retrain:
        config = {**prepared._config, "forget_index": cache.fingerprint(task.forget_index)}
        return "retrain", task.retain, config
    return "original", task.pool, prepared._config
