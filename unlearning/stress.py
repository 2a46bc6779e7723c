"""The stress test: how much worse does each unlearning method do on its worst-case forget set than on a
random one of the same size, measured against retraining from scratch? (Fan et al., ECCV 2024.)

``stress_test(...)`` runs the whole protocol for one `StressConfig` (built from its keywords, or passed as
``config=``). For every seed s:

1. models: `prepare` the split and the original model θ_o (trained on the whole pool; cached);
2. sets: `worst_case.search` the worst-case forget set W_s of ``search_method`` (m = ``forget_fraction`` of
   the pool, or of the classes when ``class_wise``) from a random m-hot start R_s; R_s is the random forget
   set it is compared with (same size, same seed; class-wise: m random classes);
3. rows: on each set D_f ∈ {R_s, W_s}: Retrain on D_r = pool ∖ D_f (cached), then every method from θ_o with
   the same hyper-parameters on both sets, and UA, RA, TA, MIA-Efficacy (percent) and run time of each;
   Avg. Gap(method) = ¼ Σ_{M ∈ {UA, RA, TA, MIA}} |M(method) − M(Retrain on the same set)|;
4. summary: mean and sample standard deviation over seeds (`summarize`), then the files.

``tune=True`` first grid-searches each method's hyper-parameters (`tune_grid`) on the random set of the first
seed and keeps the values with the smallest Avg. Gap, as the paper tunes on random sets; values the caller
fixed in ``method_hparams`` are not tuned.

The report holds one row per (selection, seed, method) in ``results`` and, per (selection, method), the mean
and sample standard deviation over seeds in ``summary``, plus ``gap_increase`` = mean gap on W − mean gap on
R (positive: the worst-case set exposes the method). With ``out``, every row is written to
``out/report.json`` (atomically) as soon as it is computed, each seed's worst-case set to
``out/sets/seed<S>.json``, and a second call with the same ``out`` and an equal configuration (its
`StressConfig.record`) computes only what is missing. Tables, markdown and plots: `unlearning.report`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from bilevel.validate import one_of, positive_int

from . import metrics
from .evaluate import RESERVED, build_methods, method_row
from .io import jsonable, write_json, write_text
from .methods import REGISTRY, resolve
from .report import PLOTS, stress_markdown, stress_plots  # noqa: F401 (PLOTS: the figures a run writes)
from .worst_case import HYPERGRADS, SearchResult, resolve_budget, search

SELECTIONS = ("random", "worst")
#: every registry method but Retrain (the reference) and FF (added by issue 15 after the recorded default runs
#: in docs/results; left out so those runs keep their config and resume; pass it by name)
DEFAULT_METHODS = tuple(name for name in REGISTRY if name not in ("retrain", "ff"))
DEFAULT_SEEDS = (0, 1, 2)
METRICS = ("UA", "RA", "TA", "MIA")
COLUMNS = (*METRICS, "avg_gap", "seconds")
REPORT = "report.json"
FORMAT = 1
#: The keys of a report's ``config`` (`StressConfig.record`), in their order in ``report.json``.
RECORD_KEYS = (
    "dataset",
    "model",
    "methods",
    "forget_fraction",
    "class_wise",
    "forget_size",
    "seeds",
    "search_method",
    "hypergrad",
    "search_options",
    "method_hparams",
    "tune",
    "device",
)

#: ``tune=True``: every method with a learning rate ``lr`` tries lr × these factors, crossed with the values
#: of one method-specific knob below (the method's current value is always a candidate, and comes first, so a
#: tie keeps it). A method may define its own grid as an attribute ``tune_grid = {"field": (values, ...)}``.
LR_FACTORS = (1.0, 0.5, 2.0)
TUNE_KNOBS: dict[str, dict[str, tuple]] = {
    "iu": {"alpha": (50.0, 25.0, 100.0)},  # WoodFisher step scale (IU has no lr)
    "l1_sparse": {"gamma": (5e-4, 2e-4, 1e-3)},  # ℓ1 strength
    "bs": {"epsilon": (0.1, 0.05, 0.2)},  # FGSM step that finds the neighbouring label
    "eu_k": {"k": (1, 2)},  # last layers re-initialised and retrained
    "cf_k": {"k": (1, 2)},  # last layers retrained
    # RL and SalUn: the paper's kind of ranges for random forgetting (docs/results.md, "SalUn's headline
    # claim"): with lr × {1, 0.5, 2}, epochs and the weight α of the retain loss; SalUn's sparsity stays at
    # its value (0.5, the paper's).
    "rl": {"epochs": (10, 20), "alpha": (1.0, 2.0, 4.0)},
    "salun": {"epochs": (10, 20), "alpha": (1.0, 2.0, 4.0)},
    "salun_soft": {"mask_ratio": (0.5, 0.3, 0.7)},
}


class StressInputError(ValueError):
    """A bad argument of `stress_test`; ``param`` names it (the CLI prints it as the matching flag)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


