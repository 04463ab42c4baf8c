"""Real images served through the generator interface (``generator=corpus``).

Two uses: control (a) of bench/convergence, which trains the augmented model on the very corpus a
generator learned from (does generating add anything beyond that data?), and a server that simply
holds a public data set. Sources: a named corpus of the offline generator (``digits-public``,
``fonts``) or an ImageFolder-style folder with one sub-folder per class name.

A plan asking for more images of a class than the corpus has is met by repeating that class's
images: successive seeded permutations of the class, so every image is used ``floor(n/m)`` or
``ceil(n/m)`` times and the class mix stays what the plan asked for (the augmented model then sees
the same number of images per round as with a generator). ``last_shortfall`` records where it happened.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from generation.base import backend_settings, checked_plan
from generation.factory import DIGIT_CORPORA
from generation.prompts import builtin_class_names, resolve_class_names
from genfl_torch.imagefolder import RESAMPLE, read_image_folder

logger = logging.getLogger(__name__)


class CorpusGenerator:
    """Serves ``plan[c]`` real images of each class ``c``, sampled without replacement with ``seed``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, num_classes: int, description: Mapping):
        if images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"corpus images must be (N, C, H, W) with one label each, got {tuple(images.shape)} "
                             f"and {len(labels)} labels")
        self.images = images.float().clamp(0, 1)
        self.labels = labels.long()
        self.num_classes = num_classes
        self.description = dict(description)
        self.last_shortfall: dict[int, dict] = {}

    @classmethod
    def from_config(cls, generator_cfg: Mapping, dataset_cfg: Mapping) -> CorpusGenerator:
        """From conf/generator/corpus.yaml: a named corpus, or a folder read at the data set's size."""
        settings = backend_settings(generator_cfg, "corpus", ("corpus", "class_names"))
        if settings["corpus"] in DIGIT_CORPORA:
            return named_corpus(settings["corpus"], dataset_cfg)
        names = resolve_class_names(settings["class_names"], builtin_class_names(dataset_cfg["name"]))
        return image_folder(settings["corpus"], names, image_size=dataset_cfg["image_size"], channels=dataset_cfg["channels"])

    def class_counts(self) -> list[int]:
        return np.bincount(self.labels.numpy(), minlength=self.num_classes).tolist()

    def fingerprint(self) -> dict:
        return {"backend": "corpus", **self.description}

    def generate(self, plan: Mapping[int, int], *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        chosen, self.last_shortfall = [], {}
        for class_id, wanted in checked_plan(plan, self.num_classes).items():
            pool = torch.nonzero(self.labels == class_id).flatten()
            if len(pool) == 0:
                raise ValueError(f"corpus {self.description.get('corpus')!r} has no images of class {class_id}, "
                                 f"but the plan asks for {wanted}")
            if wanted > len(pool):
                self.last_shortfall[class_id] = {"planned": wanted, "available": len(pool)}
            chosen.append(_draw(pool, wanted, _class_seed(seed, class_id)))
        if self.last_shortfall:
            logger.warning("corpus %s has fewer images than planned for classes %s: their images repeat",
                           self.description.get("corpus"), self.last_shortfall)
        index = torch.cat(chosen) if chosen else torch.empty(0, dtype=torch.long)
        return self.images[index].clone(), self.labels[index].clone()


def _draw(pool: torch.Tensor, wanted: int, seed: int) -> torch.Tensor:
    """``wanted`` members of ``pool``: a seeded permutation, followed by fresh ones while more are needed."""
    generator = torch.Generator().manual_seed(seed)
    rounds = -(-wanted // len(pool))
    return torch.cat([pool[torch.randperm(len(pool), generator=generator)] for _ in range(rounds)])[:wanted]


def _class_seed(seed: int, class_id: int) -> int:
    """Independent per class, so one class's images do not depend on the rest of the plan."""
    return int(np.random.SeedSequence([seed, class_id, 0xC0]).generate_state(1, dtype=np.uint64)[0] >> 1)


def named_corpus(name: str, dataset_cfg: Mapping) -> CorpusGenerator:
    """The exact corpus the class_conditional generator pretrains on for this data set's split."""
    from generation.pretrain import pretraining_corpus, pretraining_settings

    pretraining = pretraining_settings(dataset_cfg)
    images, labels = pretraining_corpus(name, pretraining)
    if name == "fonts":
        origin = {"seed": pretraining.seed, "size": pretraining.corpus_size}
    else:
        origin = {"split_seed": pretraining.split_seed, "test_fraction": pretraining.test_fraction,
                  "public_fraction": pretraining.public_fraction}
    return CorpusGenerator(images, labels, num_classes=int(dataset_cfg["num_classes"]),
                           description={"corpus": name, **origin})


def image_folder(folder: str | Path, class_names: Sequence[str], *, image_size: int, channels: int) -> CorpusGenerator:
    """Every image under ``folder/<class name>/``, read by the clients' reader (`read_image_folder`).

    One reader for both, so a public folder served here and the same folder on a node decode to the
    same pixels (same suffixes, same resize). Sub-folders must be class names (a typo would otherwise
    silently drop a class); a class without a sub-folder only matters if the plan asks for it.
    """
    root = Path(folder).expanduser()
    if not root.is_absolute():
        raise ValueError(f"generator.corpus: a folder must be an absolute path, got {str(folder)!r}")
    if not root.is_dir():
        raise ValueError(f"generator.corpus: {root} is not a folder (nor one of {', '.join(DIGIT_CORPORA)})")
    digest = hashlib.sha256()
    data = read_image_folder(root, class_names, channels, image_size, setting="generator.corpus", digest=digest)
    return CorpusGenerator(data.images.float().div_(255.0), data.labels, num_classes=len(class_names),
                           description={"corpus": str(root), "files_sha256": digest.hexdigest(),
                                        "image_size": image_size, "channels": channels, "resample": RESAMPLE.name.lower()})
