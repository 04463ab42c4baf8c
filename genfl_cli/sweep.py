"""`genfl-sweep` (also `genfl-run -m`): a Hydra multirun whose every job is one `genfl-run`.

    genfl-sweep strategy=base_only,genfl,aigc_only partition.alpha=0.1,0.3 seed=0,1,2

Hydra's sweeper expands the grid and its launcher runs the jobs (the basic launcher: one at a time;
``hydra/launcher=joblib`` or ``submitit_slurm`` switch that by config). Each job goes through
`genfl_cli.run.run` (private SuperLink, fail-loudly outcome check) with its results in the job's
folder, ``<hydra.sweep.dir>/<its overrides>/``. Around that:

- every job's config is composed and validated before the first job starts;
- a failed job is recorded in its folder (``genfl_job.json``; an exception's traceback in
  ``error.txt``) and the sweep goes on; the command exits 1 at the end naming the failed jobs;
- a job whose folder already holds a completed run with the same overrides is skipped, and one that
  stopped mid-run continues from its last per-round checkpoint, so re-running the command with the
  same ``hydra.sweep.dir`` resumes a stopped or preempted sweep;
- a job whose folder holds a corrupt ``genfl_job.json`` or ``metrics.json`` fails, naming the file,
  and its folder is left as it is;
- each job starts with a line ``job k of N [overrides]: running`` (or ``continuing from its checkpoint``,
  ``already complete, skipped``) with the sweep's skipped and continued counts so far and, with the
  basic launcher, the ETA from the jobs run so far;
- Ctrl-C (or SIGTERM) stops the running job's processes, marks the job (``genfl_job.json``) and its
  metrics.json "interrupted", and ends the sweep with one line saying how to continue it (exit 130 / 143);
- with experiment tracking (``tracking=mlflow|tensorboard|wandb``) the sweep is one MLflow experiment /
  W&B group (``tracking.group``, the sweep folder's name) with one tracked run per job, in a store in
  the sweep folder (``tracking.root``); a continued job logs into its earlier tracked run.
"""

from __future__ import annotations

import logging
import shutil
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from genfl_cli.flwr_runs import quoted
from genfl_cli.flwr_runs import mark_interrupted
from genfl_cli.run import SIGINT_EXIT, RunInterrupted, run
from conf import CONF_DIR
from generation.progress import duration
from server_app.grid import config_errors, expand, outside_hydra
from server_app.jobs import invocation_records, is_complete, should_resume, write_json
from server_app.processes import run_processes, signal_then_kill
from server_app.results import (ERROR_FILE, FLWR_HOME, JOB_RECORD, MANIFEST, METRICS, RUN_FILES, CorruptFileError,
                                read_json, results_files)

log = logging.getLogger("genfl-sweep")
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"

@dataclass
class _Invocation:
    """What the driver process learns during one sweep, for the summary after Hydra returns."""

    validated: set[tuple[str, ...]] = field(default_factory=set)
    sweep_dir: Path | None = None
    jobs: list[list[str]] = field(default_factory=list)


_STATE = _Invocation()


# -- validating the grid (its jobs and their checks: server_app/grid.py) ---------------------------

def _is_hydra_key(override: str) -> bool:
    return override.lstrip("+~").startswith(("hydra.", "hydra/"))


def _refuse(errors: list[str], total: int) -> None:
    for line in errors:
        print(f"genfl-sweep: config error in {line}", file=sys.stderr)
    print(f"genfl-sweep: {len(errors)} of {total} job(s) have config errors; no job was started", file=sys.stderr)
    raise SystemExit(2)


