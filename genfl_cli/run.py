"""`genfl-run`: one command for a simulated GenFL run that fails loudly.

It validates the config (conf/ + Hydra overrides) before anything starts, runs the app on a private
SuperLink (its own FLWR_HOME and free ports, started and stopped by PID), sizes the simulation from
``federation.num_clients``, streams the logs, and exits non-zero unless the SuperLink says this run
completed and this run's metrics.json says so too (`flwr run` itself exits 0 when the ServerApp crashes).
Ctrl-C (or SIGTERM) stops everything the run started, marks its metrics.json "interrupted" and prints
how to resume it (`genfl-run --resume DIR`, which continues DIR wherever it now lies); exit 130 (143).
The console gets a line per phase and per round (`quiet`); `--show-config` prints the composed config.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from genfl_cli.flwr_runs import (RunError, flower_app, flower_env, is_running, mark_interrupted, outcome, quoted, run_status,
                           start_run, validated)
from server_app import tracking
from server_app.checkpoint import checkpoint_path
from server_app.config import ConfigError, load_config, to_yaml
from server_app.processes import run_processes, signal_then_kill
from server_app.renames import upgraded_overrides
from server_app.results import FLWR_HOME, METRICS, RUN_CONFIG, SUPERLINK_LOG, CorruptFileError, read_json

SIGINT_EXIT, SIGTERM_EXIT = 130, 143  # the shell's codes for a command stopped by Ctrl-C / SIGTERM


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM stopped genfl-run. When it is raised, everything the run started is
    stopped and its metrics.json says "interrupted"; the message says how to resume; ``code`` is the exit code."""

    def __init__(self, message: str, code: int = SIGINT_EXIT, run_dir: Path | None = None):
        super().__init__(message)
        self.code, self.run_dir = code, run_dir


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread: stopped like Ctrl-C, exit 143."""


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


def simulation_config(cfg) -> str:
    """`--federation-config` for this run: the node count and each ClientApp's CPU/GPU share."""
    fed = cfg.federation
    parts = [f"num-supernodes={fed.num_clients}", f"client-resources-num-cpus={fed.client_cpus}"]
    if fed.client_gpus:
        parts.append(f"client-resources-num-gpus={fed.client_gpus}")
    if fed.simulation_cpus:
        parts.append(f"init-args-num-cpus={fed.simulation_cpus}")
    return " ".join(parts)


def ray_env(cfg) -> dict[str, str]:
    """The SuperLink's extra environment for ``federation.ray_address``: Flower's Ray backend calls
    ``ray.init()`` without an address, and Ray then joins the cluster named in ``RAY_ADDRESS``."""
    address = cfg.federation.ray_address
    return {"RAY_ADDRESS": str(address)} if address else {}


