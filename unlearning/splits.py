"""One explicit split per seed (train pool / validation / test) and forget sets drawn from that pool.

The published code (SalUn, Sparse, Worst-case) builds two splits with different seeds: the original model
is trained on the seed-1 pool while forget and retain sets are drawn from the seed-2 pool, so with default
arguments about 10% of the "forget" and "retain" images were never seen by the original model. Here one
`Split` serves both: the original model trains on exactly ``split.pool``, and D_f / D_r are positions in that
same pool.

Forget-set specs (``forget_indices``):

- ``random:F`` with F ∈ (0, 1): ``round(F · |pool|)`` positions drawn uniformly without replacement;
- ``class:K``: every pool example of class K (class-wise forgetting; the test set then drops class K);
- ``indices:FILE``: explicit positions in the pool, from a ``.json`` list (or an object with key
  ``"indices"``, e.g. a worst-case search result), a ``.npy``, ``.pt`` or ``.txt`` file of integers.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .data_types import ArrayData, Augment, Task
from .datasets import Dataset

# Offsets that keep the seeded streams of the split and of the forget set independent.
_SPLIT_STREAM = 1
_FORGET_STREAM = 2


def _generator(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(1_000_003 * int(seed) + 7919 * stream)


@dataclass(frozen=True)
class Split:
    """``pool`` (what the original model trains on), ``val`` (held out per class) and ``test``.

    ``pool_index`` and ``val_index`` are the rows' positions in ``dataset.train``.
    """

    pool: ArrayData
    val: ArrayData
    test: ArrayData
    pool_index: Tensor
    val_index: Tensor
    seed: int
    val_fraction: float
    num_classes: int


def make_split(dataset: Dataset, seed: int, val_fraction: float = 0.1) -> Split:
    """Hold out ``round(val_fraction · n_c)`` training examples of every class c as validation (seeded).

    The pool keeps the remaining training examples in their original order; the test set is the dataset's.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    y = dataset.train.y
    g = _generator(seed, _SPLIT_STREAM)
    is_val = torch.zeros(len(y), dtype=torch.bool)
    for c in range(dataset.num_classes):
        members = (y == c).nonzero().squeeze(1)
        take = int(round(val_fraction * members.numel()))
        is_val[members[torch.randperm(members.numel(), generator=g)[:take]]] = True
    pool_index = (~is_val).nonzero().squeeze(1)
    val_index = is_val.nonzero().squeeze(1)
    return Split(
        pool=dataset.train.subset(pool_index),
        val=dataset.train.subset(val_index),
        test=dataset.test,
        pool_index=pool_index,
        val_index=val_index,
        seed=seed,
        val_fraction=val_fraction,
        num_classes=dataset.num_classes,
    )


def parse_spec(spec: str) -> tuple[str, str]:
    """Split ``"kind:value"``; raises ``ValueError`` naming the accepted forms."""
    kind, sep, value = str(spec).partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in ("random", "class", "indices") or not value.strip():
        raise ValueError(f"forget set {spec!r} not understood: use random:FRACTION, class:K or indices:FILE")
    return kind, value.strip()


def forget_indices(spec: str, pool: ArrayData, seed: int) -> Tensor:
    """Sorted int64 positions in ``pool`` of the forget set described by ``spec`` (module docstring)."""
    kind, value = parse_spec(spec)
    n = len(pool)
    if kind == "random":
        try:
            fraction = float(value)
        except ValueError:
            raise ValueError(
                f"forget fraction must be a number in (0, 1), got {value!r} (e.g. random:0.1)"
            ) from None
        if not 0 < fraction < 1:
            raise ValueError(f"forget fraction must be in (0, 1), got {value} (e.g. random:0.1)")
        k = min(max(1, int(round(fraction * n))), n - 1)
        return torch.randperm(n, generator=_generator(seed, _FORGET_STREAM))[:k].sort().values
    if kind == "class":
        k = _parse_class(value)
        present = sorted(set(pool.y.tolist()))
        idx = (pool.y.cpu() == k).nonzero().squeeze(1)
        if idx.numel() == 0:
            raise ValueError(f"forget class {k} is not in the data: choose one of {present}")
        if idx.numel() == n:
            raise ValueError(f"forget class {k} is the whole pool: nothing would be retained")
        return idx
    index = load_indices(value)
    meta = indices_metadata(value)
    if meta:
        here = {"split_seed": int(seed), "pool_size": n}
        if made_for(meta).get("pool_sha256") is not None:
            here["pool_sha256"] = pool_fingerprint(pool)
        check_made_for(meta, here, source=value)
    return check_indices(index, n, source=value)


MADE_FOR_KEYS = ("dataset", "split_seed", "pool_size", "pool_sha256")