# ------------------------------------------------------------------------------------------------ config
class _Resolved(NamedTuple):
    """What a `StressConfig` names, built once when it is checked."""

    methods: tuple[Any, ...]
    search_method: Any
    forget_size: int


@dataclasses.dataclass(frozen=True)
class StressConfig:
    """Every option of the stress test, checked when built (``StressInputError`` naming the option).

    ``methods``: names (``"salun"``), `unlearning.methods.Method` objects (``MyMethod()``) or
    ``"pkg.module:Class"`` specs, or one comma-separated string of names and specs; default: every registry
    method but Retrain and FF (`DEFAULT_METHODS`). The report names each by ``method.name``.
    ``search_method``: the method whose worst-case set is searched (a name, an object or a spec).
    ``forget_fraction``: m as a fraction in (0, 1) of the pool, or of the classes when ``class_wise`` (0.1
    of 10 classes = 1 class). ``seeds``: distinct integers. ``hypergrad``: one of `worst_case.HYPERGRADS`;
    ``upper_steps`` and ``lower_steps`` (≥ 1): the search's outer steps and lower-level steps per outer step;
    ``search_options``: further
    `worst_case.search` keywords. ``method_hparams``: ``{name: {key: value}}`` for registry methods (fixed,
    never tuned). ``device``, ``data_dir``, ``cache_dir``: as `unlearning.setup.prepare`. ``executor``:
    ``"local"`` (one process, in order) or ``"ray"`` (each unit a Ray task,
    `unlearning.distributed.ray_executor`, on the cluster at ``ray_address``, asking for ``gpus_per_task``
    GPUs and ``cpus_per_task`` CPUs); they say where the grid runs, not what it computes: not recorded.

    Checking loads the dataset once (m must leave at least one example, or class, out of the forget set).
    ``seeds`` is kept as a tuple, ``methods`` as a tuple of entries, and None options as ``{}``. The
    resolved methods, the searched method and m are `built_methods`, `built_search_method` and
    `forget_size`; `record` is the report's ``config``.
    """

    dataset: str = "digits"
    model: str = "mlp"
    methods: Sequence[Any] | str = DEFAULT_METHODS
    forget_fraction: float = 0.1
    class_wise: bool = False
    seeds: Sequence[int] = DEFAULT_SEEDS
    search_method: Any = "ft"
    hypergrad: str = "first_order"
    upper_steps: int = 20
    lower_steps: int = 10
    search_options: dict[str, Any] | None = None
    method_hparams: dict[str, dict[str, Any]] | None = None
    tune: bool = False
    device: str = "cpu"
    data_dir: str | None = None
    cache_dir: str | None = None
    executor: str = "local"
    ray_address: str | None = None
    gpus_per_task: float = 0.0
    cpus_per_task: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.seeds, (str, bytes)):
            object.__setattr__(self, "seeds", tuple(self.seeds))
        object.__setattr__(self, "methods", tuple(_split(self.methods)))
        for name in ("search_options", "method_hparams"):  # None and {} say the same: nothing given
            if getattr(self, name) is None:
                object.__setattr__(self, name, {})
        object.__setattr__(self, "_resolved", _resolve(self))

    @property
    def built_methods(self) -> list[Any]:
        """The method objects under test, in order."""
        return list(self._resolved.methods)  # type: ignore[attr-defined]

    @property
    def built_search_method(self) -> Any:
        """The method object whose worst-case set is searched."""
        return self._resolved.search_method  # type: ignore[attr-defined]

    @property
    def forget_size(self) -> int:
        """m: examples in each forget set, or classes when ``class_wise``."""
        return self._resolved.forget_size  # type: ignore[attr-defined]

    def search_keywords(self) -> dict[str, Any]:
        """The keywords `worst_case.search` gets besides the budget, mode and seed."""
        return {
            "upper_steps": self.upper_steps,
            "inner_steps": self.lower_steps,
            **(self.search_options or {}),
        }

    def setup_keywords(self) -> dict[str, Any]:
        """The keywords `unlearning.setup.prepare` gets besides the data, model, forget set and seed."""
        return {"device": self.device, "data_dir": self.data_dir, "cache_dir": self.cache_dir}

    def record(self) -> dict[str, Any]:
        """The report's ``config`` (`RECORD_KEYS`, JSON values): the fields (as `dataclasses.asdict` lists
        them, without its deep copy of method objects) and what they determine: ``methods`` and
        ``search_method`` as ``{name, spec, hparams}``, ``forget_size`` (m), ``search_options`` =
        `search_keywords` (``upper_steps``, ``lower_steps`` folded in). ``data_dir`` and ``cache_dir`` say
        where files live, not what is computed: not recorded, so a moved cache still resumes."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        derived = {
            "methods": [_describe_method(s, m) for s, m in zip(self.methods, self.built_methods)],
            "class_wise": bool(self.class_wise),
            "forget_size": self.forget_size,
            "search_method": _describe_method(self.search_method, self.built_search_method),
            "search_options": self.search_keywords(),
            "method_hparams": self.method_hparams or {},
            "tune": bool(self.tune),
            "device": str(self.device),
        }
        values = {**fields, **derived}
        return jsonable({key: values[key] for key in RECORD_KEYS})


def changed_keys(record: dict[str, Any], saved: dict[str, Any]) -> list[str]:
    """The keys in which a saved report's ``config`` differs from ``record`` (a `StressConfig.record`); none
    when they are equal and the report has this `FORMAT`, else at least ``["format"]``."""
    old = saved.get("config", {})
    if saved.get("format") == FORMAT and old == record:
        return []
    return sorted(k for k in set(record) | set(old) if record.get(k) != old.get(k)) or ["format"]


def _guard(param: str, check: Callable[..., Any], *args: Any, named: bool = True) -> Any:
    """``check(*args)``, its ``ValueError`` or ``TypeError`` raised as `StressInputError` naming ``param``
    (``named``: the message starts with ``param``, dropped since the error names it)."""
    try:
        return check(*args)
    except (ValueError, TypeError) as err:
        text = str(err)
        raise StressInputError(param, text.removeprefix(f"{param} ") if named else text) from None


def _resolve(config: StressConfig) -> _Resolved:
    """Check every option of ``config`` (in the order of the dataclass fields that depend on nothing else)
    and build what it names."""
    from . import datasets, models, splits
    from .setup import resolve_device

    _guard("hypergrad", one_of, config.hypergrad, "hypergrad", HYPERGRADS)
    seeds = _check_seeds(config.seeds)
    _guard("upper_steps", positive_int, config.upper_steps, "upper_steps")
    _guard("lower_steps", positive_int, config.lower_steps, "lower_steps")
    _check_executor(config)
    # on Ray the device is a worker's: the driver only parses the name (a CPU head may drive GPU workers)
    check_device = resolve_device if config.executor == "local" else _parse_device
    _guard("device", check_device, config.device, named=False)
    built = resolve_methods(config.methods, config.method_hparams)
    searched = _search_method(config.search_method, config.method_hparams)
    if str(config.model).lower() not in models.NAMES:
        raise StressInputError(
            "model", f"unknown model {config.model!r}; choose one of {', '.join(models.NAMES)}"
        )
    try:
        ds = datasets.load(config.dataset, config.data_dir)
    except (ValueError, FileNotFoundError) as err:
        raise StressInputError("dataset", str(err)) from None
    pool = splits.make_split(ds, seeds[0]).pool
    return _Resolved(tuple(built), searched, _check_fraction(config.forget_fraction, config.class_wise, pool))


EXECUTORS = ("local", "ray")


def _check_executor(config: StressConfig) -> None:
    """``executor`` is one of `EXECUTORS` (``"ray"`` installed: ``pip install 'worstforget[ray]'``),
    ``gpus_per_task`` ≥ 0 and ``cpus_per_task`` > 0 (numbers; fractions pack tasks on one device),
    ``ray_address`` text."""
    import importlib.util

    _guard("executor", one_of, config.executor, "executor", EXECUTORS)
    if config.executor == "ray" and importlib.util.find_spec("ray") is None:
        raise StressInputError(
            "executor", "ray is not installed here: pip install 'worstforget[ray]' (or use --executor local)"
        )
    for name, least in (("gpus_per_task", 0.0), ("cpus_per_task", None)):
        value = getattr(config, name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or (value < least if least is not None else value <= 0):
            bound = ">= 0" if least is not None else "> 0"
            raise StressInputError(name, f"must be a number {bound} (e.g. 1 or 0.5), got {value!r}")
    if config.ray_address is not None and not isinstance(config.ray_address, str):
        raise StressInputError(
            "ray_address", f"expected an address such as auto or HOST:6379, got {config.ray_address!r}"
        )
    if config.executor == "ray" and str(config.device).startswith("cuda") and not config.gpus_per_task:
        raise StressInputError(
            "gpus_per_task",
            "device cuda on Ray needs a GPU per task: give --gpus-per-task 1 (or 0.5 to pack two)",
        )


def _parse_device(device: Any) -> Any:
    """``torch.device(device)`` of cpu/cuda/mps, without looking for the device here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} not understood: use cpu or cuda (or cuda:N)") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r} not supported: use cpu or cuda")
    return dev


