"""bench/robustness.py's plans, conf/experiment/robustness/<plan>.yaml: every job names a convergence piece
that exists and settings that exist under today's names (a renamed key fails here, not hours into a plan)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from server_app.config import CONF_DIR, load_config
from server_app.results import flatten

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def robustness():
    """bench/robustness.py (it imports bench/convergence.py as `convergence`: its folder on sys.path)."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        spec = importlib.util.spec_from_file_location("robustness", REPO / "bench" / "robustness.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(REPO / "bench"))


def test_every_plan_is_a_file_and_its_sets_are_spelled_out_in_order(robustness):
    assert {"screen", "matrix", "max_rise", "full_probe", "default"} <= set(robustness.plan_names())
    assert "_sets" not in robustness.plan_names()
    assert robustness.plan("default")[:2] == [
        ("robust_fonts", ["mix.kappa_policy=constant", "mix.bn_stats=mixed", "generator_check.enabled=true", "seed=0"]),
        ("robust_digits", ["mix.kappa_policy=constant", "mix.bn_stats=mixed", "generator_check.enabled=true", "seed=0"])]
    assert robustness.plan("max_rise")[0] == ("robust_fonts", [
        "mix.kappa_policy=adaptive", "mix.bn_stats=mixed", "mix.probe_fraction=0.5", "augmented.max_steps=10",
        "augmented.filter.mode=confidence", "model.norm=group", "client.lr=0.005", "augmented.lr=0.005", "seed=1"])


def test_every_job_names_an_existing_piece_and_existing_settings(robustness):
    keys = set(flatten(OmegaConf.to_container(load_config([]), resolve=False)))
    wrong = []
    for name in robustness.plan_names():
        for piece, overrides in robustness.plan(name):
            if not (CONF_DIR / "experiment" / "convergence" / f"{piece}.yaml").is_file():
                wrong.append((name, piece))
            for override in overrides:
                key, value = override.split("=", 1)
                group = CONF_DIR / key
                if not ((group.is_dir() and (group / f"{value}.yaml").is_file()) or key in keys):
                    wrong.append((name, override))
    assert wrong == []


def test_a_word_that_is_no_set_is_refused_naming_the_plan(robustness, tmp_path, monkeypatch):
    (tmp_path / "_sets.yaml").write_text("sets:\n  rise: [mix.max_rise=0.05]\n")
    (tmp_path / "mine.yaml").write_text("jobs:\n  - [robust_fonts, rise, risen, seed=0]\n")
    monkeypatch.setattr(robustness, "PLANS", tmp_path)
    with pytest.raises(SystemExit, match=r"mine.yaml: 'risen' is neither an override \(key=value\) nor a set"):
        robustness.plan("mine")


@pytest.mark.slow
def test_every_job_of_every_plan_is_valid(robustness):
    from server_app.grid import config_errors

    jobs = {tuple(job) for name in robustness.plan_names() for piece, narrowing in robustness.plan(name)
            for job in robustness.convergence.piece_jobs(piece, narrowing)}
    assert config_errors([list(job) for job in sorted(jobs)]) == []
