"""Simulation at scale: many virtual clients on digits through `genfl-run`; memory, seconds per round, server state.

Records the peak memory of the whole run (the launcher, SuperLink, SuperExec, ServerApp, simulation
and every Ray process, summed at each sample) and seconds per round. Two sums: RSS, which counts
shared pages (torch's libraries, Ray's object store) once per process that maps them, and PSS, which
splits each shared page among its processes: PSS is the memory the run really occupies. Each sample
reads /proc/PID/smaps_rollup of every process of the run; the peak's breakdown by role (ServerApp
process, client workers, Ray's own processes, Flower's) and a timeline of it are kept, with the
run's log lines timed, so a rise can be matched to the phase that caused it. After the run, the size
of the server's per-node state (label histograms, ledger, cooldown) is read from its checkpoint.

    python bench/simulation_scale.py --label 100-clients                      # 100 clients, 10 per round, 6 rounds
    python bench/simulation_scale.py --label 1000-clients --clients 1000 --fraction 0.01 partition.min_partition_size=0
    python bench/simulation_scale.py --label x strategy=base_only             # extra Hydra overrides

Each run is stored under its label in bench/results/simulation_scale.json (other labels are kept).
Seconds per round are noisy when other work shares the machine: the load average is recorded beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from server_app.processes import run_processes  # noqa: E402

OUT = ROOT / "bench" / "results" / "simulation_scale.json"
MIB = 2**20
PHASES = re.compile(r"label histogram:|synthetic data:|generator check:|round \d+/\d+:|nodes:|Results written")


def role(cmdline: list[str]) -> str:
    """Which part of the run a process is (for the breakdown)."""
    text = " ".join(cmdline)
    if "flwr-simulation" in text:
        return "serverapp_and_simulation"  # the ServerApp and the Ray driver share this process
    if text.startswith("ray::ClientAppActor"):
        return "client_workers"
    if "ray" in text or "raylet" in text or "gcs_server" in text:
        return "ray_services"
    if "genfl_cli.run" in text:
        return "launcher"
    return "flower_services"  # SuperLink, SuperExec, `flwr log`


def rollup(pid: int) -> dict[str, int]:
    """smaps_rollup in bytes: Rss, Pss, Pss_Anon, Pss_File, Private_* (cheap: one read per process)."""
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as handle:
        for line in handle.read().splitlines()[1:]:
            key, _, rest = line.partition(":")
            values[key] = int(rest.split()[0]) * 1024
    return values


NATIVE = ("torch", "torchvision", "triton", "scipy", "sklearn", "pandas", "pyarrow", "matplotlib", "PIL", "tokenizers",
          "safetensors", "ray")


def native_packages(pid: int) -> list[str]:
    """Which large packages' native libraries the process has loaded: evidence of what it imported."""
    try:
        with open(f"/proc/{pid}/maps") as handle:
            text = handle.read()
    except OSError:
        return []
    return [name for name in NATIVE if f"/site-packages/{name}/" in text or f"/site-packages/{name}.libs/" in text]


def git_state() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return head + (" (+ uncommitted edits)" if dirty else "")


def node_state(run_dir: Path) -> dict:
    """Entries and pickled bytes of the server's per-node state, from the last checkpoint and metrics.json."""
    state = {}
    checkpoint = run_dir / "checkpoint" / "latest.pkl"
    if checkpoint.is_file():
        payload = pickle.loads(checkpoint.read_bytes())
        strategy = payload["strategy"]
        state["checkpoint_bytes"] = checkpoint.stat().st_size
        state["checkpoint_model_bytes"] = len(pickle.dumps(payload["arrays"], protocol=pickle.HIGHEST_PROTOCOL))
        for key in ("survey", "nodes", "benched_until", "round_stats", "global_histogram", "base"):
            value = strategy.get(key)
            entries = len(value) if isinstance(value, (dict, list, tuple)) else None
            if isinstance(value, dict) and key == "survey":
                entries = {k: len(v) for k, v in value.items() if isinstance(v, (dict, list, tuple))}
            state[key] = {"entries": entries, "pickled_bytes": len(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))}
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        data = json.loads(metrics.read_text())
        state["metrics_json_bytes"] = metrics.stat().st_size
        state["metrics_json_nodes_rows"] = len(data.get("nodes") or [])
        state["metrics_json_nodes_bytes"] = len(json.dumps(data.get("nodes") or []))
    return state


def compact_json(data: dict) -> str:
    """Indented JSON with every innermost list and object on one line (a timeline point, a process row)."""
    text = json.dumps(data, indent=2)
    text = re.sub(r"\[[^\[\]{}]*\]", lambda m: re.sub(r"\s*\n\s*", " ", m.group(0)).replace("[ ", "[").replace(" ]", "]"), text)
    return re.sub(r"\{[^{}]*\}", lambda m: re.sub(r"\s*\n\s*", " ", m.group(0)).replace("{ ", "{").replace(" }", "}"), text) + "\n"


def downsample(points: list[dict], most: int = 120) -> list[dict]:
    """At most ``most`` points, keeping the largest total of each stretch (the peak survives)."""
    if len(points) <= most:
        return points
    step = len(points) / most
    return [max(points[int(i * step):int((i + 1) * step)] or [points[-1]], key=lambda p: p["total"]) for i in range(most)]


