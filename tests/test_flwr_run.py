"""Plain `flwr run <app> --stream`, as a Flower user types it, on Flower's default simulation federation
(2 SuperNodes, no --federation-config): the run completes and trains on both nodes.

Flower's own `local` connection always uses ports 39091/39093 (shared by everyone on the machine), so
this test starts the same kind of simulation SuperLink itself, on a free port, under a private
FLWR_HOME, and runs `flwr run` on a copy of the app (a first `flwr run` may rewrite pyproject.toml).
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from deployment import Deployment
from sim import IGNORED, REPO


@pytest.mark.slow
def test_flwr_run_completes_on_the_default_two_node_simulation(tmp_path):
    app_dir = tmp_path / "app"
    shutil.copytree(REPO, app_dir, ignore=IGNORED)
    pyproject = (app_dir / "pyproject.toml").read_bytes()
    dep = Deployment(tmp_path / "flower")
    run_dir = tmp_path / "results"
    overrides = f"output.dir={run_dir} generation.per_class=10 generation.cache_dir={tmp_path / 'cache'}"
    try:
        dep.start_simulation_superlink()
        proc = subprocess.run(
            ["flwr", "run", ".", "--stream", "--run-config", f'num-server-rounds=1 overrides="{overrides}"'],
            cwd=app_dir, env=dep.env, capture_output=True, text=True, timeout=900,
        )
    finally:
        leftovers = dep.close()
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "Federation `@none/default` (2 simulated SuperNodes)" in proc.stdout
    assert "federation: 2 SuperNode(s) connected" in proc.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["rounds"][1]["clients_trained"] == 2
    assert sum(metrics["global_label_histogram"]) == 1077  # two partitions that cover the federation
    assert (app_dir / "pyproject.toml").read_bytes() == pyproject
    assert leftovers == []
