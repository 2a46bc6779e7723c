"""Fixtures for the unlearning tests: a temporary model cache (never the user's), one CPU thread per test
(tiny models train several times faster on one thread on a shared machine), prepared digits experiments."""

from __future__ import annotations

import contextlib

import pytest
import torch


@contextlib.contextmanager
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """A model cache shared by the whole test session (so each model trains once), in a temporary folder."""
    return tmp_path_factory.mktemp("worstforget-cache")


@pytest.fixture(autouse=True)
def _isolated(cache_dir, monkeypatch):
    """Point ``$WORSTFORGET_CACHE`` at the temporary cache and train on one thread."""
    monkeypatch.setenv("WORSTFORGET_CACHE", str(cache_dir))
    monkeypatch.setenv("WORSTFORGET_PROGRESS", "0")
    with one_thread():
        yield


@pytest.fixture(scope="session")
def digits_random(cache_dir):
    """`prepare("digits", "mlp", "random:0.1", seed=0)` with the session cache."""
    from unlearning.setup import prepare

    with one_thread():
        return prepare("digits", "mlp", "random:0.1", seed=0, cache_dir=cache_dir)


@pytest.fixture(scope="session")
def digits_class(cache_dir):
    """`prepare("digits", "mlp", "class:3", seed=0)` with the session cache."""
    from unlearning.setup import prepare

    with one_thread():
        return prepare("digits", "mlp", "class:3", seed=0, cache_dir=cache_dir)
