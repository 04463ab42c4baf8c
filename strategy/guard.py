"""The last check before a new global model replaces the old one.

A poisoned or numerically broken round (a client's scaled-up weights averaged in, an overflow in a
server optimiser, an augmented model that diverged) must never become the global model. The check
is cheap: every float array finite, and the update's norm bounded relative to the model's norm.
"""

from __future__ import annotations

import numpy as np


def relative_update(old: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> float:
    """||new - old|| / max(||old||, 1) over all floating arrays (weights and BatchNorm statistics).

    Relative for real models (a ResNet-18's norm is in the tens); the floor of 1 keeps a model that
    starts near zero from making every update look infinite.
    """
    delta_sq, norm_sq = 0.0, 0.0
    for key, before in old.items():
        if not np.issubdtype(before.dtype, np.floating):
            continue
        before = before.astype(np.float64)
        delta_sq += float(np.sum((new[key].astype(np.float64) - before) ** 2))
        norm_sq += float(np.sum(before**2))
    return float(np.sqrt(delta_sq) / max(np.sqrt(norm_sq), 1.0))


def update_problem(old: dict[str, np.ndarray], new: dict[str, np.ndarray], max_relative_update: float) -> tuple[str | None, float]:
    """(why ``new`` must not replace ``old`` or None, the relative update norm)."""
    if list(new) != list(old):
        return "its array names differ from the global model's", float("nan")
    for key, array in new.items():
        if array.shape != old[key].shape:
            return f"array {key!r} has shape {array.shape}, expected {old[key].shape}", float("nan")
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            return f"array {key!r} has non-finite values", float("nan")
    ratio = relative_update(old, new)
    if not np.isfinite(ratio):
        return "the update norm is not finite", ratio
    if ratio > max_relative_update:
        return (f"the update is {ratio:.3g}x the model's norm (limit reliability.max_relative_update="
                f"{max_relative_update}): a client sent scaled-up weights or training diverged"), ratio
    return None, ratio
