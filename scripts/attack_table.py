"""Test accuracy of FedAvg and the robust aggregators under each attack (README table).

Workload: the scikit-learn digits set (no files needed), `cnn`, 20 clients, all of them
every round, 3 local epochs, SGD lr 0.1, 20 rounds, one process. Krum's `num_byzantine`
and the trimmed mean's `beta` are set to the true number / fraction of attackers.

    python scripts/attack_table.py [--rounds 20] [--clients 20] [--fractions 0.1 0.2] [--seed 0]
        [--plot docs/img/attacks.png]
    python scripts/attack_table.py --from-json attack_table.json --plot docs/img/attacks.png

Prints a Markdown table, writes the raw numbers to attack_table.json and, with --plot, a bar
chart of them. --from-json redraws the table and the chart from a previous run's numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fl.engine.loop import run  # noqa: E402
from fl.runtime.env import DistEnv  # noqa: E402

ATTACKS = ("sign_flip", "scale", "gaussian", "label_flip", "nan_update")
STRATEGIES = ("fedavg", "median", "trimmed_mean", "krum")


def run_point(overrides: list[str]) -> dict[str, float]:
    """One in-process run (world size 1) with ``overrides``; its final metrics."""
    if not OmegaConf.has_resolver("fl_rank0_only"):
        OmegaConf.register_new_resolver("fl_rank0_only", lambda value: value)
        OmegaConf.register_new_resolver("fl_run_dir", lambda value: value)
    logging.getLogger("fl").setLevel(logging.ERROR)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["runtime.progress=false", "runtime.log_level=ERROR",
                                                       "fl.checkpoint_every=0", *overrides])
    with tempfile.TemporaryDirectory() as d:
        return run(cfg, Path(d), DistEnv(0, 1, 0))["final"]


def accuracy(overrides: list[str]) -> float:
    return float(run_point(overrides)["test_accuracy"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.2])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", type=Path, default=None, help="also draw the numbers as a bar chart (PNG)")
    p.add_argument("--from-json", type=Path, default=None, help="no runs: the numbers of a previous run")
    args = p.parse_args()
    if args.from_json:
        results = json.loads(args.from_json.read_text())
    else:
        results = run_table(args)
        (Path.cwd() / "attack_table.json").write_text(json.dumps(results, indent=1) + "\n")
    print("| attack | " + " | ".join(STRATEGIES) + " |")
    print("| --- |" + " --- |" * len(STRATEGIES))
    for key, accs in results.items():
        print(f"| {key} | " + " | ".join(f"{accs[s]:.3f}" for s in STRATEGIES) + " |")
    if args.plot:
        plot(results, args.plot)


def run_table(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    base = ["model=cnn_padded", f"seed={args.seed}", f"fl.num_clients={args.clients}", f"fl.rounds={args.rounds}",
            f"fl.eval_every={args.rounds}", "fl.local_epochs=3", "optim.lr=0.1"]
    results: dict[str, dict[str, float]] = {}
    rows = [("none", 0.0)] + [(a, f) for a in ATTACKS for f in args.fractions]
    for attack, fraction in rows:
        key = f"{attack} {fraction:.0%}" if attack != "none" else "no attack"
        results[key] = {}
        for strategy in STRATEGIES:
            bad = round(fraction * args.clients)
            extra = [f"strategy={strategy}"]
            if attack != "none":
                extra += [f"attack={attack}", f"attack.fraction={fraction}"]
                extra += ["attack.factor=30"] if attack == "scale" else []
            if strategy == "krum":
                extra.append(f"strategy.num_byzantine={max(bad, 1)}")
            if strategy == "trimmed_mean":
                extra.append(f"strategy.beta={max(fraction, 0.1)}")
            results[key][strategy] = accuracy(base + extra)
            print(f"{key:>16} {strategy:>12} {results[key][strategy]:.3f}", file=sys.stderr, flush=True)
    return results


def plot(results: dict[str, dict[str, float]], path: Path) -> None:
    """Test accuracy per attack (groups of bars), one bar per aggregator."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 3.8))
    width = 0.8 / len(STRATEGIES)
    for i, strategy in enumerate(STRATEGIES):
        xs = [k + (i - (len(STRATEGIES) - 1) / 2) * width for k in range(len(results))]
        ax.bar(xs, [accs[strategy] for accs in results.values()], width, label=strategy)
    ax.set_xticks(range(len(results)), [key.replace(" ", "\n") for key in results], fontsize=8)
    ax.set(ylabel="test accuracy after the last round", ylim=(0, 1),
           title="digits, 20 clients: FedAvg and robust aggregators under attack (share of attackers)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=len(STRATEGIES), loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)


if __name__ == "__main__":
    main()
