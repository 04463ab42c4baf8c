"""Misbehaving clients in real simulations: the run keeps a healthy model or fails loudly.

Each test swaps the ClientApp for tests/faulty_client_app.py (faults chosen per partition) in a
copy of the app and runs `genfl-run` on it: a real SuperLink, Ray workers and training.
"""

import math

import pytest

from sim import assert_nothing_left_running, faulty_app, launch, metrics

pytestmark = pytest.mark.slow

SMALL = ("federation.num_clients=6", "strategy=base_only", "client.local_epochs=1")


def test_broken_and_lying_clients_are_excluded_and_the_run_completes(tmp_path):
    # Training faults, and evaluation faults on three of the same nodes; partition 5 is honest.
    faults = {0: "nan+eval_records", 1: "shape+eval_nan", 2: "raise", 3: "inflate+eval_inflate", 4: "histogram"}
    run_dir = tmp_path / "run"
    proc = launch(run_dir, *SMALL, "num_rounds=2", "federation.fraction_evaluate=1.0", app_dir=faulty_app(tmp_path, faults))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = metrics(run_dir)
    first, second = result["rounds"][1], result["rounds"][2]
    # Round 1: the honest client trains; NaN, wrong shape and 10^12 examples are excluded, the raising
    # client fails, the node without a valid histogram is not asked to train. Round 2: the failed client
    # sits out (cooldown); the histogram liar is asked again, lies again, and again does not train.
    assert (first["clients_trained"], first["clients_failed"], first["clients_excluded"]) == (1, 1, 3)
    assert (second["clients_trained"], second["clients_failed"], second["clients_excluded"]) == (1, 0, 3)
    assert second["late_histograms"] == 0
    assert first["round_accepted"] and second["round_accepted"]
    # Evaluation: two MetricRecords, a NaN loss, 10^12 examples and "no valid histogram" are excluded;
    # the honest node and the one whose training raises (its evaluation is honest) are averaged.
    for row in (first, second):
        assert (row["clients_evaluated"], row["clients_evaluate_excluded"], row["clients_evaluate_failed"]) == (2, 4, 0)
        assert math.isfinite(row["federated_eval_loss"]) and 0 <= row["federated_eval_acc"] <= 1
    assert all(math.isfinite(r["test_loss"]) for r in result["rounds"])
    assert second["test_accuracy"] > 0.15  # one honest client's skewed data; chance is 0.10
    # The 10^15-image histogram was excluded: the federation counts only the others' real samples.
    assert 0 < sum(result["global_label_histogram"]) < 1077
    log = proc.stdout + proc.stderr
    for reason in ("has non-finite values", "expected float32", "injected fault", "exceeds the",
                   "implausible total", "no valid label histogram", "expected exactly one MetricRecord",
                   "metric 'eval-loss' is not finite", "'num-examples'=1000000000000 exceeds"):
        assert reason in log, reason
    assert_nothing_left_running(run_dir)


def test_a_run_where_too_few_nodes_contributed_fails_naming_them(tmp_path):
    run_dir = tmp_path / "run"
    proc = launch(run_dir, *SMALL, "num_rounds=1", "reliability.min_contributing_nodes=5",
                  app_dir=faulty_app(tmp_path, {0: "histogram", 1: "raise"}))
    assert proc.returncode == 1, proc.stdout[-3000:]
    result = metrics(run_dir)
    assert result["status"] == "failed" and "NotEnoughContributorsError" in result["error"]
    assert "4 node(s) trained, fewer than reliability.min_contributing_nodes=5" in result["error"]
    assert "4 of 6 node(s) contributed; 2 never did" in result["error"] and "injected fault" in result["error"]
    rows = {row["partition"]: row for row in result["nodes"] if row["partition"] is not None}
    assert rows[1]["rounds_failed"] == 1 and rows[5]["rounds_trained"] == 1
    assert [row for row in result["nodes"] if "implausible total" in row["histogram"]]  # partition 0's lie
    assert_nothing_left_running(run_dir)


def test_scaled_up_weights_with_an_honest_count_never_become_the_global_model(tmp_path):
    run_dir = tmp_path / "run"
    proc = launch(run_dir, *SMALL, "num_rounds=3", app_dir=faulty_app(tmp_path, {3: "scale"}))
    assert proc.returncode == 1, proc.stdout[-3000:]
    result = metrics(run_dir)
    assert result["status"] == "failed"
    assert "RoundFailedError" in result["error"] and "reliability.max_relative_update" in result["error"]
    rows = result["rounds"]
    assert [r["round_accepted"] for r in rows[1:]] == [False, False]  # round 2 is the one that stopped it
    assert all(r["update_ratio"] is None or r["update_ratio"] > 5 for r in rows[1:])
    # The rejected rounds kept the initial model: the same test metrics as round 0, exactly.
    assert {(r["test_accuracy"], r["test_loss"]) for r in rows} == {(rows[0]["test_accuracy"], rows[0]["test_loss"])}
    assert_nothing_left_running(run_dir)


def test_a_robust_base_strategy_keeps_the_model_healthy_under_the_same_attack(tmp_path):
    run_dir = tmp_path / "run"
    proc = launch(run_dir, *SMALL, "num_rounds=3", "aggregation=fedmedian", app_dir=faulty_app(tmp_path, {3: "scale"}))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = metrics(run_dir)["rounds"]
    assert all(r["round_accepted"] and r["clients_trained"] == 6 for r in rows[1:])
    assert all(r["update_ratio"] < 5 for r in rows[1:])
    assert rows[-1]["test_accuracy"] > 0.3 and math.isfinite(rows[-1]["test_loss"])
    assert_nothing_left_running(run_dir)


def test_a_client_that_sleeps_past_the_timeout_neither_holds_nor_starves_later_rounds(tmp_path):
    timeout = 40
    run_dir = tmp_path / "run"
    proc = launch(run_dir, *SMALL, "num_rounds=4", f"federation.round_timeout={timeout}",
                  "reliability.straggler_cooldown_rounds=2", app_dir=faulty_app(tmp_path, {1: "sleep"}))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = metrics(run_dir)["rounds"]
    # Counts, not stopwatches: round 1 waits for the sleeper until the timeout, rounds 2-3 go on
    # without it, in round 4 it is asked again; every other node trained every round.
    assert all(r["clients_trained"] == 5 for r in rows[1:]), rows
    assert [r["clients_missing"] + r["clients_failed"] for r in rows[1:]] == [1, 0, 0, 1]
    # Deadlines: the server waited for it (at least the round timeout), never for its hour of sleep.
    assert rows[1]["round_seconds"] >= timeout - 1 and rows[-1]["wall_seconds"] < 3600 / 4, rows
    log = proc.stdout + proc.stderr
    assert "sits out rounds 2..3 (no reply within the round timeout)" in log
    assert_nothing_left_running(run_dir)
