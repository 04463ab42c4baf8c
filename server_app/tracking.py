"""Experiment tracking: the run's results, as the results folder holds them, logged to MLflow,
TensorBoard or Weights & Biases as well (``tracking=mlflow|tensorboard|wandb``, conf/tracking/).

`server_app.results.RunReport` drives a tracker: `start` when the run starts (before round 1; a
backend that cannot start raises `TrackingError`, one line naming the setting, and the run fails),
`log_round` for every metrics.json row (every numeric column, the round as the step), `log_summary`
for the generation summary and the other per-run summaries, `finish` with the run's status (failed
runs are marked so) and the results folder's files as artifacts. The tracked run's id is kept in
metrics.json (``tracking``), so a resumed run (``output.resume``, a continued sweep job) logs into the
same tracked run instead of a new one, and logs only the rounds it has not logged yet.

Once started, a tracker never fails a run: an error while logging is a WARNING, recorded in
metrics.json's ``tracking.error``, and tracking stops for the rest of the run (the results folder is
the record). The libraries are optional (``pip install -e ".[tracking]"``) and imported only when used.
This module does not import Flower: it runs in the ServerApp, so it works the same under genfl-run,
`flwr run` and a deployed SuperLink.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
import shutil
import time
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from server_app.results import JOB_RECORD, MLFLOW_ARTIFACTS, MLFLOW_STORE, TENSORBOARD_DIR, flatten

logger = logging.getLogger("flwr")  # Flower's logger when it runs in the ServerApp, plain logging elsewhere

BACKENDS = ("none", "mlflow", "tensorboard", "wandb")
PACKAGES = {"mlflow": "mlflow", "tensorboard": "tensorboard", "wandb": "wandb"}
# Tags every tracked run carries: name -> flattened config key.
TAG_KEYS = {"strategy": "strategy.name", "dataset": "dataset.name", "alpha": "partition.alpha", "seed": "seed",
            "generator": "generator.backend", "aggregation": "aggregation.name"}
DEFAULT_EXPERIMENT = "genfl"
STORE_LOCK_SUFFIX = ".lock"  # mlflow.db.lock beside a SQLite store: serialises its creation


class TrackingError(RuntimeError):
    """The tracking backend cannot start; the message is one line that names the setting."""


@dataclass
class Settings:
    """conf/tracking/*.yaml (every option has all keys)."""

    backend: str = "none"
    experiment: str | None = None
    group: str | None = None
    run_name: str | None = None
    uri: str | None = None
    root: str | None = None
    dir: str | None = None
    mode: str = "offline"
    artifacts: bool = True
    tags: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Mapping) -> Settings:
        """From the run's resolved config (a dict); a config without ``tracking`` tracks nothing."""
        node = dict(config.get("tracking") or {})
        known = {k: v for k, v in node.items() if k in cls.__dataclass_fields__}
        settings = cls(**known)
        settings.tags = dict(settings.tags or {})
        return settings


# -- checks that need no library (config time) ------------------------------------------------------

def problem(config: Mapping, run_dir: Path | None = None) -> str | None:
    """Why these tracking settings cannot work, in one line naming the key, or None. Cheap: nothing is
    imported or created (the backend's real start, in the ServerApp, checks the rest). With ``run_dir``
    the default locations (beside or in that results folder) are checked too."""
    s = Settings.from_config(config)
    if s.backend not in BACKENDS:
        return f"tracking.backend: must be one of {', '.join(BACKENDS)} (got {s.backend!r})"
    if s.backend == "none":
        return None
    package = PACKAGES[s.backend]
    if importlib.util.find_spec(package) is None:
        return (f"tracking={s.backend}: the {package} package is not installed here (the ServerApp's machine): "
                f"pip install -e \".[tracking]\" (or pip install {package})")
    if s.backend == "wandb" and s.mode not in ("offline", "online"):
        return f"tracking.mode: must be offline or online (got {s.mode!r})"
    if not isinstance(s.artifacts, bool):
        return f"tracking.artifacts: must be true or false (got {s.artifacts!r})"
    if s.backend == "mlflow" and s.uri:
        scheme = urlparse(str(s.uri)).scheme
        if scheme in ("", "file"):
            return (f"tracking.uri: {s.uri!r} is MLflow's file store, which MLflow 3 refuses (maintenance mode); "
                    "use sqlite:///<folder>/mlflow.db or a tracking server (http://host:5000)")
        if scheme == "sqlite":
            where = _sqlite_path(str(s.uri))
            if where is not None and (why := unwritable(where.parent)):
                return f"tracking.uri: cannot create {where}: {why}"
        return None
    key = "root" if s.backend == "mlflow" else "dir"
    value = getattr(s, key)
    if not value and run_dir is not None:  # the default: beside (MLflow) or in (TensorBoard, W&B) the results folder
        value = Path(run_dir).parent if s.backend == "mlflow" else Path(run_dir)
    if value and (why := unwritable(Path(str(value)).expanduser())):
        return f"tracking.{key}: cannot write to {value}: {why}"
    return None


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


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///relative.db`` or ``sqlite:////absolute.db`` URI (None: in memory)."""
    rest = uri[len("sqlite://"):].split("?", 1)[0]
    if not rest.startswith("/") or rest[1:] in ("", ":memory:"):
        return None
    return Path(rest[1:]).expanduser()


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


def _scalar_leaves(value, prefix: str) -> dict[str, str]:
    """Short scalar values of a summary as flat ``prefix.key`` strings (for tags)."""
    out = {}
    if isinstance(value, Mapping):
        for k, v in value.items():
            out.update(_scalar_leaves(v, f"{prefix}.{k}"))
    elif isinstance(value, (str, int, float, bool)) or value is None:
        out[prefix] = str(value)[:500]
    return out


# -- trackers -----------------------------------------------------------------------------------------

def build(config: Mapping, run_dir: Path) -> Tracker | None:
    """The tracker the run's config asks for (not started), or None for ``tracking=none``."""
    settings = Settings.from_config(config)
    if settings.backend == "none":
        return None
    why = problem(config, run_dir)
    if why:
        raise TrackingError(why)
    cls = {"mlflow": MLflowTracker, "tensorboard": TensorBoardTracker, "wandb": WandbTracker}[settings.backend]
    return cls(settings, dict(config), Path(run_dir))


class Tracker:
    """What every backend shares: resuming the tracked run, skipping rounds it already has, and
    turning a logging error into a WARNING that stops tracking (never the run)."""

    backend = "none"

    def __init__(self, settings: Settings, config: dict, run_dir: Path):
        self.settings, self.config, self.run_dir = settings, config, run_dir
        self.record: dict = {"backend": self.backend}
        self.broken = False
        self._summaries: dict[str, str] = {}

    # RunReport's side -------------------------------------------------------------------------------
    def start(self, data: Mapping, previous: Mapping | None = None) -> dict:
        """Open the tracked run (a new one, or the one in ``previous``, an earlier attempt's record of
        the same backend). Raises `TrackingError` naming the setting. Returns the record for metrics.json."""
        resume = dict(previous) if previous and previous.get("backend") == self.backend and previous.get("run_id") else None
        started = time.perf_counter()
        try:
            with _quiet_libraries():
                continued = self._open(data, resume)
        except TrackingError:
            raise
        except Exception as err:  # any library error is the backend not starting
            raise TrackingError(f"{self._setting()}: {self.backend} could not start ({type(err).__name__}: "
                                f"{_one_line(err)})") from err
        self.record["last_round"] = resume.get("last_round") if continued else None
        if continued:
            self.record["attempts"] = int(resume.get("attempts", 1)) + 1
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

    # backends ---------------------------------------------------------------------------------------
    def _setting(self) -> str:
        return "tracking.dir" if self.settings.dir else "tracking"

    def _open(self, data: Mapping, resume: dict | None) -> bool:
        """Open the tracked run; True if it is ``resume``'s (then it has that record's rounds already)."""
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

    def describe(self) -> str:
        """One line: where the run is tracked."""
        r = self.record
        where = r.get("uri") or r.get("dir")
        what = f"experiment {r['experiment']!r}, " if r.get("experiment") else (
            f"project {r['project']!r}, " if r.get("project") else "")
        again = f", continued (attempt {r['attempts']})" if r.get("attempts") else ""
        return f"{self.backend} run {r.get('run_id')} ({what}{where}){again}"

    @property
    def run_name(self) -> str:
        return self.settings.run_name or self.run_dir.name


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:500]


QUIET = ("alembic", "mlflow.store.db.utils", "mlflow.store.db_migrations", "mlflow.tracking", "wandb")


@contextmanager
def _quiet_libraries():
    """Database migrations and the like log at INFO; a run's log keeps only their warnings (set again
    after each import: MLflow configures its loggers when it is imported)."""
    levels = {n: logging.getLogger(n).level for n in QUIET}
    _quiet()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the libraries' own, about their dependencies
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _quiet() -> None:
    for name in QUIET:
        if logging.getLogger(name).getEffectiveLevel() < logging.WARNING:
            logging.getLogger(name).setLevel(logging.WARNING)


def _millis() -> int:
    return int(time.time() * 1000)


class MLflowTracker(Tracker):
    """MLflow through `MlflowClient` (no global state). Default store: ``sqlite:///<root>/mlflow.db``
    with artifacts in ``<root>/mlartifacts`` (MLflow 3 refuses its old file store by default; SQLite
    works offline, in one file, and `mlflow ui` reads it)."""

    backend = "mlflow"
    BATCH = 100  # MLflow's log_batch takes at most 100 params / 1000 metrics per call

    def _setting(self) -> str:
        return "tracking.uri" if self.settings.uri else "tracking.root"

    def store(self) -> tuple[str, str | None]:
        """(tracking URI, artifact location for a new experiment or None for the server's default)."""
        if self.settings.uri:
            uri = str(self.settings.uri)
            db = _sqlite_path(uri) if uri.startswith("sqlite:") else None
            return uri, (db.parent / MLFLOW_ARTIFACTS).absolute().as_uri() if db is not None else None
        root = Path(self.settings.root).expanduser() if self.settings.root else self.run_dir.parent
        root = root.absolute()
        return f"sqlite:///{root / MLFLOW_STORE}", (root / MLFLOW_ARTIFACTS).as_uri()

    def _open(self, data: Mapping, resume: dict | None) -> bool:
        from mlflow import MlflowClient
        from mlflow.entities import Param

        _quiet()
        uri, artifact_location = self.store()
        with _few_retries():
            with _creating(uri):  # parallel sweep jobs share one new store: one creates it, the others wait
                client = MlflowClient(tracking_uri=uri)
                client.search_experiments(max_results=1)  # opens the store: its tables and schema migrations
            experiment_name = self.settings.experiment or self.settings.group or DEFAULT_EXPERIMENT
            run, continued = None, False
            if resume is not None and resume.get("uri") == uri:
                try:
                    run = client.get_run(resume["run_id"])
                except Exception:  # gone (another store, deleted): a new run, said so
                    logger.warning("tracking: MLflow run %s of the interrupted attempt is not in %s; starting a new "
                                   "one", resume["run_id"], uri)
            if run is not None:
                continued = True
                client.update_run(run.info.run_id, status="RUNNING")
                client.set_tag(run.info.run_id, "resumed_after_round", str(data.get("resumed_after_round")))
            else:
                experiment_id = self._experiment(client, experiment_name, artifact_location)
                run = client.create_run(experiment_id, run_name=self.run_name,
                                        tags=tags(self.config, self.settings, self.run_dir))
                values = [Param(k[:250], v[:6000]) for k, v in params(self.config).items()]
                for i in range(0, len(values), self.BATCH):
                    client.log_batch(run.info.run_id, params=values[i:i + self.BATCH])
            if data.get("run_id") is not None:
                client.set_tag(run.info.run_id, "flwr_run_id", str(data["run_id"]))
        self.client, self.run_id = client, run.info.run_id
        self.record.update(run_id=run.info.run_id, experiment_id=run.info.experiment_id, uri=uri,
                           experiment=client.get_experiment(run.info.experiment_id).name)
        return continued

    @staticmethod
    def _experiment(client, name: str, artifact_location: str | None) -> str:
        found = client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                client.restore_experiment(found.experiment_id)
            return found.experiment_id
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except Exception:  # another job of the sweep created it meanwhile
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _log_round(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = _millis()
        metrics = [Metric(_key(k), v, now, step) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def _log_summary(self, key: str, value) -> None:
        from mlflow.entities import RunTag

        if isinstance(value, (dict, list)):
            self.client.log_dict(self.run_id, value, f"{key}.json")
        leaves = _scalar_leaves(value, key)
        if leaves:
            self.client.log_batch(self.run_id, tags=[RunTag(_key(k), v) for k, v in list(leaves.items())[:100]])

    def _finish(self, status: str) -> None:
        if self.settings.artifacts:
            for path in artifact_files(self.run_dir):
                self.client.log_artifact(self.run_id, str(path), artifact_path="results")
        self.client.set_terminated(self.run_id, status="FINISHED" if status == "completed" else "FAILED")


@contextmanager
def _creating(uri: str):
    """Hold an exclusive lock beside a SQLite store while it is opened. MLflow creates a new store's tables
    and runs its schema migrations without a lock, so jobs that open one new store at once (a sweep's
    jobs under the joblib launcher) fail with "table _alembic_tmp_metrics already exists" and the like."""
    db = _sqlite_path(uri) if uri.startswith("sqlite:") else None
    if db is None:
        yield
        return
    import fcntl

    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + STORE_LOCK_SUFFIX), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed, also if this process dies
        yield


def _key(name: str) -> str:
    """A metric/tag name MLflow accepts (letters, digits, _ - . / space)."""
    return re.sub(r"[^\w\-. /]", "_", name)[:250]


@contextmanager
def _few_retries():
    """Starting: a tracking server that is not there fails in seconds, not after MLflow's minutes of
    retries (a running run keeps MLflow's patient defaults)."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class TensorBoardTracker(Tracker):
    """TensorBoard event files in ``<results folder>/tensorboard`` (``tracking.dir``): one scalar per
    metrics.json column (step = round), the config as text and as HParams (TensorBoard's HPARAMS tab
    compares a sweep's runs), summaries as text. TensorBoard has no artifacts: the files are beside it."""

    backend = "tensorboard"

    def log_dir(self) -> Path:
        return (Path(self.settings.dir).expanduser() if self.settings.dir else self.run_dir / TENSORBOARD_DIR).absolute()

    def _open(self, data: Mapping, resume: dict | None) -> bool:
        from torch.utils.tensorboard import SummaryWriter

        folder = self.log_dir()
        folder.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(folder), flush_secs=30)
        continued = resume is not None and resume.get("dir") == str(folder)
        if not continued:
            self._hparams()
            table = "\n".join(f"| {k} | {v} |" for k, v in params(self.config).items())
            self.writer.add_text("config", "| key | value |\n|---|---|\n" + table, 0)
            self.writer.add_text("tags", json.dumps(tags(self.config, self.settings, self.run_dir), indent=1), 0)
        self.writer.flush()
        self.record.update(run_id=self.run_name, dir=str(folder))
        return continued

    def _hparams(self) -> None:
        from torch.utils.tensorboard.summary import hparams

        values = {k: (v if isinstance(v, (int, float, str, bool)) and v is not None else str(v))
                  for k, v in flatten(self.config).items() if not k.startswith(("output.", "tracking."))}
        experiment, start, _ = hparams(values, {"test_accuracy": 0.0, "test_loss": 0.0})
        self.writer.file_writer.add_summary(experiment)
        self.writer.file_writer.add_summary(start)

    def _log_round(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def _log_summary(self, key: str, value) -> None:
        step = self.record.get("last_round") or 0
        self.writer.add_text(key, "```\n" + json.dumps(value, indent=1, default=str) + "\n```", step)
        self.writer.flush()

    def _finish(self, status: str) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
        from tensorboard.plugins.hparams.api_pb2 import Status
        from tensorboard.plugins.hparams.metadata import PLUGIN_DATA_VERSION, PLUGIN_NAME, SESSION_END_INFO_TAG
        from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo

        end = SessionEndInfo(status=Status.Value("STATUS_SUCCESS" if status == "completed" else "STATUS_FAILURE"))
        content = HParamsPluginData(session_end_info=end, version=PLUGIN_DATA_VERSION)
        meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=PLUGIN_NAME,
                                                                      content=content.SerializeToString()))
        self.writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=SESSION_END_INFO_TAG, metadata=meta)]))
        self.writer.add_text("status", status, self.record.get("last_round") or 0)
        self.writer.close()


def _wandb_id() -> str:
    """A new W&B run id, as wandb makes them (8 characters of [a-z0-9])."""
    import secrets
    import string

    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


class WandbTracker(Tracker):
    """Weights & Biases, offline by default (``tracking.mode``): the run is written to
    ``<results folder>/wandb/offline-run-*`` and uploaded later with ``wandb sync``. A resumed run reuses
    the run id (W&B merges the attempts when they are synced). Results files are copied into the run's
    files folder at the end."""

    backend = "wandb"

    def run_root(self) -> Path:
        return (Path(self.settings.dir).expanduser() if self.settings.dir else self.run_dir).absolute()

    def _open(self, data: Mapping, resume: dict | None) -> bool:
        import wandb

        root = self.run_root()
        root.mkdir(parents=True, exist_ok=True)
        run_id = resume["run_id"] if resume is not None else _wandb_id()
        settings = wandb.Settings(silent=True, console="off", x_disable_stats=True, disable_git=True,
                                  save_code=False, disable_job_creation=True, x_save_requirements=False)
        tag_values = [f"{k}:{v}"[:64] for k, v in tags(self.config, self.settings, self.run_dir).items()
                      if k != "results_dir"]
        self.run = wandb.init(project=self.settings.experiment or DEFAULT_EXPERIMENT, group=self.settings.group,
                              name=self.run_name, id=run_id, dir=str(root), mode=self.settings.mode,
                              config=json.loads(json.dumps(self.config, default=str)), tags=tag_values, resume="allow", settings=settings,
                              job_type="sweep-job" if self.settings.group else "run", reinit="create_new")
        if data.get("run_id") is not None:
            self.run.summary["flwr_run_id"] = str(data["run_id"])
        self.record.update(run_id=self.run.id, dir=str(Path(self.run.dir).parent), project=self.run.project,
                           mode=self.settings.mode)
        return resume is not None

    def _log_round(self, step: int, values: dict[str, float]) -> None:
        self.run.log({k: (v if math.isfinite(v) else str(v)) for k, v in values.items()}, step=step)

    def _log_summary(self, key: str, value) -> None:
        self.run.summary[key] = json.loads(json.dumps(value, default=str))  # W&B wants string keys ({0: 100} -> {"0": 100})

    def _finish(self, status: str) -> None:
        if self.settings.artifacts:
            files = Path(self.run.dir)
            for path in artifact_files(self.run_dir):
                shutil.copy2(path, files / path.name)  # copies: an offline run syncs later, from wherever it is
        self.run.summary["status"] = status
        self.run.finish(exit_code=0 if status == "completed" else 1)
