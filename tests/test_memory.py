"""Memory of a simulation (bench/simulation_scale.py): what the launcher imports, which model copies the
server keeps between rounds, and freed heap given back by the server after each round and by a client
after each message. Each test checks one of the fixes that took a 100-client run's peak PSS down."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, Metadata, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from conf_defaults import reliability
from local_grid import LocalGrid
from strategy.genfl import GenFL
from strategy.kappa import KappaSchedule

REPO = Path(__file__).resolve().parents[1]


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_validating_the_config_imports_neither_torch_nor_the_model_code():
    """genfl-run's launcher validates the config and then only waits for the run: importing torch there
    (it came in through generation.filtering) cost ~300 MB PSS for the whole run."""
    out = _python("""
        import sys
        from server_app.config import load_config
        load_config(["augmented.filter.mode=confidence", "federation.num_clients=100"])
        print(sorted(m for m in ("torch", "torchvision", "diffusers", "sklearn") if m in sys.modules))
    """)
    assert out.strip() == "[]"


class RecordingGrid(LocalGrid):
    """Keeps every reply list it hands out, as Flower's round loop keeps a round's train replies."""

    def __init__(self, nodes):
        super().__init__(nodes)
        self.handed_out: list[list[Message]] = []

    def send_and_receive(self, messages, *, timeout=None):
        replies = super().send_and_receive(messages, timeout=timeout)
        self.handed_out.append(replies)
        return replies


def _node(histogram, partition):
    def handle(msg):
        if msg.metadata.message_type == "query.label_histogram":
            return Message(RecordDict({"h": MetricRecord({"label-histogram": histogram, "partition-id": partition})}),
                           reply_to=msg)
        state = {k: v + 1 for k, v in zip(msg.content["arrays"].keys(), msg.content["arrays"].to_numpy_ndarrays())}
        return Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in state.items()}),
                                   "metrics": MetricRecord({"num-examples": sum(histogram), "train-loss": 1.0})}),
                       reply_to=msg)
    return handle


def test_aggregated_train_replies_no_longer_hold_their_models():
    """Flower's loop holds a round's train replies until the next round's arrive: ten 45 MB ResNet-18s
    were resident through evaluation and the whole next round. After aggregation they hold metrics only."""
    grid = RecordingGrid({1: _node([1, 2, 3], 0), 2: _node([3, 2, 1], 1)})
    strategy = GenFL(FedAvg(fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1), num_classes=3,
                     kappa=KappaSchedule(0.0, "constant", 0.0, 2), augmenter=None, histogram_timeout=1, seed=0,
                     reliability=reliability(max_relative_update=1e9, claim_slack=0), first_round=1)
    initial = ArrayRecord({"w": Array(np.zeros(4, np.float32))})
    result = strategy.start(grid, initial, num_rounds=2, timeout=1, train_config=ConfigRecord({"lr": 0.1}))
    np.testing.assert_array_equal(result.arrays["w"].numpy(), np.full(4, 2.0, np.float32))  # both rounds aggregated
    train_rounds = [replies for replies in grid.handed_out if replies and replies[0].metadata.message_type == "train"]
    assert len(train_rounds) == 2
    for replies in train_rounds:
        assert [len(r.content.array_records) for r in replies] == [0, 0]
        assert [r.content.metric_records["metrics"]["train-loss"] for r in replies] == [1.0, 1.0]


def test_trim_heap_gives_freed_heap_pages_back_to_the_os():
    """glibc keeps freed heap memory that a live block above it pins; malloc_trim returns it."""
    out = _python("""
        import json
        from genfl_torch.memory import trim_heap
        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
        blocks = [bytearray(100_000) for _ in range(3000)]   # ~290 MB below the mmap threshold: the heap
        pin = bytearray(100_000)                             # a live block at the top of the heap
        full = rss()
        del blocks
        before = rss()
        trimmed = trim_heap()
        print(json.dumps({"full": full, "before": before, "after": rss(), "trimmed": trimmed}))
    """)
    mib = json.loads(out)
    assert mib["before"] > mib["full"] - 50  # free() alone kept the pages
    assert mib["trimmed"] and mib["after"] < mib["before"] - 200


def _message(message_type, content):
    metadata = Metadata(run_id=1, message_id=f"m-{message_type}", src_node_id=0, dst_node_id=7, reply_to_message_id="",
                        group_id="1", created_at=0.0, ttl=3600.0, message_type=message_type)
    return Message(metadata=metadata, content=content)


def test_the_client_app_trims_the_heap_after_every_message(monkeypatch, make_config):
    import client_app.mods
    from client_app.app import app
    from server_app.build import client_config

    calls = []
    monkeypatch.setattr(client_app.mods, "trim_heap", lambda: calls.append(1))
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 1, "num-partitions": 4}, state=RecordDict(),
                      run_config={})
    config = client_config(make_config("federation.num_clients=4"))
    for _ in range(2):
        reply = app(_message("query.label_histogram", RecordDict({"config": config})), context)
        assert not reply.has_error()
    assert len(calls) == 2


SPEC = {"seed": 0, "dataset.name": "digits", "dataset.split_seed": 0, "dataset.test_fraction": 0.2,
        "dataset.public_fraction": 0.2, "dataset.mean": [0.3], "dataset.std": [0.38], "partition.alpha": 0.3,
        "partition.min_partition_size": 2, "partition.self_balancing": True}


def test_a_client_loads_and_splits_the_data_without_importing_the_data_libraries():
    """A simulation worker lives for the whole run: scikit-learn (with scipy, pandas) and datasets (with
    pyarrow) did their once-per-run work in it and stayed, ~150 MB PSS per worker. They now run in a
    forked child; the partitions are the very ones the partitioner gives in this process."""
    out = _python(f"""
        import json, sys
        import numpy as np
        from genfl_torch.partition import client_partition
        spec = {SPEC!r}
        parts = [client_partition(spec, i, 20) for i in range(20)]
        loaded = sorted(m for m in ("sklearn", "scipy", "pandas", "datasets", "pyarrow", "flwr_datasets") if m in sys.modules)
        from genfl_torch.data import load_splits
        from genfl_torch.partition import dirichlet_partitions
        from types import SimpleNamespace
        dataset = SimpleNamespace(**{{k.split(".", 1)[1]: v for k, v in spec.items() if k.startswith("dataset.")}})
        federation = load_splits(dataset)["federation"]
        expected = dirichlet_partitions(federation.labels.numpy(), 20, 0.3, 0, 2, True)
        same = all(np.array_equal(p.images.numpy(), federation.images.numpy()[e])
                   and np.array_equal(p.labels.numpy(), federation.labels.numpy()[e]) for p, e in zip(parts, expected))
        from genfl_torch.partition import PartitionError
        try:  # an error in the child reaches the caller with its message
            client_partition({{**spec, "partition.min_partition_size": 500, "partition.self_balancing": False}}, 0, 100)
            error = None
        except PartitionError as err:
            error = str(err)
        print(json.dumps({{"loaded": loaded, "same": same, "error": error}}))
    """)
    result = json.loads(out)
    assert {k: result[k] for k in ("loaded", "same")} == {"loaded": [], "same": True}
    assert "cannot split 1077 samples into 100 Dirichlet" in result["error"] and "partition.min_partition_size" in result["error"]



def test_training_leaves_no_gradients_behind():
    """The last step's gradients are a whole model's worth (45 MB for ResNet-18) that sat beside the reply
    a client serialises next, and beside the server's augmented model between rounds."""
    import torch

    from conf_defaults import train_settings
    from genfl_torch.data import Split
    from genfl_torch.train import train

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    data = Split(torch.rand(40, 1, 8, 8), torch.arange(40) % 10)
    loss = train(model, data, train_settings(batch_size=8, max_steps=3), torch.device("cpu"), seed=0)
    assert loss > 0
    assert [p.grad for p in model.parameters()] == [None, None]


