"""On-disk cache of generated images, keyed by everything that determines them.

The key hashes the generator's fingerprint, the plan, the seed: a repeated run or a sweep that asks
for the same images loads them instead of running the model. Images are stored as uint8, and a fresh
generation is quantised the same way, so a hit returns exactly what the miss returned.
An unreadable entry (truncated, corrupt, wrong contents) is regenerated with a warning; concurrent
writers of one key (parallel sweep jobs, sharded generation) each write their own temporary file and
the last atomic rename wins, with identical contents.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from generation.base import ImageGenerator

logger = logging.getLogger(__name__)


def cache_key(generator: ImageGenerator, plan: Mapping[int, int], seed: int) -> str:
    payload = {"generator": generator.fingerprint(), "plan": {str(k): int(v) for k, v in sorted(plan.items())}, "seed": seed}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def cache_path(generator: ImageGenerator, plan: Mapping[int, int], seed: int, cache_dir: str | os.PathLike) -> Path:
    return Path(cache_dir).expanduser() / f"{cache_key(generator, plan, seed)}.safetensors"


def quantise(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> uint8, the storage format of every image set in this project."""
    return images.clamp(0, 1).mul(255).round().to(torch.uint8)


def read_entry(path: Path, plan: Mapping[int, int]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The entry's (images, labels), or None with a warning when it cannot be trusted."""
    try:
        tensors = load_file(str(path))
        images, labels = tensors["images"], tensors["labels"]
    except (SafetensorError, OSError, KeyError, ValueError) as err:
        logger.warning("image cache entry %s is unreadable (%s: %s); regenerating it", path, type(err).__name__, err)
        return None
    expected = sum(int(v) for v in plan.values())
    if images.dtype != torch.uint8 or images.dim() != 4 or len(images) != len(labels) or len(labels) > expected:
        logger.warning("image cache entry %s does not hold the images of its plan; regenerating it", path)
        return None
    return images, labels


def write_entry(path: Path, images: torch.Tensor, labels: torch.Tensor, description: dict) -> None:
    """Atomically write an entry: a private temporary file per writer, then one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".tmp")
    os.close(fd)
    try:
        save_file({"images": images.contiguous(), "labels": labels.contiguous()}, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)  # atomic: a reader sees the old entry, the new one, or none
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".json.tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(description, default=str, indent=1))
    os.replace(tmp, path.with_suffix(".json"))


def generate_cached(
    generator: ImageGenerator, plan: Mapping[int, int], seed: int, cache_dir: str | os.PathLike | None
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(uint8 images, labels, cache_hit). ``cache_dir`` None disables the cache."""
    path = cache_path(generator, plan, seed, cache_dir) if cache_dir else None
    if path is not None and path.is_file():
        entry = read_entry(path, plan)
        if entry is not None:
            return (*entry, True)
    images, labels = generator.generate(plan, seed=seed)
    images = quantise(images)
    if path is not None:
        write_entry(path, images, labels, {"fingerprint": generator.fingerprint(), "plan": dict(plan), "seed": seed})
    return images, labels, False
