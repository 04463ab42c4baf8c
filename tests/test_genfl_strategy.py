"""The GenFL strategy driven through `GenFL.start` on an in-memory Grid (tests/local_grid.py).

Nodes here answer with fixed NumPy models so every expected value can be computed by hand; the
augmenter is a fixed-state stand-in (tests/test_cache_and_augmented.py trains a real one, and
tests/test_overlap.py runs the real ClientApp and augmenter through the same Grid).
"""

import pickle
from concurrent.futures import Future

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedMedian, FedProx

from local_grid import LocalGrid
from conf_defaults import reliability
from strategy.genfl import GenFL, RoundFailedError
from strategy.histograms import NoHistogramsError
from strategy.kappa import KappaSchedule

KEYS = ("w", "bn.running_mean", "bn.num_batches_tracked")


def _state(w, mean=(0.0, 0.0), count=1):
    return {"w": np.asarray(w, np.float32), "bn.running_mean": np.asarray(mean, np.float32),
            "bn.num_batches_tracked": np.asarray(count, np.int64)}


def _record(state):
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in state.items()})


def _numpy(record):
    return dict(zip(record.keys(), record.to_numpy_ndarrays()))


def node(histogram, partition, update=None, num_examples=None, train_error=None, evaluation=None):
    """A node that reports ``histogram``, answers training with ``update(global_state)`` and
    evaluation with the RecordDict ``evaluation(global_state)`` returns."""
    def handle(msg):
        kind = msg.metadata.message_type
        if kind == "query.label_histogram":
            record = {"label-histogram": histogram}
            if partition is not None:
                record["partition-id"] = partition
            return Message(RecordDict({"h": MetricRecord(record)}), reply_to=msg)
        if kind == "evaluate":
            return Message(evaluation(_numpy(msg.content["arrays"])), reply_to=msg)
        if kind == "train":
            if train_error:
                raise RuntimeError(train_error)
            state = update(_numpy(msg.content["arrays"]))
            n = sum(histogram) if num_examples is None else num_examples
            metrics = MetricRecord({"num-examples": n, "train-loss": float((partition or 0) + 1)})
            return Message(RecordDict({"arrays": _record(state), "metrics": metrics}), reply_to=msg)
        raise AssertionError(f"unexpected message {kind}")
    return handle


def fixed(state):
    return lambda _global: state


class FixedAugmenter:
    """Returns a fixed w_aug and records what it was given and when."""

    def __init__(self, state, grid=None):
        self.state, self.grid, self.trained_from, self.prepared, self.class_weights = state, grid, [], None, []
        self.trust = []

    def prepare(self, histogram, plan=None):
        self.prepared = (list(histogram), len(self.grid.sent) if self.grid else None)
        return {"plan": {0: 1}, "images_synthesized": 1, "generation_seconds": 0.0}

    def start(self, global_state, server_round, class_weights=None, trust=None):
        self.trained_from.append((server_round, {k: v.copy() for k, v in global_state.items()}))
        self.class_weights.append(class_weights)
        self.trust.append(trust)
        done = Future()
        done.set_result((self.state, {"augmented_test_accuracy": 0.5}))
        return done

    def close(self):
        pass


def genfl(kappa_fl=1.0, kappa_aug=0.0, augmenter=None, base=None, rounds=1, schedule="constant", final=None,
          first_round=1, **overrides):
    assert kappa_fl == pytest.approx(1 - kappa_aug)  # spelled out in the tests for readability
    kappa = KappaSchedule(kappa_aug, schedule, kappa_aug if final is None else final, rounds)
    overrides.setdefault("max_relative_update", 1e9)  # toy models jump far; the guard has its own test
    overrides.setdefault("claim_slack", 0)
    return GenFL(base or FedAvg(fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1), num_classes=3,
                 kappa=kappa, augmenter=augmenter, histogram_timeout=1, seed=0, reliability=reliability(**overrides),
                 first_round=first_round)


