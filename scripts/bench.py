"""Seconds per round: fl vs a minimal framework-free torch.distributed FedAvg, same workload.

Workload (conf/experiment/bench.yaml): real MNIST, `cnn`, 100 clients, 10 per round, E=1, B=32,
SGD lr 0.05, 20 rounds, 2 ranks on this machine. Both programs time their round loop only
(after data loading and process-group set-up); fl's time includes all its per-round work
(sampling, bookkeeping, TensorBoard logging) but not the final evaluation. Start-up, from
launching torchrun to the first round (imports, Hydra, data, partition, model), is reported for
both programs and for fl's default job (`make run`'s: digits, mlp).

    python scripts/bench.py [--nproc 2] [--repeats 5] [--data-root DIR]

MNIST comes from --data-root, else from ../shared/data copied to ./data (offline).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def data_root(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    root = REPO / "data"
    shared = REPO.parent / "shared" / "data"
    if not (root / "MNIST" / "raw").is_dir():
        if not (shared / "MNIST" / "raw").is_dir():
            sys.exit(f"no MNIST files: pass --data-root, or put them in {root}/MNIST/raw")
        shutil.copytree(shared / "MNIST", root / "MNIST", dirs_exist_ok=True)
    # Extract once (MD5-checked, offline) so that neither timed program pays for it.
    from torchvision.datasets import MNIST
    for train in (True, False):
        MNIST(str(root), train=train, download=True)
    return root


def torchrun(nproc: int, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    """The finished launch and the wall-clock time it was started at."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    launched = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-4000:]}")
    return proc, launched


def run_fl(nproc: int, root: Path | None, rounds: int, *overrides: str) -> dict:
    """fl's round time, and its start-up: from launching torchrun to the first round (imports, Hydra,
    data, partition, model)."""
    job = ("experiment=bench", f"data.root={root}") if root is not None else ()
    with tempfile.TemporaryDirectory(prefix="fl-bench-") as tmp:
        _, launched = torchrun(nproc, "train.py", *job, f"fl.rounds={rounds}", *overrides, f"hydra.run.dir={tmp}")
        info = json.loads((Path(tmp) / "run.json").read_text())
    return {"round_s": info["train_s"] / info["rounds_run"], "round_cpu_s": info["train_cpu_s"] / info["rounds_run"],
            "test_accuracy": info["final"]["test_accuracy"], "startup_s": info["rounds_started_unix"] - launched}


def run_minimal(nproc: int, root: Path, rounds: int) -> dict:
    proc, launched = torchrun(nproc, "scripts/minimal_fedavg.py", f"--data-root={root}", f"--rounds={rounds}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**out, "startup_s": out["rounds_started_unix"] - launched}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--data-root")
    a = p.parse_args()
    root = data_root(a.data_root)
    fl_s, min_s, fl_cpu, min_cpu, fl_acc, min_acc = [], [], [], [], [], []
    fl_up, min_up, default_up = [], [], []
    for i in range(a.repeats):  # interleaved, so drift in machine load hits both alike
        m = run_minimal(a.nproc, root, a.rounds)
        f = run_fl(a.nproc, root, a.rounds)
        d = run_fl(a.nproc, None, 1, "runtime.progress=false")  # the default job (make run): start-up only
        min_up.append(m["startup_s"]), fl_up.append(f["startup_s"]), default_up.append(d["startup_s"])
        min_s.append(m["round_s"]), fl_s.append(f["round_s"])
        min_cpu.append(m["round_cpu_s"]), fl_cpu.append(f["round_cpu_s"])
        min_acc.append(m["test_accuracy"]), fl_acc.append(f["test_accuracy"])
        print(f"repeat {i + 1}: fl {f['round_s']:.4f} s/round ({f['round_cpu_s']:.4f} CPU s), "
              f"minimal {m['round_s']:.4f} s/round ({m['round_cpu_s']:.4f} CPU s)", flush=True)
    # Wall time on a small shared machine drifts by 10-30% between runs, so each fl run is compared
    # with the minimal run just before it (paired ratios), the fastest runs are compared too, and so is
    # rank 0's CPU time (the work done: gloo waits block, they do not spin), which drifts far less.
    ratios = [f / m for f, m in zip(fl_s, min_s, strict=True)]
    cpu_ratios = [f / m for f, m in zip(fl_cpu, min_cpu, strict=True)]
    print(json.dumps({
        "workload": f"MNIST cnn, 100 clients, 10/round, E=1, B=32, lr 0.05, {a.rounds} rounds, {a.nproc} ranks",
        "fl_round_s_median": round(statistics.median(fl_s), 4),
        "minimal_round_s_median": round(statistics.median(min_s), 4),
        "ratio_paired_median": round(statistics.median(ratios), 3),
        "ratio_paired_all": [round(r, 3) for r in ratios],
        "ratio_of_fastest": round(min(fl_s) / min(min_s), 3),
        "fl_round_cpu_s_median": round(statistics.median(fl_cpu), 4),
        "minimal_round_cpu_s_median": round(statistics.median(min_cpu), 4),
        "cpu_ratio_paired_median": round(statistics.median(cpu_ratios), 3),
        "cpu_ratio_paired_all": [round(r, 3) for r in cpu_ratios],
        "fl_test_accuracy": round(statistics.median(fl_acc), 4),
        "minimal_test_accuracy": round(statistics.median(min_acc), 4), "repeats": a.repeats,
        "startup_s_median": {"minimal_mnist": round(statistics.median(min_up), 2),
                             "fl_mnist_bench": round(statistics.median(fl_up), 2),
                             "fl_default_job": round(statistics.median(default_up), 2)},
    }, indent=2))


if __name__ == "__main__":
    main()
