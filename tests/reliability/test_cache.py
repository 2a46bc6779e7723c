"""The model cache never uses an entry it cannot trust: swapped, zeroed, NaN-poisoned or truncated weights,
an edited meta file ("seconds": null, not an object) is reported once, naming the file, and retrained; an
entry written before hashes existed is adopted (issue 14)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from unlearning.cache import CacheWarning, load_or_train


def _train(seed: int):
    calls = []

    def build():
        torch.manual_seed(0)
        return nn.Linear(3, 2)

    def fit(model):
        calls.append(seed)
        with torch.no_grad():
            model.weight.fill_(float(seed))
        return model

    return build, fit, calls


def _entry(tmp_path, seed=1):
    build, fit, calls = _train(seed)
    first = load_or_train("toy", {"seed": seed}, build, fit, cache_dir=tmp_path)
    assert not first.from_cache and calls == [seed]
    meta = first.path.with_suffix(".json")
    assert len(json.loads(meta.read_text())["sha256"]) == 64  # the weights' hash is stored
    return first.path, meta


def _reload(tmp_path, seed=1):
    build, fit, calls = _train(seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trained = load_or_train("toy", {"seed": seed}, build, fit, cache_dir=tmp_path)
    messages = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
    return trained, calls, messages


def test_a_good_entry_is_used_without_a_word(tmp_path):
    _entry(tmp_path)
    trained, calls, messages = _reload(tmp_path)
    assert trained.from_cache and calls == [] and messages == []
    assert torch.equal(trained.model.weight, torch.full((2, 3), 1.0))


def _swap(weights, meta, tmp_path):
    other, _ = _entry(tmp_path, seed=7)  # another valid model's weights
    weights.write_bytes(other.read_bytes())


def _zero(weights, meta, tmp_path):
    weights.write_bytes(bytes(len(weights.read_bytes())))


def _truncate(weights, meta, tmp_path):
    weights.write_bytes(weights.read_bytes()[:40])


def _nan(weights, meta, tmp_path):
    state = torch.load(weights, weights_only=True)
    state["weight"][0, 0] = float("nan")
    torch.save(state, weights)


def _nan_with_matching_hash(weights, meta, tmp_path):
    import hashlib

    _nan(weights, meta, tmp_path)
    info = json.loads(meta.read_text())
    meta.write_text(json.dumps({**info, "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}))


def _edit_meta(**changes):
    def edit(weights, meta, tmp_path):
        meta.write_text(json.dumps({**json.loads(meta.read_text()), **changes}))

    return edit


def _drop_hash(weights, meta, tmp_path):
    info = json.loads(meta.read_text())
    del info["sha256"]
    meta.write_text(json.dumps(info))


def _meta_text(text):
    def edit(weights, meta, tmp_path):
        meta.write_text(text)

    return edit


def _delete_weights(weights, meta, tmp_path):
    weights.unlink()


@pytest.mark.parametrize(
    "tamper, why",
    [
        (_swap, "hash mismatch"),
        (_zero, "hash mismatch"),
        (_truncate, "hash mismatch"),
        (_nan, "hash mismatch"),
        (_nan_with_matching_hash, "NaN"),
        (_edit_meta(seconds=None), "'seconds': None"),
        (_edit_meta(seconds="fast"), "'seconds': 'fast'"),
        (_edit_meta(seconds=-3.0), "negative"),
        (_edit_meta(key="0" * 64), "key"),
        (_meta_text("[1, 2]"), "key"),
        (_meta_text(""), "unreadable"),
        (_delete_weights, "missing"),
    ],
)
def test_a_bad_entry_is_reported_once_naming_the_file_and_retrained(tmp_path, tamper, why):
    weights, meta = _entry(tmp_path)
    tamper(weights, meta, tmp_path)
    trained, calls, messages = _reload(tmp_path)
    assert not trained.from_cache and calls == [1]  # retrained, never used
    assert torch.equal(trained.model.weight, torch.full((2, 3), 1.0))
    assert len(messages) == 1 and str(weights) in messages[0] and why in messages[0], messages
    again, calls, messages = _reload(tmp_path)  # the entry was replaced: used, no second report
    assert again.from_cache and calls == [] and messages == []


def test_an_entry_without_a_hash_is_adopted_then_checked(tmp_path):
    weights, meta = _entry(tmp_path)
    _drop_hash(weights, meta, tmp_path)
    trained, calls, messages = _reload(tmp_path)
    assert trained.from_cache and calls == [] and messages == []  # loads and is finite: used
    assert len(json.loads(meta.read_text())["sha256"]) == 64  # and its hash recorded
    _zero(weights, meta, tmp_path)
    trained, calls, messages = _reload(tmp_path)
    assert not trained.from_cache and calls == [1] and "hash mismatch" in messages[0]


def test_prepare_retrains_a_swapped_original_to_the_same_weights(tmp_path):
    """`prepare` on an original model whose weights were replaced by another valid state (all zeros, same
    shapes) retrains it, bit-identical to a clean training, with one warning naming the file."""
    from unlearning.setup import prepare

    clean = prepare("digits", "mlp", "random:0.1", seed=0, cache_dir=tmp_path)
    weights = next((tmp_path / "models").glob("original-*.pt"))
    torch.save({k: torch.zeros_like(v) for k, v in clean.original.state_dict().items()}, weights)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = prepare("digits", "mlp", "random:0.1", seed=0, cache_dir=tmp_path)
    messages = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
    assert len(messages) == 1 and str(weights) in messages[0]
    assert not again.original_from_cache
    for a, b in zip(clean.original.state_dict().values(), again.original.state_dict().values()):
        assert torch.equal(a, b)
