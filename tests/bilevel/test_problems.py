"""The reference problems prove their own closed forms (float64):

(i) ``solve_inner`` is stationary for the problem's own ``inner_loss`` (autograd);
(ii) ``hypergrad`` equals central finite differences of ``value`` and autograd through the exact solve;
(iii) ``inner_hessian`` equals ``torch.func.hessian`` of ``inner_loss``;
(iv) P5's unrolled closed forms equal autograd through an explicit T-step loop;
(v) P2's ``optimum()`` is a stationary point of F.
"""

from __future__ import annotations

import pytest
import torch
from torch.func import grad, hessian

from bilevel import problems as P
from bilevel.tree import flatten, unflatten

DT = torch.float64  # never change the global default dtype: other test modules share the process

CASES = {
    "ridge": lambda: P.ridge(),
    "ridge-per_feature": lambda: P.ridge(per_feature=True),
    "ridge-log": lambda: P.ridge(log_lambda=True),
    "ridge-per_feature-log": lambda: P.ridge(per_feature=True, log_lambda=True),
    "ridge-ill-log": lambda: P.ridge(ill_conditioned=True, log_lambda=True),
    "ridge-rankdef-log": lambda: P.ridge(rank_deficient=True, log_lambda=True, p=8, n=6),
    "quadratic": lambda: P.quadratic(),
    "quadratic-illcond": lambda: P.quadratic(dx=2, dy=6, mu=1e-3, L=10.0, coupling=3.0, seed=1),
    "weighted_ridge": lambda: P.weighted_ridge(),
    "weighted_ridge-direct": lambda: P.weighted_ridge(weights="direct", gamma=0.3),
    "unrolled_gd_quadratic": lambda: P.unrolled_gd_quadratic(),
    "imaml_proximal": lambda: P.imaml_proximal(),
    "logistic": lambda: P.logistic(),
    "logistic-per_feature": lambda: P.logistic(per_feature=True),
    "logistic-multiclass-per_feature": lambda: P.logistic(
        multiclass=True, per_feature=True, n=120, p=12, classes=4
    ),
    "scalar_inner": lambda: P.scalar_inner(),
    "multi_tensor": lambda: P.multi_tensor(),
    "saddle": lambda: P.saddle(),
}
# Errors measured by the tests are stored here and printed by test_report (run with -s to see them).
MEASURED: dict[str, dict[str, float]] = {}


def rel(a: dict, b: dict) -> float:
    fa, fb = flatten(a), flatten(b)
    return float((fa - fb).norm() / fb.norm().clamp_min(1e-300))


def record(name: str, what: str, err: float) -> None:
    MEASURED.setdefault(name, {})[what] = err


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These problems are tiny: OpenMP/MKL threading only adds barrier waits on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    return request.param, CASES[request.param]()


def autograd_hypergrad(ref, fn=None) -> dict:
    fn = ref.value if fn is None else fn
    outer = {k: v.detach().clone().requires_grad_(True) for k, v in ref.outer.items()}
    keys = list(outer)
    out = fn(outer)
    if not out.requires_grad:  # F does not depend on the outer variable at all
        return {k: torch.zeros_like(v) for k, v in outer.items()}
    gs = torch.autograd.grad(out, [outer[k] for k in keys], allow_unused=True)
    return {k: torch.zeros_like(outer[k]) if g is None else g for k, g in zip(keys, gs)}


def test_inner_solution_is_stationary(case):
    name, ref = case
    outer = ref.outer
    theta = ref.solve_inner(outer)
    g = grad(lambda inner: ref.problem.inner_loss(inner, outer, None))(theta)
    gnorm = float(flatten(g).norm())
    record(name, "inner_grad_norm", gnorm)
    assert gnorm <= 1e-10


def test_hypergrad_matches_finite_differences(case):
    name, ref = case
    hg = ref.hypergrad(ref.outer)
    assert set(hg) == set(ref.outer)
    for k in hg:
        assert hg[k].shape == ref.outer[k].shape, k
    fd = P.finite_difference(ref, ref.outer)
    err = rel(hg, fd)
    record(name, "closed_vs_fd", err)
    assert err <= 1e-6


