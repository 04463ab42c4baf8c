"""What genfl-report and the benchmarks (bench/) make of results folders: the completed runs below some
folders (and one line for each thing that could not be used), one row per configuration with its
seeds pooled, and the tables (summary.csv/.md/.json); the plots are in server_app/report_plots.py.

Per configuration (n runs): final accuracy = last round's test accuracy, mean and sample std (n-1);
best = mean over runs of each run's highest accuracy; rounds to target = first round whose accuracy
reaches the target, averaged over the runs that reach it ("reached" says how many); AUC = area
under accuracy-vs-round from round 0 to the last (trapezoids) divided by the number of rounds, i.e.
the accuracy averaged over training (1.0 = perfect from the start); seconds per round = the server's
wall time from round 0's evaluation to the last round's, divided by the rounds.

Synthetic-data quality (runs that used synthetic images record it in metrics.json's ``synthetic_quality``,
see generation/quality.py), averaged over the runs that have it, blank for configurations without:
synthetic agreement = share of synthetic images (all of them, also those a filter dropped) whose label the
final global model predicts; real-vs-synthetic AUC = how well a linear probe on the global model's
features tells real test images from synthetic ones (0.5 = indistinguishable, 1.0 = fully separable); the
CSV adds the pixel-statistics AUC; transfer = the generator check's (metrics.json's ``generator_check``,
before round 1): a model of the synthetic set alone, its accuracy on the nodes' real data over that on the
synthetic set. The Markdown table shows these columns only when some run has them.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from server_app.results import (JOB_RECORD, MANIFEST, METRICS, CorruptFileError, flatten, read_json, result_neutral,
                                results_files)


# Order in which keys are tried for naming configurations; any other differing key follows.
LABEL_PRIORITY = ("strategy.name", "partition.alpha", "strategy.kappa_aug", "model.norm", "generator.backend",
                  "generator.corpus", "federation.num_clients", "federation.fraction_train", "dataset.name")
SHORT_NAMES = {"strategy.name": "strategy", "partition.alpha": "alpha", "strategy.kappa_aug": "kappa_aug",
               "model.norm": "norm", "generator.backend": "generator", "generator.corpus": "corpus",
               "federation.num_clients": "clients", "federation.fraction_train": "fraction_train",
               "dataset.name": "dataset"}
ALWAYS = ("strategy.name", "partition.alpha", "strategy.kappa_aug")  # columns even when they do not differ
STAT_COLUMNS = ("runs", "seeds", "rounds", "final_accuracy_mean", "final_accuracy_std", "best_accuracy_mean",
                "rounds_to_target_mean", "reached_target", "auc_mean", "seconds_per_round_mean",
                "synthetic_agreement_mean", "separability_auc_mean", "pixel_separability_auc_mean",
                "synthetic_transfer_mean")
QUALITY_KEY = "synthetic_quality"  # generation.quality.METRICS_KEY (not imported: it would load torch)
# metrics.json's synthetic_quality entry -> the summary's column (mean over the runs that have it).
QUALITY_COLUMNS = {"agreement": "synthetic_agreement_mean", "separability_auc": "separability_auc_mean",
                   "pixel_separability_auc": "pixel_separability_auc_mean", "transfer": "synthetic_transfer_mean"}


@dataclass
class Run:
    path: Path
    config: dict  # flattened: "partition.alpha" -> 0.1
    rounds: list[dict]
    quality: dict = field(default_factory=dict)  # metrics.json's synthetic_quality ({} without one)

    @property
    def curve(self) -> tuple[np.ndarray, np.ndarray]:
        rows = [r for r in self.rounds if isinstance(r.get("test_accuracy"), (int, float))]
        return np.array([r["round"] for r in rows], dtype=float), np.array([r["test_accuracy"] for r in rows], dtype=float)


@dataclass
class Configuration:
    key: tuple
    runs: list[Run] = field(default_factory=list)


# -- reading -----------------------------------------------------------------------------------------

def read_runs(paths: list[Path]) -> tuple[list[Run], list[str]]:
    """Completed runs below ``paths`` and one line for each thing that could not be used."""
    runs, problems, seen = [], [], set()
    for root in paths:
        if not root.exists():
            problems.append(f"{root}: no such file or folder")
            continue
        files = [root] if root.is_file() else results_files(root, METRICS)
        for path in files:
            seen.add(path.parent.resolve())
            run, problem = _read_run(path)
            if run:
                runs.append(run)
            else:
                problems.append(f"{path.parent}: {problem}")
        if root.is_dir():
            problems += _missing_runs(root, seen)
    return runs, problems


def _read_run(path: Path) -> tuple[Run | None, str | None]:
    try:
        data = json.loads(path.read_text())
        status, rounds, config = data["status"], data["rounds"], data["config"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return None, f"corrupt metrics.json ({type(err).__name__}: {err})"
    if status != "completed":
        why = data.get("error") or ("stopped or still running" if status == "running" else "no error recorded")
        return None, f"{status} after {max((r.get('round', 0) for r in rounds), default=0)} round(s): {why}"
    quality, check = data.get(QUALITY_KEY), data.get("generator_check")
    quality = dict(quality) if isinstance(quality, dict) else {}
    if isinstance(check, dict):  # the generator check's score is about the synthetic data too
        quality["transfer"] = check.get("transfer")
    run = Run(path.parent, flatten(config), rounds, quality)
    if len(run.curve[0]) < 2:
        return None, "completed but has fewer than two evaluated rounds"
    return run, None


def _missing_runs(root: Path, seen: set) -> list[str]:
    """Sweep jobs that have a folder but no metrics.json, jobs of a sweep's manifest with no folder, and
    corrupt records or manifests (named, since they hide which jobs are missing)."""
    problems, recorded, corrupt = [], set(), False
    for record_path in results_files(root, JOB_RECORD):
        try:
            record = read_json(record_path)
        except CorruptFileError as err:
            problems.append(str(err))
            corrupt = True
            continue
        recorded.add(tuple(sorted(record.get("overrides", []))))
        if record_path.parent.resolve() not in seen:
            problems.append(f"{record_path.parent}: no metrics.json (job {record.get('status', 'unknown')}: "
                            f"{record.get('error') or 'no error recorded'})")
    not_run = "has no readable record (not run, or its record is corrupt)" if corrupt else "has not run (no folder)"
    for manifest in results_files(root, MANIFEST):
        try:
            jobs = read_json(manifest).get("jobs", [])
        except CorruptFileError as err:
            problems.append(f"{err}; jobs of that sweep that never ran cannot be named")
            continue
        problems += [f"{manifest.parent}: job [{' '.join(job)}] {not_run}" for job in jobs
                     if tuple(sorted(job)) not in recorded]
    return problems


# -- statistics --------------------------------------------------------------------------------------

def group(runs: list[Run]) -> list[Configuration]:
    configurations: dict[tuple, Configuration] = {}
    for run in runs:
        key = tuple(sorted((k, v) for k, v in run.config.items() if not result_neutral(k) and k != "seed"))
        configurations.setdefault(key, Configuration(key)).runs.append(run)
    return list(configurations.values())


def label_keys(configurations: list[Configuration]) -> list[str]:
    """The fewest keys, tried in LABEL_PRIORITY order, that tell the configurations apart."""
    dicts = [dict(c.key) for c in configurations]
    differing = sorted({k for d in dicts for k in d if len({_hashable(x.get(k)) for x in dicts}) > 1})
    candidates = [k for k in LABEL_PRIORITY if k in differing] + [k for k in differing if k not in LABEL_PRIORITY]
    chosen: list[str] = []
    for key in candidates:
        before = len({tuple(_hashable(d.get(k)) for k in chosen) for d in dicts})
        after = len({tuple(_hashable(d.get(k)) for k in [*chosen, key]) for d in dicts})
        if after > before:
            chosen.append(key)
    return chosen


def _hashable(value):
    return json.dumps(value, default=str) if isinstance(value, (list, dict)) else value


def run_stats(run: Run, target: float) -> dict:
    rounds, accuracy = run.curve
    reached = np.nonzero(accuracy >= target)[0]
    walls = {r["round"]: r.get("wall_seconds") for r in run.rounds}
    first, last = rounds[0], rounds[-1]
    seconds = None
    if isinstance(walls.get(first), (int, float)) and isinstance(walls.get(last), (int, float)):
        seconds = (walls[last] - walls[first]) / (last - first)
    return {
        "final_accuracy": float(accuracy[-1]),
        "best_accuracy": float(accuracy.max()),
        "rounds_to_target": int(rounds[reached[0]]) if len(reached) else None,
        "auc": float(np.sum((accuracy[1:] + accuracy[:-1]) / 2 * np.diff(rounds)) / (last - first)),
        "seconds_per_round": seconds,
        "rounds": int(last),
    }


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _std(values: list) -> float | None:
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def summarize(configuration: Configuration, target: float) -> dict:
    per_run = [run_stats(run, target) for run in configuration.runs]
    finals = [s["final_accuracy"] for s in per_run]
    reached = [s["rounds_to_target"] for s in per_run if s["rounds_to_target"] is not None]
    return {
        "runs": len(per_run),
        "seeds": sorted(run.config.get("seed") for run in configuration.runs),
        "rounds": max(s["rounds"] for s in per_run),
        "final_accuracy_mean": _mean(finals),
        "final_accuracy_std": _std(finals),
        "best_accuracy_mean": _mean([s["best_accuracy"] for s in per_run]),
        "rounds_to_target_mean": _mean(reached),
        "reached_target": f"{len(reached)}/{len(per_run)}",
        "auc_mean": _mean([s["auc"] for s in per_run]),
        "seconds_per_round_mean": _mean([s["seconds_per_round"] for s in per_run]),
        **{column: _mean([_number(_quality(run, key)) for run in configuration.runs])
           for key, column in QUALITY_COLUMNS.items()},
    }


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def mean_curve(configuration: Configuration) -> dict:
    """Mean, lowest and highest accuracy per round, over the rounds every run of the configuration has."""
    curves = [dict(zip(*run.curve)) for run in configuration.runs]
    common = sorted(set.intersection(*(set(c) for c in curves)))
    table = np.array([[c[r] for r in common] for c in curves])
    return {"round": [int(r) for r in common], "mean": table.mean(0).tolist(), "min": table.min(0).tolist(),
            "max": table.max(0).tolist()}


def _quality(run: Run, key: str):
    """Agreement is over every synthetic image (``agreement_all``; a filter's kept images alone flatter
    the generator), the kept ones' for runs recorded before it existed."""
    if key == "agreement" and run.quality.get("agreement_all") is not None:
        return run.quality["agreement_all"]
    return run.quality.get(key)


