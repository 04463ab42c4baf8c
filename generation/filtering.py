"""Filtering the synthetic set before the augmented model trains on it (issue 16, item 3).

``confidence`` (3b): any generator's images are scored by the *current* global model: the softmax
probability it gives each image's own (prompted) class. An image the federation's model cannot
recognise as its class is more likely off-class or broken; it is left out of that round's augmented
training. The scores are refreshed as the federation learns (``refresh_every``), and nothing is
filtered before ``start_round``: the initial global model is random, so its confidence means nothing.
``clip`` (3a, `generation.clip_filter`): CLIP's zero-shot probability of the image's class among all
class prompts; it does not depend on the round, so the images are scored once and the selection kept.
``threshold="chance"`` is He et al.'s (ICLR'23) rule: keep an image whose score exceeds 1/num_classes.

Plain PyTorch and NumPy; `generation.augmented.AugmentedModelTrainer` calls it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# torch is imported inside the functions that score or select: the config check (server_app/config.py,
# run by genfl-run's launcher) builds FilterSettings, and importing torch there cost the launcher ~300 MB.

MODES = ("none", "confidence", "clip")
CHANCE = "chance"  # threshold: score > 1 / num_classes


@dataclass(frozen=True)
class FilterSettings:
    """How the synthetic set is filtered; ``mode="none"`` (or no settings at all) uses every image.

    ``mode="confidence"`` or ``"clip"`` needs exactly one rule, the other left ``None``:
    ``keep_ratio`` in (0, 1]: per class, keep the ``ceil(keep_ratio * n_c)`` most confident images;
    ``threshold`` in [0, 1]: keep the images whose score is >= threshold, or ``"chance"``: whose score
    is > 1/num_classes; a class that would lose every image keeps its single best one (its synthetic
    images are there because the federation lacks that class, so it is never silently emptied).
    ``start_round``: the first round that filters; earlier rounds train on every image.
    ``refresh_every``: rescore in rounds ``start_round + k * refresh_every`` and reuse that selection
    in between (a resumed run too: the selection travels with the checkpoint). Ignored by ``clip``.
    ``clip_model`` (Hub id or local folder), ``clip_prompt`` (``{}`` = the class name) and
    ``clip_batch_size``: used by ``mode="clip"`` only (whether the model is there: `clip_filter.clip_problem`).
    """

    mode: str = "none"
    keep_ratio: float | None = None
    threshold: float | str | None = None
    start_round: int = 2
    refresh_every: int = 1
    clip_model: str = "openai/clip-vit-base-patch32"
    clip_prompt: str = "a photo of a {}."
    clip_batch_size: int = 64

    def __post_init__(self):
        def bad(key: str, rule: str, value) -> ValueError:
            return ValueError(f"augmented.filter.{key}: {rule}, got {value!r}")

        if self.mode not in MODES:
            raise bad("mode", f"must be one of {', '.join(MODES)}", self.mode)
        if self.keep_ratio is not None and not (_real(self.keep_ratio) and 0 < self.keep_ratio <= 1):
            raise bad("keep_ratio", "must be in (0, 1] or null", self.keep_ratio)
        if self.threshold not in (None, CHANCE) and not (_real(self.threshold) and 0 <= self.threshold <= 1):
            raise bad("threshold", f"must be in [0, 1], {CHANCE} (score > 1/num_classes) or null", self.threshold)
        if not (_integer(self.start_round) and self.start_round >= 1):
            raise bad("start_round", "must be an integer >= 1", self.start_round)
        if not (_integer(self.refresh_every) and self.refresh_every >= 1):
            raise bad("refresh_every", "must be an integer >= 1", self.refresh_every)
        if not (isinstance(self.clip_model, str) and self.clip_model.strip()):
            raise bad("clip_model", "must be a Hugging Face Hub id or a local folder", self.clip_model)
        if not _template(self.clip_prompt):
            raise bad("clip_prompt", 'must be a text with one "{}" for the class name, e.g. "a photo of a {}."',
                      self.clip_prompt)
        if not (_integer(self.clip_batch_size) and self.clip_batch_size >= 1):
            raise bad("clip_batch_size", "must be an integer >= 1", self.clip_batch_size)
        if self.active and (self.keep_ratio is None) == (self.threshold is None):
            raise ValueError(f"augmented.filter: mode={self.mode} needs exactly one of keep_ratio / threshold "
                             f"(the other null), got keep_ratio={self.keep_ratio!r}, threshold={self.threshold!r}")

    @property
    def active(self) -> bool:
        return self.mode != "none"

    def threshold_for(self, num_classes: int | None) -> float | None:
        """The numeric threshold: ``"chance"`` becomes the smallest float above 1/num_classes."""
        if self.threshold != CHANCE:
            return self.threshold
        if not num_classes:
            raise ValueError("augmented.filter.threshold=chance needs the number of classes")
        return math.nextafter(1 / num_classes, 1.0)

    def filters(self, server_round: int) -> bool:
        """Whether ``server_round`` trains on a filtered set."""
        return self.active and server_round >= self.start_round

    def rescores(self, server_round: int) -> bool:
        """Whether ``server_round`` is on the rescoring schedule (given that it filters); never for ``clip``,
        whose scores do not change (it scores in the first round that filters and keeps that selection)."""
        return (self.filters(server_round) and self.mode != "clip"
                and (server_round - self.start_round) % self.refresh_every == 0)


def _real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _template(value) -> bool:
    """A prompt template with exactly one ``{}`` and no other placeholder."""
    if not isinstance(value, str) or value.count("{}") != 1:
        return False
    try:
        value.format("x")
    except (IndexError, KeyError, ValueError):
        return False
    return True


def score_confidence(model: nn.Module, data: Split, device: torch.device, batch_size: int) -> torch.Tensor:
    """Softmax probability of each image's own label under ``model``: float32 (N,) on the CPU.

    Eval mode (BatchNorm uses the model's running statistics, no buffer changes), no gradients,
    fp32 in batches of ``batch_size``, no randomness: the same model and images give the same scores
    (on CUDA, up to cuDNN's choice of kernels). The model's train/eval mode is restored.
    """
    import torch

    from genfl_torch.data import as_float

    was_training = model.training
    model.to(device).eval()
    scores = []
    try:
        with torch.no_grad():
            for start in range(0, len(data), batch_size):
                x = as_float(data.images[start : start + batch_size]).to(device)
                y = data.labels[start : start + batch_size].to(device)
                probabilities = torch.softmax(model(x).float(), dim=1)
                scores.append(probabilities.gather(1, y[:, None]).squeeze(1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(scores) if scores else torch.zeros(0)


def select(confidence: torch.Tensor, labels: torch.Tensor, *, keep_ratio: float | None = None,
           threshold: float | None = None) -> torch.Tensor:
    """The images to keep (bool (N,) on the CPU), class by class; exactly one rule is given.

    ``keep_ratio``: the ``ceil(keep_ratio * n_c)`` most confident images of each class (so at least
    one). ``threshold``: confidence >= threshold, and a class left empty keeps its most confident
    image. Ties go to the earlier image; a NaN score counts as 0.
    """
    import torch

    if (keep_ratio is None) == (threshold is None):
        raise ValueError("select: give exactly one of keep_ratio / threshold")
    conf = np.nan_to_num(confidence.detach().cpu().double().numpy(), nan=0.0)
    lab = labels.detach().cpu().numpy()
    keep = np.zeros(len(lab), dtype=bool)
    for c in np.unique(lab):
        idx = np.flatnonzero(lab == c)
        ranked = idx[np.lexsort((idx, -conf[idx]))]  # most confident first, ties by position
        if keep_ratio is not None:
            k = min(len(idx), max(1, math.ceil(keep_ratio * len(idx) - 1e-9)))
            keep[ranked[:k]] = True
        else:
            above = idx[conf[idx] >= threshold]
            keep[above if len(above) else ranked[:1]] = True
    return torch.from_numpy(keep)


def per_class(labels: torch.Tensor, kept: torch.Tensor, scored: bool) -> dict[str, list[int]]:
    """metrics.json's ``synthetic_filter``: ``{"class": [scored, kept, dropped]}`` for each class in the set
    (``scored`` is 0 in a round that reused an earlier selection or did not filter)."""
    lab = labels.detach().cpu().numpy()
    keep = kept.detach().cpu().numpy().astype(bool)
    report = {}
    for c in np.unique(lab):
        n, k = int((lab == c).sum()), int(keep[lab == c].sum())
        report[str(int(c))] = [n if scored else 0, k, n - k]
    return report
