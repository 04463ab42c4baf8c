"""What the nginx proxy of docs/deploy.md's default layout costs: Fleet API calls and training rounds
through the proxy against the same calls and rounds straight to the SuperLink, on one machine, with
the real processes of the `deploy` tests (tests/deployment.py: TLS, SuperNode authentication, nginx
as a private instance of the Debian package).

    python bench/proxy_latency.py [--calls 200] [--rounds 3] [--nodes 3] [--no-rounds]
        # writes bench/results/proxy_latency.json

1. Calls: a registered SuperNode's signed PullMessages (what an idle box sends every 3 s) and a
   5 MiB PushObject (a box's largest request: one chunk of model weights; the SuperLink reads and
   parses it, then refuses it: there is no such run), made with Flower's own Fleet client, one
   kept-alive connection per path as a SuperNode keeps, alternating direct / proxy call by call so
   that both see the same background load. Median and p90 per path, and their ratio.
2. Rounds: the same short `genfl-deploy-run` twice on the same SuperLink, the boxes (same keys, ids
   and data) dialing the SuperLink directly, then the proxy; seconds per round from metrics.json's
   `round_seconds`, round 1 left out (it also waits for the first ClientApp start-ups).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from deployment import Deployment, nginx_binary  # noqa: E402

RUN = ["generation.per_class=10", "generator.sampling_steps=5", "federation.node_wait_timeout=120",
       "federation.round_timeout=600", "federation.histogram_timeout=600"]


def _client(address: str, dep: Deployment, name: str):
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key
    from flwr.supernode.fleet_http_client import FleetHttpClient
    from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

    key = load_ssh_private_key((dep.keys / f"{name}.key").read_bytes(), None)
    return FleetHttpClient.from_server_address(address, False, str(dep.certs / "ca.crt"),
                                               interceptors=[NodeAuthHttpInterceptor(key, key.public_key())])


def _summary(seconds: list[float]) -> dict:
    ordered = sorted(seconds)
    return {"n": len(ordered), "median_ms": round(1000 * statistics.median(ordered), 3),
            "p90_ms": round(1000 * ordered[int(0.9 * (len(ordered) - 1))], 3), "mean_ms": round(1000 * statistics.fmean(ordered), 3)}


def measure_calls(dep: Deployment, calls: int) -> dict:
    import httpx
    from flwr.proto.fleet_pb2 import PullMessagesRequest  # pylint: disable=E0611
    from flwr.proto.message_pb2 import PushObjectRequest  # pylint: disable=E0611
    from flwr.proto.node_pb2 import Node  # pylint: disable=E0611

    node = Node(node_id=dep.register("bench"))
    clients = {"direct": _client(dep.address, dep, "bench"), "proxy": _client(dep.box_address, dep, "bench")}
    pull = PullMessagesRequest(node=node)
    push = PushObjectRequest(node=node, run_id=1, object_id="0" * 64, object_content=os.urandom(5 * 1024 * 1024))
    times = {f"{kind}_{path}": [] for kind in ("pull_messages", "push_object_5mib") for path in clients}
    statuses: dict[str, set] = {key: set() for key in times}

    def timed(key: str, call, request) -> None:
        started = time.perf_counter()
        try:
            call(request)
            statuses[key].add(200)
        except httpx.HTTPStatusError as err:
            statuses[key].add(err.response.status_code)
        times[key].append(time.perf_counter() - started)

    for path, client in clients.items():  # warm-up: TLS handshakes, first imports on the SuperLink
        for _ in range(3):
            client.PullMessages(pull)
    for i in range(calls):
        order = list(clients.items()) if i % 2 == 0 else list(clients.items())[::-1]
        for path, client in order:
            timed(f"pull_messages_{path}", client.PullMessages, pull)
        if i % 10 == 0:  # fewer of the big ones: 5 MiB each way of the proxy
            for path, client in order:
                timed(f"push_object_5mib_{path}", client.PushObject, push)
    for client in clients.values():
        client._client.close()  # pylint: disable=protected-access
    result = {key: {**_summary(value), "http_status": sorted(statuses[key])} for key, value in times.items()}
    for kind in ("pull_messages", "push_object_5mib"):
        result[f"{kind}_ratio_median"] = round(result[f"{kind}_proxy"]["median_ms"] / result[f"{kind}_direct"]["median_ms"], 3)
    return result


def measure_rounds(dep: Deployment, nodes: int, rounds: int) -> dict:
    names = [f"edge-{i}" for i in range(nodes)]
    for name in names:
        dep.make_key(name)
        dep.register(name)
    result = {}
    for path in ("direct", "proxy"):
        for i, name in enumerate(names):
            dep.start_supernode(name, f"partition-id={i} num-partitions={nodes}", direct=path == "direct")
        dep.wait_online(nodes)
        out = dep.root / f"run-{path}"
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "genfl_cli.deploy_run", "edge", f"output.dir={out}", f"num_rounds={rounds}",
                               f"federation.expected_nodes={nodes}", f"generation.cache_dir={dep.root / 'cache'}",
                               f"generator.weights_dir={dep.root / 'weights'}", *RUN],
                              cwd=REPO, env=dep.env, capture_output=True, text=True, timeout=3600)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"genfl-deploy-run ({path}) exited {proc.returncode}: {proc.stdout[-3000:]}{proc.stderr[-2000:]}")
        metrics = json.loads((out / "metrics.json").read_text())
        per_round = [r["round_seconds"] for r in metrics["rounds"][1:]]
        result[path] = {"round_seconds": per_round, "mean_round_seconds_after_round_1": round(statistics.fmean(per_round[1:]), 2),
                        "clients_trained": [r["clients_trained"] for r in metrics["rounds"][1:]], "run_wall_seconds": round(wall, 1),
                        "final_accuracy": metrics["rounds"][-1]["test_accuracy"]}
        for name in names:
            dep.stop(name)  # a graceful stop deactivates the node: it is offline at once, and may come back
    result["ratio_proxy_over_direct"] = round(result["proxy"]["mean_round_seconds_after_round_1"]
                                              / result["direct"]["mean_round_seconds_after_round_1"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--no-rounds", action="store_true", help="only the call latencies (a minute instead of ~10)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "proxy_latency.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="genfl-proxy-bench-") as tmp:
        dep = Deployment(Path(tmp))
        try:
            dep.make_credentials("bench")
            dep.start_superlink()
            dep.start_proxy()
            calls = measure_calls(dep, args.calls)
            print(json.dumps(calls, indent=1), flush=True)
            rounds = None if args.no_rounds else measure_rounds(dep, args.nodes, args.rounds)
        finally:
            leftovers = dep.close()
        if leftovers:
            sys.exit(f"processes left running: {leftovers}")
    nginx_version = subprocess.run([nginx_binary(), "-v"], capture_output=True, text=True).stderr.strip()
    load = os.getloadavg()
    result = {
        "what": "Fleet API calls and GenFL rounds through the nginx proxy (docs/deploy.md) vs straight to the SuperLink",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average_at_end": [round(x, 2) for x in load],
                    "nginx": nginx_version},
        "calls": calls,
        "rounds": rounds if rounds is None else {**rounds, "nodes": args.nodes, "num_rounds": args.rounds, "overrides": RUN},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
