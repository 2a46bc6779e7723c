"""The stress test: how much worse does each unlearning method do on its worst-case forget set than on a
random one of the same size, measured against retraining from scratch? (Fan et al., ECCV 2024.)

``stress_test(...)`` runs the whole protocol. For every seed s:

1. `prepare` the split and the original model θ_o (trained on the whole pool; cached);
2. `worst_case.search` the worst-case forget set W_s of ``search_method`` (m = ``forget_fraction`` of the
   pool, or of the classes when ``class_wise``) from a random m-hot start R_s; R_s is the random forget set
   it is compared with (same size, same seed; class-wise: m random classes);
3. on each set D_f ∈ {R_s, W_s}: Retrain on D_r = pool ∖ D_f (cached), then every method from θ_o with the
   same hyper-parameters on both sets, and UA, RA, TA, MIA-Efficacy (percent) and run time of each;
4. Avg. Gap(method) = ¼ Σ_{M ∈ {UA, RA, TA, MIA}} |M(method) − M(Retrain on the same set)|.

``tune=True`` first grid-searches each method's hyper-parameters (`tune_grid`) on the random set of the first
seed and keeps the values with the smallest Avg. Gap, as the paper tunes on random sets; values the caller
fixed in ``method_hparams`` are not tuned.

The report holds one row per (selection, seed, method) in ``results`` and, per (selection, method), the mean
and sample standard deviation over seeds in ``summary``, plus ``gap_increase`` = mean gap on W − mean gap on
R (positive: the worst-case set exposes the method). With ``out``, every row is written to
``out/report.json`` (atomically) as soon as it is computed, each seed's worst-case set to
``out/sets/seed<S>.json``, and a second call with the same ``out`` and configuration computes only what is
missing.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from . import metrics
from .evaluate import RESERVED, build_methods, method_row
from .methods import REGISTRY, resolve
from .worst_case import HYPERGRADS, SearchResult, resolve_budget, search

SELECTIONS = ("random", "worst")
DEFAULT_METHODS = tuple(name for name in REGISTRY if name != "retrain")
DEFAULT_SEEDS = (0, 1, 2)
METRICS = ("UA", "RA", "TA", "MIA")
COLUMNS = (*METRICS, "avg_gap", "seconds")
REPORT = "report.json"
FORMAT = 1

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
    "salun": {"sparsity": (0.5, 0.3, 0.7)},  # fraction of weights frozen by the saliency mask
    "salun_soft": {"mask_ratio": (0.5, 0.3, 0.7)},
}


class StressInputError(ValueError):
    """A bad argument of `stress_test`; ``param`` names it (the CLI prints it as the matching flag)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


# ------------------------------------------------------------------------------------------- validation
def _method_spec(spec: Any, method: Any) -> str:
    if isinstance(spec, str):
        return spec.strip()
    cls = type(method)
    return f"{cls.__module__}:{cls.__qualname__}"


def _hparams_of(method: Any) -> dict[str, Any]:
    get = getattr(method, "hparams", None)
    return _jsonable(get()) if callable(get) else {}


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=lambda v: list(v) if isinstance(v, tuple) else str(v)))


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


