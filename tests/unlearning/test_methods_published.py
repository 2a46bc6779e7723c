"""Issue 15, points 3 and 4: the published initialisations (kaiming-normal fan_out for the ResNet,
xavier-uniform for the Retrain lower level) as options, one Retrain initialisation (the registry's method
and ``prepare().retrain()`` start from the same weights), the published MultiStepLR(91, 136) and
best-validation checkpoint as options of the training recipe, and EU-k/CF-k with k > 1 unfreezing the
BatchNorm layers between the last k layers as the published ``reinit_and_freeze_layers`` does."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tests.unlearning.test_methods_helpers import state, tiny_task
from unlearning import metrics, models
from unlearning.data_types import ArrayData
from unlearning.methods import CFk, EUk, Retrain
from unlearning.methods.last_layers import layer_parameter_names
from unlearning.training import PUBLISHED_CIFAR10, Recipe, default_recipe, train

SHAPE = dict(image_shape=(1, 8, 8), num_classes=10, mean=[0.5], std=[0.25])


def _build(name, seed=3, init="default"):
    return models.build(name, seed=seed, init=init, **SHAPE, **({"width": 4} if name == "resnet18" else {}))


# --------------------------------------------------------------------------------------- initialisation
@pytest.mark.parametrize(
    "name,init", [("mlp", "default"), ("cnn", "default"), ("resnet18", "default"), ("resnet18", "kaiming")]
)
def test_initialize_redraws_exactly_what_build_drew(name, init):
    model = _build(name, init=init)
    drawn = state(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    models.initialize(model, seed=3)
    assert all(torch.equal(drawn[k], v) for k, v in state(model).items())


def test_default_build_is_unchanged_and_schemes_follow_the_published_rules():
    rng = torch.get_rng_state()
    plain = _build("resnet18")
    # the global stream is untouched
    assert plain.init_scheme == "default" and torch.equal(torch.get_rng_state(), rng)
    kaiming = _build("resnet18", init="kaiming")
    # kaiming-normal, fan_out, ReLU gain: std √(2 / (C_out·k·k))
    conv = kaiming.layer4[1].conv2.weight.detach()
    fan_out = conv.shape[0] * conv.shape[2] * conv.shape[3]
    assert float(conv.std()) == pytest.approx(math.sqrt(2 / fan_out), rel=0.1)
    assert torch.equal(kaiming.bn1.weight, torch.ones_like(kaiming.bn1.weight))
    assert torch.equal(kaiming.fc.weight, plain.fc.weight)  # Linear layers keep PyTorch's rule
    xavier = _build("mlp", init="xavier")
    lin = xavier[2]
    bound = math.sqrt(6 / (lin.in_features + lin.out_features))
    top = float(lin.weight.detach().abs().max())
    assert 0.9 * bound < top <= bound
    assert torch.equal(lin.bias, torch.zeros_like(lin.bias))
    with pytest.raises(ValueError, match="init must be one of default, kaiming, xavier"):
        _build("mlp", init="orthogonal")


# ------------------------------------------------------------------------------- one Retrain initialisation
def _digits_task(seed):
    task = tiny_task(seed=seed)
    g = torch.Generator().manual_seed(seed)
    pool = ArrayData(torch.rand(40, 1, 8, 8, generator=g), torch.randint(0, 10, (40,), generator=g))
    return task.__class__(
        **{**task.__dict__, "pool": pool, "num_classes": 10, "forget_index": torch.arange(4)}
    )


@pytest.mark.parametrize("init", ["default", "kaiming"])
def test_retrain_method_starts_from_the_originals_initialisation(init):
    """The registry's Retrain (and its lower level) starts from `build(seed=task.seed)`: the weights
    `prepare` draws for the original model and `prepare().retrain()` trains from."""
    task = _digits_task(seed=5)
    original = _build("resnet18", seed=5, init=init)
    initial = state(original)
    with torch.no_grad():  # a "trained" original
        for p in original.parameters():
            p.mul_(0.5).add_(0.1)
    fresh = Retrain(epochs=0).unlearn(original, task).model
    assert all(torch.equal(initial[k], v) for k, v in state(fresh).items())
    bound = Retrain().bind(original, task)
    params, _ = bound.initial_state()
    assert all(torch.equal(initial[k], v) for k, v in params.items())


def test_prepare_retrain_and_the_registry_method_share_the_initialisation(digits_random):
    p = digits_random
    fresh = Retrain(epochs=0).unlearn(p.original, p.task).model
    built = p.build_model()
    assert all(torch.equal(a, b) for a, b in zip(state(fresh).values(), state(built).values()))


def test_retrain_xavier_option_is_the_published_lower_level_init():
    task = _digits_task(seed=1)
    model = Retrain(epochs=0, init="xavier").unlearn(_build("mlp", seed=1), task).model
    lin = model[2]
    assert float(lin.weight.detach().abs().max()) <= math.sqrt(6 / (lin.in_features + lin.out_features))
    assert torch.equal(lin.bias, torch.zeros_like(lin.bias))
    assert all(
        torch.equal(a, b)
        for a, b in zip(state(model).values(), state(_build("mlp", seed=1, init="xavier")).values())
    )


# ---------------------------------------------------------------------------------------------- recipe
def test_published_recipe_and_cache_keys():
    r = PUBLISHED_CIFAR10
    assert (r.epochs, r.lr, r.batch_size, r.milestones, r.checkpoint) == (
        182,
        0.1,
        256,
        (91, 136),
        "best_val",
    )
    sgd = r.sgd()
    assert [sgd.factor(e, 182) for e in (0, 90, 91, 135, 136, 181)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01]
    )
    # recipes that do not use the new options keep their cache keys
    assert list(default_recipe("digits", "mlp").to_dict()) == [
        "epochs",
        "lr",
        "batch_size",
        "momentum",
        "weight_decay",
        "schedule",
    ]
    with pytest.raises(ValueError, match="checkpoint must be one of last, best_val"):
        Recipe(epochs=1, lr=0.1, batch_size=8, checkpoint="best")
    with pytest.raises(ValueError, match="milestones need schedule='multistep'"):
        Recipe(epochs=1, lr=0.1, batch_size=8, milestones=(1,))


def test_best_validation_checkpoint_keeps_the_first_best_epoch():
    """Constant rate: training e epochs is the first e epochs of a longer run (one batch stream), so the
    best-validation model equals the e-epoch model of the first highest validation accuracy."""
    g = torch.Generator().manual_seed(0)
    data = ArrayData(torch.rand(64, 1, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g))
    val = ArrayData(torch.rand(40, 1, 8, 8, generator=g), torch.randint(0, 10, (40,), generator=g))
    base = dict(lr=0.5, batch_size=16, schedule="constant")
    runs = [train(_build("mlp", seed=0), data, Recipe(epochs=e, **base), seed=0) for e in range(1, 7)]
    accs = [metrics.accuracy(m, val) for m in runs]
    best = train(
        _build("mlp", seed=0), data, Recipe(epochs=6, checkpoint="best_val", **base), seed=0, val=val
    )
    first = accs.index(max(accs))
    assert all(torch.equal(a, b) for a, b in zip(state(best).values(), state(runs[first]).values()))
    with pytest.raises(ValueError, match="needs validation data: pass val="):
        train(_build("mlp", seed=0), data, Recipe(epochs=1, checkpoint="best_val", **base), seed=0)


# ------------------------------------------------------------------------------------------ EU-k, k > 1
def _bn_mlp():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(6, 5),
            nn.BatchNorm1d(5),
            nn.ReLU(),
            nn.Linear(5, 4),
            nn.BatchNorm1d(4),
            nn.ReLU(),
            nn.Linear(4, 3),
        ).double()


def test_last_k_layers_unfreeze_the_batchnorm_between_them_as_published():
    model = _bn_mlp()
    assert layer_parameter_names(model, 1) == ["7.weight", "7.bias"]
    assert layer_parameter_names(model, 2) == [
        "4.weight",
        "4.bias",
        "5.weight",
        "5.bias",
        "7.weight",
        "7.bias",
    ]
    assert layer_parameter_names(model, 3)[:4] == ["1.weight", "1.bias", "2.weight", "2.bias"]
    task = tiny_task()
    for cls in (EUk, CFk):
        old = state(model)
        new = state(cls(k=2, epochs=1).unlearn(model, task).model)
        assert not torch.equal(new["5.weight"], old["5.weight"])  # the BN between the last two layers trains
        assert torch.equal(new["2.weight"], old["2.weight"]) and torch.equal(new["1.weight"], old["1.weight"])