def summary_table(runs: dict) -> dict:
    """One line per stored run: what the comparisons in docs/performance.md quote."""
    table = {}
    for label, run in runs.items():
        state = run.get("server_node_state") or {}
        table[label] = {
            "clients": next((int(o.split("=")[1]) for o in (run.get("genfl_run") or "").split() if o.startswith("federation.num_clients=")), None),
            "peak_pss_gib": run.get("peak_pss_gib"), "peak_pss_by_role_mib": run.get("peak_pss_by_role_mib"),
            "median_seconds_per_round": run.get("median_seconds_per_round"),
            "load_average_1min_mean": (run.get("load_average_1min") or {}).get("mean"),
            "final_test_accuracy": run.get("final_test_accuracy"), "status": run.get("status"),
            "server_per_node_state_pickled_bytes": {k: state[k]["pickled_bytes"] for k in ("survey", "nodes", "benched_until")
                                                    if isinstance(state.get(k), dict)} or None,
        }
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", required=True, help="key of this run in the results file")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--fraction", type=float, default=0.1, help="federation.fraction_train")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between memory samples")
    parser.add_argument("--note", default=None, help="why these settings (stored with the run)")
    args, extra = parser.parse_known_args()
    overrides = [f"federation.num_clients={args.clients}", f"federation.fraction_train={args.fraction}",
                 f"num_rounds={args.rounds}", "strategy=genfl", *extra]
    run_dir = Path(tempfile.mkdtemp(prefix="genfl-scale-")) / "run"
    command = [sys.executable, "-m", "genfl_cli.run", *overrides, f"output.dir={run_dir}"]
    started = time.perf_counter()
    launcher = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1)
    peak = {"pss": 0, "rss": 0}
    timeline: list[dict] = []
    loads: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            now = round(time.perf_counter() - started, 1)
            roles: dict[str, int] = {}
            rows, rss = [], 0
            for proc in run_processes(launcher.pid, run_dir / "flwr-home"):
                try:
                    info = rollup(proc.pid)
                    cmd = proc.cmdline()
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, FileNotFoundError,
                        ProcessLookupError, PermissionError):
                    continue
                part = role(cmd)
                roles[part] = roles.get(part, 0) + info["Pss"]
                rss += info["Rss"]
                rows.append({"pid": proc.pid, "role": part, "name": " ".join(cmd[:2])[-60:], "pss_mib": round(info["Pss"] / MIB),
                             "pss_anon_mib": round(info.get("Pss_Anon", 0) / MIB),
                             "pss_file_mib": round(info.get("Pss_File", 0) / MIB),
                             "uss_mib": round((info["Private_Clean"] + info["Private_Dirty"]) / MIB),
                             "rss_mib": round(info["Rss"] / MIB)})
            total = sum(roles.values())
            timeline.append({"t": now, "total": round(total / MIB), **{k: round(v / MIB) for k, v in roles.items()}})
            loads.append(os.getloadavg()[0])
            peak["rss"] = max(peak["rss"], rss)
            if total > peak["pss"]:
                for row in rows:
                    row["native_packages"] = native_packages(row.pop("pid"))
                peak.update(pss=total, t=now, roles={k: round(v / MIB) for k, v in sorted(roles.items())},
                            processes=sorted(rows, key=lambda r: -r["pss_mib"]))
            done.wait(args.interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    phases = []
    with open(run_dir.parent / "genfl-run.log", "w") as log:  # the run's output, timed, as it comes
        for line in launcher.stdout:
            elapsed = round(time.perf_counter() - started, 1)
            log.write(f"{elapsed:8.1f} {line.rstrip()}\n")
            log.flush()
            if PHASES.search(line):
                phases.append(f"{elapsed:.1f}s {line.strip()[:200]}")
    code = launcher.wait()
    done.set()
    sampler.join()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = metrics["rounds"]
    per_round = [r["round_seconds"] for r in rows[1:] if r.get("round_seconds") is not None]
    if not per_round:  # an older metrics.json: from the wall clock
        per_round = [b["wall_seconds"] - a["wall_seconds"] for a, b in zip(rows, rows[1:])]
    result = {
        "command": "python bench/simulation_scale.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "note": args.note,
        "genfl_run": " ".join(["genfl-run", *overrides]),
        "code": git_state(),
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "exit_code": code,
        "status": metrics.get("status"),
        "peak_pss_gib": round(peak["pss"] / 2**30, 2),
        "peak_rss_sum_gib": round(peak["rss"] / 2**30, 2),
        "peak_at_seconds": peak.get("t"),
        "peak_pss_by_role_mib": peak.get("roles"),
        "processes_at_peak": peak.get("processes"),
        "seconds_per_round": [round(s, 1) for s in per_round],
        "median_seconds_per_round": round(statistics.median(per_round), 1) if per_round else None,
        "load_average_1min": {"mean": round(statistics.mean(loads), 2), "max": round(max(loads), 2)} if loads else None,
        "clients_trained_per_round": [r.get("clients_trained") for r in rows[1:]],
        "test_accuracy_per_round": [r.get("test_accuracy") for r in rows],
        "final_test_accuracy": rows[-1]["test_accuracy"],
        "generator_check": metrics.get("generator_check"),
        "total_wall_seconds": round(time.perf_counter() - started, 1),
        "server_node_state": node_state(run_dir),
        "phases": phases,
        "memory_timeline_mib": downsample(timeline),
        "run_dir": str(run_dir),
    }
    stored = json.loads(OUT.read_text()) if OUT.is_file() else {}
    runs = stored.get("runs", {}) if isinstance(stored.get("runs"), dict) else {}
    runs[args.label] = result
    OUT.write_text(compact_json({"what": __doc__.split("\n\n")[0], "summary": summary_table(runs), "runs": runs}))
    summary = {k: v for k, v in result.items() if k not in ("memory_timeline_mib", "processes_at_peak")}
    print(json.dumps(summary, indent=2))
    if code != 0:
        sys.exit(code)


if __name__ == "__main__":
    main()
