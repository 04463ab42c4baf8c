"""Issue 16's benchmark: does GenFL stay at or above FedAvg whatever its generator?

    python bench/robustness.py run screen     # every mechanism alone, seed 0, fonts generator (resumable)
    python bench/robustness.py run final      # what this session ran after the screen (in its order)
    python bench/robustness.py run next       # the best combination on every seed and both generators
    python bench/robustness.py run this_round # the combination with mix.choose=this_round, every seed
    python bench/robustness.py run matrix     # then: the combination with re-estimated statistics, controls
    python bench/robustness.py run uncapped   # then: the same without the augmented model's step cap
    python bench/robustness.py run max_rise   # then: the preset with kappa's climb capped (and GroupNorm's first jobs)
    python bench/robustness.py run groupnorm_seeds  # then: ResNet-18 with GroupNorm, every seed, both generators
    python bench/robustness.py run constant_digits  # then: constant kappa, in-distribution generator, per seed
    python bench/robustness.py run generator_check  # then: the preset with the generator check, both generators
    python bench/robustness.py run retire     # then: with the fonts generator retired once kappa falls below 0.03
    python bench/robustness.py run full_probe # then: every node scores the probe every round
    python bench/robustness.py run default    # then: the default (the check on, generator_check.on_fail below the line)
    python bench/robustness.py report         # bench/results/robustness.json/.md and the plots
    python bench/robustness.py plans          # the plans and their job counts

A plan is conf/experiment/robustness/<plan>.yaml (its jobs, in the order they run, with why; _sets.yaml
names the settings they combine), as the convergence benchmark's pieces are conf/experiment/convergence/.

Setting: bench/convergence.py's (digits, 20 clients, alpha 0.1, 30 rounds, ResNet-18 with BatchNorm),
with the domain-shifted `fonts` generator and the in-distribution one. Runs live under
outputs/convergence (FedAvg's jobs are the convergence benchmark's own, shared). One simulation at a
time; re-running skips completed jobs and continues a stopped one from its checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import convergence  # noqa: E402  (bench/convergence.py: the same runner, the same folders)

PLANS = REPO / "conf" / "experiment" / "robustness"  # <plan>.yaml: its jobs; _sets.yaml: the settings they name


def plan_names() -> list[str]:
    return sorted(p.stem for p in PLANS.glob("*.yaml") if not p.stem.startswith("_"))


def plan(name: str) -> list[tuple[str, list[str]]]:
    """The plan's jobs, in order: (convergence piece, overrides), each word of _sets.yaml spelled out."""
    from omegaconf import OmegaConf

    sets = OmegaConf.to_container(OmegaConf.load(PLANS / "_sets.yaml"))["sets"]

    def spelled(words: list[str], within: tuple[str, ...] = ()) -> list[str]:
        out = []
        for word in words:
            if "=" in word:
                out.append(word)
            elif word in sets and word not in within:
                out += spelled(sets[word], (*within, word))
            else:
                raise SystemExit(f"robustness: {name}.yaml: {word!r} is neither an override (key=value) nor a "
                                 f"set of _sets.yaml ({', '.join(sets)})" + (" (a set naming itself)" if word in within else ""))
        return out

    jobs = OmegaConf.to_container(OmegaConf.load(PLANS / f"{name}.yaml"))["jobs"]
    return [(str(job[0]), spelled([str(w) for w in job[1:]])) for job in jobs]

