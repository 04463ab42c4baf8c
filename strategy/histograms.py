"""Validation and robust summation of the label histograms that clients report before round 1.

A reply from a client is untrusted input: a malformed or implausible histogram is excluded with a
reason, and no single node can steer the federation's view of what classes are missing: each
node's counts are capped at ``node_cap_factor`` times the median node total before they are summed.

A node's ``partition-id`` is self-reported too: a partition belongs to one node at a time (`Survey.claim`).

Each histogram is a release of the node's data (with local DP, one spend of its epsilon; averaging
several noisy releases would undo the noise), so a node is asked once per run: nodes the survey did
not hear from are asked later, and a resumed run asks only the nodes it never heard from
(strategy/late_nodes.py).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from logging import DEBUG, INFO, WARNING

from flwr.app import Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from strategy.grids import send

LABEL_HISTOGRAM_QUERY = "query.label_histogram"


@dataclass(frozen=True)
class HistogramQuery:
    """How the nodes are asked for their label histograms, and the most samples one may declare."""

    content: RecordDict  # the client config (the histogram's time budget among it)
    timeout: float
    num_classes: int
    max_total: int | None  # reliability.max_samples_per_node
    node_cap_factor: float

    def within(self, timeout: float) -> HistogramQuery:
        """The same query with another time limit (a late node is asked within a round's)."""
        return replace(self, timeout=timeout)


def histogram_problem(histogram, num_classes: int, max_total: int | None = None) -> str | None:
    """Why ``histogram`` is not a valid per-class count vector, or None when it is."""
    if not isinstance(histogram, (list, tuple)):
        return f"expected a list of {num_classes} counts, got {type(histogram).__name__}"
    if len(histogram) != num_classes:
        return f"expected {num_classes} counts, got {len(histogram)}"
    for value in histogram:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"non-numeric count {value!r}"
        if not math.isfinite(value):
            return f"non-finite count {value!r}"
        if value < 0:
            return f"negative count {value!r}"
        if value != int(value):
            return f"non-integer count {value!r}"
    total = sum(int(v) for v in histogram)
    if max_total is not None and total > max_total:
        return f"implausible total of {total} samples (limit reliability.max_samples_per_node={max_total})"
    return None


def global_histogram(histograms: Sequence[Sequence[int]], num_classes: int) -> list[int]:
    """Class-wise sum of already validated histograms."""
    total = [0] * num_classes
    for histogram in histograms:
        for c, count in enumerate(histogram):
            total[c] += int(count)
    return total


def node_cap(totals: Sequence[int], node_cap_factor: float) -> float:
    """The most samples one node may count for: ``node_cap_factor`` x the median node total.

    The median needs at least three nodes to resist one liar; with fewer it is still an upper bound.
    """
    if not totals:
        return math.inf
    return node_cap_factor * max(float(statistics.median(totals)), 1.0)


def capped_histograms(histograms: Mapping[int, Sequence[int]], node_cap_factor: float) -> dict[int, list[int]]:
    """Each node's histogram scaled down (floored) so that its total is at most `node_cap`."""
    cap = node_cap([sum(h) for h in histograms.values()], node_cap_factor)
    capped = {}
    for node, histogram in histograms.items():
        total = sum(histogram)
        capped[node] = list(histogram) if total <= cap else [int(math.floor(c * cap / total)) for c in histogram]
    return capped


def collect_histograms(grid: Grid, node_ids: Sequence[int],
                       query: HistogramQuery) -> tuple[dict[int, list[int]], dict[int, int], dict[int, str]]:
    """Ask ``node_ids`` for their label histograms: (valid histograms, partitions, problems), by node.

    Every reply is untrusted: an error, a malformed record or an implausible histogram is left out
    with a WARNING naming the node; so is a node that does not answer within the query's timeout.
    """
    messages, replies = send(grid, node_ids, query.content, LABEL_HISTOGRAM_QUERY, query.timeout)
    node_of = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
    histograms, partitions = {}, {}
    problems = {n: f"no reply within {query.timeout}s" for n in node_ids}
    for reply in replies:
        node = node_of.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
        if reply.has_error():
            problems[node] = f"failed: {reply.error.reason}"
            log(WARNING, "label histogram: node %s failed: %s", node, reply.error.reason)
            continue
        histogram, partition, problem = _histogram_from(reply, query.num_classes, query.max_total)
        if problem:
            problems[node] = f"excluded: {problem}"
            log(WARNING, "label histogram: node %s excluded: %s", node, problem)
            continue
        problems.pop(node, None)
        histograms[node] = [int(c) for c in histogram]
        if partition is not None:
            partitions[node] = partition
    if len(replies) < len(messages):
        log(WARNING, "label histogram: %d node(s) did not reply within %ss", len(messages) - len(replies),
            query.timeout)
    return histograms, partitions, problems


def _histogram_from(reply: Message, num_classes: int, max_total: int | None) -> tuple[list | None, int | None, str | None]:
    records = reply.content.metric_records
    if len(records) != 1:
        return None, None, f"expected one MetricRecord, got {len(records)}"
    record = next(iter(records.values()))
    if "label-histogram" not in record:
        return None, None, "no 'label-histogram' in the reply"
    histogram = record["label-histogram"]
    return histogram, partition_of(record), histogram_problem(histogram, num_classes, max_total)


def partition_of(record) -> int | None:
    """The built-in partition a reply's record names, if a valid one."""
    partition = record.get("partition-id")
    return partition if isinstance(partition, int) and not isinstance(partition, bool) and partition >= 0 else None


def federation_histogram(histograms: Mapping[int, Sequence[int]], node_cap_factor: float,
                         num_classes: int) -> tuple[list[int], dict[int, int], float]:
    """(the robust global histogram, each node's declared total, the per-node weight cap): every
    node counts for at most `node_cap` samples, in the plan as in the aggregation weights."""
    declared = {node: sum(h) for node, h in histograms.items()}
    cap = node_cap(list(declared.values()), node_cap_factor)
    capped = capped_histograms(histograms, node_cap_factor)
    for node, histogram in capped.items():
        if histogram != list(histograms[node]):
            log(WARNING, "label histogram: node %s declared %d samples; counted as %d (%s x the median node)",
                node, declared[node], sum(histogram), node_cap_factor)
    return global_histogram(list(capped.values()), num_classes), declared, cap


class NoHistogramsError(RuntimeError):
    """No node reported a usable label histogram: nothing to plan from, no claim can be checked."""


@dataclass
class Survey:
    """What the nodes declared before round 1, and how much each one may count for."""

    histograms: dict[int, list[int]] = field(default_factory=dict)  # by node id, validated
    partitions: dict[int, int] = field(default_factory=dict)  # node -> built-in partition it holds (`claim`)
    global_histogram: list[int] | None = None  # robust sum: every node capped
    declared: dict[int, int] = field(default_factory=dict)  # node -> total samples it declared
    weight_cap: float = math.inf  # the most samples one node's reply may weigh
    problems: dict[int, str] = field(default_factory=dict)  # node -> why it has no valid histogram
    refused: dict[int, int] = field(default_factory=dict)  # node -> a partition it claimed that another holds
    asked: set[int] = field(default_factory=set)  # the nodes asked in the latest exchange (not checkpointed)

    def claim(self, claims: Mapping[int, int], connected: Iterable[int]) -> None:
        """Record the partition each node names. A partition is one node's place (its order in seeded
        sampling, its identity across a resume), held by the first node to claim it (in one exchange,
        the lowest node id). A later claimant is identified by its node id, with a WARNING, while the
        holder is connected; once the holder has gone, the claimant takes the partition over (a box
        restarted under a new node id)."""
        connected = set(connected)
        for node in sorted(claims):
            partition, holder = claims[node], self.holder(claims[node])
            if holder is not None and holder != node and holder in connected:
                self.refused[node] = partition
                log(WARNING, "node %s claims partition-id %d, which node %s holds: it is identified by its node id",
                    node, partition, holder)
                continue
            if holder is not None and holder != node:
                del self.partitions[holder]
                log(INFO, "node %s takes partition-id %d over from node %s, which is gone", node, partition, holder)
            self.partitions[node] = partition
            self.refused.pop(node, None)

    def reclaim(self, connected: Iterable[int]) -> list[int]:
        """Refused claimants whose partition's holder has gone take it over now (see `claim`)."""
        connected = set(connected)
        waiting = {n: p for n, p in self.refused.items() if n in connected and self.holder(p) not in connected}
        self.claim(waiting, connected)
        return sorted(n for n in waiting if n in self.partitions)

    def holder(self, partition: int) -> int | None:
        return next((n for n, p in self.partitions.items() if p == partition), None)

    def identity(self, node: int) -> tuple[str, int]:
        """A node across a restart: its partition (simulation), else its node id (a SuperNode with
        its own data keeps its id while it runs)."""
        partition = self.partitions.get(node)
        return ("partition", partition) if partition is not None else ("node", node)

    def order(self, node: int) -> tuple[int, int]:
        """Partition order (the same on every rerun, whatever the node ids), then node id."""
        partition = self.partitions.get(node)
        return (0, partition) if partition is not None else (1, node)

    def state(self) -> dict:
        """Everything the nodes declared, for the checkpoint (plain data)."""
        return {k: v for k, v in asdict(self).items() if k != "asked"}

    def rename(self, renamed: Mapping[int, int]) -> None:
        """Carry what old node ids declared over to their new ids (``renamed``: old -> new)."""
        for name in ("histograms", "partitions", "declared", "problems", "refused"):
            setattr(self, name, {renamed.get(n, n): v for n, v in getattr(self, name).items()})

    def extend(self, grid: Grid, node_ids: Sequence[int], query: HistogramQuery) -> list[int]:
        """Ask ``node_ids`` (late joiners) for their histograms; their claims and the node cap count
        them from now on, the global histogram (the generation plan's input) does not change.
        Returns the nodes that reported a valid one."""
        histograms, partitions, problems = collect_histograms(grid, node_ids, query)
        self.asked = set(node_ids)
        self.histograms.update(histograms)
        self.claim(partitions, grid.get_node_ids())
        self.problems = {**{n: p for n, p in self.problems.items() if n not in histograms}, **problems}
        _, self.declared, self.weight_cap = federation_histogram(self.histograms, query.node_cap_factor,
                                                                 query.num_classes)
        for node in histograms:
            log(INFO, "label histogram: node %s reported late (%d samples); it takes part from now on", node,
                self.declared[node])
        return sorted(histograms)


def survey(grid: Grid, query: HistogramQuery) -> Survey:
    """Ask every node for its label histogram and form the federation's robust view of them."""
    node_ids = sorted(grid.get_node_ids())
    histograms, partitions, problems = collect_histograms(grid, node_ids, query)
    if not histograms:
        raise NoHistogramsError(f"none of the {len(node_ids)} node(s) reported a valid label histogram; "
                                "see the warnings above")
    total, declared, cap = federation_histogram(histograms, query.node_cap_factor, query.num_classes)
    log(INFO, "label histogram: %d of %d nodes reported; federation has %d samples", len(histograms), len(node_ids),
        sum(total))
    log(DEBUG, "label histogram (global, class 0..%d): %s", query.num_classes - 1, total)  # in metrics.json
    found = Survey(histograms, {}, total, declared, cap, problems, asked=set(node_ids))
    found.claim(partitions, node_ids)
    return found