def _search_method(spec: Any, method_hparams: dict[str, dict[str, Any]] | None) -> Any:
    """The searched method: a registry name gets its ``method_hparams`` entry; an object or spec is as is."""
    key = spec.strip().lower() if isinstance(spec, str) else None
    try:
        return resolve(
            key if key and ":" not in key else spec,
            **((method_hparams or {}).get(key, {}) if key else {}),
        )
    except (ValueError, TypeError) as err:
        raise StressInputError("search_method", str(err)) from None


def _describe_method(spec: Any, method: Any) -> dict[str, Any]:
    """A method in the report: its name, the spec that rebuilds it and its hyper-parameters."""
    return {"name": method.name, "spec": _method_spec(spec, method), "hparams": _hparams_of(method)}


def _method_spec(spec: Any, method: Any) -> str:
    if isinstance(spec, str):
        return spec.strip()
    cls = type(method)
    return f"{cls.__module__}:{cls.__qualname__}"


def _hparams_of(method: Any) -> dict[str, Any]:
    get = getattr(method, "hparams", None)
    return jsonable(get()) if callable(get) else {}


def _split(methods: Sequence[Any] | str) -> list[Any]:
    """The method entries: a comma-separated string split, blank names dropped."""
    items = methods.split(",") if isinstance(methods, str) else list(methods)
    return [
        m.strip() if isinstance(m, str) else m for m in items if not (isinstance(m, str) and not m.strip())
    ]


