"""`genfl-generate`: synthesise (and cache) a run's synthetic set ahead of training.

Takes the same Hydra overrides as `genfl-run` and fills the same cache, so the run that follows
finds its images there. In simulation the federation's global label histogram is the federation
split's; for a deployment, give the counts the SuperNodes reported with ``--histogram 5,0,9,...``.
Under ``accelerate launch --num_processes N`` the plan is split by class over the processes and
the main process writes one cache entry, identical to a single-process run's.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

import numpy as np

from generation.cache import cache_path, generate_cached, quantise, read_entry, write_entry
from generation.factory import build_generator
from generation.planning import plan_generation, requested_images
from server_app.config import ConfigError, load_config


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, like every other bad input here
        self.exit(2, f"genfl-generate: {message}\n")


def parse_histogram(text: str, num_classes: int) -> list[int]:
    """``"5,0,9"`` -> ``[5, 0, 9]``; raises ValueError with a one-line reason."""
    parts = [p.strip() for p in text.split(",")]
    try:
        counts = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"--histogram: expected {num_classes} comma-separated integers, got {text!r}") from None
    if len(counts) != num_classes or min(counts) < 0:
        raise ValueError(f"--histogram: needs {num_classes} counts >= 0 (one per class), got {len(counts)}: {text!r}")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="genfl-generate", description=__doc__.splitlines()[0])
    parser.add_argument("--histogram", help="comma-separated global label counts (default: the federation split's)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for genfl-run")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.overrides)
        if args.histogram is not None:
            histogram = parse_histogram(args.histogram, cfg.dataset.num_classes)
        else:
            from genfl_torch.data import load_splits

            labels = load_splits(cfg.dataset)["federation"].labels.numpy()
            histogram = np.bincount(labels, minlength=cfg.dataset.num_classes).tolist()
    except (ConfigError, ValueError) as err:
        print(f"genfl-generate: {'config error: ' if isinstance(err, ConfigError) else ''}{err}", file=sys.stderr)
        return 2
    gen = cfg.generation
    settings = dict(budget=gen.budget, per_class=gen.per_class, target=gen.target)
    plan = plan_generation(histogram, gen.policy, **settings)
    requested = sum(requested_images(histogram, gen.policy, **settings))
    if requested > sum(plan.values()):
        print(f"genfl-generate: generation.budget={gen.budget} scaled the plan down from {requested} to "
              f"{sum(plan.values())} images", file=sys.stderr)
    started = time.perf_counter()
    generator = build_generator(cfg.generator, cfg.dataset)
    shards = _accelerate_state()
    if shards is None:
        images, labels, hit = generate_cached(generator, plan, cfg.seed, gen.cache_dir)
    else:
        images, labels, hit = _generate_sharded(generator, plan, cfg.seed, gen.cache_dir, *shards)
        if images is None:
            return 0  # a worker process: the main process reports
    print(f"genfl-generate: {len(labels)} images {tuple(images.shape[1:])} "
          f"{'found in' if hit else 'generated into'} {gen.cache_dir} in {time.perf_counter() - started:.1f}s; plan {plan}")
    return 0


def _accelerate_state():
    """(PartialState, rank, world size) under `accelerate launch` with several processes, else None."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    state = PartialState()
    return state, state.process_index, state.num_processes


def _generate_sharded(generator, plan, seed, cache_dir, state, rank, world):
    """Classes are dealt round-robin to the processes; a class's images depend only on (seed, class,
    count), so the concatenation in class order equals what one process would have made."""
    if not cache_dir:
        raise ValueError("sharded generation writes through the cache: set generation.cache_dir")
    path = cache_path(generator, plan, seed, cache_dir)
    if path.is_file() and (entry := read_entry(path, plan)) is not None:
        return (*entry, True) if rank == 0 else (None, None, True)
    classes = [c for c in sorted(plan) if plan[c] > 0]
    mine = {c: plan[c] for c in classes[rank::world]}
    images, labels = generator.generate(mine, seed=seed)
    shard = _shard_path(path, rank)
    write_entry(shard, quantise(images), labels, {"shard": rank, "of": world, "plan": mine},
                shortfall=_shortfall(mine, labels))
    state.wait_for_everyone()
    if rank != 0:
        return None, None, False
    import torch

    shares = [{c: plan[c] for c in classes[r::world]} for r in range(world)]
    parts = [read_entry(_shard_path(path, r), share) for r, share in enumerate(shares)]
    if any(part is None for part in parts):
        raise RuntimeError(f"a shard of {path} could not be read back (see the warning above); run genfl-generate again")
    by_class = {}
    for part_images, part_labels in parts:
        for c in part_labels.unique().tolist():
            by_class[c] = part_images[part_labels == c]
    images = torch.cat([by_class[c] for c in sorted(by_class)]) if by_class else torch.zeros(0, dtype=torch.uint8)
    labels = torch.cat([torch.full((len(by_class[c]),), c, dtype=torch.int64) for c in sorted(by_class)]) if by_class \
        else torch.zeros(0, dtype=torch.int64)
    write_entry(path, images, labels, {"fingerprint": generator.fingerprint(), "plan": dict(plan), "seed": seed,
                                       "shards": world}, shortfall=_shortfall(plan, labels))
    for r in range(world):
        _shard_path(path, r).unlink(missing_ok=True)
        _shard_path(path, r).with_suffix(".json").unlink(missing_ok=True)
    return images, labels, False


def _shortfall(plan, labels) -> dict[int, int]:
    """Images per class the generator could not make (safety-checker drops), recorded in the entry."""
    made = Counter(labels.tolist())
    return {int(c): int(n) - made[int(c)] for c, n in plan.items() if made[int(c)] < int(n)}


def _shard_path(path, rank: int):
    return path.with_name(f"{path.stem}.shard{rank}{path.suffix}")


if __name__ == "__main__":
    sys.exit(main())
