"""The smallest honest FedAvg on torch.distributed: the baseline that scripts/bench.py compares fl with.

No framework: MNIST as tensors, an IID split, the `cnn` model, each rank trains its share of
the round's sampled clients in a tight loop, then one all-reduce of the flat weighted sum.

    torchrun --standalone --nproc_per_node=2 scripts/minimal_fedavg.py --data-root data
Prints one JSON line on rank 0: wall and CPU seconds per round, and final test accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters
from torchvision.datasets import MNIST


def net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 10, 5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(10, 20, 5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Flatten(), nn.Linear(320, 50), nn.ReLU(), nn.Linear(50, 10),
    )


def tensors(root: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    ds = MNIST(root, train=train, download=False)
    return ((ds.data.float() / 255 - 0.1307) / 0.3081).unsqueeze(1), ds.targets.long()


def train_client(model: nn.Module, global_w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor,
                 cid: int, rnd: int, lr: float, batch_size: int) -> torch.Tensor:
    """One client's local epoch of SGD from ``global_w`` on rows ``idx``; its weights' change."""
    # clone: vector_to_parameters makes the parameters *views* of its argument, so without
    # it local SGD steps would write into global_w itself
    vector_to_parameters(global_w.clone(), model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    perm = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(cid * 7919 + rnd))]
    for b in range(0, len(perm), batch_size):
        rows = perm[b:b + batch_size]
        loss = F.cross_entropy(model(x[rows]), y[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return parameters_to_vector(model.parameters()).detach() - global_w


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data-root", default="data")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--per-round", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    x, y = tensors(a.data_root, True)
    xt, yt = tensors(a.data_root, False)
    parts = torch.tensor_split(torch.randperm(len(y), generator=torch.Generator().manual_seed(a.seed)), a.clients)
    torch.manual_seed(a.seed)
    model = net()
    global_w = parameters_to_vector(model.parameters()).detach().clone()
    dist.broadcast(global_w, 0)

    dist.barrier()
    rounds_started = time.time()
    start, cpu_start = time.perf_counter(), time.process_time()
    for rnd in range(a.rounds):
        g = torch.Generator().manual_seed(a.seed * 100003 + rnd)
        cohort = sorted(torch.randperm(a.clients, generator=g)[:a.per_round].tolist())
        mine = torch.tensor_split(torch.tensor(cohort), world)[rank].tolist()
        acc = torch.zeros(global_w.numel() + 1)
        for cid in mine:
            idx = parts[cid]
            acc[:-1] += len(idx) * train_client(model, global_w, x, y, idx, cid, rnd, a.lr, a.batch_size)
            acc[-1] += len(idx)
        dist.all_reduce(acc)
        global_w += acc[:-1] / acc[-1]
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start

    vector_to_parameters(global_w.clone(), model.parameters())
    with torch.no_grad():
        accuracy = (model.eval()(xt).argmax(1) == yt).float().mean().item()
    if rank == 0:
        print(json.dumps({"program": "minimal", "world_size": world, "rounds": a.rounds,
                          "round_s": elapsed / a.rounds, "round_cpu_s": cpu / a.rounds,
                          "test_accuracy": accuracy, "rounds_started_unix": rounds_started}), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
