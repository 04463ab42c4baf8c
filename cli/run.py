"""`genfl-run`: one command for a simulated GenFL run that fails loudly.

It validates the config (conf/ + Hydra overrides) before anything starts, runs the app on a private
SuperLink (its own FLWR_HOME and free ports, started and stopped by PID), sizes the simulation from
``federation.num_clients``, streams the logs, and exits non-zero unless the SuperLink says this run
completed and this run's metrics.json says so too (`flwr run` itself exits 0 when the ServerApp crashes).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from cli.flwr_runs import RunError, flower_app, flower_env, outcome, run_status, start_run, stream_logs, validated
from server_app.config import ConfigError
from server_app.results import FLWR_HOME, RUN_CONFIG, SUPERLINK_LOG



def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with code {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"flower-superlink did not listen on port {port} within {timeout}s")


def run_processes(root_pid: int, flwr_home: Path) -> list[psutil.Process]:
    """The process tree under ``root_pid`` plus anything else carrying this run's private FLWR_HOME
    (Ray workers can outlive or leave the tree while it is torn down)."""
    found = {}
    try:
        root = psutil.Process(root_pid)
        for proc in [root, *root.children(recursive=True)]:
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


def _stop(process: subprocess.Popen, flwr_home: Path) -> None:
    """Stop the SuperLink and everything it started (SuperExec, ServerApp, simulation, Ray), by PID.

    Collected by tree and by FLWR_HOME, not by process group: some of them start their own sessions.
    """
    for _ in range(3):
        procs = run_processes(process.pid, flwr_home)
        if not procs:
            break
        signal_then_kill(procs, signal.SIGTERM, timeout=15)
    process.wait(timeout=5)


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


def simulation_config(cfg) -> str:
    """`--federation-config` for this run: the node count and each ClientApp's CPU/GPU share."""
    fed = cfg.federation
    parts = [f"num-supernodes={fed.num_clients}", f"client-resources-num-cpus={fed.client_cpus}"]
    if fed.client_gpus:
        parts.append(f"client-resources-num-gpus={fed.client_gpus}")
    if fed.simulation_cpus:
        parts.append(f"init-args-num-cpus={fed.simulation_cpus}")
    return " ".join(parts)


def resume_overrides(run_dir: str) -> list[str]:
    """The overrides an interrupted run was started with, plus ``output.resume=true``."""
    import tomllib

    path = Path(run_dir).expanduser().resolve() / RUN_CONFIG
    if not path.is_file():
        raise ConfigError(f"--resume {run_dir}: no {path.name} there; give the results folder of a genfl-run run")
    overrides = json.loads(tomllib.loads(path.read_text())["overrides"])
    return [o for o in overrides if not o.startswith("output.resume=")] + ["output.resume=true"]


def resumed_command(args: list[str]) -> list[str]:
    """``--resume DIR [key=value ...]``: the run's own overrides, then these (the later wins; the
    checkpoint refuses any that would change the run's results)."""
    if len(args) < 2 or "=" in args[1]:
        raise ConfigError("usage: genfl-run --resume <results folder> [key=value ...] (the run's own settings "
                          "are reused; the checkpoint refuses any that would change its results)")
    return resume_overrides(args[1]) + args[2:]


def run(overrides: list[str]) -> int:
    """Validate, run one simulation, check its outcome; returns the process exit code."""
    try:
        if overrides[:1] == ["--resume"]:
            overrides = resumed_command(overrides)
        cfg, run_dir, overrides = validated(overrides)
    except ConfigError as err:
        print(f"genfl-run: config error: {err}", file=sys.stderr)
        return 2
    flwr_home = run_dir / FLWR_HOME
    flwr_home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "genfl"\n\n[superlink.genfl]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = flower_env(flwr_home)
    # A terminated launcher must still stop the SuperLink tree: turn SIGTERM into SystemExit so the
    # `finally` below runs (Ctrl-C already arrives as KeyboardInterrupt).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    (flwr_home / "state.db").unlink(missing_ok=True)  # a resumed run starts a fresh SuperLink
    log_file = open(run_dir / SUPERLINK_LOG, "a")
    superlink = subprocess.Popen(
        ["flower-superlink", "--insecure", "--simulation", "--isolation", "subprocess",
         "--host", "127.0.0.1", "--port", str(port), "--database", str(flwr_home / "state.db")],
        env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        _wait_for_port(port, superlink, timeout=60)
        run_config = run_dir / RUN_CONFIG
        run_config.write_text(f"overrides = {json.dumps(json.dumps(overrides))}\n")
        run_id = start_run(flower_app(run_dir), "genfl", run_config, env, federation_config=simulation_config(cfg))
        stream_logs(run_id, "genfl", env)
        status, details = run_status(run_id, "genfl", env)
    except RunError as err:
        print(f"genfl-run: run FAILED: {err}; SuperLink log: {run_dir / SUPERLINK_LOG}", file=sys.stderr)
        return 1
    finally:
        _stop(superlink, flwr_home)
        log_file.close()
    return outcome("genfl-run", run_dir, run_id, status, details)


def main() -> None:
    if {"-m", "--multirun"} & set(sys.argv[1:]):  # a Hydra multirun is genfl-sweep (which imports this module)
        os.execv(sys.executable, [sys.executable, "-m", "cli.sweep", *sys.argv[1:]])
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
