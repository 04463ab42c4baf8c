"""The GenFL strategy's aggregation is exactly Eq. (1), checked by hand on small arrays.

The augmenter here is a fixed-state stand-in: these tests are about the strategy's arithmetic and
reply handling, not about training (tests/test_augmented.py trains a real augmented model).
"""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, Metadata, MetricRecord, RecordDict

from strategy.genfl import GenFL, NoTrainingRepliesError
from strategy.kappa import KappaSchedule


def _state(w, mean, count):
    return {"w": np.array(w, np.float32), "bn.running_mean": np.array(mean, np.float32),
            "bn.num_batches_tracked": np.array(count, np.int64)}


class FixedAugmenter:
    def __init__(self, state):
        self.state, self.calls = state, []

    def prepare(self, histogram):
        return {"images_synthesized": 0, "generation_seconds": 0.0}

    def train(self, global_state, server_round):
        self.calls.append((server_round, {k: v.copy() for k, v in global_state.items()}))
        return self.state, {"augmented_test_accuracy": 0.5}


def _reply(state, num_examples, msg_id):
    md = Metadata(run_id=1, message_id="r" + msg_id, src_node_id=5, dst_node_id=0, reply_to_message_id=msg_id,
                  group_id="1", created_at=0.0, ttl=60.0, message_type="train")
    record = ArrayRecord({k: Array(v) for k, v in state.items()})
    return Message(metadata=md, content=RecordDict({"arrays": record, "metrics": MetricRecord({"num-examples": num_examples})}))


def _strategy(kappa_fl, kappa_aug, augmenter):
    strategy = GenFL(num_classes=3, histogram_timeout=1, kappa=KappaSchedule(kappa_fl, kappa_aug, "constant", kappa_aug, 3),
                     augmenter=augmenter, min_available_nodes=1)
    strategy._current_arrays = ArrayRecord({k: Array(v) for k, v in _state([0, 0], [0, 0], 1).items()})
    return strategy


def _mixed(result):
    return {k: v.numpy() for k, v in result[0].items()}


def test_eq1_mixes_client_average_and_augmented_model_including_bn_buffers():
    clients = [_state([1, 2], [0, 4], 10), _state([3, 6], [2, 0], 20)]  # rho = 1/4, 3/4
    augmented = _state([10, 20], [8, 8], 5)
    strategy = _strategy(0.6, 0.4, FixedAugmenter(augmented))
    out = _mixed(strategy.aggregate_train(1, [_reply(clients[0], 10, "a"), _reply(clients[1], 30, "b")]))
    client_w = 0.25 * np.array([1, 2]) + 0.75 * np.array([3, 6])
    client_mean = 0.25 * np.array([0, 4]) + 0.75 * np.array([2, 0])
    np.testing.assert_allclose(out["w"], 0.6 * client_w + 0.4 * np.array([10, 20]), rtol=1e-6)
    np.testing.assert_allclose(out["bn.running_mean"], 0.6 * client_mean + 0.4 * np.array([8, 8]), rtol=1e-6)
    assert out["bn.num_batches_tracked"] == 20 and out["bn.num_batches_tracked"].dtype == np.int64
    assert strategy.round_stats[1]["kappa_aug"] == pytest.approx(0.4)
    assert strategy.round_stats[1]["augmented_test_accuracy"] == 0.5


def test_augmented_model_starts_from_the_current_global_model():
    augmenter = FixedAugmenter(_state([0, 0], [0, 0], 1))
    strategy = _strategy(0.5, 0.5, augmenter)
    strategy.aggregate_train(1, [_reply(_state([1, 1], [1, 1], 1), 4, "a")])
    np.testing.assert_array_equal(augmenter.calls[0][1]["w"], [0, 0])


def test_kappa_aug_zero_is_fedavg_and_never_trains_the_augmented_model():
    augmenter = FixedAugmenter(_state([99, 99], [99, 99], 1))
    strategy = _strategy(1.0, 0.0, augmenter)
    out = _mixed(strategy.aggregate_train(1, [_reply(_state([1, 3], [0, 0], 1), 1, "a"), _reply(_state([3, 5], [0, 0], 1), 1, "b")]))
    np.testing.assert_allclose(out["w"], [2, 4])
    assert augmenter.calls == []


def test_kappa_fl_zero_is_aigc_only_and_needs_no_client():
    strategy = _strategy(0.0, 1.0, FixedAugmenter(_state([7, 8], [1, 2], 3)))
    out = _mixed(strategy.aggregate_train(1, []))
    np.testing.assert_allclose(out["w"], [7, 8])
    assert strategy.round_stats[1]["clients_trained"] == 0


def test_malformed_replies_are_excluded_not_fatal():
    strategy = _strategy(1.0, 0.0, None)
    good = _reply(_state([2, 2], [0, 0], 1), 5, "a")
    wrong_shape = _reply(_state([1, 2, 3], [0, 0], 1), 5, "b")
    nan_weights = _reply(_state([np.nan, 1], [0, 0], 1), 5, "c")
    zero_examples = _reply(_state([9, 9], [0, 0], 1), 0, "d")
    out = _mixed(strategy.aggregate_train(1, [good, wrong_shape, nan_weights, zero_examples]))
    np.testing.assert_allclose(out["w"], [2, 2])
    assert strategy.round_stats[1] == {"clients_trained": 1, "clients_failed": 0, "clients_excluded": 3,
                                       "kappa_fl": 1.0, "kappa_aug": 0.0}


def test_a_round_without_any_usable_client_fails_loudly():
    strategy = _strategy(1.0, 0.0, None)
    with pytest.raises(NoTrainingRepliesError, match="round 2"):
        strategy.aggregate_train(2, [_reply(_state([1], [0, 0], 1), 5, "a")])


def test_synthetic_kappas_without_an_augmenter_are_rejected_at_construction():
    with pytest.raises(ValueError, match="augmenter"):
        GenFL(num_classes=3, histogram_timeout=1, kappa=KappaSchedule(0.5, 0.5, "constant", 0.5, 3), augmenter=None)
