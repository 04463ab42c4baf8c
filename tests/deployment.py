"""A real Flower deployment on one machine for tests, in docs/deploy.md's default layout: a SuperLink with
TLS and SuperNode authentication on 127.0.0.1 only, an nginx proxy (the Debian package, run as a private
instance) that forwards only the Fleet API to the boxes on another address (127.0.0.2 stands for the
server's LAN address), registered SuperNodes as separate processes dialing the proxy, and the flwr CLI
twice: the admin's on the server (FLWR_HOME, connection `edge` to 127.0.0.1) and a box's (`box_home`,
the same connection name pointing at the proxy, holding only ca.crt).

Every process is started here, remembered, and stopped by PID together with its children (SuperNodes
and the SuperLink start SuperExec / ClientApp / ServerApp processes); `close` also sweeps anything
still carrying this FLWR_HOME and returns what it had to stop.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from genfl_cli.run import signal_then_kill

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # flower-superlink, flower-supernode and flwr of this environment


def _box_host() -> str:
    """The address the boxes dial: 127.0.0.2 (Linux answers all of 127.0.0.0/8), so that the SuperLink's
    port can be checked closed there; 127.0.0.1 where another loopback address cannot be bound."""
    try:
        with socket.socket() as sock:
            sock.bind(("127.0.0.2", 0))
        return "127.0.0.2"
    except OSError:
        return "127.0.0.1"


BOX_HOST = _box_host()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def nginx_binary() -> str:
    """nginx as docs/deploy.md installs it (`apt-get install nginx`: /usr/sbin, not on a user's PATH)."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise RuntimeError("nginx is not installed: `sudo apt-get install -y nginx` (docs/deploy.md, step 4; .ci/run does it)")
    return found


def _wait_listening(host: str, port: int, proc: subprocess.Popen, what: str, log: Callable[[], str],
                    timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited {proc.returncode}: {log()[-2000:]}")
        with socket.socket() as sock:
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.5)
    raise RuntimeError(f"{what} did not listen on {host}:{port} within {timeout} s")


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
        self.address = f"127.0.0.1:{self.port}"  # the SuperLink, for the server's own processes and the admin CLI
        self.proxy_port = free_port(BOX_HOST)
        self.box_address = f"{BOX_HOST}:{self.proxy_port}"  # nginx, for the boxes
        self.box_home = root / "box-home"  # a box's flwr CLI: only ca.crt, pointed at the boxes' address
        self.box_home.mkdir()
        self.env = dict(os.environ, FLWR_HOME=str(self.home), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
                        PYTHONUNBUFFERED="1", PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        self.box_env = dict(self.env, FLWR_HOME=str(self.box_home))
        self.processes: dict[str, subprocess.Popen] = {}
        self.superlink: subprocess.Popen | None = None
        self.node_ids: dict[str, int] = {}

    # -- set-up ---------------------------------------------------------------------------------
    def make_credentials(self, *node_names: str) -> None:
        """genfl-certs as the guide runs it: the boxes' address as SAN (127.0.0.1 and localhost are
        always added); the admin's and a box's CLI connection, both named `edge`."""
        self.run([sys.executable, "-m", "genfl_cli.certs", "tls", "--out", str(self.certs), "--san", BOX_HOST])
        for name in node_names:
            self.make_key(name)
        for home, address in ((self.home, self.address), (self.box_home, self.box_address)):
            (home / "config.toml").write_text(
                f'[superlink]\ndefault = "edge"\n\n[superlink.edge]\naddress = "{address}"\n'
                f'root-certificates = "{self.certs / "ca.crt"}"\n'
            )

    def make_key(self, name: str) -> None:
        self.run([sys.executable, "-m", "genfl_cli.certs", "node-key", "--out", str(self.keys), "--name", name])

    def start_proxy(self) -> None:
        """The site `genfl-certs nginx` renders, in a private nginx (no root, its pid, logs and temp
        files under root/nginx), in the foreground so that it is stopped by PID like the rest."""
        prefix = self.root / "nginx"
        self.run([sys.executable, "-m", "genfl_cli.certs", "nginx", "--certs", str(self.certs), "--out", str(prefix / "genfl-fleet.conf"),
                  "--listen", self.box_address, "--superlink-port", str(self.port), "--standalone", str(prefix)])
        proc = self._start("proxy", [nginx_binary(), "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                                     "-e", str(prefix / "error.log"), "-g", "daemon off;"])
        _wait_listening(BOX_HOST, self.proxy_port, proc, "nginx", lambda: self.log("proxy") + self.proxy_log("error.log"))

    def proxy_log(self, name: str = "access.log") -> str:
        path = self.root / "nginx" / name
        return path.read_text(errors="replace") if path.exists() else ""

    def proxy_faults(self) -> list[str]:
        """What went wrong in nginx itself: [crit]/[alert]/[emerg] lines of its error log (e.g. a temp
        file its workers may not write) and 5xx answers to Fleet calls in its access log."""
        severe = [line for line in self.proxy_log("error.log").splitlines() if re.search(r"\[(crit|alert|emerg)\]", line)]
        failed = [line for line in self.proxy_log().splitlines() if "/v1/fleet/" in line and re.search(r'" 5\d\d ', line)]
        return severe + failed

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
        _wait_listening("127.0.0.1", self.port, self.superlink, "flower-superlink", lambda: self.log("superlink"))

    def register(self, name: str) -> int:
        """`flwr supernode register` on the server (the admin's CLI, 127.0.0.1); returns the node id."""
        out = self.run(["flwr", "supernode", "register", str(self.keys / f"{name}.pub"), "edge"]).stdout
        found = re.search(r"SuperNode (\d+) registered", out)
        if not found:
            raise RuntimeError(f"no node id in `flwr supernode register`'s output: {out[-2000:]}")
        self.node_ids[name] = int(found.group(1))
        return self.node_ids[name]

    def start_supernode(self, name: str, node_config: str, direct: bool = False) -> subprocess.Popen:
        """A box: dials the proxy (``direct``: the SuperLink itself, for comparisons only)."""
        return self._start(name, [
            "flower-supernode", "--superlink", self.address if direct else self.box_address,
            "--root-certificates", str(self.certs / "ca.crt"),
            "--auth-supernode-private-key", str(self.keys / f"{name}.key"), "--port", str(free_port()),
            "--node-config", node_config,
        ])

    def start_supernode_when_accepted(self, name: str, node_config: str, timeout: float = 180) -> subprocess.Popen:
        """A box restarted with its key right after it died is refused ("Failed to activate SuperNode")
        until the SuperLink has marked its id offline (two missed heartbeats, about 60 s): start it
        again until it is accepted, as a systemd unit with Restart=on-failure does (docs/deploy.md)."""
        deadline = time.monotonic() + timeout
        while True:
            proc = self.start_supernode(name, node_config)
            while proc.poll() is None and "SuperNode ID:" not in self.log(name) and time.monotonic() < deadline:
                time.sleep(1)
            if proc.poll() is None and "SuperNode ID:" in self.log(name):
                return proc
            if proc.poll() is None or "Failed to activate SuperNode" not in self.log(name) or time.monotonic() > deadline:
                raise RuntimeError(f"SuperNode {name} not accepted within {timeout} s: {self.log(name)[-2000:]}")
            time.sleep(10)

    def box_cli(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        """A flwr command on a box (its own FLWR_HOME: connection `edge` = the proxy); not checked."""
        return subprocess.run(args, cwd=REPO, env=self.box_env, capture_output=True, text=True, timeout=timeout)

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
        homes = {str(self.home), str(self.box_home)}
        for proc in psutil.process_iter(["pid", "cmdline", "environ"]):
            try:
                if (proc.info["environ"] or {}).get("FLWR_HOME") in homes and proc.pid != os.getpid():
                    leftovers.append(f"{proc.pid} {' '.join(proc.info['cmdline'] or [])[:100]}")
                    stop_tree(proc.pid, signal.SIGKILL)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return leftovers
