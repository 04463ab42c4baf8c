"""Class-conditional diffusion on 8x8 digits from diffusers parts: the offline stand-in for a pretrained model.

Sampling: the ``UNet2DModel`` that generation/pretrain.py defines and trains (one embedding per
class plus a null class for optional guidance), loaded from its weights folder (diffusers'
``save_pretrained`` layout plus record.json) and denoised with DDIM.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import torch

from generation.base import backend_settings, checked_plan
from generation.cache import file_sha256, runtime_fingerprint
from generation.pretrain import (
    CONFIG_NAME,
    IMAGE_SHAPE,
    RECORD_FORMAT,
    RECORD_NAME,
    WEIGHTS_NAME,
    Architecture,
    Pretraining,
    pretrain_on_corpus,
    pretraining_settings,
    save_weights,
    training_scheduler,
)
from generation.progress import Progress
from genfl_torch.train import resolve_device

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_WEIGHTS = Path("generation") / "weights"  # the committed weights, relative to a checkout or install
SETTINGS = ("corpus", "weights", "weights_dir", "pretrain_if_missing", "architecture", "sampling_steps",
            "guidance_scale", "batch_size", "device")  # conf/generator/class_conditional.yaml, less `backend`


def load_weights(folder: Path, architecture: Architecture) -> tuple[UNet2DModel, dict]:
    """The model in ``folder`` (fp32, eval mode) and its record; a clear error if anything does not match."""
    record_file = folder / RECORD_NAME
    if not record_file.is_file():
        raise ValueError(f"Generator weights {folder} have no {RECORD_NAME}; pretrain again with `python -m generation.pretrain`.")
    record = json.loads(record_file.read_text())
    if record.get("format") != RECORD_FORMAT:
        raise ValueError(f"{record_file} is not a {RECORD_FORMAT} record.")
    weights = folder / WEIGHTS_NAME
    if not weights.is_file() or record.get("weights_sha256") != file_sha256(weights):
        raise ValueError(
            f"Generator weights {weights} do not match the sha256 in {RECORD_NAME} (changed, truncated or missing); "
            "delete the folder or pretrain again with `python -m generation.pretrain`."
        )
    if record["architecture"] != architecture.to_dict():
        raise ValueError(
            f"Generator weights {folder} were trained for architecture {record['architecture']}, "
            f"but the config asks for {architecture.to_dict()}: change the config or pretrain again."
        )
    from diffusers import UNet2DModel  # imported only when weights load: a cache hit needs no model code

    try:  # the fp16 file widened to fp32, exactly
        unet = UNet2DModel.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as error:
        raise ValueError(f"Generator weights {folder} are not a loadable diffusers UNet2DModel folder: {error}") from error
    return unet.eval().requires_grad_(False), record


def package_weights_dirs() -> list[Path]:
    """``generation/weights/`` of this code and of the installed ``genfl`` distribution.

    A ServerApp started by a SuperLink runs from the unpacked FAB, which carries no weights files; the
    installed package (an editable install points at its checkout) still has them.
    """
    dirs = [REPO_ROOT / PACKAGE_WEIGHTS]
    try:
        dist = importlib.metadata.distribution("genfl")
    except importlib.metadata.PackageNotFoundError:
        return dirs
    direct_url = json.loads(dist.read_text("direct_url.json") or "{}")
    if direct_url.get("dir_info", {}).get("editable") and direct_url.get("url", "").startswith("file://"):
        dirs.append(Path(unquote(urlparse(direct_url["url"]).path)) / PACKAGE_WEIGHTS)
    else:
        dirs.append(Path(dist.locate_file(PACKAGE_WEIGHTS)))
    return list(dict.fromkeys(d.resolve() for d in dirs))


def weights_candidates(weights: str | os.PathLike, weights_dir: str | os.PathLike | None) -> list[Path]:
    """Where the ``weights`` folder may be, in search order: an absolute path is itself; a relative one is
    looked up in ``weights_dir`` (the ``generator.weights_dir`` cache), then in the package's ``generation/weights/``."""
    path = Path(weights).expanduser()
    if path.is_absolute():
        return [path]
    roots = ([Path(weights_dir).expanduser().resolve()] if weights_dir else []) + package_weights_dirs()
    return [root / path for root in roots]


def resolve_weights_path(weights: str | os.PathLike, weights_dir: str | os.PathLike | None = None) -> Path:
    """The first candidate that holds weights, else the first one (where pretraining on first use writes)."""
    candidates = weights_candidates(weights, weights_dir)
    return next((path for path in candidates if has_weights(path)), candidates[0])


