"""scikit-learn's `load_digits` as tensors, split once into federation / server-public / test parts.

The split is fixed by ``split_seed`` (not the run seed) so every run, generator and sweep sees the
same test set, and the server-public part (the offline generator's corpus) never overlaps client data.
Where scikit-learn is not installed (a lean GPU server: bench/gpu_check), the same pixels and split come
from a file `export_digits` wrote on a machine that has it, named by $GENFL_DIGITS_EXPORT.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

EXPORT_ENV = "GENFL_DIGITS_EXPORT"
_SPLITS = ("federation", "public", "test")


def _export():
    """The digits export named by $GENFL_DIGITS_EXPORT, or None when it is not set."""
    path = os.environ.get(EXPORT_ENV)
    if not path:
        return None
    try:
        return np.load(path)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"${EXPORT_ENV}={path}: not a digits export ({err}); write one with "
                                "genfl_torch.digits.export_digits where scikit-learn is installed") from err


def _sklearn():
    try:
        import sklearn.datasets
        import sklearn.model_selection
    except ImportError as err:
        raise ImportError(f"the digits data set needs scikit-learn (pip install scikit-learn), or ${EXPORT_ENV} "
                          "naming a file written by genfl_torch.digits.export_digits") from err
    return sklearn


def _pixels_and_labels() -> tuple[np.ndarray, np.ndarray]:
    """Pixel counts 0..16 (N, 8, 8) and labels (N,)."""
    if (export := _export()) is not None:
        return export["images"], export["labels"]
    bunch = _sklearn().datasets.load_digits()
    return bunch.images, bunch.target


def load_digits_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits: images float32 (N, 1, 8, 8) in [0, 1] (pixel counts 0..16 / 16), labels int64."""
    pixels, target = _pixels_and_labels()
    images = torch.from_numpy(pixels.astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(target.astype(np.int64))
    return images, labels


def digits_split_indices(split_seed: int, test_fraction: float, public_fraction: float) -> dict[str, np.ndarray]:
    """Stratified, disjoint index sets ``federation``, ``public`` and ``test`` covering every sample once."""
    if (export := _export()) is not None:
        stored = (int(export["split_seed"]), float(export["test_fraction"]), float(export["public_fraction"]))
        if stored != (split_seed, test_fraction, public_fraction):
            raise ValueError(f"${EXPORT_ENV}: the export holds the split (split_seed, test_fraction, public_fraction) = "
                             f"{stored}, not {(split_seed, test_fraction, public_fraction)}; export it with these settings")
        return {name: export[name] for name in _SPLITS}
    train_test_split = _sklearn().model_selection.train_test_split
    labels = _pixels_and_labels()[1]
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


def export_digits(path: str | os.PathLike, split_seed: int, test_fraction: float, public_fraction: float) -> Path:
    """Write the pixels, labels and this split to ``path`` (.npz, ~60 KB) for a machine without scikit-learn."""
    if os.environ.get(EXPORT_ENV):
        raise RuntimeError(f"export_digits reads scikit-learn's digits: unset ${EXPORT_ENV} first")
    pixels, target = _pixels_and_labels()
    split = digits_split_indices(split_seed, test_fraction, public_fraction)
    path = Path(path)
    with open(path, "wb") as fh:  # a file object: np.savez would append ".npz" to a name without it
        np.savez_compressed(fh, images=pixels.astype(np.uint8), labels=target.astype(np.int64), split_seed=split_seed,
                            test_fraction=test_fraction, public_fraction=public_fraction, **split)
    return path
