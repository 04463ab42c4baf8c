"""Launching real simulations from tests: `genfl-run` in a subprocess, optionally on a copy of the app
whose ClientApp is swapped for a misbehaving variant, and a check that nothing it started survives."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
IGNORED = shutil.ignore_patterns(".git", ".venv", "outputs", "multirun", "runs", "__pycache__", "*.egg-info",
                                 ".pytest_cache", "*.fab", ".whl", ".gl")
from server_app.results import TIMING_COLUMNS


def launch(run_dir: Path, *overrides: str, app_dir: Path = REPO, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(app_dir))
    return subprocess.run([sys.executable, "-m", "genfl_cli.run", f"output.dir={run_dir}", *overrides],
                          cwd=app_dir, capture_output=True, text=True, timeout=timeout, env=env)


def faulty_app(tmp_path: Path, faults: dict[int, str]) -> Path:
    """A copy of the app whose ClientApp is tests/faulty_client_app.py with ``faults`` by partition."""
    app_dir = tmp_path / "faulty-app"
    shutil.copytree(REPO, app_dir, ignore=IGNORED)
    pyproject = app_dir / "pyproject.toml"
    text = pyproject.read_text()
    assert 'clientapp = "client_app.app:app"' in text
    pyproject.write_text(text.replace('clientapp = "client_app.app:app"', 'clientapp = "tests.faulty_client_app:app"'))
    (app_dir / "tests" / "faults.json").write_text(json.dumps({str(k): v for k, v in faults.items()}))
    return app_dir


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def comparable(rows: list[dict]) -> list[dict]:
    """Metric rows without the keys that measure time (or whether the image cache was warm)."""
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows]


def assert_nothing_left_running(run_dir: Path) -> None:
    config = tomllib.loads((run_dir / "flwr-home" / "config.toml").read_text())
    port = int(config["superlink"]["genfl"]["address"].rsplit(":", 1)[1])
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
