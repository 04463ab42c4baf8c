"""Compose the run's configuration from conf/ (Hydra) plus overrides, and reject bad values early.

Both the `genfl-run` launcher and the ServerApp compose through here, so a config error is caught
before any training and reported as one line that names the key.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

# Short `flwr run --run-config` keys for the settings changed most; "" keeps conf/'s value.
RUN_CONFIG_KEYS = {
    "num-server-rounds": "num_rounds",
    "dataset": "dataset",
    "strategy": "strategy",
    "alpha": "partition.alpha",
    "expected-nodes": "nodes.expected",
    "local-epochs": "client.local_epochs",
    "lr": "client.lr",
    "seed": "seed",
}


class ConfigError(ValueError):
    """A configuration value is invalid; the message is one line that names the key."""


def overrides_from_run_config(run_config: dict) -> list[str]:
    """Hydra overrides from Flower's run config: the short keys, then ``overrides`` (JSON list or words)."""
    result = [f"{RUN_CONFIG_KEYS[k]}={v}" for k, v in run_config.items() if k in RUN_CONFIG_KEYS and v != ""]
    raw = str(run_config.get("overrides", "")).strip()
    if raw:
        result += json.loads(raw) if raw.startswith("[") else shlex.split(raw)
    return result


def load_config(overrides: list[str]) -> DictConfig:
    """conf/config.yaml composed with ``overrides`` and validated; raises `ConfigError`."""
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(_one_line(err)) from err
    validate(cfg)
    return cfg


def _one_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else type(err).__name__
    if "Available options" in str(err):
        start = next(i for i, line in enumerate(lines) if line.startswith("Available options")) + 1
        options = [line for line in lines[start:] if ":" not in line and "=" not in line]
        text += f" (available: {', '.join(options)})"
    elif "not in struct" in str(err) + str(err.__cause__):
        text += " No such config key: check the spelling against conf/config.yaml."
    return text


def _check(condition, key: str, message: str, value) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message} (got {value!r})")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate(cfg: DictConfig) -> None:
    """Value checks Hydra's types cannot express. Each failure names its key."""
    _check(isinstance(cfg.seed, int), "seed", "must be an integer", cfg.seed)
    _check(isinstance(cfg.num_rounds, int) and cfg.num_rounds >= 1, "num_rounds", "must be an integer >= 1", cfg.num_rounds)
    fed = cfg.federation
    _check(isinstance(fed.num_clients, int) and fed.num_clients >= 1, "federation.num_clients", "must be an integer >= 1", fed.num_clients)
    _check(_number(fed.fraction_train) and 0 < fed.fraction_train <= 1, "federation.fraction_train", "must be in (0, 1]", fed.fraction_train)
    _check(_number(fed.fraction_evaluate) and 0 <= fed.fraction_evaluate <= 1, "federation.fraction_evaluate", "must be in [0, 1]", fed.fraction_evaluate)
    _check(_number(fed.round_timeout) and fed.round_timeout > 0, "federation.round_timeout", "must be > 0 seconds", fed.round_timeout)
    part = cfg.partition
    _check(_number(part.alpha) and part.alpha > 0, "partition.alpha", "must be > 0", part.alpha)
    _check(isinstance(part.min_partition_size, int) and part.min_partition_size >= 0, "partition.min_partition_size", "must be an integer >= 0", part.min_partition_size)
    client = cfg.client
    _check(isinstance(client.local_epochs, int) and client.local_epochs >= 1, "client.local_epochs", "must be an integer >= 1", client.local_epochs)
    _check(isinstance(client.batch_size, int) and client.batch_size >= 2, "client.batch_size", "must be an integer >= 2", client.batch_size)
    _check(_number(client.lr) and client.lr > 0, "client.lr", "must be > 0", client.lr)
    _check(_number(client.momentum) and 0 <= client.momentum < 1, "client.momentum", "must be in [0, 1)", client.momentum)
    _check(_number(client.weight_decay) and client.weight_decay >= 0, "client.weight_decay", "must be >= 0", client.weight_decay)
    ds = cfg.dataset
    _check(ds.name in ("digits", "cifar10", "cifar100"), "dataset.name", "must be digits, cifar10 or cifar100", ds.name)
    if ds.name == "digits":
        _check(_number(ds.test_fraction) and 0 < ds.test_fraction < 1, "dataset.test_fraction", "must be in (0, 1)", ds.test_fraction)
        _check(_number(ds.public_fraction) and 0 <= ds.public_fraction < 1 - ds.test_fraction, "dataset.public_fraction", "must be in [0, 1 - test_fraction)", ds.public_fraction)
    _validate_genfl(cfg)
    _validate_nodes(cfg)


def _validate_nodes(cfg: DictConfig) -> None:
    nodes = cfg.nodes
    _check(nodes.expected is None or (isinstance(nodes.expected, int) and not isinstance(nodes.expected, bool) and nodes.expected >= 1),
           "nodes.expected", "must be null or an integer >= 1", nodes.expected)
    _check(isinstance(nodes.min_connected, int) and not isinstance(nodes.min_connected, bool) and nodes.min_connected >= 1,
           "nodes.min_connected", "must be an integer >= 1", nodes.min_connected)
    if nodes.expected is not None:
        _check(nodes.min_connected <= nodes.expected, "nodes.min_connected", f"must be <= nodes.expected ({nodes.expected})", nodes.min_connected)
    timeout = cfg.federation.node_wait_timeout
    _check(_number(timeout) and timeout > 0, "federation.node_wait_timeout", "must be > 0 seconds", timeout)


def _validate_genfl(cfg: DictConfig) -> None:
    from generation.planning import POLICIES
    from strategy.kappa import KappaError, KappaSchedule

    st = cfg.strategy
    try:
        KappaSchedule(st.kappa_fl, st.kappa_aug, st.kappa_schedule, st.kappa_aug_final, cfg.num_rounds)
    except KappaError as err:
        raise ConfigError(str(err)) from err
    gen = cfg.generation
    _check(gen.policy in POLICIES, "generation.policy", f"must be one of {', '.join(POLICIES)}", gen.policy)
    _check(isinstance(gen.budget, int) and gen.budget >= 0, "generation.budget", "must be an integer >= 0", gen.budget)
    _check(isinstance(gen.per_class, int) and gen.per_class >= 0, "generation.per_class", "must be an integer >= 0", gen.per_class)
    _check(gen.target is None or (isinstance(gen.target, int) and gen.target >= 0), "generation.target", "must be null or an integer >= 0", gen.target)
    aug = cfg.augmented
    _check(isinstance(aug.epochs, int) and aug.epochs >= 1, "augmented.epochs", "must be an integer >= 1", aug.epochs)
    _check(isinstance(aug.batch_size, int) and aug.batch_size >= 2, "augmented.batch_size", "must be an integer >= 2", aug.batch_size)
    _check(_number(aug.lr) and aug.lr > 0, "augmented.lr", "must be > 0", aug.lr)
    if cfg.generator.backend == "class_conditional" and st.kappa_aug + st.kappa_aug_final > 0:
        _check(cfg.dataset.name == "digits", "generator",
               "class_conditional makes 8x8 digits only; use generator=stable_diffusion for this data set", cfg.dataset.name)


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
