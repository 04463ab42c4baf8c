"""Issue 16's benchmark: does GenFL stay at or above FedAvg whatever its generator?

    python bench/robustness.py run screen     # every mechanism alone, seed 0, fonts generator (resumable)
    python bench/robustness.py run final      # the chosen configuration and constant kappa, seeds 0-2, both generators
    python bench/robustness.py report         # bench/results/robustness.json/.md and the plots

Setting: bench/convergence.py's (digits, 20 clients, alpha 0.1, 30 rounds, ResNet-18 with BatchNorm),
with the domain-shifted `fonts` generator and the in-distribution one. Runs live under
outputs/convergence (FedAvg's jobs are the convergence benchmark's own, shared). One simulation at a
time; re-running skips completed jobs and continues a stopped one from its checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import convergence  # noqa: E402  (bench/convergence.py: the same runner, the same folders)

FEDAVG = ("main", ["strategy=fedavg", "partition.alpha=0.1"])
FONTS, DIGITS = "robust_fonts", "robust_digits"
ADAPTIVE, CONSTANT = "mix.kappa_policy=adaptive", "mix.kappa_policy=constant"
PLANS = {
    # Screen: each mechanism alone on seed 0 with the shifted generator, against constant kappa (the
    # control_fonts piece's genfl run) and FedAvg; round-aware augmentation at 10 of 40 clients.
    "screen": [
        (FONTS, [ADAPTIVE, "mix.bn_stats=clients", "seed=0"]),
        (FONTS, [CONSTANT, "mix.bn_stats=clients", "seed=0"]),
        (FONTS, [ADAPTIVE, "mix.bn_stats=mixed", "seed=0"]),
        (FEDAVG[0], FEDAVG[1] + ["seed=0"]),
        (FONTS, [CONSTANT, "mix.bn_stats=reestimate", "seed=0"]),
        (FONTS, [CONSTANT, "mix.bn_stats=mixed", "augmented.filter.mode=confidence", "seed=0"]),
        ("participation", ["seed=0"]),
        ("robust_participation", ["seed=0"]),
        (FONTS, [CONSTANT, "mix.bn_stats=mixed", "seed=0"]),
        (FONTS, [ADAPTIVE, "mix.bn_stats=reestimate", "seed=0"]),
    ],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/robustness.py", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("run",))
    parser.add_argument("plan", choices=sorted(PLANS))
    args = parser.parse_args(argv)
    return convergence.run(PLANS[args.plan], convergence.ROOT)


if __name__ == "__main__":
    sys.exit(main())
