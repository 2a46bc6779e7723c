"""`bilevel.profile`: what it measures is right (errors, HVP counts, memory order); its errors name the fix.

No timed assertions: times are only checked to be consistent (min <= median <= max, one per repeat).
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest
import torch

from bilevel import CG, Direct, FirstOrder, Implicit, Neumann, Profile, Unrolled, optim, problems, profile

# `bilevel.profile` is the function (exported by the package); the module is reached by its full name.
profile_module = importlib.import_module("bilevel.profile")


@pytest.fixture(scope="module")
def ridge():
    return problems.ridge(n=40, m=30, p=5, per_feature=True, seed=0)


def _sgd(ref):
    return optim.SGD(lr=1.0 / ref.L)


def test_error_is_zero_for_direct_and_large_for_a_short_unroll(ridge):
    sgd = _sgd(ridge)
    solvers = {"direct": Implicit(sgd, 100, Direct()), "unrolled T=3": Unrolled(sgd, 3)}
    closed_form = ridge.hypergrad(ridge.outer)
    for reference in (None, closed_form):  # the default (Newton + dense solve) and the closed form
        p = profile(ridge.problem, solvers, ridge.inner_init, ridge.outer, reference=reference, repeats=2)
        assert p["direct"].rel_error < 1e-10 and p["direct"].cosine > 1 - 1e-12
        assert p["unrolled T=3"].rel_error > 1e-2
    default = profile(ridge.problem, solvers, ridge.inner_init, ridge.outer, repeats=1)
    assert default.reference.startswith("exact implicit") and "Direct" in default.reference
    assert default.reference_info["inner_grad_norm"] < 1e-10


def test_hvp_counts_are_the_solvers_work(ridge):
    sgd = _sgd(ridge)
    solvers = {
        "cg": Implicit(sgd, 100, CG(max_iter=4, tol=0.0)),  # warm_start=True: profile resets it per call
        "neumann": Implicit(sgd, 100, Neumann(alpha=1.0 / ridge.L, max_iter=6)),
        "direct": Implicit(sgd, 100, Direct()),
        "truncated": Unrolled(sgd, 20, truncate=5),
        "partial": FirstOrder(sgd, 100, "partial"),
    }
    p = profile(ridge.problem, solvers, ridge.inner_init, ridge.outer, repeats=3)
    cg = p["cg"]
    assert cg.hvp_count == cg.info["iterations"] == 4 and cg.info["warm_started"] is False
    assert p["neumann"].hvp_count == p["neumann"].info["iterations"] + 1 == 7  # K terms: K + 1 products
    assert p["direct"].hvp_count == 5  # one per column of the 5x5 Hessian
    assert p["truncated"].hvp_count == 5 and p["partial"].hvp_count == 0
    # more CG iterations, less error than the same budget of Neumann terms on this SPD problem
    assert p["cg"].rel_error < p["neumann"].rel_error
    for row in p.rows:
        assert len(row.times_s) == 3 and row.time_min_s <= row.time_s <= row.time_max_s


def test_checkpointed_and_truncated_unrolls_hold_less_memory_than_the_full_one():
    ref = problems.logistic(n=1000, m=50, p=5, seed=0)  # nonlinear: every step saves n-vectors
    sgd = _sgd(ref)
    solvers = {
        "full": Unrolled(sgd, 64),
        "checkpoint": Unrolled(sgd, 64, checkpoint=True),
        "truncate 4": Unrolled(sgd, 64, truncate=4),
    }
    p = profile(ref.problem, solvers, ref.inner_init, ref.outer, repeats=1, warmup=0, reference="full")
    assert p.memory_kind == "cpu_allocator_peak"
    full = p["full"].peak_bytes
    assert full > 64 * 1000 * 8  # at least one float64 n-vector per step
    assert p["checkpoint"].peak_bytes < full / 2 and p["truncate 4"].peak_bytes < full / 2
    assert p["full"].rel_error == 0.0 and p["checkpoint"].rel_error < 1e-12  # same gradient, less memory


def test_table_to_dict_and_list_names(ridge):
    sgd = _sgd(ridge)
    same = Unrolled(sgd, 5)
    p = profile(ridge.problem, [same, same, FirstOrder(sgd, 50)], ridge.inner_init, ridge.outer, repeats=1)
    names = [r.name for r in p.rows]
    assert names[0] == repr(same) and names[1] == repr(same) + " #2" and len(set(names)) == 3
    data = json.loads(json.dumps(p.to_dict(), allow_nan=False))
    assert data["repeats"] == 1 and data["memory_kind"] == "cpu_allocator_peak"
    assert {"name", "time_s", "peak_bytes", "hvp_count", "rel_error", "times_s"} <= set(data["rows"][0])
    assert data["machine"]["torch"] == torch.__version__
    text, md = p.table(), p.table("markdown")
    assert all(n in text for n in names) and "rel. error" in text and str(p) == text
    assert md.startswith("| solver |") and "|---|" in md and md.count("\n| ") == len(names)


def test_reference_by_name_by_solver_and_with_data(ridge):
    sgd = _sgd(ridge)
    X, y, Xv, yv = (ridge.data[k] for k in ("X", "y", "X_val", "y_val"))
    solvers = {"long": Unrolled(sgd, 300), "short": Unrolled(sgd, 10)}
    kw = dict(inner_data=[(X, y)], outer_data=[(Xv, yv)], repeats=1, device="cpu")
    by_name = profile(ridge.problem, solvers, ridge.inner_init, ridge.outer, reference="long", **kw)
    assert by_name["long"].rel_error == 0.0 and by_name.reference == "solver 'long'"
    solver_ref = Implicit(sgd, 300, CG(tol=1e-12, max_iter=100))
    by_solver = profile(ridge.problem, solvers, ridge.inner_init, ridge.outer, reference=solver_ref, **kw)
    assert by_solver["long"].rel_error < 1e-8
    assert by_solver["short"].rel_error == pytest.approx(by_name["short"].rel_error, rel=1e-6)


def test_default_reference_above_the_dense_limit_uses_cg(ridge, monkeypatch):
    monkeypatch.setattr(profile_module, "DENSE_MAX", 1)
    sgd = _sgd(ridge)
    solvers = {"direct": Implicit(sgd, 100, Direct()), "unrolled T=3": Unrolled(sgd, 3)}
    p = profile(ridge.problem, solvers, ridge.inner_init, ridge.outer, repeats=1)
    assert "CG" in p.reference and p.reference_info["residual"] <= 1e-10
    assert p["direct"].rel_error < 1e-9 and p["unrolled T=3"].rel_error > 1e-2


def test_a_failing_solver_is_a_row_and_on_error_raise_raises():
    ref = problems.saddle()
    theta = ref.solve_inner(ref.outer)
    solvers = {"cg": Implicit(None, 0, CG()), "direct": Implicit(None, 0, Direct())}
    p = profile(ref.problem, solvers, theta, ref.outer, repeats=1)
    assert p["cg"].failed.startswith("IndefiniteHessianError") and p["cg"].time_s is None
    assert p["direct"].failed is None and p["direct"].rel_error < 1e-10
    assert "failed" in p.table()
    with pytest.raises(Exception, match="non-positive curvature"):
        profile(ref.problem, solvers, theta, ref.outer, repeats=1, on_error="raise")
    with pytest.raises(Exception, match="non-positive curvature"):  # every solver failed: the first error
        profile(ref.problem, {"cg": solvers["cg"]}, theta, ref.outer, repeats=1)


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        ({"solvers": {}}, ValueError, "solvers is empty"),
        ({"solvers": "unrolled"}, TypeError, "dict name -> solver"),
        ({"solvers": {"x": 3}}, TypeError, "solvers['x'] is a int, not a solver"),
        ({"reference": 3}, TypeError, "reference must be None"),
        ({"reference": "nope"}, ValueError, "reference 'nope' is not one of"),
        ({"reference": {"lam": torch.zeros(2)}}, ValueError, "keys and shapes of outer"),
        ({"repeats": 0}, ValueError, "repeats must be an integer >= 1"),
        ({"warmup": -1}, ValueError, "warmup must be an integer >= 0"),
        ({"device": "nonsense"}, ValueError, "device 'nonsense' not understood"),
        ({"on_error": "ignore"}, ValueError, "on_error must be"),
        ({"problem": "ridge"}, TypeError, "problem must be a BilevelProblem"),
    ],
)
def test_bad_arguments_name_the_argument_and_the_fix(ridge, kwargs, exc, words):
    args = {
        "problem": ridge.problem,
        "solvers": {"u": Unrolled(_sgd(ridge), 2)},
        "inner_init": ridge.inner_init,
        "outer": ridge.outer,
    }
    args.update(kwargs)
    with pytest.raises(exc) as info:
        profile(**args)
    assert words in str(info.value)


def test_profile_is_exported_and_documented():
    assert isinstance(Profile.__doc__, str)
    doc = profile_module.__doc__
    for words in ("median", "max_memory_allocated", "profiler", "hvp_count", "Newton", "CG"):
        assert words in doc


PROFILING_DOC = Path(__file__).resolve().parents[2] / "docs" / "profiling.md"


def test_profiling_doc_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", PROFILING_DOC.read_text(), flags=re.S)
    assert len(blocks) == 1
    scope: dict = {}
    exec(compile(blocks[0], str(PROFILING_DOC), "exec"), scope)
    result = scope["result"]
    assert result.reference.startswith("exact implicit") and result.reference_info["inner_grad_norm"] < 1e-10
    assert result["implicit T=100 CG(10)"].rel_error < 1e-8
    assert result["implicit T=100 CG(10)"].hvp_count == 10
    assert result["unrolled T=100"].rel_error < 1e-8 < 1e-3 < result["unrolled T=10"].rel_error
    assert result["partial T=100"].rel_error > 0.99  # f has no direct λ term: ∂f/∂λ = 0
    assert result["unrolled T=10"].peak_bytes < result["unrolled T=100"].peak_bytes  # graph grows with T
    out = capsys.readouterr().out
    assert "rel. error" in out and "unrolled T=100 checkpoint" in out
