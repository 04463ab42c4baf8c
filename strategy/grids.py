"""A Grid that forwards everything to the run's own Grid: the base for views that change only how
nodes are listed (GenFL's partition-ordered view, the deployment's node-count watch); and `send`,
one query to a list of nodes (the label-histogram and partition queries, strategy/ask.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid


class DelegatingGrid(Grid):
    """``grid`` itself; subclasses override `get_node_ids`."""

    def __init__(self, grid: Grid):
        self._grid = grid

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def set_run(self, run) -> None:
        self._grid.set_run(run)

    @property
    def run(self):
        return self._grid.run

    def create_message(self, *args, **kwargs) -> Message:
        return self._grid.create_message(*args, **kwargs)

    def get_nodes(self):
        return self._grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *args, **kwargs) -> Iterable[Message]:
        return self._grid.send_and_receive(messages, *args, **kwargs)


class OrderedGrid(DelegatingGrid):
    """The run's Grid as the base strategy sees it: node ids in partition order (so seeded sampling
    picks the same nodes on every rerun), without the nodes that sit out this round."""

    def __init__(self, grid: Grid, order: Callable[[int], tuple], skip: set[int] = frozenset()):
        super().__init__(grid)
        self._order_key, self._skip = order, skip

    def get_node_ids(self) -> list[int]:
        return sorted((n for n in self._grid.get_node_ids() if n not in self._skip), key=self._order_key)


def send(grid: Grid, nodes: Iterable[int], content: RecordDict, kind: str,
         timeout: float) -> tuple[list[Message], list[Message]]:
    """(the messages sent, the replies within ``timeout``): one message of type ``kind`` per node."""
    sent = [Message(content, message_type=kind, dst_node_id=n) for n in nodes]
    return sent, list(grid.send_and_receive(sent, timeout=timeout))
