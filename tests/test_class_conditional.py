"""The offline class-conditional generator: its corpora, weights files and sampling contract."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from generation.class_conditional import (
    REPO_ROOT,
    Architecture,
    ClassConditionalGenerator,
    Pretraining,
    load_weights,
    pretrain,
    record_path,
    resolve_weights_path,
    save_weights,
)
from generation.corpora import build_corpus
from generation.pretrain import generator_and_pretraining
from torchcore.digits import digits_split_indices, load_digits_arrays

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


def make_generator(weights, *, pretraining=None, guidance_scale=1.0, architecture=TINY, device="cpu") -> ClassConditionalGenerator:
    return ClassConditionalGenerator(
        weights=weights,
        corpus="digits-public",
        architecture=architecture,
        sampling_steps=3,
        guidance_scale=guidance_scale,
        batch_size=4,
        device=device,
        pretraining=pretraining,
    )


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny models here are all overhead: a second intra-op thread only adds waiting (badly so on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Tiny weights written by the pretrain-on-first-use path."""
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
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


def test_saved_weights_load_back_exactly_as_fp16(tmp_path):
    images, labels = build_corpus("digits-public", seed=0, size=0, **SPLIT)
    unet = pretrain(images, labels, architecture=TINY, pretraining=QUICK, device=torch.device("cpu"), progress=False)
    path = tmp_path / "w.safetensors"
    record = save_weights(unet, path, {"format": "genfl-class-conditional/1", "architecture": TINY.to_dict()})
    loaded, loaded_record = load_weights(path, TINY)
    assert loaded_record == record == json.loads(record_path(path).read_text())
    assert load_file(str(path))["conv_in.weight"].dtype == torch.float16
    expected = {name: tensor.half().float() for name, tensor in unet.state_dict().items()}
    actual = loaded.state_dict()
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


def test_pretraining_is_reproducible_by_seed():
    images, labels = build_corpus("digits-public", seed=0, size=0, **SPLIT)
    first, again = (
        pretrain(images, labels, architecture=TINY, pretraining=QUICK, device=torch.device("cpu"), progress=False)
        for _ in range(2)
    )
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))


def test_first_use_pretraining_writes_weights_and_record(weights):
    record = json.loads(record_path(weights).read_text())
    assert weights.is_file()
    assert record["architecture"] == TINY.to_dict()
    assert record["corpus"] == {"name": "digits-public", "num_images": 360}
    assert record["pretraining"]["steps"] == 3 and record["dtype"] == "float16"


def test_missing_weights_without_pretraining_name_the_command(tmp_path):
    generator = make_generator(tmp_path / "absent.safetensors")
    with pytest.raises(FileNotFoundError, match="python -m generation.pretrain corpus=digits-public"):
        generator.generate({0: 1}, seed=0)


def test_corrupt_weights_are_refused(weights, tmp_path):
    copy = tmp_path / "corrupt.safetensors"
    shutil.copy(weights, copy)
    shutil.copy(record_path(weights), record_path(copy))
    data = bytearray(copy.read_bytes())
    data[-10:] = b"\x00" * 10
    copy.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="do not match the sha256"):
        make_generator(copy).generate({0: 1}, seed=0)


def test_weights_of_another_architecture_are_refused(weights):
    wider = Architecture.from_mapping({**TINY.to_dict(), "block_out_channels": [16, 32]})
    with pytest.raises(ValueError, match="were trained for architecture"):
        make_generator(weights, architecture=wider).generate({0: 1}, seed=0)


# --- sampling --------------------------------------------------------------------------------------


def test_generate_follows_the_plan_in_ascending_class_order(weights):
    images, labels = make_generator(weights).generate({7: 0, 3: 2, 0: 1, 5: 3}, seed=0)
    assert images.shape == (6, 1, 8, 8) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.tolist() == [0, 3, 3, 5, 5, 5]
    assert images.min() >= 0 and images.max() <= 1


def test_empty_plan_gives_empty_tensors(weights):
    images, labels = make_generator(weights).generate({2: 0}, seed=0)
    assert images.shape == (0, 1, 8, 8) and labels.shape == (0,)


def test_same_plan_and_seed_give_identical_images(weights):
    first, _ = make_generator(weights).generate({1: 3, 4: 2}, seed=5)
    again, _ = make_generator(weights).generate({1: 3, 4: 2}, seed=5)
    other, _ = make_generator(weights).generate({1: 3, 4: 2}, seed=6)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_images_of_a_class_do_not_depend_on_the_other_classes(weights):
    alone, _ = make_generator(weights).generate({3: 5}, seed=1)
    together, labels = make_generator(weights).generate({0: 2, 3: 5, 9: 7}, seed=1)
    assert torch.equal(together[labels == 3], alone)


