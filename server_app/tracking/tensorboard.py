"""TensorBoard (``tracking=tensorboard``): event files in ``<results folder>/tensorboard`` (``tracking.dir``),
one scalar per metrics.json column (step = round), the config as text and as HParams (TensorBoard's
HPARAMS tab compares a sweep's runs), summaries as text. No artifacts: the results files are beside it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from server_app.results import TENSORBOARD_DIR, flatten
from server_app.tracking.base import Settings, Tracker, folder_problem, params, tags


class TensorBoardTracker(Tracker):
    """One folder of event files is one run: its id is the run's name."""

    backend = package = "tensorboard"

    @classmethod
    def check(cls, settings: Settings, run_dir: Path | None) -> str | None:
        return super().check(settings, run_dir) or folder_problem("dir", settings.dir, run_dir)

    def log_dir(self) -> Path:
        return (Path(self.settings.dir).expanduser() if self.settings.dir else self.run_dir / TENSORBOARD_DIR).absolute()

    def where(self) -> str:
        return str(self.log_dir())

    def holds(self, run_id: str) -> bool:
        return any(self.log_dir().glob("events.out.tfevents.*"))

    def _open(self, data: Mapping, run_id: str | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        folder = self.log_dir()
        folder.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(folder), flush_secs=30)
        if run_id is None:
            self._hparams()
            table = "\n".join(f"| {k} | {v} |" for k, v in params(self.config).items())
            self.writer.add_text("config", "| key | value |\n|---|---|\n" + table, 0)
            self.writer.add_text("tags", json.dumps(tags(self.config, self.settings, self.run_dir), indent=1), 0)
        self.writer.flush()
        self.record["run_id"] = self.run_name

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
