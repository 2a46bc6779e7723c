import json

import numpy as np
import pytest
import torch

from unlearning import datasets, splits


@pytest.fixture(scope="module")
def digits():
    return datasets.load("digits")


@pytest.fixture(scope="module")
def split(digits):
    return splits.make_split(digits, seed=0)


def test_split_is_a_per_class_partition(digits, split):
    assert len(split.pool) + len(split.val) == len(digits.train)
    both = torch.cat([split.pool_index, split.val_index])
    assert torch.equal(both.sort().values, torch.arange(len(digits.train)))
    for c in range(10):
        n_c = int((digits.train.y == c).sum())
        assert int((split.val.y == c).sum()) == round(0.1 * n_c)
    assert torch.equal(split.pool.x, digits.train.x[split.pool_index])
    assert split.test is digits.test


def test_split_is_seeded(digits, split):
    assert torch.equal(splits.make_split(digits, 0).val_index, split.val_index)
    assert not torch.equal(splits.make_split(digits, 1).val_index, split.val_index)


def test_random_forget_fraction(split):
    idx = splits.forget_indices("random:0.1", split.pool, seed=0)
    assert idx.dtype == torch.int64 and idx.numel() == round(0.1 * len(split.pool))
    assert torch.unique(idx).numel() == idx.numel() and int(idx.max()) < len(split.pool)
    assert torch.equal(idx, splits.forget_indices("random:0.1", split.pool, seed=0))
    assert not torch.equal(idx, splits.forget_indices("random:0.1", split.pool, seed=1))
    assert splits.forget_indices("random:0.5", split.pool, seed=0).numel() == round(0.5 * len(split.pool))


@pytest.mark.parametrize("spec", ["random:0", "random:1", "random:1.5", "random:-0.1", "random:abc"])
def test_bad_fractions(split, spec):
    with pytest.raises(ValueError, match="fraction"):
        splits.forget_indices(spec, split.pool, seed=0)


@pytest.mark.parametrize("spec", ["random", "everything:1", "class:", "0.1"])
def test_bad_specs(split, spec):
    with pytest.raises(ValueError, match="random:FRACTION"):
        splits.forget_indices(spec, split.pool, seed=0)


def test_class_wise_forget_and_test_set_drops_the_class(split):
    idx = splits.forget_indices("class:3", split.pool, seed=0)
    assert torch.equal(idx, (split.pool.y == 3).nonzero().squeeze(1))
    task = splits.make_task(split, "class:3", num_classes=10, seed=0)
    assert task.forget_class == 3
    assert bool((task.forget.y == 3).all()) and not bool((task.retain.y == 3).any())
    assert not bool((task.test.y == 3).any())
    assert len(task.test) == len(split.test) - int((split.test.y == 3).sum())
    assert len(task.val) == len(split.val)


@pytest.mark.parametrize("spec", ["class:10", "class:-1"])
def test_class_not_in_data(split, spec):
    with pytest.raises(ValueError, match="not in the data"):
        splits.forget_indices(spec, split.pool, seed=0)


def test_random_task_keeps_the_whole_test_set(split):
    task = splits.make_task(split, "random:0.1", num_classes=10, seed=0)
    assert task.forget_class is None and len(task.test) == len(split.test)
    assert len(task.forget) + len(task.retain) == len(split.pool)


@pytest.mark.parametrize("suffix", [".json", ".npy", ".pt", ".txt", "-result.json"])
def test_indices_file_round_trip(tmp_path, split, suffix):
    idx = torch.tensor([5, 1, 42, 7])
    path = tmp_path / f"forget{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(idx.tolist()))
    elif suffix == "-result.json":
        splits.save_indices(path, idx, method="ft", objective=1.5)
        assert json.loads(path.read_text())["method"] == "ft"
    elif suffix == ".npy":
        np.save(path, idx.numpy())
    elif suffix == ".pt":
        torch.save(idx, path)
    else:
        path.write_text("5 1\n42, 7\n")
    got = splits.forget_indices(f"indices:{path}", split.pool, seed=0)
    assert got.tolist() == [1, 5, 7, 42]
    task = splits.make_task(split, f"indices:{path}", num_classes=10)
    assert torch.equal(task.forget.x, split.pool.x[[1, 5, 7, 42]])


def test_indices_errors(tmp_path, split):
    n = len(split.pool)
    bad = {
        "range.json": ([0, n], "out of range"),
        "neg.json": ([-1, 2], "out of range"),
        "rep.json": ([3, 3], "repeated"),
        "empty.json": ([], "non-empty"),
        "float.json": ([1.5], "integers"),
        "obj.json": ({"idx": [1]}, "indices"),
    }
    for name, (content, message) in bad.items():
        (tmp_path / name).write_text(json.dumps(content))
        with pytest.raises(ValueError, match=message):
            splits.forget_indices(f"indices:{tmp_path / name}", split.pool, seed=0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        splits.forget_indices(f"indices:{tmp_path / 'nope.json'}", split.pool, seed=0)
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(ValueError, match=".json, .npy, .pt or .txt"):
        splits.forget_indices(f"indices:{tmp_path / 'x.csv'}", split.pool, seed=0)


def test_make_task_from_tensor(split):
    task = splits.make_task(split, torch.tensor([9, 3]), num_classes=10, seed=4, batch_size=32)
    assert task.forget_index.tolist() == [3, 9] and task.seed == 4 and task.batch_size == 32
    with pytest.raises(ValueError, match="out of range"):
        splits.make_task(split, torch.tensor([len(split.pool)]))
