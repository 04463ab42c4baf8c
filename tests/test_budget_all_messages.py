"""The time budget bounds EVERY message the ClientApp handles, through the real ClientApp and its mods.

The heaviest messages (an evaluation with the adaptive-kappa probe, ``query.kappa_probe``, the generator
check) carry two ConfigRecords (the run's and the probe's); the budget must be found by the run's record
key, not by counting records. Each message below is laid out as the server lays it out (Flower's FedAvg
for train/evaluate, strategy/genfl.py's records for the rest) and sent to a node whose data read hangs:
its image folder holds a named pipe that nobody writes (a hung NFS mount, a stuck USB reader). The
handler really runs and really blocks; the mod must answer with an error reply at the budget.

Plus the client-side DP clipping mod: it clips training replies only; the server's other messages reuse
the training config (which Flower's DP wrapper stamps with the clipping norm) and must not be clipped.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict
from flwr.serverapp.strategy import FedAvg

from client_app.app import app
from genfl_protocol.contract import (AUGMENTED, BN_QUERY, BN_RECORD, CLIENT_PART, CLIPPING_NORM, PARTITION_QUERY, PROBE,
                                 PROBE_BN_STATS, PROBE_CANDIDATES, PROBE_QUERY, TIME_BUDGET)
from local_grid import LocalGrid
from server_app.build import client_config
from genfl_torch.classes import class_names
from genfl_torch.model import seeded_model

BUDGET = 0.3  # seconds: tiny, so every hung handler must be abandoned quickly
GUARD = 30.0  # a reply later than this means the budget was not enforced at all
NODE = 7
RUN_CONFIG = "config"  # the run's ConfigRecord key in every message (FedAvg's configrecord_key; client_app/mods.py)


@pytest.fixture(scope="module")
def cfg():
    from server_app.config import load_config

    return load_config(["federation.num_clients=4"])


def _config(cfg, budget=BUDGET) -> ConfigRecord:
    record = client_config(cfg)
    record[TIME_BUDGET] = float(budget)
    return record


def _arrays(cfg) -> ArrayRecord:
    ds = cfg.dataset
    model = seeded_model(cfg.seed, num_classes=ds.num_classes, in_channels=ds.channels, mean=list(ds.mean),
                         std=list(ds.std))
    return ArrayRecord(model.state_dict())


def _probe(candidates) -> ConfigRecord:
    return ConfigRecord({PROBE_CANDIDATES: list(candidates), PROBE_BN_STATS: "mixed"})


def _fedavg(kind: str, cfg, arrays: ArrayRecord, config: ConfigRecord) -> Message:
    """The one message Flower's FedAvg sends a one-node federation for training or evaluation."""
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=1, min_evaluate_nodes=1,
                      min_available_nodes=1)
    grid = LocalGrid({NODE: lambda msg: None})
    configure = strategy.configure_train if kind == "train" else strategy.configure_evaluate
    (message,) = list(configure(1, arrays, config, grid))
    return message


def messages(cfg) -> dict[str, tuple[str, RecordDict]]:
    """name -> (message type, content): every kind of message the server sends a node."""
    arrays = _arrays(cfg)
    train = _fedavg("train", cfg, arrays, _config(cfg))
    evaluate = _fedavg("evaluate", cfg, arrays, _config(cfg))
    probed = _fedavg("evaluate", cfg, arrays, _config(cfg))
    for name, record in {CLIENT_PART: arrays, AUGMENTED: arrays, PROBE: _probe([0.0, 0.1, 0.3])}.items():
        probed.content[name] = record  # what GenFL.configure_evaluate adds under adaptive kappa (next_round)
    return {
        "label histogram": ("query.label_histogram", RecordDict({RUN_CONFIG: _config(cfg)})),
        "train": (train.metadata.message_type, train.content),
        "evaluate": (evaluate.metadata.message_type, evaluate.content),
        "evaluate with the probe": (probed.metadata.message_type, probed.content),
        "kappa probe (this_round)": (f"query.{PROBE_QUERY}", RecordDict({
            CLIENT_PART: arrays, AUGMENTED: arrays, PROBE: _probe([0.0, 0.1, 0.3]), RUN_CONFIG: _config(cfg)})),
        "generator check": (f"query.{PROBE_QUERY}", RecordDict({
            CLIENT_PART: arrays, AUGMENTED: arrays, RUN_CONFIG: _config(cfg), PROBE: _probe([0.0])})),
        "BatchNorm query": (f"query.{BN_QUERY}", RecordDict({"arrays": arrays, RUN_CONFIG: _config(cfg)})),
        # a resumed run asks which partition a node holds, with the label-histogram survey's content
        "partition query": (f"query.{PARTITION_QUERY}", RecordDict({RUN_CONFIG: _config(cfg)})),
    }


