"""The ServerApp's own code (server_app.app._run) in-process, on the in-memory Grid with real ClientApps:
a run interrupted after round 3 and resumed from its checkpoint equals the uninterrupted run when the
confidence filter reuses its selection between rescorings (refresh_every=3: rounds 2 and 5 rescore, round 4
reuses round 2's, which must come from the checkpoint); and the uninterrupted run's log says what each
one-time phase did and for how long, and its ETA after round 1 leaves that time out (issue 26, 5a/14/16).
"""

from __future__ import annotations

import logging
import re

import pytest
import torch
from omegaconf import OmegaConf

from client_app.app import app as client_app
from local_grid import LocalGrid, client_app_node
from server_app import checkpoint
from server_app.app import _run
from server_app.results import RunReport
from sim import comparable

pytestmark = pytest.mark.slow

OVERRIDES = ["federation.num_clients=3", "num_rounds=4", "generation.per_class=8", "generator_check.enabled=false",
             "augmented.filter.mode=confidence", "augmented.filter.keep_ratio=0.5", "augmented.filter.start_round=2",
             "augmented.filter.refresh_every=3", "server.device=cpu", "client.device=cpu"]


class Interrupted(Exception):
    pass


def _server_run(run_dir, cache, resume=False):
    from server_app.config import load_config

    torch.set_num_threads(1)
    cfg = load_config([*OVERRIDES, f"output.dir={run_dir}", f"generation.cache_dir={cache}"])
    config = OmegaConf.to_container(cfg, resolve=True)
    resumed = checkpoint.load(run_dir, config) if resume else None
    report = RunReport(run_dir, config, rounds=resumed["rounds"] if resumed else None)
    grid = LocalGrid({500 + p: client_app_node(client_app, p, 3, 500 + p) for p in range(3)})
    _run(grid, cfg, report, resumed)
    return report.data["rounds"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    whole_dir, split_dir = tmp_path_factory.mktemp("whole"), tmp_path_factory.mktemp("split")
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Keep(level=logging.INFO)
    logging.getLogger("flwr").addHandler(handler)
    try:
        whole = _server_run(whole_dir, cache)
    finally:
        logging.getLogger("flwr").removeHandler(handler)
    real_save = checkpoint.save

    def save_then_stop(run_dir, *, server_round, **kw):
        path = real_save(run_dir, server_round=server_round, **kw)
        if server_round == 3:
            raise Interrupted("stopped after round 3's checkpoint")
        return path

    checkpoint.save = save_then_stop
    try:
        with pytest.raises(Interrupted):
            _server_run(split_dir, cache)
    finally:
        checkpoint.save = real_save
    resumed = _server_run(split_dir, cache, resume=True)
    return whole, resumed, records


def test_a_resumed_run_reuses_the_checkpointed_filter_selection(runs):
    whole, resumed, _ = runs
    scored = {r["round"]: r.get("synthetic_scored") for r in whole}
    assert (scored[2], scored[3], scored[4]) == (80, 0, 0)  # round 4 reuses round 2's selection
    assert [r["round"] for r in resumed] == [r["round"] for r in whole]
    assert comparable(resumed) == comparable(whole)


def test_the_log_names_each_one_time_phase_and_the_eta_leaves_it_out(runs):
    whole, _, lines = runs
    for name, doing in (("histogram survey", "asking the nodes"), ("generation", "planning the synthetic set")):
        assert any(line.startswith(f"{name}: {doing}") for line in lines), lines
        assert any(re.fullmatch(rf"{name}: done in [0-9.]+s", line) for line in lines), lines
    one_time = sum(float(m.group(1)) for line in lines
                   if (m := re.fullmatch(r"(?:histogram survey|generation): done in ([0-9.]+)s", line)))
    (first,) = [line for line in lines if line.startswith("round 1/4:")]
    h, m, s = (int(x) for x in re.search(r"ETA (\d+):(\d\d):(\d\d)$", first).groups())
    round_1 = next(r for r in whole if r["round"] == 1)["round_seconds"]
    assert abs((h * 3600 + m * 60 + s) - max(0.0, round_1 - one_time) * 3) <= 1.5
