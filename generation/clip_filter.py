"""CLIP zero-shot scores of the synthetic set (issue 16, item 3(a); He et al., ICLR'23).

An image's score is CLIP's softmax probability of its own class among the prompts of every class
("a photo of a {}." with each class name): what a text-to-image image should look like, judged by a
model that never saw the federation's data. The scores depend only on the images, so they are
computed once (`generation.augmented` keeps them) and the CLIP model is released right after.

Plain PyTorch + transformers (imported only when a model is loaded or checked).
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from generation.base import looks_like_path
from genfl_torch.data import Split, as_float

logger = logging.getLogger(__name__)


def clip_problem(model: str) -> str | None:
    """Why ``model`` (Hub id or folder) cannot be loaded here, as one line that says what to do; None when
    it may load. Reads the disk only: a Hub id that is not cached fails at loading unless online."""
    if importlib.util.find_spec("transformers") is None:
        return ("augmented.filter.mode=clip needs the transformers package: `pip install transformers`, "
                "or set augmented.filter.mode=confidence")
    folder = Path(model).expanduser()
    if folder.is_dir():
        return None if (folder / "config.json").is_file() else (
            f"augmented.filter.clip_model: folder {model!r} has no config.json (not a CLIP model folder); "
            f"download one with `hf download openai/clip-vit-base-patch32 --local-dir {model}`")
    if looks_like_path(model):
        return (f"augmented.filter.clip_model: folder {model!r} does not exist; on a machine with internet run "
                f"`hf download openai/clip-vit-base-patch32 --local-dir {model}`, or give a Hugging Face Hub id")
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(model, "config.json"), str):
        return (f"augmented.filter.clip_model: {model!r} is not in the local Hub cache and HF_HUB_OFFLINE is set; "
                f"go online once, or run `hf download {model} --local-dir <dir>` and set "
                "augmented.filter.clip_model=<dir>")
    return None


def load_clip(model: str):
    """``(CLIPModel, CLIPProcessor)`` from a Hub id or folder (a folder never contacts the Hub), in eval mode."""
    from transformers import CLIPModel, CLIPProcessor

    if why := clip_problem(model):
        raise RuntimeError(why)
    folder = Path(model).expanduser()
    source, local = (str(folder), True) if folder.is_dir() else (model, False)
    try:
        clip = CLIPModel.from_pretrained(source, local_files_only=local)
        processor = CLIPProcessor.from_pretrained(source, local_files_only=local)
    except (OSError, ValueError) as error:  # missing files, no network, a bad Hub id
        raise RuntimeError(f"augmented.filter.clip_model: cannot load {model!r} as a CLIP model and processor "
                           f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from error
    return clip.float().eval(), processor


def rgb_uint8(images: torch.Tensor) -> torch.Tensor:
    """(N, 1|3, H, W) uint8 or float [0, 1] -> (N, 3, H, W) uint8 on the CPU: what CLIP's processor expects."""
    if images.dtype != torch.uint8:
        images = (as_float(images).clamp(0, 1) * 255).round().to(torch.uint8)
    images = images.cpu()
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def _features(output) -> torch.Tensor:
    """``get_*_features`` return a tensor (transformers 4) or an output whose pooler_output is it (5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@torch.no_grad()
def clip_probabilities(clip, processor, images: torch.Tensor, prompts: Sequence[str], device: torch.device,
                       batch_size: int) -> torch.Tensor:
    """float32 (N, len(prompts)) on the CPU: each image's softmax over the prompts of CLIP's scaled
    cosine similarities (``logits_per_image``), in fp32, batch by batch: the same images give the same numbers."""
    clip.to(device)
    text = processor.tokenizer(list(prompts), padding=True, return_tensors="pt").to(device)
    text_features = torch.nn.functional.normalize(_features(clip.get_text_features(**text)).float(), dim=-1)
    scale = clip.logit_scale.exp().float()
    rows = []
    for start in range(0, len(images), batch_size):
        batch = rgb_uint8(images[start : start + batch_size])
        pixels = processor.image_processor(list(batch), input_data_format="channels_first",
                                           return_tensors="pt")["pixel_values"]
        image_features = _features(clip.get_image_features(pixel_values=pixels.to(device)))
        logits = scale * torch.nn.functional.normalize(image_features.float(), dim=-1) @ text_features.T
        rows.append(torch.softmax(logits, dim=1).cpu())
    return torch.cat(rows) if rows else torch.zeros(0, len(prompts))


def class_prompts(template: str, class_names: Sequence[str]) -> list[str]:
    """One prompt per class, in label order (``aquarium_fish`` -> ``aquarium fish``)."""
    return [template.format(str(name).replace("_", " ")) for name in class_names]


def score_clip(data: Split, class_names: Sequence[str], *, model: str, prompt: str, device: torch.device,
               batch_size: int) -> torch.Tensor:
    """float32 (N,) on the CPU: CLIP's zero-shot probability of each image's own class. Loads the model,
    scores, and frees it again (it is needed once per synthetic set)."""
    started = time.perf_counter()
    clip, processor = load_clip(model)
    try:
        probabilities = clip_probabilities(clip, processor, data.images, class_prompts(prompt, class_names), device,
                                           batch_size)
    finally:
        del clip, processor
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    scores = probabilities.gather(1, data.labels.cpu()[:, None]).squeeze(1)
    logger.info("CLIP filter: scored %d synthetic images with %s in %.1f s", len(scores), model,
                time.perf_counter() - started)
    return scores
