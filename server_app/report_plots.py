"""The report's plots (genfl-report, bench/convergence.py): accuracy by round per configuration, one panel
per alpha, and final accuracy against kappa_aug. They read a summary made by `server_app.report.build_summary`."""

from __future__ import annotations

from pathlib import Path

from server_app.report import sort_key


def plot_accuracy_by_round(summary: dict, path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    alphas = sorted({row["alpha"] for row in summary["configurations"]}, key=sort_key)
    label_keys = [k for k in summary["label_keys"] if k != "alpha"]

    def label(row):
        return ", ".join(f"{k}={row.get(k)}" for k in label_keys) or "all runs"

    labels = sorted({label(row) for row in summary["configurations"]})
    colours = {name: plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")(i) for i, name in enumerate(labels)}
    fig, axes = plt.subplots(1, len(alphas), figsize=(5.5 * len(alphas), 4.2 + 0.22 * len(labels)),
                             squeeze=False, sharey=True)
    for ax, alpha in zip(axes[0], alphas):
        for row in (r for r in summary["configurations"] if r["alpha"] == alpha):
            curve, colour = row["curve"], colours[label(row)]
            ax.plot(curve["round"], curve["mean"], color=colour, label=label(row))
            ax.fill_between(curve["round"], curve["min"], curve["max"], color=colour, alpha=0.2, linewidth=0)
        ax.set_title(f"alpha = {alpha}")
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (mean; band: lowest to highest seed)")
    handles = [plt.Line2D([], [], color=colours[name]) for name in labels]
    runs: dict[str, set] = {}  # seeds per line can differ between panels (alphas)
    for row in summary["configurations"]:
        runs.setdefault(label(row), set()).add(row["runs"])

    def n(name):
        low, high = min(runs[name]), max(runs[name])
        return f"n={low}" if low == high else f"n={low}-{high} by panel"

    fig.legend(handles, [f"{name} ({n(name)})" for name in labels], loc="lower center", fontsize=8, ncol=1,
               frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.05 * len(labels) / (1 + 0.05 * len(labels)) + 0.03, 1, 1))
    fig.savefig(path, dpi=110, bbox_inches="tight")  # a legend wider than the panels is kept whole
    plt.close(fig)


def plot_accuracy_vs_kappa(summary: dict, path: Path, title: str = "") -> bool:
    """Final accuracy against kappa_aug, one line per setting that was run at two or more kappa_aug values."""
    lines: dict[tuple, list[dict]] = {}
    others = [k for k in summary["label_keys"] if k not in ("strategy", "kappa_aug")]
    for row in summary["configurations"]:
        lines.setdefault(tuple(row.get(k) for k in others), []).append(row)
    lines = {k: v for k, v in lines.items() if len({r["kappa_aug"] for r in v}) > 1}
    if not lines:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for setting, rows in lines.items():
        rows = sorted(rows, key=lambda r: r["kappa_aug"])
        label = ", ".join(f"{k}={v}" for k, v in zip(others, setting)) or f"alpha={rows[0]['alpha']}"
        ax.errorbar([r["kappa_aug"] for r in rows], [r["final_accuracy_mean"] for r in rows],
                    yerr=[r["final_accuracy_std"] or 0.0 for r in rows], marker="o", capsize=3, label=label)
    ax.set_xlabel("kappa_aug (0 = FedAvg, 1 = AIGC-only)")
    ax.set_ylabel("final test accuracy (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
