"""Training the augmented model beside the clients gives exactly the numbers of training it after them.

Real ClientApps (client_app/app.py) answer through the in-memory Grid, and the real augmenter trains
ResNet-18 on generated digits; only the order in which the server's work happens differs.
"""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from client_app.app import app as client_app
from local_grid import LocalGrid, client_app_node
from server_app.build import augmenter as _augmenter, base_strategy, kappa_schedule, reliability
from server_app.build import client_config as train_config
from strategy.genfl import GenFL
from genfl_torch.data import load_splits
from genfl_torch.model import seeded_model
from genfl_torch.train import resolve_device


def _run(cfg, cache_dir):
    torch.set_num_threads(1)
    ds = cfg.dataset
    spec = dict(num_classes=ds.num_classes, in_channels=ds.channels, mean=list(ds.mean), std=list(ds.std))
    nodes = {500 + p: client_app_node(client_app, p, 3, 500 + p) for p in range(3)}
    grid = LocalGrid(nodes, reply_order=lambda replies: replies[::-1])
    strategy = GenFL(
        base_strategy(cfg, num_nodes=3), num_classes=ds.num_classes,
        kappa=kappa_schedule(cfg),
        augmenter=_augmenter(cfg, seeded_model(cfg.seed, **spec), resolve_device("cpu"), load_splits(ds)["test"]),
        histogram_timeout=60, seed=cfg.seed, reliability=reliability(cfg))
    result = strategy.start(grid, ArrayRecord(seeded_model(cfg.seed, **spec).state_dict()), num_rounds=cfg.num_rounds,
                            timeout=60, train_config=train_config(cfg))
    return dict(zip(result.arrays.keys(), result.arrays.to_numpy_ndarrays())), {r: s.row() for r, s in strategy.round_stats.items()}


cfg_overrides = ["federation.num_clients=3", "num_rounds=2", "generation.per_class=8"]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    from server_app.config import load_config

    cfg_overrides.append(f"generation.cache_dir={tmp_path_factory.mktemp('cache')}")
    return load_config(cfg_overrides)


def test_overlapped_and_sequential_server_work_give_identical_models_and_metrics(cfg):
    from server_app.config import load_config

    overlapped, overlapped_stats = _run(cfg, None)
    sequential, sequential_stats = _run(load_config([*cfg_overrides, "server.overlap=false"]), None)
    for key in overlapped:
        np.testing.assert_array_equal(overlapped[key], sequential[key], err_msg=key)
    drop = {"augmented_train_seconds", "generation_seconds", "images_synthesized"}
    assert [{k: v for k, v in s.items() if k not in drop} for s in overlapped_stats.values()] == \
           [{k: v for k, v in s.items() if k not in drop} for s in sequential_stats.values()]
    assert overlapped_stats[2]["clients_trained"] == 3 and overlapped_stats[2]["images_used"] == 80
