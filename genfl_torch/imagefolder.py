"""Node-local image folders (one sub-folder per class name, as torchvision's ImageFolder) as a `Split`,
and the writer that exports a built-in partition in that layout.

The one image-folder reader of the project: a node's ``data-path`` and the server's
``generator=corpus`` folder decode the same files to the same pixels. PIL and torch only: an edge
box that trains on its own images needs nothing else. Every file is untrusted, so each failure
names the file or folder at fault.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from genfl_torch.data import Split

logger = logging.getLogger(__name__)

_MODES = {1: "L", 3: "RGB"}
# A fixed list, not "whatever this Pillow build opens", so the same folder yields the same images everywhere.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# Bilinear, antialiased when shrinking (PIL widens the kernel): the filter the SD backend downsamples with,
# so real and generated images are shrunk alike; bicubic's overshoot clips at 0/255 on sharp edges.
RESAMPLE = Image.Resampling.BILINEAR


class ImageFolderError(ValueError):
    """A node's image folder cannot be used; the message names the file or folder and what to fix."""


def read_image_folder(
    root: str | os.PathLike,
    class_names: Sequence[str],
    channels: int,
    image_size: int,
    *,
    setting: str = "data-path",
    digest: hashlib._Hash | None = None,
) -> Split:
    """All images under ``root/<class name>/`` as uint8 (N, channels, image_size, image_size) with labels
    by position in ``class_names``. Classes without a folder simply count 0; hidden entries are skipped,
    and so are files without an image suffix (with a warning that names them).

    ``setting`` names the config key in error messages. ``digest``, if given, is updated with each
    file's class, name and content hash, so that a cache key follows the very bytes decoded here.
    """
    root = Path(root).expanduser()
    if not root.is_absolute():
        raise ImageFolderError(f"{setting} {str(root)!r}: must be an absolute path (it is read by the ClientApp process)")
    if not root.is_dir():
        raise ImageFolderError(f"{setting} {root}: {'is not a folder' if root.exists() else 'no such folder'}")
    if channels not in _MODES:
        raise ImageFolderError(f"{setting} {root}: cannot convert images to {channels} channels (1 or 3)")
    label_of = {name: index for index, name in enumerate(class_names)}
    images, labels, skipped = [], [], []
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
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append(path)
                continue
            data = _read_bytes(path)
            if digest is not None:
                digest.update(f"{path.relative_to(root).as_posix()}:{len(data)}:".encode() + hashlib.sha256(data).digest())
            images.append(_decode(path, data, _MODES[channels], image_size))
            labels.append(label_of[entry.name])
    if skipped:
        logger.warning("%s %s: skipped %d file(s) without an image suffix (%s), e.g. %s",
                       setting, root, len(skipped), " ".join(IMAGE_SUFFIXES), skipped[0])
    if not images:
        raise ImageFolderError(
            f"{setting} {root}: no images (expected one sub-folder per class, e.g. {root / class_names[0]}/, "
            f"holding {'/'.join(IMAGE_SUFFIXES)} files)"
        )
    array = np.stack(images)
    if array.ndim == 3:  # grayscale: (N, H, W) -> (N, 1, H, W)
        array = array[:, None]
    else:
        array = array.transpose(0, 3, 1, 2)
    return Split(torch.from_numpy(np.ascontiguousarray(array)), torch.tensor(labels, dtype=torch.long))


def folder_problems(root: str | os.PathLike, class_names: Sequence[str]) -> tuple[list[str], dict[tuple, int]]:
    """Everything `read_image_folder` would refuse in ``root``, all at once (it stops at the first),
    and the image sizes and modes found: ``([problem, ...], {(width, height, mode): count})``."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return [f"{root}: {'is not a folder' if root.exists() else 'no such folder'}"], {}
    problems, sizes = [], {}
    for entry in sorted(p for p in root.iterdir() if not p.name.startswith(".")):
        if not entry.is_dir():
            problems.append(f"{entry}: a file outside the class folders; put every image in the sub-folder of its class")
        elif entry.name not in class_names:
            close = close_spelling(entry.name, class_names)
            hint = f"; did you mean {close!r}?" if close else f" (its classes: {_preview(class_names)})"
            problems.append(f"{entry}: the federation has no class {entry.name!r}{hint}")
        else:
            for path in _files(entry):
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                try:
                    with Image.open(io.BytesIO(_read_bytes(path))) as image:
                        image.load()
                        key = (*image.size, image.mode)
                    sizes[key] = sizes.get(key, 0) + 1
                except Exception as err:  # PIL raises many types for broken files; each one is named
                    problems.append(str(err) if isinstance(err, ImageFolderError) else _unreadable(path, err))
    return problems, sizes


def close_spelling(name: str, candidates: Sequence[str]) -> str | None:
    """The candidate ``name`` is a misspelling of (case, one slip in a short name, two in a longer one,
    a swap of neighbours counting as one), or None: 'eigth' -> 'eight', but not 'three' -> 'horse'."""
    limit = 1 if len(name) <= 4 else 2
    scored = sorted((_edits(name.casefold(), c.casefold()), i) for i, c in enumerate(candidates))
    return candidates[scored[0][1]] if scored and scored[0][0] <= limit else None


def _edits(a: str, b: str) -> int:
    """Optimal-string-alignment distance: insertions, deletions, substitutions and adjacent swaps."""
    rows = [list(range(len(b) + 1))]
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            row[j] = min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], rows[-2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]


def _unreadable(path: Path, err: Exception) -> str:
    """What is wrong with an image file, in words (PIL's own message names an in-memory buffer, not the file)."""
    if isinstance(err, UnidentifiedImageError):
        return f"{path}: not a readable image (not an image format Pillow recognises, or damaged beyond its header)"
    detail = re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "the file", str(err))
    return f"{path}: not a readable image ({type(err).__name__}: {detail})"


def _files(folder: Path) -> list[Path]:
    """Every non-hidden file below ``folder``, in a fixed order (nested folders allowed)."""
    found = []
    for directory, subdirs, names in os.walk(folder, followlinks=True):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        found += [Path(directory) / name for name in sorted(names) if not name.startswith(".")]
    return found


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ImageFolderError(f"{path}: cannot be read ({type(err).__name__}: {err})") from err
    if not data:
        raise ImageFolderError(f"{path}: empty file, not an image")
    return data


def _decode(path: Path, data: bytes, mode: str, size: int) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decode now, so a truncated file fails here and not later
            image = image.convert(mode)
    except Exception as err:  # PIL raises many types for broken files; all mean the same to the operator
        raise ImageFolderError(_unreadable(path, err)) from err
    if image.size != (size, size):
        image = image.resize((size, size), RESAMPLE)
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
