"""A round whose mixed model the update guard rejects leaves every learnt state as it was (issue 26
item 1): the base strategy's server-optimiser moments and adaptive clipping norm, and the adaptive
kappa_aug, so the rejected update neither steers the next rounds nor reaches the checkpoint.

The bases are built from the shipped conf/ (server_app.build.base_strategy), the nodes answer with
fixed NumPy updates on the in-memory Grid (tests/local_grid.py).
"""

import functools
import pickle
from concurrent.futures import Future

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from local_grid import LocalGrid
from conf_defaults import reliability
from server_app.build import adaptive_kappa, base_strategy
from server_app.config import load_config
from genfl_protocol.contract import MIX_ACC, MIX_LOSS, PROBE, PROBE_CANDIDATES
from strategy.bases import base_state
from strategy.generator_check import Regime
from strategy.genfl import GenFL
from strategy.kappa import KappaSchedule
from test_genfl_strategy import KEYS, _numpy, _record, _state

# Every stateful base conf/ offers, and Flower's server-side adaptive clipping around FedAvg and FedAdam.
STATEFUL = {
    "fedavgm": ("aggregation=fedavgm",),
    "fedadam": ("aggregation=fedadam",),
    "fedyogi": ("aggregation=fedyogi",),
    "fedadagrad": ("aggregation=fedadagrad",),
    "dp_adaptive": ("aggregation=fedavg", "aggregation.dp.clipping=server_adaptive", "aggregation.dp.clipping_norm=0.5"),
    "fedadam_dp_adaptive": ("aggregation=fedadam", "aggregation.dp.clipping=server_adaptive",
                            "aggregation.dp.clipping_norm=0.5"),
}
DIVERGES = 2  # the round whose augmented model blows up


@functools.lru_cache(maxsize=None)
def config(*overrides):
    return load_config(list(overrides))  # composed once per setting: Hydra takes a second


def build(name):
    return base_strategy(config(*STATEFUL[name]), num_nodes=3)


def honest(i):
    """A node with partition ``i`` that moves the model by a fixed, node-specific step."""
    def handle(msg):
        kind = msg.metadata.message_type
        if kind == "query.label_histogram":
            return Message(RecordDict({"h": MetricRecord({"label-histogram": [2, 2, 2], "partition-id": i})}), reply_to=msg)
        if kind == "train":
            state = _numpy(msg.content["arrays"])
            state = _state(state["w"] * 0.9 + 0.1 * (i + 1), state["bn.running_mean"] + 0.01 * i)
            return Message(RecordDict({"arrays": _record(state), "metrics": MetricRecord({"num-examples": 6})}),
                           reply_to=msg)
        raise AssertionError(kind)
    return handle


def grid():
    return LocalGrid({100 + i: honest(i) for i in range(3)})


class DivergingAugmenter:
    """w_aug near the global model, except in round DIVERGES, where it is 10^4 times it."""

    def prepare(self, histogram, plan=None):
        return {"plan": {0: 1}, "images_synthesized": 1, "generation_seconds": 0.0}

    def start(self, global_state, server_round, class_weights=None, trust=None):
        scale = 1e4 if server_round == DIVERGES else 1.0
        state = {k: (v * scale).astype(v.dtype) if v.dtype == np.float32 else v for k, v in global_state.items()}
        done = Future()
        done.set_result((state, {}))
        return done

    def close(self):
        pass


def genfl(base, rounds=3, first_round=1, adaptive=None, choose="next_round"):
    return GenFL(base, num_classes=3, kappa=KappaSchedule(0.3, "constant", 0.3, rounds), augmenter=DivergingAugmenter(),
                 histogram_timeout=1, seed=0, first_round=first_round, regime=Regime(adaptive=adaptive, choose=choose),
                 reliability=reliability(max_relative_update=5.0, max_consecutive_failed_rounds=2, claim_slack=0))


