"""A run's processes: found by tree and by the run's private FLWR_HOME (Ray workers can outlive or
leave the tree while it is torn down), and stopped by PID. genfl-run and genfl-sweep stop what a run
started with these; the benchmarks (bench/) measure it."""

from __future__ import annotations

import os
from pathlib import Path

import psutil


def run_processes(root_pid: int | None, flwr_home: Path) -> list[psutil.Process]:
    """The process tree under ``root_pid`` (None: none) plus anything else carrying this run's private
    FLWR_HOME."""
    found = {}
    try:
        root = psutil.Process(root_pid) if root_pid is not None else None
        for proc in [root, *root.children(recursive=True)] if root is not None else []:
            found[proc.pid] = proc
    except psutil.NoSuchProcess:
        pass
    for proc in psutil.process_iter(["environ"]):
        try:
            if (proc.info["environ"] or {}).get("FLWR_HOME") == str(flwr_home):
                found[proc.pid] = proc
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    found.pop(os.getpid(), None)
    return list(found.values())


def signal_then_kill(procs: list[psutil.Process], sig: int, timeout: float) -> None:
    """Send ``sig`` to every process, wait up to ``timeout`` s, then kill whatever is left."""
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
