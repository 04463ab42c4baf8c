"""Data sets: the digits split and torchvision's CIFAR on-disk format (tiny files written here)."""

import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from genfl_torch.data import DatasetUnavailableError, as_float, load_splits
from genfl_torch.digits import digits_split_indices


def test_digits_split_is_disjoint_and_complete():
    parts = digits_split_indices(split_seed=0, test_fraction=0.2, public_fraction=0.2)
    sets = [set(parts[k].tolist()) for k in ("federation", "public", "test")]
    assert sum(len(s) for s in sets) == 1797
    assert len(set.union(*sets)) == 1797
    assert len(parts["test"]) == 360 and len(parts["public"]) == 360


def test_digits_images_are_8x8_in_unit_range(make_config):
    splits = load_splits(make_config().dataset)
    images = splits["federation"].images
    assert images.shape[1:] == (1, 8, 8)
    assert images.min() >= 0 and images.max() <= 1
    assert set(splits["test"].labels.tolist()) == set(range(10))


def _write_cifar10(root, per_batch=6):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, per_batch).tolist()}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh)
    return folder


def test_cifar10_reads_torchvision_format(tmp_path, make_config):
    folder = _write_cifar10(tmp_path)
    cfg = make_config("strategy=base_only", "dataset=cifar10", f"dataset.root={tmp_path}", "dataset.download=false").dataset
    splits = load_splits(cfg)
    assert splits["federation"].images.shape == (30, 3, 32, 32)
    assert splits["federation"].images.dtype == torch.uint8
    assert len(splits["test"]) == 6
    with open(folder / "data_batch_2", "rb") as fh:
        raw = pickle.load(fh, encoding="bytes")
    # Row-major CHW, as torchvision stores it: pixel (c=1, y=2, x=3) of the 1st image of batch 2.
    assert splits["federation"].images[6, 1, 2, 3] == raw[b"data"][0][1024 + 2 * 32 + 3]
    assert splits["federation"].labels[6:12].tolist() == raw[b"labels"]
    assert as_float(splits["test"].images).max() <= 1.0


def test_cifar100_uses_fine_labels(tmp_path, make_config):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test"):
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": np.zeros((4, 3072), np.uint8), b"fine_labels": [99, 5, 0, 42], b"coarse_labels": [1, 1, 1, 1]}, fh)
    cfg = make_config("strategy=base_only", "dataset=cifar100", f"dataset.root={tmp_path}", "dataset.download=false").dataset
    assert load_splits(cfg)["federation"].labels.tolist() == [99, 5, 0, 42]


def test_missing_cifar_says_which_files_to_put_where(tmp_path, make_config):
    cfg = make_config("strategy=base_only", "dataset=cifar10", f"dataset.root={tmp_path}", "dataset.download=false").dataset
    with pytest.raises(DatasetUnavailableError, match="cifar-10-batches-py/data_batch_1"):
        load_splits(cfg)


def test_unknown_dataset_name_is_rejected():
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        load_splits(SimpleNamespace(name="mnist"))
