"""Weights & Biases (``tracking=wandb``), offline by default (``tracking.mode``): the run is written to
``<results folder>/wandb/offline-run-*`` and uploaded later with ``wandb sync``. A continued run reuses
the run id (W&B merges the attempts when they are synced). Results files are copied into the run's
files folder at the end."""

from __future__ import annotations

import json
import math
import secrets
import shutil
import string
from collections.abc import Mapping
from pathlib import Path

from server_app.results import WANDB_DIR
from server_app.tracking.base import DEFAULT_EXPERIMENT, Settings, Tracker, artifact_files, folder_problem, tags

MODES = ("offline", "online")


class WandbTracker(Tracker):
    """One W&B run per tracked run; its local folders (one per attempt) are in ``<tracking.dir>/wandb``."""

    backend = package = "wandb"

    @classmethod
    def check(cls, settings: Settings, run_dir: Path | None) -> str | None:
        if settings.mode not in MODES:
            return f"tracking.mode: must be {' or '.join(MODES)} (got {settings.mode!r})"
        return super().check(settings, run_dir) or folder_problem("dir", settings.dir, run_dir)

    def run_root(self) -> Path:
        """The folder wandb.init gets (it writes into its ``wandb/`` subfolder)."""
        return (Path(self.settings.dir).expanduser() if self.settings.dir else self.run_dir).absolute()

    def where(self) -> str:
        return str(self.run_root() / WANDB_DIR)

    def holds(self, run_id: str) -> bool:
        return any(p.is_dir() for p in Path(self.where()).glob(f"*run-*-{run_id}"))

    def _open(self, data: Mapping, run_id: str | None) -> None:
        import wandb

        root = self.run_root()
        root.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(silent=True, console="off", x_disable_stats=True, disable_git=True,
                                  save_code=False, disable_job_creation=True, x_save_requirements=False)
        tag_values = [f"{k}:{v}"[:64] for k, v in tags(self.config, self.settings, self.run_dir).items()
                      if k != "results_dir"]
        self.run = wandb.init(project=self.settings.experiment or DEFAULT_EXPERIMENT, group=self.settings.group,
                              name=self.run_name, id=run_id or _new_id(), dir=str(root), mode=self.settings.mode,
                              config=json.loads(json.dumps(self.config, default=str)), tags=tag_values,
                              resume="allow", settings=settings, reinit="create_new",
                              job_type="sweep-job" if self.settings.group else "run")
        if data.get("run_id") is not None:
            self.run.summary["flwr_run_id"] = str(data["run_id"])
        self.record.update(run_id=self.run.id, run_folder=str(Path(self.run.dir).parent), project=self.run.project,
                           mode=self.settings.mode)

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


def _new_id() -> str:
    """A new W&B run id, as wandb makes them (8 characters of [a-z0-9])."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
