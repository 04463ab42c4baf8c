"""A run's outcome comes from that run only (issue 10, item 2): a reused results folder that holds an
older run's "completed" metrics.json must not make a failed run look successful."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from genfl_cli.flwr_runs import COMPLETED, outcome, results_of

REPO = Path(__file__).resolve().parents[1]


def _metrics(run_dir: Path, run_id, status="completed", **extra) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(json.dumps({"status": status, "run_id": run_id, "rounds": [], **extra}))


def test_metrics_of_another_run_are_not_this_runs_results(tmp_path):
    _metrics(tmp_path, 111)
    assert results_of(tmp_path, 111)["status"] == "completed"
    assert results_of(tmp_path, 222) is None
    (tmp_path / "metrics.json").write_text("{truncated")
    corrupt = results_of(tmp_path, 111)
    assert corrupt["status"] == "failed" and "metrics.json: corrupt" in corrupt["error"]


def test_failed_run_in_a_folder_with_an_older_completed_run_fails(tmp_path, capsys):
    _metrics(tmp_path, 111)
    assert outcome("genfl-run", tmp_path, 222, "finished:failed", "") == 1
    err = capsys.readouterr().err
    assert "run FAILED (run 222, status finished:failed)" in err and "wrote no results of run 222" in err


def test_completed_status_needs_this_runs_completed_metrics(tmp_path, capsys):
    _metrics(tmp_path, 111)
    assert outcome("genfl-run", tmp_path, 222, COMPLETED, "") == 1
    assert "no metrics.json of run 222" in capsys.readouterr().err
    _metrics(tmp_path, 222)
    assert outcome("genfl-run", tmp_path, 222, COMPLETED, "") == 0
    assert "genfl-run: completed (run 222); results in" in capsys.readouterr().out


def test_a_failed_runs_own_error_is_reported(tmp_path, capsys):
    _metrics(tmp_path, 5, status="failed", error="NoTrainingRepliesError: round 1: no client returned a usable model")
    assert outcome("genfl-deploy-run", tmp_path, 5, "finished:failed", "") == 1
    assert "NoTrainingRepliesError: round 1" in capsys.readouterr().err


def test_remote_results_folder_is_accepted_only_when_the_run_completed(tmp_path):
    remote = tmp_path / "on-the-server"
    assert outcome("genfl-deploy-run", remote, 5, COMPLETED, "", require_results=False) == 0
    assert outcome("genfl-deploy-run", remote, 5, "finished:failed", "", require_results=False) == 1


@pytest.mark.slow
def test_genfl_run_reusing_a_folder_does_not_report_the_older_runs_success(tmp_path):
    """Before the fix the launcher read the old metrics.json and exited 0 although this run's ServerApp died."""
    run_dir = tmp_path / "run"
    _metrics(run_dir, 111, config={}, rounds=[{"round": 1, "test_accuracy": 0.9}])
    # The ServerApp dies before writing its report: its temporary file's name is taken by a folder.
    (run_dir / "metrics.json.tmp").mkdir()
    (run_dir / "metrics.json.tmp" / "keep").write_text("x")
    proc = subprocess.run(
        [sys.executable, "-m", "genfl_cli.run", f"output.dir={run_dir}", "strategy=base_only",
         "federation.num_clients=2", "num_rounds=1"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "run FAILED (run " in proc.stderr and "status finished:failed" in proc.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["run_id"] == 111  # untouched, and not trusted


def test_flower_executables_come_from_this_interpreters_environment(tmp_path, monkeypatch):
    """`.venv/bin/python bench/convergence.py run` without an activated venv once failed every job with
    `No such file or directory: 'flower-superlink'`: the launcher must find Flower's tools beside its Python."""
    import shutil

    from genfl_cli.flwr_runs import flower_env

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    env = flower_env(tmp_path)
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert shutil.which("flower-superlink", path=env["PATH"]) == str(Path(sys.executable).parent / "flower-superlink")


def test_a_corrupt_metrics_json_is_a_failure_that_names_the_file_not_missing_results(tmp_path, capsys):
    (tmp_path / "metrics.json").write_text('{"run_id": 111, "status": "compl')
    assert outcome("genfl-run", tmp_path, 111, COMPLETED, "") == 1
    err = capsys.readouterr().err
    assert "metrics.json: corrupt (JSONDecodeError" in err and "no metrics.json" not in err