def run(strategy, grid, rounds=1, initial=None):
    result = strategy.start(grid, _record(initial or _state([0, 0])), num_rounds=rounds, timeout=1,
                            train_config=ConfigRecord({"lr": 0.1}))
    return _numpy(result.arrays) if len(result.arrays) else None


def test_eq1_mixes_the_client_average_and_the_augmented_model_including_bn_buffers():
    grid = LocalGrid({
        10: node([5, 5, 0], 0, fixed(_state([1, 2], [0, 4], 10))),    # rho = 10/40
        11: node([10, 10, 10], 1, fixed(_state([3, 6], [2, 0], 20))),  # rho = 30/40
    })
    augmenter = FixedAugmenter(_state([10, 20], [8, 8], 5))
    out = run(genfl(0.6, 0.4, augmenter), grid)
    client_w = 0.25 * np.array([1, 2]) + 0.75 * np.array([3, 6])
    client_mean = 0.25 * np.array([0, 4]) + 0.75 * np.array([2, 0])
    np.testing.assert_allclose(out["w"], 0.6 * client_w + 0.4 * np.array([10, 20]), rtol=1e-6)
    np.testing.assert_allclose(out["bn.running_mean"], 0.6 * client_mean + 0.4 * np.array([8, 8]), rtol=1e-6)
    assert out["bn.num_batches_tracked"].dtype == np.int64


def test_histograms_are_collected_and_the_augmenter_prepared_before_any_training_message():
    grid = LocalGrid({1: node([1, 2, 3], 0, fixed(_state([1, 1]))), 2: node([4, 0, 1], 1, fixed(_state([1, 1])))})
    augmenter = FixedAugmenter(_state([0, 0]), grid)
    strategy = genfl(0.5, 0.5, augmenter)
    run(strategy, grid)
    assert augmenter.prepared == ([5, 2, 4], 2)  # the global histogram, after exactly the two queries
    assert [m.metadata.message_type for m in grid.sent] == ["query.label_histogram"] * 2 + ["train"] * 2


def test_error_malformed_implausible_and_missing_histograms_are_excluded():
    def raises(msg):
        raise RuntimeError("disk on fire")
    grid = LocalGrid({
        1: node([1, 2, 3], 0, fixed(_state([1, 1]))),
        2: raises,
        3: node([1, 2], 2),                  # wrong length
        4: node([1, -2, 3], 3),              # negative
        5: node([10**15, 0, 0], 4),          # implausible total
        6: lambda msg: None,                 # no reply in time
    })
    strategy = genfl(max_samples_per_node=10**6)
    run(strategy, grid)
    assert strategy.survey.histograms == {1: [1, 2, 3]}
    assert strategy.global_histogram == [1, 2, 3]
    # Only the node with a valid histogram is trusted with training; the others are excluded.
    assert strategy.round_stats[1].clients_trained == 1


def test_a_run_where_every_histogram_is_rejected_stops_before_training():
    grid = LocalGrid({1: node([1, 2], 0), 2: node(["x", 1, 1], 1)})
    with pytest.raises(NoHistogramsError, match="none of the 2 node"):
        run(genfl(), grid)
    assert grid.sent_of_type("train") == []


def test_one_node_cannot_steer_the_plan_its_histogram_is_capped_at_a_multiple_of_the_median():
    grid = LocalGrid({i: node([10, 10, 10], i, fixed(_state([1, 1]))) for i in range(4)})
    grid.nodes[9] = node([0, 0, 100_000], 9, fixed(_state([1, 1])))
    augmenter = FixedAugmenter(_state([0, 0]), grid)
    run(genfl(0.5, 0.5, augmenter, node_cap_factor=2.0), grid)
    # Median total is 30; the liar counts for at most 60 samples, all of class 2.
    assert augmenter.prepared[0] == [40, 40, 40 + 60]


def test_aigc_only_sends_no_training_messages_and_uses_the_augmented_model():
    grid = LocalGrid({1: node([1, 1, 1], 0, fixed(_state([9, 9])))})
    out = run(genfl(0.0, 1.0, FixedAugmenter(_state([7, 8], [1, 2], 3))), grid, rounds=2)
    assert grid.sent_of_type("train") == []
    np.testing.assert_allclose(out["w"], [7, 8])


