"""The stress test end to end on digits: worst-case vs random forget sets, every number reported."""

from __future__ import annotations

import json

import pytest

from unlearning import stress
from unlearning.cli import main


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("stress")
    argv = ["stress", "--methods", "ft,rl", "--seeds", "0", "--upper-steps", "8", "--out", str(out)]
    assert main(argv) == 0
    return out, json.loads((out / "stress.json").read_text())


def test_report_has_every_number(report):
    out, rep = report
    assert rep["config"]["methods"] == ["ft", "rl"]
    for set_name in stress.SETS:
        rows = rep["summary"][set_name]
        assert set(rows) == {"original", "retrain", "ft", "rl"}
        for row in rows.values():
            assert set(row) == set(stress.COLUMNS)
            for mean, std in row.values():
                assert mean == mean and std == 0.0  # finite; one seed → no spread
        assert rows["retrain"]["gap"] == [0.0, 0.0]
    seed = rep["per_seed"][0]
    size = seed["search"]["size"]
    assert seed["sets"]["random"]["size"] == seed["sets"]["worst"]["size"] == size
    assert seed["search"]["objective"]["final"] < seed["search"]["objective"]["initial"]
    for name in ("ft", "rl"):
        want = rep["summary"]["worst"][name]["gap"][0] - rep["summary"]["random"][name]["gap"][0]
        assert rep["gap_increase"][name] == pytest.approx(want)
    assert (out / "stress.png").stat().st_size > 10_000
    text = (out / "stress.md").read_text()
    assert "worst forget set" in text and "Gap increase" in text


def test_retrain_forgets_the_worst_case_set_less(report):
    """The paper's headline: a model retrained without the worst-case set still fits it (UA ≈ 0)."""
    _, rep = report
    worst, random = rep["summary"]["worst"]["retrain"]["UA"][0], rep["summary"]["random"]["retrain"]["UA"][0]
    assert worst <= random
    assert worst <= 1.0


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--methods", "ft,nope"], "--methods"),
        (["--methods", "retrain"], "--methods"),
        (["--budget", "1.5"], "--budget"),
        (["--seeds", "0,0"], "--seeds"),
        (["--seeds", "a"], "--seeds"),
        (["--search-method", "zzz"], "--search-method"),
        (["--hp", "rl.nope=1", "--methods", "rl"], "--hp"),
        (["--hp", "ga.lr=1", "--methods", "rl"], "--hp"),
        (["--hp", "rl.lr=-1", "--methods", "rl"], "--hp"),
        (["--device", "cuda:7"], "--device"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, flag):
    assert main(["stress", "--out", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and flag in err and "\n" not in err
    assert not (tmp_path / "stress.json").exists()
