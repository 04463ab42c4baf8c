"""`genfl-generate`: synthesise (and cache) a run's synthetic set ahead of training.

Takes the same Hydra overrides as `genfl-run` and fills the same cache, so the run that follows
finds its images there. In simulation the federation's global label histogram is the federation
split's; for a deployment, give the counts the SuperNodes reported with ``--histogram 5,0,9,...``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from generation.cache import generate_cached
from generation.factory import build_generator
from generation.planning import plan_generation
from server_app.config import ConfigError, load_config
from torchcore.data import load_splits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="genfl-generate", description=__doc__.splitlines()[0])
    parser.add_argument("--histogram", help="comma-separated global label counts (default: the federation split's)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for genfl-run")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.overrides)
    except ConfigError as err:
        print(f"genfl-generate: config error: {err}", file=sys.stderr)
        return 2
    if args.histogram:
        histogram = [int(c) for c in args.histogram.split(",")]
        if len(histogram) != cfg.dataset.num_classes or min(histogram) < 0:
            print(f"genfl-generate: --histogram needs {cfg.dataset.num_classes} counts >= 0", file=sys.stderr)
            return 2
    else:
        labels = load_splits(cfg.dataset)["federation"].labels.numpy()
        histogram = np.bincount(labels, minlength=cfg.dataset.num_classes).tolist()
    gen = cfg.generation
    plan = plan_generation(histogram, gen.policy, budget=gen.budget, per_class=gen.per_class, target=gen.target)
    started = time.perf_counter()
    images, labels, hit = generate_cached(build_generator(cfg.generator, cfg.dataset), plan, cfg.seed, gen.cache_dir)
    print(f"genfl-generate: {len(labels)} images {tuple(images.shape[1:])} "
          f"{'found in' if hit else 'generated into'} {gen.cache_dir} in {time.perf_counter() - started:.1f}s; plan {plan}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