def has_weights(folder: Path) -> bool:
    """Whether ``folder`` holds a weights file (a FAB carries the folder's JSON files but not the weights)."""
    return (folder / WEIGHTS_NAME).is_file()


class ClassConditionalGenerator:
    """Samples ``plan[c]`` images of each class ``c`` from the pretrained class-conditional UNet with DDIM.

    The images of a class depend only on ``(seed, c, plan[c])``: each class starts from its own seeded
    noise and is denoised in its own batches, so adding or removing other classes changes nothing.
    ``guidance_scale <= 1`` samples the plain conditional model (no classifier-free guidance).
    Weights load on first use; if they are missing and ``pretraining`` is given (it returns the
    settings, and is called only then), the model is pretrained then and saved at ``weights``.
    """

    def __init__(
        self,
        *,
        weights: str | os.PathLike,
        corpus: str,
        architecture: Architecture | Mapping,
        sampling_steps: int,
        guidance_scale: float,
        batch_size: int,
        device: str,
        pretraining: Callable[[], Pretraining] | None,
        weights_dir: str | os.PathLike | None = None,
    ):
        if sampling_steps < 1:
            raise ValueError(f"sampling_steps must be >= 1, got {sampling_steps}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0 (<= 1 means unguided), got {guidance_scale}.")
        self.weights_candidates = weights_candidates(weights, weights_dir)
        self.weights_path = resolve_weights_path(weights, weights_dir)
        if self.weights_path.is_file():
            raise ValueError(f"generator.weights {self.weights_path} is a file, but weights are a diffusers model folder "
                             f"({CONFIG_NAME}, {WEIGHTS_NAME}, {RECORD_NAME}): point it at one, or pretrain again.")
        self.corpus = corpus
        self.architecture = architecture if isinstance(architecture, Architecture) else Architecture.from_mapping(architecture)
        self.sampling_steps = int(sampling_steps)
        self.guidance_scale = float(guidance_scale)
        self.batch_size = int(batch_size)
        self.device = resolve_device(device)
        self.dtype = torch.float32  # sampling precision on every device (the fp16 weights are widened on load)
        self.pretraining = pretraining
        self.num_classes = self.architecture.num_classes
        self.image_shape = IMAGE_SHAPE
        self._unet: UNet2DModel | None = None
        self._record: dict | None = None
        self._fingerprint: dict | None = None

    @classmethod
    def from_config(cls, generator_cfg: Mapping, dataset_cfg: Mapping) -> ClassConditionalGenerator:
        """From conf/generator/class_conditional.yaml; pretraining on first use takes conf/pretrain.yaml's
        settings (a Hydra compose, only if it happens) on the split of ``dataset_cfg``."""
        settings = backend_settings(generator_cfg, "class_conditional", SETTINGS)

        def pretraining() -> Pretraining:
            return pretraining_settings(dataset_cfg)

        return cls(**{key: value for key, value in settings.items() if key != "pretrain_if_missing"},
                   pretraining=pretraining if settings["pretrain_if_missing"] else None)

    @property
    def record(self) -> dict:
        """How the weights were made (their record.json); loads them."""
        self._load()
        return self._record

    def fingerprint(self) -> dict:
        """Everything but plan and seed that determines the images, the machine's part included
        (device type, dtype, library versions: a CPU run must not load a GPU run's entry).

        From the configuration and the sha256 of the weights' files: no model is loaded. Weights that
        will be pretrained on first use are keyed on what pretraining will do (its settings); once
        written, later runs key on their hash (so the first run's images are made once more).
        Missing weights that will not be pretrained are the missing-weights error, as in ``generate``.
        """
        if self._fingerprint is None:  # once per generator: a run keys all its lookups alike
            if has_weights(self.weights_path):
                weights = {"sha256": {name: file_sha256(self.weights_path / name) for name in (CONFIG_NAME, WEIGHTS_NAME)}}
            elif self.pretraining is None:
                raise self._missing_weights_error()
            else:
                weights = {"pretrained_on_first_use": asdict(self.pretraining()), "architecture": self.architecture.to_dict()}
            self._fingerprint = {
                "backend": "class_conditional",
                "weights": weights,
                "corpus": self.corpus,
                "sampler": "ddim",
                "eta": 0.0,
                "timestep_spacing": "trailing",
                "sampling_steps": self.sampling_steps,
                "guidance_scale": self.guidance_scale if self._guided else 1.0,
                "image_shape": list(IMAGE_SHAPE),
                **runtime_fingerprint(self.device, self.dtype),
            }
        return self._fingerprint

    @torch.no_grad()
    def generate(self, plan: Mapping[int, int], *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        counts = checked_plan(plan, self.num_classes)
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}.")
        self._load()
        self._unet.to(self.device)
        images, labels = [], []
        # A bar per class and overall on a terminal (images/s, ETA), else a line a minute (generation/progress.py)
        with Progress(sum(counts.values()), "generation", "image", inner="class") as progress:
            for class_index, count in counts.items():
                noise = torch.randn((count, *IMAGE_SHAPE), generator=torch.Generator().manual_seed(_class_seed(seed, class_index)))
                progress.start_part(f"class {class_index}", count)
                for chunk in noise.split(self.batch_size):
                    images.append(self._denoise(chunk.to(self.device), class_index).cpu())
                    progress.update(len(chunk))
                labels.append(torch.full((count,), class_index, dtype=torch.int64))
        if not images:
            return torch.zeros((0, *IMAGE_SHAPE), dtype=torch.float32), torch.zeros(0, dtype=torch.int64)
        return torch.cat(images), torch.cat(labels)

    @property
    def _guided(self) -> bool:
        return self.guidance_scale > 1.0

    def _denoise(self, latents: torch.Tensor, class_index: int) -> torch.Tensor:
        classes = torch.full((len(latents),), class_index, dtype=torch.int64, device=self.device)
        if self._guided:
            classes = torch.cat([classes, torch.full_like(classes, self.architecture.num_classes)])
        for timestep in self._sampler.timesteps:
            model_input = torch.cat([latents, latents]) if self._guided else latents
            noise = self._unet(model_input, timestep.to(self.device), class_labels=classes).sample
            if self._guided:
                conditional, unconditional = noise.chunk(2)
                noise = unconditional + self.guidance_scale * (conditional - unconditional)
            latents = self._sampler.step(noise, timestep, latents, eta=0.0).prev_sample
        return ((latents + 1.0) / 2.0).clamp(0.0, 1.0).float()

    def _missing_weights_error(self) -> FileNotFoundError:
        looked = ", ".join(str(path) for path in self.weights_candidates)
        return FileNotFoundError(
            f"No generator weights (generator.weights) at {looked}. Copy the committed ones into "
            f"generator.weights_dir (`cp -r <checkout>/generation/weights/* {self.weights_path.parent}/`), "
            f"make them with `python -m generation.pretrain corpus={self.corpus}`, set generator.weights "
            f"to an absolute path, or set generator.pretrain_if_missing=true."
        )

    def _load(self) -> None:
        if self._unet is not None:
            return
        if not has_weights(self.weights_path):
            if self.pretraining is None:
                raise self._missing_weights_error()
            settings = self.pretraining()
            logger.warning("Generator weights not found at %s: pretraining on corpus %r for %d steps and saving them there.",
                           self.weights_path, self.corpus, settings.steps)
            unet, record = pretrain_on_corpus(self.corpus, architecture=self.architecture, pretraining=settings, device=self.device)
            save_weights(unet, self.weights_path, record)
        # Always sample from the saved (fp16-rounded) weights, so a fresh and a cached run agree.
        unet, record = load_weights(self.weights_path, self.architecture)
        if record["corpus"]["name"] != self.corpus:
            raise ValueError(
                f"Generator weights {self.weights_path} were pretrained on corpus {record['corpus']['name']!r}, "
                f"but the config says {self.corpus!r}."
            )
        if self._guided and record["pretraining"]["class_dropout"] <= 0:
            raise ValueError(
                f"guidance_scale {self.guidance_scale} needs a model trained with class_dropout > 0; "
                f"{self.weights_path} was not. Use guidance_scale 1 (unguided) or pretrain again."
            )
        self._unet = unet
        self._record = record
        from diffusers import DDIMScheduler

        self._sampler = DDIMScheduler.from_config(
            training_scheduler(self.architecture).config, timestep_spacing="trailing", clip_sample=True
        )
        self._sampler.set_timesteps(self.sampling_steps)


def _class_seed(seed: int, class_index: int) -> int:
    """An independent, reproducible noise stream per (seed, class)."""
    return int(np.random.SeedSequence([seed, class_index]).generate_state(1, dtype=np.uint64)[0])
