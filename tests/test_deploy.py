"""Deployment end to end on one machine with real processes, in docs/deploy.md's default layout: a
SuperLink with TLS and SuperNode authentication on 127.0.0.1, nginx in front of it forwarding only the
Fleet API to the boxes' address, registered SuperNodes dialing the proxy (one reading an exported image
folder, one with bad data), the `genfl-deploy-run` runner, a box that tries the Control API through the
proxy, a node restarted with a new node id, a node killed mid-run, and an unregistered node.

Slow (several minutes: each message starts a fresh ClientApp process, and a killed node is only
reported after Flower's ~60 s heartbeat timeout), so it is marked `deploy`: `.ci/run` runs it,
`python -m pytest -m deploy` runs it alone.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import ssl
import subprocess
import sys
import time

import pytest

from deployment import BOX_HOST, REPO, Deployment, stop_tree

pytestmark = [pytest.mark.slow, pytest.mark.deploy]

NODES = ("edge-0", "edge-1", "edge-2")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    dep = Deployment(root)
    try:
        dep.make_credentials(*NODES, "bad-data", "rogue", "late")
        dep.run([sys.executable, "-m", "genfl_cli.export_partitions", "--num-partitions", "3", "--only", "0",
                 "--out", str(root / "data")])
        (root / "bad" / "giraffe").mkdir(parents=True)  # a class this federation does not have
        dep.start_superlink()
        dep.start_proxy()
        for name in (*NODES, "bad-data", "late"):
            dep.register(name)
        dep.start_supernode("edge-0", f'data-path="{root / "data" / "partition-0"}"')
        dep.start_supernode("edge-1", "partition-id=1 num-partitions=3")
        dep.start_supernode("edge-2", "partition-id=2 num-partitions=3")
        dep.wait_online(3)
        yield dep
    finally:
        leftovers = dep.close()
        assert leftovers == [], f"processes left running: {leftovers}"


def _overrides(dep: Deployment, name: str, *extra: str) -> list[str]:
    """A short GenFL run: few synthetic images, few sampling steps, private caches."""
    return [f"output.dir={dep.root / name}", f"generation.cache_dir={dep.root / 'cache'}", "generation.per_class=10",
            "generator.sampling_steps=5", f"generator.weights_dir={dep.root / 'weights'}",
            "federation.node_wait_timeout=60", "federation.round_timeout=300", "federation.histogram_timeout=300", *extra]


def _deploy_run(dep: Deployment, overrides: list[str], on_line=None, timeout: float = 1500):
    """genfl-deploy-run on the `edge` connection; ``on_line(line)`` sees the streamed log as it comes."""
    proc = subprocess.Popen([sys.executable, "-m", "genfl_cli.deploy_run", "edge", *overrides], cwd=REPO, env=dep.env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines, deadline = [], time.monotonic() + timeout
    try:
        for line in proc.stdout:
            lines.append(line)
            if on_line:
                on_line(line)
            if time.monotonic() > deadline:
                raise TimeoutError(f"genfl-deploy-run still running after {timeout} s")
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            stop_tree(proc.pid, signal.SIGTERM)  # the runner stops its run on the SuperLink
    return proc.returncode, "".join(lines)


def test_an_unregistered_node_is_refused(deployment):
    rogue = deployment.start_supernode("rogue", "partition-id=0 num-partitions=3")
    rogue.wait(timeout=180)
    assert rogue.returncode != 0
    assert "Failed to activate SuperNode" in deployment.log("rogue")
    assert deployment.online_nodes() == 3


def test_boxes_reach_the_fleet_api_only_and_the_control_api_is_refused_at_the_proxy(deployment):
    dep = deployment
    registered = len(json.loads(dep.run(["flwr", "supernode", "list", "edge", "--format", "json"]).stdout)["nodes"])
    # A box's flwr CLI (only ca.crt, the boxes' address) can neither register a key, nor list runs, nor
    # start one: nginx answers 403 for everything outside /v1/fleet/.
    for args in (["flwr", "supernode", "register", str(dep.keys / "rogue.pub"), "edge"], ["flwr", "ls", "edge"],
                 ["flwr", "run", str(REPO), "edge"]):
        proc = dep.box_cli(args)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, (args, out)
        assert "403 Forbidden" in out and f"https://{dep.box_address}/v1/control/" in out, (args, out)
    assert len(json.loads(dep.run(["flwr", "supernode", "list", "edge", "--format", "json"]).stdout)["nodes"]) == registered
    control = [line for line in dep.proxy_log().splitlines() if "/v1/control/" in line]
    assert len(control) == 3 and all('" 403 ' in line for line in control), control
    # Nothing of the Control API reached the SuperLink from the proxy (the admin's calls come from 127.0.0.1 directly).
    assert "127.0.0.1:0 - \"POST /v1/control/" not in dep.log("superlink")
    # Dot segments and encoded slashes or dots are refused before nginx forwards anything (400); other methods,
    # the docs and the Runtime API are refused too. An unsigned Fleet call gets through to the SuperLink, which refuses it.
    context = ssl.create_default_context(cafile=str(dep.certs / "ca.crt"))
    for method, path, status in [("POST", "/v1/fleet/../control/list-runs", 400), ("POST", "/v1/fleet/%2e%2e/control/list-runs", 400),
                                 ("POST", "/v1/fleet/..%2fcontrol/list-runs", 400), ("POST", "/v1/fleet%2fcontrol/list-runs", 400),
                                 ("POST", "/v1/fleet/x/../pull-messages", 400), ("GET", "/v1/fleet/get-run", 403),
                                 ("GET", "/docs", 403), ("POST", "/v1/runtime/pull-task-input", 403),
                                 ("POST", "/v1/fleet/pull-messages", 401)]:
        conn = http.client.HTTPSConnection(BOX_HOST, dep.proxy_port, context=context, timeout=30)
        try:
            conn.request(method, path, body=b"", headers={"content-type": "application/protobuf"})
            assert conn.getresponse().status == status, (method, path)
        finally:
            conn.close()
    if BOX_HOST != "127.0.0.1":  # the SuperLink itself is not listening on the boxes' address
        with socket.socket() as sock:
            assert sock.connect_ex((BOX_HOST, dep.port)) != 0


def test_genfl_run_over_tls_on_registered_nodes_completes_and_skips_a_node_with_bad_data(deployment):
    dep = deployment
    dep.start_supernode("bad-data", f'data-path="{dep.root / "bad"}"')
    dep.wait_online(4)
    joined = []

    def join_late(line: str) -> None:  # a box that comes online after round 1 (added, or back from a reboot)
        if "round 1/3: test accuracy" in line and not joined:
            joined.append(dep.start_supernode("late", "partition-id=1 num-partitions=3"))

    try:
        code, out = _deploy_run(dep, _overrides(dep, "run-complete", "num_rounds=3", "federation.expected_nodes=4"),
                                on_line=join_late)
    finally:
        dep.stop("bad-data")
        if joined:
            dep.stop("late")
    assert code == 0, out[-6000:]
    metrics = json.loads((dep.root / "run-complete" / "metrics.json").read_text())
    run_id = int(out.split("started run ")[1].split()[0])
    assert metrics["status"] == "completed" and metrics["run_id"] == run_id
    assert f"completed (run {run_id}); results in {dep.root / 'run-complete'}" in out
    # The bad node's error names the folder; the other three carry the run.
    assert "label histogram: 3 of 4 nodes reported" in out
    assert f"{dep.root / 'bad' / 'giraffe'}: the federation has no class 'giraffe'" in out
    assert sum(metrics["global_label_histogram"]) == 1077  # partition 0 from files + partitions 1, 2 built in
    rounds = metrics["rounds"][1:]
    assert rounds[0]["clients_trained"] == 3
    # The late box reported its histogram when first sampled and trained from then on.
    joined_in = next(r["round"] for r in rounds if r.get("late_histograms"))
    assert all(r["clients_trained"] == 4 for r in rounds if r["round"] >= joined_in), rounds
    # The per-node account and the end-of-run line name the bad-data box and why.
    nodes = metrics["nodes"]
    assert sum(n["rounds_trained"] > 0 for n in nodes) == 4 and len(nodes) == 5
    assert any("no class 'giraffe'" in n["histogram"] and n["rounds_sampled"] == 0 for n in nodes)
    assert "nodes: 4 of 5 node(s) contributed; 1 never did" in out
    # The generator weights came from the installed package: the FAB carries none.
    assert metrics["generation"]["images_synthesized"] == 100
    assert metrics["rounds"][-1]["test_accuracy"] > 0.2
    assert (dep.root / "run-complete" / "accuracy.png").is_file()
    assert dep.proxy_faults() == []  # the whole run went through nginx without a fault there


def test_a_node_restarted_with_a_new_node_id_contributes_from_its_next_sampled_round(deployment):
    """edge-2 dies after round 1 and comes back with a new key (a re-imaged box; the admin registers
    it on the server) and the same data: the new node id is asked for its histogram when first
    sampled and trains from then on; the dead id is left out after the heartbeat timeout."""
    dep = deployment
    old_id = dep.node_ids["edge-2"]
    dep.make_key("edge-2-new")
    new_id = dep.register("edge-2-new")
    restarted = []

    def restart(line: str) -> None:
        if "round 1/3: test accuracy" in line and not restarted:
            dep.kill("edge-2")
            restarted.append(dep.start_supernode("edge-2-new", "partition-id=2 num-partitions=3"))

    try:
        code, out = _deploy_run(dep, _overrides(dep, "run-restart", "num_rounds=3", "federation.expected_nodes=3"),
                                on_line=restart)
    finally:
        if restarted:  # back to the three boxes the next test expects, edge-2 under its own id again
            dep.stop("edge-2-new")
            dep.start_supernode_when_accepted("edge-2", "partition-id=2 num-partitions=3")
    assert restarted and code == 0, out[-6000:]
    metrics = json.loads((dep.root / "run-restart" / "metrics.json").read_text())
    nodes = {n["node_id"]: n for n in metrics["nodes"]}
    assert nodes[old_id]["rounds_trained"] == 1, nodes
    new = nodes[new_id]
    assert new["histogram"] == "ok" and new["partition"] == 2, new
    rounds = metrics["rounds"][1:]
    joined_in = [r["round"] for r in rounds if r.get("late_histograms")]
    assert len(joined_in) == 1 and joined_in[0] in (2, 3), rounds  # sampled (every round: fraction_train=1) from there
    assert new["rounds_sampled"] == 4 - joined_in[0] and new["rounds_trained"] == new["rounds_sampled"], new
    assert rounds[-1]["clients_trained"] == 3, rounds  # edge-0, edge-1 and the new id; the dead id left out
    assert "nodes: 4 of 4 node(s) contributed" in out
    assert dep.proxy_faults() == []  # every Fleet call of the run went through nginx, none failed there


def test_run_goes_on_when_a_node_dies_and_fails_loudly_when_none_are_left(deployment):
    dep = deployment
    killed = []

    def kill_nodes(line: str) -> None:
        if "round 1/3: test accuracy" in line and not killed:
            dep.kill("edge-2")
            killed.append("edge-2")
        elif "round 2/3: test accuracy" in line and len(killed) == 1:
            dep.kill("edge-0")
            dep.kill("edge-1")
            killed.extend(["edge-0", "edge-1"])

    code, out = _deploy_run(dep, _overrides(dep, "run-kill", "num_rounds=3", "federation.expected_nodes=3",
                                            "reliability.max_consecutive_failed_rounds=1"), on_line=kill_nodes)
    assert killed == ["edge-2", "edge-0", "edge-1"], out[-6000:]
    metrics = json.loads((dep.root / "run-kill" / "metrics.json").read_text())
    trained = {r["round"]: r.get("clients_trained") for r in metrics["rounds"]}
    assert trained[1] == 3 and trained[2] == 2, metrics["rounds"]  # round 2 went on without the dead node
    assert code == 1, out[-6000:]
    assert metrics["status"] == "failed" and "status finished:failed" in out
