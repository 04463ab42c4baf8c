"""The generator check before round 1 (issue 16): does a model of the synthetic images work on real data?

A ResNet trained on the synthetic set alone is scored by the nodes on their own data (the probe query:
no new client code, no real data on the server). ``transfer`` = its federated accuracy on real data
over its accuracy on the synthetic set: ~0.94 for the in-distribution digits generator, ~0.5-0.65 for
the domain-shifted fonts one (measured, README). A generator at or above ``min_transfer`` is trusted:
the run goes on with the user's settings (the paper's constant kappa_aug by default); below it the
run keeps the cautious settings of ``generator_check.on_fail`` it started with (a `Regime` each).
The verdict is plain arithmetic (`GeneratorCheck.verdict`); `run_check` runs the check.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from logging import INFO, WARNING

from flwr.app import Message
from flwr.common.logger import log

from genfl_protocol.contract import MIX_ACC
from strategy.kappa import AdaptiveKappa, KappaSchedule
from strategy.probe import Probe, scores


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


@dataclass(frozen=True)
class Regime:
    """How GenFL mixes the synthetic data, as a whole: what the check switches between (one from the
    run's settings, one from them with ``generator_check.on_fail`` over them)."""

    adaptive: AdaptiveKappa | None  # None: the constant (or scheduled) kappa_aug
    bn_stats: str = "mixed"
    bn_fraction: float = 1.0
    choose: str = "next_round"
    probe_fraction: float = 1.0
    fraction_evaluate: float = 0.0  # the base strategy's evaluation share (the next_round probe rides on it)
    augmented: dict = field(default_factory=dict)  # the augmenter's `configure` arguments

    @property
    def this_round(self) -> bool:
        """mix.choose=this_round: the probe is a query before the round's model is formed (its evidence is
        about the very mix it picks); next_round: it rides on the evaluation step, for the next round."""
        return self.choose == "this_round"

    def kappas(self, schedule: KappaSchedule, server_round: int) -> tuple[float, float]:
        """(kappa_fl, kappa_aug) a round starts with: the adaptive policy's, else the schedule's."""
        if self.adaptive is not None:
            return round(1.0 - self.adaptive.current, 6), self.adaptive.current
        return schedule.at(server_round)


def run_check(check: GeneratorCheck, augmenter, initial_state: dict, ask: Callable[[Probe, str], list[Message]],
              weighted_by_key: str, on_fail: bool) -> dict:
    """The server trains a model on the synthetic set alone; ``ask(probe, what)`` has the check's sample of
    nodes score it on their real data (one candidate: the model mixed with itself). The verdict, with
    its seconds and the settings the run goes on with (``on_fail``: a cautious regime to keep)."""
    started = time.monotonic()
    state, synthetic_accuracy = augmenter.reference(initial_state, check.epochs)
    rows = [scores(r) for r in ask(Probe.of(state, state, [0.0], "mixed"), "generator check")]
    result = {**check.verdict([float(m[MIX_ACC][0]) for m in rows], [float(m[weighted_by_key]) for m in rows],
                              synthetic_accuracy), "seconds": round(time.monotonic() - started, 2)}
    result["settings"] = ("as configured" if result["trusted"] else "on_fail" if on_fail
                          else "as configured (the check only reports)")
    return result


def log_verdict(result: dict, cautious: Regime, on_fail: bool) -> None:
    """What the check found and what the run does about it (``cautious``: the regime it started with)."""
    if result["trusted"]:
        outcome = "trusted, mixed as configured"
    elif on_fail:
        outcome = (f"not trusted, the cautious settings of generator_check.on_fail run ("
                   f"{'adaptive kappa_aug' if cautious.adaptive else 'constant kappa_aug'}, BatchNorm statistics "
                   f"{cautious.bn_stats})")
    else:
        outcome = ("not trusted, but mixed as configured (generator_check.on_fail does not apply to this run): "
                   "the synthetic data may pull the model below FedAvg")
    log(INFO if result["trusted"] else WARNING, "generator check: a model of the synthetic set alone scores %s on "
        "%d nodes' real data, %s on the synthetic set (transfer %s, trusted at >= %s): %s", result["real_accuracy"],
        result["nodes"], result["synthetic_accuracy"], result["transfer"], result["min_transfer"], outcome)
