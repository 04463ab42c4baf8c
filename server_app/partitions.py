"""A built-in data set's partitions written as image folders, exactly partition i of N as the simulation
hands it out (same data set, seed and ``partition.*`` settings from conf/): what genfl-export-partitions
writes for edge nodes, and what the benchmarks (bench/) prepare their nodes' data with."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from genfl_protocol.contract import ClientConfig
from server_app.config import load_config


def export(out: Path, num_partitions: int, only: list[int] | None, overrides: list[str]) -> dict[int, list[int]]:
    """Write the partitions; returns each written partition's per-class counts."""
    from genfl_torch.classes import class_names
    from genfl_torch.imagefolder import write_image_folder
    from genfl_torch.partition import client_partition

    cfg = load_config(overrides)
    # The exact data spec the server sends its clients.
    spec = ClientConfig.from_run_config(OmegaConf.to_container(cfg, resolve=True)).data_spec()
    names = class_names(cfg.dataset.name)
    written = {}
    for partition_id in only if only is not None else range(num_partitions):
        data = client_partition(spec, partition_id, num_partitions)
        written[partition_id] = write_image_folder(out / f"partition-{partition_id}", data, names)
    return written
