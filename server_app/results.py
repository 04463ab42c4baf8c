"""A run's results folder: the one place that names its files, says which config keys and metric
columns do not change results, reads its JSON files and writes metrics.json/csv and accuracy.png.

metrics.json is rewritten atomically after every round, so a crashed run still leaves what it did.
The operator's commands (genfl_cli/) import these names; nothing here imports them.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

METRICS = "metrics.json"  # the resolved config, the run id, the status and one row per round
METRICS_CSV = "metrics.csv"
ACCURACY_PLOT = "accuracy.png"
SYNTHETIC_SAMPLES = "synthetic_samples.png"  # generated images per class (dropped ones marked), end of run
SUPERLINK_LOG = "superlink.log"  # genfl-run's private SuperLink
RUN_CONFIG = "run_config.toml"  # the overrides a run was started with (genfl-run --resume reads them)
FLWR_HOME = "flwr-home"  # genfl-run's private Flower home
CHECKPOINT_DIR = "checkpoint"
JOB_RECORD = "genfl_job.json"  # a sweep job's overrides, exit code and status
ERROR_FILE = "error.txt"  # the traceback of the exception that failed a sweep job
MANIFEST = "sweep.json"  # in a sweep folder: the jobs of its last invocation
TENSORBOARD_DIR = "tensorboard"  # tracking=tensorboard: the run's event files
WANDB_DIR = "wandb"  # tracking=wandb: the run's offline W&B runs (copies of the results files among them)
MLFLOW_STORE = "mlflow.db"  # tracking=mlflow: the local store beside the results (a run's or a sweep's folder)
MLFLOW_ARTIFACTS = "mlartifacts"  # and its artifacts (copies of the results files)
# Folders whose files are not runs' results, though some have the same names (trackers keep copies):
# whoever looks for metrics.json or genfl_job.json below a folder skips them (`results_files`).
NOT_RESULTS = (FLWR_HOME, WANDB_DIR, MLFLOW_ARTIFACTS)
# What one attempt of a run leaves in its folder.
RUN_FILES = (METRICS, METRICS_CSV, ACCURACY_PLOT, SYNTHETIC_SAMPLES, SUPERLINK_LOG, RUN_CONFIG, FLWR_HOME, CHECKPOINT_DIR,
             JOB_RECORD, ERROR_FILE, TENSORBOARD_DIR, WANDB_DIR)

# Config keys (prefixes of flattened keys) that say where or how fast a run ran, not what it computes:
# a report pools runs that differ only in these (and the seed); a resumed run may change them.
RESULT_NEUTRAL_KEYS = ("output.", "generation.cache_dir", "client.device", "server.device", "generator.device",
                       "dataset.root", "dataset.download", "federation.round_timeout", "federation.node_wait_timeout",
                       "federation.histogram_timeout", "server.eval_batch_size", "client.eval_batch_size",
                       "generator.batch_size", "client.threads", "server.threads", "federation.client_cpus",
                       "federation.client_gpus", "federation.simulation_cpus", "federation.ray_address", "server.overlap", "checkpoint.",
                       "tracking.")
# metrics.json columns that measure time (or whether the image cache was warm), not what was learnt.
TIMING_COLUMNS = ("wall_seconds", "round_seconds", "augmented_train_seconds", "generation_seconds", "images_synthesized")


class CorruptFileError(ValueError):
    """A JSON file that is there but does not read as an object: never taken for an absent one."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"{path}: {why}")
        self.path = path


