"""What a SuperNode's ClientApp costs on an edge box: import time, peak memory of one training round.

Two steps, because the edge venv has no Hydra to compose the server's config:

    # on the server (full install): the message a node would get, and a node's image folder
    python bench/edge_footprint.py prepare /tmp/edge-bench
    # with the edge venv's python, from the checkout (the ClientApp is this folder's code)
    ~/genfl-edge/bin/python bench/edge_footprint.py measure /tmp/edge-bench

`measure` times `import client_app.app` in fresh interpreters (median of 5), then runs one
`query.label_histogram` and one `train` message through the real ClientApp on the image folder in a
fresh interpreter and reports its peak RSS (ru_maxrss) and the server-only packages it imported.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NUM_PARTITIONS = 3  # a node of the three-box federation in docs/deploy.md
SERVER_ONLY = ["diffusers", "transformers", "accelerate", "ray", "hydra", "omegaconf", "flwr_datasets", "datasets", "sklearn"]

_ROUND = """
import json, resource, sys, time
import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict
import client_app.app as client
from genfl_torch.model import seeded_model
bench = sys.argv[1]
config = ConfigRecord(json.load(open(bench + "/config.json")))
context = Context(run_id=1, node_id=7, node_config={"data-path": bench + "/node"}, state=RecordDict(), run_config={})
def message(kind, content):
    meta = Metadata(run_id=1, message_id=kind, src_node_id=0, dst_node_id=7, reply_to_message_id="", group_id="1",
                    created_at=time.time(), ttl=3600.0, message_type=kind)
    return Message(metadata=meta, content=content)
hist = client.app(message("query.label_histogram", RecordDict({"config": config})), context)
model = seeded_model(0, num_classes=int(config["dataset.num_classes"]), in_channels=int(config["dataset.channels"]),
                     mean=list(config["dataset.mean"]), std=list(config["dataset.std"]))
config["server-round"] = 1
started = time.perf_counter()
reply = client.app(message("train", RecordDict({"arrays": ArrayRecord(model.state_dict()), "config": config})), context)
print(json.dumps({"train_seconds": round(time.perf_counter() - started, 2),
                  "num_examples": int(reply.content["metrics"]["num-examples"]),
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "server_only_imported": sorted(m for m in %r if m in sys.modules)}))
""" % SERVER_ONLY


def prepare(bench: Path) -> None:
    sys.path.insert(0, str(REPO))
    from server_app.build import client_config as train_config
    from server_app.config import load_config
    from server_app.partitions import export

    cfg = load_config([])
    export(bench / "export", NUM_PARTITIONS, [0], [])
    (bench / "node").symlink_to(bench / "export" / "partition-0")
    (bench / "config.json").write_text(json.dumps(dict(train_config(cfg).items())))
    print(f"prepared {bench}: partition 0 of {NUM_PARTITIONS} as images, and the server's train config")


def measure(bench: Path) -> dict:
    imports = []
    for _ in range(5):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import client_app.app"], cwd=REPO, check=True)
        imports.append(time.perf_counter() - started)
    bare = []
    for _ in range(5):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], cwd=REPO, check=True)
        bare.append(time.perf_counter() - started)
    proc = subprocess.run([sys.executable, "-c", _ROUND, str(bench)], cwd=REPO, check=True, capture_output=True, text=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(python=sys.executable, import_seconds_median=round(statistics.median(imports), 2),
                  interpreter_start_seconds_median=round(statistics.median(bare), 2))
    return result


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("prepare", "measure"):
        sys.exit("usage: python bench/edge_footprint.py prepare|measure <folder>")
    folder = Path(sys.argv[2]).resolve()
    if sys.argv[1] == "prepare":
        prepare(folder)
    else:
        print(json.dumps(measure(folder), indent=2))
