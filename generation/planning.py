"""How many images to synthesise per class, from the federation's validated label histogram.

Policies:
- ``balance``: lift every class to ``target`` (null = the largest class count).
- ``uniform``: ``per_class`` images of every class, whatever the histogram says.
- ``deficit``: ``budget`` images shared in proportion to what each class lacks against the largest.
``budget`` (null = none) caps the total of every policy; a plan it scales down is reported by
`requested_images`, never silently (the server logs it, naming ``generation.budget``).
A federation that is balanced overall (Dirichlet splits of a balanced set are) lacks nothing under
``balance``/``deficit``: those policies matter when the federation's data is skewed overall.
"""

from __future__ import annotations

from collections.abc import Sequence

POLICIES = ("balance", "uniform", "deficit")


def requested_images(
    histogram: Sequence[int], policy: str, *, budget: int | None = None, per_class: int | None = None, target: int | None = None
) -> list[int]:
    """Images per class that the policy asks for before any cap."""
    if policy not in POLICIES:
        raise ValueError(f"generation.policy: unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    if budget is not None and budget < 0:
        raise ValueError(f"generation.budget must be null or >= 0, got {budget}")
    counts = [int(c) for c in histogram]
    if policy == "uniform":
        if per_class is None or per_class < 0:
            raise ValueError(f"generation.per_class must be >= 0 for the uniform policy, got {per_class}")
        return [per_class] * len(counts)
    if policy == "balance":
        level = max(counts) if target is None else int(target)
        return [max(0, level - c) for c in counts]
    if budget is None:
        raise ValueError("generation.budget: the deficit policy shares a budget of images; set it (e.g. 1000)")
    lacking = [max(counts) - c for c in counts]
    return _share(lacking, budget) if sum(lacking) else [0] * len(counts)


def plan_generation(
    histogram: Sequence[int], policy: str, *, budget: int | None = None, per_class: int | None = None, target: int | None = None
) -> dict[int, int]:
    """``{class: images}`` for every class (zeros included), summing to at most ``budget`` if set."""
    wanted = requested_images(histogram, policy, budget=budget, per_class=per_class, target=target)
    if budget is not None and sum(wanted) > budget:
        wanted = _share(wanted, budget)
    return dict(enumerate(wanted))


def _share(weights: Sequence[int], total: int) -> list[int]:
    """Split ``total`` in proportion to ``weights`` with largest-remainder rounding (sums exactly)."""
    weight_sum = sum(weights)
    exact = [total * w / weight_sum for w in weights]
    shares = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (exact[i] - shares[i], -i), reverse=True)
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    return shares
