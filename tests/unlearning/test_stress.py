"""The stress test on digits at a small size: the report's contents, resume, --tune, class-wise forgetting,
custom methods and bad input."""

from __future__ import annotations

import dataclasses
import json
from typing import ClassVar

import pytest
import torch

from unlearning import stress, stress_test
from unlearning.cli import main
from unlearning.methods import GA, make
from unlearning.worst_case import SearchResult

from .conftest import one_thread

SMALL = {"upper_steps": 3, "lower_steps": 4}
ROW_KEYS = {"selection", "seed", "method", "UA", "RA", "TA", "MIA", "seconds", "avg_gap"}


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, cache_dir):
    """``worstforget stress`` with two methods, one seed, a short search."""
    out = tmp_path_factory.mktemp("stress")
    argv = ["stress", "--methods", "ft,rl", "--seeds", "0", "--upper-steps", "3", "--lower-steps", "4"]
    with one_thread():
        assert main([*argv, "--out", str(out), "--cache-dir", str(cache_dir)]) == 0
    return out, json.loads((out / "report.json").read_text())


def test_search_batch_size_reaches_the_search(tmp_path, cache_dir):
    """--search-batch-size N: the search's lower level uses seeded mini-batches of N (recorded in the report's
    config and the saved set)."""
    argv = ["stress", "--methods", "ft", "--seeds", "0", "--upper-steps", "3", "--lower-steps", "4"]
    with one_thread():
        assert (
            main([*argv, "--search-batch-size", "64", "--out", str(tmp_path), "--cache-dir", str(cache_dir)])
            == 0
        )
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["config"]["search_options"]["batch_size"] == 64
    found = SearchResult.load(tmp_path / "sets" / "seed0.json")
    assert found.config["batch_size"] == 64


def test_report_rows_summary_sets_and_plots(cli_run):
    out, rep = cli_run
    assert rep["complete"] is True
    assert [m["name"] for m in rep["config"]["methods"]] == ["ft", "rl"]
    rows = rep["results"]
    assert all(set(r) == ROW_KEYS for r in rows)
    keys = {(r["selection"], r["method"]) for r in rows}
    assert keys == {(s, m) for s in stress.SELECTIONS for m in ("original", "retrain", "ft", "rl")}
    assert len(rows) == len(keys) and {r["seed"] for r in rows} == {0}
    for r in rows:
        if r["method"] == "retrain":
            assert r["avg_gap"] == 0.0
        else:  # the gap is recomputable from the row and its Retrain
            ref = next(x for x in rows if x["selection"] == r["selection"] and x["method"] == "retrain")
            want = sum(abs(r[k] - ref[k]) for k in stress.METRICS) / 4
            assert r["avg_gap"] == pytest.approx(want)
    for selection in stress.SELECTIONS:
        for name, cols in rep["summary"][selection].items():
            row = next(r for r in rows if r["selection"] == selection and r["method"] == name)
            assert {c: v[0] for c, v in cols.items()} == pytest.approx({c: row[c] for c in stress.COLUMNS})
            assert all(v[1] == 0.0 for v in cols.values())  # one seed: no spread
    for name in ("ft", "rl"):
        want = rep["summary"]["worst"][name]["avg_gap"][0] - rep["summary"]["random"][name]["avg_gap"][0]
        assert rep["gap_increase"][name] == pytest.approx(want)
    found = SearchResult.load(out / "sets" / "seed0.json")
    assert found.indices.numel() == found.initial_indices.numel() == rep["config"]["forget_size"] == 130
    assert rep["searches"]["0"]["curve"] == [h["objective"] for h in found.history]
    assert len(found.history) == 3
    for name in stress.PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "report.md").read_text()
    assert "## worst forget set" in text and "Gap increase" in text and "mean of the methods" in text


def test_retrain_forgets_the_worst_case_set_less(cli_run):
    """The paper's headline: a model retrained without the worst-case set still fits it (UA ≈ 0)."""
    _, rep = cli_run
    worst, random = rep["summary"]["worst"]["retrain"]["UA"][0], rep["summary"]["random"]["retrain"]["UA"][0]
    assert worst <= random


