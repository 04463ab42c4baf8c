"""The GenFL strategy (arXiv 2503.20166): FedAvg plus a server-side model trained on synthetic data.

1. Before round 1 every node reports its label histogram (a ``query.label_histogram`` message).
2. The server's augmenter plans and synthesises images from the validated global histogram.
3. Each round clients train on real data while the augmenter trains w_aug on the synthetic set.
4. w(t+1) = kappa_fl * sum_n rho_n w_n + kappa_aug * w_aug   (Eq. (1)), rho_n by sample counts.
The torch/diffusers work stays behind the narrow `Augmenter` interface.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from logging import INFO, WARNING
from typing import Protocol

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from strategy.aggregation import sample_weights, weighted_mix
from strategy.histograms import global_histogram, histogram_problem
from strategy.kappa import KappaSchedule

LABEL_HISTOGRAM_QUERY = "query.label_histogram"


class NoTrainingRepliesError(RuntimeError):
    """Every client failed a round: continuing would silently keep the old model."""


class Augmenter(Protocol):
    """The server-side synthetic-data work, as the strategy sees it (NumPy state in and out)."""

    def prepare(self, global_histogram: Sequence[int]) -> dict: ...

    def train(self, global_state: dict[str, np.ndarray], server_round: int) -> tuple[dict[str, np.ndarray], dict]: ...


class GenFL(FedAvg):
    """w(t+1) = kappa_fl * sum_n rho_n w_n + kappa_aug * w_aug, rho_n = n_n / sum n (Eq. (1)).

    ``kappa`` gives (kappa_fl, kappa_aug) per round: kappa_aug = 0 is FedAvg (no augmenter needed),
    kappa_fl = 0 is AIGC-only (clients are not asked to train that round). Every float array,
    BatchNorm running statistics included, is mixed with the same weights; integer counters are
    handled in `weighted_mix`.

    Replies are checked one by one: an error reply, a missing or mismatched ArrayRecord or a bad
    ``num-examples`` excludes that client from the round with a logged reason. A round that needs
    clients and gets none raises `NoTrainingRepliesError`.
    """

    def __init__(self, *, num_classes: int, histogram_timeout: float, kappa: KappaSchedule,
                 augmenter: Augmenter | None, **fedavg_kwargs):
        super().__init__(**fedavg_kwargs)
        if kappa.uses_synthetic_data and augmenter is None:
            raise ValueError("kappa_aug > 0 needs an augmenter (the server's synthetic-data trainer)")
        self.num_classes = num_classes
        self.histogram_timeout = histogram_timeout
        self.kappa = kappa
        self.augmenter = augmenter
        self.generation_stats: dict = {}
        self.client_histograms: dict[int, list[int]] = {}
        self.global_histogram: list[int] | None = None
        self.round_stats: dict[int, dict] = {}
        self._current_arrays: ArrayRecord | None = None
        self._sent: list[Message] = []
        self._partition_of: dict[int, int] = {}  # node -> partition id, to mix in a fixed order

    def summary(self) -> None:
        log(INFO, "\t├── GenFL: kappa_fl=%s kappa_aug=%s (%s schedule, kappa_aug_final=%s)",
            self.kappa.kappa_fl, self.kappa.kappa_aug, self.kappa.schedule, self.kappa.kappa_aug_final)
        super().summary()

    # -- step 1: label histograms ------------------------------------------------------------
    def collect_label_histograms(self, grid: Grid, config: ConfigRecord) -> list[int]:
        """Ask every node for its label histogram; keep the valid ones and return their sum."""
        node_ids = list(grid.get_node_ids())
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
            histogram, problem = self._histogram_from(reply)
            if problem:
                log(WARNING, "label histogram: node %s excluded: %s", node, problem)
                continue
            self.client_histograms[node] = [int(c) for c in histogram]
            partition = next(iter(reply.content.metric_records.values())).get("partition-id")
            if isinstance(partition, int):
                self._partition_of[node] = partition
        missing = len(node_ids) - len(replies)
        if missing:
            log(WARNING, "label histogram: %d node(s) did not reply within %ss", missing, self.histogram_timeout)
        self.global_histogram = global_histogram(list(self.client_histograms.values()), self.num_classes)
        log(INFO, "label histogram: %d of %d nodes reported; federation has %d samples",
            len(self.client_histograms), len(node_ids), sum(self.global_histogram))
        log(INFO, "label histogram (global, class 0..%d): %s", self.num_classes - 1, self.global_histogram)
        return self.global_histogram

    def _histogram_from(self, reply: Message) -> tuple[list | None, str | None]:
        records = reply.content.metric_records
        if len(records) != 1:
            return None, f"expected one MetricRecord, got {len(records)}"
        record = next(iter(records.values()))
        if "label-histogram" not in record:
            return None, "no 'label-histogram' in the reply"
        histogram = record["label-histogram"]
        return histogram, histogram_problem(histogram, self.num_classes)

    def start(self, grid: Grid, initial_arrays: ArrayRecord, *args, train_config: ConfigRecord | None = None, **kwargs) -> Result:
        """Collect the label histograms, synthesise data if any round uses it, then run the rounds."""
        self.collect_label_histograms(grid, train_config or ConfigRecord())
        if self.kappa.uses_synthetic_data:
            self.generation_stats = self.augmenter.prepare(self.global_histogram)
            log(INFO, "synthetic data: %s", self.generation_stats)
        return super().start(grid, initial_arrays, *args, train_config=train_config, **kwargs)

    # -- rounds ------------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        # aggregate_train does not receive the global model; keep it to validate replies against.
        self._current_arrays = arrays
        kappa_fl, _ = self.kappa.at(server_round)
        self._sent = list(super().configure_train(server_round, arrays, config, grid)) if kappa_fl > 0 else []
        return self._sent

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Eq. (1): the clients' weighted average mixed with the augmented model."""
        kappa_fl, kappa_aug = self.kappa.at(server_round)
        states, weights, metrics = [], [], MetricRecord()
        if kappa_fl > 0:
            client_average, metrics = self._average_clients(server_round, list(replies))
            states.append(client_average)
            weights.append(kappa_fl)
        else:
            self.round_stats[server_round] = {"clients_trained": 0, "clients_failed": 0, "clients_excluded": 0}
        stats = self.round_stats[server_round]
        stats.update(kappa_fl=kappa_fl, kappa_aug=kappa_aug)
        if server_round == 1 and self.generation_stats:
            stats.update(images_synthesized=self.generation_stats["images_synthesized"],
                         generation_seconds=self.generation_stats["generation_seconds"])
        if kappa_aug > 0:
            global_state = dict(zip(self._current_arrays.keys(), self._current_arrays.to_numpy_ndarrays()))
            augmented, augmented_metrics = self.augmenter.train(global_state, server_round)
            states.append(augmented)
            weights.append(kappa_aug)
            stats.update(augmented_metrics)
        mixed = weighted_mix(states, weights)
        return ArrayRecord({k: Array(v) for k, v in mixed.items()}), metrics

    def _average_clients(self, server_round: int, replies: list[Message]) -> tuple[dict[str, np.ndarray], MetricRecord]:
        """sum_n rho_n w_n over the valid replies; excluded replies are logged with why."""
        reference = self._current_arrays.to_numpy_ndarrays() if self._current_arrays is not None else None
        reference_keys = list(self._current_arrays.keys()) if self._current_arrays is not None else None
        states, counts, contents, failed, excluded = [], [], [], 0, 0
        # Replies arrive in completion order; mixing in partition order makes runs bit-reproducible.
        replies = sorted(replies, key=lambda r: self._partition_of.get(_sender(r, self._sent), _sender(r, self._sent)))
        for reply in replies:
            node = _sender(reply, self._sent)
            if reply.has_error():
                failed += 1
                log(WARNING, "round %d: node %s failed: %s", server_round, node, reply.error.reason)
                continue
            state, num_examples, problem = self._client_update(reply, reference_keys, reference)
            if problem:
                excluded += 1
                log(WARNING, "round %d: node %s excluded: %s", server_round, node, problem)
                continue
            states.append(state)
            counts.append(num_examples)
            contents.append(reply.content)
        self.round_stats[server_round] = {"clients_trained": len(states), "clients_failed": failed, "clients_excluded": excluded}
        if not states:
            raise NoTrainingRepliesError(
                f"round {server_round}: no client returned a usable model ({len(replies)} replies, "
                f"{failed} errors, {excluded} excluded); see the warnings above"
            )
        metrics = aggregate_metricrecords(contents, self.weighted_by_key)
        if "train-loss" in metrics:
            self.round_stats[server_round]["train_loss"] = float(metrics["train-loss"])
        return weighted_mix(states, sample_weights(counts)), metrics

    def _client_update(self, reply: Message, keys, reference) -> tuple[dict | None, int, str | None]:
        content = reply.content
        if len(content.array_records) != 1 or len(content.metric_records) != 1:
            return None, 0, "expected exactly one ArrayRecord and one MetricRecord"
        metrics = next(iter(content.metric_records.values()))
        num_examples = metrics.get(self.weighted_by_key)
        if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples <= 0:
            return None, 0, f"'{self.weighted_by_key}' must be a positive integer, got {num_examples!r}"
        record = next(iter(content.array_records.values()))
        state = dict(zip(record.keys(), record.to_numpy_ndarrays()))
        if keys is not None:
            if list(state) != keys:
                return None, 0, "array names differ from the global model's"
            for (name, array), ref in zip(state.items(), reference):
                if array.shape != ref.shape or array.dtype != ref.dtype:
                    return None, 0, f"array {name!r} is {array.dtype}{array.shape}, expected {ref.dtype}{ref.shape}"
                if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
                    return None, 0, f"array {name!r} has non-finite values"
        return state, num_examples, None


def _sender(reply: Message, sent: list[Message]) -> int:
    """The node a reply answers for. Matched by message id, because an error reply about an
    unreachable node comes from the SuperLink, not from the node."""
    for msg in sent:
        if msg.metadata.message_id == reply.metadata.reply_to_message_id:
            return msg.metadata.dst_node_id
    return reply.metadata.src_node_id