def _check_steps(value: Any, param: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise StressInputError(param, f"must be an integer >= 1, got {value!r}")


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
class _Store:
    """The report being built; with ``out``, written to ``out/report.json`` after every change."""

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
            old = json.loads((out / REPORT).read_text())
            if old.get("format") != FORMAT or old.get("config") != config:
                diff = sorted(
                    k
                    for k in set(config) | set(old.get("config", {}))
                    if config.get(k) != old.get("config", {}).get(k)
                ) or ["format"]
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
            from .io import write_json

            write_json(self.out / REPORT, self.data)


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


def _fmt(value: float | None, spec: str = ".2f", missing: str = "diverged") -> str:
    """A summary number, or ``missing`` where every run of it diverged (None)."""
    return missing if value is None else format(value, spec)


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
    *,
    dataset: str = "digits",
    model: str = "mlp",
    methods: Sequence[Any] | str = DEFAULT_METHODS,
    forget_fraction: float = 0.1,
    class_wise: bool = False,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    search_method: Any = "ft",
    hypergrad: str = "first_order",
    upper_steps: int = 20,
    lower_steps: int = 10,
    search_options: dict[str, Any] | None = None,
    method_hparams: dict[str, dict[str, Any]] | None = None,
    tune: bool = False,
    device: str = "cpu",
    data_dir: str | None = None,
    cache_dir: str | None = None,
    out: str | Path | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """Run the stress test (module docstring) and return the JSON-ready report.

    ``methods``: names (``"salun"``), `unlearning.methods.Method` objects (``MyMethod()``) or
    ``"pkg.module:Class"`` specs, or one comma-separated string of names and specs; default: every registry
    method but Retrain. The report names each by ``method.name``. ``search_method``: the method whose
    worst-case set is searched (a name, an object or a spec). ``forget_fraction``: m as a fraction of the
    pool, or of the classes when ``class_wise`` (0.1 of 10 classes = 1 class). ``hypergrad``: one of
    `worst_case.HYPERGRADS`; ``upper_steps`` and ``lower_steps``: the search's outer steps and lower-level
    steps per outer step; ``search_options``: further `worst_case.search` keywords. ``method_hparams``:
    ``{name: {key: value}}`` for registry methods (fixed, never tuned). ``out``: folder for ``report.json``
    (written row by row; resumed) and ``sets/``. ``progress(done, total, message)`` is called before each
    step.

    Raises `StressInputError` (a ``ValueError`` naming the parameter) for a bad input, before any training.
    """
    from . import datasets, models, splits
    from .setup import resolve_device

    started = time.perf_counter()
    if hypergrad not in HYPERGRADS:
        raise StressInputError("hypergrad", f"must be one of {', '.join(HYPERGRADS)}, got {hypergrad!r}")
    seeds = _check_seeds(seeds)
    _check_steps(upper_steps, "upper_steps")
    _check_steps(lower_steps, "lower_steps")
    try:
        resolve_device(device)
    except ValueError as err:
        raise StressInputError("device", str(err)) from None
    built = resolve_methods(methods, method_hparams)
    names = [m.name for m in built]
    search_key = search_method.strip().lower() if isinstance(search_method, str) else None
    try:
        searched = resolve(
            search_key if search_key and ":" not in search_key else search_method,
            **((method_hparams or {}).get(search_key, {}) if search_key else {}),
        )
    except (ValueError, TypeError) as err:
        raise StressInputError("search_method", str(err)) from None
    if str(model).lower() not in models.NAMES:
        raise StressInputError("model", f"unknown model {model!r}; choose one of {', '.join(models.NAMES)}")
    try:
        ds = datasets.load(dataset, data_dir)
    except (ValueError, FileNotFoundError) as err:
        raise StressInputError("dataset", str(err)) from None
    size = _check_fraction(forget_fraction, class_wise, splits.make_split(ds, seeds[0]).pool)
    fixed = {str(k).lower(): sorted(v) for k, v in (method_hparams or {}).items()}
    options = {"upper_steps": upper_steps, "inner_steps": lower_steps, **(search_options or {})}
    specs = _split(methods)
    config = _jsonable(
        {
            "dataset": dataset,
            "model": model,
            "methods": [
                {"name": m.name, "spec": _method_spec(s, m), "hparams": _hparams_of(m)}
                for s, m in zip(specs, built)
            ],
            "forget_fraction": forget_fraction,
            "class_wise": bool(class_wise),
            "forget_size": size,
            "seeds": seeds,
            "search_method": {
                "name": searched.name,
                "spec": _method_spec(search_method, searched),
                "hparams": _hparams_of(searched),
            },
            "hypergrad": hypergrad,
            "search_options": options,
            "method_hparams": method_hparams or {},
            "tune": bool(tune),
            "device": str(device),
        }
    )
    out_dir = Path(out) if out is not None else None
    store = _Store(out_dir, config)
    grids = {m.name: tune_grid(m, fixed.get(m.name, ())) if tune else [{}] for m in built}
    total = len(seeds) * (1 + 2 * (2 + len(built))) + (sum(map(len, grids.values())) if tune else 0)
    done = 0

    def step(message: str) -> None:
        nonlocal done
        if progress is not None:
            progress(done, total, message)
        done += 1

    common = {"device": device, "data_dir": data_dir, "cache_dir": cache_dir}
    chosen: dict[str, Any] = {}
    for seed in seeds:
        step(f"seed {seed}: original model and worst-case search ({searched.name}, {hypergrad})")
        found = _search(
            store,
            out_dir,
            seed,
            dataset,
            model,
            forget_fraction,
            class_wise,
            searched,
            hypergrad,
            options,
            common,
        )
        for selection, index in (("random", found.initial_indices), ("worst", found.indices)):
            get_prepared = functools.cache(
                functools.partial(_prepare_set, dataset, model, index, seed, common, class_wise)
            )
            step(f"seed {seed}, {selection} set: Retrain")
            retrain = store.row(selection, seed, "retrain")
            if retrain is None:
                p = get_prepared()
                retrain_model, seconds = p.retrain()
                retrain = _row(
                    selection, seed, "retrain", metrics.evaluate(retrain_model, p.task), seconds, 0.0
                )
                store.add("results", retrain)
            step(f"seed {seed}, {selection} set: original")
            if store.row(selection, seed, "original") is None:
                p = get_prepared()
                values = metrics.evaluate(p.original, p.task)
                store.add(
                    "results",
                    _row(selection, seed, "original", values, 0.0, metrics.avg_gap(values, retrain)),
                )
            if not chosen:
                chosen = _choose(store, built, grids, tune, seed, get_prepared, retrain, step)
            for method in built:
                step(f"seed {seed}, {selection} set: {method.name}")
                if store.row(selection, seed, method.name) is not None:
                    continue
                try:
                    row = method_row(get_prepared(), _variant(method, chosen[method.name]), retrain, seed)
                except FloatingPointError as err:  # the method diverged here: record it, go on with the rest
                    store.add("results", _failed_row(selection, seed, method.name, err))
                    continue
                store.add("results", _row(selection, seed, method.name, row, row["seconds"], row["avg_gap"]))
    summary, gap_increase = summarize(store.data["results"], names)
    store.data.update(
        complete=True,
        summary=summary,
        gap_increase=gap_increase,
        seconds=store.data.get("seconds", 0.0) + time.perf_counter() - started,
    )
    store.save()
    if out_dir is not None:
        from .io import write_text

        write_text(out_dir / "report.md", markdown(store.data))
        plot(store.data, out_dir)
    return store.data


def _search(
    store: _Store,
    out: Path | None,
    seed: int,
    dataset: str,
    model: str,
    fraction: float,
    class_wise: bool,
    method: Any,
    hypergrad: str,
    options: dict[str, Any],
    common: dict[str, Any],
) -> SearchResult:
    """The seed's worst-case search, or the one a previous run saved in ``out/sets``."""
    from .setup import prepare

    path = None if out is None else out / "sets" / f"seed{seed}.json"
    if path is not None and path.exists() and str(seed) in store.data["searches"]:
        return SearchResult.load(path)
    base = prepare(dataset, model, f"random:{fraction}", seed=seed, **common)
    found = search(
        base,
        method,
        budget=fraction,
        hypergrad=hypergrad,
        classwise=class_wise,
        seed=seed,
        progress=False,
        **options,
    )
    if path is not None:
        found.save(path)
    store.data["searches"][str(seed)] = {
        "file": None if path is None else f"sets/seed{seed}.json",
        "seconds": found.seconds,
        "objective": found.objective,
        "curve": [h["objective"] for h in found.history],
        "size": int(found.indices.numel()),
        "classes": None if found.classes is None else [int(c) for c in found.classes.tolist()],
        "random_classes": None
        if found.classes is None
        else sorted({int(c) for c in base.task.pool.y[found.initial_indices].tolist()}),
        "overlap_with_random": int(torch.isin(found.indices, found.initial_indices).sum()),
    }
    store.save()
    return found


def _prepare_set(
    dataset: str, model: str, index: torch.Tensor, seed: int, common: dict, class_wise: bool
) -> Any:
    """The experiment forgetting pool rows ``index``; class-wise, the test set drops the forgotten classes."""
    from .setup import prepare

    prepared = prepare(dataset, model, index, seed=seed, **common)
    if class_wise:
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


def _choose(
    store: _Store,
    built: Sequence[Any],
    grids: dict[str, list[dict[str, Any]]],
    tune: bool,
    seed: int,
    get_prepared: Callable[[], Any],
    retrain: dict,
    step: Callable[[str], None],
) -> dict[str, dict[str, Any]]:
    """The hyper-parameter overrides each method runs with: none, or (``tune``) the grid candidate with the
    smallest Avg. Gap on this (the first seed's random) set; every candidate is a ``tuning`` entry."""
    chosen: dict[str, dict[str, Any]] = {}
    for method in built:
        if not tune:
            chosen[method.name] = {}
            continue
        tried = []
        for overrides in grids[method.name]:
            step(f"tuning {method.name} {overrides or ''}".strip())
            entry = next(
                (
                    t
                    for t in store.data["tuning"]
                    if t["method"] == method.name and t["overrides"] == _jsonable(overrides)
                ),
                None,
            )
            if entry is None:
                candidate = _variant(method, overrides)
                try:
                    values = method_row(get_prepared(), candidate, retrain, seed)
                    seconds, gap = values["seconds"], values["avg_gap"]
                except FloatingPointError:  # this candidate diverged: not a choice
                    values, seconds, gap = {}, 0.0, None
                entry = {
                    "method": method.name,
                    "overrides": _jsonable(overrides),
                    "hparams": _hparams_of(candidate),
                    **{k: values.get(k) for k in METRICS},
                    "seconds": seconds,
                    "avg_gap": gap,
                }
                store.add("tuning", entry)
            tried.append((overrides, entry))
        finite = [(o, e) for o, e in tried if e["avg_gap"] is not None]
        if not finite:
            raise ValueError(f"--tune: every candidate of {method.name} diverged; fix its hyper-parameters")
        best, entry = min(finite, key=lambda oe: oe[1]["avg_gap"])
        chosen[method.name] = best
    store.data["hparams"] = {m.name: _hparams_of(_variant(m, chosen[m.name])) for m in built}
    store.save()
    return chosen


# ---------------------------------------------------------------------------------------------- outputs
def _describe(cfg: dict[str, Any]) -> str:
    unit = "of the classes (class-wise)" if cfg["class_wise"] else "of the pool (data-wise)"
    return (
        f"{cfg['dataset']}/{cfg['model']}, forget fraction {cfg['forget_fraction']} {unit} = "
        f"{cfg['forget_size']} {'classes' if cfg['class_wise'] else 'examples'}, seeds {cfg['seeds']}"
    )


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: per-selection tables (mean ± std over seeds), the gap increase, the tuning
    table and the searches."""
    cfg = report["config"]
    names = [m["name"] for m in cfg["methods"]]
    summary = report["summary"]
    search_cfg = cfg["search_method"]
    lines = [
        f"# Stress test: {_describe(cfg)}",
        "",
        f"Worst-case sets searched for `{search_cfg['name']}` with the `{cfg['hypergrad']}` hypergradient "
        f"({cfg['search_options']['upper_steps']} upper steps × {cfg['search_options']['inner_steps']} lower "
        "steps); each compared with the random start set of the same size and seed. Metrics in percent, "
        "mean ± std over seeds; Avg. Gap is to Retrain on the same set. Hyper-parameters: "
        + ("tuned on the first seed's random set (below)." if cfg["tune"] else "the methods' defaults")
        + ("" if cfg["tune"] or not cfg["method_hparams"] else f" with {cfg['method_hparams']}")
        + ("" if cfg["tune"] else "."),
        "",
    ]
    for selection in SELECTIONS:
        lines += [
            f"## {selection} forget set",
            "",
            "| method | UA | RA | TA | MIA | Avg. Gap | seconds |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, vals in summary[selection].items():
            if vals["avg_gap"][0] is None:
                cells = " | ".join("diverged" for _ in COLUMNS)
            else:
                cells = " | ".join(f"{vals[c][0]:.2f} ± {vals[c][1]:.2f}" for c in COLUMNS)
            note = f" ({vals['diverged']} seed(s) diverged)" if vals.get("diverged") else ""
            lines.append(f"| {name}{note} | {cells} |")
        lines.append("")
    lines += [
        "## Gap increase on the worst-case set",
        "",
        "| method | Avg. Gap random | Avg. Gap worst | increase |",
        "|---|---|---|---|",
    ]
    for name, inc in sorted(report["gap_increase"].items(), key=lambda kv: -kv[1]):
        r, w = summary["random"][name]["avg_gap"][0], summary["worst"][name]["avg_gap"][0]
        lines.append(f"| {name} | {r:.2f} | {w:.2f} | {inc:+.2f} |")
    ran = list(report["gap_increase"])  # the methods with a mean gap on both sets
    mean_r = sum(summary["random"][n]["avg_gap"][0] for n in ran) / max(1, len(ran))
    mean_w = sum(summary["worst"][n]["avg_gap"][0] for n in ran) / max(1, len(ran))
    ua_r, ua_w = summary["random"]["retrain"]["UA"][0], summary["worst"]["retrain"]["UA"][0]
    failed = [r for r in report["results"] if r.get("error")]
    lines += [
        f"| **mean of the methods** | {mean_r:.2f} | {mean_w:.2f} | {mean_w - mean_r:+.2f} |",
        "",
        *(
            [f"Mean over the {len(ran)} of {len(names)} methods that ran on both sets."]
            if len(ran) < len(names)
            else []
        ),
        *(
            f"Diverged: {r['method']} on the {r['selection']} set of seed {r['seed']} ({r['error']})."
            for r in failed
        ),
        "",
        f"Retrain's UA: {ua_r:.2f} on the random sets, {ua_w:.2f} on the worst-case sets.",
        "",
    ]
    if report.get("tuning"):
        lines += [
            "## Tuning (first seed's random set; smallest Avg. Gap chosen)",
            "",
            "| method | candidate | UA | MIA | Avg. Gap | chosen |",
            "|---|---|---|---|---|---|",
        ]
        for t in report["tuning"]:
            label = ", ".join(
                f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["overrides"].items()
            )
            mark = (
                "✓"
                if all(report["hparams"][t["method"]].get(k) == v for k, v in t["overrides"].items())
                else ""
            )
            gap = "diverged" if t["avg_gap"] is None else f"{t['avg_gap']:.2f}"
            ua = "" if t["UA"] is None else f"{t['UA']:.2f}"
            mia = "" if t["MIA"] is None else f"{t['MIA']:.2f}"
            lines.append(f"| {t['method']} | {label or '(defaults)'} | {ua} | {mia} | {gap} | {mark} |")
        lines.append("")
    lines += [
        "## Searches",
        "",
        "| seed | F(random start) | F(worst set) | overlap with random | seconds | set |",
        "|---|---|---|---|---|---|",
    ]
    for seed, s in report["searches"].items():
        lines.append(
            f"| {seed} | {s['objective']['initial']:.4g} | {s['objective']['final']:.4g} | "
            f"{s['overlap_with_random']}/{s['size']} | {s['seconds']:.1f} | {s['file'] or ''} |"
        )
    lines += ["", f"Total time: {report['seconds']:.1f} s.", ""]
    return "\n".join(lines)


PLOTS = ("avg_gap.png", "ua_mia.png", "search.png")


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def plot(report: dict[str, Any], out: str | Path) -> list[Path]:
    """Three PNGs in ``out`` (`PLOTS`): Avg. Gap per method on the random and worst-case sets (error bars:
    std over seeds); UA and MIA-Efficacy per method, Retrain included, on both; the search objective F per
    upper step, one curve per seed."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import write_atomic

    out = Path(out)
    names = [m["name"] for m in report["config"]["methods"]]
    summary = report["summary"]
    colors = {"random": "tab:blue", "worst": "tab:red"}

    def bars(ax: Any, rows: list[str], column: str, label: str) -> None:
        xs = range(len(rows))
        for shift, selection in ((-0.2, "random"), (0.2, "worst")):
            means = [_nan(summary[selection][n][column][0]) for n in rows]
            stds = [_nan(summary[selection][n][column][1]) for n in rows]
            ax.bar([x + shift for x in xs], means, 0.4, yerr=stds, color=colors[selection], label=selection)
        ax.set_xticks(list(xs), rows, rotation=30, ha="right")
        ax.set_ylabel(label)
        ax.legend(title="forget set")

    def save(fig: Any, name: str) -> Path:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        return write_atomic(out / name, lambda f: f.write(buf.getvalue()))

    written = []
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(names) + 2), 4))
    bars(ax, names, "avg_gap", "Avg. Gap to Retrain (points)")
    ax.set_title("Avg. Gap to Retrain: random vs worst-case forget set")
    written.append(save(fig, PLOTS[0]))

    fig, axes = plt.subplots(1, 2, figsize=(max(10, 1.2 * len(names) + 4), 4))
    for ax, col, label in ((axes[0], "UA", "UA (%)"), (axes[1], "MIA", "MIA-Efficacy (%)")):
        bars(ax, ["retrain", *names], col, label)
        ax.set_title(f"{label}: random vs worst-case forget set")
    written.append(save(fig, PLOTS[1]))

    fig, ax = plt.subplots(figsize=(6, 4))
    for seed, s in report["searches"].items():
        ax.plot(range(1, len(s["curve"]) + 1), s["curve"], marker=".", label=f"seed {seed}")
    if all(v > 0 for s in report["searches"].values() for v in s["curve"]):
        ax.set_yscale("log")
    ax.set_xlabel("upper step")
    ax.set_ylabel("search objective F(w)")
    ax.set_title(f"worst-case search for {report['config']['search_method']['name']}")
    ax.legend()
    written.append(save(fig, PLOTS[2]))
    return written
