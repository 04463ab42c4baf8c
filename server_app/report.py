"""A run's results on disk: metrics.json (config + one row per round), metrics.csv and accuracy.png.

metrics.json is rewritten atomically after every round, so a crashed run still leaves what it did.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path


class RunReport:
    """``rounds`` continues a resumed run's table (from its checkpoint). ``run_id`` (the Flower run's)
    ties the file to one run: a reused or resumed folder can hold an older run's metrics.json."""

    def __init__(self, run_dir: Path, config: dict, rounds: list[dict] | None = None, run_id: int | None = None):
        self.run_dir = run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.data = {"status": "running", "run_id": run_id, "config": config, "rounds": list(rounds or [])}
        if rounds:
            self.data["resumed_after_round"] = rounds[-1]["round"]
        self._write_json()

    def set(self, key: str, value) -> None:
        self.data[key] = value
        self._write_json()

    def add_round(self, row: dict) -> None:
        self.data["rounds"].append(row)
        self._write_json()

    def finish(self, status: str) -> None:
        """Write the final status, the CSV table and the accuracy curve."""
        self.data["status"] = status
        self._write_json()
        rows = self.data["rounds"]
        if rows:
            with open(self.run_dir / "metrics.csv", "w", newline="") as fh:
                columns = list(dict.fromkeys(k for row in rows for k in row))
                writer = csv.DictWriter(fh, fieldnames=columns)
                writer.writeheader()
                writer.writerows(rows)
            self._plot(rows)

    def _plot(self, rows: list[dict]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["round"] for r in rows], [r["test_accuracy"] for r in rows], marker="o")
        cfg = self.data["config"]
        ax.set_title(f"{cfg['strategy']['name']} on {cfg['dataset']['name']}, alpha={cfg['partition']['alpha']}")
        ax.set_xlabel("round")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(self.run_dir / "accuracy.png", dpi=100)
        plt.close(fig)

    def _write_json(self) -> None:
        tmp = self.run_dir / "metrics.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=2))
        os.replace(tmp, self.run_dir / "metrics.json")
