import pytest
import torch
from torch import nn

from unlearning import models

SHAPES = {"mlp": (1, 8, 8), "cnn": (1, 8, 8), "resnet18": (3, 8, 8)}
OPTS = {"mlp": {"hidden": (16, 8)}, "cnn": {}, "resnet18": {"width": 4}}


def _build(name, seed=0, **extra):
    shape = SHAPES[name]
    c = shape[0]
    return models.build(
        name,
        image_shape=shape,
        num_classes=7,
        mean=(0.3,) * c,
        std=(0.2,) * c,
        seed=seed,
        **{**OPTS[name], **extra},
    )


@pytest.mark.parametrize("name", models.NAMES)
def test_output_shape_and_last_linear(name):
    model = _build(name)
    out = model(torch.rand(5, *SHAPES[name]))
    assert out.shape == (5, 7)
    last = models.classifier(model)
    assert isinstance(last, nn.Linear) and last.out_features == 7
    assert last is [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


@pytest.mark.parametrize("name", models.NAMES)
def test_normalisation_is_the_first_layer_with_buffers(name):
    model = _build(name)
    norm = next(m for m in model.modules() if isinstance(m, models.Normalize))
    buffers = dict(model.named_buffers())
    assert any(k.endswith("mean") and v is norm.mean for k, v in buffers.items())
    x = torch.rand(3, *SHAPES[name])
    assert torch.allclose(norm(x), (x - 0.3) / 0.2)
    # normalising inside the model: scaling mean/std with the data leaves outputs unchanged
    model.eval()
    y = model(x)
    norm.mean.fill_(0.3 * 2)
    norm.std.fill_(0.2 * 2)
    assert torch.allclose(model(2 * x), y, atol=1e-5)


@pytest.mark.parametrize("name", models.NAMES)
def test_seeded_initialisation_without_touching_global_rng(name):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b, c = _build(name, seed=1), _build(name, seed=1), _build(name, seed=2)
    assert torch.rand(1).item() == before.item()
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_resnet18_has_the_cifar_stem():
    model = models.build(
        "resnet18", image_shape=(3, 32, 32), num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3, seed=0
    )
    assert (
        model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.out_channels == 64
    )
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 20
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 20  # 17 3x3 convs + 3 shortcuts
    n_params = sum(p.numel() for p in model.parameters())
    assert 11_100_000 < n_params < 11_200_000  # the CIFAR ResNet-18's 11.17M


def test_mlp_hidden_sizes_and_errors():
    model = models.build(
        "mlp", image_shape=(1, 8, 8), num_classes=10, mean=(0.0,), std=(1.0,), hidden=(32, 16)
    )
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 32), (32, 16), (16, 10)]
    with pytest.raises(ValueError, match="mlp, cnn, resnet18"):
        models.build("vgg", image_shape=(1, 8, 8), num_classes=10, mean=(0.0,), std=(1.0,))
    with pytest.raises(ValueError, match="one per channel"):
        models.build("mlp", image_shape=(3, 8, 8), num_classes=10, mean=(0.0,), std=(1.0,))
    with pytest.raises(ValueError, match="bad option"):
        models.build("mlp", image_shape=(1, 8, 8), num_classes=10, mean=(0.0,), std=(1.0,), depth=3)
