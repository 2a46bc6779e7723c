"""Classifiers: ``build(name, ...) -> nn.Module`` for ``mlp``, ``cnn`` and ``resnet18``.

Every model starts with `Normalize` (``x̂_c = (x_c − μ_c) / σ_c`` with μ, σ held as buffers), so data stay in
[0, 1] as in the published code, and ends with an ``nn.Linear`` classifier that is the last ``nn.Linear`` in
``model.modules()`` (`classifier` finds it; BE swaps it for K+1 outputs). Initialisation is PyTorch's default,
drawn under ``torch.manual_seed(seed)`` inside a forked RNG (the global stream is left untouched), or one of
the published schemes (`INITS`, ``build(..., init=...)``); `initialize` redraws a built model's initial
weights exactly (Retrain's fresh start).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from unlearning.rng import seeded

NAMES = ("mlp", "cnn", "resnet18")
#: initialisation schemes: "default" (PyTorch's), "kaiming" (the published ResNet's: Conv2d weights
#: kaiming-normal, fan_out, ReLU gain; BatchNorm γ = 1, β = 0; the rest PyTorch's), "xavier" (the published
#: `weights_init` of the worst-case code's Retrain lower level: Linear and Conv2d weights xavier-uniform,
#: biases 0)
INITS = ("default", "kaiming", "xavier")


class Normalize(nn.Module):
    """``(x − mean) / std`` per channel; ``mean`` and ``std`` are buffers of shape (1, C, 1, 1)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean and std need one value per channel, got {len(mean)} and {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class MLP(nn.Sequential):
    """Normalize → Flatten → [Linear → ReLU] per hidden size → Linear(K)."""

    def __init__(self, image_shape, num_classes: int, mean, std, hidden: Sequence[int] = (128,)) -> None:
        c, h, w = image_shape
        layers: list[nn.Module] = [Normalize(mean, std), nn.Flatten()]
        width = c * h * w
        for size in hidden:
            layers += [nn.Linear(width, int(size)), nn.ReLU()]
            width = int(size)
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


class SmallCNN(nn.Module):
    """Normalize → [Conv3x3(32) → ReLU → MaxPool2] → [Conv3x3(64) → ReLU → MaxPool2] → Linear(128) → ReLU →
    Linear(K). Works for any H, W ≥ 4."""

    def __init__(
        self, image_shape, num_classes: int, mean, std, channels=(32, 64), hidden: int = 128
    ) -> None:
        super().__init__()
        c, h, w = image_shape
        if min(h, w) < 4:
            raise ValueError(f"cnn needs images at least 4x4, got {h}x{w}")
        c1, c2 = channels
        self.normalize = Normalize(mean, std)
        self.features = nn.Sequential(
            nn.Conv2d(c, c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(c2 * (h // 4) * (w // 4), hidden), nn.ReLU())
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.head(self.features(self.normalize(x))))


class BasicBlock(nn.Module):
    """``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``; the shortcut is a 1x1 conv + BN when the shape
    changes (stride 2 or more channels), the identity otherwise."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 with the CIFAR stem: Conv3x3 (stride 1) → BN → ReLU, no max-pool; four stages of two basic
    blocks with widths w, 2w, 4w, 8w (w = 64) and strides 1, 2, 2, 2; global average pool; Linear(8w, K)."""

    def __init__(self, image_shape, num_classes: int, mean, std, width: int = 64) -> None:
        super().__init__()
        c = image_shape[0]
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(c, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        stages, cin = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            cout = width * 2**i
            stages.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(torch.flatten(self.pool(out), 1))


def build(
    name: str,
    *,
    image_shape: Sequence[int],
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    seed: int = 0,
    init: str = "default",
    **opts,
) -> nn.Module:
    """A freshly initialised model ``name`` (``mlp``: option ``hidden``; ``cnn``: ``channels``, ``hidden``;
    ``resnet18``: ``width``), weights drawn from ``seed`` with the scheme ``init`` (`INITS`; the published
    ResNet-18 is ``"kaiming"``); the model remembers it as ``init_scheme`` for `initialize`."""
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    key = name.lower()
    classes = {"mlp": MLP, "cnn": SmallCNN, "resnet18": ResNet18}
    if key not in classes:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(NAMES)}")
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 3:
        raise ValueError(f"image_shape must be (C, H, W), got {shape}")
    if len(mean) != shape[0]:
        raise ValueError(f"mean/std need {shape[0]} values (one per channel), got {len(mean)}")
    check_options(key, opts)
    with seeded(seed):  # modules are built on the CPU
        try:
            model = classes[key](shape, num_classes, mean, std, **opts)
        except TypeError as err:
            raise ValueError(f"bad option for model {name!r}: {err}") from None
        apply_init(model, init)  # the same stream continues: default draws first, then the scheme's
    model.init_scheme = init
    return model


def apply_init(model: nn.Module, init: str) -> nn.Module:
    """Overwrite ``model``'s initial weights with the scheme ``init`` (`INITS`), in place, drawing from the
    global generator in ``model.modules()`` order (``"default"`` changes nothing)."""
    with torch.no_grad():
        for m in model.modules():
            if init == "kaiming" and isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif init == "kaiming" and isinstance(m, nn.modules.batchnorm._BatchNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif init == "xavier" and isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    return model


def initialize(model: nn.Module, seed: int, init: str | None = None) -> nn.Module:
    """Redraw ``model``'s initial weights, in place, as `build` draws them with ``seed``: every submodule's
    ``reset_parameters()`` in ``model.modules()`` order (the order the models' constructors create them, so
    a model of `build` gets exactly `build`'s weights back), then the scheme ``init`` (default: the model's
    ``init_scheme``, else ``"default"``). Under a forked RNG: the global stream is left as it was."""
    scheme = init if init is not None else getattr(model, "init_scheme", "default")
    if scheme not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {scheme!r}")
    with seeded(seed, next(model.parameters()).device), torch.no_grad():
        for module in model.modules():
            if module is not model and callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
        apply_init(model, scheme)
    return model


#: The options of each model: name -> (what it is, whether a list of sizes, example).
OPTIONS: dict[str, dict[str, tuple[str, bool, str]]] = {
    "mlp": {"hidden": ("hidden layer widths", True, "[256,128]")},
    "cnn": {
        "channels": ("the two conv layers' channels", True, "[32,64]"),
        "hidden": ("dense width", False, "128"),
    },
    "resnet18": {"width": ("first stage width", False, "64")},
}


def check_options(name: str, opts: dict) -> None:
    """``opts`` are options of model ``name`` (`OPTIONS`) with positive integer sizes (``cnn``'s
    ``channels``: exactly two); else a ``ValueError`` naming the option and an example."""
    known = OPTIONS.get(name.lower(), {})
    for key, value in opts.items():
        if key not in known:
            valid = ", ".join(known) or "none"
            raise ValueError(f"bad option for model {name!r}: no option {key!r} (its options: {valid})")
        what, many, example = known[key]
        values = list(value) if many and isinstance(value, (list, tuple)) else [value]
        sizes_ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values)
        shape_ok = many == isinstance(value, (list, tuple)) and (key != "channels" or len(values) == 2)
        if not (sizes_ok and shape_ok):
            kind = "a list of integers >= 1" if many else "an integer >= 1"
            raise ValueError(
                f"bad option for model {name!r}: {key} ({what}) must be {kind}, e.g. {key}={example}; "
                f"got {value!r}"
            )


def classifier(model: nn.Module) -> nn.Linear:
    """The final classifier layer: the last ``nn.Linear`` in ``model.modules()``."""
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    if last is None:
        raise ValueError("model has no nn.Linear classifier layer")
    return last
