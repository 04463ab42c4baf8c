"""The offline class-conditional generator: its corpora, weights folders, pretraining and fingerprint.

The sampling contract (plan, shapes, seeds, bad plans) is tested for every backend in test_generators.py.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from conf import CONF_DIR
from generation.class_conditional import REPO_ROOT, ClassConditionalGenerator, load_weights, resolve_weights_path
from generation.corpora import build_corpus
from generation.pretrain import (
    RECORD_NAME,
    WEIGHTS_NAME,
    Architecture,
    Pretraining,
    generator_and_pretraining,
    pretrain,
    pretraining_settings,
    save_weights,
)
from genfl_torch.digits import digits_split_indices, load_digits_arrays

SPLIT = {"split_seed": 0, "test_fraction": 0.2, "public_fraction": 0.2}
TINY = Architecture.from_mapping(
    {
        "block_out_channels": [8, 16],
        "attention": [False, True],
        "layers_per_block": 1,
        "norm_num_groups": 4,
        "num_classes": 10,
        "num_train_timesteps": 1000,
        "beta_schedule": "squaredcos_cap_v2",
    }
)
QUICK = Pretraining(
    steps=3, batch_size=8, learning_rate=1e-3, ema_decay=0.999, class_dropout=0.1, seed=0, corpus_size=50, **SPLIT
)


def make_generator(weights, *, pretraining=None, guidance_scale=1.0, architecture=TINY) -> ClassConditionalGenerator:
    return ClassConditionalGenerator(
        weights=weights,
        corpus="digits-public",
        architecture=architecture,
        sampling_steps=3,
        guidance_scale=guidance_scale,
        batch_size=4,
        device="cpu",
        pretraining=None if pretraining is None else lambda: pretraining,
    )


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Tiny weights written by the pretrain-on-first-use path."""
    path = tmp_path_factory.mktemp("weights") / "tiny"
    make_generator(path, pretraining=QUICK).generate({0: 1}, seed=0)
    return path


# --- corpora -------------------------------------------------------------------------------------


def test_fonts_corpus_is_deterministic_by_seed():
    first = build_corpus("fonts", seed=1, size=60, **SPLIT)
    again = build_corpus("fonts", seed=1, size=60, **SPLIT)
    other = build_corpus("fonts", seed=2, size=60, **SPLIT)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_fonts_corpus_has_balanced_classes_and_uci_pixel_counts():
    images, labels = build_corpus("fonts", seed=0, size=200, **SPLIT)
    assert images.shape == (200, 1, 8, 8) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert torch.bincount(labels).tolist() == [20] * 10
    counts = images * 16
    assert torch.equal(counts, counts.round()) and images.min() == 0 and images.max() == 1
    assert sorted(counts.unique().int().tolist()) == list(range(17))  # 4x4 blocks: 0..16 on-pixels


def test_fonts_corpus_is_not_a_copy_of_real_digits():
    fonts, _ = build_corpus("fonts", seed=0, size=200, **SPLIT)
    real, _ = load_digits_arrays()
    nearest = torch.cdist(fonts.flatten(1), real.flatten(1)).min(dim=1).values
    assert (nearest > 0.5).all()


def test_digits_public_corpus_is_the_public_share_only():
    images, labels = build_corpus("digits-public", seed=0, size=0, **SPLIT)
    split = digits_split_indices(**SPLIT)
    all_images, all_labels = load_digits_arrays()
    assert torch.equal(images, all_images[split["public"]]) and torch.equal(labels, all_labels[split["public"]])
    assert not set(split["public"]) & set(split["federation"])
    assert not set(split["public"]) & set(split["test"])
    assert len(labels) == 360 and labels.unique().tolist() == list(range(10))


def test_unknown_corpus_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match="Unknown generator corpus 'cifar'.*digits-public, fonts"):
        build_corpus("cifar", seed=0, size=10, **SPLIT)


# --- weights ----------------------------------------------------------------------------------------


