"""The generator check before round 1 (issue 16): does a model of the synthetic images work on real data?

A ResNet trained on the synthetic set alone is scored by the nodes on their own data (the probe query:
no new client code, no real data on the server). ``transfer`` = its federated accuracy on real data
over its accuracy on the synthetic set: ~0.94 for the in-distribution digits generator, ~0.5-0.65 for
the domain-shifted fonts one (measured, README). A generator at or above ``min_transfer`` is trusted:
the run mixes it as the paper does (constant kappa_aug, statistics mixed like the weights, the
augmented model uncapped and unfiltered); below it the configured cautious policy runs. Plain Python.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class GeneratorCheck:
    """``generator_check`` of conf/: how the check runs and where it draws the line."""

    epochs: int  # of the synthetic-only model on the synthetic set (server)
    fraction: float  # share of the nodes that score it
    min_transfer: float  # trusted at or above this ratio

    def __post_init__(self):
        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            raise ValueError(f"generator_check.epochs must be an integer >= 1 (got {self.epochs!r})")
        if not (isinstance(self.fraction, (int, float)) and 0 < self.fraction <= 1):
            raise ValueError(f"generator_check.fraction must be in (0, 1] (got {self.fraction!r})")
        if not (isinstance(self.min_transfer, (int, float)) and 0 <= self.min_transfer < math.inf):
            raise ValueError(f"generator_check.min_transfer must be a number >= 0 (got {self.min_transfer!r})")

    def verdict(self, accuracies: Sequence[float], weights: Sequence[float], synthetic_accuracy: float) -> dict:
        """The check's result from the nodes' accuracies of the synthetic-only model and their sample
        counts (already capped like any weight). No usable score: not trusted (the burden of proof is
        on the synthetic data)."""
        total = float(sum(weights))
        real = sum(a * w for a, w in zip(accuracies, weights)) / total if total > 0 else None
        transfer = None if real is None else (real / synthetic_accuracy if synthetic_accuracy > 0 else 0.0)
        return {"real_accuracy": None if real is None else round(real, 4),
                "synthetic_accuracy": round(float(synthetic_accuracy), 4),
                "transfer": None if transfer is None else round(transfer, 4),
                "min_transfer": self.min_transfer, "nodes": len(accuracies),
                "trusted": transfer is not None and transfer >= self.min_transfer}
