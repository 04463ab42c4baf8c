"""Which nodes form the federation: the start-up wait and the mid-run watch, on a grid whose node list
changes on a script (the real SuperLink behaviour is covered end to end in test_deploy.py)."""

import pytest
from flwr.serverapp import Grid

from server_app import nodes
from server_app.nodes import NotEnoughNodesError, WatchedGrid, wait_for_federation


class ScriptedGrid(Grid):
    """get_node_ids() returns the next list of ``script`` each call (the last one repeats)."""

    def __init__(self, *script):
        self.script, self.calls = list(script), 0

    def get_node_ids(self):
        ids = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        return list(ids)

    def set_run(self, run): ...
    run = None
    def create_message(self, *a, **k): ...
    def push_messages(self, messages): return []
    def pull_messages(self, message_ids): return []
    def send_and_receive(self, messages, *a, **k): return ["sent", *messages]


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    monkeypatch.setattr(nodes, "POLL_SECONDS", 0.01)


def test_unpinned_federation_is_the_nodes_there_once_the_count_holds_still():
    grid = ScriptedGrid([], [1], [1, 2], [1, 2])  # simulated nodes registering just after the start
    assert wait_for_federation(grid, expected=None, timeout=5) == 2


def test_pinned_federation_waits_for_all_expected_nodes():
    grid = ScriptedGrid([1], [1, 2], [1, 2, 3])
    assert wait_for_federation(grid, expected=3, timeout=5) == 3


def test_pinned_federation_fails_naming_the_setting_when_nodes_do_not_come():
    with pytest.raises(NotEnoughNodesError, match=r"federation.expected_nodes=3 but only 2 SuperNode\(s\) connected within 0.05s"):
        wait_for_federation(ScriptedGrid([1, 2]), expected=3, timeout=0.05)


def test_no_node_at_all_fails_after_the_timeout():
    with pytest.raises(NotEnoughNodesError, match="no SuperNode connected within 0.05s"):
        wait_for_federation(ScriptedGrid([]), expected=None, timeout=0.05)


def test_watched_grid_tolerates_a_short_dip_then_fails_once_nodes_stay_too_few(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(nodes.time, "monotonic", lambda: clock[0])
    grid = WatchedGrid(ScriptedGrid([1, 2], [], [3], [], []), minimum=1, timeout=10)
    assert grid.get_node_ids() == [1, 2]
    assert grid.get_node_ids() == []          # dip starts at t=0
    clock[0] = 8.0
    assert grid.get_node_ids() == [3]         # a node came back: the dip is over
    clock[0] = 9.0
    assert grid.get_node_ids() == []          # a new dip starts at t=9
    clock[0] = 19.5
    with pytest.raises(NotEnoughNodesError, match="fewer than the 1 that sampling needs"):
        grid.get_node_ids()


def test_watched_grid_delegates_messaging_to_the_real_grid():
    assert list(WatchedGrid(ScriptedGrid([1]), 1, 10).send_and_receive(["m"], timeout=1)) == ["sent", "m"]
