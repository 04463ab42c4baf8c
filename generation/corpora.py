"""Pretraining corpora for the offline generator, each disjoint from every client's data.

``digits-public`` is the server's public share of scikit-learn's digits; ``fonts`` is printed digits
rendered from the fonts inside matplotlib and reduced the way the UCI digits were made (count the
on-pixels of each 4x4 block of a 32x32 bitmap), a deliberate domain shift away from handwriting.
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

import matplotlib
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from genfl_torch.digits import digits_split_indices, load_digits_arrays

CORPORA = ("digits-public", "fonts")

# Every matplotlib font whose code points 0-9 are ordinary lining digits (cmmi10 has old-style
# figures, the STIX "NonUni"/"Siz" and cm symbol fonts have none).
FONT_FILES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
    "cmr10.ttf",
    "cmb10.ttf",
    "cmss10.ttf",
    "cmti10.ttf",
    "cmtt10.ttf",
)

BITMAP_SIZE = 32  # the UCI preprocessing's normalised bitmap
BLOCK = 4  # 32x32 -> 8x8 by counting on-pixels per 4x4 block: values 0..16
_RENDER_SIZE = 64  # glyphs are drawn large, then transformed and reduced to the bitmap
_CANVAS = 144


def build_corpus(
    name: str,
    *,
    seed: int,
    size: int,
    split_seed: int,
    test_fraction: float,
    public_fraction: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images float32 ``(N, 1, 8, 8)`` in [0, 1] (multiples of 1/16) and labels int64 ``(N,)``.

    ``seed`` and ``size`` shape the rendered ``fonts`` corpus; the split parameters pick the
    ``digits-public`` share (the whole share: ``seed`` and ``size`` do not apply to it).
    """
    if name == "fonts":
        return render_font_digits(seed=seed, size=size)
    if name == "digits-public":
        return public_digits(split_seed=split_seed, test_fraction=test_fraction, public_fraction=public_fraction)
    raise ValueError(f"Unknown generator corpus {name!r}: choose one of {', '.join(CORPORA)}.")


def public_digits(*, split_seed: int, test_fraction: float, public_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The server-public share of scikit-learn's digits (no client ever holds these samples)."""
    public = digits_split_indices(split_seed, test_fraction, public_fraction)["public"]
    if len(public) == 0:
        raise ValueError("The digits-public corpus is empty: set public_fraction > 0 in the split.")
    images, labels = load_digits_arrays()
    index = torch.from_numpy(public)
    return images[index], labels[index]


def render_font_digits(*, seed: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` printed digits, classes balanced (``i % 10``) and shuffled, each with its own font and jitter."""
    if size < 1:
        raise ValueError(f"The fonts corpus needs size >= 1, got {size}.")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(size) % 10)
    counts = np.empty((size, 8, 8), dtype=np.float32)
    for i, digit in enumerate(labels):
        bitmap = _render_bitmap(int(digit), rng)
        counts[i] = bitmap.reshape(8, BLOCK, 8, BLOCK).sum(axis=(1, 3))
    images = torch.from_numpy(counts / float(BLOCK * BLOCK)).unsqueeze(1)
    return images, torch.from_numpy(labels.astype(np.int64))


@cache
def _font(file_name: str) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / file_name), _RENDER_SIZE)


def _render_bitmap(digit: int, rng: np.random.Generator) -> np.ndarray:
    """One binary 32x32 bitmap: a random font, stroke, rotation, shear, scale, aspect and offset."""
    font = _font(FONT_FILES[rng.integers(len(FONT_FILES))])
    stroke = int(rng.integers(0, 4))  # extra boldness, in pixels at render size
    rotation = math.radians(rng.uniform(-10.0, 10.0))
    shear = rng.uniform(-0.25, 0.25)
    height_fraction = rng.uniform(0.94, 1.0)  # the UCI digits are size-normalised to the box height
    aspect = rng.uniform(0.7, 1.15)
    threshold = rng.uniform(64, 160)  # ink threshold after the resize: stroke weight

    canvas = Image.new("L", (_CANVAS, _CANVAS), 0)
    ImageDraw.Draw(canvas).text(
        (_CANVAS / 2, _CANVAS / 2), str(digit), font=font, fill=255, anchor="mm", stroke_width=stroke, stroke_fill=255
    )
    # PIL's affine transform maps output to input coordinates: pass the inverse of shear-then-rotate,
    # about the canvas centre.
    cos, sin = math.cos(rotation), math.sin(rotation)
    forward = np.array([[cos, -sin], [sin, cos]]) @ np.array([[1.0, shear], [0.0, 1.0]])
    inverse = np.linalg.inv(forward)
    centre = np.array([_CANVAS / 2, _CANVAS / 2])
    offset = centre - inverse @ centre
    canvas = canvas.transform(
        canvas.size,
        Image.Transform.AFFINE,
        data=(inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1]),
        resample=Image.Resampling.BILINEAR,
    )
    glyph = canvas.crop(canvas.getbbox())

    target_height = max(1, round(BITMAP_SIZE * height_fraction))
    target_width = round(glyph.width * target_height / glyph.height * aspect)
    target_width = min(BITMAP_SIZE, max(1, target_width))
    glyph = glyph.resize((target_width, target_height), Image.Resampling.BOX)

    left = (BITMAP_SIZE - target_width) // 2 + int(rng.integers(-2, 3))
    top = (BITMAP_SIZE - target_height) // 2 + int(rng.integers(-2, 3))
    left = min(max(left, 0), BITMAP_SIZE - target_width)
    top = min(max(top, 0), BITMAP_SIZE - target_height)
    bitmap = np.zeros((BITMAP_SIZE, BITMAP_SIZE), dtype=np.float32)
    bitmap[top : top + target_height, left : left + target_width] = np.asarray(glyph, dtype=np.float32) >= threshold
    return bitmap
