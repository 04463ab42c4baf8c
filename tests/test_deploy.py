"""Deployment end to end on 127.0.0.1 with real processes: a SuperLink with TLS and SuperNode
authentication, registered SuperNodes (one reading an exported image folder, one with bad data), the
`genfl-deploy-run` runner, a node killed mid-run, and an unregistered node that tries to join.

Slow (several minutes: each message starts a fresh ClientApp process, and a killed node is only
reported after Flower's ~60 s heartbeat timeout), so it is marked `deploy`: `.ci/run` runs it,
`python -m pytest -m deploy` runs it alone.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from deployment import REPO, Deployment, stop_tree

pytestmark = [pytest.mark.slow, pytest.mark.deploy]

NODES = ("edge-0", "edge-1", "edge-2")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    dep = Deployment(root)
    try:
        dep.make_credentials(*NODES, "bad-data", "rogue", "late")
        dep.run([sys.executable, "-m", "cli.export_partitions", "--num-partitions", "3", "--only", "0",
                 "--out", str(root / "data")])
        (root / "bad" / "giraffe").mkdir(parents=True)  # a class this federation does not have
        dep.start_superlink()
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
    proc = subprocess.Popen([sys.executable, "-m", "cli.deploy_run", "edge", *overrides], cwd=REPO, env=dep.env,
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
