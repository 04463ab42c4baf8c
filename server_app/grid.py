"""A sweep's grid: the jobs Hydra's basic sweeper makes of a command line, and each job's config
checked as genfl-run would check it. genfl-sweep and the benchmarks (bench/) validate every job
before the first starts."""

from __future__ import annotations

from contextlib import contextmanager

from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from server_app import tracking
from server_app.config import ConfigError, load_config


def expand(overrides: list[str]) -> list[list[str]]:
    """The jobs of a basic sweep: Hydra's own parser and cartesian product, so they match the jobs it launches."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    return BasicSweeper.split_arguments(parsed, max_batch_size=None)[0]


@contextmanager
def outside_hydra():
    """genfl-run composes with Hydra's compose API, which refuses to start inside a running Hydra app:
    set the app's global state aside meanwhile and put it back for the launcher."""
    global_hydra, hydra_config = GlobalHydra.instance(), HydraConfig.instance()
    saved_hydra, saved_config = global_hydra.hydra, hydra_config.cfg
    global_hydra.clear()
    try:
        yield
    finally:
        GlobalHydra.instance().clear()
        if saved_hydra is not None:
            GlobalHydra.instance().initialize(saved_hydra)
        hydra_config.cfg = saved_config


def config_errors(jobs: list[list[str]], validated: set[tuple[str, ...]] | None = None) -> list[str]:
    """One line per job whose config does not compose or validate (as genfl-run would refuse it).
    ``validated``: jobs (sorted overrides) already found valid, skipped and added to."""
    validated = set() if validated is None else validated
    errors = []
    for job in jobs:
        key = tuple(sorted(job))
        if key in validated:
            continue
        try:
            with outside_hydra():
                cfg = load_config(job)
            problem = tracking.problem(OmegaConf.to_container(cfg, resolve=True))
            if problem:
                raise ConfigError(problem)
        except ConfigError as err:
            errors.append(f"job [{' '.join(job)}]: {err}")
            continue
        validated.add(key)
    return errors
