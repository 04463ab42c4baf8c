"""Image classification data sets as in-memory tensors: a federation part, a held-out test part.

`digits` (scikit-learn, offline) is the embedded default; `cifar10`/`cifar100` use torchvision's
on-disk format (``cifar-10-batches-py`` / ``cifar-100-python``), downloaded when online.
Images stay uint8 (CIFAR) or float (digits) and become float [0, 1] per batch in `as_float`.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATASETS = ("digits", "cifar10", "cifar100")

_CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
}


class DatasetUnavailableError(RuntimeError):
    """The data set's files are missing and cannot be downloaded; the message says what to do."""


@dataclass(frozen=True)
class Split:
    """Images (N, C, H, W) uint8 or float in [0, 1] and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices) -> "Split":
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return Split(self.images[idx], self.labels[idx])


def as_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float [0, 1]; float images pass through."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def load_splits(cfg) -> dict[str, Split]:
    """``{"federation": Split, "test": Split}`` (+ ``"public"`` for digits) for the data set config ``cfg``."""
    if cfg.name == "digits":
        from genfl_torch.digits import digits_split_indices, load_digits_arrays  # scikit-learn: not on edge nodes

        images, labels = load_digits_arrays()
        parts = digits_split_indices(cfg.split_seed, cfg.test_fraction, cfg.public_fraction)
        return {name: Split(images[idx], labels[idx]) for name, idx in parts.items()}
    if cfg.name in _CIFAR_FILES:
        return {"federation": _load_cifar(cfg, train=True), "test": _load_cifar(cfg, train=False)}
    raise ValueError(f"dataset.name: unknown data set {cfg.name!r}; choose one of {', '.join(DATASETS)}")


def _load_cifar(cfg, train: bool) -> Split:
    folder, train_files, test_files, label_key = _CIFAR_FILES[cfg.name]
    root = Path(cfg.root).expanduser()
    files = [root / folder / f for f in (train_files if train else test_files)]
    if not all(f.is_file() for f in files) and cfg.download:
        _download_cifar(cfg.name, root)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DatasetUnavailableError(
            f"{cfg.name} not found: missing {', '.join(missing)}. Put torchvision's python-format archive "
            f"extracted at {root / folder} (e.g. run once online with dataset.download=true, or copy the "
            f"folder there and set dataset.root)."
        )
    images, labels = [], []
    for f in files:
        with open(f, "rb") as fh:
            batch = pickle.load(fh, encoding="bytes")
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(batch[label_key])
    return Split(torch.from_numpy(np.concatenate(images)), torch.as_tensor(labels, dtype=torch.long))


def _download_cifar(name: str, root: Path) -> None:
    """torchvision's downloader (checksummed); offline it fails fast and we explain instead."""
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        cls(root=str(root), train=True, download=True)
    except Exception as err:  # URLError, socket errors, HTTP errors: all mean "not reachable"
        raise DatasetUnavailableError(
            f"could not download {name} to {root} ({type(err).__name__}: {err}). When offline, copy "
            f"the extracted {_CIFAR_FILES[name][0]}/ folder into {root} or set dataset.root to its parent."
        ) from err
