"""Adaptive kappa and BatchNorm statistics under Eq. (1) (issue 16 items 1 and 2).

The policy and the arithmetic by hand; the strategy through `GenFL.start` on the in-memory Grid with
nodes that score the candidate mixes with the very function the ClientApp uses (genfl_protocol.mixing);
the ClientApp's probe and BatchNorm handlers with real models and data (tests/test_client_app.py
style); the real simulation is in tests/test_end_to_end.py (slow).
"""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from conf_defaults import reliability
from local_grid import LocalGrid
from strategy.generator_check import Regime
from strategy.genfl import GenFL
from strategy.kappa import AdaptiveKappa, KappaError, KappaSchedule
from test_genfl_strategy import FixedAugmenter, _numpy, _record, _state, genfl
from genfl_protocol.mixing import combine_bn_statistics, eq1


# -- the policy ----------------------------------------------------------------------------------
def test_kappa_moves_a_step_toward_the_best_candidate_and_stays_in_bounds():
    policy = AdaptiveKappa(current=0.3, candidates=(0.0, 0.1, 0.3, 0.5), step=0.5, low=0.0, high=0.4)
    assert policy.choose({0.0: 1.0, 0.1: 0.5, 0.3: 0.9, 0.5: 2.0}) == 0.1
    assert policy.current == pytest.approx(0.2)
    assert policy.choose({0.0: 0.1, 0.1: 0.5, 0.2: 0.9, 0.3: 0.9, 0.5: 2.0}) == 0.0
    assert policy.current == pytest.approx(0.1)
    policy.choose({0.0: 9.0, 0.1: 5.0, 0.3: 1.0, 0.5: 0.0})  # best 0.5: halfway is 0.3
    policy.choose({0.0: 9.0, 0.1: 5.0, 0.3: 1.0, 0.5: 0.0})  # halfway to 0.5 is 0.4 = high
    policy.choose({0.0: 9.0, 0.1: 5.0, 0.3: 1.0, 0.5: 0.0})
    assert policy.current == pytest.approx(0.4)
    assert policy.choose({0.0: 1.0, 0.1: 1.0, 0.3: 1.0, 0.5: 1.0}) == 0.0  # a tie goes to the smaller share
    assert policy.candidates_with() == [0.0, 0.1, 0.2, 0.3, 0.5]  # the current kappa is always scored too


def test_a_mix_must_beat_the_client_aggregate_by_more_than_the_nodes_disagreement():
    policy = AdaptiveKappa(current=0.2, candidates=(0.0, 0.2), step=1.0, low=0.0, high=0.5, evidence_z=1.0)
    # Node 1's classes are badly served by the aggregate, node 2's are not: the mean favours 0.2, the nodes disagree.
    means, errors = policy.federated([[3.0, 1.0], [0.2, 0.9]], [10, 10])
    assert means == pytest.approx([1.6, 0.95])
    assert errors[0] == 0.0 and errors[1] == pytest.approx(1.35)  # |(-2.0) - 0.7| / 2 spread, 2 nodes
    assert policy.choose(dict(zip((0.0, 0.2), means)), dict(zip((0.0, 0.2), errors))) == 0.0
    assert policy.current == 0.0
    # Every node agrees the mix helps: it is chosen.
    means, errors = policy.federated([[3.0, 1.0], [0.9, 0.2], [1.0, 0.5]], [10, 10, 10])
    assert policy.choose(dict(zip((0.0, 0.2), means)), dict(zip((0.0, 0.2), errors))) == 0.2
    # Without the burden of proof the plain mean decides.
    lenient = AdaptiveKappa(current=0.2, candidates=(0.0, 0.2), step=1.0, low=0.0, high=0.5, evidence_z=0.0)
    means, errors = lenient.federated([[3.0, 1.0], [0.2, 0.9]], [10, 10])
    assert lenient.choose(dict(zip((0.0, 0.2), means)), dict(zip((0.0, 0.2), errors))) == 0.2


def test_max_rise_caps_how_fast_kappa_climbs_but_not_how_fast_it_falls():
    policy = AdaptiveKappa(current=0.0, candidates=(0.0, 0.5), step=0.5, low=0.0, high=0.5, max_rise=0.05)
    helps, hurts = {0.0: 1.0, 0.5: 0.1}, {0.0: 0.1, 0.5: 1.0}
    climbed = []
    for _ in range(4):
        assert policy.choose(helps) == 0.5  # the best candidate is reported as such; the step is capped
        climbed.append(policy.current)
    assert climbed == pytest.approx([0.05, 0.1, 0.15, 0.2])  # uncapped: 0.25 after one round
    policy.choose(hurts)
    assert policy.current == pytest.approx(0.1)  # halfway down in one round, as without the cap
    uncapped = AdaptiveKappa(current=0.0, candidates=(0.0, 0.5), step=0.5, low=0.0, high=0.5)
    uncapped.choose(helps)
    assert uncapped.current == pytest.approx(0.25)


