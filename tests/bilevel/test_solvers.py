"""Every hypergradient solver against the closed forms of `bilevel.problems` (float64)."""

from __future__ import annotations

import pytest
import torch

from bilevel import CG, Direct, FirstOrder, FixedPoint, Implicit, Neumann, Unrolled, optim, problems, tree
from bilevel.linearize import linearize, outer_partials

from .helpers import rel_err

ARGMIN_PROBLEMS = {
    "ridge": lambda: problems.ridge(seed=0),
    "ridge_per_feature": lambda: problems.ridge(seed=1, per_feature=True),
    "ridge_log": lambda: problems.ridge(seed=2, per_feature=True, log_lambda=True),
    "quadratic": lambda: problems.quadratic(seed=0),
    "logistic": lambda: problems.logistic(seed=0),
    "weighted_ridge": lambda: problems.weighted_ridge(seed=0),
    "weighted_ridge_direct": lambda: problems.weighted_ridge(seed=1, weights="direct"),
    "imaml": lambda: problems.imaml_proximal(seed=0),
}


@pytest.fixture(params=sorted(ARGMIN_PROBLEMS), scope="module")
def ref(request):
    return ARGMIN_PROBLEMS[request.param]()


def implicit_at_solution(ref, linear_solver, **kw):
    solver = Implicit(optim.SGD(lr=1.0 / ref.L), steps=0, linear_solver=linear_solver, **kw)
    return solver.hypergrad(ref.problem, ref.solve_inner(ref.outer), ref.outer)


def test_direct_is_exact(ref):
    hg = implicit_at_solution(ref, Direct())
    assert rel_err(hg.grad, ref.hypergrad(ref.outer)) <= 1e-10
    assert hg.info["residual"] <= 1e-12


@pytest.mark.parametrize(
    "linear_solver",
    [CG(max_iter=200, tol=1e-12), Neumann(max_iter=3000, tol=1e-12), FixedPoint(max_iter=5000, tol=1e-12)],
    ids=["cg", "neumann", "fixed_point"],
)
def test_iterative_linear_solvers_to_tolerance(ref, linear_solver):
    hg = implicit_at_solution(ref, linear_solver)
    assert rel_err(hg.grad, ref.hypergrad(ref.outer)) <= 1e-6
    assert hg.info["hvp_count"] >= hg.info["iterations"] >= 1


def test_forward_over_reverse_hvp_matches(ref):
    fwd = implicit_at_solution(ref, CG(max_iter=200, tol=1e-12), hvp="forward")
    assert rel_err(fwd.grad, ref.hypergrad(ref.outer)) <= 1e-8


def test_implicit_with_inner_iterations(ref):
    steps = int(min(20000, 40 * ref.L / ref.mu))
    solver = Implicit(optim.SGD(lr=1.0 / ref.L), steps=steps, linear_solver=CG(max_iter=200, tol=1e-12))
    hg = solver.hypergrad(ref.problem, ref.inner_init, ref.outer)
    assert rel_err(hg.grad, ref.hypergrad(ref.outer)) <= 1e-8
    assert hg.info["inner_grad_norm"] <= 1e-9
    for key in ("seconds", "inner_grad_norm", "residual", "iterations", "hvp_count", "outer_loss"):
        assert key in hg.info


def test_neumann_truncation_bias_decays():
    ref = problems.quadratic(seed=3)
    errs = [
        rel_err(implicit_at_solution(ref, Neumann(max_iter=k)).grad, ref.hypergrad(ref.outer))
        for k in (5, 20, 80)
    ]
    assert errs[0] > errs[1] > errs[2]


def test_cg_warm_start_saves_iterations():
    ref = problems.quadratic(seed=4, dy=40)
    solver = Implicit(optim.SGD(lr=0.1), steps=0, linear_solver=CG(max_iter=500, tol=1e-10), warm_start=True)
    theta = ref.solve_inner(ref.outer)
    first = solver.hypergrad(ref.problem, theta, ref.outer)
    outer2 = {k: v + 1e-4 for k, v in ref.outer.items()}
    second = solver.hypergrad(ref.problem, ref.solve_inner(outer2), outer2)
    assert second.info["warm_started"] and not first.info["warm_started"]
    assert second.info["iterations"] < first.info["iterations"]
    assert rel_err(second.grad, ref.hypergrad(outer2)) <= 1e-8
    solver.reset()
    third = solver.hypergrad(ref.problem, theta, ref.outer)
    assert not third.info["warm_started"]


