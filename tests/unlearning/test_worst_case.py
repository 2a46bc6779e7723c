"""The worst-case forget-set search: hypergradients (exact rule, finite differences), constraint and budget,
determinism, reverse and class-wise variants, and on digits/MLP the paper's claims: the upper objective
decreases, the found set is easier to keep than a random one, and Retrain leaves it less forgotten (lower UA).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import bilevel
from bilevel import CappedSimplex, optim
from tests.unlearning.test_methods_helpers import K, tiny_model, tiny_task
from unlearning import metrics, splits
from unlearning.methods import REGISTRY, make
from unlearning.worst_case import (
    SearchResult,
    build_problem,
    forget_loss,
    make_solver,
    resolve_budget,
    search,
)

FAST = dict(upper_steps=6, inner_steps=5, progress=False)


# ------------------------------------------------------------------------------- shared digits searches
@pytest.fixture(scope="module")
def worst(digits_random):
    """The default search (FT, first-order) on digits, 10 upper steps."""
    return search(digits_random, "ft", budget=0.1, upper_steps=10, inner_steps=10, seed=0, progress=False)


# ------------------------------------------------------------------------------------- hypergradients
def _tiny(name="ft", classwise=False, gamma=0.3, differentiable=True):
    model, task = tiny_model(), tiny_task()
    bound = make(name).bind(model, task)
    theta0, buffers = bound.initial_state()
    problem = build_problem(
        bound,
        task.pool,
        buffers,
        gamma=gamma,
        classwise=classwise,
        num_classes=K,
        differentiable=differentiable,
    )
    size = K if classwise else len(task.pool)
    k = 1.0 if classwise else 12.0
    g = torch.Generator().manual_seed(1)
    w = CappedSimplex(k).project(torch.rand(size, generator=g, dtype=torch.float64) * 2 * k / size)
    return bound, task, theta0, buffers, problem, w


def _losses(bound, buffers, theta, pool):
    out = functional_call(bound.module, (theta, buffers), (pool.x,), strict=False)
    return F.cross_entropy(out, pool.y, reduction="none")


@pytest.mark.parametrize("classwise", [False, True])
def test_first_order_rule_is_loss_plus_2_gamma_w(classwise):
    """FirstOrder("partial") with a signSGD lower level gives exactly ∂F/∂w_i = ℓ_i(θ_K) + 2γw_i (data-wise)
    and mean_{y_i=c} ℓ_i(θ_K) + 2γw_c (class-wise), θ_K from K signSGD steps written out by hand."""
    gamma, lr, steps = 0.3, 0.05, 4
    bound, task, theta0, buffers, problem, w = _tiny(classwise=classwise, gamma=gamma, differentiable=False)
    solver = make_solver("first_order", inner_steps=steps, inner_lr=lr)
    hg = solver.hypergrad(problem, theta0, {"w": w})

    pool = task.pool
    full = (pool.x, pool.y, torch.arange(len(pool)))
    weights = w[pool.y] if classwise else w
    theta = dict(theta0)
    for _ in range(steps):
        g = torch.func.grad(lambda th: bound.lower_loss(th, buffers, full, weights))(theta)
        theta = {k: theta[k] - lr * torch.sign(g[k]) for k in theta}
    ell = _losses(bound, buffers, theta, pool).detach()
    if classwise:
        ell = torch.stack([ell[pool.y == c].mean() for c in range(K)])
    expected = ell + 2 * gamma * w
    torch.testing.assert_close(hg.grad["w"], expected, rtol=0, atol=1e-12)
    assert hg.info["outer_loss"] == pytest.approx(float((w * ell).sum() + gamma * (w * w).sum()), abs=1e-12)


@pytest.mark.parametrize("name,classwise", [("ft", False), ("retrain", False), ("rl", False), ("ft", True)])
def test_unrolled_hypergradient_matches_finite_differences(name, classwise):
    """Unrolled through K differentiable SGD steps of the weighted lower level: d/dε F(w + εd) by central
    differences in float64 equals ⟨∇F, d⟩, for random directions d."""
    bound, task, theta0, buffers, problem, w = _tiny(name, classwise=classwise)
    assert_unrolled_matches_finite_differences(problem, theta0, w)


def assert_unrolled_matches_finite_differences(problem, theta0, w, lr=0.5, steps=6):
    """⟨∇F, d⟩ of the unrolled solver (``steps`` SGD steps of ``lr``) equals central differences of
    F(w) = f(θ_K(w), w) in float64 (ε = 1e-5, relative 1e-6), for three random directions d."""
    hg = make_solver("unrolled", inner_steps=steps, inner_lr=lr).hypergrad(problem, theta0, {"w": w})

    def F_of(v):
        theta = bilevel.solve_inner(problem, optim.SGD(lr=lr), steps, theta0, {"w": v})
        with torch.no_grad():
            return float(problem.outer_loss(theta, {"w": v}, None))

    g = torch.Generator().manual_seed(2)
    eps = 1e-5
    for _ in range(3):
        d = torch.randn(w.shape, generator=g, dtype=torch.float64)
        fd = (F_of(w + eps * d) - F_of(w - eps * d)) / (2 * eps)
        assert float(hg.grad["w"] @ d) == pytest.approx(fd, rel=1e-6, abs=1e-9)


def test_implicit_agrees_with_unrolled_near_the_inner_optimum():
    """Implicit (IFT with CG) at a nearly converged lower level agrees with unrolling the same steps: both
    estimate dF/dw once θ_K ≈ θ*(w). Lower level: FT's weighted CE of a linear softmax model on data it
    cannot separate (a finite minimiser), 500 full-batch GD steps."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(6, K)).double()
    task = tiny_task()
    bound = make("ft").bind(model, task)
    theta0, buffers = bound.initial_state()
    problem = build_problem(bound, task.pool, buffers, gamma=0.1)
    w = CappedSimplex(12.0).project(torch.rand(48, generator=torch.Generator().manual_seed(1)).double() / 2)
    steps = 500
    unrolled = bilevel.Unrolled(optim.SGD(lr=1.0), steps=steps).hypergrad(problem, theta0, {"w": w})
    cg = bilevel.CG(max_iter=200, tol=1e-12, on_indefinite="warn")
    implicit = bilevel.Implicit(optim.SGD(lr=1.0), steps=steps, linear_solver=cg).hypergrad(
        problem, theta0, {"w": w}
    )
    a, b = unrolled.grad["w"], implicit.grad["w"]
    assert float((a - b).norm() / a.norm()) < 1e-2
    assert implicit.info["residual"] < 1e-10


