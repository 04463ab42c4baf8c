"""Adaptive kappa's evidence (strategy/kappa.py): nodes score candidate mixes of a round's two parts of
Eq. (1) on their own data, and the policy moves kappa_aug toward the best (`Probe.choose`).

A probe rides on the round's evaluation messages (mix.choose=next_round: it sets the next round's
kappa_aug) or is a query of its own before the round's model is formed (this_round); the generator
check sends one with a single candidate. Each probe checks its own replies (`Probe.problem`): one
score per candidate it sent, accuracies in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from logging import INFO, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.common.logger import log

from genfl_protocol.contract import AUGMENTED, CLIENT_PART, MIX_ACC, MIX_LOSS, PROBE, PROBE_BN_STATS, PROBE_CANDIDATES
from strategy.kappa import AdaptiveKappa
from strategy.stats import RoundStats


def trust(adaptive: AdaptiveKappa | None, start: float) -> float | None:
    """How far the evidence trusts the synthetic data: adaptive kappa_aug over its ``start``ing value,
    in [0, 1] (the augmenter may scale its step count by it: augmented.steps_follow_kappa)."""
    return None if adaptive is None or start <= 0 else min(1.0, adaptive.current / start)


def scores(reply: Message):
    """A (validated) reply's one MetricRecord."""
    return next(iter(reply.content.metric_records.values()))


def _record(state: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in state.items()})


@dataclass(frozen=True)
class Probe:
    """The candidates sent and the records that carry them (genfl_protocol/contract.py)."""

    candidates: list[float]
    records: dict

    @classmethod
    def of(cls, client_part: dict[str, np.ndarray], augmented: dict[str, np.ndarray], candidates: Sequence[float],
           bn_stats: str) -> Probe:
        # Re-estimated statistics exist only for the chosen mix: candidates mix the statistics like the weights
        # (the clients' alone do not fit mixed weights: the first screen runs scored every mix far worse).
        bn = "mixed" if bn_stats == "reestimate" else bn_stats
        client = _record(client_part)
        records = {CLIENT_PART: client, AUGMENTED: client if augmented is client_part else _record(augmented),
                   PROBE: ConfigRecord({PROBE_CANDIDATES: list(candidates), PROBE_BN_STATS: bn})}
        return cls(list(candidates), records)

    def problem(self, reply: Message) -> str | None:
        """Why a (otherwise valid) reply's scores do not fit this probe, or None."""
        metrics = scores(reply)
        for key in (MIX_LOSS, MIX_ACC):
            value = metrics.get(key)
            if not isinstance(value, list) or len(value) != len(self.candidates):
                return f"{key!r} must list one value per candidate kappa ({len(self.candidates)}), got {value!r}"
        if not all(0.0 <= a <= 1.0 for a in metrics[MIX_ACC]):  # the generator check's verdict
            return f"{MIX_ACC!r} must hold accuracies in [0, 1], got {metrics[MIX_ACC]!r}"
        return None

    def choose(self, server_round: int, usable: list[Message], adaptive: AdaptiveKappa, weighted_by_key: str,
               stats: RoundStats, when: str) -> None:
        """Federated loss of each candidate mix (sample-weighted, capped like any weight); kappa_aug
        moves (``when``: the round it applies to, for the log)."""
        if not usable:
            log(WARNING, "round %d: no node scored the candidate kappas; kappa_aug stays %s", server_round,
                adaptive.current)
            return
        rows = [scores(r) for r in usable]
        federated, errors = adaptive.federated([m[MIX_LOSS] for m in rows], [float(m[weighted_by_key]) for m in rows])
        best = adaptive.choose(dict(zip(self.candidates, federated)), dict(zip(self.candidates, errors)))
        stats.update(kappa_probe={f"{k:g}": round(float(v), 5) for k, v in zip(self.candidates, federated)},
                     kappa_probe_error={f"{k:g}": round(float(v), 5) for k, v in zip(self.candidates, errors)},
                     kappa_best=best, kappa_next=adaptive.current, probe_nodes=len(usable))
        if adaptive.retired:
            stats.synthetic_retired = True
            log(WARNING, "round %d: kappa_aug fell below mix.retire_below=%s: the synthetic data is retired for the "
                "rest of the run (no augmented model, no probe)", server_round, adaptive.retire_below)
        log(INFO, "round %d: adaptive kappa: federated loss by kappa_aug %s -> kappa_aug %s %s", server_round,
            stats.kappa_probe, adaptive.current, when)
