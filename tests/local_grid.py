"""A small in-process implementation of Flower's `Grid` interface for driving strategies in tests.

Each node is a callable ``(message) -> Message | None``: it may return a reply, raise (the grid
turns that into an error reply, as a SuperNode does), or return None (no reply in time). Replies
come back in an order the test chooses, to show that results do not depend on arrival order.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

from flwr.app import Context, Message, RecordDict
from flwr.app.error import Error
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

Node = Callable[[Message], Message | None]


class LocalGrid(Grid):
    def __init__(self, nodes: dict[int, Node], reply_order: Callable[[list[Message]], list[Message]] = list):
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
        self.nodes = nodes
        self.reply_order = reply_order
        self.sent: list[Message] = []  # every message, in sending order
        self._ids = itertools.count()

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = f"m{next(self._ids)}"
            self.sent.append(message)
            try:
                reply = self.nodes[message.metadata.dst_node_id](message)
            except Exception as err:  # what a SuperNode sends back when its ClientApp raises
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"{type(err).__name__}: {err}"),
                                reply_to=message)
            if reply is not None:
                replies.append(reply)
        return self.reply_order(replies)

    def sent_of_type(self, message_type: str) -> list[Message]:
        return [m for m in self.sent if m.metadata.message_type == message_type]

    # Not used by strategies; present because Grid declares them.
    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return getattr(self, "_run", None)

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl=None) -> Message:
        return Message(content, message_type=message_type, dst_node_id=dst_node_id, group_id=group_id, ttl=ttl)

    def push_messages(self, messages):
        raise NotImplementedError("LocalGrid answers in send_and_receive")

    def pull_messages(self, message_ids):
        raise NotImplementedError("LocalGrid answers in send_and_receive")


def client_app_node(app, partition_id: int, num_partitions: int, node_id: int) -> Node:
    """A node that runs a real ClientApp in-process, as a simulated SuperNode would."""
    context = Context(run_id=1, node_id=node_id, node_config={"partition-id": partition_id, "num-partitions": num_partitions},
                      state=RecordDict(), run_config={})

    def handle(message: Message) -> Message:
        reply = app(message, context)
        return reply

    return handle