PIECES = ("robust_fonts", "robust_digits", "robust_participation", "main", "participation")
# What names an arm (besides its piece); the seed is what varies within an arm.
ARM = {"strategy": "strategy.name", "generator": "generator.corpus", "clients": "federation.num_clients",
       "fraction_train": "federation.fraction_train", "kappa_policy": "mix.kappa_policy", "bn_stats": "mix.bn_stats",
       "filter": "augmented.filter.mode", "round_aware": "augmented.round_aware",
       "probe_fraction": "mix.probe_fraction", "evidence_z": "mix.evidence_z", "freeze_bn": "augmented.freeze_bn",
       "aug_steps": "augmented.max_steps", "choose": "mix.choose", "step": "mix.step", "norm": "model.norm",
       "lr": "client.lr", "bn_fraction": "mix.bn_fraction", "max_rise": "mix.max_rise",
       "steps_follow_kappa": "augmented.steps_follow_kappa", "generator_check": "generator_check.enabled",
       "retire_below": "mix.retire_below", "on_fail": "generator_check.on_fail.mix.kappa_policy"}
DEFAULTS = {("filter", "none"), ("round_aware", False), ("freeze_bn", False), ("fraction_train", 1.0),
            ("choose", "next_round"), ("step", 0.5), ("norm", "batch"), ("lr", 0.02), ("bn_fraction", 0.25),
            ("steps_follow_kappa", False), ("generator_check", False), ("generator_check", None), ("on_fail", None)}  # left out of
# labels (bn_fraction: the default when the first re-estimation arm ran; it says 1.0 where it was)
REFERENCE_LR = {"batch": 0.02, "group": 0.005}  # FedAvg's lr per norm (conf default; control_groupnorm's)
FROM_ROUND = 5  # "never more than 0.02 below FedAvg at any round from round 5 on"


def _arm(run) -> dict:
    arm = {name: run.config.get(key) for name, key in ARM.items()}
    if arm["strategy"] == "base_only":  # FedAvg (the default aggregation); the labels and robustness.json predate the name
        arm["strategy"] = "fedavg"
    if arm["strategy"] == "fedavg":  # no synthetic data: the mix settings mean nothing, but re-estimated statistics do
        arm.update(generator=None, kappa_policy=None, filter=None, round_aware=None, freeze_bn=None, aug_steps=None,
                   steps_follow_kappa=None, generator_check=None, on_fail=None,
                   choose=None, step=None, bn_stats="reestimate" if arm["bn_stats"] == "reestimate" else None)
    if not arm["generator_check"] or arm["kappa_policy"] == "adaptive":  # on_fail: what the default switches to
        arm["on_fail"] = None
    if arm["bn_stats"] != "reestimate":
        arm["bn_fraction"] = None
    if arm["kappa_policy"] != "adaptive":
        arm.update(probe_fraction=None, evidence_z=None, choose=None, step=None, max_rise=None, retire_below=None)
    elif arm["evidence_z"] is None:  # the first policy (before the burden of proof)
        arm["evidence_z"] = 0.0
    return arm


def _series(run, column: str) -> list:
    return [r.get(column) for r in run.rounds if r["round"] >= 1]


def _earlier_fedavg() -> list[tuple[tuple[int, int, str], dict]]:
    """((seed, clients, norm), {round: accuracy}) of the earlier benchmark's single-seed FedAvg arms (GroupNorm
    at its own lr 0.005: the control_groupnorm piece)."""
    path = REPO / "bench" / "results" / "convergence.json"
    if not path.exists():
        return []
    return [((arm["seeds"][0], arm["clients"], arm["norm"]), dict(enumerate(arm["accuracy_by_round_mean"])))
            for arm in json.loads(path.read_text())["arms"]
            if arm["strategy"] == "fedavg" and arm["seeds"] == [0] and arm["alpha"] == 0.1
            and (arm["lr"], arm["norm"]) in ((0.02, "batch"), (0.005, "group"))]


