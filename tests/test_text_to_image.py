"""The Stable Diffusion backend, run for real on a tiny random-weight model loaded from a folder.

The sampling contract (plan, shapes, seeds, bad plans, fingerprint basics) is tested for every
backend in test_generators.py; here what only this backend does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from generation.prompts import (
    CIFAR10_CLASS_NAMES,
    CIFAR100_CLASS_NAMES,
    builtin_class_names,
    class_prompts,
    resolve_class_names,
)
from generation.sd_draws import image_seed, unusable_images
from generation.text_to_image import SCHEDULERS, GeneratorUnavailableError, TextToImageGenerator
from tiny_sd import build_tiny_sd_folder  # tests/ is on sys.path: pytest puts it there (no __init__.py)

CONFIG_FILE = Path(__file__).resolve().parents[1] / "conf" / "generator" / "stable_diffusion.yaml"
CIFAR10 = {"name": "cifar10", "image_size": 32, "channels": 3}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> Path:
    return build_tiny_sd_folder(tmp_path_factory.mktemp("tiny-sd"))


def make_generator(model, **overrides) -> TextToImageGenerator:
    """A generator small enough for CPU tests: 16 px, 2 steps."""
    settings = dict(
        model=str(model), class_names=CIFAR10_CLASS_NAMES, prompt_templates=["a photo of a {name}"],
        class_descriptions=None, negative_prompt="blurry", guidance_scale=7.5, guidance_scale_range=None,
        num_inference_steps=2, scheduler="dpm++",
        generation_resolution=16, target_size=8, target_channels=3, batch_size=4, device="cpu",
        local_files_only=True, safety_checker=False,
    )
    return TextToImageGenerator(**{**settings, **overrides})


@pytest.fixture(scope="module")
def generator(tiny_sd) -> TextToImageGenerator:
    return make_generator(tiny_sd)


# --- prompts ---------------------------------------------------------------------------------------

def test_builtin_names_are_torchvisions_in_label_order():
    assert builtin_class_names("cifar10")[:3] == ("airplane", "automobile", "bird")
    assert len(CIFAR100_CLASS_NAMES) == 100 == len(set(CIFAR100_CLASS_NAMES))
    assert list(CIFAR100_CLASS_NAMES) == sorted(CIFAR100_CLASS_NAMES)  # CIFAR-100 labels are alphabetical
    assert builtin_class_names("digits")[7] == "seven"


def test_prompts_fill_the_template_with_spaced_names():
    prompts = class_prompts("a photo of a {name}", CIFAR100_CLASS_NAMES)
    assert prompts[47] == "a photo of a maple tree"


def test_user_class_names_must_name_every_class():
    assert resolve_class_names(None, CIFAR10_CLASS_NAMES) == CIFAR10_CLASS_NAMES
    assert resolve_class_names([str(i) for i in range(10)], CIFAR10_CLASS_NAMES)[3] == "3"
    with pytest.raises(ValueError, match="exactly 10 names"):
        resolve_class_names(["cat", "dog"], CIFAR10_CLASS_NAMES)


def test_template_without_name_placeholder_is_rejected():
    with pytest.raises(ValueError, match="{name}"):
        class_prompts("a photo", CIFAR10_CLASS_NAMES)
    with pytest.raises(ValueError, match="only the placeholder"):
        class_prompts("a {style} photo of a {name}", CIFAR10_CLASS_NAMES)


def test_unknown_dataset_has_no_builtin_names():
    with pytest.raises(ValueError, match="class_names"):
        builtin_class_names("imagenet")


# --- generation ------------------------------------------------------------------------------------

def test_images_of_a_class_do_not_depend_on_the_batch_size(tiny_sd, generator):
    mixed, _ = generator.generate({0: 1, 3: 2}, seed=1)
    one_per_batch, _ = make_generator(tiny_sd, batch_size=1).generate({0: 1, 3: 2}, seed=1)
    # Equal up to float rounding: CPU kernels may sum in another order for another batch shape.
    torch.testing.assert_close(one_per_batch, mixed, rtol=0, atol=1e-5)
    assert generator.last_dropped == 0 and generator.last_shortfall == {}


def test_grayscale_target_is_the_luma_of_the_rgb_images(tiny_sd, generator):
    rgb, _ = generator.generate({5: 2}, seed=3)
    gray, _ = make_generator(tiny_sd, target_channels=1).generate({5: 2}, seed=3)
    assert gray.shape == (2, 1, 8, 8)
    luma = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    torch.testing.assert_close(gray[:, 0], luma, rtol=0, atol=1e-6)


def test_native_resolution_is_returned_unresized(tiny_sd):
    images, _ = make_generator(tiny_sd, target_size=16).generate({1: 1}, seed=0)
    assert images.shape == (1, 3, 16, 16)


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_every_scheduler_loads_and_generates(tiny_sd, scheduler):
    generator = make_generator(tiny_sd, scheduler=scheduler)
    images, _ = generator.generate({2: 1}, seed=0)
    assert type(generator.load().scheduler) is SCHEDULERS[scheduler]
    assert images.shape == (1, 3, 8, 8) and torch.isfinite(images).all()


def test_per_image_seeds_differ_across_seed_class_and_index():
    seeds = {image_seed(s, c, i) for s in range(3) for c in range(3) for i in range(3)}
    assert len(seeds) == 27 and all(0 <= s < 2**63 for s in seeds)


# --- several prompts per class, a guidance scale per image ------------------------------------------

TEMPLATES = ["a photo of a {name}", "a blurry photo of a {name}", "a close-up photo of a {name}"]


@pytest.fixture
def pipeline_calls(monkeypatch):
    """The prompts and guidance scales of every real pipeline call (observed only: the call runs)."""
    from diffusers import StableDiffusionPipeline

    calls, call = [], StableDiffusionPipeline.__call__

    def observed(pipe, *args, **kwargs):
        scale = kwargs["guidance_scale"]
        calls.append((list(kwargs["prompt"]), scale.scales.tolist() if hasattr(scale, "scales") else [scale]))
        return call(pipe, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", observed)
    return calls


def reference_image(generator, class_id, index, seed, prompt, guidance):
    """The image a bare pipeline call makes from this prompt, guidance scale and image seed."""
    pipe = generator.load()
    with torch.inference_mode():
        output = pipe(prompt=[prompt], negative_prompt=[generator.negative_prompt], height=16, width=16,
                      num_inference_steps=2, guidance_scale=float(guidance), output_type="pt",
                      generator=[torch.Generator().manual_seed(image_seed(seed, class_id, index))])
    return generator._to_target_format(output.images.float())[0]


def test_several_templates_take_turns_within_a_class_reproducibly(tiny_sd, generator, pipeline_calls):
    several = make_generator(tiny_sd, prompt_templates=TEMPLATES)
    assert several.prompts[3] == ("a photo of a cat", "a blurry photo of a cat", "a close-up photo of a cat")
    images, labels = several.generate({3: 6}, seed=4)
    used = [prompt for prompts, _ in pipeline_calls for prompt in prompts]
    assert sorted(used) == sorted(several.prompts[3] * 2)  # each prompt equally often
    assert used == [several.image_conditions(4, 3, i)[0] for i in range(6)]
    again, _ = several.generate({3: 6}, seed=4)
    assert torch.equal(images, again) and labels.tolist() == [3] * 6
    starts = {several.image_conditions(seed, 3, 0)[0] for seed in range(20)}
    assert len(starts) == 3  # another seed starts the turn elsewhere
    # An image is its prompt and its noise: where the plain template was drawn, the plain generator's image.
    plain, _ = generator.generate({3: 6}, seed=4)
    same = torch.tensor([prompt == "a photo of a cat" for prompt in used])
    torch.testing.assert_close(images[same], plain[same], rtol=0, atol=1e-5)
    assert (images[~same] - plain[~same]).abs().amax() > 1e-3


def test_guidance_range_draws_a_scale_per_image_within_it(tiny_sd, pipeline_calls):
    ranged = make_generator(tiny_sd, guidance_scale_range=[1, 5], prompt_templates=TEMPLATES)
    images, _ = ranged.generate({2: 5}, seed=0)
    (prompts, scales), second = pipeline_calls  # batch_size 4: one call of 4 images and one of 1
    scales += second[1]
    assert all(1 <= s <= 5 for s in scales) and len(set(scales)) == 5
    assert scales == pytest.approx([ranged.image_conditions(0, 2, i)[1] for i in range(5)], rel=1e-6)  # float32
    # One batched call gives each image the image a call with its own scale alone gives.
    for i in range(5):
        prompt, scale = ranged.image_conditions(0, 2, i)
        torch.testing.assert_close(images[i], reference_image(ranged, 2, i, 0, prompt, scale), rtol=0, atol=1e-5)
    again, _ = make_generator(tiny_sd, guidance_scale_range=[1, 5], prompt_templates=TEMPLATES).generate({2: 5}, seed=0)
    assert torch.equal(images, again)
    assert [ranged.image_conditions(1, 2, i)[1] for i in range(5)] != scales  # another seed, other scales


def test_per_image_choices_do_not_depend_on_batch_size_or_plan(tiny_sd):
    settings = dict(prompt_templates=TEMPLATES, guidance_scale_range=[1.5, 4])
    mixed, labels = make_generator(tiny_sd, **settings).generate({0: 1, 3: 5}, seed=2)
    alone, _ = make_generator(tiny_sd, batch_size=1, **settings).generate({3: 5}, seed=2)
    torch.testing.assert_close(alone, mixed[labels == 3], rtol=0, atol=1e-5)


def test_a_diffusers_that_ignores_per_image_scales_gets_one_call_per_image(tiny_sd, monkeypatch, caplog):
    from generation.sd_draws import PerImageGuidance

    ranged = make_generator(tiny_sd, guidance_scale_range=[1, 5])
    monkeypatch.setattr(PerImageGuidance, "__mul__", lambda self, other: float(self) * other)  # as a plain float
    images, _ = ranged.generate({1: 3}, seed=0)
    assert "does not apply per-image guidance scales" in caplog.text and not ranged._batched_guidance
    for i in range(3):
        prompt, scale = ranged.image_conditions(0, 1, i)
        torch.testing.assert_close(images[i], reference_image(ranged, 1, i, 0, prompt, scale), rtol=0, atol=1e-5)


def test_descriptions_file_fills_the_prompts_from_the_config(tiny_sd, tmp_path, pipeline_calls):
    descriptions = {name: [f"{name} in the snow", f"{name} at night"] for name in CIFAR10_CLASS_NAMES}
    (tmp_path / "descriptions.json").write_text(json.dumps(descriptions))
    config = {**yaml.safe_load(CONFIG_FILE.read_text()), "model": str(tiny_sd), "local_files_only": True,
              "device": "cpu", "num_inference_steps": 2, "generation_resolution": 16,
              "prompt_templates": ["a photo of a {name}", "a photo of a {name}, {description}"],
              "class_descriptions": str(tmp_path / "descriptions.json"), "guidance_scale_range": [1, 5]}
    generator = TextToImageGenerator.from_config(config, CIFAR10)
    assert generator.prompts[5] == ("a photo of a dog", "a photo of a dog, dog in the snow", "a photo of a dog, dog at night")
    images, _ = generator.generate({5: 3}, seed=1)
    assert sorted(pipeline_calls[0][0]) == sorted(generator.prompts[5]) and images.shape == (3, 3, 32, 32)


def test_every_prompt_and_guidance_setting_is_in_the_cache_key(tiny_sd, tmp_path):
    base = make_generator(tiny_sd).fingerprint()
    assert "guidance_scale_range" not in base and "per_image_draw" not in base  # the key of the single prompt
    path = tmp_path / "descriptions.yaml"
    path.write_text("\n".join(f"{name}: [at night]" for name in CIFAR10_CLASS_NAMES))
    described = dict(prompt_templates=["a photo of a {name}, {description}"], class_descriptions=str(path))
    keys = [base]
    for change in [dict(prompt_templates=TEMPLATES), dict(prompt_templates=TEMPLATES[::-1]), described,
                   dict(guidance_scale_range=[1, 5]), dict(guidance_scale_range=[1, 4]), dict(negative_prompt="text")]:
        keys.append(make_generator(tiny_sd, **change).fingerprint())
    path.write_text("\n".join(f"{name}: [at dawn]" for name in CIFAR10_CLASS_NAMES))  # other descriptions
    keys.append(make_generator(tiny_sd, **described).fingerprint())
    assert len({json.dumps(key, sort_keys=True) for key in keys}) == len(keys)
    copy = tmp_path / "elsewhere.yaml"
    copy.write_text(path.read_text())  # the same descriptions elsewhere: the same images
    assert make_generator(tiny_sd, **{**described, "class_descriptions": str(copy)}).fingerprint() == keys[-1]
    # with a range, the fixed scale makes no image
    ranged = make_generator(tiny_sd, guidance_scale_range=[1, 5]).fingerprint()
    assert make_generator(tiny_sd, guidance_scale_range=[1, 5], guidance_scale=2.0).fingerprint() == ranged


@pytest.mark.parametrize("bad", [[5, 1], [0, 5], [0.5, 2], [1], "1-5", "15", [1, float("inf")]])
def test_bad_guidance_range_is_one_actionable_error(tiny_sd, bad):
    with pytest.raises(ValueError, match="guidance_scale_range must be null or \\[low, high\\] with 1 <= low <= high"):
        make_generator(tiny_sd, guidance_scale_range=bad)


def test_bad_prompt_settings_in_the_config_are_named(tmp_path):
    config = yaml.safe_load(CONFIG_FILE.read_text())
    with pytest.raises(ValueError, match="Unknown generator setting\\(s\\) prompt_template; valid: .*prompt_templates"):
        TextToImageGenerator.from_config({**config, "prompt_template": "a photo of a {name}"}, CIFAR10)
    with pytest.raises(ValueError, match="must contain '\\{name\\}'"):
        TextToImageGenerator.from_config({**config, "prompt_templates": ["a photo"]}, CIFAR10)
    with pytest.raises(ValueError, match="missing.json' does not exist"):
        TextToImageGenerator.from_config({**config, "class_descriptions": str(tmp_path / "missing.json"),
                                          "prompt_templates": ["{description}"]}, CIFAR10)
    with pytest.raises(ValueError, match="unknown class\\(es\\) 'sofa'"):
        TextToImageGenerator.from_config({**config, "class_descriptions": {"sofa": "red"},
                                          "prompt_templates": ["{description}"]}, CIFAR10)
    with pytest.raises(ValueError, match="negative_prompt must be a string or null"):
        TextToImageGenerator.from_config({**config, "negative_prompt": ["blurry"]}, CIFAR10)


# --- settings and errors ---------------------------------------------------------------------------

def test_resolution_must_be_a_multiple_of_8(tiny_sd):
    with pytest.raises(ValueError, match="multiple of 8"):
        make_generator(tiny_sd, generation_resolution=20)


def test_unknown_scheduler_error_lists_the_valid_names(tiny_sd):
    with pytest.raises(ValueError, match="dpm\\+\\+, ddim, pndm, euler, euler_a"):
        make_generator(tiny_sd, scheduler="lms")


def test_missing_folder_says_how_to_download(tmp_path):
    generator = make_generator(tmp_path / "no-such-folder")
    with pytest.raises(GeneratorUnavailableError, match="does not exist.*hf download"):
        generator.generate({0: 1}, seed=0)


def test_uncached_hub_id_offline_says_how_to_get_it():
    generator = make_generator("genfl-tests/no-such-model")
    with pytest.raises(GeneratorUnavailableError) as error:
        generator.load()
    message = str(error.value)
    assert "hf download genfl-tests/no-such-model --local-dir" in message
    assert "local_files_only=false" in message


def test_safety_checker_requested_but_absent_is_an_error(tiny_sd, tmp_path):
    index = json.loads((tiny_sd / "model_index.json").read_text())
    (tmp_path / "model_index.json").write_text(json.dumps({**index, "safety_checker": [None, None]}))
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "feature_extractor"):
        (tmp_path / part).symlink_to(tiny_sd / part)
    with pytest.raises(GeneratorUnavailableError, match="no safety checker"):
        make_generator(tmp_path, safety_checker=True).load()


def test_fingerprint_names_what_changes_the_images_and_not_batch_size(tiny_sd):
    base = make_generator(tiny_sd).fingerprint()
    assert base["weights"].startswith("folder:") and base["prompts"][3] == "a photo of a cat"
    assert make_generator(tiny_sd, batch_size=1).fingerprint() == base
    for change in [dict(num_inference_steps=3), dict(scheduler="ddim"), dict(guidance_scale=2.0),
                   dict(negative_prompt=None), dict(target_channels=1), dict(generation_resolution=24)]:
        assert make_generator(tiny_sd, **change).fingerprint() != base, change
    json.dumps(base)  # usable as a cache key


def test_a_folder_is_keyed_by_its_weights_not_its_name(tiny_sd, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_sd, copy)
    before = make_generator(copy).fingerprint()["weights"]
    assert before == make_generator(tiny_sd).fingerprint()["weights"]  # known by contents, not by path
    weights = next(copy.glob("unet/*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # other weights under the same file name (a re-download of another revision)
    weights.write_bytes(bytes(data))
    assert make_generator(copy).fingerprint()["weights"] != before
    assert make_generator(tiny_sd).fingerprint()["weights"] == before  # the copy had the same weights


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty local Hub cache, and no network: a Hub id's identity is read from disk only."""
    import socket

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(socket.socket, "connect", lambda *a: pytest.fail("the fingerprint asked the network"))
    return tmp_path


