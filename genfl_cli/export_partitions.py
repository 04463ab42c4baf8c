"""`genfl-export-partitions`: write a built-in data set's partitions as image folders for edge nodes.

    genfl-export-partitions --num-partitions 3 --out /srv/genfl-data [hydra overrides]

gives ``/srv/genfl-data/partition-<i>/<class name>/<n>.png``, exactly partition i of N as the
simulation would hand it out (same data set, seed and ``partition.*`` settings from conf/), so a
SuperNode started with ``--node-config 'data-path="/srv/genfl-data/partition-0"'`` trains on real files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from server_app.config import ConfigError
from server_app.partitions import export


EXAMPLES = """examples:
  genfl-export-partitions --num-partitions 3 --out exported
  genfl-export-partitions --num-partitions 5 --only 0,2 --out exported-skewed seed=1 partition.alpha=0.1
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genfl-export-partitions",
        description="Export a built-in data set's Dirichlet partitions as ImageFolder-style PNG folders.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--num-partitions", type=int, required=True, help="N: how many partitions to cut (one per SuperNode)")
    parser.add_argument("--out", type=Path, required=True, help="folder to write partition-<i>/ into")
    parser.add_argument("--only", default=None, help="comma-separated partition ids to write (default: all N)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for genfl-run (seed=1 partition.alpha=0.1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    prog = "genfl-export-partitions"
    if args.num_partitions < 1:
        print(f"{prog}: error: --num-partitions must be >= 1 (got {args.num_partitions})", file=sys.stderr)
        return 2
    try:
        only = None if args.only is None else [int(p) for p in args.only.split(",") if p.strip()]
    except ValueError:
        print(f"{prog}: error: --only takes comma-separated partition ids, e.g. 0,2 (got {args.only!r})", file=sys.stderr)
        return 2
    if only is not None and not all(0 <= p < args.num_partitions for p in only):
        print(f"{prog}: error: --only ids must lie in 0..{args.num_partitions - 1} (got {args.only})", file=sys.stderr)
        return 2
    try:
        written = export(args.out, args.num_partitions, only, args.overrides)
    except ConfigError as err:
        print(f"{prog}: config error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # ImageFolderError (folder not empty), PartitionError (impossible split)
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    for partition_id, counts in written.items():
        print(f"partition-{partition_id}: {sum(counts)} images, per class {counts} -> {args.out / f'partition-{partition_id}'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
