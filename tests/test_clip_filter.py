"""Issue 16, item 3(a): the CLIP zero-shot filter of the synthetic set.

A tiny random-weight CLIP (model + processor) is saved to a folder offline, as tests/tiny_sd.py does
for Stable Diffusion, and loaded through the real ``from_pretrained`` path. Its scores mean nothing
about digits, but they are real CLIP probabilities: the tests check them against CLIP's own forward
pass, and check what the filter keeps, trains on and reports against those scores.
"""

from __future__ import annotations

import gc
import math
import shutil
import sys

import pytest
import torch
from test_filtering import DigitsGenerator  # tests/ is on sys.path
from tiny_sd import _write_tokenizer
from torch import nn
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
)

from generation.augmented import AugmentedModelTrainer
from generation.clip_filter import (
    class_prompts,
    clip_probabilities,
    clip_problem,
    load_clip,
    rgb_uint8,
    score_clip,
)
from generation.filtering import FilterSettings, select
from genfl_torch.classes import DIGITS_CLASS_NAMES
from genfl_torch.data import Split, as_float
from genfl_torch.digits import load_digits_arrays
from genfl_torch.train import TrainSettings, state_to_numpy

CLASSES = 10
CPU = torch.device("cpu")
SETTINGS = TrainSettings(epochs=1, batch_size=8, lr=0.05, momentum=0.9, weight_decay=0.0, augment=False,
                         proximal_mu=0.0, max_steps=None, fast_cuda=False)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """A seeded tiny CLIP (2-layer text and vision towers, width 32, 32x32 images in 8x8 patches) with
    its processor, saved as a Hub folder is laid out."""
    folder = tmp_path_factory.mktemp("tiny-clip")
    symbols = 2 * 256 + 2  # tiny_sd's byte-level vocabulary
    text = {"vocab_size": symbols, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 77, "bos_token_id": symbols - 2,
            "eos_token_id": symbols - 1, "pad_token_id": symbols - 1}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "image_size": 32, "patch_size": 8}
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)).save_pretrained(folder)
    _write_tokenizer(folder / "tokenizer-staging")
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer-staging"))
    processor.save_pretrained(folder)
    shutil.rmtree(folder / "tokenizer-staging")
    return folder


def digits(per_class: int = 6) -> Split:
    images, labels = load_digits_arrays()
    idx = torch.cat([torch.nonzero(labels == c).squeeze(1)[:per_class] for c in range(CLASSES)])
    return Split(images[idx], labels[idx])


