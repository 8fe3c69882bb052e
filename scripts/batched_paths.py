"""Local training of one rank's clients, four ways, in one process (README, Performance).

Workload: the cross-device clients of scripts/bench.py (60 real MNIST images each, E=1, B=10: six
steps), ``--clients`` of them (default 25: one rank's share of 50 per round on 2 ranks), the seed
CNN (`cnn`), SGD lr 0.05, ``--threads`` threads (default 1, as each of torchrun's ranks has):

* minimal: the client loop of scripts/minimal_fedavg.py (``train_client``), one client after another;
* serial: ``fl.training.local.local_train`` for one client after another (``fl.client_batch=off``);
* vmap: batched training under ``torch.func.vmap`` (every model on a GPU, and models that are not
  plain ``nn.Sequential`` on a CPU);
* grouped: batched training as grouped convolutions in channels-last layout (fl/training/grouped.py,
  what ``fl.client_batch=auto`` runs for this model on a CPU).

All run the same clients from the same weights, interleaved, in reverse order every other repeat
(fl's three on the same batches; the minimal loop draws its own batch order). Each prints its
median milliseconds for the clients' local training (and per step) and, for fl's paths, how far
its clients' deltas are from the serial ones (per round the largest difference over the clients:
its median over the rounds and its worst round). The client of the largest difference is then
trained in float64, to show which float32 result is closer to exact arithmetic.

    python scripts/batched_paths.py [--data-root DIR] [--clients 25] [--threads 1] [--repeats 15]
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from bench import data_root  # noqa: E402
from minimal_fedavg import net, train_client  # noqa: E402
from fl.data.datasets import TensorData, load_torchvision  # noqa: E402
from fl.data.federation import ClientShard  # noqa: E402
from fl.models import cnn  # noqa: E402
from fl.training.batched import SGD, BatchedTrainer  # noqa: E402
from fl.training.flat import FlatModel  # noqa: E402
from fl.training.job import LocalJob  # noqa: E402
from fl.training.local import local_train  # noqa: E402
from fl.types import ClientTask, LocalTraining  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root")
    p.add_argument("--clients", type=int, default=25)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=15)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    train, _, spec = load_torchvision("mnist", str(data_root(a.data_root)))
    torch.manual_seed(0)
    fm = FlatModel(cnn(spec.input_shape, spec.num_classes))
    start = fm.flat.detach().clone()
    make = functools.partial(torch.optim.SGD, lr=0.05)
    plan = LocalTraining(1, None, 10)
    shards = [ClientShard(train, torch.arange(60 * c, 60 * c + 60), torch.arange(0)) for c in range(a.clients)]
    trainers = {name: BatchedTrainer(fm, SGD.of(make), "classification", spec.input_shape, memory_mb=1024,
                                     grouped_on_cpu=name == "grouped") for name in ("vmap", "grouped")}
    assert trainers["grouped"].grouped is not None and trainers["vmap"].grouped is None

    def tasks(rnd: int) -> list[ClientTask]:
        return [ClientTask(c, rnd, 0, plan, make) for c in range(a.clients)]

    minimal = net()

    def minimal_loop(rnd: int) -> list[torch.Tensor]:
        return [train_client(minimal, start, train.x, train.y, s.train_idx, c, rnd, 0.05, 10) for c, s in enumerate(shards)]

    paths = {
        "minimal": minimal_loop,
        "serial": lambda rnd: [local_train(fm, start, s, t) for s, t in zip(shards, tasks(rnd))],
        "vmap": lambda rnd: trainers["vmap"].train([(LocalJob(start, t), s) for s, t in zip(shards, tasks(rnd))]),
        "grouped": lambda rnd: trainers["grouped"].train([(LocalJob(start, t), s) for s, t in zip(shards, tasks(rnd))]),
    }
    times: dict[str, list[float]] = {name: [] for name in paths}
    diffs: dict[str, list[float]] = {name: [] for name in paths}  # per round: the largest over the clients
    worst: tuple = (0.0,)  # the largest grouped-serial difference: (it, round, client, the round's deltas)
    for rnd in range(a.repeats + 2):  # the first two rounds warm up
        deltas = {}
        for name in (list(paths) if rnd % 2 == 0 else list(reversed(paths))):
            t0 = time.perf_counter()
            updates = paths[name](rnd)
            elapsed = time.perf_counter() - t0
            deltas[name] = updates if name == "minimal" else [u.delta for u in updates]
            if rnd >= 2:
                times[name].append(elapsed)
        for name in list(paths)[1:]:
            diffs[name].append(max(float((d - s).abs().max()) for d, s in zip(deltas[name], deltas["serial"])))
        gap = [float((d - s).abs().max()) for d, s in zip(deltas["grouped"], deltas["serial"])]
        if max(gap) > worst[0]:
            worst = (max(gap), rnd, gap.index(max(gap)), deltas)
    steps = 6
    print(f"{a.clients} clients x 60 MNIST images, E=1, B=10 ({steps} steps), cnn, {a.threads} thread(s), "
          f"median of {a.repeats} interleaved repeats")
    print("| path | ms for the clients' local training | ms per step of all clients | vs minimal "
          "| largest delta difference from serial: median round, worst round |")
    print("| --- | ---: | ---: | ---: | ---: |")
    base = statistics.median(times["minimal"])
    for name, ts in times.items():
        ms = statistics.median(ts) * 1000
        diff = f"{statistics.median(diffs[name]):.1e}, {max(diffs[name]):.1e}" if diffs[name] else "(own batches)"
        print(f"| {name} | {ms:.1f} | {ms / steps:.1f} | {ms / 1000 / base:.2f} | {diff} |")
    if len(worst) > 1:  # which float32 result is closer to the same client trained in float64
        _, rnd, c, deltas = worst
        exact = FlatModel(copy.deepcopy(fm.module).double())
        data64 = TensorData(train.x.double(), train.y)
        ref = local_train(exact, start.double(), ClientShard(data64, shards[c].train_idx, torch.arange(0)),
                          tasks(rnd)[c]).delta
        far = {name: float((deltas[name][c].double() - ref).abs().max()) for name in ("serial", "vmap", "grouped")}
        print(f"round {rnd}, client {c} (the largest difference): each path's distance from the client trained in "
              "float64: " + ", ".join(f"{name} {d:.1e}" for name, d in far.items()))


if __name__ == "__main__":
    main()
