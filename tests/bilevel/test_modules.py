"""The BatchNorm buffer policy of `FunctionalModule` behaves as documented."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bilevel import CG, BilevelProblem, FunctionalModule, Implicit, Unrolled, optim


def make_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3)).double()


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(40, 5, generator=g, dtype=torch.float64) * 2 + 1
    y = torch.randint(0, 3, (40,), generator=g)
    Xv = torch.randn(20, 5, generator=g, dtype=torch.float64)
    yv = torch.randint(0, 3, (20,), generator=g)
    return X, y, Xv, yv


def problem_for(fm, data, outer_train=None):
    X, y, Xv, yv = data

    def inner_loss(p, o, b):
        reg = sum((v**2).sum() for v in p.values())
        return nn.functional.cross_entropy(fm(p, X), y) + torch.exp(o["log_rho"]) * reg

    def outer_loss(p, o, b):
        return nn.functional.cross_entropy(fm(p, Xv, train=outer_train), yv)

    return BilevelProblem(inner_loss, outer_loss)


def snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_frozen_policy_uses_running_stats_and_never_updates(data):
    net = make_net()
    before = snapshot(net)
    with pytest.warns(UserWarning, match="never updated"):  # a fresh net: mean 0 / variance 1, said aloud
        fm = FunctionalModule(net, buffers="frozen")
    outer = {"log_rho": torch.tensor(-3.0, dtype=torch.float64)}
    hg = Implicit(optim.SGD(lr=0.2), steps=30, linear_solver=CG(on_indefinite="warn")).hypergrad(
        problem_for(fm, data), fm.params(), outer
    )
    assert torch.isfinite(hg.grad["log_rho"])
    assert fm.updates == 0
    for k, v in fm.buffers.items():
        assert torch.equal(v, before[k])  # running stats untouched
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])  # the user's module untouched
    # eval-mode semantics: equals the module itself in eval mode
    ref = copy.deepcopy(net).eval()
    X = data[0]
    assert torch.allclose(fm(fm.params(), X), ref(X), rtol=0, atol=1e-14)


def test_track_policy_threads_running_stats_through_inner_steps_only(data):
    net = make_net()
    before = snapshot(net)
    fm = FunctionalModule(net, buffers="track")
    outer = {"log_rho": torch.tensor(-3.0, dtype=torch.float64)}
    steps = 7
    problem = problem_for(fm, data, outer_train=False)
    hg = Unrolled(optim.SGD(lr=0.2), steps=steps, checkpoint=True, segment=3).hypergrad(
        problem, fm.params(), outer
    )
    assert torch.isfinite(hg.grad["log_rho"])
    # exactly one update per inner step: none from the replayed segments, the outer loss or diagnostics
    assert fm.updates == steps
    # the same statistics as a plain train-mode replay of the trajectory with the user's own module
    replay = copy.deepcopy(net).train()
    params = fm.params()
    X, y = data[0], data[1]
    opt = torch.optim.SGD(replay.parameters(), lr=0.2)
    for _ in range(steps):
        opt.zero_grad()
        reg = sum((p**2).sum() for p in replay.parameters())
        (nn.functional.cross_entropy(replay(X), y) + torch.exp(outer["log_rho"]) * reg).backward()
        opt.step()
    for k, v in replay.state_dict().items():
        if k in fm.buffers:
            assert torch.allclose(fm.buffers[k].to(v.dtype), v, rtol=1e-12, atol=1e-12), k
    for name, p in replay.named_parameters():
        assert torch.allclose(hg.inner[name], p, rtol=1e-10, atol=1e-12)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])  # the user's module never mutated
    assert not torch.equal(fm.buffers["1.running_mean"], before["1.running_mean"])
    del params


def test_track_policy_under_implicit_hvps_and_explicit_write_back(data):
    net = make_net()
    fm = FunctionalModule(net, buffers="track")
    outer = {"log_rho": torch.tensor(-2.0, dtype=torch.float64)}
    hg = Implicit(optim.SGD(lr=0.2), steps=5, linear_solver=CG(on_indefinite="warn")).hypergrad(
        problem_for(fm, data, outer_train=False), fm.params(), outer
    )
    assert torch.isfinite(hg.grad["log_rho"])
    assert fm.updates == 5  # HVPs and the outer loss do not update the statistics
    target = make_net()
    fm.write_back(target)
    assert torch.equal(target.state_dict()["1.running_mean"], fm.buffers["1.running_mean"])
    fm.reset()
    assert fm.updates == 0 and torch.equal(fm.buffers["1.running_mean"], net.state_dict()["1.running_mean"])


def test_policy_is_validated():
    with pytest.raises(ValueError, match="buffers"):
        FunctionalModule(make_net(), buffers="inplace")
    with pytest.raises(TypeError, match="module"):
        FunctionalModule(lambda x: x)
