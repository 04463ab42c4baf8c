"""Which SuperNodes form the federation, and when too few are left to go on.

In simulation the federation is the nodes that are there (Flower tells each its ``partition-id`` of
``num-partitions``, so the partitioning always agrees). A deployment may pin the node count
(``federation.expected_nodes``): the run waits for that many and fails if they do not come. During
the run, Flower's node sampling waits forever for ``min_available_nodes``; `WatchedGrid` turns that
into a failure once fewer have been connected for ``federation.node_wait_timeout``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from logging import INFO, WARNING

from flwr.common.logger import log
from flwr.serverapp import Grid

from strategy.grids import DelegatingGrid

POLL_SECONDS = 1.0


class NotEnoughNodesError(RuntimeError):
    """Too few SuperNodes are connected to start or to continue the run."""


def wait_for_federation(grid: Grid, expected: int | None, timeout: float) -> int:
    """Wait until the federation is there and return its size.

    ``expected`` set: that many nodes must connect within ``timeout``. Unset: at least one, and then
    until the count holds still for a poll (simulated nodes register just after the ServerApp starts).
    """
    need = expected if expected is not None else 1
    deadline = time.monotonic() + timeout
    connected = len(list(grid.get_node_ids()))
    while connected < need:
        if time.monotonic() > deadline:
            if expected is not None:
                raise NotEnoughNodesError(
                    f"federation.expected_nodes={expected} but only {connected} SuperNode(s) connected within "
                    f"{timeout}s (federation.node_wait_timeout): start the missing SuperNodes (docs/deploy.md), "
                    "or set federation.expected_nodes=null to run with the nodes that are there"
                )
            raise NotEnoughNodesError(
                f"no SuperNode connected within {timeout}s (federation.node_wait_timeout): start SuperNodes "
                "(docs/deploy.md) or check that they reach the SuperLink"
            )
        time.sleep(POLL_SECONDS)
        connected = len(list(grid.get_node_ids()))
    if expected is None:
        while (now := len(list(grid.get_node_ids()))) != connected:
            connected = now
            time.sleep(POLL_SECONDS)
    log(INFO, "federation: %d SuperNode(s) connected%s", connected,
        f" (federation.expected_nodes={expected})" if expected is not None else "")
    return connected


class WatchedGrid(DelegatingGrid):
    """``grid`` itself, except that `get_node_ids` raises `NotEnoughNodesError` once fewer than ``minimum``
    nodes have been connected for ``timeout`` seconds in a row (Flower's sampling would wait forever)."""

    def __init__(self, grid: Grid, minimum: int, timeout: float):
        super().__init__(grid)
        self._minimum = minimum
        self._timeout = timeout
        self._short_since: float | None = None

    def get_node_ids(self) -> Iterable[int]:
        node_ids = list(self._grid.get_node_ids())
        if len(node_ids) >= self._minimum:
            self._short_since = None
            return node_ids
        now = time.monotonic()
        if self._short_since is None:
            self._short_since = now
            log(WARNING, "only %d SuperNode(s) connected, sampling needs %d (federation.min_train_nodes / "
                "min_evaluate_nodes); waiting up to %ss", len(node_ids), self._minimum, self._timeout)
        elif now - self._short_since > self._timeout:
            raise NotEnoughNodesError(
                f"only {len(node_ids)} SuperNode(s) connected for {self._timeout}s (federation.node_wait_timeout), "
                f"fewer than the {self._minimum} that sampling needs (federation.min_train_nodes / min_evaluate_nodes): "
                "the run cannot go on"
            )
        return node_ids
