"""Are FedAvg's swings at alpha 0.1 an artefact of the aggregated BatchNorm statistics? (issue 16, item 2)

    python bench/bn_diagnostic.py RUN_DIR [RUN_DIR ...]    # bench/results/bn_diagnostic.json

For each finished run (its checkpoint holds the final global model, its metrics.json the config that
fixes the clients' partitions) the final model is scored on the test split with its BatchNorm running
statistics as aggregated and as re-estimated in three ways, weights unchanged:
- ``train_mode_per_node``: what `mix.bn_stats=reestimate` does (genfl_torch/bn.py on every node's data,
  combined by the law of total variance): each node normalises its own batch on the way through;
- ``pooled``: "precise BN" over the union of every client's training data in one batch (what a server
  holding all the data would compute: the reference no federated protocol can beat);
- ``eval_mode_pass_k``: each BatchNorm layer's input statistics with the model in eval mode (earlier
  layers normalised with the current statistics), combined over nodes, iterated k times.
If the pooled statistics do not beat the aggregated ones, re-estimating cannot be what GenFL needs.
"""

from __future__ import annotations

import json
import os
import pickle
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from genfl_protocol.contract import ClientConfig  # noqa: E402
from genfl_torch.bn import bn_statistics  # noqa: E402
from genfl_torch.data import Split, as_float, load_splits  # noqa: E402
from genfl_protocol.mixing import combine_bn_statistics  # noqa: E402
from genfl_torch.model import seeded_model  # noqa: E402
from genfl_torch.partition import client_partition  # noqa: E402
from genfl_torch.train import evaluate, load_numpy_state  # noqa: E402

CPU = torch.device("cpu")


@torch.no_grad()
def eval_mode_statistics(model: torch.nn.Module, data: Split) -> dict[str, np.ndarray]:
    """Each BatchNorm layer's input mean/variance with the model in eval mode (one batch)."""
    inputs = {}
    layers = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    hooks = [m.register_forward_pre_hook(lambda mod, x, n=n: inputs.setdefault(n, x[0])) for n, m in layers.items()]
    model.eval()
    model(as_float(data.images))
    for hook in hooks:
        hook.remove()
    out = {}
    for name, x in inputs.items():
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)
        out[f"{name}.running_mean"] = flat.mean(1).numpy()
        out[f"{name}.running_var"] = flat.var(1, unbiased=False).numpy()
    return out


def diagnose(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    cfg = OmegaConf.create(metrics["config"])
    with open(run_dir / "checkpoint" / "latest.pkl", "rb") as handle:
        checkpoint = pickle.load(handle)
    arrays = checkpoint["arrays"]
    ds = cfg.dataset
    spec = {"num_classes": ds.num_classes, "in_channels": ds.channels, "mean": list(ds.mean), "std": list(ds.std),
            "norm": cfg.model.norm}
    test = load_splits(ds)["test"]
    from server_app.build import client_config  # the same ConfigRecord the clients received

    data_spec = ClientConfig.from_record(client_config(cfg)).data_spec()
    n = cfg.federation.num_clients
    parts = [client_partition(data_spec, i, n) for i in range(n)]

    def model_with(stats: dict | None = None) -> torch.nn.Module:
        model = seeded_model(0, **spec)
        load_numpy_state(model, {**arrays, **{k: v.astype(arrays[k].dtype) for k, v in (stats or {}).items()}})
        return model

    def accuracy(stats: dict | None = None) -> float:
        return round(evaluate(model_with(stats), test, CPU, 512, False)[1], 4)

    final = model_with()
    union = Split(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))
    result = {
        "run": str(run_dir.relative_to(REPO)) if run_dir.is_relative_to(REPO) else str(run_dir),
        "strategy": cfg.strategy.name, "seed": cfg.seed, "round": checkpoint.get("round"),
        "recorded_test_accuracy": metrics["rounds"][-1]["test_accuracy"],
        "as_aggregated": accuracy(),
        "train_mode_per_node": accuracy(combine_bn_statistics([(bn_statistics(final, p, CPU, 4096), len(p)) for p in parts])),
        "pooled": accuracy(bn_statistics(final, union, CPU, len(union))),
    }
    current: dict = {}
    for k in (1, 2, 3):
        model = model_with(current)
        current = combine_bn_statistics([(eval_mode_statistics(model, p), len(p)) for p in parts])
        result[f"eval_mode_pass_{k}"] = accuracy(current)
    return result


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    torch.set_num_threads(1)
    results = [diagnose(Path(a).resolve()) for a in argv]
    out = {"what": "test accuracy of each run's final global model under other BatchNorm statistics (same weights)",
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "runs": results}
    path = REPO / "bench" / "results" / "bn_diagnostic.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