def resolve_methods(
    methods: Sequence[Any] | str, method_hparams: dict[str, dict[str, Any]] | None = None
) -> list[Any]:
    """Method objects from names, objects or ``"pkg.module:Class"`` specs (a comma-separated string is split):
    `unlearning.evaluate.build_methods`, its ``ValueError`` raised as `StressInputError` naming
    ``method_hparams`` or ``methods``."""
    try:
        return build_methods(_split(methods), method_hparams)
    except (ValueError, TypeError) as err:
        text = str(err)
        param = "method_hparams" if "hyper-parameters" in text or "hyper-parameter" in text else "methods"
        raise StressInputError(param, text) from None


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise StressInputError("seeds", f"expected a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise StressInputError("seeds", f"seeds must be distinct, got {seeds}")
    return seeds


def _check_fraction(fraction: Any, class_wise: bool, pool: Any) -> int:
    """m, the forget-set size (examples, or classes when class-wise), from the fraction."""
    unit = "classes" if class_wise else "pool"
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise StressInputError(
            "forget_fraction", f"must be a fraction of the {unit} in (0, 1) (e.g. 0.1), got {fraction!r}"
        )
    n = len(set(pool.y.tolist())) if class_wise else len(pool)
    try:
        return resolve_budget(float(fraction), n, what="set of classes" if class_wise else "pool")
    except ValueError as err:
        raise StressInputError("forget_fraction", str(err)) from None


# ----------------------------------------------------------------------------------------------- tuning
def tune_grid(method: Any, fixed: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The ``tune=True`` candidates of ``method``: dicts of hyper-parameter overrides, the method's current
    values first. ``lr`` × `LR_FACTORS` (if the method has a numeric ``lr``) crossed with its knob in
    `TUNE_KNOBS` (or its own ``tune_grid`` attribute); keys in ``fixed`` are left out. A method that is not a
    dataclass (its variants cannot be built) has one candidate, itself."""
    if not dataclasses.is_dataclass(method):
        return [{}]
    own = getattr(method, "tune_grid", None)
    axes: dict[str, tuple] = {}
    lr = getattr(method, "lr", None)
    if own is None and isinstance(lr, (int, float)) and not isinstance(lr, bool):
        axes["lr"] = tuple(lr * f for f in LR_FACTORS)
    for key, values in (own if own is not None else TUNE_KNOBS.get(method.name, {})).items():
        current = getattr(method, key)
        axes[key] = (current, *[v for v in values if v != current])
    axes = {k: v for k, v in axes.items() if k not in fixed}
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def _variant(method: Any, overrides: dict[str, Any]) -> Any:
    return dataclasses.replace(method, **overrides) if overrides else method


# -------------------------------------------------------------------------------------------- the run
def _read_report(path: Path) -> dict[str, Any]:
    """The report a previous run left at ``path``, checked enough to resume from: a JSON object whose
    ``config`` is an object, ``results`` and ``tuning`` lists of objects (each result with its ``selection``,
    ``seed`` and ``method``, and numbers or null for the metrics), ``searches`` and ``hparams`` objects.
    Anything else (truncated, empty, edited) is a `StressInputError` on ``out`` naming the file."""
    fix = "delete it (or the folder) to start over, or choose a new output folder"
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise StressInputError(
            "out", f"{path} is not a readable stress report ({_one_line(err)}): {fix}"
        ) from None
    if not isinstance(old, dict):
        raise StressInputError("out", f"{path} is not a stress report (a JSON {type(old).__name__}): {fix}")
    kinds = {"config": dict, "results": list, "tuning": list, "searches": dict, "hparams": dict}
    for key, kind in kinds.items():
        if key in old and not isinstance(old[key], kind):
            raise StressInputError("out", f"{path}: {key!r} is not a JSON {kind.__name__} (edited?): {fix}")
    for i, row in enumerate(old.get("results", [])):
        if not _valid_row(row):
            raise StressInputError("out", f"{path}: results[{i}] is not a result row (edited?): {fix}")
    if not all(isinstance(t, dict) and "method" in t for t in old.get("tuning", [])):
        raise StressInputError("out", f"{path}: an entry of 'tuning' is not a tuning record (edited?): {fix}")
    if not all(isinstance(v, dict) for v in old.get("searches", {}).values()):
        raise StressInputError(
            "out", f"{path}: an entry of 'searches' is not a search record (edited?): {fix}"
        )
    return old


def _valid_row(row: Any) -> bool:
    """A result row: ``selection`` in `SELECTIONS`, integer ``seed``, text ``method``, numbers or null."""
    if not isinstance(row, dict) or row.get("selection") not in SELECTIONS:
        return False
    if isinstance(row.get("seed"), bool) or not isinstance(row.get("seed"), int):
        return False
    values = [row.get(k) for k in COLUMNS]
    numeric = all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values)
    return isinstance(row.get("method"), str) and numeric


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _extends(saved: Any, seeds: Any) -> bool:
    """``seeds`` is ``saved`` followed by more seeds (the first seed, on which ``tune`` chose the
    hyper-parameters, stays the same, so every saved row stays valid)."""
    return isinstance(saved, list) and isinstance(seeds, list) and seeds[: len(saved)] == saved


class _Store:
    """The report being built; with ``out``, written to ``out/report.json`` after every change. A report
    already there is resumed when its configuration equals ``config`` (`changed_keys`), else refused."""

    def __init__(self, out: Path | None, config: dict[str, Any]) -> None:
        self.out = out
        self.data: dict[str, Any] = {
            "format": FORMAT,
            "config": config,
            "complete": False,
            "hparams": {},
            "tuning": [],
            "searches": {},
            "results": [],
        }
        if out is not None and (out / REPORT).exists():
            old = _read_report(out / REPORT)
            diff = changed_keys(config, old)
            if diff == ["seeds"] and _extends(old["config"].get("seeds"), config.get("seeds")):
                diff = []  # more seeds after the saved ones: the finished seeds are kept, the new ones run
            if diff:
                raise StressInputError(
                    "out",
                    f"{out} holds a stress test with a different configuration (differs in: "
                    f"{', '.join(diff)}); rerun with the same options to resume, or choose a new output "
                    "folder (or delete it)",
                )
            for key in ("hparams", "tuning", "searches", "results"):
                self.data[key] = old.get(key, self.data[key])

    def row(self, selection: str, seed: int, method: str) -> dict[str, Any] | None:
        for r in self.data["results"]:
            if (r["selection"], r["seed"], r["method"]) == (selection, seed, method):
                return r
        return None

    def add(self, key: str, item: dict[str, Any]) -> None:
        self.data[key].append(item)
        self.save()

    def save(self) -> None:
        if self.out is not None:
            write_json(self.out / REPORT, self.data)


class _Run:
    """One stress test under way: its config, its `_Store`, the tuning grids and the progress count
    (``progress(done, total, message)`` before each step)."""

    def __init__(
        self, config: StressConfig, out: str | Path | None, progress: Callable[[int, int, str], None] | None
    ) -> None:
        self.config = config
        self.out = Path(out) if out is not None else None
        self.store = _Store(self.out, config.record())
        fixed = {str(k).lower(): sorted(v) for k, v in (config.method_hparams or {}).items()}
        built = config.built_methods
        self.grids = {m.name: tune_grid(m, fixed.get(m.name, ())) if config.tune else [{}] for m in built}
        tuning = sum(map(len, self.grids.values())) if config.tune else 0
        self.total = len(config.seeds) * (1 + 2 * (2 + len(built))) + tuning
        self.done = 0
        self.progress = progress

    def step(self, message: str) -> None:
        if self.progress is not None:
            self.progress(self.done, self.total, message)
        self.done += 1


def _row(
    selection: str, seed: int, method: str, values: dict[str, float], seconds: float, gap: float
) -> dict:
    return {
        "selection": selection,
        "seed": seed,
        "method": method,
        **{k: float(values[k]) for k in METRICS},
        "seconds": float(seconds),
        "avg_gap": float(gap),
    }


def _failed_row(selection: str, seed: int, method: str, err: Exception) -> dict:
    """The row of a run that diverged (NaN or inf loss): no metrics (null in JSON) and the error message."""
    return {
        "selection": selection,
        "seed": seed,
        "method": method,
        **{k: None for k in METRICS},
        "seconds": None,
        "avg_gap": None,
        "error": " ".join(str(err).split()),
    }


def _mean_std(values: Sequence[float]) -> list[float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return [mean, std]


def summarize(results: Sequence[dict[str, Any]], names: Sequence[str]) -> tuple[dict, dict]:
    """``summary[selection][method][column] = [mean, std]`` over the seeds whose run finished (a diverged run,
    `_failed_row`, is left out and counted in ``summary[selection][method]["diverged"]``; [None, None] when
    every run diverged), and ``gap_increase[method]`` = mean Avg. Gap on the worst-case sets − on the random
    ones, for the methods with a mean on both."""
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for selection in SELECTIONS:
        summary[selection] = {}
        for name in (*RESERVED, *names):
            rows = [r for r in results if r["selection"] == selection and r["method"] == name]
            if not rows:
                continue
            ran = [r for r in rows if r["avg_gap"] is not None]
            entry: dict[str, Any] = {
                c: _mean_std([r[c] for r in ran]) if ran else [None, None] for c in COLUMNS
            }
            if len(ran) < len(rows):
                entry["diverged"] = len(rows) - len(ran)
            summary[selection][name] = entry
    gap_increase = {
        n: summary["worst"][n]["avg_gap"][0] - summary["random"][n]["avg_gap"][0]
        for n in names
        if n in summary["worst"]
        and n in summary["random"]
        and summary["worst"][n]["avg_gap"][0] is not None
        and summary["random"][n]["avg_gap"][0] is not None
    }
    return summary, gap_increase


def stress_test(
    config: StressConfig | None = None,
    *,
    out: str | Path | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run the stress test (module docstring) of ``config``, or of ``StressConfig(**options)``, and return
    the JSON-ready report. ``out``: folder for ``report.json`` (written row by row; resumed), ``report.md``,
    the plots (`unlearning.report.PLOTS`) and ``sets/``. ``progress(done, total, message)`` is called before
    each step.

    Raises `StressInputError` (a ``ValueError`` naming the parameter) for a bad input, before any training;
    ``TypeError`` for an unknown option, or for options given with a ``config``.
    """
    started = time.perf_counter()
    if config is None:
        config = StressConfig(**options)
    elif options:
        raise TypeError(
            f"stress_test: give a StressConfig or its options, not both (got config and "
            f"{', '.join(options)}); use dataclasses.replace(config, ...) to change one"
        )
    run = _Run(config, out, progress)
    if config.executor == "ray":  # the same units as Ray tasks; rows stream into the same report
        from .distributed.ray_executor import run_grid

        run_grid(run)
        return _finish(run, started)
    chosen: dict[str, dict[str, Any]] = {}
    for seed in config.seeds:
        found = _worst_case_set(run, seed)
        for selection, index in (("random", found.initial_indices), ("worst", found.indices)):
            experiment = functools.cache(functools.partial(_experiment, config, index, seed))
            retrain = _reference_rows(run, selection, seed, experiment)
            if not chosen:
                chosen = _choose(run, seed, experiment, retrain)
            _method_rows(run, selection, seed, experiment, retrain, chosen)
    return _finish(run, started)


# ------------------------------------------------------------------------------------- phase 1: models
def _experiment(config: StressConfig, index: torch.Tensor, seed: int) -> Any:
    """The experiment forgetting pool rows ``index`` (the split and original model of ``seed``, cached;
    Retrain on demand); class-wise, the test set drops the forgotten classes."""
    from .setup import prepare

    prepared = prepare(config.dataset, config.model, index, seed=seed, **config.setup_keywords())
    if config.class_wise:
        task = prepared.task
        gone = torch.unique(task.pool.y[index.to(task.pool.y.device)]).to(task.test.y.device)
        keep = (~torch.isin(task.test.y, gone)).nonzero().squeeze(1)
        prepared.task = dataclasses.replace(
            task,
            test=task.test.subset(keep),
            forget_class=int(gone[0]) if gone.numel() == 1 else None,
            _cache={},
        )
    return prepared


# --------------------------------------------------------------------------------------- phase 2: sets
def _worst_case_set(run: _Run, seed: int) -> SearchResult:
    """The seed's worst-case search (its original model trained or loaded first), or the one a previous run
    saved in ``out/sets``; recorded in the report's ``searches``."""
    config = run.config
    run.step(
        f"seed {seed}: original model and worst-case search ({config.built_search_method.name}, "
        f"{config.hypergrad})"
    )
    path = None if run.out is None else run.out / "sets" / f"seed{seed}.json"
    if path is not None and path.exists() and str(seed) in run.store.data["searches"]:
        return _saved_set(run, seed, path)
    found, pool_y = _search_seed(config, seed)
    if path is not None:
        found.save(path)
    run.store.data["searches"][str(seed)] = _search_record(found, pool_y, path)
    run.store.save()
    return found


def _search_seed(config: StressConfig, seed: int) -> tuple[SearchResult, torch.Tensor]:
    """The unit "original model and worst-case search" of ``seed``: `prepare` (the original trained or loaded
    from the cache) and `worst_case.search`; returns the result and the pool's labels."""
    from .setup import prepare

    fraction = config.forget_fraction
    base = prepare(config.dataset, config.model, f"random:{fraction}", seed=seed, **config.setup_keywords())
    found = search(
        base,
        config.built_search_method,
        budget=fraction,
        hypergrad=config.hypergrad,
        classwise=config.class_wise,
        seed=seed,
        progress=False,
        **config.search_keywords(),
    )
    return found, base.task.pool.y


def _saved_set(run: _Run, seed: int, path: Path) -> SearchResult:
    """The worst-case set of ``seed`` a previous run saved at ``path``, checked against this run before it
    is used: a search result (`SearchResult.load`: types and sizes) made on this seed's pool (dataset, split
    seed, pool size and SHA-256), data-wise or class-wise as configured, of the size and (when recorded)
    ``sha256`` in the report's ``searches``. A `StressInputError` on ``out`` naming the file otherwise."""
    from . import datasets, splits

    config, record = run.config, run.store.data["searches"][str(seed)]
    fix = f"restore it, or delete {path} and its entry in {REPORT} (or the folder) to search again"
    try:
        found = SearchResult.load(path)
    except (ValueError, FileNotFoundError) as err:
        raise StressInputError("out", f"{_one_line(err)}; {fix}") from None
    ds = datasets.load(config.dataset, config.data_dir)
    pool = splits.make_split(ds, seed).pool
    here = splits.data_fingerprint(pool, dataset=ds.name, split_seed=seed)
    made = {k: found.fingerprint.get(k, found.config.get(k)) for k in here}
    wrong = [k for k in here if str(made[k]) != str(here[k])]
    if wrong:
        raise StressInputError(
            "out", f"{path} is not seed {seed}'s set on this data ({', '.join(wrong)} differ): {fix}"
        )
    if (found.classes is not None) != bool(config.class_wise):
        kind = "class-wise" if found.classes is not None else "data-wise"
        raise StressInputError("out", f"{path} holds a {kind} set, but this run is not: {fix}")
    size = int(found.indices.numel())
    if size != record.get("size") or (not config.class_wise and size != config.forget_size):
        raise StressInputError(
            "out", f"{path} holds {size} examples, {REPORT} recorded {record.get('size')}: {fix}"
        )
    if int(found.indices.max()) >= len(pool) or record.get("sha256", _set_hash(found)) != _set_hash(found):
        raise StressInputError("out", f"{path} holds other indices than {REPORT} recorded (edited?): {fix}")
    return found


def _set_hash(found: SearchResult) -> str:
    """SHA-256 of a set's positions and its random start's (the report's ``searches[seed]["sha256"]``)."""
    text = json.dumps([found.indices.tolist(), found.initial_indices.tolist(), found.classes is not None])
    return hashlib.sha256(text.encode()).hexdigest()


def _search_record(found: SearchResult, pool_y: torch.Tensor, path: Path | None) -> dict[str, Any]:
    """A search in the report: its file, time, objective and curve, the set's size (classes too, when
    class-wise) and how much of it the random start already held."""
    classwise = found.classes is not None
    return {
        "file": None if path is None else f"sets/{path.name}",
        "seconds": found.seconds,
        "objective": found.objective,
        "curve": [h["objective"] for h in found.history],
        "size": int(found.indices.numel()),
        "classes": [int(c) for c in found.classes.tolist()] if classwise else None,
        "random_classes": sorted({int(c) for c in pool_y[found.initial_indices].tolist()})
        if classwise
        else None,
        "overlap_with_random": int(torch.isin(found.indices, found.initial_indices).sum()),
        "sha256": _set_hash(found),
    }


# --------------------------------------------------------------------------------------- phase 3: rows
def _reference_rows(run: _Run, selection: str, seed: int, experiment: Callable[[], Any]) -> dict:
    """Retrain's row (its metrics are the reference of every gap) and the original model's, on one set."""
    store = run.store
    run.step(f"seed {seed}, {selection} set: Retrain")
    retrain = store.row(selection, seed, "retrain")
    if retrain is None:
        retrain = _retrain_row(selection, seed, experiment())
        store.add("results", retrain)
    run.step(f"seed {seed}, {selection} set: original")
    if store.row(selection, seed, "original") is None:
        store.add("results", _original_row(selection, seed, experiment(), retrain))
    return retrain


def _retrain_row(selection: str, seed: int, prepared: Any) -> dict:
    """The unit "Retrain on one set": train (or load) Retrain on D_r and evaluate it (gap 0: reference)."""
    retrain_model, seconds = prepared.retrain()
    return _row(selection, seed, "retrain", metrics.evaluate(retrain_model, prepared.task), seconds, 0.0)


def _original_row(selection: str, seed: int, prepared: Any, retrain: dict) -> dict:
    """The original model on one set: its metrics and Avg. Gap to ``retrain`` (seconds 0: nothing is run)."""
    values = metrics.evaluate(prepared.original, prepared.task)
    return _row(selection, seed, "original", values, 0.0, metrics.avg_gap(values, retrain))


def _method_rows(
    run: _Run,
    selection: str,
    seed: int,
    experiment: Callable[[], Any],
    retrain: dict,
    chosen: dict[str, dict[str, Any]],
) -> None:
    """Each method's row on one set (with its ``chosen`` overrides); a diverged run is recorded as such and
    the others go on. Rows already in the report are kept."""
    for method in run.config.built_methods:
        run.step(f"seed {seed}, {selection} set: {method.name}")
        if run.store.row(selection, seed, method.name) is not None:
            continue
        row = _method_result(selection, seed, experiment, method, chosen[method.name], retrain)
        run.store.add("results", row)


def _method_result(
    selection: str,
    seed: int,
    experiment: Callable[[], Any],
    method: Any,
    overrides: dict[str, Any],
    retrain: dict,
) -> dict:
    """The unit "one method on one set": its row, or `_failed_row` when it diverged (FloatingPointError)."""
    try:
        row = method_row(experiment(), _variant(method, overrides), retrain, seed)
    except FloatingPointError as err:  # the method diverged here: record it, go on with the rest
        return _failed_row(selection, seed, method.name, err)
    return _row(selection, seed, method.name, row, row["seconds"], row["avg_gap"])


def _choose(run: _Run, seed: int, experiment: Callable[[], Any], retrain: dict) -> dict[str, dict[str, Any]]:
    """The hyper-parameter overrides each method runs with: none, or (``tune``) the grid candidate with the
    smallest Avg. Gap on this (the first seed's random) set; recorded in the report's ``hparams``."""
    built = run.config.built_methods
    chosen = {m.name: _tune(run, m, seed, experiment, retrain) if run.config.tune else {} for m in built}
    run.store.data["hparams"] = {m.name: _hparams_of(_variant(m, chosen[m.name])) for m in built}
    run.store.save()
    return chosen


def _tune(run: _Run, method: Any, seed: int, experiment: Callable[[], Any], retrain: dict) -> dict[str, Any]:
    """The candidate of ``method``'s grid with the smallest Avg. Gap; every candidate is a ``tuning`` entry
    (reused from the report when there)."""
    tried = []
    for overrides in run.grids[method.name]:
        run.step(f"tuning {method.name} {overrides or ''}".strip())
        key = jsonable(overrides)
        entry = next(
            (t for t in run.store.data["tuning"] if t["method"] == method.name and t["overrides"] == key),
            None,
        )
        if entry is None:
            entry = _tuning_entry(method, overrides, experiment(), retrain, seed)
            run.store.add("tuning", entry)
        tried.append((overrides, entry))
    return _best(method.name, tried)


def _best(name: str, tried: Sequence[tuple[dict[str, Any], dict]]) -> dict[str, Any]:
    """The overrides of the tried ``(overrides, tuning entry)`` with the smallest finite Avg. Gap (the first
    of a tie); ``ValueError`` when every candidate diverged."""
    finite = [(o, e) for o, e in tried if e["avg_gap"] is not None]
    if not finite:
        raise ValueError(f"--tune: every candidate of {name} diverged; fix its hyper-parameters")
    best, _ = min(finite, key=lambda oe: oe[1]["avg_gap"])
    return best


def _tuning_entry(method: Any, overrides: dict[str, Any], prepared: Any, retrain: dict, seed: int) -> dict:
    """One tuning candidate run: its overrides, hyper-parameters, metrics and gap (None: it diverged)."""
    candidate = _variant(method, overrides)
    try:
        values = method_row(prepared, candidate, retrain, seed)
        seconds, gap = values["seconds"], values["avg_gap"]
    except FloatingPointError:  # this candidate diverged: not a choice
        values, seconds, gap = {}, 0.0, None
    return {
        "method": method.name,
        "overrides": jsonable(overrides),
        "hparams": _hparams_of(candidate),
        **{k: values.get(k) for k in METRICS},
        "seconds": seconds,
        "avg_gap": gap,
    }


# ------------------------------------------------------------------------------------ phase 4: summary
def _finish(run: _Run, started: float) -> dict[str, Any]:
    """Summary and gap increase over seeds, the total time, and (with ``out``) the markdown report and the
    plots (`unlearning.report`)."""
    data = run.store.data
    summary, gap_increase = summarize(data["results"], [m.name for m in run.config.built_methods])
    data.update(
        complete=True,
        summary=summary,
        gap_increase=gap_increase,
        seconds=data.get("seconds", 0.0) + time.perf_counter() - started,
    )
    run.store.save()
    if run.out is not None:
        write_text(run.out / "report.md", stress_markdown(data))
        stress_plots(data, run.out)
    return data