def test_kappa_falling_below_retire_below_retires_the_synthetic_data_for_good():
    policy = AdaptiveKappa(current=0.1, candidates=(0.0, 0.5), step=0.5, low=0.0, high=0.5, retire_below=0.03)
    hurts, helps = {0.0: 0.1, 0.5: 1.0}, {0.0: 1.0, 0.5: 0.1}
    policy.choose(hurts)
    assert (policy.current, policy.retired) == (0.05, False)
    policy.choose(hurts)
    assert (policy.current, policy.retired) == (0.0, True)  # 0.05 -> 0.025 < 0.03: retired, kappa 0
    assert policy.choose(helps) == 0.0 and policy.current == 0.0  # no evidence brings it back
    never = AdaptiveKappa(current=0.1, candidates=(0.0, 0.5), step=0.5, low=0.0, high=0.5)
    for _ in range(5):
        never.choose(hurts)
    assert not never.retired and never.current == pytest.approx(0.003125)


def test_a_retired_generator_costs_nothing_more_and_the_retirement_is_checkpointed():
    grid = LocalGrid({i: scoring_node([5, 5, 5], i, lambda g: _state(TARGET)) for i in range(3)})
    augmenter = FixedAugmenter(_state([-20.0, 40.0]))
    strategy = adaptive_genfl(augmenter, rounds=6)
    strategy.adaptive.retire_below = 0.05  # 0.3 -> 0.15 -> 0.075 -> 0.0375: retired after round 3
    _start(strategy, grid, 6)
    rows = [strategy.round_stats[r] for r in range(1, 7)]
    assert [r.kappa_aug for r in rows] == [0.3, 0.15, 0.075, 0.0, 0.0, 0.0]
    assert [r.synthetic_retired for r in rows] == [None, None, True, None, None, None]
    assert [r for r, _ in augmenter.trained_from] == [1, 2, 3]  # no augmented model after retirement
    assert [r.kappa_probe is not None for r in rows] == [True, True, True, False, False, False]  # nor a probe
    assert strategy.state_dict()["adaptive_retired"] is True
    resumed = adaptive_genfl(FixedAugmenter(_state([-20.0, 40.0])), rounds=8)
    resumed.load_state_dict(strategy.state_dict())
    assert resumed.adaptive.retired and resumed.adaptive.current == 0.0


@pytest.mark.parametrize("kwargs, message", [
    (dict(candidates=(0.1, 0.3)), "must contain 0.0"),
    (dict(candidates=()), "non-empty"),
    (dict(candidates=(0.0, 1.5)), "in [0, 1]"),
    (dict(step=0.0), "mix.step"),
    (dict(high=1.0), "high < 1"),
    (dict(low=0.4), "must lie in"),
    (dict(evidence_z=-1.0), "evidence_z"),
    (dict(max_rise=-0.1), "mix.max_rise"),
    (dict(retire_below=2.0), "mix.retire_below"),
])
def test_bad_policy_settings_are_named(kwargs, message):
    settings = dict(current=0.3, candidates=(0.0, 0.3), step=0.5, low=0.0, high=0.5) | kwargs
    with pytest.raises(KappaError, match=message.replace("[", r"\[").replace("]", r"\]")):
        AdaptiveKappa(**settings)


# -- the arithmetic --------------------------------------------------------------------------------
def test_eq1_takes_batchnorm_statistics_from_the_clients_unless_mixed():
    client, augmented = _state([1.0, 1.0], [2.0, 2.0], 3), _state([3.0, 5.0], [10.0, 10.0], 8)
    mixed = eq1(client, augmented, 0.25, "mixed")
    np.testing.assert_allclose(mixed["w"], [1.5, 2.0])
    np.testing.assert_allclose(mixed["bn.running_mean"], [4.0, 4.0])
    for mode in ("clients", "reestimate"):
        out = eq1(client, augmented, 0.25, mode)
        np.testing.assert_allclose(out["w"], [1.5, 2.0])
        np.testing.assert_array_equal(out["bn.running_mean"], client["bn.running_mean"])
        assert out["bn.num_batches_tracked"] == 3
    with pytest.raises(ValueError, match="bn_stats must be one of"):
        eq1(client, augmented, 0.25, "bogus")


