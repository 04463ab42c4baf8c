"""The server -> client contract (genfl_protocol/contract.py): what the ServerApp writes is exactly what
the ClientApp reads, and values a ConfigRecord cannot hold travel as documented."""

import pytest
from flwr.app import ConfigRecord
from omegaconf import OmegaConf

from genfl_protocol.contract import FLOWER_KEYS, GROUPS, RECORD_KEYS, ClientConfig, ContractError
from server_app.build import client_config
from server_app.config import load_config


@pytest.fixture(scope="module")
def cfg():
    return load_config(["client.max_steps=null", "aggregation.dp.clipping=client_adaptive"])


def test_what_the_server_writes_reads_back_as_the_same_config(cfg):
    record = client_config(cfg)  # a real ConfigRecord, as it travels
    sent = ClientConfig.from_run_config(OmegaConf.to_container(cfg, resolve=True))
    assert ClientConfig.from_record(record) == sent
    assert sent.max_steps is None and record["max-steps"] == 0  # None cannot travel: 0 stands for it
    assert sent.adaptive_clipping is True and sent.time_budget == cfg.federation.round_timeout
    assert "root" not in sent.dataset  # digits has no root; None values are left out, not sent


def test_every_key_written_is_read_and_every_key_read_is_written(cfg):
    record = dict(client_config(cfg))
    scalar_keys = {k for k in record if k.split(".", 1)[0] not in GROUPS}
    assert scalar_keys == set(RECORD_KEYS.values())
    assert {k.split(".", 1)[0] for k in set(record) - scalar_keys} == set(GROUPS)
    for key in RECORD_KEYS.values():  # each key the reader needs: its absence is named
        with pytest.raises(ContractError, match=key):
            ClientConfig.from_record({k: v for k, v in record.items() if k != key})
    with pytest.raises(ContractError, match="unknown.*learning-rate"):
        ClientConfig.from_record({**record, "learning-rate": 0.1})
    ClientConfig.from_record({**record, **{k: 1.0 for k in FLOWER_KEYS}})  # Flower's own keys are expected


def test_the_histogram_query_carries_its_own_time_budget(cfg):
    record = client_config(cfg, time_budget=cfg.federation.histogram_timeout)
    assert ClientConfig.from_record(record).time_budget == cfg.federation.histogram_timeout
    assert isinstance(record, ConfigRecord)


def test_the_data_spec_is_what_fixes_a_partition(cfg):
    spec = ClientConfig.from_record(client_config(cfg)).data_spec()
    assert spec["seed"] == cfg.seed and spec["partition.alpha"] == cfg.partition.alpha
    assert spec["dataset.name"] == "digits" and not any(k.startswith("model.") for k in spec)
