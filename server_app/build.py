"""The validated config turned into the objects a run needs: the one place where cfg becomes objects.

`server_run` builds everything the ServerApp runs with (base strategy, kappa schedule, Regimes,
generator check, Reliability, augmenter, GenFL, the clients' ConfigRecord), from the config and the
settings it starts with (generator_check.on_fail's, server_app/config.py). config.py calls the
torch-free builders while it validates, so a value no object accepts fails before anything starts (it
words the objects' own errors as one-line `ConfigError`s). torch is imported only by the builders that
need it, so validating a config never imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from logging import INFO
from typing import TYPE_CHECKING

from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.common.logger import log
from omegaconf import DictConfig, OmegaConf

from genfl_protocol.contract import ClientConfig
from generation.filtering import FilterSettings
from strategy.bases import build_base
from strategy.generator_check import GeneratorCheck, Regime
from strategy.genfl import GenFL
from strategy.kappa import AdaptiveKappa, KappaSchedule
from strategy.replies import Reliability
from genfl_torch.privacy import total_noise_bound

if TYPE_CHECKING:
    import torch

    from generation.augmented import AugmentedModelTrainer
    from genfl_torch.data import Split

AUGMENTER_STATE = "augmenter"  # the augmented-model trainer's state, saved beside the strategy's in a checkpoint

SCHEDULED = ("linear", "cosine")  # the mix.kappa_policy values that are a KappaSchedule's course


def kappa_schedule(cfg: DictConfig) -> KappaSchedule:
    """kappa_aug over the rounds: strategy.kappa_aug throughout, or moving to mix.kappa_aug_final (linear, cosine)."""
    policy, start = cfg.mix.kappa_policy, cfg.strategy.kappa_aug
    scheduled = policy in SCHEDULED
    return KappaSchedule(start, policy if scheduled else "constant", cfg.mix.kappa_aug_final if scheduled else start,
                         cfg.num_rounds)


def adaptive_kappa(cfg: DictConfig) -> AdaptiveKappa | None:
    """mix.kappa_policy=adaptive's policy, starting at strategy.kappa_aug; None under any other policy."""
    m = cfg.mix
    if m.kappa_policy != "adaptive":
        return None
    return AdaptiveKappa(current=float(cfg.strategy.kappa_aug), candidates=tuple(m.candidates), step=float(m.step),
                         low=float(m.low), high=float(m.high), evidence_z=float(m.evidence_z),
                         max_rise=None if m.max_rise is None else float(m.max_rise),
                         retire_below=None if m.retire_below is None else float(m.retire_below))


def generator_check(cfg: DictConfig) -> GeneratorCheck | None:
    """The generator check of ``cfg.generator_check`` (strategy/generator_check.py), or None when off."""
    c = cfg.generator_check
    return GeneratorCheck(epochs=c.epochs, fraction=c.fraction, min_transfer=c.min_transfer) if c.enabled else None


def filter_settings(cfg: DictConfig) -> FilterSettings:
    """The synthetic-set filter of ``cfg.augmented.filter`` (generation/filtering.py)."""
    return FilterSettings(**OmegaConf.to_container(cfg.augmented.filter, resolve=True))


def class_names(cfg: DictConfig) -> tuple[str, ...]:
    """CLIP's class names: those Stable Diffusion prompted with (``generator.class_names``), else the data set's."""
    from genfl_torch.classes import class_names as builtin

    names = cfg.generator.get("class_names") if cfg.generator.backend == "stable_diffusion" else None
    return tuple(str(n) for n in names) if names else builtin(cfg.dataset.name)


def evaluation_fraction(cfg: DictConfig) -> float:
    """The base strategy's share of nodes in the evaluation step (the next_round probe rides on it)."""
    fraction = cfg.federation.fraction_evaluate
    if cfg.mix.kappa_policy == "adaptive" and cfg.mix.choose == "next_round":
        fraction = max(fraction, cfg.mix.probe_fraction)
    return fraction


