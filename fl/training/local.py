"""Local training and evaluation of one client.

Randomness (batch order, dropout) is seeded from ``(seed, round, client)``, so a client
trains identically whichever rank hosts it.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from fl.data.augment import augment
from fl.data.federation import ClientShard
from fl.data.datasets import TensorData
from fl.data.stream import StreamData, batches, chunks
from fl.training.cohort import local_steps
from fl.training.flat import FlatModel
from fl.training.job import LocalTerm
from fl.privacy.dp_sgd import dp_sgd, poisson_batches
from fl.training.objective import CLASSIFICATION, eval_sums, loss as objective_loss
from fl.runtime.seeding import generator, seed_global
from fl.types import ClientTask, ClientUpdate, LocalTraining


def batch_indices(n: int, plan: LocalTraining, g: torch.Generator, device: torch.device) -> Iterator[torch.Tensor]:
    """Positions ``0..n-1`` in mini-batches: fresh permutation per epoch; the last batch of
    an epoch may be short. With ``plan.steps`` set, exactly that many batches."""
    total = plan.steps if plan.steps is not None else None
    done = 0
    epochs = 0
    while True:
        perm = torch.randperm(n, generator=g, device=device)
        for start in range(0, n, plan.batch_size):
            if total is not None and done == total:
                return
            yield perm[start:start + plan.batch_size]
            done += 1
        epochs += 1
        if total is None and epochs == plan.epochs:
            return


def local_train(fm: FlatModel, global_flat: torch.Tensor, shard: ClientShard, task: ClientTask,
                term: LocalTerm | None = None) -> ClientUpdate:
    """Train ``fm`` from ``global_flat`` on the client's training split; return its delta.

    ``term`` (e.g. FedProx's proximal term) is added to every mini-batch loss; the
    reported training loss is the data loss alone. With ``task.dp`` the steps are DP-SGD
    steps on Poisson batches (:mod:`fl.privacy.dp_sgd`).
    """
    device = global_flat.device
    fm.load_(global_flat)
    model = fm.module
    model.train()
    g = generator(task.seed, "batches", task.round_idx, task.client_id, device=device)
    seed_global(task.seed, "dropout", task.round_idx, task.client_id, device=device)  # dropout
    opt = task.make_optimizer(list(model.parameters()))
    aug = task.augment if task.augment is not None and task.augment.active else None
    g_aug = None if aug is None else generator(task.seed, "augment", task.round_idx, task.client_id, device=device)
    params = list(model.parameters())
    extra_loss = None if term is None else (lambda: term.loss(params, fm.param_views))
    idx = shard.train_idx
    loss_sum = torch.zeros((), device=device)
    seen = steps = 0
    if task.dp is None:
        positions, private = batch_indices(shard.num_train, task.plan, g, device), contextlib.nullcontext((model, opt))
    else:
        plan = task.plan
        positions = poisson_batches(shard.num_train, min(1.0, plan.batch_size / shard.num_train),
                                    local_steps(shard.num_train, plan.epochs, plan.steps, plan.batch_size), g, device)
        noise = generator(task.seed, "dp_sgd_noise", task.round_idx, task.client_id, device=device)
        private = dp_sgd(model, opt, task.dp, plan.batch_size, noise)
    with private as (model, opt):
        for rows, xb, yb in batches(shard.data, (idx[pos.to(idx.device)] for pos in positions), device):
            steps += 1
            if xb is None:  # an empty Poisson batch: nothing to learn from, nothing released
                continue
            if aug is not None:
                xb = augment(xb, aug, g_aug)
            loss = objective_loss(model(xb), yb, task.objective)
            if task.dp is None:  # cheaper than opt.zero_grad(), which enters a dynamo-disabled frame each call
                for p in params:
                    p.grad = None
            else:
                opt.zero_grad(set_to_none=True)  # Opacus also clears its per-example gradients
            (loss if extra_loss is None else loss + extra_loss()).backward()
            opt.step()
            loss_sum += loss.detach() * rows.numel()  # stays on device: no sync per batch
            seen += rows.numel()
    return ClientUpdate(task.client_id, fm.flat - global_flat, shard.num_train, loss_sum, seen, steps)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: TensorData | StreamData, idx: torch.Tensor | None, batch_size: int,
             task: str = CLASSIFICATION) -> torch.Tensor:
    """``[loss_sum, num_correct, count]`` (float64, on the data's device) over ``data[idx]``; for a
    regression ``task``, ``[squared_error_sum, absolute_error_sum, count]`` (:mod:`fl.training.objective`)."""
    model.eval()
    out = torch.zeros(3, dtype=torch.float64, device=data.y.device)
    device = next(model.parameters()).device
    for _, xb, yb in batches(data, chunks(len(data), idx, batch_size), device):
        loss_sum, second = eval_sums(model(xb), yb, task)
        out[0] += loss_sum.to(out.device)
        out[1] += second.to(out.device)
        out[2] += yb.numel()
    return out
