"""`genfl-run` end to end: a real SuperLink, `flwr run`, simulated ClientApps, real training.

The simulations are shared among the assertions (module-scoped, each launched once, on first use):
- genfl A and B: the same command twice (reproducibility), C with another seed;
- genfl K: the same command, killed after round 1 and resumed (checkpoint/resume);
- fedavg F: one round, to show that K's round-1 model is exactly Eq. (1) of F's client average and
  an augmented model trained here from the same initial model on the same cached images.
Each run gets its own FLWR_HOME and ports; every test checks that nothing it started survives.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from sim import REPO, assert_nothing_left_running, comparable, faulty_app, launch, metrics

CLIENTS = ("federation.num_clients=3", "client.local_epochs=1")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    cache = base / "image-cache"
    done = {}

    def get(name: str, *overrides: str):
        if name not in done:
            run_dir = base / name
            proc = launch(run_dir, *CLIENTS, f"generation.cache_dir={cache}", "generation.per_class=20", *overrides)
            done[name] = (proc, run_dir)
        return done[name]

    get.base, get.cache = base, cache
    return get


GENFL = ("strategy=genfl", "num_rounds=2", "seed=0")
# The paper's mix as configured, without the generator check (on by default): the runs that test Eq. (1)'s
# mechanics compare numbers with runs built here by hand.
GENFL_A = (*GENFL, "generator_check.enabled=false")


@pytest.mark.slow
def test_genfl_simulation_trains_writes_results_and_mixes_in_the_augmented_model(runs):
    proc, run_dir = runs("A", *GENFL_A)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = metrics(run_dir)
    assert result["status"] == "completed" and result["config"]["federation"]["num_clients"] == 3
    assert sum(result["global_label_histogram"]) == 1077
    assert list(result["generation"]["plan"].values()) == [20] * 10
    rows = result["rounds"]
    assert [r["round"] for r in rows] == [0, 1, 2]
    first, second = rows[1], rows[2]
    assert (first["kappa_fl"], first["kappa_aug"]) == (0.7, 0.3)
    assert first["images_used"] == 200 and first["clients_trained"] == 3 and first["round_accepted"]
    assert second["test_accuracy"] > 0.3, rows  # chance is 0.10
    assert 0 < second["update_ratio"] < 5
    assert (run_dir / "metrics.csv").read_text().startswith("round,test_accuracy,test_loss")
    assert (run_dir / "accuracy.png").stat().st_size > 1000
    assert "round 2/2: test accuracy" in proc.stdout
    # the quiet console (issue 27 item 6): a line per phase and per round; the config is in metrics.json
    assert "GenFL config" not in proc.stdout and "ConfigRecord" not in proc.stdout and "[ROUND" not in proc.stdout
    assert len(proc.stdout.splitlines()) <= 25 and max(map(len, proc.stdout.splitlines())) < 400, proc.stdout
    assert_nothing_left_running(run_dir)


@pytest.mark.slow
def test_adaptive_kappa_and_reestimated_batchnorm_statistics_in_a_real_simulation(runs):
    """Issue 16 items 1-2 through real ClientApps: every node scores the candidate mixes on its data,
    kappa_aug moves by the logged evidence, the nodes re-estimate the BatchNorm statistics."""
    proc, run_dir = runs("adaptive", *GENFL_A, "mix.kappa_policy=adaptive", "mix.bn_stats=reestimate",
                         "mix.probe_fraction=1.0", "mix.bn_fraction=1.0")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = metrics(run_dir)["rounds"][1:]
    assert rows[0]["kappa_aug"] == 0.3
    for row, following in zip(rows, rows[1:] + [None]):
        assert row["probe_nodes"] == 3 and row["bn_nodes"] == 3 and row["clients_evaluated"] == 3
        probe = {float(k): v for k, v in row["kappa_probe"].items()}
        assert sorted(probe) == [0.0, 0.1, 0.2, 0.3, 0.5] and all(v > 0 for v in probe.values())
        errors = {float(k): v for k, v in row["kappa_probe_error"].items()}
        # the burden of proof (mix.evidence_z=1): a mix must beat kappa 0 by one standard error
        eligible = [k for k in probe if k == 0.0 or probe[k] + errors[k] < probe[0.0]]
        best = min(eligible, key=lambda k: (probe[k], k))
        assert row["kappa_best"] == best
        assert row["kappa_next"] == pytest.approx(min(max(row["kappa_aug"] + 0.5 * (best - row["kappa_aug"]), 0.0), 0.5))
        if following:
            assert following["kappa_aug"] == pytest.approx(row["kappa_next"])
    assert rows[-1]["test_accuracy"] > 0.3
    assert_nothing_left_running(run_dir)


@pytest.mark.slow
def test_a_generator_that_fails_the_default_check_runs_on_fails_settings_in_a_real_simulation(runs):
    """The default run (no mix setting given) with a generator below the line, through real ClientApps:
    generator_check.on_fail's settings run (+ steps_follow_kappa, a key added to on_fail on the command line):
    kappa_aug falls at mix.step's pace but climbs at most on_fail's max_rise per round; the augmented model's
    step cap (on_fail's: client.max_steps) follows kappa_aug / 0.3; statistics re-estimated on every node."""
    from genfl_torch.train import batch_bounds

    proc, run_dir = runs("untrusted", "strategy=genfl", "num_rounds=3", "seed=0",
                         "+generator_check.on_fail.augmented.steps_follow_kappa=true",
                         "generator_check.min_transfer=10")  # no generator passes
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = metrics(run_dir)
    assert result["generator_check"]["trusted"] is False and result["generator_check"]["nodes"] == 3
    assert result["config"]["mix"]["kappa_policy"] == "constant"  # the user's settings, as given, are what is recorded
    assert "not trusted, the cautious settings of generator_check.on_fail run" in proc.stdout + proc.stderr
    on_fail = result["config"]["generator_check"]["on_fail"]
    assert on_fail["mix"]["max_rise"] == 0.05 and on_fail["augmented"]["max_steps"] == 10
    rows = result["rounds"][1:]
    assert all(r["bn_nodes"] == 3 and r["probe_nodes"] == 3 for r in rows)
    assert len(rows) == 3 and rows[0]["kappa_aug"] == 0.3
    for row in rows:
        toward = row["kappa_aug"] + 0.5 * (row["kappa_best"] - row["kappa_aug"])
        assert row["kappa_next"] == pytest.approx(min(max(min(toward, row["kappa_aug"] + 0.05), 0.0), 0.5))
        full = len(batch_bounds(row["synthetic_kept"], result["config"]["augmented"]["batch_size"]))  # one epoch
        trust = min(1.0, row["kappa_aug"] / 0.3)
        assert row["augmented_steps"] == max(1, round(10 + trust * max(full - 10, 0)))
    assert rows[0]["augmented_steps"] > 10  # full trust in round 1: every batch
    assert_nothing_left_running(run_dir)


@pytest.mark.slow
def test_a_generator_that_passes_the_check_runs_as_constant_kappa_number_for_number_in_a_real_simulation(runs):
    """The default generator check through real ClientApps: every node scores the synthetic-only model on its
    data before round 1; a trusted generator's run is then the paper's GenFL without the check (run A), to the
    last digit, though it started with on_fail's cautious settings."""
    (_, constant), (proc, run_dir) = runs("A", *GENFL_A), runs("checked", *GENFL, "generator_check.min_transfer=0.0")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = metrics(run_dir)
    check = result["generator_check"]
    assert check["trusted"] is True and check["nodes"] == 3 and 0 < check["real_accuracy"] <= 1
    assert check["transfer"] == pytest.approx(check["real_accuracy"] / check["synthetic_accuracy"], abs=1e-3)
    assert "generator check: a model of the synthetic set alone scores" in proc.stdout + proc.stderr
    rows, reference = result["rounds"], metrics(constant)["rounds"]
    assert [(r["test_accuracy"], r["test_loss"]) for r in rows] == [(r["test_accuracy"], r["test_loss"]) for r in reference]
    assert all(r["kappa_aug"] == 0.3 and r.get("kappa_probe") is None and r.get("bn_nodes") is None for r in rows[1:])
    assert_nothing_left_running(run_dir)


@pytest.mark.slow
def test_adaptive_kappa_chosen_for_the_round_it_was_measured_in_a_real_simulation(runs):
    """mix.choose=this_round through real ClientApps: the nodes score this round's mixes in a query of
    their own (no evaluation step) and the round's model is the mix the evidence picked."""
    proc, run_dir = runs("adaptive_now", *GENFL_A, "mix.kappa_policy=adaptive", "mix.choose=this_round",
                         "mix.step=1.0", "mix.probe_fraction=1.0")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = metrics(run_dir)["rounds"][1:]
    for row in rows:
        assert row["probe_nodes"] == 3 and not row.get("clients_evaluated")
        probe = {float(k): v for k, v in row["kappa_probe"].items()}
        errors = {float(k): v for k, v in row["kappa_probe_error"].items()}
        assert sorted(probe)[0] == 0.0 and all(v > 0 for v in probe.values())
        eligible = [k for k in probe if k == 0.0 or probe[k] + errors[k] < probe[0.0]]
        best = min(eligible, key=lambda k: (probe[k], k))
        assert row["kappa_best"] == best and row["kappa_aug"] == pytest.approx(min(best, 0.5))
        assert row["kappa_fl"] == pytest.approx(1.0 - row["kappa_aug"])
    assert rows[-1]["test_accuracy"] > 0.3
    assert_nothing_left_running(run_dir)


@pytest.mark.slow
def test_the_same_command_gives_the_same_numbers(runs):
    (_, a), (proc, b) = runs("A", *GENFL_A), runs("B", *GENFL_A)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert comparable(metrics(a)["rounds"]) == comparable(metrics(b)["rounds"])  # every metric, exactly


@pytest.mark.slow
def test_the_same_adaptive_command_gives_the_same_numbers_when_a_sample_of_nodes_scores_the_probe(runs):
    """Flower draws the evaluation (probe) nodes from the global `random`; GenFL seeds it per round."""
    adaptive = (*GENFL_A, "mix.kappa_policy=adaptive", "mix.probe_fraction=0.5")
    (_, a), (proc, b) = runs("P1", *adaptive), runs("P2", *adaptive)
    assert proc.returncode == 0, proc.stdout[-3000:]
    rows = comparable(metrics(a)["rounds"])
    assert all(0 < r["probe_nodes"] < 3 for r in rows[1:])  # a sample of the 3 nodes scored each round
    assert rows == comparable(metrics(b)["rounds"])  # the same nodes, the same evidence, the same kappa


@pytest.mark.slow
def test_another_seed_gives_other_numbers(runs):
    (_, a), (proc, c) = runs("A", *GENFL_A), runs("C", "strategy=genfl", "num_rounds=2", "seed=1", "generator_check.enabled=false")
    assert proc.returncode == 0, proc.stdout[-3000:]
    rows_a, rows_c = metrics(a)["rounds"], metrics(c)["rounds"]
    assert metrics(a)["global_label_histogram"] == metrics(c)["global_label_histogram"]  # same data, other split
    assert all(x["test_loss"] != y["test_loss"] for x, y in zip(rows_a, rows_c))


def _killed_after_round_1(runs):
    """genfl A's command, stopped with SIGTERM after round 1, then resumed. Its ClientApps stall from
    round 2 on (tests/faulty_client_app.py, "stall2"), so the signal always lands in round 2: no race
    between the signal and the round. The resumed run uses the honest app."""
    run_dir = runs.base / "K"
    if not (run_dir / "resumed.json").exists():
        app_dir = faulty_app(runs.base / "K-app", {p: "stall2" for p in range(3)})
        command = [sys.executable, "-m", "genfl_cli.run", f"output.dir={run_dir}", *CLIENTS,
                   f"generation.cache_dir={runs.cache}", "generation.per_class=20", *GENFL_A]
        launcher = subprocess.Popen(command, cwd=app_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    env=dict(os.environ, PYTHONPATH=str(app_dir)))
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and launcher.poll() is None:
            if (run_dir / "checkpoint" / "latest.pkl").exists() and len(metrics(run_dir)["rounds"]) >= 2:
                break
            time.sleep(0.5)
        launcher.send_signal(signal.SIGTERM)
        killed_output = launcher.communicate(timeout=120)[0]
        killed = {"code": launcher.returncode, "rounds": len(metrics(run_dir)["rounds"]),
                  "status": metrics(run_dir)["status"], "output": killed_output[-2000:],
                  "histogram_lines": _histogram_lines(killed_output)}
        with open(run_dir / "checkpoint" / "latest.pkl", "rb") as handle:
            checkpoint = pickle.load(handle)
        killed["checkpoint_round"] = checkpoint["round"]
        np.savez(run_dir / "killed-checkpoint-arrays.npz", **checkpoint["arrays"])  # resuming overwrites it
        (run_dir / "killed.json").write_text(json.dumps(killed))
        assert_nothing_left_running(run_dir)
        resumed = subprocess.run([sys.executable, "-m", "genfl_cli.run", "--resume", str(run_dir)], cwd=REPO,
                                 capture_output=True, text=True, timeout=900)
        (run_dir / "resumed.json").write_text(json.dumps({"code": resumed.returncode, "output": resumed.stdout[-3000:] + resumed.stderr[-3000:],
                                                          "histogram_lines": _histogram_lines(resumed.stdout + resumed.stderr)}))
    return json.loads((run_dir / "killed.json").read_text()), json.loads((run_dir / "resumed.json").read_text()), run_dir


def _histogram_lines(output: str) -> list[str]:
    """The server's account of the label-histogram queries it sent (strategy/histograms.py)."""
    return [line.split("label histogram: ", 1)[1] for line in output.splitlines() if "label histogram: " in line]


@pytest.mark.slow
def test_a_run_killed_after_round_1_resumes_to_the_same_metrics(runs):
    killed, resumed, run_dir = _killed_after_round_1(runs)
    assert killed["code"] != 0 and killed["checkpoint_round"] == 1, killed
    assert resumed["code"] == 0, resumed["output"]
    # One histogram release per node across the kill and the resume (issue 26 item 2): the resumed run,
    # on new node ids, recognises every node by its partition and asks none of them again.
    assert any(line.startswith("3 of 3 nodes reported") for line in killed["histogram_lines"]), killed["histogram_lines"]
    assert resumed["histogram_lines"] == [
        "3 of 3 nodes known from the checkpoint (not asked again); 0 never heard from"], resumed["histogram_lines"]
    result = metrics(run_dir)
    assert result["status"] == "completed" and result["resumed_after_round"] >= 1
    _, uninterrupted = runs("A", *GENFL_A)
    assert comparable(result["rounds"]) == comparable(metrics(uninterrupted)["rounds"])
    assert_nothing_left_running(run_dir)


@pytest.mark.slow
def test_round_1_of_genfl_is_exactly_eq1_of_the_client_average_and_the_augmented_model(runs):
    from generation.augmented import AugmentedModelTrainer
    from server_app.build import augmenter as _augmenter
    from server_app.config import load_config
    from genfl_torch.data import load_splits
    from genfl_torch.model import seeded_model
    from genfl_torch.train import resolve_device, state_to_numpy

    proc, fedavg_dir = runs("F", "strategy=base_only", "num_rounds=1", "seed=0")
    assert proc.returncode == 0, proc.stdout[-3000:]
    with open(fedavg_dir / "checkpoint" / "latest.pkl", "rb") as handle:
        client_average = pickle.load(handle)["arrays"]  # FedAvg's round 1: the clients' weighted average
    killed, _, genfl_dir = _killed_after_round_1(runs)
    assert killed["checkpoint_round"] == 1
    genfl_round_1 = dict(np.load(genfl_dir / "killed-checkpoint-arrays.npz"))  # GenFL's round 1, same clients
    cfg = load_config([*CLIENTS, f"generation.cache_dir={runs.cache}", "generation.per_class=20", *GENFL_A])
    torch.set_num_threads(cfg.server.threads)
    ds = cfg.dataset
    spec = dict(num_classes=ds.num_classes, in_channels=ds.channels, mean=list(ds.mean), std=list(ds.std))
    augmenter: AugmentedModelTrainer = _augmenter(cfg, seeded_model(cfg.seed, **spec), resolve_device("cpu"),
                                                  load_splits(ds)["test"])
    stats = augmenter.prepare(metrics(genfl_dir)["global_label_histogram"])
    assert stats["cache_hit"]  # the very images the run trained on
    augmented, _ = augmenter.train(state_to_numpy(seeded_model(cfg.seed, **spec)), 1)
    expected = {k: (0.7 * client_average[k].astype(np.float64) + 0.3 * augmented[k].astype(np.float64)).astype(v.dtype)
                for k, v in client_average.items() if v.dtype == np.float32}
    differs = 0
    for key, value in expected.items():
        np.testing.assert_allclose(genfl_round_1[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
        differs += not np.allclose(genfl_round_1[key], client_average[key], rtol=1e-3, atol=1e-4)
    assert differs > 10  # and it is not the client average: the augmented model moved most arrays


@pytest.mark.slow
def test_run_where_every_client_fails_exits_non_zero(tmp_path):
    # A device no client has: every ClientApp raises, so no round can aggregate anything.
    run_dir = tmp_path / "run"
    proc = launch(run_dir, "strategy=base_only", "federation.num_clients=2", "num_rounds=1", "client.device=cuda:7")
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "run FAILED" in proc.stderr
    result = metrics(run_dir)
    assert result["status"] == "failed"
    assert "RoundFailedError" in result["error"] and "no round produced a usable model" in result["error"]
    assert_nothing_left_running(run_dir)


def test_bad_config_fails_before_starting_anything(tmp_path):
    run_dir = tmp_path / "run"
    proc = launch(run_dir, "partition.alpha=-1")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "genfl-run: config error: partition.alpha: must be > 0 (got -1)"
    assert not run_dir.exists()
