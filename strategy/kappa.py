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


POLICIES = ("constant", "adaptive")


@dataclass
class AdaptiveKappa:
    """kappa_aug set each round from the clients' evidence (mix.kappa_policy=adaptive).

    In every round's evaluation step some nodes score candidate mixes of the round's client aggregate
    and augmented model on their own real data; the server moves kappa_aug a ``step`` of the way
    toward the candidate with the lowest federated loss, within [``low``, ``high``]. A generator that
    stops helping the clients' data is thus turned down (kappa 0 = FedAvg is always a candidate),
    one that helps is kept; the server itself never sees real data.
    """

    current: float  # kappa_aug of the next round
    candidates: tuple[float, ...]
    step: float
    low: float
    high: float

    def __post_init__(self):
        self.candidates = tuple(float(c) for c in self.candidates)
        if not self.candidates or any(not 0.0 <= c <= 1.0 or math.isnan(c) for c in self.candidates):
            raise KappaError(f"mix.candidates must be a non-empty list of kappa_aug values in [0, 1] (got {list(self.candidates)})")
        if 0.0 not in self.candidates:
            raise KappaError("mix.candidates must contain 0.0 (the client aggregate alone: FedAvg's model), "
                             f"else the policy cannot tell when the augmented model hurts (got {list(self.candidates)})")
        if not 0.0 < self.step <= 1.0:
            raise KappaError(f"mix.step must be in (0, 1] (got {self.step})")
        if not 0.0 <= self.low <= self.high < 1.0:
            raise KappaError(f"mix.low and mix.high must satisfy 0 <= low <= high < 1 (kappa_fl > 0: the probe needs "
                             f"the clients' models) (got {self.low}, {self.high})")
        if not self.low <= self.current <= self.high:
            raise KappaError(f"the starting strategy.kappa_aug={self.current} must lie in [mix.low, mix.high] = "
                             f"[{self.low}, {self.high}]")

    def candidates_with(self) -> list[float]:
        """What nodes score this round: the candidates and the current kappa_aug, ascending."""
        return sorted(set(self.candidates) | {round(self.current, 6)})

    def choose(self, losses: dict[float, float]) -> float:
        """Move toward the candidate with the lowest loss (ties: the smaller kappa_aug); returns it."""
        best = min(losses, key=lambda k: (losses[k], k))
        moved = self.current + self.step * (best - self.current)
        self.current = round(min(max(moved, self.low), self.high), 6)
        return best
