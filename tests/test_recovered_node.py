"""A node that went away and came back is a recovered node, not a straggler (issue 26 item 10).

A SuperNode that dies is reported by the SuperLink as an error reply with code 5 ("node unavailable",
from the SuperLink's own node id) and is not listed while it is gone; a box restarted under the same
node id trains again in its first round back. A node that stays connected and fails or misses the
deadline still sits out its cooldown. The end-of-run line says who dropped out and for how long.
"""

from flwr.app import ConfigRecord, Message
from flwr.app.error import Error
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode

from local_grid import LocalGrid
from test_genfl_strategy import _record, _state, fixed, genfl, node


NO_REPLY = "no reply"


def trained_in(rounds_seen, partition, failing=None):
    """A node that records the rounds it is asked to train in and answers ``failing(round, msg)``
    instead of training when that returns a reply or NO_REPLY (or raises)."""
    honest = node([2, 2, 2], partition, fixed(_state([1, 1])))

    def handle(msg):
        if msg.metadata.message_type == "train":
            server_round = msg.content["config"]["server-round"]
            rounds_seen.append(server_round)
            if failing is not None and (reply := failing(server_round, msg)) is not None:
                return None if reply is NO_REPLY else reply
        return honest(msg)
    return handle


def unavailable(msg):
    """What the SuperLink sends ~60 s after a SuperNode died mid-round."""
    reply = Message(Error(code=ErrorCode.NODE_UNAVAILABLE, reason="Node Unavailable"), reply_to=msg)
    reply.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
    return reply


def test_a_node_that_crashed_and_came_back_trains_again_and_a_failing_node_still_sits_out():
    seen = {"steady": [], "crashed": [], "failing": []}

    def crash_in_round_2(server_round, msg):
        return unavailable(msg) if server_round == 2 else None

    def raise_in_round_2(server_round, msg):
        if server_round == 2:
            raise RuntimeError("CUDA out of memory")

    grid = LocalGrid({1: trained_in(seen["steady"], 0), 2: trained_in(seen["crashed"], 1, crash_in_round_2),
                      3: trained_in(seen["failing"], 2, raise_in_round_2)})
    strategy = genfl(rounds=4, straggler_cooldown_rounds=2)
    strategy.start(grid, _record(_state([0, 0])), num_rounds=4, timeout=1, train_config=ConfigRecord())
    assert seen["crashed"] == [1, 2, 3, 4]  # back under its node id: no cooldown
    assert seen["failing"] == [1, 2]  # its ClientApp failed while it was there: it sits out rounds 3..4
    rows = {row["node_id"]: row for row in strategy.ledger.rows()}
    assert rows[2]["rounds_failed"] == 0 and rows[2]["rounds_trained"] == 3 and rows[2]["away_rounds"] == [2]
    assert rows[3]["rounds_failed"] == 1 and rows[3]["away_rounds"] == []
    assert strategy.ledger.summary() == ("3 of 3 node(s) contributed; 1 dropped out: node 2 (partition 1): away 1 round(s) "
                                         "(round 2), back in round 3")


def test_a_benched_node_that_disconnects_and_reconnects_is_released_from_its_cooldown():
    """No reply in round 1 (its box died before the deadline): benched for rounds 2..3 like a straggler.
    It is not listed at round 2's start (gone) and is back for round 3: it trains in round 3."""
    seen = {"steady": [], "rebooted": []}
    grid = LocalGrid({1: trained_in(seen["steady"], 0),
                      2: trained_in(seen["rebooted"], 1, lambda r, msg: NO_REPLY if r == 1 else None)})
    rebooted = grid.nodes[2]

    def between_rounds(server_round, arrays):  # the ServerApp's evaluate_fn runs after every round
        if server_round == 1:
            del grid.nodes[2]  # the SuperLink dropped it after the heartbeat timeout
        elif server_round == 2:
            grid.nodes[2] = rebooted  # restarted, same node id

    strategy = genfl(rounds=4, straggler_cooldown_rounds=2)
    strategy.start(grid, _record(_state([0, 0])), num_rounds=4, timeout=1, train_config=ConfigRecord(),
                   evaluate_fn=between_rounds)
    assert seen["rebooted"] == [1, 3, 4]
    row = next(r for r in strategy.ledger.rows() if r["node_id"] == 2)
    assert row["rounds_missed"] == 1 and row["away_rounds"] == [2] and row["back_in"] == 3
    assert "1 dropped out: node 2 (partition 1): away 1 round(s) (round 2), back in round 3" in strategy.ledger.summary()


def test_a_node_that_stays_away_is_reported_as_not_back():
    seen = []
    grid = LocalGrid({1: trained_in([], 0), 2: trained_in(seen, 1)})

    def leave(server_round, arrays):
        if server_round == 1:
            del grid.nodes[2]

    strategy = genfl(rounds=3)
    strategy.start(grid, _record(_state([0, 0])), num_rounds=3, timeout=1, train_config=ConfigRecord(),
                   evaluate_fn=leave)
    assert seen == [1]
    assert strategy.ledger.summary() == ("2 of 2 node(s) contributed; 1 dropped out: node 2 (partition 1): away 2 round(s) "
                                         "(rounds 2..3), not back")
