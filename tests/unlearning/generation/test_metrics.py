"""Judge, metrics and grids on constructed cases: UA of another class's images is 100%, FID of a set with
itself is 0 and grows with a shift (closed form), the grid PNG."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from unlearning import datasets
from unlearning.generation.grid import save_grid, stack_by_class, tile
from unlearning.generation.judge import JudgeConfig, load_or_train_judge
from unlearning.generation.metrics import (
    class_accuracy,
    evaluate_generation,
    frechet_distance,
    unlearning_accuracy,
)


class ArgmaxJudge(torch.nn.Module):
    """Labels an image by its brightest pixel's index; features = the flattened image."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def features(self, x):
        return x.flatten(1)

    def predict(self, x):
        return x.flatten(1).argmax(1)


def one_hot_images(c: int, n: int = 5, k: int = 3) -> torch.Tensor:
    x = torch.zeros(n, 1, 1, k)
    x[:, 0, 0, c] = 1.0
    return x


def test_ua_and_accuracy_on_constructed_images():
    judge = ArgmaxJudge()
    assert unlearning_accuracy(judge, one_hot_images(2), forget_class=0) == 1.0
    assert unlearning_accuracy(judge, one_hot_images(0), forget_class=0) == 0.0
    images = torch.cat([one_hot_images(0, 3), one_hot_images(1, 1)])
    assert class_accuracy(judge, images, torch.tensor([0, 0, 1, 1])) == 0.75


def test_fid_zero_with_itself_and_closed_form_under_a_shift():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 6, generator=g, dtype=torch.float64) @ torch.randn(
        6, 6, generator=g, dtype=torch.float64
    )
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    shifts = [frechet_distance(a, a + d) for d in (0.1, 0.5, 1.0)]
    assert shifts == pytest.approx([6 * 0.01, 6 * 0.25, 6 * 1.0], rel=1e-6)  # ‖δ‖² (equal covariances)
    b = torch.randn(300, 6, generator=g, dtype=torch.float64) * 2 + 1
    ca, cb = np.cov(a.numpy().T), np.cov(b.numpy().T)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum().item() + np.trace(
        ca + cb - 2 * scipy.linalg.sqrtm(ca @ cb).real
    )
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)
    with pytest.raises(ValueError, match="frechet_distance"):
        frechet_distance(a, b[:, :3])


def test_evaluate_generation_shapes(tiny_model):
    real = datasets.load("synthetic", shape=(1, 8, 8), num_classes=3, n=30).train
    m = evaluate_generation(tiny_model, ArgmaxJudge(), real, forget_classes=[1], per_class=4, steps=2)
    assert m.images.shape == (3, 4, 1, 8, 8) and m.forget_classes == (1,)
    assert 0.0 <= m.ua <= 1.0 and 0.0 <= m.remain_acc <= 1.0 and m.fid >= 0
    assert set(m.per_class_acc) == {0, 1, 2} and "images" not in m.as_dict()
    assert evaluate_generation(tiny_model, ArgmaxJudge(), real, per_class=2, steps=1).ua is None
    with pytest.raises(ValueError, match="forget_classes"):
        evaluate_generation(tiny_model, ArgmaxJudge(), real, forget_classes=[3], per_class=2, steps=1)


def test_judge_labels_real_digits_and_is_cached(tmp_path):
    ds = datasets.load("digits")
    config = JudgeConfig(epochs=4)
    first = load_or_train_judge(ds, config, cache_dir=tmp_path)
    acc = class_accuracy(first.model, ds.test.x, ds.test.y)
    assert acc > 0.9
    second = load_or_train_judge(ds, config, cache_dir=tmp_path)
    assert second.from_cache and class_accuracy(second.model, ds.test.x, ds.test.y) == acc


def test_grid_png(tmp_path):
    before, after = torch.rand(3, 5, 1, 8, 8), torch.rand(3, 5, 1, 8, 8)
    assert tile(before, 4, gap=0).shape == (24, 32, 1)
    mosaic = tile(before, 4)
    assert mosaic.shape == (27, 36, 1) and torch.equal(mosaic[9:17, 18:26, 0], before[1, 2, 0])
    assert torch.all(mosaic[8, :, 0] == 0.5)
    path = save_grid(tmp_path / "grid.png", before, after, forget_classes=[1], columns=4)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stacked = stack_by_class(torch.rand(7, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2, 0]), 3)
    assert stacked.shape == (3, 2, 1, 8, 8)
    with pytest.raises(ValueError, match="images"):
        tile(torch.rand(3, 1, 8, 8), 2)