@pytest.mark.parametrize("mode", ["mixed", "clients", "reestimate"])
def test_the_probes_line_of_mixes_is_eq1_up_to_float32_rounding(mode):
    from genfl_protocol.mixing import eq1_along

    rng = np.random.default_rng(0)
    client = {"w": rng.normal(size=(4, 3)).astype(np.float32), "bn.running_mean": rng.normal(size=3).astype(np.float32),
              "bn.num_batches_tracked": np.array(3)}
    augmented = {"w": rng.normal(size=(4, 3)).astype(np.float32), "bn.running_mean": rng.normal(size=3).astype(np.float32),
                 "bn.num_batches_tracked": np.array(8)}
    line = eq1_along(client, augmented, mode)
    for kappa in (0.0, 0.1, 0.3, 0.5, 1.0):
        expected, got = eq1(client, augmented, kappa, mode), line(kappa)
        assert list(got) == list(expected) and all(got[k].dtype == expected[k].dtype for k in got)
        for key in got:
            np.testing.assert_allclose(got[key], expected[key], rtol=1e-6, atol=1e-7)
    assert line(0.3)["bn.num_batches_tracked"] == (8 if mode == "mixed" else 3)  # the counter is not mixed
    with pytest.raises(ValueError, match="bn_stats must be one of"):
        eq1_along(client, augmented, "bogus")


def test_combined_statistics_are_those_of_the_union_of_the_nodes_data():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 2.0, (50, 3)), rng.normal(-2.0, 0.5, (150, 3))
    report = lambda x: ({"l.running_mean": x.mean(0).astype(np.float32), "l.running_var": x.var(0).astype(np.float32)}, len(x))
    combined = combine_bn_statistics([report(a), report(b)])
    union = np.concatenate([a, b])
    np.testing.assert_allclose(combined["l.running_mean"], union.mean(0), rtol=1e-5)
    np.testing.assert_allclose(combined["l.running_var"], union.var(0), rtol=1e-5)
    assert combined["l.running_var"].dtype == np.float32


def test_bn_statistics_of_a_real_resnet_are_its_first_layers_batch_statistics_and_leave_the_model_alone():
    from genfl_torch.bn import bn_statistics
    from genfl_torch.data import Split
    from genfl_torch.model import seeded_model

    model = seeded_model(0, num_classes=10, in_channels=1, mean=[0.3], std=[0.38])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8)
    stats = bn_statistics(model, Split(images, torch.zeros(40, dtype=torch.long)), torch.device("cpu"), batch_size=64)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # buffers restored
    name = next(k for k in stats if k.endswith("running_mean")).rsplit(".", 1)[0]
    layer = dict(model.named_modules())[name]
    captured = {}
    hook = layer.register_forward_pre_hook(lambda m, inputs: captured.setdefault("x", inputs[0].detach().clone()))
    model.train()
    with torch.no_grad():
        model(images.float() / 255)
    hook.remove()
    x = captured["x"].transpose(0, 1).reshape(layer.num_features, -1)
    np.testing.assert_allclose(stats[f"{name}.running_mean"], x.mean(1).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats[f"{name}.running_var"], x.var(1, unbiased=True).numpy(), rtol=1e-4, atol=1e-5)
    assert list(stats) == [k for k in model.state_dict() if k.endswith(("running_mean", "running_var"))]


# -- the strategy ------------------------------------------------------------------------------------
TARGET = np.array([3.0, 5.0], np.float32)  # the "real data" optimum the nodes' loss measures distance to


