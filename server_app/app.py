"""ServerApp: compose the config, wait for the nodes, run the GenFL strategy, evaluate centrally
after every round and write the results folder. Any failure raises, so the run is marked failed."""

from __future__ import annotations

import time
from datetime import datetime
from logging import INFO
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from omegaconf import DictConfig, OmegaConf

from generation.augmented import AugmentedModelTrainer
from generation.factory import build_generator
from server_app.config import load_config, overrides_from_run_config, to_yaml
from server_app.nodes import WatchedGrid, wait_for_federation
from server_app.report import RunReport
from strategy.genfl import GenFL
from strategy.kappa import KappaSchedule
from torchcore.data import Split, load_splits
from torchcore.model import seeded_model
from torchcore.train import TrainSettings, evaluate, load_numpy_state, resolve_device

app = ServerApp()


def run_directory(cfg: DictConfig) -> Path:
    if cfg.output.dir:
        return Path(cfg.output.dir).expanduser().resolve()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return (Path(cfg.output.root).expanduser() / f"{stamp}-{cfg.strategy.name}-{cfg.dataset.name}").resolve()


def train_config(cfg: DictConfig) -> ConfigRecord:
    """Everything a client needs, flattened into one ConfigRecord (conf/ stays the only source)."""
    flat = {
        "seed": cfg.seed,
        "local-epochs": cfg.client.local_epochs,
        "batch-size": cfg.client.batch_size,
        "lr": float(cfg.client.lr),
        "momentum": float(cfg.client.momentum),
        "weight-decay": float(cfg.client.weight_decay),
        "client-device": cfg.client.device,
    }
    for group in ("dataset", "partition"):
        for key, value in OmegaConf.to_container(cfg[group], resolve=True).items():
            if value is not None:
                flat[f"{group}.{key}"] = [float(v) for v in value] if isinstance(value, list) else value
    return ConfigRecord(flat)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = load_config(overrides_from_run_config(context.run_config))
    run_dir = run_directory(cfg)
    report = RunReport(run_dir, OmegaConf.to_container(cfg, resolve=True), run_id=context.run_id)
    log(INFO, "GenFL config:\n%s", to_yaml(cfg))
    try:
        _run(grid, cfg, report)
    except BaseException as err:
        report.set("error", f"{type(err).__name__}: {err}")
        report.finish("failed")
        raise
    report.finish("completed")
    log(INFO, "Results written to %s", run_dir)


def _run(grid: Grid, cfg: DictConfig, report: RunReport) -> None:
    nodes = cfg.nodes
    wait_for_federation(grid, nodes.expected, nodes.min_connected, cfg.federation.node_wait_timeout)
    grid = WatchedGrid(grid, nodes.min_connected, cfg.federation.node_wait_timeout)
    ds = cfg.dataset
    test = load_splits(ds)["test"]
    device = resolve_device(cfg.server.device)
    model_spec = dict(num_classes=ds.num_classes, in_channels=ds.channels, mean=list(ds.mean), std=list(ds.std))
    model = seeded_model(cfg.seed, **model_spec)
    st = cfg.strategy
    kappa = KappaSchedule(st.kappa_fl, st.kappa_aug, st.kappa_schedule, st.kappa_aug_final, cfg.num_rounds)
    augmenter = None
    if kappa.uses_synthetic_data:
        augmenter = _augmenter(cfg, seeded_model(cfg.seed, **model_spec), device, test)
    strategy = GenFL(
        num_classes=ds.num_classes,
        histogram_timeout=cfg.federation.round_timeout,
        kappa=kappa,
        augmenter=augmenter,
        fraction_train=cfg.federation.fraction_train,
        fraction_evaluate=cfg.federation.fraction_evaluate,
        min_train_nodes=1,
        min_evaluate_nodes=1,
        min_available_nodes=nodes.min_connected,
    )
    started = time.monotonic()

    def evaluate_global(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        load_numpy_state(model, dict(zip(arrays.keys(), arrays.to_numpy_ndarrays())))
        loss, accuracy = evaluate(model, test, device, cfg.server.eval_batch_size)
        row = {"round": server_round, "test_accuracy": accuracy, "test_loss": loss}
        row.update(strategy.round_stats.get(server_round, {}))
        row["wall_seconds"] = round(time.monotonic() - started, 2)
        report.add_round(row)
        log(INFO, "round %d/%d: test accuracy %.4f, test loss %.4f, %s clients trained, %.1fs",
            server_round, cfg.num_rounds, accuracy, loss, row.get("clients_trained", "-"), row["wall_seconds"])
        return MetricRecord({"test-accuracy": accuracy, "test-loss": loss})

    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=cfg.num_rounds,
        timeout=cfg.federation.round_timeout,
        train_config=train_config(cfg),
        evaluate_config=train_config(cfg),
        evaluate_fn=evaluate_global,
    )
    report.set("global_label_histogram", strategy.global_histogram)
    report.set("generation", {k: v for k, v in strategy.generation_stats.items()})


def _augmenter(cfg: DictConfig, model: torch.nn.Module, device: torch.device, test: Split) -> AugmentedModelTrainer:
    """The server's synthetic-data trainer; the generator itself loads only when images are needed."""
    aug = cfg.augmented
    return AugmentedModelTrainer(
        make_generator=lambda: build_generator(cfg.generator, cfg.dataset),
        model=model,
        settings=TrainSettings(epochs=aug.epochs, batch_size=aug.batch_size, lr=aug.lr, momentum=aug.momentum,
                               weight_decay=aug.weight_decay, augment=cfg.dataset.augment),
        device=device,
        test=test,
        eval_batch_size=cfg.server.eval_batch_size,
        policy=cfg.generation.policy,
        budget=cfg.generation.budget,
        per_class=cfg.generation.per_class,
        target=cfg.generation.target,
        seed=cfg.seed,
        cache_dir=cfg.generation.cache_dir,
    )
