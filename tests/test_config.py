"""Configuration: conf/ is the one source of defaults; bad values fail early, naming the key."""

import pytest

from server_app.config import ConfigError, load_config, overrides_from_run_config


def test_embedded_default_is_genfl_on_digits_with_20_clients(make_config):
    cfg = make_config()
    assert cfg.dataset.name == "digits"
    assert cfg.strategy.name == "genfl" and cfg.generator.backend == "class_conditional"
    assert cfg.federation.num_clients == 20
    assert cfg.partition.alpha == 0.3


@pytest.mark.parametrize(
    "override, key",
    [
        ("partition.alpha=-1", "partition.alpha"),
        ("partition.alpha=0", "partition.alpha"),
        ("client.lr=abc", "client.lr"),
        ("client.local_epochs=0", "client.local_epochs"),
        ("federation.fraction_train=1.5", "federation.fraction_train"),
        ("num_rounds=0", "num_rounds"),
        ("dataset=mnist", "dataset/mnist"),
        ("client.lrr=0.1", "client.lrr"),
    ],
)
def test_bad_value_is_a_one_line_error_naming_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config([override])
    message = str(info.value)
    assert key in message
    assert "\n" not in message


def test_run_config_short_keys_and_overrides_map_to_hydra():
    run_config = {"num-server-rounds": 7, "alpha": 0.1, "dataset": "", "overrides": "client.lr=0.02 seed=3"}
    overrides = overrides_from_run_config(run_config)
    assert overrides == ["num_rounds=7", "partition.alpha=0.1", "client.lr=0.02", "seed=3"]
    cfg = load_config(overrides)
    assert (cfg.num_rounds, cfg.partition.alpha, cfg.client.lr, cfg.seed) == (7, 0.1, 0.02, 3)


def test_run_config_overrides_accept_a_json_list():
    assert overrides_from_run_config({"overrides": '["seed=1", "output.root=/tmp/a b"]'}) == ["seed=1", "output.root=/tmp/a b"]


def test_pyproject_run_config_keys_are_all_known():
    import tomllib
    from pathlib import Path

    from server_app.config import RUN_CONFIG_KEYS

    keys = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert set(keys) == set(RUN_CONFIG_KEYS) | {"overrides"}
    assert all(value == "" for value in keys.values()), "defaults belong in conf/, not pyproject.toml"
