"""Seconds per round and peak memory under `runtime.malloc=keep` (the default) and `system`.

Workload: the one of `scripts/compression_overhead.py`: MNIST, 100 clients x 600 images (IID),
10 per round, E=1, B=32, SGD lr 0.05, `mlp` with hidden layers [1024, 256] (1,068,810
parameters), no compression, one process (`python train.py`). The two settings alternate
(in reverse order every other repeat); each run's round time is the median of its rounds after
the first, its peak memory the process's largest resident set (`ru_maxrss`).

    FL_DATA_ROOT=<folder with MNIST/raw> python scripts/malloc_cost.py [--rounds 12] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fl.report.runs import read_records  # noqa: E402

MODES = ("keep", "system")

# one run in a fresh process: the settings are process-wide and cannot be undone
CHILD = """
import resource, runpy, sys
sys.argv = ["train.py"] + sys.argv[1:]
try:
    runpy.run_path("train.py", run_name="__main__")
except SystemExit as e:
    if e.code:
        raise
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def run(mode: str, rounds: int, run_dir: Path) -> tuple[float, float]:
    """(median s/round after the first, peak resident MB) of one job."""
    overrides = ["data=mnist", "model=mlp", "+model.hidden=[1024,256]", "fl.num_clients=100",
                 "fl.clients_per_round=10", "fl.local_epochs=1", "train.batch_size=32", "optim.lr=0.05",
                 f"fl.rounds={rounds}", f"fl.eval_every={rounds}", "fl.holdout_fraction=0", "fl.checkpoint_every=0",
                 "runtime.progress=false", "runtime.log_level=WARNING", f"runtime.malloc={mode}",
                 f"hydra.run.dir={run_dir}"]
    proc = subprocess.run([sys.executable, "-c", CHILD, *overrides], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"runtime.malloc={mode} failed:\n{proc.stderr[-2000:]}")
    maxrss_kb = int(next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("MAXRSS_KB")))
    records = read_records(run_dir)
    return statistics.median(r["round_s"] for r in records[1:]), maxrss_kb / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    results: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as d:
        for rep in range(a.repeats):
            for mode in (MODES if rep % 2 == 0 else MODES[::-1]):
                results[mode].append(run(mode, a.rounds, Path(d) / f"{mode}-{rep}"))
                s, mb = results[mode][-1]
                print(f"repeat {rep + 1} runtime.malloc={mode}: {s:.3f} s/round, peak {mb:.0f} MB",
                      file=sys.stderr, flush=True)
    summary = {m: {"round_s_median": round(statistics.median(s for s, _ in v), 3),
                   "peak_mb_median": round(statistics.median(mb for _, mb in v))} for m, v in results.items()}
    ratios = [k[0] / s[0] for k, s in zip(results["keep"], results["system"])]
    summary["keep_vs_system_round_s"] = {"median": round(statistics.median(ratios), 3),
                                         "all": [round(r, 3) for r in ratios]}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
