"""lower_loss: differentiable in params and weights, equal to the unweighted objective at the indicator."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad

from tests.unlearning.test_methods_helpers import K, tiny_model, tiny_task
from unlearning.methods import FT, REGISTRY, RL, make
from unlearning.methods.boundary import fgsm
from unlearning.methods.scrub import distill_kl

LOWER = [n for n in REGISTRY if n not in ("iu", "ff")]  # one-shot methods: no lower level


def setup(name):
    model, task = tiny_model(), tiny_task()
    bound = make(name).bind(model, task)
    params, buffers = bound.initial_state()
    g = torch.Generator().manual_seed(3)
    params = {k: v + 0.05 * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in params.items()}
    pool = task.pool
    batch = (pool.x, pool.y, torch.arange(len(pool)))
    return model, task, bound, params, buffers, batch


def expected_objective(name, model, task, bound, params):
    """The method's plain objective over D_f / D_r, written out directly."""
    f, r = task.forget, task.retain
    module = bound.module

    def logits(x):
        return functional_call(module, params, (x,), strict=False)

    ce_r = F.cross_entropy(logits(r.x), r.y)
    if name in ("retrain", "ft", "eu_k", "cf_k"):
        return ce_r
    if name == "ga":
        return -F.cross_entropy(logits(f.x), f.y)
    if name in ("rl", "salun", "salun_soft"):
        ctx = bound._context()
        ctx = ctx.extra["inner"]._context() if "inner" in ctx.extra else ctx  # SalUn: the wrapped RL's
        y_random = ctx.extra["labels"][task.forget_index]
        return F.cross_entropy(logits(f.x), y_random) + ce_r
    if name == "l1_sparse":
        return ce_r + 5e-4 * sum(p.abs().sum() for p in params.values())
    if name == "bs":
        y_nbr = model(fgsm(model.eval(), f.x, f.y, 0.1)).argmax(1)
        return F.cross_entropy(logits(f.x), y_nbr)
    if name == "be":
        return F.cross_entropy(logits(f.x), torch.full((len(f),), K))
    if name == "scrub":

        def kl(d):
            return distill_kl(logits(d.x), model(d.x), 4.0).mean()

        return 0.99 * ce_r + 0.001 * kl(r) - kl(f)
    raise AssertionError(name)


@pytest.mark.parametrize("name", LOWER)
def test_lower_loss_equals_unweighted_objective_at_indicator(name):
    model, task, bound, params, buffers, batch = setup(name)
    if name in ("salun",):  # the mask holds half the weights at θ_o: compare at the held parameters
        ctx = bound._context()
        params = {n: torch.where(ctx.extra["mask"][n], p, ctx.extra["start"][n]) for n, p in params.items()}
    w = task.forget_mask.double()
    value = bound.lower_loss(params, buffers, batch, w)
    torch.testing.assert_close(value, expected_objective(name, model, task, bound, params))


@pytest.mark.parametrize("name", LOWER)
def test_lower_loss_is_differentiable_in_params_and_weights(name):
    _, task, bound, params, buffers, batch = setup(name)
    w = 0.6 * task.forget_mask.double() + 0.2  # fractional weights: every term is active

    g_params, g_w = grad(lambda p, ww: bound.lower_loss(p, buffers, batch, ww), argnums=(0, 1))(params, w)
    assert set(g_params) == set(params)
    assert all(torch.isfinite(g).all() for g in g_params.values())
    assert sum(float(g.abs().sum()) for g in g_params.values()) > 0
    assert g_w.shape == w.shape and torch.isfinite(g_w).all() and g_w.abs().sum() > 0
    # plain autograd agrees with torch.func
    w2 = w.clone().requires_grad_(True)
    p2 = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    bound.lower_loss(p2, buffers, batch, w2).backward()
    torch.testing.assert_close(w2.grad, g_w)
    for k in params:
        torch.testing.assert_close(p2[k].grad, g_params[k])


def test_masked_lower_loss_has_zero_gradient_on_frozen_weights():
    _, task, bound, params, buffers, batch = setup("salun")
    mask = bound._context().extra["mask"]
    g = grad(lambda p: bound.lower_loss(p, buffers, batch, task.forget_mask.double()))(params)
    for n, m in mask.items():
        assert (g[n][~m] == 0).all() and g[n][m].abs().sum() > 0


def test_eu_k_lower_level_trains_the_last_layer_only():
    _, task, bound, params, _, _ = setup("eu_k")
    assert set(params) == {"3.weight", "3.bias"}


@pytest.mark.parametrize("cls", [FT, RL])
def test_mini_batches_are_unbiased_pieces_of_the_full_objective(cls):
    model, task = tiny_model(), tiny_task()
    bound = cls().bind(model, task)
    params, buffers = bound.initial_state()
    w = torch.rand(len(task.pool), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    full = bound.lower_loss(params, buffers, (task.pool.x, task.pool.y, torch.arange(len(task.pool))), w)
    parts = sum(
        bound.lower_loss(params, buffers, (x, y, i), w) * len(i) / len(task.pool)
        for x, y, i in task.pool.batches(10)
    )
    torch.testing.assert_close(parts, full)


def test_lower_loss_errors():
    model, task = tiny_model(), tiny_task()
    with pytest.raises(RuntimeError, match="call method.bind"):
        FT().lower_loss({}, {}, (task.pool.x, task.pool.y, torch.arange(3)), torch.zeros(len(task.pool)))
    bound = FT().bind(model, task)
    params, buffers = bound.initial_state()
    with pytest.raises(ValueError, match="weights must be a vector of length len"):
        bound.lower_loss(
            params, buffers, (task.pool.x, task.pool.y, torch.arange(len(task.pool))), torch.zeros(5)
        )
