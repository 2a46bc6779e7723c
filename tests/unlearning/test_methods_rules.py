"""Each method's rule on a tiny float64 problem, the registry, validation, and the no-mutation contract."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

import unlearning.methods.common as common_mod
import unlearning.methods.last_layers as last_layers_mod
import unlearning.methods.random_label as random_label_mod
from tests.unlearning.test_methods_helpers import K, state, tiny_model, tiny_task
from unlearning.methods import BE, BS, GA, IU, REGISTRY, RL, SCRUB, CFk, EUk, L1Sparse, Retrain, make
from unlearning.methods.base import NoLowerLevelError, Run
from unlearning.methods.boundary import fgsm
from unlearning.methods.influence import WOODFISHER_N, woodfisher_recursion
from unlearning.methods.salun import SoftThreshold
from unlearning.methods.scrub import distill_kl

NAMES = [
    "retrain",
    "ft",
    "ga",
    "rl",
    "iu",
    "l1_sparse",
    "bs",
    "be",
    "scrub",
    "eu_k",
    "cf_k",
    "salun",
    "salun_soft",
    "ff",
]


def quick(name: str, **extra):
    """The method with few epochs (the rules do not depend on the count)."""
    hp = {"epochs": 2} if "epochs" in REGISTRY[name].hyperparameters() else {}
    return make(name, **{**hp, **extra})


# ------------------------------------------------------------------------------------------------- registry
def test_registry_names_and_make():
    assert list(REGISTRY) == NAMES
    for name in NAMES:
        method = make(name)
        assert method.name == name
        for hp, spec in type(method).hyperparameters().items():
            assert getattr(method, hp) == spec["default"] and spec["doc"] and spec["valid"]


def test_make_rejects_unknown_and_invalid():
    with pytest.raises(ValueError, match="unknown unlearning method 'nope'.*retrain.*salun_soft"):
        make("nope")
    with pytest.raises(ValueError, match="unknown hyper-parameter 'lrr'.*lr"):
        make("ft", lrr=0.1)
    with pytest.raises(ValueError, match=r"lr must be a float in \(0, inf\), got -1"):
        make("ft", lr=-1)
    with pytest.raises(ValueError, match="variant must be one of 'sequential', 'mixed'"):
        make("rl", variant="both")
    with pytest.raises(ValueError, match=r"sparsity must be a float in \[0, 1\]"):
        make("salun", sparsity=1.5)
    with pytest.raises(ValueError, match="epochs must be an int"):
        make("ga", epochs=2.5)
    with pytest.raises(ValueError, match="keep_shadow must be one of True, False"):
        make("be", keep_shadow="yes")
    method = make("ft")
    method.lr = float("nan")
    with pytest.raises(ValueError, match="lr must be"):
        method.unlearn(tiny_model(), tiny_task())


@pytest.mark.parametrize("name", NAMES)
def test_unlearn_never_mutates_inputs(name):
    model, task = tiny_model(), tiny_task()
    before = state(model)
    x, y, idx = task.pool.x.clone(), task.pool.y.clone(), task.forget_index.clone()
    out = quick(name).unlearn(model, task)
    assert out.model is not model and out.seconds > 0 and out.info["method"] == name
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(task.pool.x, x) and torch.equal(task.pool.y, y) and torch.equal(task.forget_index, idx)
    assert model.training  # the input's mode is untouched too
    logits = out.model(task.test.x)
    assert logits.shape == (len(task.test), K) and torch.isfinite(logits).all()
    changed = any(not torch.equal(v, before[k]) for k, v in out.model.state_dict().items() if k in before)
    assert changed


@pytest.mark.parametrize("name", ["rl", "salun", "scrub", "bs"])
def test_same_seed_same_result(name):
    a = quick(name).unlearn(tiny_model(), tiny_task())
    b = quick(name).unlearn(tiny_model(), tiny_task())
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k])


# ---------------------------------------------------------------------------------------------- FT / GA / RL
def test_ga_first_step_is_negated_ft_step_on_forget():
    model, task = tiny_model(), tiny_task()
    lr = 0.05
    # one batch holding all of D_f, so one epoch is one step; no weight decay (it does not flip sign)
    ga = GA(epochs=1, lr=lr, batch_size=len(task.forget), weight_decay=0.0).unlearn(model, task).model
    params = dict(model.named_parameters())
    loss = F.cross_entropy(model(task.forget.x), task.forget.y)
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
    for name, p in ga.named_parameters():
        ft_step = -lr * grads[name]  # FT's SGD step on D_f
        torch.testing.assert_close(p.detach() - params[name].detach(), -ft_step, rtol=1e-10, atol=1e-12)


def test_random_labels_are_uniform_over_all_classes(monkeypatch):
    drawn = []
    real = random_label_mod.random_labels

    def spy(n, k, generator):
        out = real(n, k, generator)
        drawn.append(out)
        return out

    monkeypatch.setattr(random_label_mod, "random_labels", spy)
    base = tiny_task(n=600)
    # class-wise forget set (all of class 0): uniform over all K means class 0 itself is drawn 1/K of the time
    task = dataclasses.replace(base, forget_index=(base.pool.y == 0).nonzero().squeeze(1), batch_size=128)
    RL(epochs=8, lr=1e-6).unlearn(tiny_model(), task)
    labels = torch.cat(drawn)
    assert labels.numel() == 8 * len(task.forget)
    counts = torch.bincount(labels, minlength=K).double()
    expected = labels.numel() / K
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 13.8  # χ²(2) at p = 0.001
    # the lower level's labels (drawn once per pool example) are uniform too
    bound = RL().bind(tiny_model(), tiny_task(n=3000))
    c = torch.bincount(bound._context().extra["labels"], minlength=K).double()
    assert float(((c - 1000) ** 2 / 1000).sum()) < 13.8


@pytest.mark.parametrize("variant", ["sequential", "mixed"])
def test_rl_variants_step_counts(variant):
    class Count:
        steps = 0

        def before_step(self, model, optimizer):
            self.steps += 1

        def after_step(self, model, optimizer):
            pass

    task, hook = tiny_task(), Count()
    method = RL(epochs=2, variant=variant)
    method._unlearn(tiny_model(), task, Run(hooks=(hook,)))
    n_f, n_r, b = len(task.forget), len(task.retain), task.batch_size
    per_epoch = (
        math.ceil(n_f / b) + math.ceil(n_r / b) if variant == "sequential" else math.ceil((n_f + n_r) / b)
    )
    assert hook.steps == 2 * per_epoch


# ---------------------------------------------------------------------------------------------------- IU
def direct_woodfisher(v: torch.Tensor, grads: list[torch.Tensor], n: float) -> torch.Tensor:
    """k = A_J ⋯ A_1 v with explicit rank-1 matrices A_j = I − c_{j−1} g_0 g_jᵀ / (n + c_{j−1} g_0ᵀ g_j)."""
    g0, c, k = grads[0], 1.0, v.clone()
    eye = torch.eye(v.numel(), dtype=v.dtype)
    for g in grads[1:]:
        t = c * (g0 @ g)
        a = eye - c * torch.outer(g0, g) / (n + t)
        k = a @ k
        c = c * n / (n + t)
    return k


def test_woodfisher_recursion_equals_rank_one_product():
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(7, generator=g, dtype=torch.float64) for _ in range(6)]
    v = torch.randn(7, generator=g, dtype=torch.float64)
    for n in (10.0, 1000.0):
        torch.testing.assert_close(woodfisher_recursion(v, iter(grads), n), direct_woodfisher(v, grads, n))
    # it stops after j > n: with n = 2 only g_0..g_3 are read
    torch.testing.assert_close(woodfisher_recursion(v, iter(grads), 2), direct_woodfisher(v, grads[:4], 2))
    assert not torch.allclose(direct_woodfisher(v, grads[:4], 2), direct_woodfisher(v, grads, 2))


def test_iu_update_equals_direct_formula():
    model, task = tiny_model(), tiny_task()
    alpha = 3.0
    out = IU(alpha=alpha).unlearn(model, task).model
    params = list(model.parameters())

    def flat_grad(x, y, reduction):
        loss = F.cross_entropy(model(x), y, reduction=reduction)
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])

    forget, retain = task.forget, task.retain
    n_f, n_r = len(forget), len(retain)
    n = n_f + n_r
    v = (n_f / n) * (flat_grad(forget.x, forget.y, "mean") - flat_grad(retain.x, retain.y, "mean"))
    per_sample = [flat_grad(retain.x[i : i + 1], retain.y[i : i + 1], "mean") for i in range(n_r)]
    assert n_r < WOODFISHER_N  # all retain samples are read
    k = direct_woodfisher(v, per_sample, WOODFISHER_N)
    expected = torch.nn.utils.parameters_to_vector(params).detach() + alpha * k
    torch.testing.assert_close(torch.nn.utils.parameters_to_vector(out.parameters()).detach(), expected)


def test_iu_has_no_lower_loss():
    with pytest.raises(NoLowerLevelError, match="one-shot perturbation"):
        IU().bind(tiny_model(), tiny_task())
    with pytest.raises(NoLowerLevelError, match="one-shot perturbation"):
        IU().lower_loss({}, {}, (None, None, None), torch.zeros(3))


# ---------------------------------------------------------------------------------------------- ℓ1 / BS / BE
def test_l1_sparse_decays_linearly():
    method = L1Sparse(epochs=4, gamma=1e-3)
    assert [method.penalty(t) for t in range(4)] == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4])


def test_bs_descends_toward_fgsm_neighbour_labels():
    model, task = tiny_model(), tiny_task()
    lr, eps = 0.1, 0.1
    forget = task.forget
    out = (
        BS(epochs=1, lr=lr, epsilon=eps, batch_size=len(forget), weight_decay=0.0).unlearn(model, task).model
    )
    frozen = tiny_model().eval()
    x, y = forget.x.clone().requires_grad_(True), forget.y
    gx = torch.autograd.grad(F.cross_entropy(frozen(x), y), x)[0]
    x_adv = torch.round((x.detach() + eps * gx.sign()).clamp(0, 1) * 255) / 255
    torch.testing.assert_close(fgsm(frozen, forget.x, y, eps), x_adv)
    y_nbr = frozen(x_adv).argmax(1)
    params = list(model.parameters())
    grads = torch.autograd.grad(F.cross_entropy(model(forget.x), y_nbr), params)
    for p_new, p, g in zip(out.parameters(), params, grads):
        torch.testing.assert_close(p_new.detach(), p.detach() - lr * g)


def test_be_shadow_logit_during_and_after():
    seen = []

    class Shape:
        def before_step(self, model, optimizer):
            seen.append(model(torch.zeros(1, 1, 2, 3, dtype=torch.float64)).shape[1])

        def after_step(self, model, optimizer):
            pass

    model, task = tiny_model(), tiny_task()
    pruned, _ = BE(epochs=2)._unlearn(tiny_model(), task, Run(hooks=(Shape(),)))
    assert seen and set(seen) == {K + 1}  # K+1 logits while training on D_f -> class K
    assert pruned(task.test.x).shape[1] == K  # dropped before evaluation by default
    kept = BE(epochs=5, lr=0.1, keep_shadow=True).unlearn(model, task).model
    assert kept(task.test.x).shape[1] == K + 1
    # the shadow class absorbs the forget set; the K real rows equal the pruned model's
    assert (kept(task.forget.x).argmax(1) == K).all()
    pruned = BE(epochs=5, lr=0.1).unlearn(model, task).model
    torch.testing.assert_close(kept(task.test.x)[:, :K], pruned(task.test.x))
    bound = BE().bind(model, task)
    assert bound.module(task.test.x).shape[1] == K + 1
    with pytest.raises(ValueError, match="BE changes the classifier"):
        from unlearning.saliency import Masked

        Masked(method=BE(), mask={})


# ------------------------------------------------------------------------------------------------- SCRUB
def test_scrub_max_then_min_phases(monkeypatch):
    task, model = tiny_task(), tiny_model()
    teacher = tiny_model().eval()
    log = []
    real_run = common_mod.run_epochs  # Iterative.descend runs every method's SGD through it

    def spy_run(module, *, batches, loss, **kw):
        def spy_batches(epoch):
            items = list(batches(epoch))
            seen = torch.cat([item[0] for item in items])
            kind = "forget" if seen.shape[0] == len(task.forget) else "retain"
            log.append((epoch, kind))
            return items

        def spy_loss(student, item, epoch):
            value = loss(student, item, epoch)
            x, y = item[0], item[1]
            with torch.no_grad():
                kl = distill_kl(student(x), teacher(x), 4.0).mean()
                ce = F.cross_entropy(student(x), y)
            expected = -kl if epoch <= 1 else 0.99 * ce + 0.001 * kl
            torch.testing.assert_close(value.detach(), expected)
            return value

        return real_run(module, batches=spy_batches, loss=spy_loss, **kw)

    monkeypatch.setattr(common_mod, "run_epochs", spy_run)
    out = SCRUB(epochs=4).unlearn(model, task)
    assert log == [(0, "forget"), (1, "forget"), (2, "retain"), (3, "retain")]
    assert out.info["phases"] == ["max", "max", "min", "min"]
    # the max phase pushed the student away from the teacher on D_f
    with torch.no_grad():
        assert distill_kl(out.model(task.forget.x), teacher(task.forget.x), 4.0).mean() > 1e-6


def test_distill_kl_is_scaled_kl():
    s, t = torch.randn(5, K, dtype=torch.float64), torch.randn(5, K, dtype=torch.float64)
    ref = F.kl_div(F.log_softmax(s / 4, 1), F.softmax(t / 4, 1), reduction="sum") * 16 / 5
    torch.testing.assert_close(distill_kl(s, t, 4.0).mean(), ref)


# ------------------------------------------------------------------------------------------------ EU-k / CF-k
@pytest.mark.parametrize("cls", [EUk, CFk])
def test_last_layers_reinit_and_freeze(cls, monkeypatch):
    calls = []
    real = last_layers_mod.reinit_layers
    monkeypatch.setattr(last_layers_mod, "reinit_layers", lambda *a: (calls.append(1), real(*a)))
    model, task = tiny_model(), tiny_task()
    out = cls(epochs=3, k=1).unlearn(model, task).model
    assert len(calls) == (3 if cls is EUk else 0)  # EU-k re-initialises at the start of every epoch
    new, old = dict(out.named_parameters()), dict(model.named_parameters())
    for name in ("1.weight", "1.bias"):
        assert torch.equal(new[name], old[name])  # frozen
    assert not torch.equal(new["3.weight"], old["3.weight"])
    assert all(p.requires_grad for p in out.parameters())  # the flags are restored
    if cls is EUk:  # after re-initialisation from N(0, 1) and one epoch, far from θ_o
        assert (new["3.weight"] - old["3.weight"]).abs().max() > 0.3
    with pytest.raises(ValueError, match="k = 5 exceeds"):
        cls(k=5).unlearn(model, task)


def test_retrain_starts_fresh_and_is_seeded():
    model, task = tiny_model(), tiny_task()
    a = Retrain(epochs=0).unlearn(model, task).model
    b = Retrain(epochs=0).unlearn(model, task).model
    assert not torch.equal(a[1].weight, model[1].weight)
    assert torch.equal(a[1].weight, b[1].weight)
    r = Retrain.from_recipe(type("R", (), {"epochs": 3, "lr": 0.2, "batch_size": 8, "schedule": "cosine"})())
    assert (r.epochs, r.lr, r.batch_size, r.schedule) == (3, 0.2, 8, "cosine")


def test_soft_threshold_shrinks_toward_anchor():
    lin = torch.nn.Linear(4, 1, bias=False).double()
    hook = SoftThreshold(ratio=0.5, total_steps=2)
    with torch.no_grad():
        lin.weight.copy_(torch.zeros(1, 4, dtype=torch.float64))
    hook.set_anchor(lin, 0)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.1, -0.4, 0.3, 0.05]], dtype=torch.float64))
    hook.after_step(lin, None)  # step 1 of 2: r = ⌊0.5·(1/2)·4⌋ = 1, τ = 0.05
    torch.testing.assert_close(lin.weight, torch.tensor([[0.05, -0.35, 0.25, 0.0]], dtype=torch.float64))
