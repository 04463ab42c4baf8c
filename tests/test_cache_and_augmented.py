"""The generated-image cache and the server's augmented model, on a tiny real SD pipeline from disk."""

import shutil

import numpy as np
import pytest
import torch

from generation.augmented import AugmentedModelTrainer
from generation.cache import generate_cached
from generation.factory import build_generator
from tiny_sd import build_tiny_sd_folder
from torchcore.data import Split
from torchcore.model import seeded_model
from torchcore.train import TrainSettings, state_to_numpy


@pytest.fixture
def sd_config(tmp_path, make_config):
    folder = build_tiny_sd_folder(tmp_path / "tiny-sd")
    return make_config(
        "dataset=cifar10", "generator=stable_diffusion", f"generator.model={folder}", "generator.local_files_only=true",
        "generator.num_inference_steps=2", "generator.generation_resolution=16", "generator.device=cpu",
        f"generation.cache_dir={tmp_path / 'cache'}",
    ), folder


def test_cache_hit_returns_identical_tensors_without_the_model(sd_config):
    cfg, folder = sd_config
    plan = {0: 2, 7: 1}
    images, labels, hit = generate_cached(build_generator(cfg.generator, cfg.dataset), plan, 3, cfg.generation.cache_dir)
    assert not hit and images.dtype == torch.uint8 and images.shape == (3, 3, 32, 32)
    assert labels.tolist() == [0, 0, 7]
    shutil.rmtree(folder)  # no model any more: only a cache hit can answer now
    again, again_labels, hit = generate_cached(build_generator(cfg.generator, cfg.dataset), plan, 3, cfg.generation.cache_dir)
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
        settings=TrainSettings(epochs=1, batch_size=4, lr=0.05, momentum=0.9, weight_decay=0.0, augment=True),
        device=torch.device("cpu"), test=test, eval_batch_size=8, policy="balance", budget=6, per_class=0,
        target=None, seed=0, cache_dir=None,
    )
    stats = trainer.prepare([5, 3, 5, 5, 5, 5, 5, 5, 5, 4])  # lacks 2 of class 1 and 1 of class 9
    assert stats["plan"][1] == 2 and stats["plan"][9] == 1 and sum(stats["plan"].values()) == 3
    assert stats["images_synthesized"] == 3 and not stats["cache_hit"]
    state, metrics = trainer.train(start, server_round=1)
    assert set(state) == set(start)
    assert not np.allclose(state["1.fc.weight"], start["1.fc.weight"])
    assert 0.0 <= metrics["augmented_test_accuracy"] <= 1.0
    assert metrics["images_used"] == 3


def test_pregenerate_fills_the_cache_that_the_run_reads(sd_config, capsys):
    from server_app.pregenerate import main

    cfg, folder = sd_config
    overrides = ["dataset=cifar10", "generator=stable_diffusion", f"generator.model={folder}", "generator.local_files_only=true",
                 "generator.num_inference_steps=2", "generator.generation_resolution=16", "generator.device=cpu",
                 f"generation.cache_dir={cfg.generation.cache_dir}", "generation.per_class=1"]
    assert main(["--histogram", "5,5,5,5,5,5,5,5,5,5", *overrides]) == 0
    assert "10 images (3, 32, 32) generated into" in capsys.readouterr().out
    assert main(["--histogram", "5,5,5,5,5,5,5,5,5,5", *overrides]) == 0
    assert "found in" in capsys.readouterr().out
    assert main(["--histogram", "1,2", *overrides]) == 2