def scoring_node(histogram, partition, update, loss_of=lambda w: float(np.sum((w - TARGET) ** 2)), probe_reply=None):
    """A node that trains with ``update`` and scores mixes as the ClientApp does (genfl_protocol.mixing.eq1)."""
    def handle(msg):
        kind = msg.metadata.message_type
        if kind == "query.label_histogram":
            return Message(RecordDict({"h": MetricRecord({"label-histogram": histogram, "partition-id": partition})}), reply_to=msg)
        if kind == "train":
            state = update(_numpy(msg.content["arrays"]))
            return Message(RecordDict({"arrays": _record(state), "metrics": MetricRecord({"num-examples": sum(histogram)})}),
                           reply_to=msg)
        if kind == "evaluate":
            g = _numpy(msg.content["arrays"])
            metrics = {"eval-loss": loss_of(g["w"]), "eval-acc": 0.5, "num-examples": sum(histogram)}
            if "genfl-probe" in msg.content:
                probe = msg.content["genfl-probe"]
                client, augmented = _numpy(msg.content["genfl-client-part"]), _numpy(msg.content["genfl-augmented"])
                mixes = [eq1(client, augmented, k, probe["bn-stats"]) for k in probe["candidates"]]
                metrics["mix-loss"] = [loss_of(m["w"]) for m in mixes]
                metrics["mix-acc"] = [0.5 for _ in mixes]
                if probe_reply:
                    metrics.update(probe_reply)
            return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
        if kind == "query.kappa_probe":  # mix.choose=this_round: the same scores, as a query of their own
            probe = msg.content["genfl-probe"]
            client, augmented = _numpy(msg.content["genfl-client-part"]), _numpy(msg.content["genfl-augmented"])
            mixes = [eq1(client, augmented, k, probe["bn-stats"]) for k in probe["candidates"]]
            metrics = {"mix-loss": [loss_of(m["w"]) for m in mixes], "mix-acc": [0.5 for _ in mixes],
                       "num-examples": sum(histogram)}
            metrics.update(probe_reply or {})
            return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
        if kind == "query.bn_statistics":
            stats = {"bn.running_mean": np.array([float(partition), 1.0], np.float32)}
            return Message(RecordDict({"bn-statistics": ArrayRecord({k: _array(v) for k, v in stats.items()}),
                                      "metrics": MetricRecord({"num-examples": sum(histogram)})}), reply_to=msg)
        raise AssertionError(kind)
    return handle


def _array(v):
    from flwr.app import Array
    return Array(np.asarray(v))


def adaptive_genfl(augmenter, rounds, bn_stats="mixed", kappa_aug=0.3, high=0.5, choose="next_round", step=0.5,
                   probe_fraction=1.0):
    base = FedAvg(fraction_evaluate=1.0 if choose == "next_round" else 0.0, min_train_nodes=1, min_evaluate_nodes=1,
                  min_available_nodes=1)
    return GenFL(base, num_classes=3, kappa=KappaSchedule(kappa_aug, "constant", kappa_aug, rounds), augmenter=augmenter,
                 histogram_timeout=1, seed=0, reliability=reliability(max_relative_update=1e9, claim_slack=0),
                 regime=Regime(adaptive=AdaptiveKappa(kappa_aug, (0.0, 0.1, 0.2, 0.3, 0.5), step, 0.0, high),
                               bn_stats=bn_stats, choose=choose, probe_fraction=probe_fraction))


def _start(strategy, grid, rounds):
    return strategy.start(grid, _record(_state([0, 0])), num_rounds=rounds, timeout=1, train_config=ConfigRecord(),
                          evaluate_config=ConfigRecord())


def test_a_harmful_augmented_model_is_turned_down_toward_fedavg():
    grid = LocalGrid({i: scoring_node([5, 5, 5], i, lambda g: _state(TARGET)) for i in range(3)})  # clients reach the optimum
    strategy = adaptive_genfl(FixedAugmenter(_state([-20.0, 40.0])), rounds=4)  # far from it
    _start(strategy, grid, 4)
    rows = [strategy.round_stats[r] for r in (1, 2, 3, 4)]
    assert [r.kappa_aug for r in rows] == [0.3, 0.15, 0.075, 0.0375]
    assert all(r.kappa_best == 0.0 and r.probe_nodes == 3 for r in rows)
    assert rows[0].kappa_probe["0"] == pytest.approx(0.0) and rows[0].kappa_probe["0.5"] > rows[0].kappa_probe["0.1"]
    assert rows[-1].kappa_next == pytest.approx(0.01875)


def test_the_augmenter_is_told_how_far_the_evidence_trusts_the_synthetic_data():
    grid = LocalGrid({i: scoring_node([5, 5, 5], i, lambda g: _state(TARGET)) for i in range(3)})
    augmenter = FixedAugmenter(_state([-20.0, 40.0]))
    _start(adaptive_genfl(augmenter, rounds=4), grid, 4)
    assert augmenter.trust == pytest.approx([1.0, 0.5, 0.25, 0.125])  # kappa_aug over its start, 0.3
    constant = FixedAugmenter(_state([-20.0, 40.0]))
    _start(genfl(0.7, 0.3, augmenter=constant, rounds=2), LocalGrid({0: scoring_node([5, 5, 5], 0, lambda g: _state(TARGET))}), 2)
    assert constant.trust == [None, None]  # a constant kappa says nothing about trust


def test_a_helpful_augmented_model_is_turned_up_to_the_bound():
    # Clients do not move the model; the augmented model sits at the optimum: the best mix leans on it.
    grid = LocalGrid({i: scoring_node([5, 5, 5], i, lambda g: _state([0.0, 0.0])) for i in range(3)})
    strategy = adaptive_genfl(FixedAugmenter(_state(TARGET)), rounds=3, high=0.4)
    _start(strategy, grid, 3)
    assert [strategy.round_stats[r].kappa_aug for r in (1, 2, 3)] == [0.3, 0.4, 0.4]
    assert strategy.round_stats[1].kappa_best == 0.5


