"""Local differential privacy for the label histogram a node reports (numbers only, no Flower).

Adding or removing one training sample changes one class count by 1, so the L1 and L2 sensitivity
of the histogram is 1. Laplace noise of scale 1/epsilon gives epsilon-DP; Gaussian noise with
sigma = sqrt(2 ln(1.25/delta)) / epsilon gives (epsilon, delta)-DP (the classic bound, tight for
epsilon <= 1). Rounding and clipping at zero afterwards is post-processing: it costs no privacy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

MECHANISMS = ("none", "laplace", "gaussian")


def noise_scale(mechanism: str, epsilon: float, delta: float) -> float:
    """Laplace scale b or Gaussian sigma for one histogram release."""
    if mechanism == "none":
        return 0.0
    if not epsilon > 0:
        raise ValueError(f"histogram_privacy.epsilon must be > 0, got {epsilon}")
    if mechanism == "laplace":
        return 1.0 / epsilon
    if mechanism == "gaussian":
        if not 0 < delta < 1:
            raise ValueError(f"histogram_privacy.delta must be in (0, 1), got {delta}")
        return math.sqrt(2.0 * math.log(1.25 / delta)) / epsilon
    raise ValueError(f"histogram_privacy.mechanism must be one of {', '.join(MECHANISMS)}, got {mechanism!r}")


def privatize_histogram(counts: Sequence[int], mechanism: str, epsilon: float, delta: float,
                        rng: np.random.Generator) -> list[int]:
    """Noisy counts, rounded to integers and clipped at 0."""
    counts = np.asarray(counts, dtype=np.float64)
    scale = noise_scale(mechanism, epsilon, delta)
    if mechanism == "laplace":
        counts = counts + rng.laplace(0.0, scale, size=counts.shape)
    elif mechanism == "gaussian":
        counts = counts + rng.normal(0.0, scale, size=counts.shape)
    return np.clip(np.rint(counts), 0, None).astype(int).tolist()


def total_noise_bound(mechanism: str, epsilon: float, delta: float, num_classes: int, sigmas: float) -> int:
    """How far below the truth a noisy histogram's total can plausibly fall (``sigmas`` std devs).

    The server allows a node's ``num-examples`` to exceed its declared total by this much.
    """
    scale = noise_scale(mechanism, epsilon, delta)
    std_per_class = scale * math.sqrt(2.0) if mechanism == "laplace" else scale
    return int(math.ceil(sigmas * std_per_class * math.sqrt(num_classes)))
