"""What Flower costs: the same FedAvg job through `genfl-run` (SuperLink, simulation, Ray) and through
the raw in-process loop (bench/raw_federated.py), same partitions, seeds and settings.

    python bench/flower_overhead.py [hydra overrides...]     # writes bench/results/flower_overhead.json

Both train every client every round, so their accuracies should agree (a correctness cross-check);
the ratio of wall times is the price of the federation runtime on this machine.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from raw_federated import run as run_raw  # noqa: E402

DEFAULTS = ["strategy=base_only", "federation.num_clients=10", "num_rounds=3", "client.local_epochs=1",
            "federation.fraction_train=1.0"]


def main(extra: list[str]) -> None:
    overrides = DEFAULTS + extra
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "genfl_cli.run", *overrides, f"output.dir={tmp}/run"],
                              cwd=REPO, capture_output=True, text=True)
        flower_seconds = time.perf_counter() - started
        if proc.returncode != 0:
            sys.exit(f"genfl-run failed:\n{proc.stderr[-2000:]}")
        flower = json.loads(Path(tmp, "run", "metrics.json").read_text())
    started = time.perf_counter()
    raw = run_raw(overrides)
    raw_seconds = time.perf_counter() - started
    flower_rounds = flower["rounds"][1:]
    per_round_flower = (flower_rounds[-1]["wall_seconds"] - flower["rounds"][0]["wall_seconds"]) / len(flower_rounds)
    per_round_raw = raw["rounds"][-1]["wall_seconds"] / len(raw["rounds"])
    result = {
        "what": "FedAvg through genfl-run (Flower 1.42 simulation) vs the same loop in one process",
        "overrides": overrides,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch_threads_raw": _threads()},
        "flower": {"total_seconds": round(flower_seconds, 1), "seconds_per_round": round(per_round_flower, 1),
                   "final_test_accuracy": flower_rounds[-1]["test_accuracy"]},
        "raw": {"total_seconds": round(raw_seconds, 1), "seconds_per_round": round(per_round_raw, 1),
                "final_test_accuracy": raw["rounds"][-1]["test_accuracy"]},
        "ratio_total": round(flower_seconds / raw_seconds, 2),
        "ratio_per_round": round(per_round_flower / per_round_raw, 2),
    }
    out = REPO / "bench" / "results" / "flower_overhead.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main(sys.argv[1:])
