"""On-disk cache of trained models, keyed by a hash of their full configuration.

Key: ``sha256(canonical JSON of config)``. The config holds everything that determines the weights:
dataset and options, split seed, model and options, recipe, training seed, augmentation, the forget set (for
Retrain), a fingerprint of the training data, the device type and the torch version. An entry is two files
written atomically: ``<kind>-<key>.pt`` (the ``state_dict``) and ``<kind>-<key>.json`` (the config and the
training time in seconds). Location: the ``cache_dir`` argument, else ``$WORSTFORGET_CACHE``, else
``~/.cache/worstforget``; models live in its ``models/`` folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .io import write_atomic, write_json

FORMAT_VERSION = 1


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else ``$WORSTFORGET_CACHE``, else ``~/.cache/worstforget``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("WORSTFORGET_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "worstforget"


def fingerprint(*tensors: Tensor) -> str:
    """SHA-256 of the tensors' shapes, dtypes and bytes (on CPU)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().to("cpu").contiguous()
        h.update(f"{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def config_key(config: dict) -> str:
    """SHA-256 of the canonical JSON of ``config`` plus the torch version and the cache format."""
    full = {**config, "torch": torch.__version__, "format": FORMAT_VERSION}
    return hashlib.sha256(json.dumps(full, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Trained:
    """A trained model; ``seconds`` is the wall-clock training time (measured when it was trained, also when
    loaded from the cache); ``from_cache`` says whether this call loaded it."""

    model: nn.Module
    seconds: float
    from_cache: bool
    path: Path | None
    key: str


def load_or_train(
    kind: str,
    config: dict,
    build: Callable[[], nn.Module],
    fit: Callable[[nn.Module], nn.Module],
    *,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> Trained:
    """Load the model of ``config`` from the cache, or ``fit(build())``, time it and store it.

    ``build()`` must return a fresh model on the target device; loading copies the stored
    ``state_dict`` into it. A corrupt entry is ignored and overwritten.
    """
    key = config_key({"kind": kind, **config})
    folder = cache_root(cache_dir) / "models"
    weights, meta = folder / f"{kind}-{key[:24]}.pt", folder / f"{kind}-{key[:24]}.json"
    model = build()
    if use_cache and weights.is_file() and meta.is_file():
        try:
            info = json.loads(meta.read_text())
            state = torch.load(weights, map_location=_device_of(model), weights_only=True)
            model.load_state_dict(state)
            model.eval()
            return Trained(model, float(info["seconds"]), True, weights, key)
        except (OSError, EOFError, ValueError, KeyError, RuntimeError, pickle.UnpicklingError):
            model = build()
    start = time.perf_counter()
    model = fit(model)
    seconds = time.perf_counter() - start
    model.eval()
    if not use_cache:
        return Trained(model, seconds, False, None, key)
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    write_atomic(weights, lambda f: torch.save(state, f))
    write_json(
        meta, {"kind": kind, "key": key, "seconds": seconds, "torch": torch.__version__, "config": config}
    )
    return Trained(model, seconds, False, weights, key)


def _device_of(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")
