"""The client part of Eq. (1): the nodes the base strategy samples to train, and its aggregate of
their usable replies.

Sampling is seeded and in partition order (the same nodes on every rerun), without the nodes that
sit out; a sampled node without a label histogram is asked for one (strategy/late_nodes.py). Every
reply is untrusted (strategy/replies.py); who trained, failed, was excluded, missed the deadline or
went away is recorded node by node (the ledger), and a node that failed or missed the deadline sits
out a few rounds (the cooldown). Flower's verdicts on its input fail the round; bugs propagate.
"""

from __future__ import annotations

from logging import WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError, InconsistentMessageReplies
from flwr.serverapp.strategy import FedAvgM, Strategy

from genfl_protocol.mixing import like
from strategy.ask import seeded
from strategy.bases import dp_wrapper, innermost
from strategy.cooldown import Cooldown
from strategy.grids import OrderedGrid
from strategy.histograms import HistogramQuery, Survey
from strategy.late_nodes import ask_late
from strategy.ledger import Ledger
from strategy.replies import Reliability, changed, drop_models, screen, sender, train_reply_problem, unreachable, weigh
from strategy.stats import RoundStats


class ClientPart:
    """``base`` aggregating the round's training replies, with what the server knows about the nodes."""

    def __init__(self, base: Strategy, reliability: Reliability, cooldown: Cooldown, ledger: Ledger):
        self.base, self.reliability, self.cooldown, self.ledger = base, reliability, cooldown, ledger
        self.weighted_by_key = innermost(base).weighted_by_key

    def configure(self, arrays: ArrayRecord, config: ConfigRecord, grid: Grid, survey: Survey, seed: int,
                  late: HistogramQuery, stats: RoundStats) -> list[Message]:
        """The base's training messages for round ``stats.round``; only nodes with a label histogram train
        (``late``: how a sampled node without one is asked)."""
        server_round, connected = stats.round, list(grid.get_node_ids())
        self.ledger.presence(server_round, connected)
        if promoted := survey.reclaim(connected):  # a refused partition-id whose holder has gone
            self.ledger.histograms(promoted, {}, survey.partitions, survey.refused)
        inner = innermost(self.base)
        if isinstance(inner, FedAvgM):
            inner.current_arrays = arrays  # under Eq. (1) the global model is the mix
        needed = max(self.reliability.min_train_replies, inner.min_available_nodes)
        view = OrderedGrid(grid, survey.order, skip=self.cooldown.sitting_out(server_round, connected, needed))
        with seeded(seed, server_round, "train"):
            sent = list(self.base.configure_train(server_round, arrays, config, view))
        ask_late(survey, grid, [m.metadata.dst_node_id for m in sent], late, self.ledger, self.cooldown, stats)
        return [m for m in sent if m.metadata.dst_node_id in survey.histograms]

    def __call__(self, replies, sent: list[Message], current: dict[str, np.ndarray], survey: Survey,
                 stats: RoundStats) -> tuple[dict | None, MetricRecord | None, str | None]:
        """(aggregate as NumPy state, metrics, failure cause); nothing when no node was asked (kappa_fl = 0).
        The replies' models are dropped once used: Flower's loop holds the replies until the next round's."""
        if stats.kappa_fl <= 0:
            stats.update(clients_trained=0, clients_failed=0, clients_excluded=0, clients_missing=0)
            return None, None, None
        result = self._aggregate(stats.round, list(replies), sent, current, survey, stats)
        drop_models(replies)
        return result

    def _aggregate(self, server_round: int, replies: list[Message], sent: list[Message], current: dict,
                   survey: Survey, stats: RoundStats) -> tuple[dict | None, MetricRecord | None, str | None]:
        dp, rel = dp_wrapper(self.base), self.reliability

        def problem(reply: Message, node: int) -> str | None:
            found = train_reply_problem(reply.content, current, weighted_by_key=self.weighted_by_key,
                                        declared=survey.declared.get(node), slack=rel.claim_slack)
            if found is None and dp is not None and not changed(reply, current):
                found = "its update is exactly zero (Flower's DP clipping divides by the update's norm)"
            return found

        answered = {sender(r, sent) for r in replies}
        self.cooldown.bench(server_round, [m.metadata.dst_node_id for m in sent if m.metadata.dst_node_id not in answered],
                            "no reply within the round timeout")
        usable, failed, excluded = screen(server_round, replies, sent, "training", problem, survey.order)
        errors = {sender(reply, sent): reply.error.reason for reply in failed if not unreachable(reply)}
        gone = {sender(reply, sent): reply.error.reason for reply in failed if unreachable(reply)}
        self.cooldown.bench(server_round, errors, "its last reply was an error")  # not `gone`: see strategy/cooldown.py
        self.ledger.round(server_round, [m.metadata.dst_node_id for m in sent], [sender(r, sent) for r in usable], errors,
                          excluded, gone)
        missing = max(len(sent) - len(replies), 0)
        stats.update(clients_trained=len(usable), clients_failed=len(failed), clients_excluded=len(excluded),
                     clients_missing=missing)
        if missing:
            log(WARNING, "round %d: %d node(s) did not reply in time", server_round, missing)
        if len(usable) < rel.min_train_replies:
            return None, None, (f"{len(usable)} usable client model(s), fewer than reliability.min_train_replies="
                                f"{rel.min_train_replies} ({len(replies)} replies, {len(failed)} errors, "
                                f"{len(excluded)} excluded, {missing} missing)")
        weigh(usable, self.weighted_by_key, survey.weight_cap, dp)
        name = type(self.base).__name__
        try:
            record, metrics = self.base.aggregate_train(server_round, usable)
        except (AggregationError, InconsistentMessageReplies) as err:  # Flower's verdicts on its input; bugs propagate
            return None, None, f"{name} could not aggregate: {type(err).__name__}: {err}"
        state = {} if record is None else dict(zip(record.keys(), record.to_numpy_ndarrays()))
        if list(state) != list(current):
            return None, None, f"{name} returned no model" if record is None else f"{name} returned arrays that differ from the global model's"
        if metrics is not None and "train-loss" in metrics:
            stats.train_loss = float(metrics["train-loss"])
        return like(state, current), metrics, None
