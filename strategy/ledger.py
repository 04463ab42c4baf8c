"""Who contributed to a run: one record per node (its histogram, and per round whether it trained, was
excluded, failed or missed the deadline), so an operator sees which boxes helped without reading logs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field


@dataclass
class NodeRecord:
    node_id: int
    partition: int | None = None  # simulation / built-in data; None: the node reads its own data-path
    claimed_partition: int | None = None  # a partition-id it named that another node held: known by its node id
    histogram: str = "not asked"  # "ok", or why the node has no valid label histogram
    rounds_sampled: int = 0
    rounds_trained: int = 0  # its model went into the aggregate
    rounds_excluded: int = 0  # its reply was rejected by validation
    rounds_failed: int = 0  # it replied with an error
    rounds_missed: int = 0  # no reply within the round timeout
    last_error: str | None = None
    away_rounds: list[int] = field(default_factory=list)  # not connected at the round's start, or unreachable in it
    back_in: int | None = None  # the first round it was connected again after its last away round


class Ledger:
    def __init__(self):
        self.nodes: dict[int, NodeRecord] = {}

    def _of(self, node: int) -> NodeRecord:
        return self.nodes.setdefault(node, NodeRecord(node))

    def histograms(self, valid: Iterable[int], problems: Mapping[int, str], partitions: Mapping[int, int],
                   refused: Mapping[int, int]) -> None:
        for node in valid:
            record = self._of(node)
            record.histogram, record.partition = "ok", partitions.get(node)
            record.claimed_partition = refused.get(node)
        for node, problem in problems.items():
            record = self._of(node)
            record.histogram = record.last_error = problem

    def presence(self, server_round: int, connected: Iterable[int]) -> None:
        """Which known nodes are connected at the start of ``server_round``."""
        connected = set(connected)
        for node, record in self.nodes.items():
            if node not in connected:
                _away(record, server_round)
            elif record.away_rounds and (record.back_in or 0) <= record.away_rounds[-1] < server_round:
                record.back_in = server_round

    def round(self, server_round: int, sent: Iterable[int], trained: Iterable[int], failed: Mapping[int, str],
              excluded: Mapping[int, str], unreachable: Mapping[int, str]) -> None:
        """One training round's outcome per sampled node; ``unreachable``: nodes the SuperLink reported
        gone during the round (they dropped out, they did not fail)."""
        answered = {*trained, *failed, *excluded, *unreachable}
        for node in sent:
            record = self._of(node)
            record.rounds_sampled += 1
            if node not in answered:
                record.rounds_missed += 1
                record.last_error = "no reply within the round timeout"
        for node in trained:
            self._of(node).rounds_trained += 1
        for node, reason in failed.items():
            self._of(node).rounds_failed += 1
            self._of(node).last_error = reason
        for node, reason in excluded.items():
            self._of(node).rounds_excluded += 1
            self._of(node).last_error = f"excluded: {reason}"
        for node, reason in unreachable.items():
            self._of(node).last_error = reason
            _away(self._of(node), server_round)

    def rows(self) -> list[dict]:
        return [asdict(r) for _, r in sorted(self.nodes.items())]

    def contributors(self) -> int:
        return sum(r.rounds_trained > 0 for r in self.nodes.values())

    def summary(self) -> str:
        idle = [r for _, r in sorted(self.nodes.items()) if r.rounds_trained == 0]
        line = f"{len(self.nodes) - len(idle)} of {len(self.nodes)} node(s) contributed"
        if idle:
            named = "; ".join(f"node {r.node_id}{'' if r.partition is None else f' (partition {r.partition})'}: "
                              f"{r.last_error or 'never sampled'}" for r in idle)
            line += f"; {len(idle)} never did: {named}"
        away = [r for _, r in sorted(self.nodes.items()) if r.away_rounds]
        if away:
            named = "; ".join(f"node {r.node_id}{'' if r.partition is None else f' (partition {r.partition})'}: "
                              f"away {len(r.away_rounds)} round(s) ({_rounds(r.away_rounds)}), "
                              + (f"back in round {r.back_in}" if r.back_in and r.back_in > r.away_rounds[-1] else "not back")
                              for r in away)
            line += f"; {len(away)} dropped out: {named}"
        return line

    def state(self, identity: Callable[[int], tuple[str, int]]) -> list[tuple[str, int, dict]]:
        return [(*identity(n), asdict(r)) for n, r in sorted(self.nodes.items())]

    def restore(self, saved: list[tuple[str, int, dict]], node_of: Mapping[tuple[str, int], int]) -> None:
        """Counts carry over to the node's current id (a restarted simulation renames nodes)."""
        for kind, key, row in saved:
            node = node_of.get((kind, key), row["node_id"])
            self.nodes[node] = NodeRecord(**{**row, "node_id": node})


def _away(record: NodeRecord, server_round: int) -> None:
    if server_round not in record.away_rounds:
        record.away_rounds.append(server_round)


def _rounds(rounds: list[int]) -> str:
    """[2, 3, 4, 7] -> "rounds 2..4, 7"."""
    spans, start = [], rounds[0]
    for previous, current in zip(rounds, rounds[1:] + [None]):
        if current != previous + 1:
            spans.append(str(start) if start == previous else f"{start}..{previous}")
            start = current
    return ("round " if len(rounds) == 1 else "rounds ") + ", ".join(spans)
