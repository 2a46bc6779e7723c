"""Everything an unlearning experiment starts from: ``prepare(dataset, model, forget) -> Prepared``.

Load the dataset → one split (pool / val / test) from ``seed`` → the forget set inside the pool → the original
model trained on the pool (cached) → on demand, the Retrain model, trained from the same initialisation with
the same recipe and batch-order seed on D_r = pool \\ D_f (cached too). One ``seed`` drives the split, the
forget set, the initial weights and the batch order; the dataset's own test split is fixed by ``data_seed``.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor, nn

from . import augment as augment_mod
from . import cache, datasets, models, splits, training
from .data_types import Augment, Task
from .datasets import Dataset
from .splits import Split
from .training import Recipe, default_recipe


def resolve_device(device: str | torch.device) -> torch.device:
    """``torch.device(device)``, checking that it exists (``ValueError`` naming the fix otherwise)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} not understood: use cpu or cuda (or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available here: use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s), use cuda:0"
            )
    elif dev.type not in ("cpu", "mps"):
        raise ValueError(f"device {device!r} not supported: use cpu or cuda")
    return dev


@dataclass
class Prepared:
    """A ready experiment: ``task`` (on ``device``), the trained ``original`` model and the ``recipe``;
    ``experiment`` is the `Experiment` it was prepared from."""

    dataset: Dataset
    split: Split
    task: Task
    original: nn.Module
    original_seconds: float
    original_from_cache: bool
    recipe: Recipe
    model_name: str
    model_opts: dict
    seed: int
    device: torch.device
    augment: Augment | None
    cache_dir: str | os.PathLike | None
    use_cache: bool
    forget: str
    _config: dict = field(repr=False, default_factory=dict)
    retrain_from_cache: bool | None = None
    experiment: Experiment | None = field(default=None, repr=False)

    def build_model(self) -> nn.Module:
        """A freshly initialised model of this experiment (seeded like the original), on ``device``."""
        ds = self.dataset
        return models.build(
            self.model_name,
            image_shape=ds.image_shape,
            num_classes=ds.num_classes,
            mean=ds.mean,
            std=ds.std,
            seed=self.seed,
            **self.model_opts,
        ).to(self.device)

    def fresh_original(self) -> nn.Module:
        """A deep copy of the original model (for callers that want to modify one)."""
        return copy.deepcopy(self.original)

    def retrain(self) -> tuple[nn.Module, float]:
        """Retrain: the model trained from the original's initialisation on D_r with the same recipe and seed
        (the registry's ``retrain`` method starts from the same weights: `unlearning.models.initialize`).

        Returns ``(model, seconds)``; seconds is the training time (measured when it was trained; cached)."""
        retain = self.task.retain
        # The forget set enters the key by content only: random:0.1, random:0.10 and an indices file naming
        # the same examples are one Retrain model.
        config = {**self._config, "forget_index": cache.fingerprint(self.task.forget_index)}
        trained = training.train_original(
            self.build_model,
            retain,
            self.recipe,
            seed=self.seed,
            config=config,
            augment=self.augment,
            kind="retrain",
            cache_dir=self.cache_dir,
            use_cache=self.use_cache,
            val=self.task.val,  # used only by a recipe with checkpoint='best_val'
        )
        self.retrain_from_cache = trained.from_cache
        return trained.model, trained.seconds


@dataclass(frozen=True)
class Experiment:
    """What `prepare` builds, as one value: the ``dataset`` (`unlearning.datasets.load`, with ``data_dir``,
    ``dataset_opts`` and ``data_seed``, which fixes the dataset's own test split), the ``model`` (a name of
    `unlearning.models.NAMES`, with ``model_opts``), the ``forget`` set (a spec such as ``"random:0.1"`` or
    ``"class:3"``, or pool positions), the ``seed`` of the split, the forget set, the initial weights and the
    batch order, the ``device``, the training ``recipe`` (None: `default_recipe`), ``augment`` (
    ``"default"``: `unlearning.augment.default_augment`; None: none), ``val_fraction`` of the split, the
    task's ``batch_size`` (None: the recipe's), and the model cache (``cache_dir``, ``use_cache``).

    An unknown model name is a ``ValueError`` when the experiment is built; the rest is checked where it is
    used (the dataset by its loader, the device by `resolve_device`, the forget spec by
    `unlearning.splits.forget_indices`)."""

    dataset: str = "digits"
    model: str = "mlp"
    forget: str | Tensor = "random:0.1"
    seed: int = 0
    device: str | torch.device = "cpu"
    data_dir: str | os.PathLike | None = None
    cache_dir: str | os.PathLike | None = None
    recipe: Recipe | None = None
    model_opts: dict | None = None
    dataset_opts: dict | None = None
    augment: Augment | None | str = "default"
    val_fraction: float = 0.1
    batch_size: int | None = None
    data_seed: int = 0
    use_cache: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or self.model.lower() not in models.NAMES:
            raise ValueError(f"unknown model {self.model!r}: choose one of {', '.join(models.NAMES)}")