def test_saved_weights_are_a_diffusers_folder_that_loads_back_exactly_as_fp16(tmp_path):
    images, labels = build_corpus("digits-public", seed=0, size=0, **SPLIT)
    unet = pretrain(images, labels, architecture=TINY, pretraining=QUICK, device=torch.device("cpu"), progress=False)
    folder = tmp_path / "w"
    record = save_weights(unet, folder, {"format": "genfl-class-conditional/2", "architecture": TINY.to_dict()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]  # nothing partial left beside it
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", WEIGHTS_NAME, RECORD_NAME]
    loaded, loaded_record = load_weights(folder, TINY)
    assert loaded_record == record == json.loads((folder / RECORD_NAME).read_text())
    assert load_file(str(folder / WEIGHTS_NAME))["conv_in.weight"].dtype == torch.float16
    expected = {name: tensor.half().float() for name, tensor in unet.state_dict().items()}
    actual = loaded.state_dict()
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    save_weights(unet, folder, record)  # overwriting an existing folder (pretraining again)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]


def test_pretraining_is_reproducible_by_seed():
    images, labels = build_corpus("digits-public", seed=0, size=0, **SPLIT)
    first, again = (
        pretrain(images, labels, architecture=TINY, pretraining=QUICK, device=torch.device("cpu"), progress=False)
        for _ in range(2)
    )
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))


def test_first_use_pretraining_writes_weights_and_record(weights):
    record = json.loads((weights / RECORD_NAME).read_text())
    assert (weights / WEIGHTS_NAME).is_file() and (weights / "config.json").is_file()
    assert record["architecture"] == TINY.to_dict()
    assert record["corpus"] == {"name": "digits-public", "num_images": 360}
    assert record["pretraining"]["steps"] == 3 and record["dtype"] == "float16"


def test_missing_weights_without_pretraining_name_the_command(tmp_path):
    generator = make_generator(tmp_path / "absent")
    for call in (lambda: generator.generate({0: 1}, seed=0), generator.fingerprint):
        with pytest.raises(FileNotFoundError, match="python -m generation.pretrain corpus=digits-public"):
            call()


def test_corrupt_weights_are_refused(weights, tmp_path):
    copy = tmp_path / "corrupt"
    shutil.copytree(weights, copy)
    data = bytearray((copy / WEIGHTS_NAME).read_bytes())
    data[-10:] = b"\x00" * 10
    (copy / WEIGHTS_NAME).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="do not match the sha256"):
        make_generator(copy).generate({0: 1}, seed=0)


def test_weights_of_another_architecture_are_refused(weights):
    wider = Architecture.from_mapping({**TINY.to_dict(), "block_out_channels": [16, 32]})
    with pytest.raises(ValueError, match="were trained for architecture"):
        make_generator(weights, architecture=wider).generate({0: 1}, seed=0)


def test_guidance_runs_on_weights_trained_with_a_null_class(weights):
    guided, _ = make_generator(weights, guidance_scale=2.0).generate({4: 2}, seed=0)
    plain, _ = make_generator(weights).generate({4: 2}, seed=0)
    assert guided.shape == plain.shape and not torch.equal(guided, plain)


# --- fingerprint -----------------------------------------------------------------------------------


def test_fingerprint_is_the_weights_files_hashes_and_the_sampler(weights):
    from generation.cache import file_sha256

    fingerprint = make_generator(weights).fingerprint()
    assert fingerprint["weights"]["sha256"][WEIGHTS_NAME] == json.loads((weights / RECORD_NAME).read_text())["weights_sha256"]
    assert fingerprint["weights"]["sha256"]["config.json"] == file_sha256(weights / "config.json")
    assert fingerprint["sampler"] == "ddim" and fingerprint["sampling_steps"] == 3
    assert fingerprint["guidance_scale"] == 1.0 and fingerprint["corpus"] == "digits-public"


def test_weights_to_be_pretrained_are_keyed_on_the_pretraining_without_pretraining(tmp_path, monkeypatch):
    """Fingerprinting never trains: weights that will be pretrained on first use are keyed on how."""
    import generation.class_conditional

    monkeypatch.setattr(generation.class_conditional, "pretrain_on_corpus", lambda *a, **k: pytest.fail("fingerprint pretrained"))
    fingerprint = make_generator(tmp_path / "later", pretraining=QUICK).fingerprint()
    assert fingerprint["weights"]["pretrained_on_first_use"]["steps"] == 3 and not (tmp_path / "later").exists()
    other = make_generator(tmp_path / "later", pretraining=dataclasses.replace(QUICK, steps=4)).fingerprint()
    assert other != fingerprint


