"""The generator check before round 1 (issue 16): the verdict by hand, the strategy on the in-memory Grid
(nodes scoring the synthetic-only model with the ClientApp's probe contract), the real augmenter's
reference model, config errors and checkpoints. The real simulation is in tests/test_end_to_end.py (slow).
"""

import numpy as np
import pytest

from local_grid import LocalGrid
from strategy.generator_check import GeneratorCheck, Regime
from strategy.kappa import AdaptiveKappa
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
    """A fixed augmented model plus the check's synthetic-only model (``reference``) and `configure`."""

    def __init__(self, state, reference_state, synthetic_accuracy=1.0):
        super().__init__(state)
        self.reference_state, self.synthetic_accuracy = reference_state, synthetic_accuracy
        self.references, self.configured = [], []

    def reference(self, initial_state, epochs):
        self.references.append((len(self.trained_from), epochs))
        return self.reference_state, self.synthetic_accuracy

    def configure(self, **settings):
        self.configured.append(settings)

    @property
    def relaxed(self):
        return self.configured == [PAPER.augmented]


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


# The configured (trusted) regime of the default run: the paper's constant kappa, statistics mixed like the
# weights, no evaluation step, the augmented model uncapped and unfiltered.
PAPER = Regime(adaptive=None, bn_stats="mixed", fraction_evaluate=0.0,
               augmented=dict(max_steps=None, filter=None, steps_follow_trust=False))


def checked_genfl(augmenter, rounds, min_transfer=0.8, trusted=PAPER, **kwargs):
    """GenFL as server_app builds it with the check: started with generator_check.on_fail's cautious settings
    (``kwargs``: adaptive kappa, ...), ``trusted`` the configured ones a generator that passes switches to."""
    strategy = adaptive_genfl(augmenter, rounds, **kwargs)
    strategy.augmented.check = GeneratorCheck(epochs=2, fraction=1.0, min_transfer=min_transfer)
    strategy.augmented.trusted = trusted
    return strategy


def good_at(w):  # the synthetic-only model scores by how close it is to the real optimum
    return 0.95 if np.allclose(w, TARGET) else 0.4


@pytest.mark.parametrize("reference, trusted", [(TARGET, True), ([-20.0, 40.0], False)])
def test_the_check_runs_before_round_1_and_decides_the_regime(reference, trusted):
    grid = LocalGrid({i: accuracy_node([5, 5, 5], i, good_at) for i in range(3)})
    augmenter = CheckedAugmenter(_state([-20.0, 40.0]), _state(reference))
    strategy = checked_genfl(augmenter, rounds=3, bn_stats="reestimate")
    _start(strategy, grid, 3)
    assert strategy.augmented.trusted is None  # decided for the rest of the run
    kinds = [m.metadata.message_type for m in grid.sent]
    first_train = kinds.index("train")
    assert kinds[first_train - 3:first_train] == ["query.kappa_probe"] * 3  # every node, before any training
    assert augmenter.references == [(0, 2)]  # once, before the first augmented model, with the configured epochs
    result = strategy.generator_check
    assert result["nodes"] == 3 and result["real_accuracy"] == (0.95 if trusted else 0.4) and result["trusted"] is trusted
    assert result["settings"] == ("as configured" if trusted else "on_fail")
    rows = [strategy.round_stats[r] for r in (1, 2, 3)]
    assert augmenter.relaxed is trusted
    if trusted:  # as configured (the paper's GenFL): constant kappa, no probe, no BatchNorm query, no evaluation
        assert [r.kappa_aug for r in rows] == [0.3, 0.3, 0.3] and all(r.kappa_probe is None for r in rows)
        assert "query.bn_statistics" not in kinds and "evaluate" not in kinds and strategy.regime.bn_stats == "mixed"
        assert augmenter.trust == [None, None, None]
    else:  # on_fail's adaptive policy turns the harmful augmented model down, statistics re-estimated
        assert [r.kappa_aug for r in rows] == [0.3, 0.15, 0.075] and kinds.count("query.bn_statistics") == 9


