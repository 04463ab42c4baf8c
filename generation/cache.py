"""On-disk cache of generated images, keyed by everything that determines them.

The key hashes the generator's fingerprint, the plan, the seed: a repeated run or a sweep that asks
for the same images loads them instead of running the model. Images are stored as uint8, and a fresh
generation is quantised the same way, so a hit returns exactly what the miss returned.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from generation.base import ImageGenerator


def cache_key(generator: ImageGenerator, plan: Mapping[int, int], seed: int) -> str:
    payload = {"generator": generator.fingerprint(), "plan": {str(k): int(v) for k, v in sorted(plan.items())}, "seed": seed}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def quantise(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> uint8, the storage format of every image set in this project."""
    return images.clamp(0, 1).mul(255).round().to(torch.uint8)


def generate_cached(
    generator: ImageGenerator, plan: Mapping[int, int], seed: int, cache_dir: str | os.PathLike | None
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(uint8 images, labels, cache_hit). ``cache_dir`` None disables the cache."""
    path = Path(cache_dir).expanduser() / f"{cache_key(generator, plan, seed)}.safetensors" if cache_dir else None
    if path is not None and path.is_file():
        tensors = load_file(str(path))
        return tensors["images"], tensors["labels"], True
    images, labels = generator.generate(plan, seed=seed)
    images = quantise(images)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"images": images.contiguous(), "labels": labels.contiguous()}, str(tmp))
        os.replace(tmp, path)  # atomic: a crashed run never leaves a half-written entry
        path.with_suffix(".json").write_text(json.dumps({"fingerprint": generator.fingerprint(), "plan": dict(plan), "seed": seed}, default=str, indent=1))
    return images, labels, False
