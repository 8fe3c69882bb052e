"""Uplink/downlink bytes and final accuracy of each compressor on one workload (README table).

Workload: Fashion-MNIST, 100 clients, Dirichlet(0.3) label skew, 10 clients per round, `cnn`,
E=1, B=32, SGD lr 0.05, the same rounds for every row, one process (the result does not depend
on the world size). Bytes are the exact serialized client messages (``uplink_bytes``) and what the
round's clients received (``downlink_bytes``), as every run records them in metrics.jsonl.

    FL_DATA_ROOT=<folder with FashionMNIST/raw> python scripts/compression_table.py [--rounds 100]
        [--rows none 4bit ...] [--seeds 0 1 2] [--out compression_runs] [--plot docs/img/compression.png]
        [--reuse]

Prints a Markdown table, writes the raw numbers to <out>/compression_table.json and the plot
(test accuracy against round and against cumulative uplink MB, of the first seed). With several
seeds, the accuracy columns are the mean over seeds with the lowest and highest in brackets, and
each row is compared with no compression's mean.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fl.engine.loop import run  # noqa: E402
from fl.report.runs import read_records  # noqa: E402
from fl.runtime.env import DistEnv  # noqa: E402

Q = "compression/uplink=quantize"
ROWS = {
    "none": [],
    "fp16": ["compression/uplink=fp16"],
    "8bit": [Q, "compression.uplink.bits=8"],
    "4bit": [Q, "compression.uplink.bits=4"],
    "2bit": [Q, "compression.uplink.bits=2"],
    "1bit+rotation": [Q, "compression.uplink.bits=1", "compression.uplink.rotate=true"],
    "topk1%+EF": ["compression/uplink=topk", "compression.uplink.fraction=0.01"],
    "topk1%": ["compression/uplink=topk", "compression.uplink.fraction=0.01", "compression.uplink.error_feedback=false"],
    "randk10%": ["compression/uplink=randk", "compression.uplink.fraction=0.1"],
    "randk20%+4bit": ["compression/uplink=randk", "compression.uplink.fraction=0.2", "compression.uplink.bits=4"],
    "randk10%+8bit": ["compression/uplink=randk", "compression.uplink.fraction=0.1", "compression.uplink.bits=8"],
    "randk5%+8bit": ["compression/uplink=randk", "compression.uplink.fraction=0.05", "compression.uplink.bits=8"],
    "4bit+secagg": [Q, "compression.uplink.bits=4", "secagg=masking"],
    "4bit up, 8bit down": [Q, "compression.uplink.bits=4", "compression/downlink=quantize",
                           "compression.downlink.bits=8"],
}


def run_row(name: str, overrides: list[str], out: Path, reuse: bool = False) -> Path:
    """Run one row in ``out/<name>`` (``reuse``: keep a finished run found there, without running)."""
    if not OmegaConf.has_resolver("fl_rank0_only"):
        OmegaConf.register_new_resolver("fl_rank0_only", lambda value: value)
        OmegaConf.register_new_resolver("fl_run_dir", lambda value: value)
    logging.getLogger("fl").setLevel(logging.WARNING)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["runtime.progress=false", "runtime.log_level=WARNING",
                                                       *overrides])
    run_dir = out / name.replace(" ", "").replace(",", "_").replace("%", "pct")
    if reuse and (run_dir / "final_model.pt").exists():
        return run_dir
    shutil.rmtree(run_dir, ignore_errors=True)
    run(cfg, run_dir, DistEnv(0, 1, 0))
    return run_dir


def read(run_dir: Path) -> list[dict]:
    """One record per round (TensorBoard has every round; metrics.jsonl the evaluated ones)."""
    return read_records(run_dir)


def summarize(records: list[dict]) -> dict:
    evaluated = [r for r in records if "test_accuracy" in r]
    n = len(records)
    return {"uplink_mb": sum(r["uplink_bytes"] for r in records) / n / 1e6,
            "downlink_mb": sum(r["downlink_bytes"] for r in records) / n / 1e6,
            "final_accuracy": evaluated[-1]["test_accuracy"],
            "best_accuracy": max(r["test_accuracy"] for r in evaluated),
            "round_s": sum(r["round_s"] for r in records) / n}


def plot(curves: dict[str, list[dict]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_round, by_mb) = plt.subplots(1, 2, figsize=(11, 4.2))
    by_round.set_prop_cycle(color=plt.cm.tab20.colors)  # more rows than the default ten colours
    by_mb.set_prop_cycle(color=plt.cm.tab20.colors)
    for name, records in curves.items():
        evaluated = [r for r in records if "test_accuracy" in r]
        cumulative, total = {}, 0.0
        for r in records:
            total += r["uplink_bytes"] / 1e6
            cumulative[r["round"]] = total
        style = "--" if "secagg" in name or "down" in name else "-"
        by_round.plot([r["round"] for r in evaluated], [r["test_accuracy"] for r in evaluated], style, label=name)
        by_mb.plot([cumulative[r["round"]] for r in evaluated], [r["test_accuracy"] for r in evaluated], style,
                   label=name)
    by_round.set(xlabel="round", ylabel="test accuracy", title="Fashion-MNIST, 100 clients, Dirichlet(0.3)")
    by_mb.set(xlabel="cumulative uplink MB (all clients)", xscale="log", title="accuracy per byte sent")
    for ax in (by_round, by_mb):
        ax.grid(alpha=0.3)
    by_mb.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", type=Path, default=Path("compression_runs"))
    p.add_argument("--plot", type=Path, default=Path("docs/img/compression.png"))
    p.add_argument("--reuse", action="store_true", help="read rows already finished in --out instead of running them")
    args = p.parse_args()

    def base(seed: int) -> list[str]:
        return ["data=fashion_mnist", "partition=dirichlet", "partition.alpha=0.3", "model=cnn", f"seed={seed}",
                "fl.num_clients=100", "fl.clients_per_round=10", "fl.local_epochs=1", "train.batch_size=32",
                "optim.lr=0.05", f"fl.rounds={args.rounds}", f"fl.eval_every={max(1, args.rounds // 20)}",
                "fl.holdout_fraction=0", "fl.checkpoint_every=0"]

    curves, results = {}, {}
    for name in args.rows:
        runs = []
        for seed in args.seeds:
            tag = name if seed == 0 else f"{name} seed{seed}"  # seed 0 is the single-seed table's run
            records = read(run_row(tag, base(seed) + ROWS[name], args.out, args.reuse))
            curves.setdefault(name, records)
            runs.append(summarize(records))
            print(f"{tag:>26} {json.dumps(runs[-1])}", file=sys.stderr, flush=True)
        finals = [r["final_accuracy"] for r in runs]
        results[name] = {**runs[0], "final_accuracy": sum(finals) / len(finals), "finals": finals,
                         "best_accuracy": sum(r["best_accuracy"] for r in runs) / len(runs)}
    (args.out / "compression_table.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(curves, args.plot)
    ref = results.get("none")
    spread = len(args.seeds) > 1
    print(f"| uplink codec ({args.rounds} rounds) | uplink MB/round | downlink MB/round | uplink ratio | "
          f"final test acc{' (mean [min, max])' if spread else ''} | vs none (points) | s/round |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        ratio = f"{ref['uplink_mb'] / r['uplink_mb']:.1f}x" if ref else "-"
        delta = f"{100 * (r['final_accuracy'] - ref['final_accuracy']):+.1f}" if ref else "-"
        acc = f"{r['final_accuracy']:.4f}" + (f" [{min(r['finals']):.4f}, {max(r['finals']):.4f}]" if spread else "")
        print(f"| {name} | {r['uplink_mb']:.3f} | {r['downlink_mb']:.3f} | {ratio} | {acc} | {delta} | "
              f"{r['round_s']:.2f} |")


if __name__ == "__main__":
    main()
