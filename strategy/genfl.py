"""The GenFL strategy: FedAvg that first learns the federation's label histogram.

Before round 1 it asks every node for its per-class sample counts (a ``query.label_histogram``
message), validates them and logs the federation's global histogram; the GenFL step that turns
missing classes into synthetic data builds on that.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from strategy.aggregation import sample_weights, weighted_mix
from strategy.histograms import global_histogram, histogram_problem

LABEL_HISTOGRAM_QUERY = "query.label_histogram"


class NoTrainingRepliesError(RuntimeError):
    """Every client failed a round: continuing would silently keep the old model."""


class GenFL(FedAvg):
    """FedAvg, w(t+1) = sum_n rho_n w_n with rho_n proportional to client sample counts, plus the
    federation's label histogram collected before round 1 (GenFL, arXiv 2503.20166, step 1).

    Replies are checked one by one: an error reply, a missing or mismatched ArrayRecord or a bad
    ``num-examples`` excludes that client from the round with a logged reason. A round in which no
    client trained raises `NoTrainingRepliesError`.
    """

    def __init__(self, *, num_classes: int, histogram_timeout: float, **fedavg_kwargs):
        super().__init__(**fedavg_kwargs)
        self.num_classes = num_classes
        self.histogram_timeout = histogram_timeout
        self.client_histograms: dict[int, list[int]] = {}
        self.global_histogram: list[int] | None = None
        self.round_stats: dict[int, dict] = {}
        self._current_arrays: ArrayRecord | None = None
        self._sent: list[Message] = []

    def summary(self) -> None:
        log(INFO, "\t├── GenFL: label histograms from every node before round 1")
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
        """Collect the label histograms, then run the rounds as FedAvg does."""
        self.collect_label_histograms(grid, train_config or ConfigRecord())
        return super().start(grid, initial_arrays, *args, train_config=train_config, **kwargs)

    # -- rounds ------------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        # aggregate_train does not receive the global model; keep it to validate replies against.
        self._current_arrays = arrays
        self._sent = list(super().configure_train(server_round, arrays, config, grid))
        return self._sent

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Weighted average of the valid client models; excluded replies are logged with why."""
        replies = list(replies)
        reference = self._current_arrays.to_numpy_ndarrays() if self._current_arrays is not None else None
        reference_keys = list(self._current_arrays.keys()) if self._current_arrays is not None else None
        states, counts, contents, failed, excluded = [], [], [], 0, 0
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
        averaged = weighted_mix(states, sample_weights(counts))
        metrics = aggregate_metricrecords(contents, self.weighted_by_key)
        if "train-loss" in metrics:
            self.round_stats[server_round]["train_loss"] = float(metrics["train-loss"])
        return ArrayRecord({k: Array(v) for k, v in averaged.items()}), metrics

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