def test_scheduled_kappas_change_the_mix_round_by_round():
    grid = LocalGrid({1: node([1, 1, 1], 0, fixed(_state([0, 0])))})
    augmenter = FixedAugmenter(_state([10, 10]))
    strategy = genfl(0.5, 0.5, augmenter, rounds=3, schedule="linear", final=0.0)
    out = run(strategy, grid, rounds=3)
    assert [strategy.round_stats[r].kappa_aug for r in (1, 2, 3)] == [0.5, 0.25, 0.0]
    # Round 3 has kappa_aug = 0: the client model alone; round 2's global model fed the augmenter.
    np.testing.assert_allclose(out["w"], [0, 0])
    np.testing.assert_allclose(augmenter.trained_from[1][1]["w"], [5, 5])
    assert [r for r, _ in augmenter.trained_from] == [1, 2]


def test_error_replies_count_as_failed_and_the_others_are_averaged():
    grid = LocalGrid({
        1: node([1, 1, 1], 0, fixed(_state([2, 2]))),
        2: node([1, 1, 1], 1, train_error="CUDA out of memory"),
    })
    strategy = genfl()
    out = run(strategy, grid)
    np.testing.assert_allclose(out["w"], [2, 2])
    assert (strategy.round_stats[1].clients_trained, strategy.round_stats[1].clients_failed) == (1, 1)


def test_malformed_replies_are_excluded_with_their_reason():
    grid = LocalGrid({
        1: node([5, 0, 0], 0, fixed(_state([2, 2]))),
        2: node([5, 0, 0], 1, fixed(_state([1, 2, 3]))),        # wrong shape
        3: node([5, 0, 0], 2, fixed(_state([np.nan, 1]))),      # NaN
        4: node([5, 0, 0], 3, fixed(_state([9, 9])), num_examples=0),
        5: node([5, 0, 0], 4, fixed(_state([9, 9])), num_examples=10**12),  # more than it declared
    })
    strategy = genfl()
    out = run(strategy, grid)
    np.testing.assert_allclose(out["w"], [2, 2])
    assert strategy.round_stats[1].clients_excluded == 4


def test_mixing_does_not_depend_on_the_order_replies_arrive_in():
    rng = np.random.default_rng(0)
    states = [_state(rng.normal(size=2) * 10.0 ** rng.integers(-3, 3), rng.normal(size=2)) for _ in range(7)]
    nodes = {100 - i: node([i + 1, 2, 3], i, fixed(states[i])) for i in range(7)}
    forward = run(genfl(), LocalGrid(dict(nodes)))
    backward = run(genfl(), LocalGrid(dict(nodes), reply_order=lambda replies: replies[::-1]))
    for key in KEYS:
        np.testing.assert_array_equal(forward[key], backward[key])


def test_an_exploding_aggregate_is_rejected_and_the_run_stops_naming_the_cause():
    grid = LocalGrid({
        1: node([5, 5, 5], 0, lambda g: _state(g["w"] + 0.1)),
        2: node([5, 5, 5], 1, lambda g: _state((g["w"] + 0.1) * 1000)),  # honest count, scaled weights
    })
    strategy = genfl(rounds=3, max_relative_update=5.0, max_consecutive_failed_rounds=2)
    with pytest.raises(RoundFailedError, match="2 consecutive rounds failed.*rejected.*limit reliability.max_relative_update"):
        run(strategy, grid, rounds=3, initial=_state([1.0, 1.0]))
    assert strategy.round_stats[1].round_accepted is False
    assert strategy.round_stats[1].update_ratio > 100


