"""The client part of Eq. (1) comes from Flower's own Message-API strategies, chosen by name in conf/.

GenFL wraps the chosen base the way Flower's DifferentialPrivacy*Clipping classes wrap one: the
base samples nodes and aggregates client replies (FedAvg, FedProx, robust rules, server optimisers),
GenFL adds the histogram step, the augmented model and the Eq. (1) mix around it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

from flwr.serverapp.strategy import (
    Bulyan,
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    QFedAvg,
    Strategy,
)

BASES: dict[str, type[FedAvg]] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedavgm": FedAvgM,
    "fedadagrad": FedAdagrad,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "qfedavg": QFedAvg,
    "fedmedian": FedMedian,
    "fedtrimmedavg": FedTrimmedAvg,
    "krum": Krum,
    "multikrum": MultiKrum,
    "bulyan": Bulyan,
}

DP_WRAPPERS: dict[str, type[Strategy]] = {
    "server_fixed": DifferentialPrivacyServerSideFixedClipping,
    "server_adaptive": DifferentialPrivacyServerSideAdaptiveClipping,
    "client_fixed": DifferentialPrivacyClientSideFixedClipping,
    "client_adaptive": DifferentialPrivacyClientSideAdaptiveClipping,
}


class BaseStrategyError(ValueError):
    """The configured base strategy or its arguments are invalid; the message names the key."""


def build_base(name: str, args: Mapping, *, sampling: Mapping, dp: Mapping | None = None) -> Strategy:
    """``BASES[name](**sampling, **args)``, wrapped in a Flower DP wrapper when ``dp`` names one.

    ``sampling`` holds FedAvg's node-sampling arguments (fraction_train, min_train_nodes, ...);
    ``dp`` is ``{"clipping": <DP_WRAPPERS key>, **wrapper kwargs}``.
    """
    if name not in BASES:
        raise BaseStrategyError(f"aggregation.name: unknown base strategy {name!r}; choose one of {', '.join(BASES)}")
    clash = sorted(set(args) & set(sampling))
    if clash:
        raise BaseStrategyError(f"aggregation.args: {', '.join(clash)} belong in federation.*, not here")
    try:
        base = BASES[name](**sampling, **dict(args))
    except (TypeError, ValueError) as err:
        raise BaseStrategyError(f"aggregation.args for {name}: {err}") from err
    if not dp or dp.get("clipping") is None:
        return base
    dp = dict(dp)
    kind = dp.pop("clipping")
    if kind not in DP_WRAPPERS:
        raise BaseStrategyError(f"aggregation.dp.clipping: unknown {kind!r}; choose one of {', '.join(DP_WRAPPERS)} or null")
    try:
        return DP_WRAPPERS[kind](base, **dp)
    except (TypeError, ValueError) as err:
        raise BaseStrategyError(f"aggregation.dp ({kind}): {err}") from err


def innermost(strategy: Strategy) -> FedAvg:
    """The FedAvg-family strategy at the bottom of a wrapper chain (it owns the record keys)."""
    while not isinstance(strategy, FedAvg):
        inner = getattr(strategy, "strategy", None)
        if inner is None:
            raise BaseStrategyError(f"{type(strategy).__name__} wraps no FedAvg-family strategy")
        strategy = inner
    return strategy


def dp_wrapper(strategy: Strategy) -> Strategy | None:
    """The Flower DP wrapper in a wrapper chain, if any (GenFL calibrates its noise every round)."""
    while not isinstance(strategy, FedAvg):
        if isinstance(strategy, tuple(DP_WRAPPERS.values())):
            return strategy
        strategy = getattr(strategy, "strategy", None)
        if strategy is None:
            return None
    return None


# What a base strategy learns across rounds (server optimiser moments, an adaptive clipping norm):
# checkpointed by name, so a resumed run rebuilds the strategy from conf/ and restores only these.
LEARNT_STATE = ("momentum_vector", "m_t", "v_t", "clipping_norm")


def _chain(strategy: Strategy) -> list[Strategy]:
    chain = [strategy]
    while not isinstance(chain[-1], FedAvg) and getattr(chain[-1], "strategy", None) is not None:
        chain.append(chain[-1].strategy)
    return chain


def base_state(strategy: Strategy) -> list[dict]:
    """The learnt state of each strategy in a wrapper chain, outermost first (plain data, picklable)."""
    return [{name: getattr(s, name) for name in LEARNT_STATE if getattr(s, name, None) is not None} for s in _chain(strategy)]


def load_base_state(strategy: Strategy, state: list[dict]) -> None:
    """Restore `base_state` into a strategy built from the same configuration. A learnt attribute
    the state lacks was not learnt yet (None, e.g. FedAvgM's momentum before its first round)."""
    chain = _chain(strategy)
    if len(chain) != len(state):
        raise ValueError(f"the checkpoint's base strategy has {len(state)} layers, this one {len(chain)}")
    for layer, values in zip(chain, state):
        for name in LEARNT_STATE:
            if name in values:
                setattr(layer, name, values[name])
            elif getattr(layer, name, None) is not None:
                setattr(layer, name, None)


def snapshot_base_state(strategy: Strategy) -> list[dict]:
    """A copy of `base_state` that the base's next aggregation cannot touch: a round whose model is
    rejected puts it back with `load_base_state`, so the rejected update leaves no trace in the
    server optimiser's moments or the adaptive clipping norm (nor in the checkpoint)."""
    return copy.deepcopy(base_state(strategy))
