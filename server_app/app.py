"""ServerApp: compose the config, build the run (server_app/build.py), wait for the nodes, run the GenFL
strategy, evaluate centrally after every round and write the results folder. Any failure raises, so the
run is marked failed."""

from __future__ import annotations

import logging
import time
from logging import INFO, WARNING
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp import strategy as flower_strategies
from omegaconf import DictConfig, OmegaConf

from generation import progress
from generation.augmented import AugmentedModelTrainer
from server_app import build, checkpoint, tracking
from server_app.config import load_config, on_fail_config, overrides_from_run_config, run_directory
from server_app.nodes import WatchedGrid, wait_for_federation
from server_app.results import SYNTHETIC_SAMPLES, RunReport, eta_seconds
from strategy.stats import RoundStats
from genfl_torch.data import Split
from genfl_torch.train import evaluate, load_numpy_state

app = ServerApp()


class NotEnoughContributorsError(RuntimeError):
    """Too few nodes actually trained in this run (reliability.min_contributing_nodes): the run fails."""


class FlowerRoundLog(logging.Filter):
    """Drops the INFO lines of Flower's own strategy loop (a start-up block with both ConfigRecords in full,
    five lines a round, the results again at the end): the run logs one line per round and per phase, and
    metrics.json holds the rest. Flower's warnings and errors pass."""

    FOLDER = str(Path(flower_strategies.__file__).parent)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.pathname.startswith(self.FOLDER)


