"""The offline convergence benchmark: FedAvg vs AIGC-only vs GenFL on digits, with controls.

    python bench/convergence.py run [PIECE ...]   # all pieces by default; re-run the same command to resume
    python bench/convergence.py report            # bench/results/convergence.json, .md and the plots
    python bench/convergence.py tiny              # the whole pipeline, small (2 rounds, seed 0, few arms)

Each piece is a preset, conf/experiment/convergence/<piece>.yaml, whose grid is a Hydra sweep; ``run``
executes ``genfl-sweep +experiment=convergence/<piece> hydra.sweep.dir=outputs/convergence/<piece>``
for each piece (the commands are printed, so a piece can also be run by hand), and ``report`` reads
those folders with genfl-report's functions. A stopped piece resumes where it stopped: completed
jobs are skipped.

Pieces and runs (all 30 rounds, 20 clients unless said, seeds 0-2):
  main               fedavg / aigc_only / genfl x alpha 0.1, 0.3, 1.0             27 runs
  kappa              genfl kappa_aug 0.1, 0.5, 0.7, 0.9 at alpha 0.1                12 runs
                     (main gives 0 = FedAvg, 0.3 = GenFL, 1 = AIGC-only)
  participation      fedavg / genfl, 10 of 50 clients per round, alpha 0.1          6 runs
  control_corpus     (a) aigc_only / genfl on the generator's own training corpus   6 runs
  control_fonts      (b) aigc_only / genfl with the fonts (domain-shifted) generator  6 runs
  control_groupnorm  (c) fedavg with GroupNorm, alpha 0.1 and 0.3                   6 runs
SIZING is filled in below from measurements on this project's 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from server_app.summary import (  # noqa: E402
    build_summary,
    plot_accuracy_by_round,
    plot_accuracy_vs_kappa,
    read_runs,
    write_tables,
)

PIECES = ("main", "kappa", "participation", "control_corpus", "control_fonts", "control_groupnorm")
ROOT = REPO / "outputs" / "convergence"
RESULTS = REPO / "bench" / "results"
TARGET = 0.9  # "rounds to target": the accuracy GenFL reaches in a few rounds on digits (README)

# The tiny end-to-end version: every piece, 2 rounds, seed 0, one or two arms each.
TINY_COMMON = ["num_rounds=2", "seed=0"]
TINY = {
    "main": ["partition.alpha=0.1,1.0"],
    "kappa": ["+kappa=aug_0.7"],
    "participation": [],
    "control_corpus": ["strategy=genfl"],
    "control_fonts": ["strategy=genfl"],
    "control_groupnorm": ["partition.alpha=0.1"],
}

# Settings that name an arm in the JSON (the rest is the preset's, the same for every arm).
ARM_KEYS = {"strategy": "strategy.name", "alpha": "partition.alpha", "kappa_aug": "strategy.kappa_aug",
            "norm": "model.norm", "generator": "generator.backend", "corpus": "generator.corpus",
            "clients": "federation.num_clients", "fraction_train": "federation.fraction_train"}


def sweep_command(piece: str, root: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "server_app.sweep", f"+experiment=convergence/{piece}",
            f"hydra.sweep.dir={root / piece}", *extra]


def run(pieces: list[str], root: Path, extra: dict[str, list[str]]) -> int:
    """Each piece's sweep in turn (one simulation at a time); a failed piece does not stop the others."""
    failed = []
    for piece in pieces:
        command = sweep_command(piece, root, extra.get(piece, []))
        print(f"\n=== {piece}: {' '.join(command[1:])}", flush=True)
        if subprocess.run(command, cwd=REPO).returncode != 0:
            failed.append(piece)
    if failed:
        print(f"convergence: pieces with failed jobs: {', '.join(failed)}; re-run to retry them "
              "(completed jobs are skipped)", file=sys.stderr)
    return 1 if failed else 0


def _views(runs_by_piece: dict) -> dict[str, list]:
    """Which runs each plot compares."""
    main = runs_by_piece.get("main", [])

    def at(runs, *alphas):
        return [r for r in runs if r.config["partition.alpha"] in alphas]

    controls = [r for p in ("control_corpus", "control_fonts", "control_groupnorm") for r in runs_by_piece.get(p, [])]
    return {
        "main": main,
        "kappa": at(main, 0.1) + runs_by_piece.get("kappa", []),
        "participation": [r for r in at(main, 0.1) if r.config["strategy.name"] != "aigc_only"]
        + runs_by_piece.get("participation", []),
        "controls": at(main, *{r.config["partition.alpha"] for r in controls}) + controls,
    }


