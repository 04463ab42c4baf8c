"""`federation.ray_address`: a simulation attached to a Ray cluster that was started beforehand.

The slow test starts a real two-node cluster on this machine (`ray start --head`, then `ray start
--address` for a second node; one CPU each, told apart by a custom resource), runs `genfl-run` with
``federation.ray_address`` set on a copy of the app whose ClientApp is the real one plus a note of the
Ray node that handled each message (tests/ray_node_client_app.py), and checks that client work ran on
both nodes, and that Ray's actor table agrees. Every process the cluster started carries a marker in its
environment and is stopped by PID: never `ray stop`, which would stop every Ray on the machine. The fast
tests check the setting's validation and wiring.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from genfl_cli.run import ray_env, signal_then_kill, simulation_config
from server_app.config import ConfigError
from sim import IGNORED, REPO, assert_nothing_left_running, launch, metrics

RAY = Path(sys.executable).parent / "ray"
MARKER = "GENFL_RAY_CLUSTER_TEST"  # in the environment of every process the test cluster starts


# -- the setting: fast --------------------------------------------------------------------------------
def test_ray_address_defaults_to_flowers_private_ray(make_config):
    cfg = make_config()
    assert cfg.federation.ray_address is None
    assert ray_env(cfg) == {}


@pytest.mark.parametrize("address", ["auto", "127.0.0.1:6379", "head.cluster.local:6380", "[::1]:6379"])
def test_ray_address_reaches_the_superlinks_environment(make_config, address):
    cfg = make_config(f"federation.ray_address='{address}'")
    assert ray_env(cfg) == {"RAY_ADDRESS": address}
    assert "init-args" not in simulation_config(cfg)  # the cluster's nodes declare their own cores


@pytest.mark.parametrize("address", ["6379", "head:", "head:port", "ray://head:10001", "head:70000", ""])
def test_a_malformed_ray_address_is_a_config_error_naming_the_key(make_config, address):
    with pytest.raises(ConfigError, match=r"^federation\.ray_address: must be null, \"auto\" or a Ray head's host:port"):
        make_config(f"federation.ray_address='{address}'")


def test_simulation_cpus_cannot_be_combined_with_a_cluster(make_config):
    # Ray refuses num_cpus when it joins a running cluster; say so before anything starts.
    with pytest.raises(ConfigError, match=r"^federation\.simulation_cpus: must be null with federation\.ray_address"):
        make_config("federation.ray_address=auto", "federation.simulation_cpus=2")


# -- a real two-node cluster: slow --------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cluster_processes(marker: str) -> list[psutil.Process]:
    """The daemons `ray start` left (they carry the marker) and their children (Ray's workers do not)."""
    found = {}
    for proc in psutil.process_iter(["environ"]):
        try:
            if (proc.info["environ"] or {}).get(MARKER) == marker:
                found.update({p.pid: p for p in [proc, *proc.children(recursive=True)]})
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    found.pop(os.getpid(), None)
    return list(found.values())


class RayCluster:
    """A head and one more node on this machine, in their own temp dir (so no other `ray.init()` on the
    machine finds them), each with one CPU and a resource that names it."""

    def __init__(self, root: Path):
        self.root = root
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = dict(os.environ, RAY_TMPDIR=str(root), **{MARKER: str(root)})
        self.env.pop("RAY_ADDRESS", None)

    def _ray_start(self, name: str, args: list[str]) -> None:
        common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats",
                  f"--resources={json.dumps({f'genfl_{name}': 1})}", "--object-store-memory=100000000",
                  f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
                  f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}"]
        proc = subprocess.run([str(RAY), "start", *args, *common], env=self.env, capture_output=True, text=True, timeout=180)
        (self.root / f"ray-start-{name}.log").write_text(proc.stdout + proc.stderr)
        assert proc.returncode == 0, f"ray start ({name}) exited {proc.returncode}: {proc.stdout[-2000:]} {proc.stderr[-2000:]}"

    def start(self) -> None:
        self._ray_start("head", ["--head", f"--port={self.port}", f"--temp-dir={self.root}", "--include-dashboard=false",
                                 f"--ray-client-server-port={_free_port()}"])
        self._ray_start("second", [f"--address={self.address}"])

    def query(self, code: str) -> object:
        """Run ``code`` as a Ray driver attached to the cluster; it prints one JSON value."""
        script = f"import json, ray\nray.init(address={self.address!r}, logging_level='ERROR')\n{code}\nray.shutdown()\n"
        proc = subprocess.run([sys.executable, "-c", script], env=self.env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def nodes(self) -> dict[str, str]:
        """node id -> "head" | "second", from each live node's resources."""
        rows = self.query("print(json.dumps([[n['NodeID'], sorted(n['Resources'])] for n in ray.nodes() if n['Alive']]))")
        return {node: next(r[len("genfl_"):] for r in resources if r.startswith("genfl_")) for node, resources in rows}

    def client_actors(self) -> list[dict]:
        """Every Flower ClientApp actor the cluster has hosted: node id, pid, state (GCS's actor table)."""
        return self.query(
            "rows = [dict(node=a['Address']['NodeID'], pid=a['Pid'], state=a['State']) for a in ray._private.state.actors().values()"
            " if a['ActorClassName'].endswith('ClientAppActor')]\nprint(json.dumps(rows))")

    def stop(self) -> list[int]:
        """SIGTERM, then SIGKILL, to every process carrying this cluster's marker; returns their pids."""
        stopped = []
        for _ in range(3):
            procs = _cluster_processes(str(self.root))
            if not procs:
                break
            stopped += [p.pid for p in procs]
            signal_then_kill(procs, signal.SIGTERM, timeout=15)
        return stopped


@pytest.fixture
def ray_cluster():
    # Short: Ray's unix sockets live under the temp dir and their paths must stay under ~107 characters.
    root = Path(tempfile.mkdtemp(prefix="genfl-ray-", dir="/tmp"))
    cluster = RayCluster(root)
    try:
        cluster.start()
        yield cluster
    finally:
        stopped = cluster.stop()
        left = _cluster_processes(str(root))
        shutil.rmtree(root, ignore_errors=True)
        assert stopped, "the test cluster started no process that could be found by its marker"
        assert left == [], f"cluster processes still running after the stop: {[p.pid for p in left]}"


def _probed_app(tmp_path: Path) -> Path:
    """A copy of the app whose ClientApp records the Ray node of every message it handles."""
    app_dir = tmp_path / "probed-app"
    shutil.copytree(REPO, app_dir, ignore=lambda d, names: {*IGNORED(d, names), *({".gpu_check"} & set(names))})
    pyproject = app_dir / "pyproject.toml"
    text = pyproject.read_text()
    assert 'clientapp = "client_app.app:app"' in text
    pyproject.write_text(text.replace('clientapp = "client_app.app:app"', 'clientapp = "tests.ray_node_client_app:app"'))
    return app_dir


@pytest.mark.slow
def test_a_simulation_attached_to_a_running_cluster_trains_on_both_of_its_nodes(ray_cluster, tmp_path):
    nodes = ray_cluster.nodes()
    assert sorted(nodes.values()) == ["head", "second"]
    run_dir = tmp_path / "run"
    proc = launch(run_dir, f"federation.ray_address={ray_cluster.address}", "strategy=base_only", "num_rounds=2",
                  "federation.num_clients=4", "federation.client_cpus=1", "seed=0",
                  app_dir=_probed_app(tmp_path), timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert f"ClientApps run on the Ray cluster at {ray_cluster.address}" in proc.stdout
    rows = metrics(run_dir)["rounds"]
    assert [r["clients_trained"] for r in rows if r["round"] > 0] == [4, 4]

    # The ClientApps' own account: every message was handled on a node of this cluster, and both
    # nodes trained (4 histogram queries + 2 rounds x 4 train messages, no errors).
    handled = [json.loads(f.read_text()) for f in (run_dir / "ray-nodes").glob("*.json")]
    assert len(handled) == 4 + 2 * 4 and not any(h["error"] for h in handled)
    trained_on = {nodes[h["node"]] for h in handled if h["type"] == "train"}
    assert trained_on == {"head", "second"}, handled
    # Ray's actor table agrees: one ClientApp actor per node (one CPU each), the processes that did the
    # work, all gone now that the run is over.
    actors = ray_cluster.client_actors()
    assert sorted(nodes[a["node"]] for a in actors) == ["head", "second"], actors
    assert {(a["node"], a["pid"]) for a in actors} == {(h["node"], h["pid"]) for h in handled}
    assert all(a["state"] == "DEAD" for a in actors), actors
    assert_nothing_left_running(run_dir)