def quiet_flower_rounds() -> None:
    logger = logging.getLogger("flwr")
    if not any(isinstance(f, FlowerRoundLog) for f in logger.filters):
        logger.addFilter(FlowerRoundLog())


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = load_config(overrides_from_run_config(context.run_config))
    torch.set_num_threads(cfg.server.threads)
    run_dir = run_directory(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    resumed = checkpoint.load(run_dir, config) if cfg.output.resume else None
    report = RunReport(run_dir, config, rounds=resumed["rounds"] if resumed else None, run_id=context.run_id)
    quiet_flower_rounds()  # the config is in metrics.json (genfl-run --show-config prints it)
    progress.use_log(lambda line: log(INFO, "%s", line))  # this process's output is `flwr log`: lines, no bars
    try:
        if (tracker := tracking.build(config, run_dir)) is not None:  # before round 1: a backend that cannot start fails the run
            report.track(tracker)
            log(INFO, "tracking: %s", tracker.describe())
        _run(grid, cfg, report, resumed)
    except BaseException as err:
        report.set("error", f"{type(err).__name__}: {err}")
        report.finish("failed")
        raise
    report.finish("completed")
    log(INFO, "Results written to %s", run_dir)


def _run(grid: Grid, cfg: DictConfig, report: RunReport, resumed: dict | None) -> None:
    fed = cfg.federation
    wait_for_federation(grid, fed.expected_nodes, fed.node_wait_timeout)
    # Flower's sampling waits (forever) for min_available_nodes; fail instead once they stay missing.
    grid = WatchedGrid(grid, minimum=max(fed.min_train_nodes, fed.min_evaluate_nodes), timeout=fed.node_wait_timeout)
    # With the generator check the run starts with generator_check.on_fail's cautious settings and a
    # trusted generator switches to the configured ones before round 1 (strategy/generator_check.py).
    run = build.server_run(cfg, on_fail_config(cfg) or cfg, num_nodes=len(list(grid.get_node_ids())), resumed=resumed)
    strategy, augmenter, model, test, device = run.strategy, run.augmenter, run.model, run.test, run.device
    if resumed:
        log(INFO, "resuming after round %d from %s", resumed["round"], checkpoint.checkpoint_path(report.run_dir))
    started = time.monotonic() - (report.data["rounds"][-1]["wall_seconds"] if report.data["rounds"] else 0.0)
    last = [time.monotonic()]  # when the previous round ended (resumed: the restart, not the first attempt's start)
    one_time: dict[int, float] = {}  # round -> seconds of one-time work in it (strategy.one_time_seconds): not for the ETA

    def evaluate_and_checkpoint(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Central evaluation, the metrics row, then the checkpoint: the round is done."""
        load_numpy_state(model, dict(zip(arrays.keys(), arrays.to_numpy_ndarrays())))
        loss, accuracy = evaluate(model, test, device, cfg.server.eval_batch_size, cfg.server.fast_cuda)
        stats = strategy.round_stats.get(server_round, RoundStats(server_round))
        now = time.monotonic()
        stats.update(test_accuracy=accuracy, test_loss=loss, wall_seconds=round(now - started, 2),
                     round_seconds=round(now - last[0], 2) if server_round else None)
        last[0] = now
        if server_round:
            one_time[server_round] = strategy.one_time_seconds - sum(one_time.values())
        report.add_round(stats.row())
        eta = eta_seconds(report.data["rounds"], cfg.num_rounds, one_time) if 0 < server_round < cfg.num_rounds else None
        log(INFO, "round %d/%d: test accuracy %.4f, test loss %.4f, %s clients trained, %.1fs%s", server_round,
            cfg.num_rounds, accuracy, loss, "-" if stats.clients_trained is None else stats.clients_trained,
            stats.wall_seconds, "" if eta is None else f", ETA {progress.duration(eta)}")
        report.set("global_label_histogram", strategy.global_histogram)
        report.set("generation", dict(strategy.generation_stats))
        if strategy.generator_check is not None:
            report.set("generator_check", strategy.generator_check)
        report.set("nodes", strategy.ledger.rows())
        if cfg.checkpoint.enabled and server_round > 0 and not strategy.stopping:
            checkpoint.save(report.run_dir, server_round=server_round,
                            arrays=dict(zip(arrays.keys(), arrays.to_numpy_ndarrays())),
                            strategy={**strategy.state_dict(),
                                      build.AUGMENTER_STATE: augmenter.state_dict() if augmenter is not None else None},
                            rounds=report.data["rounds"], config=report.data["config"])
        return MetricRecord({"test-accuracy": accuracy, "test-loss": loss})

    strategy.start(grid=grid, initial_arrays=run.initial, num_rounds=cfg.num_rounds, timeout=fed.round_timeout,
                   train_config=build.client_config(cfg), evaluate_config=build.client_config(cfg),
                   evaluate_fn=evaluate_and_checkpoint)
    report.set("global_label_histogram", strategy.global_histogram)
    report.set("generation", dict(strategy.generation_stats))
    report.set("nodes", strategy.ledger.rows())
    if augmenter is not None and augmenter.synthetic is not None and len(augmenter.synthetic):
        _quality_report(cfg, report, model, augmenter, test, device)  # model holds the final global model
    ledger, least = strategy.ledger, cfg.reliability.min_contributing_nodes
    log(WARNING if ledger.contributors() < len(ledger.nodes) else INFO, "nodes: %s", ledger.summary())
    if least is not None and cfg.strategy.kappa_aug < 1 and ledger.contributors() < least:
        raise NotEnoughContributorsError(f"{ledger.contributors()} node(s) trained, fewer than "
                                         f"reliability.min_contributing_nodes={least}: {ledger.summary()}")
    if strategy.generation_stats.get("images_requested", 0) > sum(strategy.generation_stats.get("plan", {}).values()):
        log(WARNING, "generation.budget=%s scaled the plan down from %d to %d images", cfg.generation.budget,
            strategy.generation_stats["images_requested"], sum(strategy.generation_stats["plan"].values()))


def _quality_report(cfg: DictConfig, report: RunReport, model: torch.nn.Module, augmenter: AugmentedModelTrainer,
                    test: Split, device: torch.device) -> None:
    """How the synthetic set relates to the real data (generation/quality.py) and the picture of it."""
    from generation.quality import METRICS_KEY, disagreement_warning, save_sample_grid, synthetic_quality
    from genfl_torch.classes import BUILTIN_CLASS_NAMES

    kept, ds = augmenter.kept_mask, cfg.dataset
    started = time.monotonic()
    try:
        scores = synthetic_quality(model, augmenter.synthetic, test, device, seed=cfg.seed, num_classes=ds.num_classes,
                                   kept_mask=kept)
        save_sample_grid(report.run_dir / SYNTHETIC_SAMPLES, augmenter.synthetic, ds.num_classes, kept_mask=kept,
                         class_names=BUILTIN_CLASS_NAMES.get(ds.name))
    except Exception as err:  # a finished run must not fail over its report, but it says so
        log(WARNING, "synthetic-data quality report failed: %s: %s", type(err).__name__, err)
        scores = {"error": f"{type(err).__name__}: {err}"}
    scores["seconds"] = round(time.monotonic() - started, 2)
    report.set(METRICS_KEY, scores)
    def short(value):
        return round(value, 3) if isinstance(value, float) else value

    log(INFO, "synthetic data: label agreement with the final model %s (all images; kept ones %s), real-vs-synthetic "
        "separability (AUC) %s; samples in %s", short(scores.get("agreement_all")), short(scores.get("agreement")),
        short(scores.get("separability_auc")), SYNTHETIC_SAMPLES)
    if (warning := disagreement_warning(scores, build.class_names(cfg))) is not None:
        log(WARNING, "%s", warning)
