"""Experiment tracking: the run's results, as the results folder holds them, logged to MLflow,
TensorBoard or Weights & Biases as well (``tracking=mlflow|tensorboard|wandb``, conf/tracking/).

`server_app.results.RunReport` drives a tracker: `start` when the run starts (before round 1; a
backend that cannot start raises `TrackingError`, one line naming the setting, and the run fails),
`log_round` for every metrics.json row (every numeric column, the round as the step), `log_summary`
for the generation summary and the other per-run summaries, `finish` with the run's status (failed
runs are marked so) and the results folder's files as artifacts. The tracked run's id and store are
kept in metrics.json (``tracking``); when a resumed run continues that tracked run is one rule for
every backend, `base.Tracker.continued` (base.py's docstring); a continued run logs only the rounds it
has not logged yet.

Once started, a tracker never fails a run: an error while logging is a WARNING, recorded in
metrics.json's ``tracking.error``, and tracking stops for the rest of the run (the results folder is
the record). The libraries are optional (``pip install -e ".[tracking]"``) and imported only when used.
This package does not import Flower: it runs in the ServerApp, so it works the same under genfl-run,
`flwr run` and a deployed SuperLink. One module per backend: mlflow.py, tensorboard.py, wandb.py.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

from conf import CONF_DIR
from server_app.tracking.base import Settings, Tracker, TrackingError, numeric_columns
from server_app.tracking.mlflow import MLflowTracker
from server_app.tracking.tensorboard import TensorBoardTracker
from server_app.tracking.wandb import WandbTracker

TRACKERS: dict[str, type[Tracker]] = {t.backend: t for t in (MLflowTracker, TensorBoardTracker, WandbTracker)}
BACKENDS = ("none", *TRACKERS)

__all__ = ["BACKENDS", "MLflowTracker", "Settings", "TensorBoardTracker", "Tracker", "TrackingError", "WandbTracker",
           "build", "inert_overrides", "keys", "numeric_columns", "override_problem", "problem"]


def build(config: Mapping, run_dir: Path) -> Tracker | None:
    """The tracker the run's config asks for (not started), or None for ``tracking=none``."""
    settings = Settings.from_config(config)
    if settings.backend == "none":
        return None
    why = problem(config, run_dir)
    if why:
        raise TrackingError(why)
    return TRACKERS[settings.backend](settings, dict(config), Path(run_dir))


def problem(config: Mapping, run_dir: Path | None = None) -> str | None:
    """Why these tracking settings cannot work, in one line naming the key, or None. Cheap: nothing is
    imported or created (the backend's real start, in the ServerApp, checks the rest). With ``run_dir``
    the default locations (beside or in that results folder) are checked too."""
    s = Settings.from_config(config)
    if s.backend not in BACKENDS:
        return f"tracking.backend: must be one of {', '.join(BACKENDS)} (got {s.backend!r})"
    for key in config.get("tracking") or {}:
        if key not in keys(s.backend):
            return not_a_setting(s.backend, key) or f"tracking.{key}: no such setting of tracking={s.backend}"
    if s.backend == "none":
        return None
    tracker = TRACKERS[s.backend]
    if importlib.util.find_spec(tracker.package) is None:
        return (f"tracking={s.backend}: the {tracker.package} package is not installed here (the ServerApp's "
                f"machine): pip install -e \".[tracking]\" (or pip install {tracker.package})")
    return tracker.check(s, run_dir)


# -- which keys each backend has (conf/tracking/*.yaml) ------------------------------------------------

@lru_cache
def keys(backend: str) -> frozenset[str]:
    """The settings conf/tracking/<backend>.yaml gives, with those of the files it extends (_base.yaml)."""
    from omegaconf import OmegaConf

    path = CONF_DIR / "tracking" / f"{backend}.yaml"
    if not path.is_file():
        return frozenset()
    node = OmegaConf.load(path)
    found = set(node) - {"defaults"}
    for parent in node.get("defaults") or []:
        if isinstance(parent, str) and parent != "_self_":
            found |= keys(parent)
    return frozenset(found)


def not_a_setting(backend: str, key: str) -> str | None:
    """One line for ``tracking.<key>`` when another backend has that setting and ``backend`` does not."""
    owners = [b for b in TRACKERS if key in keys(b)]
    if key in keys(backend) or not owners:
        return None
    return (f"tracking.{key}: tracking={backend} has no such setting (tracking={'|'.join(owners)} "
            f"{'has' if len(owners) == 1 else 'have'} it: choose {'that' if len(owners) == 1 else 'one'} or leave it out)")


def chosen_backend(overrides: list[str]) -> str:
    """The backend a command line picks: its last ``tracking=...``, else conf/config.yaml's default."""
    chosen = [o.split("=", 1)[1] for o in overrides if o.lstrip("+").split("=", 1)[0] == "tracking" and "=" in o]
    return chosen[-1] if chosen else _default_backend()


@lru_cache
def _default_backend() -> str:
    from omegaconf import OmegaConf

    entries = OmegaConf.load(CONF_DIR / "config.yaml").get("defaults") or []
    return next((str(e["tracking"]) for e in entries if isinstance(e, Mapping) and "tracking" in e), "none")


def _tracking_key(override: str) -> str | None:
    key = override.split("=", 1)[0]
    return key.split(".")[1] if key.startswith("tracking.") and "=" in override else None


def override_problem(overrides: list[str]) -> str | None:
    """For a command line Hydra refused: one line if it sets another backend's setting, e.g.
    ``tracking=tensorboard tracking.mode=online`` (W&B's), or None."""
    backend = chosen_backend(overrides)
    for override in overrides:
        if (key := _tracking_key(override)) and (why := not_a_setting(backend, key)):
            return why
    return None


def inert_overrides(overrides: list[str]) -> list[str]:
    """The overrides that set another backend's setting: before each backend had only its own keys they
    were accepted and ignored, and genfl-sweep gave every job ``tracking.group`` and ``tracking.root``,
    so a run's saved overrides (genfl-run --resume) may hold them."""
    backend = chosen_backend(overrides)
    return [o for o in overrides if (key := _tracking_key(o)) and not_a_setting(backend, key)]
