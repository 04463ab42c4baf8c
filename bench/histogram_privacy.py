"""What local differential privacy on the label histograms does to the generation plan and to accuracy.

Part 1 (no Flower, seconds): the 20 digits partitions of the embedded default report noisy
histograms (Laplace, epsilon per node); the plan the server makes from their sum is compared with
the plan from the exact histograms, over many noise draws.
Part 2 (real `genfl-run` simulations): final test accuracy of GenFL with that plan policy per epsilon.

    python bench/histogram_privacy.py            # writes bench/results/histogram_privacy.json
    python bench/histogram_privacy.py --plan-only
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from generation.planning import plan_generation  # noqa: E402
from server_app.config import load_config  # noqa: E402
from genfl_torch.data import load_splits  # noqa: E402
from genfl_torch.partition import dirichlet_partitions, label_histogram  # noqa: E402
from genfl_torch.privacy import privatize_histogram  # noqa: E402

EPSILONS = [0.1, 0.5, 1.0, 2.0, 5.0]
# A plan that depends on the histogram: lift every class to 150 images (the federation has ~108 each).
POLICY = ["generation.policy=balance", "generation.target=150"]


def plan_error(draws: int) -> dict:
    cfg = load_config(POLICY)
    labels = load_splits(cfg.dataset)["federation"].labels.numpy()
    parts = dirichlet_partitions(labels, cfg.federation.num_clients, cfg.partition.alpha, cfg.seed,
                                 cfg.partition.min_partition_size, cfg.partition.self_balancing)
    exact = [label_histogram(labels[p], cfg.dataset.num_classes) for p in parts]
    gen = cfg.generation
    settings = dict(budget=gen.budget, per_class=gen.per_class, target=gen.target)
    exact_plan = np.array(list(plan_generation(np.sum(exact, axis=0), gen.policy, **settings).values()))
    rng = np.random.default_rng(0)
    results = {}
    for epsilon in EPSILONS:
        l1, totals = [], []
        for _ in range(draws):
            noisy = [privatize_histogram(h, "laplace", epsilon, 0.0, rng) for h in exact]
            plan = np.array(list(plan_generation(np.sum(noisy, axis=0), gen.policy, **settings).values()))
            l1.append(int(np.abs(plan - exact_plan).sum()))
            totals.append(int(plan.sum()))
        results[str(epsilon)] = {"plan_l1_error_mean": round(float(np.mean(l1)), 1),
                                 "plan_l1_error_p95": float(np.percentile(l1, 95)),
                                 "plan_total_mean": round(float(np.mean(totals)), 1)}
        print(f"epsilon {epsilon}: plan L1 error mean {results[str(epsilon)]['plan_l1_error_mean']} "
              f"(exact plan total {int(exact_plan.sum())})", flush=True)
    return {"exact_plan": exact_plan.tolist(), "draws": draws, "per_epsilon": results,
            "nodes": cfg.federation.num_clients, "policy": POLICY}


def accuracy(epsilons: list[float | None], rounds: int) -> dict:
    results = {}
    for epsilon in epsilons:
        privacy = ["histogram_privacy.mechanism=none"] if epsilon is None else [
            "histogram_privacy.mechanism=laplace", f"histogram_privacy.epsilon={epsilon}",
            "histogram_privacy.reproducible_noise=true"]
        run_dir = ROOT / "outputs" / "bench-histogram-privacy" / f"eps-{epsilon}"
        started = time.perf_counter()
        code = subprocess.run([sys.executable, "-m", "genfl_cli.run", *POLICY, *privacy, f"num_rounds={rounds}",
                               f"output.dir={run_dir}"], cwd=ROOT).returncode  # genfl-run
        metrics = json.loads((run_dir / "metrics.json").read_text())
        rows = metrics["rounds"]
        results["none" if epsilon is None else str(epsilon)] = {
            "exit_code": code, "final_test_accuracy": rows[-1]["test_accuracy"],
            "accuracy_by_round": [round(r["test_accuracy"], 4) for r in rows[1:]],
            "plan": metrics["generation"]["plan"], "global_label_histogram": metrics["global_label_histogram"],
            "wall_seconds": round(time.perf_counter() - started, 1)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan-only", action="store_true")
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    result = {"machine": platform.processor() or platform.machine(), "plan": plan_error(args.draws)}
    if not args.plan_only:
        result["accuracy"] = accuracy([None, 1.0, 0.1], args.rounds)
    out = ROOT / "bench" / "results" / "histogram_privacy.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
