"""Datasets: the embedded digits split, and the torchvision path on tiny fixtures in the real
on-disk formats (CIFAR-10 pickles, MNIST idx files, SVHN .mat), with no network."""
import hashlib
import pickle
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torchvision

from reprolib.data import DATASETS, DatasetUnavailableError, dataset_info, get_loaders


def test_digits_split_is_fixed_stratified_and_standardised():
    tr, va, te = get_loaders("digits", batch_size=64, seed=0)
    assert (len(tr.dataset), len(va.dataset), len(te.dataset)) == (1078, 359, 360)
    xs = tr.dataset.tensors[0]
    assert xs.shape[1:] == (1, 8, 8)
    assert abs(xs.mean().item()) < 1e-4 and abs(xs.std().item() - 1) < 1e-2
    for ds in (tr.dataset, va.dataset, te.dataset):  # stratified: every class 9-11 %
        counts = torch.bincount(ds.tensors[1], minlength=10).float() / len(ds)
        assert counts.min() > 0.085 and counts.max() < 0.115
    tr2, _, te2 = get_loaders("digits", batch_size=64, seed=5)
    assert torch.equal(te.dataset.tensors[0], te2.dataset.tensors[0])  # split independent of seed
    b1, b2 = next(iter(tr))[1], next(iter(tr2))[1]
    assert not torch.equal(b1, b2)  # shuffling depends on the seed
    b1_again = next(iter(get_loaders("digits", batch_size=64, seed=0)[0]))[1]
    assert torch.equal(b1, b1_again)


def test_unknown_dataset_lists_names():
    with pytest.raises(ValueError, match=r"cifar10.*digits.*mnist.*svhn"):
        get_loaders("imagenet")
    with pytest.raises(ValueError, match="unknown dataset"):
        dataset_info("cifar100")


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def make_cifar10(root, monkeypatch, n_per_batch=4, n_test=6):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = []
    for name, n in [(f"data_batch_{i}", n_per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, n).tolist()}
        (folder / name).write_bytes(pickle.dumps(entry))
        files.append([name, _md5(folder / name)])
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    cls = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", files[:5])
    monkeypatch.setattr(cls, "test_list", files[5:])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": _md5(folder / "batches.meta")})


def make_mnist(root, n_train=30, n_test=10):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in [("train", n_train), ("t10k", n_test)]:
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + labels.tobytes())


def make_svhn(root, monkeypatch, n_train=30, n_test=10):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    split_list = {}
    for split, n in [("train", n_train), ("test", n_test)]:
        path = root / f"{split}_32x32.mat"
        scipy.io.savemat(path, {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
                                "y": rng.integers(1, 11, (n, 1)).astype(np.uint8)})
        split_list[split] = ["unused://", path.name, _md5(path)]
    monkeypatch.setattr(torchvision.datasets.SVHN, "split_list", {**torchvision.datasets.SVHN.split_list, **split_list})


@pytest.mark.parametrize("name", ["cifar10", "mnist", "svhn"])
def test_torchvision_datasets_from_disk(name, tmp_path, monkeypatch):
    {"cifar10": lambda: make_cifar10(tmp_path, monkeypatch), "mnist": lambda: make_mnist(tmp_path),
     "svhn": lambda: make_svhn(tmp_path, monkeypatch)}[name]()
    info = DATASETS[name]
    tr, va, te = get_loaders(name, root=tmp_path, batch_size=8, download=False)
    n_train = 20 if name == "cifar10" else 30
    assert len(tr.dataset) + len(va.dataset) == n_train and len(va.dataset) == n_train // 10
    x, y = next(iter(tr))
    assert x.shape[1:] == (info.in_channels, info.image_size, info.image_size) and x.dtype == torch.float32
    assert y.min() >= 0 and y.max() <= 9
    xt, _ = next(iter(te))
    assert xt.shape[1:] == x.shape[1:]
    assert not set(tr.dataset.indices) & set(va.dataset.indices)


def test_offline_without_files_gives_clear_error(tmp_path):
    with pytest.raises(DatasetUnavailableError, match=rf"{tmp_path}.*dataset='digits'"):
        get_loaders("cifar10", root=tmp_path, download=False)


def test_failed_download_leaves_no_partial_files(tmp_path, monkeypatch):
    def fail(url, download_root, **kwargs):
        (Path(download_root) / "cifar-10-python.tar.gz").write_bytes(b"partial")
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", fail)
    root = tmp_path / "data"
    with pytest.raises(DatasetUnavailableError, match=r"could not be downloaded.*dataset='digits'"):
        get_loaders("cifar10", root=root, download=True)
    assert list(root.iterdir()) == []
