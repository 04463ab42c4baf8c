"""The federated loop with no Flower at all: same partitions, model, client training and Eq. (1)
mixing, run sequentially in one process. It is the raw baseline that `genfl-run` is compared to
(bench/flower_overhead.py), and a quick way to explore settings on a laptop.

    python bench/raw_federated.py strategy=base_only num_rounds=5 client.local_epochs=2
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server_app.config import load_config  # noqa: E402
from genfl_protocol.mixing import weighted_mix  # noqa: E402
from genfl_torch.data import load_splits  # noqa: E402
from genfl_torch.model import build_resnet18, seeded_model  # noqa: E402
from genfl_torch.partition import dirichlet_partitions  # noqa: E402
from genfl_torch.train import TrainSettings, evaluate, load_numpy_state, state_to_numpy, train  # noqa: E402


def run(overrides: list[str]) -> dict:
    cfg = load_config(overrides)
    ds, part = cfg.dataset, cfg.partition
    splits = load_splits(ds)
    federation, test = splits["federation"], splits["test"]
    parts = dirichlet_partitions(federation.labels.numpy(), cfg.federation.num_clients, part.alpha, cfg.seed,
                                 part.min_partition_size, part.self_balancing)
    spec = dict(num_classes=ds.num_classes, in_channels=ds.channels, mean=list(ds.mean), std=list(ds.std),
                norm=cfg.model.norm)
    model, worker = seeded_model(cfg.seed, **spec), build_resnet18(**spec)
    settings = TrainSettings(cfg.client.local_epochs, cfg.client.batch_size, cfg.client.lr, cfg.client.momentum,
                             cfg.client.weight_decay, ds.augment, proximal_mu=0.0, max_steps=None,
                             fast_cuda=cfg.client.fast_cuda)
    device = torch.device("cpu")
    rows, started = [], time.perf_counter()
    global_state = state_to_numpy(model)
    sampled = max(1, int(cfg.federation.num_clients * cfg.federation.fraction_train))
    generator = torch.Generator().manual_seed(cfg.seed)
    for server_round in range(1, cfg.num_rounds + 1):
        chosen = torch.randperm(cfg.federation.num_clients, generator=generator)[:sampled].tolist()
        states, counts = [], []
        for cid in chosen:
            load_numpy_state(worker, global_state)
            train(worker, federation.subset(parts[cid]), settings, device, seed=cfg.seed * 1_000_003 + server_round * 1_009 + cid)
            states.append(state_to_numpy(worker))
            counts.append(len(parts[cid]))
        global_state = weighted_mix(states, [n / sum(counts) for n in counts])  # FedAvg's rho_n
        load_numpy_state(model, global_state)
        loss, accuracy = evaluate(model, test, device, cfg.server.eval_batch_size, cfg.server.fast_cuda)
        rows.append({"round": server_round, "test_accuracy": accuracy, "test_loss": loss,
                     "wall_seconds": round(time.perf_counter() - started, 2)})
        print(json.dumps(rows[-1]), flush=True)
    return {"overrides": overrides, "rounds": rows}


if __name__ == "__main__":
    run(sys.argv[1:])
