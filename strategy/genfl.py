"""The GenFL strategy (arXiv 2503.20166) as a wrapper around any Flower Message-API strategy.

1. Before round 1 every node reports its label histogram (a ``query.label_histogram`` message).
2. The server's augmenter plans and synthesises images from the robust global histogram.
3. Each round clients train on real data while the augmenter trains w_aug on the synthetic set
   (in a background thread, from the same global model, joined at aggregation).
4. w(t+1) = kappa_fl * base_aggregate(w_1..w_N) + kappa_aug * w_aug   (Eq. (1)); with the FedAvg
   base, base_aggregate = sum_n rho_n w_n, rho_n by sample counts.
The torch/diffusers work stays behind the narrow `Augmenter` interface.
"""

from __future__ import annotations

import functools
import gc
import pickle
import random
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Protocol

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError, InconsistentMessageReplies
from flwr.serverapp.strategy import FedAvgM, Result, Strategy

from strategy.aggregation import weighted_mix
from strategy.bases import dp_wrapper, innermost
from strategy.grids import DelegatingGrid
from strategy.guard import update_problem
from strategy.histograms import capped_histograms, global_histogram, histogram_problem, node_cap
from strategy.kappa import KappaSchedule
from strategy.replies import cap_weight, evaluate_reply_problem, inconsistent, train_reply_problem

LABEL_HISTOGRAM_QUERY = "query.label_histogram"


class RoundFailedError(RuntimeError):
    """Rounds kept failing (no usable client model, or the new model was rejected): the run cannot
    make progress, and continuing would silently keep the old model."""


class NoHistogramsError(RuntimeError):
    """No node reported a usable label histogram: nothing to plan from, no claim can be checked."""


# Kept for callers of the earlier name: every client failing a round is one way a round fails.
NoTrainingRepliesError = RoundFailedError


class Augmenter(Protocol):
    """The server-side synthetic-data work, as the strategy sees it (NumPy state in and out)."""

    def prepare(self, global_histogram: Sequence[int], plan: dict[int, int] | None = None) -> dict: ...

    def train(self, global_state: dict[str, np.ndarray], server_round: int) -> tuple[dict[str, np.ndarray], dict]: ...


@dataclass(frozen=True)
class Reliability:
    """What the server accepts from nodes and from its own aggregation (conf/: ``reliability``)."""

    max_samples_per_node: int | None = None  # a histogram claiming more is excluded
    node_cap_factor: float = 10.0  # a node counts for at most this x the median node total
    claim_slack: int = 0  # num-examples may exceed the declared total by this much (histogram noise)
    max_relative_update: float = 10.0  # ||w(t+1) - w(t)|| / ||w(t)|| above this rejects the round
    max_consecutive_failed_rounds: int = 2
    min_train_replies: int = 1  # usable client models a round needs (when kappa_fl > 0)
    straggler_cooldown_rounds: int = 2  # a node that failed or missed the deadline sits out this many rounds


