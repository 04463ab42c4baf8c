"""Ctrl-C (issue 26, item 9): an interrupted run stops everything it started, its metrics.json says
"interrupted" (not "running"), and the console says how to resume it; genfl-sweep ends with one line,
no traceback, exit 130.

The slow tests send SIGINT to the launcher's process group, as a terminal's Ctrl-C does, while the run
waits in round 2 (its ClientApps stall from round 2 on: tests/faulty_client_app.py "stall2"), so the
signal always lands after round 1's checkpoint. The interrupted run's copy, in a folder whose name holds
'=' and ',', then resumes with the honest app into that folder, leaving the original as it was (item 6).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server_app.results import JOB_RECORD, METRICS

REPO = Path(__file__).resolve().parents[1]
TINY = ("strategy=base_only", "federation.num_clients=2", "num_rounds=2")


def _metrics(run_dir: Path, **data) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / METRICS).write_text(json.dumps({"run_id": 7, "rounds": [{"round": 1}], **data}))
    return run_dir


def _read(run_dir: Path) -> dict:
    return json.loads((run_dir / METRICS).read_text())


def test_a_stopped_runs_metrics_say_interrupted_and_other_runs_metrics_are_left_alone(tmp_path):
    from genfl_cli.flwr_runs import mark_interrupted

    running = _metrics(tmp_path / "running", status="running")
    assert mark_interrupted(running, 7, was_running=True)["status"] == "interrupted"
    assert _read(running)["status"] == "interrupted" and _read(running)["rounds"] == [{"round": 1}]
    # Killing the clients can fail the round before the ServerApp itself is stopped: still an interruption.
    torn = _metrics(tmp_path / "torn", status="failed", error="NoTrainingRepliesError: round 2")
    mark_interrupted(torn, 7, was_running=True)
    assert (_read(torn)["status"], _read(torn)["error_while_stopping"]) == ("interrupted", "NoTrainingRepliesError: round 2")
    assert "error" not in _read(torn)
    failed = _metrics(tmp_path / "failed", status="failed", error="RuntimeError: x")  # failed before the Ctrl-C
    mark_interrupted(failed, 7, was_running=False)
    assert _read(failed)["status"] == "failed"
    older = _metrics(tmp_path / "older", status="running")  # another run's file (a reused folder)
    assert mark_interrupted(older, 8, was_running=True) is None and _read(older)["status"] == "running"
    done = _metrics(tmp_path / "done", status="completed")
    assert mark_interrupted(done, 7, was_running=False)["status"] == "completed"
    assert mark_interrupted(tmp_path / "none", 7, was_running=True) is None


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _interrupt_when(launcher: subprocess.Popen, ready, what: str, output: Path) -> int:
    """Ctrl-C (SIGINT to the launcher's process group) once ``ready()``; the launcher's exit code."""
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and launcher.poll() is None and not ready():
            time.sleep(0.5)
        assert launcher.poll() is None and ready(), f"no {what} to interrupt:\n{output.read_text()[-3000:]}"
        os.killpg(launcher.pid, signal.SIGINT)
        return launcher.wait(timeout=240)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)


def _start(command: list[str], app_dir: Path, out: Path, err: Path) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=app_dir, env=dict(os.environ, PYTHONPATH=str(app_dir)),
                            stdout=open(out, "w"), stderr=open(err, "w"), start_new_session=True)


@pytest.mark.slow
def test_ctrl_c_marks_the_run_interrupted_says_how_to_resume_and_its_copy_resumes_in_its_own_folder(tmp_path):
    from tests.sim import assert_nothing_left_running, faulty_app

    app_dir = faulty_app(tmp_path, {p: "stall2" for p in range(2)})
    run_dir, out, err = tmp_path / "run", tmp_path / "out.txt", tmp_path / "err.txt"
    launcher = _start([sys.executable, "-m", "genfl_cli.run", f"output.dir={run_dir}", *TINY], app_dir, out, err)
    code = _interrupt_when(launcher, lambda: (run_dir / "checkpoint" / "latest.pkl").is_file(), "checkpoint", err)
    stdout, stderr = out.read_text(), err.read_text()
    assert code == 130, stderr[-3000:]
    assert "Traceback" not in stdout + stderr, stderr[-3000:]
    metrics = json.loads((run_dir / METRICS).read_text())
    assert metrics["status"] == "interrupted" and metrics["rounds"][-1]["round"] == 1
    assert stderr.strip().splitlines()[-1] == (
        f"genfl-run: interrupted (run {metrics['run_id']}, after round 1 of 2); everything it started is stopped; "
        f"results so far in {run_dir}; resume with: genfl-run --resume {run_dir}")
    assert_nothing_left_running(run_dir)

    # Item 6: its copy, in a folder named like a sweep job's, resumes there; the original stays as it was.
    copy = tmp_path / "moved" / "seed=0,strategy=base_only"
    shutil.copytree(run_dir, copy)
    original = _files(run_dir)
    resumed = subprocess.run([sys.executable, "-m", "genfl_cli.run", "--resume", str(copy)], cwd=REPO,
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"results in {copy}" in resumed.stdout
    result = json.loads((copy / METRICS).read_text())
    assert (result["status"], result["resumed_after_round"], result["rounds"][-1]["round"]) == ("completed", 1, 2)
    assert result["config"]["output"]["dir"] == str(copy) and result["run_id"] != metrics["run_id"]
    assert _files(run_dir) == original
    assert_nothing_left_running(copy)


@pytest.mark.slow
def test_ctrl_c_in_a_sweep_is_one_line_without_traceback_and_the_job_continues_later(tmp_path):
    from genfl_cli.sweep import should_resume
    from tests.sim import assert_nothing_left_running, faulty_app

    app_dir = faulty_app(tmp_path, {p: "stall2" for p in range(2)})
    sweep, out, err = tmp_path / "sweep", tmp_path / "out.txt", tmp_path / "err.txt"
    launcher = _start([sys.executable, "-m", "genfl_cli.sweep", *TINY, "seed=0,1", f"hydra.sweep.dir={sweep}"],
                      app_dir, out, err)
    code = _interrupt_when(launcher, lambda: any(sweep.glob("*/checkpoint/latest.pkl")), "job checkpoint", out)
    stdout, stderr = out.read_text(), err.read_text()
    assert code == 130, stdout[-3000:] + stderr[-3000:]
    assert "Traceback" not in stdout + stderr, stdout[-3000:] + stderr[-3000:]
    (job_dir,) = [p.parent for p in sweep.glob(f"*/{JOB_RECORD}")]  # the second job never started
    record = json.loads((job_dir / JOB_RECORD).read_text())
    lines = [line for line in stderr.splitlines() if line.startswith("genfl-sweep:")]
    assert lines == [f"genfl-sweep: interrupted in job [{' '.join(record['overrides'])}] in {job_dir}; everything it "
                     f"started is stopped; re-run the same command with hydra.sweep.dir={sweep} to continue "
                     "(completed jobs are skipped, an interrupted one continues from its checkpoint)"]
    assert stderr.strip().splitlines()[-1] == lines[0]
    assert (record["status"], record["exit_code"]) == ("interrupted", 130)
    assert json.loads((job_dir / METRICS).read_text())["status"] == "interrupted"
    assert should_resume(job_dir, record["overrides"])
    assert_nothing_left_running(job_dir)


def test_jobs_that_other_processes_ran_are_stopped_and_marked_interrupted_when_the_sweep_is(tmp_path):
    """Under the joblib launcher the jobs run in worker processes, which joblib kills on Ctrl-C before they
    can stop what they started or record it: the sweep does both for every job still marked running."""
    import psutil

    from genfl_cli.sweep import stop_jobs_left_running

    sweep = tmp_path / "sweep"
    running, done = sweep / "seed=0", sweep / "seed=1"
    for job, status in ((running, "running"), (done, "completed")):
        _metrics(job, status=status)
        (job / JOB_RECORD).write_text(json.dumps({"overrides": [job.name], "status": status, "exit_code": None}))
    (running / "flwr-home").mkdir()
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True,
                              env=dict(os.environ, FLWR_HOME=str(running / "flwr-home")))  # a Ray worker, say
    try:
        deadline = time.monotonic() + 30  # its environment is readable once it runs
        while time.monotonic() < deadline and psutil.Process(orphan.pid).environ().get("FLWR_HOME") is None:
            time.sleep(0.05)
        assert stop_jobs_left_running(sweep) == [running]
        assert orphan.wait(timeout=30) is not None
    finally:
        orphan.kill()
    assert (_read(running)["status"], json.loads((running / JOB_RECORD).read_text())["status"]) == ("interrupted",) * 2
    assert (_read(done)["status"], json.loads((done / JOB_RECORD).read_text())["status"]) == ("completed",) * 2


@pytest.mark.slow
def test_ctrl_c_of_a_sweep_under_joblib_stops_and_marks_every_running_job(tmp_path):
    from genfl_cli.sweep import should_resume
    from tests.sim import assert_nothing_left_running, faulty_app

    app_dir = faulty_app(tmp_path, {p: "stall2" for p in range(2)})
    sweep, out, err = tmp_path / "sweep", tmp_path / "out.txt", tmp_path / "err.txt"
    launcher = _start([sys.executable, "-m", "genfl_cli.sweep", *TINY, "seed=0,1", f"hydra.sweep.dir={sweep}",
                       "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], app_dir, out, err)
    code = _interrupt_when(launcher, lambda: len(list(sweep.glob("*/checkpoint/latest.pkl"))) == 2,
                           "two job checkpoints", out)
    stdout, stderr = out.read_text(), err.read_text()
    assert code == 130, stdout[-3000:] + stderr[-3000:]
    assert "Traceback" not in stdout + stderr, stdout[-3000:] + stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("genfl-sweep:")]
    assert len(lines) == 1 and lines[0].startswith("genfl-sweep: interrupted in ") and f"hydra.sweep.dir={sweep} " in lines[0]
    jobs = sorted(p.parent for p in sweep.glob(f"*/{JOB_RECORD}"))
    assert len(jobs) == 2
    for job_dir in jobs:
        record = json.loads((job_dir / JOB_RECORD).read_text())
        assert (record["status"], json.loads((job_dir / METRICS).read_text())["status"]) == ("interrupted",) * 2
        assert should_resume(job_dir, record["overrides"])
        assert_nothing_left_running(job_dir)