def test_the_round_that_stops_the_run_is_not_checkpointed_so_resuming_retries_it():
    grid = LocalGrid({1: node([5, 5, 5], 0, lambda g: _state(g["w"] * 1000))})
    checkpointed = []
    strategy = genfl(rounds=3, max_relative_update=5.0, max_consecutive_failed_rounds=2)
    with pytest.raises(RoundFailedError):
        strategy.start(grid, _record(_state([1.0, 1.0])), num_rounds=3, timeout=1, train_config=ConfigRecord(),
                       evaluate_fn=lambda r, arrays: checkpointed.append((r, strategy.stopping)))
    # The ServerApp records every round's metrics there and checkpoints only rounds that do not stop the run.
    assert checkpointed == [(0, False), (1, False), (2, True)]  # round 1 failed but the run went on; round 2 stopped it


def test_a_robust_base_keeps_the_model_healthy_against_scaled_weights():
    honest = lambda g: _state(g["w"] + 0.1)
    nodes = {i: node([5, 5, 5], i, honest) for i in range(4)}
    nodes[9] = node([5, 5, 5], 9, lambda g: _state((g["w"] + 0.1) * 1000))
    base = FedMedian(fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1)
    strategy = genfl(base=base, rounds=3)
    out = run(strategy, LocalGrid(nodes), rounds=3, initial=_state([1.0, 1.0]))
    np.testing.assert_allclose(out["w"], [1.3, 1.3], rtol=1e-6)
    assert all(strategy.round_stats[r].round_accepted for r in (1, 2, 3))


def test_a_transient_failure_keeps_the_old_model_and_the_run_goes_on():
    calls = {"n": 0}

    def flaky(global_state):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("node rebooted")
        return _state(global_state["w"] + 1)

    strategy = genfl(rounds=3, max_consecutive_failed_rounds=2)
    out = run(strategy, LocalGrid({1: node([1, 1, 1], 0, flaky)}), rounds=3, initial=_state([0.0, 0.0]))
    np.testing.assert_allclose(out["w"], [2, 2])  # round 1 failed, rounds 2 and 3 added 1 each
    assert [strategy.round_stats[r].round_accepted for r in (1, 2, 3)] == [False, True, True]


def test_the_base_strategys_config_reaches_the_clients():
    seen = []

    def update(global_state):
        return _state(global_state["w"])

    def spy(msg):
        if msg.metadata.message_type == "train":
            seen.append(dict(msg.content["config"]))
        return node([1, 1, 1], 0, update)(msg)

    base = FedProx(fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1, proximal_mu=0.25)
    run(genfl(base=base), LocalGrid({1: spy}))
    assert seen[0]["proximal-mu"] == 0.25 and seen[0]["lr"] == 0.1 and seen[0]["server-round"] == 1


def test_partial_participation_samples_the_same_nodes_on_every_rerun():
    def sampled(seed_nodes):
        nodes = {nid: node([1, 1, 1], p, fixed(_state([1, 1]))) for p, nid in enumerate(seed_nodes)}
        grid = LocalGrid(nodes)
        base = FedAvg(fraction_train=0.3, fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1)
        run(genfl(base=base, rounds=3), grid, rounds=3)
        return [strategy_partitions for strategy_partitions in
                [[seed_nodes.index(m.metadata.dst_node_id) for m in grid.sent_of_type("train")]]][0]

    # Node ids differ between runs (SuperLinks assign them at random); partitions are what count.
    first = sampled([11, 52, 33, 74, 95, 16, 27, 88, 39, 40])
    second = sampled([901, 17, 455, 3, 78, 1000, 61, 62, 5, 8])
    assert first == second and len(first) == 9


def test_state_dict_round_trip_keeps_the_plan_and_the_base_strategys_learnt_state():
    from flwr.serverapp.strategy import FedAvgM

    grid = LocalGrid({1: node([1, 1, 1], 0, lambda g: _state(g["w"] + 1))})
    momentum = lambda: FedAvgM(fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1, server_momentum=0.5)
    first = genfl(0.5, 0.5, FixedAugmenter(_state([0, 0])), base=momentum(), rounds=2)
    run(first, grid, rounds=1)
    restored = genfl(0.5, 0.5, FixedAugmenter(_state([0, 0])), base=momentum(), rounds=2, first_round=2)
    restored.load_state_dict(pickle.loads(pickle.dumps(first.state_dict())))  # as the checkpoint stores it
    assert restored.augmented.plan == {0: 1}
    np.testing.assert_array_equal(restored.base.momentum_vector[0], first.base.momentum_vector[0])
    assert restored.round_stats[1].round_accepted is True


