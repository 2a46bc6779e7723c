"""The worst-case forget class: the objective is the hand-computed forget loss, the exact search takes its
argmin, the bi-level search stays on the simplex and finds argmin ℓ_c when the lower level barely moves."""

from __future__ import annotations

import pytest
import torch

from unlearning.data_types import ArrayData
from unlearning.generation import methods as M
from unlearning.generation import worst_class as W
from unlearning.generation.diffusion import add_noise
from unlearning.generation.task import GenerationTask
from unlearning.methods.base import NoLowerLevelError

K = 3


@pytest.fixture
def task() -> GenerationTask:
    g = torch.Generator().manual_seed(2)
    return GenerationTask(
        ArrayData(torch.rand(18, 1, 8, 8, generator=g), torch.arange(18) % K), (0,), K, seed=1
    )


def test_class_forget_loss_is_the_seeded_diffusion_loss(tiny_model, task):
    x = task.data.x[task.data.y == 2][:4]
    gen = torch.Generator().manual_seed(1 + 2)
    t = torch.randint(0, 1000, (4,), generator=gen)
    z0 = tiny_model.encode(x)
    noise = torch.randn(z0.shape, generator=gen)
    with torch.no_grad():
        eps = tiny_model(add_noise(z0, noise, t), t, labels=torch.full((4,), 2))
    expected = float(((noise - eps) ** 2).sum(dim=(1, 2, 3)).mean())
    got = W.class_forget_loss(tiny_model, task.data, 2, per_class=4, seed=1)
    assert got == pytest.approx(expected, rel=1e-5)
    assert W.class_forget_loss(tiny_model, task.data, 2, per_class=4, seed=1) == got  # same draws


def test_exact_worst_class_is_the_argmin_of_the_forget_loss(tiny_model, task):
    method = M.make("rl", iterations=2, batch_size=4)
    result = W.exact_worst_class(method, tiny_model, task, per_class=4)
    assert [r.cls for r in result.rows] == [0, 1, 2]
    assert result.worst == min(result.rows, key=lambda r: r.forget_loss).cls
    assert result.worst_ua is None and result.to_dict()["rows"][0]["ua"] is None
    # each row is that class's own unlearning run, scored on that class
    out = method.unlearn(tiny_model, task.with_forget((1,)))
    assert result.rows[1].forget_loss == pytest.approx(
        W.class_forget_loss(out.model, task.data, 1, per_class=4, seed=1), rel=1e-5
    )


def test_exact_worst_class_with_a_judge_reports_ua(tiny_model, task):
    from unlearning.generation.judge import Judge

    torch.manual_seed(0)
    judge = Judge((1, 8, 8), K, (8, 8)).eval()
    result = W.exact_worst_class(
        M.make("ft", iterations=1, batch_size=4),
        tiny_model,
        task,
        classes=(0, 2),
        judge=judge,
        per_class=4,
        metric_kw={"per_class": 3, "steps": 2},
    )
    assert all(0.0 <= r.ua <= 1.0 and r.fid >= 0 for r in result.rows)
    assert result.worst_ua == min(result.rows, key=lambda r: r.ua).cls


@pytest.mark.parametrize("name", ["ft", "ga", "rl", "salun"])
def test_search_stays_on_the_simplex_and_finds_the_lowest_loss(tiny_model, task, name):
    result = W.search_worst_class(
        M.make(name, batch_size=4), tiny_model, task, outer_steps=3, inner_steps=1, inner_lr=1e-9, per_class=4
    )
    v = torch.tensor(result.v)
    assert v.sum().item() == pytest.approx(1.0) and bool(((v >= 0) & (v <= 1)).all())
    assert len(result.history) == 3
    # the lower level barely moves: ∂F/∂v_c = ℓ_c(θ_o), so the mass goes to argmin_c ℓ_c(θ_o)
    at_start = [W.class_forget_loss(tiny_model, task.data, c, per_class=4, seed=1) for c in range(K)]
    assert result.found == min(range(K), key=lambda c: at_start[c])
    assert result.losses == pytest.approx(at_start, rel=1e-4)


def test_search_refuses_methods_without_a_class_objective(tiny_model, task):
    with pytest.raises(NoLowerLevelError, match="search ft, ga, rl or salun"):
        W.search_worst_class(M.make("esd"), tiny_model, task)
    with pytest.raises(ValueError, match="outer_steps must be"):
        W.search_worst_class(M.make("rl"), tiny_model, task, outer_steps=0)


def test_agreement_counts_hits():
    out = W.agreement({"rl/0": 3, "rl/1": 4, "ga/0": 1}, {"rl/0": 3, "rl/1": 2, "ga/0": 1, "x": 0})
    assert (out["hits"], out["total"]) == (2, 3) and out["rate"] == pytest.approx(2 / 3)
