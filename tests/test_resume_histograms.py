"""A node releases its label histogram once per run, across a kill and resume (issue 26 item 2).

Every release spends the node's epsilon again, and averaging several noisy releases undoes the
local DP. The checkpoint keeps every histogram the server received; a resumed run recognises the
nodes by node id (a deployment keeps them) or, where ids change (a restarted simulation), by the
partition each names in query.partition_id (the real ClientApp handler, which reads no data), and
asks only the nodes it never heard from. Driven through the strategy on the in-memory Grid.
"""

import pickle
from collections import Counter

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from local_grid import LocalGrid
from test_genfl_strategy import KEYS, FixedAugmenter, _numpy, _record, _state, genfl

HISTOGRAM, PARTITION = "query.label_histogram", "query.partition_id"


class Box:
    """A SuperNode with built-in partition ``partition``. Its histogram carries fresh noise on every
    release (the k-th release counts k fewer samples per class: local DP with OS entropy); it trains
    on its 15 samples. ``releases`` counts releases per partition, across runs."""

    def __init__(self, partition, releases, node_config=None):
        self.partition, self.releases = partition, releases
        self.context = Context(run_id=1, node_id=0, state=RecordDict(), run_config={},
                               node_config=node_config or {"partition-id": partition, "num-partitions": 4})

    def __call__(self, msg):
        kind = msg.metadata.message_type
        if kind == PARTITION:
            from client_app.app import report_partition  # the real ClientApp's handler

            return report_partition(msg, self.context)
        if kind == HISTOGRAM:
            k = self.releases[self.partition]
            self.releases[self.partition] += 1
            record = {"label-histogram": [5 - k] * 3}
            if "partition-id" in self.context.node_config:
                record["partition-id"] = self.partition
            return Message(RecordDict({"h": MetricRecord(record)}), reply_to=msg)
        if kind == "train":
            state = _numpy(msg.content["arrays"])
            new = _state(state["w"] * 0.5 + self.partition + 1, state["bn.running_mean"] + self.partition)
            return Message(RecordDict({"arrays": _record(new), "metrics": MetricRecord({"num-examples": 15})}),
                           reply_to=msg)
        raise AssertionError(kind)


def federation(ids, releases, **node_configs):
    """Nodes ``ids[p]`` holding partition p."""
    return LocalGrid({node: Box(p, releases, node_configs.get(f"p{p}")) for p, node in enumerate(ids)})


def strategy(first_round=1):
    # max_consecutive_failed_rounds: a resume that excluded every node would fail its rounds, not stop the test
    return genfl(0.7, 0.3, FixedAugmenter(_state([1, 1])), rounds=3, first_round=first_round,
                 max_consecutive_failed_rounds=9)


def killed_after_round_1(grid):
    first = strategy()
    checkpoint = {}

    def save(server_round, arrays):
        checkpoint.update(arrays=arrays, state=pickle.loads(pickle.dumps(first.state_dict())))

    first.start(grid, _record(_state([0, 0])), num_rounds=1, timeout=1, train_config=ConfigRecord(), evaluate_fn=save)
    return checkpoint


def resume(checkpoint, grid):
    resumed = strategy(first_round=2)
    resumed.load_state_dict(checkpoint["state"])
    out = resumed.start(grid, checkpoint["arrays"], num_rounds=3, timeout=1, train_config=ConfigRecord())
    return resumed, _numpy(out.arrays)


def uninterrupted():
    straight = strategy()
    out = straight.start(federation([11, 12, 13], Counter()), _record(_state([0, 0])), num_rounds=3, timeout=1,
                         train_config=ConfigRecord())
    return _numpy(out.arrays)


def test_a_restarted_simulation_asks_no_node_again_and_ends_where_the_uninterrupted_run_does():
    releases = Counter()
    checkpoint = killed_after_round_1(federation([11, 12, 13], releases))
    grid = federation([903, 901, 902], releases)  # a new simulation: new node ids, partitions as before
    resumed, out = resume(checkpoint, grid)
    assert releases == {0: 1, 1: 1, 2: 1}  # one release per node across the kill and the resume
    assert len(grid.sent_of_type(PARTITION)) == 3 and grid.sent_of_type(HISTOGRAM) == []
    assert resumed.survey.partitions == {903: 0, 901: 1, 902: 2}
    assert resumed.survey.histograms == {903: [5, 5, 5], 901: [5, 5, 5], 902: [5, 5, 5]}  # the first release's
    assert all(resumed.round_stats[r].clients_trained == 3 for r in (2, 3))
    expected = uninterrupted()
    for key in KEYS:
        np.testing.assert_array_equal(out[key], expected[key], err_msg=key)


def test_a_deployment_keeps_its_node_ids_and_the_resume_sends_no_query_at_all():
    releases = Counter()
    # partition 2 is a box with its own images: no partition-id, known by its node id only
    own_data = {"p2": {"data-path": "/srv/images"}}
    checkpoint = killed_after_round_1(federation([11, 12, 13], releases, **own_data))
    grid = federation([11, 12, 13], releases, **own_data)
    resumed, _ = resume(checkpoint, grid)
    assert releases == {0: 1, 1: 1, 2: 1}
    assert grid.sent_of_type(PARTITION) == [] and grid.sent_of_type(HISTOGRAM) == []
    assert resumed.survey.partitions == {11: 0, 12: 1}


def test_a_node_first_seen_after_the_resume_is_asked_once_as_a_late_joiner():
    releases = Counter()
    checkpoint = killed_after_round_1(federation([11, 12], releases))
    grid = federation([21, 22, 23], releases)  # partition 2 joined while the run was down
    resumed, _ = resume(checkpoint, grid)
    assert releases == {0: 1, 1: 1, 2: 1}
    assert [m.metadata.dst_node_id for m in grid.sent_of_type(HISTOGRAM)] == [23]
    assert resumed.global_histogram == [10, 10, 10]  # the plan's input stays the checkpoint's
    assert resumed.survey.partitions == {21: 0, 22: 1, 23: 2}
    assert resumed.round_stats[2].clients_trained == 3


def test_a_node_with_its_own_data_under_a_new_id_is_a_new_node():
    """Without a partition there is nothing to recognise it by: it is asked (and says so in the log)."""
    releases = Counter()
    own_data = {"p1": {"data-path": "/srv/images"}}
    checkpoint = killed_after_round_1(federation([11, 12], releases, **own_data))
    grid = federation([21, 22], releases, **own_data)
    resumed, _ = resume(checkpoint, grid)
    assert releases == {0: 1, 1: 2}
    assert [m.metadata.dst_node_id for m in grid.sent_of_type(HISTOGRAM)] == [22]
