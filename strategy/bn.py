"""mix.bn_stats=reestimate: the mixed model's BatchNorm running statistics, recomputed by a sample of
the nodes on their own data (query.bn_statistics) and combined (genfl_protocol.mixing).

Mixed like the weights, the statistics of a model trained on synthetic images drag the global
model's away from the clients' real data; recomputed, they describe that data, and the server still
sees none of it.
"""

from __future__ import annotations

from collections.abc import Callable
from logging import WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, Message
from flwr.common.logger import log

from genfl_protocol.contract import BN_QUERY, BN_RECORD
from strategy.probe import scores
from strategy.replies import bn_reply_problem, cap_weight
from strategy.stats import RoundStats
from genfl_protocol.mixing import bn_statistic_names, combine_bn_statistics


def reestimate(server_round: int, mixed: dict[str, np.ndarray], ask: Callable[..., list[Message]],
               claims: Callable[[int], dict], weighted_by_key: str, weight_cap: float,
               stats: RoundStats) -> dict[str, np.ndarray]:
    """``mixed`` with the nodes' combined statistics; the client aggregate's (in ``mixed``) are kept
    if no node answers usably. ``ask(records, kind, what, problem)`` asks the sample of nodes;
    ``claims(node)`` is what a node's reply is checked against (strategy/replies.py)."""
    reference = {k: mixed[k] for k in bn_statistic_names(mixed)}

    def problem(reply: Message, node: int) -> str | None:
        return bn_reply_problem(reply.content, reference, **claims(node))

    usable = ask({"arrays": ArrayRecord({k: Array(v) for k, v in mixed.items()})}, BN_QUERY, "BatchNorm statistics",
                 problem)
    stats.bn_nodes = len(usable)
    if not usable:
        log(WARNING, "round %d: no node re-estimated the BatchNorm statistics; the client aggregate's are kept",
            server_round)
        return mixed
    reports = []
    for reply in usable:
        cap_weight(reply.content, weighted_by_key, weight_cap)
        record = reply.content[BN_RECORD]
        reports.append((dict(zip(record.keys(), record.to_numpy_ndarrays())), float(scores(reply)[weighted_by_key])))
    return {**mixed, **combine_bn_statistics(reports)}