def pool_fingerprint(pool: ArrayData) -> str:
    """SHA-256 of the pool's inputs and labels (`unlearning.cache.fingerprint`): two pools agree only when
    they hold the same examples in the same order, so positions in one name the same examples in the other."""
    from .cache import fingerprint

    return fingerprint(pool.x, pool.y)


def data_fingerprint(pool: ArrayData, *, dataset: str | None = None, split_seed: int | None = None) -> dict:
    """What a forget-set file records about the data its positions index: ``{"dataset", "split_seed",
    "pool_size", "pool_sha256"}`` (`pool_fingerprint`); `check_made_for` compares it."""
    return {
        "dataset": dataset,
        "split_seed": None if split_seed is None else int(split_seed),
        "pool_size": len(pool),
        "pool_sha256": pool_fingerprint(pool),
    }


def made_for(meta: dict) -> dict:
    """The data a forget-set file (its JSON object ``meta``) was made for: its ``"fingerprint"`` entry, with
    ``config`` (``dataset``, ``split_seed``, ``pool_size``; older search results) filling gaps."""
    fp = meta.get("fingerprint") if isinstance(meta.get("fingerprint"), dict) else {}
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    return {k: fp.get(k, config.get(k)) for k in MADE_FOR_KEYS}


def _fix(fp: dict) -> str:
    """The flags that select the data ``fp`` describes."""
    known = [(flag, fp.get(key)) for flag, key in (("--dataset", "dataset"), ("--seed", "split_seed"))]
    flags = " ".join(f"{flag} {value}" for flag, value in known if value is not None)
    prefix = f"pass {flags} and" if flags else "pass"
    return f"{prefix} the --data-opt it was made with, or search again on this data"


def _describe(fp: dict) -> str:
    parts = [
        f"dataset {fp['dataset']}" if fp.get("dataset") else None,
        f"split seed {fp['split_seed']}" if fp.get("split_seed") is not None else None,
        f"a pool of {fp['pool_size']} examples" if fp.get("pool_size") is not None else None,
        f"pool fingerprint {str(fp['pool_sha256'])[:12]}" if fp.get("pool_sha256") else None,
    ]
    return ", ".join(p for p in parts if p) or "unknown data"


def check_made_for(meta: dict, here: dict, *, source: str) -> None:
    """``ValueError`` naming the fix unless the forget-set file ``source`` (JSON object ``meta``) was made for
    the data ``here`` describes (a `data_fingerprint`, possibly partial): every key both know must agree.
    Positions in a pool mean other examples under another dataset, split seed or data option."""
    want = made_for(meta)

    def differs(key: str) -> bool:
        a, b = want.get(key), here.get(key)
        return a is not None and b is not None and str(a) != str(b)

    if differs("dataset"):
        raise ValueError(
            f"forget indices file {source} was made for dataset {want['dataset']}, not {here['dataset']}: "
            f"pass --dataset {want['dataset']} (positions mean different examples in another dataset)"
        )
    if differs("split_seed"):
        made = want["split_seed"]
        raise ValueError(
            f"forget indices file {source} holds positions in the pool of split seed {made}, not "
            f"{here['split_seed']}: pass --seed {made} (positions mean other examples under another split)"
        )
    if differs("pool_size") or differs("pool_sha256"):
        what = (
            f"has {here['pool_size']} examples"
            if differs("pool_size")
            else f"holds other examples (fingerprint {str(here['pool_sha256'])[:12]})"
        )
        raise ValueError(
            f"forget indices file {source} was made for {_describe(want)}, but this pool {what}, so its "
            f"positions would name other examples: {_fix(want)}"
        )


def indices_metadata(path: str | os.PathLike) -> dict:
    """The other keys of a JSON object indices file (e.g. a worst-case search result: ``config``,
    ``classes``); empty for other files."""
    path = Path(path).expanduser()
    if path.suffix.lower() != ".json" or not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return raw if isinstance(raw, dict) else {}


def forget_class_of(spec: str) -> int | None:
    """The class K of a ``class:K`` spec, or of an indices file holding a class-wise search result of one
    class (its ``classes`` key); else None."""
    kind, value = parse_spec(spec)
    if kind == "class":
        return _parse_class(value)
    if kind == "indices":
        classes = indices_metadata(value).get("classes")
        if classes:
            if len(classes) > 1:
                raise ValueError(
                    f"forget indices file {value} holds the whole classes {classes}; class-wise tasks "
                    "drop one class from the test set: search with a budget of one class, or forget one "
                    "class:K at a time"
                )
            return int(classes[0])
    return None


def _parse_class(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"forget class must be an integer label, got {value!r} (e.g. class:3)") from None