def read_json(path: Path) -> dict:
    """The JSON object in ``path``, ``{}`` if there is no such file; `CorruptFileError` naming it otherwise."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise CorruptFileError(path, f"unreadable ({type(err).__name__}: {err})") from err
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise CorruptFileError(path, f"corrupt ({type(err).__name__}: {err})") from err
    if not isinstance(data, dict):
        raise CorruptFileError(path, f"corrupt (a JSON {type(data).__name__}, not an object)")
    return data


def results_files(root: Path, name: str) -> list[Path]:
    """Every ``name`` file (metrics.json, genfl_job.json, ...) below ``root`` that a run or sweep wrote,
    sorted: not the copies in Flower's home or in an experiment tracker's folders (`NOT_RESULTS`)."""
    return sorted(p for p in Path(root).rglob(name) if not set(p.relative_to(root).parts[:-1]) & set(NOT_RESULTS))


def flatten(config: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: how reports and checks name config keys."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value  # hashable
    return flat


def result_neutral(key: str) -> bool:
    return key.startswith(RESULT_NEUTRAL_KEYS)


def _previous_tracking(run_dir: Path) -> dict | None:
    """The ``tracking`` record of the metrics.json an earlier attempt left in ``run_dir`` (None if none
    or unreadable: the resumed run is then tracked as a new run)."""
    try:
        record = read_json(run_dir / METRICS).get("tracking")
    except CorruptFileError:
        return None
    return record if isinstance(record, dict) else None


def eta_seconds(rows: list[dict], num_rounds: int, one_time: dict[int, float] | None = None) -> float | None:
    """Seconds until round ``num_rounds`` ends, from per-round times only: each round's ``round_seconds``
    less the one-time work done in it (``one_time``: round -> seconds of the histogram survey, generation
    and the generator check, which a run's, or a resumed run's, first round also does), then the median of
    the last (up to) five times, times the rounds left. Round 1 of an earlier attempt (its one-time work
    unknown) is left out once there are other rounds. None before any timed round, 0 once the last is done."""
    if not rows:
        return None
    remaining = num_rounds - rows[-1].get("round", 0)
    if remaining <= 0:
        return 0.0
    one_time = one_time or {}
    timed = [(r["round"], max(0.0, r["round_seconds"] - one_time.get(r["round"], 0.0))) for r in rows
             if r.get("round", 0) >= 1 and r.get("round_seconds")]
    known = [seconds for number, seconds in timed if number > 1 or number in one_time]
    recent = (known or [seconds for _, seconds in timed])[-5:]
    if not recent:
        return None
    recent.sort()
    middle = len(recent) // 2
    median = recent[middle] if len(recent) % 2 else (recent[middle - 1] + recent[middle]) / 2
    return median * remaining


class RunReport:
    """``rounds`` continues a resumed run's table (from its checkpoint). ``run_id`` (the Flower run's)
    ties the file to one run: a reused or resumed folder can hold an older run's metrics.json.

    `track` attaches an experiment tracker (server_app/tracking.py): from then on every row, the
    summaries (generation, ...) and the final status and files go to it too; its record (backend,
    tracked run id, last round logged) is metrics.json's ``tracking``, which a resumed run reads to
    log into the same tracked run."""

    TRACKED = ("generation", "global_label_histogram", "synthetic_quality", "error")  # summaries a tracker gets

    def __init__(self, run_dir: Path, config: dict, rounds: list[dict] | None = None, run_id: int | None = None):
        self.run_dir = run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.tracker = None
        # A resumed run continues the tracked run of the attempt it resumes: read before metrics.json is rewritten.
        self.previous_tracking = _previous_tracking(run_dir) if rounds else None
        self.data = {"status": "running", "run_id": run_id, "config": config, "rounds": list(rounds or [])}
        if rounds:
            self.data["resumed_after_round"] = rounds[-1]["round"]
        self._write_json()

    def track(self, tracker) -> None:
        """Start ``tracker`` on this run and log what the report already holds (a resumed run's rounds
        that the tracked run lacks). Raises the tracker's error if its backend cannot start; the
        report is then left untracked."""
        self.data["tracking"] = tracker.start(self.data, previous=self.previous_tracking)
        self.tracker = tracker
        for row in self.data["rounds"]:
            tracker.log_round(row)
        for key in self.TRACKED:
            if key in self.data:
                tracker.log_summary(key, self.data[key])
        self._write_json()

    def set(self, key: str, value) -> None:
        self.data[key] = value
        if self.tracker is not None and key in self.TRACKED:
            self.tracker.log_summary(key, value)
        self._write_json()

    def add_round(self, row: dict) -> None:
        self.data["rounds"].append(row)
        if self.tracker is not None:
            self.tracker.log_round(row)
        self._write_json()

    def finish(self, status: str) -> None:
        """Write the final status, the CSV table and the accuracy curve; then end the tracked run
        with that status and the folder's files."""
        self.data["status"] = status
        self._write_json()
        rows = self.data["rounds"]
        if rows:
            with open(self.run_dir / METRICS_CSV, "w", newline="") as fh:
                columns = list(dict.fromkeys(k for row in rows for k in row))
                writer = csv.DictWriter(fh, fieldnames=columns)
                writer.writeheader()
                writer.writerows(rows)
            self._plot(rows)
        if self.tracker is not None:
            self.tracker.finish(status)
            self._write_json()  # the tracking record's final state

    def _plot(self, rows: list[dict]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["round"] for r in rows], [r["test_accuracy"] for r in rows], marker="o")
        cfg = self.data["config"]
        ax.set_title(f"{cfg['strategy']['name']} on {cfg['dataset']['name']}, alpha={cfg['partition']['alpha']}")
        ax.set_xlabel("round")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(self.run_dir / ACCURACY_PLOT, dpi=100)
        plt.close(fig)

    def _write_json(self) -> None:
        tmp = self.run_dir / f"{METRICS}.tmp"
        tmp.write_text(json.dumps(self.data, indent=2))
        os.replace(tmp, self.run_dir / METRICS)