def test_the_augmented_model_keeps_training_at_kappa_zero_so_the_policy_can_turn_it_up_again():
    grid = LocalGrid({i: scoring_node([5, 5, 5], i, lambda g: _state(TARGET)) for i in range(2)})
    augmenter = FixedAugmenter(_state([-20.0, 40.0]))
    strategy = adaptive_genfl(augmenter, rounds=3, kappa_aug=0.0)
    _start(strategy, grid, 3)
    assert [r for r, _ in augmenter.trained_from] == [1, 2, 3]
    assert all(strategy.round_stats[r].kappa_probe is not None for r in (1, 2, 3))


def test_a_probe_reply_with_the_wrong_number_of_scores_is_excluded_from_the_evidence():
    grid = LocalGrid({0: scoring_node([5, 5, 5], 0, lambda g: _state(TARGET)),
                      1: scoring_node([5, 5, 5], 1, lambda g: _state(TARGET), probe_reply={"mix-loss": [0.0], "mix-acc": [0.0]})})
    strategy = adaptive_genfl(FixedAugmenter(_state([-20.0, 40.0])), rounds=1)
    _start(strategy, grid, 1)
    stats = strategy.round_stats[1]
    assert (stats.probe_nodes, stats.clients_evaluate_excluded) == (1, 1)


def test_this_round_the_probe_picks_the_kappa_of_the_very_model_it_scored():
    # Clients reach the optimum, the augmented model is far from it: round 1's model is already the client
    # aggregate (kappa 0), not the 0.3 mix that next_round would apply before any evidence.
    grid = LocalGrid({i: scoring_node([5, 5, 5], i, lambda g: _state(TARGET)) for i in range(4)})
    strategy = adaptive_genfl(FixedAugmenter(_state([-20.0, 40.0])), rounds=2, choose="this_round", step=1.0,
                              probe_fraction=0.5)
    out = _numpy(_start(strategy, grid, 2).arrays)
    np.testing.assert_allclose(out["w"], TARGET, rtol=1e-6)
    rows = [strategy.round_stats[r] for r in (1, 2)]
    assert [(r.kappa_aug, r.kappa_fl, r.kappa_best, r.probe_nodes) for r in rows] == [(0.0, 1.0, 0.0, 2)] * 2
    probes = [m for m in grid.sent if m.metadata.message_type == "query.kappa_probe"]
    assert len(probes) == 4 and not any(m.metadata.message_type == "evaluate" for m in grid.sent)
    assert len({m.metadata.dst_node_id for m in probes[:2]}) == 2  # half of the nodes, each once per round


def test_this_round_a_helpful_augmented_model_is_mixed_in_the_same_round():
    grid = LocalGrid({i: scoring_node([5, 5, 5], i, lambda g: _state([0.0, 0.0])) for i in range(3)})
    strategy = adaptive_genfl(FixedAugmenter(_state(TARGET)), rounds=1, choose="this_round", step=1.0, high=0.5)
    out = _numpy(_start(strategy, grid, 1).arrays)
    assert strategy.round_stats[1].kappa_aug == 0.5
    np.testing.assert_allclose(out["w"], 0.5 * TARGET, rtol=1e-6)


def test_this_round_without_usable_scores_the_previous_kappa_stays():
    bad = {"mix-loss": [0.0], "mix-acc": [0.0]}  # one score for five candidates: excluded
    grid = LocalGrid({i: scoring_node([5, 5, 5], i, lambda g: _state(TARGET), probe_reply=bad) for i in range(2)})
    strategy = adaptive_genfl(FixedAugmenter(_state([-20.0, 40.0])), rounds=1, choose="this_round", step=1.0)
    out = _numpy(_start(strategy, grid, 1).arrays)
    assert strategy.round_stats[1].kappa_aug == 0.3 and strategy.round_stats[1].probe_nodes is None
    np.testing.assert_allclose(out["w"], 0.7 * TARGET + 0.3 * np.array([-20.0, 40.0]), rtol=1e-5)


