"""Casting a base strategy's output back to the global model's dtypes; the mixing itself (Eq. (1),
FedAvg's arithmetic) is torchcore/mixing.py, shared with the clients."""

from __future__ import annotations

import numpy as np

from torchcore.mixing import weighted_mix  # noqa: F401  (the strategy's and the tests' name for it)


def like(state: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cast a base strategy's output back to the global model's dtypes (averaging makes counters float)."""
    out = {}
    for key, array in state.items():
        dtype, array = reference[key].dtype, np.asarray(array)
        out[key] = np.asarray(np.rint(array), dtype=dtype) if np.issubdtype(dtype, np.integer) else array.astype(dtype, copy=False)
    return out
