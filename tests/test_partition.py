"""Dirichlet partitioning and label histograms: coverage, determinism, skew, clear errors."""

from pathlib import Path

import numpy as np
import pytest
import torch

from genfl_torch.data import load_splits
from genfl_torch.partition import PartitionError, client_partition, dirichlet_partitions, label_histogram


@pytest.fixture(scope="module")
def federation():
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "dataset" / "digits.yaml")
    return load_splits(cfg)["federation"]


@pytest.fixture(scope="module")
def federation_labels(federation):
    return federation.labels.numpy()


def _partitions(labels, alpha, seed=0, n=20):
    return dirichlet_partitions(labels, n, alpha, seed, min_partition_size=2, self_balancing=True)


def test_every_sample_is_in_exactly_one_partition(federation_labels):
    parts = _partitions(federation_labels, 0.3)
    together = np.concatenate(parts)
    assert len(parts) == 20
    assert len(together) == len(federation_labels)
    assert np.array_equal(np.sort(together), np.arange(len(federation_labels)))


def test_same_seed_same_partitions_other_seed_different(federation_labels):
    a, b, c = _partitions(federation_labels, 0.3, 0), _partitions(federation_labels, 0.3, 0), _partitions(federation_labels, 0.3, 1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def _mean_dominant_share(labels, parts):
    shares = [np.bincount(labels[p], minlength=10).max() / len(p) for p in parts if len(p)]
    return float(np.mean(shares))


def test_lower_alpha_gives_more_label_skew(federation_labels):
    skew = {alpha: _mean_dominant_share(federation_labels, _partitions(federation_labels, alpha)) for alpha in (0.1, 1.0, 100.0)}
    assert skew[0.1] > skew[1.0] > skew[100.0]
    assert skew[100.0] < 0.3  # near-IID: no class dominates a client
    assert skew[0.1] > 0.5  # strongly non-IID: most of a client's data is one class


def test_impossible_partitioning_is_a_config_error(federation_labels):
    with pytest.raises(PartitionError, match="partition.min_partition_size"):
        dirichlet_partitions(federation_labels, 100, 0.1, 0, min_partition_size=20, self_balancing=False)


def test_label_histogram_counts_each_class():
    assert label_histogram(np.array([0, 2, 2, 9]), 10) == [1, 0, 2, 0, 0, 0, 0, 0, 0, 1]


def test_client_partition_matches_the_partitioner_and_its_histogram(federation_labels):
    spec = {"seed": 0, "dataset.name": "digits", "dataset.split_seed": 0, "dataset.test_fraction": 0.2,
            "dataset.public_fraction": 0.2, "dataset.mean": [0.3], "partition.alpha": 0.3,
            "partition.min_partition_size": 2, "partition.self_balancing": True}
    expected = _partitions(federation_labels, 0.3)[3]
    data = client_partition(spec, 3, 20)
    assert data.labels.tolist() == federation_labels[expected].tolist()
    assert sum(label_histogram(data.labels.numpy(), 10)) == len(expected)
    with pytest.raises(PartitionError, match="partition-id 20"):
        client_partition(spec, 20, 20)


def test_client_partition_splits_the_federation_once_for_all_its_partitions(federation, monkeypatch):
    """A simulation worker serves many nodes in turn: the Dirichlet split must not be redone per node."""
    import genfl_torch.partition as partition

    spec = {"seed": 11, "dataset.name": "digits", "dataset.split_seed": 0, "dataset.test_fraction": 0.2,
            "dataset.public_fraction": 0.2, "dataset.mean": [0.3], "dataset.std": [0.38], "partition.alpha": 0.1,
            "partition.min_partition_size": 2, "partition.self_balancing": True}  # a spec no other test uses
    real, real_load = partition.dirichlet_partitions, partition.load_splits
    splits, loads = [], []
    monkeypatch.setattr(partition, "dirichlet_partitions", lambda *a, **k: splits.append(1) or real(*a, **k))
    monkeypatch.setattr(partition, "load_splits", lambda *a, **k: loads.append(1) or real_load(*a, **k))
    monkeypatch.setattr(partition, "_in_child", lambda function, *a, unless_loaded: function(*a))  # counted here
    n = 12
    served = [client_partition(spec, i % n, n) for i in range(2 * n)]  # round-robin over 12 nodes, twice
    assert (len(splits), len(loads)) == (1, 1)
    parts = real(federation.labels.numpy(), n, 0.1, 11, min_partition_size=2, self_balancing=True)
    for i, data in enumerate(served):
        expected = federation.subset(parts[i % n])
        assert torch.equal(data.images, expected.images) and torch.equal(data.labels, expected.labels)
