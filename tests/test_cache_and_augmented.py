"""The generated-image cache and the server's augmented model, on a tiny real SD pipeline from disk."""

import shutil

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from generation.augmented import AugmentedModelTrainer
from generation.cache import generate_cached
from generation.factory import build_generator
from tiny_sd import build_tiny_sd_folder
from genfl_torch.data import Split
from genfl_torch.model import seeded_model
from conf_defaults import train_settings
from genfl_torch.train import evaluate, load_numpy_state, state_to_numpy


@pytest.fixture
def sd_config(tmp_path, make_config):
    folder = build_tiny_sd_folder(tmp_path / "tiny-sd")
    return make_config(
        "dataset=cifar10", "generator=stable_diffusion", f"generator.model={folder}", "generator.local_files_only=true",
        "generator.num_inference_steps=2", "generator.generation_resolution=16", "generator.device=cpu",
        f"generation.cache_dir={tmp_path / 'cache'}",
    ), folder


def test_cache_hit_returns_identical_tensors_without_loading_the_model(sd_config, tmp_path, monkeypatch):
    from generation.text_to_image import TextToImageGenerator

    cfg, folder = sd_config
    plan = {0: 2, 7: 1}
    images, labels, hit = generate_cached(build_generator(cfg.generator, cfg.dataset), plan, 3, cfg.generation.cache_dir)
    assert not hit and images.dtype == torch.uint8 and images.shape == (3, 3, 32, 32)
    assert labels.tolist() == [0, 0, 7]

    def no_loading(self):
        raise AssertionError("a cache hit must not load the pipeline")

    monkeypatch.setattr(TextToImageGenerator, "load", no_loading)
    # The same weights copied elsewhere (e.g. to the server that runs the ServerApp) hit the same entry.
    copy = tmp_path / "copied-model"
    shutil.copytree(folder, copy)
    generator = build_generator(OmegaConf.merge(cfg.generator, {"model": str(copy)}), cfg.dataset)
    again, again_labels, hit = generate_cached(generator, plan, 3, cfg.generation.cache_dir)
    assert hit
    assert torch.equal(again, images) and torch.equal(again_labels, labels)


def test_cache_key_changes_with_seed_and_plan(sd_config):
    cfg, _ = sd_config
    generator = build_generator(cfg.generator, cfg.dataset)
    first, _, _ = generate_cached(generator, {1: 1}, 0, cfg.generation.cache_dir)
    other_seed, _, hit_seed = generate_cached(generator, {1: 1}, 1, cfg.generation.cache_dir)
    _, _, hit_plan = generate_cached(generator, {1: 2}, 0, cfg.generation.cache_dir)
    assert not hit_seed and not hit_plan
    assert not torch.equal(first, other_seed)


def test_augmented_model_trains_on_the_synthetic_set(sd_config):
    cfg, _ = sd_config
    torch.set_num_threads(1)
    model = seeded_model(0, num_classes=10, in_channels=3, mean=[0.5] * 3, std=[0.25] * 3)
    start = state_to_numpy(model)
    test = Split(torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8), torch.arange(8) % 10)
    trainer = AugmentedModelTrainer(
        make_generator=lambda: build_generator(cfg.generator, cfg.dataset), model=model,
        settings=train_settings(epochs=1, batch_size=4, lr=0.05, momentum=0.9, weight_decay=0.0, augment=True),
        device=torch.device("cpu"), test=test, eval_batch_size=8, policy="balance", budget=6, per_class=0,
        target=None, seed=0, cache_dir=None, overlap=False,
    )
    stats = trainer.prepare([5, 3, 5, 5, 5, 5, 5, 5, 5, 4])  # lacks 2 of class 1 and 1 of class 9
    assert stats["plan"][1] == 2 and stats["plan"][9] == 1 and sum(stats["plan"].values()) == 3
    assert stats["images_synthesized"] == 3 and not stats["cache_hit"]
    state, metrics = trainer.train(start, server_round=1)
    assert set(state) == set(start)
    assert not np.allclose(state["1.fc.weight"], start["1.fc.weight"])
    trained = seeded_model(1, num_classes=10, in_channels=3, mean=[0.5] * 3, std=[0.25] * 3)
    load_numpy_state(trained, state)
    loss, accuracy = evaluate(trained, test, torch.device("cpu"), 8, fast_cuda=True)
    assert (metrics["augmented_test_accuracy"], metrics["images_used"]) == (accuracy, 3)


