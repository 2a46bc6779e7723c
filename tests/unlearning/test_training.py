import json

import pytest
import torch

from unlearning import cache, setup, training
from unlearning.datasets import load
from unlearning.metrics import accuracy
from unlearning.setup import prepare
from unlearning.splits import make_split


def test_digits_mlp_reaches_95_percent(digits_random):
    p = digits_random
    assert accuracy(p.original, p.split.test) >= 95.0
    assert accuracy(p.original, p.split.pool) >= 99.0
    assert p.recipe == training.default_recipe("digits", "mlp")


def test_train_is_seeded_and_in_place():
    ds = load("digits")
    split = make_split(ds, 0)
    recipe = training.Recipe(epochs=2, lr=0.05, batch_size=128)
    outs = []
    for _ in range(2):
        model = setup.models.build(
            "mlp", image_shape=ds.image_shape, num_classes=10, mean=ds.mean, std=ds.std
        )
        before = [p.clone() for p in model.parameters()]
        assert training.train(model, split.pool, recipe, seed=3) is model
        assert not torch.equal(before[0], next(model.parameters()))
        outs.append(model.state_dict())
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])


def test_recipe_validation_and_defaults():
    with pytest.raises(ValueError, match="epochs"):
        training.Recipe(epochs=0, lr=0.1, batch_size=8)
    with pytest.raises(ValueError, match="lr"):
        training.Recipe(epochs=1, lr=-1, batch_size=8)
    with pytest.raises(ValueError, match="schedule"):
        training.Recipe(epochs=1, lr=0.1, batch_size=8, schedule="linear")
    cifar = training.default_recipe("cifar10", "resnet18")
    assert (cifar.epochs, cifar.lr, cifar.batch_size, cifar.momentum, cifar.weight_decay) == (
        182,
        0.1,
        256,
        0.9,
        5e-4,
    )
    assert cifar.schedule == "cosine"
    with pytest.raises(ValueError, match="no default recipe"):
        training.default_recipe("digits", "transformer")


def test_cache_loads_instead_of_retraining(tmp_path, monkeypatch):
    calls = []
    real_train = training.train

    def counting_train(*args, **kwargs):
        calls.append(kwargs.get("description"))
        return real_train(*args, **kwargs)

    monkeypatch.setattr(training, "train", counting_train)
    recipe = training.Recipe(epochs=3, lr=0.1, batch_size=64)
    first = prepare("digits", "mlp", "random:0.1", seed=0, cache_dir=tmp_path, recipe=recipe)
    assert calls == ["original"] and not first.original_from_cache
    files = sorted((tmp_path / "models").iterdir())
    assert [f.suffix for f in files] == [".json", ".pt"]
    mtimes = [f.stat().st_mtime_ns for f in files]
    meta = json.loads(files[0].read_text())
    assert meta["kind"] == "original" and meta["config"]["recipe"]["epochs"] == 3 and meta["seconds"] > 0

    second = prepare("digits", "mlp", "random:0.1", seed=0, cache_dir=tmp_path, recipe=recipe)
    assert calls == ["original"] and second.original_from_cache
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    assert second.original_seconds == first.original_seconds
    s1, s2 = first.original.state_dict(), second.original.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)

    # Retrain is cached too, and keyed by the forget set
    m1, t1 = second.retrain()
    assert calls == ["original", "retrain"] and second.retrain_from_cache is False
    m2, t2 = second.retrain()
    assert calls == ["original", "retrain"] and second.retrain_from_cache is True and t1 == t2
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    third = prepare("digits", "mlp", "random:0.2", seed=0, cache_dir=tmp_path, recipe=recipe)
    assert third.original_from_cache  # the original does not depend on the forget set
    third.retrain()
    assert calls == ["original", "retrain", "retrain"]

    # any change of configuration trains again
    prepare("digits", "mlp", "random:0.1", seed=1, cache_dir=tmp_path, recipe=recipe)
    prepare("digits", "mlp", "random:0.1", seed=0, cache_dir=tmp_path, recipe=recipe.replace(lr=0.05))
    assert calls.count("original") == 3
    # and use_cache=False neither reads nor writes
    n_files = len(list((tmp_path / "models").iterdir()))
    prepare("digits", "mlp", "random:0.1", seed=0, cache_dir=tmp_path, recipe=recipe, use_cache=False)
    assert calls.count("original") == 4 and len(list((tmp_path / "models").iterdir())) == n_files


def test_cache_root_and_key(tmp_path, monkeypatch):
    monkeypatch.setenv("WORSTFORGET_CACHE", str(tmp_path / "env"))
    assert cache.cache_root() == tmp_path / "env"
    assert cache.cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("WORSTFORGET_CACHE")
    assert str(cache.cache_root()).endswith(".cache/worstforget")
    assert cache.config_key({"a": 1, "b": 2}) == cache.config_key({"b": 2, "a": 1})
    assert cache.config_key({"a": 1}) != cache.config_key({"a": 2})


def test_corrupt_cache_entry_is_retrained(tmp_path):
    recipe = training.Recipe(epochs=1, lr=0.1, batch_size=128)
    prepare("digits", "mlp", "random:0.1", cache_dir=tmp_path, recipe=recipe)
    weights = next((tmp_path / "models").glob("*.pt"))
    weights.write_bytes(b"not a checkpoint")
    again = prepare("digits", "mlp", "random:0.1", cache_dir=tmp_path, recipe=recipe)
    assert not again.original_from_cache
    assert torch.load(weights, weights_only=True)  # rewritten


def test_prepare_class_wise_and_device_errors(digits_class):
    task = digits_class.task
    assert task.forget_class == 3 and not bool((task.test.y == 3).any())
    assert task.num_classes == 10 and task.batch_size == digits_class.recipe.batch_size
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            setup.resolve_device("cuda")
    with pytest.raises(ValueError, match="not understood"):
        setup.resolve_device("gpu0")
    with pytest.raises(ValueError, match="unknown model"):
        prepare("digits", "vgg")


def test_synthetic_resnet_smoke(tmp_path):
    recipe = training.Recipe(epochs=1, lr=0.05, batch_size=32)
    p = prepare(
        "synthetic",
        "resnet18",
        "random:0.1",
        cache_dir=tmp_path,
        recipe=recipe,
        model_opts={"width": 4},
        dataset_opts={"shape": (3, 16, 16), "n": 80, "num_classes": 4},
    )
    assert p.augment is not None and p.task.augment is p.augment
    assert p.original(p.task.test.x[:3]).shape == (3, 4)
