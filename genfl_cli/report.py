"""`genfl-report <sweep dir>...`: one row per configuration with its seeds pooled, and the comparison plots.

    genfl-report multirun/2026-11-26/10-00-00 [more dirs or metrics.json files] [--target 0.9] [--out DIR]

Reads every ``metrics.json`` below the given paths (a sweep, several sweeps, single runs). Runs with
the same config except ``seed`` (and paths, devices, timeouts) form one configuration. Writes
``summary.csv``, ``summary.md``, ``summary.json``, ``accuracy_by_round.png`` (mean over seeds, band
from the lowest to the highest seed, one panel per alpha) and ``accuracy_vs_kappa_aug.png`` into
``--out`` (default ``<first dir>/report``). Failed, unfinished, corrupt and missing runs are named on
stderr and in summary.md; the command exits 1 if no completed run was found. What each column means:
server_app/report.py, which does the work (the benchmarks in bench/ use it too).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from server_app.report import build_summary, read_runs, write_tables
from server_app.report_plots import plot_accuracy_by_round, plot_accuracy_vs_kappa


def report(paths: list[Path], out: Path, target: float) -> tuple[dict | None, list[str]]:
    """Read, summarise, write; returns the summary (None when nothing was usable) and the problems."""
    runs, problems = read_runs(paths)
    if not runs:
        return None, problems
    summary = build_summary(runs, target)
    out.mkdir(parents=True, exist_ok=True)
    write_tables(summary, problems, out)
    plot_accuracy_by_round(summary, out / "accuracy_by_round.png")
    plot_accuracy_vs_kappa(summary, out / "accuracy_vs_kappa_aug.png")
    return summary, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="genfl-report", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="sweep folders, run folders or metrics.json files")
    parser.add_argument("--target", type=float, default=0.9, help="accuracy for 'rounds to target' (default 0.9)")
    parser.add_argument("--out", type=Path, help="output folder (default: <first path>/report)")
    args = parser.parse_args(argv)
    out = args.out or (args.paths[0] if args.paths[0].is_dir() else args.paths[0].parent) / "report"
    summary, problems = report(args.paths, out, args.target)
    for problem in problems:
        print(f"genfl-report: not included: {problem}", file=sys.stderr)
    if summary is None:
        print(f"genfl-report: no completed run under {', '.join(map(str, args.paths))}", file=sys.stderr)
        return 1
    print((out / "summary.md").read_text().split("\nNot included")[0], end="")
    print(f"genfl-report: {len(summary['configurations'])} configuration(s) from "
          f"{sum(r['runs'] for r in summary['configurations'])} run(s); written to {out}")
    return 0


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