# ------------------------------------------------------------------------------- constraint and budget
def test_budget_exact_every_step_and_final_size(digits_random, worst):
    m = resolve_budget(0.1, len(digits_random.task.pool))
    assert worst.indices.numel() == m == worst.initial_indices.numel()
    assert worst.indices.dtype == torch.int64
    assert torch.equal(worst.indices, worst.indices.sort().values)
    assert torch.unique(worst.indices).numel() == m
    assert all(abs(h["weight_sum"] - m) <= 1e-9 * m for h in worst.history)
    assert float(worst.weights.min()) >= 0 and float(worst.weights.max()) <= 1
    assert abs(float(worst.weights.sum()) - m) <= 1e-9 * m
    # the search starts from the random:0.1 forget set of the same seed (the paper's start)
    assert torch.equal(worst.initial_indices, digits_random.task.forget_index)
    assert worst.history[-1]["overlap_final"] == 1.0


def test_deterministic_and_seeded(digits_random, worst):
    again = search(digits_random, "ft", budget=0.1, upper_steps=10, inner_steps=10, seed=0, progress=False)
    assert torch.equal(again.indices, worst.indices)
    assert torch.equal(again.weights, worst.weights)
    other = search(digits_random, "ft", budget=0.1, seed=1, **FAST)
    assert not torch.equal(other.initial_indices, worst.initial_indices)


