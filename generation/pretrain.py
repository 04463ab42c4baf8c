"""Pretrain the offline generator on a corpus disjoint from client data: ``python -m generation.pretrain corpus=fonts``.

The class-conditional UNet (its architecture and noise schedule are defined here), trained with the
DDPM noise-prediction loss and an EMA of its weights (diffusers' ``EMAModel``); the settings are
conf/pretrain.yaml, composed by Hydra (``pretrain.steps=100`` etc.).
Writes the weights folder (``save_pretrained`` plus record.json) where ``generator.weights`` points,
then reports how often a classifier trained on the real federation digits recognises the samples as
their intended class. A generator with ``pretrain_if_missing`` calls the same code on first use.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from PIL import Image

from conf import CONF_DIR
from generation.cache import file_sha256
from generation.factory import build_generator
from generation.progress import Progress
from genfl_torch.digits import digits_split_indices, load_digits_arrays

logger = logging.getLogger(__name__)

IMAGE_SHAPE = (1, 8, 8)  # the model works at the digits' native resolution
RECORD_FORMAT = "genfl-class-conditional/2"  # /2: a diffusers model folder (/1 was a bare safetensors file)
RECORD_NAME = "record.json"  # how the weights were made, beside diffusers' own files in their folder
CONFIG_NAME, WEIGHTS_NAME = "config.json", "diffusion_pytorch_model.safetensors"  # what save_pretrained writes


@dataclass(frozen=True)
class Architecture:
    """What the weights must match: the UNet's shape and the training noise schedule."""

    block_out_channels: tuple[int, ...]
    attention: tuple[bool, ...]  # self-attention per resolution level, highest resolution first
    layers_per_block: int
    norm_num_groups: int
    num_classes: int
    num_train_timesteps: int
    beta_schedule: str

    @classmethod
    def from_mapping(cls, config: Mapping) -> Architecture:
        architecture = cls(
            block_out_channels=tuple(int(c) for c in config["block_out_channels"]),
            attention=tuple(bool(a) for a in config["attention"]),
            layers_per_block=int(config["layers_per_block"]),
            norm_num_groups=int(config["norm_num_groups"]),
            num_classes=int(config["num_classes"]),
            num_train_timesteps=int(config["num_train_timesteps"]),
            beta_schedule=str(config["beta_schedule"]),
        )
        if len(architecture.attention) != len(architecture.block_out_channels):
            raise ValueError("architecture.attention needs one entry per entry of block_out_channels.")
        if any(c % architecture.norm_num_groups for c in architecture.block_out_channels):
            raise ValueError("architecture.norm_num_groups must divide every entry of block_out_channels.")
        return architecture

    def to_dict(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


def training_scheduler(architecture: Architecture) -> DDPMScheduler:
    """The noise schedule the model was trained with (sampling derives its DDIM schedule from it)."""
    from diffusers import DDPMScheduler  # diffusers (with transformers, ~65 MB) only where a model is made

    return DDPMScheduler(
        num_train_timesteps=architecture.num_train_timesteps,
        beta_schedule=architecture.beta_schedule,
        prediction_type="epsilon",
        clip_sample=True,
    )


@dataclass(frozen=True)
class Pretraining:
    """How to pretrain: the optimisation settings and the corpus (size, seed, the data set's split)."""

    steps: int
    batch_size: int
    learning_rate: float
    ema_decay: float
    class_dropout: float  # share of training labels replaced by the null class (0 = no guidance possible)
    seed: int
    corpus_size: int  # rendered corpora only; digits-public is the whole public share
    split_seed: int
    test_fraction: float
    public_fraction: float

    @classmethod
    def from_mapping(cls, config: Mapping) -> Pretraining:
        return cls(
            steps=int(config["steps"]),
            batch_size=int(config["batch_size"]),
            learning_rate=float(config["learning_rate"]),
            ema_decay=float(config["ema_decay"]),
            class_dropout=float(config["class_dropout"]),
            seed=int(config["seed"]),
            corpus_size=int(config["corpus_size"]),
            split_seed=int(config["split_seed"]),
            test_fraction=float(config["test_fraction"]),
            public_fraction=float(config["public_fraction"]),
        )


def pretraining_settings(dataset_cfg: Mapping, overrides: Sequence[str] = ()) -> Pretraining:
    """The ``pretrain`` settings of conf/pretrain.yaml composed by Hydra with ``overrides``, on the
    split of ``dataset_cfg`` (the run's own dataset node): for pretraining on first use and for the
    corpus backend, so that the settings have one home and the corpus is always the federation's own."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name="pretrain", overrides=list(overrides))
    with open_dict(cfg):
        cfg.dataset = OmegaConf.to_container(dataset_cfg, resolve=True) if OmegaConf.is_config(dataset_cfg) else dict(dataset_cfg)
    return Pretraining.from_mapping(cfg.pretrain)


def pretraining_corpus(corpus: str, pretraining: Pretraining) -> tuple[torch.Tensor, torch.Tensor]:
    from generation.corpora import build_corpus  # matplotlib's fonts: only when a corpus is built

    return build_corpus(
        corpus,
        seed=pretraining.seed,
        size=pretraining.corpus_size,
        split_seed=pretraining.split_seed,
        test_fraction=pretraining.test_fraction,
        public_fraction=pretraining.public_fraction,
    )


def build_unet(architecture: Architecture) -> UNet2DModel:
    """A randomly initialised UNet at 8x8 with ``num_classes + 1`` class embeddings (the last is 'no class')."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=IMAGE_SHAPE[1],
        in_channels=IMAGE_SHAPE[0],
        out_channels=IMAGE_SHAPE[0],
        block_out_channels=architecture.block_out_channels,
        layers_per_block=architecture.layers_per_block,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in architecture.attention),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(architecture.attention)),
        norm_num_groups=architecture.norm_num_groups,
        num_class_embeds=architecture.num_classes + 1,
    )


