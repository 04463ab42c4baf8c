"""`genfl-run` end to end: a real SuperLink, `flwr run`, simulated ClientApps, real training.

Each run gets its own FLWR_HOME and ports inside tmp_path; the launcher stops the SuperLink's whole
process group by PID, and these tests check that nothing it started is left behind.
"""

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]


def _launch(tmp_path: Path, *overrides: str) -> tuple[subprocess.CompletedProcess, Path]:
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "server_app.launch", f"output.dir={run_dir}", *overrides],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    return proc, run_dir


def _assert_nothing_left_running(run_dir: Path) -> None:
    port = int(tomllib.loads((run_dir / "flwr-home" / "config.toml").read_text())["superlink"]["genfl"]["address"].rsplit(":", 1)[1])
    leftovers = []
    for process in psutil.process_iter(["pid", "cmdline", "environ"]):
        try:
            cmdline = " ".join(process.info["cmdline"] or [])
            environ = process.info["environ"] or {}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if str(run_dir) in cmdline or f"127.0.0.1:{port}" in cmdline or environ.get("FLWR_HOME") == str(run_dir / "flwr-home"):
            leftovers.append((process.pid, cmdline[:120]))
    assert leftovers == []


@pytest.mark.slow
def test_simulation_trains_above_chance_and_writes_results(tmp_path):
    proc, run_dir = _launch(tmp_path, "strategy=fedavg", "federation.num_clients=4", "num_rounds=2", "client.local_epochs=1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["config"]["federation"]["num_clients"] == 4
    rounds = metrics["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert all(r["clients_trained"] == 4 for r in rounds[1:])
    assert rounds[-1]["test_accuracy"] > 0.2, rounds  # chance is 0.1 on 10 balanced classes
    assert rounds[-1]["train_loss"] > 0 and rounds[-1]["wall_seconds"] > 0
    assert sum(metrics["global_label_histogram"]) == 1077
    assert (run_dir / "metrics.csv").read_text().startswith("round,test_accuracy,test_loss")
    assert (run_dir / "accuracy.png").stat().st_size > 1000
    assert "round 2/2: test accuracy" in proc.stdout
    _assert_nothing_left_running(run_dir)


@pytest.mark.slow
def test_genfl_simulation_mixes_in_the_augmented_model(tmp_path):
    proc, run_dir = _launch(tmp_path, "strategy=genfl", "federation.num_clients=3", "num_rounds=2", "client.local_epochs=1",
                            "generation.per_class=10", f"generation.cache_dir={tmp_path / 'cache'}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["generation"]["images_available"] == 100 and not metrics["generation"]["cache_hit"]
    first, second = metrics["rounds"][1], metrics["rounds"][2]
    assert first["images_synthesized"] == 100 and first["images_used"] == 100
    assert (first["kappa_fl"], first["kappa_aug"]) == (metrics["config"]["strategy"]["kappa_fl"], metrics["config"]["strategy"]["kappa_aug"])
    assert 0.0 <= second["augmented_test_accuracy"] <= 1.0 and second["augmented_train_seconds"] > 0
    assert second["clients_trained"] == 3
    assert second["test_accuracy"] > 0.2
    _assert_nothing_left_running(run_dir)


@pytest.mark.slow
def test_run_where_every_client_fails_exits_non_zero(tmp_path):
    # A device no client has: every ClientApp raises, so no round can aggregate anything.
    proc, run_dir = _launch(tmp_path, "strategy=fedavg", "federation.num_clients=2", "num_rounds=1", "client.device=cuda:7")
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "run FAILED" in proc.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "failed"
    assert "RoundFailedError" in metrics["error"]
    _assert_nothing_left_running(run_dir)


def test_bad_config_fails_before_starting_anything(tmp_path):
    proc, run_dir = _launch(tmp_path, "partition.alpha=-1")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "genfl-run: config error: partition.alpha: must be > 0 (got -1)"
    assert not run_dir.exists()