def test_plan_outside_the_classes_is_rejected(weights):
    with pytest.raises(ValueError, match="classes 0..9"):
        make_generator(weights).generate({10: 1}, seed=0)


def test_guidance_runs_on_weights_trained_with_a_null_class(weights):
    guided, _ = make_generator(weights, guidance_scale=2.0).generate({4: 2}, seed=0)
    plain, _ = make_generator(weights).generate({4: 2}, seed=0)
    assert guided.shape == plain.shape and not torch.equal(guided, plain)


def test_fingerprint_names_weights_and_sampler(weights):
    fingerprint = make_generator(weights).fingerprint()
    assert fingerprint["weights_sha256"] == json.loads(record_path(weights).read_text())["weights_sha256"]
    assert fingerprint["sampler"] == "ddim" and fingerprint["sampling_steps"] == 3
    assert fingerprint["guidance_scale"] == 1.0 and fingerprint["corpus"] == "digits-public"


def test_fingerprint_keys_on_device_type_dtype_and_library_versions(weights):
    """As the Stable Diffusion one does: a CPU run must not load images a GPU run made (other kernels)."""
    import diffusers

    cpu = make_generator(weights).fingerprint()
    runtime = {key: cpu.get(key) for key in ("device_type", "dtype", "torch", "diffusers")}
    assert runtime == {"device_type": "cpu", "dtype": "float32", "torch": torch.__version__, "diffusers": diffusers.__version__}
    gpu = make_generator(weights, device="cuda").fingerprint()  # no GPU needed: fingerprinting places nothing there
    assert gpu["device_type"] == "cuda" and gpu != cpu
    assert {**gpu, "device_type": "cpu"} == cpu  # the device is the only difference


# --- configuration ---------------------------------------------------------------------------------


def test_weights_resolve_absolute_as_given_else_weights_dir_then_the_package(tmp_path):
    committed = "class_conditional_digits-public.safetensors"
    assert resolve_weights_path(tmp_path / "w.safetensors", tmp_path / "cache") == tmp_path / "w.safetensors"
    # Nothing in the cache folder: the package's committed file.
    assert resolve_weights_path(committed, tmp_path / "cache") == REPO_ROOT / "generation/weights" / committed
    # A file in the cache folder wins over the package's.
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / committed).write_bytes(b"x")
    assert resolve_weights_path(committed, tmp_path / "cache") == tmp_path / "cache" / committed
    # Found nowhere: the cache folder, where pretraining on first use writes.
    assert resolve_weights_path("new.safetensors", tmp_path / "cache") == tmp_path / "cache" / "new.safetensors"


def test_missing_weights_error_names_the_setting_the_places_and_the_commands(tmp_path):
    generator = ClassConditionalGenerator(weights="absent.safetensors", weights_dir=tmp_path, corpus="fonts",
                                          architecture=TINY, sampling_steps=3, guidance_scale=1.0, batch_size=4,
                                          device="cpu", pretraining=None)
    with pytest.raises(FileNotFoundError) as error:
        generator.generate({0: 1}, seed=0)
    message = str(error.value)
    assert "generator.weights" in message and "generator.weights_dir" in message
    assert str(tmp_path / "absent.safetensors") in message and str(REPO_ROOT / "generation/weights/absent.safetensors") in message
    assert "python -m generation.pretrain corpus=fonts" in message and "generator.pretrain_if_missing=true" in message


def test_pretrain_config_builds_the_generator_named_by_the_corpus_shorthand():
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base=None):
        cfg = compose(config_name="pretrain", overrides=["corpus=fonts", "generator.weights_dir=null"])
    generator, pretraining = generator_and_pretraining(cfg)
    assert generator.corpus == "fonts"
    assert generator.weights_path == REPO_ROOT / "generation/weights/class_conditional_fonts.safetensors"
    assert (pretraining.split_seed, pretraining.test_fraction, pretraining.public_fraction) == (
        cfg.dataset.split_seed,
        cfg.dataset.test_fraction,
        cfg.dataset.public_fraction,
    )


def test_pretrain_settings_from_file_take_the_given_dataset_split():
    settings = Pretraining.from_conf_file({"split_seed": 3, "test_fraction": 0.25, "public_fraction": 0.1})
    assert (settings.split_seed, settings.test_fraction, settings.public_fraction) == (3, 0.25, 0.1)
    assert settings.steps >= 1 and settings.batch_size >= 1