def test_the_nodes_that_score_the_probe_are_fixed_by_the_seed_not_by_the_global_random_state():
    """Flower samples evaluation nodes with the global `random`: unseeded, two runs of the same command
    asked different nodes for their evidence and moved kappa differently (found in the benchmark)."""
    import random

    from strategy.bases import innermost

    def run(global_seed):
        grid = LocalGrid({i: scoring_node([5, 5, 5], i, lambda g: _state(TARGET), loss_of=lambda w, i=i: float(
            np.sum((w - TARGET) ** 2)) * (1 + i)) for i in range(8)})
        strategy = adaptive_genfl(FixedAugmenter(_state([-20.0, 40.0])), rounds=4)
        innermost(strategy.base).fraction_evaluate = 0.5
        random.seed(global_seed)
        _start(strategy, grid, 4)
        asked = [m.metadata.dst_node_id for m in grid.sent_of_type("evaluate")]
        return asked, [strategy.round_stats[r].kappa_probe for r in range(1, 5)]

    (asked, probes), again = run(1), run(2)
    assert (asked, probes) == again
    assert len(asked) == 16 and len({tuple(asked[i:i + 4]) for i in range(0, 16, 4)}) > 1  # 4 of 8, drawn per round


def test_the_policy_state_is_checkpointed():
    grid = LocalGrid({i: scoring_node([5, 5, 5], i, lambda g: _state(TARGET)) for i in range(2)})
    strategy = adaptive_genfl(FixedAugmenter(_state([-20.0, 40.0])), rounds=2)
    _start(strategy, grid, 2)
    resumed = adaptive_genfl(FixedAugmenter(_state([-20.0, 40.0])), rounds=4)
    resumed.load_state_dict(strategy.state_dict())
    assert resumed.adaptive.current == strategy.adaptive.current == pytest.approx(0.075)


@pytest.mark.parametrize("mode, expected_mean", [
    ("mixed", 0.7 * np.array([0.0, 0.0]) + 0.3 * np.array([8.0, 8.0])),
    ("clients", np.array([0.0, 0.0])),
    # nodes 0, 1, 2 report means (0, 1), (1, 1), (2, 1) for 15 samples each: the union's mean
    ("reestimate", np.array([1.0, 1.0])),
])
def test_batchnorm_statistics_follow_the_configured_mode(mode, expected_mean):
    grid = LocalGrid({i: scoring_node([5, 5, 5], i, lambda g: _state(TARGET)) for i in range(3)})
    strategy = GenFL(FedAvg(fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1), num_classes=3,
                     kappa=KappaSchedule(0.3, "constant", 0.3, 1), augmenter=FixedAugmenter(_state([0, 0], [8.0, 8.0])),
                     histogram_timeout=1, seed=0, reliability=reliability(max_relative_update=1e9, claim_slack=0),
                     regime=Regime(adaptive=None, bn_stats=mode))
    out = _numpy(_start(strategy, grid, 1).arrays)
    np.testing.assert_allclose(out["bn.running_mean"], expected_mean, rtol=1e-6)
    np.testing.assert_allclose(out["w"], 0.7 * TARGET, rtol=1e-6)
    assert strategy.round_stats[1].bn_nodes == (3 if mode == "reestimate" else None)


def test_malformed_batchnorm_statistics_are_excluded_and_the_clients_kept_when_none_is_usable():
    def bad(msg):
        if msg.metadata.message_type == "query.bn_statistics":
            stats = {"bn.running_mean": np.array([np.nan, 1.0], np.float32)}
            return Message(RecordDict({"bn-statistics": ArrayRecord({k: _array(v) for k, v in stats.items()}),
                                      "metrics": MetricRecord({"num-examples": 15})}), reply_to=msg)
        return scoring_node([5, 5, 5], 0, lambda g: _state(TARGET, [4.0, 4.0]))(msg)

    strategy = GenFL(FedAvg(fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1), num_classes=3,
                     kappa=KappaSchedule(0.3, "constant", 0.3, 1), augmenter=FixedAugmenter(_state([0, 0], [8.0, 8.0])),
                     histogram_timeout=1, seed=0, reliability=reliability(max_relative_update=1e9, claim_slack=0),
                     regime=Regime(adaptive=None, bn_stats="reestimate"))
    out = _numpy(_start(strategy, LocalGrid({0: bad}), 1).arrays)
    np.testing.assert_allclose(out["bn.running_mean"], [4.0, 4.0])
    assert strategy.round_stats[1].bn_nodes == 0