USAGE = ("usage: genfl-run --resume <results folder> [key=value ...] (the run's own settings are reused; the "
         "checkpoint refuses any that would change its results)")


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def _path_value(override: str) -> Path | None:
    """The folder a saved ``key=value`` override names, as Hydra reads it (quotes removed), resolved."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        value = OverridesParser.create().parse_overrides([override])[0].value()
    except Exception:  # not a plain value: not a folder this code pinned
        return None
    return Path(str(value)).expanduser().resolve() if isinstance(value, str) and value else None


def resume_overrides(run_dir: str) -> list[str]:
    """The overrides the run in ``run_dir`` was started with, pointed at ``run_dir`` wherever it now lies.

    The saved ones pin the folder the run first ran in (``output.dir``) and, for a sweep job, the
    tracking store beside it (``tracking.root``): a copied or moved run must not write into the original's
    checkpoint, metrics.json or store. Both are dropped and ``output.dir`` names ``run_dir``. A run started
    before a key was renamed (server_app/renames.py) resumes under the new name."""
    import tomllib

    folder = Path(run_dir).expanduser().resolve()
    path = folder / RUN_CONFIG
    if not path.is_file():
        raise ConfigError(f"--resume {run_dir}: no {path.name} there; give the results folder of a genfl-run run")
    saved = upgraded_overrides(json.loads(tomllib.loads(path.read_text())["overrides"]))  # in today's key names
    first = [_path_value(o) for o in saved if _key(o) == "output.dir"]
    beside = first[-1].parent if first and first[-1] is not None else None  # the original folder's parent
    kept = [o for o in saved if _key(o) not in ("output.dir", "output.resume")
            and not (_key(o) == "tracking.root" and beside is not None and _path_value(o) == beside)]
    inert = tracking.inert_overrides(kept)  # an older sweep's tracking.group with tracking=none: never used
    return [*(o for o in kept if o not in inert), f"output.dir={quoted(folder)}"]


def resumed_command(args: list[str]) -> list[str]:
    """``--resume DIR [key=value ...]``: the run's own overrides, pointed at DIR (its name may hold '='
    and ','), then these (the later wins; the checkpoint refuses any that would change the run's
    results). DIR continues from its checkpoint; a run stopped before its first checkpoint starts again."""
    if len(args) < 2 or ("=" in args[1] and not Path(args[1]).expanduser().is_dir()):
        raise ConfigError(USAGE)
    given = args[2:]
    elsewhere = [o for o in given if _key(o) == "output.dir"]
    if elsewhere:
        raise ConfigError(f"--resume {args[1]} {elsewhere[0]}: a resumed run continues in the folder given to "
                          "--resume; to continue it elsewhere, copy the folder there and resume the copy")
    overrides = resume_overrides(args[1])
    folder = Path(args[1]).expanduser().resolve()
    if checkpoint_path(folder).is_file():
        return [*overrides, "output.resume=true", *given]
    try:
        status = read_json(folder / METRICS).get("status")
    except CorruptFileError as err:
        raise ConfigError(f"--resume {args[1]}: {err}") from err
    if status == "completed":
        raise ConfigError(f"--resume {args[1]}: the run completed and left no checkpoint "
                          f"({checkpoint_path(folder)}): nothing to continue")
    print(f"genfl-run: {folder} has no checkpoint (the run stopped before its first round ended): running it "
          "again from round 1", file=sys.stderr)
    return [*overrides, *given]


def run(overrides: list[str], raise_interrupt: bool = False) -> int:
    """Validate, run one simulation, check its outcome; returns the process exit code.

    Ctrl-C or SIGTERM: everything the run started is stopped, its metrics.json says "interrupted", and
    one line says how to resume it (exit 130 / 143); ``raise_interrupt`` (genfl-sweep) raises
    `RunInterrupted` with that line instead."""
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    # A terminated launcher must still stop the SuperLink tree: SIGTERM is handled like Ctrl-C.
    signal.signal(signal.SIGTERM, _terminated)
    try:
        return _launch(overrides)
    except KeyboardInterrupt as stop:
        if not isinstance(stop, RunInterrupted):  # before anything was started
            stop = RunInterrupted("interrupted before the run started", _exit_code(stop))
        if raise_interrupt:
            raise stop from None
        print(f"genfl-run: {stop}", file=sys.stderr)
        return stop.code
    finally:
        for sig, handler in zip((signal.SIGINT, signal.SIGTERM), handlers):
            if handler is not None:
                signal.signal(sig, handler)


def _terminated(*_) -> None:
    raise _Terminated()


def _exit_code(stop: BaseException) -> int:
    return SIGTERM_EXIT if isinstance(stop, _Terminated) else SIGINT_EXIT


@contextmanager
def _signals_held():
    """Stopping the run's processes must finish: a second Ctrl-C (or SIGTERM) meanwhile is ignored (the
    stop is bounded: SIGTERM, then SIGKILL after 15 s)."""
    saved = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, saved[0])
        signal.signal(signal.SIGTERM, saved[1])


# The simulation runtime's start-up banner in a run's log stream (genfl-run sets the federation size itself)
# and blank log lines: left off the console. Every other line passes.
_BANNER = re.compile("|".join((
    r"^Using SuperLink: ", r"Starting logstream for run_id", r"Starting Flower Simulation",
    r"default simulated SuperNodes changed from", r"^\S+\s*:\s*Federation `[^`]*` \(\d+ simulated SuperNodes\)",
    r"To change federation size, use the following command", r"^\S+\s*:\s*flwr federation simulation-config",
    r"^Successfully installed \S+ to ", r"^(INFO|DEBUG)\s*:\s*$")))
# Ray's FutureWarning about GPU visibility (clients without a GPU share keep seeing none), then its source line.
_RAY_TIP = "Ray will no longer override accelerator visible devices"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def quiet(lines: Iterable[str]) -> Iterator[str]:
    """The lines of a run's log stream the console shows: all but the runtime's banner and Ray's tip."""
    tip = False
    for line in lines:
        plain = _ANSI.sub("", line).rstrip("\n")
        if tip and plain.strip() == "warnings.warn(":
            tip = False
            continue
        tip = _RAY_TIP in plain
        if not tip and not _BANNER.search(plain):
            yield line


