"""`StressConfig`: checked when built (the errors of `stress_test`); the keywords of `stress_test` and a
config give the same run; its record is the report's ``config`` of before the config existed; resume
compares configs. And the stress-test writers of `unlearning.report`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from unlearning import report, stress, stress_test
from unlearning.methods import GA
from unlearning.stress import StressConfig, StressInputError

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"
SMALL = {"seeds": [0], "upper_steps": 2, "lower_steps": 2}


# ------------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    "options, param, text",
    [
        ({"hypergrad": "second_order"}, "hypergrad", "must be one of first_order"),
        ({"seeds": []}, "seeds", "expected a non-empty list of integers, got []"),
        ({"seeds": [0, True]}, "seeds", "expected a non-empty list of integers"),
        ({"seeds": (1, 1)}, "seeds", "seeds must be distinct, got [1, 1]"),
        ({"upper_steps": 0}, "upper_steps", "must be an integer >= 1, got 0"),
        ({"lower_steps": 2.5}, "lower_steps", "must be an integer >= 1, got 2.5"),
        ({"device": "cuda:7"}, "device", "device 'cuda:7'"),
        ({"methods": "ft,nope"}, "methods", "nope"),
        ({"methods": ""}, "methods", "methods is empty"),
        ({"methods": ["ft"], "method_hparams": {"rl": {"lr": 0.1}}}, "method_hparams", "not among"),
        ({"search_method": "zzz"}, "search_method", "zzz"),
        ({"model": "vit"}, "model", "unknown model 'vit'; choose one of"),
        ({"dataset": "imagenet"}, "dataset", "unknown dataset 'imagenet'"),
        ({"forget_fraction": 1.0}, "forget_fraction", "must be a fraction of the pool in (0, 1)"),
        ({"forget_fraction": True}, "forget_fraction", "must be a fraction of the pool"),
        ({"forget_fraction": 0.99, "class_wise": True}, "forget_fraction", "between 1 and 9 classes"),
    ],
)
def test_a_bad_option_is_refused_when_the_config_is_built(options, param, text):
    with pytest.raises(StressInputError) as err:
        StressConfig(**options)
    assert err.value.param == param and text in err.value.message
    assert str(err.value) == f"{param}: {err.value.message}"
    with pytest.raises(StressInputError) as again:  # stress_test(**keywords) raises the same, before any work
        stress_test(**options)
    assert (again.value.param, again.value.message) == (param, err.value.message)


def test_unknown_options_and_options_with_a_config_are_type_errors():
    with pytest.raises(TypeError, match="nope"):
        StressConfig(nope=1)
    with pytest.raises(TypeError, match="not both"):
        stress_test(config=StressConfig(), seeds=[0])


def test_config_is_frozen_normalised_and_compared_by_value():
    config = StressConfig(methods=" ft, rl ,", seeds=[2, 0])
    assert config.methods == ("ft", "rl") and config.seeds == (2, 0)
    assert config == StressConfig(methods=["ft", "rl"], seeds=(2, 0))
    assert config != StressConfig(methods=["ft", "rl"], seeds=(0, 2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seeds = (1,)  # type: ignore[misc]
    assert [m.name for m in config.built_methods] == ["ft", "rl"]
    assert config.built_search_method.name == "ft" and config.forget_size == 130
    assert config.search_keywords() == {"upper_steps": 20, "inner_steps": 10}
    changed = dataclasses.replace(config, forget_fraction=0.2, search_options={"batch_size": 64})
    assert changed.forget_size == 259  # round(0.2 * 1295)
    assert changed.search_keywords() == {"upper_steps": 20, "inner_steps": 10, "batch_size": 64}
    with pytest.raises(StressInputError, match="upper_steps"):
        dataclasses.replace(config, upper_steps=-1)  # a replaced config is checked again


def test_search_method_takes_its_registry_hyper_parameters():
    config = StressConfig(methods=["rl"], search_method="RL", method_hparams={"rl": {"lr": 0.02}})
    assert config.built_search_method.lr == 0.02 and config.built_methods[0].lr == 0.02
    own = StressConfig(methods=["rl"], search_method=GA(lr=0.003))
    recorded = own.record()["search_method"]
    assert recorded["name"] == "ga" and recorded["spec"] == f"{GA.__module__}:GA"
    assert recorded["hparams"]["lr"] == 0.003


# ---------------------------------------------------------------------------------------------- record
def test_the_default_record_is_the_config_of_the_default_run_made_before_configs():
    """docs/results/stress-digits is ``worstforget stress`` with every default, written before `StressConfig`
    existed: the default config records exactly its ``config`` (so that folder still resumes)."""
    saved = json.loads((RESULTS / "stress-digits" / "report.json").read_text())["config"]
    record = StressConfig().record()
    assert record == saved and list(record) == list(saved) == list(stress.RECORD_KEYS)
    assert stress.changed_keys(record, {"format": stress.FORMAT, "config": saved}) == []


def test_record_folds_steps_into_search_options_and_leaves_out_where_files_live(tmp_path):
    config = StressConfig(
        methods="ga,unlearning.methods:RL",
        class_wise=True,
        upper_steps=3,
        lower_steps=4,
        search_options={"batch_size": 8},
        tune=True,
        data_dir=str(tmp_path),
        cache_dir=str(tmp_path),
    )
    record = config.record()
    assert record["search_options"] == {"upper_steps": 3, "inner_steps": 4, "batch_size": 8}
    assert record["forget_size"] == 1 and record["class_wise"] is True and record["tune"] is True
    assert [m["spec"] for m in record["methods"]] == ["ga", "unlearning.methods:RL"]
    assert record["seeds"] == [0, 1, 2] and record["method_hparams"] == {}
    assert record == dataclasses.replace(config, data_dir=None, cache_dir=None).record()
    json.dumps(record, allow_nan=False)  # plain JSON


def test_changed_keys_names_what_differs():
    record = StressConfig(methods=["ga"]).record()
    saved = {"format": stress.FORMAT, "config": StressConfig(methods=["ga", "ft"], seeds=[0]).record()}
    assert stress.changed_keys(record, saved) == ["methods", "seeds"]
    assert stress.changed_keys(record, {"format": 0, "config": record}) == ["format"]
    assert stress.changed_keys(record, {"format": stress.FORMAT, "config": record}) == []


# ----------------------------------------------------------------------------------------------- runs
def _without_times(rep: dict) -> dict:
    """The report less what a clock measured."""
    rows = [{k: v for k, v in r.items() if k != "seconds"} for r in rep["results"]]
    summary = {s: {n: {c: v for c, v in cols.items() if c != "seconds"} for n, cols in rows_.items()}
               for s, rows_ in rep["summary"].items()}  # fmt: skip
    searches = {seed: {k: v for k, v in s.items() if k != "seconds"} for seed, s in rep["searches"].items()}
    return {**rep, "results": rows, "summary": summary, "searches": searches, "seconds": None}


def test_keywords_and_config_give_the_same_run(cache_dir):
    options = dict(methods=["ga"], cache_dir=cache_dir, **SMALL)
    by_keywords = stress_test(**options)
    by_config = stress_test(config=StressConfig(**options))
    assert _without_times(by_keywords) == _without_times(by_config)
    assert by_config["config"] == StressConfig(**options).record()


def test_resume_compares_configs_not_how_they_were_written(tmp_path, cache_dir, monkeypatch):
    """A folder written with keywords resumes from an equal `StressConfig` given another way (a string of
    methods, a tuple of seeds): nothing is recomputed. A different config is refused, naming what differs."""
    first = stress_test(methods=["ga", "ft"], cache_dir=cache_dir, out=tmp_path, **SMALL)
    monkeypatch.setattr(stress, "method_row", lambda *a: pytest.fail("a finished row was recomputed"))
    monkeypatch.setattr(stress, "search", lambda *a, **k: pytest.fail("a saved search was recomputed"))
    config = StressConfig(
        methods="ga, ft", seeds=(0,), upper_steps=2, lower_steps=2, cache_dir=str(cache_dir)
    )
    again = stress_test(config=config, out=tmp_path)
    assert again["results"] == first["results"] and again["config"] == first["config"]
    with pytest.raises(StressInputError, match="differs in: search_options") as err:
        stress_test(config=dataclasses.replace(config, lower_steps=3), out=tmp_path)
    assert err.value.param == "out" and "new output folder" in err.value.message


# ---------------------------------------------------------------------------------------------- report
def test_markdown_of_a_saved_report_is_its_report_md():
    """docs/results/mnist5k-cnn-classwise (a diverged run included) was written by this writer's old place
    in `unlearning.stress`: the same text."""
    folder = RESULTS / "mnist5k-cnn-classwise"
    rep = json.loads((folder / "report.json").read_text())
    assert report.stress_markdown(rep).rstrip("\n") == (folder / "report.md").read_text().rstrip("\n")


def test_report_helpers():
    assert report.fmt(None) == "diverged" and report.fmt(None, missing="n/a") == "n/a"
    assert report.fmt(1.234) == "1.23" and report.fmt(1.234, ".1f") == "1.2"
    rep = json.loads((RESULTS / "stress-digits" / "report.json").read_text())
    assert report.describe_stress(rep["config"]) == (
        "digits/mlp, forget fraction 0.1 of the pool (data-wise) = 130 examples, seeds [0, 1, 2]"
    )
    means = report.mean_gaps(rep)
    for selection in stress.SELECTIONS:
        gaps = [rep["summary"][selection][n]["avg_gap"][0] for n in rep["gap_increase"]]
        assert means[selection] == pytest.approx(sum(gaps) / len(gaps))
    empty = {"gap_increase": {}, "summary": {s: {} for s in stress.SELECTIONS}}
    assert report.mean_gaps(empty) == {"random": 0.0, "worst": 0.0}


def test_terminal_table_and_plots_of_a_saved_report(tmp_path, capsys):
    rep = json.loads((RESULTS / "stress-digits" / "report.json").read_text())
    written = report.stress_plots(rep, tmp_path)
    assert [p.name for p in written] == list(report.PLOTS) == list(stress.PLOTS)
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
    report.stress_table(rep, tmp_path)
    shown = " ".join(capsys.readouterr().out.split())
    assert "digits/mlp" in shown and "salun" in shown and "mean" in shown
    assert f"{rep['gap_increase']['ft']:+.2f}" in shown and "report.md" in shown


def test_doc_config_example_runs(monkeypatch, capsys):
    """docs/stress.md's `StressConfig` block: the config it builds is valid and prints what it says; the run
    itself is replaced by a stub that records the config it gets."""
    import re

    doc = (Path(__file__).resolve().parents[2] / "docs" / "stress.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", doc, flags=re.S) if "StressConfig(" in b]
    got = []
    monkeypatch.setattr(stress, "stress_test", lambda config, out: got.append((config, out)) or {})
    exec(compile(block, "docs/stress.md", "exec"), {})
    ((config, out),) = got
    assert out == "runs/implicit" and config.hypergrad == "implicit" and config.seeds == (0, 1)
    assert capsys.readouterr().out.strip() == "130 ['ft', 'rl', 'salun']"


def test_the_command_line_maps_onto_a_config(tmp_path):
    """`worstforget stress` flags → `StressConfig` in one place (`commands.stress.config_from_args`); the
    parser's defaults are the config's."""
    from unlearning.cli import build_parser
    from unlearning.commands import CLIError
    from unlearning.commands.stress import config_from_args, flag_error

    parse = build_parser().parse_args
    assert config_from_args(parse(["stress"])) == StressConfig()
    argv = ["stress", "--methods", "FT,rl", "--seeds", "1,0", "--class-wise", "--search-batch-size", "64"]
    argv += ["--hp", "rl.lr=0.02", "--upper-steps", "3", "--tune", "--cache-dir", str(tmp_path)]
    assert config_from_args(parse(argv)) == StressConfig(
        methods=["ft", "rl"],
        seeds=[1, 0],
        class_wise=True,
        search_options={"batch_size": 64},
        method_hparams={"rl": {"lr": 0.02}},
        upper_steps=3,
        tune=True,
        cache_dir=str(tmp_path),
    )
    assert str(flag_error(StressInputError("method_hparams", "bad"))) == "argument --hp: bad"
    assert str(flag_error(StressInputError("search_method", "bad"))) == "argument --search-method: bad"
    with pytest.raises(CLIError, match=r"^argument --forget-fraction: must be a fraction"):
        config_from_args(parse(["stress", "--forget-fraction", "2"]))