def _trainer_on(images, max_steps, follow):
    """An augmented-model trainer holding ``images`` random 3x8x8 images of 4 classes (no generator needed)."""
    torch.manual_seed(0)
    model = seeded_model(0, num_classes=4, in_channels=3, mean=[0.5] * 3, std=[0.25] * 3)
    test = Split(torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8), torch.arange(8) % 4)
    trainer = AugmentedModelTrainer(
        make_generator=lambda: None, model=model, device=torch.device("cpu"), test=test, eval_batch_size=8,
        settings=train_settings(epochs=2, batch_size=4, lr=0.05, momentum=0.9, weight_decay=0.0, max_steps=max_steps),
        policy="balance", budget=None, per_class=0, target=None, seed=0, cache_dir=None, overlap=False,
        steps_follow_trust=follow)
    trainer.synthetic = Split(torch.randint(0, 256, (images, 3, 8, 8), dtype=torch.uint8), torch.arange(images) % 4)
    return trainer, state_to_numpy(model)


@pytest.mark.parametrize("trust, same_as_cap, steps", [(0.0, 2, 2), (0.5, 6, 6), (1.0, None, 10)])
def test_steps_follow_trust_from_the_cap_to_every_batch(trust, same_as_cap, steps):
    torch.set_num_threads(1)
    # 20 images, batch 4, 2 epochs: 10 batches in all; cap 2 at trust 0, 2 + 0.5 * 8 = 6 at trust 0.5.
    follows, start = _trainer_on(20, max_steps=2, follow=True)
    state, metrics = follows.train(start, server_round=1, trust=trust)
    assert metrics["augmented_steps"] == steps
    fixed, _ = _trainer_on(20, max_steps=same_as_cap, follow=False)
    expected, _ = fixed.train(start, server_round=1, trust=trust)  # ignored without steps_follow_trust
    for key in expected:
        np.testing.assert_array_equal(state[key], expected[key])


def test_without_the_option_or_a_trust_the_cap_holds_and_a_bad_trust_is_refused():
    fixed, start = _trainer_on(20, max_steps=2, follow=False)
    capped, _ = _trainer_on(20, max_steps=2, follow=True)
    a, _ = fixed.train(start, server_round=1, trust=1.0)
    b, metrics = capped.train(start, server_round=1, trust=None)
    assert "augmented_steps" not in metrics
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    with pytest.raises(ValueError, match="trust must be in"):
        capped.train(start, server_round=1, trust=1.5)


def test_pregenerate_fills_the_cache_that_the_run_reads(sd_config, capsys):
    from genfl_cli.generate import main

    cfg, folder = sd_config
    overrides = ["dataset=cifar10", "generator=stable_diffusion", f"generator.model={folder}", "generator.local_files_only=true",
                 "generator.num_inference_steps=2", "generator.generation_resolution=16", "generator.device=cpu",
                 f"generation.cache_dir={cfg.generation.cache_dir}", "generation.per_class=1"]
    assert main(["--histogram", "5,5,5,5,5,5,5,5,5,5", *overrides]) == 0
    assert "10 images (3, 32, 32) generated into" in capsys.readouterr().out
    assert main(["--histogram", "5,5,5,5,5,5,5,5,5,5", *overrides]) == 0
    assert "found in" in capsys.readouterr().out
    assert main(["--histogram", "1,2", *overrides]) == 2


# --- cache robustness -----------------------------------------------------------------------------

def _entry(sd_config):
    from generation.cache import cache_path

    cfg, _ = sd_config
    generator = build_generator(cfg.generator, cfg.dataset)
    plan = {0: 2, 3: 1}
    images, labels, _ = generate_cached(generator, plan, 0, cfg.generation.cache_dir)
    return generator, plan, cfg.generation.cache_dir, cache_path(generator, plan, 0, cfg.generation.cache_dir), images


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong-contents"])
def test_a_damaged_cache_entry_is_regenerated_with_a_warning(sd_config, damage, caplog):
    from safetensors.torch import save_file

    generator, plan, cache_dir, path, images = _entry(sd_config)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a safetensors file")
    else:
        save_file({"images": torch.zeros(99, 3, 32, 32, dtype=torch.uint8), "labels": torch.zeros(99, dtype=torch.int64)}, str(path))
    again, _, hit = generate_cached(generator, plan, 0, cache_dir)
    assert not hit and torch.equal(again, images)
    assert "regenerating it" in caplog.text
    assert generate_cached(generator, plan, 0, cache_dir)[2]  # repaired: a hit again