def _stream(run_id: int, env: dict) -> None:
    """The run's log, `quiet`ly, as it comes, until the run ends (a stream error is not the run's outcome)."""
    proc = subprocess.Popen(["flwr", "log", str(run_id), "genfl", "--stream"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace")
    try:
        for line in quiet(proc.stdout):
            sys.stdout.write(line)
            sys.stdout.flush()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _launch(overrides: list[str]) -> int:
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
    if extra := ray_env(cfg):
        env.update(extra)
        print(f"genfl-run: ClientApps run on the Ray cluster at {extra['RAY_ADDRESS']} (federation.ray_address)", flush=True)
    (flwr_home / "state.db").unlink(missing_ok=True)  # a resumed run starts a fresh SuperLink
    log_file = open(run_dir / SUPERLINK_LOG, "a")
    superlink, run_id, interrupted = None, None, None
    try:
        superlink = subprocess.Popen(
            ["flower-superlink", "--insecure", "--simulation", "--isolation", "subprocess",
             "--host", "127.0.0.1", "--port", str(port), "--database", str(flwr_home / "state.db")],
            env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
        _wait_for_port(port, superlink, timeout=60)
        run_config = run_dir / RUN_CONFIG
        run_config.write_text(f"overrides = {json.dumps(json.dumps(overrides))}\n")
        run_id = start_run(flower_app(run_dir), "genfl", run_config, env, federation_config=simulation_config(cfg))
        print(f"genfl-run: run {run_id}, {cfg.federation.num_clients} simulated nodes; results in {run_dir}", flush=True)
        _stream(run_id, env)
        status, details = run_status(run_id, "genfl", env)
    except RunError as err:
        print(f"genfl-run: run FAILED: {err}; SuperLink log: {run_dir / SUPERLINK_LOG}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (_terminated)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        interrupted = (_exit_code(stop), is_running(run_dir, run_id))
    finally:
        with _signals_held():  # the stop must finish
            if superlink is not None:
                _stop(superlink, flwr_home)
            log_file.close()
    if interrupted is not None:
        code, was_running = interrupted
        raise RunInterrupted(_interrupted(run_dir, run_id, was_running), code, run_dir)
    return outcome("genfl-run", run_dir, run_id, status, details)


def _interrupted(run_dir: Path, run_id: int | None, was_running: bool) -> str:
    """Mark the stopped run's metrics.json "interrupted"; one line: where it stopped and how to resume it."""
    metrics = mark_interrupted(run_dir, run_id, was_running) or {}
    which = f"run {run_id}" if run_id is not None else "the run"
    if metrics.get("status") == "completed":
        return f"interrupted after {which} completed; results in {run_dir}"
    resume = f"genfl-run --resume {shlex.quote(str(run_dir))}"
    done = _checkpoint_round(run_dir)
    if done is None:
        return (f"interrupted ({which}, stopped before its first round ended: no checkpoint); everything it started "
                f"is stopped; run it again with: {resume}")
    total = (metrics.get("config") or {}).get("num_rounds")
    return (f"interrupted ({which}, after round {done}{f' of {total}' if total else ''}); everything it started is "
            f"stopped; results so far in {run_dir}; resume with: {resume}")


def _checkpoint_round(run_dir: Path) -> int | None:
    """The last round the run's checkpoint holds (None: no readable checkpoint)."""
    try:
        with open(checkpoint_path(run_dir), "rb") as handle:
            return int(pickle.load(handle)["round"])
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, KeyError, TypeError, ValueError):
        return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genfl-run", allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="genfl-run [KEY=VALUE ...]\n   or: genfl-run --resume DIR [KEY=VALUE ...]   (also: --show-config, -m)",
        description="Run GenFL in a private Flower simulation (its own SuperLink, federation.num_clients simulated "
                    "SuperNodes); exit non-zero unless the run completed. KEY=VALUE: Hydra overrides of conf/config.yaml. "
                    "The console shows a line per phase and per round; the results folder has everything (metrics.json). "
                    "-m/--multirun with comma-separated values is a sweep (genfl-sweep).",
        epilog="examples:\n  genfl-run\n  genfl-run strategy=base_only partition.alpha=0.1 num_rounds=15\n"
               "  genfl-run --resume outputs/20261126-071807-genfl-digits\n  genfl-run --show-config mix.kappa_policy=adaptive\n")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Hydra overrides (docs/configuration.md)")
    parser.add_argument("--resume", metavar="DIR", help="continue the run in results folder DIR from its checkpoint, "
                        "with its own settings (the checkpoint refuses overrides that would change its results)")
    parser.add_argument("--show-config", action="store_true",
                        help="print the config these arguments compose (YAML) and exit; a run's is in its metrics.json")
    return parser


def show_config(args: list[str]) -> int:
    """``--show-config``: the composed, validated config on stdout (what the run would use), nothing run."""
    try:
        cfg = load_config(resumed_command(args) if args[:1] == ["--resume"] else args)
    except ConfigError as err:
        print(f"genfl-run: config error: {err}", file=sys.stderr)
        return 2
    print(to_yaml(cfg), end="")
    return 0


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if {"-m", "--multirun"} & set(argv):  # a Hydra multirun is genfl-sweep (which imports this module)
        os.execv(sys.executable, [sys.executable, "-m", "genfl_cli.sweep", *argv])
    args = _parser().parse_args(argv)
    given = (["--resume", args.resume] if args.resume is not None else []) + args.overrides
    sys.exit(show_config(given) if args.show_config else run(given))


if __name__ == "__main__":
    main()