@pytest.mark.parametrize("name", ["fedadam", "fedavgm"])
def test_a_resumed_server_optimiser_ends_exactly_where_an_uninterrupted_one_does(name):
    from flwr.serverapp.strategy import FedAdam, FedAvgM

    def base():
        sampling = dict(fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1)
        return FedAdam(**sampling, eta=0.1) if name == "fedadam" else FedAvgM(**sampling, server_momentum=0.9)

    def nodes():
        return LocalGrid({i: node([1, 2, 3], i, lambda g, i=i: _state(g["w"] * 0.9 + i)) for i in range(3)})

    straight = run(genfl(base=base(), rounds=3), nodes(), rounds=3, initial=_state([1.0, 2.0]))
    first = genfl(base=base(), rounds=3)
    after_1 = first.start(nodes(), _record(_state([1.0, 2.0])), num_rounds=1, timeout=1, train_config=ConfigRecord())
    resumed = genfl(base=base(), rounds=3, first_round=2)
    resumed.load_state_dict(pickle.loads(pickle.dumps(first.state_dict())))
    out = resumed.start(nodes(), after_1.arrays, num_rounds=3, timeout=1, train_config=ConfigRecord())
    for key in KEYS:
        np.testing.assert_array_equal(_numpy(out.arrays)[key], straight[key])


def test_synthetic_kappas_without_an_augmenter_are_rejected_at_construction():
    with pytest.raises(ValueError, match="augmenter"):
        genfl(0.5, 0.5, None)


def test_a_node_that_missed_the_deadline_sits_out_the_next_rounds():
    replies = {"slow": 0}

    def slow(msg):
        if msg.metadata.message_type == "train":
            replies["slow"] += 1
            return None  # never answers in time
        return node([1, 1, 1], 1)(msg)

    grid = LocalGrid({1: node([1, 1, 1], 0, fixed(_state([1, 1]))), 2: slow, 3: node([1, 1, 1], 2, fixed(_state([1, 1])))})
    strategy = genfl(rounds=4, straggler_cooldown_rounds=2)
    run(strategy, grid, rounds=4)
    assert replies["slow"] == 2  # rounds 1 and 4; rounds 2 and 3 went on without it
    assert [strategy.round_stats[r].clients_missing for r in (1, 2, 3, 4)] == [1, 0, 0, 1]


# -- evaluation replies are untrusted too (review item 1) ----------------------------------------------
def honest_evaluation(loss, n):
    return lambda _global: RecordDict({"metrics": MetricRecord({"eval-loss": loss, "eval-acc": 1 - loss, "num-examples": n})})