def base_strategy(cfg: DictConfig, num_nodes: int, sample: bool = True):
    """The configured Flower strategy for the client part of Eq. (1), DP-wrapped if asked. ``sample=False``
    keeps Flower's node sampling (the config check: Flower warns about some sampling settings as it builds)."""
    fed = cfg.federation
    sampling = dict(fraction_train=fed.fraction_train, fraction_evaluate=evaluation_fraction(cfg),
                    min_train_nodes=fed.min_train_nodes, min_evaluate_nodes=fed.min_evaluate_nodes,
                    # Sampling waits for this many nodes: a node that vanished mid-run must not stall it.
                    min_available_nodes=max(fed.min_train_nodes, fed.min_evaluate_nodes)) if sample else {}
    dp = None
    if cfg.aggregation.dp.clipping is not None:
        d = cfg.aggregation.dp
        # A first estimate only: GenFL sets it every round to the replies actually aggregated.
        sampled = max(int(num_nodes * fed.fraction_train), fed.min_train_nodes, 1)
        norm_key = "initial_clipping_norm" if str(d.clipping).endswith("adaptive") else "clipping_norm"
        dp = {"clipping": d.clipping, "noise_multiplier": float(d.noise_multiplier), "num_sampled_clients": sampled,
              norm_key: float(d.clipping_norm)}
    args = OmegaConf.to_container(cfg.aggregation.args, resolve=True)
    return build_base(cfg.aggregation.name, args, sampling=sampling, dp=dp)


def on_fail_problem(cfg: DictConfig) -> str | None:
    """Why ``generator_check.on_fail`` does not apply to this run (the check then only warns), or None."""
    st, on_fail = cfg.strategy, cfg.generator_check.get("on_fail")
    if not cfg.generator_check.enabled:
        return "generator_check.enabled is false"
    if on_fail is None:
        return "generator_check.on_fail is null"
    if not 0 < st.kappa_aug < 1:
        return f"strategy={st.name} (kappa_aug {st.kappa_aug}) mixes no client part with the augmented model"
    if cfg.mix.kappa_policy in SCHEDULED:
        return f"mix.kappa_policy={cfg.mix.kappa_policy} fixes kappa_aug's course"
    return None


def regime(cfg: DictConfig) -> Regime:
    """How ``cfg`` mixes the synthetic data (what a trusted generator switches to)."""
    return Regime(adaptive=adaptive_kappa(cfg), bn_stats=cfg.mix.bn_stats, bn_fraction=cfg.mix.bn_fraction,
                  choose=cfg.mix.choose, probe_fraction=cfg.mix.probe_fraction,
                  fraction_evaluate=evaluation_fraction(cfg),
                  augmented=dict(max_steps=cfg.augmented.max_steps, filter=filter_settings(cfg),
                                 steps_follow_trust=cfg.augmented.steps_follow_kappa))


def reliability(cfg: DictConfig) -> Reliability:
    """What the server accepts from the nodes (reliability.*, the histograms' privacy noise)."""
    rel, privacy = cfg.reliability, cfg.histogram_privacy
    return Reliability(
        max_samples_per_node=rel.max_samples_per_node,
        node_cap_factor=float(rel.node_cap_factor),
        claim_slack=total_noise_bound(privacy.mechanism, privacy.epsilon, privacy.delta, cfg.dataset.num_classes,
                                      sigmas=float(privacy.claim_sigmas)),
        max_relative_update=float(rel.max_relative_update),
        max_consecutive_failed_rounds=rel.max_consecutive_failed_rounds,
        min_train_replies=rel.min_train_replies,
        straggler_cooldown_rounds=rel.straggler_cooldown_rounds,
    )


def client_config(cfg: DictConfig, time_budget: float | None = None) -> ConfigRecord:
    """What every message tells a client (genfl_protocol/contract.py), from the run's config."""
    config = OmegaConf.to_container(cfg, resolve=True)
    return ConfigRecord(ClientConfig.from_run_config(config, time_budget).to_record())