def test_hypergrad_matches_autograd_through_exact_solve(case):
    name, ref = case
    err = rel(ref.hypergrad(ref.outer), autograd_hypergrad(ref)) if name != "unrolled_gd_quadratic" else 0.0
    if name == "unrolled_gd_quadratic":  # argmin form: F is constant, both are exactly zero
        assert all(bool((v == 0).all()) for v in autograd_hypergrad(ref).values())
        assert all(bool((v == 0).all()) for v in ref.hypergrad(ref.outer).values())
    record(name, "closed_vs_autograd", err)
    assert err <= 1e-10


def test_inner_hessian_matches_torch_func(case):
    name, ref = case
    outer = ref.outer
    theta = ref.solve_inner(outer)

    def g_flat(vec):
        return ref.problem.inner_loss(unflatten(vec, theta), outer, None)

    h = hessian(g_flat)(flatten(theta))
    h_ref = ref.inner_hessian(outer)
    d = flatten(theta).numel()
    assert h_ref.shape == (d, d)
    err = float((h - h_ref).norm() / h.norm())
    record(name, "hessian", err)
    assert err <= 1e-12
    ev = torch.linalg.eigvalsh(h)
    assert ev[0].item() == pytest.approx(ref.mu, rel=1e-8, abs=1e-12)
    assert ev[-1].item() == pytest.approx(ref.L, rel=1e-8)
    assert ref.strongly_convex == (ev[0].item() > 0)


def test_inner_init_is_not_the_solution(case):
    _, ref = case
    assert not torch.allclose(flatten(ref.inner_init), flatten(ref.solve_inner(ref.outer)))


def test_deterministic_under_seed(case):
    name, ref = case
    again = CASES[name]()
    assert torch.equal(flatten(ref.outer), flatten(again.outer))
    assert torch.equal(flatten(ref.hypergrad(ref.outer)), flatten(again.hypergrad(again.outer)))


# ---------------------------------------------------------------------------------------------- P1 ridge


def test_ridge_scalar_lambda_is_0dim_and_formula():
    ref = P.ridge()
    assert ref.outer["lam"].dim() == 0 and ref.hypergrad(ref.outer)["lam"].dim() == 0
    X, y, Xv, yv = (ref.data[k] for k in ("X", "y", "X_val", "y_val"))
    n, p = X.shape
    lam = ref.outer["lam"]
    H = X.T @ X / n + lam * torch.eye(p, dtype=DT)
    w = torch.linalg.solve(H, X.T @ y / n)
    gf = Xv.T @ (Xv @ w - yv) / Xv.shape[0]
    expected = -w @ torch.linalg.solve(H, gf)
    assert torch.allclose(ref.hypergrad(ref.outer)["lam"], expected, rtol=1e-13, atol=0)


def test_ridge_log_lambda_is_lambda_times_lambda_gradient():
    plain, logged = P.ridge(per_feature=True), P.ridge(per_feature=True, log_lambda=True)
    lam = plain.outer["lam"]
    assert torch.allclose(logged.outer["log_lam"], lam.log())
    assert torch.allclose(
        logged.hypergrad(logged.outer)["log_lam"], lam * plain.hypergrad(plain.outer)["lam"]
    )


def test_ridge_variants_conditioning():
    ill = P.ridge(ill_conditioned=True)
    assert ill.L / ill.mu > 1e3
    rd = P.ridge(rank_deficient=True, n=6, p=8)
    assert int(torch.linalg.matrix_rank(rd.data["X"])) == 3
    assert rd.mu == pytest.approx(1e-3, rel=1e-6)


def test_ridge_accepts_minibatches():
    ref = P.ridge(n=40)
    X, y = ref.data["X"], ref.data["y"]
    theta = ref.solve_inner(ref.outer)
    full = ref.problem.inner_loss(theta, ref.outer, None)
    assert torch.allclose(ref.problem.inner_loss(theta, ref.outer, (X, y)), full)
    halves = [ref.problem.inner_loss(theta, ref.outer, (X[s], y[s])) for s in (slice(0, 20), slice(20, 40))]
    assert torch.allclose((halves[0] + halves[1]) / 2, full)
    Xv, yv = ref.data["X_val"], ref.data["y_val"]
    assert torch.allclose(ref.problem.outer_loss(theta, ref.outer, (Xv, yv)), ref.value(ref.outer))
    with pytest.raises(TypeError, match="batch"):
        ref.problem.inner_loss(theta, ref.outer, X)


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="n must be"):
        P.ridge(n=0)
    with pytest.raises(ValueError, match="lam must have shape"):
        P.ridge(per_feature=True, lam=torch.ones(3), p=5)
    with pytest.raises(ValueError, match="mu"):
        P.quadratic(mu=2.0, L=1.0)
    with pytest.raises(ValueError, match="weights"):
        P.weighted_ridge(weights="softmax")
    with pytest.raises(ValueError, match="steps"):
        P.unrolled_gd_quadratic(steps=-1)


