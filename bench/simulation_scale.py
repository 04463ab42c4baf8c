"""Simulation at scale: 100 virtual clients on digits, 10 sampled per round, through `genfl-run`.

Records the peak memory of the whole run (the launcher, SuperLink, SuperExec, ServerApp, simulation
and every Ray process, summed at each sample) and seconds per round. Two sums: RSS, which counts
shared pages (Ray's object store, mapped by every worker) once per process that maps them, and PSS,
which splits each shared page among its processes: PSS is the memory the run really occupies.

    python bench/simulation_scale.py                   # writes bench/results/simulation_scale.json
    python bench/simulation_scale.py strategy=fedavg   # extra Hydra overrides
"""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from cli.run import run_processes

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = ["federation.num_clients=100", "federation.fraction_train=0.1", "num_rounds=6", "strategy=genfl"]


def main() -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="genfl-scale-")) / "run"
    command = [sys.executable, "-m", "cli.run", *OVERRIDES, *sys.argv[1:], f"output.dir={run_dir}"]
    started = time.perf_counter()
    launcher = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = {"rss_bytes": 0, "pss_bytes": 0, "processes": 0, "largest": []}
    done = threading.Event()

    def sample() -> None:
        root = psutil.Process(launcher.pid)
        while not done.is_set():
            rss, pss, sizes = 0, 0, []
            for proc in run_processes(root.pid, run_dir / "flwr-home"):
                try:
                    info = proc.memory_full_info()
                    name = " ".join(proc.cmdline()[:2])[-60:]
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                rss, pss = rss + info.rss, pss + info.pss
                sizes.append((round(info.pss / 2**20), round(info.rss / 2**20), name))
            peak["rss_bytes"] = max(peak["rss_bytes"], rss)
            if pss > peak["pss_bytes"]:
                peak.update(pss_bytes=pss, processes=len(sizes), largest=sorted(sizes, reverse=True)[:6])
            time.sleep(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = launcher.wait()
    done.set()
    sampler.join()
    rows = json.loads((run_dir / "metrics.json").read_text())["rounds"]
    per_round = [b["wall_seconds"] - a["wall_seconds"] for a, b in zip(rows, rows[1:])]
    result = {
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "overrides": OVERRIDES + sys.argv[1:], "exit_code": code,
        "peak_pss_gib": round(peak["pss_bytes"] / 2**30, 2), "peak_rss_sum_gib": round(peak["rss_bytes"] / 2**30, 2),
        "processes_at_peak": peak["processes"], "largest_at_peak_pss_rss_mib": peak["largest"],
        "seconds_per_round": [round(s, 1) for s in per_round],
        "median_seconds_per_round": round(statistics.median(per_round), 1),
        "clients_trained_per_round": [r.get("clients_trained") for r in rows[1:]],
        "final_test_accuracy": rows[-1]["test_accuracy"], "total_wall_seconds": round(time.perf_counter() - started, 1),
    }
    out = ROOT / "bench" / "results" / "simulation_scale.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
