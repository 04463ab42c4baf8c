"""A run started before conf/'s renames (issue 27 item 5) resumes: `genfl-run --resume` reads its saved
overrides and its checkpoint's config in today's names (a new command line with an old name is refused:
tests/test_config.py). The folders are built as genfl-run left them, with the real conf/ and checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from genfl_cli.flwr_runs import quoted
from genfl_cli.run import resumed_command
from server_app import checkpoint
from server_app.config import load_config
from server_app.results import METRICS, RUN_CONFIG


def _earlier(config: dict, name: str, schedule: str = "constant", final: float | None = None) -> dict:
    """``config`` as an earlier version wrote it: the kappa keys in strategy, strategy=fedavg's name."""
    old = json.loads(json.dumps(config))
    st = old["strategy"]
    old["strategy"] = {"name": name, "kappa_fl": round(1 - st["kappa_aug"], 12), "kappa_aug": st["kappa_aug"],
                       "kappa_schedule": schedule, "kappa_aug_final": st["kappa_aug"] if final is None else final}
    del old["mix"]["kappa_aug_final"]
    return old


def _interrupted_run(folder, saved: list[str], config: dict):
    """What genfl-run left: the overrides it was started with, metrics.json, a checkpoint after round 1."""
    folder.mkdir(parents=True)
    pinned = [*saved, f"output.dir={quoted(folder)}"]
    (folder / RUN_CONFIG).write_text(f"overrides = {json.dumps(json.dumps(pinned))}\n")
    (folder / METRICS).write_text(json.dumps({"status": "interrupted", "run_id": 7, "rounds": []}))
    checkpoint.save(folder, server_round=1, arrays={"w": np.zeros(2)}, strategy={}, rounds=[], config=config)


@pytest.mark.parametrize("saved, today", [
    (["strategy=fedavg", "seed=2"], ["strategy=base_only", "seed=2"]),
    (["+kappa=aug_0.5"], ["strategy.kappa_aug=0.5"]),
    (["strategy.kappa_schedule=cosine", "strategy.kappa_aug_final=0.1"], ["mix.kappa_policy=cosine", "mix.kappa_aug_final=0.1"]),
    (["strategy.kappa_schedule=linear"], ["mix.kappa_policy=linear", "mix.kappa_aug_final=0.3"]),  # final: the start
])
def test_a_run_started_before_the_renames_resumes_in_todays_names(tmp_path, saved, today):
    folder = tmp_path / "run"
    config = OmegaConf.to_container(load_config([*today, f"output.dir={quoted(folder)}"]), resolve=True)
    mix = config["mix"]
    schedule = mix["kappa_policy"] if mix["kappa_policy"] in ("linear", "cosine") else "constant"
    earlier = _earlier(config, "fedavg" if config["strategy"]["name"] == "base_only" else config["strategy"]["name"],
                       schedule, mix["kappa_aug_final"])
    _interrupted_run(folder, saved, earlier)

    cfg = load_config(resumed_command(["--resume", str(folder)]))
    resumed = OmegaConf.to_container(cfg, resolve=True)
    assert resumed == {**config, "output": {**config["output"], "resume": True}}
    assert checkpoint.load(folder, resumed)["round"] == 1  # the checkpoint's config, read in today's names, agrees


def test_a_real_difference_from_an_earlier_checkpoint_is_still_named(tmp_path):
    folder = tmp_path / "run"
    saved = ["strategy.kappa_schedule=linear", "strategy.kappa_aug_final=0.1"]
    config = OmegaConf.to_container(load_config(["mix.kappa_policy=linear", "mix.kappa_aug_final=0.1",
                                                 f"output.dir={quoted(folder)}"]), resolve=True)
    _interrupted_run(folder, saved, _earlier(config, "genfl", "linear", 0.1))
    cfg = load_config(resumed_command(["--resume", str(folder), "mix.kappa_aug_final=0.2"]))
    with pytest.raises(checkpoint.CheckpointError, match="differs from the checkpoint's in mix.kappa_aug_final"):
        checkpoint.load(folder, OmegaConf.to_container(cfg, resolve=True))
