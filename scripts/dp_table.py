"""Clean vs private accuracy, with the epsilon spent, from real runs (one process each).

Client-level DP (`experiment=dp_digits`: scikit-learn digits, `cnn_padded`, 50 clients, 10 per round,
2 local epochs, SGD lr 0.1, 40 rounds): DP-FedAvg with clip norm 0.5 at a few noise
multipliers, and with adaptive clipping (median norm, count noise 10/20); epsilon at
delta = 50^-1.1 for the fixed-size cohorts fl draws (dp-accounting, replace-one), and under
the Poisson approximation (Opacus, add/remove) for comparison.

Sample-level DP (`experiment=dp_silos`: digits over 5 silos of about 290 records, `mlp`, 20
rounds of one local epoch): DP-SGD inside each silo; epsilon is the largest silo's, at
delta = n^-1.1 for a silo of n records. All epsilons from Opacus' RDP accountant.

    python scripts/dp_table.py [--multipliers 0 0.3 0.6 1.0] [--local-multipliers 0.5 1.0 2.0]
        [--plot docs/img/dp.png]

With --plot, also draws test accuracy against epsilon for both workloads, the clean run as a line.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from attack_table import run_point  # noqa: E402

from fl.privacy.accounting import epsilon  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--multipliers", type=float, nargs="+", default=[0.0, 0.3, 0.6, 1.0])
    p.add_argument("--adaptive-multiplier", type=float, default=0.6)
    p.add_argument("--local-multipliers", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    p.add_argument("--plot", type=Path, default=None, help="also draw accuracy against epsilon (PNG)")
    args = p.parse_args()
    print("| workload | privacy | noise multiplier | epsilon | epsilon, Poisson approx. | test accuracy |")
    print("| --- | --- | --- | --- | --- | --- |")
    central = ["experiment=dp_digits", "privacy=dp_fedavg", "privacy.clip_norm=0.5"]
    row("dp_digits", "none", None, None, run_point(["experiment=dp_digits"]))
    for z in args.multipliers:
        row("dp_digits", "dp_fedavg", z, "dp_epsilon", run_point(central + [f"privacy.noise_multiplier={z}"]))
    z = args.adaptive_multiplier
    row("dp_digits", "dp_fedavg, adaptive clip (median)", z, "dp_epsilon",
        run_point(central + [f"privacy.noise_multiplier={z}", "privacy.target_quantile=0.5"]))
    row("dp_silos", "none", None, None, run_point(["experiment=dp_silos"]))
    for z in args.local_multipliers:
        row("dp_silos", "dp_sgd_local", z, "dp_local_epsilon",
            run_point(["experiment=dp_silos", "privacy=dp_sgd_local", f"privacy.noise_multiplier={z}"]))
    if args.plot:
        plot(ROWS, args.plot)


ROWS: list[tuple[str, str, float | None, float | None, float]] = []  # workload, privacy, z, epsilon, accuracy


def row(workload: str, privacy: str, z: float | None, eps_key: str | None, final: dict) -> None:
    eps = final[eps_key] if eps_key else None
    poisson = epsilon(z, 10 / 50, 40, 50 ** -1.1) if eps_key == "dp_epsilon" else None
    ROWS.append((workload, privacy, z, eps, final["test_accuracy"]))
    print(f"| {workload} | {privacy} | {'-' if z is None else f'{z:g}'} | {text(eps)} | {text(poisson)} | "
          f"{final['test_accuracy']:.3f} |", flush=True)


def plot(rows: list[tuple[str, str, float | None, float | None, float]], path: Path) -> None:
    """Accuracy against epsilon (log scale), one panel per workload; the run without DP as a line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    titles = {"dp_digits": "client-level DP-FedAvg (50 clients, 10 per round)",
              "dp_silos": "sample-level DP-SGD in 5 silos"}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, (workload, title) in zip(axes, titles.items()):
        mine = [r for r in rows if r[0] == workload]
        for privacy in dict.fromkeys(r[1] for r in mine if r[1] != "none"):
            points = [(r[3], r[4], r[2]) for r in mine if r[1] == privacy and r[3] is not None and math.isfinite(r[3])]
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=privacy)
            for eps, acc, z in points:
                ax.annotate(f"z={z:g}", (eps, acc), textcoords="offset points", xytext=(4, 4), fontsize=7)
        for r in mine:
            if r[1] == "none":
                ax.axhline(r[4], color="grey", linestyle="--", label="no DP")
        ax.set(xscale="log", xlabel="epsilon (log scale)", title=title)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no crowded labels between decades
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("test accuracy")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)


def text(eps: float | None) -> str:
    return "-" if eps is None else "inf" if eps == float("inf") else f"{eps:.2f}"


if __name__ == "__main__":
    main()
