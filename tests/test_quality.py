"""The synthetic-data quality report, on real digits: a ResNet-18 trained briefly on real images judges
in-distribution "synthetic" digits (other real digits, right labels) against shifted ones (wrong labels,
inverted, noisy), and the scores must put them in the right order. Plus the sample grid and genfl-report."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from generation.quality import (
    METRICS_KEY,
    auc_score,
    grid_rows,
    grid_size,
    pixel_features,
    save_sample_grid,
    separability,
    synthetic_quality,
)
from genfl_torch.data import Split
from genfl_torch.model import seeded_model
from genfl_torch.train import TrainSettings, train

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits(one_thread):
    """A ResNet-18 after three epochs on 800 real digits (well above 80% test accuracy on any CPU: after one epoch it was 70% on one machine type and 40% on another), 200 held-out real digits
    (the "server test split") and 200 other real digits standing in for perfect synthetic images."""
    from genfl_torch.digits import load_digits_arrays

    images, labels = load_digits_arrays()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    fit, real, fake = order[:800], order[800:1000], order[1000:1200]
    model = seeded_model(0, num_classes=10, in_channels=1, mean=[0.3], std=[0.38])
    settings = TrainSettings(epochs=3, batch_size=16, lr=0.02, momentum=0.9, weight_decay=5e-4, augment=False,
                             proximal_mu=0.0, max_steps=None, fast_cuda=False)
    train(model, Split(images[fit], labels[fit]), settings, CPU, seed=0)
    return model, Split(images[real], labels[real]), Split(images[fake], labels[fake])


@pytest.fixture(scope="module")
def scores(digits):
    model, real, good = digits
    noise = torch.rand(good.images.shape, generator=torch.Generator().manual_seed(1))
    cases = {
        "good": good,
        "wrong_labels": Split(good.images, (good.labels + 1) % 10),
        "inverted": Split(1 - good.images, good.labels),
        "noisy": Split((0.6 * good.images + 0.4 * noise), good.labels),
    }
    return {name: synthetic_quality(model, synthetic, real, CPU, seed=0, num_classes=10)
            for name, synthetic in cases.items()}


def test_in_distribution_images_agree_with_the_global_model_about_as_often_as_real_ones(scores):
    good = scores["good"]
    assert good["real_accuracy"] > 0.5  # the judge learnt something
    assert abs(good["agreement"] - good["real_accuracy"]) < 0.1  # same distribution: same hit rate
    assert scores["wrong_labels"]["agreement"] < 0.2 < good["agreement"] - 0.3
    assert scores["inverted"]["agreement"] < good["agreement"] - 0.3
    assert scores["wrong_labels"]["confidence"] < good["confidence"]
    per_class = good["agreement_per_class"]
    assert len(per_class) == 10 and all(0 <= a <= 1 for a in per_class)
    assert good["images"] == {"synthetic": 200, "kept": 200, "scored": 200, "dropped_scored": 0, "real_scored": 200}
    json.dumps(good)  # goes into metrics.json as it is


def test_real_and_in_distribution_images_cannot_be_told_apart_but_shifted_ones_can(scores):
    good, inverted, noisy = scores["good"], scores["inverted"], scores["noisy"]
    for prefix in ("", "pixel_"):
        assert 0.35 < good[f"{prefix}separability_auc"] < 0.65  # chance
        assert inverted[f"{prefix}separability_auc"] > 0.95
        assert noisy[f"{prefix}separability_auc"] > good[f"{prefix}separability_auc"] + 0.2
        assert inverted[f"{prefix}separability_accuracy"] > 0.9 and good[f"{prefix}separability_accuracy"] < 0.65
    # Separability looks at images, not labels.
    for key in ("separability_auc", "pixel_separability_auc"):
        assert scores["wrong_labels"][key] == good[key]


def test_the_same_seed_gives_the_same_report_and_the_cap_bounds_the_work(digits):
    model, real, good = digits
    first = synthetic_quality(model, good, real, CPU, seed=3, num_classes=10, max_images=60)
    assert first == synthetic_quality(model, good, real, CPU, seed=3, num_classes=10, max_images=60)
    assert first["images"] == {"synthetic": 200, "kept": 200, "scored": 60, "dropped_scored": 0, "real_scored": 60}
    # uint8 pixels (how generators deliver them) are the same images as float ones.
    as_uint8 = Split((good.images * 255).round().to(torch.uint8), good.labels)
    assert torch.allclose(pixel_features(as_uint8.images), pixel_features(good.images), atol=3e-3)
    again = synthetic_quality(model, as_uint8, real, CPU, seed=3, num_classes=10, max_images=60)
    assert again["agreement"] == pytest.approx(first["agreement"], abs=0.04)


def test_the_model_is_left_in_the_mode_it_was_in(digits):
    model, real, good = digits
    small = good.subset(range(20))
    model.train()
    synthetic_quality(model, small, real, CPU, seed=0, num_classes=10)
    assert model.training
    model.eval()
    synthetic_quality(model, small, real, CPU, seed=0, num_classes=10)
    assert not model.training


def test_with_a_filter_the_kept_images_are_scored_and_the_dropped_ones_reported_apart(digits):
    model, real, good = digits
    good = good.subset(range(100))
    half = len(good) // 2
    mixed = Split(good.images, torch.cat([good.labels[:half], (good.labels[half:] + 1) % 10]))  # 2nd half mislabelled
    kept = torch.arange(len(good)) < half
    report = synthetic_quality(model, mixed, real, CPU, seed=0, num_classes=10, kept_mask=kept)
    assert report["images"]["kept"] == half and report["images"]["scored"] == half
    assert report["agreement"] > 0.5 and report["agreement_dropped"] < 0.2
    assert report["agreement_all"] == pytest.approx((report["agreement"] + report["agreement_dropped"]) / 2)
    unfiltered = synthetic_quality(model, mixed, real, CPU, seed=0, num_classes=10)
    assert unfiltered["agreement_dropped"] is None and unfiltered["agreement_all"] == unfiltered["agreement"]
    with pytest.raises(ValueError, match="kept_mask has 3 entries for 100"):
        synthetic_quality(model, mixed, real, CPU, seed=0, num_classes=10, kept_mask=[True] * 3)


def test_tiny_and_empty_sets_give_what_can_be_computed_and_none_for_the_rest(digits):
    model, real, good = digits
    tiny = synthetic_quality(model, good.subset([0, 1, 2]), real, CPU, seed=0, num_classes=10)
    assert tiny["agreement"] is not None and tiny["real_accuracy"] is not None
    assert tiny["separability_auc"] is None and tiny["pixel_separability_auc"] is None  # 3 per side: no 5 folds
    assert sum(a is not None for a in tiny["agreement_per_class"]) == len(set(good.labels[:3].tolist()))
    empty = synthetic_quality(model, good.subset([]), real, CPU, seed=0, num_classes=10)
    assert empty["agreement"] is None and empty["images"]["synthetic"] == 0
    small = good.subset(range(20))
    none_kept = synthetic_quality(model, small, real, CPU, seed=0, num_classes=10, kept_mask=torch.zeros(20, dtype=bool))
    assert none_kept["agreement"] is None and none_kept["agreement_dropped"] is not None


def test_colour_images_and_grey_synthetic_images_for_a_colour_data_set():
    model = seeded_model(0, num_classes=3, in_channels=3, mean=[0.5] * 3, std=[0.25] * 3)
    g = torch.Generator().manual_seed(0)
    real = Split(torch.randint(0, 256, (30, 3, 16, 16), dtype=torch.uint8, generator=g), torch.arange(30) % 3)
    colour = Split(torch.randint(0, 256, (30, 3, 16, 16), dtype=torch.uint8, generator=g), torch.arange(30) % 3)
    grey = Split(torch.rand(30, 1, 16, 16, generator=g), torch.arange(30) % 3)
    for synthetic in (colour, grey):
        report = synthetic_quality(model, synthetic, real, CPU, seed=0, num_classes=3)
        assert report["separability_auc"] is not None and report["pixel_separability_auc"] is not None
    assert pixel_features(real.images).shape == (30, 3 * 64 + 4 * 3)


def test_auc_is_the_rank_statistic_with_ties_counted_half():
    from sklearn.metrics import roc_auc_score

    labels = torch.tensor([0, 0, 1, 1])
    assert auc_score(torch.tensor([0.1, 0.2, 0.3, 0.4]), labels) == 1.0
    assert auc_score(torch.tensor([0.4, 0.3, 0.2, 0.1]), labels) == 0.0
    assert auc_score(torch.ones(4), labels) == 0.5
    assert auc_score(torch.ones(4), torch.ones(4)) is None
    g = torch.Generator().manual_seed(0)
    scores, labels = torch.randint(0, 5, (200,), generator=g).double(), torch.randint(0, 2, (200,), generator=g)
    assert auc_score(scores, labels) == pytest.approx(roc_auc_score(labels.numpy(), scores.numpy()))


def test_separability_of_identical_distributions_is_chance_and_of_shifted_ones_is_high():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(400, 10, generator=g), torch.randn(400, 10, generator=g)
    assert separability(a, b, seed=0)[0] == pytest.approx(0.5, abs=0.08)
    assert separability(a, b + 1.5, seed=0)[0] > 0.95
    assert separability(a[:9], b[:9], seed=0) == (None, None)


def _red_pixels(path) -> int:
    from PIL import Image

    rgb = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).int()
    return int(((rgb[..., 0] > 180) & (rgb[..., 1] < 70) & (rgb[..., 2] < 70)).sum())


def test_the_sample_grid_has_a_row_per_class_and_frames_the_dropped_images_in_red(digits, tmp_path):
    from PIL import Image

    _, _, good = digits
    plain = save_sample_grid(tmp_path / "plain.png", good, 10, per_class=3, class_names=[f"d{i}" for i in range(10)])
    assert Image.open(plain).size == grid_size(rows=10, per_class=3)
    assert _red_pixels(plain) == 0
    kept = torch.ones(len(good), dtype=torch.bool)
    kept[::3] = False
    marked = save_sample_grid(tmp_path / "marked.png", good, 10, per_class=3, kept_mask=kept)
    assert Image.open(marked).size == grid_size(rows=10, per_class=3)
    assert _red_pixels(marked) > 100


def test_the_grid_caps_its_rows_skips_empty_classes_and_draws_colour_and_no_images(tmp_path):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 50 * 2  # 50 of 100 classes have images
    many = Split(torch.randint(0, 256, (200, 3, 32, 32), dtype=torch.uint8, generator=g), labels)
    assert grid_rows(many, 100, max_classes=6) == 6 and grid_rows(many, 100, max_classes=60) == 50
    path = save_sample_grid(tmp_path / "cifar100.png", many, 100, per_class=2, max_classes=6)
    assert Image.open(path).size == grid_size(rows=6, per_class=2)
    empty = save_sample_grid(tmp_path / "sub" / "empty.png", Split(many.images[:0], labels[:0]), 100)
    assert Image.open(empty).size == grid_size(rows=0, per_class=8)


def test_genfl_report_lists_the_quality_scores_per_configuration(tmp_path):
    from genfl_cli.report import main
    from server_app.report import QUALITY_KEY

    assert QUALITY_KEY == METRICS_KEY
    config = {"seed": 0, "strategy": {"name": "genfl", "kappa_aug": 0.3}, "partition": {"alpha": 0.1}}
    rounds = [{"round": r, "test_accuracy": a, "wall_seconds": r} for r, a in enumerate([0.1, 0.5, 0.7])]
    for seed, (agreement, auc, transfer) in enumerate([(0.6, 0.7, 0.5), (0.8, 0.9, 0.7)]):
        data = {"status": "completed", "config": {**config, "seed": seed}, "rounds": rounds,
                METRICS_KEY: {"agreement": agreement, "separability_auc": auc, "pixel_separability_auc": None},
                "generator_check": {"transfer": transfer, "trusted": False}}
        (tmp_path / "runs" / f"genfl-{seed}").mkdir(parents=True)
        (tmp_path / "runs" / f"genfl-{seed}" / "metrics.json").write_text(json.dumps(data))
    fedavg = {"status": "completed", "config": {**config, "strategy": {"name": "fedavg", "kappa_aug": 0.0}},
              "rounds": rounds}
    (tmp_path / "runs" / "fedavg").mkdir()
    (tmp_path / "runs" / "fedavg" / "metrics.json").write_text(json.dumps(fedavg))
    out = tmp_path / "report"
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    with open(out / "summary.csv") as fh:
        rows = {r["strategy"]: r for r in csv.DictReader(fh)}
    assert float(rows["genfl"]["synthetic_agreement_mean"]) == pytest.approx(0.7)
    assert float(rows["genfl"]["separability_auc_mean"]) == pytest.approx(0.8)
    assert rows["genfl"]["pixel_separability_auc_mean"] == ""
    assert rows["fedavg"]["synthetic_agreement_mean"] == rows["fedavg"]["separability_auc_mean"] == ""
    markdown = (out / "summary.md").read_text()
    assert float(rows["genfl"]["synthetic_transfer_mean"]) == pytest.approx(0.6)
    assert rows["fedavg"]["synthetic_transfer_mean"] == ""
    assert "| synthetic agreement | real-vs-synthetic AUC | transfer (generator check) |" in markdown
    assert "| 0.700 | 0.800 | 0.600 |" in markdown
    # Without any quality record the table keeps its old columns.
    (tmp_path / "runs" / "genfl-0").rename(tmp_path / "genfl-0")
    (tmp_path / "runs" / "genfl-1").rename(tmp_path / "genfl-1")
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert "synthetic agreement" not in (text := (out / "summary.md").read_text()) and "transfer" not in text
