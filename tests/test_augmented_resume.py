"""The augmented model's bookkeeping (issue 26): ``images_used`` counts the images it actually trained on
(a step cap stops it early), and the confidence filter's selection travels with a checkpoint, so a
resumed run reuses it between rescorings exactly as the uninterrupted run does.

The hand-set linear model of tests/test_filtering.py makes confidences known, and its recording layer
counts every image a training forward pass sees.
"""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
import torch

from generation.augmented import AugmentedModelTrainer
from test_filtering import CLASSES, LitPixelGenerator, confidence, linear_model, linear_state, trainer
from genfl_torch.data import Split
from genfl_torch.train import TrainSettings


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


def _capped(max_steps, epochs=2, batch_size=16, **kw) -> AugmentedModelTrainer:
    settings = TrainSettings(epochs=epochs, batch_size=batch_size, lr=0.05, momentum=0.9, weight_decay=0.0,
                             augment=False, proximal_mu=0.0, max_steps=max_steps, fast_cuda=False)
    test = Split(torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(20) % CLASSES)
    made = AugmentedModelTrainer(
        make_generator=LitPixelGenerator, model=linear_model(), settings=settings, device=torch.device("cpu"),
        test=test, eval_batch_size=16, policy="uniform", budget=None, per_class=16, target=None, seed=3,
        cache_dir=None, overlap=False, **kw)
    made.prepare([10] * CLASSES, plan={c: 16 for c in range(CLASSES)})  # 160 images: 10 batches of 16
    return made


# --- images_used -------------------------------------------------------------------------------------

@pytest.mark.parametrize("max_steps, expected", [(2, 32), (15, 240), (None, 320)])
def test_images_used_counts_what_the_step_cap_let_through(max_steps, expected):
    aug = _capped(max_steps)
    _, metrics = aug.train(linear_state(), server_round=1)
    assert len(aug.model[0].seen) == expected  # images the model actually trained on
    assert metrics["images_used"] == expected


def test_images_used_follows_the_trust_scaled_step_cap():
    aug = _capped(2, steps_follow_trust=True)
    _, metrics = aug.train(linear_state(), server_round=1, trust=0.5)
    assert metrics["augmented_steps"] == 11  # 2 + 0.5 * (20 - 2)
    assert metrics["images_used"] == len(aug.model[0].seen) == 11 * 16


# --- the filter's selection across a resume --------------------------------------------------------

FILTER = dict(keep_ratio=0.25, start_round=2, refresh_every=3)  # rescored in rounds 2 and 5


def _global(server_round: int) -> dict[str, np.ndarray]:
    """A different global model from round 3 on: class 0's sure images flip from bright to dim, so a
    rescoring in round 3 or 4 would keep other images than round 2's selection."""
    return linear_state(flip=(0,) if server_round >= 3 else ())


def _rounds(aug: AugmentedModelTrainer, rounds) -> dict[int, tuple[dict, dict]]:
    out = {}
    for server_round in rounds:
        state, metrics = aug.train(_global(server_round), server_round)
        out[server_round] = (state, {k: v for k, v in metrics.items() if k != "augmented_train_seconds"})
    return out


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for r in a:
        assert a[r][1] == b[r][1], f"round {r}"
        for key in a[r][0]:
            np.testing.assert_array_equal(a[r][0][key], b[r][0][key], err_msg=f"round {r}: {key}")


@pytest.mark.parametrize("stopped_after", [2, 3, 4])
def test_a_resumed_run_reuses_the_checkpointed_selection_like_an_uninterrupted_one(stopped_after):
    whole = _rounds(trainer(filter=confidence(**FILTER)), range(1, 7))
    assert [whole[r][1]["synthetic_scored"] for r in range(1, 7)] == [0, 80, 0, 0, 80, 0]

    first = trainer(filter=confidence(**FILTER))
    before = _rounds(first, range(1, stopped_after + 1))
    saved = pickle.loads(pickle.dumps(first.state_dict()))  # what the checkpoint holds
    resumed = trainer(filter=confidence(**FILTER))  # a new process: same plan, same synthetic set
    resumed.load_state_dict(saved)
    after = _rounds(resumed, range(stopped_after + 1, 7))
    _assert_same({**before, **after}, whole)


def test_the_selection_survives_the_generator_checks_switch_of_filter():
    """On resume the trainer starts with on_fail's filter and the check's verdict configures the run's
    own before round 1 trains; the restored selection belongs to the latter."""
    whole = _rounds(trainer(filter=confidence(**FILTER)), range(1, 5))
    first = trainer(filter=confidence(**FILTER))
    _rounds(first, range(1, 4))
    saved = pickle.loads(pickle.dumps(first.state_dict()))
    resumed = trainer(filter=confidence(keep_ratio=0.5))  # another filter at first (on_fail's)
    resumed.load_state_dict(saved)
    resumed.configure(max_steps=None, filter=confidence(**FILTER), steps_follow_trust=False)
    _assert_same(_rounds(resumed, [4]), {4: whole[4]})
    assert resumed.selection.round == 2


def test_a_selection_of_another_filter_or_set_is_not_reused(caplog):
    first = trainer(filter=confidence(**FILTER))
    _rounds(first, range(1, 4))
    saved = first.state_dict()
    for other in (trainer(filter=confidence(**{**FILTER, "keep_ratio": 0.5})),
                  trainer(filter=confidence(**FILTER), plan={c: 4 for c in range(CLASSES)})):
        other.load_state_dict(saved)
        with caplog.at_level(logging.WARNING, logger="generation.augmented"):
            _, metrics = other.train(_global(4), 4)
        assert metrics["synthetic_scored"] == len(other.synthetic)  # scored afresh, not reused
        assert "does not fit" in caplog.text
        caplog.clear()


def test_a_checkpoint_without_a_selection_resumes_and_rescores():
    aug = trainer(filter=confidence(**FILTER))
    aug.load_state_dict(None)  # a checkpoint written before the selection was kept
    aug.load_state_dict({"selection": None})
    _, metrics = aug.train(_global(4), 4)
    assert metrics["synthetic_scored"] == 80
    assert trainer().state_dict() == {"selection": None}  # no filter: nothing to keep
