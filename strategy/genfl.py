"""The GenFL strategy (arXiv 2503.20166) as a wrapper around any Flower Message-API strategy.

1. Before round 1 every node reports its label histogram (strategy/histograms.py, late_nodes.py).
2. The augmenter plans and synthesises images from the robust global histogram (and, with the
   generator check, the nodes score a model of those images alone: strategy/generator_check.py).
3. Each round clients train on real data while the augmenter trains w_aug on the synthetic set.
4. w(t+1) = kappa_fl * base_aggregate(w_1..w_N) + kappa_aug * w_aug   (Eq. (1)).
Like Flower's DP wrappers: store the base, delegate sampling and aggregation to it, transform the
result. The two parts of Eq. (1) are strategy/client_part.py and augmented_part.py; beside them the
probe of adaptive kappa (probe.py), BatchNorm re-estimation (bn.py), the queries to the nodes
(ask.py), reply validation (replies.py), the update guard and Flower's round count (rounds.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from logging import INFO, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from strategy.ask import Queries, seeded
from strategy.augmented_part import Augmenter, AugmentedPart
from strategy.bases import base_state, innermost, load_base_state, snapshot_base_state
from strategy.bn import reestimate
from strategy.client_part import ClientPart
from strategy.cooldown import Cooldown
from strategy.generator_check import GeneratorCheck, Regime
from strategy.grids import OrderedGrid
from strategy.guard import update_problem
from strategy.histograms import HistogramQuery, Survey
from strategy.kappa import AdaptiveKappa, KappaSchedule
from strategy.late_nodes import restore_nodes, survey_or_resume
from strategy.ledger import Ledger
from strategy.probe import Probe
from strategy.replies import Reliability, screen
from strategy.rounds import Phases, TrueRounds
from strategy.stats import RoundStats
from genfl_torch.memory import release_memory
from genfl_protocol.mixing import bn_statistic_names, mix


class RoundFailedError(RuntimeError):
    """Rounds kept failing (no usable client model, or the new model was rejected): the run cannot
    make progress, and continuing would silently keep the old model."""


class GenFL(Strategy):
    """w(t+1) = kappa_fl * base(w_1..w_N) + kappa_aug * w_aug   (Eq. (1)).

    ``base`` is any Flower Message-API strategy (FedAvg, FedProx, FedMedian, Krum, a DP wrapper, ...):
    it samples the nodes and aggregates the client models; this wrapper adds the label-histogram
    step, the augmented model and the mix, as ``regime`` says (``check``, ``trusted``: the generator
    check may switch it, strategy/augmented_part.py). kappa_aug = 0 is the base alone, kappa_fl = 0 is
    AIGC-only (no node is asked to train). Every reply is untrusted; the mixed model must pass
    `update_problem`; a failed round keeps the old model and `RoundFailedError` stops a run that cannot
    progress. ``first_round > 1`` continues a run restored with `load_state_dict`.
    """

    def __init__(self, base: Strategy, *, num_classes: int, kappa: KappaSchedule, augmenter: Augmenter | None,
                 histogram_timeout: float, histogram_config: ConfigRecord | None = None, seed: int,
                 reliability: Reliability, first_round: int = 1, regime: Regime | None = None,
                 round_aware_floor: float | None = None, check: GeneratorCheck | None = None,
                 trusted: Regime | None = None):
        self.augmented = AugmentedPart(augmenter, kappa, regime, check, trusted, round_aware_floor)
        self.base, self.num_classes, self.kappa = base, num_classes, kappa
        self.histogram_timeout, self.histogram_config = histogram_timeout, histogram_config
        self.seed, self.reliability, self.offset = seed, reliability, first_round - 1
        keys = innermost(base)
        self.weighted_by_key, self.configrecord_key = keys.weighted_by_key, keys.configrecord_key
        self.cooldown = Cooldown(reliability.straggler_cooldown_rounds, kappa.num_rounds)
        self.ledger = Ledger()  # who contributed, node by node
        self.clients = ClientPart(base, reliability, self.cooldown, self.ledger)
        self.phases = Phases()  # one-time work (histogram survey, generation, generator check): no round's
        self.survey = Survey()  # the nodes' label histograms, as declared and as counted
        self.global_histogram: list[int] | None = None  # robust sum used for planning
        self.round_stats: dict[int, RoundStats] = {}
        self.rounds_succeeded = self.consecutive_failures = 0
        self._current: dict[str, np.ndarray] = {}
        self._sent: list[Message] = []
        self._sent_evaluate: list[Message] = []
        self.queries: Queries | None = None  # the round's own queries to the nodes (strategy/ask.py)
        self._parts: tuple[dict, dict] | None = None  # (client aggregate, augmented model) for the next_round probe
        self._riding: Probe | None = None  # the probe sent with this round's evaluation
        self._last_cause = "none"
        self._timeout = histogram_timeout
        self._resumed: dict = {}

    @property
    def regime(self) -> Regime:
        return self.augmented.regime

    @property
    def adaptive(self) -> AdaptiveKappa | None:
        return self.augmented.regime.adaptive

    @property
    def generator_check(self) -> dict | None:
        return self.augmented.generator_check

    @property
    def generation_stats(self) -> dict:
        return self.augmented.generation_stats

    @property
    def one_time_seconds(self) -> float:
        return self.phases.seconds

    def summary(self) -> None:
        k, until = self.kappa, " (generator_check.on_fail's, until the generator passes the check)"
        policy = "adaptive" if self.adaptive else f"{k.schedule} schedule, final {k.kappa_aug_final}"
        log(INFO, "GenFL: kappa_aug=%s (%s), BatchNorm statistics %s%s, base %s", k.kappa_aug, policy,
            self.regime.bn_stats, until if self.augmented.trusted else "", type(self.base).__name__)
        self.base.summary()

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3, timeout: float = 3600,
              train_config: ConfigRecord | None = None, evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None) -> Result:
        """Flower's round loop over rounds ``first_round..num_rounds`` (strategy/rounds.py). Stops the
        augmenter's work however the run ends."""
        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            metrics = evaluate_fn(server_round, arrays) if evaluate_fn else None
            if self.stopping:  # after the round's metrics were recorded; the caller does not checkpoint it
                raise RoundFailedError(
                    f"round {server_round}: {self.consecutive_failures} consecutive rounds failed (reliability."
                    f"max_consecutive_failed_rounds={self.reliability.max_consecutive_failed_rounds}); last cause: "
                    f"{self._last_cause}")
            return metrics

        self._timeout = timeout  # late label histograms are asked for within a round's time
        try:
            result = TrueRounds(self, self.offset).start(grid, initial_arrays, num_rounds, timeout, train_config,
                                                         evaluate_config, evaluate)
        finally:
            self.augmented.close()
        if self.rounds_succeeded == 0 and num_rounds > self.offset:
            raise RoundFailedError(f"no round produced a usable model; last cause: {self._last_cause}")
        return result

    # -- before round 1: histograms, synthetic data, the generator check -----------------------------
    def _prepare(self, grid: Grid, config: ConfigRecord) -> None:
        """Collect the label histograms (every node; resumed: those the checkpoint lacks), cap them,
        and let the augmenter synthesise."""
        with self.phases("histogram survey",
                         f"asking the nodes for their label histograms (up to {self.histogram_timeout}s)"):
            self.survey, node_of = survey_or_resume(grid, self._resumed.get("survey"), self._histograms(config))
        self.global_histogram = self.survey.global_histogram
        restore_nodes(self.survey, node_of, self._resumed, self.ledger, self.cooldown)
        self.augmented.prepare(self.global_histogram, self.phases)

    def _histograms(self, config: ConfigRecord) -> HistogramQuery:
        rel = self.reliability
        return HistogramQuery(RecordDict({self.configrecord_key: self.histogram_config or config}),
                              self.histogram_timeout, self.num_classes, rel.max_samples_per_node, rel.node_cap_factor)

    # -- rounds (the run's round numbers: strategy/rounds.py) ---------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Start the augmented model and let the base sample and configure nodes."""
        first = self.global_histogram is None  # a run's (or a resumed run's) first round
        if first:
            self._prepare(grid, config)
        self._current = dict(zip(arrays.keys(), arrays.to_numpy_ndarrays()))
        self.queries = Queries(grid, self.survey, self.seed, self._timeout, {self.configrecord_key: config},
                               self.weighted_by_key, self.reliability.claim_slack)
        if first:  # the generator check may switch the regime before round 1
            self.augmented.check_generator(self._current, self.queries, self.phases, self.base)
        kappa_fl, kappa_aug = self.regime.kappas(self.kappa, server_round)
        stats = self.round_stats[server_round] = RoundStats(server_round, kappa_fl=kappa_fl, kappa_aug=kappa_aug)
        if first and self.generation_stats:
            stats.update(images_synthesized=self.generation_stats["images_synthesized"],
                         generation_seconds=self.generation_stats["generation_seconds"])
        late = self._histograms(config).within(self._timeout)  # a sampled node without one is asked now
        self._sent = self.clients.configure(arrays, config, grid, self.survey, self.seed, late, stats) if kappa_fl > 0 else []
        self.augmented.start(self._current, stats, self.survey.histograms, [m.metadata.dst_node_id for m in self._sent])
        return self._sent

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Eq. (1): base aggregate -> augmented model -> kappas -> mix -> guard. ``(None, None)`` keeps the
        old model, and what the strategy learnt, when the round fails; too many failures in a row stop the run."""
        stats, self._parts = self.round_stats[server_round], None
        learnt = snapshot_base_state(self.base), self.augmented.learnt()  # what the round may change besides the model
        client_part, metrics, cause = self.clients(replies, self._sent, self._current, self.survey, stats)
        augmented = self.augmented.join(stats)  # even if the round failed
        if cause is None:
            self._choose_now(client_part, augmented, stats)
            mixed = self._mix(client_part, augmented, stats)
            cause = self._guard(mixed, stats)
        release_memory()  # reference cycles, then the freed heap back to the OS (genfl_torch/memory.py)
        if cause is not None:
            return self._round_failed(server_round, cause, learnt), None
        self._accepted(client_part, augmented, stats)
        return ArrayRecord({k: Array(v) for k, v in mixed.items()}), metrics

    def _choose_now(self, client_part: dict | None, augmented: dict | None, stats: RoundStats) -> None:
        """mix.choose=this_round: a sample of nodes scores this round's candidate mixes on their data and
        the policy picks this round's kappas (without usable replies the previous kappa_aug stays)."""
        if not self.regime.this_round or client_part is None or augmented is None:
            return
        probe = Probe.of(client_part, augmented, self.adaptive.candidates_with(), self.regime.bn_stats)
        usable = self.queries.score(stats.round, "probe", self.regime.probe_fraction, probe, "kappa probe")
        probe.choose(stats.round, usable, self.adaptive, self.weighted_by_key, stats, "this round")
        stats.kappa_aug = self.adaptive.current
        stats.kappa_fl = round(1.0 - stats.kappa_aug, 6)

    def _mix(self, client_part: dict | None, augmented: dict | None, stats: RoundStats) -> dict[str, np.ndarray]:
        """Eq. (1) over the parts this round has; BatchNorm statistics as mix.bn_stats says."""
        parts = [(s, k) for s, k in ((client_part, stats.kappa_fl), (augmented, stats.kappa_aug)) if s is not None]
        bn = self.regime.bn_stats
        mixed = mix([s for s, _ in parts], [k for _, k in parts], client_part if bn != "mixed" else None)
        if bn == "reestimate" and bn_statistic_names(mixed):
            nodes = partial(self.queries.ask, stats.round, "reestimate", self.regime.bn_fraction)
            mixed = reestimate(stats.round, mixed, nodes, self.queries.claims, self.weighted_by_key,
                               self.survey.weight_cap, stats)
        return mixed

    def _guard(self, mixed: dict[str, np.ndarray], stats: RoundStats) -> str | None:
        cause, ratio = update_problem(self._current, mixed, self.reliability.max_relative_update)
        stats.update_ratio = round(ratio, 6) if np.isfinite(ratio) else None
        return cause and f"the new global model was rejected: {cause}"

    def _accepted(self, client_part: dict | None, augmented: dict | None, stats: RoundStats) -> None:
        self.consecutive_failures = 0
        self.rounds_succeeded += 1
        stats.round_accepted = True
        if self.adaptive is not None and not self.regime.this_round and client_part is not None and augmented is not None:
            self._parts = (client_part, augmented)  # scored with this round's evaluation

    def _round_failed(self, server_round: int, cause: str, learnt: tuple) -> None:
        """The old model stays, and so does what the strategy had learnt (the base's server optimiser
        moments or clipping norm, adaptive kappa_aug): a rejected round's update must not steer the next."""
        load_base_state(self.base, learnt[0])
        self.augmented.restore(learnt[1])
        self.round_stats[server_round].update(round_accepted=False, round_failure=cause)
        self.consecutive_failures += 1
        self._last_cause = cause
        log(WARNING, "round %d failed, the global model stays as it was: %s", server_round, cause)

    @property
    def stopping(self) -> bool:
        """This round stops the run (too many failed rounds in a row); it must not be checkpointed,
        so that a resumed run retries it."""
        return self.consecutive_failures >= self.reliability.max_consecutive_failed_rounds

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """The base's evaluation messages; under adaptive kappa (next_round) they also carry this round's
        two parts of Eq. (1) and the candidate kappas, for the nodes to score on their own data."""
        with seeded(self.seed, server_round, "evaluate"):  # which nodes score the probe, too
            self._sent_evaluate = list(self.base.configure_evaluate(server_round, arrays, config,
                                                                    OrderedGrid(grid, self.survey.order)))
        parts, self._parts, self._riding = self._parts, None, None
        if parts is not None and self._sent_evaluate:
            self._riding = Probe.of(*parts, self.adaptive.candidates_with(), self.regime.bn_stats)
            for msg in self._sent_evaluate:
                for name, record in self._riding.records.items():
                    msg.content[name] = record
        return self._sent_evaluate

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """The base's average of the usable evaluation replies; a probe riding on them moves kappa_aug."""
        probe, self._riding = self._riding, None
        usable, failed, excluded = screen(server_round, list(replies), self._sent_evaluate, "evaluation",
                                          self.queries.scored(probe), self.survey.order)
        stats = self.round_stats.setdefault(server_round, RoundStats(server_round))
        stats.update(clients_evaluated=len(usable), clients_evaluate_failed=len(failed),
                     clients_evaluate_excluded=len(excluded))
        metrics = self.base.aggregate_evaluate(server_round, usable) if usable else None
        if probe is not None:
            probe.choose(server_round, usable, self.adaptive, self.weighted_by_key, stats, "next round")
        for key in ("eval-loss", "eval-acc"):  # what the ClientApp reports (client_app/app.py)
            if metrics is not None and key in metrics:
                setattr(stats, "federated_" + key.replace("-", "_"), float(metrics[key]))
        return metrics

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """What a resumed run needs (plain data), the nodes' histograms included: a resumed run asks
        only the nodes it never heard from (strategy/late_nodes.py)."""
        return {
            "global_histogram": self.global_histogram,
            "survey": self.survey.state(),
            "round_stats": {r: s.row() for r, s in self.round_stats.items()},
            "rounds_succeeded": self.rounds_succeeded,
            "consecutive_failures": self.consecutive_failures,
            "benched_until": self.cooldown.state(self.survey.identity),
            "nodes": self.ledger.state(self.survey.identity),
            "base": base_state(self.base),  # server optimiser moments, an adaptive clipping norm
            **self.augmented.state(),  # the plan, the generation's stats, the check's verdict, adaptive kappa_aug
        }

    def load_state_dict(self, state: dict) -> None:
        self.round_stats = {int(r): RoundStats(**row) for r, row in state["round_stats"].items()}
        self.rounds_succeeded = state["rounds_succeeded"]
        self.consecutive_failures = state["consecutive_failures"]
        load_base_state(self.base, state["base"])
        self.augmented.load(state)
        self._resumed = {k: state.get(k) for k in ("global_histogram", "benched_until", "nodes", "survey")}
