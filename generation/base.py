"""The one interface every image generator implements: a per-class plan in, labelled images out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch


class ImageGenerator(Protocol):
    """A source of labelled synthetic images at the data set's resolution.

    ``generate`` returns ``(images, labels)``: images float32 ``(N, C, H, W)`` in [0, 1] at the
    resolution and channel count the generator was built for, labels int64 ``(N,)``; classes come
    out in ascending class order, ``plan[c]`` images of class ``c``. The same plan and seed give the
    same tensors. ``fingerprint`` describes everything else that determines the output (model id,
    steps, guidance, ...) so that a cache can key on it.
    """

    def generate(self, plan: Mapping[int, int], *, seed: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def fingerprint(self) -> dict: ...
