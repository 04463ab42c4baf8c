"""Eq. (1) on model state (NumPy arrays by name), shared by the server, which forms the global model,
and the clients, which score candidate mixes for adaptive kappa: both compute the same model (the
clients along `eq1_along`'s line, up to float32 rounding).

Floating arrays (weights and BatchNorm running statistics) are mixed linearly. Integer arrays are
counters (BatchNorm's ``num_batches_tracked``), which a weighted average would turn into fractions:
they take the largest contributor's value instead, which is what a model that saw all those batches
would report. (BatchNorm only reads the counter when ``momentum=None``, which ResNet-18 does not use.)

BatchNorm running statistics describe the data a model last saw. Mixed like weights (``mixed``, the
paper's Eq. (1)), a model trained on off-distribution synthetic images drags them away from the
clients' real data; ``clients`` takes them from the client aggregate alone, ``reestimate`` (done by
the strategy with the clients) recomputes them for the mixed model on the clients' own data.
NumPy only: no torch, no Flower.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

BN_MODES = ("mixed", "clients", "reestimate")
BN_STATISTICS = ("running_mean", "running_var")  # what re-estimation recomputes
_BN_BUFFERS = BN_STATISTICS + ("num_batches_tracked",)


def is_bn_buffer(name: str) -> bool:
    """A BatchNorm running statistic or counter (by its state-dict name), not a learnt weight."""
    return name.rsplit(".", 1)[-1] in _BN_BUFFERS


def bn_statistic_names(state: dict[str, np.ndarray]) -> list[str]:
    """The running means and variances of ``state``, in state-dict order (empty for GroupNorm)."""
    return [k for k in state if k.rsplit(".", 1)[-1] in BN_STATISTICS]


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



def mix(states: Sequence[dict[str, np.ndarray]], weights: Sequence[float], bn_source: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """`weighted_mix`, with the BatchNorm buffers copied from ``bn_source`` when it is given
    (``clients``/``reestimate``: the client aggregate's statistics, not the synthetic model's)."""
    mixed = weighted_mix(states, weights)
    if bn_source is not None:
        for key in mixed:
            if is_bn_buffer(key):
                mixed[key] = np.array(bn_source[key], dtype=mixed[key].dtype, copy=True)
    return mixed


def eq1(client_part: dict[str, np.ndarray], augmented: dict[str, np.ndarray], kappa_aug: float, bn_stats: str) -> dict[str, np.ndarray]:
    """(1 - kappa_aug) * client_part + kappa_aug * augmented, BatchNorm statistics per ``bn_stats``."""
    if bn_stats not in BN_MODES:
        raise ValueError(f"bn_stats must be one of {', '.join(BN_MODES)} (got {bn_stats!r})")
    return mix([client_part, augmented], [1.0 - kappa_aug, kappa_aug], None if bn_stats == "mixed" else client_part)


def eq1_along(client_part: dict[str, np.ndarray], augmented: dict[str, np.ndarray],
              bn_stats: str) -> Callable[[float], dict[str, np.ndarray]]:
    """``kappa -> eq1(client_part, augmented, kappa, bn_stats)`` for scoring many candidates: the line
    ``client + kappa * (augmented - client)`` is set up once, so each kappa costs one multiply-add in the
    arrays' own precision (float32: equal to `eq1` up to rounding, ~1e-7 relative)."""
    reference = eq1(client_part, augmented, 0.0, bn_stats)  # validates and fixes the non-mixed arrays
    moving = {k: np.asarray(augmented[k], dtype=v.dtype) - v for k, v in reference.items()
              if np.issubdtype(v.dtype, np.floating) and not (bn_stats != "mixed" and is_bn_buffer(k))}

    def at(kappa_aug: float) -> dict[str, np.ndarray]:
        if kappa_aug == 0.0:
            return reference
        mixed = dict(reference)
        for key, delta in moving.items():
            mixed[key] = reference[key] + np.asarray(kappa_aug, dtype=delta.dtype) * delta
        return mixed

    return at


def combine_bn_statistics(reports: Sequence[tuple[dict[str, np.ndarray], float]]) -> dict[str, np.ndarray]:
    """Per-channel mean and variance over the union of the nodes' data from each node's own
    (mean, variance, sample count): the law of total variance, weighted by sample count (the nodes'
    variances plus the spread of their means). A node's variance is unbiased over its own activation
    positions (genfl_torch.bn); taking it as a population variance here errs by O(1 / positions)."""
    total = float(sum(n for _, n in reports))
    if not reports or total <= 0:
        raise ValueError("no BatchNorm statistics to combine")
    out = {}
    for key in reports[0][0]:
        if key.endswith("running_mean"):
            var_key = key[: -len("running_mean")] + "running_var"
            means = [np.asarray(s[key], dtype=np.float64) for s, _ in reports]
            weights = [n / total for _, n in reports]
            mean = sum(w * m for w, m in zip(weights, means))
            out[key] = mean.astype(reports[0][0][key].dtype)
            if var_key in reports[0][0]:
                variances = [np.asarray(s[var_key], dtype=np.float64) for s, _ in reports]
                second = sum(w * (v + m * m) for w, v, m in zip(weights, variances, means))
                out[var_key] = np.maximum(second - mean * mean, 0.0).astype(reports[0][0][var_key].dtype)
    return out


def like(state: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cast a base strategy's output back to the global model's dtypes (averaging makes counters float)."""
    out = {}
    for key, array in state.items():
        dtype, array = reference[key].dtype, np.asarray(array)
        out[key] = np.asarray(np.rint(array), dtype=dtype) if np.issubdtype(dtype, np.integer) else array.astype(dtype, copy=False)
    return out
