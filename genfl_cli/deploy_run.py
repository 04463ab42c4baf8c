"""`genfl-deploy-run CONNECTION [hydra overrides]`: a GenFL run on deployed SuperNodes that fails loudly.

`genfl-run` is for simulation; this is its twin for a SuperLink named in the flwr CLI's config
($FLWR_HOME/config.toml, docs/deploy.md). It validates the config here, starts the run with
`flwr run`, streams the logs, then exits non-zero unless the SuperLink records the run as completed
(and, when the results folder is on this machine, its metrics.json is this run's and completed).
Ctrl-C or SIGTERM stops the run on the SuperLink too.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import sys
import tempfile
import tomllib
from pathlib import Path

from genfl_cli.flwr_runs import RunError, flower_app, outcome, run_status, start_run, stop_run, stream_logs, validated
from server_app.config import ConfigError
from server_app.results import RUN_CONFIG

PROG = "genfl-deploy-run"


def flwr_home() -> Path:
    """The flwr CLI's config folder: $FLWR_HOME, else ~/.flwr (as flwr itself decides)."""
    return Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr").expanduser()


def connection_settings(name: str) -> dict:
    """``[superlink.<name>]`` of the flwr CLI's config.toml; a missing one is a clear error."""
    path = flwr_home() / "config.toml"
    try:
        config = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"no flwr config at {path}: add a [superlink.{name}] connection (docs/deploy.md, step 5)") from None
    except tomllib.TOMLDecodeError as err:
        raise RunError(f"{path} is not valid TOML: {err}") from None
    connections = config.get("superlink", {})
    if not isinstance(connections.get(name), dict):
        known = ", ".join(k for k, v in connections.items() if isinstance(v, dict)) or "none"
        raise RunError(f"no connection [superlink.{name}] in {path} (known: {known})")
    return connections[name]


def _is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_transport(name: str, settings: dict, allow_insecure: bool) -> None:
    """Refuse plain HTTP to another machine unless the user said --insecure."""
    address = str(settings.get("address", ""))
    if not settings.get("insecure") or allow_insecure or address.startswith(":") or _is_loopback(address):
        return
    raise RunError(
        f"connection {name!r} ({address}) is insecure: model weights, configs and logs would cross the network "
        "unencrypted and unauthenticated. Give it root-certificates (docs/deploy.md, step 2) or pass --insecure to accept that"
    )


EXAMPLES = """examples (docs/deploy.md, step 9):
  genfl-deploy-run genfl-edge federation.expected_nodes=3 output.root=$HOME/genfl-results
  genfl-deploy-run genfl-edge num_rounds=10 strategy=base_only
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Run GenFL on a SuperLink connection; exit non-zero if the run failed.",
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("connection", help="a [superlink.NAME] connection in $FLWR_HOME/config.toml")
    parser.add_argument("overrides", nargs="*",
                        help="Hydra overrides, as for genfl-run (num_rounds=10 federation.expected_nodes=3 ...)")
    parser.add_argument("--app", type=Path, default=None, help="the Flower app folder (default: this checkout or installation)")
    parser.add_argument("--federation-config", default=None, help="passed to `flwr run` (simulation SuperLinks only)")
    parser.add_argument("--insecure", action="store_true", help="allow an insecure (plain HTTP) connection to another machine")
    return parser


def run(connection: str, overrides: list[str], app_dir: Path | None = None, federation_config: str | None = None,
        allow_insecure: bool = False) -> int:
    """Validate, start, stream, check; returns the process exit code."""
    try:  # output.dir is made absolute here: run this on the ServerApp's machine, or pass a path there
        cfg, run_dir, overrides = validated(overrides)
    except ConfigError as err:
        print(f"{PROG}: config error: {err}", file=sys.stderr)
        return 2
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        check_transport(connection, connection_settings(connection), allow_insecure)
    except RunError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 2
    run_id = None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        with tempfile.TemporaryDirectory(prefix="genfl-run-config-") as tmp:
            run_config = Path(tmp) / RUN_CONFIG
            run_config.write_text(f"overrides = {json.dumps(json.dumps(overrides))}\n")
            app = app_dir or flower_app(Path(tmp))
            run_id = start_run(app, connection, run_config, env, federation_config=federation_config)
        print(f"{PROG}: started run {run_id} on {connection}; results will be in {run_dir}", flush=True)
        stream_logs(run_id, connection, env)
        status, details = run_status(run_id, connection, env)
    except RunError as err:
        print(f"{PROG}: run FAILED: {err}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, SystemExit):
        if run_id is not None:
            print(f"{PROG}: interrupted; stopping run {run_id} on {connection}", file=sys.stderr)
            stop_run(run_id, connection, env)
        raise
    # The results folder is on the ServerApp's machine; check it when that is this one.
    local = run_dir.exists()
    return outcome(PROG, run_dir, run_id, status, details, require_results=local)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    app = args.app.resolve() if args.app else None
    sys.exit(run(args.connection, args.overrides, app, args.federation_config, args.insecure))


if __name__ == "__main__":
    main()
