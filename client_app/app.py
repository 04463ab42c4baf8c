"""ClientApp: local training, evaluation and the label-histogram query, all driven by the server.

Everything the client needs (data set, partitioning, optimiser settings) arrives in the message's
ConfigRecord, so the server's conf/ is the one source of truth; the node itself only says where its
data is: its own image folder (``data-path`` in its node config) or a built-in partition
(``partition-id`` / ``num-partitions``, which Flower's simulation sets).
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from genfl_protocol.contract import (AUGMENTED, BN_QUERY, BN_RECORD, CLIENT_PART, EVAL_ACC, EVAL_LOSS, MIX_ACC, MIX_LOSS,
                                 PARTITION_QUERY, PROBE, PROBE_BN_STATS, PROBE_CANDIDATES, PROBE_QUERY, PROXIMAL_MU,
                                 SERVER_ROUND, ClientConfig)
from client_app.mods import dp_clipping_mod, release_memory_mod, time_budget_mod
from genfl_torch.classes import class_names
from genfl_torch.data import Split
from genfl_torch.bn import bn_statistics
from genfl_torch.imagefolder import read_image_folder
from genfl_protocol.mixing import eq1_along
from genfl_torch.model import build_resnet18
from genfl_torch.partition import client_partition, label_histogram
from genfl_torch.privacy import privatize_histogram
from genfl_torch.train import TrainSettings, evaluate, load_numpy_state, resolve_device, train

app = ClientApp(mods=[release_memory_mod, time_budget_mod, dp_clipping_mod])


NO_PARTITION = -1  # stands for "no built-in partition": the node trains on its own images


def _local_data(msg: Message, context: Context) -> tuple[ClientConfig, Split, int]:
    """(config, this node's data, its partition id): the operator's image folder when the node config
    has ``data-path``, else the built-in partition. Bad data raises, which Flower turns into an error
    reply whose reason names the file or folder."""
    config = ClientConfig.from_record(msg.content["config"])
    ds, node = config.dataset, context.node_config
    if "data-path" in node:
        data = read_image_folder(str(node["data-path"]), class_names(str(ds["name"])), int(ds["channels"]),
                                 int(ds["image_size"]))
        return config, data, NO_PARTITION
    if "partition-id" not in node or "num-partitions" not in node:
        raise ValueError(
            "this SuperNode has no data: start flower-supernode with --node-config 'data-path=\"/abs/images\"' "
            "(one sub-folder per class) or --node-config 'partition-id=I num-partitions=N' (a built-in partition)"
        )
    partition_id = int(node["partition-id"])
    return config, client_partition(config.data_spec(), partition_id, int(node["num-partitions"])), partition_id


def _model(config: ClientConfig, arrays: ArrayRecord) -> torch.nn.Module:
    torch.set_num_threads(config.client_threads)
    ds = config.dataset
    model = build_resnet18(num_classes=int(ds["num_classes"]), in_channels=int(ds["channels"]), mean=list(ds["mean"]),
                           std=list(ds["std"]), norm=str(config.model["norm"]))
    model.load_state_dict(arrays.to_torch_state_dict(), strict=True)
    return model


def _take_model(msg: Message) -> ArrayRecord:
    """The received model, taken out of ``msg`` (its content is replaced, the RecordDict it shared is left as
    it was): loaded into the local model it is not needed again, and a worker would hold ~45 MB more per message."""
    arrays = msg.content["arrays"]
    msg.content = RecordDict({key: record for key, record in msg.content.items() if key != "arrays"})
    return arrays


def _histogram_noise(config: ClientConfig, partition_id: int, node_id: int) -> np.random.Generator:
    """OS entropy by default: a seed the server knows would let it subtract the noise again."""
    if config.histogram_reproducible_noise:
        identity = partition_id if partition_id != NO_PARTITION else node_id  # a node with its own images
        return np.random.default_rng([config.seed, identity % 2**63, 0x4E01])
    return np.random.default_rng()


@app.query("label_histogram")
def report_label_histogram(msg: Message, context: Context) -> Message:
    """Per-class sample counts of this node's training data (GenFL step 1), noised if configured."""
    config, data, partition_id = _local_data(msg, context)
    histogram = label_histogram(data.labels.numpy(), int(config.dataset["num_classes"]))
    if config.histogram_mechanism != "none":
        histogram = privatize_histogram(histogram, config.histogram_mechanism, config.histogram_epsilon,
                                        config.histogram_delta, _histogram_noise(config, partition_id, context.node_id))
    metrics = MetricRecord({"label-histogram": histogram, "num-examples": sum(histogram)})
    if partition_id != NO_PARTITION:  # a node with its own images has none: the server orders it by node id
        metrics["partition-id"] = partition_id
    return Message(RecordDict({"histogram": metrics}), reply_to=msg)


@app.query(PARTITION_QUERY)
def report_partition(msg: Message, context: Context) -> Message:
    """The built-in partition this node holds, if any, and nothing else (no data read, nothing released):
    a resumed server matches it to the label histogram its checkpoint keeps instead of asking again."""
    node = context.node_config
    metrics = MetricRecord()
    if "data-path" not in node and "partition-id" in node:
        metrics["partition-id"] = int(node["partition-id"])
    return Message(RecordDict({"partition": metrics}), reply_to=msg)


@app.train()
def train_locally(msg: Message, context: Context) -> Message:
    """Train the received global model on local data with the server's settings."""
    config, data, partition_id = _local_data(msg, context)
    model = _model(config, _take_model(msg))
    settings = TrainSettings(
        epochs=config.local_epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        augment=bool(config.dataset["augment"]),
        proximal_mu=float(msg.content["config"].get(PROXIMAL_MU, 0.0)),  # sent by Flower's FedProx
        max_steps=config.max_steps,
        fast_cuda=config.client_fast_cuda,
    )
    # A different but reproducible data order per round and client.
    seed = config.seed * 1_000_003 + int(msg.content["config"][SERVER_ROUND]) * 1_009 + partition_id
    train_loss = train(model, data, settings, resolve_device(config.client_device), seed)
    metrics = MetricRecord({"train-loss": train_loss, "num-examples": len(data)})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate_locally(msg: Message, context: Context) -> Message:
    """Loss and accuracy of the global model on this node's own data; with a probe (adaptive kappa)
    also of every candidate mix of the round's client aggregate and augmented model."""
    config, data, _ = _local_data(msg, context)
    model = _model(config, msg.content["arrays"])
    loss, accuracy = _score(model, data, config)
    metrics = MetricRecord({EVAL_LOSS: loss, EVAL_ACC: accuracy, "num-examples": len(data)})
    if PROBE in msg.content:
        metrics[MIX_LOSS], metrics[MIX_ACC] = _score_mixes(model, data, config, msg.content)
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


@app.query(PROBE_QUERY)
def score_candidate_mixes(msg: Message, context: Context) -> Message:
    """Loss and accuracy of every candidate mix on this node's data (mix.choose=this_round)."""
    config, data, _ = _local_data(msg, context)
    model = _model(config, msg.content[CLIENT_PART])
    losses, accuracies = _score_mixes(model, data, config, msg.content)
    metrics = MetricRecord({MIX_LOSS: losses, MIX_ACC: accuracies, "num-examples": len(data)})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


def _score(model: torch.nn.Module, data: Split, config: ClientConfig) -> tuple[float, float]:
    return evaluate(model, data, resolve_device(config.client_device), config.client_eval_batch_size,
                    config.client_fast_cuda)


def _score_mixes(model: torch.nn.Module, data: Split, config: ClientConfig,
                 content: RecordDict) -> tuple[list[float], list[float]]:
    """(losses, accuracies) of Eq. (1) at each candidate kappa_aug, in the probe's order."""
    probe = content[PROBE]
    line = eq1_along(_numpy(content[CLIENT_PART]), _numpy(content[AUGMENTED]), str(probe[PROBE_BN_STATS]))
    losses, accuracies = [], []
    for kappa_aug in probe[PROBE_CANDIDATES]:
        load_numpy_state(model, line(float(kappa_aug)))
        loss, accuracy = _score(model, data, config)
        losses.append(loss)
        accuracies.append(accuracy)
    return losses, accuracies


@app.query(BN_QUERY)
def report_bn_statistics(msg: Message, context: Context) -> Message:
    """The BatchNorm running statistics of the received model on this node's data (mix.bn_stats=reestimate)."""
    config, data, _ = _local_data(msg, context)
    model = _model(config, msg.content["arrays"])
    # The pass's shuffled order: reproducible from the run's seed (and the round, where the server sends it).
    seed = config.seed * 1_000_003 + int(msg.content["config"].get(SERVER_ROUND, 0)) * 1_009
    stats = bn_statistics(model, data, resolve_device(config.client_device), config.client_eval_batch_size, seed=seed)
    content = RecordDict({BN_RECORD: ArrayRecord({k: torch.from_numpy(v) for k, v in stats.items()}),
                          "metrics": MetricRecord({"num-examples": len(data)})})
    return Message(content, reply_to=msg)


def _numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return dict(zip(record.keys(), record.to_numpy_ndarrays()))
