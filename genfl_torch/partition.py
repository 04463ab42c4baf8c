"""Dirichlet label partitioning (flwr-datasets' partitioner) and label histograms.

A partition is a sorted array of indices into the federation split; the seed fixes it, and every
federation sample lands in exactly one partition.
"""

from __future__ import annotations

import functools
import gc
import multiprocessing
import sys
import warnings
from types import SimpleNamespace

import numpy as np
import torch

from genfl_torch.data import Split, load_splits


class PartitionError(ValueError):
    """The partition settings cannot be met for this data set; the message names the key to change."""


def dirichlet_partitions(
    labels: np.ndarray, num_partitions: int, alpha: float, seed: int, min_partition_size: int, self_balancing: bool
) -> list[np.ndarray]:
    """Index arrays, one per partition, drawn with Dirichlet(alpha) class proportions."""
    # Imported here: an edge node that reads its own images never needs them (see requirements/edge.txt).
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner

    table = Dataset.from_dict({"label": np.asarray(labels), "index": np.arange(len(labels))})
    partitioner = DirichletPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        alpha=alpha,
        min_partition_size=min_partition_size,
        self_balancing=self_balancing,
        shuffle=True,
        seed=seed,
    )
    partitioner.dataset = table
    try:
        with warnings.catch_warnings():  # its per-attempt retry warnings; failure is reported below
            warnings.simplefilter("ignore", UserWarning)
            return [np.sort(partitioner.load_partition(i).with_format("numpy")["index"]) for i in range(num_partitions)]
    except ValueError as err:
        raise PartitionError(
            f"partition: cannot split {len(labels)} samples into {num_partitions} Dirichlet(alpha={alpha}) "
            f"partitions of at least {min_partition_size} samples ({err}); lower "
            "partition.min_partition_size, set partition.self_balancing=true, raise partition.alpha "
            "or use fewer clients (federation.num_clients)"
        ) from err


def label_histogram(labels, num_classes: int) -> list[int]:
    """Per-class sample counts, length ``num_classes``."""
    return np.bincount(np.asarray(labels), minlength=num_classes).astype(int).tolist()


def _nested(flat: dict, prefix: str) -> SimpleNamespace:
    return SimpleNamespace(**{k[len(prefix) :]: v for k, v in flat.items() if k.startswith(prefix)})


# Distinct data specs kept per process. A simulation worker serves one run (one spec); the bound only
# stops a long-lived process from piling up federation splits (CIFAR's is ~150 MB of images).
SPECS_KEPT = 2


def _hashable(spec: dict) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in spec.items()))


def _in_child(function, *args, unless_loaded: str):
    """``function(*args)`` in a forked child process, its (NumPy) result sent back, so that the libraries it
    imports never load into this long-lived client process: scikit-learn with scipy and pandas (digits),
    datasets with pyarrow (the Dirichlet split) cost a simulation worker ~150 MB PSS for the whole run, for
    work done once. Runs here instead if ``unless_loaded`` is already imported, or where fork is missing."""
    if (unless_loaded in sys.modules or "fork" not in multiprocessing.get_all_start_methods()
            or multiprocessing.current_process().daemon):
        return function(*args)
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    gc.freeze()  # the child's garbage collections then leave the inherited objects' pages shared
    try:
        child = context.Process(target=_child, args=(send, function, args), daemon=True)
        child.start()
    finally:
        gc.unfreeze()
    send.close()
    try:
        ok, value = receive.recv()
    except EOFError:  # it died without an answer (killed, out of memory)
        child.join()
        raise RuntimeError(f"loading the data in a child process failed: it exited with code {child.exitcode}") from None
    finally:
        receive.close()
    child.join()
    if not ok:
        raise value
    return value


def _child(send, function, args) -> None:
    try:
        answer = (True, function(*args))
    except Exception as err:  # raised again in the parent (PartitionError's message names the key to change)
        answer = (False, err)
    try:
        send.send(answer)
    except Exception as err:  # an exception that does not pickle: its text
        send.send((False, RuntimeError(f"{type(answer[1]).__name__}: {answer[1]}" if not answer[0] else repr(err))))
    send.close()


def _federation_arrays(dataset_items: tuple) -> tuple[np.ndarray, np.ndarray]:
    torch.set_num_threads(1)  # a forked child: no OpenMP thread pool
    split = load_splits(SimpleNamespace(**dict(dataset_items)))["federation"]
    return split.images.numpy(), split.labels.numpy()


@functools.lru_cache(maxsize=SPECS_KEPT)
def _federation(dataset_items: tuple) -> Split:
    """The federation split, loaded once per process per data set (not once per message)."""
    dataset = SimpleNamespace(**dict(dataset_items))
    if dataset.name != "digits":  # read from files with NumPy alone
        return load_splits(dataset)["federation"]
    images, labels = _in_child(_federation_arrays, dataset_items, unless_loaded="sklearn.model_selection")
    return Split(torch.from_numpy(images), torch.from_numpy(labels))


@functools.lru_cache(maxsize=SPECS_KEPT)
def _split(spec_items: tuple, num_partitions: int) -> tuple[np.ndarray, ...]:
    """The whole federation's Dirichlet split (index arrays, a few bytes per sample), computed once
    per spec: a worker serving many nodes then takes each node's partition as a cheap subset."""
    spec = dict(spec_items)
    dataset, part = _nested(spec, "dataset."), _nested(spec, "partition.")
    labels = _federation(_hashable(vars(dataset))).labels.numpy()
    return tuple(_in_child(dirichlet_partitions, labels, num_partitions, part.alpha, spec["seed"],
                           part.min_partition_size, part.self_balancing, unless_loaded="flwr_datasets.partitioner"))


def client_partition(spec: dict, partition_id: int, num_partitions: int) -> Split:
    """The training data of client ``partition_id`` of ``num_partitions``, from a flat data spec
    (``dataset.*``, ``partition.*``, ``seed`` keys, as the server sends it). The split of the whole
    federation is cached per process, because a simulated client process serves many rounds and
    nodes (far more than any per-partition cache could hold)."""
    if not 0 <= partition_id < num_partitions:
        raise PartitionError(f"partition-id {partition_id} is outside 0..{num_partitions - 1}")
    spec_items = _hashable(spec)
    dataset_items = _hashable(vars(_nested(spec, "dataset.")))
    return _federation(dataset_items).subset(_split(spec_items, num_partitions)[partition_id])
