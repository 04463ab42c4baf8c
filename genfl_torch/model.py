"""ResNet-18 in its CIFAR form: 3x3 stride-1 stem and no max-pool, so 8x8 and 32x32 inputs keep detail."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models import resnet18


class Normalize(nn.Module):
    """Per-channel standardisation inside the model, so every caller feeds plain [0, 1] images.

    Its buffers are not persistent: they are a property of the data set, not weights to federate.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


NORMS = ("batch", "group")
GROUPS = 32  # GroupNorm groups per layer (Wu & He 2018's default); every ResNet-18 width divides by it


def build_resnet18(
    num_classes: int, in_channels: int, mean: Sequence[float], std: Sequence[float], norm: str = "batch"
) -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem; ``num_classes``/``in_channels`` come from the data set.

    ``norm="group"`` swaps every BatchNorm for GroupNorm: no running statistics, so nothing in the
    model depends on a client's label mix at test time (the usual fix for BatchNorm under non-IID FL).
    """
    if norm not in NORMS:
        raise ValueError(f"model.norm: unknown normalisation {norm!r}; choose one of {', '.join(NORMS)}")
    norm_layer = (lambda channels: nn.GroupNorm(GROUPS, channels)) if norm == "group" else None
    net = resnet18(num_classes=num_classes, norm_layer=norm_layer)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return nn.Sequential(Normalize(mean, std), net)


def seeded_model(seed: int, **spec) -> nn.Module:
    """The same initial weights for the same seed, whoever builds it (server, tests, benchmarks)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_resnet18(**spec)
