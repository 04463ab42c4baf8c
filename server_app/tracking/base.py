"""What every tracking backend shares: its settings, the values a run logs, and `Tracker`, which holds
the one rule for when a run continues its tracked run instead of starting a new one.

The rule (`Tracker.continued`): a run resumed from its checkpoint continues the tracked run that the
interrupted attempt's metrics.json names (its ``tracking`` record) when that record has

1. the same backend,
2. the same store: the MLflow tracking URI, the TensorBoard or W&B folder this attempt writes to, and
3. a run the store still holds: the MLflow run (not deleted), TensorBoard event files, the W&B run's
   folder (``offline-run-*-<id>`` or ``run-*-<id>``).

Otherwise the run is a new tracked run, and where a record was there a WARNING says which condition
failed. A fresh run in a reused folder has no such record (`server_app.results.RunReport` reads it
only when resuming): it is always a new tracked run.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from server_app.results import JOB_RECORD, MLFLOW_STORE, flatten

logger = logging.getLogger("flwr")  # Flower's logger when it runs in the ServerApp, plain logging elsewhere

# Tags every tracked run carries: name -> flattened config key.
TAG_KEYS = {"strategy": "strategy.name", "dataset": "dataset.name", "alpha": "partition.alpha", "seed": "seed",
            "generator": "generator.backend", "aggregation": "aggregation.name"}
DEFAULT_EXPERIMENT = "genfl"
STORE_LOCK_SUFFIX = ".lock"  # mlflow.db.lock beside a SQLite store: serialises its creation


class TrackingError(RuntimeError):
    """The tracking backend cannot start; the message is one line that names the setting."""


@dataclass
class Settings:
    """conf/tracking/<backend>.yaml: the keys every tracker has (conf/tracking/_base.yaml) and the
    backend's own. A key the chosen backend does not have is None here (its defaults are in conf/)."""

    backend: str = "none"
    experiment: str | None = None
    group: str | None = None
    run_name: str | None = None
    uri: str | None = None
    root: str | None = None
    dir: str | None = None
    mode: str | None = None
    artifacts: bool | None = None
    tags: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Mapping) -> Settings:
        """From the run's resolved config (a dict); a config without ``tracking`` tracks nothing."""
        node = dict(config.get("tracking") or {"backend": "none"})
        known = {k: v for k, v in node.items() if k in cls.__dataclass_fields__}
        settings = cls(**{**known, "backend": node.get("backend")})
        settings.tags = dict(settings.tags or {})
        return settings


def unwritable(folder: Path) -> str | None:
    """Why ``folder`` cannot be created or written to, or None."""
    folder = Path(folder).expanduser().absolute()
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            return "no existing parent folder"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    return None


def folder_problem(key: str, value, default: Path | None) -> str | None:
    """``tracking.<key>: cannot write to ...`` when the folder it names (or ``default``) is unwritable."""
    value = value or default
    if value and (why := unwritable(Path(str(value)).expanduser())):
        return f"tracking.{key}: cannot write to {value}: {why}"
    return None


# -- the values a run logs ----------------------------------------------------------------------------

def numeric_columns(row: Mapping) -> dict[str, float]:
    """A metrics.json row's numeric values by column (``round`` is the step, not a metric). Booleans
    count as 0/1; a dict column is flattened (``synthetic_filter.3.1``), a list of numbers indexed
    (``augmented_class_weights.0``); strings and nulls are left out."""
    flat: dict[str, float] = {}

    def visit(key: str, value) -> None:
        if isinstance(value, (bool, int, float)):
            flat[key] = float(value)
        elif isinstance(value, Mapping):
            for k, v in value.items():
                visit(f"{key}.{k}", v)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                visit(f"{key}.{i}", v)

    for key, value in row.items():
        if key != "round":
            visit(str(key), value)
    return flat


def params(config: Mapping) -> dict[str, str]:
    """The resolved config as flat string parameters (``client.lr`` -> ``"0.02"``, lists as JSON)."""
    out = {}
    for key, value in flatten(dict(config)).items():
        out[key] = json.dumps(list(value)) if isinstance(value, tuple) else ("null" if value is None else str(value))
    return out


