"""Render the offline generator's samples, a row per class, to a PNG: the picture in docs/offline-generator.md.

    python bench/sample_grid.py                                    # both committed generators -> docs/img/
    python bench/sample_grid.py --corpus fonts --per-class 12 --out /tmp/fonts.png
    python bench/sample_grid.py --corpus digits-public generator.sampling_steps=10   # any genfl-run override

Uses the same path as a run (Hydra config -> `generation.factory.build_generator` -> `generate`) and the
same grid as a run's `synthetic_samples.png` (`generation.quality.save_sample_grid`), but no cache and no
Flower: about 45 s for both on a shared 2-core CPU. Same seed, same machine type -> the same picture.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CORPORA = ("digits-public", "fonts")  # the two committed offline generators


def render(corpus: str, out: Path, per_class: int, seed: int, overrides: list[str]) -> Path:
    """Generate ``per_class`` images of every class with the ``corpus`` generator and write the grid to ``out``."""
    from generation.factory import build_generator
    from generation.quality import save_sample_grid
    from server_app.config import load_config
    from genfl_torch.data import Split

    cfg = load_config(["generator=class_conditional", f"generator.corpus={corpus}", f"seed={seed}", *overrides])
    generator = build_generator(cfg.generator, cfg.dataset)
    images, labels = generator.generate({c: per_class for c in range(cfg.dataset.num_classes)}, seed=seed)
    title = f"offline generator, corpus={corpus}: {per_class} samples per class (seed {seed})"
    return save_sample_grid(out, Split(images, labels), cfg.dataset.num_classes, per_class=per_class, title=title)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", choices=CORPORA, action="append", help="default: both")
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="output PNG (one --corpus only); default docs/img/samples-<corpus>.png")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for genfl-run")
    args = parser.parse_args(argv)
    corpora = args.corpus or list(CORPORA)
    if args.out is not None and len(corpora) != 1:
        parser.error("--out needs exactly one --corpus")
    for corpus in corpora:
        out = args.out or REPO / "docs" / "img" / f"samples-{corpus}.png"
        path = render(corpus, out, args.per_class, args.seed, args.overrides)
        shown = path.resolve().relative_to(REPO) if path.resolve().is_relative_to(REPO) else path
        print(f"sample_grid: {shown} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
