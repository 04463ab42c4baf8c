"""Weighted mixing of model state, checked against hand computations."""

import numpy as np
import pytest

from genfl_protocol.mixing import weighted_mix


def _state(w, mean, count):
    return {"conv.weight": np.array(w, dtype=np.float32), "bn.running_mean": np.array(mean, dtype=np.float32),
            "bn.num_batches_tracked": np.array(count, dtype=np.int64)}


def test_fedavg_weights_by_sample_count_including_bn_buffers():
    a, b = _state([1.0, 2.0], [0.0, 4.0], 10), _state([3.0, 6.0], [2.0, 0.0], 30)
    mixed = weighted_mix([a, b], [0.25, 0.75])  # rho_n = 10/40, 30/40
    np.testing.assert_allclose(mixed["conv.weight"], [0.25 * 1 + 0.75 * 3, 0.25 * 2 + 0.75 * 6])
    np.testing.assert_allclose(mixed["bn.running_mean"], [1.5, 1.0])
    assert mixed["conv.weight"].dtype == np.float32


def test_integer_counters_take_the_largest_value_not_a_fraction():
    mixed = weighted_mix([_state([0], [0], 7), _state([0], [0], 12)], [0.5, 0.5])
    assert mixed["bn.num_batches_tracked"].dtype == np.int64
    assert int(mixed["bn.num_batches_tracked"]) == 12


def test_mismatched_states_are_rejected():
    with pytest.raises(ValueError, match="different shapes"):
        weighted_mix([_state([1.0], [0], 1), _state([1.0, 2.0], [0], 1)], [0.5, 0.5])
    with pytest.raises(ValueError, match="one weight per state"):
        weighted_mix([_state([1.0], [0], 1)], [0.5, 0.5])
