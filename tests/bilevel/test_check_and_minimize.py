"""`check_hypergrad` catches wrong hypergradients; `minimize` converges and respects constraints."""

from __future__ import annotations

import pytest
import torch

from bilevel import (
    CG,
    Box,
    CappedSimplex,
    FirstOrder,
    Implicit,
    Neumann,
    Unrolled,
    check_hypergrad,
    minimize,
    optim,
    problems,
    top_k,
)

from .helpers import rel_err


@pytest.mark.parametrize("name", ["ridge", "logistic"])
def test_check_accepts_a_correct_solver(name):
    ref = getattr(problems, name)(seed=0)
    solver = Implicit(optim.SGD(lr=1.0 / ref.L), steps=400, linear_solver=CG(tol=1e-12))
    res = check_hypergrad(ref.problem, solver, ref.inner_init, ref.outer)
    assert res.rel_error_exact <= 1e-6 and res.rel_error_fd <= 1e-6
    assert res.cosine_exact > 1 - 1e-10
    assert res.ok(1e-6)
    assert rel_err(res.exact, ref.hypergrad(ref.outer)) <= 1e-9  # the reference itself is right
    assert "rel.err" in str(res)


def test_check_flags_a_biased_solver():
    ref = problems.weighted_ridge(seed=0)
    res = check_hypergrad(ref.problem, FirstOrder(mode="identity"), ref.solve_inner(ref.outer), ref.outer)
    assert res.rel_error_exact > 1e-2 and res.rel_error_fd > 1e-2
    assert not res.ok()


def test_check_uses_random_directions_for_large_outer():
    ref = problems.weighted_ridge(seed=1, n=80)
    solver = Implicit(optim.SGD(lr=0.1), steps=0, linear_solver=CG(tol=1e-12))
    res = check_hypergrad(
        ref.problem, solver, ref.solve_inner(ref.outer), ref.outer, max_fd_coords=10, fd_directions=4
    )
    assert res.fd.numel() == 4 and not res.info["fd_coordinates"]
    assert res.rel_error_fd <= 1e-6


def test_minimize_reaches_the_closed_form_optimum():
    ref = problems.quadratic(seed=0, dx=3, dy=5)
    x_opt, f_opt = ref.optimum()
    solver = Implicit(optim.SGD(lr=1.0 / ref.L), steps=30, linear_solver=CG(tol=1e-12))
    res = minimize(ref.problem, solver, ref.outer, optim.Adam(lr=0.05), steps=400, inner_init=ref.inner_init)
    assert rel_err(res.outer, x_opt) <= 1e-3
    assert res.history[-1]["outer_loss"] == pytest.approx(float(f_opt), rel=1e-5, abs=1e-8)
    assert len(res.history) == 400 and res.history[-1]["info"]["warm_started"]


def test_minimize_projects_onto_the_capped_simplex_and_stops_on_callback():
    ref = problems.weighted_ridge(seed=2, weights="direct", n=30)
    k = 10
    seen = []

    def callback(step, outer, hg):
        w = outer["weights"]
        seen.append((float(w.sum()), float(w.min()), float(w.max())))
        return step == 24

    solver = Implicit(optim.SGD(lr=1.0 / ref.L), steps=50, linear_solver=Neumann(max_iter=50))
    w0 = {
        "weights": CappedSimplex(k).project(
            torch.rand(30, generator=torch.Generator().manual_seed(0)).double()
        )
    }
    res = minimize(
        ref.problem,
        solver,
        w0,
        optim.SGD(lr=5.0),
        steps=100,
        constraint=CappedSimplex(k),
        callback=callback,
        inner_init=ref.solve_inner(ref.outer),
    )
    assert len(res.history) == 25
    for total, lo, hi in seen:
        assert total == pytest.approx(k, abs=1e-9) and lo >= 0 and hi <= 1
    assert float(ref.value(res.outer)) < float(ref.value(w0))  # F itself decreased
    assert float(top_k(res.outer["weights"], k).sum()) == k


def test_minimize_constraint_dict_and_errors():
    ref = problems.ridge(seed=0, per_feature=True)
    res = minimize(
        ref.problem,
        Unrolled(optim.SGD(lr=1.0 / ref.L), steps=20),
        ref.outer,
        optim.SGD(lr=1.0),
        steps=5,
        constraint={"lam": Box(0.01, 0.02)},
        inner_init=ref.inner_init,
    )
    assert float(res.outer["lam"].min()) >= 0.01 and float(res.outer["lam"].max()) <= 0.02
    with pytest.raises(KeyError, match="nope"):
        minimize(
            ref.problem,
            FirstOrder(),
            ref.outer,
            optim.SGD(lr=1.0),
            1,
            {"nope": Box()},
            inner_init=ref.inner_init,
        )
    with pytest.raises(TypeError, match="solver"):
        minimize(ref.problem, object(), ref.outer, optim.SGD(lr=1.0), 1, inner_init=ref.inner_init)


def test_minimize_reset_solver_false_keeps_the_implicit_warm_start():
    ref = problems.ridge(seed=0, per_feature=True)
    solver = Implicit(optim.SGD(lr=1.0 / ref.L), steps=5, linear_solver=CG(max_iter=3))
    kwargs = dict(inner_init=ref.inner_init)
    minimize(ref.problem, solver, ref.outer, optim.SGD(lr=0.1), 2, **kwargs)
    kept = minimize(ref.problem, solver, ref.outer, optim.SGD(lr=0.1), 1, reset_solver=False, **kwargs)
    assert kept.history[0]["info"]["warm_started"]  # v from the previous run starts the linear solve
    fresh = minimize(ref.problem, solver, ref.outer, optim.SGD(lr=0.1), 1, **kwargs)
    assert not fresh.history[0]["info"]["warm_started"]  # the default resets the solver first
