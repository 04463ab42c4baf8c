"""The nodes the survey before round 1 did not hear from: late joiners, nodes restarted under a new id,
and, in a resumed run, every node the checkpoint does not know.

A label histogram is a release of the node's data (with local DP, one spend of its epsilon), so a
node is asked once per run. A sampled node without a valid histogram is asked when it is sampled
(`ask_late`); a resumed run asks only the nodes it never heard from (`resume_survey`), recognising
the others by node id (a deployment's SuperLink keeps them) or, where node ids change (a restarted
simulation), by the partition each names in a `PARTITION_QUERY`, which reads no data.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from logging import INFO, WARNING

from flwr.app import RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from genfl_protocol.contract import PARTITION_QUERY as _PARTITION
from strategy.grids import send
from strategy.cooldown import Cooldown
from strategy.histograms import HistogramQuery, Survey, partition_of, survey
from strategy.ledger import Ledger
from strategy.stats import RoundStats

PARTITION_QUERY = f"query.{_PARTITION}"


def collect_partitions(grid: Grid, node_ids: Sequence[int], content: RecordDict, timeout: float) -> dict[int, int]:
    """The built-in partition each of ``node_ids`` names (`PARTITION_QUERY`: no data read, nothing
    released); a node that fails, does not answer or has none (its own data) is left out."""
    messages, replies = send(grid, node_ids, content, PARTITION_QUERY, timeout)
    node_of = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}  # ids are set when sent
    claims = {}
    for reply in replies:
        node = node_of.get(reply.metadata.reply_to_message_id)
        records = [] if reply.has_error() else list(reply.content.metric_records.values())
        if node is not None and len(records) == 1 and (partition := partition_of(records[0])) is not None:
            claims[node] = partition
    return claims


def survey_or_resume(grid: Grid, saved: dict | None, query: HistogramQuery) -> tuple[Survey, dict[tuple[str, int], int]]:
    """Before a run's first round: every node's histogram (``saved``: the checkpoint's survey, only the
    nodes it lacks), and each known identity's node now (strategy/histograms.py `Survey.identity`)."""
    if saved:
        return resume_survey(grid, saved, query)
    found = survey(grid, query)  # a fresh run, or a checkpoint from before histograms were kept (asked again)
    return found, {found.identity(n): n for n in found.histograms}


def restore_nodes(found: Survey, node_of: dict[tuple[str, int], int], resumed: dict, ledger: Ledger,
                  cooldown: Cooldown) -> None:
    """The ledger learns the survey's outcome; a resumed run's ledger and cooldown (``resumed``: the
    checkpoint's) find their nodes again by identity."""
    ledger.histograms(found.histograms, found.problems, found.partitions, found.refused)
    if resumed:
        cooldown.restore(resumed["benched_until"], node_of)
        ledger.restore(resumed["nodes"], node_of)
        if resumed["global_histogram"] != found.global_histogram:
            log(WARNING, "label histogram differs from the checkpoint's %s: the federation changed; the "
                "checkpoint's generation plan is kept", resumed["global_histogram"])


def resume_survey(grid: Grid, saved: dict, query: HistogramQuery) -> tuple[Survey, dict[tuple[str, int], int]]:
    """The checkpoint's survey on the nodes connected now, and each saved identity's node now.

    A node is known by its node id, else by the saved partition it names (`PARTITION_QUERY`; of two
    nodes naming one partition, the lower node id). Only the nodes the run never heard from are asked
    for a histogram, as late joiners: the global histogram and the plan stay the checkpoint's."""
    found = Survey(**copy.deepcopy(saved))
    before = {node: found.identity(node) for node in {*found.histograms, *found.problems}}
    connected = sorted(grid.get_node_ids())
    renamed = {n: n for n in connected if n in before}
    unknown = [n for n in connected if n not in renamed]
    vacant = {p: n for n, p in found.partitions.items() if n not in renamed}  # saved partitions without their node
    if unknown and vacant:
        for node, partition in sorted(collect_partitions(grid, unknown, query.content, query.timeout).items()):
            if (old := vacant.pop(partition, None)) is not None:
                renamed[old] = node
    found.rename(renamed)
    never = [n for n in connected if n not in renamed.values()]
    log(INFO, "label histogram: %d of %d nodes known from the checkpoint (not asked again); %d never heard from",
        len(connected) - len(never), len(connected), len(never))
    found.asked = set()
    if never:
        found.extend(grid, never, query)
    return found, {before[old]: new for old, new in renamed.items()}


def ask_late(found: Survey, grid: Grid, sampled: Sequence[int], query: HistogramQuery, ledger: Ledger,
             cooldown: Cooldown, stats: RoundStats) -> None:
    """A sampled node without a valid label histogram (it joined late or restarted with a new id) is
    asked for one now (not twice in one round), and its claim counts from then on; the generation
    plan stays as it was (the synthetic set is made once). One that still has none sits out."""
    late = [n for n in sampled if n not in found.histograms and n not in found.asked]
    found.asked = set()
    if late:
        reported = found.extend(grid, late, query)
        stats.late_histograms = len(reported)
        ledger.histograms(reported, {n: found.problems[n] for n in late if n not in reported}, found.partitions,
                          found.refused)
        cooldown.bench(stats.round, sorted(set(late) - set(reported)), "no valid label histogram")
