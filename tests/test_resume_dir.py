"""`genfl-run --resume DIR` continues DIR, wherever it now lies (issue 26, item 6).

The overrides a run saves (run_config.toml) pin the folder it first ran in (``output.dir``) and, for a
sweep job, the tracking store beside it (``tracking.root``). Resuming a copied or moved folder used to
write into the original's checkpoint and metrics.json, and a folder whose name holds '=' (every sweep
job's) was taken for an override. These tests build the command as genfl-run does and compose it with
the real conf/; one slow test in tests/test_interrupt.py resumes a real interrupted run's copy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from genfl_cli.flwr_runs import quoted, validated
from genfl_cli.run import resumed_command
from server_app import tracking
from server_app.checkpoint import checkpoint_path
from server_app.config import ConfigError, load_config
from server_app.results import METRICS, RUN_CONFIG


def _saved_run(folder: Path, overrides: list[str], checkpoint: bool = True, status: str = "interrupted") -> Path:
    """A results folder as genfl-run leaves it: the overrides it ran with (output.dir pinned, as
    `validated` pins it), metrics.json and, unless told otherwise, a checkpoint."""
    folder.mkdir(parents=True)
    _, _, pinned = validated([*overrides, f"output.dir={quoted(folder)}"])
    (folder / RUN_CONFIG).write_text(f"overrides = {json.dumps(json.dumps(pinned))}\n")
    (folder / METRICS).write_text(json.dumps({"status": status, "run_id": 7, "rounds": []}))
    if checkpoint:
        checkpoint_path(folder).parent.mkdir()
        checkpoint_path(folder).write_bytes(b"checkpoint")
    return folder


def test_a_copied_sweep_job_resumes_into_the_copy_whose_name_holds_equals_and_commas(tmp_path):
    sweep = tmp_path / "sweep"
    original = sweep / "seed=1,strategy=genfl"
    # What genfl-sweep's job saves: its overrides, the sweep's tracking group and store, its folder.
    _saved_run(original, ["seed=1", "strategy=genfl", "tracking=mlflow", f"tracking.group={quoted(sweep)}",
                          f"tracking.root={quoted(sweep)}", f"output.dir={quoted(original)}"])
    copy = tmp_path / "elsewhere" / "seed=1,strategy=genfl"
    shutil.copytree(original, copy)

    overrides = resumed_command(["--resume", str(copy), "federation.round_timeout=30"])
    assert not any(str(sweep) in o and not o.startswith("tracking.group=") for o in overrides), overrides
    cfg, run_dir, _ = validated(overrides)
    assert run_dir == copy.resolve() and cfg.output.resume is True
    assert (cfg.seed, cfg.strategy.name, cfg.federation.round_timeout) == (1, "genfl", 30)
    # The store that lay beside the original folder (the sweep's) is now the one beside the copy.
    uri = tracking.build(OmegaConf.to_container(cfg, resolve=True), run_dir).store()[0]
    assert uri == f"sqlite:///{copy.parent.resolve() / 'mlflow.db'}"
    assert cfg.tracking.group == str(sweep)  # the experiment's name is kept


def test_a_moved_run_resumes_into_its_new_folder_not_the_original(tmp_path):
    original = _saved_run(tmp_path / "outputs" / "run", ["seed=2", "strategy=base_only"])
    moved = tmp_path / "archive" / "run"
    moved.parent.mkdir()
    original.rename(moved)
    _, run_dir, _ = validated(resumed_command(["--resume", str(moved)]))
    assert run_dir == moved.resolve()


def test_a_tracking_store_given_elsewhere_stays_where_it_was_given(tmp_path):
    store = tmp_path / "shared-store"
    original = _saved_run(tmp_path / "outputs" / "run", ["tracking=mlflow", f"tracking.root={quoted(store)}"])
    overrides = resumed_command(["--resume", str(original)])
    assert load_config(overrides).tracking.root == str(store)


def test_resume_names_the_folder_and_refuses_another_output_dir(tmp_path):
    folder = _saved_run(tmp_path / "run", ["seed=0"])
    with pytest.raises(ConfigError, match="continues in the folder given to --resume; to continue it elsewhere, copy"):
        resumed_command(["--resume", str(folder), f"output.dir={tmp_path / 'other'}"])
    for bad in (["--resume"], ["--resume", "seed=1"]):  # no folder (an override where it belongs)
        with pytest.raises(ConfigError, match=r"usage: genfl-run --resume <results folder> \[key=value"):
            resumed_command(bad)
    with pytest.raises(ConfigError, match="no run_config.toml there"):
        resumed_command(["--resume", str(tmp_path)])


def test_a_run_stopped_before_its_first_checkpoint_starts_again_and_a_completed_one_without_is_refused(
        tmp_path, capsys):
    early = _saved_run(tmp_path / "early", ["seed=0"], checkpoint=False)
    overrides = resumed_command(["--resume", str(early)])
    assert load_config(overrides).output.resume is False
    assert "has no checkpoint (the run stopped before its first round ended): running it again" in capsys.readouterr().err
    done = _saved_run(tmp_path / "done", ["seed=0", "checkpoint.enabled=false"], checkpoint=False, status="completed")
    with pytest.raises(ConfigError, match="the run completed and left no checkpoint"):
        resumed_command(["--resume", str(done)])
