"""The server -> client contract: every key the ServerApp puts into a message's ConfigRecord, its type,
and how values that a ConfigRecord cannot hold travel. One module, used by the ServerApp (which
writes it), the ClientApp and its mods (which read it) and genfl-export-partitions.

A ConfigRecord holds scalars and lists but no None and no nested mappings, so:
- ``max_steps=None`` (no cap) travels as 0;
- the ``dataset``, ``partition`` and ``model`` groups of the run's config travel flattened
  (``dataset.name``, ``partition.alpha``, ...), with their None values left out.
Flower's own strategies add keys of theirs (``FLOWER_KEYS``); anything else is a contract error.
Plain Python (no flwr, no omegaconf): an edge box imports it with the ClientApp.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

GROUPS = ("dataset", "partition", "model")  # config groups that travel whole, flattened
# Keys Flower's strategies and DP wrappers add to the ConfigRecord they send.
SERVER_ROUND = "server-round"  # FedAvg and every strategy derived from it
PROXIMAL_MU = "proximal-mu"  # FedProx
CLIPPING_NORM = "clipping_norm"  # DifferentialPrivacyClientSide* wrappers
FLOWER_KEYS = (SERVER_ROUND, PROXIMAL_MU, CLIPPING_NORM)


class ContractError(ValueError):
    """A message's config does not follow this contract (a server of another version, or a bug)."""


@dataclass(frozen=True)
class ClientConfig:
    """What a client needs for one message. Field ``x_y`` travels as key ``x-y`` (`RECORD_KEYS`)."""

    seed: int
    local_epochs: int
    max_steps: int | None  # None: every batch of every epoch
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    client_device: str
    client_threads: int
    client_eval_batch_size: int
    client_fast_cuda: bool
    time_budget: float  # seconds a node may spend on this message (client_app/mods.py)
    histogram_mechanism: str  # none | laplace | gaussian
    histogram_epsilon: float
    histogram_delta: float
    histogram_reproducible_noise: bool
    adaptive_clipping: bool  # the server runs Flower's client-side adaptive clipping wrapper
    dataset: Mapping
    partition: Mapping
    model: Mapping

    @classmethod
    def from_run_config(cls, config: Mapping, time_budget: float | None = None) -> ClientConfig:
        """From the run's resolved config (a plain dict of conf/); ``time_budget`` defaults to the
        round timeout (the histogram query passes its own)."""
        client, fed, privacy = config["client"], config["federation"], config["histogram_privacy"]
        return cls(
            seed=config["seed"], local_epochs=client["local_epochs"], max_steps=client["max_steps"],
            batch_size=client["batch_size"], lr=float(client["lr"]), momentum=float(client["momentum"]),
            weight_decay=float(client["weight_decay"]), client_device=client["device"], client_threads=client["threads"],
            client_eval_batch_size=client["eval_batch_size"], client_fast_cuda=bool(client["fast_cuda"]),
            time_budget=float(fed["round_timeout"] if time_budget is None else time_budget),
            histogram_mechanism=privacy["mechanism"], histogram_epsilon=float(privacy["epsilon"]),
            histogram_delta=float(privacy["delta"]), histogram_reproducible_noise=bool(privacy["reproducible_noise"]),
            adaptive_clipping=config["aggregation"]["dp"]["clipping"] == "client_adaptive",
            **{group: {k: v for k, v in config[group].items() if v is not None} for group in GROUPS},
        )

    def to_record(self) -> dict:
        """The flat mapping that goes into the message's ConfigRecord."""
        record = {}
        for name, key in RECORD_KEYS.items():
            value = getattr(self, name)
            record[key] = 0 if name == "max_steps" and value is None else value
        for group in GROUPS:
            for key, value in getattr(self, group).items():
                record[f"{group}.{key}"] = [float(v) for v in value] if isinstance(value, (list, tuple)) else value
        return record

    @classmethod
    def from_record(cls, record: Mapping) -> ClientConfig:
        """Read a message's ConfigRecord; a missing or unknown key is a `ContractError` naming it."""
        record = dict(record)
        missing = [key for key in RECORD_KEYS.values() if key not in record]
        unknown = [key for key in record if key not in RECORD_KEYS.values() and key not in FLOWER_KEYS
                   and key.split(".", 1)[0] not in GROUPS]
        if missing or unknown:
            raise ContractError(f"the server's config does not match this ClientApp: missing {missing or 'none'}, "
                                f"unknown {unknown or 'none'} (are server and client the same version?)")
        values = {name: record[key] for name, key in RECORD_KEYS.items()}
        values["max_steps"] = int(values["max_steps"]) or None
        for group in GROUPS:
            values[group] = {k.split(".", 1)[1]: v for k, v in record.items() if k.startswith(f"{group}.")}
        return cls(**values)

    def data_spec(self) -> dict:
        """What fixes a built-in partition's data: ``dataset.*``, ``partition.*`` and ``seed`` (genfl_torch.partition)."""
        spec = {f"{group}.{k}": v for group in ("dataset", "partition") for k, v in getattr(self, group).items()}
        return {**spec, "seed": self.seed}


