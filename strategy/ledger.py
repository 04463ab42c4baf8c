"""Who contributed to a run: one record per node (its histogram, and per round whether it trained, was
excluded, failed or missed the deadline), so an operator sees which boxes helped without reading logs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass


@dataclass
class NodeRecord:
    node_id: int
    partition: int | None = None  # simulation / built-in data; None: the node reads its own data-path
    histogram: str = "not asked"  # "ok", or why the node has no valid label histogram
    rounds_sampled: int = 0
    rounds_trained: int = 0  # its model went into the aggregate
    rounds_excluded: int = 0  # its reply was rejected by validation
    rounds_failed: int = 0  # it replied with an error
    rounds_missed: int = 0  # no reply within the round timeout
    last_error: str | None = None


class Ledger:
    def __init__(self):
        self.nodes: dict[int, NodeRecord] = {}

    def _of(self, node: int) -> NodeRecord:
        return self.nodes.setdefault(node, NodeRecord(node))

    def histograms(self, valid: Iterable[int], problems: Mapping[int, str], partitions: Mapping[int, int]) -> None:
        for node in valid:
            record = self._of(node)
            record.histogram, record.partition = "ok", partitions.get(node)
        for node, problem in problems.items():
            record = self._of(node)
            record.histogram = record.last_error = problem

    def round(self, sent: Iterable[int], trained: Iterable[int], failed: Mapping[int, str],
              excluded: Mapping[int, str]) -> None:
        answered = {*trained, *failed, *excluded}
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
        return line

    def state(self, identity: Callable[[int], tuple[str, int]]) -> list[tuple[str, int, dict]]:
        return [(*identity(n), asdict(r)) for n, r in sorted(self.nodes.items())]

    def restore(self, saved: list[tuple[str, int, dict]], node_of: Mapping[tuple[str, int], int]) -> None:
        """Counts carry over to the node's current id (a restarted simulation renames nodes)."""
        for kind, key, row in saved:
            node = node_of.get((kind, key), row["node_id"])
            self.nodes[node] = NodeRecord(**{**row, "node_id": node})
