"""A tiny random-weight Stable Diffusion folder, built offline, for tests of the real loading path.

The folder has the stable-diffusion-v1-5 layout (model_index.json, unet/, vae/, text_encoder/,
tokenizer/, scheduler/, safety_checker/, feature_extractor/), so ``StableDiffusionPipeline
.from_pretrained(folder, local_files_only=True)`` loads it exactly as it loads the real model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from transformers import CLIPConfig, CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPTokenizer

_HIDDEN = 32  # text width = UNet cross-attention width
_MAX_TOKENS = 77  # CLIP's context length, as in the real tokenizer


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP ``bytes_to_unicode``: one printable symbol per byte, the base alphabet of the BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def _write_tokenizer(folder: Path) -> None:
    """A byte-level CLIP BPE with no merges: every byte is a token, which is all a test needs.

    Written by hand in the hub's file format (vocab.json + merges.txt), not with save_pretrained,
    because transformers 5 would save a tokenizer.json that the real SD 1.5 folder does not have.
    """
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    specials = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials))
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": _MAX_TOKENS, **specials}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def build_sd15_random_folder(path: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Stable Diffusion v1-5's exact architecture (UNet 860M, VAE, CLIP ViT-L/14 text encoder) with
    random weights, in the v1-5 folder layout: the real model's FLOPs, built offline, for benchmarks."""
    folder = Path(path)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # v1-5's config
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512,
    )
    symbols = 2 * 256 + 2
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=_MAX_TOKENS, hidden_act="quick_gelu", bos_token_id=symbols - 2,
        eos_token_id=symbols - 1, pad_token_id=symbols - 1, projection_dim=768,
    ))
    scheduler = PNDMScheduler.from_config({
        "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000, "skip_prk_steps": True, "set_alpha_to_one": False,
        "steps_offset": 1, "clip_sample": False,
    })
    staging = folder / "tokenizer-staging"
    _write_tokenizer(staging)
    pipe = StableDiffusionPipeline(
        vae=vae.to(dtype), text_encoder=text_encoder.to(dtype), tokenizer=CLIPTokenizer.from_pretrained(staging),
        unet=unet.to(dtype), scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    shutil.rmtree(folder / "tokenizer")
    staging.rename(folder / "tokenizer")
    return folder


def build_tiny_sd_folder(path: str | Path, *, safety_threshold: float = 1.0) -> Path:
    """Save a seeded, tiny StableDiffusionPipeline under ``path`` and return the folder.

    The safety checker flags (and blacks out) an image when the cosine similarity of its embedding
    to a concept embedding exceeds ``safety_threshold``: 1.0 flags nothing, -2.0 flags everything,
    0.0 flags some images and not others (which ones is fixed by the seeds).
    """
    folder = Path(path)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=_HIDDEN, attention_head_dim=8, norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=32, sample_size=16,
    )
    symbols = 2 * 256 + 2
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=symbols, hidden_size=_HIDDEN, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=_MAX_TOKENS, bos_token_id=symbols - 2,
        eos_token_id=symbols - 1, pad_token_id=symbols - 1, projection_dim=_HIDDEN,
    ))
    vision = dict(hidden_size=_HIDDEN, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=32, patch_size=8)
    text = dict(vocab_size=symbols, hidden_size=_HIDDEN, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=4, max_position_embeddings=_MAX_TOKENS, bos_token_id=symbols - 2,
                eos_token_id=symbols - 1, pad_token_id=symbols - 1)
    safety_checker = StableDiffusionSafetyChecker(
        CLIPConfig(text_config=text, vision_config=vision, projection_dim=_HIDDEN))
    safety_checker.concept_embeds_weights.data.fill_(safety_threshold)
    safety_checker.concept_embeds.data[:] = torch.randn(_HIDDEN)  # one concept direction: 0.0 flags some images
    feature_extractor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    # The real folder's scheduler: PNDM with skip_prk_steps (PNDMScheduler(clip_sample=False) raises).
    scheduler = PNDMScheduler.from_config({
        "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000, "skip_prk_steps": True, "set_alpha_to_one": False,
        "steps_offset": 1, "clip_sample": False,
    })

    staging = folder / "tokenizer-staging"
    _write_tokenizer(staging)
    tokenizer = CLIPTokenizer.from_pretrained(staging)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=safety_checker, feature_extractor=feature_extractor,
    )
    pipe.save_pretrained(folder)
    shutil.rmtree(folder / "tokenizer")
    staging.rename(folder / "tokenizer")
    return folder