# ----------------------------------------------------------------------------------------------- resume
def _key(row):
    return row["selection"], row["seed"], row["method"]


def test_resume_reuses_finished_rows_and_computes_only_missing(tmp_path, cache_dir, monkeypatch):
    kwargs = dict(methods=["ft", "ga"], seeds=[0, 1], cache_dir=cache_dir, out=tmp_path, **SMALL)
    first = stress_test(**kwargs)
    path = tmp_path / "report.json"
    # Simulate an interruption during seed 1: its search record, its worst-case set and some rows are gone.
    raw = json.loads(path.read_text())
    dropped = {("worst", 1, "ga"), ("worst", 1, "retrain"), ("random", 0, "ft"), ("random", 1, "ga")}
    kept = [r for r in raw["results"] if _key(r) not in dropped]
    raw.update(results=kept, complete=False)
    del raw["summary"], raw["searches"]["1"]
    (tmp_path / "sets" / "seed1.json").unlink()
    path.write_text(json.dumps(raw))
    seed0_set = (tmp_path / "sets" / "seed0.json").read_bytes()

    calls = {"evaluate": [], "search": []}
    method_row, search = stress.method_row, stress.search
    monkeypatch.setattr(
        stress, "method_row", lambda p, m, *a: calls["evaluate"].append(m.name) or method_row(p, m, *a)
    )
    monkeypatch.setattr(
        stress, "search", lambda *a, **k: calls["search"].append(k["seed"]) or search(*a, **k)
    )
    second = stress_test(**kwargs)

    assert calls["search"] == [1]  # seed 0's saved set was reused
    assert sorted(calls["evaluate"]) == ["ft", "ga", "ga"]  # only the missing method rows
    assert (tmp_path / "sets" / "seed0.json").read_bytes() == seed0_set
    assert (tmp_path / "sets" / "seed1.json").exists()
    rows = {_key(r): r for r in second["results"]}
    assert set(rows) == {_key(r) for r in first["results"]}
    for r in kept:  # reused rows: identical, timings included
        assert rows[_key(r)] == r
    before = {_key(r): r for r in first["results"]}
    for key in dropped:  # recomputed rows: the same numbers (seeded), new timings
        assert {k: rows[key][k] for k in stress.METRICS} == {k: before[key][k] for k in stress.METRICS}
    assert second["complete"]
    for selection, rows_ in first["summary"].items():
        for name, cols in rows_.items():
            for c in (*stress.METRICS, "avg_gap"):
                assert second["summary"][selection][name][c] == pytest.approx(cols[c])
    assert json.loads(path.read_text())["results"] == second["results"]


def test_more_seeds_extend_a_finished_run(tmp_path, cache_dir, monkeypatch):
    """``seeds=[0, 1]`` into a folder holding ``seeds=[0]`` keeps seed 0's rows and set and runs seed 1 only;
    seeds that do not start with the saved ones are a different configuration."""
    kwargs = dict(methods=["ga"], cache_dir=cache_dir, out=tmp_path, **SMALL)
    first = stress_test(seeds=[0], **kwargs)
    searched = []
    search = stress.search
    monkeypatch.setattr(stress, "search", lambda *a, **k: searched.append(k["seed"]) or search(*a, **k))
    more = stress_test(seeds=[0, 1], **kwargs)
    assert searched == [1]
    assert more["config"]["seeds"] == [0, 1] and more["complete"]
    assert [r for r in more["results"] if r["seed"] == 0] == first["results"]  # same rows, same seconds
    assert {r["seed"] for r in more["results"]} == {0, 1}
    assert len(more["results"]) == 2 * len(first["results"])
    with pytest.raises(stress.StressInputError, match="differs in: seeds"):
        stress_test(seeds=[1, 0, 2], **kwargs)


