"""The ClientApp on a node with its own image folder (node config ``data-path``), through the real ClientApp."""

import numpy as np
import pytest
from flwr.app import ArrayRecord, Context, Message, Metadata, RecordDict

from client_app.app import app
from genfl_protocol.contract import ClientConfig
from server_app.build import client_config as train_config
from genfl_cli.export_partitions import export
from genfl_torch.model import seeded_model
from genfl_torch.partition import client_partition, label_histogram


def _message(message_type, content):
    metadata = Metadata(run_id=1, message_id=f"m-{message_type}", src_node_id=0, dst_node_id=7,
                        reply_to_message_id="", group_id="1", created_at=0.0, ttl=3600.0, message_type=message_type)
    return Message(metadata=metadata, content=content)


def _context(node_config):
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})


@pytest.fixture(scope="module")
def cfg():
    from server_app.config import load_config

    return load_config([])


@pytest.fixture(scope="module")
def exported(cfg, tmp_path_factory):
    """Partition 1 of 4 of the built-in digits, exported as PNG folders by the export command's code."""
    out = tmp_path_factory.mktemp("export")
    export(out, 4, [1], [])
    return out / "partition-1"


def test_histogram_of_an_exported_folder_equals_the_built_in_partition(cfg, exported):
    reply = app(_message("query.label_histogram", RecordDict({"config": train_config(cfg)})),
                _context({"data-path": str(exported)}))
    metrics = reply.content["histogram"]
    spec = ClientConfig.from_record(train_config(cfg)).data_spec()
    expected = label_histogram(client_partition(spec, 1, 4).labels.numpy(), 10)
    assert list(metrics["label-histogram"]) == expected
    assert metrics["num-examples"] == sum(expected)
    assert "partition-id" not in metrics  # the server orders such nodes by their (registered, stable) node id


def test_train_on_a_data_path_node_updates_the_model(cfg, exported):
    config = train_config(cfg)
    config["server-round"] = 1
    ds = cfg.dataset
    arrays = ArrayRecord(seeded_model(0, num_classes=ds.num_classes, in_channels=ds.channels, mean=list(ds.mean), std=list(ds.std)).state_dict())
    reply = app(_message("train", RecordDict({"arrays": arrays, "config": config})), _context({"data-path": str(exported)}))
    assert not np.allclose(arrays["1.fc.weight"].numpy(), reply.content["arrays"]["1.fc.weight"].numpy())
    assert reply.content["metrics"]["num-examples"] == sum(1 for p in exported.rglob("*.png"))


def test_a_bad_data_path_raises_with_the_folder_named(cfg, tmp_path):
    (tmp_path / "giraffe").mkdir()
    with pytest.raises(ValueError, match="giraffe"):
        app(_message("query.label_histogram", RecordDict({"config": train_config(cfg)})), _context({"data-path": str(tmp_path)}))


def test_a_node_without_data_settings_says_how_to_give_them(cfg):
    with pytest.raises(ValueError, match="data-path=.*partition-id=I num-partitions=N"):
        app(_message("query.label_histogram", RecordDict({"config": train_config(cfg)})), _context({}))