def test_finite_difference_shapes_and_errors():
    ref = P.multi_tensor()
    fd = P.finite_difference(ref, eps=1e-4)
    assert {k: v.shape for k, v in fd.items()} == {k: v.shape for k, v in ref.outer.items()}
    assert bool((fd["unused"] == 0).all())
    with pytest.raises(ValueError, match="eps"):
        P.finite_difference(ref, eps=0.0)
    with pytest.raises(ValueError, match="k must be"):
        P.multi_tensor(k=0)


def test_lam_given_as_tensor_requiring_grad_is_copied():
    lam = torch.tensor(0.7, dtype=DT, requires_grad=True)
    ref = P.ridge(lam=lam)
    assert ref.outer["lam"].is_leaf and not ref.outer["lam"].requires_grad and float(ref.outer["lam"]) == 0.7


def test_float32_builds():
    ref = P.ridge(dtype=torch.float32)
    assert ref.outer["lam"].dtype == torch.float32
    assert ref.hypergrad(ref.outer)["lam"].dtype == torch.float32


# ------------------------------------------------------------------------------------------ P2 quadratic


@pytest.mark.parametrize("kw", [{}, {"dx": 2, "dy": 6, "mu": 1e-3, "L": 10.0, "coupling": 3.0, "seed": 1}])
def test_quadratic_optimum_is_stationary_point_of_F(kw):
    ref = P.quadratic(**kw)
    x_opt, f_opt = ref.optimum()
    g = ref.hypergrad(x_opt)["x"]
    assert float(g.norm()) <= 1e-10 * max(1.0, float(ref.data["M"].norm()))
    assert torch.allclose(f_opt, ref.value(x_opt), rtol=1e-14)
    # and a minimiser: F is larger nearby.
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        dx = 1e-2 * torch.randn(x_opt["x"].shape, generator=gen, dtype=DT)
        assert ref.value({"x": x_opt["x"] + dx}) > f_opt
    # M is F's Hessian.
    assert torch.allclose(hessian(lambda x: ref.value({"x": x}))(x_opt["x"]), ref.data["M"], rtol=1e-10)


def test_quadratic_spectrum_is_controlled():
    ref = P.quadratic(dy=7, mu=0.1, L=20.0, coupling=2.5)
    assert ref.mu == pytest.approx(0.1, rel=1e-10) and ref.L == pytest.approx(20.0, rel=1e-10)
    assert float(torch.linalg.matrix_norm(ref.data["C"], ord=2)) == pytest.approx(2.5, rel=1e-12)


# ----------------------------------------------------------------------------------------- P4 weighting


def test_weighted_ridge_direct_point_on_capped_simplex_and_batches():
    ref = P.weighted_ridge(weights="direct", n=20)
    w = ref.outer["weights"]
    assert float(w.sum()) == pytest.approx(10.0, rel=1e-12)
    assert bool((w >= 0.1 - 1e-12).all() and (w <= 0.9 + 1e-12).all())
    theta = ref.solve_inner(ref.outer)
    X, y = ref.data["X"], ref.data["y"]
    idx = torch.arange(20)
    full = ref.problem.inner_loss(theta, ref.outer, None)
    assert torch.allclose(ref.problem.inner_loss(theta, ref.outer, (X, y, idx)), full)
    halves = [ref.problem.inner_loss(theta, ref.outer, (X[i], y[i], i)) for i in (idx[:10], idx[10:])]
    assert torch.allclose((halves[0] + halves[1]) / 2, full)


def test_weighted_ridge_sigmoid_chain_rule():
    """∂F/∂x = σ'(x) ⊙ ∂F/∂s: the sigmoid and direct parametrisations agree at s = σ(x)."""
    sig = P.weighted_ridge(gamma=0.2)
    x = sig.outer["x"]
    direct = P.weighted_ridge(weights="direct", gamma=0.2)
    g_s = direct.hypergrad({"weights": torch.sigmoid(x)})["weights"]
    ds = torch.sigmoid(x) * (1 - torch.sigmoid(x))
    assert torch.allclose(sig.hypergrad(sig.outer)["x"], ds * g_s, rtol=1e-12, atol=0)