def test_interrupted_run_resumes_where_it_stopped(tmp_path, cache_dir):
    """Interrupted during tuning, then during the rows: each rerun keeps what was written and goes on."""
    kwargs = dict(methods=["ga", "ft"], seeds=[0], tune=True, cache_dir=cache_dir, out=tmp_path, **SMALL)

    def stop_at(text):
        def progress(done, total, message):
            if message == text:
                raise KeyboardInterrupt

        return progress

    path = tmp_path / "report.json"
    with pytest.raises(KeyboardInterrupt):
        stress_test(**kwargs, progress=stop_at("tuning ga {'lr': 0.005}"))
    first = json.loads(path.read_text())
    assert len(first["tuning"]) == 1 and not first["complete"]
    with pytest.raises(KeyboardInterrupt):
        stress_test(**kwargs, progress=stop_at("seed 0, worst set: ft"))
    second = json.loads(path.read_text())
    assert second["tuning"][0] == first["tuning"][0]  # reused, not recomputed (same seconds)
    assert ("worst", 0, "ga") in {_key(r) for r in second["results"]}
    assert ("worst", 0, "ft") not in {_key(r) for r in second["results"]}
    final = stress_test(**kwargs)
    assert final["complete"] and final["tuning"][: len(second["tuning"])] == second["tuning"]
    assert final["results"][: len(second["results"])] == second["results"]
    assert len(final["results"]) == 2 * 4