@pytest.mark.parametrize("damage", ["fewer-images", "wrong-class-counts", "fewer-images-no-record"])
def test_an_entry_that_does_not_hold_its_plan_is_named_and_regenerated(sd_config, damage, caplog):
    """A readable entry with fewer images than planned, or another class mix, is a miss, never used."""
    import logging

    from safetensors import safe_open
    from safetensors.torch import save_file

    generator, plan, cache_dir, path, images = _entry(sd_config)  # plan {0: 2, 3: 1}
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    if damage == "wrong-class-counts":
        tensors["labels"] = torch.tensor([0, 3, 3])  # the plan's total, the wrong mix
    else:
        tensors = {name: tensor[:2].clone() for name, tensor in tensors.items()}  # class 3 cut off
    save_file(tensors, str(path), metadata=None if damage.endswith("no-record") else metadata)
    caplog.set_level(logging.WARNING, logger="generation.cache")
    again, labels, hit = generate_cached(generator, plan, 0, cache_dir)
    assert not hit and torch.equal(again, images) and labels.tolist() == [0, 0, 3]
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    held = "{0: 2}" if damage.startswith("fewer") else "{0: 1, 3: 2}"
    assert path.name in warning and held in warning and "{0: 2, 3: 1}" in warning and "regenerating" in warning
    assert generate_cached(generator, plan, 0, cache_dir)[2]  # repaired: a hit again


class _ShortGenerator:
    """Makes one image fewer of class 0 than planned, like a safety checker that drops an image."""

    def __init__(self):
        self.calls = 0

    def fingerprint(self):
        return {"backend": "short"}

    def generate(self, plan, *, seed):
        self.calls += 1
        labels = torch.tensor([c for c in sorted(plan) for _ in range(plan[c] - (c == 0))], dtype=torch.int64)
        return torch.full((len(labels), 1, 2, 2), 0.5), labels


def test_a_shortfall_the_generator_came_up_with_is_recorded_and_still_a_hit(tmp_path):
    generator = _ShortGenerator()
    first, first_labels, hit = generate_cached(generator, {0: 3, 1: 2}, 0, tmp_path)
    again, labels, hit_again = generate_cached(generator, {0: 3, 1: 2}, 0, tmp_path)
    assert (hit, hit_again, generator.calls) == (False, True, 1)
    assert labels.tolist() == first_labels.tolist() == [0, 0, 1, 1] and torch.equal(again, first)


def test_a_shard_entry_is_checked_against_its_share_of_the_plan(tmp_path, caplog):
    """`genfl-generate` under accelerate reads each shard with the whole plan."""
    from generation.cache import read_entry, write_entry

    path = tmp_path / "key.shard0.safetensors"
    write_entry(path, torch.zeros((2, 1, 2, 2), dtype=torch.uint8), torch.tensor([0, 0]), {"shard": 0, "of": 2, "plan": {0: 2}})
    assert read_entry(path, {0: 2, 1: 1}) is not None
    assert read_entry(path, {0: 3, 1: 1}) is None and "made for plan {0: 2}" in caplog.text


def _write_many(path, value):
    from generation.cache import write_entry

    for _ in range(300):  # with one shared temporary file this fails (FileNotFoundError) every time we tried
        write_entry(path, torch.full((4, 1, 8, 8), value, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64), {"v": value})


def test_concurrent_writers_of_one_key_never_leave_a_broken_entry(tmp_path):
    import multiprocessing

    from generation.cache import read_entry

    path = tmp_path / "cache" / "key.safetensors"
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_many, args=(path, v)) for v in (1, 2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
    assert [w.exitcode for w in writers] == [0, 0]
    images, _ = read_entry(path, {0: 4})
    assert images.unique().tolist() in ([1], [2])  # one writer's whole entry, never a mix
    assert sorted(p.name for p in path.parent.iterdir()) == ["key.json", "key.safetensors"]  # no temporaries left


def test_a_budget_that_scales_the_plan_is_reported(sd_config):
    cfg, _ = sd_config
    model = seeded_model(0, num_classes=10, in_channels=3, mean=[0.5] * 3, std=[0.25] * 3)
    test = Split(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8), torch.arange(4))
    trainer = AugmentedModelTrainer(
        make_generator=lambda: build_generator(cfg.generator, cfg.dataset), model=model,
        settings=train_settings(epochs=1, batch_size=4, lr=0.05, momentum=0.9, weight_decay=0.0),
        device=torch.device("cpu"), test=test, eval_batch_size=8, policy="uniform", budget=5, per_class=1,
        target=None, seed=0, cache_dir=None, overlap=False,
    )
    stats = trainer.prepare([1] * 10)
    assert (stats["images_requested"], sum(stats["plan"].values())) == (10, 5)


def test_pregenerate_rejects_malformed_histograms_with_one_line(capsys):
    from genfl_cli.generate import main

    for bad in ("1,2,x", "1,,2", "a", "1,2", "-1,1,1,1,1,1,1,1,1,1"):
        assert main([f"--histogram={bad}"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("genfl-generate: --histogram:") and "\n" not in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exit_info:
        main(["--no-such-flag"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().startswith("genfl-generate: unrecognized arguments")