def _publish(hub_cache, commit, revision="main"):
    """What a download leaves in the local Hub cache: refs/<revision> names the commit's snapshot."""
    repo = hub_cache / "models--someone--sd"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "model_index.json").write_text("{}")


def test_a_hub_id_is_keyed_by_the_commit_the_local_hub_cache_has_for_its_revision(hub_cache):
    hub_generator = lambda **settings: make_generator("someone/sd", local_files_only=False, **settings)
    assert hub_generator().fingerprint()["weights"] == "hub-unpinned:someone/sd@main"
    _publish(hub_cache, "a" * 40)
    old = hub_generator().fingerprint()
    _publish(hub_cache, "b" * 40)  # a new upstream revision of main, downloaded
    new = hub_generator().fingerprint()
    assert (old["weights"], new["weights"]) == ("hub:someone/sd@" + "a" * 40, "hub:someone/sd@" + "b" * 40)
    pinned = hub_generator(revision="c" * 40).fingerprint()  # a commit is its own identity, cached or not
    assert pinned["weights"] == "hub:someone/sd@" + "c" * 40


def test_an_unpinned_revision_nothing_resolves_is_a_warning_naming_the_cause(hub_cache, caplog):
    """Not an INFO line below the default level: the cache key cannot name the weights."""
    import logging

    caplog.set_level(logging.INFO, logger="generation.text_to_image")
    assert make_generator("someone/sd", revision="v2").fingerprint()["weights"] == "hub-unpinned:someone/sd@v2"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, caplog.text
    assert "generator.revision='v2' of someone/sd is not a commit" in warnings[0]
    assert str(hub_cache / "models--someone--sd" / "refs" / "v2") in warnings[0] and "No such file" in warnings[0]
    assert "hub-unpinned" in warnings[0] and "generated anew" in warnings[0]


