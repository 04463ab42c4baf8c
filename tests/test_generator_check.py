"""The generator check before round 1 (issue 16): the verdict by hand, the strategy on the in-memory Grid
(nodes scoring the synthetic-only model with the ClientApp's probe contract), the real augmenter's
reference model, config errors and checkpoints. The real simulation is in tests/test_end_to_end.py (slow).
"""

import numpy as np
import pytest

from local_grid import LocalGrid
from strategy.generator_check import GeneratorCheck
from test_adaptive_kappa import TARGET, _start, adaptive_genfl, scoring_node
from test_genfl_strategy import FixedAugmenter, _state

CHECK = GeneratorCheck(epochs=2, fraction=1.0, min_transfer=0.8)


def test_the_verdict_is_the_sample_weighted_real_accuracy_over_the_synthetic_one():
    result = CHECK.verdict([0.9, 0.6], [30, 10], synthetic_accuracy=0.9)
    assert result["real_accuracy"] == pytest.approx(0.825)  # (0.9 * 30 + 0.6 * 10) / 40
    assert result["transfer"] == pytest.approx(0.9167, abs=1e-4) and result["trusted"] is True
    assert CHECK.verdict([0.5], [10], synthetic_accuracy=1.0)["trusted"] is False
    assert CHECK.verdict([0.8], [10], synthetic_accuracy=1.0)["trusted"] is True  # at the line: trusted
    nothing = CHECK.verdict([], [], synthetic_accuracy=1.0)  # no usable score: the burden of proof is not met
    assert (nothing["real_accuracy"], nothing["transfer"], nothing["trusted"], nothing["nodes"]) == (None, None, False, 0)
    assert CHECK.verdict([0.5], [10], synthetic_accuracy=0.0)["trusted"] is False


@pytest.mark.parametrize("kwargs, message", [
    (dict(epochs=0), "generator_check.epochs"), (dict(epochs=1.5), "generator_check.epochs"),
    (dict(fraction=0.0), "generator_check.fraction"), (dict(min_transfer=-0.1), "generator_check.min_transfer"),
])
def test_bad_check_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GeneratorCheck(**{**dict(epochs=1, fraction=1.0, min_transfer=0.8), **kwargs})


class CheckedAugmenter(FixedAugmenter):
    """A fixed augmented model plus the check's synthetic-only model (``reference``) and `relax`."""

    def __init__(self, state, reference_state, synthetic_accuracy=1.0):
        super().__init__(state)
        self.reference_state, self.synthetic_accuracy = reference_state, synthetic_accuracy
        self.references, self.relaxed = [], False

    def reference(self, initial_state, epochs):
        self.references.append((len(self.trained_from), epochs))
        return self.reference_state, self.synthetic_accuracy

    def relax(self):
        self.relaxed = True


def accuracy_node(histogram, partition, accuracy_of, probe_reply=None):
    """A scoring node whose probe reports ``accuracy_of(model)`` for each candidate (the ClientApp's contract)."""
    inner = scoring_node(histogram, partition, lambda g: _state(TARGET), probe_reply=probe_reply)

    def handle(msg):
        reply = inner(msg)
        if msg.metadata.message_type == "query.kappa_probe" and probe_reply is None:
            metrics = next(iter(reply.content.metric_records.values()))
            client = msg.content["genfl-client-part"]
            w = dict(zip(client.keys(), client.to_numpy_ndarrays()))["w"]
            metrics["mix-acc"] = [accuracy_of(w) for _ in metrics["mix-loss"]]
        return reply
    return handle


def checked_genfl(augmenter, rounds, min_transfer=0.8, fraction_evaluate=0.0, **kwargs):
    strategy = adaptive_genfl(augmenter, rounds, **kwargs)
    strategy.check = GeneratorCheck(epochs=2, fraction=1.0, min_transfer=min_transfer)
    strategy.fraction_evaluate = fraction_evaluate
    return strategy


