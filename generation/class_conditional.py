"""Class-conditional diffusion on 8x8 digits from diffusers parts: the offline stand-in for a pretrained model.

A small ``UNet2DModel`` with one embedding per class (plus a null class for optional guidance) is
pretrained with the DDPM noise-prediction loss on a corpus disjoint from all client data and sampled
with DDIM. Weights live in a safetensors file with a JSON record of how they were made next to it.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from omegaconf import OmegaConf
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from torchcore.train import resolve_device

from generation.cache import runtime_fingerprint
from generation.corpora import build_corpus

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_WEIGHTS = Path("generation") / "weights"  # the committed weights, relative to a checkout or install
RECORD_FORMAT = "genfl-class-conditional/1"
IMAGE_SHAPE = (1, 8, 8)  # the model works at the digits' native resolution


@dataclass(frozen=True)
class Architecture:
    """What the weights file must match: the UNet's shape and the training noise schedule."""

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


@dataclass(frozen=True)
class Pretraining:
    """How to pretrain when the weights are missing: corpus size/split and the optimisation settings."""

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

    @classmethod
    def from_conf_file(cls, dataset: Mapping) -> Pretraining:
        """The ``pretrain`` settings of conf/pretrain.yaml, with the split of ``dataset`` (a dataset config node).

        For callers outside the pretrain command (the server's pretrain-on-first-use), so that the
        settings have one home and the corpus split is always the federation's own.
        """
        if OmegaConf.is_config(dataset):
            dataset = OmegaConf.to_container(dataset, resolve=True)
        settings = OmegaConf.load(REPO_ROOT / "conf" / "pretrain.yaml")["pretrain"]
        return cls.from_mapping(OmegaConf.create({"dataset": dict(dataset), "pretrain": settings})["pretrain"])


def build_unet(architecture: Architecture) -> UNet2DModel:
    """A randomly initialised UNet at 8x8 with ``num_classes + 1`` class embeddings (the last is 'no class')."""
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


def training_scheduler(architecture: Architecture) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=architecture.num_train_timesteps,
        beta_schedule=architecture.beta_schedule,
        prediction_type="epsilon",
        clip_sample=True,
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
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
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

    bar = tqdm(range(pretraining.steps), desc="pretrain generator", disable=not progress, unit="step")
    running_loss = None
    for step in bar:
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

        # EMA with warm-up, so that short runs are not dominated by the random initialisation.
        decay = min(pretraining.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(unet.parameters()), 1.0 - decay)
        running_loss = loss.item() if running_loss is None else 0.98 * running_loss + 0.02 * loss.item()
        if step % 50 == 0 or step == pretraining.steps - 1:
            bar.set_postfix(loss=f"{running_loss:.4f}")
    return ema


def pretraining_corpus(corpus: str, pretraining: Pretraining) -> tuple[torch.Tensor, torch.Tensor]:
    return build_corpus(
        corpus,
        seed=pretraining.seed,
        size=pretraining.corpus_size,
        split_seed=pretraining.split_seed,
        test_fraction=pretraining.test_fraction,
        public_fraction=pretraining.public_fraction,
    )


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
        "versions": {"torch": torch.__version__, "diffusers": _diffusers_version()},
    }
    return unet, record


def save_weights(unet: UNet2DModel, path: Path, record: dict) -> dict:
    """Write the weights as fp16 safetensors and ``record`` (plus the file's sha256) as JSON beside it.

    Both files are written to temporaries first, so an interrupted save never leaves a half file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().to("cpu", torch.float16).contiguous() for name, tensor in unet.state_dict().items()}
    partial = path.with_name(path.name + ".partial")
    save_file(state, str(partial), metadata={"format": RECORD_FORMAT})
    os.chmod(partial, 0o644)  # safetensors writes owner-only files; weights are meant to be shared
    record = {**record, "dtype": "float16", "weights_sha256": _sha256(partial)}
    record_partial = path.with_name(path.stem + ".json.partial")
    record_partial.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(partial, path)
    os.replace(record_partial, record_path(path))
    return record


def load_weights(path: Path, architecture: Architecture) -> tuple[UNet2DModel, dict]:
    """The model in ``path`` (fp32, eval mode) and its record; a clear error if anything does not match."""
    if not path.is_file():
        raise FileNotFoundError(f"No generator weights at {path}.")
    if not record_path(path).is_file():
        raise ValueError(
            f"Generator weights {path} have no record {record_path(path).name} beside them; "
            "pretrain again with `python -m generation.pretrain`."
        )
    record = json.loads(record_path(path).read_text())
    if record.get("format") != RECORD_FORMAT:
        raise ValueError(f"{record_path(path)} is not a {RECORD_FORMAT} record.")
    if record.get("weights_sha256") != _sha256(path):
        raise ValueError(
            f"Generator weights {path} do not match the sha256 in {record_path(path).name} (changed or truncated); "
            "delete both files or pretrain again with `python -m generation.pretrain`."
        )
    if record["architecture"] != architecture.to_dict():
        raise ValueError(
            f"Generator weights {path} were trained for architecture {record['architecture']}, "
            f"but the config asks for {architecture.to_dict()}: change the config or pretrain again."
        )
    try:
        state = load_file(str(path))
    except SafetensorError as error:
        raise ValueError(f"Generator weights {path} are not a readable safetensors file: {error}") from error
    unet = build_unet(architecture)
    try:
        unet.load_state_dict({name: tensor.float() for name, tensor in state.items()}, strict=True)
    except RuntimeError as error:
        raise ValueError(f"Generator weights {path} do not fit the configured UNet: {error}") from error
    return unet.eval().requires_grad_(False), record


def record_path(weights: Path) -> Path:
    return weights.with_suffix(".json")


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
    """Where ``weights`` may be, in search order: an absolute path is itself; a relative one is looked
    up in ``weights_dir`` (the ``generator.weights_dir`` cache), then in the package's ``generation/weights/``."""
    path = Path(weights).expanduser()
    if path.is_absolute():
        return [path]
    roots = ([Path(weights_dir).expanduser().resolve()] if weights_dir else []) + package_weights_dirs()
    return [root / path for root in roots]


