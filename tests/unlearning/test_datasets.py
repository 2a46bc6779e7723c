import io
import pickle
import tarfile

import numpy as np
import pytest
import torch

from unlearning import datasets


def test_digits_shapes_ranges_and_stratified_test():
    ds = datasets.load("digits")
    assert ds.name == "digits" and ds.num_classes == 10 and ds.image_shape == (1, 8, 8)
    assert ds.train.x.shape[1:] == (1, 8, 8) and ds.train.x.dtype == torch.float32
    assert len(ds.train) + len(ds.test) == 1797
    for part in (ds.train, ds.test):
        assert float(part.x.min()) >= 0.0 and float(part.x.max()) <= 1.0
    # 20% of every class in the carved test set
    for c in range(10):
        n_c = int((ds.train.y == c).sum() + (ds.test.y == c).sum())
        assert int((ds.test.y == c).sum()) == round(0.2 * n_c)
    assert len(ds.mean) == len(ds.std) == 1
    assert abs(ds.mean[0] - float(ds.train.x.mean())) < 1e-5


def test_loading_is_deterministic_and_seeded():
    a, b, c = datasets.load("digits"), datasets.load("digits"), datasets.load("digits", seed=1)
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.train.y, b.train.y)
    assert not torch.equal(a.test.y, c.test.y)


def test_mnist5k():
    ds = datasets.load("mnist5k")
    assert ds.image_shape == (1, 28, 28) and len(ds.train) + len(ds.test) == 5000
    assert len(ds.test) == 1000 and float(ds.train.x.max()) == 1.0 and float(ds.train.x.min()) == 0.0
    assert torch.bincount(ds.test.y).tolist() == [100] * 10


def test_synthetic_any_shape_and_seed():
    ds = datasets.load("synthetic", shape="3x16x12", num_classes=4, n=200)
    assert ds.image_shape == (3, 16, 12) and ds.train.x.shape[1:] == (3, 16, 12)
    assert ds.num_classes == 4 and len(ds.train) + len(ds.test) == 200 and len(ds.mean) == 3
    assert float(ds.train.x.min()) >= 0 and float(ds.train.x.max()) <= 1
    again = datasets.load("synthetic", shape=(3, 16, 12), num_classes=4, n=200)
    assert torch.equal(ds.train.x, again.train.x)
    other = datasets.load("synthetic", seed=1, shape=(3, 16, 12), num_classes=4, n=200)
    assert not torch.equal(ds.train.x, other.train.x)
    # class-conditional: nearest class mean classifies the test set well
    means = torch.stack([ds.train.x[ds.train.y == c].mean(0) for c in range(4)])
    pred = torch.cdist(ds.test.x.flatten(1), means.flatten(1)).argmin(1)
    assert (pred == ds.test.y).float().mean() > 0.9


def test_unknown_name_and_bad_options():
    with pytest.raises(ValueError, match="digits, mnist5k, synthetic, cifar10"):
        datasets.load("imagenet")
    with pytest.raises(ValueError, match="shape"):
        datasets.load("synthetic", shape="3xaxb")
    with pytest.raises(ValueError, match="no option 'bogus'; its options: test_fraction"):
        datasets.load("digits", bogus=1)


def _write_tiny_cifar(path, per_batch=20, n_test=30):
    """A CIFAR-10 python archive in the official layout, written here without the library's help."""
    rng = np.random.RandomState(0)
    batches = {}
    with tarfile.open(path, "w:gz") as tar:
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        for name in names:
            n = n_test if name == "test_batch" else per_batch
            data = rng.randint(0, 256, size=(n, 3072)).astype(np.uint8)
            labels = [int(v) for v in rng.randint(0, 10, size=n)]
            batches[name] = (data, labels)
            blob = pickle.dumps({b"batch_label": name.encode(), b"labels": labels, b"data": data}, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
        meta = pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]})
        info = tarfile.TarInfo("cifar-10-batches-py/batches.meta")
        info.size = len(meta)
        tar.addfile(info, io.BytesIO(meta))
    return batches


def test_cifar10_from_tiny_archive(tmp_path):
    batches = _write_tiny_cifar(tmp_path / "cifar-10-python.tar.gz")
    ds = datasets.load("cifar10", tmp_path, download=False)
    assert ds.image_shape == (3, 32, 32) and len(ds.train) == 100 and len(ds.test) == 30
    assert ds.mean == datasets.CIFAR10_MEAN and ds.std == datasets.CIFAR10_STD
    data, labels = batches["data_batch_2"]
    # row 20 is the first image of batch 2; channel-major (R plane, G plane, B plane), row-major pixels
    expected = torch.from_numpy(data[0].reshape(3, 32, 32).astype(np.float32) / 255.0)
    assert torch.allclose(ds.train.x[20], expected)
    assert ds.train.y[20].item() == labels[0]
    test_data, test_labels = batches["test_batch"]
    assert ds.test.y.tolist() == test_labels
    assert torch.allclose(ds.test.x[-1, 1, 0, :3], torch.tensor(test_data[-1, 1024:1027] / 255.0).float())


def test_cifar10_extracted_folder_and_limit(tmp_path):
    archive = tmp_path / "a.tar.gz"
    _write_tiny_cifar(archive)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "data", filter="data")
    ds = datasets.load("cifar10", tmp_path / "data", download=False, limit=50)
    assert len(ds.train) <= 60 and len(ds.test) == 30


def test_cifar10_missing_file_says_where_to_put_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-10-python\.tar\.gz.*" + str(tmp_path)):
        datasets.load("cifar10", tmp_path, download=False)
