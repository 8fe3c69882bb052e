"""What secure aggregation costs per round: seconds and bytes, with and without masking.

Times the aggregation step of one round alone (key advertisement, share exchange, encoding,
masking, the all-reduce, unmasking, decoding), at a few model sizes and cohort sizes, for
plain FedAvg, masking without recovery (``secagg.dropout=fail``), masking with recovery
(``recover``, the default), and recovery with 10% of the cohort dropped, with ``--nproc`` gloo ranks
under torchrun; the clients' updates are random vectors made before the clock starts, so
local training, identical in both settings, is left out. Bytes are what each rank puts
into the collectives, summed over ranks (as the ``collective_bytes`` metric counts them).

    python scripts/secagg_cost.py [--nproc 2] [--repeats 3] [--dims 10000 100000 1000000] [--cohorts 10 50]

Prints a Markdown table (the README's) on rank 0.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dims", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--cohorts", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args()


MODES = ("plain", "fail", "recover", "recover, 10% dropped")


def one_round(mode: str, dim: int, cohort: list[int], comm, updates) -> tuple[float, int]:
    import torch

    from fl.transport.plain import SumAggregator
    from fl.transport.secure_sum import SecureSumAggregator
    from fl.strategies import FedAvg

    cpu = torch.device("cpu")
    hosted = [c for c in cohort if c % comm.world_size == comm.rank]
    comm.barrier()
    t0 = time.perf_counter()
    if mode == "plain":
        agg = SumAggregator(FedAvg(), comm, dim, cpu)
    else:
        agg = SecureSumAggregator(FedAvg(), comm, dim, cpu, cohort, hosted, 0, 20, recover=mode != "fail")
    dropped = set(cohort[::10]) if "dropped" in mode else set()
    for cid in hosted:
        agg.drop(cid) if cid in dropped else agg.add(updates[cid])
    result = agg.finish(torch.zeros(dim), 0)
    return time.perf_counter() - t0, result.collective_bytes


def worker(args: argparse.Namespace) -> None:
    import torch

    from fl.runtime.comm import Comm
    from fl.runtime.env import DistEnv, process_group
    from fl.types import ClientUpdate

    torch.set_num_threads(1)
    env = DistEnv.from_environ()
    with process_group(env, torch.device("cpu"), "gloo", 600):
        comm = Comm(env.rank, env.world_size, torch.device("cpu"))
        rows = []
        for dim in args.dims:
            for n in args.cohorts:
                cohort = list(range(n))
                g = torch.Generator().manual_seed(dim + n)
                updates = {c: ClientUpdate(c, torch.randn(dim, generator=g) * 0.01, 100, torch.tensor(1.0), 100, 1)
                           for c in cohort if c % env.world_size == env.rank}
                cell = {}
                for mode in MODES:
                    runs = [one_round(mode, dim, cohort, comm, updates) for _ in range(args.repeats)]
                    cell[mode] = (statistics.median(s for s, _ in runs), runs[0][1])
                rows.append((dim, n, cell))
        if comm.is_main:
            print(f"\n{env.world_size} gloo ranks, {os.cpu_count()} cores, median of {args.repeats} rounds\n")
            print("| model size | clients/round | " + " | ".join(f"{m} s" for m in MODES) + " | "
                  + " | ".join(f"{m} MB" for m in MODES) + " |")
            print("|---:" * (2 + 2 * len(MODES)) + "|")
            for dim, n, cell in rows:
                print(f"| {dim:,} | {n} | " + " | ".join(f"{cell[m][0]:.3f}" for m in MODES) + " | "
                      + " | ".join(f"{cell[m][1] / 1e6:.2f}" for m in MODES) + " |")


def main() -> None:
    args = parse()
    if args.worker:
        worker(args)
        return
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
           str(Path(__file__).resolve()), "--worker", "--repeats", str(args.repeats),
           "--dims", *map(str, args.dims), "--cohorts", *map(str, args.cohorts)]
    sys.exit(subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}).returncode)


if __name__ == "__main__":
    main()