def resolve_weights_path(weights: str | os.PathLike, weights_dir: str | os.PathLike | None = None) -> Path:
    """The first existing candidate, else the first one (where pretraining on first use writes)."""
    candidates = weights_candidates(weights, weights_dir)
    return next((path for path in candidates if path.is_file()), candidates[0])


class ClassConditionalGenerator:
    """Samples ``plan[c]`` images of each class ``c`` from the pretrained class-conditional UNet with DDIM.

    The images of a class depend only on ``(seed, c, plan[c])``: each class starts from its own seeded
    noise and is denoised in its own batches, so adding or removing other classes changes nothing.
    ``guidance_scale <= 1`` samples the plain conditional model (no classifier-free guidance).
    Weights load on first use; if they are missing and ``pretraining`` is given, the model is
    pretrained then and cached at ``weights``.
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
        pretraining: Pretraining | None,
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

    @classmethod
    def from_config(cls, config: Mapping, pretraining: Pretraining | None) -> ClassConditionalGenerator:
        """From the ``generator`` config node (conf/generator/class_conditional.yaml)."""
        if config["backend"] != "class_conditional":
            raise ValueError(f"Config is for generator backend {config['backend']!r}, not 'class_conditional'.")
        return cls(
            weights=config["weights"],
            weights_dir=config.get("weights_dir"),
            corpus=config["corpus"],
            architecture=Architecture.from_mapping(config["architecture"]),
            sampling_steps=config["sampling_steps"],
            guidance_scale=config["guidance_scale"],
            batch_size=config["batch_size"],
            device=config["device"],
            pretraining=pretraining if config["pretrain_if_missing"] else None,
        )

    @property
    def record(self) -> dict:
        """How the weights were made (the JSON beside them)."""
        self._load()
        return self._record

    def fingerprint(self) -> dict:
        """Everything but plan and seed that determines the images, the machine's part included
        (device type, dtype, library versions: a CPU run must not load a GPU run's entry).

        Needs the weights' record but not the model on the device: a cache hit touches no GPU.
        """
        self._load()
        return {
            "backend": "class_conditional",
            "weights_sha256": self._record["weights_sha256"],
            "corpus": self._record["corpus"]["name"],
            "sampler": "ddim",
            "eta": 0.0,
            "timestep_spacing": "trailing",
            "sampling_steps": self.sampling_steps,
            "guidance_scale": self.guidance_scale if self._guided else 1.0,
            "image_shape": list(IMAGE_SHAPE),
            **runtime_fingerprint(self.device, self.dtype),
        }

    @torch.no_grad()
    def generate(self, plan: Mapping[int, int], *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        counts = self._check_plan(plan)
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}.")
        self._load()
        self._unet.to(self.device)  # here, not in _load: a fingerprint (a cache hit) needs no device
        images, labels = [], []
        for class_index, count in sorted(counts.items()):
            if count == 0:
                continue
            noise = torch.randn((count, *IMAGE_SHAPE), generator=torch.Generator().manual_seed(_class_seed(seed, class_index)))
            for chunk in noise.split(self.batch_size):
                images.append(self._denoise(chunk.to(self.device), class_index).cpu())
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

    def _check_plan(self, plan: Mapping[int, int]) -> dict[int, int]:
        counts = {}
        for class_index, count in plan.items():
            if not 0 <= int(class_index) < self.num_classes:
                raise ValueError(f"plan names class {class_index}, but the generator knows classes 0..{self.num_classes - 1}.")
            if int(count) < 0:
                raise ValueError(f"plan asks for {count} images of class {class_index}; counts must be >= 0.")
            counts[int(class_index)] = int(count)
        return counts

    def _load(self) -> None:
        if self._unet is not None:
            return
        if not self.weights_path.is_file():
            if self.pretraining is None:
                looked = ", ".join(str(path) for path in self.weights_candidates)
                raise FileNotFoundError(
                    f"No generator weights (generator.weights) at {looked}. Copy the committed ones into "
                    f"generator.weights_dir (`cp <checkout>/generation/weights/* {self.weights_path.parent}/`), "
                    f"make them with `python -m generation.pretrain corpus={self.corpus}`, set generator.weights "
                    f"to an absolute path, or set generator.pretrain_if_missing=true."
                )
            logger.warning(
                "Generator weights not found at %s: pretraining on corpus %r for %d steps and caching them there.",
                self.weights_path,
                self.corpus,
                self.pretraining.steps,
            )
            unet, record = pretrain_on_corpus(
                self.corpus, architecture=self.architecture, pretraining=self.pretraining, device=self.device
            )
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
        self._sampler = DDIMScheduler.from_config(
            training_scheduler(self.architecture).config, timestep_spacing="trailing", clip_sample=True
        )
        self._sampler.set_timesteps(self.sampling_steps)


def _class_seed(seed: int, class_index: int) -> int:
    """An independent, reproducible noise stream per (seed, class)."""
    return int(np.random.SeedSequence([seed, class_index]).generate_state(1, dtype=np.uint64)[0])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__