# ------------------------------------------------------------------------------------------ P5 unrolled


def _loop(ref, outer):
    A, b = ref.data["A"], ref.data["b"]
    w = outer["w0"]
    for _ in range(ref.steps):
        w = w - outer["lr"] * (A @ w - b)
    return w


@pytest.mark.parametrize("steps", [0, 1, 10, 40])
def test_unrolled_closed_forms_match_explicit_loop(steps):
    ref = P.unrolled_gd_quadratic(steps=steps)
    outer = {k: v.detach().clone().requires_grad_(True) for k, v in ref.outer.items()}
    w_T = _loop(ref, outer)
    assert torch.allclose(w_T, ref.unrolled_inner(ref.outer)["w"], rtol=1e-13, atol=1e-14)
    loss = 0.5 * ((w_T - ref.data["w_tgt"]) ** 2).sum()
    assert torch.allclose(loss, ref.unrolled_value(ref.outer), rtol=1e-13)
    g_lr, g_w0 = torch.autograd.grad(loss, [outer["lr"], outer["w0"]], allow_unused=True)
    g_lr = torch.zeros((), dtype=DT) if g_lr is None else g_lr
    closed = ref.unrolled_hypergrad(ref.outer)
    assert closed["lr"].dim() == 0
    err = rel(closed, {"lr": g_lr, "w0": g_w0})
    record(f"unrolled_gd_quadratic-T{steps}", "closed_vs_loop_autograd", err)
    assert err <= 1e-10
    fd_err = rel(closed, P.finite_difference(ref, ref.outer, fn=ref.unrolled_value))
    record(f"unrolled_gd_quadratic-T{steps}", "closed_vs_fd", fd_err)
    assert fd_err <= 1e-6


def test_unrolled_inner_init_is_outer_w0():
    ref = P.unrolled_gd_quadratic()
    assert ref.inner_init["w"] is ref.outer["w0"]
    assert ref.outer["lr"].dim() == 0 and ref.outer["lr"].item() < 2 / ref.L


# -------------------------------------------------------------------------------------------- P6 iMAML


def test_imaml_jacobian_is_lam_times_inverse():
    ref = P.imaml_proximal(lam=3.0)
    jac = torch.func.jacrev(lambda t: ref.solve_inner({"theta": t})["phi"])(ref.outer["theta"])
    A = ref.data["A"]
    assert torch.allclose(jac, 3.0 * torch.linalg.inv(A + 3.0 * torch.eye(A.shape[0], dtype=DT)), rtol=1e-12)


# ------------------------------------------------------------------------------------------ P3 logistic


def test_logistic_newton_reaches_tolerance_and_formula():
    ref = P.logistic()
    X, y, Xv, yv = (ref.data[k] for k in ("X", "y", "X_val", "y_val"))
    assert set(y.unique().tolist()) == {-1.0, 1.0}
    w = ref.solve_inner(ref.outer)["w"]
    n, lam = X.shape[0], ref.outer["lam"]
    z = y * (X @ w)
    assert float((-X.T @ (y * torch.sigmoid(-z)) / n + lam * w).norm()) <= 1e-13
    D = torch.sigmoid(z) * torch.sigmoid(-z)
    H = (X.T * D) @ X / n + lam * torch.eye(X.shape[1], dtype=DT)
    gf = -Xv.T @ (yv * torch.sigmoid(-yv * (Xv @ w))) / Xv.shape[0]
    assert torch.allclose(ref.hypergrad(ref.outer)["lam"], -w @ torch.linalg.solve(H, gf), rtol=1e-12, atol=0)


def test_logistic_multiclass_digits_full_size():
    ref = P.logistic(multiclass=True, n=100, m=50)
    assert ref.inner_init["W"].shape == (64, 10) and ref.outer["lam"].dim() == 0
    err = rel(ref.hypergrad(ref.outer), P.finite_difference(ref, ref.outer))
    record("logistic-multiclass(64x10)", "closed_vs_fd", err)
    assert err <= 1e-6
    err = rel(ref.hypergrad(ref.outer), autograd_hypergrad(ref))
    record("logistic-multiclass(64x10)", "closed_vs_autograd", err)
    assert err <= 1e-10