class SweepCallback(Callback):
    """Hydra calls this in the driver process before the sweeper launches anything."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        task = list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
        sweeper = config.hydra.sweeper
        if sweeper.get("_target_") == BASIC_SWEEPER:
            params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
            jobs = expand(params + task)
            errors = config_errors(jobs, _STATE.validated)
            if errors:
                _refuse(errors, len(jobs))
            _check_distinct_folders(jobs, config)
        else:  # another sweeper (e.g. Optuna) decides its jobs as it goes: validate what is fixed
            jobs = []
            log.warning("sweeper %s: jobs are validated as they start, not up front", sweeper.get("_target_"))
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        manifest = {"started": datetime.now().isoformat(timespec="seconds"), "argv": sys.argv[1:], "jobs": jobs}
        write_json(sweep_dir / MANIFEST, manifest)
        _STATE.sweep_dir, _STATE.jobs = sweep_dir, jobs


def _check_distinct_folders(jobs: list[list[str]], config: DictConfig) -> None:
    """Job folders are named by overrides minus the excluded keys: two jobs must not share one."""
    excluded = set(config.hydra.job.config.override_dirname.exclude_keys)
    seen: dict[tuple[str, ...], list[str]] = {}
    for job in jobs:
        name = tuple(sorted(o for o in job if o.lstrip("+~").split("=", 1)[0] not in excluded))
        if name in seen:
            _refuse([f"job [{' '.join(job)}]: shares its folder with [{' '.join(seen[name])}] "
                     f"(keys {', '.join(sorted(excluded))} do not name folders)"], len(jobs))
        seen[name] = job


# -- one job ---------------------------------------------------------------------------------------

@dataclass
class Position:
    """Where a job stands in its sweep: its number (1-based) of ``total`` (None: not known up front),
    the sweep folder, this invocation's stamp (sweep.json's ``started``), whether jobs run one at a time and
    the job's tracking settings (the keys of its conf/tracking/<backend>.yaml)."""

    number: int
    total: int | None
    sweep_dir: Path
    invocation: str | None
    sequential: bool
    tracking: frozenset[str] = frozenset()

    def tracking_overrides(self, overrides: list[str]) -> list[str]:
        """A sweep is one tracked experiment/group, its store in the sweep folder (unless set), with a
        backend that has those settings (tracking=none has neither)."""
        given = {o.lstrip("+~").split("=", 1)[0] for o in overrides}
        extra = []
        if "group" in self.tracking and "tracking.group" not in given:
            extra.append(f"tracking.group={quoted(sweep_name(self.sweep_dir))}")
        if "root" in self.tracking and "tracking.root" not in given and "tracking.uri" not in given:
            extra.append(f"tracking.root={quoted(self.sweep_dir)}")
        return extra

    def line(self, overrides: list[str], doing: str) -> str:
        """``job 3 of 6 [seed=1 strategy=base_only]: running (so far: 1 skipped, 0 continued; ETA ...)``; the
        counts include this job, the ETA covers it and the jobs after it."""
        records = invocation_records(self.sweep_dir, self.invocation)
        skipped = sum(bool(r.get("skipped")) for r in records)
        continued = sum(bool(r.get("resumed")) and not r.get("skipped") for r in records)
        seconds = [r["seconds"] for r in records if not r.get("skipped") and r.get("seconds")]
        text = f"job {self.number} of {self.total or '?'} [{' '.join(overrides)}]: {doing} " \
               f"(so far: {skipped} skipped, {continued} continued"
        left = (self.total - self.number + 1) if self.total else None
        if self.sequential and seconds and left:
            text += f"; ETA {duration(sum(seconds) / len(seconds) * left)} for {left} job(s) at " \
                    f"{duration(sum(seconds) / len(seconds))} each"
        return text + ")"