# --- configuration ---------------------------------------------------------------------------------


def test_weights_resolve_absolute_as_given_else_weights_dir_then_the_package(tmp_path):
    committed = "class_conditional_digits-public"
    assert resolve_weights_path(tmp_path / "w", tmp_path / "cache") == tmp_path / "w"
    # Nothing in the cache folder (a folder without weights, as a FAB carries it, is nothing): the package's.
    (tmp_path / "cache" / committed).mkdir(parents=True)
    (tmp_path / "cache" / committed / RECORD_NAME).write_text("{}")
    assert resolve_weights_path(committed, tmp_path / "cache") == REPO_ROOT / "generation/weights" / committed
    # Weights in the cache folder win over the package's.
    (tmp_path / "cache" / committed / WEIGHTS_NAME).write_bytes(b"x")
    assert resolve_weights_path(committed, tmp_path / "cache") == tmp_path / "cache" / committed
    # Found nowhere: the cache folder, where pretraining on first use writes.
    assert resolve_weights_path("new", tmp_path / "cache") == tmp_path / "cache" / "new"


def test_missing_weights_error_names_the_setting_the_places_and_the_commands(tmp_path):
    generator = ClassConditionalGenerator(weights="absent", weights_dir=tmp_path, corpus="fonts",
                                          architecture=TINY, sampling_steps=3, guidance_scale=1.0, batch_size=4,
                                          device="cpu", pretraining=None)
    with pytest.raises(FileNotFoundError) as error:
        generator.generate({0: 1}, seed=0)
    message = str(error.value)
    assert "generator.weights" in message and "generator.weights_dir" in message
    assert str(tmp_path / "absent") in message and str(REPO_ROOT / "generation/weights/absent") in message
    assert "python -m generation.pretrain corpus=fonts" in message and "generator.pretrain_if_missing=true" in message


def test_pretrain_config_builds_the_generator_named_by_the_corpus_shorthand():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name="pretrain", overrides=["corpus=fonts", "generator.weights_dir=null", "pretrain.steps=100"])
    generator, pretraining = generator_and_pretraining(cfg)
    assert generator.corpus == "fonts" and pretraining.steps == 100
    assert generator.weights_path == REPO_ROOT / "generation/weights/class_conditional_fonts"
    assert (pretraining.split_seed, pretraining.test_fraction, pretraining.public_fraction) == (
        cfg.dataset.split_seed,
        cfg.dataset.test_fraction,
        cfg.dataset.public_fraction,
    )


def test_first_use_pretraining_settings_are_composed_with_the_runs_dataset_split():
    dataset = {"name": "digits", "split_seed": 3, "test_fraction": 0.25, "public_fraction": 0.1}
    settings = pretraining_settings(dataset)
    assert (settings.split_seed, settings.test_fraction, settings.public_fraction) == (3, 0.25, 0.1)
    assert settings.steps >= 1 and settings.batch_size >= 1
    assert pretraining_settings(dataset, ["pretrain.steps=7"]).steps == 7  # Hydra overrides, as everywhere


def test_the_generator_built_from_config_pretrains_with_the_composed_settings(tmp_path, monkeypatch):
    """pretrain_if_missing: the settings come from conf/pretrain.yaml (Hydra) on the run's split, only when needed."""
    from omegaconf import OmegaConf

    import generation.class_conditional

    calls = []
    monkeypatch.setattr(generation.class_conditional, "pretraining_settings", lambda dataset: calls.append(dataset) or QUICK)
    generator_cfg = OmegaConf.load(CONF_DIR / "generator" / "class_conditional.yaml")
    dataset = {"name": "digits", "split_seed": 3, "test_fraction": 0.25, "public_fraction": 0.1}
    generator = ClassConditionalGenerator.from_config(OmegaConf.merge(generator_cfg, {"weights": str(tmp_path / "w")}), dataset)
    assert calls == [] and generator.pretraining is not None
    assert generator.fingerprint()["weights"]["pretrained_on_first_use"] == dataclasses.asdict(QUICK) and calls == [dataset]
    off = ClassConditionalGenerator.from_config(OmegaConf.merge(generator_cfg, {"pretrain_if_missing": False}), dataset)
    assert off.pretraining is None
