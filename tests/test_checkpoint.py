"""Resuming checks the run's config against the checkpoint's (server_app/checkpoint.py)."""

import numpy as np
import pytest

from server_app.checkpoint import CheckpointError, load, save

CONFIG = {"seed": 0, "mix": {"kappa_policy": "adaptive", "step": 0.5}, "output": {"dir": "/somewhere"}}


def _save(tmp_path, config):
    save(tmp_path, server_round=3, arrays={"w": np.ones(2, dtype=np.float32)}, strategy={"k": 1}, rounds=[{"round": 3}],
         config=config)


def test_the_same_config_resumes_and_paths_do_not_count(tmp_path):
    _save(tmp_path, CONFIG)
    payload = load(tmp_path, CONFIG | {"output": {"dir": "/elsewhere"}})
    assert payload["round"] == 3 and payload["strategy"] == {"k": 1}
    np.testing.assert_array_equal(payload["arrays"]["w"], np.ones(2))


def test_a_changed_setting_is_refused_by_name(tmp_path):
    _save(tmp_path, CONFIG)
    with pytest.raises(CheckpointError, match=r"differs from the checkpoint's in mix\.step;"):
        load(tmp_path, CONFIG | {"mix": {"kappa_policy": "adaptive", "step": 1.0}})


def test_a_setting_added_since_the_checkpoint_resumes_while_off_and_is_refused_when_on(tmp_path):
    _save(tmp_path, CONFIG)  # written before mix.max_rise existed
    assert load(tmp_path, CONFIG | {"mix": {**CONFIG["mix"], "max_rise": None}})["round"] == 3
    with pytest.raises(CheckpointError, match=r"mix\.max_rise"):
        load(tmp_path, CONFIG | {"mix": {**CONFIG["mix"], "max_rise": 0.05}})


def test_a_setting_removed_since_the_checkpoint_is_refused(tmp_path):
    _save(tmp_path, CONFIG | {"mix": {**CONFIG["mix"], "max_rise": None}})
    with pytest.raises(CheckpointError, match=r"mix\.max_rise"):
        load(tmp_path, CONFIG)


def test_no_checkpoint_says_what_to_do(tmp_path):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        load(tmp_path, CONFIG)
