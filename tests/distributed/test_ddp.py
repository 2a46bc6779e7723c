"""DDP training (`unlearning.distributed.ddp`, ``worstforget train``): two gloo processes under torchrun
train the digits MLP to the one-process weights (same global batch; to 1e-6), rank 0 writes the model into
the cache once, and later runs load it from there."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from unlearning.cli import main
from unlearning.setup import prepare
from unlearning.training import default_recipe

EPOCHS = 5  # the digits recipe (batch 64, lr 0.1, momentum, weight decay, cosine) shortened


@pytest.fixture(scope="module")
def ddp_cache(tmp_path_factory):
    """A cache filled by ``torchrun --nproc_per_node 2 -m unlearning.cli train`` (gloo, one thread each)."""
    cache = tmp_path_factory.mktemp("ddp-cache")
    argv = ["--dataset", "digits", "--model", "mlp", "--seed", "0", "--train-epochs", str(EPOCHS)]
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"),
        *("-m", "unlearning.cli", "train", *argv, "--cache-dir", str(cache)),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORSTFORGET_PROGRESS": "0"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("original model trained") == 1 and "on 2 processes" in done.stdout
    return cache


def test_two_gloo_ranks_give_the_one_process_weights_once_in_the_cache(ddp_cache, tmp_path):
    files = sorted(p.name for p in (ddp_cache / "models").iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".pt")  # one entry
    recipe = default_recipe("digits", "mlp").replace(epochs=EPOCHS)
    alone = prepare("digits", "mlp", seed=0, recipe=recipe, cache_dir=tmp_path)  # one process, trained
    assert not alone.original_from_cache
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == files  # the same cache key
    shared = prepare("digits", "mlp", seed=0, recipe=recipe, cache_dir=ddp_cache)
    assert shared.original_from_cache  # later runs pick the DDP model up
    one, two = alone.original.state_dict(), shared.original.state_dict()
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-6)


def test_train_finds_the_model_in_the_cache_and_trains_retrain(ddp_cache, capsys):
    argv = ["train", "--seed", "0", "--train-epochs", str(EPOCHS), "--cache-dir", str(ddp_cache)]
    assert main(argv) == 0
    assert "original model found in the cache" in capsys.readouterr().out
    assert main([*argv, "--retrain", "--forget", "class:3"]) == 0  # one process: Retrain on D_r
    assert "Retrain model trained in" in capsys.readouterr().out
    recipe = default_recipe("digits", "mlp").replace(epochs=EPOCHS)
    p = prepare("digits", "mlp", "class:3", seed=0, recipe=recipe, cache_dir=ddp_cache)
    p.retrain()
    assert p.retrain_from_cache
    assert len(list((ddp_cache / "models").glob("*.pt"))) == 2


def test_train_flags_are_checked(capsys):
    assert main(["train", "--no-cache"]) == 2
    assert "argument --no-cache" in capsys.readouterr().err
    assert main(["train", "--train-epochs", "0"]) == 2
    assert "argument --train-epochs" in capsys.readouterr().err
    assert main(["train", "--model", "vit"]) == 2
    assert "argument --model" in capsys.readouterr().err


def test_sharded_training_refuses_a_best_validation_recipe():
    """DDP keeps the last epoch; a recipe keeping the best validation epoch is refused before any work."""
    from torch import nn

    from unlearning.data_types import ArrayData
    from unlearning.training import Recipe, train_sharded

    recipe = Recipe(epochs=1, lr=0.1, batch_size=4, checkpoint="best_val")
    data = ArrayData(torch.zeros(8, 2), torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="recipe checkpoint 'best_val'"):
        train_sharded(nn.Linear(2, 2), data, recipe, seed=0, rank=0, world_size=2)
