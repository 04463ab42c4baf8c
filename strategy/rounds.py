"""Flower's round loop as GenFL runs it: rounds numbered as the run counts them, one-time work timed apart.

Flower's loop counts rounds from 1; a run resumed after round k continues at k + 1. `TrueRounds` is
the one place the two counts meet: the strategy behind it sees the run's rounds only (metrics rows,
seeds, checkpoints). `Phases` times the work a run does once before its first round.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy


class TrueRounds(Strategy):
    """``strategy`` told the run's round: Flower's round + ``offset`` (the rounds a resumed run had done)."""

    def __init__(self, strategy: Strategy, offset: int):
        self.strategy, self.offset = strategy, offset

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(self, server_round: int, *args):
        return self.strategy.configure_train(server_round + self.offset, *args)

    def aggregate_train(self, server_round: int, replies):
        return self.strategy.aggregate_train(server_round + self.offset, replies)

    def configure_evaluate(self, server_round: int, *args):
        return self.strategy.configure_evaluate(server_round + self.offset, *args)

    def aggregate_evaluate(self, server_round: int, replies):
        return self.strategy.aggregate_evaluate(server_round + self.offset, replies)

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int, timeout: float,
              train_config: ConfigRecord | None, evaluate_config: ConfigRecord | None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None]) -> Result:
        """Rounds ``offset + 1 .. num_rounds``; ``evaluate_fn`` sees the run's round, round 0 only on a
        fresh run (a resumed run's starting model is the checkpoint's, evaluated when it was made)."""
        def evaluate(flower_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            return evaluate_fn(flower_round + self.offset, arrays) if flower_round or not self.offset else None

        return super().start(grid, initial_arrays, num_rounds - self.offset, timeout, train_config, evaluate_config,
                             evaluate)


class Phases:
    """One-time work before a run's first round (histogram survey, generation, generator check): a line
    as each starts, saying what it does, and one with its seconds as it ends. `seconds` adds them up
    apart from the rounds' time (the ETA leaves them out)."""

    def __init__(self):
        self.seconds = 0.0

    @contextmanager
    def __call__(self, name: str, doing: str):
        log(INFO, "%s: %s", name, doing)
        started = time.monotonic()
        yield
        seconds = time.monotonic() - started
        self.seconds += seconds
        log(INFO, "%s: done in %.1fs", name, seconds)