def _earlier_arms(fedavg: dict) -> list[dict]:
    """Arms measured by bench/convergence.py (2026-11-26) at this very setting and not re-run here:
    constant kappa 0.3 with the fonts generator (seed 0) and the participation piece (seed 0). (Its
    in-distribution arm, seeds 0-2, kept only their mean curve: plan constant_digits re-ran it per seed.)"""
    path = REPO / "bench" / "results" / "convergence.json"
    if not path.exists():
        return []
    out = []
    for arm in json.loads(path.read_text())["arms"]:
        wanted = (arm["alpha"] == 0.1 and arm["strategy"] in ("genfl", "fedavg") and arm["lr"] == 0.02
                  and arm["norm"] == "batch" and (arm["strategy"] == "genfl" or arm["clients"] == 40)
                  and arm.get("kappa_aug") in (0.0, 0.3) and arm["corpus"] in ("fonts", "digits-public")
                  and not (arm["strategy"] == "genfl" and arm["corpus"] == "digits-public" and arm["clients"] == 20))
        groupnorm = (arm["alpha"] == 0.1 and arm["strategy"] == "fedavg" and arm["norm"] == "group" and arm["lr"] == 0.005
                     and arm["clients"] == 20)  # the baseline of the GroupNorm arms
        if groupnorm:
            out.append({"strategy": "fedavg", "generator": None, "clients": 20, "norm": "group", "lr": 0.005,
                        "label": "strategy=fedavg, clients=20, norm=group, lr=0.005 (convergence.json, 2026-11-26)",
                        "source": "bench/results/convergence.json",
                        "runs": [{"seed": arm["seeds"][0], "final_accuracy": round(arm["final_accuracy_mean"], 4),
                                  "accuracy_by_round": [round(a, 4) for a in arm["accuracy_by_round_mean"]],
                                  "seconds_per_round": arm["seconds_per_round_mean"], "vs_fedavg_same_seed": None,
                                  "rounds_to_0.9": next((r for r, a in enumerate(arm["accuracy_by_round_mean"]) if a >= 0.9), None)}],
                        "final_accuracy_mean": round(arm["final_accuracy_mean"], 4), "final_accuracy_std": None,
                        "at_or_above_fedavg_every_seed": None, f"worst_gap_from_round_{FROM_ROUND}": None})
        if not wanted:
            continue
        generator = None if arm["strategy"] == "fedavg" else arm["corpus"]
        fraction = arm.get("fraction_train", 1.0)
        label = (f"strategy={arm['strategy']}, generator={generator}, clients={arm['clients']}, fraction_train={fraction}, "
                 "kappa_policy=constant, bn_stats=mixed (convergence.json, 2026-11-26)").replace("generator=None, ", "")
        label = label.replace(", fraction_train=1.0", "").replace("fedavg, clients=40, fraction_train=0.25, kappa_policy=constant, "
                                                                   "bn_stats=mixed", "fedavg, clients=40, fraction_train=0.25")
        curve = [round(a, 4) for a in arm["accuracy_by_round_mean"]]
        base = fedavg.get((0, arm["clients"], "batch")) if arm["seeds"] == [0] and arm["strategy"] != "fedavg" else None
        versus = None
        if base is not None:
            gaps = [a - base[r] for r, a in enumerate(curve) if r >= FROM_ROUND and r in base]
            last = sorted(base)[-5:]
            versus = {"final_minus_fedavg": round(curve[-1] - float(base[max(base)]), 4),
                      "last_5_mean_minus_fedavg": round(float(np.mean(curve[-5:]) - np.mean([base[r] for r in last])), 4),
                      "mean_over_rounds_minus_fedavg": round(float(np.mean([a - base[r] for r, a in enumerate(curve)
                                                                            if r >= 1 and r in base])), 4),
                      f"worst_gap_from_round_{FROM_ROUND}": round(float(min(gaps)), 4)}
        out.append({"strategy": arm["strategy"], "generator": generator, "clients": arm["clients"], "label": label,
                    "source": "bench/results/convergence.json",
                    "runs": [{"seed": ",".join(map(str, arm["seeds"])) if len(arm["seeds"]) > 1 else arm["seeds"][0],
                              "final_accuracy": round(arm["final_accuracy_mean"], 4),
                              "best_accuracy": round(arm["best_accuracy_mean"], 4),
                              "rounds_to_0.9": next((r for r, a in enumerate(curve) if a >= 0.9), None),
                              "accuracy_by_round": curve, "seconds_per_round": arm["seconds_per_round_mean"],
                              "vs_fedavg_same_seed": versus, "mean_of_seeds": len(arm["seeds"]) > 1}],
                    "final_accuracy_mean": round(arm["final_accuracy_mean"], 4),
                    "final_accuracy_std": round(arm["final_accuracy_std"], 4) if arm["final_accuracy_std"] else None,
                    "at_or_above_fedavg_every_seed": None if versus is None else versus["final_minus_fedavg"] >= 0,
                    f"worst_gap_from_round_{FROM_ROUND}": None if versus is None else versus[f"worst_gap_from_round_{FROM_ROUND}"]})
    return out