# -- the ClientApp's handlers, real models and data ------------------------------------------------
def test_the_clientapp_scores_every_candidate_mix_on_its_own_data():
    from client_app.app import app
    from server_app.build import client_config
    from server_app.config import load_config
    from test_client_app import _context, _message
    from genfl_torch.model import seeded_model
    from genfl_torch.partition import client_partition
    from genfl_torch.train import evaluate, load_numpy_state, state_to_numpy
    from genfl_protocol.contract import ClientConfig

    cfg = load_config(["federation.num_clients=4"])
    ds = cfg.dataset
    spec = dict(num_classes=ds.num_classes, in_channels=ds.channels, mean=list(ds.mean), std=list(ds.std))
    client, augmented = state_to_numpy(seeded_model(1, **spec)), state_to_numpy(seeded_model(2, **spec))
    config = client_config(cfg)
    content = RecordDict({"arrays": ArrayRecord({k: _array(v) for k, v in client.items()}), "config": config,
                          "genfl-client-part": ArrayRecord({k: _array(v) for k, v in client.items()}),
                          "genfl-augmented": ArrayRecord({k: _array(v) for k, v in augmented.items()}),
                          "genfl-probe": ConfigRecord({"candidates": [0.0, 0.5], "bn-stats": "clients"})})
    metrics = app(_message("evaluate", content), _context()).content["metrics"]
    data = client_partition(ClientConfig.from_record(config).data_spec(), 2, 4)
    model = seeded_model(0, **spec)
    expected = []
    for k in (0.0, 0.5):
        load_numpy_state(model, eq1(client, augmented, k, "clients"))
        expected.append(evaluate(model, data, torch.device("cpu"), 512, True)[0])
    assert metrics["mix-loss"] == pytest.approx(expected)
    assert metrics["mix-loss"][0] == pytest.approx(metrics["eval-loss"])  # kappa 0 is the client part itself
    assert len(metrics["mix-acc"]) == 2 and all(0 <= a <= 1 for a in metrics["mix-acc"])
    del content["arrays"]  # mix.choose=this_round: the probe is a query of its own, with the two parts only
    query = app(_message("query.kappa_probe", content), _context()).content["metrics"]
    assert query["mix-loss"] == pytest.approx(expected) and query["num-examples"] == len(data)
    assert "eval-loss" not in query


def test_the_clientapp_reports_batchnorm_statistics_of_the_received_model():
    from client_app.app import app
    from server_app.build import client_config
    from server_app.config import load_config
    from test_client_app import _context, _message
    from genfl_torch.model import seeded_model
    from genfl_torch.train import state_to_numpy

    cfg = load_config(["federation.num_clients=4"])
    ds = cfg.dataset
    state = state_to_numpy(seeded_model(1, num_classes=ds.num_classes, in_channels=ds.channels, mean=list(ds.mean),
                                        std=list(ds.std)))
    reply = app(_message("query.bn_statistics", RecordDict({"arrays": ArrayRecord({k: _array(v) for k, v in state.items()}),
                                                           "config": client_config(cfg)})), _context())
    record = reply.content["bn-statistics"]
    assert list(record.keys()) == [k for k in state if k.endswith(("running_mean", "running_var"))]
    means = dict(zip(record.keys(), record.to_numpy_ndarrays()))
    assert all(np.isfinite(v).all() for v in means.values())
    assert not np.allclose(means[next(iter(means))], state[next(iter(means))])  # recomputed, not echoed
    assert reply.content["metrics"]["num-examples"] > 0


