"""The mixing weights of Eq. (1), constant or scheduled over rounds.

kappa_fl + kappa_aug = 1 every round (Eq. (1) is a convex combination: it must not rescale the
weights). A schedule moves kappa_aug from its start value to ``kappa_aug_final`` by the last round,
e.g. to lean on synthetic data early and on real client data late.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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
        for key, value in (("strategy.kappa_aug", self.kappa_aug), ("mix.kappa_aug_final", self.kappa_aug_final)):
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0 or math.isnan(value):
                raise KappaError(f"{key} must be in [0, 1] (got {value!r})")
        if self.schedule not in SCHEDULES:
            raise KappaError(f"mix.kappa_policy: a schedule must be one of {', '.join(SCHEDULES)} (got {self.schedule!r})")
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


POLICIES = (*SCHEDULES, "adaptive")  # mix.kappa_policy: the one key that says how kappa_aug is set
CHOOSE = ("next_round", "this_round")  # when the probe's evidence is used (mix.choose)


@dataclass
class AdaptiveKappa:
    """kappa_aug set each round from the clients' evidence (mix.kappa_policy=adaptive).

    In every round's evaluation step some nodes score candidate mixes of the round's client aggregate
    and augmented model on their own real data; the server moves kappa_aug a ``step`` of the way
    toward the candidate with the lowest federated loss, within [``low``, ``high``]. A generator that
    stops helping the clients' data is thus turned down (kappa 0 = FedAvg is always a candidate),
    one that helps is kept; the server itself never sees real data.

    The burden of proof is on the synthetic data: a mix counts as better than the client aggregate
    (kappa 0) only if its loss is lower by more than ``evidence_z`` standard errors of the nodes'
    paired differences. Under label skew the few nodes scoring a round disagree widely (a node whose
    classes the aggregate gets wrong likes any mix, others do not), so a plain mean follows whichever
    nodes were drawn; with ``evidence_z = 0`` it is the plain lowest mean.

    ``max_rise`` caps how far kappa_aug may climb in one round (falling is never capped): one round's
    evidence from a few nodes cannot put a large synthetic share back into a model that has outgrown
    it (measured: late jumps from ~0 to 0.25-0.4 preceded GenFL's worst rounds below FedAvg).

    ``retire_below``: once kappa_aug falls below it, the synthetic data is retired for the rest of the
    run (kappa_aug 0, no augmented model, no probe): the run is then the base strategy from a better
    start, and its rounds follow the base's own (same nodes, same seeds) instead of a small synthetic
    pull that leaves them to drift apart. For generators that failed the generator check.
    """

    current: float  # kappa_aug of the next round
    candidates: tuple[float, ...]
    step: float
    low: float
    high: float
    evidence_z: float = 1.0
    max_rise: float | None = None  # most kappa_aug may rise per round; None: no cap
    retire_below: float | None = None  # kappa_aug below this retires the synthetic data; None: never
    retired: bool = False

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
        if not (isinstance(self.evidence_z, (int, float)) and 0 <= self.evidence_z < math.inf):
            raise KappaError(f"mix.evidence_z must be a number >= 0 (got {self.evidence_z!r})")
        if self.max_rise is not None and not (isinstance(self.max_rise, (int, float)) and 0 <= self.max_rise <= 1):
            raise KappaError(f"mix.max_rise must be null or a number in [0, 1] (got {self.max_rise!r})")
        if self.retire_below is not None and not (isinstance(self.retire_below, (int, float)) and 0 <= self.retire_below <= 1):
            raise KappaError(f"mix.retire_below must be null or a number in [0, 1] (got {self.retire_below!r})")
        if not self.low <= self.current <= self.high:
            raise KappaError(f"the starting strategy.kappa_aug={self.current} must lie in [mix.low, mix.high] = "
                             f"[{self.low}, {self.high}]")

    def candidates_with(self) -> list[float]:
        """What nodes score this round: the candidates and the current kappa_aug, ascending."""
        return sorted(set(self.candidates) | {round(self.current, 6)})

    def federated(self, scores: Sequence[Sequence[float]], weights: Sequence[float]) -> tuple[list[float], list[float]]:
        """(weighted mean loss per candidate, standard error of its paired difference to kappa 0), from
        one row of losses per node (in `candidates_with` order) and the nodes' sample counts."""
        losses, w = np.asarray(scores, dtype=np.float64), np.asarray(weights, dtype=np.float64)
        w = w / w.sum()
        means = w @ losses
        diffs = losses - losses[:, [self.candidates_with().index(0.0)]]
        spread = np.sqrt(np.maximum(w @ (diffs - w @ diffs) ** 2, 0.0))
        n_eff = 1.0 / np.sum(w**2)  # effective number of nodes under unequal weights
        errors = spread / np.sqrt(max(n_eff - 1.0, 1.0))
        return means.tolist(), errors.tolist()

    def choose(self, losses: dict[float, float], errors: dict[float, float] | None = None) -> float:
        """Move toward the best candidate; returns it. Best: the lowest loss among kappa 0 and the mixes
        whose advantage over kappa 0 exceeds ``evidence_z`` standard errors (ties: the smaller kappa)."""
        if self.retired:
            return 0.0
        base = losses[0.0]
        errors = errors or {}
        eligible = [k for k in losses if k == 0.0 or losses[k] + self.evidence_z * errors.get(k, 0.0) < base]
        best = min(eligible, key=lambda k: (losses[k], k))
        moved = self.current + self.step * (best - self.current)
        if self.max_rise is not None:
            moved = min(moved, self.current + self.max_rise)
        self.current = round(min(max(moved, self.low), self.high), 6)
        if self.retire_below is not None and self.current < self.retire_below:
            self.current, self.retired = 0.0, True
        return best