def good_at(w):  # the synthetic-only model scores by how close it is to the real optimum
    return 0.95 if np.allclose(w, TARGET) else 0.4


@pytest.mark.parametrize("reference, trusted", [(TARGET, True), ([-20.0, 40.0], False)])
def test_the_check_runs_before_round_1_and_decides_the_regime(reference, trusted):
    grid = LocalGrid({i: accuracy_node([5, 5, 5], i, good_at) for i in range(3)})
    augmenter = CheckedAugmenter(_state([-20.0, 40.0]), _state(reference))
    strategy = checked_genfl(augmenter, rounds=3, bn_stats="reestimate")
    _start(strategy, grid, 3)
    kinds = [m.metadata.message_type for m in grid.sent]
    first_train = kinds.index("train")
    assert kinds[first_train - 3:first_train] == ["query.kappa_probe"] * 3  # every node, before any training
    assert augmenter.references == [(0, 2)]  # once, before the first augmented model, with the configured epochs
    result = strategy.generator_check
    assert result["nodes"] == 3 and result["real_accuracy"] == (0.95 if trusted else 0.4) and result["trusted"] is trusted
    rows = [strategy.round_stats[r] for r in (1, 2, 3)]
    assert augmenter.relaxed is trusted
    if trusted:  # the paper's GenFL: constant kappa, no probe, no BatchNorm query, evaluation back to the federation's share
        assert [r.kappa_aug for r in rows] == [0.3, 0.3, 0.3] and all(r.kappa_probe is None for r in rows)
        assert "query.bn_statistics" not in kinds and "evaluate" not in kinds and strategy.bn_stats == "mixed"
        assert augmenter.trust == [None, None, None]
    else:  # the adaptive policy turns the harmful augmented model down, statistics re-estimated
        assert [r.kappa_aug for r in rows] == [0.3, 0.15, 0.075] and kinds.count("query.bn_statistics") == 9


def test_a_node_claiming_an_impossible_accuracy_is_left_out_of_the_verdict():
    liar = {"mix-loss": [0.0], "mix-acc": [5.0]}  # "500 %": it would push the check past any line
    grid = LocalGrid({0: accuracy_node([5, 5, 5], 0, good_at), 1: accuracy_node([5, 5, 5], 1, good_at, probe_reply=liar)})
    strategy = checked_genfl(CheckedAugmenter(_state([-20.0, 40.0]), _state([-20.0, 40.0])), rounds=1)
    _start(strategy, grid, 1)
    assert strategy.generator_check["nodes"] == 1 and strategy.generator_check["trusted"] is False


def test_a_resumed_run_applies_the_checkpoints_verdict_without_checking_again():
    grid = LocalGrid({i: accuracy_node([5, 5, 5], i, good_at) for i in range(2)})
    strategy = checked_genfl(CheckedAugmenter(_state([-20.0, 40.0]), _state(TARGET)), rounds=2)
    _start(strategy, grid, 2)
    assert strategy.state_dict()["generator_check"]["trusted"] is True
    augmenter = CheckedAugmenter(_state([-20.0, 40.0]), _state([-20.0, 40.0]))  # would now fail the check
    resumed = checked_genfl(augmenter, rounds=4)
    resumed.load_state_dict(strategy.state_dict())
    resumed.offset = 2
    grid2 = LocalGrid({i: accuracy_node([5, 5, 5], i, good_at) for i in range(2)})
    _start(resumed, grid2, 4)
    assert augmenter.references == [] and augmenter.relaxed
    assert "query.kappa_probe" not in [m.metadata.message_type for m in grid2.sent]
    assert [resumed.round_stats[r].kappa_aug for r in (3, 4)] == [0.3, 0.3]