def test_rerun_with_another_config_is_refused(tmp_path, cache_dir, capsys):
    args = ["stress", "--methods", "ga", "--seeds", "0", "--upper-steps", "2", "--lower-steps", "2"]
    assert main([*args, "--out", str(tmp_path), "--cache-dir", str(cache_dir)]) == 0
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    capsys.readouterr()
    changed = [a if a != "ga" else "ga,ft" for a in args]
    assert main([*changed, "--out", str(tmp_path), "--cache-dir", str(cache_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: argument --out:") and "\n" not in err
    assert "methods" in err and "new output folder" in err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


# ---------------------------------------------------------------------------------------------- tuning
def test_tune_picks_the_smallest_gap_on_the_random_set_and_keeps_fixed_values(tmp_path, cache_dir):
    rep = stress_test(
        methods=["ga", "iu"],
        seeds=[0],
        tune=True,
        method_hparams={"iu": {"alpha": 30.0}},
        cache_dir=cache_dir,
        out=tmp_path,
        **SMALL,
    )
    ga = [t for t in rep["tuning"] if t["method"] == "ga"]
    assert [t["overrides"]["lr"] for t in ga] == pytest.approx([0.01 * f for f in stress.LR_FACTORS])
    best = min((t for t in ga if t["avg_gap"] is not None), key=lambda t: t["avg_gap"])
    assert rep["hparams"]["ga"] == best["hparams"]
    # the chosen values run on both sets: ga's random-set row is the winning candidate's
    row = next(r for r in rep["results"] if r["method"] == "ga" and r["selection"] == "random")
    assert {k: row[k] for k in stress.METRICS} == {k: best[k] for k in stress.METRICS}
    iu = [t for t in rep["tuning"] if t["method"] == "iu"]
    assert iu == [dict(iu[0], overrides={})]  # alpha was fixed by the caller: nothing to tune
    assert rep["hparams"]["iu"]["alpha"] == 30.0
    assert "Tuning" in (tmp_path / "report.md").read_text()


def test_tune_grid():
    grid = stress.tune_grid(make("salun"))
    assert grid[0] == {"lr": 0.01, "epochs": 10, "alpha": 1.0}  # the current values first
    assert len(grid) == len(stress.LR_FACTORS) * 2 * 3
    # the setting the 10-seed digits sweep found best (docs/results.md) is a candidate
    assert {"lr": 0.005, "epochs": 20, "alpha": 4.0} in grid
    fixed = stress.tune_grid(make("salun", epochs=20), fixed=["lr"])
    assert fixed[:2] == [{"epochs": 20, "alpha": 1.0}, {"epochs": 20, "alpha": 2.0}]
    assert {e["epochs"] for e in fixed} == {10, 20} and len(fixed) == 6
    assert stress.tune_grid(make("ft")) == [{"lr": 0.05 * f} for f in stress.LR_FACTORS]
    # a method's own grid replaces the default one; its current value still comes first
    assert stress.tune_grid(OwnGrid(lr=0.02)) == [{"epochs": 5}, {"epochs": 2}]
    assert stress.tune_grid(object()) == [{}]  # not a dataclass: only itself


@dataclasses.dataclass
class OwnGrid(GA):
    name: ClassVar[str] = "own_grid"
    tune_grid: ClassVar[dict] = {"epochs": (2, 5)}


# ------------------------------------------------------------------------------- class-wise and custom
def test_class_wise_forgets_whole_classes(tmp_path, cache_dir):
    rep = stress_test(methods=["ga"], seeds=[0], class_wise=True, cache_dir=cache_dir, out=tmp_path, **SMALL)
    assert rep["config"]["forget_size"] == 1  # 0.1 of 10 classes
    found = SearchResult.load(tmp_path / "sets" / "seed0.json")
    assert found.classes is not None and found.classes.numel() == 1
    from unlearning.setup import prepare

    pool_y = prepare("digits", "mlp", "random:0.1", seed=0, cache_dir=cache_dir).task.pool.y
    for index in (found.indices, found.initial_indices):  # both sets are whole classes
        classes = torch.unique(pool_y[index])
        assert classes.numel() == 1 and int((pool_y == classes[0]).sum()) == index.numel()
    for selection in stress.SELECTIONS:  # Retrain never saw the class: it cannot classify it
        retrain = next(r for r in rep["results"] if r["selection"] == selection and r["method"] == "retrain")
        assert retrain["UA"] > 90


@dataclasses.dataclass
class HalfGA(GA):
    name: ClassVar[str] = "half_ga"


def test_method_objects_and_specs_are_named_by_their_name(tmp_path, cache_dir):
    rep = stress_test(
        methods=[HalfGA(lr=0.005), "ga"],
        seeds=[0],
        search_method=GA(),
        cache_dir=cache_dir,
        out=tmp_path,
        **SMALL,
    )
    assert [m["name"] for m in rep["config"]["methods"]] == ["half_ga", "ga"]
    assert rep["config"]["methods"][0]["spec"] == "tests.unlearning.test_stress:HalfGA"
    assert rep["config"]["methods"][0]["hparams"]["lr"] == 0.005
    assert {r["method"] for r in rep["results"]} == {"original", "retrain", "half_ga", "ga"}


def test_hparams_only_for_methods_given_by_name():
    with pytest.raises(stress.StressInputError, match="already built") as err:
        stress_test(methods=[GA()], method_hparams={"ga": {"lr": 0.1}}, seeds=[0])
    assert err.value.param == "method_hparams"


def test_duplicate_names_are_refused():
    with pytest.raises(stress.StressInputError, match="share the name 'ga'") as err:
        stress_test(methods=[GA(), "ga"], seeds=[0])
    assert err.value.param == "methods"


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--methods", "ft,nope"], "--methods"),
        (["--methods", "retrain"], "--methods"),
        (["--methods", "ft,ft"], "--methods"),
        (["--methods", "nosuch.module:Thing"], "--methods"),
        (["--methods", "unlearning.methods:Nope"], "--methods"),
        (["--methods", "unlearning.io:write_text"], "--methods"),
        (["--forget-fraction", "1.5"], "--forget-fraction"),
        (["--forget-fraction", "1"], "--forget-fraction"),
        (["--forget-fraction", "0"], "--forget-fraction"),
        (["--forget-fraction", "0.99", "--class-wise"], "--forget-fraction"),  # every class: budget ≥ pool
        (["--hypergrad", "second_order"], "--hypergrad"),
        (["--seeds", "0,0"], "--seeds"),
        (["--seeds", "a"], "--seeds"),
        (["--search-method", "zzz"], "--search-method"),
        (["--upper-steps", "0"], "--upper-steps"),
        (["--lower-steps", "0"], "--lower-steps"),
        (["--search-batch-size", "0"], "--search-batch-size"),
        (["--hp", "rl.nope=1", "--methods", "rl"], "--hp"),
        (["--hp", "ga.lr=1", "--methods", "rl"], "--hp"),
        (["--hp", "rl.lr=-1", "--methods", "rl"], "--hp"),
        (["--device", "cuda:7"], "--device"),
        (["--threads", "0"], "--threads"),
        (["--dataset", "imagenet"], "--dataset"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, flag):
    assert main(["stress", "--out", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: argument {flag}") and "\n" not in err
    assert not any(tmp_path.iterdir())


class Diverges:
    """A method whose every run diverges (what `Method.unlearn` raises on a NaN loss)."""

    name = "diverges"

    def unlearn(self, model, task):
        raise FloatingPointError("loss became nan at epoch 1")


class InfLogits:
    """A method whose weights stay finite but whose outputs overflow to inf."""

    name = "inf_logits"

    def unlearn(self, model, task):
        import copy

        from unlearning.methods import Unlearned

        out = copy.deepcopy(model)
        with torch.no_grad():
            for p in out.parameters():
                p.mul_(1e30)
        return Unlearned(out, 0.0)


class NaNWeights:
    """A method whose loss stayed finite but whose weights overflowed."""

    name = "nan_weights"

    def unlearn(self, model, task):
        import copy

        from unlearning.methods import Unlearned

        out = copy.deepcopy(model)
        with torch.no_grad():
            next(out.parameters()).fill_(float("nan"))
        return Unlearned(out, 0.0)


def test_a_diverging_method_is_recorded_and_the_others_still_run(tmp_path, cache_dir, capsys):
    with one_thread():
        rep = stress_test(
            methods=[Diverges(), NaNWeights(), InfLogits(), "ga"],
            seeds=[0],
            search_method="ga",
            cache_dir=cache_dir,
            out=tmp_path,
            **SMALL,
        )
    assert rep["complete"] is True
    inf_rows = [r for r in rep["results"] if r["method"] == "inf_logits"]
    assert len(inf_rows) == 2 and all("not finite" in r["error"] for r in inf_rows)
    nan_rows = [r for r in rep["results"] if r["method"] == "nan_weights"]
    assert len(nan_rows) == 2 and all("non-finite weights" in r["error"] for r in nan_rows)
    bad = [r for r in rep["results"] if r["method"] == "diverges"]
    assert len(bad) == 2 and all(r["avg_gap"] is None and "nan" in r["error"] for r in bad)
    assert all(r["avg_gap"] is not None for r in rep["results"] if r["method"] == "ga")
    for selection in stress.SELECTIONS:
        assert rep["summary"][selection]["diverges"]["avg_gap"] == [None, None]
        assert rep["summary"][selection]["diverges"]["diverged"] == 1
    assert set(rep["gap_increase"]) == {"ga"}
    text = (tmp_path / "report.md").read_text()
    assert "Diverged: diverges on the random set of seed 0" in text and "1 of 4 methods" in text
    assert all((tmp_path / p).exists() for p in stress.PLOTS)
    from unlearning.report import stress_table

    stress_table(rep, tmp_path)  # the terminal table marks the diverged cells and lists the runs
    shown = " ".join(capsys.readouterr().out.split())  # rich wraps at the terminal width
    assert "n/a" in shown and "diverges (random, seed 0)" in shown
    again = stress_test(
        methods=[Diverges(), NaNWeights(), InfLogits(), "ga"],
        seeds=[0],
        search_method="ga",
        cache_dir=cache_dir,
        out=tmp_path,
        **SMALL,
    )  # resumes: the recorded failures are not retried
    assert again["results"] == rep["results"]
