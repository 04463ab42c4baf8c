"""Validation of what a node sends back after training or evaluation: every reply is untrusted.

Pure functions of a reply's content and what the server already knows (the global model's arrays,
the node's declared sample count), so they are tested without a Grid and shared by the training and
evaluation paths. A reply they reject is excluded with the returned reason; nothing is raised.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import Message, RecordDict


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
