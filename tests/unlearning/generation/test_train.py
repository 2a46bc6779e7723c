"""Training: the loss falls on a tiny problem, EMA and label dropout rules, config validation, the cache."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from unlearning.data_types import ArrayData
from unlearning.generation.diffusion import diffusion_loss
from unlearning.generation.train import (
    TrainConfig,
    drop_labels,
    ema_update,
    load_or_train,
    train,
    training_data,
)


def bars(n_per_class: int = 16, k: int = 3) -> ArrayData:
    """Class c: a bright horizontal bar in rows 2c..2c+1 of an 8x8 image, plus a little noise."""
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(k * n_per_class, 1, 8, 8)
    y = torch.arange(k).repeat_interleave(n_per_class)
    for i, c in enumerate(y.tolist()):
        x[i, 0, 2 * c : 2 * c + 2, 1:7] = 1.0
    x = (x + 0.05 * torch.rand(x.shape, generator=g)).clamp(0, 1)
    return ArrayData(x, y)


def fixed_loss(model, data: ArrayData) -> float:
    g = torch.Generator().manual_seed(5)
    n = len(data)
    t = torch.randint(0, 1000, (4 * n,), generator=g)
    noise = torch.randn(4 * n, 1, 8, 8, generator=g)
    with torch.no_grad():
        return float(diffusion_loss(model, data.x.repeat(4, 1, 1, 1), data.y.repeat(4), t=t, noise=noise))


def test_training_reduces_the_loss(tiny_config):
    data = bars()
    config = TrainConfig(unet=tiny_config, steps=12, batch_size=16, lr=1e-2, warmup=2, ema_decay=0.5)
    before = train(dataclasses.replace(config, steps=1, lr=1e-12), data)
    after = train(config, data)
    assert fixed_loss(after, data) < 0.7 * fixed_loss(before, data)
    assert not after.training
    assert all(p.requires_grad for p in after.parameters())  # like a model loaded from the cache


def test_training_is_deterministic_and_calls_back(tiny_config):
    config = TrainConfig(unet=tiny_config, steps=4, batch_size=8)
    seen = []
    first = train(
        config, bars(4), callback=lambda step, ema, s: seen.append((step, ema.training)), callback_every=2
    )
    again = train(config, bars(4))
    assert seen == [(2, False), (4, False)]
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))


def test_ema_rule():
    model, ema = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    old = ema.weight.detach().clone()
    ema_update(ema, model, 0.9)
    assert torch.allclose(ema.weight, 0.9 * old + 0.1 * model.weight)


def test_label_dropout_rate():
    labels = torch.zeros(20000, dtype=torch.long)
    out = drop_labels(labels, 0.1, 10, torch.Generator().manual_seed(0))
    share = (out == 10).float().mean().item()
    assert abs(share - 0.1) < 0.01
    assert set(out.unique().tolist()) == {0, 10}


def test_exclude_classes_and_config_errors(tiny_config):
    data = bars()
    kept = training_data(data, (1,))
    assert set(kept.y.tolist()) == {0, 2} and len(kept) == 32
    with pytest.raises(ValueError, match="exclude_classes"):
        TrainConfig(unet=tiny_config, exclude_classes=(3,))
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="no training images"):
        training_data(data, (0, 1, 2))
    with pytest.raises(TypeError, match="data"):
        training_data([1, 2])


def test_load_or_train_round_trip(tiny_config, tmp_path):
    data = bars(4)
    config = TrainConfig(unet=tiny_config, steps=2, batch_size=8)
    first = load_or_train(data, config, cache_dir=tmp_path)
    assert not first.from_cache and first.path.is_file()
    second = load_or_train(data, config, cache_dir=tmp_path)
    assert second.from_cache and second.key == first.key and second.seconds == pytest.approx(first.seconds)
    assert all(
        torch.equal(a, b)
        for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values())
    )
    retrain = load_or_train(data, dataclasses.replace(config, exclude_classes=(2,)), cache_dir=tmp_path)
    assert retrain.key != first.key and not retrain.from_cache
    assert len(list((tmp_path / "models").glob("diffusion-*.pt"))) == 2