_RENAMED = {"histogram_mechanism": "histogram-privacy.mechanism", "histogram_epsilon": "histogram-privacy.epsilon",
            "histogram_delta": "histogram-privacy.delta",
            "histogram_reproducible_noise": "histogram-privacy.reproducible-noise",
            "adaptive_clipping": "genfl-adaptive-clipping"}
# Field name -> ConfigRecord key, for every scalar field.
RECORD_KEYS = {f.name: _RENAMED.get(f.name, f.name.replace("_", "-")) for f in fields(ClientConfig) if f.name not in GROUPS}
TIME_BUDGET = RECORD_KEYS["time_budget"]
ADAPTIVE_CLIPPING = RECORD_KEYS["adaptive_clipping"]


# Adaptive kappa (strategy/genfl.py, mix.kappa_policy=adaptive): an evaluation message may also carry
# the round's two parts of Eq. (1) and the candidate kappas; the node scores every candidate mix on
# its own data and replies with one loss and one accuracy per candidate, in the candidates' order.
PROBE = "genfl-probe"  # ConfigRecord: PROBE_CANDIDATES, PROBE_BN_STATS
PROBE_CANDIDATES = "candidates"  # list of kappa_aug values
PROBE_BN_STATS = "bn-stats"  # how the mix forms BatchNorm statistics (genfl_protocol.mixing.BN_MODES)
CLIENT_PART = "genfl-client-part"  # ArrayRecord: the base strategy's aggregate of the client models
AUGMENTED = "genfl-augmented"  # ArrayRecord: the server's augmented model
MIX_LOSS, MIX_ACC = "mix-loss", "mix-acc"  # MetricRecord keys of the reply (lists)
# mix.choose=this_round: the same records (and the run's config) travel as a query of their own, before
# the round's model is formed; the reply is the MetricRecord alone (MIX_LOSS, MIX_ACC, num-examples).
PROBE_QUERY = "kappa_probe"  # the ClientApp's @app.query name; message type "query.kappa_probe"
EVAL_LOSS, EVAL_ACC = "eval-loss", "eval-acc"  # every evaluation reply: the global model on the node's data
# BatchNorm re-estimation (mix.bn_stats=reestimate): the node runs the new global model over its data
# and replies with its per-channel running means and variances (ArrayRecord BN_RECORD) and sample count.
BN_QUERY = "bn_statistics"  # the ClientApp's @app.query name; message type "query.bn_statistics"
BN_RECORD = "bn-statistics"
# A resumed run asks a node it does not know by node id which built-in partition it holds, to match it
# to the label histogram the checkpoint keeps (strategy/histograms.py): the reply is a MetricRecord with
# "partition-id", empty for a node with its own data; nothing is read, nothing released.
PARTITION_QUERY = "partition_id"  # the ClientApp's @app.query name; message type "query.partition_id"
