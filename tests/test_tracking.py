"""Experiment tracking (server_app/tracking/) read back with the libraries' own readers, and the
progress output of long work (generation/progress.py).

Most tests drive `RunReport` directly, as the ServerApp does (no simulation): MLflow's client,
TensorBoard's EventAccumulator and the W&B offline run file must hold every round of metrics.json.
One slow test runs a real two-job sweep with tracking=mlflow.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conf import CONF_DIR
from generation import progress
from server_app import tracking
from server_app.config import ConfigError, load_config
from server_app.results import METRICS, RUN_CONFIG, RunReport, eta_seconds, flatten

REPO = Path(__file__).resolve().parents[1]

ROWS = [  # metrics.json rows as the ServerApp writes them: numbers, a bool, a dict, a list, a string
    {"round": 0, "test_accuracy": 0.1, "test_loss": 2.3, "wall_seconds": 0.4},
    *({"round": r, "test_accuracy": 0.1 + 0.2 * r, "test_loss": 2.0 / r, "train_loss": 1.5 / r,
       "clients_trained": 3, "round_accepted": r != 2, "round_failure": "update too large" if r == 2 else None,
       "kappa_fl": 0.7, "kappa_aug": 0.3, "kappa_probe": {"0.0": 1.1, "0.1": 0.9 + r / 100},
       "augmented_class_weights": [0.25, 0.75], "round_seconds": 2.0 + r, "wall_seconds": 3.0 * r}
      for r in (1, 2, 3)),
]
GENERATION = {"plan": {0: 3, 1: 4}, "images_requested": 7, "images_synthesized": 7, "cache_hit": False}


def _clean(row: dict) -> dict:
    return {k: v for k, v in row.items() if v is not None}


def _config(make_config, backend: str, run_dir: Path, *overrides: str) -> dict:
    cfg = make_config(f"tracking={backend}", f"output.dir={run_dir}", *overrides)
    return OmegaConf.to_container(cfg, resolve=True)


def _run(config: dict, run_dir: Path, rows=ROWS, status="completed", previous_rows=None) -> RunReport:
    """What the ServerApp does with a report: track, one row per round, the summaries, finish."""
    report = RunReport(run_dir, config, rounds=previous_rows, run_id=42)
    report.track(tracking.build(config, run_dir))
    for row in rows:
        report.add_round(_clean(row))
        report.set("generation", GENERATION)
    if status == "failed":
        report.set("error", "RuntimeError: round 3 failed")
    report.finish(status)
    return report


def _expected_curves(run_dir: Path) -> dict[str, dict[int, float]]:
    """Every numeric column of metrics.json's rows, by step, as the tracker must hold it."""
    curves: dict[str, dict[int, float]] = {}
    for row in json.loads((run_dir / METRICS).read_text())["rounds"]:
        for key, value in tracking.numeric_columns(row).items():
            curves.setdefault(key, {})[row["round"]] = value
    return curves


def test_numeric_columns_flatten_dicts_and_lists_and_leave_out_text():
    values = tracking.numeric_columns(_clean(ROWS[2]))
    assert values["round_accepted"] == 0.0 and values["clients_trained"] == 3.0
    assert values["kappa_probe.0.1"] == pytest.approx(0.92) and values["augmented_class_weights.1"] == 0.75
    assert "round" not in values and "round_failure" not in values


def test_eta_is_the_median_round_time_times_the_rounds_left():
    rows = [{"round": 1, "round_seconds": 40.0}, {"round": 2, "round_seconds": 10.0}, {"round": 3, "round_seconds": 12.0}]
    assert eta_seconds(rows[:1], 5) == 160.0  # only round 1 (which also generates) so far
    assert eta_seconds(rows, 5) == 22.0  # later rounds only: median(10, 12) * 2
    assert eta_seconds(rows, 3) == 0.0 and eta_seconds([], 5) is None


# -- MLflow ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module's MLflow tests (creating one costs seconds)."""
    return tmp_path_factory.mktemp("mlflow")


