"""A node's ``partition-id`` is self-reported (issue 26 item 5b): two nodes naming the same partition
must not share one place (the sampling order, the identity a checkpoint keeps a node's record,
cooldown and histogram under). The first claimant holds it (in one exchange, the lower node id); a
later one is identified by its node id and reported, unless the holder has gone (a box restarted
under a new node id takes its partition over)."""

import pickle

from flwr.app import ConfigRecord

from local_grid import LocalGrid
from test_genfl_strategy import _record, _state, fixed, genfl, node


def honest(partition, histogram=(5, 5, 5)):
    return node(list(histogram), partition, fixed(_state([1, 1])))


def run_rounds(strategy, grid, rounds, evaluate_fn=None):
    strategy.start(grid, _record(_state([0, 0])), num_rounds=rounds, timeout=1, train_config=ConfigRecord(),
                   evaluate_fn=evaluate_fn)


def test_a_second_claim_on_a_partition_is_refused_and_both_nodes_keep_their_own_records_across_a_resume():
    trained = {5: [], 9: []}

    def counted(node_id, partition, fail_in=None):
        inner = honest(partition)

        def handle(msg):
            if msg.metadata.message_type == "train":
                trained[node_id].append(msg.content["config"]["server-round"])
                if msg.content["config"]["server-round"] == fail_in:
                    raise RuntimeError("disk unplugged")
            return inner(msg)
        return handle

    def federation():  # node 9 names node 5's partition (a copied node config, or a liar)
        return LocalGrid({9: counted(9, 0, fail_in=1), 5: counted(5, 0), 7: honest(1)})

    first = genfl(rounds=3, straggler_cooldown_rounds=2)
    checkpoint = {}
    run_rounds(first, federation(), 1,
               evaluate_fn=lambda r, a: checkpoint.update(state=pickle.loads(pickle.dumps(first.state_dict()))))
    assert first.survey.partitions == {5: 0, 7: 1} and first.survey.refused == {9: 0}
    assert first.survey.identity(5) == ("partition", 0) and first.survey.identity(9) == ("node", 9)
    row = next(r for r in first.ledger.rows() if r["node_id"] == 9)
    assert row["partition"] is None and row["claimed_partition"] == 0

    resumed = genfl(rounds=3, straggler_cooldown_rounds=2, first_round=2)
    resumed.load_state_dict(checkpoint["state"])
    run_rounds(resumed, federation(), 3)
    assert trained == {5: [1, 2, 3], 9: [1]}  # node 9 sits out its cooldown, node 5 does not take it over
    rows = {r["node_id"]: r for r in resumed.ledger.rows()}
    assert (rows[5]["rounds_trained"], rows[5]["rounds_failed"]) == (3, 0)
    assert (rows[9]["rounds_trained"], rows[9]["rounds_failed"]) == (0, 1)


def test_an_impostor_naming_a_present_nodes_partition_at_a_resume_does_not_get_its_histogram():
    """A deployment resumes on the same SuperLink: node 11 keeps its id; a newcomer (id 4, lower)
    naming partition 0 is a new node: it is asked for its own histogram and known by its node id."""
    first = genfl(rounds=2)
    checkpoint = {}
    run_rounds(first, LocalGrid({11: honest(0), 12: honest(1, (2, 2, 2))}), 1,
               evaluate_fn=lambda r, a: checkpoint.update(state=pickle.loads(pickle.dumps(first.state_dict()))))
    resumed = genfl(rounds=2, first_round=2)
    resumed.load_state_dict(checkpoint["state"])
    run_rounds(resumed, LocalGrid({11: honest(0), 12: honest(1, (2, 2, 2)), 4: honest(0, (9, 9, 9))}), 2)
    assert resumed.survey.partitions == {11: 0, 12: 1} and resumed.survey.refused == {4: 0}
    assert resumed.survey.histograms[11] == [5, 5, 5] and resumed.survey.histograms[4] == [9, 9, 9]
    assert resumed.survey.identity(4) == ("node", 4)


def test_a_box_back_under_a_new_node_id_takes_its_partition_over_once_the_old_id_is_gone():
    grid = LocalGrid({5: honest(0), 6: honest(1)})

    def restart(server_round, arrays):
        if server_round == 1:  # node 6 died; its box came back as node 8, same data
            del grid.nodes[6]
            grid.nodes[8] = honest(1)

    strategy = genfl(rounds=2)
    run_rounds(strategy, grid, 2, evaluate_fn=restart)
    assert strategy.survey.partitions == {5: 0, 8: 1} and strategy.survey.refused == {}
    assert strategy.survey.identity(6) == ("node", 6) and strategy.survey.identity(8) == ("partition", 1)
    assert strategy.round_stats[2].clients_trained == 2


def test_a_refused_claimant_takes_the_partition_over_once_its_holder_has_gone():
    """A box restarted under a new node id may be asked before the SuperLink has dropped its old id."""
    grid = LocalGrid({5: honest(0), 9: honest(0), 7: honest(1)})

    def old_id_dropped(server_round, arrays):
        if server_round == 1:
            del grid.nodes[5]

    strategy = genfl(rounds=2)
    run_rounds(strategy, grid, 2, evaluate_fn=old_id_dropped)
    assert strategy.survey.partitions == {9: 0, 7: 1} and strategy.survey.refused == {}
    row = next(r for r in strategy.ledger.rows() if r["node_id"] == 9)
    assert row["partition"] == 0 and row["claimed_partition"] is None
