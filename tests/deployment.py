"""A real Flower deployment on 127.0.0.1 for tests: a SuperLink with TLS and SuperNode authentication,
registered SuperNodes as separate processes, the flwr CLI, all under one private FLWR_HOME.

Every process is started here, remembered, and stopped by PID together with its children (SuperNodes
and the SuperLink start SuperExec / ClientApp / ServerApp processes); `close` also sweeps anything
still carrying this FLWR_HOME and returns what it had to stop.
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

from cli.run import signal_then_kill

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # flower-superlink, flower-supernode and flwr of this environment


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_tree(pid: int, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    """Signal ``pid`` and all its descendants (collected first), then kill whatever is left."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    signal_then_kill(procs, sig, timeout)


class Deployment:
    def __init__(self, root: Path):
        self.root = root
        self.home = root / "flwr-home"
        self.home.mkdir(parents=True)
        self.certs = root / "certificates"
        self.keys = root / "keys"
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = dict(os.environ, FLWR_HOME=str(self.home), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
                        PYTHONUNBUFFERED="1", PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        self.processes: dict[str, subprocess.Popen] = {}
        self.superlink: subprocess.Popen | None = None

    # -- set-up ---------------------------------------------------------------------------------
    def make_credentials(self, *node_names: str) -> None:
        self.run([sys.executable, "-m", "cli.certs", "tls", "--out", str(self.certs), "--san", "127.0.0.1"])
        for name in node_names:
            self.run([sys.executable, "-m", "cli.certs", "node-key", "--out", str(self.keys), "--name", name])
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "edge"\n\n[superlink.edge]\naddress = "{self.address}"\n'
            f'root-certificates = "{self.certs / "ca.crt"}"\n'
        )

    def start_superlink(self) -> None:
        """TLS and SuperNode authentication, as docs/deploy.md sets it up."""
        self._start_superlink([
            "--ssl-ca-certfile", str(self.certs / "ca.crt"),
            "--ssl-certfile", str(self.certs / "server.pem"), "--ssl-keyfile", str(self.certs / "server.key"),
            "--enable-supernode-auth", "--disable-runtime-dependency-installation",
            "--database", str(self.root / "state.db"),
        ])

    def start_simulation_superlink(self) -> None:
        """What `flwr run` starts for its `local` connection, on this deployment's own port, plus a
        `sim` connection (the default) to it."""
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "sim"\n\n[superlink.sim]\naddress = "{self.address}"\ninsecure = true\n')
        self._start_superlink(["--insecure", "--simulation", "--isolation", "subprocess",
                               "--disable-runtime-dependency-installation"])

    def _start_superlink(self, args: list[str]) -> None:
        self.superlink = self._start("superlink", ["flower-superlink", *args, "--host", "127.0.0.1", "--port", str(self.port)])
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.superlink.poll() is not None:
                raise RuntimeError(f"flower-superlink exited {self.superlink.returncode}: {self.log('superlink')[-2000:]}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.5)
        raise RuntimeError(f"flower-superlink did not listen on {self.address} within 90 s")

    def register(self, name: str) -> None:
        self.run(["flwr", "supernode", "register", str(self.keys / f"{name}.pub"), "edge"])

    def start_supernode(self, name: str, node_config: str) -> subprocess.Popen:
        return self._start(name, [
            "flower-supernode", "--superlink", self.address, "--root-certificates", str(self.certs / "ca.crt"),
            "--auth-supernode-private-key", str(self.keys / f"{name}.key"), "--port", str(free_port()),
            "--node-config", node_config,
        ])

    def online_nodes(self) -> int:
        out = self.run(["flwr", "supernode", "list", "edge", "--format", "json"]).stdout
        return sum(node.get("status") == "online" for node in json.loads(out).get("nodes", []))

    def wait_online(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.online_nodes() < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.online_nodes()} of {count} SuperNodes online after {timeout} s")
            time.sleep(1)

    # -- running and stopping ------------------------------------------------------------------
    def run(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run(args, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}: {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
        return proc

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "w")
        proc = subprocess.Popen(args, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.processes[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def kill(self, name: str) -> None:
        """A node that dies without a word (power cut, crash): SIGKILL to it and its children."""
        stop_tree(self.processes[name].pid, signal.SIGKILL)
        self.processes[name].wait(timeout=10)

    def stop(self, name: str) -> None:
        stop_tree(self.processes[name].pid)
        self.processes[name].wait(timeout=10)

    def close(self) -> list[str]:
        """Stop every process started here, nodes first; return the ones a final sweep found still running."""
        for name in [n for n in self.processes if n != "superlink"] + ["superlink"]:
            if name in self.processes:
                stop_tree(self.processes[name].pid)
                try:
                    self.processes[name].wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        leftovers = []
        for proc in psutil.process_iter(["pid", "cmdline", "environ"]):
            try:
                if (proc.info["environ"] or {}).get("FLWR_HOME") == str(self.home) and proc.pid != os.getpid():
                    leftovers.append(f"{proc.pid} {' '.join(proc.info['cmdline'] or [])[:100]}")
                    stop_tree(proc.pid, signal.SIGKILL)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return leftovers
