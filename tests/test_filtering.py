"""Issue 16: confidence filtering of the synthetic set (3b) and round-aware class weights (4).

A hand-set linear model makes the confidences known: an image of class c lights pixel c with an
intensity a, and the model's logit for c is s * a, so the brighter image is the surer one. A
recording layer sees exactly the images the augmented model trains on. ResNet-18 on real 8x8 digits
checks the threaded and sequential paths give the same numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from generation.augmented import AugmentedModelTrainer
from generation.filtering import FilterSettings, per_class, score_confidence, select
from strategy.round_aware import lack_weights
from genfl_torch.data import Split
from genfl_torch.model import seeded_model
from genfl_torch.train import TrainSettings, load_numpy_state, state_to_numpy

CLASSES = 10
PER_CLASS = 8
SETTINGS = TrainSettings(epochs=1, batch_size=8, lr=0.05, momentum=0.9, weight_decay=0.0, augment=False,
                         proximal_mu=0.0, max_steps=None, fast_cuda=False)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


# --- a model and a set with known confidences -----------------------------------------------------

class Recorder(nn.Module):
    """Identity that remembers the class of every image it sees while training."""

    def __init__(self):
        super().__init__()
        self.seen: list[int] = []  # the class of each image trained on
        self.lit: list[float] = []  # its brightness

    def forward(self, x):
        if self.training:
            pixels = x.flatten(1)[:, :CLASSES]
            self.seen += pixels.argmax(1).tolist()
            self.lit += pixels.max(1).values.tolist()
        return x


def linear_model() -> nn.Module:
    return nn.Sequential(Recorder(), nn.Flatten(), nn.Linear(64, CLASSES, bias=False))


def linear_state(scale: float = 8.0, flip: tuple[int, ...] = ()) -> dict[str, np.ndarray]:
    """logit_c = scale * pixel c; a class in ``flip`` gets -scale (its dim images become the sure ones)."""
    weight = np.zeros((CLASSES, 64), dtype=np.float32)
    for c in range(CLASSES):
        weight[c, c] = -scale if c in flip else scale
    return {"2.weight": weight}


def brightness(index_in_class: int) -> float:
    return (index_in_class + 1) / (PER_CLASS + 1)


class LitPixelGenerator:
    """Class c's k-th image: pixel c at brightness(k) (k = 0 dimmest), everything else black."""

    def fingerprint(self):
        return {"backend": "lit-pixel"}

    def generate(self, plan, *, seed):
        images, labels = [], []
        for c in sorted(plan):
            for k in range(plan[c]):
                image = torch.zeros(1, 8, 8)
                image.view(-1)[c] = brightness(k % PER_CLASS)
                images.append(image)
                labels.append(c)
        return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


class DigitsGenerator:
    """Real 8x8 digits of the planned classes (a stand-in for a generator, deterministic)."""

    def fingerprint(self):
        return {"backend": "digits"}

    def generate(self, plan, *, seed):
        from genfl_torch.digits import load_digits_arrays

        images, labels = load_digits_arrays()
        idx = torch.cat([torch.nonzero(labels == c).squeeze(1)[: plan[c]] for c in sorted(plan)])
        return images[idx], labels[idx]


def trainer(model=None, *, generator=None, filter=None, overlap=False, plan=None) -> AugmentedModelTrainer:
    plan = plan or {c: PER_CLASS for c in range(CLASSES)}
    model = model if model is not None else linear_model()
    test = Split(torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(20) % CLASSES)
    made = AugmentedModelTrainer(
        make_generator=lambda: generator or LitPixelGenerator(), model=model, settings=SETTINGS,
        device=torch.device("cpu"), test=test, eval_batch_size=16, policy="uniform", budget=None,
        per_class=PER_CLASS, target=None, seed=3, cache_dir=None, overlap=overlap, filter=filter)
    made.prepare([10] * CLASSES, plan=plan)
    return made


def confidence(filter_settings=None, **kw) -> FilterSettings:
    return FilterSettings(**{"mode": "confidence", "start_round": 1, **(filter_settings or {}), **kw})


# --- the pieces ------------------------------------------------------------------------------------

def test_scores_are_the_models_probability_of_the_images_own_class():
    model = linear_model()
    load_numpy_state(model, linear_state())
    model.train()
    images, labels = LitPixelGenerator().generate({3: 4, 7: 2}, seed=0)
    scores = score_confidence(model, Split(images, labels), torch.device("cpu"), batch_size=3)
    a = torch.tensor([brightness(k) for k in (0, 1, 2, 3, 0, 1)])
    expected = torch.exp(8 * a) / (torch.exp(8 * a) + CLASSES - 1)
    torch.testing.assert_close(scores, expected)
    assert model.training and model[0].seen == []  # mode restored, nothing "trained on"
    assert torch.equal(scores, score_confidence(model, Split(images, labels), torch.device("cpu"), batch_size=64))