def test_malformed_nan_and_inflated_evaluation_replies_are_excluded_and_the_rest_averaged():
    two_records = lambda g: RecordDict({"a": MetricRecord({"eval-loss": 0.0, "num-examples": 5}),
                                        "b": MetricRecord({"eval-loss": 0.0, "num-examples": 5})})
    nan = lambda g: RecordDict({"metrics": MetricRecord({"eval-loss": float("nan"), "eval-acc": 0.5, "num-examples": 5})})
    extra_key = lambda g: RecordDict({"metrics": MetricRecord({"eval-loss": 0.0, "eval-acc": 1.0, "x": 1.0, "num-examples": 5})})
    with_model = lambda g: RecordDict({"arrays": _record(g), "metrics": MetricRecord({"eval-loss": 0.0, "eval-acc": 1.0, "num-examples": 5})})
    grid = LocalGrid({
        1: node([5, 5, 0], 0, fixed(_state([1, 1])), evaluation=honest_evaluation(0.2, 10)),
        2: node([5, 5, 20], 1, fixed(_state([1, 1])), evaluation=honest_evaluation(0.6, 30)),
        3: node([5, 0, 0], 2, fixed(_state([1, 1])), evaluation=two_records),
        4: node([5, 0, 0], 3, fixed(_state([1, 1])), evaluation=nan),
        5: node([5, 0, 0], 4, fixed(_state([1, 1])), evaluation=honest_evaluation(0.0, 10**12)),  # above its 5 samples
        6: node([5, 0, 0], 5, fixed(_state([1, 1])), evaluation=extra_key),
        7: node([5, 0, 0], 6, fixed(_state([1, 1])), evaluation=with_model),
    })
    base = FedAvg(fraction_evaluate=1.0, min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=1)
    strategy = genfl(base=base)
    result = strategy.start(grid, _record(_state([0, 0])), num_rounds=1, timeout=1, train_config=ConfigRecord())
    stats = strategy.round_stats[1]
    assert (stats.clients_evaluated, stats.clients_evaluate_excluded, stats.clients_evaluate_failed) == (2, 5, 0)
    # Weighted by the two honest nodes' sample counts only: (0.2 * 10 + 0.6 * 30) / 40.
    assert stats.federated_eval_loss == pytest.approx(0.5)
    assert result.evaluate_metrics_clientapp[1]["eval-loss"] == pytest.approx(0.5)


def test_an_evaluation_weight_is_capped_at_the_node_cap_like_a_training_weight():
    grid = LocalGrid({i: node([10, 10, 10], i, fixed(_state([1, 1])), evaluation=honest_evaluation(0.0, 30)) for i in range(3)})
    grid.nodes[9] = node([10_000, 10_000, 10_000], 9, fixed(_state([1, 1])), evaluation=honest_evaluation(1.0, 30_000))
    base = FedAvg(fraction_evaluate=1.0, min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=1)
    strategy = genfl(base=base, node_cap_factor=2.0)
    run(strategy, grid)
    # The big node counts as 2 x the median node (60 samples), not 30,000: loss = 60 / (3 * 30 + 60).
    assert strategy.round_stats[1].federated_eval_loss == pytest.approx(60 / 150)


# -- DP: noise for the replies actually aggregated, with uniform weights (review item 2) ---------------
def _dp_strategy(noise_multiplier, nodes_sampled):
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

    inner = FedAvg(fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1)
    base = DifferentialPrivacyServerSideFixedClipping(inner, noise_multiplier=noise_multiplier, clipping_norm=1.0,
                                                      num_sampled_clients=nodes_sampled)
    return genfl(base=base)


def test_dp_noise_is_calibrated_to_the_replies_that_were_aggregated_not_to_those_sampled():
    size = 40_000
    start = {"w": np.ones(size, np.float32), "bn.running_mean": np.zeros(2, np.float32),
             "bn.num_batches_tracked": np.asarray(1, np.int64)}
    unchanged = lambda g: {**g, "w": g["w"] + np.float32(0.001)}
    poisoned = lambda g: {**g, "w": np.full(size, np.nan, np.float32)}
    grid = LocalGrid({1: node([5, 5, 5], 0, unchanged), 2: node([5, 5, 5], 1, unchanged),
                      3: node([5, 5, 5], 2, poisoned), 4: node([5, 5, 5], 3, poisoned)})
    strategy = _dp_strategy(noise_multiplier=1.0, nodes_sampled=4)
    out = run(strategy, grid, initial=start)
    assert strategy.round_stats[1].clients_trained == 2
    # Two updates averaged: sensitivity clipping_norm / 2, so the noise std must be 1.0 * 1.0 / 2.
    noise = out["w"].astype(np.float64) - 1.001
    assert np.std(noise) == pytest.approx(0.5, rel=0.03)


def test_dp_averages_with_uniform_weights_whatever_num_examples_says():
    grid = LocalGrid({1: node([1, 0, 0], 0, lambda g: _state(g["w"] + 0.1)),
                      2: node([99, 0, 0], 1, lambda g: _state(g["w"] + 0.3))})
    out = run(_dp_strategy(noise_multiplier=0.0, nodes_sampled=2), grid, initial=_state([1.0, 1.0]))
    np.testing.assert_allclose(out["w"], [1.2, 1.2], rtol=1e-6)  # the plain mean; by samples it would be 1.298


