import pytest
import torch

from unlearning.augment import default_augment, random_crop_flip


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_shape_and_seed_determinism():
    aug = random_crop_flip(4)
    x = torch.rand(16, 3, 32, 32)
    a, b, c = aug(x, _gen(0)), aug(x, _gen(0)), aug(x, _gen(1))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_flip_only_is_an_exact_mirror():
    x = torch.arange(2 * 1 * 3 * 4, dtype=torch.float32).view(2, 1, 3, 4)
    assert torch.equal(random_crop_flip(padding=0, flip=1.0)(x, _gen()), x.flip(-1))
    assert torch.equal(random_crop_flip(padding=0, flip=0.0)(x, _gen()), x)


def test_crop_is_a_window_of_the_zero_padded_image():
    p = 2
    x = torch.arange(1, 1 + 50 * 2 * 5 * 6, dtype=torch.float32).view(50, 2, 5, 6)
    out = random_crop_flip(padding=p, flip=0.0)(x, _gen(3))
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    offsets = set()
    for i in range(len(x)):
        hits = [
            (a, b)
            for a in range(2 * p + 1)
            for b in range(2 * p + 1)
            if torch.equal(out[i], padded[i, :, a : a + 5, b : b + 6])
        ]
        assert len(hits) == 1  # values are distinct, so exactly one window matches
        offsets.add(hits[0])
    assert len(offsets) > 10  # offsets vary over the batch (25 possible)


def test_hand_made_image():
    # a single bright pixel at (0, 0) of a 3x3 image, padding 1: its position moves by the crop offset
    x = torch.zeros(200, 1, 3, 3)
    x[:, 0, 0, 0] = 1.0
    out = random_crop_flip(padding=1, flip=0.5)(x, _gen(0))
    seen = set()
    for img in out:
        where = (img[0] == 1).nonzero().tolist()
        assert len(where) <= 1
        if where:
            seen.add(tuple(where[0]))
    # shift by (a-1, b-1) with a, b in {0,1,2}, optionally mirrored: columns 0..2, rows 0..1 reachable
    assert seen <= {(r, c) for r in (0, 1) for c in (0, 1, 2)} and (1, 2) in seen and (0, 0) in seen
    assert float(out.sum()) < 200  # some crops push the pixel out of frame


def test_defaults_per_dataset():
    assert default_augment("digits", (1, 8, 8)) is None
    assert default_augment("mnist5k", (1, 28, 28)) is None
    assert default_augment("cifar10", (3, 32, 32)) == random_crop_flip(4)
    with pytest.raises(ValueError, match="padding"):
        random_crop_flip(-1)