def test_logistic_sklearn_agrees():
    """The inner solution equals scikit-learn's (C = 1/(nλ), no intercept)."""
    from sklearn.linear_model import LogisticRegression

    ref = P.logistic(n=80)
    X, y, lam = ref.data["X"], ref.data["y"], float(ref.outer["lam"])
    clf = LogisticRegression(C=1 / (X.shape[0] * lam), fit_intercept=False, tol=1e-12, max_iter=10_000)
    clf.fit(X.numpy(), y.numpy())
    w = ref.solve_inner(ref.outer)["w"]
    assert torch.allclose(w, torch.as_tensor(clf.coef_[0], dtype=DT), rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------------------------- P7 edge


def test_scalar_inner_is_0dim_and_jacobian():
    ref = P.scalar_inner()
    assert ref.inner_init["t"].dim() == 0 and ref.outer["lam"].dim() == 0
    assert ref.solve_inner(ref.outer)["t"].dim() == 0 and ref.hypergrad(ref.outer)["lam"].dim() == 0
    lam = ref.outer["lam"].clone().requires_grad_(True)
    (dt,) = torch.autograd.grad(ref.solve_inner({"lam": lam})["t"], lam)
    assert torch.allclose(dt, ref.data["dt_dlam"](ref.outer), rtol=1e-14)
    assert float(dt) != 0.0


def test_multi_tensor_shapes_and_unused_entry_is_exactly_zero():
    ref = P.multi_tensor()
    assert {k: tuple(v.shape) for k, v in ref.inner_init.items()} == {"W": (3, 2), "b": (2,), "s": ()}
    assert {k: tuple(v.shape) for k, v in ref.outer.items()} == {"alpha": (), "u": (2,), "unused": (2, 2)}
    hg = ref.hypergrad(ref.outer)
    assert bool((hg["unused"] == 0).all()) and bool((hg["alpha"] != 0) and (hg["u"] != 0).all())
    assert bool((autograd_hypergrad(ref)["unused"] == 0).all())
    # Neither loss reads "unused": autograd reports it as unused.
    outer = {k: v.clone().requires_grad_(True) for k, v in ref.outer.items()}
    theta = {k: v.clone().requires_grad_(True) for k, v in ref.solve_inner(ref.outer).items()}
    for loss in (ref.problem.inner_loss, ref.problem.outer_loss):
        (g,) = torch.autograd.grad(loss(theta, outer, None), [outer["unused"]], allow_unused=True)
        assert g is None


def test_saddle_is_indefinite_and_cg_meets_negative_curvature():
    ref = P.saddle()
    assert not ref.strongly_convex and ref.mu < 0 < ref.L
    M = ref.inner_hessian(ref.outer)
    theta = ref.solve_inner(ref.outer)
    rhs = theta["theta"] - ref.data["c"]  # ∇_θ f, what an implicit solver hands to CG
    x, r = torch.zeros_like(rhs), rhs.clone()
    p, curvatures = r.clone(), []
    for _ in range(rhs.numel()):
        Mp = M @ p
        curvatures.append(float(p @ Mp))
        alpha = (r @ r) / (p @ Mp)
        x, r_new = x + alpha * p, r - alpha * Mp
        p, r = r_new + (r_new @ r_new) / (r @ r) * p, r_new
    assert min(curvatures) < 0


@pytest.mark.parametrize("where", ["outer", "inner", "inner_grad"])
def test_nan_injection(where):
    ref = P.nan_outer(where)
    outer = ref.outer
    theta = P.quadratic(dx=2, dy=3).solve_inner(outer)
    g_val = ref.problem.inner_loss(theta, outer, None)
    g_grad = grad(lambda inner: ref.problem.inner_loss(inner, outer, None))(theta)["y"]
    f_val = ref.problem.outer_loss(theta, outer, None)
    assert bool(torch.isnan(f_val)) == (where == "outer")
    assert bool(torch.isnan(g_val)) == (where == "inner")
    assert bool(torch.isnan(g_grad).any()) == (where in ("inner", "inner_grad"))
    assert bool(torch.isnan(flatten(ref.hypergrad(outer))).all()) and bool(torch.isnan(ref.value(outer)))
    with pytest.raises(ValueError, match="where"):
        P.nan_outer("both")


# ----------------------------------------------------------------------- data re-weighting (no closed form)


def _reweighting_data(dtype=DT, n=12, m=9, d=5, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X, Xv = (torch.randn(k, d, generator=g, dtype=torch.float64).to(dtype) for k in (n, m))
    y, yv = (torch.randint(0, classes, (k,), generator=g) for k in (n, m))
    logits = (0.5 * torch.randn(n, generator=g, dtype=torch.float64)).to(dtype)
    return X, y, Xv, yv, logits


def _sgd_unroll_value(task, params0, logits, steps, lr):
    """F_T(x) = f(θ_T(x)): T plain gradient steps θ ← θ − lr ∇_θ g(θ, x) from θ₀, written out."""
    params = dict(params0)
    for _ in range(steps):
        params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        with torch.enable_grad():
            grads = torch.autograd.grad(task.inner_value(params, logits), list(params.values()))
        params = {k: (v - lr * gr).detach() for (k, v), gr in zip(params.items(), grads)}
    return task.outer_value(params)


def test_reweighting_unrolled_hypergradient_matches_finite_differences():
    """∇_x F_T of `Reweighting` (an MLP 5-4-3, T = 4 steps, weight decay) by `Unrolled` equals central
    differences of F_T, one logit at a time (float64)."""
    from bilevel import Unrolled, optim

    X, y, Xv, yv, logits = _reweighting_data()
    task = P.Reweighting(X, y, Xv, yv, weight_decay=1e-2)
    params0 = P.mlp_init((5, 4, 3), torch.Generator().manual_seed(1))
    for v in params0.values():  # non-zero biases: every parameter takes part
        v.add_(0.1)
    steps, lr, eps = 4, 0.5, 1e-6
    hg = Unrolled(optim.SGD(lr=lr), steps).hypergrad(task.problem, params0, {"x": logits})
    fd = torch.zeros_like(logits)
    for i in range(logits.numel()):
        e = torch.zeros_like(logits)
        e[i] = eps
        up, down = (_sgd_unroll_value(task, params0, logits + s * e, steps, lr) for s in (1, -1))
        fd[i] = (up - down) / (2 * eps)
    err = rel(hg.grad, {"x": fd})
    record("reweighting", "unrolled_vs_fd", err)
    assert err <= 1e-6 and float(fd.norm()) > 1e-4


def _old_benchmark_inner(net, params, X, y, logits, weight_decay):
    """g(θ, x) exactly as the benchmarks' workload wrote it before it moved into `bilevel.problems`."""
    ce = torch.nn.functional.cross_entropy(torch.func.functional_call(net, params, (X,)), y, reduction="none")
    loss = (torch.sigmoid(logits) * ce).sum() / X.shape[0]
    if weight_decay:
        loss = loss + 0.5 * weight_decay * sum((p * p).sum() for p in params.values())
    return loss


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-3])
def test_reweighting_is_bit_identical_to_the_old_benchmark_workload(dtype, weight_decay):
    """Same module, data and seed: the moved problem gives the old workload's losses and hypergradient
    bit for bit, through ``functional_call`` on the module and through `mlp` (``F.linear`` per layer)."""
    from torch import nn

    from bilevel import BilevelProblem, Unrolled, optim

    X, y, Xv, yv, logits = _reweighting_data(dtype)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)).to(dtype)
    params0 = {k: p.detach().clone() for k, p in net.named_parameters()}
    old = BilevelProblem(
        lambda inner, outer, batch: _old_benchmark_inner(net, inner, X, y, outer["x"], weight_decay),
        lambda inner, outer, batch: torch.nn.functional.cross_entropy(
            torch.func.functional_call(net, inner, (Xv,)), yv
        ),
    )
    solver = Unrolled(optim.SGD(lr=0.1), 3)
    want = solver.hypergrad(old, params0, {"x": logits}).grad["x"]
    for model in (lambda p, A: torch.func.functional_call(net, p, (A,)), P.mlp):
        task = P.Reweighting(X, y, Xv, yv, weight_decay, model)
        assert torch.equal(
            task.inner_value(params0, logits), _old_benchmark_inner(net, params0, X, y, logits, weight_decay)
        )
        assert torch.equal(solver.hypergrad(task.problem, params0, {"x": logits}).grad["x"], want)


