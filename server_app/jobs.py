"""A sweep job's record (genfl_job.json, in the job's folder) and what it says about the job: complete,
to be continued from its checkpoint, written by this invocation of the sweep (genfl-sweep keeps them)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from server_app.checkpoint import checkpoint_path
from server_app.results import JOB_RECORD, METRICS, CorruptFileError, read_json


def write_json(path: Path, data: dict) -> None:
    """Written whole or not at all (a temporary file renamed over it)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def invocation_records(sweep_dir: Path, invocation: str | None) -> list[dict]:
    """The job records this invocation of the sweep wrote so far (job folders are the sweep folder's children)."""
    records = []
    for path in sweep_dir.glob(f"*/{JOB_RECORD}"):
        try:
            record = read_json(path)
        except CorruptFileError:
            continue
        if invocation is not None and record.get("invocation") == invocation:
            records.append(record)
    return records


def should_resume(job_dir: Path, overrides: list[str]) -> bool:
    """An earlier attempt of this very job was stopped mid-run (its record says running, or interrupted)
    after writing a checkpoint. An attempt that ended in failure starts afresh: resuming it would step
    over the failed round."""
    previous = read_json(job_dir / JOB_RECORD)
    return (previous.get("status") in ("running", "interrupted") and sorted(previous.get("overrides", [])) == sorted(overrides)
            and checkpoint_path(job_dir).is_file())


def is_complete(job_dir: Path, overrides: list[str]) -> bool:
    record = read_json(job_dir / JOB_RECORD)
    metrics = read_json(job_dir / METRICS)
    return (record.get("exit_code") == 0 and sorted(record.get("overrides", [])) == sorted(overrides)
            and metrics.get("status") == "completed")
