"""A generator whose labels disagree with the federation is named in a WARNING at the end of the run.

The real end-of-run code (server_app.app._quality_report) judges a real AugmentedModelTrainer's synthetic
set with a model trained on real digits (a small MLP: the report takes any classifier). The "generator" hands out held-out real digits, once with
every label right and once with four classes swapped (1<->7, 3<->8): the warning must name exactly those
four classes, and metrics.json's synthetic_quality must list them.
"""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch
from torch import nn

from generation.augmented import AugmentedModelTrainer
from server_app.app import _quality_report
from server_app.results import METRICS, RunReport
from genfl_torch.data import Split
from genfl_torch.model import seeded_model
from genfl_torch.train import TrainSettings, train

CPU = torch.device("cpu")
SWAPPED = {1: 7, 7: 1, 3: 8, 8: 3}


@pytest.fixture(scope="module")
def judged(one_thread):
    """(final global model, real test split, held-out real digits standing in for a perfect generator)."""
    from genfl_torch.digits import load_digits_arrays

    images, labels = load_digits_arrays()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    fit, real, fake = order[:1000], order[1000:1300], order[1300:1700]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))  # seconds, not minutes
    settings = TrainSettings(epochs=10, batch_size=16, lr=0.05, momentum=0.9, weight_decay=5e-4, augment=False,
                             proximal_mu=0.0, max_steps=None, fast_cuda=False)
    train(model, Split(images[fit], labels[fit]), settings, CPU, seed=0)
    return model, Split(images[real], labels[real]), Split(images[fake], labels[fake])


class HeldOutDigits:
    """Real digits of each planned class, labelled as ``relabel`` says (a generator with swapped classes)."""

    def __init__(self, pool: Split, relabel: dict[int, int]):
        self.pool, self.relabel = pool, relabel

    def fingerprint(self):
        return {"backend": "held-out-digits", "relabel": sorted(self.relabel.items())}

    def generate(self, plan, *, seed):
        idx = torch.cat([torch.nonzero(self.pool.labels == c).squeeze(1)[: plan[c]] for c in sorted(plan)])
        labels = torch.tensor([self.relabel.get(int(c), int(c)) for c in self.pool.labels[idx]], dtype=torch.int64)
        return self.pool.images[idx], labels


def _end_of_run(tmp_path, judged, relabel, caplog) -> tuple[list[str], dict]:
    from server_app.config import load_config

    model, real, pool = judged
    cfg = load_config([f"output.dir={tmp_path}"])
    settings = TrainSettings(epochs=1, batch_size=16, lr=0.02, momentum=0.9, weight_decay=0.0, augment=False,
                             proximal_mu=0.0, max_steps=None, fast_cuda=False)
    augmenter = AugmentedModelTrainer(
        make_generator=lambda: HeldOutDigits(pool, relabel), model=seeded_model(0, num_classes=10, in_channels=1,
                                                                                   mean=[0.3], std=[0.38]),
        settings=settings, device=CPU, test=real, eval_batch_size=256, policy="uniform", budget=None, per_class=30,
        target=None, seed=0, cache_dir=None, overlap=False)
    augmenter.prepare([10] * 10)
    report = RunReport(tmp_path, {"dataset": {"name": "digits"}})
    with caplog.at_level(logging.INFO, logger="flwr"):
        _quality_report(cfg, report, model, augmenter, real, CPU)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "disagree" in r.getMessage()]
    return warnings, json.loads((tmp_path / METRICS).read_text())["synthetic_quality"]


def test_the_warning_names_exactly_the_classes_the_generator_swapped(tmp_path, judged, caplog):
    warnings, quality = _end_of_run(tmp_path, judged, SWAPPED, caplog)
    assert quality["disagreeing_classes"] == sorted(SWAPPED)
    assert len(warnings) == 1, warnings
    named = {int(c) for c in re.findall(r"class (\d+) \(", warnings[0])}
    assert named == set(SWAPPED), warnings[0]
    for c, other in SWAPPED.items():  # the line says what the model takes them for
        assert f"class {c} (" in warnings[0] and re.search(rf"class {c} \([^;]*taken for {other} \(", warnings[0])
    real, agreement = quality["real_accuracy_per_class"], quality["agreement_per_class"]
    assert all(agreement[c] >= 0.5 * real[c] for c in range(10) if c not in SWAPPED)  # the others are fine


def test_a_generator_with_the_federations_labels_gets_no_warning(tmp_path, judged, caplog):
    warnings, quality = _end_of_run(tmp_path, judged, {}, caplog)
    assert warnings == [] and quality["disagreeing_classes"] == []
    assert quality["real_accuracy"] > 0.8  # the judge is good enough for the swapped case to mean something
