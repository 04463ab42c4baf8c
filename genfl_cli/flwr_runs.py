"""Run the app on a SuperLink with the flwr CLI and judge the outcome from that run alone.

`flwr run --stream` exits 0 even when the ServerApp crashed, and a reused results folder may hold an
older run's "completed" metrics.json. So both launchers start the run with `flwr run --format json`
(which gives its id), stream its logs with `flwr log --stream`, ask the SuperLink for that run's
status (`flwr list --run-id`), and trust a metrics.json only if it carries the same run id.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from server_app.config import load_config, run_directory
from server_app.results import METRICS, CorruptFileError, read_json

COMPLETED = "finished:completed"


class RunError(RuntimeError):
    """A flwr CLI step failed; the message says which and why."""


def _flwr_json(args: list[str], env: dict, what: str) -> dict:
    proc = subprocess.run(["flwr", *args, "--format", "json"], env=env, capture_output=True, text=True)
    try:
        payload = json.loads(proc.stdout)
    except json.JSONDecodeError:
        payload = {}
    if proc.returncode != 0 or not payload.get("success"):
        detail = payload.get("error-message") or (proc.stderr or proc.stdout).strip()[-2000:]
        raise RunError(f"{what} failed (`flwr {' '.join(args)}`, exit {proc.returncode}): {detail}")
    return payload


def start_run(app_dir: Path, connection: str, run_config: Path, env: dict, federation_config: str | None = None) -> int:
    """`flwr run` without waiting; returns the new run's id."""
    args = ["run", str(app_dir), connection, "--run-config", str(run_config)]
    if federation_config:
        args += ["--federation-config", federation_config]
    return int(_flwr_json(args, env, "starting the run")["run-id"])


def stream_logs(run_id: int, connection: str, env: dict) -> None:
    """Print the run's logs as they come, until the run ends (a stream error is not the run's outcome)."""
    subprocess.run(["flwr", "log", str(run_id), connection, "--stream"], env=env)


def run_status(run_id: int, connection: str, env: dict) -> tuple[str, str]:
    """(status, details) of the run as the SuperLink records it, e.g. ("finished:failed", "...")."""
    runs = _flwr_json(["list", connection, "--run-id", str(run_id)], env, "reading the run's status")["runs"]
    if not runs:
        raise RunError(f"the SuperLink has no run {run_id}")
    return str(runs[0].get("status", "")), str(runs[0].get("status-details", ""))


def stop_run(run_id: int, connection: str, env: dict) -> None:
    """Ask the SuperLink to stop the run (used when the launcher is interrupted)."""
    subprocess.run(["flwr", "stop", str(run_id), connection], env=env, capture_output=True, text=True, timeout=60)


def results_of(run_dir: Path, run_id: int) -> dict | None:
    """metrics.json if it belongs to run ``run_id``, else None (absent or another run's); a corrupt
    one comes back as a failed result that names the file, never as "no results"."""
    try:
        metrics = read_json(run_dir / METRICS)
    except CorruptFileError as err:
        return {"run_id": run_id, "status": "failed", "error": str(err)}
    return metrics if metrics.get("run_id") == run_id else None


def mark_interrupted(run_dir: Path, run_id: int | None, was_running: bool) -> dict | None:
    """After the launcher stopped an interrupted run (every process it started is gone): its metrics.json,
    which still says "running" (the ServerApp was stopped from outside, mid-round), now says
    "interrupted". A run whose metrics.json said "running" when the interrupt came (``was_running``) and
    "failed" after it failed while being stopped: interrupted too, its error kept as ``error_while_stopping``.
    Returns metrics.json (None: no readable metrics.json of this run; ``run_id`` None: of whichever run)."""
    path = run_dir / METRICS
    try:
        metrics = read_json(path)
    except CorruptFileError:
        return None
    if not metrics or (run_id is not None and metrics.get("run_id") != run_id):
        return None
    status = metrics.get("status")
    if status == "running" or (was_running and status == "failed"):
        if status == "failed" and "error" in metrics:
            metrics["error_while_stopping"] = metrics.pop("error")
        metrics["status"] = "interrupted"
        tmp = path.with_name(f"{METRICS}.tmp")
        tmp.write_text(json.dumps(metrics, indent=2))
        os.replace(tmp, path)
    return metrics