def test_mlp_reweighting_instance_is_seeded_and_standardised():
    g = torch.Generator().manual_seed(3)
    pool_X, pool_y = torch.rand(50, 2, 3, generator=g), torch.randint(0, 4, (50,), generator=g)
    val_X, val_y = torch.rand(7, 2, 3, generator=g), torch.randint(0, 4, (7,), generator=g)
    a, b = (P.mlp_reweighting(pool_X, pool_y, val_X, val_y, n=20, hidden=5, seed=1) for _ in range(2))
    assert all(torch.equal(a.inner_init[k], b.inner_init[k]) for k in a.inner_init)
    assert torch.equal(a.outer["x"], b.outer["x"]) and torch.equal(a.task.X, b.task.X)
    assert list(a.inner_init) == ["W1", "b1", "W2", "b2"] and a.inner_init["W2"].shape == (4, 5)
    assert a.inner_numel == 6 * 5 + 5 + 5 * 4 + 4 and a.task.n == 20 and a.outer["x"].shape == (20,)
    assert torch.allclose(a.task.X.mean(0), torch.zeros(6, dtype=DT), atol=1e-12)
    assert float(a.inner_init["W1"].abs().max()) <= 6**-0.5 and not a.inner_init["b1"].any()
    c = P.mlp_reweighting(pool_X, pool_y, val_X, val_y, n=20, hidden=5, seed=2)
    assert not torch.equal(a.task.X, c.task.X)
    with pytest.raises(ValueError, match="n must be at most"):
        P.mlp_reweighting(pool_X, pool_y, val_X, val_y, n=51, hidden=5)
    with pytest.raises(ValueError, match="weight_decay"):
        P.Reweighting(a.task.X, a.task.y, a.task.X_val, a.task.y_val, weight_decay=-1.0)
    with pytest.raises(ValueError, match="weight, bias"):
        P.mlp({"W1": a.inner_init["W1"]}, a.task.X)