def test_keep_ratio_keeps_the_most_confident_share_of_each_class_and_at_least_one():
    conf = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.8, 0.2, 0.7])
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    assert select(conf, labels, keep_ratio=0.5).tolist() == [False, True, True, False, True, False, True]
    assert select(conf, labels, keep_ratio=0.01).tolist() == [False, True, False, False, True, False, True]
    assert select(conf, labels, keep_ratio=0.7).tolist() == [False, True, True, True, True, True, True]  # ceil(2.8)
    assert select(conf, labels, keep_ratio=1.0).all()
    tied = select(torch.full((4,), 0.5), torch.zeros(4, dtype=torch.long), keep_ratio=0.5)
    assert tied.tolist() == [True, True, False, False]  # ties: the earlier image


def test_threshold_keeps_confident_images_and_never_empties_a_class():
    conf = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.2, float("nan"), 0.4])
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2])
    kept = select(conf, labels, threshold=0.5)
    assert kept.tolist() == [False, True, True, True, False, False, True]  # class 1 keeps its best (0.3), 2 its only
    assert per_class(labels, kept, scored=True) == {"0": [3, 2, 1], "1": [3, 1, 2], "2": [1, 1, 0]}
    assert per_class(labels, kept, scored=False)["0"] == [0, 2, 1]


@pytest.mark.parametrize("kw, key", [
    (dict(mode="confidence", keep_ratio=0.0), "keep_ratio"),
    (dict(mode="confidence", keep_ratio=1.5), "keep_ratio"),
    (dict(mode="confidence", keep_ratio=float("nan")), "keep_ratio"),
    (dict(mode="confidence", keep_ratio=True), "keep_ratio"),
    (dict(mode="confidence", threshold=-0.1), "threshold"),
    (dict(mode="confidence", threshold=1.01), "threshold"),
    (dict(mode="confidence"), "keep_ratio / threshold"),
    (dict(mode="confidence", keep_ratio=0.5, threshold=0.5), "keep_ratio / threshold"),
    (dict(mode="clipped", keep_ratio=0.5), "mode"),
    (dict(mode="confidence", keep_ratio=0.5, start_round=0), "start_round"),
    (dict(mode="confidence", keep_ratio=0.5, refresh_every=0), "refresh_every"),
    (dict(mode="confidence", keep_ratio=0.5, refresh_every=1.5), "refresh_every"),
])
def test_bad_filter_settings_are_one_line_value_errors(kw, key):
    with pytest.raises(ValueError) as err:
        FilterSettings(**kw)
    assert key in str(err.value) and "\n" not in str(err.value)


# --- filtering in the augmented model's training --------------------------------------------------

