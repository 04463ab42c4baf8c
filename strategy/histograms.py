"""Validation and robust summation of the label histograms that clients report before round 1.

A reply from a client is untrusted input: a malformed or implausible histogram is excluded with a
reason, and no single node can steer the federation's view of what classes are missing: each
node's counts are capped at ``node_cap_factor`` times the median node total before they are summed.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence


def histogram_problem(histogram, num_classes: int, max_total: int | None = None) -> str | None:
    """Why ``histogram`` is not a valid per-class count vector, or None when it is."""
    if not isinstance(histogram, (list, tuple)):
        return f"expected a list of {num_classes} counts, got {type(histogram).__name__}"
    if len(histogram) != num_classes:
        return f"expected {num_classes} counts, got {len(histogram)}"
    for value in histogram:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"non-numeric count {value!r}"
        if not math.isfinite(value):
            return f"non-finite count {value!r}"
        if value < 0:
            return f"negative count {value!r}"
        if value != int(value):
            return f"non-integer count {value!r}"
    total = sum(int(v) for v in histogram)
    if max_total is not None and total > max_total:
        return f"implausible total of {total} samples (limit reliability.max_samples_per_node={max_total})"
    return None


def global_histogram(histograms: Sequence[Sequence[int]], num_classes: int) -> list[int]:
    """Class-wise sum of already validated histograms."""
    total = [0] * num_classes
    for histogram in histograms:
        for c, count in enumerate(histogram):
            total[c] += int(count)
    return total


def node_cap(totals: Sequence[int], node_cap_factor: float) -> float:
    """The most samples one node may count for: ``node_cap_factor`` x the median node total.

    The median needs at least three nodes to resist one liar; with fewer it is still an upper bound.
    """
    if not totals:
        return math.inf
    return node_cap_factor * max(float(statistics.median(totals)), 1.0)


def capped_histograms(histograms: Mapping[int, Sequence[int]], node_cap_factor: float) -> dict[int, list[int]]:
    """Each node's histogram scaled down (floored) so that its total is at most `node_cap`."""
    cap = node_cap([sum(h) for h in histograms.values()], node_cap_factor)
    capped = {}
    for node, histogram in histograms.items():
        total = sum(histogram)
        capped[node] = list(histogram) if total <= cap else [int(math.floor(c * cap / total)) for c in histogram]
    return capped
