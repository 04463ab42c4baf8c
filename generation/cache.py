"""On-disk cache of generated images, keyed by everything that determines them.

The key hashes the generator's fingerprint, the plan, the seed: a repeated run or a sweep that asks
for the same images loads them instead of running the model. Images are stored as uint8, and a fresh
generation is quantised the same way, so a hit returns exactly what the miss returned.
An entry is used only if it holds exactly what its plan asks for, class by class (less only where
the generator itself came up short, which the entry records); an unreadable or mismatching entry
(truncated, corrupt, wrong contents) is regenerated with a warning naming it. Concurrent writers of
one key (parallel sweep jobs, sharded generation) each write their own temporary file and the last
atomic rename wins, with identical contents.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from generation.base import ImageGenerator

logger = logging.getLogger(__name__)

RECORD_KEY = "genfl-cache"  # safetensors metadata: the plan an entry was made for and its declared shortfall


def runtime_fingerprint(device: torch.device | str, dtype: torch.dtype) -> dict:
    """The part of every generator's fingerprint that the machine decides: the same weights and seed
    give other images on another device type, dtype or torch/diffusers version (other kernels), so
    a CPU run must not load a GPU run's entry."""
    return {
        "device_type": torch.device(device).type,
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "diffusers": importlib.metadata.version("diffusers"),  # without importing it: a cache hit loads no model code
    }


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks (a few ms for the offline generator's weights)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_key(generator: ImageGenerator, plan: Mapping[int, int], seed: int) -> str:
    payload = {"generator": generator.fingerprint(), "plan": {str(k): int(v) for k, v in sorted(plan.items())}, "seed": seed}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def cache_path(generator: ImageGenerator, plan: Mapping[int, int], seed: int, cache_dir: str | os.PathLike) -> Path:
    return Path(cache_dir).expanduser() / f"{cache_key(generator, plan, seed)}.safetensors"


def quantise(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> uint8, the storage format of every image set in this project."""
    return images.clamp(0, 1).mul(255).round().to(torch.uint8)


def read_entry(path: Path, plan: Mapping[int, int]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The entry's (images, labels), or None with a warning when it cannot be trusted.

    Trusted means: readable, and per class exactly the plan's count, less the shortfall the entry
    records (a generator that came up short, e.g. safety-checker drops). A shard entry
    (`genfl-generate` under accelerate) is checked against its own share of the plan.
    """
    wanted = _positive(plan)
    try:
        with safe_open(str(path), framework="pt") as handle:
            record = json.loads((handle.metadata() or {}).get(RECORD_KEY, "{}"))
            images, labels = handle.get_tensor("images"), handle.get_tensor("labels")
        made_for = _positive(record["plan"]) if record.get("plan") is not None else wanted  # none: an older entry
        shortfall = {int(c): int(n) for c, n in (record.get("shortfall") or {}).items()}
    except (SafetensorError, OSError, KeyError, ValueError, TypeError, AttributeError) as err:
        logger.warning("image cache entry %s is unreadable (%s: %s); regenerating it", path, type(err).__name__, err)
        return None
    if images.dtype != torch.uint8 or images.dim() != 4 or labels.dim() != 1 or len(images) != len(labels):
        logger.warning("image cache entry %s does not hold the images of its plan; regenerating it", path)
        return None
    if record.get("shard") is not None and all(wanted.get(c) == n for c, n in made_for.items()):
        wanted = made_for  # a shard holds its share of the plan
    expected = {c: n - shortfall.get(c, 0) for c, n in wanted.items() if n - shortfall.get(c, 0) > 0}
    held = dict(sorted(Counter(labels.tolist()).items()))
    if made_for != wanted or held != expected:
        logger.warning(
            "image cache entry %s holds %s images per class (%d in all), but its plan asks for %s (%d)%s; "
            "not using it, regenerating it", path, held, len(labels), expected, sum(expected.values()),
            "" if made_for == wanted else f" and the entry was made for plan {made_for}",
        )
        return None
    return images, labels


def _positive(plan: Mapping) -> dict[int, int]:
    """``{class: count}`` with int keys, ascending, zero counts left out (they hold no images)."""
    return {c: n for c, n in sorted((int(c), int(n)) for c, n in plan.items()) if n > 0}


def write_entry(
    path: Path, images: torch.Tensor, labels: torch.Tensor, description: dict, *, shortfall: Mapping[int, int] | None = None
) -> None:
    """Atomically write an entry: a private temporary file per writer, then one rename.

    The plan in ``description`` (and whether it is a shard) and ``shortfall`` (images per class the
    generator could not make) go into the file's own header, so `read_entry` can check the counts.
    """
    record = {"plan": description.get("plan"), "shard": description.get("shard"),
              "shortfall": {str(c): int(n) for c, n in (shortfall or {}).items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".tmp")
    os.close(fd)
    try:
        save_file({"images": images.contiguous(), "labels": labels.contiguous()}, tmp,
                  metadata={RECORD_KEY: json.dumps(record, default=str)})
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)  # atomic: a reader sees the old entry, the new one, or none
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".json.tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps({**description, "shortfall": record["shortfall"]}, default=str, indent=1))
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
        made = Counter(labels.tolist())
        shortfall = {c: n - made[c] for c, n in _positive(plan).items() if made[c] < n}
        write_entry(path, images, labels, {"fingerprint": generator.fingerprint(), "plan": dict(plan), "seed": seed},
                    shortfall=shortfall)
    return images, labels, False