def _versus(rounds, accuracy, base: dict | None) -> dict | None:
    """A run's curve against a baseline's of the same seed ({round: accuracy}), or None without one."""
    if base is None:
        return None
    gaps = [a - base[r] for r, a in zip(rounds, accuracy) if r >= FROM_ROUND and r in base]
    last = sorted(base)[-5:]
    return {"final_minus_fedavg": round(float(accuracy[-1] - base[max(base)]), 4),
            "last_5_mean_minus_fedavg": round(float(accuracy[-5:].mean() - np.mean([base[r] for r in last])), 4),
            "mean_over_rounds_minus_fedavg": round(float(np.mean([a - base[r] for r, a in zip(rounds, accuracy)
                                                                  if r >= 1 and r in base])), 4),
            f"worst_gap_from_round_{FROM_ROUND}": round(float(min(gaps)), 4) if gaps else None}


_SUMMARY = ("runs", "final_accuracy_mean", "final_accuracy_std", "at_or_above_fedavg_every_seed",
            f"worst_gap_from_round_{FROM_ROUND}")


def _reference(run) -> bool:
    """A FedAvg run at its norm's own lr: the baseline (the NULL_LR runs are compared with it instead)."""
    return run.config["strategy.name"] in ("fedavg", "base_only") and run.config["client.lr"] == REFERENCE_LR[run.config["model.norm"]]


def _kept(out: Path) -> list[dict]:
    """The arms of the committed robustness.json that this benchmark ran (not convergence.json's): a
    session's run folders may be gone (a snapshot under /tmp), their per-round curves are not."""
    path = out / "robustness.json"
    return [a for a in json.loads(path.read_text())["arms"] if "source" not in a] if path.exists() else []


