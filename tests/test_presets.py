"""Experiment presets (conf/experiment/): they compose and validate here; run offline, the paper's
presets stop with the missing-data or missing-weights message; every benchmark grid is valid."""

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from server_app.config import CONF_DIR, ConfigError, load_config
from genfl_cli.sweep import config_errors, expand

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted(str(p.relative_to(CONF_DIR / "experiment").with_suffix(""))
                 for p in (CONF_DIR / "experiment").rglob("*.yaml") if p.parent.name != "robustness")


def test_the_expected_presets_exist():
    assert {"paper_cifar10", "paper_cifar100", "paper_cifar10_tuned", "paper_cifar100_tuned",
            "convergence/base", "convergence/main"} <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_and_validates(preset):
    load_config([f"+experiment={preset}"])


def test_paper_cifar10_is_the_published_setting():
    cfg = load_config(["+experiment=paper_cifar10"])
    assert (cfg.dataset.name, cfg.federation.num_clients, cfg.partition.alpha) == ("cifar10", 100, 0.1)
    assert (cfg.client.local_epochs, cfg.client.batch_size, cfg.client.lr) == (5, 64, 1e-4)
    assert cfg.client.max_steps is None and cfg.augmented.max_steps is None  # all 5 epochs, not the default's 10 steps
    assert cfg.model.norm == "batch" and cfg.strategy.name == "genfl"
    assert cfg.generator.backend == "stable_diffusion"
    assert cfg.generator.model == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert load_config(["+experiment=paper_cifar10", "partition.alpha=0.3"]).partition.alpha == 0.3


def test_paper_cifar100_and_the_tuned_variants_change_only_what_they_say():
    c10, c100 = load_config(["+experiment=paper_cifar10"]), load_config(["+experiment=paper_cifar100"])
    assert (c100.dataset.name, c100.dataset.num_classes, c100.client.lr) == ("cifar100", 100, 1e-4)
    assert c100.federation.num_clients == c10.federation.num_clients == 100
    for base in ("paper_cifar10", "paper_cifar100"):
        plain, tuned = load_config([f"+experiment={base}"]), load_config([f"+experiment={base}_tuned"])
        assert (tuned.client.lr, tuned.client.momentum, tuned.augmented.lr) == (0.05, 0.9, 0.05)
        assert plain.client.max_steps is None and tuned.client.max_steps is None
        assert OmegaConf.masked_copy(tuned, ["dataset", "federation", "partition", "generator"]) == \
            OmegaConf.masked_copy(plain, ["dataset", "federation", "partition", "generator"])


def _grid(preset: str) -> list[list[str]]:
    params = OmegaConf.load(CONF_DIR / "experiment" / f"{preset}.yaml").hydra.sweeper.params
    return expand([f"{k}={v}" for k, v in params.items()] + [f"+experiment={preset}"])


@pytest.mark.parametrize("piece, jobs", [("main", 18), ("aigc_only", 3), ("kappa", 12), ("participation", 6), ("control_corpus", 6),
                                         ("control_fonts", 6), ("control_groupnorm", 6)])
def test_every_job_of_every_benchmark_piece_is_valid(piece, jobs):
    grid = _grid(f"convergence/{piece}")
    assert len(grid) == jobs
    assert config_errors(grid) == []


def test_the_kappa_piece_sweeps_strategy_kappa_aug():
    configs = [load_config(job) for job in _grid("convergence/kappa")]
    assert sorted({c.strategy.kappa_aug for c in configs}) == [0.1, 0.5, 0.7, 0.9]
    assert {(c.strategy.name, c.mix.kappa_policy) for c in configs} == {("genfl", "constant")}
    assert {c.partition.alpha for c in configs} == {0.1}


def _genfl_run(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "genfl_cli.run", *overrides], cwd=REPO,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_paper_preset_without_cifar_stops_with_the_missing_data_message(tmp_path):
    proc = _genfl_run("+experiment=paper_cifar10", f"dataset.root={tmp_path}", "dataset.download=false",
                      f"output.dir={tmp_path / 'run'}", "num_rounds=1")
    assert proc.returncode == 1
    assert f"cifar10 not found: missing {tmp_path}/cifar-10-batches-py/data_batch_1" in proc.stderr


def test_paper_preset_without_stable_diffusion_weights_stops_with_the_missing_weights_message():
    # What the ServerApp does once the label histograms are in (the data-missing run above stops earlier).
    from generation.factory import build_generator
    from generation.text_to_image import GeneratorUnavailableError

    cfg = load_config(["+experiment=paper_cifar10", "generator.local_files_only=true"])
    generator = build_generator(cfg.generator, cfg.dataset)
    with pytest.raises(GeneratorUnavailableError, match="'stable-diffusion-v1-5/stable-diffusion-v1-5' is neither a "
                       "local folder nor available from the Hugging Face Hub here.*hf download"):
        generator.load()


def test_a_robustness_plan_named_as_a_preset_is_refused_in_one_line():
    """conf/experiment/robustness/ holds bench/robustness.py's plans (lists of jobs): as +experiment= they
    composed silently and the default config ran instead."""
    with pytest.raises(ConfigError, match="benchmark plan, not a preset"):
        load_config(["+experiment=robustness/screen"])
