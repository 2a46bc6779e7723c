"""The executor options of `StressConfig` and their flags: mapping, checks, and Ray imported only when
``executor="ray"`` is asked for."""

from __future__ import annotations

import importlib.util

import pytest

from unlearning.stress import StressConfig, StressInputError


def test_flags_map_onto_the_executor_fields():
    from unlearning.cli import build_parser
    from unlearning.commands.stress import config_from_args

    parse = build_parser().parse_args
    local = config_from_args(parse(["stress", "--methods", "ft"]))
    assert (local.executor, local.ray_address, local.gpus_per_task, local.cpus_per_task) == (
        "local",
        None,
        0,
        1,
    )
    argv = ["stress", "--methods", "ft", "--executor", "ray", "--ray-address", "auto"]
    argv += ["--gpus-per-task", "0.5", "--cpus-per-task", "2"]
    config = config_from_args(parse(argv))
    assert config == StressConfig(
        methods=["ft"], executor="ray", ray_address="auto", gpus_per_task=0.5, cpus_per_task=2
    )
    assert config.record() == local.record()  # where a grid runs is not what it computes: same report


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--executor", "dask"], "argument --executor: "),
        (["--executor", "ray", "--gpus-per-task", "-1"], "argument --gpus-per-task: must be a number >= 0"),
        (["--executor", "ray", "--cpus-per-task", "0"], "argument --cpus-per-task: must be a number > 0"),
        (
            ["--executor", "ray", "--device", "cuda"],
            "argument --gpus-per-task: device cuda on Ray needs a GPU",
        ),
    ],
)
def test_bad_executor_options_name_their_flag(argv, message, capsys):
    from unlearning.cli import main

    assert main(["stress", "--methods", "ft", *argv]) == 2
    assert capsys.readouterr().err.startswith(f"error: {message}")


def test_ray_missing_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
    )
    with pytest.raises(
        StressInputError, match=r"executor: ray is not installed here: pip install 'worstforget\[ray\]'"
    ):
        StressConfig(methods=["ft"], executor="ray")