def test_under_dp_an_all_zero_update_is_excluded_instead_of_crashing_flowers_clipping():
    grid = LocalGrid({1: node([5, 5, 5], 0, lambda g: _state(g["w"] + 0.1)), 2: node([5, 5, 5], 1, lambda g: _state(g["w"]))})
    strategy = _dp_strategy(noise_multiplier=0.0, nodes_sampled=2)
    out = run(strategy, grid, initial=_state([1.0, 1.0]))
    np.testing.assert_allclose(out["w"], [1.1, 1.1], rtol=1e-6)
    assert (strategy.round_stats[1].clients_trained, strategy.round_stats[1].clients_excluded) == (1, 1)


# -- the straggler cooldown survives a resume, also for nodes with their own data (review item 7) -----
def test_a_benched_node_with_its_own_data_still_sits_out_after_a_resume():
    asked = []

    def own_data_node(fail):
        def handle(msg):
            if msg.metadata.message_type == "train":
                asked.append(msg.content["config"]["server-round"])
                if fail:
                    raise RuntimeError("disk unplugged")
            return node([1, 1, 1], None, fixed(_state([1, 1])))(msg)
        return handle

    grid = LocalGrid({1: node([1, 1, 1], 0, fixed(_state([1, 1]))), 77: own_data_node(fail=True)})
    first = genfl(rounds=3, straggler_cooldown_rounds=2)
    first.start(grid, _record(_state([0, 0])), num_rounds=1, timeout=1, train_config=ConfigRecord())
    state = first.state_dict()
    # The run stopped after round 1 and resumes on the same SuperNodes (a deployment keeps node ids).
    grid = LocalGrid({1: node([1, 1, 1], 0, fixed(_state([1, 1]))), 77: own_data_node(fail=False)})
    resumed = genfl(rounds=3, straggler_cooldown_rounds=2, first_round=2)
    resumed.load_state_dict(state)
    resumed.start(grid, _record(_state([0, 0])), num_rounds=3, timeout=1, train_config=ConfigRecord())
    assert asked == [1]  # benched for rounds 2..3, as it would have been without the interruption


def test_training_does_not_depend_on_the_global_random_state_so_a_checkpoint_needs_none():
    import random

    import torch

    from genfl_torch.data import Split
    from genfl_torch.model import seeded_model
    from conf_defaults import train_settings
    from genfl_torch.train import state_to_numpy, train

    data = Split(torch.rand(40, 1, 8, 8), torch.arange(40) % 3)
    settings = train_settings(epochs=1, batch_size=8, lr=0.05, momentum=0.9, weight_decay=0.0, augment=True)
    outcomes = []
    for global_seed in (1, 2):
        model = seeded_model(0, num_classes=3, in_channels=1, mean=[0.5], std=[0.5], norm="batch")
        random.seed(global_seed), np.random.seed(global_seed), torch.manual_seed(global_seed)
        train(model, data, settings, torch.device("cpu"), seed=7)
        outcomes.append(state_to_numpy(model))
    for key in outcomes[0]:
        np.testing.assert_array_equal(outcomes[0][key], outcomes[1][key])


# -- a bug in the base strategy surfaces instead of becoming a failed round (review item 10) -----------
def test_a_programming_error_in_the_base_strategy_propagates_with_its_traceback():
    class Buggy(FedAvg):
        def aggregate_train(self, server_round, replies):
            return {}["missing"]

    grid = LocalGrid({1: node([1, 1, 1], 0, fixed(_state([1, 1])))})
    strategy = genfl(base=Buggy(fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1))
    with pytest.raises(KeyError, match="missing"):
        run(strategy, grid)