def test_the_filter_drops_the_images_the_global_model_is_least_sure_of():
    aug = trainer(filter=confidence(keep_ratio=0.5))
    _, metrics = aug.train(linear_state(), server_round=1)
    kept = aug.kept_mask
    dim_half = torch.tensor([k < PER_CLASS // 2 for _ in range(CLASSES) for k in range(PER_CLASS)])
    assert torch.equal(kept, ~dim_half)  # the dimmer half of every class is dropped
    assert (metrics["synthetic_scored"], metrics["synthetic_kept"], metrics["synthetic_dropped"]) == (80, 40, 40)
    assert metrics["synthetic_filter"] == {str(c): [8, 4, 4] for c in range(CLASSES)}
    assert metrics["images_used"] == 40 and "augmented_class_weights" not in metrics
    seen = aug.model[0].seen
    assert sorted(seen) == sorted(c for c in range(CLASSES) for _ in range(4))  # trained on the kept ones only
    torch.testing.assert_close(aug.selection.confidence, score_confidence(
        _loaded(linear_state()), aug.synthetic, torch.device("cpu"), 64))


def _loaded(state):
    model = linear_model()
    load_numpy_state(model, state)
    return model


def test_a_threshold_filter_reports_per_class_counts():
    # confidence e^{8a} / (e^{8a} + 9) >= 0.9 <=> a >= ln(81) / 8 = 0.549: brightness 5/9.. 8/9 survive
    aug = trainer(filter=confidence(threshold=0.9), plan={0: 8, 4: 8, 9: 3})
    _, metrics = aug.train(linear_state(), server_round=1)
    assert metrics["synthetic_filter"] == {"0": [8, 4, 4], "4": [8, 4, 4], "9": [3, 1, 2]}  # 9: only its best
    assert (metrics["synthetic_scored"], metrics["synthetic_kept"], metrics["synthetic_dropped"]) == (19, 9, 10)
    assert aug.kept_mask.tolist()[16:] == [False, False, True]


def test_start_round_and_refresh_every():
    aug = trainer(filter=confidence(keep_ratio=0.25, start_round=2, refresh_every=2))
    rows = {}
    for server_round in range(1, 6):
        # a different global model each round: class 0's sure images flip from bright to dim
        state = linear_state(flip=(0,) if server_round >= 3 else ())
        _, rows[server_round] = aug.train(state, server_round)
        if server_round == 1:
            assert aug.kept_mask is None
        else:
            rows[server_round]["kept0"] = aug.kept_mask[:PER_CLASS].nonzero().squeeze(1).tolist()
    assert [rows[r]["synthetic_scored"] for r in range(1, 6)] == [0, 80, 0, 80, 0]
    assert rows[1]["synthetic_kept"] == 80 and rows[1]["synthetic_filter"]["0"] == [0, 8, 0]
    assert rows[1]["images_used"] == 80
    assert [rows[r]["synthetic_kept"] for r in range(2, 6)] == [20] * 4
    # round 3 reuses round 2's scores (the brightest two), round 4 rescored with the flipped model
    assert [rows[r]["kept0"] for r in range(2, 6)] == [[6, 7], [6, 7], [0, 1], [0, 1]]
    assert rows[3]["synthetic_filter"]["0"] == [0, 2, 6] and rows[4]["synthetic_filter"]["0"] == [8, 2, 6]
    assert aug.selection.round == 4


def test_mode_none_and_keeping_everything_train_exactly_as_without_a_filter():
    start = state_to_numpy(seeded_model(0, num_classes=CLASSES, in_channels=1, mean=[0.3], std=[0.38]))

    def run(filter):
        aug = trainer(seeded_model(0, num_classes=CLASSES, in_channels=1, mean=[0.3], std=[0.38]),
                      generator=DigitsGenerator(), filter=filter, plan={c: 4 for c in range(CLASSES)})
        return aug.train(start, server_round=1)

    plain_state, plain = run(None)
    for filter in (FilterSettings(), confidence(keep_ratio=1.0), confidence(threshold=0.0)):
        state, metrics = run(filter)
        for key in plain_state:
            np.testing.assert_array_equal(state[key], plain_state[key], err_msg=key)
        drop = {"augmented_train_seconds"}
        extra = {k: v for k, v in metrics.items() if k not in plain}
        assert {k: v for k, v in metrics.items() if k in plain and k not in drop} == \
               {k: v for k, v in plain.items() if k not in drop}
        assert extra == ({} if filter.mode == "none" else
                         {"synthetic_scored": 40, "synthetic_kept": 40, "synthetic_dropped": 0,
                          "synthetic_filter": {str(c): [4, 4, 0] for c in range(CLASSES)}})


# --- round-aware class weights ---------------------------------------------------------------------

def test_class_weights_set_the_class_mix_actually_trained_on():
    aug = trainer()
    aug.start(linear_state(), 1).result()
    plain = np.bincount(aug.model[0].seen, minlength=CLASSES)
    assert plain.tolist() == [PER_CLASS] * CLASSES  # without weights: each image once

    weights = [0.0] * CLASSES
    weights[2], weights[5] = 3.0, 1.0
    aug = trainer()
    _, metrics = aug.start(linear_state(), 1, class_weights=weights).result()
    seen = np.bincount(aug.model[0].seen, minlength=CLASSES)
    assert seen.sum() == 80 and metrics["images_used"] == 80  # as many samples per epoch as without
    assert set(np.flatnonzero(seen)) == {2, 5} and seen[2] > 2 * seen[5]
    assert metrics["augmented_class_weights"] == [0.0, 0.0, 0.75, 0.0, 0.0, 0.25, 0.0, 0.0, 0.0, 0.0]

    again = trainer()
    _, metrics_again = again.start(linear_state(), 1, class_weights=weights).result()
    assert again.model[0].seen == aug.model[0].seen and metrics_again == {
        **metrics, "augmented_train_seconds": metrics_again["augmented_train_seconds"]}
    other_round = trainer()
    other_round.train(linear_state(), 2, class_weights=weights)
    assert other_round.model[0].seen != aug.model[0].seen  # seeded per round, like the shuffle


def test_class_weights_with_a_filter_sample_the_kept_images_and_skip_absent_classes():
    aug = trainer(filter=confidence(keep_ratio=0.5), plan={0: 8, 1: 8})
    weights = [1.0, 1.0] + [5.0] * (CLASSES - 2)  # classes 2..9 are not in the synthetic set
    _, metrics = aug.train(linear_state(), 1, class_weights=weights)
    assert metrics["augmented_class_weights"] == [0.5, 0.5] + [0.0] * (CLASSES - 2)
    assert metrics["images_used"] == 8 and len(aug.model[0].seen) == 8
    assert set(aug.model[0].seen) == {0, 1}
    assert min(aug.model[0].lit) > brightness(3)  # only the kept, brighter half of each class is drawn


@pytest.mark.parametrize("weights, says", [
    ([1.0] * (CLASSES - 1), "need 10 weights"),
    ([-1.0] + [1.0] * (CLASSES - 1), ">= 0"),
    ([0.0] * CLASSES, "positive sum"),
    ([float("nan")] + [1.0] * (CLASSES - 1), "finite"),
    ("abc", "sequence of numbers"),
])
def test_bad_class_weights_are_one_line_value_errors_before_training(weights, says):
    aug = trainer()
    with pytest.raises(ValueError) as err:
        aug.start(linear_state(), 1, class_weights=weights)
    assert says in str(err.value) and "\n" not in str(err.value)
    assert aug.model[0].seen == []


def test_threaded_and_sequential_training_agree_with_filter_and_weights():
    weights = lack_weights([0, 0, 5, 5, 5, 5, 5, 5, 0, 0])

    def run(overlap):
        aug = trainer(seeded_model(0, num_classes=CLASSES, in_channels=1, mean=[0.3], std=[0.38]),
                      generator=DigitsGenerator(), filter=confidence(keep_ratio=0.5, refresh_every=2),
                      overlap=overlap, plan={c: 4 for c in range(CLASSES)})
        state = state_to_numpy(seeded_model(1, num_classes=CLASSES, in_channels=1, mean=[0.3], std=[0.38]))
        rows = []
        try:
            for server_round in (1, 2):
                state, metrics = aug.start(state, server_round, class_weights=weights).result()
                metrics.pop("augmented_train_seconds")
                rows.append(metrics)
        finally:
            aug.close()
        return state, rows, aug.kept_mask

    threaded, threaded_rows, threaded_mask = run(True)
    sequential, sequential_rows, sequential_mask = run(False)
    for key in threaded:
        np.testing.assert_array_equal(threaded[key], sequential[key], err_msg=key)
    assert threaded_rows == sequential_rows and torch.equal(threaded_mask, sequential_mask)
    assert [r["synthetic_scored"] for r in threaded_rows] == [40, 0] and threaded_rows[0]["synthetic_kept"] == 20
    assert sum(threaded_rows[0]["augmented_class_weights"]) == pytest.approx(1, abs=1e-3)


# --- the lack weights ------------------------------------------------------------------------------

def test_lack_weights_emphasise_what_the_round_lacks():
    weights = lack_weights([5, 5, 5, 5, 5, 0, 0, 0, 0, 0], floor=0.25)
    assert weights == pytest.approx([0.025] * 5 + [0.175] * 5)
    assert sum(weights) == pytest.approx(1)
    # the round already holds the target mix: the target (uniform here), nothing favoured
    assert lack_weights([3] * 4) == pytest.approx([0.25] * 4)
    # floor 0: only the lacking classes; target from the global histogram
    assert lack_weights([2, 2, 0], [1, 1, 2], floor=0.0) == pytest.approx([0.0, 0.0, 1.0])
    assert lack_weights([1, 3], [3, 1], floor=0.5) == pytest.approx([0.75, 0.25])
    assert lack_weights([0, 0, 0], floor=0.0) == pytest.approx([1 / 3] * 3)  # nothing known: the target
    assert min(lack_weights([100, 0, 0, 0], floor=0.1)) > 0


@pytest.mark.parametrize("args, says", [
    (([],), "empty"),
    (([1, -1],), "round_histogram"),
    (([1, 1], [1, 1, 1]), "global_histogram has 3"),
    (([1, 1], [1, float("inf")]), "global_histogram"),
])
def test_bad_histograms_for_lack_weights_raise(args, says):
    with pytest.raises(ValueError, match=says):
        lack_weights(*args)
    with pytest.raises(ValueError, match="floor"):
        lack_weights([1, 1], floor=1.5)


def test_train_rejects_sample_weights_that_do_not_fit_the_data():
    from genfl_torch.train import train

    data = Split(torch.rand(4, 1, 8, 8), torch.arange(4))
    for bad in (torch.ones(3), torch.tensor([1.0, -1.0, 1.0, 1.0]), torch.zeros(4)):
        with pytest.raises(ValueError, match="sample_weights: need 4 non-negative weights"):
            train(linear_model(), data, SETTINGS, torch.device("cpu"), seed=0, sample_weights=bad)


def test_weights_only_on_classes_the_set_lacks_fall_back_to_its_own_mix_with_a_warning(caplog):
    aug = trainer(plan={0: 6, 1: 2})
    _, metrics = aug.train(linear_state(), 1, class_weights=[0.0, 0.0] + [1.0] * (CLASSES - 2))
    assert metrics["augmented_class_weights"] == [0.75, 0.25] + [0.0] * (CLASSES - 2)
    assert "put no weight on the classes of the synthetic set [0, 1]" in caplog.text
