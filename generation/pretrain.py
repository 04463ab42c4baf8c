"""Pretrain the offline generator on a corpus disjoint from client data: ``python -m generation.pretrain corpus=fonts``.

Writes the weights (and their JSON record) where ``generator.weights`` points, then reports how often a
classifier trained on the real federation digits recognises the samples as their intended class.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from sklearn.svm import SVC

from generation.class_conditional import (
    ClassConditionalGenerator,
    Pretraining,
    pretrain_on_corpus,
    pretraining_corpus,
    record_path,
    save_weights,
)
from torchcore.digits import digits_split_indices, load_digits_arrays

logger = logging.getLogger(__name__)


def real_digit_classifier(*, split_seed: int, test_fraction: float, public_fraction: float) -> tuple[SVC, float]:
    """An RBF-SVM trained on the real federation digits, and its accuracy on the real test digits."""
    images, labels = load_digits_arrays()
    split = digits_split_indices(split_seed, test_fraction, public_fraction)
    flat = images.flatten(1).numpy()
    classifier = SVC(gamma="scale").fit(flat[split["federation"]], labels[split["federation"]].numpy())
    test_accuracy = float(classifier.score(flat[split["test"]], labels[split["test"]].numpy()))
    return classifier, test_accuracy


def classifier_agreement(classifier: SVC, images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """Share of samples the classifier labels as their intended class, overall and per class."""
    predicted = classifier.predict(images.flatten(1).numpy())
    hits = predicted == labels.numpy()
    per_class = [float(hits[labels.numpy() == c].mean()) for c in range(num_classes) if (labels == c).any()]
    return {"overall": float(hits.mean()), "per_class": [round(v, 3) for v in per_class]}


def save_grid(images: torch.Tensor, labels: torch.Tensor, path: Path, *, per_class: int, scale: int) -> None:
    """One row per class, ``per_class`` samples each, black ink on white, one-pixel gaps."""
    cells = torch.nn.functional.pad(images[:, 0], (0, 1, 0, 1), value=0.0)
    height, width = cells.shape[1:]
    rows = []
    for class_index in labels.unique(sorted=True):
        row = cells[labels == class_index][:per_class]
        row = torch.cat(list(row), dim=1)
        rows.append(torch.nn.functional.pad(row, (0, per_class * width - row.shape[1])))
    grid = torch.cat(rows).numpy()
    picture = Image.fromarray((255 * (1.0 - grid)).round().astype(np.uint8))
    picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST).save(path)


def generator_and_pretraining(cfg: DictConfig) -> tuple[ClassConditionalGenerator, Pretraining]:
    """The generator to pretrain and how, from the composed conf/pretrain.yaml."""
    # `corpus` is a top-level alias of generator.corpus (so that `corpus=fonts` works); the alias wins.
    cfg.generator.corpus = cfg.corpus
    return ClassConditionalGenerator.from_config(cfg.generator, pretraining=None), Pretraining.from_mapping(cfg.pretrain)


@hydra.main(config_path="../conf", config_name="pretrain", version_base=None)
def main(cfg: DictConfig) -> None:
    generator, pretraining = generator_and_pretraining(cfg)

    print(f"Pretraining the class-conditional generator on corpus {generator.corpus!r} ({pretraining.steps} steps) ...")
    started = time.perf_counter()
    unet, record = pretrain_on_corpus(
        generator.corpus, architecture=generator.architecture, pretraining=pretraining, device=generator.device
    )
    record = save_weights(unet, generator.weights_path, record)
    seconds = time.perf_counter() - started

    evaluation = cfg.evaluation
    classifier, test_accuracy = real_digit_classifier(
        split_seed=pretraining.split_seed, test_fraction=pretraining.test_fraction, public_fraction=pretraining.public_fraction
    )
    plan = {c: evaluation.samples_per_class for c in range(generator.num_classes)}
    sampling_started = time.perf_counter()
    images, labels = generator.generate(plan, seed=evaluation.seed)
    sampling_seconds = time.perf_counter() - sampling_started
    agreement = classifier_agreement(classifier, images, labels, generator.num_classes)
    # The ceiling for a faithful generator: how well the same classifier recognises the corpus itself.
    corpus_images, corpus_labels = pretraining_corpus(generator.corpus, pretraining)
    corpus_agreement = classifier_agreement(classifier, corpus_images, corpus_labels, generator.num_classes)

    record["evaluation"] = {
        "classifier": "SVC(gamma='scale') on the real federation digits",
        "classifier_test_accuracy": round(test_accuracy, 4),
        "samples_per_class": evaluation.samples_per_class,
        "seed": evaluation.seed,
        "sampling_steps": generator.sampling_steps,
        "guidance_scale": generator.guidance_scale,
        "agreement": round(agreement["overall"], 4),
        "agreement_per_class": agreement["per_class"],
        "corpus_agreement": round(corpus_agreement["overall"], 4),
        "sampling_seconds": round(sampling_seconds, 1),
    }
    record_path(generator.weights_path).write_text(json.dumps(record, indent=2) + "\n")

    grid = Path(HydraConfig.get().runtime.output_dir) / f"samples_{generator.corpus}.png"
    save_grid(images, labels, grid, per_class=evaluation.grid_per_class, scale=evaluation.grid_scale)

    size_kib = generator.weights_path.stat().st_size / 1024
    print(f"weights: {generator.weights_path} ({size_kib:.0f} KiB, {record['parameters']:,} parameters, fp16)")
    print(f"record:  {record_path(generator.weights_path)}")
    print(f"pretraining took {seconds:.0f} s on {generator.device} ({record['corpus']['num_images']} corpus images)")
    print(f"sampling {len(images)} images ({generator.sampling_steps} DDIM steps) took {sampling_seconds:.1f} s")
    print(
        f"classifier agreement: {agreement['overall']:.1%} of samples labelled as their intended class "
        f"(per class {agreement['per_class']})"
    )
    print(
        f"  for reference, the same classifier scores {corpus_agreement['overall']:.1%} on the {generator.corpus} "
        f"corpus itself and {test_accuracy:.1%} on the real test digits"
    )
    print(f"sample grid: {grid}")
    logger.debug("resolved config:\n%s", OmegaConf.to_yaml(cfg))


if __name__ == "__main__":
    main()