def test_binarisation_every_k_steps(digits_random):
    r = search(digits_random, "ft", budget=0.1, binarize_every=2, **FAST)
    flags = [h["binarized"] for h in r.history]
    assert flags == [False, True, False, True, False, False]  # not after the last step
    assert [h["step"] for h in r.history] == list(range(1, 7))


def test_mini_batches_are_seeded(digits_random):
    a = search(digits_random, "ft", budget=0.1, batch_size=256, **FAST)
    b = search(digits_random, "ft", budget=0.1, batch_size=256, **FAST)
    assert torch.equal(a.indices, b.indices)
    assert all(abs(h["weight_sum"] - 130) <= 1e-9 * 130 for h in a.history)
    assert a.objective["final"] < a.objective["initial"]


# ------------------------------------------------------------------------------- the paper's claims
def test_upper_objective_decreases(worst):
    values = [h["objective"] for h in worst.history]
    assert values[-1] < 0.2 * values[0]
    assert worst.objective["final"] < worst.objective["initial"]
    assert sum(b <= a for a, b in zip(values, values[1:])) >= len(values) - 2  # (almost) monotone


def test_worst_set_is_easier_to_keep_than_random(digits_random, worst):
    """The selected points have lower loss than a random set of the same size, under the original model and
    after FT unlearns them."""
    prepared, pool = digits_random, digits_random.task.pool
    assert forget_loss(prepared.original, pool, worst.indices) < 0.5 * forget_loss(
        prepared.original, pool, worst.initial_indices
    )
    after = {}
    for label, index in (("worst", worst.indices), ("random", worst.initial_indices)):
        task = splits.make_task(prepared.split, index, seed=0, batch_size=prepared.task.batch_size)
        after[label] = forget_loss(make("ft").unlearn(prepared.original, task).model, pool, index)
    assert after["worst"] < 0.5 * after["random"]


def test_retrain_forgets_the_worst_set_less(digits_random, worst, cache_dir):
    """The paper's headline: Retrain on the worst-case set has lower UA (≈ 0) than on a random set."""
    from unlearning.setup import prepare

    random_model, _ = digits_random.retrain()
    ua_random = metrics.evaluate(random_model, digits_random.task, mia=False)["UA"]
    found = prepare("digits", "mlp", worst.indices, seed=0, cache_dir=cache_dir)
    worst_model, _ = found.retrain()
    ua_worst = metrics.evaluate(worst_model, found.task, mia=False)["UA"]
    assert ua_worst < ua_random
    assert ua_worst <= 100 / 130  # at most one of the 130 points forgotten (0 here)


def test_reverse_finds_a_different_higher_loss_set(digits_random, worst):
    best = search(
        digits_random, "ft", budget=0.1, reverse=True, upper_steps=10, inner_steps=10, progress=False
    )
    pool, original = digits_random.task.pool, digits_random.original
    assert len(set(best.indices.tolist()) & set(worst.indices.tolist())) < 0.2 * 130
    loss_best = forget_loss(original, pool, best.indices)
    assert (
        loss_best
        > forget_loss(original, pool, best.initial_indices)
        > forget_loss(original, pool, worst.indices)
    )
    assert best.config["reverse"] is True


def test_classwise_returns_whole_classes(digits_random):
    r = search(digits_random, "ft", budget=2, classwise=True, **FAST)
    y = digits_random.task.pool.y.cpu()
    assert r.classes is not None and r.classes.numel() == 2
    expected = torch.isin(y, r.classes).nonzero().squeeze(1)
    assert torch.equal(r.indices, expected)
    assert r.weights.numel() == digits_random.task.num_classes
    assert all(abs(h["weight_sum"] - 2) <= 1e-9 for h in r.history)
    frac = search(digits_random, "ft", budget=0.1, classwise=True, **FAST)
    assert frac.classes.numel() == 1