class GenFL(Strategy):
    """w(t+1) = kappa_fl * base(w_1..w_N) + kappa_aug * w_aug   (Eq. (1)).

    ``base`` is any Flower Message-API strategy (FedAvg, FedProx, FedMedian, Krum, a DP wrapper, ...):
    it samples the nodes and aggregates the client models; this wrapper adds the label-histogram
    step, the augmented model and the mix. ``kappa`` gives (kappa_fl, kappa_aug) per round:
    kappa_aug = 0 is the base alone, kappa_fl = 0 is AIGC-only (no node is asked to train).

    Every reply is untrusted: an error reply, a malformed or non-finite model, or a ``num-examples``
    above what the node declared in its histogram excludes that reply with a logged reason. The
    mixed model must pass `update_problem` before it replaces the global model; a round that fails
    keeps the old model and is counted, and `RoundFailedError` stops a run that cannot progress.
    """

    def __init__(self, base: Strategy, *, num_classes: int, kappa: KappaSchedule, augmenter: Augmenter | None,
                 histogram_timeout: float, seed: int, reliability: Reliability = Reliability(),
                 overlap: bool = True):
        if kappa.uses_synthetic_data and augmenter is None:
            raise ValueError("kappa_aug > 0 needs an augmenter (the server's synthetic-data trainer)")
        self.base = base
        self.num_classes = num_classes
        self.kappa = kappa
        self.augmenter = augmenter
        self.histogram_timeout = histogram_timeout
        self.seed = seed
        self.reliability = reliability
        self.overlap = overlap
        self._dp = dp_wrapper(base)
        keys = innermost(base)
        self.weighted_by_key, self.configrecord_key = keys.weighted_by_key, keys.configrecord_key
        self.generation_stats: dict = {}
        self.plan: dict[int, int] | None = None
        self.client_histograms: dict[int, list[int]] = {}  # by node id, as declared (validated)
        self.global_histogram: list[int] | None = None  # robust sum used for planning
        self.round_stats: dict[int, dict] = {}
        self.rounds_succeeded = 0
        self.consecutive_failures = 0
        self._declared_total: dict[int, int] = {}
        self._weight_cap: float = float("inf")
        self._partition_of: dict[int, int] = {}  # node -> partition id, to mix in a fixed order
        self._benched_until: dict[int, int] = {}  # node -> last round it sits out (stragglers, failures)
        self._current: dict[str, np.ndarray] | None = None
        self._sent: list[Message] = []
        self._sent_evaluate: list[Message] = []
        self._augmented: Future | Callable | None = None  # this round's augmented-model job
        self._last_cause = "none"
        self._resumed_histogram: list[int] | None = None
        self._resumed_bench: list[tuple[str, int, int]] = []
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="augmented-model") if overlap else None

    def summary(self) -> None:
        log(INFO, "\t├── GenFL: kappa_fl=%s kappa_aug=%s (%s schedule, kappa_aug_final=%s), base %s, overlap=%s",
            self.kappa.kappa_fl, self.kappa.kappa_aug, self.kappa.schedule, self.kappa.kappa_aug_final,
            type(self.base).__name__, self.overlap)
        self.base.summary()

    # -- step 1: label histograms ------------------------------------------------------------
    def collect_label_histograms(self, grid: Grid, config: ConfigRecord) -> list[int]:
        """Ask every node for its label histogram; keep the valid ones and return their robust sum."""
        node_ids = sorted(grid.get_node_ids())
        messages = [
            Message(RecordDict({self.configrecord_key: config}), message_type=LABEL_HISTOGRAM_QUERY, dst_node_id=n)
            for n in node_ids
        ]
        replies = list(grid.send_and_receive(messages, timeout=self.histogram_timeout))
        for reply in replies:
            node = _sender(reply, messages)
            if reply.has_error():
                log(WARNING, "label histogram: node %s failed: %s", node, reply.error.reason)
                continue
            histogram, partition, problem = self._histogram_from(reply)
            if problem:
                log(WARNING, "label histogram: node %s excluded: %s", node, problem)
                continue
            self.client_histograms[node] = [int(c) for c in histogram]
            if partition is not None:
                self._partition_of[node] = partition
        missing = len(node_ids) - len(replies)
        if missing:
            log(WARNING, "label histogram: %d node(s) did not reply within %ss", missing, self.histogram_timeout)
        if not self.client_histograms:
            raise NoHistogramsError(f"none of the {len(node_ids)} node(s) reported a valid label histogram "
                                    f"({len(replies)} replied); see the warnings above")
        self._declared_total = {node: sum(h) for node, h in self.client_histograms.items()}
        self._weight_cap = node_cap(list(self._declared_total.values()), self.reliability.node_cap_factor)
        capped = capped_histograms(self.client_histograms, self.reliability.node_cap_factor)
        for node, histogram in capped.items():
            if histogram != self.client_histograms[node]:
                log(WARNING, "label histogram: node %s declared %d samples; counted as %d (%s x the median node)",
                    node, self._declared_total[node], sum(histogram), self.reliability.node_cap_factor)
        self.global_histogram = global_histogram(list(capped.values()), self.num_classes)
        log(INFO, "label histogram: %d of %d nodes reported; federation has %d samples",
            len(self.client_histograms), len(node_ids), sum(self.global_histogram))
        log(INFO, "label histogram (global, class 0..%d): %s", self.num_classes - 1, self.global_histogram)
        if self._resumed_bench:
            self._restore_bench()
        if self._resumed_histogram is not None and self._resumed_histogram != self.global_histogram:
            log(WARNING, "label histogram differs from the checkpoint's %s: the federation changed; the "
                "checkpoint's generation plan is kept", self._resumed_histogram)
        return self.global_histogram

    def _histogram_from(self, reply: Message) -> tuple[list | None, int | None, str | None]:
        records = reply.content.metric_records
        if len(records) != 1:
            return None, None, f"expected one MetricRecord, got {len(records)}"
        record = next(iter(records.values()))
        if "label-histogram" not in record:
            return None, None, "no 'label-histogram' in the reply"
        histogram = record["label-histogram"]
        partition = record.get("partition-id")
        partition = partition if isinstance(partition, int) and not isinstance(partition, bool) else None
        return histogram, partition, histogram_problem(histogram, self.num_classes, self.reliability.max_samples_per_node)

    # -- the run -----------------------------------------------------------------------------
    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
        *,
        first_round: int = 1,
        on_round_end: Callable[[int, ArrayRecord], None] | None = None,
        histogram_config: ConfigRecord | None = None,
    ) -> Result:
        """Histograms, synthetic data, then rounds ``first_round..num_rounds``.

        ``first_round > 1`` resumes: ``initial_arrays`` is the checkpointed global model and the
        strategy's state was restored with `load_state_dict`. ``on_round_end`` runs after each
        round's evaluation (the ServerApp writes its checkpoint there). ``histogram_config`` goes
        with the label-histogram query (default: ``train_config``).
        """
        train_config = ConfigRecord() if train_config is None else train_config
        evaluate_config = ConfigRecord() if evaluate_config is None else evaluate_config
        log(INFO, "Starting GenFL over %s, rounds %d..%d", type(self.base).__name__, first_round, num_rounds)
        self.summary()
        self.collect_label_histograms(grid, train_config if histogram_config is None else histogram_config)
        if self.kappa.uses_synthetic_data:
            self.generation_stats = self.augmenter.prepare(self.global_histogram, plan=self.plan)
            self.plan = self.generation_stats.get("plan")
            log(INFO, "synthetic data: %s", self.generation_stats)
        result = Result()
        arrays = initial_arrays
        if evaluate_fn and first_round == 1:
            if (res := evaluate_fn(0, arrays)) is not None:
                result.evaluate_metrics_serverapp[0] = res
        try:
            for server_round in range(first_round, num_rounds + 1):
                log(INFO, "[ROUND %s/%s]", server_round, num_rounds)
                messages = list(self.configure_train(server_round, arrays, train_config, grid))
                replies = list(grid.send_and_receive(messages, timeout=timeout)) if messages else []
                new_arrays, train_metrics = self.aggregate_train(server_round, replies)
                if new_arrays is not None:
                    arrays = result.arrays = new_arrays
                if train_metrics is not None:
                    result.train_metrics_clientapp[server_round] = train_metrics
                messages = list(self.configure_evaluate(server_round, arrays, evaluate_config, grid))
                if messages:
                    evaluated = self.aggregate_evaluate(server_round, grid.send_and_receive(messages, timeout=timeout))
                    if evaluated is not None:
                        result.evaluate_metrics_clientapp[server_round] = evaluated
                if evaluate_fn and (res := evaluate_fn(server_round, arrays)) is not None:
                    result.evaluate_metrics_serverapp[server_round] = res
                del messages, replies
                gc.collect()  # the round's replies (one model each) sit in reference cycles otherwise
                self._check_progress(server_round)  # before the checkpoint: a resumed run retries this round
                if on_round_end:
                    on_round_end(server_round, arrays)
        finally:
            self.close()
        if self.rounds_succeeded == 0 and num_rounds >= first_round:
            raise RoundFailedError(f"no round produced a usable model; last cause: {self._last_cause}")
        return result

    def close(self) -> None:
        """Wait for the background augmented-model training, if any, and stop its thread."""
        job, self._augmented = self._augmented, None
        if isinstance(job, Future):
            job.exception()  # waits; its error, if any, was or will be reported by the round
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # -- rounds ------------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Start the augmented model (in the background) and let the base sample and configure nodes."""
        self._current = dict(zip(arrays.keys(), arrays.to_numpy_ndarrays()))
        kappa_fl, kappa_aug = self.kappa.at(server_round)
        if kappa_aug > 0:
            self._start_augmented(server_round)
        self._sent = []
        if kappa_fl > 0:
            if isinstance(innermost(self.base), FedAvgM):
                # FedAvgM keeps its own copy of the global model; under Eq. (1) the global model is the mix.
                innermost(self.base).current_arrays = arrays
            # Node order by partition and a per-round seed: the same nodes are sampled on every rerun.
            state = random.getstate()
            random.seed(self.seed * 1_000_003 + server_round)
            try:
                grid_view = _OrderedGrid(grid, self._order, skip=self._benched(server_round, grid))
                self._sent = list(self.base.configure_train(server_round, arrays, config, grid_view))
            finally:
                random.setstate(state)
        return self._sent

    def _benched(self, server_round: int, grid: Grid) -> set[int]:
        """Nodes sitting out this round, unless that would leave too few to sample from."""
        benched = {n for n, until in self._benched_until.items() if until >= server_round}
        remaining = len(set(grid.get_node_ids()) - benched)
        needed = max(self.reliability.min_train_replies, getattr(innermost(self.base), "min_available_nodes", 1))
        if benched and remaining < needed:
            log(WARNING, "round %d: only %d node(s) not sitting out; asking the %d resting ones too", server_round,
                remaining, len(benched))
            return set()
        return benched

    def _bench(self, server_round: int, nodes: Iterable[int], why: str) -> None:
        cooldown = self.reliability.straggler_cooldown_rounds
        for node in nodes:
            if cooldown > 0:
                self._benched_until[node] = server_round + cooldown
                log(INFO, "node %s sits out rounds %d..%d (%s)", node, server_round + 1, server_round + cooldown, why)

    def _start_augmented(self, server_round: int) -> None:
        """Overlapped: train now, beside the clients. Sequential: train when the round is aggregated."""
        state = {k: v.copy() for k, v in self._current.items()}
        job = functools.partial(self.augmenter.train, state, server_round)
        self._augmented = self._pool.submit(job) if self._pool is not None else job

    def _join_augmented(self, server_round: int) -> tuple[dict[str, np.ndarray], dict]:
        job, self._augmented = self._augmented, None
        if job is None:
            raise RuntimeError(f"round {server_round}: the augmented model was never started (configure_train not called?)")
        return job.result() if isinstance(job, Future) else job()

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Eq. (1): the base's aggregate of the usable client models mixed with the augmented model.

        Returns ``(None, None)`` when the round fails (the old model stays); `start` stops the run
        with `RoundFailedError` once ``max_consecutive_failed_rounds`` rounds in a row failed.
        """
        kappa_fl, kappa_aug = self.kappa.at(server_round)
        stats = self.round_stats.setdefault(server_round, {})
        stats.update(kappa_fl=kappa_fl, kappa_aug=kappa_aug)
        if server_round == 1 and self.generation_stats:
            stats.update(images_synthesized=self.generation_stats["images_synthesized"],
                         generation_seconds=self.generation_stats["generation_seconds"])
        states, weights, metrics, cause = [], [], None, None
        if kappa_fl > 0:
            client_part, metrics, cause = self._aggregate_clients(server_round, list(replies))
            if client_part is not None:
                states.append(client_part)
                weights.append(kappa_fl)
        else:
            stats.update(clients_trained=0, clients_failed=0, clients_excluded=0, clients_missing=0)
        if kappa_aug > 0:
            augmented, augmented_metrics = self._join_augmented(server_round)  # joined even if the round failed
            stats.update(augmented_metrics)
            states.append(augmented)
            weights.append(kappa_aug)
        if cause is None:
            mixed = weighted_mix(states, weights)
            cause, ratio = update_problem(self._current, mixed, self.reliability.max_relative_update)
            stats["update_ratio"] = round(ratio, 6) if np.isfinite(ratio) else None
            if cause:
                cause = f"the new global model was rejected: {cause}"
        if cause is not None:
            return self._round_failed(server_round, cause), None
        self.consecutive_failures = 0
        self.rounds_succeeded += 1
        stats["round_accepted"] = True
        return ArrayRecord({k: Array(v) for k, v in mixed.items()}), metrics

    def _round_failed(self, server_round: int, cause: str) -> None:
        self.round_stats[server_round]["round_accepted"] = False
        self.round_stats[server_round]["round_failure"] = cause
        self.consecutive_failures += 1
        self._last_cause = cause
        log(WARNING, "round %d failed, the global model stays as it was: %s", server_round, cause)

    def _check_progress(self, server_round: int) -> None:
        limit = self.reliability.max_consecutive_failed_rounds
        if self.consecutive_failures >= limit:
            raise RoundFailedError(
                f"round {server_round}: {self.consecutive_failures} consecutive rounds failed "
                f"(reliability.max_consecutive_failed_rounds={limit}); last cause: {self._last_cause}"
            )

    def _aggregate_clients(self, server_round: int, replies: list[Message]) -> tuple[dict | None, MetricRecord | None, str | None]:
        """(base aggregate as NumPy state, metrics, failure cause) over the usable replies."""
        usable, failed, excluded = [], 0, 0
        answered = {_sender(r, self._sent) for r in replies}
        self._bench(server_round, [m.metadata.dst_node_id for m in self._sent if m.metadata.dst_node_id not in answered],
                    "no reply within the round timeout")
        for reply in replies:
            node = _sender(reply, self._sent)
            if reply.has_error():
                failed += 1
                log(WARNING, "round %d: node %s failed: %s", server_round, node, reply.error.reason)
                self._bench(server_round, [node], "its last reply was an error")
                continue
            problem = train_reply_problem(reply.content, self._current, weighted_by_key=self.weighted_by_key,
                                          declared=self._declared_total.get(node), slack=self.reliability.claim_slack)
            if problem is None and self._dp is not None and not _changed(reply, self._current):
                problem = "its update is exactly zero (Flower's DP clipping divides by the update's norm)"
            if problem:
                excluded += 1
                log(WARNING, "round %d: node %s excluded: %s", server_round, node, problem)
                continue
            usable.append(reply)
        # Replies arrive in completion order; the base aggregates them in partition order (bit-reproducible).
        usable.sort(key=lambda r: self._order(_sender(r, self._sent)))
        usable, odd = self._consistent(server_round, usable, self._sent)
        excluded += odd
        missing = len(self._sent) - len(replies)
        self.round_stats[server_round].update(clients_trained=len(usable), clients_failed=failed,
                                              clients_excluded=excluded, clients_missing=max(missing, 0))
        if missing > 0:
            log(WARNING, "round %d: %d node(s) did not reply in time", server_round, missing)
        if len(usable) < self.reliability.min_train_replies:
            return None, None, (f"{len(usable)} usable client model(s), fewer than reliability.min_train_replies="
                                f"{self.reliability.min_train_replies} ({len(replies)} replies, {failed} errors, "
                                f"{excluded} excluded, {max(missing, 0)} missing)")
        self._weigh(usable)
        try:
            record, metrics = self.base.aggregate_train(server_round, usable)
        except (AggregationError, InconsistentMessageReplies) as err:  # Flower's verdicts on its input; bugs propagate
            return None, None, f"{type(self.base).__name__} could not aggregate: {type(err).__name__}: {err}"
        if record is None:
            return None, None, f"{type(self.base).__name__} returned no model"
        state = dict(zip(record.keys(), record.to_numpy_ndarrays()))
        if list(state) != list(self._current):
            return None, None, f"{type(self.base).__name__} returned arrays that differ from the global model's"
        if metrics is not None and "train-loss" in metrics:
            self.round_stats[server_round]["train_loss"] = float(metrics["train-loss"])
        return _like(state, self._current), metrics, None

    def _consistent(self, server_round: int, replies: list[Message], sent: list[Message]) -> tuple[list[Message], int]:
        """The replies that share the common record layout (Flower refuses a mixed set), and how many did not."""
        odd = inconsistent(replies)
        for i, why in odd.items():
            log(WARNING, "round %d: node %s excluded: %s", server_round, _sender(replies[i], sent), why)
        return [r for i, r in enumerate(replies) if i not in odd], len(odd)

    def _weigh(self, usable: list[Message]) -> None:
        """Aggregation weights: sample counts capped at the node cap; under DP uniform weights and the
        noise calibrated to the replies actually aggregated (DP-FedAvg's analysis assumes both)."""
        dp = self._dp
        for reply in usable:
            if dp is not None:
                next(iter(reply.content.metric_records.values()))[self.weighted_by_key] = 1
            else:
                cap_weight(reply.content, self.weighted_by_key, self._weight_cap)
        if dp is not None:
            dp.num_sampled_clients = len(usable)  # noise std = noise_multiplier * clipping_norm / this

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        self._sent_evaluate = list(self.base.configure_evaluate(server_round, arrays, config, _OrderedGrid(grid, self._order)))
        return self._sent_evaluate

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """The base's average of the usable evaluation replies; each is validated like a training reply."""
        replies = list(replies)
        usable, failed, excluded = [], 0, 0
        for reply in replies:
            node = _sender(reply, self._sent_evaluate)
            if reply.has_error():
                failed += 1
                log(WARNING, "round %d: evaluation on node %s failed: %s", server_round, node, reply.error.reason)
                continue
            problem = evaluate_reply_problem(reply.content, weighted_by_key=self.weighted_by_key,
                                             declared=self._declared_total.get(node), slack=self.reliability.claim_slack)
            if problem:
                excluded += 1
                log(WARNING, "round %d: evaluation reply of node %s excluded: %s", server_round, node, problem)
                continue
            cap_weight(reply.content, self.weighted_by_key, self._weight_cap)
            usable.append(reply)
        usable.sort(key=lambda r: self._order(_sender(r, self._sent_evaluate)))
        usable, odd = self._consistent(server_round, usable, self._sent_evaluate)
        stats = self.round_stats.setdefault(server_round, {})
        stats.update(clients_evaluated=len(usable), clients_evaluate_failed=failed, clients_evaluate_excluded=excluded + odd)
        if not usable:
            return None
        metrics = self.base.aggregate_evaluate(server_round, usable)
        for key, value in (metrics or {}).items():
            if key != self.weighted_by_key and isinstance(value, (int, float)):
                stats["federated_" + key.replace("-", "_")] = float(value)
        return metrics

    def _order(self, node: int) -> tuple[int, int]:
        partition = self._partition_of.get(node)
        return (0, partition) if partition is not None else (1, node)

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue after the last finished round (picklable).

        Per-node histograms are not kept: node ids change when a simulation restarts, so they are
        asked for again and only their sum is compared with the checkpoint's.
        """
        return {
            "plan": self.plan,
            "global_histogram": self.global_histogram,
            "generation_stats": self.generation_stats,
            "round_stats": self.round_stats,
            "rounds_succeeded": self.rounds_succeeded,
            "consecutive_failures": self.consecutive_failures,
            "benched_until": [(*self._identity(n), r) for n, r in sorted(self._benched_until.items())],
            "base": pickle.dumps(self.base),  # server optimiser moments, adaptive clipping norms, ...
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict`; histograms are collected again (node ids change) and compared."""
        self.plan = {int(k): int(v) for k, v in state["plan"].items()} if state["plan"] else None
        self.round_stats = {int(k): v for k, v in state["round_stats"].items()}
        self.rounds_succeeded = state["rounds_succeeded"]
        self.consecutive_failures = state["consecutive_failures"]
        self.base = pickle.loads(state["base"])
        self._dp = dp_wrapper(self.base)
        self._resumed_histogram = state["global_histogram"]
        self._resumed_bench = list(state["benched_until"])  # mapped to node ids after the histogram query

    def _identity(self, node: int) -> tuple[str, int]:
        """What names a node across a restart: its partition (simulation), else its node id (a
        SuperNode with its own data keeps its id while it runs)."""
        partition = self._partition_of.get(node)
        return ("partition", partition) if partition is not None else ("node", node)

    def _restore_bench(self) -> None:
        node_of = {self._identity(n): n for n in self.client_histograms}
        self._benched_until = {node_of[(kind, key)]: until for kind, key, until in self._resumed_bench
                               if (kind, key) in node_of}


def _changed(reply: Message, reference: dict[str, np.ndarray]) -> bool:
    """Whether a (validated) training reply's model differs from the global model anywhere."""
    record = next(iter(reply.content.array_records.values()))
    return any(not np.array_equal(a, ref) for a, ref in zip(record.to_numpy_ndarrays(), reference.values()))


def _like(state: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cast a base strategy's output back to the global model's dtypes (averaging makes counters float)."""
    out = {}
    for key, array in state.items():
        dtype = reference[key].dtype
        array = np.asarray(array)
        out[key] = np.rint(array).astype(dtype) if np.issubdtype(dtype, np.integer) else array.astype(dtype, copy=False)
    return out


class _OrderedGrid(DelegatingGrid):
    """The run's Grid as the base strategy sees it: node ids in partition order (so seeded sampling
    picks the same nodes on every rerun), without the nodes that sit out this round."""

    def __init__(self, grid: Grid, order: Callable[[int], tuple], skip: set[int] = frozenset()):
        super().__init__(grid)
        self._order_key, self._skip = order, skip

    def get_node_ids(self) -> list[int]:
        return sorted((n for n in self._grid.get_node_ids() if n not in self._skip), key=self._order_key)


def _sender(reply: Message, sent: list[Message]) -> int:
    """The node a reply answers for. Matched by message id, because an error reply about an
    unreachable node comes from the SuperLink, not from the node."""
    for msg in sent:
        if msg.metadata.message_id == reply.metadata.reply_to_message_id:
            return msg.metadata.dst_node_id
    return reply.metadata.src_node_id
