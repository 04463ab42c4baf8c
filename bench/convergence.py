"""The offline convergence benchmark: FedAvg vs AIGC-only vs GenFL on digits, with controls.

    python bench/convergence.py run                 # core plan: every arm once (seed 0), ~2 h; resumable
    python bench/convergence.py run --plan full     # every arm x seeds 0-2, ~5.5 h; reuses the core's runs
    python bench/convergence.py run main kappa      # named pieces, their full grids
    python bench/convergence.py report              # bench/results/convergence.json, .md and the plots
    python bench/convergence.py tiny                # the whole pipeline small: 2 rounds, seed 0, ~10 min

Each piece is a preset, conf/experiment/convergence/<piece>.yaml, whose grid is a Hydra sweep; a plan
runs ``genfl-sweep +experiment=convergence/<piece> [narrowing overrides]
hydra.sweep.dir=outputs/convergence/<piece>`` per piece, one simulation at a time (the commands are
printed: run one by hand to do a piece). Every job of a plan is validated before the first starts.
Re-running a plan skips completed jobs and continues a stopped one from its checkpoint, so a plan
can be run in pieces; the full plan's seed-0 jobs are the core plan's, in the same folders.
``report`` reads whatever has completed and names what has not.

Setting (convergence/base): the embedded default (digits, 20 clients, ResNet-18 with BatchNorm,
1 local epoch, batch 16, SGD lr 0.02 with momentum, 1,000 images from the class-conditional
generator pretrained on the server's public digits), 30 rounds: FedAvg at alpha 0.1 flattens there
(one 40-round run, seed 0, on the code before GenFL became a wrapper strategy: 0.15 -> 0.71 at
round 10 -> 0.74 at 20 -> 0.87 at 30, then 0.73-0.89; mean of rounds 25-40: 0.85).

Pieces (seeds 0, 1, 2)                                                runs   hours here (quiet)
  main               fedavg / genfl x alpha 0.1, 0.3, 1.0              18     1.9
  aigc_only          alpha 0.1 only (alpha cannot change it)             3     0.2
  participation      fedavg / genfl, 10 of 40 clients per round, a0.1    6     0.4
  control_corpus     (a) aigc_only / genfl on the generator's corpus     6     0.5
  control_fonts      (b) aigc_only / genfl, fonts (shifted) generator    6     0.5
  control_groupnorm  (c) FedAvg, GroupNorm vs BatchNorm, both lr 0.005   6     0.6
  kappa              genfl kappa_aug 0.1, 0.5, 0.7, 0.9 at alpha 0.1   12     1.4
                     (0 = FedAvg, 0.3 = GenFL, 1 = AIGC-only come from main / aigc_only)
  full plan                                                            57     5.5
  core plan = the same with seed 0 only                                19     1.8

SIZING. Measured with this code on the project's 2-core machine (2026-11-26), from `tiny` (every
arm, 2 rounds) on a quiet machine (load 1-2):
  fixed cost per run (SuperLink, Ray, 20 label histograms, round-0 eval, teardown)   30-35 s
  FedAvg, 20 clients          9.5-10.8 s/round     GenFL (augmented model overlapped)  12.5-13.3
  AIGC-only                   5.3                  FedAvg with GroupNorm                 9.5-11
  10 of 40 clients: FedAvg    4.7-5.1              GenFL                                 7.8-9.1
  generating 1,000 images once per generator and seed (then cached): ~14 s
Per 30-round run: FedAvg 350 s, GenFL 420, AIGC-only 190, GroupNorm 350, 10-of-40 180 / 290.
When the two cores are shared (other simulations running) everything is 1.5-2x slower at load 3-5
and 2-3x at load 10-12 (measured: FedAvg 14-59 s/round, GenFL 20-38).
Cut to reach ~2 hours: seeds 1 and 2 (the core plan). Cut outright: the 50-client federation
(1,077 digits do not split into 50 Dirichlet(0.1) partitions of >= 2 samples for every seed: 40
clients, 10 per round); AIGC-only at alpha 0.3 and 1.0 (the same computation as at 0.1).
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

from server_app.report import build_summary, read_runs, write_tables  # noqa: E402
from server_app.report_plots import plot_accuracy_by_round, plot_accuracy_vs_kappa  # noqa: E402

PIECES = ("main", "aigc_only", "participation", "control_corpus", "control_fonts", "control_groupnorm", "kappa")
ROOT = REPO / "outputs" / "convergence"
RESULTS = REPO / "bench" / "results"
TARGET = 0.9  # "rounds to target": GenFL passes it within a few rounds here, FedAvg at alpha 0.1 barely

# A plan: (piece, overrides that narrow its grid). Narrowed jobs are jobs of the full grid, in the
# same folders, so a later full plan skips them.
PLANS = {
    "core": [(piece, ["seed=0"]) for piece in PIECES],
    "full": [(piece, []) for piece in PIECES],
}
# The tiny end-to-end version: every piece, 2 rounds, seed 0, one or two arms each (its own folders).
TINY = [
    ("main", ["partition.alpha=0.1,1.0"]),
    ("aigc_only", []),
    ("participation", []),
    ("control_corpus", ["strategy=genfl"]),
    ("control_fonts", ["strategy=genfl"]),
    ("control_groupnorm", ["model.norm=group"]),
    ("kappa", ["strategy.kappa_aug=0.7"]),
]
TINY_COMMON = ["num_rounds=2", "seed=0"]

# Settings that name an arm in the JSON (the rest is the preset's, the same for every arm).
ARM_KEYS = {"strategy": "strategy.name", "alpha": "partition.alpha", "kappa_aug": "strategy.kappa_aug",
            "norm": "model.norm", "generator": "generator.backend", "corpus": "generator.corpus",
            "clients": "federation.num_clients", "fraction_train": "federation.fraction_train", "lr": "client.lr"}


def sweep_command(piece: str, root: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "genfl_cli.sweep", f"+experiment=convergence/{piece}",
            f"hydra.sweep.dir={root / piece}", *extra]


def piece_jobs(piece: str, narrowing: list[str]) -> list[list[str]]:
    """The jobs genfl-sweep will run for a piece: its preset's grid, narrowed by the command line."""
    from omegaconf import OmegaConf

    from server_app.grid import expand

    params = OmegaConf.load(REPO / "conf" / "experiment" / "convergence" / f"{piece}.yaml").hydra.sweeper.params
    return expand([f"{k}={v}" for k, v in params.items()] + [f"+experiment=convergence/{piece}", *narrowing])


