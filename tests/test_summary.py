"""genfl-report on hand-made metrics.json folders: every number below is worked out by hand."""

import csv
import json
from pathlib import Path

import pytest

from genfl_cli.report import main
from server_app.report import read_runs

# Two seeds of FedAvg at alpha 0.1: accuracy and server wall time per round (round 0 = initial model).
FEDAVG_SEED0 = ([0.1, 0.5, 0.7, 0.9, 0.8], [2, 12, 22, 32, 42])
FEDAVG_SEED1 = ([0.1, 0.3, 0.6, 0.8, 0.9], [1, 21, 41, 61, 81])


def _config(strategy="fedavg", alpha=0.1, kappa_aug=0.0, seed=0, **extra):
    config = {"seed": seed, "num_rounds": 4, "strategy": {"name": strategy, "kappa_fl": 1 - kappa_aug, "kappa_aug": kappa_aug},
              "partition": {"alpha": alpha}, "dataset": {"name": "digits", "root": "/anywhere"},
              "output": {"dir": f"/somewhere/{seed}"}, "client": {"device": "cpu", "lr": 0.02}}
    config.update(extra)
    return config


def _write_run(folder: Path, accuracy, walls, status="completed", **config) -> Path:
    folder.mkdir(parents=True)
    rounds = [{"round": r, "test_accuracy": a, "wall_seconds": w} for r, (a, w) in enumerate(zip(accuracy, walls))]
    data = {"status": status, "config": _config(**config), "rounds": rounds}
    if status == "failed":
        data["error"] = "NoTrainingRepliesError: round 2: no client returned a usable model"
    (folder / "metrics.json").write_text(json.dumps(data))
    return folder


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    _write_run(root / "fedavg-0", *FEDAVG_SEED0, seed=0)
    _write_run(root / "fedavg-1", *FEDAVG_SEED1, seed=1)
    _write_run(root / "genfl-0", [0.1, 0.6, 0.9, 0.95, 0.96], [0, 30, 60, 90, 120], strategy="genfl", kappa_aug=0.3)
    _write_run(root / "aigc-0", [0.1, 0.7, 0.8, 0.85, 0.85], [0, 10, 20, 30, 40], strategy="aigc_only", kappa_aug=1.0)
    _write_run(root / "fedavg-0.3", [0.1, 0.6, 0.8, 0.9, 0.92], [0, 10, 20, 30, 40], alpha=0.3)
    _write_run(root / "broken", [0.1, 0.2], [0, 10], status="failed", seed=2)
    (root / "corrupt").mkdir()
    (root / "corrupt" / "metrics.json").write_text('{"status": "compl')
    (root / "died").mkdir()
    (root / "died" / "genfl_job.json").write_text(json.dumps({"overrides": ["seed=5"], "status": "failed",
                                                             "error": "genfl-run exited with 1"}))
    (root / "sweep.json").write_text(json.dumps({"jobs": [["seed=5"], ["seed=6"]]}))
    return root


def _rows(out: Path) -> dict:
    with open(out / "summary.csv") as fh:
        return {(r["strategy"], r["alpha"]): r for r in csv.DictReader(fh)}


def test_seeds_of_one_configuration_are_pooled_into_mean_std_best_target_auc_and_speed(sweep, tmp_path):
    out = tmp_path / "report"
    assert main([str(sweep), "--target", "0.85", "--out", str(out)]) == 0
    fedavg = _rows(out)[("fedavg", "0.1")]
    assert fedavg["runs"] == "2" and fedavg["seeds"] == "0 1" and fedavg["rounds"] == "4"
    assert float(fedavg["final_accuracy_mean"]) == pytest.approx(0.85)  # (0.8 + 0.9) / 2
    assert float(fedavg["final_accuracy_std"]) == pytest.approx(0.0707107, abs=1e-6)  # sample std of 0.8, 0.9
    assert float(fedavg["best_accuracy_mean"]) == pytest.approx(0.9)  # both peak at 0.9
    assert float(fedavg["rounds_to_target_mean"]) == pytest.approx(3.5)  # 0.85 first reached in rounds 3 and 4
    assert fedavg["reached_target"] == "2/2"
    # Trapezoids over rounds 0..4 divided by 4: (0.3+0.6+0.8+0.85)/4 = 0.6375 and (0.2+0.45+0.7+0.85)/4 = 0.55.
    assert float(fedavg["auc_mean"]) == pytest.approx((0.6375 + 0.55) / 2)
    assert float(fedavg["seconds_per_round_mean"]) == pytest.approx((40 / 4 + 80 / 4) / 2)