def assert_same(a, b, path="state"):
    """Equal to the bit: nested lists, dicts, arrays and floats."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        np.testing.assert_array_equal(a, b, err_msg=path)


START = _state([1.0, 2.0], [0.5, 0.5])


@pytest.mark.parametrize("name", list(STATEFUL))
def test_a_rejected_round_leaves_the_base_strategys_learnt_state_as_it_was(name):
    strategy = genfl(build(name))
    after = {}

    def record(server_round, arrays):  # after each round, what the checkpoint would keep
        after[server_round] = pickle.loads(pickle.dumps(base_state(strategy.base)))

    strategy.start(grid(), _record(START), num_rounds=3, timeout=1, train_config=ConfigRecord(), evaluate_fn=record)
    assert [strategy.round_stats[r].round_accepted for r in (1, 2, 3)] == [True, False, True]
    assert "rejected" in strategy.round_stats[DIVERGES].round_failure
    assert any(layer for layer in after[1])  # round 1 did learn something (moments, a new clipping norm)
    assert_same(after[2], after[1])  # the rejected round 2 left it exactly as round 1 did


@pytest.mark.parametrize("name", ["fedavgm", "fedyogi", "fedadam_dp_adaptive"])  # momentum, moments, a clipping norm
def test_a_resume_after_a_rejected_round_equals_the_uninterrupted_run(name):
    straight = genfl(build(name))
    out = straight.start(grid(), _record(START), num_rounds=3, timeout=1, train_config=ConfigRecord())
    first = genfl(build(name))
    checkpoint = {}

    def save(server_round, arrays):  # what the ServerApp checkpoints after each round
        checkpoint.update(arrays=arrays, state=pickle.loads(pickle.dumps(first.state_dict())))

    first.start(grid(), _record(START), num_rounds=DIVERGES, timeout=1, train_config=ConfigRecord(), evaluate_fn=save)
    assert first.round_stats[DIVERGES].round_accepted is False
    resumed = genfl(build(name), first_round=DIVERGES + 1)
    resumed.load_state_dict(checkpoint["state"])
    again = resumed.start(grid(), checkpoint["arrays"], num_rounds=3, timeout=1, train_config=ConfigRecord())
    for key in KEYS:
        np.testing.assert_array_equal(_numpy(again.arrays)[key], _numpy(out.arrays)[key], err_msg=key)
    assert_same(base_state(resumed.base), base_state(straight.base))


def scaled_once(i):
    """An honest node, except that partition 0 sends weights x 1000 in round 1 (with an honest count)."""
    inner = honest(i)

    def handle(msg):
        reply = inner(msg)
        if msg.metadata.message_type == "train" and i == 0 and msg.content["config"]["server-round"] == 1:
            state = {k: (v * 1000).astype(v.dtype) if v.dtype == np.float32 else v
                     for k, v in _numpy(reply.content["arrays"]).items()}
            reply = Message(RecordDict({"arrays": _record(state), "metrics": reply.content["metrics"]}), reply_to=msg)
        return reply
    return handle


def test_one_scaled_reply_under_fedavgm_costs_one_round_not_the_run():
    """The issue's case: the scaled reply's round is rejected; its momentum must not fail round 2 too
    (two failed rounds in a row would stop the run)."""
    base = build("fedavgm")
    strategy = GenFL(base, num_classes=3, kappa=KappaSchedule(0.0, "constant", 0.0, 3), augmenter=None,
                     histogram_timeout=1, seed=0,
                     reliability=reliability(max_relative_update=5.0, max_consecutive_failed_rounds=2, claim_slack=0))
    strategy.start(LocalGrid({100 + i: scaled_once(i) for i in range(3)}), _record(START), num_rounds=3, timeout=1,
                   train_config=ConfigRecord())
    assert [strategy.round_stats[r].round_accepted for r in (1, 2, 3)] == [False, True, True]
    assert base.momentum_vector is not None  # learnt from rounds 2 and 3 only


class ProbingNode:
    """An honest node that also scores candidate mixes (query.kappa_probe): the bigger kappa_aug, the
    lower its loss, so the probe always pushes kappa_aug up."""

    def __init__(self, i):
        self.inner = honest(i)

    def __call__(self, msg):
        if msg.metadata.message_type == "query.kappa_probe":
            candidates = list(msg.content[PROBE][PROBE_CANDIDATES])
            metrics = MetricRecord({MIX_LOSS: [1.0 - c for c in candidates], MIX_ACC: [0.5 for _ in candidates],
                                    "num-examples": 6})
            return Message(RecordDict({"metrics": metrics}), reply_to=msg)
        return self.inner(msg)


def test_a_rejected_round_does_not_move_the_adaptive_kappa_its_probe_chose():
    """mix.choose=this_round: the probe picks the round's kappa_aug before the guard sees the model;
    when the guard rejects it, kappa_aug stays where it was."""
    cfg = config("mix.kappa_policy=adaptive", "mix.choose=this_round", "mix.evidence_z=0", "strategy.kappa_aug=0.3")
    strategy = genfl(base_strategy(cfg, num_nodes=3), adaptive=adaptive_kappa(cfg), choose="this_round")
    strategy.start(LocalGrid({100 + i: ProbingNode(i) for i in range(3)}), _record(START), num_rounds=3, timeout=1,
                   train_config=ConfigRecord())
    kappas = [strategy.round_stats[r].kappa_aug for r in (1, 2, 3)]
    assert strategy.round_stats[DIVERGES].round_accepted is False
    assert kappas[0] == 0.4  # halfway from 0.3 to the best candidate, 0.5
    assert kappas[2] == 0.45  # round 3 moves on from round 1's 0.4: round 2's move (to 0.45) was undone