def test_a_trusted_generator_switches_to_the_configured_regime_whatever_it_is():
    """The configured regime may itself be adaptive (the user's own policy): a trusted generator gets it, with the
    user's parameters, not on_fail's; its kappa starts where the run started."""
    grid = LocalGrid({i: accuracy_node([5, 5, 5], i, good_at) for i in range(3)})
    own = AdaptiveKappa(0.3, (0.0, 0.3), 1.0, 0.0, 0.3)  # step 1.0: straight to the best candidate
    mine = Regime(adaptive=own, bn_stats="clients", fraction_evaluate=1.0,
                  augmented=dict(max_steps=7, filter=None, steps_follow_trust=False))
    augmenter = CheckedAugmenter(_state([-20.0, 40.0]), _state(TARGET))
    strategy = checked_genfl(augmenter, rounds=2, trusted=mine, bn_stats="reestimate")
    _start(strategy, grid, 2)
    assert strategy.generator_check["trusted"] is True and strategy.adaptive is own and strategy.regime.bn_stats == "clients"
    assert augmenter.configured == [mine.augmented]
    kinds = [m.metadata.message_type for m in grid.sent]
    assert "query.bn_statistics" not in kinds and kinds.count("evaluate") == 6  # the user's probe, every node
    assert [strategy.round_stats[r].kappa_aug for r in (1, 2)] == [0.3, 0.0]  # the harmful model: straight down


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
def test_without_on_fail_the_check_only_reports(reference, caplog):
    from test_genfl_strategy import genfl

    grid = LocalGrid({i: accuracy_node([5, 5, 5], i, good_at) for i in range(2)})
    augmenter = CheckedAugmenter(_state([-20.0, 40.0]), _state(reference))
    strategy = genfl(0.7, 0.3, augmenter=augmenter, rounds=2)  # no trusted regime: nothing to switch between
    strategy.augmented.check = CHECK
    with caplog.at_level("INFO", logger="flwr"):
        _start(strategy, grid, 2)
    trusted = strategy.generator_check["trusted"]
    assert trusted is (reference is TARGET) and augmenter.references == [(0, 2)] and augmenter.configured == []
    assert strategy.generator_check["settings"].startswith("as configured")
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
    trainer.configure(max_steps=None, filter=None, steps_follow_trust=False)  # trusted, the paper's: every batch
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
    on_fail = {"mix": {"kappa_policy": "adaptive", "max_rise": 0.05}, "augmented": {"filter": {"mode": "confidence"}}}
    current = {"mix": {"kappa_policy": "adaptive"},
               "generator_check": {"enabled": False, "epochs": 3, "fraction": 1.0, "min_transfer": 0.8, "on_fail": on_fail}}
    assert _differences(saved, current) == []  # off: nothing inside it (on_fail's nested settings included) counts
    current["generator_check"]["enabled"] = True  # switched on: a different run, named
    assert _differences(saved, current)[:4] == ["generator_check.enabled", "generator_check.epochs",
                                                "generator_check.fraction", "generator_check.min_transfer"]


@pytest.mark.parametrize("saved_check", [None, {"enabled": False, "epochs": 3, "fraction": 1.0, "min_transfer": 0.8}])
def test_resuming_a_checkpoint_from_before_the_check_was_on_by_default_says_how(tmp_path, saved_check):
    """A run started without the check (before it existed, or before it was on by default) is refused with the
    one override that resumes it as it ran; with that override it resumes."""
    from server_app import checkpoint

    saved = {"seed": 0, **({"generator_check": saved_check} if saved_check else {})}
    checkpoint.save(tmp_path, server_round=1, arrays={}, strategy={}, rounds=[], config=saved)
    now = {"seed": 0, "generator_check": {"enabled": True, "epochs": 3, "fraction": 1.0, "min_transfer": 0.8,
                                          "on_fail": {"mix": {"max_rise": 0.05}}}}
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.load(tmp_path, now)
    assert str(err.value).endswith(f"in generator_check (on now, off in the checkpoint); resume as it ran with "
                                   f"genfl-run --resume {tmp_path} generator_check.enabled=false")
    now["generator_check"]["enabled"] = False
    assert checkpoint.load(tmp_path, now)["round"] == 1
    now.update(seed=1, generator_check={**now["generator_check"], "enabled": True})  # another difference too: no hint
    with pytest.raises(checkpoint.CheckpointError, match="in seed, generator_check .*original settings"):
        checkpoint.load(tmp_path, now)