# ---------------------------------------------------------------- unrolled


def unrolled_ref(**kw):
    ref = problems.unrolled_gd_quadratic(seed=0, **kw)
    lr = ref.outer["lr"].detach().clone().requires_grad_(True)
    w0 = ref.outer["w0"].detach().clone().requires_grad_(True)
    return ref, {"lr": lr, "w0": w0}


@pytest.mark.parametrize("checkpoint", [False, True])
def test_unrolled_equals_closed_form_on_p5(checkpoint):
    ref, outer = unrolled_ref()
    solver = Unrolled(optim.SGD(lr=outer["lr"]), steps=ref.steps, checkpoint=checkpoint)
    hg = solver.hypergrad(ref.problem, {"w": outer["w0"]}, outer)
    want = ref.unrolled_hypergrad(outer)
    assert rel_err(hg.grad, want) <= 1e-10
    for k in want:  # each entry separately, not only the stacked vector
        assert rel_err({k: hg.grad[k]}, {k: want[k]}) <= 1e-10
    assert float(hg.info["outer_loss"]) == pytest.approx(float(ref.unrolled_value(outer).detach()), rel=1e-12)


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda: optim.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
        lambda: optim.Adam(lr=0.05),
        lambda: optim.AdamW(lr=0.05, weight_decay=0.1),
    ],
    ids=["sgd_nesterov", "adam", "adamw"],
)
@pytest.mark.parametrize("segment", [None, 1, 7])
def test_checkpointed_equals_full_unroll(make_opt, segment):
    ref = problems.quadratic(seed=5)
    full = Unrolled(make_opt(), steps=37).hypergrad(ref.problem, ref.inner_init, ref.outer)
    ckpt = Unrolled(make_opt(), steps=37, checkpoint=True, segment=segment).hypergrad(
        ref.problem, ref.inner_init, ref.outer
    )
    assert rel_err(ckpt.grad, full.grad) <= 1e-12
    assert ckpt.info["checkpoints"] == (37 if segment == 1 else -(-37 // (segment or 7)))


def test_truncated_unroll_differentiates_last_k_steps_only():
    ref = problems.quadratic(seed=6)
    T, K, lr = 30, 5, 0.5 / ref.L
    solver = Unrolled(optim.SGD(lr=lr), steps=T, truncate=K)
    hg = solver.hypergrad(ref.problem, ref.inner_init, ref.outer)
    # By hand: T−K detached steps, then K steps on the graph.
    lam = {k: v.detach().requires_grad_(True) for k, v in ref.outer.items()}
    th = tree.detach(ref.inner_init)
    for t in range(T):
        if t <= T - K:
            th = {k: v.detach().requires_grad_(True) for k, v in th.items()}
        g = torch.autograd.grad(
            ref.problem.inner_loss(th, lam, None), list(th.values()), create_graph=t >= T - K
        )
        th = {k: v - lr * gi for (k, v), gi in zip(th.items(), g)}
    want = torch.autograd.grad(ref.problem.outer_loss(th, lam, None), list(lam.values()))
    assert rel_err(hg.grad, dict(zip(lam, want))) <= 1e-12
    assert hg.info["differentiated_steps"] == K


def test_truncation_bias_decays_with_k():
    ref = problems.quadratic(seed=7)
    solver = lambda k: Unrolled(optim.SGD(lr=0.5 / ref.L), steps=60, truncate=k)  # noqa: E731
    full = (
        Unrolled(optim.SGD(lr=0.5 / ref.L), steps=60).hypergrad(ref.problem, ref.inner_init, ref.outer).grad
    )
    errs = [
        rel_err(solver(k).hypergrad(ref.problem, ref.inner_init, ref.outer).grad, full) for k in (1, 5, 20)
    ]
    assert errs[0] > errs[1] > errs[2]


def test_unrolled_converges_to_implicit_on_strongly_convex():
    ref = problems.ridge(seed=3, per_feature=True)
    hg = Unrolled(optim.SGD(lr=1.0 / ref.L), steps=800).hypergrad(ref.problem, ref.inner_init, ref.outer)
    assert rel_err(hg.grad, ref.hypergrad(ref.outer)) <= 1e-8


# ---------------------------------------------------------------- first order


def test_partial_is_the_direct_derivative():
    ref = problems.weighted_ridge(seed=2, weights="direct")
    theta = ref.solve_inner(ref.outer)
    hg = FirstOrder(mode="partial").hypergrad(ref.problem, theta, ref.outer)
    _, d_lam, _ = outer_partials(ref.problem, theta, ref.outer, None)
    assert rel_err(hg.grad, d_lam) == 0.0


@pytest.mark.parametrize("fd", [True, False])
@pytest.mark.parametrize("c", [1.0, 0.3])
def test_identity_equals_its_formula(fd, c):
    """DARTS: ∇F ≈ ∂_λ f − c ∇²_λθ g ∂_θ f. g is quadratic in θ here, so the central difference is exact."""
    ref = problems.weighted_ridge(seed=3)
    theta = ref.solve_inner(ref.outer)
    hg = FirstOrder(mode="identity", c=c, finite_difference=fd).hypergrad(ref.problem, theta, ref.outer)
    d_theta, d_lam, _ = outer_partials(ref.problem, theta, ref.outer, None)
    # the mixed product from the dense Jacobian of ∇_θ g with respect to λ, built independently
    lam = ref.outer["x"]

    def grad_theta(x):
        return torch.func.grad(lambda w: ref.problem.inner_loss(w, {"x": x}, None))(theta)

    jac = torch.func.jacrev(grad_theta)(lam)  # dict of (shape θ_k, n)
    mixed = sum(torch.tensordot(d_theta[k], jac[k], dims=d_theta[k].dim()) for k in theta)
    want = {"x": d_lam["x"] - c * mixed}
    assert rel_err(hg.grad, want) <= (1e-7 if fd else 1e-12)
    # and it is NOT the true hypergradient: the approximation is documented, not hidden
    assert rel_err(hg.grad, ref.hypergrad(ref.outer)) > 1e-2


def test_f2sa_converges_as_penalty_grows():
    ref = problems.ridge(seed=4, per_feature=True)
    want = ref.hypergrad(ref.outer)
    errs = []
    for sigma in (10.0, 100.0, 1000.0):
        solver = FirstOrder(optim.SGD(lr=1.0 / ref.L), steps=3000, mode="f2sa", sigma=sigma)
        errs.append(rel_err(solver.hypergrad(ref.problem, ref.inner_init, ref.outer).grad, want))
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 5e-3
    assert errs[1] / errs[2] > 5  # O(1/σ)


# ---------------------------------------------------------------- P7 edge cases


def test_scalar_inner_and_outer():
    ref = problems.scalar_inner()
    want = ref.hypergrad(ref.outer)
    for solver in (
        Implicit(optim.SGD(lr=0.1), steps=0, linear_solver=CG()),
        Implicit(optim.SGD(lr=0.1), steps=0, linear_solver=Direct()),
        Implicit(optim.SGD(lr=0.1), steps=0, linear_solver=Neumann(max_iter=2000)),
        Implicit(optim.SGD(lr=0.1), steps=0, linear_solver=FixedPoint()),
    ):
        hg = solver.hypergrad(ref.problem, ref.solve_inner(ref.outer), ref.outer)
        assert hg.grad[next(iter(want))].shape == torch.Size([])
        assert rel_err(hg.grad, want) <= 1e-8
    hg = Unrolled(optim.SGD(lr=1.0 / ref.L), steps=500).hypergrad(ref.problem, ref.inner_init, ref.outer)
    assert rel_err(hg.grad, want) <= 1e-8


def test_several_tensors_and_unused_parameters():
    ref = problems.multi_tensor()
    want = ref.hypergrad(ref.outer)
    unused = [k for k, v in want.items() if bool((v == 0).all())]
    assert unused, "the problem must have an unused outer entry"
    for solver in (
        Implicit(optim.SGD(lr=0.1), steps=0, linear_solver=CG(tol=1e-13)),
        Implicit(optim.SGD(lr=0.1), steps=0, linear_solver=Direct()),
    ):
        hg = solver.hypergrad(ref.problem, ref.solve_inner(ref.outer), ref.outer)
        assert rel_err(hg.grad, want) <= 1e-8
        for k in unused:
            assert torch.equal(hg.grad[k], torch.zeros_like(want[k]))
        assert {k: v.shape for k, v in hg.grad.items()} == {k: v.shape for k, v in ref.outer.items()}
    hg = Unrolled(optim.SGD(lr=1.0 / ref.L), steps=2000).hypergrad(ref.problem, ref.inner_init, ref.outer)
    assert rel_err(hg.grad, want) <= 1e-8


def test_non_spd_hessian_is_reported_not_silently_wrong():
    from bilevel import IndefiniteHessianError

    ref = problems.saddle()
    theta = ref.solve_inner(ref.outer)
    with pytest.raises(IndefiniteHessianError, match="not positive definite"):
        Implicit(optim.SGD(lr=0.1), steps=0, linear_solver=CG()).hypergrad(ref.problem, theta, ref.outer)
    warned = Implicit(optim.SGD(lr=0.1), steps=0, linear_solver=CG(on_indefinite="warn")).hypergrad(
        ref.problem, theta, ref.outer
    )
    assert warned.info["indefinite"] is True
    # the implicit function theorem still holds for a non-singular H: Direct gets it right
    exact = Implicit(optim.SGD(lr=0.1), steps=0, linear_solver=Direct()).hypergrad(
        ref.problem, theta, ref.outer
    )
    assert rel_err(exact.grad, ref.hypergrad(ref.outer)) <= 1e-10


def test_nan_raises_naming_where():
    ref = problems.nan_outer()
    theta = ref.solve_inner(ref.outer) if ref.solve_inner is not None else ref.inner_init
    with pytest.raises(FloatingPointError, match="outer_loss"):
        Implicit(optim.SGD(lr=0.1), steps=0).hypergrad(ref.problem, theta, ref.outer)
    with pytest.raises(FloatingPointError, match="outer_loss"):
        Unrolled(optim.SGD(lr=0.1), steps=3).hypergrad(ref.problem, theta, ref.outer)


def test_diverging_inner_loop_raises_naming_the_step():
    ref = problems.quadratic(seed=0)
    with pytest.raises(FloatingPointError, match="inner iterate"):
        Implicit(optim.SGD(lr=1e6), steps=400).hypergrad(ref.problem, ref.inner_init, ref.outer)


def test_linearize_counts_hvps():
    ref = problems.quadratic(seed=0)
    theta = ref.solve_inner(ref.outer)
    lin = linearize(ref.problem, theta, ref.outer, None)
    v = tree.zeros_like(theta)
    lin.hvp(v)
    lin.hvp(v)
    assert lin.counter["hvp"] == 2


# ---------------------------------------------------------------- data and validation


def test_inner_data_iterable_callable_and_none_agree():
    ref = problems.ridge(seed=5)
    X, y = ref.data["X"], ref.data["y"]
    solver = Implicit(optim.SGD(lr=1.0 / ref.L), steps=300, linear_solver=CG(tol=1e-12))
    base = solver.hypergrad(ref.problem, ref.inner_init, ref.outer)
    as_list = Implicit(optim.SGD(lr=1.0 / ref.L), steps=300, linear_solver=CG(tol=1e-12)).hypergrad(
        ref.problem, ref.inner_init, ref.outer, inner_data=[(X, y)]
    )
    as_fn = Implicit(optim.SGD(lr=1.0 / ref.L), steps=300, linear_solver=CG(tol=1e-12)).hypergrad(
        ref.problem, ref.inner_init, ref.outer, inner_data=lambda step: (X, y)
    )
    assert rel_err(as_list.grad, base.grad) <= 1e-13
    assert rel_err(as_fn.grad, base.grad) <= 1e-13


def test_bad_arguments_are_named():
    ref = problems.ridge(seed=0)
    with pytest.raises(ValueError, match="steps"):
        Unrolled(optim.SGD(lr=0.1), steps=0)
    with pytest.raises(ValueError, match="mode"):
        FirstOrder(mode="darts")
    with pytest.raises(TypeError, match="outer"):
        Implicit(optim.SGD(lr=0.1), steps=1).hypergrad(ref.problem, ref.inner_init, [1.0])
    with pytest.raises(TypeError, match="inner_data"):
        Implicit(optim.SGD(lr=0.1), steps=1).hypergrad(ref.problem, ref.inner_init, ref.outer, inner_data=3)
    with pytest.raises(ValueError, match="tol"):
        CG(tol=-1)
    with pytest.raises(ValueError, match="alpha"):
        Neumann(alpha=0.0)
