"""Stable Diffusion text-to-image backend: prompts per class, images resized to the data set's format.

Each image of a class gets one of the class's prompts (`generation.prompts.class_prompt_sets`: every
template, with each description where a template says ``{description}``) and, with
``guidance_scale_range``, its own guidance scale drawn uniformly from the range. Both are drawn from
(seed, class, image index) alone, like the image's noise (`image_seed`), so an image never depends on
the batch size or on the rest of the plan. The defaults (one template, a fixed scale) make the very
images, and the very cache key, of the single-prompt generator this backend was before.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
)

from generation.base import backend_settings, checked_plan, looks_like_path
from generation.cache import runtime_fingerprint
from generation.progress import Progress
from generation.sd_draws import BLACK_THRESHOLD, PerImageGuidance, _hash64, image_seed, unusable_images
from generation.sd_weights import weights_identity
from generation.prompts import (
    builtin_class_names,
    checked_guidance_range,
    class_prompt_sets,
    load_class_descriptions,
    resolve_class_names,
)

logger = logging.getLogger(__name__)

BACKEND = "stable_diffusion"
SETTINGS = (  # conf/generator/stable_diffusion.yaml, less `backend`
    "model", "class_names", "prompt_templates", "class_descriptions", "negative_prompt", "guidance_scale",
    "guidance_scale_range", "num_inference_steps", "scheduler", "generation_resolution", "batch_size", "device",
    "local_files_only", "safety_checker", "revision", "compile_unet",
)

# How an image's prompt and guidance scale are drawn (`TextToImageGenerator.image_conditions`): named in
# the cache key whenever there is a choice, so that changing the scheme cannot reuse old images.
PER_IMAGE_DRAW = "v1: prompt (blake2b(seed:class) + index) mod n; guidance low + (high-low) * blake2b(seed:class:index)"

SCHEDULERS = {
    "dpm++": DPMSolverMultistepScheduler,
    "ddim": DDIMScheduler,
    "pndm": PNDMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
}

# Rounds of replacements for dropped images before giving up on a class: bounds the cost when a
# prompt keeps being flagged.
MAX_REPLACEMENT_ROUNDS = 3

# RGB -> luma (ITU-R BT.601), the weights of PIL's "L" mode and torchvision's rgb_to_grayscale.
_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


class GeneratorUnavailableError(RuntimeError):
    """The model cannot be loaded here; the message says what the user must do."""


class TextToImageGenerator:
    """Generates class images with a Stable Diffusion pipeline from text prompts per class.

    Every argument is required: the defaults live in ``conf/generator/stable_diffusion.yaml``.
    ``prompt_templates`` hold ``{name}`` and/or ``{description}``; ``class_descriptions`` is None, a
    JSON/YAML file or a mapping ``{class name: [description, ...]}`` (`generation.prompts`).
    ``guidance_scale_range`` None uses ``guidance_scale`` for every image; ``[low, high]`` (1 <= low
    <= high) draws each image's scale uniformly from it and ignores ``guidance_scale``.
    The pipeline loads on the first ``generate`` or ``load`` (constructing is cheap), in float16 on CUDA and
    float32 elsewhere. After each ``generate``, ``last_dropped`` counts the images discarded as
    unusable (black or flagged by the safety checker) and ``last_shortfall`` maps each class that
    came out short, even after replacements, to how many images it lacks.
    """

    def __init__(
        self,
        *,
        model: str,
        class_names: Sequence[str],
        prompt_templates: Sequence[str],
        class_descriptions: str | Path | Mapping | None,
        negative_prompt: str | None,
        guidance_scale: float,
        guidance_scale_range: Sequence[float] | None,
        num_inference_steps: int,
        scheduler: str,
        generation_resolution: int,
        target_size: int,
        target_channels: int,
        batch_size: int,
        device: str,
        local_files_only: bool,
        safety_checker: bool,
        revision: str = "main",
        compile_unet: bool = False,
    ) -> None:
        if scheduler not in SCHEDULERS:
            raise ValueError(f"Unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS)}.")
        if generation_resolution <= 0 or generation_resolution % 8:
            raise ValueError(
                f"generation_resolution must be a positive multiple of 8 (the VAE downsamples by 8), "
                f"got {generation_resolution}."
            )
        if target_channels not in (1, 3):
            raise ValueError(f"target_channels must be 1 (grayscale) or 3 (RGB), got {target_channels}.")
        for name, value in [("target_size", target_size), ("batch_size", batch_size),
                            ("num_inference_steps", num_inference_steps)]:
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}.")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise ValueError(f"negative_prompt must be a string or null, got {negative_prompt!r}.")
        self.model = model
        # Per class, its prompts; each image gets one (`image_conditions`).
        self.prompts = class_prompt_sets(prompt_templates, class_names,
                                         load_class_descriptions(class_descriptions, class_names))
        self.negative_prompt = negative_prompt
        self.guidance_scale = float(guidance_scale)
        self.guidance_scale_range = checked_guidance_range(guidance_scale_range)
        self._batched_guidance = True  # False once diffusers is seen not to apply PerImageGuidance
        self.num_inference_steps = int(num_inference_steps)
        self.scheduler = scheduler
        self.generation_resolution = int(generation_resolution)
        self.target_size = int(target_size)
        self.target_channels = int(target_channels)
        self.batch_size = int(batch_size)
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available()
                                   else "cpu" if device == "auto" else device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.local_files_only = bool(local_files_only)
        self.safety_checker = bool(safety_checker)
        self.revision = str(revision)
        self.compile_unet = bool(compile_unet)
        self._weights_id: tuple[str, str | None] | None = None  # (identity, Hub commit that loads)
        self.last_dropped = 0
        self.last_shortfall: dict[int, int] = {}
        self._pipe: StableDiffusionPipeline | None = None

    @classmethod
    def from_config(cls, generator_cfg: Mapping, dataset_cfg: Mapping) -> TextToImageGenerator:
        """From conf/generator/stable_diffusion.yaml; images at the data set's size and channels.

        ``class_names: null`` means the data set's built-in names; unknown or missing keys are errors.
        """
        settings = backend_settings(generator_cfg, BACKEND, SETTINGS)
        names = settings.pop("class_names")
        settings["class_names"] = resolve_class_names(None if names is None else list(names),
                                                      builtin_class_names(dataset_cfg["name"]))
        return cls(**settings, target_size=dataset_cfg["image_size"], target_channels=dataset_cfg["channels"])

    def fingerprint(self) -> dict:
        """Everything but plan and seed that determines the images (batch_size does not, by design).

        The weights are identified by content, not by name, and without loading them or asking the
        network (`weights_identity`): a folder by a hash of its files, a Hub id by its pinned commit or
        the commit the local Hub cache has for its revision, which is then the commit that loads.
        The prompts and the guidance are written as the single-prompt generator wrote them (a prompt per
        class, one scale) unless there is a per-image choice, which then names its scheme (PER_IMAGE_DRAW).
        """
        single_prompts = all(len(own) == 1 for own in self.prompts)
        fingerprint = {
            "backend": BACKEND, "weights": self._weights()[0], "scheduler": self.scheduler,
            "num_inference_steps": self.num_inference_steps, "guidance_scale": self.guidance_scale,
            "prompts": [own[0] for own in self.prompts] if single_prompts else [list(own) for own in self.prompts],
            "negative_prompt": self.negative_prompt,
            "generation_resolution": self.generation_resolution, "target_size": self.target_size,
            "target_channels": self.target_channels, "safety_checker": self.safety_checker,
            "black_threshold": BLACK_THRESHOLD, **runtime_fingerprint(self.device, self.dtype),
        }
        if self.guidance_scale_range is not None:
            del fingerprint["guidance_scale"]  # unused: each image draws its own
            fingerprint["guidance_scale_range"] = list(self.guidance_scale_range)
        if not single_prompts or self.guidance_scale_range is not None:
            fingerprint["per_image_draw"] = PER_IMAGE_DRAW
        return fingerprint

    def image_conditions(self, seed: int, class_id: int, index: int) -> tuple[str, float]:
        """The prompt and guidance scale of the ``index``-th candidate image of ``class_id``.

        Consecutive images of a class take its prompts in turn from a start drawn from (seed, class):
        every prompt is used equally often (within one), and another seed starts elsewhere. The scale
        is drawn uniformly from ``guidance_scale_range`` by a hash of (seed, class, index).
        """
        own = self.prompts[class_id]
        prompt = own[(_hash64(f"prompt:{seed}:{class_id}") + index) % len(own)] if len(own) > 1 else own[0]
        if self.guidance_scale_range is None:
            return prompt, self.guidance_scale
        low, high = self.guidance_scale_range
        return prompt, low + (high - low) * (_hash64(f"guidance:{seed}:{class_id}:{index}") / 2**64)

    def generate(self, plan: Mapping[int, int], *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``plan[c]`` images of each class ``c`` (fewer if too many come out unusable), classes ascending.

        Each class is generated in its own batches, so its images are the same whatever else the plan
        holds: a plan split by class over processes (`generation.shard`) gives identical images.
        """
        counts = checked_plan(plan, len(self.prompts))
        kept: dict[int, list[torch.Tensor]] = {c: [] for c in counts}
        dropped = 0
        # A bar per class and overall on a terminal (kept images/s, ETA), else a line a minute (generation/progress.py)
        with Progress(sum(counts.values()), "generation", "image", inner="class") as progress:
            for class_id, count in counts.items():
                progress.start_part(f"class {class_id}", count)
                next_index = 0  # replacements continue the class's candidate sequence
                for _ in range(1 + MAX_REPLACEMENT_ROUNDS):
                    missing = count - len(kept[class_id])
                    if missing == 0:
                        break
                    indices = list(range(next_index, next_index + missing))
                    next_index += missing
                    for start in range(0, len(indices), self.batch_size):
                        batch = [(class_id, i) for i in indices[start:start + self.batch_size]]
                        images, usable = self._generate_batch(batch, seed)
                        kept[class_id] += [image for image, ok in zip(images, usable.tolist()) if ok]
                        dropped += len(batch) - int(usable.sum())
                        progress.update(int(usable.sum()))
                        if dropped:
                            progress.set_postfix(f"{dropped} dropped")
        self.last_dropped = dropped
        self.last_shortfall = {c: counts[c] - len(kept[c]) for c in counts if len(kept[c]) < counts[c]}
        if dropped:
            logger.warning("Dropped %d black/flagged generated images; classes still short: %s",
                           dropped, self.last_shortfall or "none")
        images = [image for c in counts for image in kept[c]]
        labels = [c for c in counts for _ in kept[c]]
        if not images:
            size, channels = self.target_size, self.target_channels
            return torch.empty(0, channels, size, size), torch.empty(0, dtype=torch.int64)
        return torch.stack(images), torch.tensor(labels, dtype=torch.int64)

    def _generate_batch(self, batch: list[tuple[int, int]], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Images at the target format for the (class, candidate index) pairs, and which are usable.

        Images with different guidance scales share one pipeline call through `PerImageGuidance`; if
        this diffusers does not apply it at every step, the batch is made again one call per image
        (and so are later ones), which costs the batching but gives the same images.
        """
        pipe = self.load()
        prompts, scales = zip(*(self.image_conditions(seed, c, i) for c, i in batch))
        images = None
        if len(set(scales)) == 1:
            images, flagged = self._call(pipe, batch, prompts, scales[0], seed)
        elif self._batched_guidance:
            guidance = PerImageGuidance(scales)
            images, flagged = self._call(pipe, batch, prompts, guidance, seed)
            steps = len(pipe.scheduler.timesteps)
            if guidance.uses != steps:
                logger.warning("This diffusers version does not apply per-image guidance scales through "
                               "guidance_scale * (text - uncond) (%d of %d steps did): generating one image per "
                               "call from now on, which is slower", guidance.uses, steps)
                self._batched_guidance = False
                images = None
        if images is None:  # one call per image, each with its own scale
            parts = [self._call(pipe, [pair], [prompt], scale, seed) for pair, prompt, scale in zip(batch, prompts, scales)]
            images = torch.cat([part[0] for part in parts])
            flagged = None if parts[0][1] is None else [f for part in parts for f in part[1]]
        usable = ~unusable_images(images).cpu()
        if flagged is not None:
            usable &= ~torch.tensor(flagged, dtype=torch.bool)
        return self._to_target_format(images).cpu(), usable

    def _call(self, pipe, batch: Sequence[tuple[int, int]], prompts: Sequence[str], guidance: float,
              seed: int) -> tuple[torch.Tensor, list[bool] | None]:
        """One pipeline call: images (N, 3, H, W) still on the device, and the safety checker's flags."""
        # CPU generators give the same initial noise on every device.
        generators = [torch.Generator().manual_seed(image_seed(seed, c, i)) for c, i in batch]
        negative = None if self.negative_prompt is None else [self.negative_prompt] * len(batch)
        with torch.inference_mode():
            output = pipe(
                prompt=list(prompts), negative_prompt=negative,
                height=self.generation_resolution, width=self.generation_resolution,
                num_inference_steps=self.num_inference_steps, guidance_scale=guidance,
                generator=generators, output_type="pt",
            )
        # still on the device: resize there, copy only 32x32 pixels back
        return output.images.float(), output.nsfw_content_detected

    def _to_target_format(self, images: torch.Tensor) -> torch.Tensor:
        """Downsample with antialiasing (plain bilinear would alias at 512 -> 32) and convert channels."""
        if images.shape[-1] != self.target_size:
            size = (self.target_size, self.target_size)
            images = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
        if self.target_channels == 1:
            images = (images * _LUMA.to(images.device)).sum(dim=1, keepdim=True)
        return images.clamp(0, 1).contiguous()

    def load(self) -> StableDiffusionPipeline:
        """The pipeline with the chosen scheduler, loaded now if not yet: call it at startup to fail early."""
        if self._pipe is None:
            pipe = self._load()
            pipe.scheduler = SCHEDULERS[self.scheduler].from_config(pipe.scheduler.config)
            pipe.set_progress_bar_config(disable=True)
            pipe = pipe.to(self.device)
            if self.compile_unet:  # minutes of compiling once, then faster steps (bench/throughput.py)
                pipe.unet = torch.compile(pipe.unet)
            self._pipe = pipe
        return self._pipe

    def _weights(self) -> tuple[str, str | None]:
        """What identifies the weights and, for a Hub id that resolved, the commit to load: memoised,
        so that a run keys its images on the very weights it loads."""
        if self._weights_id is None:
            self._weights_id = weights_identity(self.model, self.revision)
        return self._weights_id

    def _load(self) -> StableDiffusionPipeline:
        """``from_pretrained``, turning every "the model is not here" failure into an instruction."""
        folder = Path(self.model).expanduser()
        download = f"hf download stable-diffusion-v1-5/stable-diffusion-v1-5 --local-dir {folder}"
        if not folder.is_dir() and looks_like_path(self.model):
            raise GeneratorUnavailableError(
                f"Stable Diffusion folder {self.model!r} does not exist. On a machine with internet, "
                f"download a model into it (e.g. `{download}`), or set generator.model to an existing "
                "folder or to a Hugging Face Hub id."
            )
        kwargs = {} if self.safety_checker else {"safety_checker": None, "requires_safety_checker": False}
        try:
            pipe = StableDiffusionPipeline.from_pretrained(
                str(folder) if folder.is_dir() else self.model, dtype=self.dtype,
                local_files_only=self.local_files_only,
                **({} if folder.is_dir() else {"revision": self._weights()[1] or self.revision}),
                **kwargs,
            )
        except (OSError, ValueError) as error:  # LocalEntryNotFoundError, HTTP errors, bad repo ids
            if folder.is_dir():
                raise GeneratorUnavailableError(
                    f"Could not load the Stable Diffusion folder {self.model!r} (incomplete download?): {error}. "
                    f"Re-download it while online, e.g. `{download}`."
                ) from error
            raise GeneratorUnavailableError(
                f"Stable Diffusion model {self.model!r} is neither a local folder nor available from the "
                f"Hugging Face Hub here ({type(error).__name__}). Either go online (unset HF_HUB_OFFLINE, set "
                f"generator.local_files_only=false) so it downloads into the cache, or, on a machine with "
                f"internet, run `hf download {self.model} --local-dir <dir>` and set generator.model=<dir>."
            ) from error
        if self.safety_checker and pipe.safety_checker is None:
            raise GeneratorUnavailableError(
                f"generator.safety_checker=true, but model {self.model!r} has no safety checker: "
                "use a model that ships one, or set generator.safety_checker=false."
            )
        return pipe