def test_flowers_own_verdict_on_bad_replies_fails_the_round_not_the_run():
    from flwr.serverapp.exception import AggregationError

    class Refusing(FedAvg):
        def aggregate_train(self, server_round, replies):
            raise AggregationError("not enough replies for this rule")

    grid = LocalGrid({1: node([1, 1, 1], 0, fixed(_state([1, 1])))})
    strategy = genfl(base=Refusing(fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1), rounds=2,
                     max_consecutive_failed_rounds=2)
    with pytest.raises(RoundFailedError, match="AggregationError: not enough replies"):
        run(strategy, grid, rounds=2)


# -- a node that joins late or restarts with a new id takes part from its next sampled round ----------
def test_a_node_without_a_histogram_is_asked_again_when_sampled_and_then_trains():
    asked = {"histogram": 0, "train": []}

    def late_joiner(msg):
        kind = msg.metadata.message_type
        if kind == "query.label_histogram":
            asked["histogram"] += 1
            if asked["histogram"] == 1:
                return None  # not up yet when the run started
        if kind == "train":
            asked["train"].append(msg.content["config"]["server-round"])
        return node([2, 2, 2], 7, fixed(_state([4, 4])))(msg)

    never = lambda msg: None  # a node that never answers anything
    grid = LocalGrid({1: node([6, 6, 6], 0, fixed(_state([1, 1]))), 2: late_joiner, 3: never})
    strategy = genfl(rounds=3, straggler_cooldown_rounds=1)
    out = run(strategy, grid, rounds=3)
    assert asked["train"] == [2, 3]  # not in round 1 (no histogram to check it against), then every round
    assert strategy.round_stats[2].late_histograms == 1 and strategy.round_stats[2].clients_trained == 2
    np.testing.assert_allclose(out["w"], (18 * 1 + 6 * 4) / 24)  # its declared 6 samples count, capped like any
    # The silent node is never sent work that could not be checked; it is asked for its histogram again
    # (round 1's survey, then when sampled after its one-round cooldown: round 3).
    assert all(m.metadata.dst_node_id != 3 for m in grid.sent_of_type("train"))
    assert [m.metadata.dst_node_id for m in grid.sent_of_type("query.label_histogram")].count(3) == 2


def test_the_ledger_says_which_node_contributed_and_why_the_others_did_not():
    grid = LocalGrid({
        1: node([5, 5, 5], 0, fixed(_state([1, 1]))),
        2: node([5, 5, 5], 1, train_error="disk unplugged"),
        3: node([5, 5, 5], 2, fixed(_state([np.nan, 1]))),
        4: lambda msg: node([5, 5, 5], 3)(msg) if msg.metadata.message_type != "train" else None,  # never in time
        5: node([-1, 5, 5], 4),  # a histogram that cannot be true
    })
    strategy = genfl(rounds=1)
    run(strategy, grid)
    rows = {row["node_id"]: row for row in strategy.ledger.rows()}
    assert rows[1]["rounds_trained"] == 1 and rows[1]["histogram"] == "ok" and rows[1]["partition"] == 0
    assert rows[2]["rounds_failed"] == 1 and "disk unplugged" in rows[2]["last_error"]
    assert rows[3]["rounds_excluded"] == 1 and "non-finite" in rows[3]["last_error"]
    assert rows[4]["rounds_missed"] == 1 and rows[4]["last_error"] == "no reply within the round timeout"
    assert rows[5]["rounds_sampled"] == 0 and "negative count" in rows[5]["histogram"]
    assert strategy.ledger.contributors() == 1
    summary = strategy.ledger.summary()
    assert summary.startswith("1 of 5 node(s) contributed; 4 never did: node 2 (partition 1): ") and "node 5:" in summary


def test_a_cooldown_never_announces_rounds_after_the_last(monkeypatch):
    from strategy import cooldown

    said = []
    monkeypatch.setattr(cooldown, "log", lambda level, fmt, *args: said.append(fmt % args))
    bench = cooldown.Cooldown(rounds=2, last_round=2)
    bench.bench(1, [5], "no reply")
    bench.bench(2, [6], "no reply")
    assert said == ["node 5 sits out round 2 (no reply)"]  # not "rounds 2..3" in a 2-round run; nothing after round 2
