"""Validation of what a node sends back after training or evaluation: every reply is untrusted.

Pure functions of a reply's content and what the server already knows (the global model's arrays,
the node's declared sample count), so they are tested without a Grid and shared by the training and
evaluation paths. A reply they reject is excluded with the returned reason; nothing is raised.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from logging import WARNING

import numpy as np
from flwr.app import ArrayRecord, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.common.logger import log


@dataclass(frozen=True)
class Reliability:
    """What the server accepts from nodes and from its own aggregation (conf/: ``reliability``)."""

    max_samples_per_node: int | None  # a histogram claiming more is excluded
    node_cap_factor: float  # a node counts for at most this x the median node total
    claim_slack: int  # num-examples may exceed the declared total by this much (histogram noise)
    max_relative_update: float  # ||w(t+1) - w(t)|| / ||w(t)|| above this rejects the round
    max_consecutive_failed_rounds: int
    min_train_replies: int  # usable client models a round needs (when kappa_fl > 0)
    straggler_cooldown_rounds: int  # a node that failed or missed the deadline sits out this many rounds


def _metrics_problem(content: RecordDict, weighted_by_key: str, declared: int | None, slack: int) -> str | None:
    metrics = next(iter(content.metric_records.values()))
    num_examples = metrics.get(weighted_by_key)
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples <= 0:
        return f"'{weighted_by_key}' must be a positive integer, got {num_examples!r}"
    if declared is None:
        return "it reported no valid label histogram, so its sample count cannot be checked"
    if num_examples > declared + slack:
        return f"'{weighted_by_key}'={num_examples} exceeds the {declared} samples its label histogram declared"
    for key, value in metrics.items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            return f"metric {key!r} is not finite"
    return None


def train_reply_problem(content: RecordDict, reference: Mapping[str, np.ndarray], *, weighted_by_key: str,
                        declared: int | None, slack: int) -> str | None:
    """Why a training reply must not be aggregated, or None: one model of the global model's names,
    shapes and dtypes, all finite, and a positive sample count within what the node declared."""
    if len(content.array_records) != 1 or len(content.metric_records) != 1:
        return "expected exactly one ArrayRecord and one MetricRecord"
    problem = _metrics_problem(content, weighted_by_key, declared, slack)
    if problem:
        return problem
    record = next(iter(content.array_records.values()))
    if list(record.keys()) != list(reference):
        return "array names differ from the global model's"
    for (name, array), ref in zip(zip(record.keys(), record.to_numpy_ndarrays()), reference.values()):
        if array.shape != ref.shape or array.dtype != ref.dtype:
            return f"array {name!r} is {array.dtype}{array.shape}, expected {ref.dtype}{ref.shape}"
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            return f"array {name!r} has non-finite values"
    return None


def evaluate_reply_problem(content: RecordDict, *, weighted_by_key: str, declared: int | None, slack: int) -> str | None:
    """Why an evaluation reply must not be averaged, or None: one MetricRecord and no model, finite
    metrics, a positive sample count within what the node declared."""
    if len(content.metric_records) != 1 or len(content.array_records) != 0:
        return "expected exactly one MetricRecord and no ArrayRecord"
    return _metrics_problem(content, weighted_by_key, declared, slack)


def bn_reply_problem(content: RecordDict, reference: Mapping[str, np.ndarray], *, weighted_by_key: str,
                     declared: int | None, slack: int) -> str | None:
    """Why a node's BatchNorm statistics must not be combined, or None: checked like a model whose
    arrays are exactly the global model's BatchNorm running means and variances, and no variance < 0."""
    problem = train_reply_problem(content, reference, weighted_by_key=weighted_by_key, declared=declared, slack=slack)
    if problem is not None:
        return problem
    record = next(iter(content.array_records.values()))
    for name, array in zip(record.keys(), record.to_numpy_ndarrays()):
        if name.endswith("running_var") and (array < 0).any():
            return f"array {name!r} has negative variances"
    return None


def _signature(reply: Message) -> tuple:
    content = reply.content
    metric_name, metrics = next(iter(content.metric_records.items()))
    array_names = tuple(content.array_records.keys())
    return array_names, metric_name, tuple(sorted(metrics.keys()))