def test_a_single_seed_has_no_std_and_a_configuration_that_never_reaches_the_target_says_so(sweep, tmp_path):
    out = tmp_path / "report"
    main([str(sweep), "--target", "0.95", "--out", str(out)])
    rows = _rows(out)
    assert rows[("genfl", "0.1")]["final_accuracy_std"] == ""
    assert rows[("genfl", "0.1")]["rounds_to_target_mean"] == "3.000000"
    assert rows[("aigc_only", "0.1")]["reached_target"] == "0/1"
    assert "never (0/1)" in (out / "summary.md").read_text()


def test_configurations_differ_by_strategy_and_alpha_but_not_by_paths_or_devices(sweep, tmp_path):
    out = tmp_path / "report"
    main([str(sweep), "--out", str(out)])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["label_keys"] == ["strategy", "alpha"]
    assert sorted(c["label"] for c in summary["configurations"]) == [
        "strategy=aigc_only, alpha=0.1", "strategy=fedavg, alpha=0.1", "strategy=fedavg, alpha=0.3",
        "strategy=genfl, alpha=0.1"]
    fedavg = next(c for c in summary["configurations"] if c["label"] == "strategy=fedavg, alpha=0.1")
    assert fedavg["curve"] == {"round": [0, 1, 2, 3, 4], "mean": pytest.approx([0.1, 0.4, 0.65, 0.85, 0.85]),
                               "min": [0.1, 0.3, 0.6, 0.8, 0.8], "max": [0.1, 0.5, 0.7, 0.9, 0.9]}


def test_failed_corrupt_and_missing_runs_are_named_and_left_out(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    assert main([str(sweep), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "broken: failed after 1 round(s): NoTrainingRepliesError" in err
    assert "corrupt: corrupt metrics.json (JSONDecodeError" in err
    assert "died: no metrics.json (job failed: genfl-run exited with 1)" in err
    assert "job [seed=6] has not run (no folder)" in err
    assert "job [seed=5] has not run" not in err  # it has a folder: named once, above
    markdown = (out / "summary.md").read_text()
    assert "Not included:" in markdown and "broken" in markdown


def test_plots_show_one_panel_per_alpha_and_final_accuracy_against_kappa_aug(sweep, tmp_path):
    from PIL import Image

    out = tmp_path / "report"
    main([str(sweep), "--out", str(out)])
    by_round = Image.open(out / "accuracy_by_round.png")
    assert by_round.width > 2 * by_round.height  # two panels side by side (alpha 0.1, 0.3)
    assert (out / "accuracy_vs_kappa_aug.png").stat().st_size > 10_000  # kappa 0, 0.3, 1 at alpha 0.1


def test_nothing_usable_exits_non_zero_and_names_what_it_saw(tmp_path, capsys):
    _write_run(tmp_path / "only-failed", [0.1, 0.2], [0, 10], status="failed")
    assert main([str(tmp_path), "--out", str(tmp_path / "report")]) == 1
    err = capsys.readouterr().err
    assert "only-failed: failed" in err and "no completed run" in err
    assert not (tmp_path / "report").exists()


def test_a_run_still_running_is_not_used(tmp_path):
    _write_run(tmp_path / "live", [0.1, 0.2, 0.3], [0, 1, 2], status="running")
    runs, problems = read_runs([tmp_path])
    assert runs == [] and problems == [f"{tmp_path / 'live'}: running after 2 round(s): stopped or still running"]


def test_a_corrupt_job_record_or_manifest_is_named_not_taken_for_missing_or_empty(sweep):
    (sweep / "died" / "genfl_job.json").write_text('{"overrides": ["seed=5"], "sta')
    (sweep / "sweep.json").write_text('{"jobs": [["seed=5"], ["seed')
    problems = read_runs([sweep])[1]
    record = [p for p in problems if p.startswith(str(sweep / "died"))]
    assert record == [f"{sweep / 'died' / 'genfl_job.json'}: corrupt (JSONDecodeError: Unterminated string "
                      "starting at: line 1 column 27 (char 26))"]
    assert f"{sweep / 'sweep.json'}: corrupt (JSONDecodeError: Unterminated string starting at: line 1 column 24 " \
           "(char 23)); jobs of that sweep that never ran cannot be named" in problems


def test_a_manifest_job_is_not_called_unrun_when_a_record_that_may_be_its_own_is_corrupt(sweep):
    (sweep / "died" / "genfl_job.json").write_text("[]")
    problems = read_runs([sweep])[1]
    assert f"{sweep / 'died' / 'genfl_job.json'}: corrupt (a JSON list, not an object)" in problems
    assert f"{sweep}: job [seed=5] has no readable record (not run, or its record is corrupt)" in problems
