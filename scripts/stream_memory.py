"""Peak memory of a job over an on-disk dataset larger than its memory budget: streamed vs in memory.

Writes datasets of the given sizes (3x32x32 uint8 images, fl.data.ondisk), then runs one
federated job per size and path as ``python train.py`` under a per-process memory budget
(``RLIMIT_DATA``, inherited by the DataLoader's workers), sampling the proportional set size
(PSS: shared pages split between processes) of the job's whole process tree. The streamed path
(``data.stream=true``) should stay flat as the dataset grows; the in-memory path holds the
dataset as float32 tensors and runs out of its budget. Linux only (``/proc``, ``prlimit``).

    python scripts/stream_memory.py --sizes-mb 256 2048 --budget-mb 1024 [--malloc keep|system]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

SHAPE = (3, 32, 32)


def _write(folder: Path, megabytes: int) -> int:
    """A dataset of about ``megabytes`` MB on disk, written in pieces (never held whole)."""
    per = int(np.prod(SHAPE))
    n = megabytes * 2**20 // per
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    centres = rng.integers(0, 256, size=(10, *SHAPE))
    labels = rng.integers(0, 10, size=n)
    with open(folder / "inputs.bin", "wb") as f:
        for start in range(0, n, 8192):
            y = labels[start:start + 8192]
            x = np.clip(centres[y] + rng.normal(0, 60, size=(len(y), *SHAPE)), 0, 255).astype(np.uint8)
            f.write(x.tobytes())
    np.save(folder / "labels.npy", labels)
    (folder / "meta.json").write_text('{"shape": [3, 32, 32], "dtype": "uint8"}')
    return n


def _tree_pss_mb(pid: int) -> float:
    """Sum of PSS over ``pid`` and its descendants, MB."""
    pids, total = [pid], 0.0
    while pids:
        p = pids.pop()
        try:
            for line in open(f"/proc/{p}/smaps_rollup"):
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) / 1024
                    break
            with open(f"/proc/{p}/task/{p}/children") as f:
                pids += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def _run(root: Path, stream: bool, budget_mb: int, run_dir: Path, malloc: str = "keep") -> tuple[str, float, float]:
    args = [sys.executable, str(REPO / "train.py"), "data=custom", "data._target_=fl.data.ondisk.load",
            f"+data.root={root}", f"data.stream={str(stream).lower()}", "data.workers=2", "model=logreg",
            "fl.num_clients=2", "fl.rounds=1", "fl.local_epochs=1", "train.batch_size=256",
            "fl.holdout_fraction=0", "runtime.progress=false", f"runtime.malloc={malloc}", f"hydra.run.dir={run_dir}"]
    limit = budget_mb * 2**20
    shutil.rmtree(run_dir, ignore_errors=True)  # this script's own run directory: always a fresh run

    def _budget() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    t0 = time.perf_counter()
    proc = subprocess.Popen(args, preexec_fn=_budget, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, _tree_pss_mb(proc.pid))
        time.sleep(0.2)
    err = proc.stderr.read() if proc.stderr else ""
    secs = time.perf_counter() - t0
    if proc.returncode == 0:
        return "completed", peak, secs
    last = err.strip().splitlines()[-1][:200] if err.strip() else ""
    print(f"    exit {proc.returncode}: {last}")
    oom = any(s in err for s in ("does not fit in this process", "can't allocate", "MemoryError", "out of memory"))
    return "out of memory" if oom else f"failed (exit {proc.returncode})", peak, secs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes-mb", type=int, nargs="+", default=[256, 2048])
    p.add_argument("--budget-mb", type=int, default=1024, help="RLIMIT_DATA of each process of the job")
    p.add_argument("--folder", type=Path, default=None, help="where to write the datasets (default: a temp dir)")
    p.add_argument("--malloc", choices=("keep", "system"), default="keep", help="the jobs' runtime.malloc")
    a = p.parse_args()
    base = a.folder or Path(tempfile.mkdtemp(prefix="fl_stream_"))
    rows = []
    for mb in a.sizes_mb:
        root = base / f"data_{mb}mb"
        n = _write(root, mb) if not (root / "meta.json").exists() else len(np.load(root / "labels.npy"))
        for stream in (True, False):
            outcome, peak, secs = _run(root, stream, a.budget_mb, base / f"run_{mb}_{stream}", a.malloc)
            rows.append((mb, n, "stream" if stream else "in memory", outcome, peak, secs))
            print(rows[-1], flush=True)
    print(f"\nper-process budget (RLIMIT_DATA): {a.budget_mb} MB; one round, 2 clients, E=1, B=256, logreg; "
          f"runtime.malloc={a.malloc}\n")
    print("| dataset on disk | samples | path | outcome | peak PSS of the job | seconds |")
    print("| ---: | ---: | --- | --- | ---: | ---: |")
    for mb, n, path, outcome, peak, secs in rows:
        print(f"| {mb} MB | {n:,} | {path} | {outcome} | {peak:.0f} MB | {secs:.0f} |")
    print(f"\n{os.cpu_count()} CPUs; datasets in {base}")


if __name__ == "__main__":
    main()