def inconsistent(replies: Sequence[Message]) -> dict[int, str]:
    """Replies (by position) whose record names or metric keys differ from the most common layout.

    Flower's strategies refuse a whole set of replies when one differs (InconsistentMessageReplies),
    so one odd node would cost everyone the round; it is excluded instead. Ties go to the layout
    seen first, so the outcome follows the (deterministic) reply order.
    """
    signatures = [_signature(r) for r in replies]
    if not signatures:
        return {}
    counts = Counter(signatures)
    majority = max(counts, key=lambda s: (counts[s], -signatures.index(s)))
    return {i: f"its records {s} differ from the others' {majority}" for i, s in enumerate(signatures) if s != majority}


def cap_weight(content: RecordDict, weighted_by_key: str, cap: float) -> None:
    """Cap the reply's aggregation weight in place, so one node cannot dominate an average."""
    metrics = next(iter(content.metric_records.values()))
    if metrics[weighted_by_key] > cap:
        metrics[weighted_by_key] = int(cap)


def sender(reply: Message, sent: list[Message]) -> int:
    """The node a reply answers for. Matched by message id, because an error reply about an
    unreachable node comes from the SuperLink, not from the node."""
    for msg in sent:
        if msg.metadata.message_id == reply.metadata.reply_to_message_id:
            return msg.metadata.dst_node_id
    return reply.metadata.src_node_id


def unreachable(reply: Message) -> bool:
    """An error reply that says the node went away (the SuperLink's "node unavailable", sent about
    ~60 s after a SuperNode died or lost its connection), not that its ClientApp failed."""
    return reply.has_error() and reply.error.code == ErrorCode.NODE_UNAVAILABLE


def changed(reply: Message, reference: dict[str, np.ndarray]) -> bool:
    """Whether a (validated) training reply's model differs from the global model anywhere."""
    record = next(iter(reply.content.array_records.values()))
    return any(not np.array_equal(a, ref) for a, ref in zip(record.to_numpy_ndarrays(), reference.values()))


def screen(server_round: int, replies: list[Message], sent: list[Message], what: str,
           problem_of: Callable[[Message, int], str | None],
           order: Callable[[int], tuple]) -> tuple[list[Message], list[Message], dict[int, str]]:
    """(usable replies in ``order``, error replies, why each excluded node's reply was), all logged.

    Usable: not an error, no problem by ``problem_of(reply, node)``, and the common record layout
    (Flower refuses a set of replies with mixed layouts, so the odd ones are left out instead).
    """
    usable, failed, excluded = [], [], {}
    for reply in replies:
        node = sender(reply, sent)
        if reply.has_error():
            failed.append(reply)
            log(WARNING, "round %d: %s on node %s failed: %s", server_round, what, node, reply.error.reason)
        elif problem := problem_of(reply, node):
            excluded[node] = problem
            log(WARNING, "round %d: %s reply of node %s excluded: %s", server_round, what, node, problem)
        else:
            usable.append(reply)
    usable.sort(key=lambda r: order(sender(r, sent)))  # bit-reproducible, whatever the arrival order
    odd = inconsistent(usable)
    for i, why in odd.items():
        excluded[sender(usable[i], sent)] = why
        log(WARNING, "round %d: %s reply of node %s excluded: %s", server_round, what, sender(usable[i], sent), why)
    return [r for i, r in enumerate(usable) if i not in odd], failed, excluded


def weigh(usable: list[Message], weighted_by_key: str, cap: float, dp) -> None:
    """Aggregation weights, in place: sample counts capped at ``cap``; under a DP wrapper ``dp``
    equal weights and its noise calibrated to the replies actually averaged (the DP-FedAvg analysis
    assumes both; the noise std is noise_multiplier * clipping_norm / len(usable))."""
    for reply in usable:
        if dp is None:
            cap_weight(reply.content, weighted_by_key, cap)
        else:
            next(iter(reply.content.metric_records.values()))[weighted_by_key] = 1
    if dp is not None:
        dp.num_sampled_clients = len(usable)


def drop_models(replies) -> None:
    """Take the model (ArrayRecords) out of each aggregated reply. Flower's round loop keeps a round's
    replies until the next round's arrive, one ~45 MB ResNet-18 each: without this, a 10-node round's
    replies stayed resident through evaluation and the whole next round. Their metrics stay."""
    for reply in replies if isinstance(replies, (list, tuple)) else ():
        if reply.has_content() and reply.content.array_records:
            reply.content = RecordDict({k: v for k, v in reply.content.items() if not isinstance(v, ArrayRecord)})