def build_summary(runs: list[Run], target: float) -> dict:
    configurations = group(runs)
    keys = label_keys(configurations)
    columns = [*ALWAYS, *[k for k in keys if k not in ALWAYS]]
    rows = []
    for configuration in configurations:
        settings = dict(configuration.key)
        row = {SHORT_NAMES.get(k, k): settings.get(k) for k in columns}
        row["label"] = ", ".join(f"{SHORT_NAMES.get(k, k)}={settings.get(k)}" for k in keys) or "all runs"
        row.update(summarize(configuration, target))
        row["curve"] = mean_curve(configuration)
        row["paths"] = [str(run.path) for run in configuration.runs]
        rows.append(row)
    rows.sort(key=lambda r: tuple(sort_key(r.get(SHORT_NAMES.get(k, k))) for k in columns))
    return {"target_accuracy": target, "label_keys": [SHORT_NAMES.get(k, k) for k in keys],
            "columns": [SHORT_NAMES.get(k, k) for k in columns], "configurations": rows}


def sort_key(value):
    return (0, value, "") if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, 0, str(value))


# -- writing -----------------------------------------------------------------------------------------

def _cell(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)


def _setting(value) -> str:
    """A config value as the user wrote it (0.1, not 0.1000)."""
    return "" if value is None else " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def write_tables(summary: dict, problems: list[str], out: Path) -> None:
    columns = [*summary["columns"], *STAT_COLUMNS]
    with open(out / "summary.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for row in summary["configurations"]:
            writer.writerow([_setting(row.get(c)) if c in summary["columns"] else _cell(row.get(c), 6) for c in columns])
    head = [*summary["columns"], "runs", "final accuracy", "best", f"rounds to {summary['target_accuracy']:g}",
            "AUC", "s/round"]
    quality = any(row.get(c) is not None for row in summary["configurations"]
                  for c in ("synthetic_agreement_mean", "separability_auc_mean"))
    transfer = any(row.get("synthetic_transfer_mean") is not None for row in summary["configurations"])
    if quality:
        head += ["synthetic agreement", "real-vs-synthetic AUC"]
    if transfer:
        head += ["transfer (generator check)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in summary["configurations"]:
        final = _cell(row["final_accuracy_mean"], 3)
        if row["final_accuracy_std"] is not None:
            final += f" ± {row['final_accuracy_std']:.3f}"
        to_target = _cell(row["rounds_to_target_mean"], 1)
        to_target = f"{to_target} ({row['reached_target']})" if to_target else f"never (0/{row['runs']})"
        cells = [_setting(row.get(c)) for c in summary["columns"]]
        cells += [str(row["runs"]), final, _cell(row["best_accuracy_mean"], 3), to_target,
                  _cell(row["auc_mean"], 3), _cell(row["seconds_per_round_mean"], 1)]
        if quality:
            cells += [_cell(row.get("synthetic_agreement_mean"), 3), _cell(row.get("separability_auc_mean"), 3)]
        if transfer:
            cells += [_cell(row.get("synthetic_transfer_mean"), 3)]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if problems:
        text += "\nNot included:\n\n" + "".join(f"- {p}\n" for p in problems)
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps({**summary, "not_included": problems}, indent=1) + "\n")
