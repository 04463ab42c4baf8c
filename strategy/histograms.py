"""Validation and summation of the label histograms that clients report before round 1.

A reply from a client is untrusted input: a malformed histogram is excluded with a reason, never
allowed to crash the run or skew the federation's view of what classes are missing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def histogram_problem(histogram, num_classes: int) -> str | None:
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
    return None


def global_histogram(histograms: Sequence[Sequence[int]], num_classes: int) -> list[int]:
    """Class-wise sum of already validated histograms."""
    total = [0] * num_classes
    for histogram in histograms:
        for c, count in enumerate(histogram):
            total[c] += int(count)
    return total
