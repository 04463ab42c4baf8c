"""Client label histograms are untrusted: malformed ones are named and excluded."""

import math

import pytest

from strategy.histograms import global_histogram, histogram_problem


def test_valid_histogram_passes():
    assert histogram_problem([3, 0, 5], 3) is None
    assert histogram_problem([3.0, 0, 5], 3) is None  # integral floats are counts too


@pytest.mark.parametrize(
    "histogram, reason",
    [([1, 2], "expected 3 counts, got 2"), ([1, -2, 0], "negative"), ([1, 2.5, 0], "non-integer"),
     ([1, math.nan, 0], "non-finite"), ([1, math.inf, 0], "non-finite"), ("123", "expected a list"),
     ([1, "2", 0], "non-numeric"), ([True, 0, 0], "non-numeric")],
)
def test_malformed_histogram_is_reported(histogram, reason):
    assert reason in histogram_problem(histogram, 3)


def test_global_histogram_sums_per_class():
    assert global_histogram([[1, 0, 2], [0, 4, 1]], 3) == [1, 4, 3]
