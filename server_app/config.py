"""Compose the run's configuration from conf/ (Hydra) plus overrides, and reject bad values early.

Both the `genfl-run` launcher and the ServerApp compose through here, so a config error is caught
before any training and reported as one line that names the key.
"""

from __future__ import annotations

import json
import shlex
from datetime import datetime
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from conf import CONF_DIR
from server_app import build  # the objects a run builds: the torch-free ones are built once while validating
from server_app.renames import old_spelling


# Short `flwr run --run-config` keys for the settings changed most; "" keeps conf/'s value.
RUN_CONFIG_KEYS = {
    "num-server-rounds": "num_rounds",
    "dataset": "dataset",
    "strategy": "strategy",
    "alpha": "partition.alpha",
    "expected-nodes": "federation.expected_nodes",
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
    if old := old_spelling(list(overrides)):  # an earlier version's key or preset: say what replaced it
        raise ConfigError(old)
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        from server_app.tracking import override_problem  # another tracking backend's key: say whose

        raise ConfigError(override_problem(overrides) or _one_line(err)) from err
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


def _ray_address(address: str) -> bool:
    """"auto" or host:port (what `ray start --head` prints); Ray Client's ray:// is not Flower's backend."""
    host, _, port = address.rpartition(":")
    return address == "auto" or (bool(host.strip("[]")) and "/" not in host and port.isdigit() and 0 < int(port) < 65536)


def validate(cfg: DictConfig) -> None:
    """Value checks Hydra's types cannot express. Each failure names its key."""
    # conf/experiment/robustness/*.yaml are benchmark plans (lists of jobs), not presets: composed as
    # +experiment=robustness/<plan> they would land under an `experiment` key and the default would run.
    _check("experiment" not in cfg, "experiment", "is a benchmark plan, not a preset: run it with "
           "`python bench/robustness.py run <plan>`", "+experiment=robustness/...")
    _check(isinstance(cfg.seed, int), "seed", "must be an integer", cfg.seed)
    _check(isinstance(cfg.num_rounds, int) and cfg.num_rounds >= 1, "num_rounds", "must be an integer >= 1", cfg.num_rounds)
    fed = cfg.federation
    _check(isinstance(fed.num_clients, int) and fed.num_clients >= 1, "federation.num_clients", "must be an integer >= 1", fed.num_clients)
    _check(_number(fed.fraction_train) and 0 < fed.fraction_train <= 1, "federation.fraction_train", "must be in (0, 1]", fed.fraction_train)
    _check(_number(fed.fraction_evaluate) and 0 <= fed.fraction_evaluate <= 1, "federation.fraction_evaluate", "must be in [0, 1]", fed.fraction_evaluate)
    _check(_number(fed.round_timeout) and fed.round_timeout > 0, "federation.round_timeout", "must be > 0 seconds", fed.round_timeout)
    _check(_number(fed.histogram_timeout) and fed.histogram_timeout > 0, "federation.histogram_timeout", "must be > 0 seconds", fed.histogram_timeout)
    _check(_number(fed.client_cpus) and fed.client_cpus > 0, "federation.client_cpus", "must be > 0", fed.client_cpus)
    _check(_number(fed.client_gpus) and fed.client_gpus >= 0, "federation.client_gpus", "must be >= 0 (a share of one GPU per client, e.g. 0.25)", fed.client_gpus)
    _check(fed.simulation_cpus is None or (isinstance(fed.simulation_cpus, int) and fed.simulation_cpus >= 1),
           "federation.simulation_cpus", "must be null or an integer >= 1", fed.simulation_cpus)
    _check(fed.ray_address is None or (isinstance(fed.ray_address, str) and _ray_address(fed.ray_address)),
           "federation.ray_address", "must be null, \"auto\" or a Ray head's host:port, e.g. 10.0.0.5:6379", fed.ray_address)
    _check(fed.ray_address is None or fed.simulation_cpus is None, "federation.simulation_cpus",
           "must be null with federation.ray_address: the cluster's nodes declare their cores (ray start --num-cpus)",
           fed.simulation_cpus)
    for key in ("min_train_nodes", "min_evaluate_nodes"):
        value = fed[key]
        _check(isinstance(value, int) and 0 <= value <= fed.num_clients, f"federation.{key}",
               f"must be an integer in 0..federation.num_clients ({fed.num_clients}): more clients per round than clients", value)
    # genfl_torch.model.NORMS, spelled out so that validating never imports torch (tests keep them equal)
    _check(cfg.model.norm in ("batch", "group"), "model.norm", "must be batch or group", cfg.model.norm)
    part = cfg.partition
    _check(_number(part.alpha) and part.alpha > 0, "partition.alpha", "must be > 0", part.alpha)
    _check(isinstance(part.min_partition_size, int) and part.min_partition_size >= 0, "partition.min_partition_size", "must be an integer >= 0", part.min_partition_size)
    client = cfg.client
    _check(isinstance(client.local_epochs, int) and client.local_epochs >= 1, "client.local_epochs", "must be an integer >= 1", client.local_epochs)
    _check(client.max_steps is None or (isinstance(client.max_steps, int) and client.max_steps >= 1), "client.max_steps",
           "must be null (no cap) or an integer >= 1", client.max_steps)
    _check(isinstance(client.batch_size, int) and client.batch_size >= 2, "client.batch_size", "must be an integer >= 2", client.batch_size)
    _check(_number(client.lr) and client.lr > 0, "client.lr", "must be > 0", client.lr)
    _check(_number(client.momentum) and 0 <= client.momentum < 1, "client.momentum", "must be in [0, 1)", client.momentum)
    _check(_number(client.weight_decay) and client.weight_decay >= 0, "client.weight_decay", "must be >= 0", client.weight_decay)
    for group in ("client", "server"):
        node = cfg[group]
        _check(isinstance(node.threads, int) and node.threads >= 1, f"{group}.threads", "must be an integer >= 1", node.threads)
        _check(isinstance(node.eval_batch_size, int) and node.eval_batch_size >= 1, f"{group}.eval_batch_size", "must be an integer >= 1", node.eval_batch_size)
    ds = cfg.dataset
    _check(ds.name in ("digits", "cifar10", "cifar100"), "dataset.name", "must be digits, cifar10 or cifar100", ds.name)
    if ds.name == "digits":
        _check(_number(ds.test_fraction) and 0 < ds.test_fraction < 1, "dataset.test_fraction", "must be in (0, 1)", ds.test_fraction)
        _check(_number(ds.public_fraction) and 0 <= ds.public_fraction < 1 - ds.test_fraction, "dataset.public_fraction", "must be in [0, 1 - test_fraction)", ds.public_fraction)
    _validate_genfl(cfg)
    _validate_nodes(cfg)
    from server_app.tracking import problem  # the tracking backend's settings, without starting it

    if why := problem(OmegaConf.to_container(cfg, resolve=True)):
        raise ConfigError(why)
    on_fail_config(cfg)  # the settings a generator that fails the check would run with, valid too (last: the rest is)


def _validate_nodes(cfg: DictConfig) -> None:
    fed = cfg.federation
    expected = fed.expected_nodes
    _check(expected is None or (isinstance(expected, int) and not isinstance(expected, bool) and expected >= 1),
           "federation.expected_nodes", "must be null or an integer >= 1", expected)
    if expected is not None:
        _check(fed.min_train_nodes <= expected, "federation.min_train_nodes",
               f"must be <= federation.expected_nodes ({expected})", fed.min_train_nodes)
    _check(_number(fed.node_wait_timeout) and fed.node_wait_timeout > 0, "federation.node_wait_timeout",
           "must be > 0 seconds", fed.node_wait_timeout)


def _validate_genfl(cfg: DictConfig) -> None:
    from generation.factory import fit_problem  # torch-free, as generation.planning
    from generation.planning import POLICIES

    _validate_mix(cfg)
    gen = cfg.generation
    _check(gen.policy in POLICIES, "generation.policy", f"must be one of {', '.join(POLICIES)}", gen.policy)
    _check(gen.budget is None or (isinstance(gen.budget, int) and gen.budget >= 0), "generation.budget", "must be null or an integer >= 0", gen.budget)
    _check(gen.policy != "deficit" or gen.budget is not None, "generation.budget", "the deficit policy shares a budget: set it (e.g. 1000)", gen.budget)
    _check(isinstance(gen.per_class, int) and gen.per_class >= 0, "generation.per_class", "must be an integer >= 0", gen.per_class)
    _check(gen.target is None or (isinstance(gen.target, int) and gen.target >= 0), "generation.target", "must be null or an integer >= 0", gen.target)
    aug = cfg.augmented
    _check(isinstance(aug.epochs, int) and aug.epochs >= 1, "augmented.epochs", "must be an integer >= 1", aug.epochs)
    _check(isinstance(aug.batch_size, int) and aug.batch_size >= 2, "augmented.batch_size", "must be an integer >= 2", aug.batch_size)
    _check(_number(aug.lr) and aug.lr > 0, "augmented.lr", "must be > 0", aug.lr)
    _check(isinstance(aug.round_aware, bool), "augmented.round_aware", "must be true or false", aug.round_aware)
    _check(isinstance(aug.freeze_bn, bool), "augmented.freeze_bn", "must be true or false", aug.freeze_bn)
    _check(isinstance(aug.steps_follow_kappa, bool), "augmented.steps_follow_kappa", "must be true or false",
           aug.steps_follow_kappa)
    _check(not aug.steps_follow_kappa or (cfg.mix.kappa_policy == "adaptive" and aug.max_steps is not None),
           "augmented.steps_follow_kappa", "needs mix.kappa_policy=adaptive and an integer augmented.max_steps "
           "(the step count at kappa_aug 0)", aug.steps_follow_kappa)
    _check(aug.max_steps is None or (isinstance(aug.max_steps, int) and aug.max_steps >= 1), "augmented.max_steps",
           "must be null (every batch of every epoch) or an integer >= 1", aug.max_steps)
    _check(_number(aug.round_aware_floor) and 0 <= aug.round_aware_floor <= 1, "augmented.round_aware_floor",
           "must be in [0, 1]", aug.round_aware_floor)
    settings = _built(build.filter_settings, cfg)
    if settings.mode == "clip":  # transformers and the CLIP model must be there
        from generation.clip_filter import clip_problem

        if why := clip_problem(settings.clip_model):
            raise ConfigError(why)
    _check(isinstance(cfg.generator_check.enabled, bool), "generator_check.enabled", "must be true or false",
           cfg.generator_check.enabled)
    _built(build.generator_check, cfg)
    if build.kappa_schedule(cfg).uses_synthetic_data:  # the generator is used: the registry says whether it serves the data set
        problem = fit_problem(cfg.generator, cfg.dataset)
        if problem:
            raise ConfigError(problem)
    _validate_reliability(cfg)


def _validate_mix(cfg: DictConfig) -> None:
    from strategy.kappa import CHOOSE, POLICIES
    from genfl_protocol.mixing import BN_MODES

    m, st = cfg.mix, cfg.strategy
    _check(m.kappa_policy in POLICIES, "mix.kappa_policy", f"must be one of {', '.join(POLICIES)}", m.kappa_policy)
    scheduled = m.kappa_policy in ("linear", "cosine")
    _check(scheduled or m.kappa_aug_final is None, "mix.kappa_aug_final",
           "is where mix.kappa_policy=linear or cosine ends: null under constant and adaptive", m.kappa_aug_final)
    _check(not scheduled or m.kappa_aug_final is not None, "mix.kappa_aug_final",
           f"mix.kappa_policy={m.kappa_policy} needs kappa_aug's value in the last round, e.g. 0.0", m.kappa_aug_final)
    if (fixed := {"base_only": 0, "aigc_only": 1}.get(st.name)) is not None:  # the name says what it is
        _check(st.kappa_aug == fixed, "strategy.kappa_aug", f"strategy={st.name} is kappa_aug {fixed}: another "
               "value is strategy=genfl strategy.kappa_aug=<value>", st.kappa_aug)
        _check(m.kappa_policy == "constant", "mix.kappa_policy", f"strategy={st.name} keeps kappa_aug at {fixed}: "
               "a moving kappa is strategy=genfl", m.kappa_policy)
    _built(build.kappa_schedule, cfg)
    _check(m.bn_stats in BN_MODES, "mix.bn_stats", f"must be one of {', '.join(BN_MODES)}", m.bn_stats)
    _check(m.bn_stats != "reestimate" or cfg.model.norm == "batch", "mix.bn_stats",
           "reestimate needs BatchNorm (model.norm=batch); GroupNorm has no running statistics", m.bn_stats)
    _check(m.choose in CHOOSE, "mix.choose", f"must be one of {', '.join(CHOOSE)}", m.choose)
    for key in ("probe_fraction", "bn_fraction"):
        _check(_number(m[key]) and 0 < m[key] <= 1, f"mix.{key}", "must be in (0, 1]", m[key])
    if m.kappa_policy == "adaptive":
        _check(0 < st.kappa_aug < 1, "mix.kappa_policy",
               "adaptive mixes client and augmented models: use it with strategy=genfl (0 < kappa_aug < 1)", m.kappa_policy)
        _check(isinstance(m.candidates, (list, ListConfig)) and all(_number(c) for c in m.candidates), "mix.candidates",
               "must be a list of numbers in [0, 1]", m.candidates)
        for key in ("step", "low", "high", "evidence_z"):
            _check(_number(m[key]), f"mix.{key}", "must be a number", m[key])
        for key in ("max_rise", "retire_below"):
            _check(m[key] is None or (_number(m[key]) and 0 <= m[key] <= 1), f"mix.{key}",
                   "must be null or a number in [0, 1]", m[key])
        _built(build.adaptive_kappa, cfg)


def _built(builder, cfg: DictConfig):
    """``builder(cfg)`` (server_app/build.py), its objects' own errors worded as `ConfigError`: each object
    checks its settings in one place."""
    from strategy.bases import BaseStrategyError
    from strategy.kappa import KappaError

    try:
        return builder(cfg)
    except (KappaError, BaseStrategyError, TypeError, ValueError) as err:
        raise ConfigError(str(err)) from err


def _switchable(key: str) -> bool:
    """What the check can change before round 1: the mix (strategy/generator_check.py's Regime: not a kappa
    schedule) and how far and on which images the augmented model trains."""
    return (key.startswith(("mix.", "augmented.filter.")) and key != "mix.kappa_aug_final") or \
        key in ("augmented.max_steps", "augmented.steps_follow_kappa")


def on_fail_config(cfg: DictConfig) -> DictConfig | None:
    """``cfg`` with ``generator_check.on_fail`` over it, validated: the settings a run whose generator fails
    the check keeps (it starts with them; a trusted generator switches to ``cfg``'s). None when
    `on_fail_problem` says it does not apply."""
    on_fail = cfg.generator_check.get("on_fail")
    if on_fail is not None and not isinstance(on_fail, DictConfig):
        raise ConfigError(f"generator_check.on_fail: must be a mapping of settings or null (got {on_fail!r})")
    if build.on_fail_problem(cfg) is not None:
        return None
    for key in _leaves(OmegaConf.to_container(on_fail)):
        value = OmegaConf.select(on_fail, key)
        _check(OmegaConf.select(cfg, key, default="<missing>") != "<missing>", f"generator_check.on_fail.{key}",
               f"no such setting ({key}): check the spelling against conf/config.yaml", value)
        _check(_switchable(key), f"generator_check.on_fail.{key}", "not a setting the check can switch (mix.* but "
               "kappa_aug_final, augmented.max_steps, augmented.steps_follow_kappa, augmented.filter.*)", value)
        _check(key != "mix.kappa_policy" or value in ("constant", "adaptive"), f"generator_check.on_fail.{key}",
               "must be constant or adaptive (a linear or cosine course is set before the check)", value)
    if cfg.model.norm != "batch" and on_fail.get("mix") is not None:  # GroupNorm: no running statistics to form
        on_fail = OmegaConf.merge(on_fail, {"mix": {"bn_stats": cfg.mix.bn_stats, "bn_fraction": cfg.mix.bn_fraction}})
    try:
        cautious = OmegaConf.merge(cfg, on_fail)
        cautious.generator_check.on_fail = None
        validate(cautious)
    except (ConfigError, OmegaConfBaseException) as err:
        raise ConfigError(f"generator_check.on_fail: {_one_line(err)}") from err
    return cautious


def _leaves(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        out += _leaves(value, path + ".") if isinstance(value, dict) and value else [path]
    return out


def _validate_reliability(cfg: DictConfig) -> None:
    from genfl_torch.privacy import noise_scale

    rel = cfg.reliability
    _check(rel.max_samples_per_node is None or (isinstance(rel.max_samples_per_node, int) and rel.max_samples_per_node >= 1),
           "reliability.max_samples_per_node", "must be null or an integer >= 1", rel.max_samples_per_node)
    _check(_number(rel.node_cap_factor) and rel.node_cap_factor >= 1, "reliability.node_cap_factor", "must be >= 1", rel.node_cap_factor)
    _check(_number(rel.max_relative_update) and rel.max_relative_update > 0, "reliability.max_relative_update", "must be > 0", rel.max_relative_update)
    _check(isinstance(rel.max_consecutive_failed_rounds, int) and rel.max_consecutive_failed_rounds >= 1,
           "reliability.max_consecutive_failed_rounds", "must be an integer >= 1", rel.max_consecutive_failed_rounds)
    _check(isinstance(rel.min_train_replies, int) and 1 <= rel.min_train_replies <= cfg.federation.num_clients,
           "reliability.min_train_replies", f"must be an integer in 1..federation.num_clients ({cfg.federation.num_clients})", rel.min_train_replies)
    _check(rel.min_contributing_nodes is None or (isinstance(rel.min_contributing_nodes, int)
                                                  and rel.min_contributing_nodes >= 1),
           "reliability.min_contributing_nodes", "must be null or an integer >= 1", rel.min_contributing_nodes)
    _check(isinstance(rel.straggler_cooldown_rounds, int) and rel.straggler_cooldown_rounds >= 0,
           "reliability.straggler_cooldown_rounds", "must be an integer >= 0", rel.straggler_cooldown_rounds)
    privacy = cfg.histogram_privacy
    try:
        noise_scale(privacy.mechanism, privacy.epsilon, privacy.delta)
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from err
    agg = cfg.aggregation
    if not isinstance(agg.get("args"), (dict, DictConfig)):
        raise ConfigError(f"aggregation.args: must be a mapping of the strategy's arguments (got {agg.get('args')!r})")
    _check(agg.name != "qfedavg" or cfg.model.norm == "group", "aggregation",
           "qfedavg (Flower's QFedAvg) cannot update BatchNorm's integer counters: add model.norm=group", agg.name)
    dp = agg.dp
    _check(_number(dp.noise_multiplier) and dp.noise_multiplier >= 0, "aggregation.dp.noise_multiplier", "must be >= 0", dp.noise_multiplier)
    _check(_number(dp.clipping_norm) and dp.clipping_norm > 0, "aggregation.dp.clipping_norm", "must be > 0", dp.clipping_norm)
    # built once here with the real arguments, so a typo fails before any node is contacted
    _built(lambda c: build.base_strategy(c, num_nodes=1, sample=False), cfg)


def run_directory(cfg: DictConfig) -> Path:
    """The run's results folder: ``output.dir``, else a new time-stamped folder under ``output.root``."""
    if cfg.output.dir:
        return Path(cfg.output.dir).expanduser().resolve()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return (Path(cfg.output.root).expanduser() / f"{stamp}-{cfg.strategy.name}-{cfg.dataset.name}").resolve()


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