def _deliver(message_type: str, content: RecordDict) -> Message:
    metadata = Metadata(run_id=1, message_id=f"m-{message_type}", src_node_id=0, dst_node_id=NODE,
                        reply_to_message_id="", group_id="1", created_at=time.time(), ttl=3600.0,
                        message_type=message_type)
    return Message(metadata=metadata, content=content)


def _call(msg: Message, context: Context, guard: float = GUARD) -> tuple[Message, float]:
    """The real ClientApp's reply and how long it took; fails after ``guard`` seconds without one."""
    result = {}
    started = time.monotonic()
    caller = threading.Thread(target=lambda: result.setdefault("reply", app(msg, context)), daemon=True)
    caller.start()
    caller.join(timeout=guard)
    assert not caller.is_alive(), f"no reply within {guard}s: the time budget did not bound this message"
    return result["reply"], time.monotonic() - started


@pytest.fixture
def hung_node(tmp_path, cfg):
    """A node whose image folder (first class) holds a named pipe: reading it blocks until someone writes."""
    root = tmp_path / "images"
    first = root / class_names(cfg.dataset.name)[0]
    first.mkdir(parents=True)
    fifo = first / "stuck.png"
    os.mkfifo(fifo)
    yield Context(run_id=1, node_id=NODE, node_config={"data-path": str(root)}, state=RecordDict(), run_config={})
    try:  # let the abandoned readers finish (they read an empty file and fail)
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


def test_the_cases_cover_every_message_type_the_client_app_registers(cfg):
    covered = {t if "." in t else f"{t}.default" for t, _ in messages(cfg).values()}
    assert covered == set(app._registered_funcs)  # a new handler needs a case here


@pytest.mark.parametrize("name", ["label histogram", "train", "evaluate", "evaluate with the probe",
                                  "kappa probe (this_round)", "generator check", "BatchNorm query"])
def test_every_message_is_abandoned_at_its_time_budget(cfg, hung_node, name):
    message_type, content = messages(cfg)[name]
    reply, seconds = _call(_deliver(message_type, content), hung_node)
    assert reply.has_error() and "gave up" in reply.error.reason, reply.error.reason if reply.has_error() else reply
    assert seconds < BUDGET + 10.0


def test_the_partition_query_reads_no_data_and_answers_within_its_budget(cfg, hung_node):
    """It never touches the (hung) image folder: it answers, where a data read would be abandoned."""
    message_type, content = messages(cfg)["partition query"]
    reply, _ = _call(_deliver(message_type, content), hung_node)
    assert not reply.has_error(), reply.error.reason  # not "gave up": it is under the same budget, and within it


# --- client-side DP clipping: training replies only --------------------------------------------------

def _partition_node(partition_id=1, num_partitions=20) -> Context:
    return Context(run_id=1, node_id=NODE, node_config={"partition-id": partition_id, "num-partitions": num_partitions},
                   state=RecordDict(), run_config={})


def test_a_bn_query_that_carries_the_clipping_norm_is_answered_not_clipped(cfg):
    """GenFL's BatchNorm query reuses the training config, which Flower's client-side DP wrapper stamps
    with the clipping norm; Flower's clipping mod would reject the reply (its ArrayRecord is not the model)."""
    config = _config(cfg, budget=600)
    config[CLIPPING_NORM] = 1.0
    message_type, _ = messages(cfg)["BatchNorm query"]
    reply, _ = _call(_deliver(message_type, RecordDict({"arrays": _arrays(cfg), RUN_CONFIG: config})),
                     _partition_node())
    assert not reply.has_error(), reply.error.reason
    assert len(reply.content[BN_RECORD]) > 0


def test_a_training_reply_is_still_clipped_to_the_norm(cfg):
    config = _config(cfg, budget=600)
    config[CLIPPING_NORM] = 0.01
    arrays = _arrays(cfg)
    train = _fedavg("train", cfg, arrays, config)
    reply, _ = _call(_deliver(train.metadata.message_type, train.content), _partition_node())
    assert not reply.has_error(), reply.error.reason
    sent = arrays.to_numpy_ndarrays()
    got = reply.content.array_records[next(iter(reply.content.array_records))].to_numpy_ndarrays()
    # the float tensors (an integer buffer such as BatchNorm's step count cannot be scaled)
    norm = np.sqrt(sum(float(np.sum((g.astype(np.float64) - s) ** 2)) for g, s in zip(got, sent)
                       if np.issubdtype(s.dtype, np.floating)))
    assert norm <= 0.01 * (1 + 1e-4)
    assert norm > 0.0  # it trained