# -- config ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    (["mix.kappa_policy=bogus"], "mix.kappa_policy: must be one of constant, linear, cosine, adaptive"),
    (["mix.bn_stats=bogus"], "mix.bn_stats: must be one of mixed, clients, reestimate"),
    (["mix.kappa_policy=adaptive", "strategy.kappa_aug=0"], "use it with strategy=genfl"),
    (["mix.kappa_policy=adaptive", "strategy=base_only"], "strategy=base_only keeps kappa_aug at 0"),
    (["mix.kappa_policy=adaptive", "mix.candidates=[0.1,0.3]"], "must contain 0.0"),
    (["mix.kappa_policy=adaptive", "mix.kappa_aug_final=0.1"], "mix.kappa_aug_final: is where mix.kappa_policy=linear"),
    (["mix.bn_stats=reestimate", "model.norm=group"], "reestimate needs BatchNorm"),
    (["mix.probe_fraction=0"], "mix.probe_fraction: must be in (0, 1]"),
    (["mix.choose=later"], "mix.choose: must be one of next_round, this_round"),
    (["mix.kappa_policy=adaptive", "mix.max_rise=2"], "mix.max_rise: must be null or a number in [0, 1]"),
    (["mix.kappa_policy=adaptive", "mix.max_rise=fast"], "mix.max_rise: must be null or a number in [0, 1]"),
    (["mix.kappa_policy=adaptive", "mix.retire_below=-1"], "mix.retire_below: must be null or a number in [0, 1]"),
    (["augmented.max_steps=0"], "augmented.max_steps: must be null"),
    (["augmented.freeze_bn=maybe"], "augmented.freeze_bn: must be true or false"),
    (["augmented.steps_follow_kappa=true", "augmented.max_steps=10"], "augmented.steps_follow_kappa: needs mix.kappa_policy=adaptive"),
    (["augmented.steps_follow_kappa=true", "mix.kappa_policy=adaptive"], "augmented.steps_follow_kappa: needs"),
    (["augmented.filter.mode=confidence", "augmented.filter.keep_ratio=1.5"], "augmented.filter.keep_ratio"),
])
def test_bad_mix_settings_are_one_line_config_errors(make_config, overrides, message):
    from server_app.config import ConfigError

    with pytest.raises(ConfigError) as err:
        make_config(*overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


# -- round-aware augmentation (item 4) -------------------------------------------------------------------
def test_round_aware_weights_follow_the_classes_this_rounds_nodes_lack():
    from strategy.round_aware import lack_weights

    grid = LocalGrid({0: scoring_node([10, 0, 0], 0, lambda g: _state(TARGET)),
                      1: scoring_node([0, 10, 0], 1, lambda g: _state(TARGET)),
                      2: scoring_node([0, 0, 10], 2, lambda g: _state(TARGET)),
                      3: scoring_node([0, 10, 0], 3, lambda g: _state(TARGET))})
    augmenter = FixedAugmenter(_state([0, 0]))
    base = FedAvg(fraction_train=0.5, fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1)
    strategy = GenFL(base, num_classes=3, kappa=KappaSchedule(0.3, "constant", 0.3, 3), augmenter=augmenter,
                     histogram_timeout=1, seed=0, reliability=reliability(max_relative_update=1e9, claim_slack=0),
                     round_aware_floor=0.25)
    _start(strategy, grid, 3)
    histograms = {0: [10, 0, 0], 1: [0, 10, 0], 2: [0, 0, 10], 3: [0, 10, 0]}
    sent = [m.metadata.dst_node_id for m in grid.sent if m.metadata.message_type == "train"]
    trained = [sent[0:2], sent[2:4], sent[4:6]]  # two of the four nodes per round
    for weights, nodes in zip(augmenter.class_weights, trained):
        expected = lack_weights(np.sum([histograms[n] for n in nodes], axis=0).tolist(), floor=0.25)
        assert weights == pytest.approx(expected)
        lacking = [c for c in range(3) if all(histograms[n][c] == 0 for n in nodes)]
        assert all(weights[c] > 1 / 3 for c in lacking)
    assert len({tuple(w) for w in augmenter.class_weights}) > 1  # a different sample, other weights


def test_a_frozen_batchnorm_trains_the_weights_and_keeps_the_received_statistics():
    from genfl_torch.data import Split
    from genfl_torch.model import seeded_model
    from genfl_torch.train import TrainSettings, state_to_numpy, train

    data = Split(torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8), torch.randint(0, 10, (32,)))
    settings = dict(epochs=1, batch_size=16, lr=0.05, momentum=0.0, weight_decay=0.0, augment=False, proximal_mu=0.0,
                    max_steps=None, fast_cuda=False)
    for freeze in (True, False):
        model = seeded_model(0, num_classes=10, in_channels=1, mean=[0.3], std=[0.38])
        before = state_to_numpy(model)
        train(model, data, TrainSettings(**settings, freeze_bn=freeze), torch.device("cpu"), seed=0)
        after = state_to_numpy(model)
        buffers = [k for k in before if k.endswith(("running_mean", "running_var"))]
        assert any(not np.array_equal(before[k], after[k]) for k in before if k.endswith("conv1.weight"))
        assert all(np.array_equal(before[k], after[k]) for k in buffers) == freeze


def test_one_lying_node_cannot_push_kappa_up_past_the_burden_of_proof():
    # Three honest nodes: the augmented model hurts. A fourth claims every mix is far better than kappa 0.
    nodes = {i: scoring_node([5, 5, 5], i, lambda g: _state(TARGET)) for i in range(3)}
    nodes[3] = scoring_node([5, 5, 5], 3, lambda g: _state(TARGET),
                            probe_reply={"mix-loss": [100.0, 0.0, 0.0, 0.0, 0.0], "mix-acc": [0.0] * 5})
    strategy = adaptive_genfl(FixedAugmenter(_state([-20.0, 40.0])), rounds=2)
    strategy.adaptive.evidence_z = 1.0
    _start(strategy, LocalGrid(nodes), 2)
    assert strategy.round_stats[1].kappa_best == 0.0 and strategy.round_stats[1].probe_nodes == 4
    assert strategy.round_stats[2].kappa_aug == pytest.approx(0.15)  # still turned down