def augmenter(cfg: DictConfig, model: torch.nn.Module, device: torch.device, test: Split) -> AugmentedModelTrainer:
    """The server's synthetic-data trainer; the generator itself loads only when images are needed."""
    from generation.augmented import AugmentedModelTrainer
    from generation.factory import build_generator
    from genfl_torch.train import TrainSettings

    aug = cfg.augmented
    return AugmentedModelTrainer(
        make_generator=lambda: build_generator(cfg.generator, cfg.dataset),
        model=model,
        settings=TrainSettings(epochs=aug.epochs, batch_size=aug.batch_size, lr=aug.lr, momentum=aug.momentum,
                               weight_decay=aug.weight_decay, augment=cfg.dataset.augment, proximal_mu=0.0,
                               max_steps=aug.max_steps, fast_cuda=cfg.server.fast_cuda, freeze_bn=aug.freeze_bn),
        device=device,
        test=test,
        eval_batch_size=cfg.server.eval_batch_size,
        policy=cfg.generation.policy,
        budget=cfg.generation.budget,
        per_class=cfg.generation.per_class,
        target=cfg.generation.target,
        seed=cfg.seed,
        cache_dir=cfg.generation.cache_dir,
        overlap=cfg.server.overlap,
        filter=filter_settings(cfg),
        class_names=class_names(cfg),
        steps_follow_trust=aug.steps_follow_kappa,
    )


@dataclass
class ServerRun:
    """What the ServerApp runs: the strategy and the global model it evaluates centrally after every round."""

    strategy: GenFL
    augmenter: AugmentedModelTrainer | None
    model: torch.nn.Module  # the global model (its weights loaded for each central evaluation)
    test: Split
    device: torch.device
    initial: ArrayRecord  # round 1's global model: seeded, or the checkpoint's


def server_run(cfg: DictConfig, start: DictConfig, num_nodes: int, resumed: dict | None = None) -> ServerRun:
    """Everything the ServerApp runs with. ``start``: the settings it starts with (``cfg``, or with the
    generator check ``cfg`` under generator_check.on_fail: a trusted generator switches to ``cfg``'s
    before round 1); ``resumed``: a checkpoint to continue from (server_app/checkpoint.py)."""
    from genfl_torch.data import load_splits
    from genfl_torch.model import seeded_model
    from genfl_torch.train import resolve_device

    ds, fed = cfg.dataset, cfg.federation
    test, device = load_splits(ds)["test"], resolve_device(cfg.server.device)
    spec = dict(num_classes=ds.num_classes, in_channels=ds.channels, mean=list(ds.mean), std=list(ds.std),
                norm=cfg.model.norm)
    model = seeded_model(cfg.seed, **spec)
    kappa = kappa_schedule(cfg)
    check = generator_check(cfg) if kappa.uses_synthetic_data else None
    if check is not None and start is cfg:
        log(INFO, "generator check: reports only (%s)", on_fail_problem(cfg))
    trainer = augmenter(start, seeded_model(cfg.seed, **spec), device, test) if kappa.uses_synthetic_data else None
    strategy = GenFL(
        base_strategy(start, num_nodes=num_nodes),
        num_classes=ds.num_classes,
        kappa=kappa,
        augmenter=trainer,
        histogram_timeout=fed.histogram_timeout,
        histogram_config=client_config(cfg, time_budget=fed.histogram_timeout),
        seed=cfg.seed,
        reliability=reliability(cfg),
        first_round=resumed["round"] + 1 if resumed else 1,
        regime=regime(start),  # how it starts mixing (with the check: generator_check.on_fail's)
        round_aware_floor=cfg.augmented.round_aware_floor if cfg.augmented.round_aware else None,
        check=check,
        trusted=None if start is cfg else regime(cfg),
    )
    initial = ArrayRecord(model.state_dict())
    if resumed:
        strategy.load_state_dict(resumed["strategy"])
        if trainer is not None:  # the filter's selection (a checkpoint written before it was kept: none)
            trainer.load_state_dict(resumed["strategy"].get(AUGMENTER_STATE))
        initial = ArrayRecord({k: Array(v) for k, v in resumed["arrays"].items()})
    return ServerRun(strategy, trainer, model, test, device, initial)
