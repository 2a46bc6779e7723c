"""``worstforget bench``: `bilevel.profile` on built-in problems, its files, and one-line errors (exit 2)."""

from __future__ import annotations

import json

import pytest

from unlearning.cli import main
from unlearning.commands import bench

SMALL = ["--dim", "4", "--steps", "30", "--repeats", "1"]


def _run(tmp_path, *argv):
    return main(["bench", *SMALL, *argv, "--out", str(tmp_path)])


def test_bench_writes_json_markdown_and_plot(tmp_path, capsys):
    assert _run(tmp_path, "--solvers", "unrolled,unrolled-truncated,direct,first-order-partial") == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    rows = {r["name"]: r for r in report["profile"]["rows"]}
    assert list(rows) == ["unrolled", "unrolled-truncated", "direct", "first-order-partial"]
    assert report["profile"]["reference"] == "closed form (float64)"
    assert rows["direct"]["rel_error"] < 1e-8  # 30 steps solve this 4-feature ridge to rounding
    assert rows["first-order-partial"]["rel_error"] > 0.5  # ∂f/∂λ = 0 here: it misses everything
    assert rows["unrolled-truncated"]["hvp_count"] == 7 and rows["direct"]["hvp_count"] == 4
    assert all(r["peak_bytes"] > 0 and len(r["times_s"]) == 1 for r in rows.values())
    assert report["config"]["outer_dim"] == 4 and report["command"].startswith("worstforget bench ")
    md = (tmp_path / "bench.md").read_text()
    assert "| direct |" in md and "Reproduce: `worstforget bench" in md and "Machine:" in md
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "unrolled-truncated" in out and "bench.json" in out


def test_the_reproduce_command_reruns_the_same_bench(tmp_path):
    argv = ["--problem", "quadratic", "--outer-dim", "2", "--solvers", "implicit-cg", "--steps", "150"]
    assert _run(tmp_path / "a", *argv) == 0
    first = json.loads((tmp_path / "a" / "bench.json").read_text())
    argv = first["command"].split()[1:]  # "worstforget" dropped
    argv[argv.index("--out") + 1] = str(tmp_path / "b")
    assert main(argv) == 0
    second = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert second["config"] == first["config"]
    err = [r["rel_error"] for r in (first, second) for r in r["profile"]["rows"]]
    assert err[0] == err[1] and err[0] < 1e-6  # same data (seeded), same answer


def test_exact_reference_and_a_solver_name_as_reference(tmp_path):
    argv = ["--problem", "logistic", "--outer-dim", "1", "--solvers", "unrolled,implicit-cg"]
    assert _run(tmp_path, *argv, "--reference", "exact") == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["profile"]["reference"].startswith("exact implicit")
    assert _run(tmp_path, *argv, "--reference", "unrolled") == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["profile"]["rows"]
    assert rows[0]["rel_error"] == 0.0


def test_mlp_reweighting_on_digits(tmp_path, capsys):
    argv = ["--problem", "mlp-reweight", "--outer-dim", "40", "--steps", "5"]
    assert _run(tmp_path, *argv, "--solvers", "unrolled,unrolled-checkpoint,direct") == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    rows = {r["name"]: r for r in report["profile"]["rows"]}
    assert report["config"]["reference"] == "unrolled" and rows["unrolled"]["rel_error"] == 0.0
    assert rows["unrolled-checkpoint"]["rel_error"] < 1e-10
    assert report["config"]["damping"] == bench.MLP_DEFAULT_DAMPING  # the MLP's default
    assert rows["direct"]["hvp_count"] == 4 * 64 + 4 + 10 * 4 + 10  # one per inner parameter
    assert "MLP 64-4-10" in report["problem"]
    # CG on the MLP: negative curvature stops it early, and the table says so (the fix: more damping)
    assert _run(tmp_path, *argv, "--solvers", "unrolled,implicit-cg", "--damping", "0") == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["profile"]["rows"]
    assert rows[1]["failed"] is None and rows[1]["info"]["indefinite"] is True
    assert "negative curvature" in (tmp_path / "bench.md").read_text()
    assert "raise --damping" in " ".join(capsys.readouterr().out.split())  # rich wraps lines
    assert _run(tmp_path, *argv, "--solvers", "unrolled,implicit-cg", "--damping", "1") == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["profile"]["rows"]
    assert rows[1]["info"]["indefinite"] is False and 0 < rows[1]["rel_error"] < 10


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--solvers", "unrolled,nope"], "--solvers"),
        (["--solvers", ","], "--solvers"),
        (["--outer-dim", "3"], "--outer-dim"),
        (["--dim", "0"], "--dim"),
        (["--steps", "0"], "--steps"),
        (["--repeats", "0"], "--repeats"),
        (["--damping", "-1"], "--damping"),
        (["--reference", "oracle"], "--reference"),
        (["--problem", "mlp-reweight", "--reference", "closed-form"], "--reference"),
        (["--problem", "mlp-reweight", "--outer-dim", "100000"], "--outer-dim"),
        (["--device", "tpu"], "--device"),
    ],
)
def test_bad_input_is_one_line_naming_the_flag(tmp_path, capsys, argv, flag):
    assert _run(tmp_path, *argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: argument ") and flag in err.split(":")[1] and "\n" not in err
    assert not (tmp_path / "bench.json").exists()


def test_unknown_problem_and_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--problem", "lasso"])
    assert exc.value.code == 2 and "--problem" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for word in (*bench.PROBLEMS, *bench.SOLVERS, "--outer-dim", "max_memory_allocated", "Examples"):
        assert word in text
