"""What the server is doing before round 1, and for how long (issue 26, items 14 and 16).

One INFO line as each one-time phase starts (histogram survey, generation, the generator check) and one
with its seconds as it ends; their time is kept apart from the rounds' (GenFL.one_time_seconds), so the
ETA printed after round 1 counts per-round time only. The augmented model's training says so when the
round waits for it. The strategy runs on the in-memory Grid (tests/local_grid.py) with an augmenter
whose generation and reference training take a known while.
"""

from __future__ import annotations

import re
import threading
import time

import pytest
from torch import nn

from generation import progress
from local_grid import LocalGrid
from server_app.results import eta_seconds
from test_adaptive_kappa import TARGET, _start
from test_filtering import linear_model, linear_state, trainer
from test_generator_check import CheckedAugmenter, accuracy_node, checked_genfl, good_at
from test_genfl_strategy import _state

GENERATION, REFERENCE, SURVEY = 0.4, 0.3, 0.1  # seconds each phase takes here


class SlowAugmenter(CheckedAugmenter):
    def prepare(self, histogram, plan=None):
        time.sleep(GENERATION)
        return super().prepare(histogram, plan)

    def reference(self, initial_state, epochs):
        time.sleep(REFERENCE)
        return super().reference(initial_state, epochs)


def slow_histograms(node):
    def handle(msg):
        if msg.metadata.message_type == "query.label_histogram":
            time.sleep(SURVEY / 2)  # two nodes, asked one after the other
        return node(msg)
    return handle


def _seconds(lines: list[str], name: str) -> float:
    (done,) = [line for line in lines if line.startswith(f"{name}: done in ")]
    return float(re.fullmatch(rf"{name}: done in ([0-9.]+)s", done).group(1))


def test_each_one_time_phase_says_what_it_does_and_how_long_it_took(caplog):
    grid = LocalGrid({i: slow_histograms(accuracy_node([5, 5, 5], i, good_at)) for i in range(2)})
    strategy = checked_genfl(SlowAugmenter(_state([-20.0, 40.0]), _state(TARGET)), rounds=2)
    with caplog.at_level("INFO", logger="flwr"):
        _start(strategy, grid, 2)
    lines = [r.getMessage() for r in caplog.records if r.name == "flwr"]
    starts = ["histogram survey: asking the nodes for their label histograms",
              "generation: planning the synthetic set",
              "generator check: training a model on the synthetic set alone (2 epochs)"]
    order = []
    for name, start in zip(("histogram survey", "generation", "generator check"), starts):
        begun = [i for i, line in enumerate(lines) if line.startswith(start)]
        ended = [i for i, line in enumerate(lines) if line.startswith(f"{name}: done in ")]
        assert len(begun) == 1 and len(ended) == 1, (name, lines)
        order += [begun[0], ended[0]]
    assert order == sorted(order)  # survey, then generation, then the check; each started before it ended
    survey, generation, check = (_seconds(lines, n) for n in ("histogram survey", "generation", "generator check"))
    assert survey >= SURVEY - 0.05 and generation >= GENERATION - 0.05 and check >= REFERENCE - 0.05
    assert strategy.one_time_seconds == pytest.approx(survey + generation + check, abs=0.2)
    assert strategy.one_time_seconds < GENERATION + REFERENCE + SURVEY + 2.0  # the rounds' own work is not in it


def test_a_resumed_run_that_applies_the_saved_verdict_has_no_check_phase(caplog):
    grid = LocalGrid({i: accuracy_node([5, 5, 5], i, good_at) for i in range(2)})
    first = checked_genfl(CheckedAugmenter(_state([-20.0, 40.0]), _state(TARGET)), rounds=2)
    _start(first, grid, 2)
    resumed = checked_genfl(CheckedAugmenter(_state([-20.0, 40.0]), _state(TARGET)), rounds=3)
    resumed.load_state_dict(first.state_dict())
    resumed.offset = 2
    caplog.clear()
    with caplog.at_level("INFO", logger="flwr"):
        _start(resumed, LocalGrid({i: accuracy_node([5, 5, 5], i, good_at) for i in range(2)}), 3)
    lines = [r.getMessage() for r in caplog.records if r.name == "flwr"]
    assert not any(line.startswith("generator check: training") for line in lines)
    assert any(line.startswith("histogram survey: done in") for line in lines)