def tags(config: Mapping, settings: Settings, run_dir: Path) -> dict[str, str]:
    flat = flatten(dict(config))
    found = {name: str(flat[key]) for name, key in TAG_KEYS.items() if key in flat}
    if settings.group:
        found["sweep"] = str(settings.group)
    found["results_dir"] = str(run_dir)
    found.update({str(k): str(v) for k, v in settings.tags.items()})
    return found


def artifact_files(run_dir: Path) -> list[Path]:
    """The results folder's files worth keeping with the tracked run: its top-level files (metrics.json
    and .csv, the plots, the logs, the run's config), not the checkpoint, Flower's home, temporaries or a
    sweep's job record (still "running" when this is called)."""
    return sorted(p for p in run_dir.iterdir() if p.is_file() and not p.name.endswith(".tmp")
                  and p.name not in (MLFLOW_STORE, MLFLOW_STORE + STORE_LOCK_SUFFIX, JOB_RECORD)
                  and not p.name.startswith("."))


def scalar_leaves(value, prefix: str) -> dict[str, str]:
    """Short scalar values of a summary as flat ``prefix.key`` strings (for tags)."""
    out = {}
    if isinstance(value, Mapping):
        for k, v in value.items():
            out.update(scalar_leaves(v, f"{prefix}.{k}"))
    elif isinstance(value, (str, int, float, bool)) or value is None:
        out[prefix] = str(value)[:500]
    return out


# -- the base -----------------------------------------------------------------------------------------