def load_indices(path: str | os.PathLike) -> Tensor:
    """Integer positions from a ``.json`` (a list, or an object with key ``"indices"``), ``.npy``, ``.pt`` or
    ``.txt`` (whitespace- or comma-separated) file. Raises ``FileNotFoundError`` / ``ValueError``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"forget indices file {str(path)!r} does not exist: pass indices:PATH to a file"
        )
    suffix = path.suffix.lower()
    if suffix not in (".json", ".npy", ".pt", ".txt"):
        raise ValueError(f"forget indices file {path} must end in .json, .npy, .pt or .txt")
    try:
        if suffix == ".json":
            raw = json.loads(path.read_text())
        elif suffix == ".npy":
            values = np.load(path, allow_pickle=False)
        elif suffix == ".pt":
            values = torch.load(path, map_location="cpu", weights_only=True)
            values = values.numpy() if isinstance(values, Tensor) else np.asarray(values)
        else:
            values = np.asarray([int(t) for t in path.read_text().replace(",", " ").split()])
    except (ValueError, OSError, UnicodeDecodeError, pickle.UnpicklingError, RuntimeError) as err:
        # json.JSONDecodeError is a ValueError; so are a .txt word and a .npy of pickled objects
        message = " ".join(str(err).split())
        raise ValueError(
            f"forget indices file {path} is not an indices file ({message}): pass a worst-case search "
            "result (worst_case.json) or a list of pool positions"
        ) from None
    if suffix == ".json":
        if isinstance(raw, dict):
            if "indices" not in raw:
                raise ValueError(
                    f"forget indices file {path} is not a search result or indices file: a JSON object "
                    "needs the key 'indices' holding a list of positions (worstforget search writes one)"
                )
            raw = raw["indices"]
        _check_json_positions(raw, path)
        try:
            values = np.asarray(raw)
        except ValueError as err:
            raise ValueError(f"{path}: forget indices must be a 1-D list of integers ({err})") from None
    values = np.asarray(values)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"{path}: forget indices must be a non-empty 1-D list of integers")
    if values.dtype.kind == "f" and np.all(values == np.round(values)):
        values = values.astype(np.int64)
    if values.dtype.kind not in "iu":
        raise ValueError(f"{path}: forget indices must be integers, got dtype {values.dtype}")
    return torch.from_numpy(values.astype(np.int64))


def _check_json_positions(raw: Any, path: Path) -> None:
    """A JSON list of positions holds integers only: ``true``/``false`` (which numpy reads as 1/0), strings
    and nested lists are refused, naming the file and the first bad entry."""
    if not isinstance(raw, list):
        raise ValueError(f"{path}: forget indices must be a 1-D list of integers, got {type(raw).__name__}")
    for i, v in enumerate(raw):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(
                f"{path}: forget indices must be integers, but entry {i} is {json.dumps(v)}: "
                "write pool positions such as [3, 17, 42]"
            )


def check_indices(index: Tensor, n: int, *, source: str = "indices") -> Tensor:
    """Validate positions in a pool of ``n`` (in range, distinct, non-empty, not all); sorted."""
    index = torch.as_tensor(index, dtype=torch.int64).flatten()
    if index.numel() == 0:
        raise ValueError(f"forget indices from {source} are empty")
    lo, hi = int(index.min()), int(index.max())
    if lo < 0 or hi >= n:
        raise ValueError(
            f"forget indices from {source} out of range: need 0 <= i < {n} (pool size), got {lo}..{hi}"
        )
    if torch.unique(index).numel() != index.numel():
        raise ValueError(f"forget indices from {source} contain repeated positions")
    if index.numel() == n:
        raise ValueError(f"forget indices from {source} cover the whole pool: nothing would be retained")
    return index.sort().values


def save_indices(path: str | os.PathLike, index: Tensor, **extra) -> Path:
    """Write positions as ``{"indices": [...], **extra}`` JSON (atomically); `forget_indices` reads it."""
    from .io import write_json

    return write_json(path, {"indices": [int(i) for i in index.tolist()], **extra})


def make_task(
    split: Split,
    forget: str | Tensor,
    *,
    num_classes: int | None = None,
    seed: int = 0,
    augment: Augment | None = None,
    batch_size: int = 128,
    name: str = "",
) -> Task:
    """The `Task` for forgetting ``forget`` (a spec string or positions in ``split.pool``).

    Class-wise (``class:K``): ``forget_class = K`` and the test set drops class K, as the papers do (the
    validation set is kept whole).
    """
    k = num_classes if num_classes is not None else split.num_classes
    if isinstance(forget, str):
        index = forget_indices(forget, split.pool, seed)
        forget_class = forget_class_of(forget)
        label = name or forget
    else:
        index = check_indices(forget, len(split.pool))
        forget_class = None
        label = name or f"indices[{index.numel()}]"
    test = split.test
    if forget_class is not None:
        test = test.subset((test.y != forget_class).nonzero().squeeze(1).to(test.x.device))
    return Task(
        pool=split.pool,
        forget_index=index,
        val=split.val,
        test=test,
        num_classes=k,
        augment=augment,
        batch_size=batch_size,
        seed=seed,
        forget_class=forget_class,
        name=label,
    )
