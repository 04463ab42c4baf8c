"""The augmented part of Eq. (1): w_aug, trained by the augmenter on the synthetic set while the
clients train, and how it is mixed (a `Regime`, strategy/generator_check.py).

Before a run's first round the augmenter plans and synthesises images from the robust global label
histogram; with the generator check, nodes score a model of those images alone, and a generator that
carries over switches the run from generator_check.on_fail's cautious regime to the configured one.
The torch/diffusers work stays behind the narrow `Augmenter` interface (NumPy state in and out).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from contextlib import nullcontext
from functools import partial
from logging import DEBUG
from typing import Protocol

import numpy as np
from flwr.common.logger import log
from flwr.serverapp.strategy import Strategy

from strategy.ask import Queries
from strategy.bases import innermost
from strategy.generator_check import GeneratorCheck, Regime, log_verdict, run_check
from strategy.kappa import KappaSchedule
from strategy.probe import trust
from strategy.round_aware import round_weights
from strategy.rounds import Phases
from strategy.stats import RoundStats


class Augmenter(Protocol):
    """The server-side synthetic-data work, as the strategy sees it (generation/augmented.py)."""

    def prepare(self, global_histogram: Sequence[int], plan: dict[int, int] | None = None) -> dict: ...

    def start(self, global_state: dict[str, np.ndarray], server_round: int,
              class_weights: Sequence[float] | None = None, trust: float | None = None) -> Future: ...

    def reference(self, initial_state: dict[str, np.ndarray], epochs: int) -> tuple[dict[str, np.ndarray], float]: ...

    def configure(self, *, max_steps: int | None, filter, steps_follow_trust: bool) -> None: ...

    def close(self) -> None: ...


class AugmentedPart:
    """w_aug round by round, the regime that mixes it, and the synthetic set's record (its plan, the
    generation's stats, the generator check's verdict). With the ``check``, ``regime`` is the cautious
    one a generator that fails it keeps, ``trusted`` the one a generator that passes switches to
    (without it the check only reports)."""

    def __init__(self, augmenter: Augmenter | None, kappa: KappaSchedule, regime: Regime | None,
                 check: GeneratorCheck | None, trusted: Regime | None, round_aware_floor: float | None):
        if kappa.uses_synthetic_data and augmenter is None:
            raise ValueError("kappa_aug > 0 needs an augmenter (the server's synthetic-data trainer)")
        self.augmenter, self.kappa = augmenter, kappa
        self.regime = regime or Regime(adaptive=None)  # the paper's: a constant or scheduled kappa_aug
        self.check, self.trusted = check, trusted
        self.round_aware_floor = round_aware_floor  # None: w_aug sees the synthetic set's own class mix
        self.generator_check: dict | None = None  # its result (a resumed run keeps the checkpoint's)
        self.generation_stats: dict = {}
        self.plan: dict[int, int] | None = None
        self._job: Future | None = None

    def prepare(self, global_histogram: list[int], phases: Phases) -> None:
        """The synthetic set, generated or loaded from the cache (a resumed run keeps its plan)."""
        if not self.kappa.uses_synthetic_data:
            return
        with phases("generation", "planning the synthetic set, then generating it or loading it from the cache"):
            self.generation_stats = self.augmenter.prepare(global_histogram, plan=self.plan)
        self.plan = self.generation_stats.get("plan")
        log(DEBUG, "synthetic data: %s", self.generation_stats)  # metrics.json's "generation"

    def check_generator(self, initial_state: dict, queries: Queries, phases: Phases, base: Strategy) -> None:
        """The generator check (strategy/generator_check.py); a resumed run applies the checkpoint's
        verdict instead of checking again."""
        if self.check is None or not self.kappa.uses_synthetic_data:
            return
        fresh, on_fail = self.generator_check is None, self.trusted is not None
        with phases("generator check", f"training a model on the synthetic set alone ({self.check.epochs} epochs); "
                    "nodes score it") if fresh else nullcontext():
            if fresh:
                score = partial(queries.score, 0, "check", self.check.fraction)  # the check's round is 0
                self.generator_check = run_check(self.check, self.augmenter, initial_state, score,
                                                 queries.weighted_by_key, on_fail)
            log_verdict(self.generator_check, self.regime, on_fail)
            if self.generator_check["trusted"] and on_fail:
                self.use(self.trusted, base)
            self.trusted = None  # decided for the rest of the run

    def use(self, regime: Regime, base: Strategy) -> None:
        """Mix the synthetic data the way ``regime`` says from this round on."""
        self.regime = regime
        innermost(base).fraction_evaluate = regime.fraction_evaluate
        self.augmenter.configure(**regime.augmented)

    def start(self, current: dict[str, np.ndarray], stats: RoundStats, histograms: Mapping[int, Sequence[int]],
              nodes: Sequence[int]) -> None:
        """Train w_aug from the global model while ``nodes`` train (round-aware: on the classes they
        lack); not while kappa_aug is 0 and cannot rise again."""
        adaptive = self.regime.adaptive
        if stats.kappa_aug > 0 or (adaptive is not None and not adaptive.retired):  # kappa 0 may rise again
            self._job = self.augmenter.start({k: v.copy() for k, v in current.items()}, stats.round,
                                             class_weights=round_weights(histograms, nodes, self.round_aware_floor),
                                             trust=trust(adaptive, self.kappa.kappa_aug))

    def join(self, stats: RoundStats) -> dict[str, np.ndarray] | None:
        """This round's w_aug (None: not trained), its metrics into ``stats``."""
        if self._job is None:
            return None
        job, self._job = self._job, None
        augmented, metrics = job.result()
        stats.update(**metrics)
        return augmented

    def learnt(self) -> tuple | None:
        """Adaptive kappa_aug as a this_round probe may move it, for a rejected round to put back."""
        adaptive = self.regime.adaptive
        return None if adaptive is None else (adaptive.current, adaptive.retired)

    def restore(self, learnt: tuple | None) -> None:
        if learnt is not None:
            self.regime.adaptive.current, self.regime.adaptive.retired = learnt

    def close(self) -> None:
        if self.augmenter is not None:
            self.augmenter.close()

    def state(self) -> dict:
        adaptive = self.regime.adaptive
        return {"plan": self.plan, "generation_stats": self.generation_stats, "generator_check": self.generator_check,
                "adaptive_kappa": adaptive.current if adaptive else None,
                "adaptive_retired": adaptive.retired if adaptive else None}

    def load(self, state: dict) -> None:
        self.plan = {int(k): int(v) for k, v in state["plan"].items()} if state["plan"] else None
        for policy in (self.regime.adaptive, self.trusted.adaptive if self.trusted else None):  # the check's verdict
            if policy is not None and state.get("adaptive_kappa") is not None:                # picks one of them
                policy.current = float(state["adaptive_kappa"])
                policy.retired = bool(state.get("adaptive_retired"))
        self.generator_check = state.get("generator_check")