@pytest.mark.parametrize("hypergrad", ["unrolled", "implicit"])
def test_second_order_hypergradients_run_on_digits(digits_random, hypergrad):
    r = search(
        digits_random, "ft", budget=0.1, hypergrad=hypergrad, upper_steps=4, inner_steps=5, progress=False
    )
    assert r.indices.numel() == 130
    assert r.objective["final"] < r.objective["initial"]
    if hypergrad == "implicit":
        assert all("iterations" in h and "residual" in h for h in r.history)


@pytest.mark.parametrize("name", [n for n in REGISTRY if n not in ("iu", "ff", "ft")])
def test_every_method_with_a_lower_level_can_be_searched(digits_random, name):
    r = search(digits_random, name, budget=0.05, upper_steps=2, inner_steps=2, progress=False)
    assert r.indices.numel() == resolve_budget(0.05, len(digits_random.task.pool))
    assert r.config["method"] == name


# --------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(budget=0.0), "budget"),
        (dict(budget=1.0), "budget"),
        (dict(budget=1.5), "budget"),
        (dict(budget=1295), "budget"),
        (dict(budget=-3), "budget"),
        (dict(budget=10, classwise=True), "budget"),
        (dict(hypergrad="newton"), "hypergrad"),
        (dict(upper_steps=0), "upper_steps"),
        (dict(inner_lr=-1.0), "inner_lr"),
        (dict(gamma=-0.1), "gamma"),
        (dict(binarize_every=0), "binarize_every"),
    ],
)
def test_bad_inputs_raise_value_error(digits_random, kwargs, match):
    with pytest.raises(ValueError, match=match):
        search(digits_random, "ft", progress=False, **kwargs)


def test_unknown_method_and_method_without_lower_level(digits_random):
    with pytest.raises(ValueError, match="unknown unlearning method"):
        search(digits_random, "nope", progress=False)
    with pytest.raises(ValueError, match="no lower-level objective"):
        search(digits_random, "iu", progress=False)
    with pytest.raises(TypeError, match="prepared experiment"):
        search("digits", "ft")


def test_model_task_pair_and_progress_callback():
    model, task = tiny_model(), tiny_task()
    calls = []
    r = search(
        (model, task),
        "ft",
        budget=5,
        upper_steps=3,
        inner_steps=2,
        progress=lambda d, t: calls.append((d, t)),
    )
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert r.indices.numel() == 5


# ------------------------------------------------------------------------------------------- saving
def test_save_round_trip_and_load_indices(tmp_path, worst):
    path = worst.save(tmp_path / "wc.json")
    raw = json.loads(path.read_text())
    assert raw["indices"] == worst.indices.tolist()
    assert raw["config"]["hypergrad"] == "first_order" and len(raw["history"]) == 10
    assert torch.equal(splits.load_indices(path), worst.indices)
    back = SearchResult.load(path)
    assert torch.equal(back.indices, worst.indices)
    torch.testing.assert_close(back.weights, worst.weights.double())
    assert back.objective == pytest.approx(worst.objective)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic: no temporary file left


def test_keep_best_never_returns_a_set_worse_than_the_start(digits_random):
    """RL relabels the selected points, so the first-order rule (blind to that reaction) lets F rise: the
    search then keeps the best binary set it evaluated, and reports F at the last one too. (FT's upper step
    of 30, RL's default before the method-aware steps: there F rises.)"""
    opts = dict(budget=0.1, upper_steps=10, inner_steps=10, seed=0, progress=False, upper_lr=30.0)
    best = search(digits_random, "rl", **opts)
    last = search(digits_random, "rl", keep_best=False, **opts)
    assert best.objective["final"] <= best.objective["initial"]
    assert best.objective["last"] == pytest.approx(last.objective["final"])
    assert last.objective["final"] > last.objective["initial"]  # the failure keep_best guards against
    assert best.config["keep_best"] and not last.config["keep_best"]