def pretrain(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    architecture: Architecture,
    pretraining: Pretraining,
    device: torch.device,
    progress: bool = True,
) -> UNet2DModel:
    """DDPM noise-prediction training with AdamW; returns the EMA of the weights (in eval mode).

    ``images`` are ``(N, 1, 8, 8)`` in [0, 1], ``labels`` int64 in ``[0, num_classes)``.
    """
    if images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"pretrain expects images of shape (N, {', '.join(map(str, IMAGE_SHAPE))}), got {tuple(images.shape)}.")
    if labels.min() < 0 or labels.max() >= architecture.num_classes:
        raise ValueError(f"labels must lie in [0, {architecture.num_classes}).")
    with torch.enable_grad():  # also when called from inside generate()'s no_grad
        return _train(images, labels, architecture=architecture, pretraining=pretraining, device=device, progress=progress)


def _train(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    architecture: Architecture,
    pretraining: Pretraining,
    device: torch.device,
    progress: bool,
) -> UNet2DModel:
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's RNG
        torch.manual_seed(pretraining.seed)
        unet = build_unet(architecture).to(device).train()
    from diffusers.training_utils import EMAModel

    # diffusers' EMA warms up as (1 + step) / (10 + step), so short runs are not dominated by the initialisation.
    ema = EMAModel(unet.parameters(), decay=pretraining.ema_decay, foreach=True)
    scheduler = training_scheduler(architecture)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=pretraining.learning_rate)
    # Cosine decay to zero: the last steps refine instead of jumping around the noisy optimum.
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, pretraining.steps) / pretraining.steps))
    )
    data = images.to(device) * 2.0 - 1.0
    targets = labels.to(device)
    null_class = architecture.num_classes
    batches = torch.Generator(device="cpu").manual_seed(pretraining.seed)

    # A bar on a terminal (steps/s, ETA, loss), else a line a minute (generation/progress.py)
    bar = Progress(pretraining.steps, "pretrain generator", "step", enabled=progress)
    running_loss = None
    for step in range(pretraining.steps):
        index = torch.randint(len(data), (pretraining.batch_size,), generator=batches).to(device)
        clean, classes = data[index], targets[index]
        noise = torch.randn(clean.shape, generator=batches).to(device)
        timesteps = torch.randint(scheduler.config.num_train_timesteps, (len(index),), generator=batches).to(device)
        dropped = torch.rand(len(index), generator=batches).to(device) < pretraining.class_dropout
        classes = torch.where(dropped, torch.full_like(classes, null_class), classes)

        predicted = unet(scheduler.add_noise(clean, noise, timesteps), timesteps, class_labels=classes).sample
        loss = F.mse_loss(predicted, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr_schedule.step()
        ema.step(unet.parameters())
        running_loss = loss.item() if running_loss is None else 0.98 * running_loss + 0.02 * loss.item()
        if step % 50 == 0 or step == pretraining.steps - 1:
            bar.set_postfix(f"loss {running_loss:.4f}, {pretraining.batch_size} images/step")
        bar.update(1)
    bar.close()
    ema.copy_to(unet.parameters())
    return unet.eval().requires_grad_(False)


def pretrain_on_corpus(
    corpus: str, *, architecture: Architecture, pretraining: Pretraining, device: torch.device, progress: bool = True
) -> tuple[UNet2DModel, dict]:
    """Build the corpus, pretrain on it; return the EMA model and the record to save next to its weights."""
    images, labels = pretraining_corpus(corpus, pretraining)
    started = time.perf_counter()
    unet = pretrain(images, labels, architecture=architecture, pretraining=pretraining, device=device, progress=progress)
    record = {
        "format": RECORD_FORMAT,
        "architecture": architecture.to_dict(),
        "corpus": {"name": corpus, "num_images": len(images)},
        "pretraining": asdict(pretraining),
        "parameters": sum(p.numel() for p in unet.parameters()),
        "pretraining_seconds": round(time.perf_counter() - started, 1),
        "device": str(device),
        "versions": {"torch": torch.__version__, "diffusers": importlib.metadata.version("diffusers")},
    }
    return unet, record


def save_weights(unet: UNet2DModel, folder: Path, record: dict) -> dict:
    """Write ``folder``: the model in fp16 with ``save_pretrained``, and ``record`` (plus the weights'
    sha256) as record.json. Each writer fills its own folder beside it and then moves it in, so an
    interrupted save never leaves a half folder where the weights are looked up."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f"{folder.name}.partial-"))
    try:
        copy.deepcopy(unet).cpu().half().save_pretrained(partial)  # .half(): diffusers warns on .to(dtype)
        record = {**record, "dtype": "float16", "weights_sha256": file_sha256(partial / WEIGHTS_NAME)}
        (partial / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")
        for path in partial.iterdir():
            os.chmod(path, 0o644)  # safetensors and mkdtemp make owner-only files; weights are meant to be shared
        os.chmod(partial, 0o755)
        if folder.exists():
            old = tempfile.mkdtemp(dir=folder.parent, prefix=f"{folder.name}.old-")
            os.replace(folder, old)  # onto an empty folder: allowed
            shutil.rmtree(old)
        os.replace(partial, folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # only left if something failed
    return record


def real_digit_classifier(*, split_seed: int, test_fraction: float, public_fraction: float):
    """An RBF-SVM (sklearn ``SVC``) trained on the real federation digits, and its accuracy on the real test digits."""
    from sklearn.svm import SVC

    images, labels = load_digits_arrays()
    split = digits_split_indices(split_seed, test_fraction, public_fraction)
    flat = images.flatten(1).numpy()
    classifier = SVC(gamma="scale").fit(flat[split["federation"]], labels[split["federation"]].numpy())
    test_accuracy = float(classifier.score(flat[split["test"]], labels[split["test"]].numpy()))
    return classifier, test_accuracy


def classifier_agreement(classifier, images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
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


def generator_and_pretraining(cfg: DictConfig):
    """The generator to pretrain (a `ClassConditionalGenerator`, from the registry) and how, from the
    composed conf/pretrain.yaml."""
    # `corpus` is a top-level alias of generator.corpus (so that `corpus=fonts` works); the alias wins.
    cfg.generator.corpus = cfg.corpus
    generator = build_generator({**OmegaConf.to_container(cfg.generator, resolve=True), "pretrain_if_missing": False},
                                cfg.dataset)
    return generator, Pretraining.from_mapping(cfg.pretrain)


@hydra.main(config_path=str(CONF_DIR), config_name="pretrain", version_base=None)
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
    (generator.weights_path / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")

    grid = Path(HydraConfig.get().runtime.output_dir) / f"samples_{generator.corpus}.png"
    save_grid(images, labels, grid, per_class=evaluation.grid_per_class, scale=evaluation.grid_scale)

    size_kib = (generator.weights_path / WEIGHTS_NAME).stat().st_size / 1024
    print(f"weights: {generator.weights_path} ({size_kib:.0f} KiB, {record['parameters']:,} parameters, fp16)")
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