def run(plan: list[tuple[str, list[str]]], root: Path) -> int:
    """Each piece's sweep in turn (one simulation at a time); a failed piece does not stop the others.

    Every job of the plan is validated first, so a bad piece cannot stop the plan hours in."""
    from server_app.grid import config_errors

    jobs = [job for piece, narrowing in plan for job in piece_jobs(piece, narrowing)]
    errors = config_errors(jobs)
    if errors:
        print("\n".join(f"convergence: config error in {e}" for e in errors), file=sys.stderr)
        return 2
    print(f"convergence: {len(jobs)} job(s) in {len(plan)} piece(s), all valid; results under {root}", flush=True)
    failed = []
    for piece, narrowing in plan:
        command = sweep_command(piece, root, narrowing)
        print(f"\n=== {piece}: {' '.join(command[1:])}", flush=True)
        if subprocess.run(command, cwd=REPO).returncode != 0:
            failed.append(piece)
    if failed:
        print(f"convergence: pieces with failed jobs: {', '.join(failed)}; re-run to retry them "
              "(completed jobs are skipped)", file=sys.stderr)
    return 1 if failed else 0


def _views(runs_by_piece: dict) -> dict[str, list]:
    """Which runs each plot compares."""
    main, aigc_only = runs_by_piece.get("main", []), runs_by_piece.get("aigc_only", [])
    main_01 = [r for r in main if r.config["partition.alpha"] == 0.1]
    controls = [r for p in ("control_corpus", "control_fonts", "control_groupnorm") for r in runs_by_piece.get(p, [])]
    return {
        "main": main + aigc_only,
        "kappa": main_01 + aigc_only + runs_by_piece.get("kappa", []),
        "participation": main_01 + runs_by_piece.get("participation", []),
        "controls": (main_01 + aigc_only + controls) if controls else [],
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
    parser.add_argument("pieces", nargs="*", help=f"run: only these pieces, full grids ({', '.join(PIECES)})")
    parser.add_argument("--plan", choices=sorted(PLANS), default="core", help="run: which plan (default core)")
    parser.add_argument("--root", type=Path, help="sweep folders (default outputs/convergence, tiny: outputs/convergence-tiny)")
    parser.add_argument("--out", type=Path, help="results folder (default bench/results, tiny: <root>/results)")
    parser.add_argument("--target", type=float, default=TARGET)
    args = parser.parse_args(argv)
    unknown = [p for p in args.pieces if p not in PIECES]
    if unknown:
        parser.error(f"unknown piece(s) {', '.join(unknown)}; choose from {', '.join(PIECES)}")
    if args.action == "tiny":
        root = (args.root or REPO / "outputs" / "convergence-tiny").resolve()
        code = run([(piece, [*TINY_COMMON, *narrowing]) for piece, narrowing in TINY], root)
        return report(root, args.out or root / "results", args.target, "tiny: ") or code
    root = (args.root or ROOT).resolve()
    if args.action == "run":
        return run([(piece, []) for piece in args.pieces] if args.pieces else PLANS[args.plan], root)
    return report(root, args.out or RESULTS, args.target, "")


if __name__ == "__main__":
    sys.exit(main())