class Recorder(nn.Module):
    """Identity that remembers every image it sees while training."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple] = []

    def forward(self, x):
        if self.training:
            self.seen += [tuple(row) for row in x.flatten(1).tolist()]
        return x


def clip_settings(folder, **kw) -> FilterSettings:
    return FilterSettings(**{"mode": "clip", "start_round": 1, "clip_model": str(folder), "clip_batch_size": 7, **kw})


def trainer(folder, plan=None, **filter_kw) -> AugmentedModelTrainer:
    model = nn.Sequential(Recorder(), nn.Flatten(), nn.Linear(64, CLASSES))
    made = AugmentedModelTrainer(
        make_generator=DigitsGenerator, model=model, settings=SETTINGS, device=CPU,
        test=digits(2), eval_batch_size=16, policy="uniform", budget=None, per_class=6, target=None, seed=3,
        cache_dir=None, overlap=False, filter=clip_settings(folder, **filter_kw), class_names=DIGITS_CLASS_NAMES)
    made.prepare([10] * CLASSES, plan=plan or {c: 6 for c in range(CLASSES)})
    return made


# --- the scores ------------------------------------------------------------------------------------

def test_probabilities_are_clips_own_zero_shot_softmax(clip_folder):
    data = digits()
    prompts = class_prompts("a photo of a {}.", DIGITS_CLASS_NAMES)
    assert prompts[3] == "a photo of a three."
    clip, processor = load_clip(str(clip_folder))
    probabilities = clip_probabilities(clip, processor, data.images, prompts, CPU, batch_size=7)
    assert probabilities.shape == (60, CLASSES) and probabilities.dtype == torch.float32
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    torch.testing.assert_close(probabilities.sum(1), torch.ones(60))
    # CLIP's own forward pass over the same inputs: logits_per_image
    inputs = processor(text=prompts, images=list(rgb_uint8(data.images)), input_data_format="channels_first",
                       padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = clip(**inputs).logits_per_image.softmax(1)
    torch.testing.assert_close(probabilities, expected, rtol=1e-4, atol=1e-5)
    assert probabilities.std(0).max() > 1e-3  # images differ: scores are not a constant


def test_scores_are_the_own_class_probability_and_deterministic(clip_folder):
    data = digits()
    kw = {"model": str(clip_folder), "prompt": "a photo of a {}.", "device": CPU}
    scores = score_clip(data, DIGITS_CLASS_NAMES, batch_size=64, **kw)
    assert scores.shape == (60,) and scores.dtype == torch.float32 and ((scores >= 0) & (scores <= 1)).all()
    assert torch.equal(scores, score_clip(data, DIGITS_CLASS_NAMES, batch_size=64, **kw))  # same images, same scores
    torch.testing.assert_close(scores, score_clip(data, DIGITS_CLASS_NAMES, batch_size=7, **kw))
    clip, processor = load_clip(str(clip_folder))
    prompts = class_prompts("a photo of a {}.", DIGITS_CLASS_NAMES)
    probabilities = clip_probabilities(clip, processor, data.images, prompts, CPU, 64)
    assert torch.equal(scores, probabilities[torch.arange(60), data.labels])
    # uint8 and float storage of the same pixels score alike; 1 channel = gray RGB
    uint8 = Split((data.images * 255).round().to(torch.uint8), data.labels)
    assert torch.equal(rgb_uint8(uint8.images), rgb_uint8(data.images))
    assert torch.equal(score_clip(uint8, DIGITS_CLASS_NAMES, batch_size=64, **kw), scores)
    rgb = rgb_uint8(data.images)
    assert rgb.shape == (60, 3, 8, 8) and torch.equal(rgb[:, 0], rgb[:, 2])
    other = score_clip(data, DIGITS_CLASS_NAMES, batch_size=64, **{**kw, "prompt": "a drawing of the digit {}"})
    assert not torch.equal(other, scores)  # the prompt is used


# --- the rules -------------------------------------------------------------------------------------

def test_chance_threshold_keeps_the_images_above_one_over_num_classes(clip_folder):
    data = digits()
    scores = score_clip(data, DIGITS_CLASS_NAMES, model=str(clip_folder), prompt="a photo of a {}.", device=CPU,
                        batch_size=64)
    settings = clip_settings(clip_folder, threshold="chance")
    kept = select(scores, data.labels, threshold=settings.threshold_for(CLASSES))
    expected = torch.zeros(60, dtype=torch.bool)
    for c in range(CLASSES):  # independently: above 1/10, else the class's best image alone
        members = (data.labels == c).nonzero().squeeze(1)
        above = members[scores[members].double() > 0.1]
        expected[above if len(above) else members[scores[members].argmax()]] = True
    assert torch.equal(kept, expected) and 0 < int(kept.sum()) < 60
    # exactly at chance is not above it (He et al.: "exceeds")
    exact = select(torch.tensor([0.25, 0.5, 0.25, 0.2], dtype=torch.float64), torch.tensor([0, 0, 1, 1]),
                   threshold=FilterSettings(mode="clip", threshold="chance").threshold_for(4))
    assert exact.tolist() == [False, True, True, False]  # class 1: nothing above, keeps its best


def test_the_trainer_filters_by_clip_once_and_trains_on_the_kept_images(clip_folder):
    aug = trainer(clip_folder, keep_ratio=0.5, plan={c: 6 if c < 7 else 3 for c in range(CLASSES)})
    state = state_to_numpy(aug.model)
    rows = [aug.train(state, server_round)[1] for server_round in (1, 2, 3)]
    # scored once (CLIP's scores do not change), the selection reused, whatever refresh_every says
    assert [r["synthetic_scored"] for r in rows] == [51, 0, 0] and aug.selection.round == 1
    assert not [o for o in gc.get_objects() if type(o) is CLIPModel]  # released after scoring
    expected_scores = score_clip(aug.synthetic, DIGITS_CLASS_NAMES, model=str(clip_folder), prompt="a photo of a {}.",
                                 device=CPU, batch_size=64)
    torch.testing.assert_close(aug.selection.confidence, expected_scores)
    kept = aug.kept_mask
    assert torch.equal(kept, select(aug.selection.confidence, aug.synthetic.labels, keep_ratio=0.5))
    # ceil(0.5 * n_c) per class: 3 of 6, 2 of 3
    assert rows[0]["synthetic_filter"] == {str(c): [6, 3, 3] if c < 7 else [3, 2, 1] for c in range(CLASSES)}
    assert rows[1]["synthetic_filter"]["9"] == [0, 2, 1]
    assert (rows[0]["synthetic_kept"], rows[0]["synthetic_dropped"], rows[0]["images_used"]) == (27, 24, 27)
    seen = aug.model[0].seen  # three rounds of one epoch over the kept images, nothing else
    kept_images = [tuple(row) for row in as_float(aug.synthetic.images[kept]).flatten(1).tolist()]
    assert sorted(seen) == sorted(kept_images * 3)


def test_nothing_is_scored_before_start_round(clip_folder):
    aug = trainer(clip_folder, threshold="chance", start_round=2)
    state = state_to_numpy(aug.model)
    first, second = (aug.train(state, r)[1] for r in (1, 2))
    assert (first["synthetic_scored"], first["synthetic_kept"], first["images_used"]) == (0, 60, 60)
    assert second["synthetic_scored"] == 60 and second["synthetic_kept"] < 60 and aug.selection.round == 2


# --- bad settings: one line, exit 2 ----------------------------------------------------------------

@pytest.mark.parametrize("kw, says", [
    ({"mode": "clip"}, "exactly one of keep_ratio / threshold"),
    ({"mode": "clips", "keep_ratio": 0.5}, "augmented.filter.mode: must be one of none, confidence, clip"),
    ({"mode": "clip", "threshold": "half"}, "augmented.filter.threshold: must be in [0, 1], chance"),
    ({"mode": "clip", "keep_ratio": 0.5, "clip_prompt": "a photo of a digit"}, "augmented.filter.clip_prompt"),
    ({"mode": "clip", "keep_ratio": 0.5, "clip_prompt": "a {} of a {}"}, "augmented.filter.clip_prompt"),
    ({"mode": "clip", "keep_ratio": 0.5, "clip_prompt": "a photo of a {name}"}, "augmented.filter.clip_prompt"),
    ({"mode": "clip", "keep_ratio": 0.5, "clip_batch_size": 0}, "augmented.filter.clip_batch_size"),
    ({"mode": "clip", "keep_ratio": 0.5, "clip_batch_size": 2.5}, "augmented.filter.clip_batch_size"),
    ({"mode": "clip", "keep_ratio": 0.5, "clip_model": ""}, "augmented.filter.clip_model"),
])
def test_bad_clip_settings_are_one_line_value_errors(kw, says):
    with pytest.raises(ValueError) as err:
        FilterSettings(**kw)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_model_problems_are_named_before_anything_loads(clip_folder, tmp_path, monkeypatch):
    assert clip_problem(str(clip_folder)) is None and clip_problem("openai/clip-vit-base-patch32") is None
    assert "does not exist" in clip_problem(str(tmp_path / "no-clip"))
    assert "has no config.json" in clip_problem(str(tmp_path))
    with pytest.raises(RuntimeError, match="does not exist"):
        load_clip(str(tmp_path / "no-clip"))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert "not in the local Hub cache and HF_HUB_OFFLINE" in clip_problem("nobody/no-such-clip")
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    assert "needs the transformers package" in clip_problem(str(clip_folder))


@pytest.mark.parametrize("overrides, says", [
    (["augmented.filter.clip_model={missing}"], "augmented.filter.clip_model: folder"),
    (["augmented.filter.clip_prompt=photo"], "augmented.filter.clip_prompt"),
    (["augmented.filter.clip_batch_size=0"], "augmented.filter.clip_batch_size"),
    (["augmented.filter.threshold=most"], "augmented.filter.threshold"),
])
def test_bad_clip_config_exits_2_with_one_line(tmp_path, capsys, make_config, overrides, says):
    from genfl_cli.deploy_run import run as deploy_run
    from server_app.config import ConfigError

    overrides = ["augmented.filter.mode=clip", *[o.format(missing=tmp_path / "no-clip") for o in overrides]]
    with pytest.raises(ConfigError, match=says):
        make_config(*overrides)
    assert deploy_run("nowhere", overrides) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and "\n" not in err


def test_the_config_gives_the_filter_and_its_class_names(clip_folder, make_config):
    from server_app.build import class_names, filter_settings

    cfg = make_config("augmented.filter.mode=clip", f"augmented.filter.clip_model={clip_folder}",
                      "augmented.filter.keep_ratio=null", "augmented.filter.threshold=chance")
    settings = filter_settings(cfg)
    assert (settings.mode, settings.threshold, settings.clip_prompt) == ("clip", "chance", "a photo of a {}.")
    assert settings.threshold_for(10) == math.nextafter(0.1, 1.0)
    assert class_names(cfg) == DIGITS_CLASS_NAMES
    sd = make_config("dataset=cifar10", "generator=stable_diffusion", "generator.class_names=[a,b,c,d,e,f,g,h,i,j]")
    assert class_names(sd)[:2] == ("a", "b")
    assert class_names(make_config("dataset=cifar10", "generator=stable_diffusion"))[0] == "airplane"
