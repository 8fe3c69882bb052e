"""Clean vs private accuracy: DP-FedAvg at a few noise multipliers, with the epsilon spent.

Workload: scikit-learn digits, `cnn`, 50 clients, 10 per round, 2 local epochs, SGD lr 0.1,
40 rounds, clip norm 0.5, one process. Epsilon at delta = 50^-1.1 from Opacus' RDP accountant.

    python scripts/dp_table.py [--rounds 40] [--multipliers 0 0.3 0.6 1.0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from attack_table import run_point  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--multipliers", type=float, nargs="+", default=[0.0, 0.3, 0.6, 1.0])
    args = p.parse_args()
    base = ["fl.num_clients=50", "fl.clients_per_round=10", f"fl.rounds={args.rounds}",
            f"fl.eval_every={args.rounds}", "fl.local_epochs=2", "optim.lr=0.1"]
    print("| privacy | noise multiplier | epsilon | test accuracy |")
    print("| --- | --- | --- | --- |")
    final = run_point(base)
    print(f"| none | - | - | {final['test_accuracy']:.3f} |", flush=True)
    for z in args.multipliers:
        final = run_point(base + ["privacy=dp_fedavg", "privacy.clip_norm=0.5", f"privacy.noise_multiplier={z}"])
        eps = final["dp_epsilon"]
        print(f"| dp_fedavg | {z:g} | {'inf' if eps == float('inf') else f'{eps:.2f}'} | "
              f"{final['test_accuracy']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