# -- the default: the check on, generator_check.on_fail's settings for a generator below the line ------------
def test_the_default_run_starts_cautious_and_a_trusted_generator_switches_to_the_configured_settings(make_config):
    from server_app.build import regime
    from server_app.config import on_fail_config

    cfg = make_config()
    assert cfg.generator_check.enabled is True and cfg.mix.kappa_policy == "constant"  # paper defaults, check on
    start = on_fail_config(cfg)
    assert (start.mix.kappa_policy, start.mix.probe_fraction, start.mix.max_rise, start.mix.bn_stats) == (
        "adaptive", 1.0, 0.05, "reestimate")
    assert start.augmented.max_steps == cfg.client.max_steps == 10 and start.augmented.filter.mode == "confidence"
    cautious, trusted = regime(start), regime(cfg)
    assert cautious.adaptive is not None and cautious.adaptive.max_rise == 0.05 and cautious.fraction_evaluate == 1.0
    assert trusted == Regime(adaptive=None, bn_stats="mixed", bn_fraction=1.0, choose="next_round", probe_fraction=0.5,
                             fraction_evaluate=0.0, augmented=dict(max_steps=None, filter=trusted.augmented["filter"],
                                                                   steps_follow_trust=False))
    assert not trusted.augmented["filter"].active
    assert on_fail_config(make_config("client.max_steps=null")).augmented.max_steps is None  # follows the clients


@pytest.mark.parametrize("overrides, why", [
    (["strategy=aigc_only"], "strategy=aigc_only (kappa_aug 1.0) mixes no client part"),
    (["mix.kappa_policy=linear", "mix.kappa_aug_final=0.1"], "mix.kappa_policy=linear fixes kappa_aug's course"),
    (["generator_check.on_fail=null"], "generator_check.on_fail is null"),
    (["generator_check.enabled=false"], "generator_check.enabled is false"),
    (["+experiment=paper_cifar10"], "generator_check.on_fail is null"),  # the method as published: it only reports
])
def test_where_on_fail_does_not_apply_the_check_only_reports(make_config, overrides, why):
    from server_app.build import on_fail_problem
    from server_app.config import on_fail_config

    cfg = make_config(*overrides)
    assert on_fail_config(cfg) is None and why in on_fail_problem(cfg)


def test_with_groupnorm_on_fail_keeps_the_configured_statistics(make_config):
    from server_app.config import on_fail_config

    start = on_fail_config(make_config("model.norm=group"))  # no running statistics: nothing to re-estimate
    assert start.mix.bn_stats == "mixed" and start.mix.kappa_policy == "adaptive"


@pytest.mark.parametrize("overrides, message", [
    (["+generator_check.on_fail.client.lr=0.1"], "generator_check.on_fail.client.lr: not a setting the check can switch"),
    (["+generator_check.on_fail.mix.stepp=1"], "generator_check.on_fail.mix.stepp: no such setting"),
    (["generator_check.on_fail.mix.max_rise=2"], "generator_check.on_fail: mix.max_rise: must be null or a number"),
    (["generator_check.on_fail.augmented.filter.mode=sharp"], "generator_check.on_fail: augmented.filter.mode"),
    (["generator_check.on_fail=5"], "generator_check.on_fail: must be a mapping of settings or null"),
])
def test_bad_on_fail_settings_are_one_line_config_errors(make_config, overrides, message):
    from server_app.config import ConfigError

    with pytest.raises(ConfigError) as err:
        make_config(*overrides)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_resume_takes_the_runs_own_overrides_then_the_ones_given(tmp_path):
    import json

    from genfl_cli.run import resumed_command
    from server_app.config import ConfigError, load_config
    from server_app.results import RUN_CONFIG

    (tmp_path / RUN_CONFIG).write_text(f"overrides = {json.dumps(json.dumps(['seed=3', 'output.resume=false']))}\n")
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "latest.pkl").write_bytes(b"")
    overrides = resumed_command(["--resume", str(tmp_path), "generator_check.enabled=false"])
    assert overrides == ["seed=3", f"output.dir='{tmp_path}'", "output.resume=true", "generator_check.enabled=false"]
    cfg = load_config(overrides)
    assert cfg.seed == 3 and cfg.output.resume is True and cfg.generator_check.enabled is False
    for bad in (["--resume"], ["--resume", "seed=1"]):
        with pytest.raises(ConfigError, match="usage: genfl-run --resume <results folder> \\[key=value"):
            resumed_command(bad)
