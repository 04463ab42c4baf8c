"""Per-message cost of `client_partition` when one simulation worker serves 100 nodes in turn.

    python bench/partition_cache.py [--passes N]      # writes bench/results/partition-cache.json

A simulation worker gets one message per sampled node and serves them round-robin, so the partition
id changes on every call. BEFORE is the code at 2c7634d (an lru_cache of 4 partitions, keyed by
partition id: every call recomputes the whole Dirichlet split); AFTER is genfl_torch/partition.py
(the split is cached per spec, a call is a subset). Both are timed in this one process on the same
call sequence (warm imports, digits, 100 clients, the spec the server sends, see server_app/app.py
`train_config`), and every AFTER result is checked equal to BEFORE's.

Settings: conf/config.yaml's `partition:` (self_balancing true, min_partition_size 2) at alpha 0.3.
At alpha 0.1, 100 digits clients cannot each get 1+ samples (PartitionError), so that case runs
with min_partition_size 0, the only small value that splits.
"""

from __future__ import annotations

import argparse
import importlib.util
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

BEFORE_COMMIT = "2c7634d"
NUM_CLIENTS = 100
CASES = [  # (alpha, min_partition_size)
    (0.1, 0),
    (0.3, 2),
]


def _load_before(tmp: str):
    """The original module, from git, importable beside the current one."""
    source = subprocess.run(["git", "show", f"{BEFORE_COMMIT}:genfl_torch/partition.py"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout
    path = Path(tmp, "partition_before.py")
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("partition_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _spec(alpha: float, min_size: int) -> dict:
    """The flat data spec exactly as a node builds it from the server's train config."""
    from server_app.build import client_config as train_config
    from server_app.config import load_config

    cfg = load_config([f"federation.num_clients={NUM_CLIENTS}", f"partition.alpha={alpha}",
                       f"partition.min_partition_size={min_size}"])
    config = train_config(cfg)
    return {k: v for k, v in config.items() if k.startswith(("dataset.", "partition.")) or k == "seed"}


def _time(fn, spec: dict, ids: list[int]) -> tuple[list[float], list]:
    times, out = [], []
    for pid in ids:
        started = time.perf_counter()
        data = fn(spec, pid, NUM_CLIENTS)
        times.append((time.perf_counter() - started) * 1000.0)
        out.append(data)
    return times, out


def _summary(ms: list[float]) -> dict:
    return {"calls": len(ms), "median_ms": round(statistics.median(ms), 3), "mean_ms": round(statistics.mean(ms), 3),
            "first_call_ms": round(ms[0], 3), "max_ms": round(max(ms), 3)}


def main(passes: int) -> None:
    import numpy as np
    import torch

    import genfl_torch.partition as after

    load_at_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        before = _load_before(tmp)
        warm = _spec(0.3, 2)
        warm["seed"] = 12345  # imports and first-use costs, on a spec no case uses
        before.client_partition(warm, 0, NUM_CLIENTS)
        ids = [i % NUM_CLIENTS for i in range(passes * NUM_CLIENTS)]
        cases = []
        for alpha, min_size in CASES:
            spec = _spec(alpha, min_size)
            before_ms, before_out = _time(before.client_partition, spec, ids)
            after_ms, after_out = _time(after.client_partition, spec, ids)
            for b, a in zip(before_out, after_out):
                assert torch.equal(b.images, a.images) and torch.equal(b.labels, a.labels), "AFTER differs from BEFORE"
            b, a = _summary(before_ms), _summary(after_ms)
            cases.append({
                "alpha": alpha, "min_partition_size": min_size, "self_balancing": spec["partition.self_balancing"],
                "partition_sizes": {"min": int(min(len(d) for d in after_out[:NUM_CLIENTS])),
                                    "max": int(max(len(d) for d in after_out[:NUM_CLIENTS]))},
                "before": b, "after": a,
                "ratio_median": round(b["median_ms"] / a["median_ms"], 1),
                "ratio_mean": round(b["mean_ms"] / a["mean_ms"], 1),
            })
            print(f"alpha {alpha}: before median {b['median_ms']:.1f} ms mean {b['mean_ms']:.1f} ms | after median "
                  f"{a['median_ms']:.3f} ms mean {a['mean_ms']:.3f} ms (first {a['first_call_ms']:.1f} ms)", flush=True)

    import flwr_datasets

    result = {
        "what": "client_partition per message, one worker serving 100 digits partitions round-robin "
                f"({passes} pass(es), same process, same calls); before = {BEFORE_COMMIT}, after = working tree",
        "note": "after.mean_ms includes the one Dirichlet split (first_call_ms); median is the steady state",
        "num_clients": NUM_CLIENTS,
        "cases": cases,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "numpy": np.__version__,
                    "flwr_datasets": flwr_datasets.__version__,
                    "loadavg_1m_at_start": round(load_at_start[0], 2)},
    }
    out = REPO / "bench" / "results" / "partition-cache.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=1, help="round-robin passes over the 100 ids (BEFORE: ~0.5 s a call)")
    main(parser.parse_args().passes)
