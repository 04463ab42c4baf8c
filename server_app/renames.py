"""Spellings of earlier versions (issue 27: one name per concept in conf/).

A command line that still uses one stops before anything starts, with one line naming what replaced it
(`old_spelling`). A run started before the rename still resumes: `genfl-run --resume` reads its saved
overrides (`upgraded_overrides`) and the checkpoint its config (`upgraded_config`) in today's names.
"""

from __future__ import annotations

import copy

RENAMED_KEYS = {
    "strategy.kappa_schedule": "mix.kappa_policy (constant | linear | cosine | adaptive: the one key for kappa_aug's course)",
    "strategy.kappa_aug_final": "mix.kappa_aug_final (with mix.kappa_policy=linear or cosine)",
    "strategy.kappa_fl": "strategy.kappa_aug (kappa_fl is always 1 - kappa_aug)",
}
RENAMED_STRATEGY = {"fedavg": "base_only"}  # strategy=fedavg meant kappa_aug 0; FedAvg itself is aggregation=fedavg


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.lstrip("+~").partition("=")
    return key, value


def old_spelling(overrides: list[str]) -> str | None:
    """What replaced the first earlier-version key or preset in ``overrides`` (one line), or None."""
    for override in overrides:
        key, value = _split(override)
        if key in RENAMED_KEYS:
            return f"{key} is gone: use {RENAMED_KEYS[key]}"
        if key == "strategy" and (old := [v.strip() for v in value.split(",") if v.strip() in RENAMED_STRATEGY]):
            return (f"strategy={old[0]} is now strategy={RENAMED_STRATEGY[old[0]]} (kappa_aug 0: the base strategy "
                    "alone; FedAvg is aggregation=fedavg, the default)")
        if key == "kappa":
            points = ",".join(v.strip().removeprefix("aug_") for v in value.split(","))
            return f"{override.split('=')[0]}={value}: the kappa/ presets are gone: use strategy.kappa_aug={points}"
    return None


def upgraded_overrides(overrides: list[str]) -> list[str]:
    """A saved run's overrides in today's names (an unchanged list when none is old)."""
    out, schedule, final = [], None, None
    for override in overrides:
        key, value = _split(override)
        if key == "strategy" and value in RENAMED_STRATEGY:
            out.append(f"strategy={RENAMED_STRATEGY[value]}")
        elif key == "kappa":
            out.append(f"strategy.kappa_aug={value.removeprefix('aug_')}")
        elif key == "strategy.kappa_schedule":
            schedule = value
        elif key == "strategy.kappa_aug_final":
            final = value
        elif key != "strategy.kappa_fl":
            out.append(override)
    if schedule not in (None, "constant"):  # the final value was the start value unless it was given
        out += [f"mix.kappa_policy={schedule}", f"mix.kappa_aug_final={final if final is not None else '${strategy.kappa_aug}'}"]
    return out


def upgraded_config(config: dict) -> dict:
    """A checkpoint's config in today's names: strategy.{kappa_fl, kappa_schedule, kappa_aug_final} and
    strategy.name=fedavg as mix.kappa_policy, mix.kappa_aug_final and base_only."""
    strategy = config.get("strategy")
    if not isinstance(strategy, dict) or not {"kappa_fl", "kappa_schedule", "kappa_aug_final"} & set(strategy):
        return config
    config = copy.deepcopy(config)
    strategy, mix = config["strategy"], config.setdefault("mix", {})
    strategy.pop("kappa_fl", None)
    schedule, final = strategy.pop("kappa_schedule", "constant"), strategy.pop("kappa_aug_final", None)
    strategy["name"] = RENAMED_STRATEGY.get(strategy.get("name"), strategy.get("name"))
    if schedule != "constant":
        mix["kappa_policy"], mix["kappa_aug_final"] = schedule, final
    else:
        mix.setdefault("kappa_aug_final", None)
    return config
