"""The one interface every image generator implements: a per-class plan in, labelled images out."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch


class ImageGenerator(Protocol):
    """A source of labelled synthetic images at the data set's resolution.

    ``generate`` returns ``(images, labels)``: images float32 ``(N, C, H, W)`` in [0, 1] at the
    resolution and channel count the generator was built for, labels int64 ``(N,)``; classes come
    out in ascending class order, ``plan[c]`` images of class ``c``. The same plan and seed give the
    same tensors. ``fingerprint`` describes everything else that determines the output (model id,
    steps, guidance, ...) so that a cache can key on it; it is computed from configuration and file
    hashes, never by loading a model or asking the network. Backends are built by
    `generation.factory.build_generator` through their ``from_config(generator_cfg, dataset_cfg)``.
    """

    @classmethod
    def from_config(cls, generator_cfg: Mapping, dataset_cfg: Mapping) -> ImageGenerator: ...

    def generate(self, plan: Mapping[int, int], *, seed: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def fingerprint(self) -> dict: ...


def backend_settings(generator_cfg: Mapping, backend: str, keys: Iterable[str]) -> dict:
    """The ``generator`` config node's settings for ``backend``: exactly ``keys``, no more, no fewer
    (a misspelt setting would otherwise be silently ignored)."""
    settings = dict(generator_cfg)
    given = settings.pop("backend", backend)
    if given != backend:
        raise ValueError(f"generator.backend is {given!r}, but this builder is for {backend!r}.")
    keys = tuple(keys)
    unknown = sorted(set(settings) - set(keys))
    if unknown:
        raise ValueError(f"Unknown generator setting(s) {', '.join(unknown)}; valid: {', '.join(keys)}.")
    missing = [key for key in keys if key not in settings]
    if missing:
        raise ValueError(f"Missing generator setting(s) {', '.join(missing)}.")
    return settings


def checked_plan(plan: Mapping[int, int], num_classes: int) -> dict[int, int]:
    """The plan's positive entries ``{class: count}`` in ascending class order; a class outside
    ``0..num_classes-1`` or a negative count is a ValueError."""
    for class_id, count in plan.items():
        if not 0 <= int(class_id) < num_classes:
            raise ValueError(f"plan names class {class_id}, but the generator makes classes 0..{num_classes - 1}.")
        if int(count) < 0:
            raise ValueError(f"plan asks for {count} images of class {class_id}; counts must be >= 0.")
    return {int(c): int(plan[c]) for c in sorted(plan) if int(plan[c]) > 0}


def looks_like_path(model: str) -> bool:
    """True for things only a file system path can be (a Hugging Face Hub id is ``name`` or ``owner/name``)."""
    return os.path.isabs(model) or model.startswith((".", "~")) or model.count("/") > 1 or "\\" in model
