"""The report's figure: ``metric`` against round, cumulative MB communicated and training time,
and against simulated time when some run records it (client speeds: stragglers, asynchronous runs).

One line per group of runs (the mean over its seeds) and, where a group has several seeds, a
band from their minimum to their maximum; the target, when there is one, as a dotted line. Needs matplotlib (``pip install -e '.[plots]'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from fl.report.runs import Run
from fl.report.summary import curve

AXES = (("round", "round", "linear"), ("comm_mb", "cumulative MB communicated (up + down)", "linear"),
        ("time_s", "training time (s, evaluation excluded)", "linear"))
SIM_AXIS = ("sim_time", "simulated time (fastest-client local steps)", "linear")


def plot(groups: dict[str, Sequence[Run]], path: Path, metric: str = "test_accuracy", title: str = "",
         log_mb: bool = False, target: float | None = None) -> None:
    try:
        import matplotlib
    except ImportError as e:
        raise ValueError("plots need matplotlib: pip install -e '.[plots]' (or pass --no-plot)") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    simulated = any(r.get("sim_time") is not None for runs in groups.values() for run in runs for r in run.records)
    panels = AXES + ((SIM_AXIS,) if simulated else ())
    legend_rows = -(-len(groups) // 3)
    height = 4 + 0.25 * legend_rows  # inches: the axes, then one line of legend per 3 groups
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), height), sharey=True)
    for label, runs in groups.items():
        for ax, (x, _, _) in zip(axes, panels):
            xs, mean, low, high = curve(runs, metric, x)
            if not xs:
                continue
            (line,) = ax.plot(xs, mean, label=label if len(runs) == 1 else f"{label} ({len(runs)} seeds)")
            if len(runs) > 1:
                ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    for ax, (x, name, scale) in zip(axes, panels):
        ax.set(xlabel=name, xscale="log" if x == "comm_mb" and log_mb else scale)
        if target is not None:
            ax.axhline(target, color="grey", linestyle=":", linewidth=1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(metric.replace("_", " "))
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(3, len(names)), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, (0.22 * legend_rows + 0.1) / height, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
