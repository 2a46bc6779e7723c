"""`SearchConfig`, the options of the worst-case search as one value: each bad field is a ``ValueError``
naming it; ``search(**options)`` and ``search(config=SearchConfig(**options))`` give the same result bit
for bit; the result's ``config`` record keeps the keys, order and values the search wrote before the config
existed (a result file of that code loads and matches); the CLI maps its flags onto the config; `Task.to`;
`prepare` from an `Experiment`."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from tests.unlearning.test_methods_helpers import tiny_model, tiny_task
from unlearning.commands import search as search_command
from unlearning.setup import Experiment, prepare
from unlearning.worst_case import (
    DEFAULT_PROXIMAL,
    DEFAULT_SIGN_LR,
    DEFAULT_UPPER_LR,
    DEFAULT_UPPER_LR_CLASSWISE,
    SearchConfig,
    SearchResult,
    search,
)

OLD_RESULT = Path(__file__).parent / "data" / "worst_case_v1.json"
#: what that file was made with (by the search before SearchConfig existed)
OLD_OPTIONS = dict(
    budget=6, hypergrad="implicit", upper_steps=3, inner_steps=2, binarize_every=2, gamma=0.1, seed=1
)
TIMING = {"seconds", "hypergrad_seconds"}
#: the config keys issue 15 added (after the older ones, before ``device``)
NEW_KEYS = ["final_rule", "exhaustive", "batchnorm"]


# ------------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    "field,value",
    [
        ("budget", 0.0),
        ("budget", 1.0),
        ("budget", "0.1"),
        ("budget", True),
        ("hypergrad", "newton"),
        ("upper_steps", 0),
        ("upper_steps", 2.5),
        ("inner_steps", -1),
        ("inner_lr", -1.0),
        ("inner_lr", float("inf")),
        ("upper_lr", 0.0),
        ("gamma", -0.1),
        ("binarize_every", 0),
        ("classwise", "yes"),
        ("reverse", 1),
        ("keep_best", None),
        ("batch_size", 0),
        ("augment", "no"),
        ("proximal", float("nan")),
        ("proximal", -0.5),
        ("warm_start", "yes"),
        ("damping", -1.0),
        ("cg_iters", 0),
        ("cg_tol", -1.0),
        ("seed", 1.5),
    ],
)
def test_each_bad_field_is_a_value_error_naming_it(field, value):
    with pytest.raises(ValueError, match=rf"^{field} must be .*got {value!r}"):
        SearchConfig(**{field: value})


def test_valid_values_become_plain_numbers():
    cfg = SearchConfig(gamma=0, upper_lr=3, inner_lr=1, cg_tol=0, upper_steps=torch.tensor(4).item())
    assert cfg.gamma == 0.0 and isinstance(cfg.gamma, float)
    assert (
        isinstance(cfg.upper_lr, float) and isinstance(cfg.inner_lr, float) and isinstance(cfg.cg_tol, float)
    )
    assert cfg.upper_steps == 4 and isinstance(cfg.upper_steps, int)
    assert SearchConfig(budget=130).budget == 130 and SearchConfig(budget=0.25).budget == 0.25
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.gamma = 1.0  # type: ignore[misc]


def test_resolved_fills_the_defaults_in_one_place():
    class Method:
        lr = 0.123

    first = SearchConfig().resolved(Method())
    assert (first.inner_lr, first.upper_lr, first.proximal, first.damping) == (
        DEFAULT_SIGN_LR,
        DEFAULT_UPPER_LR,
        0.0,
        0.1,
    )
    implicit = SearchConfig(hypergrad="implicit", classwise=True).resolved(Method())
    assert implicit.inner_lr == 0.123 and implicit.upper_lr == DEFAULT_UPPER_LR_CLASSWISE
    assert implicit.proximal == DEFAULT_PROXIMAL and implicit.damping == 0.0
    assert SearchConfig(hypergrad="unrolled").resolved(object()).inner_lr == 0.05  # no lr: DEFAULT_SGD_LR
    given = SearchConfig(inner_lr=0.5, upper_lr=2.0, proximal=0.0, damping=0.3).resolved(Method())
    assert (given.inner_lr, given.upper_lr, given.proximal, given.damping) == (0.5, 2.0, 0.0, 0.3)


def test_search_refuses_unknown_options_and_other_configs():
    with pytest.raises(TypeError, match="unexpected keyword argument 'upper_step'"):
        search((tiny_model(), tiny_task()), "ft", upper_step=3, progress=False)
    with pytest.raises(TypeError, match="config must be a SearchConfig"):
        search((tiny_model(), tiny_task()), "ft", config={"budget": 5}, progress=False)


# ---------------------------------------------------------------------------------- same search, same set
def _comparable(result: SearchResult) -> dict:
    d = result.to_dict()
    d.pop("seconds")
    for entry in d["history"]:
        for key in TIMING:
            entry.pop(key)
    return d


@pytest.mark.parametrize("hypergrad", ["first_order", "unrolled", "implicit"])
def test_keywords_and_config_give_the_same_search_bit_for_bit(hypergrad):
    options = dict(budget=8, hypergrad=hypergrad, upper_steps=4, inner_steps=3, binarize_every=2, seed=2)
    by_keywords = search((tiny_model(), tiny_task()), "ft", progress=False, **options)
    by_config = search((tiny_model(), tiny_task()), "ft", config=SearchConfig(**options), progress=False)
    assert torch.equal(by_keywords.indices, by_config.indices)
    assert torch.equal(by_keywords.weights, by_config.weights)
    assert by_keywords.objective == by_config.objective
    assert _comparable(by_keywords) == _comparable(by_config)
    # keywords given with a config replace its fields
    mixed = search(
        (tiny_model(), tiny_task()),
        "ft",
        config=SearchConfig(**{**options, "seed": 9, "upper_steps": 1}),
        seed=2,
        upper_steps=4,
        progress=False,
    )
    assert _comparable(mixed) == _comparable(by_keywords)


# ------------------------------------------------------------------------------- the recorded config
def test_record_keeps_the_keys_order_and_values_of_the_old_search():
    """A result file written by the search before SearchConfig (tests/unlearning/data/worst_case_v1.json)
    loads, and the same search today records the same config: keys, their order and every value."""
    old = json.loads(OLD_RESULT.read_text())
    loaded = SearchResult.load(OLD_RESULT)
    assert loaded.indices.tolist() == old["indices"] and loaded.config == old["config"]
    new = search((tiny_model(), tiny_task()), "ft", progress=False, **OLD_OPTIONS)
    # issue 15 added three settings, recorded just before the device: the final-set rule, the exact
    # class-wise switch and the BatchNorm policy; every older key keeps its place and value
    old_keys = list(old["config"])
    assert list(new.config) == [*old_keys[:-1], *NEW_KEYS, old_keys[-1]]
    assert {k: v for k, v in new.config.items() if k not in NEW_KEYS} == old["config"]
    assert [new.config[k] for k in NEW_KEYS] == ["best", False, "batch"]
    assert list(new.to_dict()) == [k for k in old if k != "note"]
    assert [list(e) for e in new.to_dict()["history"]] == [list(e) for e in old["history"]]


def test_record_of_a_prepared_experiment_starts_with_its_data(digits_random):
    old_keys = list(json.loads(OLD_RESULT.read_text())["config"])
    r = search(digits_random, "ft", budget=0.05, upper_steps=1, inner_steps=1, progress=False)
    assert list(r.config) == ["dataset", "model", "split_seed", *old_keys[:-1], *NEW_KEYS, old_keys[-1]]
    assert (r.config["dataset"], r.config["model"], r.config["split_seed"]) == ("digits", "mlp", 0)
    assert r.config["warm_start"] is None and r.config["cg_tol"] is None  # implicit-only options
    expected = {**dataclasses.asdict(SearchConfig(budget=0.05, upper_steps=1, inner_steps=1).resolved())}
    expected.pop("graph")  # how the hypergradient runs (CUDA graph or eager): not part of the record
    expected.update(warm_start=None, damping=None, cg_iters=None, cg_tol=None)
    assert {k: r.config[k] for k in expected} == expected


# ---------------------------------------------------------------------------------------------- the CLI
def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    search_command.add_parser(parser.add_subparsers())
    return parser.parse_args(["search", *argv])


def test_cli_flags_map_onto_the_config_in_one_place():
    assert search_command.search_config(_args()) == SearchConfig()
    args = _args(
        "--budget", "130", "--hypergrad", "implicit", "--upper-steps", "7", "--lower-steps", "3",
        "--inner-lr", "0.2", "--upper-lr", "1.5", "--gamma", "0.01", "--binarize-every", "0",
        "--batch-size", "64", "--classwise", "--reverse", "--proximal", "2", "--no-warm-start", "--seed", "4",
    )  # fmt: skip
    assert search_command.search_config(args) == SearchConfig(
        budget=130,
        hypergrad="implicit",
        upper_steps=7,
        inner_steps=3,
        inner_lr=0.2,
        upper_lr=1.5,
        gamma=0.01,
        binarize_every=None,
        batch_size=64,
        classwise=True,
        reverse=True,
        proximal=2.0,
        warm_start=False,
        seed=4,
    )


# ------------------------------------------------------------------------------------------- Task.to
def test_task_to_moves_the_data_and_keeps_every_other_field():
    task = tiny_task()
    task = dataclasses.replace(task, forget_class=2, name="t", augment=lambda x, g: x)
    assert task.forget_mask.sum() == task.forget_index.numel()  # fills the cache
    moved = task.to("cpu")
    assert moved is not task and moved._cache == {}
    for name in ("pool", "val", "test"):
        assert torch.equal(getattr(moved, name).x, getattr(task, name).x)
        assert torch.equal(getattr(moved, name).y, getattr(task, name).y)
    for name in ("forget_index", "num_classes", "augment", "batch_size", "seed", "forget_class", "name"):
        assert getattr(moved, name) is getattr(task, name) or getattr(moved, name) == getattr(task, name)
    moved64 = dataclasses.replace(task, pool=task.pool).to(torch.device("cpu"))
    assert moved64.pool.x.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_task_to_cuda():
    moved = tiny_task().to("cuda")
    assert {moved.pool.x.device.type, moved.val.y.device.type, moved.test.x.device.type} == {"cuda"}
    assert moved.forget_index.device.type == "cpu" and moved.forget.x.device.type == "cuda"


# ----------------------------------------------------------------------------------------- Experiment
def test_prepare_from_an_experiment_equals_prepare_from_keywords(cache_dir, digits_random):
    experiment = Experiment("digits", "mlp", "random:0.1", seed=0, cache_dir=cache_dir)
    p = prepare(experiment)
    assert p.experiment == experiment and digits_random.experiment == experiment
    assert torch.equal(p.task.forget_index, digits_random.task.forget_index)
    for a, b in zip(p.original.state_dict().values(), digits_random.original.state_dict().values()):
        assert torch.equal(a, b)
    assert p._config == digits_random._config and p.forget == "random:0.1"
    other = prepare(experiment, forget="class:3")  # keywords replace the experiment's fields
    assert other.task.forget_class == 3 and other.experiment.forget == "class:3"


def test_experiment_refuses_an_unknown_model_and_prepare_an_unknown_keyword():
    with pytest.raises(ValueError, match="unknown model 'vgg': choose one of"):
        Experiment(model="vgg")
    with pytest.raises(TypeError, match="unexpected keyword argument 'epochs'"):
        prepare("digits", "mlp", epochs=3)
