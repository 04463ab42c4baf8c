"""Nodes that failed or missed a round sit out the next rounds, so a slow or broken box does not
hold up (or, in simulation, starve) the rounds after it.

A node that went away is not a straggler: a SuperNode the SuperLink reports unreachable ("node
unavailable") is not benched at all (while it is gone it is not listed, so it is not sampled), and a
benched node that is seen disconnected at a round's start and then connects again is released, so
a box restarted after a crash trains again in its first round back. A node that stayed connected and
missed the deadline or failed sits out its rounds."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from logging import INFO, WARNING

from flwr.common.logger import log


class Cooldown:
    """``rounds`` rounds off after a failure. Across a resume a node is named by ``identity(node)``
    (its partition in simulation, where node ids change; its node id when it reads its own data)."""

    def __init__(self, rounds: int, last_round: int):
        self.rounds, self.last_round = rounds, last_round
        self.until: dict[int, int] = {}  # node -> last round it sits out
        self.gone: set[int] = set()  # benched nodes seen disconnected since they were benched

    def bench(self, server_round: int, nodes: Iterable[int], why: str) -> None:
        for node in nodes:
            if self.rounds > 0:
                self.until[node] = server_round + self.rounds
                if server_round < self.last_round:  # nothing to sit out after the run's last round
                    last = min(server_round + self.rounds, self.last_round)
                    log(INFO, "node %s sits out %s (%s)", node, _span(server_round + 1, last), why)

    def sitting_out(self, server_round: int, nodes: Iterable[int], needed: int) -> set[int]:
        """The nodes sitting out this round, unless that would leave fewer than ``needed``
        (``nodes``: those connected now)."""
        nodes = set(nodes)
        self._release_returned(server_round, nodes)
        benched = {n for n, until in self.until.items() if until >= server_round}
        remaining = len(set(nodes) - benched)
        if benched and remaining < needed:
            log(WARNING, "round %d: only %d node(s) not sitting out; asking the %d resting ones too", server_round,
                remaining, len(benched))
            return set()
        return benched

    def _release_returned(self, server_round: int, connected: set[int]) -> None:
        """A benched node that was disconnected and is back was restarted, not slow: it trains again."""
        for node, until in sorted(self.until.items()):
            if until < server_round:
                self.gone.discard(node)
            elif node not in connected:
                self.gone.add(node)
            elif node in self.gone:
                self.gone.discard(node)
                del self.until[node]
                log(INFO, "node %s reconnected after it went away: it no longer sits out", node)

    def state(self, identity: Callable[[int], tuple[str, int]]) -> list[tuple[str, int, int]]:
        return [(*identity(n), until) for n, until in sorted(self.until.items())]

    def restore(self, saved: list[tuple[str, int, int]], node_of: dict[tuple[str, int], int]) -> None:
        self.until = {node_of[(kind, key)]: until for kind, key, until in saved if (kind, key) in node_of}


def _span(first: int, last: int) -> str:
    return f"round {first}" if first == last else f"rounds {first}..{last}"
