"""MLflow (``tracking=mlflow``): the config as parameters, every metrics.json column per round, tags, the
summaries and the results files as artifacts. Default store: ``sqlite:///<root>/mlflow.db`` with
artifacts in ``<root>/mlartifacts`` (MLflow 3 refuses its old file store by default; SQLite works
offline, in one file, and `mlflow ui` reads it), opened under a lock beside it (``mlflow.db.lock``)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from server_app.results import MLFLOW_ARTIFACTS, MLFLOW_STORE
from server_app.tracking.base import (DEFAULT_EXPERIMENT, STORE_LOCK_SUFFIX, Settings, Tracker, artifact_files,
                                      folder_problem, params, quiet, scalar_leaves, tags, unwritable)


class MLflowTracker(Tracker):
    """MLflow through `MlflowClient` (no global state)."""

    backend = package = "mlflow"
    STORE_KEY = "uri"
    BATCH = 100  # MLflow's log_batch takes at most 100 params / 1000 metrics per call

    @classmethod
    def check(cls, settings: Settings, run_dir: Path | None) -> str | None:
        if why := super().check(settings, run_dir):
            return why
        if not settings.uri:  # the default: beside the results folder
            return folder_problem("root", settings.root, Path(run_dir).parent if run_dir is not None else None)
        scheme = urlparse(str(settings.uri)).scheme
        if scheme in ("", "file"):
            return (f"tracking.uri: {settings.uri!r} is MLflow's file store, which MLflow 3 refuses (maintenance "
                    "mode); use sqlite:///<folder>/mlflow.db or a tracking server (http://host:5000)")
        if scheme == "sqlite":
            where = sqlite_path(str(settings.uri))
            if where is not None and (why := unwritable(where.parent)):
                return f"tracking.uri: cannot create {where}: {why}"
        return None

    def _setting(self) -> str:
        return "tracking.uri" if self.settings.uri else "tracking.root"

    def store(self) -> tuple[str, str | None]:
        """(tracking URI, artifact location for a new experiment or None for the server's default)."""
        if self.settings.uri:
            uri = str(self.settings.uri)
            db = sqlite_path(uri) if uri.startswith("sqlite:") else None
            return uri, (db.parent / MLFLOW_ARTIFACTS).absolute().as_uri() if db is not None else None
        root = Path(self.settings.root).expanduser() if self.settings.root else self.run_dir.parent
        root = root.absolute()
        return f"sqlite:///{root / MLFLOW_STORE}", (root / MLFLOW_ARTIFACTS).as_uri()

    def where(self) -> str:
        return self.store()[0]

    def client(self):
        """The store's client, opened once: parallel sweep jobs share one new store, so one creates its
        tables while the others wait (`_creating`)."""
        if getattr(self, "_client", None) is None:
            from mlflow import MlflowClient

            quiet()
            with _creating(self.where()):
                client = MlflowClient(tracking_uri=self.where())
                client.search_experiments(max_results=1)  # opens the store: its tables and schema migrations
            self._client = client
        return self._client

    def holds(self, run_id: str) -> bool:
        try:
            run = self.client().get_run(run_id)
        except Exception:  # noqa: BLE001  not there (another store, a deleted experiment's run purged)
            return False
        return run.info.lifecycle_stage != "deleted"

    def _starting(self):
        return _few_retries()

    def _open(self, data: Mapping, run_id: str | None) -> None:
        from mlflow.entities import Param

        client = self.client()
        if run_id is not None:
            client.update_run(run_id, status="RUNNING")
            client.set_tag(run_id, "resumed_after_round", str(data.get("resumed_after_round")))
            run = client.get_run(run_id)
        else:
            name = self.settings.experiment or self.settings.group or DEFAULT_EXPERIMENT
            run = client.create_run(self._experiment(client, name, self.store()[1]), run_name=self.run_name,
                                    tags=tags(self.config, self.settings, self.run_dir))
            values = [Param(k[:250], v[:6000]) for k, v in params(self.config).items()]
            for i in range(0, len(values), self.BATCH):
                client.log_batch(run.info.run_id, params=values[i:i + self.BATCH])
        if data.get("run_id") is not None:
            client.set_tag(run.info.run_id, "flwr_run_id", str(data["run_id"]))
        self.run_id = run.info.run_id
        self.record.update(run_id=run.info.run_id, experiment_id=run.info.experiment_id,
                           experiment=client.get_experiment(run.info.experiment_id).name)

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

        now = int(time.time() * 1000)
        metrics = [Metric(_key(k), v, now, step) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):
            self.client().log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def _log_summary(self, key: str, value) -> None:
        from mlflow.entities import RunTag

        if isinstance(value, (dict, list)):
            self.client().log_dict(self.run_id, value, f"{key}.json")
        leaves = scalar_leaves(value, key)
        if leaves:
            self.client().log_batch(self.run_id, tags=[RunTag(_key(k), v) for k, v in list(leaves.items())[:100]])

    def _finish(self, status: str) -> None:
        if self.settings.artifacts:
            for path in artifact_files(self.run_dir):
                self.client().log_artifact(self.run_id, str(path), artifact_path="results")
        self.client().set_terminated(self.run_id, status="FINISHED" if status == "completed" else "FAILED")


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///relative.db`` or ``sqlite:////absolute.db`` URI (None: in memory)."""
    rest = uri[len("sqlite://"):].split("?", 1)[0]
    if not rest.startswith("/") or rest[1:] in ("", ":memory:"):
        return None
    return Path(rest[1:]).expanduser()


@contextmanager
def _creating(uri: str):
    """Hold an exclusive lock beside a SQLite store while it is opened. MLflow creates a new store's tables
    and runs its schema migrations without a lock, so jobs that open one new store at once (a sweep's
    jobs under the joblib launcher) fail with "table _alembic_tmp_metrics already exists" and the like."""
    db = sqlite_path(uri) if uri.startswith("sqlite:") else None
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
