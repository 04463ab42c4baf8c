"""Asking the nodes something outside Flower's training and evaluation messages, and whom to ask.

The generator check, the this_round probe, BatchNorm re-estimation and the label-histogram and
partition queries all send one query to a list of nodes (strategy/grids.py `send`), wait up to a
time limit and keep what passes a check (`ask`; `Queries`: a round's). Whom: a seeded sample
(`sample`), drawn like Flower's own sampling of the training and evaluation nodes (`seeded`) from
one formula, `seed_for`, so a seed fixes every sample.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from genfl_protocol.contract import PROBE_QUERY
from strategy.grids import send
from strategy.replies import cap_weight, evaluate_reply_problem, screen

if TYPE_CHECKING:
    from strategy.histograms import Survey
    from strategy.probe import Probe

# Each use of randomness has its own stream. The offsets keep the seeds of the two formulas this one
# replaced (Flower's sampling: stream * 7_919_993; the strategy's own samples: stream * 7_919), so a
# seed still draws the same nodes as before. "train" and "reestimate" share a seed but not a generator.
STREAMS = {"train": 0, "evaluate": 7_919_993, "reestimate": 0, "probe": 7_919, "check": 2 * 7_919}


def seed_for(seed: int, server_round: int, stream: str) -> int:
    """The seed of ``stream``'s draw in ``server_round`` (the generator check's round is 0)."""
    return seed * 1_000_003 + server_round + STREAMS[stream]


@contextmanager
def seeded(seed: int, server_round: int, stream: str):
    """Flower's strategies sample nodes with the global `random`: seed it for this draw, then leave
    it as it was."""
    state = random.getstate()
    random.seed(seed_for(seed, server_round, stream))
    try:
        yield
    finally:
        random.setstate(state)


def sample(nodes: Iterable[int], fraction: float, order: Callable[[int], tuple], *, seed: int, server_round: int,
           stream: str) -> list[int]:
    """A reproducible share of ``nodes`` (at least one), in ``order``."""
    nodes = sorted(nodes, key=order)
    count = max(1, round(len(nodes) * fraction))
    if count < len(nodes):
        nodes = sorted(random.Random(seed_for(seed, server_round, stream)).sample(nodes, count), key=order)
    return nodes


def ask(grid: Grid, nodes: Iterable[int], content: RecordDict, kind: str, timeout: float, *, server_round: int,
        what: str, problem: Callable[[Message, int], str | None], order: Callable[[int], tuple]) -> list[Message]:
    """The usable replies (`screen`: no error, no ``problem``, the common layout), in ``order``."""
    sent, replies = send(grid, nodes, content, kind, timeout)
    return screen(server_round, replies, sent, what, problem, order)[0]


@dataclass(frozen=True)
class Queries:
    """A round's queries: to a seeded share of the nodes that reported a label histogram, with the
    round's config, and their replies checked against what each node declared."""

    grid: Grid
    survey: Survey
    seed: int
    timeout: float
    config: dict  # {the base strategy's config key: the round's config}: sent with every query
    weighted_by_key: str
    slack: int  # reliability.claim_slack

    def ask(self, server_round: int, stream: str, fraction: float, records: dict, kind: str, what: str,
            problem: Callable[[Message, int], str | None]) -> list[Message]:
        """``records`` as query ``kind`` (genfl_protocol/contract.py) to ``fraction`` of the nodes; the usable replies."""
        nodes = sample([n for n in self.grid.get_node_ids() if n in self.survey.histograms], fraction, self.survey.order,
                       seed=self.seed, server_round=server_round, stream=stream)
        return ask(self.grid, nodes, RecordDict({**records, **self.config}), f"query.{kind}", self.timeout,
                   server_round=server_round, what=what, problem=problem, order=self.survey.order)

    def score(self, server_round: int, stream: str, fraction: float, probe: Probe, what: str) -> list[Message]:
        """``fraction`` of the nodes score ``probe``'s candidate mixes on their own data (strategy/probe.py)."""
        return self.ask(server_round, stream, fraction, probe.records, PROBE_QUERY, what, self.scored(probe))

    def scored(self, probe: Probe | None) -> Callable[[Message, int], str | None]:
        """The check of an evaluation reply (and of its scores of ``probe``); a usable one's weight is capped."""
        def problem(reply: Message, node: int) -> str | None:
            found = evaluate_reply_problem(reply.content, **self.claims(node)) or (probe and probe.problem(reply))
            if found is None:
                cap_weight(reply.content, self.weighted_by_key, self.survey.weight_cap)
            return found
        return problem

    def claims(self, node: int) -> dict:
        """What a node's reply is checked against (strategy/replies.py): the samples it declared."""
        return dict(weighted_by_key=self.weighted_by_key, declared=self.survey.declared.get(node), slack=self.slack)