def prepare(
    dataset: str | Experiment = "digits",
    model: str | None = None,
    forget: str | Tensor | None = None,
    **options: Any,
) -> Prepared:
    """Load, split, pick the forget set and train (or load) the original model; see the module docstring.

    ``prepare(dataset, model, forget, seed=..., device=..., ...)`` takes the fields of `Experiment` as
    keywords (``model`` default "mlp", ``forget`` default "random:0.1"); ``prepare(Experiment(...))`` takes
    one, and keywords given with it replace its fields. ``recipe`` defaults to `default_recipe(dataset,
    model)`; ``augment="default"`` picks `unlearning.augment.default_augment`; ``batch_size`` (the task's,
    for unlearning) defaults to the recipe's.
    """
    given = {k: v for k, v in (("model", model), ("forget", forget)) if v is not None} | options
    unknown = sorted(set(given) - {f.name for f in fields(Experiment)})
    if unknown:
        raise TypeError(f"prepare() got an unexpected keyword argument {unknown[0]!r}")
    if isinstance(dataset, Experiment):
        experiment = replace(dataset, **given) if given else dataset
    else:
        experiment = Experiment(dataset=dataset, **given)
    prepared = build(experiment)
    _about("model", _train_original, prepared)
    return prepared


def check_seed(seed: Any) -> int:
    """``seed`` is an integer in [0, 2^32) (every generator of the experiment derives from it)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2^32), e.g. 0, got {seed!r}")
    return seed


def _about(param: str, call: Any, *args: Any, **kwargs: Any) -> Any:
    """``call(*args, **kwargs)``; a ``ValueError``, ``TypeError`` or ``FileNotFoundError`` it raises gets
    ``param`` (the `Experiment` field it is about) as its ``param`` attribute and is raised as is, so a
    caller names the right option (the CLI: its flag) without guessing from the message."""
    try:
        return call(*args, **kwargs)
    except (ValueError, TypeError, FileNotFoundError) as err:
        if not hasattr(err, "param"):
            err.param = param  # type: ignore[attr-defined]
        raise


def build(exp: Experiment) -> Prepared:
    """The experiment up to its untrained original: the device, the dataset, the recipe and augmentation,
    the split and the task (on the device), and the cache key of the original model (``_config``)."""
    dev = _about("device", resolve_device, exp.device)
    _about("seed", check_seed, exp.seed)
    _about("model_opts", models.check_options, exp.model, dict(exp.model_opts or {}))
    opts = exp.dataset_opts or {}
    ds = _about(
        "dataset_opts" if opts else "dataset",
        datasets.load,
        exp.dataset,
        exp.data_dir,
        seed=exp.data_seed,
        **opts,
    )
    model_name = exp.model.lower()
    recipe = exp.recipe if exp.recipe is not None else default_recipe(ds.name, model_name)
    aug = augment_mod.default_augment(ds.name, ds.image_shape) if exp.augment == "default" else exp.augment
    split = _about("val_fraction", splits.make_split, ds, exp.seed, exp.val_fraction)
    task = _about(
        "forget",
        splits.make_task,
        split,
        exp.forget,
        num_classes=ds.num_classes,
        seed=exp.seed,
        augment=aug,
        batch_size=exp.batch_size or recipe.batch_size,
    ).to(dev)
    config = {
        "dataset": ds.describe(),
        "data_seed": exp.data_seed,
        "split": {"seed": exp.seed, "val_fraction": exp.val_fraction},
        "model": {"name": model_name, "options": exp.model_opts or {}},
        "device": dev.type,
    }
    forget = exp.forget
    return Prepared(
        dataset=ds,
        split=split,
        task=task,
        original=nn.Identity(),
        original_seconds=0.0,
        original_from_cache=False,
        recipe=recipe,
        model_name=model_name,
        model_opts=dict(exp.model_opts or {}),
        seed=exp.seed,
        device=dev,
        augment=aug,
        cache_dir=exp.cache_dir,
        use_cache=exp.use_cache,
        forget=forget if isinstance(forget, str) else f"indices[{task.forget_index.numel()}]",
        _config=config,
        experiment=exp,
    )


def _train_original(prepared: Prepared) -> None:
    """Train the original model on the pool (or load it from the cache) and store it in ``prepared``."""
    trained = training.train_original(
        prepared.build_model,
        prepared.task.pool,
        prepared.recipe,
        seed=prepared.seed,
        config=prepared._config,
        augment=prepared.augment,
        kind="original",
        cache_dir=prepared.cache_dir,
        use_cache=prepared.use_cache,
        val=prepared.task.val,  # used only by a recipe with checkpoint='best_val'
    )
    prepared.original = trained.model
    prepared.original_seconds = trained.seconds
    prepared.original_from_cache = trained.from_cache
