"""The mixing weights of Eq. (1), constant or scheduled over rounds.

kappa_fl + kappa_aug = 1 every round (Eq. (1) is a convex combination: it must not rescale the
weights). A schedule moves kappa_aug from its start value to ``kappa_aug_final`` by the last round,
e.g. to lean on synthetic data early and on real client data late.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("constant", "linear", "cosine")


class KappaError(ValueError):
    """Invalid kappas; raised at start, before any round runs."""


@dataclass(frozen=True)
class KappaSchedule:
    """kappa_aug over the rounds; kappa_fl is always 1 - kappa_aug."""

    kappa_aug: float
    schedule: str
    kappa_aug_final: float
    num_rounds: int

    def __post_init__(self):
        for name in ("kappa_aug", "kappa_aug_final"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0 or math.isnan(value):
                raise KappaError(f"strategy.{name} must be in [0, 1] (got {value!r})")
        if self.schedule not in SCHEDULES:
            raise KappaError(f"strategy.kappa_schedule must be one of {', '.join(SCHEDULES)} (got {self.schedule!r})")
        if self.num_rounds < 1:
            raise KappaError(f"num_rounds must be >= 1 (got {self.num_rounds})")

    def at(self, server_round: int) -> tuple[float, float]:
        """(kappa_fl, kappa_aug) for ``server_round`` (1-based)."""
        if self.schedule == "constant" or self.num_rounds == 1:
            kappa_aug = self.kappa_aug
        else:
            progress = (server_round - 1) / (self.num_rounds - 1)
            if self.schedule == "linear":
                weight = 1.0 - progress
            else:  # cosine
                weight = 0.5 * (1.0 + math.cos(math.pi * progress))
            kappa_aug = self.kappa_aug_final + (self.kappa_aug - self.kappa_aug_final) * weight
        return 1.0 - kappa_aug, kappa_aug

    @property
    def kappa_fl(self) -> float:
        return 1.0 - self.kappa_aug

    @property
    def uses_synthetic_data(self) -> bool:
        return self.kappa_aug > 0 or (self.schedule != "constant" and self.kappa_aug_final > 0)
