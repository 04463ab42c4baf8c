"""Per-image draws of the text-to-image backend: an image's seed and guidance scale come from (seed,
class, index) alone, so it never depends on the batch size or the rest of the plan; and which images
must not become training data."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

# An image whose every pixel is below one 8-bit step is pure black once stored as 8 bits: it carries
# no class information. That is what the safety checker puts in place of a flagged image (exact 0),
# and what a float16 VAE overflow leaves after clamping; a real dark photo always has some brighter pixel.
BLACK_THRESHOLD = 1 / 255


def unusable_images(images: torch.Tensor) -> torch.Tensor:
    """Boolean mask (N,) of images that must not become training data: (near-)black or not finite."""
    flat = images.flatten(1)
    return ~torch.isfinite(flat).all(dim=1) | (flat.amax(dim=1) < BLACK_THRESHOLD)


def image_seed(seed: int, class_id: int, index: int) -> int:
    """The seed of the ``index``-th candidate image of ``class_id``.

    A hash of the triple, so an image depends on nothing else: not on the other classes in the plan,
    not on its position in a batch, not on the batch size.
    """
    digest = hashlib.blake2b(f"{seed}:{class_id}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # torch seeds must fit in int64


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


class PerImageGuidance(float):
    """One guidance scale per image for a single pipeline call (diffusers takes one ``guidance_scale``).

    Its float value is the largest scale, which turns classifier-free guidance on; diffusers'
    ``noise_uncond + guidance_scale * (noise_text - noise_uncond)`` then lands in ``__mul__``, which
    scales each image's row by its own value in float32, as a Python float scale is applied. ``uses``
    counts those products, so that the caller can check diffusers guided this way at every step (a
    version that applies the scale otherwise would silently use the largest scale for every image).
    """

    def __new__(cls, scales: Sequence[float]):
        guidance = super().__new__(cls, max(scales))
        guidance.scales = torch.tensor([float(s) for s in scales], dtype=torch.float32)
        guidance.uses = 0
        guidance._on_device = guidance.scales
        return guidance

    def __mul__(self, other):
        if isinstance(other, torch.Tensor) and other.dim() > 0 and other.shape[0] == len(self.scales):
            self.uses += 1
            if self._on_device.device != other.device:  # copied once per call, not at every step
                self._on_device = self.scales.to(other.device)
            scales = self._on_device.view(-1, *[1] * (other.dim() - 1))
            return (other.float() * scales).to(other.dtype)
        return float(self) * other