@pytest.mark.parametrize("reference", [TARGET, [-20.0, 40.0]])
def test_under_a_constant_kappa_the_check_only_reports(reference, caplog):
    from test_genfl_strategy import genfl

    grid = LocalGrid({i: accuracy_node([5, 5, 5], i, good_at) for i in range(2)})
    augmenter = CheckedAugmenter(_state([-20.0, 40.0]), _state(reference))
    strategy = genfl(0.7, 0.3, augmenter=augmenter, rounds=2)
    strategy.check = CHECK
    with caplog.at_level("INFO", logger="flwr"):
        _start(strategy, grid, 2)
    trusted = strategy.generator_check["trusted"]
    assert trusted is (reference is TARGET) and augmenter.references == [(0, 2)] and not augmenter.relaxed
    assert [strategy.round_stats[r].kappa_aug for r in (1, 2)] == [0.3, 0.3]
    warned = "may pull the model below FedAvg" in caplog.text
    assert warned is not trusted


def test_without_the_check_nothing_is_asked_before_round_1():
    grid = LocalGrid({i: accuracy_node([5, 5, 5], i, good_at) for i in range(2)})
    augmenter = CheckedAugmenter(_state([-20.0, 40.0]), _state(TARGET))
    strategy = adaptive_genfl(augmenter, rounds=1)
    _start(strategy, grid, 1)
    assert augmenter.references == [] and strategy.generator_check is None


# -- the real augmenter's synthetic-only model ------------------------------------------------------------
def test_the_reference_model_trains_on_the_synthetic_set_alone_and_leaves_the_rounds_as_they_were():
    from test_cache_and_augmented import _trainer_on

    trainer, initial = _trainer_on(20, max_steps=3, follow=True)
    without, _ = trainer.train(initial, server_round=1, trust=0.0)
    state, accuracy = trainer.reference(initial, epochs=2)
    assert 0.0 <= accuracy <= 1.0
    assert any(not np.array_equal(state[k], initial[k]) for k in initial)  # it trained
    with_check, _ = trainer.train(initial, server_round=1, trust=0.0)
    for k in without:  # the check's own seed: round 1's augmented model is bit for bit the same
        np.testing.assert_array_equal(with_check[k], without[k])
    again, accuracy_again = trainer.reference(initial, epochs=2)
    assert accuracy_again == accuracy and all(np.array_equal(again[k], state[k]) for k in state)  # reproducible
    trainer.relax()  # trusted: every batch from now on, whatever the cap and trust
    assert trainer.settings.max_steps is None and trainer.filter is None and not trainer.steps_follow_trust
    _, metrics = trainer.train(initial, server_round=2, trust=0.0)
    assert "augmented_steps" not in metrics and metrics["images_used"] == 40


@pytest.mark.parametrize("overrides, message", [
    (["generator_check.enabled=yes"], "generator_check.enabled: must be true or false"),
    (["generator_check.enabled=true", "mix.kappa_policy=adaptive", "generator_check.min_transfer=-1"],
     "generator_check.min_transfer"),
    (["generator_check.enabled=true", "mix.kappa_policy=adaptive", "generator_check.epochs=0"], "generator_check.epochs"),
    (["generator_check.enabled=true", "mix.kappa_policy=adaptive", "generator_check.fraction=2"], "generator_check.fraction"),
])
def test_bad_check_settings_are_one_line_config_errors(make_config, overrides, message):
    from server_app.config import ConfigError

    with pytest.raises(ConfigError) as err:
        make_config(*overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_checkpoint_written_before_the_check_existed_still_resumes():
    from server_app.checkpoint import _differences

    saved = {"mix": {"kappa_policy": "adaptive"}}
    current = {"mix": {"kappa_policy": "adaptive"},
               "generator_check": {"enabled": False, "epochs": 3, "fraction": 1.0, "min_transfer": 0.8}}
    assert _differences(saved, current) == []
    current["generator_check"]["enabled"] = True  # switched on: a different run, named
    assert _differences(saved, current) == ["generator_check.enabled", "generator_check.epochs",
                                            "generator_check.fraction", "generator_check.min_transfer"]
