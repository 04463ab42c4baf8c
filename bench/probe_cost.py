"""What adaptive kappa and BatchNorm re-estimation cost a node per round (issue 16).

    python bench/probe_cost.py            # bench/results/probe_cost.json

Times the real ClientApp's handlers in-process on one digits partition of the embedded default
(20 clients, alpha 0.1): the training message (the baseline every sampled node pays), an evaluation
message without and with the adaptive-kappa probe (the default 5 candidates + the current kappa), the
probe as a query of its own (mix.choose=this_round), the BatchNorm-statistics query and the generator
check's query (once per run, before round 1: one model scored); reports each as a ratio to training in the same run. A simulation
adds the message round trip on top (seconds per round in bench/results/robustness.md).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict  # noqa: E402

from client_app.app import app  # noqa: E402
from server_app.build import client_config  # noqa: E402
from server_app.config import load_config  # noqa: E402
from genfl_torch.model import seeded_model  # noqa: E402
from genfl_torch.train import state_to_numpy  # noqa: E402


def _message(kind: str, content: RecordDict) -> Message:
    metadata = Metadata(run_id=1, message_id=f"m-{kind}", src_node_id=0, dst_node_id=7, reply_to_message_id="",
                        group_id="1", created_at=0.0, ttl=3600.0, message_type=kind)
    return Message(metadata=metadata, content=content)


def _record(state: dict) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in state.items()})


def main() -> int:
    torch.set_num_threads(1)
    cfg = load_config(["partition.alpha=0.1"])
    ds = cfg.dataset
    spec = dict(num_classes=ds.num_classes, in_channels=ds.channels, mean=list(ds.mean), std=list(ds.std))
    client, augmented = state_to_numpy(seeded_model(1, **spec)), state_to_numpy(seeded_model(2, **spec))
    config = client_config(cfg)
    config["server-round"] = 1
    candidates = sorted(set(cfg.mix.candidates) | {cfg.strategy.kappa_aug})
    messages = {
        "train": RecordDict({"arrays": _record(client), "config": config}),
        "evaluate": RecordDict({"arrays": _record(client), "config": config}),
        "evaluate_with_probe": RecordDict({"arrays": _record(client), "config": config,
                                           "genfl-client-part": _record(client), "genfl-augmented": _record(augmented),
                                           "genfl-probe": ConfigRecord({"candidates": candidates, "bn-stats": "clients"})}),
        # mix.choose=this_round: the same scores as a query of its own (no evaluation of the global model)
        "query.kappa_probe": RecordDict({"config": config, "genfl-client-part": _record(client),
                                         "genfl-augmented": _record(augmented),
                                         "genfl-probe": ConfigRecord({"candidates": candidates, "bn-stats": "clients"})}),
        "query.bn_statistics": RecordDict({"arrays": _record(client), "config": config}),
        # generator_check: the synthetic-only model as both parts of Eq. (1), one candidate
        "generator_check": RecordDict({"config": config, "genfl-client-part": _record(augmented),
                                       "genfl-augmented": _record(augmented),
                                       "genfl-probe": ConfigRecord({"candidates": [0.0], "bn-stats": "mixed"})}),
    }
    results = {}
    for partition in (0, 5, 11):  # a small, a middling and a large node at alpha 0.1
        context = Context(run_id=1, node_id=7, node_config={"partition-id": partition, "num-partitions": 20},
                          state=RecordDict(), run_config={})
        times = {}
        for name, content in messages.items():
            kind = "evaluate" if name.startswith("evaluate") else "query.kappa_probe" if name == "generator_check" else name
            app(_message(kind, content), context)  # warm-up
            samples = []
            for _ in range(5):
                started = time.perf_counter()
                app(_message(kind, content), context)
                samples.append(time.perf_counter() - started)
            times[name] = statistics.median(samples)
        results[f"partition {partition}"] = {
            "seconds": {k: round(v, 4) for k, v in times.items()},
            "ratio_to_train": {k: round(v / times["train"], 3) for k, v in times.items()},
            "probe_extra_over_train": round((times["evaluate_with_probe"] - times["evaluate"]) / times["train"], 3),
        }
    out = {"what": "per-node handler time, real ClientApp, digits, 1 torch thread, median of 5",
           "candidates": candidates, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                                 "device": "cpu"},
           "load_average_at_start": os.getloadavg(), "results": results}
    path = REPO / "bench" / "results" / "probe_cost.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
