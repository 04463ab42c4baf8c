"""The validated config turned into the objects a run needs: the one place where cfg becomes objects.

server_app/config.py calls the torch-free builders while it validates, so a value no object accepts
fails before anything starts (config.py words the objects' own errors as one-line `ConfigError`s);
server_app/app.py builds the rest when the run starts. torch is imported only by the builders that
need it, so validating a config never imports it.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from generation.filtering import FilterSettings
from strategy.bases import build_base
from strategy.generator_check import GeneratorCheck
from strategy.kappa import AdaptiveKappa, KappaSchedule

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
    from torchcore.classes import class_names as builtin

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
