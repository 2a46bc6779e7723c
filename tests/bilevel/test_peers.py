"""Differential tests against the peers on an MLP data re-weighting problem (float64).

Inner: θ*(x) = argmin_θ (1/n) Σ σ(x_i) CE(f_θ(a_i), b_i) + (ρ/2)‖θ‖²;  outer: CE on held-out data.
Our `Unrolled` must equal `higher` and torchopt `MetaSGD` through the same SGD trajectory, and our `Implicit`
must equal torchopt's `custom_root` at the same inner point (relative error ≤ 1e-8).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.func import functional_call

from bilevel import CG, BilevelProblem, Direct, Implicit, Unrolled, optim
from bilevel.check import newton_inner

from .helpers import rel_err

higher = pytest.importorskip("higher", reason="the dev extra installs higher")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    torchopt = pytest.importorskip("torchopt", reason="the dev extra installs torchopt")

RHO, LR, STEPS = 5e-2, 0.2, 12


@pytest.fixture(scope="module")
def setup():
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float64)
    y = torch.tensor(y, dtype=torch.int64)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    tr, va = perm[:150], perm[150:250]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 10)).double()
    x = torch.randn(150, generator=g, dtype=torch.float64)
    return net, (X[tr], y[tr]), (X[va], y[va]), x


def losses(net, train, val):
    def inner_loss(params, outer, batch):
        logits = functional_call(net, params, (train[0],))
        ce = nn.functional.cross_entropy(logits, train[1], reduction="none")
        reg = sum((p**2).sum() for p in params.values())
        return (torch.sigmoid(outer["x"]) * ce).mean() + 0.5 * RHO * reg

    def outer_loss(params, outer, batch):
        return nn.functional.cross_entropy(functional_call(net, params, (val[0],)), val[1])

    return BilevelProblem(inner_loss, outer_loss)


def init_params(net):
    return {k: v.detach().clone() for k, v in net.named_parameters()}


def test_unrolled_equals_higher_and_torchopt_metasgd(setup):
    net, train, val, x0 = setup
    problem = losses(net, train, val)
    ours = Unrolled(optim.SGD(lr=LR), steps=STEPS).hypergrad(problem, init_params(net), {"x": x0})

    # higher: differentiable torch.optim.SGD over a monkey-patched copy
    x = x0.clone().requires_grad_(True)
    model = pytest.importorskip("copy").deepcopy(net)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    with higher.innerloop_ctx(model, opt, copy_initial_weights=True) as (fmodel, diffopt):
        for _ in range(STEPS):
            ce = nn.functional.cross_entropy(fmodel(train[0]), train[1], reduction="none")
            reg = sum((p**2).sum() for p in fmodel.parameters())
            diffopt.step((torch.sigmoid(x) * ce).mean() + 0.5 * RHO * reg)
        (g_higher,) = torch.autograd.grad(nn.functional.cross_entropy(fmodel(val[0]), val[1]), x)

    # torchopt MetaSGD: rewrites the module's parameters with non-leaf tensors
    x = x0.clone().requires_grad_(True)
    model = pytest.importorskip("copy").deepcopy(net)
    meta = torchopt.MetaSGD(model, lr=LR)
    for _ in range(STEPS):
        ce = nn.functional.cross_entropy(model(train[0]), train[1], reduction="none")
        reg = sum((p**2).sum() for p in model.parameters())
        meta.step((torch.sigmoid(x) * ce).mean() + 0.5 * RHO * reg)
    (g_torchopt,) = torch.autograd.grad(nn.functional.cross_entropy(model(val[0]), val[1]), x)

    assert rel_err(ours.grad, {"x": g_higher}) <= 1e-10
    assert rel_err(ours.grad, {"x": g_torchopt}) <= 1e-10
    assert float(ours.grad["x"].abs().max()) > 0  # a non-trivial hypergradient


def test_implicit_equals_torchopt_custom_root(setup):
    net, train, val, x0 = setup
    problem = losses(net, train, val)
    outer = {"x": x0}
    # one shared inner point: SGD, then Newton to ‖∇θ g‖ ≤ 1e-12 (H is positive definite there)
    theta = Implicit(optim.SGD(lr=1.0), steps=1500).hypergrad(problem, init_params(net), outer).inner
    theta, gnorm = newton_inner(problem, theta, outer, None)
    assert gnorm <= 1e-10
    ours = Implicit(optim.SGD(lr=0.5), steps=0, linear_solver=CG(max_iter=1000, tol=1e-14)).hypergrad(
        problem, theta, outer
    )
    direct = Implicit(optim.SGD(lr=0.5), steps=0, linear_solver=Direct()).hypergrad(problem, theta, outer)
    names = list(theta)

    def optimality(params, x):
        return torch.func.grad(lambda ps: problem.inner_loss(dict(zip(names, ps)), {"x": x}, None))(
            tuple(params)
        )

    solve = torchopt.linear_solve.solve_cg(maxiter=1000, rtol=1e-14, atol=0.0)

    @torchopt.diff.implicit.custom_root(optimality, argnums=1, solve=solve)
    def inner_solver(params, x):
        return tuple(theta[k].clone() for k in names)

    x = x0.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sol = inner_solver(tuple(theta[k].clone() for k in names), x)
        (g_peer,) = torch.autograd.grad(problem.outer_loss(dict(zip(names, sol)), {"x": x}, None), x)
    assert rel_err(ours.grad, {"x": g_peer}) <= 1e-8
    assert rel_err(ours.grad, direct.grad) <= 1e-8