def sweep_name(sweep_dir: Path) -> str:
    """The sweep's name in a tracker: its folder, relative to the current one when below it."""
    try:
        return str(sweep_dir.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(sweep_dir.resolve())


def run_job(overrides: list[str], job_dir: Path, position: Position | None = None) -> int:
    """One genfl-run in ``job_dir``, unless a completed run of the same overrides is already there.

    An earlier attempt of the same job that was stopped mid-run is continued from its checkpoint
    (genfl-run's ``output.resume``); anything else an earlier attempt left is cleared first.
    ``position`` (from Hydra, in a sweep) adds the "job k of N" line and the sweep's tracking settings.
    """
    try:
        previous = read_json(job_dir / JOB_RECORD)
        complete = is_complete(job_dir, overrides)
        resume = not complete and should_resume(job_dir, overrides)
    except CorruptFileError as err:
        return _refuse_job(overrides, job_dir, err)
    invocation = {"invocation": position.invocation} if position is not None and position.invocation else {}
    if complete:
        write_json(job_dir / JOB_RECORD, {**previous, "skipped": True, **invocation})
        if position is not None:
            log.info("%s", position.line(overrides, "already complete, skipped"))
        log.info("skipped (already complete): %s", job_dir)
        return 0
    if not resume:
        for name in RUN_FILES:
            path = job_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    record = {"overrides": overrides, "status": "running", "started": datetime.now().isoformat(timespec="seconds"),
              "skipped": False, "resumed": resume, **invocation}
    write_json(job_dir / JOB_RECORD, record)
    if position is not None:  # counts include this job
        log.info("%s", position.line(overrides, "continuing from its checkpoint" if resume else "running"))
    started = time.monotonic()
    extra = position.tracking_overrides(overrides) if position is not None else []

    try:
        with outside_hydra():
            code = run([*overrides, *extra, f"output.dir={quoted(job_dir)}",
                        *(["output.resume=true"] if resume else [])], raise_interrupt=True)
        error = None
    except RunInterrupted as stop:  # the sweep stops here; running it again continues this job
        record.update(status="interrupted", exit_code=stop.code, seconds=round(time.monotonic() - started, 1),
                      error=None, interrupted=str(stop))
        write_json(job_dir / JOB_RECORD, record)
        raise SweepInterrupted(overrides, job_dir, stop.code) from None
    except Exception as err:  # the sweep goes on; the record says what happened, error.txt where
        (job_dir / ERROR_FILE).write_text(traceback.format_exc())
        code, error = 1, f"{type(err).__name__}: {err} (traceback in {job_dir / ERROR_FILE})"
    if code != 0 and error is None:
        try:
            error = read_json(job_dir / METRICS).get("error")
        except CorruptFileError as err:
            error = str(err)
        error = error or f"genfl-run exited with {code}; see the output above and the job's superlink.log"
    status = "completed" if code == 0 else "failed"
    record.update(status=status, exit_code=code, seconds=round(time.monotonic() - started, 1), error=error)
    write_json(job_dir / JOB_RECORD, record)
    return code


def _refuse_job(overrides: list[str], job_dir: Path, err: CorruptFileError) -> int:
    """Fail the job and leave its folder (checkpoint, results) as it is: a corrupt record or metrics.json
    cannot say whether the earlier attempt completed, failed or stopped, and a guess could delete a
    checkpoint or step over a failed round. A readable record is marked failed, naming the file."""
    error = f"{err}; {job_dir} was left as it is: fix or remove that file and re-run (without it the job runs afresh)"
    log.error(error)
    if err.path.name != JOB_RECORD:
        previous = read_json(job_dir / JOB_RECORD)
        write_json(job_dir / JOB_RECORD, {**previous, "overrides": overrides, "status": "failed", "exit_code": 1,
                                           "skipped": False, "resumed": False, "error": error})
    return 1


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the sweep in this job (its processes are stopped, its record says so)."""

    def __init__(self, overrides: list[str], job_dir: Path, code: int):
        super().__init__(overrides, job_dir, code)  # all in args: it pickles (a joblib worker's)
        self.overrides, self.job_dir, self.code = overrides, job_dir, code

    def __str__(self) -> str:
        return f"job [{' '.join(self.overrides)}] in {self.job_dir}"


def stop_jobs_left_running(sweep_dir: Path) -> list[Path]:
    """The folders of jobs whose record still says running once the sweep is interrupted, now stopped and
    marked interrupted. A job run in this process records its own interruption; jobs in other processes
    (the joblib launcher's workers) are killed by their launcher before they can stop what they started
    (found by their private FLWR_HOME) or say so in metrics.json and genfl_job.json."""
    stopped = []
    for path in sorted(sweep_dir.glob(f"*/{JOB_RECORD}")):
        try:
            record = read_json(path)
        except CorruptFileError:
            continue
        if record.get("status") != "running":
            continue
        job_dir = path.parent
        signal_then_kill(run_processes(None, job_dir / FLWR_HOME), signal.SIGTERM, timeout=15)
        mark_interrupted(job_dir, None, was_running=False)  # a "failed" one stays failed
        write_json(path, {**record, "status": "interrupted", "exit_code": SIGINT_EXIT, "error": None})
        stopped.append(job_dir)
    return stopped


@hydra.main(config_path=str(CONF_DIR), config_name="sweep", version_base="1.3")
def _job(cfg: DictConfig) -> int:
    hydra_cfg = HydraConfig.get()
    return run_job(list(hydra_cfg.overrides.task), Path(hydra_cfg.runtime.output_dir),
                   _position(hydra_cfg, frozenset(cfg.tracking)))


def _position(hydra_cfg, tracking: frozenset[str]) -> Position:
    """This job's place in the sweep: Hydra's job number, the job list of sweep.json (written by the
    callback before any job starts, so it also serves launchers that run jobs in other processes)."""
    sweep_dir = Path(hydra_cfg.sweep.dir).resolve()
    try:
        manifest = read_json(sweep_dir / MANIFEST)
    except CorruptFileError:
        manifest = {}
    jobs = manifest.get("jobs") or []
    launcher = str(hydra_cfg.launcher.get("_target_", ""))
    return Position(number=int(hydra_cfg.job.get("num") or 0) + 1, total=len(jobs) or None, sweep_dir=sweep_dir,
                    invocation=manifest.get("started"), sequential=launcher == BASIC_LAUNCHER, tracking=tracking)


# -- the command -------------------------------------------------------------------------------------

HYDRA_INFO_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "--version", "--shell-completion", "-sc")


def main(argv: list[str] | None = None) -> int:
    """Validate the command line's grid, let Hydra run the sweep, then report and set the exit code.
    Ctrl-C: one line that says where the sweep stopped and how to continue it (exit 130)."""
    handler = signal.getsignal(signal.SIGINT)
    try:
        return _main(argv)
    except KeyboardInterrupt as stop:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # what the jobs left is stopped first
        stopped = stop_jobs_left_running(_STATE.sweep_dir) if _STATE.sweep_dir is not None else []
        where = f" in {stop}" if isinstance(stop, SweepInterrupted) else (
            f" in {len(stopped)} running job(s) ({', '.join(p.name for p in stopped)})" if stopped else "")
        if _STATE.sweep_dir is None:
            print(f"genfl-sweep: interrupted{where} before any job started", file=sys.stderr)
        else:
            print(f"genfl-sweep: interrupted{where}; everything it started is stopped; re-run the same command with "
                  f"hydra.sweep.dir={_STATE.sweep_dir} to continue (completed jobs are skipped, an interrupted one "
                  "continues from its checkpoint)", file=sys.stderr)
        return getattr(stop, "code", SIGINT_EXIT)
    finally:
        if handler is not None:
            signal.signal(signal.SIGINT, handler)


def _main(argv: list[str] | None) -> int:
    args = [a for a in (sys.argv[1:] if argv is None else argv) if a not in ("-m", "--multirun")]
    informational = any(a.split("=")[0] in HYDRA_INFO_FLAGS for a in args)
    if not informational:
        overrides = [a for a in args if not a.startswith("-") and not _is_hydra_key(a)]
        try:
            jobs = expand(overrides)
        except HydraException as err:
            print(f"genfl-sweep: config error: {str(err).splitlines()[0]}", file=sys.stderr)
            return 2
        errors = config_errors(jobs, _STATE.validated)  # before Hydra composes anything: one line per bad job
        if errors:
            try:
                _refuse(errors, len(jobs))
            except SystemExit as stop:
                return int(stop.code)
    sys.argv = ["genfl-sweep", *([] if informational else ["--multirun"]), *args]  # --cfg/--help: no sweep
    _job()
    return 0 if informational or _STATE.sweep_dir is None else summarize(_STATE.sweep_dir, _STATE.jobs)


def summarize(sweep_dir: Path, jobs: list[list[str]]) -> int:
    """Print what every job of this invocation did; 1 if any failed or left no record."""
    records, corrupt = {}, []
    for path in results_files(sweep_dir, JOB_RECORD):  # not the copies a tracker keeps
        try:
            record = read_json(path)
        except CorruptFileError as err:
            corrupt.append(err)
            continue
        records[tuple(sorted(record.get("overrides", [])))] = (path.parent, record)
    no_record = "no record: the job did not run to the end" + (", or its record is corrupt (below)" if corrupt else "")
    failed, skipped, resumed = [], 0, 0
    for job in jobs:
        folder, record = records.get(tuple(sorted(job)), (None, {}))
        if record.get("exit_code") == 0:
            skipped += bool(record.get("skipped"))
            resumed += bool(record.get("resumed")) and not record.get("skipped")
        else:
            failed.append((job, folder, record.get("error") or no_record))
    done = len(jobs) - len(failed)
    print(f"genfl-sweep: {done} of {len(jobs)} job(s) completed ({skipped} already complete, skipped; "
          f"{resumed} continued from a checkpoint); results in {sweep_dir}")
    for job, folder, error in failed:
        print(f"genfl-sweep: FAILED [{' '.join(job)}] in {folder or sweep_dir}: {error}", file=sys.stderr)
    for err in corrupt:
        print(f"genfl-sweep: {err}; its job was not run and its folder was left as it is", file=sys.stderr)
    if failed:
        print(f"genfl-sweep: {len(failed)} job(s) failed; re-run the same command with hydra.sweep.dir={sweep_dir} "
              "to retry them (completed jobs are skipped)", file=sys.stderr)
    return 1 if failed else 0


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":  # Hydra instantiates the callback from genfl_cli.sweep: share its state
    from genfl_cli.sweep import cli as imported_cli

    imported_cli()
