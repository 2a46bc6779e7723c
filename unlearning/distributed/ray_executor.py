"""The stress grid (`unlearning.stress`) on a Ray cluster: ``stress_test(..., executor="ray")``.

Every independent unit of the local executor is one Ray task, with the resources of the config
(``num_gpus=gpus_per_task``, ``num_cpus=cpus_per_task``), and each waits for what it needs through Ray
object refs:

* per seed s: *original* (train θ_o into the model cache) → *search* (the worst-case set W_s and its random
  start R_s);
* per set D_f ∈ {R_s, W_s}: *Retrain* (waits for the search) → the *original row* and every *method row*
  (wait for the set and its Retrain's row); with ``tune``, every grid candidate of a method on the first
  seed's random set, then *pick* (the candidate of smallest Avg. Gap), which that method's rows wait for.

Each task runs the same function the local executor runs (`stress._search_seed`, `_retrain_row`,
`_original_row`, `_method_result`, `_tuning_entry`, `_best`) on the same inputs, on as many torch threads as
it has CPUs, so on CPU its numbers are the local ones bit for bit. Trained models go through the model cache
(`unlearning.cache`, written atomically), whose folder every node must see: the driver resolves it once
(``cache_dir``, else ``$WORSTFORGET_CACHE``, else ``~/.cache/worstforget``; ``data_dir`` too) and hands
the absolute path to the tasks.

The driver alone writes: rows, tuning entries and searches go into the run's ``report.json`` as their task
finishes, and worst-case sets into ``out/sets``; a rerun (same ``out``, same config) submits only what is
missing. A method that diverges is a failed row, as locally. Ray retries a task whose worker or node died
(``max_retries``, default 3); an exception inside a task is not retried: the tasks that do not depend on it
finish and are recorded, then the first such error is raised (rerun to resume). At the end the rows are put
in the local executor's order (seed, selection, Retrain, original, methods), so the summary sums them in the
same order.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import torch

from .. import stress
from ..cache import cache_root
from ..io import jsonable


# ------------------------------------------------------------------------------------ the tasks (workers)
def _on_worker(config: stress.StressConfig) -> None:
    """Torch threads = the task's CPUs (the local executor's single-thread numbers need 1)."""
    torch.set_num_threads(max(1, int(config.cpus_per_task)))


def _experiment(config: stress.StressConfig, seed: int, selection: str, found: Any) -> Callable[[], Any]:
    """The (lazily prepared, once) experiment forgetting the ``selection`` set of the search ``found``."""
    index = found.initial_indices if selection == "random" else found.indices
    return functools.cache(functools.partial(stress._experiment, config, index, seed))


def original_task(config: stress.StressConfig, seed: int) -> bool:
    """Train the seed's original model into the cache (or find it there); True once it is there."""
    from ..setup import prepare

    _on_worker(config)
    fraction = config.forget_fraction
    prepare(config.dataset, config.model, f"random:{fraction}", seed=seed, **config.setup_keywords())
    return True


def search_task(config: stress.StressConfig, seed: int, path: Path | None, _original: bool) -> tuple:
    """The seed's worst-case search (its original loaded from the cache) and its ``searches`` record."""
    _on_worker(config)
    found, pool_y = stress._search_seed(config, seed)
    return found, stress._search_record(found, pool_y, path)


def retrain_task(config: stress.StressConfig, seed: int, selection: str, found: Any) -> dict:
    """Retrain's row on one set."""
    _on_worker(config)
    return stress._retrain_row(selection, seed, _experiment(config, seed, selection, found)())


def original_row_task(
    config: stress.StressConfig, seed: int, selection: str, found: Any, retrain: dict
) -> dict:
    """The original model's row on one set."""
    _on_worker(config)
    return stress._original_row(selection, seed, _experiment(config, seed, selection, found)(), retrain)


def method_task(
    config: stress.StressConfig,
    seed: int,
    selection: str,
    found: Any,
    position: int,
    overrides: dict[str, Any],
    retrain: dict,
) -> dict:
    """Method ``config.built_methods[position]``'s row on one set (a failed row when it diverges)."""
    _on_worker(config)
    method = config.built_methods[position]
    experiment = _experiment(config, seed, selection, found)
    return stress._method_result(selection, seed, experiment, method, overrides, retrain)


def tuning_task(
    config: stress.StressConfig, seed: int, found: Any, position: int, overrides: dict, retrain: dict
) -> dict:
    """One tuning candidate on the first seed's random set: its ``tuning`` entry."""
    _on_worker(config)
    method = config.built_methods[position]
    prepared = _experiment(config, seed, "random", found)()
    return stress._tuning_entry(method, overrides, prepared, retrain, seed)


def pick_task(name: str, grid: list[dict[str, Any]], *entries: dict) -> dict[str, Any]:
    """The overrides of smallest Avg. Gap among a method's tried candidates (`stress._best`)."""
    return stress._best(name, list(zip(grid, entries)))


