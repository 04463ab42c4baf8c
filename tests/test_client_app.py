"""The ClientApp's handlers, called through the real ClientApp with real Messages and training."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Context, Message, Metadata, RecordDict

from client_app.app import app
from server_app.build import client_config as train_config
from genfl_torch.data import load_splits
from genfl_torch.model import seeded_model
from genfl_torch.partition import dirichlet_partitions


def _message(message_type, content):
    metadata = Metadata(run_id=1, message_id=f"m-{message_type}", src_node_id=0, dst_node_id=7,
                        reply_to_message_id="", group_id="1", created_at=0.0, ttl=3600.0, message_type=message_type)
    return Message(metadata=metadata, content=content)


def _context(partition_id=2, num_partitions=4):
    return Context(run_id=1, node_id=7, node_config={"partition-id": partition_id, "num-partitions": num_partitions},
                   state=RecordDict(), run_config={})


@pytest.fixture(scope="module")
def cfg():
    from server_app.config import load_config

    return load_config(["federation.num_clients=4", "client.local_epochs=1"])


def _expected_labels(cfg, partition_id, num_partitions):
    labels = load_splits(cfg.dataset)["federation"].labels.numpy()
    parts = dirichlet_partitions(labels, num_partitions, cfg.partition.alpha, cfg.seed,
                                 cfg.partition.min_partition_size, cfg.partition.self_balancing)
    return labels[parts[partition_id]]


def test_label_histogram_query_returns_this_partitions_counts(cfg):
    reply = app(_message("query.label_histogram", RecordDict({"config": train_config(cfg)})), _context())
    metrics = reply.content["histogram"]
    expected = np.bincount(_expected_labels(cfg, 2, 4), minlength=10).tolist()
    assert list(metrics["label-histogram"]) == expected
    assert metrics["num-examples"] == sum(expected)
    assert metrics["partition-id"] == 2


def _global_arrays(cfg):
    ds = cfg.dataset
    model = seeded_model(cfg.seed, num_classes=ds.num_classes, in_channels=ds.channels, mean=list(ds.mean), std=list(ds.std))
    return ArrayRecord(model.state_dict())


def test_train_returns_updated_weights_and_sample_count(cfg):
    config = train_config(cfg)
    config["server-round"] = 1
    arrays = _global_arrays(cfg)
    reply = app(_message("train", RecordDict({"arrays": arrays, "config": config})), _context())
    new = reply.content["arrays"]
    assert list(new.keys()) == list(arrays.keys())
    before, after = arrays["1.fc.weight"].numpy(), new["1.fc.weight"].numpy()
    assert not np.allclose(before, after)
    assert reply.content["metrics"]["num-examples"] == len(_expected_labels(cfg, 2, 4))
    assert np.isfinite(reply.content["metrics"]["train-loss"])


def test_train_is_reproducible_for_the_same_round(cfg):
    config = train_config(cfg)
    config["server-round"] = 3
    arrays = _global_arrays(cfg)
    first = app(_message("train", RecordDict({"arrays": arrays, "config": config})), _context())
    second = app(_message("train", RecordDict({"arrays": arrays, "config": config})), _context())
    np.testing.assert_array_equal(first.content["arrays"]["1.fc.weight"].numpy(), second.content["arrays"]["1.fc.weight"].numpy())


def test_evaluate_reports_the_global_models_loss_and_accuracy_on_this_partition(cfg):
    from genfl_torch.train import evaluate

    reply = app(_message("evaluate", RecordDict({"arrays": _global_arrays(cfg), "config": train_config(cfg)})), _context())
    metrics = reply.content["metrics"]
    federation = load_splits(cfg.dataset)["federation"]
    parts = dirichlet_partitions(federation.labels.numpy(), 4, cfg.partition.alpha, cfg.seed,
                                 cfg.partition.min_partition_size, cfg.partition.self_balancing)
    ds = cfg.dataset
    model = seeded_model(cfg.seed, num_classes=ds.num_classes, in_channels=ds.channels, mean=list(ds.mean), std=list(ds.std))
    loss, accuracy = evaluate(model, federation.subset(parts[2]), torch.device("cpu"), cfg.client.eval_batch_size,
                              fast_cuda=True)
    assert (metrics["eval-loss"], metrics["eval-acc"], metrics["num-examples"]) == (pytest.approx(loss), accuracy, len(parts[2]))


def test_clients_build_the_servers_norm_from_the_train_config():
    from server_app.config import load_config

    cfg = load_config(["federation.num_clients=4", "model.norm=group"])
    config = train_config(cfg)
    assert config["model.norm"] == "group"
    config["server-round"] = 1
    ds = cfg.dataset
    model = seeded_model(cfg.seed, num_classes=ds.num_classes, in_channels=ds.channels, mean=list(ds.mean),
                         std=list(ds.std), norm="group")
    arrays = ArrayRecord(model.state_dict())
    reply = app(_message("train", RecordDict({"arrays": arrays, "config": config})), _context())
    assert list(reply.content["arrays"].keys()) == list(arrays.keys())  # a GroupNorm model: no BN buffers
    assert not any("running_mean" in key for key in arrays.keys())
