"""The GenFL strategy (arXiv 2503.20166) as a wrapper around any Flower Message-API strategy.

1. Before round 1 every node reports its label histogram (strategy/histograms.py).
2. The augmenter plans and synthesises images from the robust global histogram (and, with the
   generator check, the nodes score a model of those images alone: strategy/generator_check.py).
3. Each round clients train on real data while the augmenter trains w_aug on the synthetic set.
4. w(t+1) = kappa_fl * base_aggregate(w_1..w_N) + kappa_aug * w_aug   (Eq. (1)).
Like Flower's DP wrappers: store the base, delegate sampling and aggregation to it, transform the
result. Reply validation (strategy/replies.py), the update guard, the cooldown and the histogram
checks live beside it; the torch/diffusers work stays behind the narrow `Augmenter` interface.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from logging import INFO, WARNING
from typing import Protocol

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError, InconsistentMessageReplies
from flwr.serverapp.strategy import FedAvgM, Result, Strategy

from client_app.contract import (AUGMENTED, BN_QUERY, BN_RECORD, CLIENT_PART, MIX_ACC, MIX_LOSS, PROBE, PROBE_BN_STATS,
                                 PROBE_CANDIDATES, PROBE_QUERY)
from strategy.aggregation import like
from strategy.bases import base_state, dp_wrapper, innermost, load_base_state, snapshot_base_state
from strategy.cooldown import Cooldown
from strategy.generator_check import GeneratorCheck, Regime
from strategy.grids import OrderedGrid
from strategy.guard import update_problem
from strategy.histograms import Survey, resume_survey, survey
from strategy.kappa import AdaptiveKappa, KappaSchedule
from strategy.round_aware import lack_weights
from strategy.ledger import Ledger
from strategy.replies import (Reliability, bn_reply_problem, cap_weight, changed, evaluate_reply_problem, screen,
                              sender, train_reply_problem, unreachable, weigh, drop_models)
from strategy.stats import RoundStats
from torchcore.mixing import bn_statistic_names, combine_bn_statistics, mix
from torchcore.memory import release_memory


class RoundFailedError(RuntimeError):
    """Rounds kept failing (no usable client model, or the new model was rejected): the run cannot
    make progress, and continuing would silently keep the old model."""


class Augmenter(Protocol):
    """The server-side synthetic-data work, as the strategy sees it (NumPy state in and out)."""

    def prepare(self, global_histogram: Sequence[int], plan: dict[int, int] | None = None) -> dict: ...

    def start(self, global_state: dict[str, np.ndarray], server_round: int,
              class_weights: Sequence[float] | None = None, trust: float | None = None) -> Future: ...

    def reference(self, initial_state: dict[str, np.ndarray], epochs: int) -> tuple[dict[str, np.ndarray], float]: ...

    def configure(self, *, max_steps: int | None, filter, steps_follow_trust: bool) -> None: ...

    def close(self) -> None: ...


class GenFL(Strategy):
    """w(t+1) = kappa_fl * base(w_1..w_N) + kappa_aug * w_aug   (Eq. (1)).

    ``base`` is any Flower Message-API strategy (FedAvg, FedProx, FedMedian, Krum, a DP wrapper, ...):
    it samples the nodes and aggregates the client models; this wrapper adds the label-histogram
    step, the augmented model and the mix. kappa_aug = 0 is the base alone, kappa_fl = 0 is
    AIGC-only (no node is asked to train). Every reply is untrusted; the mixed model must pass
    `update_problem`; a failed round keeps the old model and `RoundFailedError` stops a run that
    cannot progress. ``first_round > 1`` continues a run restored with `load_state_dict`.
    """

    def __init__(self, base: Strategy, *, num_classes: int, kappa: KappaSchedule, augmenter: Augmenter | None,
                 histogram_timeout: float, histogram_config: ConfigRecord | None = None, seed: int,
                 reliability: Reliability, first_round: int = 1, adaptive: AdaptiveKappa | None = None,
                 bn_stats: str = "mixed", bn_fraction: float = 1.0, round_aware_floor: float | None = None,
                 choose: str = "next_round", probe_fraction: float = 1.0, check: GeneratorCheck | None = None,
                 trusted: Regime | None = None):
        if kappa.uses_synthetic_data and augmenter is None:
            raise ValueError("kappa_aug > 0 needs an augmenter (the server's synthetic-data trainer)")
        self.base, self.num_classes, self.kappa, self.augmenter = base, num_classes, kappa, augmenter
        self.histogram_timeout, self.histogram_config = histogram_timeout, histogram_config
        self.seed, self.reliability, self.offset = seed, reliability, first_round - 1
        self.adaptive, self.bn_stats, self.bn_fraction = adaptive, bn_stats, bn_fraction
        # this_round: the probe is a query before the round's model is formed (the evidence is about the
        # very mix it picks); next_round: it rides on the evaluation step and sets the next round's kappa.
        self.choose_now, self.probe_fraction = choose == "this_round", probe_fraction
        self.round_aware_floor = round_aware_floor  # None: the augmented model sees the synthetic set's own mix
        # The generator check. The settings above are the cautious ones a generator that fails it keeps;
        # ``trusted`` is the regime one that passes switches to (the run's own settings). Without it the
        # check only reports (a warning for a generator that does not carry over).
        self.check, self.trusted = check, trusted
        self.generator_check: dict | None = None  # its result (a resumed run keeps the checkpoint's)
        keys = innermost(base)
        self.weighted_by_key, self.configrecord_key = keys.weighted_by_key, keys.configrecord_key
        self.cooldown = Cooldown(reliability.straggler_cooldown_rounds, kappa.num_rounds)
        self.ledger = Ledger()  # who contributed, node by node
        self.generation_stats: dict = {}
        self.plan: dict[int, int] | None = None
        self.survey = Survey()  # the nodes' label histograms, as declared and as counted
        self.global_histogram: list[int] | None = None  # robust sum used for planning
        self.round_stats: dict[int, RoundStats] = {}
        self.rounds_succeeded = self.consecutive_failures = 0
        self._current: dict[str, np.ndarray] = {}
        self._sent: list[Message] = []
        self._sent_evaluate: list[Message] = []
        self._augmented: Future | None = None
        self._grid: Grid | None = None
        self._config = ConfigRecord()
        self._parts: tuple[dict, dict] | None = None  # (client aggregate, augmented model) for the probe
        self._probe: list[float] | None = None  # the candidates sent with this round's evaluation
        self._last_cause = "none"
        self._timeout = histogram_timeout
        self._resumed: dict = {}
        self.one_time_seconds = 0.0  # one-time work so far (histogram survey, generation, generator check): no round's

    def summary(self) -> None:
        k = self.kappa
        policy = "adaptive" if self.adaptive else f"{k.schedule} schedule, final {k.kappa_aug_final}"
        log(INFO, "\t├── GenFL: kappa_aug=%s (%s), BatchNorm statistics %s%s, base %s", k.kappa_aug, policy,
            self.bn_stats, " (generator_check.on_fail's, until the generator passes the check)" if self.trusted else "",
            type(self.base).__name__)
        self.base.summary()

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3, timeout: float = 3600,
              train_config: ConfigRecord | None = None, evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None) -> Result:
        """Flower's round loop over rounds ``first_round..num_rounds`` (``evaluate_fn`` sees the true
        round; round 0 only on a fresh run). Stops the augmenter's work however the run ends."""
        def evaluate(flower_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            server_round = flower_round + self.offset
            metrics = evaluate_fn(server_round, arrays) if evaluate_fn and (flower_round or not self.offset) else None
            if self.stopping:  # after the round's metrics were recorded; the caller does not checkpoint it
                raise RoundFailedError(
                    f"round {server_round}: {self.consecutive_failures} consecutive rounds failed (reliability."
                    f"max_consecutive_failed_rounds={self.reliability.max_consecutive_failed_rounds}); last cause: "
                    f"{self._last_cause}")
            return metrics

        self._timeout = timeout  # late label histograms are asked for within a round's time
        try:
            result = super().start(grid, initial_arrays, num_rounds - self.offset, timeout, train_config,
                                   evaluate_config, evaluate)
        finally:
            if self.augmenter is not None:
                self.augmenter.close()
        if self.rounds_succeeded == 0 and num_rounds > self.offset:
            raise RoundFailedError(f"no round produced a usable model; last cause: {self._last_cause}")
        return result

    # -- before round 1: histograms and synthetic data ---------------------------------------------
    def _prepare(self, grid: Grid, config: ConfigRecord) -> None:
        """Collect the label histograms (every node; resumed: those the checkpoint lacks), cap them,
        and let the augmenter synthesise."""
        content = RecordDict({self.configrecord_key: self.histogram_config or config})
        rel = self.reliability
        ask = (content, self.histogram_timeout, self.num_classes, rel.max_samples_per_node, rel.node_cap_factor)
        started = self._phase("histogram survey",
                              f"asking the nodes for their label histograms (up to {self.histogram_timeout}s)")
        if self._resumed.get("survey"):
            self.survey, node_of = resume_survey(grid, self._resumed["survey"], *ask)
        else:  # a fresh run, or a checkpoint from before histograms were kept (asked again)
            self.survey = survey(grid, *ask)
            node_of = {self._identity(n): n for n in self.survey.histograms}
        self._phase_done("histogram survey", started)
        self.global_histogram = self.survey.global_histogram
        self.ledger.histograms(self.survey.histograms, self.survey.problems, self.survey.partitions, self.survey.refused)
        if self._resumed:
            self.cooldown.restore(self._resumed["benched_until"], node_of)
            self.ledger.restore(self._resumed["nodes"], node_of)
            if self._resumed["global_histogram"] != self.global_histogram:
                log(WARNING, "label histogram differs from the checkpoint's %s: the federation changed; the "
                    "checkpoint's generation plan is kept", self._resumed["global_histogram"])
        if self.kappa.uses_synthetic_data:
            started = self._phase("generation",
                                  "planning the synthetic set, then generating it or loading it from the cache")
            self.generation_stats = self.augmenter.prepare(self.global_histogram, plan=self.plan)
            self._phase_done("generation", started)
            self.plan = self.generation_stats.get("plan")
            log(INFO, "synthetic data: %s", self.generation_stats)

    def _phase(self, name: str, doing: str) -> float:
        """One-time work before a run's first round starts: say what it does (its end: `_phase_done`)."""
        log(INFO, "%s: %s", name, doing)
        return time.monotonic()

    def _phase_done(self, name: str, started: float | None) -> None:
        """Its seconds, logged and kept apart from the rounds' (`one_time_seconds`: the ETA leaves them out)."""
        if started is not None:
            seconds = time.monotonic() - started
            self.one_time_seconds += seconds
            log(INFO, "%s: done in %.1fs", name, seconds)

    # -- rounds ------------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Start the augmented model and let the base sample and configure nodes (the true round)."""
        server_round += self.offset
        first = self.global_histogram is None  # a run's (or a resumed run's) first round
        if first:
            self._prepare(grid, config)
        self._current = dict(zip(arrays.keys(), arrays.to_numpy_ndarrays()))
        self._grid, self._config = grid, config
        if first and self.check is not None and self.kappa.uses_synthetic_data:
            started = None if self.generator_check is not None else self._phase(  # resumed: the saved verdict
                "generator check",
                f"training a model on the synthetic set alone ({self.check.epochs} epochs); nodes score it")
            self._check_generator(config)
            self._phase_done("generator check", started)
        kappa_fl, kappa_aug = self._kappas(server_round)
        self.round_stats[server_round] = RoundStats(server_round, kappa_fl=kappa_fl, kappa_aug=kappa_aug)
        self._sent = []
        if kappa_fl > 0:
            connected = list(grid.get_node_ids())
            self.ledger.presence(server_round, connected)
            if promoted := self.survey.reclaim(connected):  # a refused partition-id whose holder has gone
                self.ledger.histograms(promoted, {}, self.survey.partitions, self.survey.refused)
            if isinstance(innermost(self.base), FedAvgM):
                innermost(self.base).current_arrays = arrays  # under Eq. (1) the global model is the mix
            needed = max(self.reliability.min_train_replies, innermost(self.base).min_available_nodes)
            view = OrderedGrid(grid, self._order, skip=self.cooldown.sitting_out(server_round, connected, needed))
            with self._seeded_sampling(server_round, stream=0):
                self._sent = list(self.base.configure_train(server_round, arrays, config, view))
            self._sent = self._with_histograms(server_round, grid, config)
        if kappa_aug > 0 or (self.adaptive is not None and not self.adaptive.retired):  # kappa 0 may rise again
            self._augmented = self.augmenter.start({k: v.copy() for k, v in self._current.items()}, server_round,
                                                   class_weights=self._class_weights(), trust=self._trust())
        return self._sent

    def _check_generator(self, config: ConfigRecord) -> None:
        """Before round 1 (strategy/generator_check.py): the nodes score a model of the synthetic set
        alone on their data; a generator that carries over is trusted and the run switches to the
        ``trusted`` regime (without one the check only reports). A resumed run applies the checkpoint's
        verdict instead of checking again."""
        if self.generator_check is None:
            started = time.monotonic()
            state, synthetic_accuracy = self.augmenter.reference(self._current, self.check.epochs)
            self._probe = [0.0]  # one candidate: the model itself (mixed with itself)
            record = ArrayRecord({k: Array(v) for k, v in state.items()})
            content = RecordDict({CLIENT_PART: record, AUGMENTED: record, self.configrecord_key: config,
                                  PROBE: ConfigRecord({PROBE_CANDIDATES: self._probe, PROBE_BN_STATS: "mixed"})})
            sent = [Message(content, message_type=f"query.{PROBE_QUERY}", dst_node_id=n)
                    for n in self._sample(0, self.check.fraction, stream=2)]
            replies = list(self._grid.send_and_receive(sent, timeout=self._timeout))
            usable, _, _ = screen(0, replies, sent, "generator check", self._evaluate_problem, self._order)
            self._probe = None
            scores = [next(iter(r.content.metric_records.values())) for r in usable]
            self.generator_check = {**self.check.verdict([float(m[MIX_ACC][0]) for m in scores],
                                                         [float(m[self.weighted_by_key]) for m in scores],
                                                         synthetic_accuracy),
                                    "seconds": round(time.monotonic() - started, 2)}
            trusted = self.generator_check["trusted"]  # which settings the run goes on with
            self.generator_check["settings"] = ("as configured" if trusted else "on_fail" if self.trusted is not None
                                                else "as configured (the check only reports)")
        result = self.generator_check
        if result["trusted"]:
            outcome = "trusted, mixed as configured"
        elif self.trusted is not None:
            outcome = (f"not trusted, the cautious settings of generator_check.on_fail run ("
                       f"{'adaptive kappa_aug' if self.adaptive else 'constant kappa_aug'}, BatchNorm statistics "
                       f"{self.bn_stats})")
        else:
            outcome = ("not trusted, but mixed as configured (generator_check.on_fail does not apply to this run): "
                       "the synthetic data may pull the model below FedAvg")
        log(INFO if result["trusted"] else WARNING, "generator check: a model of the synthetic set alone scores %s on "
            "%d nodes' real data, %s on the synthetic set (transfer %s, trusted at >= %s): %s", result["real_accuracy"],
            result["nodes"], result["synthetic_accuracy"], result["transfer"], result["min_transfer"], outcome)
        if result["trusted"] and self.trusted is not None:
            self._use(self.trusted)
        self.trusted = None  # decided for the rest of the run

    def _use(self, regime: Regime) -> None:
        """Mix the synthetic data the way ``regime`` says from this round on."""
        self.adaptive, self.bn_stats, self.bn_fraction = regime.adaptive, regime.bn_stats, regime.bn_fraction
        self.choose_now, self.probe_fraction = regime.choose == "this_round", regime.probe_fraction
        innermost(self.base).fraction_evaluate = regime.fraction_evaluate
        self.augmenter.configure(**regime.augmented)

    @contextmanager
    def _seeded_sampling(self, server_round: int, stream: int):
        """Flower's strategies sample nodes with the global `random`: seed it for this round and use
        (training 0, evaluation 1), then leave it as it was, so a seed fixes every sample."""
        state = random.getstate()
        random.seed(self.seed * 1_000_003 + server_round + stream * 7_919_993)
        try:
            yield
        finally:
            random.setstate(state)

    def _trust(self) -> float | None:
        """How far the evidence trusts the synthetic data: adaptive kappa_aug over its starting value,
        in [0, 1] (the augmenter may scale its step count by it: augmented.steps_follow_kappa)."""
        if self.adaptive is None or self.kappa.kappa_aug <= 0:
            return None
        return min(1.0, self.adaptive.current / self.kappa.kappa_aug)

    def _class_weights(self) -> list[float] | None:
        """Round-aware augmentation (the paper's mechanism 3): weight the classes this round's training
        nodes lack, from their validated label histograms (strategy/round_aware.py)."""
        if self.round_aware_floor is None or not self._sent:
            return None
        round_histogram = np.sum([self.survey.histograms[m.metadata.dst_node_id] for m in self._sent], axis=0)
        return lack_weights(round_histogram.tolist(), floor=self.round_aware_floor)

    def _kappas(self, server_round: int) -> tuple[float, float]:
        if self.adaptive is not None:
            return round(1.0 - self.adaptive.current, 6), self.adaptive.current
        return self.kappa.at(server_round)

    def _with_histograms(self, server_round: int, grid: Grid, config: ConfigRecord) -> list[Message]:
        """A sampled node without a valid label histogram (it joined late or restarted with a new id)
        is asked for one now, and its claim counts from then on; the generation plan stays as it was
        (the synthetic set is made once). A node that still has none does not train for nothing."""
        late = [m.metadata.dst_node_id for m in self._sent if m.metadata.dst_node_id not in self.survey.histograms
                and m.metadata.dst_node_id not in self.survey.asked]  # not twice in one round
        self.survey.asked = set()
        if late:
            rel = self.reliability
            content = RecordDict({self.configrecord_key: self.histogram_config or config})
            found = self.survey.extend(grid, late, content, self._timeout, self.num_classes, rel.max_samples_per_node,
                                       rel.node_cap_factor)
            self.round_stats[server_round].late_histograms = len(found)
            self.ledger.histograms(found, {n: self.survey.problems[n] for n in late if n not in found},
                                   self.survey.partitions, self.survey.refused)
            self.cooldown.bench(server_round, sorted(set(late) - set(found)), "no valid label histogram")
        return [m for m in self._sent if m.metadata.dst_node_id in self.survey.histograms]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Eq. (1) over the usable client models and the augmented model; ``(None, None)`` keeps the
        old model when the round fails, and too many failures in a row stop the run."""
        server_round += self.offset
        stats = self.round_stats[server_round]
        kappa_fl, kappa_aug = stats.kappa_fl, stats.kappa_aug
        if server_round == self.offset + 1 and self.generation_stats:
            stats.update(images_synthesized=self.generation_stats["images_synthesized"],
                         generation_seconds=self.generation_stats["generation_seconds"])
        states, weights, metrics, cause = [], [], None, None
        client_part = augmented = None
        self._parts = None
        learnt = self._learnt()  # what a rejected round must leave as it was
        if kappa_fl > 0:
            client_part, metrics, cause = self._aggregate_clients(server_round, list(replies), stats)
            drop_models(replies)  # Flower's loop holds this round's replies until the next round's arrive
            if client_part is not None:
                states, weights = [client_part], [kappa_fl]
        else:
            stats.update(clients_trained=0, clients_failed=0, clients_excluded=0, clients_missing=0)
        if self._augmented is not None:
            job, self._augmented = self._augmented, None
            augmented, augmented_metrics = job.result()  # joined even if the round failed
            stats.update(**augmented_metrics)
            states.append(augmented)
            weights.append(kappa_aug)
        if cause is None and self.choose_now and client_part is not None and augmented is not None:
            self._probe_now(server_round, client_part, augmented, stats)
            stats.kappa_aug = self.adaptive.current
            stats.kappa_fl = round(1.0 - stats.kappa_aug, 6)
            weights = [stats.kappa_fl, stats.kappa_aug]
        if cause is None:
            mixed = mix(states, weights, client_part if self.bn_stats != "mixed" else None)
            if self.bn_stats == "reestimate" and bn_statistic_names(mixed):
                mixed = self._reestimate_bn(server_round, mixed, stats)
            cause, ratio = update_problem(self._current, mixed, self.reliability.max_relative_update)
            stats.update_ratio = round(ratio, 6) if np.isfinite(ratio) else None
            cause = cause and f"the new global model was rejected: {cause}"
        release_memory()  # reference cycles, then the freed heap back to the OS (torchcore/memory.py)
        if cause is not None:
            self._restore(learnt)
            return self._round_failed(server_round, cause), None
        self.consecutive_failures = 0
        self.rounds_succeeded += 1
        stats.round_accepted = True
        if self.adaptive is not None and not self.choose_now and client_part is not None and augmented is not None:
            self._parts = (client_part, augmented)
        return ArrayRecord({k: Array(v) for k, v in mixed.items()}), metrics

    def _sample(self, server_round: int, fraction: float, stream: int) -> list[int]:
        """A reproducible share of the nodes with a valid label histogram (``stream`` separates uses)."""
        nodes = sorted((n for n in self._grid.get_node_ids() if n in self.survey.histograms), key=self._order)
        count = max(1, round(len(nodes) * fraction))
        if count < len(nodes):
            rng = random.Random(self.seed * 1_000_003 + server_round + stream * 7_919)
            nodes = sorted(rng.sample(nodes, count), key=self._order)
        return nodes

    def _probe_now(self, server_round: int, client_part: dict, augmented: dict, stats: RoundStats) -> None:
        """mix.choose=this_round: a sample of nodes scores this round's candidate mixes on their data
        (query.kappa_probe) and the policy picks this round's kappa_aug from it; without usable
        replies the previous kappa_aug stays."""
        content = RecordDict({**self._probe_records(client_part, augmented), self.configrecord_key: self._config})
        sent = [Message(content, message_type=f"query.{PROBE_QUERY}", dst_node_id=n)
                for n in self._sample(server_round, self.probe_fraction, stream=1)]
        replies = list(self._grid.send_and_receive(sent, timeout=self._timeout))
        usable, _, _ = screen(server_round, replies, sent, "kappa probe", self._evaluate_problem, self._order)
        self._choose_kappa(server_round, usable, stats)
        self._probe = None

    def _probe_records(self, client_part: dict, augmented: dict) -> dict:
        """The round's two parts of Eq. (1) and the candidates (client_app/contract.py), for nodes to score."""
        self._probe = self.adaptive.candidates_with()
        # Re-estimated statistics exist only for the chosen mix: candidates mix the statistics like the
        # weights (the clients' alone do not fit mixed weights: the first screen runs scored every mix far worse).
        bn = "mixed" if self.bn_stats == "reestimate" else self.bn_stats
        return {CLIENT_PART: ArrayRecord({k: Array(v) for k, v in client_part.items()}),
                AUGMENTED: ArrayRecord({k: Array(v) for k, v in augmented.items()}),
                PROBE: ConfigRecord({PROBE_CANDIDATES: self._probe, PROBE_BN_STATS: bn})}

    def _reestimate_bn(self, server_round: int, mixed: dict[str, np.ndarray], stats: RoundStats) -> dict[str, np.ndarray]:
        """The mixed model's BatchNorm statistics recomputed on a sample of the nodes' real data and
        combined (torchcore.mixing); the client aggregate's are kept if no node answers usably."""
        nodes = self._sample(server_round, self.bn_fraction, stream=0)
        content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in mixed.items()}),
                              self.configrecord_key: self._config})
        sent = [Message(content, message_type=f"query.{BN_QUERY}", dst_node_id=n) for n in nodes]
        replies = list(self._grid.send_and_receive(sent, timeout=self._timeout))
        names = bn_statistic_names(mixed)

        def problem(reply: Message, node: int) -> str | None:
            return bn_reply_problem(reply.content, {k: mixed[k] for k in names}, weighted_by_key=self.weighted_by_key,
                                    declared=self.survey.declared.get(node), slack=self.reliability.claim_slack)

        usable, _, _ = screen(server_round, replies, sent, "BatchNorm statistics", problem, self._order)
        stats.bn_nodes = len(usable)
        if not usable:
            log(WARNING, "round %d: no node re-estimated the BatchNorm statistics; the client aggregate's are kept",
                server_round)
            return mixed
        reports = []
        for reply in usable:
            cap_weight(reply.content, self.weighted_by_key, self.survey.weight_cap)
            record = reply.content[BN_RECORD]
            reports.append((dict(zip(record.keys(), record.to_numpy_ndarrays())),
                            float(next(iter(reply.content.metric_records.values()))[self.weighted_by_key])))
        return {**mixed, **combine_bn_statistics(reports)}

    def _learnt(self) -> tuple:
        """What the strategy learns from a round besides the model: the base's state (server optimiser
        moments, an adaptive clipping norm) and the adaptive kappa_aug a this_round probe moves."""
        kappa = (self.adaptive.current, self.adaptive.retired) if self.adaptive is not None else None
        return snapshot_base_state(self.base), kappa

    def _restore(self, learnt: tuple) -> None:
        """Put back `_learnt`'s snapshot: a rejected round's update must not steer the next rounds."""
        base, kappa = learnt
        load_base_state(self.base, base)
        if kappa is not None:
            self.adaptive.current, self.adaptive.retired = kappa

    def _round_failed(self, server_round: int, cause: str) -> None:
        self.round_stats[server_round].update(round_accepted=False, round_failure=cause)
        self.consecutive_failures += 1
        self._last_cause = cause
        log(WARNING, "round %d failed, the global model stays as it was: %s", server_round, cause)

    @property
    def stopping(self) -> bool:
        """This round stops the run (too many failed rounds in a row); it must not be checkpointed,
        so that a resumed run retries it."""
        return self.consecutive_failures >= self.reliability.max_consecutive_failed_rounds

    def _aggregate_clients(self, server_round: int, replies: list[Message],
                           stats: RoundStats) -> tuple[dict | None, MetricRecord | None, str | None]:
        """(base aggregate as NumPy state, metrics, failure cause) over the usable replies."""
        answered = {sender(r, self._sent) for r in replies}
        self.cooldown.bench(server_round, [m.metadata.dst_node_id for m in self._sent if m.metadata.dst_node_id not in answered],
                            "no reply within the round timeout")
        usable, failed, excluded = screen(server_round, replies, self._sent, "training", self._train_problem, self._order)
        errors = {sender(reply, self._sent): reply.error.reason for reply in failed if not unreachable(reply)}
        gone = {sender(reply, self._sent): reply.error.reason for reply in failed if unreachable(reply)}
        self.cooldown.bench(server_round, errors, "its last reply was an error")  # not `gone`: see strategy/cooldown.py
        self.ledger.round(server_round, [m.metadata.dst_node_id for m in self._sent],
                          [sender(r, self._sent) for r in usable], errors, excluded, gone)
        missing = max(len(self._sent) - len(replies), 0)
        stats.update(clients_trained=len(usable), clients_failed=len(failed), clients_excluded=len(excluded),
                     clients_missing=missing)
        if missing:
            log(WARNING, "round %d: %d node(s) did not reply in time", server_round, missing)
        if len(usable) < self.reliability.min_train_replies:
            return None, None, (f"{len(usable)} usable client model(s), fewer than reliability.min_train_replies="
                                f"{self.reliability.min_train_replies} ({len(replies)} replies, {len(failed)} errors, "
                                f"{len(excluded)} excluded, {missing} missing)")
        weigh(usable, self.weighted_by_key, self.survey.weight_cap, dp_wrapper(self.base))
        name = type(self.base).__name__
        try:
            record, metrics = self.base.aggregate_train(server_round, usable)
        except (AggregationError, InconsistentMessageReplies) as err:  # Flower's verdicts on its input; bugs propagate
            return None, None, f"{name} could not aggregate: {type(err).__name__}: {err}"
        state = {} if record is None else dict(zip(record.keys(), record.to_numpy_ndarrays()))
        if list(state) != list(self._current):
            return None, None, f"{name} returned no model" if record is None else f"{name} returned arrays that differ from the global model's"
        if metrics is not None and "train-loss" in metrics:
            stats.train_loss = float(metrics["train-loss"])
        return like(state, self._current), metrics, None

    def _train_problem(self, reply: Message, node: int) -> str | None:
        problem = train_reply_problem(reply.content, self._current, weighted_by_key=self.weighted_by_key,
                                      declared=self.survey.declared.get(node), slack=self.reliability.claim_slack)
        if problem is None and dp_wrapper(self.base) is not None and not changed(reply, self._current):
            problem = "its update is exactly zero (Flower's DP clipping divides by the update's norm)"
        return problem

    def _evaluate_problem(self, reply: Message, node: int) -> str | None:
        problem = evaluate_reply_problem(reply.content, weighted_by_key=self.weighted_by_key,
                                         declared=self.survey.declared.get(node), slack=self.reliability.claim_slack)
        if problem is None and self._probe is not None:
            metrics = next(iter(reply.content.metric_records.values()))
            for key in (MIX_LOSS, MIX_ACC):
                value = metrics.get(key)
                if not isinstance(value, list) or len(value) != len(self._probe):
                    problem = f"{key!r} must list one value per candidate kappa ({len(self._probe)}), got {value!r}"
                    break
            if problem is None and not all(0.0 <= a <= 1.0 for a in metrics[MIX_ACC]):  # the generator check's verdict
                problem = f"{MIX_ACC!r} must hold accuracies in [0, 1], got {metrics[MIX_ACC]!r}"
        if problem is None:
            cap_weight(reply.content, self.weighted_by_key, self.survey.weight_cap)
        return problem

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """The base's evaluation messages; under adaptive kappa they also carry this round's two parts
        of Eq. (1) and the candidate kappas, for the nodes to score on their own data."""
        with self._seeded_sampling(server_round + self.offset, stream=1):  # which nodes score the probe, too
            self._sent_evaluate = list(self.base.configure_evaluate(server_round + self.offset, arrays, config,
                                                                    OrderedGrid(grid, self._order)))
        self._probe = None
        if self._parts is not None and self._sent_evaluate:
            records = self._probe_records(*self._parts)
            for msg in self._sent_evaluate:
                for name, record in records.items():
                    msg.content[name] = record
        return self._sent_evaluate

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """The base's average of the usable evaluation replies, validated like training replies."""
        server_round += self.offset
        replies = list(replies)
        usable, failed, excluded = screen(server_round, replies, self._sent_evaluate, "evaluation",
                                          self._evaluate_problem, self._order)
        stats = self.round_stats.setdefault(server_round, RoundStats(server_round))
        stats.update(clients_evaluated=len(usable), clients_evaluate_failed=len(failed),
                     clients_evaluate_excluded=len(excluded))
        metrics = self.base.aggregate_evaluate(server_round, usable) if usable else None
        if self._probe is not None:
            self._choose_kappa(server_round, usable, stats)
        self._probe = self._parts = None
        for key in ("eval-loss", "eval-acc"):  # what the ClientApp reports (client_app/app.py)
            if metrics is not None and key in metrics:
                setattr(stats, "federated_" + key.replace("-", "_"), float(metrics[key]))
        return metrics

    def _choose_kappa(self, server_round: int, usable: list[Message], stats: RoundStats) -> None:
        """Federated loss of each candidate mix (sample-weighted, capped like any weight); kappa_aug moves."""
        if not usable:
            log(WARNING, "round %d: no node scored the candidate kappas; kappa_aug stays %s", server_round,
                self.adaptive.current)
            return
        scores = [next(iter(r.content.metric_records.values())) for r in usable]
        federated, errors = self.adaptive.federated([m[MIX_LOSS] for m in scores],
                                                    [float(m[self.weighted_by_key]) for m in scores])
        best = self.adaptive.choose(dict(zip(self._probe, federated)), dict(zip(self._probe, errors)))
        stats.update(kappa_probe={f"{k:g}": round(float(v), 5) for k, v in zip(self._probe, federated)},
                     kappa_probe_error={f"{k:g}": round(float(v), 5) for k, v in zip(self._probe, errors)},
                     kappa_best=best, kappa_next=self.adaptive.current, probe_nodes=len(usable))
        if self.adaptive.retired:
            stats.synthetic_retired = True
            log(WARNING, "round %d: kappa_aug fell below mix.retire_below=%s: the synthetic data is retired for the "
                "rest of the run (no augmented model, no probe)", server_round, self.adaptive.retire_below)
        log(INFO, "round %d: adaptive kappa: federated loss by kappa_aug %s -> kappa_aug %s %s", server_round,
            stats.kappa_probe, self.adaptive.current, "this round" if self.choose_now else "next round")

    def _order(self, node: int) -> tuple[int, int]:
        return self.survey.order(node)

    def _identity(self, node: int) -> tuple[str, int]:
        return self.survey.identity(node)

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """What a resumed run needs (plain data), the nodes' histograms included: a resumed run asks
        only the nodes it never heard from (strategy/histograms.py)."""
        return {
            "plan": self.plan,
            "global_histogram": self.global_histogram,
            "survey": self.survey.state(),
            "generation_stats": self.generation_stats,
            "round_stats": {r: s.row() for r, s in self.round_stats.items()},
            "rounds_succeeded": self.rounds_succeeded,
            "consecutive_failures": self.consecutive_failures,
            "benched_until": self.cooldown.state(self._identity),
            "nodes": self.ledger.state(self._identity),
            "base": base_state(self.base),  # server optimiser moments, an adaptive clipping norm
            "adaptive_kappa": self.adaptive.current if self.adaptive else None,
            "adaptive_retired": self.adaptive.retired if self.adaptive else None,
            "generator_check": self.generator_check,
        }

    def load_state_dict(self, state: dict) -> None:
        self.plan = {int(k): int(v) for k, v in state["plan"].items()} if state["plan"] else None
        self.round_stats = {int(r): RoundStats(**row) for r, row in state["round_stats"].items()}
        self.rounds_succeeded = state["rounds_succeeded"]
        self.consecutive_failures = state["consecutive_failures"]
        load_base_state(self.base, state["base"])
        for policy in (self.adaptive, self.trusted.adaptive if self.trusted else None):  # the check's verdict
            if policy is not None and state.get("adaptive_kappa") is not None:         # picks one of them
                policy.current = float(state["adaptive_kappa"])
                policy.retired = bool(state.get("adaptive_retired"))
        self.generator_check = state.get("generator_check")
        self._resumed = {k: state.get(k) for k in ("global_histogram", "benched_until", "nodes", "survey")}