# --------------------------------------------------------------------------------------- the driver
@functools.cache
def _remote(fn: Callable[..., Any]) -> Any:
    return ray.remote(fn)


def _cause(err: BaseException) -> BaseException:
    """The exception a task raised (a `ray.exceptions.RayTaskError` carries it), else ``err`` itself."""
    if isinstance(err, ray.exceptions.RayTaskError) and isinstance(err.cause, Exception):
        return err.cause
    return err


class _Grid:
    """The driver of one Ray run: submits every missing unit of ``run`` (a `stress._Run`) and writes each
    result into its report as it finishes (``run.step(message)`` then, with the local executor's message)."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self.store = run.store
        # the tasks get the cache (and data) folder as the driver resolves it: every node must see that path
        config = run.config
        data_dir = None if config.data_dir is None else str(Path(config.data_dir).expanduser().resolve())
        self.config = dataclasses.replace(
            config, cache_dir=str(cache_root(config.cache_dir).resolve()), data_dir=data_dir
        )
        self.shared = ray.put(self.config)
        self.resources = {"num_cpus": self.config.cpus_per_task, "num_gpus": self.config.gpus_per_task}
        self.handlers: dict[Any, Callable[[Any], None]] = {}
        self.submitted: list[Any] = []
        self.chosen: dict[str, Any] = {}
        self.picked: dict[str, dict[str, Any]] = {}

    def submit(self, fn: Callable[..., Any], *args: Any, num_returns: int = 1, light: bool = False) -> Any:
        # a light task (pick) takes a CPU slot and no GPU: a 0-CPU task could make Ray start one more worker
        options = {"num_cpus": self.config.cpus_per_task} if light else self.resources
        refs = _remote(fn).options(num_returns=num_returns, **options).remote(*args)
        self.submitted.extend(refs if num_returns > 1 else [refs])
        return refs

    def on_done(self, ref: Any, message: str | None, handle: Callable[[Any], None]) -> None:
        def finished(value: Any) -> None:
            handle(value)
            if message is not None:
                self.run.step(message)

        self.handlers[ref] = finished

    def add(self, key: str) -> Callable[[dict], None]:
        return lambda item: self.store.add(key, item)

    # ------------------------------------------------------------------------------------------ plan
    def plan(self) -> None:
        """Submit the grid: per seed the search, per set Retrain and the rows, tuning on the first set."""
        first = True
        for seed in self.config.seeds:
            found = self.search(seed)
            for selection in stress.SELECTIONS:
                retrain = self.reference(seed, selection, found)
                if first:
                    self.choose(seed, found, retrain)
                    first = False
                self.methods(seed, selection, found, retrain)

    def search(self, seed: int) -> Any:
        run = self.run
        path = None if run.out is None else run.out / "sets" / f"seed{seed}.json"
        if path is not None and path.exists() and str(seed) in self.store.data["searches"]:
            return ray.put(stress._worst_case_set(run, seed))  # the saved set, checked as locally
        original = self.submit(original_task, self.shared, seed)
        found, record = self.submit(search_task, self.shared, seed, path, original, num_returns=2)
        config = self.config
        message = (
            f"seed {seed}: original model and worst-case search ({config.built_search_method.name}, "
            f"{config.hypergrad})"
        )

        def searched(entry: dict) -> None:
            if path is not None:
                ray.get(found).save(path)
            self.store.data["searches"][str(seed)] = entry
            self.store.save()

        self.on_done(record, message, searched)
        return found

    def reference(self, seed: int, selection: str, found: Any) -> Any:
        """Retrain's row (a value when the report has it, else a ref) and the original model's row."""
        retrain = self.store.row(selection, seed, "retrain")
        message = f"seed {seed}, {selection} set: Retrain"
        if retrain is None:
            retrain = self.submit(retrain_task, self.shared, seed, selection, found)
            self.on_done(retrain, message, self.add("results"))
        else:
            self.run.step(message)
        message = f"seed {seed}, {selection} set: original"
        if self.store.row(selection, seed, "original") is None:
            row = self.submit(original_row_task, self.shared, seed, selection, found, retrain)
            self.on_done(row, message, self.add("results"))
        else:
            self.run.step(message)
        return retrain

    def choose(self, seed: int, found: Any, retrain: Any) -> None:
        """Each method's overrides: none, or (``tune``) a pick over its grid's tuning entries."""
        for position, method in enumerate(self.config.built_methods):
            if not self.config.tune:
                self.chosen[method.name] = {}
                self.picked[method.name] = {}
                continue
            grid = self.run.grids[method.name]
            entries = [self.candidate(seed, found, retrain, position, overrides) for overrides in grid]
            if all(isinstance(e, dict) for e in entries):  # all in the report: pick here, as locally
                self.chosen[method.name] = self.picked[method.name] = stress._best(
                    method.name, list(zip(grid, entries))
                )
                continue
            pick = self.submit(pick_task, method.name, grid, *entries, light=True)
            self.chosen[method.name] = pick
            self.on_done(pick, None, functools.partial(self.record_pick, method.name))
        self.record_hparams()

    def candidate(self, seed: int, found: Any, retrain: Any, position: int, overrides: dict) -> Any:
        name = self.config.built_methods[position].name
        key = jsonable(overrides)
        entry = next(
            (t for t in self.store.data["tuning"] if t["method"] == name and t["overrides"] == key), None
        )
        message = f"tuning {name} {overrides or ''}".strip()
        if entry is not None:
            self.run.step(message)
            return entry
        ref = self.submit(tuning_task, self.shared, seed, found, position, overrides, retrain)
        self.on_done(ref, message, self.add("tuning"))
        return ref

    def record_pick(self, name: str, overrides: dict[str, Any]) -> None:
        self.picked[name] = overrides
        self.record_hparams()

    def record_hparams(self) -> None:
        """The report's ``hparams``, once every method's overrides are known."""
        built = self.config.built_methods
        if all(m.name in self.picked for m in built):
            variants = {m.name: stress._variant(m, self.picked[m.name]) for m in built}
            self.store.data["hparams"] = {name: stress._hparams_of(m) for name, m in variants.items()}
            self.store.save()

    def methods(self, seed: int, selection: str, found: Any, retrain: Any) -> None:
        for position, method in enumerate(self.config.built_methods):
            message = f"seed {seed}, {selection} set: {method.name}"
            if self.store.row(selection, seed, method.name) is not None:
                self.run.step(message)
                continue
            chosen = self.chosen[method.name]
            ref = self.submit(method_task, self.shared, seed, selection, found, position, chosen, retrain)
            self.on_done(ref, message, self.add("results"))

    # ------------------------------------------------------------------------------------------- run
    def drain(self) -> None:
        """Record every task as it finishes; then raise the first task error, if any (the tasks that do
        not depend on it have finished and are recorded)."""
        errors: list[BaseException] = []
        while self.handlers:
            done, _ = ray.wait(list(self.handlers), num_returns=1)
            for ref in done:
                handle = self.handlers.pop(ref)
                try:
                    value = ray.get(ref)
                except ray.exceptions.RayError as err:
                    errors.append(err)
                    continue
                handle(value)
        if errors:
            raise _cause(errors[0]) from errors[0]

    def cancel(self) -> None:
        """Cancel what is still queued or running (the driver stops: a rerun resumes from the report). Only
        the tasks not finished yet: cancelling a task that has completed, or is completing, can abort the
        driver in Ray's task manager ("Tried to complete task that was not pending", seen with Ray 2.x)."""
        if not self.submitted:
            return
        _, pending = ray.wait(self.submitted, num_returns=len(self.submitted), timeout=0)
        for ref in pending:
            try:
                ray.cancel(ref)
            except (ray.exceptions.RayError, TypeError, ValueError):  # finished since, or a second return
                pass

    def in_local_order(self) -> None:
        """Results, tuning entries and searches in the order the local executor writes them."""
        data, config = self.store.data, self.config
        seeds = [str(s) for s in config.seeds]
        names = ["retrain", "original", *(m.name for m in config.built_methods)]
        data["searches"] = {s: data["searches"][s] for s in seeds if s in data["searches"]} | {
            s: v for s, v in data["searches"].items() if s not in seeds
        }
        data["results"].sort(
            key=lambda r: (
                _rank(seeds, str(r["seed"])),
                _rank(stress.SELECTIONS, r["selection"]),
                _rank(names, r["method"]),
            )
        )
        grids = {name: [jsonable(o) for o in grid] for name, grid in self.run.grids.items()}
        data["tuning"].sort(
            key=lambda t: (_rank(names, t["method"]), _rank(grids.get(t["method"], []), t["overrides"]))
        )
        self.store.save()


def _rank(order: Any, item: Any) -> int:
    """``item``'s position in ``order`` (after every listed item when it is not there)."""
    order = list(order)
    return order.index(item) if item in order else len(order)


def run_grid(run: Any) -> None:
    """Run the missing units of ``run`` (a `stress._Run` with ``executor="ray"``) on Ray: on the running
    instance if this process has one (``ray.init`` called before), else on the cluster at
    ``config.ray_address`` (``None``: a new local instance, shut down at the end). The report is left in the
    local order; `stress._finish` writes the summary."""
    started = not ray.is_initialized()
    if started:
        ray.init(address=run.config.ray_address)
    grid = _Grid(run)
    try:
        grid.plan()
        grid.drain()
    except BaseException:
        grid.cancel()
        raise
    finally:
        if started:
            ray.shutdown()
    grid.in_local_order()