def is_running(run_dir: Path, run_id: int | None) -> bool:
    """metrics.json says run ``run_id`` (None: any run) is running."""
    try:
        metrics = read_json(run_dir / METRICS)
    except CorruptFileError:
        return False
    return metrics.get("status") == "running" and (run_id is None or metrics.get("run_id") == run_id)


def outcome(prog: str, run_dir: Path, run_id: int, status: str, details: str, require_results: bool = True) -> int:
    """0 when the SuperLink says the run completed and (if required) this run's metrics.json says so too."""
    metrics = results_of(run_dir, run_id)
    if status == COMPLETED and metrics is not None and metrics.get("status") == "completed":
        print(f"{prog}: completed (run {run_id}); results in {run_dir}")
        return 0
    if status == COMPLETED and metrics is None and not require_results:
        print(f"{prog}: completed (run {run_id}); results in {run_dir} on the ServerApp's machine")
        return 0
    if metrics is not None and metrics.get("error"):
        detail = metrics["error"]
    elif status == COMPLETED:
        detail = f"no metrics.json of run {run_id} in {run_dir}"
    else:
        detail = f"the ServerApp wrote no results of run {run_id} ({details or 'see the log above'})"
    print(f"{prog}: run FAILED (run {run_id}, status {status or 'unknown'}): {detail}; results folder: {run_dir}", file=sys.stderr)
    return 1


def flower_env(flwr_home: Path) -> dict:
    """Offline, local-use settings: no telemetry, no update check, no per-run dependency install."""
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(flwr_home),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        PYTHONUNBUFFERED="1",
    )
    # Flower's executables (flower-superlink, flwr, flwr-serverapp, ...) from this interpreter's
    # environment, even when it was not activated (`.venv/bin/python -m genfl_cli.run`).
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # Few malloc arenas: each ClientApp message runs in a fresh thread (client_app/mods.py), and glibc
    # would give every thread its own arena; this keeps each worker's memory flat (bench/simulation_scale.py).
    env.setdefault("MALLOC_ARENA_MAX", "2")
    return env


def quoted(path: Path) -> str:
    """A path as a Hydra override value: quoted, since a sweep's job folders hold '=' and ','."""
    text = str(path)
    return f"'{text}'" if "'" not in text else '"' + text.replace('"', '\\"') + '"'


def validated(overrides: list[str]) -> tuple:
    """(config, results folder, overrides with that folder pinned): composed and checked before
    anything starts (`ConfigError` otherwise); the folder is quoted so '=' or ',' in it survive."""
    cfg = load_config(overrides)
    run_dir = run_directory(cfg)
    return cfg, run_dir, [*overrides, f"output.dir={quoted(run_dir)}"]


SOURCE_TREE = Path(__file__).resolve().parents[1]


def flower_app(workdir: Path) -> Path:
    """The folder `flwr run` gets: this source checkout, or, for an installed wheel (no checkout
    around it), a folder holding only a pyproject.toml that names the installed ServerApp and
    ClientApp: the app is then imported from the installation."""
    pyproject = SOURCE_TREE / "pyproject.toml"
    if pyproject.is_file() and "[tool.flwr.app]" in pyproject.read_text():
        return SOURCE_TREE
    from importlib.metadata import version

    from server_app.config import RUN_CONFIG_KEYS

    folder = workdir / "flwr-app"
    folder.mkdir(parents=True, exist_ok=True)
    keys = "\n".join(f'{key} = ""' for key in [*RUN_CONFIG_KEYS, "overrides"])
    (folder / "pyproject.toml").write_text(
        f'[project]\nname = "genfl"\nversion = "{version("genfl")}"\ndependencies = []\n\n'
        '[tool.flwr.app]\npublisher = "genfl"\n\n[tool.flwr.app.components]\n'
        'serverapp = "server_app.app:app"\nclientapp = "client_app.app:app"\n\n'
        f"[tool.flwr.app.config]\n{keys}\n")
    return folder
