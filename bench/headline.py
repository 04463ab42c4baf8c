"""The README's headline results table, generated from the committed benchmark results (never copied by hand).

    python bench/headline.py            # print the table
    python bench/headline.py --write    # replace the table between README.md's headline-table markers

Reads bench/results/convergence.json (`python bench/convergence.py report`) and
bench/results/robustness.json (`python bench/robustness.py report`): GenFL against FedAvg on digits,
20 clients, 30 rounds, with the generator in distribution and shifted. tests/test_readme.py checks that
README.md holds exactly this output, so re-run `--write` after a benchmark report changes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
README = REPO / "README.md"
BEGIN, END = "<!-- headline-table -->", "<!-- /headline-table -->"


def _convergence_arm(arms: list[dict], strategy: str, alpha: float) -> dict:
    """The core plan's arm: in-distribution generator, 20 clients, BatchNorm at lr 0.02, GenFL at kappa_aug 0.3.
    FedAvg is strategy=base_only (results before issue 27 named it fedavg)."""
    names = ("fedavg", "base_only") if strategy == "fedavg" else (strategy,)
    found = [a for a in arms if a["piece"] == "main" and a["strategy"] in names and a["alpha"] == alpha
             and a["generator"] == "class_conditional" and a["corpus"] == "digits-public" and a["clients"] == 20
             and a["norm"] == "batch" and a["lr"] == 0.02 and (strategy == "fedavg" or a["kappa_aug"] == 0.3)]
    if len(found) != 1:
        raise SystemExit(f"headline: convergence.json has {len(found)} arms for {strategy} at alpha {alpha}, expected 1")
    return found[0]


def _robustness_runs(arms: list[dict], label: str) -> dict[int, dict]:
    """Seed -> run of the arm with this label, joined with the earlier benchmark's runs of the same arm."""
    runs = {}
    for arm in arms:
        if arm["label"] == label or arm["label"].startswith(label + " (convergence.json"):
            runs.update({r["seed"]: r for r in arm["runs"]})
    if not runs:
        raise SystemExit(f"headline: robustness.json has no arm {label!r}")
    return runs


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def _reached(rounds: list[int | None]) -> str:
    hit = [r for r in rounds if r]
    return f"{len(hit)}/{len(rounds)}" + (f" (round {np.mean(hit):.0f})" if hit else "")


def rows() -> list[list[str]]:
    conv = json.loads((RESULTS / "convergence.json").read_text())["arms"]
    rob = json.loads((RESULTS / "robustness.json").read_text())["arms"]
    out = []
    for alpha in (0.1, 0.3, 1.0):
        fedavg, genfl = _convergence_arm(conv, "fedavg", alpha), _convergence_arm(conv, "genfl", alpha)
        assert fedavg["seeds"] == genfl["seeds"], (fedavg["seeds"], genfl["seeds"])

        def final(a):
            return _mean_std([a["final_accuracy_mean"]]) if a["final_accuracy_std"] is None else \
                f"{a['final_accuracy_mean']:.3f} ± {a['final_accuracy_std']:.3f}"

        def reached(a):
            done, total = map(int, a["reached_target"].split("/"))
            return f"{done}/{total}" + (f" (round {a['rounds_to_target_mean']:.0f})" if done else "")

        out.append([f"{alpha}", "in distribution", _seeds(fedavg["seeds"]), final(fedavg), final(genfl),
                    reached(fedavg), reached(genfl)])
    fedavg = _robustness_runs(rob, "strategy=fedavg, clients=20")
    shifted = "strategy=genfl, generator=fonts, clients=20, kappa_policy=constant, bn_stats=mixed"
    for name, label in (("shifted, GenFL as published", shifted),
                        ("shifted, the default (generator check)", shifted + ", generator_check=True, on_fail=adaptive")):
        genfl = _robustness_runs(rob, label)
        seeds = sorted(genfl)
        base = [fedavg[s] for s in seeds]
        mine = [genfl[s] for s in seeds]
        out.append(["0.1", name, _seeds(seeds), _mean_std([r["final_accuracy"] for r in base]),
                    _mean_std([r["final_accuracy"] for r in mine]), _reached([r["rounds_to_0.9"] for r in base]),
                    _reached([r["rounds_to_0.9"] for r in mine])])
    return out


def _seeds(seeds: list[int]) -> str:
    return f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 and seeds == list(range(seeds[0], seeds[-1] + 1)) else \
        ",".join(map(str, seeds))


def table() -> str:
    head = ["alpha", "generator", "seeds", "FedAvg final", "GenFL final", "FedAvg: 0.9 reached", "GenFL: 0.9 reached"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows()]
    return "\n".join(lines) + "\n"


def replace_between_markers(text: str, body: str) -> str:
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise SystemExit(f"headline: README.md needs exactly one {BEGIN} and one {END}")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{body}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update README.md in place")
    args = parser.parse_args(argv)
    body = table()
    if args.write:
        README.write_text(replace_between_markers(README.read_text(), body))
        print("headline: README.md updated")
    else:
        print(body, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
