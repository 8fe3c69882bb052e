"""Seconds per round: fl vs a minimal framework-free torch.distributed FedAvg, same workload.

Two workloads, each run through every program in the same invocation, interleaved (in reverse order
every other repeat):

* cross-silo (conf/experiment/bench.yaml): real MNIST, `cnn`, 100 clients of 600 images, 10 per
  round, E=1, B=32, SGD lr 0.05, 20 rounds;
* cross-device (conf/experiment/bench_cross_device.yaml): 1,000 clients of 60 images, 50 per
  round, E=1, B=10 (six local steps per client), 30 rounds.

Programs: `scripts/minimal_fedavg.py` (a tight sequential loop per client), fl with its default
`fl.client_batch=auto` (clients trained together, fl/training/batched.py) and fl with
`fl.client_batch=off` (one client after another). All time their round loop only (after data
loading and process-group set-up); fl's time includes all its per-round work (sampling,
bookkeeping, TensorBoard logging) but not the final evaluation. Start-up, from launching torchrun
to the first round, is reported for the cross-silo programs and fl's default job (`make run`'s).

    python scripts/bench.py [--nproc 2] [--repeats 5] [--workload cross-silo|cross-device|both]
    python scripts/bench.py --scaling [--rounds 5]    # s/round for 1, 2, 4 ranks x 10, 50, 200 clients/round

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


WORKLOADS = {
    "cross-silo": {"experiment": "bench", "rounds": 20, "minimal": ("--clients=100", "--per-round=10", "--batch-size=32"),
                   "text": "MNIST cnn, 100 clients x 600, 10/round, E=1, B=32, lr 0.05"},
    "cross-device": {"experiment": "bench_cross_device", "rounds": 30,
                     "minimal": ("--clients=1000", "--per-round=50", "--batch-size=10"),
                     "text": "MNIST cnn, 1000 clients x 60, 50/round, E=1, B=10, lr 0.05"},
}


def run_fl(nproc: int, root: Path | None, rounds: int, *overrides: str, experiment: str = "bench") -> dict:
    """fl's round time, and its start-up: from launching torchrun to the first round (imports, Hydra,
    data, partition, model)."""
    job = (f"experiment={experiment}", f"data.root={root}") if root is not None else ()
    with tempfile.TemporaryDirectory(prefix="fl-bench-") as tmp:
        _, launched = torchrun(nproc, "train.py", *job, f"fl.rounds={rounds}", *overrides, f"hydra.run.dir={tmp}")
        info = json.loads((Path(tmp) / "run.json").read_text())
    return {"round_s": info["train_s"] / info["rounds_run"], "round_cpu_s": info["train_cpu_s"] / info["rounds_run"],
            "test_accuracy": info["final"]["test_accuracy"], "startup_s": info["rounds_started_unix"] - launched,
            "client_training": info.get("client_training")}


def run_minimal(nproc: int, root: Path, rounds: int, *args: str) -> dict:
    proc, launched = torchrun(nproc, "scripts/minimal_fedavg.py", f"--data-root={root}", f"--rounds={rounds}", *args)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**out, "startup_s": out["rounds_started_unix"] - launched}


def compare(name: str, a: argparse.Namespace, root: Path) -> dict:
    """The workload through the minimal program, batched fl and serial fl, ``a.repeats`` times, interleaved."""
    w = WORKLOADS[name]
    rounds = a.rounds or w["rounds"]
    runs: dict[str, list[dict]] = {"minimal": [], "fl_batched": [], "fl_serial": [], "fl_default_job": []}
    programs = {
        "minimal": lambda: run_minimal(a.nproc, root, rounds, *w["minimal"]),
        "fl_batched": lambda: run_fl(a.nproc, root, rounds, experiment=w["experiment"]),
        "fl_serial": lambda: run_fl(a.nproc, root, rounds, "fl.client_batch=off", experiment=w["experiment"]),
    }
    for i in range(a.repeats):  # interleaved, so drift in machine load hits all alike
        # in reverse order every other repeat: no program always runs just after another one (a run
        # can leave the machine slower for the next, e.g. memory the kernel must hand out again)
        for k in (list(programs) if i % 2 == 0 else list(reversed(programs))):
            runs[k].append(programs[k]())
        if name == "cross-silo":  # the default job (make run): start-up only
            runs["fl_default_job"].append(run_fl(a.nproc, None, 1, "runtime.progress=false"))
        print(f"{name} repeat {i + 1}: " + ", ".join(f"{k} {v[-1]['round_s']:.4f} s/round" for k, v in runs.items()
                                                     if v and k != "fl_default_job"), flush=True)
    med = lambda k, key: round(statistics.median(r[key] for r in runs[k]), 4)  # noqa: E731
    # Wall time on a small shared machine drifts by 10-30% between runs, so each fl run is compared
    # with the minimal run just before it (paired ratios), and so is rank 0's CPU time (the work
    # done: gloo waits block, they do not spin), which drifts far less.
    paired = lambda k, key="round_s": [round(f[key] / m[key], 3) for f, m in zip(runs[k], runs["minimal"])]  # noqa: E731
    out = {"workload": f"{w['text']}, {rounds} rounds, {a.nproc} ranks", "repeats": a.repeats,
           "client_training": runs["fl_batched"][0]["client_training"]}
    for k in ("minimal", "fl_batched", "fl_serial"):
        out[k] = {"round_s_median": med(k, "round_s"), "round_cpu_s_median": med(k, "round_cpu_s"),
                  "test_accuracy": med(k, "test_accuracy")}
        if k != "minimal":
            out[k]["vs_minimal_paired_median"] = round(statistics.median(paired(k)), 3)
            out[k]["vs_minimal_paired_all"] = paired(k)
            out[k]["cpu_vs_minimal_paired_median"] = round(statistics.median(paired(k, "round_cpu_s")), 3)
    out["batched_vs_serial_paired_median"] = round(statistics.median(
        b["round_s"] / s["round_s"] for b, s in zip(runs["fl_batched"], runs["fl_serial"])), 3)
    if name == "cross-silo":
        out["startup_s_median"] = {"minimal_mnist": med("minimal", "startup_s"), "fl_mnist_bench": med("fl_batched", "startup_s"),
                                   "fl_default_job": med("fl_default_job", "startup_s")}
    return out


def scaling(a: argparse.Namespace, root: Path) -> None:
    """Seconds per round of the cross-device clients (60 images, B=10, E=1) for 1, 2 and 4 ranks and
    10, 50 and 200 clients per round, batched and serial."""
    rounds = a.rounds or 5
    print("| ranks | clients/round | batched s/round | serial s/round | batched / serial |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for nproc in (1, 2, 4):
        for per_round in (10, 50, 200):
            common = (f"fl.clients_per_round={per_round}",)
            b = run_fl(nproc, root, rounds, *common, experiment="bench_cross_device")
            s = run_fl(nproc, root, rounds, *common, "fl.client_batch=off", experiment="bench_cross_device")
            print(f"| {nproc} | {per_round} | {b['round_s']:.3f} | {s['round_s']:.3f} | {b['round_s'] / s['round_s']:.2f} |",
                  flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=None, help="default: the workload's (20 cross-silo, 30 cross-device)")
    p.add_argument("--workload", choices=("cross-silo", "cross-device", "both"), default="both")
    p.add_argument("--scaling", action="store_true", help="the ranks x clients-per-round table instead")
    p.add_argument("--data-root")
    a = p.parse_args()
    root = data_root(a.data_root)
    if a.scaling:
        scaling(a, root)
        return
    names = list(WORKLOADS) if a.workload == "both" else [a.workload]
    print(json.dumps({name: compare(name, a, root) for name in names}, indent=2))


if __name__ == "__main__":
    main()