# --- the augmented model, when the round waits for it ----------------------------------------------

@pytest.fixture
def progress_lines():
    lines: list[str] = []
    progress.use_log(lines.append)
    yield lines
    progress.use_log(None)


class Gate(nn.Module):
    """Identity that holds every training forward pass until the test opens it."""

    def __init__(self):
        super().__init__()
        self.open = threading.Event()

    def forward(self, x):
        if self.training:
            assert self.open.wait(timeout=60)
        return x


def test_training_after_the_clients_is_announced_and_timed(progress_lines):
    aug = trainer(overlap=False)
    aug.start(linear_state(), 3).result()
    assert progress_lines[0] == ("augmented model, round 3: training on the synthetic set after the clients "
                                 "(server.overlap=false)")
    assert re.fullmatch(r"augmented model, round 3: done in [0-9.]+s", progress_lines[1]) and len(progress_lines) == 2


def test_waiting_for_training_beside_the_clients_is_logged_only_when_the_round_waits(progress_lines):
    gate = Gate()
    aug = trainer(nn.Sequential(gate, *linear_model()[1:]), overlap=True)
    job = aug.start(linear_state(), 2)
    threading.Timer(0.3, gate.open.set).start()
    job.result()  # the training is held: the round waits
    assert progress_lines[0] == "augmented model, round 2: the clients are done; waiting for its training on the synthetic set"
    waited = float(re.fullmatch(r"augmented model, round 2: done in ([0-9.]+)s", progress_lines[1]).group(1))
    assert waited >= 0.2 and len(progress_lines) == 2
    progress_lines.clear()
    job = aug.start(linear_state(), 3)  # the gate is open: it finishes on its own
    aug.close()  # joined here, so it is done before the round asks
    job.result()
    assert progress_lines == []


# --- the ETA: per-round time only -------------------------------------------------------------------

def test_the_eta_after_round_1_leaves_out_its_one_time_work():
    # Round 1 took 900 s, 880 of them generation and the generator check; later rounds take ~20 s.
    rows = [{"round": 1, "round_seconds": 900.0}]
    assert eta_seconds(rows, 10, {1: 880.0}) == pytest.approx(9 * 20.0)
    rows.append({"round": 2, "round_seconds": 22.0})
    assert eta_seconds(rows, 10, {1: 880.0, 2: 0.0}) == pytest.approx(8 * 21.0)  # median(20, 22)
    assert eta_seconds(rows, 2, {1: 880.0, 2: 0.0}) == 0.0 and eta_seconds([], 5, {}) is None


def test_the_eta_of_a_resumed_run_leaves_out_both_first_rounds_one_time_work():
    # Rounds 1-3 ran before the restart (round 1's one-time work unknown now); round 4 re-surveyed and
    # loaded the synthetic set from the cache (30 s of it one-time).
    rows = [{"round": 1, "round_seconds": 900.0}, {"round": 2, "round_seconds": 20.0},
            {"round": 3, "round_seconds": 24.0}, {"round": 4, "round_seconds": 52.0}]
    assert eta_seconds(rows, 6, {4: 30.0}) == pytest.approx(2 * 22.0)  # median(20, 24, 22)
    assert eta_seconds(rows[:1], 5) == pytest.approx(4 * 900.0)  # nothing else known: round 1 as it is


def test_the_eta_never_counts_negative_time():
    assert eta_seconds([{"round": 1, "round_seconds": 5.0}], 3, {1: 5.2}) == 0.0
