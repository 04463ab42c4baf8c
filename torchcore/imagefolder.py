"""Node-local image folders (one sub-folder per class name, as torchvision's ImageFolder) as a `Split`,
and the writer that exports a built-in partition in that layout.

PIL and torch only: an edge box that trains on its own images needs nothing else. Every file is
untrusted, so each failure names the file or folder at fault.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from torchcore.data import Split

_MODES = {1: "L", 3: "RGB"}


class ImageFolderError(ValueError):
    """A node's image folder cannot be used; the message names the file or folder and what to fix."""


def read_image_folder(root: str | os.PathLike, class_names: Sequence[str], channels: int, image_size: int) -> Split:
    """All images under ``root/<class name>/`` as uint8 (N, channels, image_size, image_size) with labels
    by position in ``class_names``. Classes without a folder simply count 0; hidden entries are skipped."""
    root = Path(root).expanduser()
    if not root.is_absolute():
        raise ImageFolderError(f"data-path {str(root)!r}: must be an absolute path (it is read by the ClientApp process)")
    if not root.is_dir():
        raise ImageFolderError(f"data-path {root}: {'is not a folder' if root.exists() else 'no such folder'}")
    if channels not in _MODES:
        raise ImageFolderError(f"data-path {root}: cannot convert images to {channels} channels (1 or 3)")
    label_of = {name: index for index, name in enumerate(class_names)}
    images, labels = [], []
    for entry in sorted(p for p in root.iterdir() if not p.name.startswith(".")):
        if not entry.is_dir():
            raise ImageFolderError(
                f"{entry}: a file outside the class folders; put every image in the sub-folder of its class"
            )
        if entry.name not in label_of:
            raise ImageFolderError(
                f"{entry}: the federation has no class {entry.name!r} (its classes: {_preview(class_names)})"
            )
        for path in _files(entry):
            images.append(_read_image(path, _MODES[channels], image_size))
            labels.append(label_of[entry.name])
    if not images:
        raise ImageFolderError(
            f"data-path {root}: no images (expected one sub-folder per class, e.g. {root / class_names[0]}/, holding image files)"
        )
    array = np.stack(images)
    if array.ndim == 3:  # grayscale: (N, H, W) -> (N, 1, H, W)
        array = array[:, None]
    else:
        array = array.transpose(0, 3, 1, 2)
    return Split(torch.from_numpy(np.ascontiguousarray(array)), torch.tensor(labels, dtype=torch.long))


def _files(folder: Path) -> list[Path]:
    """Every non-hidden file below ``folder``, in a fixed order (nested folders allowed)."""
    found = []
    for directory, subdirs, names in os.walk(folder, followlinks=True):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        found += [Path(directory) / name for name in sorted(names) if not name.startswith(".")]
    return found


def _read_image(path: Path, mode: str, size: int) -> np.ndarray:
    if path.stat().st_size == 0:
        raise ImageFolderError(f"{path}: empty file, not an image")
    try:
        with Image.open(path) as image:
            image.load()  # decode now, so a truncated file fails here and not later
            image = image.convert(mode)
    except Exception as err:  # PIL raises many types for broken files; all mean the same to the operator
        raise ImageFolderError(f"{path}: not a readable image ({type(err).__name__}: {err})") from err
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def _preview(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def write_image_folder(root: str | os.PathLike, data: Split, class_names: Sequence[str]) -> list[int]:
    """Write ``data`` as PNG files ``root/<class name>/<n>.png`` (8-bit, grayscale or RGB); returns the
    per-class counts. Refuses a non-empty ``root`` so that two exports never mix."""
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise ImageFolderError(f"{root}: not empty; choose a new folder or delete it first")
    pixels = data.images
    if pixels.dtype != torch.uint8:  # float images in [0, 1]
        pixels = (pixels.float().clamp(0, 1) * 255).round().to(torch.uint8)
    channels = pixels.shape[1]
    if channels not in _MODES:
        raise ImageFolderError(f"{root}: cannot write images with {channels} channels as PNG (1 or 3)")
    counts = [0] * len(class_names)
    for index, (image, label) in enumerate(zip(pixels.numpy(), data.labels.tolist())):
        folder = root / class_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        array = image[0] if channels == 1 else image.transpose(1, 2, 0)
        Image.fromarray(np.ascontiguousarray(array)).save(folder / f"{index:05d}.png")
        counts[label] += 1
    return counts