def report(root: Path, out: Path, target: float, title: str) -> int:
    """convergence.json (one entry per arm), convergence.md (the table) and one plot per view."""
    runs_by_piece, problems = {}, []
    for piece in PIECES:
        runs, piece_problems = read_runs([root / piece]) if (root / piece).exists() else ([], [f"{piece}: not run"])
        runs_by_piece[piece], problems = runs, problems + piece_problems
    every_run = [r for runs in runs_by_piece.values() for r in runs]
    if not every_run:
        print(f"convergence: no completed run under {root}", file=sys.stderr)
        return 1
    summary = build_summary(every_run, target)
    piece_of = {str(r.path): piece for piece, runs in runs_by_piece.items() for r in runs}
    config_of = {str(r.path): r.config for r in every_run}
    arms = []
    for row in summary["configurations"]:
        config = config_of[row["paths"][0]]
        arms.append({
            "piece": piece_of[row["paths"][0]], "label": row["label"],
            **{name: config.get(key) for name, key in ARM_KEYS.items()},
            "seeds": row["seeds"], "rounds": row["rounds"],
            "final_accuracy_mean": row["final_accuracy_mean"], "final_accuracy_std": row["final_accuracy_std"],
            "rounds_to_target_mean": row["rounds_to_target_mean"], "reached_target": row["reached_target"],
            "best_accuracy_mean": row["best_accuracy_mean"], "auc_mean": row["auc_mean"],
            "seconds_per_round_mean": row["seconds_per_round_mean"],
            "accuracy_by_round_mean": row["curve"]["mean"],
        })
    arms.sort(key=lambda a: (PIECES.index(a["piece"]), str(a["strategy"]), a["alpha"], a["kappa_aug"]))
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "what": "Offline convergence benchmark (bench/convergence.py): digits, ResNet-18, class-conditional generator",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "target_accuracy": target,
        "arms": arms,
        "not_included": problems,
    }
    (out / "convergence.json").write_text(json.dumps(result, indent=1) + "\n")
    tables = out / "convergence-tables"
    tables.mkdir(exist_ok=True)
    write_tables(summary, problems, tables)
    shutil.copy(tables / "summary.md", out / "convergence.md")
    shutil.rmtree(tables)
    for name, runs in _views(runs_by_piece).items():
        if not runs:
            continue
        view = build_summary(runs, target)
        if name == "kappa":
            plot_accuracy_vs_kappa(view, out / "convergence_kappa.png", f"{title}final accuracy vs kappa_aug, alpha 0.1")
        else:
            plot_accuracy_by_round(view, out / f"convergence_{name}.png", f"{title}{name}")
    print((out / "convergence.md").read_text())
    print(f"convergence: {len(arms)} arm(s) from {len(every_run)} run(s); written to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/convergence.py", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("run", "report", "tiny"))
    parser.add_argument("pieces", nargs="*", help=f"run only these pieces (default: all): {', '.join(PIECES)}")
    parser.add_argument("--root", type=Path, help="sweep folders (default outputs/convergence, tiny: outputs/convergence-tiny)")
    parser.add_argument("--out", type=Path, help="results folder (default bench/results, tiny: <root>/results)")
    parser.add_argument("--target", type=float, default=TARGET)
    args = parser.parse_args(argv)
    unknown = [p for p in args.pieces if p not in PIECES]
    if unknown:
        parser.error(f"unknown piece(s) {', '.join(unknown)}; choose from {', '.join(PIECES)}")
    if args.action == "tiny":
        root = (args.root or REPO / "outputs" / "convergence-tiny").resolve()
        pieces = args.pieces or list(PIECES)
        code = run(pieces, root, {p: [*TINY_COMMON, *TINY[p]] for p in pieces})
        return report(root, args.out or root / "results", args.target, "tiny: ") or code
    root = (args.root or ROOT).resolve()
    if args.action == "run":
        return run(args.pieces or list(PIECES), root, {})
    return report(root, args.out or RESULTS, args.target, "")


if __name__ == "__main__":
    sys.exit(main())