class Tracker:
    """What every backend shares: the continue rule, skipping rounds the tracked run already has, and
    turning a logging error into a WARNING that stops tracking (never the run). A backend says where
    its store is (`where`, recorded under ``STORE_KEY``), whether it still holds a run (`holds`), and
    opens, logs to and finishes its run."""

    backend = "none"
    package = ""  # the library it needs (pip install -e ".[tracking]")
    STORE_KEY = "dir"  # the tracking record's key that names the store

    def __init__(self, settings: Settings, config: dict, run_dir: Path):
        self.settings, self.config, self.run_dir = settings, config, run_dir
        self.record: dict = {"backend": self.backend}
        self.broken = False
        self._summaries: dict[str, str] = {}

    @classmethod
    def check(cls, settings: Settings, run_dir: Path | None) -> str | None:
        """Why these settings cannot work, one line naming the key, or None (nothing imported or created)."""
        if settings.artifacts is not None and not isinstance(settings.artifacts, bool):
            return f"tracking.artifacts: must be true or false (got {settings.artifacts!r})"
        return None

    # the continue rule --------------------------------------------------------------------------------
    def continued(self, previous: Mapping | None) -> str | None:
        """The tracked run this attempt continues (its id), or None for a new one: the module's rule."""
        if not previous or previous.get("backend") != self.backend or not previous.get("run_id"):
            return None
        run_id, where = str(previous["run_id"]), self.where()
        if previous.get(self.STORE_KEY) != where:
            logger.warning("tracking: the interrupted attempt's %s run %s is in %s, this attempt's store is %s; "
                           "starting a new run", self.backend, run_id, previous.get(self.STORE_KEY), where)
            return None
        if not self.holds(run_id):
            logger.warning("tracking: the interrupted attempt's %s run %s is no longer in %s; starting a new run",
                           self.backend, run_id, where)
            return None
        return run_id

    def where(self) -> str:
        """The store this attempt tracks to (known before anything is opened)."""
        raise NotImplementedError

    def holds(self, run_id: str) -> bool:
        """Whether the store still has the tracked run ``run_id``."""
        raise NotImplementedError

    # RunReport's side -------------------------------------------------------------------------------
    def start(self, data: Mapping, previous: Mapping | None = None) -> dict:
        """Open the tracked run: the one ``previous`` (the interrupted attempt's record) names if the rule
        says so, else a new one. Raises `TrackingError` naming the setting. Returns the record for metrics.json."""
        started = time.perf_counter()
        try:
            with _quiet_libraries(), self._starting():
                run_id = self.continued(previous)
                self._open(data, run_id)
        except TrackingError:
            raise
        except Exception as err:  # any library error is the backend not starting
            raise TrackingError(f"{self._setting()}: {self.backend} could not start ({type(err).__name__}: "
                                f"{_one_line(err)})") from err
        self.record[self.STORE_KEY] = self.where()
        self.record["last_round"] = previous.get("last_round") if run_id else None
        if run_id:
            self.record["attempts"] = int(previous.get("attempts", 1)) + 1
        self.record["seconds"] = round(time.perf_counter() - started, 3)  # what tracking cost this attempt, so far
        return self.record

    def log_round(self, row: Mapping) -> None:
        step = row.get("round")
        last = self.record.get("last_round")
        if step is None or (last is not None and step <= last):
            return  # this tracked run already has the round (a resumed run re-does the rounds after its checkpoint)
        if self._guard(f"logging round {step}", self._log_round, int(step), numeric_columns(row)):
            self.record["last_round"] = int(step)

    def log_summary(self, key: str, value) -> None:
        text = json.dumps(value, sort_keys=True, default=str)
        if self._summaries.get(key) == text:
            return
        if self._guard(f"logging {key}", self._log_summary, key, value):
            self._summaries[key] = text

    def finish(self, status: str) -> None:
        """End the tracked run: ``completed`` or ``failed`` (marked failed in the tracker), with the
        results folder's files as artifacts. Tried even after a logging error."""
        self.broken = False  # one more try: the status matters most
        self._guard("finishing", self._finish, status)
        self.record["status"] = status

    def describe(self) -> str:
        """One line: where the run is tracked."""
        r = self.record
        what = f"experiment {r['experiment']!r}, " if r.get("experiment") else (
            f"project {r['project']!r}, " if r.get("project") else "")
        again = f", continued (attempt {r['attempts']})" if r.get("attempts") else ""
        return f"{self.backend} run {r.get('run_id')} ({what}{r.get(self.STORE_KEY)}){again}"

    @property
    def run_name(self) -> str:
        return self.settings.run_name or self.run_dir.name

    # backends ---------------------------------------------------------------------------------------
    def _setting(self) -> str:
        return "tracking.dir" if self.settings.dir else "tracking"

    def _starting(self):
        """Held while the run opens (MLflow: fewer retries)."""
        return nullcontext()

    def _open(self, data: Mapping, run_id: str | None) -> None:
        """Open the tracked run ``run_id`` (None: a new one) and put its ``run_id`` into the record."""
        raise NotImplementedError

    def _log_round(self, step: int, values: dict[str, float]) -> None:
        raise NotImplementedError

    def _log_summary(self, key: str, value) -> None:
        raise NotImplementedError

    def _finish(self, status: str) -> None:
        raise NotImplementedError

    def _guard(self, what: str, fn, *args) -> bool:
        if self.broken:
            return False
        started = time.perf_counter()
        try:
            with _quiet_libraries():
                fn(*args)
            return True
        except Exception as err:  # tracking never fails a run once it has started
            self.broken = True
            self.record["error"] = f"{what}: {type(err).__name__}: {_one_line(err)}"
            logger.warning("tracking (%s) stopped while %s: %s: %s; the results folder has everything", self.backend,
                           what, type(err).__name__, _one_line(err))
            return False
        finally:
            self.record["seconds"] = round(self.record.get("seconds", 0.0) + time.perf_counter() - started, 3)


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:500]


QUIET = ("alembic", "mlflow.store.db.utils", "mlflow.store.db_migrations", "mlflow.tracking", "wandb")


@contextmanager
def _quiet_libraries():
    """Database migrations and the like log at INFO; a run's log keeps only their warnings (set again
    after each import: MLflow configures its loggers when it is imported)."""
    levels = {n: logging.getLogger(n).level for n in QUIET}
    quiet()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the libraries' own, about their dependencies
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def quiet() -> None:
    for name in QUIET:
        if logging.getLogger(name).getEffectiveLevel() < logging.WARNING:
            logging.getLogger(name).setLevel(logging.WARNING)
