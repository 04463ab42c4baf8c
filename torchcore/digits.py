"""scikit-learn's `load_digits` as tensors, split once into federation / server-public / test parts.

The split is fixed by ``split_seed`` (not the run seed) so every run, generator and sweep sees the
same test set, and the server-public part (the offline generator's corpus) never overlaps client data.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def load_digits_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits: images float32 (N, 1, 8, 8) in [0, 1] (pixel counts 0..16 / 16), labels int64."""
    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    return images, labels


def digits_split_indices(split_seed: int, test_fraction: float, public_fraction: float) -> dict[str, np.ndarray]:
    """Stratified, disjoint index sets ``federation``, ``public`` and ``test`` covering every sample once."""
    labels = load_digits().target
    all_idx = np.arange(len(labels))
    rest, test = train_test_split(all_idx, test_size=test_fraction, stratify=labels, random_state=split_seed)
    if public_fraction > 0:
        public_share = public_fraction / (1.0 - test_fraction)
        federation, public = train_test_split(
            rest, test_size=public_share, stratify=labels[rest], random_state=split_seed
        )
    else:
        federation, public = rest, rest[:0]
    return {"federation": np.sort(federation), "public": np.sort(public), "test": np.sort(test)}
