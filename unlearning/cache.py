"""On-disk cache of trained models, keyed by a hash of their full configuration.

Key: ``sha256(canonical JSON of config)``. The config holds everything that determines the weights:
dataset and options, split seed, model and options, recipe, training seed, augmentation, the forget set (for
Retrain), a fingerprint of the training data, the device type and the torch version. An entry is two files
written atomically: ``<kind>-<key>.pt`` (the ``state_dict``) and ``<kind>-<key>.json`` (the config, the
training time in seconds and ``sha256``, the SHA-256 of the ``.pt`` file's bytes). An entry is used only when
its meta is an object with this key, a finite ``seconds`` >= 0 and the hash of the weights file, and the
weights load into the model and are finite; any other entry (swapped, truncated, zeroed or NaN weights, an
edited meta) is reported by one `CacheWarning` naming the file and retrained (the new entry replaces it),
never used. An entry written before hashes were stored (no ``sha256``) that loads and is finite is adopted:
its hash is recorded, so it is checked from then on (retraining every older entry, diffusion models
included, would cost hours). Location: the ``cache_dir`` argument, else
``$WORSTFORGET_CACHE``, else ``~/.cache/worstforget``; models live in its ``models/`` folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .io import clean_debris, write_atomic, write_json

FORMAT_VERSION = 1


class CacheWarning(UserWarning):
    """A model-cache entry that cannot be trusted was found: it is retrained and replaced."""


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
    ``state_dict`` into it. An entry that fails its checks (module docstring) is reported once by a
    `CacheWarning` naming its file, retrained and overwritten.
    """
    key = config_key({"kind": kind, **config})
    folder = cache_root(cache_dir) / "models"
    weights, meta = folder / f"{kind}-{key[:24]}.pt", folder / f"{kind}-{key[:24]}.json"
    model = build()
    if use_cache and (weights.exists() or meta.exists()):
        clean_debris(folder, f"{kind}-{key[:24]}.*")
        try:
            seconds = _load_entry(model, weights, meta, key)
            model.eval()
            return Trained(model, seconds, True, weights, key)
        except _BadEntry as bad:
            # attributed to the entry's file (line 0 has no source to echo): one line on stderr
            message = f"model cache entry {weights}: {bad}; retraining it"
            warnings.warn_explicit(message, CacheWarning, filename=str(weights), lineno=0)
            model = build()
    start = time.perf_counter()
    model = fit(model)
    seconds = time.perf_counter() - start
    model.eval()
    if not use_cache:
        return Trained(model, seconds, False, None, key)
    buffer = io.BytesIO()
    torch.save({k: v.detach().to("cpu") for k, v in model.state_dict().items()}, buffer)
    data = buffer.getvalue()
    write_atomic(weights, lambda f: f.write(data))
    write_json(
        meta,
        {
            "kind": kind,
            "key": key,
            "seconds": seconds,
            "torch": torch.__version__,
            "sha256": hashlib.sha256(data).hexdigest(),
            "config": config,
        },
    )
    return Trained(model, seconds, False, weights, key)


class _BadEntry(Exception):
    """Why a cache entry is not used (the message completes "model cache entry FILE: ...")."""


def _load_entry(model: nn.Module, weights: Path, meta: Path, key: str) -> float:
    """Load the entry into ``model`` after checking it (module docstring); its training seconds. `_BadEntry`
    saying what is wrong otherwise."""
    try:
        info = json.loads(meta.read_text())
        data = weights.read_bytes()
    except FileNotFoundError as err:
        raise _BadEntry(f"incomplete ({Path(err.filename).name} is missing)") from None
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _BadEntry(f"meta file {meta.name} is unreadable ({' '.join(str(err).split())})") from None
    if not isinstance(info, dict) or info.get("key") != key:
        raise _BadEntry(f"meta file {meta.name} is not this entry's (no matching key)")
    seconds = info.get("seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        raise _BadEntry(f"meta file {meta.name} has no valid training time ('seconds': {seconds!r})")
    if seconds < 0:
        raise _BadEntry(f"meta file {meta.name} has a negative training time ({seconds})")
    digest = hashlib.sha256(data).hexdigest()
    legacy = (
        "sha256" not in info
    )  # written before hashes were stored: adopted below if it loads and is finite
    if not legacy and info["sha256"] != digest:
        raise _BadEntry("weights do not match their meta file (hash mismatch: swapped, edited or cut short)")
    try:
        state = torch.load(io.BytesIO(data), map_location=_device_of(model), weights_only=True)
        model.load_state_dict(state)
    except (OSError, EOFError, ValueError, KeyError, TypeError, RuntimeError, pickle.UnpicklingError) as err:
        raise _BadEntry(f"weights do not load into the model ({' '.join(str(err).split())[:200]})") from None
    bad = [n for n, p in model.state_dict().items() if p.is_floating_point() and not torch.isfinite(p).all()]
    if bad:
        raise _BadEntry(f"weights hold NaN or inf ({', '.join(bad[:3])})")
    if legacy:
        write_json(meta, {**info, "sha256": digest})
    return float(seconds)


def _device_of(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")