def _mlflow(store: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")


def _mlflow_curves(client, run_id: str) -> dict[str, dict[int, float]]:
    run = client.get_run(run_id)
    curves = {}
    for key in run.data.metrics:
        history = client.get_metric_history(run_id, key)
        steps = [m.step for m in history]
        assert len(steps) == len(set(steps)), f"{key}: a step logged twice: {steps}"
        curves[key] = {m.step: m.value for m in history}
    return curves


def test_mlflow_holds_every_round_of_metrics_json_the_config_tags_summary_and_files(make_config, store):
    run_dir = store / "runs" / "one"
    config = _config(make_config, "mlflow", run_dir, "tracking.experiment=complete")
    report = _run(config, run_dir)
    record = json.loads((run_dir / METRICS).read_text())["tracking"]
    assert record["backend"] == "mlflow" and record["last_round"] == 3 and record["status"] == "completed"
    assert record["uri"] == f"sqlite:///{store / 'runs' / 'mlflow.db'}"  # default: beside the results folder
    client = _mlflow(store / "runs")
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "one"
    assert _mlflow_curves(client, run.info.run_id) == _expected_curves(run_dir)
    assert _mlflow_curves(client, run.info.run_id)["test_accuracy"] == {r["round"]: r["test_accuracy"] for r in ROWS}
    flat = flatten(report.data["config"])
    assert run.data.params["client.lr"] == str(flat["client.lr"]) and len(run.data.params) == len(flat)
    assert run.data.params["mix.candidates"] == json.dumps(list(flat["mix.candidates"]))
    tags = run.data.tags
    assert (tags["strategy"], tags["dataset"], tags["alpha"], tags["seed"], tags["generator"]) == \
           ("genfl", "digits", "0.3", "0", "class_conditional")
    assert tags["flwr_run_id"] == "42" and tags["generation.images_requested"] == "7"
    files = {f.path for f in client.list_artifacts(run.info.run_id, "results")}
    assert {"results/metrics.json", "results/metrics.csv", "results/accuracy.png"} <= files
    assert "generation.json" in {f.path for f in client.list_artifacts(run.info.run_id)}
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "complete" and experiment.artifact_location.startswith((store / "runs").as_uri())


def test_a_failed_run_is_marked_failed_in_mlflow(make_config, store):
    run_dir = store / "failed"
    config = _config(make_config, "mlflow", run_dir, f"tracking.root={store}", "tracking.experiment=failures")
    _run(config, run_dir, rows=ROWS[:3], status="failed")
    record = json.loads((run_dir / METRICS).read_text())["tracking"]
    run = _mlflow(store).get_run(record["run_id"])
    assert run.info.status == "FAILED" and run.data.tags["error"] == "RuntimeError: round 3 failed"
    assert run.data.metrics["test_accuracy"] == ROWS[2]["test_accuracy"]


def test_a_resumed_run_logs_into_the_same_mlflow_run_without_repeating_rounds(make_config, store):
    run_dir = store / "resumed"
    config = _config(make_config, "mlflow", run_dir, f"tracking.root={store}", "tracking.experiment=resumes")
    first = RunReport(run_dir, config, run_id=1)
    first.track(tracking.build(config, run_dir))
    for row in ROWS[:3]:  # rounds 0-2 logged; then the process is killed (no finish): the checkpoint has round 1
        first.add_round(_clean(row))
    resumed_config = {**config, "output": {**config["output"], "resume": True}}
    _run(resumed_config, run_dir, rows=ROWS[2:], previous_rows=[_clean(r) for r in ROWS[:2]])
    client = _mlflow(store)
    experiment = client.get_experiment_by_name("resumes")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert _mlflow_curves(client, runs[0].info.run_id) == _expected_curves(run_dir)  # each round once
    record = json.loads((run_dir / METRICS).read_text())["tracking"]
    assert record["run_id"] == runs[0].info.run_id and record["attempts"] == 2
    assert runs[0].data.tags["resumed_after_round"] == "1" and runs[0].data.tags["flwr_run_id"] == "42"


def test_a_fresh_run_in_a_reused_folder_is_a_new_tracked_run(make_config, store):
    run_dir = store / "reused"
    config = _config(make_config, "mlflow", run_dir, f"tracking.root={store}", "tracking.experiment=reused")
    first = _run(config, run_dir, rows=ROWS[:2]).data["tracking"]["run_id"]
    second = _run(config, run_dir, rows=ROWS[:2]).data["tracking"]["run_id"]
    assert first != second


# -- TensorBoard ----------------------------------------------------------------------------------

def _tensorboard_curves(folder: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    curves = {}
    for tag in events.Tags()["scalars"]:
        points = events.Scalars(tag)
        steps = [p.step for p in points]
        assert len(steps) == len(set(steps)), f"{tag}: a step logged twice: {steps}"
        curves[tag] = {p.step: p.value for p in points}
    return curves


def _approx(curves: dict) -> dict:  # TensorBoard keeps scalars as float32
    return {k: {s: pytest.approx(v, rel=1e-6) for s, v in c.items()} for k, c in curves.items()}


def test_tensorboard_event_files_in_the_run_folder_hold_the_same_curves(make_config, tmp_path):
    run_dir = tmp_path / "run"
    _run(_config(make_config, "tensorboard", run_dir), run_dir, status="failed")
    folder = run_dir / "tensorboard"
    assert _tensorboard_curves(folder) == _approx(_expected_curves(run_dir))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    assert {"config/text_summary", "generation/text_summary", "status/text_summary"} <= set(events.Tags()["tensors"])
    assert b"failed" in events.Tensors("status/text_summary")[-1].tensor_proto.string_val[0]
    assert json.loads((run_dir / METRICS).read_text())["tracking"]["dir"] == str(folder)


def _killed_after_round_2_then_resumed(config: dict, run_dir: Path, kill) -> None:
    """A run that logged rounds 0-2 and was killed (``kill(tracker)``: what its files amount to),
    then resumed from its round-1 checkpoint: rounds 2 onward are logged again by the resumed run."""
    first = RunReport(run_dir, config, run_id=1)
    first.track(tracking.build(config, run_dir))
    for row in ROWS[:3]:
        first.add_round(_clean(row))
    kill(first.tracker)
    _run(config, run_dir, rows=ROWS[2:], previous_rows=[_clean(r) for r in ROWS[:2]])


def test_a_resumed_run_continues_its_tensorboard_curves_without_repeats(make_config, tmp_path):
    run_dir = tmp_path / "run"
    # the killed process's events reached the disk
    _killed_after_round_2_then_resumed(_config(make_config, "tensorboard", run_dir), run_dir,
                                       lambda tracker: tracker.writer.close())
    assert _tensorboard_curves(run_dir / "tensorboard") == _approx(_expected_curves(run_dir))


# -- Weights & Biases (offline) -------------------------------------------------------------------

@pytest.fixture
def wandb_home(tmp_path, monkeypatch):
    """W&B's own folders (cache, config, data) in the test's tmp; its service stopped afterwards."""
    for key in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(key, str(tmp_path / "wandb-home" / key.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    yield
    import wandb

    wandb.teardown()


def _wandb_records(path: Path) -> list:
    """The records of an offline run file (``run-<id>.wandb``), parsed with wandb's own protobuf schema.
    The file is a LevelDB-style log: a 7-byte header (":W&B", magic, version), then 32 KiB blocks of
    records, each with a 7-byte header (CRC32C, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the rest of a block is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        payload, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            break
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _wandb_run(run_dir: Path) -> tuple[list, dict[str, dict[int, float]]]:
    """(records of every offline attempt of the run, in order; the curves they log)."""
    records = []
    for path in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        records += _wandb_records(path)
    curves: dict[str, dict[int, float]] = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item}
            step = record.history.step.num
            for key, value in items.items():
                if not key.startswith("_"):
                    assert step not in curves.get(key, {}), f"{key}: step {step} logged twice"
                    curves.setdefault(key, {})[step] = value
    return records, curves


def test_the_wandb_offline_run_holds_every_round_and_the_results_files(make_config, tmp_path, wandb_home):
    run_dir = tmp_path / "run"
    _run(_config(make_config, "wandb", run_dir, "tracking.group=sweep-a"), run_dir, status="failed")
    records, curves = _wandb_run(run_dir)
    assert curves == _expected_curves(run_dir)
    runs = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert runs[0].project == "genfl" and runs[0].run_group == "sweep-a" and runs[0].display_name == "run"
    assert {"strategy:genfl", "dataset:digits", "alpha:0.3", "seed:0", "generator:class_conditional"} <= set(runs[0].tags)
    assert [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"] == [1]  # failed
    record = json.loads((run_dir / METRICS).read_text())["tracking"]
    assert record["dir"] == str(run_dir / "wandb")
    files = Path(record["run_folder"]) / "files"
    assert json.loads((files / METRICS).read_text())["status"] == "failed" and not (files / METRICS).is_symlink()
    config = {i.key: json.loads(i.value_json) for i in runs[0].config.update}
    assert config["strategy"]["name"] == "genfl" and config["client"]["lr"] == 0.02


def test_a_resumed_run_is_the_same_wandb_run(make_config, tmp_path, wandb_home):
    run_dir = tmp_path / "run"
    # what a killed process's run file amounts to
    _killed_after_round_2_then_resumed(_config(make_config, "wandb", run_dir), run_dir,
                                       lambda tracker: tracker.run.finish(exit_code=1))
    records, curves = _wandb_run(run_dir)
    assert curves == _expected_curves(run_dir)
    assert len({r.run.run_id for r in records if r.WhichOneof("record_type") == "run"}) == 1
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 2  # two attempts, one run id: `wandb sync` merges


# -- one rule for every backend: when a resumed run continues its tracked run --------------------

KILLED = {"mlflow": lambda tracker: None, "tensorboard": lambda tracker: tracker.writer.close(),
          "wandb": lambda tracker: tracker.run.finish(exit_code=1)}
STORE_SETTING = {"mlflow": "root", "tensorboard": "dir", "wandb": "dir"}


def _remove_tracked_run(record: dict) -> None:
    """What deleting the tracked run from its store amounts to, with each backend's own means."""
    if record["backend"] == "mlflow":
        from mlflow import MlflowClient

        MlflowClient(tracking_uri=record["uri"]).delete_run(record["run_id"])
    elif record["backend"] == "tensorboard":
        for path in Path(record["dir"]).glob("events.out.tfevents.*"):
            path.unlink()
    else:
        for path in Path(record["dir"]).glob(f"*run-*-{record['run_id']}"):
            shutil.rmtree(path)


@pytest.mark.parametrize("backend", ["mlflow", "tensorboard", "wandb"])
def test_one_rule_for_every_backend_a_resumed_run_continues_only_a_tracked_run_its_store_still_holds(
        backend, make_config, tmp_path, store, wandb_home, caplog):
    """The rule (server_app/tracking/base.py): the interrupted attempt's record names this backend, this
    store, and a run the store still holds. Before it, W&B continued a run in another folder and
    TensorBoard and MLflow continued a run deleted from their store."""
    run_dir = tmp_path / "run"
    mlflow = [f"tracking.root={store}", "tracking.experiment=rule"] if backend == "mlflow" else []  # a store made once
    config = _config(make_config, backend, run_dir, *mlflow)
    resumed = {"rows": ROWS[2:], "previous_rows": [_clean(r) for r in ROWS[:2]]}

    def record() -> dict:
        return json.loads((run_dir / METRICS).read_text())["tracking"]

    _killed_after_round_2_then_resumed(config, run_dir, KILLED[backend])
    first = record()
    assert first["attempts"] == 2 and first["last_round"] == 3  # same backend, same store, the run is there
    store_key = "uri" if backend == "mlflow" else "dir"

    _remove_tracked_run(first)  # the run is gone from its store: a new tracked run
    _run(config, run_dir, **resumed)
    anew = record()
    assert "attempts" not in anew and anew[store_key] == first[store_key]
    if backend != "tensorboard":  # TensorBoard's run is its folder (its id is the run's name)
        assert anew["run_id"] != first["run_id"]
    assert f"is no longer in {first[store_key]}; starting a new run" in caplog.text

    elsewhere = {**config, "tracking": {**config["tracking"], STORE_SETTING[backend]: str(tmp_path / "elsewhere")}}
    _run(elsewhere, run_dir, **resumed)  # the store moved: a new tracked run there
    moved = record()
    assert "attempts" not in moved and moved[store_key].startswith(("sqlite:///" if backend == "mlflow" else "")
                                                                   + str(tmp_path / "elsewhere"))
    assert f"this attempt's store is {moved[store_key]}; starting a new run" in caplog.text

    _run(elsewhere, run_dir, **resumed)  # and that one is continued
    assert record()["attempts"] == 2 and record()["run_id"] == moved["run_id"]


# -- the settings each backend has (conf/tracking/) -----------------------------------------------

def test_each_backend_has_the_shared_settings_once_and_only_its_own():
    own = {"none": set(), "mlflow": {"experiment", "uri", "root", "artifacts"}, "tensorboard": {"dir"},
           "wandb": {"experiment", "dir", "mode", "artifacts"}}
    shared = {"group", "run_name", "tags"}
    for backend, keys in own.items():
        node = OmegaConf.to_container(load_config([f"tracking={backend}"]).tracking)
        assert set(node) == {"backend", *keys, *(shared if keys else ())}, backend
        assert tracking.keys(backend) == set(node)
    lines = [line for path in (CONF_DIR / "tracking").glob("*.yaml") for line in path.read_text().splitlines()]
    assert [sum(line.startswith(f"{key}:") for line in lines) for key in sorted(shared)] == [1, 1, 1]


@pytest.mark.parametrize("overrides, message", [
    (["tracking=tensorboard", "tracking.mode=online"],
     "tracking.mode: tracking=tensorboard has no such setting (tracking=wandb has it: choose that or leave it out)"),
    (["tracking=wandb", "tracking.root=/tmp/store"],
     "tracking.root: tracking=wandb has no such setting (tracking=mlflow has it: choose that or leave it out)"),
    (["tracking.group=sweep-a"], "tracking.group: tracking=none has no such setting "
                                 "(tracking=mlflow|tensorboard|wandb have it: choose one or leave it out)"),
    (["tracking=tensorboard", "+tracking.experiment=x"], "tracking.experiment: tracking=tensorboard has no such "
                                                         "setting (tracking=mlflow|wandb have it: choose one or leave it out)"),
    (["tracking=mlflow", "+tracking.colour=red"], "tracking.colour: no such setting of tracking=mlflow"),
])
def test_an_old_command_line_setting_another_backends_key_fails_in_one_line_naming_it(overrides, message):
    with pytest.raises(ConfigError) as refused:
        load_config(overrides)
    assert str(refused.value) == message


def test_an_older_sweep_jobs_saved_tracking_settings_its_backend_lacks_do_not_stop_its_resume(tmp_path):
    """genfl-sweep gave every job tracking.group and tracking.root, also with tracking=none: genfl-run
    --resume drops those saved overrides (they were never used) and keeps the ones the backend has."""
    from genfl_cli.flwr_runs import quoted
    from genfl_cli.run import resumed_command
    from server_app.checkpoint import checkpoint_path

    sweep = tmp_path / "sweep"
    for name, backend in (("seed=0", []), ("seed=1", ["tracking=wandb"])):
        job = sweep / name
        saved = [name, *backend, f"tracking.group={quoted(sweep)}", f"tracking.root={quoted(tmp_path / 'store')}",
                 f"output.dir={quoted(job)}"]
        checkpoint_path(job).parent.mkdir(parents=True)
        checkpoint_path(job).write_bytes(b"checkpoint")
        (job / RUN_CONFIG).write_text(f"overrides = {json.dumps(json.dumps(saved))}\n")
        cfg = load_config(resumed_command(["--resume", str(job)]))
        assert OmegaConf.to_container(cfg.tracking) == OmegaConf.to_container(
            load_config([*backend, *([f"tracking.group={quoted(sweep)}"] if backend else [])]).tracking)


# -- settings that cannot work --------------------------------------------------------------------

@pytest.mark.parametrize("backend, override, key", [
    ("mlflow", "tracking.root={file}", "tracking.root"),
    ("mlflow", "tracking.uri=sqlite:///{file}/mlflow.db", "tracking.uri"),
    ("mlflow", "tracking.uri=file://{file}", "tracking.uri"),
    ("tensorboard", "tracking.dir={file}/events", "tracking.dir"),
    ("wandb", "tracking.dir={file}", "tracking.dir"),
    ("wandb", "tracking.mode=sometimes", "tracking.mode"),
])
def test_settings_that_cannot_work_are_one_line_naming_the_key(make_config, tmp_path, backend, override, key):
    blocker = tmp_path / "a-file"  # a file where a folder must be: unwritable even for root
    blocker.write_text("")
    setting, value = override.format(file=blocker).split("=", 1)
    config = _config(make_config, backend, tmp_path / "run")
    config["tracking"][setting.split(".", 1)[1]] = value
    why = tracking.problem(config)
    assert why is not None and why.startswith(f"{key}: ") and "\n" not in why
    with pytest.raises(tracking.TrackingError) as error:  # what the ServerApp would meet
        tracking.build(config, tmp_path / "run")
    assert str(error.value) == why
    with pytest.raises(ConfigError) as refused:  # but the config check already refuses it: exit 2 before anything starts
        make_config(f"tracking={backend}", f"output.dir={tmp_path / 'run'}", override.format(file=blocker))
    assert str(refused.value) == why


def test_a_missing_library_names_the_backend_and_the_install(make_config, tmp_path, monkeypatch):
    config = _config(make_config, "wandb", tmp_path / "run")
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    assert tracking.problem(config).startswith('tracking=wandb: the wandb package is not installed here')
    assert 'pip install -e ".[tracking]"' in tracking.problem(config)


def test_a_backend_that_fails_to_start_fails_before_round_1_naming_the_setting(make_config, tmp_path):
    # Passes the config-time check (a plausible server URI) but cannot start: nothing listens there.
    run_dir = tmp_path / "run"
    config = _config(make_config, "mlflow", run_dir, "tracking.uri=http://127.0.0.1:9")
    report = RunReport(run_dir, config, run_id=1)
    with pytest.raises(tracking.TrackingError) as error:
        report.track(tracking.build(config, run_dir))
    assert str(error.value).startswith("tracking.uri: mlflow could not start (") and "\n" not in str(error.value)
    assert report.tracker is None and report.data["rounds"] == []


def test_a_logging_error_mid_run_warns_and_stops_tracking_but_not_the_run(make_config, tmp_path, caplog):
    run_dir = tmp_path / "run"
    config = _config(make_config, "tensorboard", run_dir)
    report = RunReport(run_dir, config, run_id=1)
    report.track(tracking.build(config, run_dir))
    report.tracker.writer.add_scalar = lambda *a, **k: (_ for _ in ()).throw(OSError("disk full"))
    report.add_round(_clean(ROWS[1]))
    report.add_round(_clean(ROWS[2]))
    report.finish("completed")
    data = json.loads((run_dir / METRICS).read_text())
    assert data["status"] == "completed" and len(data["rounds"]) == 2
    assert data["tracking"]["error"] == "logging round 1: OSError: disk full"
    assert "tracking (tensorboard) stopped while logging round 1: OSError: disk full" in caplog.text


def test_a_sweep_refuses_bad_tracking_settings_before_the_first_job(tmp_path, capsys):
    from server_app.grid import config_errors

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    errors = config_errors([["tracking=mlflow", f"tracking.root={blocker}", "seed=0"], ["tracking=none", "seed=1"]])
    assert errors == [f"job [tracking=mlflow tracking.root={blocker} seed=0]: tracking.root: cannot write to "
                      f"{blocker}: {blocker} is a file, not a folder"]


def test_a_sweep_job_says_which_of_how_many_it_is_with_skipped_continued_and_eta(tmp_path):
    from genfl_cli.sweep import Position
    from server_app.results import JOB_RECORD

    for name, record in {"a": {"skipped": True}, "b": {"resumed": True, "seconds": 100.0}, "c": {"seconds": 300.0},
                         "old": {"seconds": 5.0, "invocation": "earlier"}}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / JOB_RECORD).write_text(json.dumps({"invocation": "now", **record}))
    position = Position(number=4, total=6, sweep_dir=tmp_path, invocation="now", sequential=True,
                        tracking=tracking.keys("mlflow"))
    assert position.line(["seed=1"], "running") == \
        "job 4 of 6 [seed=1]: running (so far: 1 skipped, 1 continued; ETA 0:10:00 for 3 job(s) at 0:03:20 each)"
    position.sequential = False  # jobs in parallel: no ETA from the mean job time
    assert position.line(["seed=1"], "running") == "job 4 of 6 [seed=1]: running (so far: 1 skipped, 1 continued)"
    assert position.tracking_overrides(["seed=1"]) == [f"tracking.group='{tmp_path}'", f"tracking.root='{tmp_path}'"]
    assert position.tracking_overrides(["tracking.group=mine", "tracking.uri=http://h:5000"]) == []
    position.tracking = tracking.keys("wandb")  # a group, no store
    assert position.tracking_overrides(["seed=1"]) == [f"tracking.group='{tmp_path}'"]
    position.tracking = tracking.keys("none")  # nothing to set: tracking=none has neither setting
    assert position.tracking_overrides(["seed=1"]) == []


def test_trackers_copies_of_results_files_are_not_taken_for_runs(tmp_path, capsys):
    from genfl_cli.sweep import summarize
    from server_app.results import JOB_RECORD, results_files

    job = tmp_path / "seed=0"
    copies = [tmp_path / "mlartifacts" / "1" / "abc" / "artifacts" / "results", job / "wandb" / "offline-run-x" / "files"]
    for folder in (job, *copies):
        folder.mkdir(parents=True)
        (folder / METRICS).write_text("{}")
    (job / JOB_RECORD).write_text(json.dumps({"overrides": ["seed=0"], "exit_code": 0}))
    copies[0].joinpath(JOB_RECORD).write_text(json.dumps({"overrides": ["seed=0"], "status": "running"}))
    assert results_files(tmp_path, METRICS) == [job / METRICS]
    assert summarize(tmp_path, [["seed=0"]]) == 0 and "1 of 1 job(s) completed" in capsys.readouterr().out


def test_the_default_run_tracks_nothing_and_needs_no_tracking_library(make_config, tmp_path):
    config = _config(make_config, "none", tmp_path / "run")
    assert config["tracking"]["backend"] == "none" and tracking.build(config, tmp_path / "run") is None
    code = ("import sys, server_app.app, server_app.results, genfl_cli.sweep, generation.class_conditional; "
            "print(sorted(m for m in ('mlflow', 'wandb', 'tensorboard') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "[]", out.stderr[-2000:]


# -- progress ---------------------------------------------------------------------------------------

def test_progress_off_a_terminal_is_a_line_per_interval_with_rate_and_eta(monkeypatch, capsys):
    monkeypatch.setenv("GENFL_PROGRESS", "auto")
    monkeypatch.setenv("GENFL_PROGRESS_INTERVAL", "0")
    with progress.Progress(10, "generation", "image", inner="class") as bar:
        assert bar.mode == "lines"  # pytest's stderr is not a terminal
        bar.start_part("class 3", 10)
        bar.update(4)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("generation: 4/10 images (40%), class 3 4/10, ") and "images/s" in lines[0]
    assert "ETA " in lines[0] and lines[-1].startswith("generation: 4/10 images")
    monkeypatch.setenv("GENFL_PROGRESS_INTERVAL", "60")
    with progress.Progress(10, "generation", "image") as bar:  # short work says nothing
        bar.update(10)
    assert capsys.readouterr().err == ""


def test_progress_on_a_terminal_is_a_tqdm_bar_per_class_and_overall(monkeypatch):
    stream = io.StringIO()
    stream.isatty = lambda: True
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.delenv("GENFL_PROGRESS", raising=False)
    with progress.Progress(20, "generation", "image", inner="class") as bar:
        assert bar.mode == "bar"
        for c in (0, 1):
            bar.start_part(f"class {c}", 10)
            bar.update(10)
    text = stream.getvalue()
    assert "generation: 100%" in text and "20/20" in text and "image/s" in text and "  class 0:" in text


def test_progress_goes_to_the_log_in_the_server_app(monkeypatch):
    lines = []
    monkeypatch.setenv("GENFL_PROGRESS_INTERVAL", "0")
    monkeypatch.delenv("GENFL_PROGRESS", raising=False)
    progress.use_log(lines.append)
    try:
        with progress.Progress(5, "pretrain generator", "step") as bar:
            bar.update(5)
    finally:
        progress.use_log(None)
    assert lines and lines[0].startswith("pretrain generator: 5/5 steps (100%), ")
    assert progress.duration(3725) == "1:02:05" and progress.duration(None) == "?"


_OPEN_AT_ONCE = """
import sys, time
from pathlib import Path
import mlflow  # imported before the barrier: the processes meet where the store is created
from server_app import tracking
root, number = Path(sys.argv[1]), int(sys.argv[2])
config = {"tracking": {"backend": "mlflow", "root": str(root), "group": "parallel", "artifacts": False}, "seed": number}
tracker = tracking.build(config, root / f"job{number}")
(root / f"ready{number}").touch()
while not (root / "go").exists():
    time.sleep(0.005)
tracker.start({"run_id": number})
tracker.finish("completed")
"""


def test_three_jobs_opening_one_new_mlflow_store_at_once_all_start(tmp_path):
    """Issue 26, item 7: parallel sweep jobs (joblib launcher) share the sweep's new SQLite store; MLflow
    creates its tables and migrates them without a lock, so most of them failed to start ("table
    _alembic_tmp_metrics already exists"). Three real processes open it at the same moment."""
    jobs = [subprocess.Popen([sys.executable, "-c", _OPEN_AT_ONCE, str(tmp_path), str(n)], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for n in range(3)]
    try:
        while len(list(tmp_path.glob("ready*"))) < 3 and all(job.poll() is None for job in jobs):
            time.sleep(0.02)
        (tmp_path / "go").touch()
        outputs = [job.communicate(timeout=300)[0] for job in jobs]
    finally:
        for job in jobs:
            job.kill()
    failed = [out[-600:] for job, out in zip(jobs, outputs) if job.returncode != 0]
    assert failed == []
    client = _mlflow(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("parallel").experiment_id])
    assert sorted(r.data.tags["flwr_run_id"] for r in runs) == ["0", "1", "2"]
    assert {r.info.status for r in runs} == {"FINISHED"}


# -- a real sweep ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_two_job_sweep_is_one_mlflow_experiment_with_each_jobs_rounds(tmp_path):
    from tests.sim import assert_nothing_left_running

    sweep_dir = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-m", "genfl_cli.run", "-m", "strategy=base_only", "federation.num_clients=2",
                           "num_rounds=2", "seed=0,1", "tracking=mlflow", f"hydra.sweep.dir={sweep_dir}"],
                          cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "job 1 of 2 [" in output and "job 2 of 2 [" in output and "(so far: 0 skipped, 0 continued" in output
    client = _mlflow(sweep_dir)
    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    assert [e.name for e in experiments] == [str(sweep_dir)]  # the sweep's name (its folder, outside the cwd)
    runs = client.search_runs([experiments[0].experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    for job in sorted(p for p in sweep_dir.iterdir() if (p / METRICS).is_file()):
        metrics = json.loads((job / METRICS).read_text())
        run = next(r for r in runs if r.info.run_id == metrics["tracking"]["run_id"])
        accuracy = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "test_accuracy")}
        assert accuracy == {r["round"]: r["test_accuracy"] for r in metrics["rounds"]} and len(accuracy) == 3
        assert run.data.tags["sweep"] == str(sweep_dir) and run.data.tags["seed"] == str(metrics["config"]["seed"])
        assert_nothing_left_running(job)
