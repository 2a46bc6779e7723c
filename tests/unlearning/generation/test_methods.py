"""Generation unlearning methods: each method's objective equals a hand computation on the same draws, the
saliency mask equals its published rule, inputs are never mutated, every method runs on an SD-layout UNet."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from unlearning.data_types import ArrayData
from unlearning.generation import methods as M
from unlearning.generation.diffusion import add_noise, diffusion_loss, sample_timesteps, sampling_scheduler
from unlearning.generation.model import build_unet, sd_layout_unet
from unlearning.generation.task import GenerationTask

K = 3


@pytest.fixture
def task() -> GenerationTask:
    g = torch.Generator().manual_seed(1)
    return GenerationTask(
        ArrayData(torch.rand(24, 1, 8, 8, generator=g), torch.arange(24) % K), (1,), K, seed=5
    )


def _draws(model, x, gen):
    """The (z0, ε, t) a method draws for images x: antithetic t first, then ε (diffusion space)."""
    z0 = model.encode(x)
    t = sample_timesteps(x.shape[0], generator=gen, antithetic=True)
    return z0, torch.randn(z0.shape, generator=gen), t


def _batch(data, n, gen):
    idx = torch.randint(0, len(data), (n,), generator=gen)
    return data.x[idx], data.y[idx]


def _sq(a, b):
    return ((a - b) ** 2).sum(dim=(1, 2, 3))


def _remain(model, task, n, gen):
    x, y = _batch(task.remain_data, n, gen)
    z0 = model.encode(x)
    t = sample_timesteps(n, generator=gen, antithetic=True)
    noise = torch.randn(z0.shape, generator=gen)
    return _sq(noise, model(add_noise(z0, noise, t), t, labels=y)).mean()


def test_task_views_and_errors(task):
    assert task.forget == (1,) and task.remain_classes == (0, 2)
    assert set(task.forget_data.y.tolist()) == {1} and len(task.remain_data) == 16
    with pytest.raises(ValueError, match="not in 0..2"):
        task.with_forget((3,))
    with pytest.raises(ValueError, match="every class"):
        task.with_forget((0, 1, 2))


def test_ft_objective(tiny_model, task):
    loss = M.FT(batch_size=6).loss_fn(tiny_model, task)(0)
    gen = torch.Generator().manual_seed(5)
    assert torch.allclose(loss, _remain(tiny_model, task, 6, gen), rtol=1e-5)


def test_ga_objective(tiny_model, task):
    loss = M.GA(batch_size=6, alpha=0.25).loss_fn(tiny_model, task)(0)
    gen = torch.Generator().manual_seed(5)
    x, y = _batch(task.forget_data, 6, gen)
    z0, noise, t = _draws(tiny_model, x, gen)
    forget = _sq(noise, tiny_model(add_noise(z0, noise, t), t, labels=y)).mean()
    expected = -forget + 0.25 * _remain(tiny_model, task, 6, gen)
    assert torch.allclose(loss, expected, rtol=1e-5)


@pytest.mark.parametrize("pseudo", ["next", "random"])
def test_rl_objective(tiny_model, task, pseudo):
    loss = M.RL(batch_size=6, alpha=0.5, pseudo=pseudo).loss_fn(tiny_model, task)(0)
    gen = torch.Generator().manual_seed(5)
    x, y = _batch(task.forget_data, 6, gen)
    if pseudo == "next":
        other = (y + 1) % K  # published: c' = (c_f + 1) mod K
    else:
        other = (y + torch.randint(1, K, y.shape, generator=gen)) % K
        assert bool((other != y).all())
    z0, noise, t = _draws(tiny_model, x, gen)
    x_t = add_noise(z0, noise, t)
    forget = ((tiny_model(x_t, t, labels=y) - tiny_model(x_t, t, labels=other)) ** 2).mean()  # F.mse_loss
    expected = forget + 0.5 * _remain(tiny_model, task, 6, gen)
    assert torch.allclose(loss, expected, rtol=1e-5)


def test_rl_target_is_stop_gradient(tiny_model, task):
    """Only ε_θ(x_t, c_f) carries gradient: the loss's gradient equals 2(ε_θ(c_f) − ε_θ(c'))·∂ε_θ(c_f)."""
    y = torch.tensor([1, 1])
    x = task.forget_data.x[:2]
    z0, noise, t = _draws(tiny_model, x, torch.Generator().manual_seed(0))
    term = M.rl_forget_term(tiny_model, z0, y, (y + 1) % K, noise, t).sum()
    grads = torch.autograd.grad(term, list(tiny_model.parameters()), allow_unused=True)
    x_t = add_noise(z0, noise, t)
    target = tiny_model(x_t, t, labels=(y + 1) % K).detach()
    ref = ((tiny_model(x_t, t, labels=y) - target) ** 2).mean(dim=(1, 2, 3)).sum()
    ref_grads = torch.autograd.grad(ref, list(tiny_model.parameters()), allow_unused=True)
    for g, r in zip(grads, ref_grads):
        assert (g is None and r is None) or torch.allclose(g, r, atol=1e-6)


def test_saliency_mask_is_the_published_rule(tiny_model, task):
    """|Σ_batches clip₁(∇ L(θ; x_f, c_f))| (eval mode, antithetic t), global top 50%."""
    tiny_model.train()
    mask = M.generation_mask(tiny_model, task, sparsity=0.5, batch_size=3)
    assert tiny_model.training  # restored
    gen = torch.Generator().manual_seed(task.seed)
    params = list(tiny_model.parameters())
    total = [torch.zeros_like(p) for p in params]
    forget = task.forget_data
    tiny_model.eval()
    for start in range(0, len(forget), 3):
        loss = diffusion_loss(
            tiny_model,
            forget.x[start : start + 3],
            forget.y[start : start + 3],
            generator=gen,
            antithetic=True,
        )
        grads = [
            g if g is not None else torch.zeros_like(p)
            for g, p in zip(torch.autograd.grad(loss, params, allow_unused=True), params)
        ]
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        coef = min(1.0, 1.0 / (float(norm) + 1e-6))
        total = [a + coef * g for a, g in zip(total, grads)]
    flat = torch.cat([a.abs().flatten() for a in total])
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[torch.argsort(flat, descending=True, stable=True)[: int(0.5 * flat.numel())]] = True
    got = torch.cat([mask[n].flatten() for n, _ in tiny_model.named_parameters()])
    assert torch.equal(got, keep)
    assert abs(float(got.float().mean()) - 0.5) < 1e-3


def test_saliency_works_on_a_frozen_ema_model(tiny_model, task):
    """train() returns its EMA copy with requires_grad off; the mask must not depend on that flag."""
    mask = M.generation_mask(tiny_model, task)
    tiny_model.requires_grad_(False)
    frozen = M.generation_mask(tiny_model, task)
    assert all(torch.equal(mask[n], frozen[n]) for n in mask)
    assert not any(p.requires_grad for p in tiny_model.parameters())  # flags restored


def test_salun_updates_only_salient_weights(tiny_model, task):
    mask = M.generation_mask(tiny_model, task, batch_size=128)
    out = M.SalUn(iterations=2, batch_size=4, lr=1e-2).unlearn(tiny_model, task)
    after = dict(out.model.named_parameters())
    moved = 0
    for name, p in tiny_model.named_parameters():
        frozen = ~mask[name]
        assert torch.equal(after[name][frozen], p[frozen]), name
        moved += int((after[name][mask[name]] != p[mask[name]]).sum())
    assert moved > 0 and abs(out.info["mask_fraction"] - 0.5) < 1e-3


def test_esd_target_and_partial_generation(tiny_model, task):
    frozen = tiny_model
    x_t = torch.randn(2, 1, 8, 8)
    t = torch.tensor([500, 500])
    y = torch.tensor([1, 1])
    eps_u = frozen(x_t, t, labels=torch.tensor([K, K]))
    eps_c = frozen(x_t, t, labels=y)
    assert torch.allclose(M.esd_target(frozen, x_t, t, y, 2.0), eps_u - 2.0 * (eps_c - eps_u), atol=1e-6)
    # stop = 0: x_T itself, at the first DDIM timestep
    gen = torch.Generator().manual_seed(3)
    x, tt = M.partial_generation(tiny_model, y, 0, steps=5, guidance=3.0, generator=gen)
    assert torch.equal(
        x, torch.randn((2, *tiny_model.latent_shape), generator=torch.Generator().manual_seed(3))
    )
    first = int(sampling_scheduler("ddim", 5).timesteps[0])  # the training betas' DDIM schedule
    assert tt.tolist() == [first, first]


def test_esd_objective_and_trained_weights(tiny_model, task):
    method = M.ESD(batch_size=2, ddim_steps=4, eta=1.0, guidance=3.0)
    loss = method.loss_fn(tiny_model, task)(0)
    gen = torch.Generator().manual_seed(5)
    labels = torch.tensor(task.forget)[torch.randint(0, 1, (2,), generator=gen)]
    stop = int(torch.randint(0, 4, (1,), generator=gen))
    x_t, t = M.partial_generation(tiny_model, labels, stop, steps=4, guidance=3.0, generator=gen)
    target = M.esd_target(tiny_model, x_t, t, labels, 1.0)
    assert torch.allclose(loss, ((tiny_model(x_t, t, labels=labels) - target) ** 2).mean(), rtol=1e-5)
    out = M.ESD(iterations=1, batch_size=2, ddim_steps=3, lr=1e-2).unlearn(tiny_model, task)
    after = dict(out.model.named_parameters())
    for name, p in tiny_model.named_parameters():
        changed = not torch.equal(after[name], p)
        assert not changed or ".attn2." in name, name  # ESD-x: cross-attention weights only


def test_fmn_objective(tiny_model, task):
    model = tiny_model  # context [start, tokens[c]]: the start token is shared with ∅
    assert M.concept_positions(model, 1).tolist() == [1, 2]
    store = []
    before = M.record_cross_attention(model.unet, store)
    gen = torch.Generator().manual_seed(0)
    x = task.forget_data.x[:3]
    z0, noise, t = _draws(model, x, gen)
    eps = model(add_noise(z0, noise, t), t, labels=torch.tensor([1, 1, 1]))
    model.unet.set_attn_processor(before)
    assert torch.allclose(eps, model(add_noise(z0, noise, t), t, labels=torch.tensor([1, 1, 1])), atol=1e-5)
    assert store and all(torch.allclose(m.sum(-1), torch.ones(())) for m in store)  # softmax over keys
    # hand attention of the first recorded layer from its own q, k
    loss = M.attention_loss(store, torch.tensor([1, 2]))
    assert torch.allclose(loss, sum((m[..., 1] ** 2 + m[..., 2] ** 2).mean() for m in store))


def test_fmn_refuses_a_context_without_a_shared_token(tiny_config, task):
    model = build_unet(dataclasses.replace(tiny_config, start_token=False))
    with pytest.raises(ValueError, match="cannot be re-steered"):
        M.FMN(iterations=1, batch_size=2).unlearn(model, task)


def test_fmn_lowers_the_concept_attention(tiny_model, task):
    model = tiny_model
    out = M.FMN(iterations=8, batch_size=4, lr=3e-2).unlearn(model, task)
    assert (
        out.info["final_loss"]
        < M.FMN(iterations=1, batch_size=4, lr=3e-2).unlearn(model, task).info["final_loss"]
    )
    assert not any(type(p).__name__ == "AttentionRecorder" for p in out.model.unet.attn_processors.values())


def test_make_validates_and_never_mutates(tiny_model, task):
    with pytest.raises(ValueError, match="unknown generation unlearning method"):
        M.make("nope")
    with pytest.raises(ValueError, match="hyper-parameter lr must be"):
        M.make("salun", lr=-1.0)
    with pytest.raises(ValueError, match="unknown hyper-parameter 'eta'"):
        M.make("rl", eta=1.0)
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    out = M.make("ga", iterations=2, batch_size=4).unlearn(tiny_model, task)
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in before.items())
    assert out.seconds > 0 and out.info["method"] == "ga" and out.model is not tiny_model
    with pytest.raises(TypeError, match="GenerationTask"):
        M.make("ft").unlearn(tiny_model, object())


@dataclasses.dataclass
class Noop(M.GenerationMethod):
    """A user's method: returns the model unchanged."""

    name = "noop"

    def _unlearn(self, model, task):
        return model, {"user": True}


def test_user_method_plugs_in(tiny_model, task):
    method = M.resolve("tests.unlearning.generation.test_methods:Noop")
    out = method.unlearn(tiny_model, task)
    assert out.info["user"] and out.info["method"] == "noop"


@pytest.mark.parametrize("name", ["ft", "ga", "rl", "salun", "esd", "fmn"])
def test_every_method_runs_on_an_sd_layout_unet(name):
    model = sd_layout_unet(num_classes=K)
    data = ArrayData(torch.rand(6, 1, 8, 8), torch.arange(6) % K)
    task = GenerationTask(data, (2,), K, seed=0)
    hp = {"iterations": 1, "batch_size": 2}
    if name == "esd":
        hp["ddim_steps"] = 2
    out = M.make(name, **hp).unlearn(model, task)
    assert out.info["iterations"] == 1 and all(torch.isfinite(p).all() for p in out.model.parameters())