def test_the_commit_the_key_names_is_the_commit_that_loads(hub_cache, monkeypatch):
    """A branch that moves upstream after the key was taken must not put new weights' images under it."""
    from diffusers import StableDiffusionPipeline

    _publish(hub_cache, "d" * 40)
    asked = {}

    def from_pretrained(model, **kwargs):
        asked.update(kwargs, model=model)
        raise OSError("stop here")

    monkeypatch.setattr(StableDiffusionPipeline, "from_pretrained", from_pretrained)
    generator = make_generator("someone/sd")
    assert generator.fingerprint()["weights"] == "hub:someone/sd@" + "d" * 40
    with pytest.raises(GeneratorUnavailableError):
        generator.load()
    assert asked["model"] == "someone/sd" and asked["revision"] == "d" * 40


def test_config_file_builds_the_generator_with_builtin_names(hub_cache):
    generator = TextToImageGenerator.from_config(yaml.safe_load(CONFIG_FILE.read_text()), CIFAR10)
    fingerprint = generator.fingerprint()
    assert fingerprint["weights"] == "hub-unpinned:stable-diffusion-v1-5/stable-diffusion-v1-5@main"
    assert fingerprint["scheduler"] == "dpm++" and fingerprint["num_inference_steps"] == 25
    assert fingerprint["prompts"][0] == "a photo of a airplane" and fingerprint["target_size"] == 32


