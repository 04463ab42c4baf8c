"""`genfl-sweep` / `genfl-run -m`: a real Hydra multirun of real genfl-run jobs.

One small sweep (two jobs, one of them failing) is shared by the slow tests; the config-error tests
start nothing and are fast.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from genfl_cli.sweep import BASIC_SWEEPER, SweepCallback, expand
from server_app.results import JOB_RECORD

REPO = Path(__file__).resolve().parents[1]
# FedAvg, 2 clients, 1 round; client.device=cuda:7 makes every client fail, so that job fails.
TINY = ["strategy=base_only", "federation.num_clients=2", "num_rounds=1", "client.device=cpu,cuda:7"]
GOOD = ("client.device=cpu", "federation.num_clients=2", "num_rounds=1", "strategy=base_only")


def _sweep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "genfl_cli.run", "-m", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=900)


def test_expansion_is_hydras_cartesian_product_in_command_line_order():
    assert expand(["strategy=base_only,genfl", "seed=0,1", "num_rounds=3"]) == [
        ["strategy=base_only", "seed=0", "num_rounds=3"], ["strategy=base_only", "seed=1", "num_rounds=3"],
        ["strategy=genfl", "seed=0", "num_rounds=3"], ["strategy=genfl", "seed=1", "num_rounds=3"]]
    assert len(expand(["strategy.kappa_aug=0.1,0.5", "seed=range(0,3)"])) == 6


def test_a_config_error_in_any_job_stops_the_sweep_before_the_first_job(tmp_path):
    proc = _sweep("strategy=base_only,genfl", "partition.alpha=0.3,-1", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "genfl-sweep: config error in job [strategy=base_only partition.alpha=-1]: partition.alpha: must be > 0 (got -1)",
        "genfl-sweep: config error in job [strategy=genfl partition.alpha=-1]: partition.alpha: must be > 0 (got -1)",
        "genfl-sweep: 2 of 4 job(s) have config errors; no job was started",
    ]
    assert not (tmp_path / "sweep").exists()


def test_an_unknown_key_or_option_is_one_line_per_job(tmp_path):
    proc = _sweep("strategy=base_only,nope", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert proc.returncode == 2
    assert "config error in job [strategy=nope]: In 'config': Could not find 'strategy/nope' " \
           "(available: aigc_only, base_only, genfl)" in proc.stderr
    assert "[strategy=base_only]" not in proc.stderr


def test_a_grid_set_in_config_is_validated_before_the_first_job(tmp_path, capsys):
    # What a preset's hydra.sweeper.params gives the callback (e.g. conf/experiment/convergence/main.yaml).
    config = OmegaConf.create({"hydra": {
        "overrides": {"task": ["strategy=base_only"]},
        "sweeper": {"_target_": BASIC_SWEEPER, "params": {"partition.alpha": "0.1,0", "seed": "0,1"}},
        "sweep": {"dir": str(tmp_path / "sweep")},
        "job": {"config": {"override_dirname": {"exclude_keys": []}}}}})
    with pytest.raises(SystemExit) as stop:
        SweepCallback().on_multirun_start(config)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "job [partition.alpha=0 seed=0 strategy=base_only]: partition.alpha: must be > 0 (got 0)" in err
    assert "2 of 4 job(s) have config errors" in err
    assert not (tmp_path / "sweep").exists()


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """The sweep, then the same command again (which must skip the completed job and retry the failed one)."""
    sweep_dir = tmp_path_factory.mktemp("sweep") / "tiny"
    first = _sweep(*TINY, f"hydra.sweep.dir={sweep_dir}")
    good = sweep_dir / ",".join(GOOD)
    stamp = (good / "metrics.json").stat().st_mtime_ns if (good / "metrics.json").exists() else None
    second = _sweep(*TINY, f"hydra.sweep.dir={sweep_dir}", "hydra/launcher=joblib", "hydra.launcher.n_jobs=1")
    return sweep_dir, first, second, stamp


@pytest.mark.slow
def test_sweep_runs_every_job_and_exits_non_zero_naming_the_failed_one(tiny_sweep):
    sweep_dir, first, _, _ = tiny_sweep
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    assert "genfl-sweep: 1 of 2 job(s) completed" in first.stdout
    failed = [line for line in first.stderr.splitlines() if line.startswith("genfl-sweep: FAILED")]
    assert len(failed) == 1 and "client.device=cuda\\:7" in failed[0] and "0 usable client model(s)" in failed[0]
    good = json.loads((sweep_dir / ",".join(GOOD) / "metrics.json").read_text())
    assert good["status"] == "completed" and [r["round"] for r in good["rounds"]] == [0, 1]
    assert good["config"]["output"]["dir"] == str(sweep_dir / ",".join(GOOD))  # results in the job's folder
    record = json.loads((sweep_dir / ",".join(GOOD) / JOB_RECORD).read_text())
    assert record["exit_code"] == 0 and sorted(record["overrides"]) == sorted(GOOD)
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    assert len(manifest["jobs"]) == 2
    assert _processes_of(sweep_dir) == []


def _processes_of(sweep_dir: Path) -> list[int]:
    """Processes still carrying a job's private FLWR_HOME (SuperLink, Ray, ...)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["environ"]):
        try:
            if str(sweep_dir) in (proc.info["environ"] or {}).get("FLWR_HOME", ""):
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.mark.slow
def test_rerun_skips_the_completed_job_and_retries_the_failed_one_on_another_launcher(tiny_sweep):
    sweep_dir, _, second, stamp = tiny_sweep
    assert second.returncode == 1, second.stdout[-3000:] + second.stderr[-3000:]
    assert "1 of 2 job(s) completed (1 already complete, skipped; 0 continued from a checkpoint)" in second.stdout
    good = sweep_dir / ",".join(GOOD)
    assert (good / "metrics.json").stat().st_mtime_ns == stamp  # not run again
    assert json.loads((good / JOB_RECORD).read_text())["skipped"] is True
    failed = json.loads((next(p for p in sweep_dir.iterdir() if "cuda" in p.name) / JOB_RECORD).read_text())
    assert (failed["skipped"], failed["resumed"], failed["status"]) == (False, False, "failed")  # retried afresh
    assert "FAILED" in second.stderr and "joblib" in (sweep_dir / "multirun.yaml").read_text()


