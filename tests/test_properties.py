"""Property-based tests (hypothesis) for histogram validation, generation planning and aggregation."""


import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from generation.planning import plan_generation, requested_images
from local_grid import LocalGrid
from genfl_protocol.mixing import weighted_mix
from conf_defaults import reliability
from strategy.genfl import GenFL
from strategy.histograms import capped_histograms, histogram_problem, node_cap
from strategy.kappa import KappaSchedule

counts = st.lists(st.integers(0, 10_000), min_size=1, max_size=12)


@given(counts)
def test_every_non_negative_integer_histogram_of_the_right_length_is_valid(histogram):
    assert histogram_problem(histogram, len(histogram)) is None


@given(counts, st.integers(0, 11), st.sampled_from([-1, 0.5, float("nan"), float("inf"), "3", None, True]))
def test_any_corrupted_count_is_rejected(histogram, position, bad):
    corrupted = list(histogram)
    corrupted[position % len(corrupted)] = bad
    assert histogram_problem(corrupted, len(histogram)) is not None


@given(counts, st.integers(1, 5))
def test_a_histogram_of_another_length_is_rejected(histogram, extra):
    assert histogram_problem(histogram + [0] * extra, len(histogram)) is not None


@given(st.dictionaries(st.integers(0, 50), st.lists(st.integers(0, 10**6), min_size=3, max_size=3), min_size=1, max_size=8),
       st.floats(1.0, 20.0))
def test_capping_never_raises_a_count_and_bounds_every_node(histograms, factor):
    cap = node_cap([sum(h) for h in histograms.values()], factor)
    for node, capped in capped_histograms(histograms, factor).items():
        assert all(0 <= c <= o for c, o in zip(capped, histograms[node]))
        assert sum(capped) <= cap + 1e-9


@given(counts, st.sampled_from(["uniform", "balance", "deficit"]), st.integers(0, 5_000), st.integers(0, 300),
       st.one_of(st.none(), st.integers(0, 20_000)))
def test_plans_cover_every_class_with_non_negative_counts_within_the_budget(histogram, policy, budget, per_class, target):
    plan = plan_generation(histogram, policy, budget=budget, per_class=per_class, target=target)
    assert sorted(plan) == list(range(len(histogram)))
    assert all(v >= 0 for v in plan.values()) and sum(plan.values()) <= budget
    wanted = requested_images(histogram, policy, budget=budget, per_class=per_class, target=target)
    if sum(wanted) <= budget:
        assert list(plan.values()) == wanted  # a cap that does not bind changes nothing


@given(counts)
def test_balance_lifts_every_class_to_the_largest(histogram):
    plan = plan_generation(histogram, "balance")
    assert {histogram[c] + n for c, n in plan.items()} == {max(histogram)}


arrays = st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=1, max_size=6)


@given(arrays, st.lists(st.floats(0.01, 1.0), min_size=1, max_size=6))
def test_identical_models_aggregate_to_themselves(values, raw_weights):
    state = {"w": np.asarray(values, np.float32), "n": np.asarray(7, np.int64)}
    weights = [w / sum(raw_weights) for w in raw_weights]
    mixed = weighted_mix([state] * len(weights), weights)
    np.testing.assert_allclose(mixed["w"], state["w"], rtol=1e-6, atol=1e-6)
    assert mixed["n"] == 7


def _node(state, partition, n):
    def handle(msg):
        if msg.metadata.message_type == "query.label_histogram":
            return Message(RecordDict({"h": MetricRecord({"label-histogram": [n, 0], "partition-id": partition})}), reply_to=msg)
        record = ArrayRecord({k: Array(v) for k, v in state.items()})
        return Message(RecordDict({"arrays": record, "metrics": MetricRecord({"num-examples": n})}), reply_to=msg)
    return handle


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(arrays.filter(lambda a: len(a) == 3), st.integers(1, 500)), min_size=2, max_size=6),
       st.randoms(use_true_random=False))
def test_the_order_replies_arrive_in_never_changes_the_new_global_model(clients, rng):
    def run(reply_order):
        nodes = {1000 + i: _node({"w": np.asarray(v, np.float32)}, i, n) for i, (v, n) in enumerate(clients)}
        strategy = GenFL(FedAvg(fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1), num_classes=2,
                         kappa=KappaSchedule(0.0, "constant", 0.0, 1), augmenter=None, histogram_timeout=1, seed=0,
                         reliability=reliability(max_relative_update=1e12))
        result = strategy.start(LocalGrid(nodes, reply_order=reply_order), ArrayRecord({"w": Array(np.zeros(3, np.float32))}),
                                num_rounds=1, timeout=1, train_config=ConfigRecord())
        return result.arrays["w"].numpy()

    shuffled = lambda replies: rng.sample(replies, len(replies))
    np.testing.assert_array_equal(run(list), run(shuffled))