# ------------------------------------------------------------------------------------------ profiling cases


@pytest.mark.parametrize(
    "name, outer_dim", [("ridge", 4), ("weighted-ridge", 30), ("logistic", 1), ("quadratic", 3)]
)
def test_closed_form_cases_feed_their_data_as_batches(name, outer_dim):
    """A `ProfileCase`: a solver run on its arguments (data as batches) meets its closed form, and a float32
    case keeps the float64 closed form."""
    from bilevel import Direct, Implicit, optim

    case = P.closed_form_case(name, 4, outer_dim)
    hg = Implicit(optim.SGD(lr=case.lr), 400, Direct()).hypergrad(**case.profile_args())
    assert rel(hg.grad, case.closed_form) <= 1e-8
    assert (case.inner_data is None) == (name == "quadratic")
    low = P.closed_form_case(name, 4, outer_dim, dtype=torch.float32)
    assert next(iter(low.outer.values())).dtype == torch.float32
    assert all(torch.equal(low.closed_form[k], case.closed_form[k]) for k in case.closed_form)
    with pytest.raises(ValueError, match="name must be one of"):
        P.closed_form_case("lasso", 4, 4)


# ------------------------------------------------------------------------------------------- hyper-cleaning


def test_hyper_cleaning_example_finds_the_flipped_labels():
    """`bilevel.problems.cleaning.run` on Gaussian blobs (torch only): the learned weights leave most of the
    flipped labels out of the k kept, and a model fitted on the kept rows beats one fitted on all rows."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (700,), generator=g)
    X = centres[y] + 0.7 * torch.randn(700, 8, generator=g, dtype=torch.float64)
    report = P.cleaning.run(X, y, seed=0, noise=0.4, outer_steps=8, inner_steps=30, n_train=300, n_val=150)
    assert report["config"]["n_train"] == 300 and report["config"]["budget_k"] == 180
    assert report["corrupted_pct_in_train"] > 30
    assert report["corrupted_pct_in_kept"] < report["corrupted_pct_in_train"] / 2
    assert report["mean_weight"]["clean"] > report["mean_weight"]["corrupted"]
    assert report["test_accuracy"]["kept_by_bilevel"] > report["test_accuracy"]["all_examples"] + 3
    assert len(report["curve"]) == 8 and len(report["weights"]) == 300
    with pytest.raises(ValueError, match="noise"):
        P.cleaning.make_data(X, y, noise=1.0, seed=0)
    with pytest.raises(ValueError, match="solver must be one of"):
        P.cleaning.make_solver("newton", 5)


def test_report():
    """Print the measured errors (pytest -s)."""
    for name in sorted(MEASURED):
        print(name, {k: f"{v:.1e}" for k, v in MEASURED[name].items()})