def test_a_cache_hit_of_the_offline_generator_loads_no_model_code(tmp_path):
    """A resumed or repeated run finds its synthetic set in the cache: diffusers (with transformers and
    scipy, ~65 MB in the ServerApp) is imported only when a model is actually loaded."""
    out = _python(f"""
        import sys, torch
        from server_app.config import load_config
        from generation.cache import cache_path, generate_cached, write_entry
        from generation.factory import build_generator
        cfg = load_config([])
        generator = build_generator(cfg.generator, cfg.dataset)
        plan = {{0: 2, 1: 3}}
        path = cache_path(generator, plan, 0, {str(tmp_path)!r})
        write_entry(path, torch.zeros(5, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 0, 1, 1, 1]), {{"plan": plan}})
        images, labels, hit = generate_cached(generator, plan, 0, {str(tmp_path)!r})
        print(hit, len(labels), sorted(m for m in ("diffusers", "transformers", "matplotlib") if m in sys.modules))
    """)
    assert out.split() == ["True", "5", "[]"]


def test_a_client_drops_the_received_model_once_loaded(make_config):
    """A simulation worker got its own copy of the global model with each training message and held it
    (~45 MB) beside the local model, its gradients and the reply until the message was done. The message
    given to the handler no longer carries it afterwards; the RecordDict the server shares among its
    messages (in-process grids) is left as it was."""
    import torch

    from client_app.app import app
    from genfl_torch.model import seeded_model
    from server_app.build import client_config

    cfg = make_config("federation.num_clients=4")
    ds = cfg.dataset
    model = seeded_model(0, num_classes=ds.num_classes, in_channels=ds.channels, mean=list(ds.mean), std=list(ds.std))
    config = client_config(cfg)
    config["server-round"] = 1
    shared = RecordDict({"arrays": ArrayRecord(model.state_dict()), "config": config})
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 1, "num-partitions": 4}, state=RecordDict(),
                      run_config={})
    with torch.no_grad():
        msg = _message("train", shared)
        reply = app(msg, context)
        again = app(_message("train", shared), context)  # a second node of the same round, in-process
    assert not reply.has_error() and not again.has_error()
    assert list(msg.content.array_records) == [] and "config" in msg.content
    assert list(shared.array_records) == ["arrays"]
    np.testing.assert_array_equal(reply.content["arrays"]["1.fc.weight"].numpy(), again.content["arrays"]["1.fc.weight"].numpy())
