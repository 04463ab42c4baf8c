"""Round-aware augmentation (issue 16, item 4; the paper's mechanism 3), the pure-Python half.

With partial participation the server knows which nodes train this round and their label
histograms. `lack_weights` turns them into per-class weights for that round's augmented training:
the augmented model then draws class c with probability weights[c] (see
`AugmentedModelTrainer.train`), so the synthetic data fills in what this round's clients lack.

No Flower, no torch: the strategy decides the weights, the augmenter (generation/augmented.py) applies them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np


def lack_weights(round_histogram: Sequence[float], global_histogram: Sequence[float] | None = None, *,
                 floor: float = 0.25) -> list[float]:
    """Class weights (summing to 1) emphasising the classes this round's training nodes lack.

    ``round_share = r / sum(r)`` (the summed histograms of the nodes training this round);
    ``target`` = the global histogram's share when given (its mix is what the federation as a whole
    holds), else uniform (the usual balanced test set); ``lack = max(target - round_share, 0)``;
    ``weights = floor / C + (1 - floor) * lack / sum(lack)``. The uniform ``floor`` share keeps every
    class above zero. No lack at all (the round already has the target mix) uses ``target`` in place
    of ``lack / sum(lack)``; an empty round histogram lacks everything (``lack = target``).
    """
    num_classes = len(round_histogram)
    if num_classes == 0:
        raise ValueError("lack_weights: the round histogram is empty")
    if not (isinstance(floor, (int, float)) and 0 <= floor <= 1):
        raise ValueError(f"lack_weights: floor must be in [0, 1], got {floor!r}")
    counts = _counts(round_histogram, "round_histogram")
    if global_histogram is None:
        target = [1.0 / num_classes] * num_classes
    else:
        if len(global_histogram) != num_classes:
            raise ValueError(f"lack_weights: global_histogram has {len(global_histogram)} classes, the round "
                             f"histogram {num_classes}")
        known = _counts(global_histogram, "global_histogram")
        total_known = sum(known)
        target = [g / total_known for g in known] if total_known > 0 else [1.0 / num_classes] * num_classes
    total = sum(counts)
    share = [r / total for r in counts] if total > 0 else [0.0] * num_classes
    lack = [max(t - s, 0.0) for t, s in zip(target, share)]
    total_lack = sum(lack)
    focus = [x / total_lack for x in lack] if total_lack > 1e-12 else target
    return [floor / num_classes + (1 - floor) * f for f in focus]


def round_weights(histograms: Mapping[int, Sequence[int]], nodes: Sequence[int], floor: float | None) -> list[float] | None:
    """`lack_weights` of the nodes training this round (``floor`` None: round-aware augmentation is off)."""
    if floor is None or not nodes:
        return None
    return lack_weights(np.sum([histograms[n] for n in nodes], axis=0).tolist(), floor=floor)


def _counts(histogram: Sequence[float], name: str) -> list[float]:
    values = [float(v) for v in histogram]
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise ValueError(f"lack_weights: {name} must hold finite counts >= 0, got {list(histogram)!r}")
    return values