def report(root: Path, out: Path) -> int:
    """robustness.json (every run's per-round curve, kappa and cost; each arm against FedAvg of the same
    seed and federation), robustness.md (the table) and robustness_<setting>.png."""
    from server_app.report import read_runs

    runs, problems = [], []
    for piece in PIECES:
        found, piece_problems = read_runs([root / piece]) if (root / piece).exists() else ([], [f"{piece}: not run"])
        runs += [r for r in found if r.config["partition.alpha"] == 0.1 and r.config["num_rounds"] == 30]
        problems += piece_problems
    fedavg = {(r.config["seed"], r.config["federation.num_clients"], r.config["model.norm"]): dict(zip(*r.curve))
              for r in runs if _reference(r) and r.config["mix.bn_stats"] != "reestimate"}
    fedavg_re = {(r.config["seed"], r.config["federation.num_clients"], r.config["model.norm"]): dict(zip(*r.curve))
                 for r in runs if _reference(r) and r.config["mix.bn_stats"] == "reestimate"}
    kept = _kept(out)
    for arm in kept:  # FedAvg runs of earlier sessions whose folders are gone
        reference = arm["strategy"] == "fedavg" and (arm.get("lr") or 0.02) == REFERENCE_LR[arm.get("norm") or "batch"]
        for r in arm["runs"] if reference else []:
            fedavg.setdefault((r["seed"], arm["clients"], arm.get("norm") or "batch"), dict(enumerate(r["accuracy_by_round"])))
    for arm in _earlier_fedavg():  # FedAvg curves of the earlier benchmark, where not re-run
        fedavg.setdefault(arm[0], arm[1])
    arms: dict[str, dict] = {}
    for run in runs:
        arm = _arm(run)
        label = ", ".join(f"{k}={v}" for k, v in arm.items() if v is not None and (k, v) not in DEFAULTS)
        entry = arms.setdefault(label, {**arm, "label": label, "runs": []})
        rounds, accuracy = run.curve
        base = fedavg.get((run.config["seed"], run.config["federation.num_clients"], run.config["model.norm"]))
        versus = None if _reference(run) else _versus(rounds, accuracy, base)
        # GenFL with re-estimated statistics against FedAvg with the same statistics: the synthetic data's share
        control = None
        if arm["strategy"] != "fedavg" and arm["bn_stats"] == "reestimate":
            control = _versus(rounds, accuracy, fedavg_re.get((run.config["seed"], run.config["federation.num_clients"],
                                                                 run.config["model.norm"])))
        seconds = [s for s in _series(run, "round_seconds") if isinstance(s, (int, float))]
        entry["runs"].append({
            "seed": run.config["seed"], "path": str(run.path.relative_to(root)),
            "final_accuracy": round(float(accuracy[-1]), 4), "best_accuracy": round(float(accuracy.max()), 4),
            "last_5_rounds_mean": round(float(accuracy[-5:].mean()), 4),  # less at the mercy of one round's swing
            "rounds_to_0.9": next((int(r) for r, a in zip(rounds, accuracy) if a >= 0.9), None),
            "accuracy_by_round": [round(float(a), 4) for a in accuracy],
            "kappa_aug_by_round": _series(run, "kappa_aug"),
            "seconds_per_round": round(float(np.mean(seconds)), 2) if seconds else None,
            "vs_fedavg_same_seed": versus,
            **({"vs_fedavg_same_seed_and_statistics": control} if control else {}),
            "synthetic_quality": {k: run.quality.get(k) for k in ("agreement", "agreement_all", "separability_auc")}
            if run.quality else None,
        })
    for arm in kept:  # an earlier session's run keeps its curve when its folder is gone (not re-run here)
        entry = arms.setdefault(arm["label"], {k: v for k, v in arm.items() if k not in _SUMMARY} | {"runs": []})
        seeds = {r["seed"] for r in entry["runs"]}
        entry["runs"] += [r | {"path": r.get("path") or "-", "kept_from": "bench/results/robustness.json"}
                          for r in arm["runs"] if r["seed"] not in seeds]
    for entry in arms.values():
        entry["runs"].sort(key=lambda r: r["seed"])
        finals = [r["final_accuracy"] for r in entry["runs"]]
        entry["final_accuracy_mean"] = round(float(np.mean(finals)), 4)
        entry["final_accuracy_std"] = round(float(np.std(finals, ddof=1)), 4) if len(finals) > 1 else None
        versus = [r["vs_fedavg_same_seed"] for r in entry["runs"] if r["vs_fedavg_same_seed"]]
        entry["at_or_above_fedavg_every_seed"] = all(v["final_minus_fedavg"] >= 0 for v in versus) if versus else None
        gaps = [v[f"worst_gap_from_round_{FROM_ROUND}"] for v in versus if v[f"worst_gap_from_round_{FROM_ROUND}"] is not None]
        entry[f"worst_gap_from_round_{FROM_ROUND}"] = min(gaps) if gaps else None
    for entry in _earlier_arms(fedavg):
        arms.setdefault(entry["label"], entry)
    ordered = sorted(arms.values(), key=lambda a: (str(a["generator"]), a["clients"], a["label"]))
    out.mkdir(parents=True, exist_ok=True)
    result = {"what": "Issue 16: GenFL vs FedAvg whatever the generator (bench/robustness.py): digits, 30 rounds, alpha 0.1",
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "from_round": FROM_ROUND, "arms": ordered, "not_included": problems}
    (out / "robustness.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["| arm | seeds | final accuracy | per seed | final - FedAvg (same seed) | last 5 rounds' mean - FedAvg's "
             "| mean over rounds 1-30 - FedAvg's | worst gap to FedAvg, round >= 5 | rounds to 0.9 | s/round |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for a in ordered:
        runs_ = a["runs"]
        versus = [r["vs_fedavg_same_seed"] for r in runs_]
        lines.append("| " + " | ".join([
            a["label"], ",".join(str(r["seed"]) for r in runs_),
            f"{a['final_accuracy_mean']:.3f}" + (f" ± {a['final_accuracy_std']:.3f}" if a["final_accuracy_std"] else ""),
            " ".join(f"{r['final_accuracy']:.3f}" for r in runs_),
            " ".join(f"{v['final_minus_fedavg']:+.3f}" if v else "-" for v in versus),
            " ".join(f"{v['last_5_mean_minus_fedavg']:+.3f}" if v and "last_5_mean_minus_fedavg" in v else "-" for v in versus),
            " ".join(f"{v['mean_over_rounds_minus_fedavg']:+.3f}" if v and "mean_over_rounds_minus_fedavg" in v else "-"
                     for v in versus),
            f"{a[f'worst_gap_from_round_{FROM_ROUND}']:+.3f}" if a[f"worst_gap_from_round_{FROM_ROUND}"] is not None else "-",
            " ".join(str(r["rounds_to_0.9"]) if r["rounds_to_0.9"] else "never" for r in runs_),
            " ".join(f"{r['seconds_per_round']:.1f}" for r in runs_ if r["seconds_per_round"]) or "-",
        ]) + " |")
    (out / "robustness.md").write_text("\n".join(lines) + "\n\n" + "".join(f"- not included: {p}\n" for p in problems))
    _plot(ordered, out)
    print((out / "robustness.md").read_text())
    return 0


# What the plots show (every arm is in robustness.md/.json): the baselines, constant kappa and the preset
# before and after each change, one panel per seed so that every curve stays readable.
def _shown(arm: dict) -> str | None:
    """The plot's name for an arm, or None when it is left out of the plot."""
    if arm["clients"] == 40:
        return _short(arm["label"])
    if arm.get("norm") not in (None, "batch") or (arm.get("lr") or 0.02) != 0.02:
        return None
    if arm["strategy"] == "fedavg":
        return "FedAvg, BN re-estimated" if arm.get("bn_stats") == "reestimate" else "FedAvg"
    if arm.get("on_fail"):
        return "default: generator check, on_fail below the line"
    earlier = "constant, bn_stats=mixed (convergence" in arm["label"]  # convergence.json's arms name it in the label
    if earlier or (arm.get("kappa_policy") == "constant" and arm.get("bn_stats") == "mixed" and not arm.get("aug_steps")
                   and arm.get("filter") in (None, "none")):
        return "GenFL, constant kappa 0.3"
    preset = (arm.get("kappa_policy") == "adaptive" and arm.get("bn_stats") == "reestimate" and arm.get("aug_steps") == 10
              and arm.get("filter") == "confidence" and arm.get("bn_fraction") == 1.0 and arm.get("choose") in (None, "next_round"))
    if not preset:
        return None
    if arm.get("generator_check"):  # the rest of the preset's variants are in the tables only
        if arm.get("probe_fraction") == 1.0:
            return "preset: generator check, every node probes"
        return None if arm.get("retire_below") else "preset with the generator check, half the nodes probe"
    return "preset, half the nodes probe (unseeded)" if arm.get("max_rise") and not arm.get("steps_follow_kappa") else None


def _short(label: str) -> str:
    for noise in ("strategy=", ", clients=20", ", probe_fraction=0.5", ", evidence_z=1.0", "kappa_policy=",
                  ", generator=fonts", ", generator=digits-public", " (convergence.json, 2026-11-26)"):
        label = label.replace(noise, "")
    return label


def _plot(arms: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = {"fonts (shifted) generator, 20 clients": lambda a: a["clients"] == 20 and a["generator"] in (None, "fonts"),
                "in-distribution generator, 20 clients": lambda a: a["clients"] == 20 and a["generator"] in (None, "digits-public"),
                "10 of 40 clients per round": lambda a: a["clients"] == 40}
    colors = {"FedAvg": "black", "FedAvg, BN re-estimated": "grey", "GenFL, constant kappa 0.3": "C3",
              "preset without max_rise": "C0", "preset, half the nodes probe (unseeded)": "C2", "preset, max_rise 0.05, steps follow kappa": "C1",
              "preset with the generator check, half the nodes probe": "C4", "preset with the generator check, retire_below 0.03": "C5",
              "preset: generator check, every node probes": "C6", "default: generator check, on_fail below the line": "C9"}
    for title, chosen in settings.items():
        shown = [(name, a) for a in arms if chosen(a) and (name := _shown(a))]
        seeds = sorted({r["seed"] for _, a in shown for r in a["runs"]  # seeds that show GenFL, not FedAvg alone
                        if isinstance(r["seed"], int) and a["strategy"] != "fedavg"})
        if len(shown) < 2 or not seeds:
            continue
        cols = min(len(seeds), 3)
        rows = -(-len(seeds) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols + 1, 4.2 * rows + 0.6), sharey=True, squeeze=False)
        for ax in axes.flat[len(seeds):]:
            ax.set_visible(False)
        for ax, seed in zip(axes.flat, seeds):
            for i, (name, arm) in enumerate(shown):
                for run in arm["runs"]:
                    mean = not isinstance(run["seed"], int)  # an earlier benchmark kept only the seeds' mean
                    if run["seed"] == seed or mean:
                        curve = run["accuracy_by_round"]
                        # the check's runs retrace constant kappa's or the preset's: dashed, on top
                        checked = "generator check" in name
                        ax.plot(range(len(curve)), curve, color=colors.get(name, f"C{4 + i}"), lw=2.0 if checked else 1.4,
                                ls=":" if mean else "--" if checked else "-", zorder=3 if checked else 2,
                                label=name + (" (mean of seeds)" if mean else ""))
            ax.set_title(f"seed {seed}")
            ax.set_xlabel("round")
            ax.set_ylim(0.3 if "fonts" in title else 0, 1)
            ax.grid(alpha=0.3)
        for row in axes:
            row[0].set_ylabel("test accuracy")
        named = dict(zip(*reversed(axes[0][0].get_legend_handles_labels())))  # one entry per name
        handles, labels = list(named.values()), list(named)
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3), fontsize=8)
        fig.suptitle(f"GenFL vs FedAvg, digits, alpha 0.1: {title}")
        fig.tight_layout(rect=(0, 0.1 / rows, 1, 1))
        name = "fonts" if "fonts" in title else "digits" if "in-distribution" in title else "participation"
        fig.savefig(out / f"robustness_{name}.png", dpi=110)
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/robustness.py", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("run", "report", "plans"))
    parser.add_argument("plan", nargs="?", choices=plan_names())
    parser.add_argument("--root", type=Path, default=convergence.ROOT, help="sweep folders (default outputs/convergence)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="results folder")
    args = parser.parse_args(argv)
    if args.action == "report":
        return report(args.root, args.out)
    if args.action == "plans":
        for name in plan_names():
            print(f"{name}: {len(plan(name))} job(s), {PLANS.relative_to(REPO) / name}.yaml")
        return 0
    if args.plan is None:
        parser.error("run needs a plan: " + ", ".join(plan_names()))
    return convergence.run(plan(args.plan), args.root)


if __name__ == "__main__":
    sys.exit(main())
