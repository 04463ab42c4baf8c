"""Weighted mixing of model state (NumPy arrays by name): the arithmetic behind FedAvg and Eq. (1).

Floating arrays (weights and BatchNorm running statistics) are mixed linearly. Integer arrays are
counters (BatchNorm's ``num_batches_tracked``), which a weighted average would turn into fractions:
they take the largest contributor's value instead, which is what a model that saw all those batches
would report. (BatchNorm only reads the counter when ``momentum=None``, which ResNet-18 does not use.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def weighted_mix(states: Sequence[dict[str, np.ndarray]], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """sum_i weights[i] * states[i] for float arrays, max for integer counters; same keys in every state.

    Weights are used as given (Eq. (1) does not renormalise kappa_fl + kappa_aug); zero-weight
    states still must match in keys and shapes so a malformed one cannot slip through.
    """
    if len(states) != len(weights) or not states:
        raise ValueError(f"need one weight per state, got {len(states)} states and {len(weights)} weights")
    keys = list(states[0])
    for i, state in enumerate(states[1:], start=1):
        if list(state) != keys:
            raise ValueError(f"state {i} has different array names than state 0")
    mixed = {}
    for key in keys:
        arrays = [np.asarray(state[key]) for state in states]
        if any(a.shape != arrays[0].shape for a in arrays):
            raise ValueError(f"array {key!r} has different shapes: {[a.shape for a in arrays]}")
        if np.issubdtype(arrays[0].dtype, np.integer):
            mixed[key] = np.asarray(np.max(np.stack(arrays), axis=0), dtype=arrays[0].dtype)
        else:
            total = np.zeros(arrays[0].shape, dtype=np.float64)
            for weight, array in zip(weights, arrays):
                total += weight * array.astype(np.float64)
            mixed[key] = np.asarray(total, dtype=arrays[0].dtype)
    return mixed


def like(state: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cast a base strategy's output back to the global model's dtypes (averaging makes counters float)."""
    out = {}
    for key, array in state.items():
        dtype, array = reference[key].dtype, np.asarray(array)
        out[key] = np.rint(array).astype(dtype) if np.issubdtype(dtype, np.integer) else array.astype(dtype, copy=False)
    return out