def test_config_with_a_missing_key_names_it():
    config = yaml.safe_load(CONFIG_FILE.read_text())
    del config["scheduler"]
    with pytest.raises(ValueError, match="Missing generator setting.*scheduler"):
        TextToImageGenerator.from_config(config, CIFAR10)


def test_config_class_names_of_wrong_length_are_rejected():
    config = {**yaml.safe_load(CONFIG_FILE.read_text()), "class_names": ["cat", "dog"]}
    with pytest.raises(ValueError, match="exactly 10 names"):
        TextToImageGenerator.from_config(config, CIFAR10)


# --- unusable images -------------------------------------------------------------------------------

def test_black_and_non_finite_images_are_unusable():
    images = torch.rand(5, 3, 8, 8) * 0.5 + 0.25
    images[1] = 0.0  # what the safety checker returns
    images[2] = 0.5 / 255  # black once stored as 8 bits
    images[3, 0, 0, 0] = float("nan")  # a float16 overflow
    images[4] = 0.0
    images[4, :, 2, 2] = 0.2  # dark, but a real image
    assert unusable_images(images).tolist() == [False, True, True, True, False]


def test_images_flagged_by_the_safety_checker_are_never_returned(tmp_path):
    flag_all = build_tiny_sd_folder(tmp_path / "flags-everything", safety_threshold=-2.0)
    generator = make_generator(flag_all, safety_checker=True)
    images, labels = generator.generate({0: 2, 1: 1}, seed=0)
    assert images.shape == (0, 3, 8, 8) and labels.shape == (0,)
    assert generator.last_shortfall == {0: 2, 1: 1}
    assert generator.last_dropped == 3 * 4  # each image tried once plus three replacement rounds


def test_flagged_images_are_replaced_by_fresh_ones(tmp_path):
    flag_some = build_tiny_sd_folder(tmp_path / "flags-some", safety_threshold=SOME_FLAGGED)
    generator = make_generator(flag_some, safety_checker=True)
    images, labels = generator.generate({0: 4, 3: 4}, seed=0)
    assert generator.last_dropped > 0, "the checker flagged nothing: recalibrate SOME_FLAGGED"
    assert images.shape == (8, 3, 8, 8) and labels.tolist() == [0] * 4 + [3] * 4
    assert not unusable_images(images).any()
    again, _ = generator.generate({0: 4, 3: 4}, seed=0)
    assert torch.equal(images, again)


# Between the tiny checker's similarity scores of the test images (about 0.19 to 0.24), so that it
# flags some of them and not others.
SOME_FLAGGED = 0.215
