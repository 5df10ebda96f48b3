"""Datasets as ``(train, val, test)`` PyTorch loaders.

* ``digits`` (default, offline): scikit-learn's bundled 1,797 handwritten digits, 1×8×8 pixels
  with values 0..16. A fixed stratified split (60 % train, 20 % val, 20 % test, the same for
  every seed), standardised with the training set's mean and standard deviation.
* ``cifar10``, ``svhn``, ``mnist``: torchvision datasets under ``root`` (downloaded when online),
  with the usual augmentation on the training set (random crop with 4-pixel padding, and a
  horizontal flip for CIFAR-10) and a fixed validation split held out of the training set.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from .validate import check_bool, check_int

__all__ = ["DATASETS", "DatasetInfo", "dataset_info", "get_loaders", "DatasetUnavailableError"]


@dataclass(frozen=True)
class DatasetInfo:
    """Shape of a dataset's samples."""

    name: str
    in_channels: int
    image_size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    val_size: int  # examples held out of the training set

    def model_kwargs(self) -> dict[str, int]:
        """The keyword arguments :func:`reprolib.models.build_model` needs."""
        return {"in_channels": self.in_channels, "num_classes": self.num_classes, "image_size": self.image_size}


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", 1, 8, 10, (), (), 0),
    "mnist": DatasetInfo("mnist", 1, 28, 10, (0.1307,), (0.3081,), 5000),
    "cifar10": DatasetInfo("cifar10", 3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 5000),
    "svhn": DatasetInfo("svhn", 3, 32, 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), 5000),
}


class DatasetUnavailableError(RuntimeError):
    """A torchvision dataset is neither on disk nor downloadable."""


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name``; a ``ValueError`` lists the known names."""
    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name]


def _digits_splits() -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    idx = np.arange(len(y))
    # Fixed split (random_state=0), stratified by class: 60 / 20 / 20.
    train_idx, rest = train_test_split(idx, test_size=0.4, stratify=y, random_state=0)
    val_idx, test_idx = train_test_split(rest, test_size=0.5, stratify=y[rest], random_state=0)
    x = x.astype(np.float32).reshape(-1, 1, 8, 8)
    mean, std = x[train_idx].mean(), x[train_idx].std()
    x = (x - mean) / std
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    return tuple(TensorDataset(xt[i], yt[i]) for i in (train_idx, val_idx, test_idx))  # type: ignore[return-value]


def _torchvision_sets(name: str, root: Path, download: bool, augment: bool) -> tuple[Dataset, Dataset, Dataset]:
    import torchvision
    from torchvision import transforms as T

    info = DATASETS[name]
    norm = [T.ToTensor(), T.Normalize(info.mean, info.std)]
    aug: list = [T.RandomCrop(info.image_size, padding=4)] if augment else []
    if augment and name == "cifar10":
        aug.append(T.RandomHorizontalFlip())
    train_tf, test_tf = T.Compose(aug + norm), T.Compose(norm)

    def make(train: bool, transform, where: Path, dl: bool) -> Dataset:
        if name == "cifar10":
            return torchvision.datasets.CIFAR10(where, train=train, transform=transform, download=dl)
        if name == "mnist":
            return torchvision.datasets.MNIST(where, train=train, transform=transform, download=dl)
        return torchvision.datasets.SVHN(where, split="train" if train else "test", transform=transform, download=dl)

    def load(train: bool, transform) -> Dataset:
        try:
            return make(train, transform, root, False)
        except (RuntimeError, FileNotFoundError, OSError) as missing:
            if not download:
                raise DatasetUnavailableError(
                    f"{name} is not in {root.resolve()} and download=False. Put the files there, "
                    f"or use dataset='digits', which ships with scikit-learn."
                ) from missing
        # Download into a private folder and move it into place only when complete, so an
        # interrupted or failed download leaves no half-written files under ``root``.
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-download-", dir=root))
        try:
            make(train, transform, staging, True)
            for item in staging.iterdir():
                target = root / item.name
                if not target.exists():
                    shutil.move(str(item), target)
        except Exception as err:  # network errors come in many types (URLError, OSError, ...)
            raise DatasetUnavailableError(
                f"{name} is not in {root.resolve()} and could not be downloaded ({err}). "
                f"On an offline machine copy the files into {root.resolve()}, or use "
                f"dataset='digits', which ships with scikit-learn."
            ) from err
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return make(train, transform, root, False)

    train_full, train_plain, test = load(True, train_tf), load(True, test_tf), load(False, test_tf)
    n = len(train_full)
    val_size = min(info.val_size, n // 10)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()  # fixed split
    return Subset(train_full, perm[val_size:]), Subset(train_plain, perm[:val_size]), test


def get_loaders(
    name: str = "digits",
    *,
    batch_size: int = 128,
    root: str | Path = "data",
    seed: int = 0,
    download: bool = True,
    augment: bool = True,
    num_workers: int = 0,
    eval_batch_size: int = 512,
) -> tuple[DataLoader, DataLoader, DataLoader]:
    """Training, validation and test loaders of dataset ``name``.

    Args:
        name: ``"digits"`` (offline), ``"cifar10"``, ``"svhn"`` or ``"mnist"``.
        batch_size: training batch size; ``eval_batch_size`` for validation and test.
        root: folder of the torchvision datasets (ignored for ``digits``).
        seed: seeds the training loader's shuffling (the split itself is fixed).
        download: fetch a missing torchvision dataset; offline, a :class:`DatasetUnavailableError`
            names the folder and suggests ``"digits"``.
        augment: random crops/flips on the training set of the torchvision datasets.

    The training loader shuffles and drops nothing; validation and test keep their order.
    """
    dataset_info(name)
    check_int("batch_size", batch_size, low=1)
    check_int("eval_batch_size", eval_batch_size, low=1)
    check_int("seed", seed, low=0)
    check_int("num_workers", num_workers, low=0)
    check_bool("download", download)
    check_bool("augment", augment)
    if not isinstance(root, (str, Path)):
        raise TypeError(f"root must be a folder path (str or pathlib.Path), got {root!r} ({type(root).__name__})")
    if name == "digits":
        train, val, test = _digits_splits()
    else:
        train, val, test = _torchvision_sets(name, Path(root), download, augment)
    gen = torch.Generator().manual_seed(seed)
    kw = {"num_workers": num_workers, "pin_memory": torch.cuda.is_available()}
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True, generator=gen, **kw),
        DataLoader(val, batch_size=eval_batch_size, **kw),
        DataLoader(test, batch_size=eval_batch_size, **kw),
    )