@pytest.mark.slow
def test_report_of_the_sweep_uses_the_completed_job_and_names_the_failed_one(tiny_sweep, tmp_path):
    sweep_dir = tiny_sweep[0]
    proc = subprocess.run([sys.executable, "-m", "genfl_cli.report", str(sweep_dir), "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "1 configuration(s) from 1 run(s)" in proc.stdout
    assert "not included" in proc.stderr and "cuda" in proc.stderr and "0 usable client model(s)" in proc.stderr
    assert (tmp_path / "accuracy_by_round.png").exists()


def _attempt(job_dir: Path, overrides, checkpoint=True, **record):
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / JOB_RECORD).write_text(json.dumps({"overrides": overrides, **record}))
    if checkpoint:
        (job_dir / "checkpoint").mkdir(exist_ok=True)
        (job_dir / "checkpoint" / "latest.pkl").write_bytes(b"checkpoint")


def test_a_stopped_job_continues_from_its_checkpoint_but_a_failed_one_starts_afresh(tmp_path):
    from genfl_cli.sweep import is_complete, should_resume

    job = ["strategy=genfl", "seed=1"]
    _attempt(tmp_path / "stopped", job, status="running")  # killed mid-run: the record still says running
    assert should_resume(tmp_path / "stopped", list(reversed(job)))
    _attempt(tmp_path / "failed", job, status="failed")  # resuming would step over the failed round
    assert not should_resume(tmp_path / "failed", job)
    _attempt(tmp_path / "other-job", ["strategy=genfl", "seed=2"], status="running")
    assert not should_resume(tmp_path / "other-job", job)
    _attempt(tmp_path / "no-checkpoint", job, checkpoint=False, status="running")
    assert not should_resume(tmp_path / "no-checkpoint", job)
    assert not is_complete(tmp_path / "stopped", job)


def test_an_exception_in_a_job_leaves_its_traceback_in_the_job_folder(tmp_path, monkeypatch, capsys):
    from genfl_cli.sweep import run_job, summarize

    def superlink_that_dies(overrides, **_):
        raise RuntimeError("flower-superlink exited with code 1")

    monkeypatch.setattr("genfl_cli.sweep.run", superlink_that_dies)
    job_dir = tmp_path / "seed=1"
    job_dir.mkdir()
    assert run_job(["seed=1"], job_dir) == 1
    assert (job_dir / "error.txt").is_file()
    trace = (job_dir / "error.txt").read_text()
    assert "Traceback" in trace and "superlink_that_dies" in trace and "flower-superlink exited with code 1" in trace
    assert summarize(tmp_path, [["seed=1"]]) == 1
    assert f"FAILED [seed=1] in {job_dir}: RuntimeError: flower-superlink exited with code 1 " \
           f"(traceback in {job_dir / 'error.txt'})" in capsys.readouterr().err


def _launcher_that_must_not_run(monkeypatch) -> list:
    calls = []
    monkeypatch.setattr("genfl_cli.sweep.run", lambda overrides, **_: calls.append(overrides) or 0)
    return calls


def test_a_corrupt_job_record_fails_the_job_and_keeps_its_checkpoint(tmp_path, monkeypatch, caplog, capsys):
    # Unreadable, the record cannot say whether the attempt completed, failed or stopped: nothing is guessed.
    from genfl_cli.sweep import run_job, summarize

    calls = _launcher_that_must_not_run(monkeypatch)
    job_dir = tmp_path / "seed=1"
    _attempt(job_dir, ["seed=1"], status="running")
    (job_dir / JOB_RECORD).write_text('{"overrides": ["seed=1"], "stat')
    assert run_job(["seed=1"], job_dir) == 1
    assert (job_dir / "checkpoint" / "latest.pkl").read_bytes() == b"checkpoint"
    assert (job_dir / JOB_RECORD).read_text() == '{"overrides": ["seed=1"], "stat'
    assert calls == []
    assert f"{job_dir / JOB_RECORD}: corrupt (JSONDecodeError: " in caplog.text
    assert summarize(tmp_path, [["seed=1"]]) == 1
    err = capsys.readouterr().err
    assert "FAILED [seed=1]" in err and "its record is corrupt" in err
    assert f"{job_dir / JOB_RECORD}: corrupt (JSONDecodeError: " in err


def test_a_corrupt_metrics_json_fails_the_job_instead_of_being_cleared_as_missing(tmp_path, monkeypatch):
    from genfl_cli.sweep import run_job

    calls = _launcher_that_must_not_run(monkeypatch)
    job_dir = tmp_path / "seed=1"
    _attempt(job_dir, ["seed=1"], status="completed", exit_code=0)
    (job_dir / "metrics.json").write_text('{"status": "compl')
    assert run_job(["seed=1"], job_dir) == 1
    assert (job_dir / "metrics.json").read_text() == '{"status": "compl'
    assert (job_dir / "checkpoint" / "latest.pkl").is_file() and calls == []
    record = json.loads((job_dir / JOB_RECORD).read_text())
    assert (record["status"], record["exit_code"]) == ("failed", 1)
    assert record["error"].startswith(f"{job_dir / 'metrics.json'}: corrupt (JSONDecodeError: ")
