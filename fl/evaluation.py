"""Centralized and federated evaluation of the global model.

Centralized: the test set is split into contiguous shards, one per rank; the
``[loss_sum, correct, count]`` sums are all-reduced. Federated: sampled clients evaluate
on their held-out split; the per-client rows are gathered on rank 0, which reports the
sample-weighted mean, the plain mean and the 10th percentile of client accuracies.
"""

from __future__ import annotations

from typing import Callable

import torch

from fl.client import evaluate
from fl.comm import Comm
from fl.data.datasets import TensorData
from fl.data.federation import ClientShard


def centralized(model: torch.nn.Module, test: TensorData, comm: Comm, batch_size: int) -> dict[str, float]:
    """Collective. Test loss and accuracy over the whole test set, on every rank."""
    shard = torch.tensor_split(torch.arange(len(test), device=test.y.device), comm.world_size)[comm.rank]
    sums = comm.all_reduce_sum(evaluate(model, test, shard, batch_size))
    loss, correct, count = sums.tolist()
    return {"test_loss": loss / count, "test_accuracy": correct / count}


def federated(
    model: torch.nn.Module, shards: dict[int, ClientShard], mine: list[int], rows_per_rank: int, comm: Comm,
    batch_size: int, device: torch.device, personalize: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Collective. Client metrics on rank 0 (``{}`` on other ranks).

    ``model`` holds the global weights on entry. With ``personalize``, each client is then
    evaluated again after ``personalize(client_id)`` has loaded (and possibly fine-tuned) its
    own model into ``model``; those metrics are reported with the ``personal_`` prefix.
    """
    rows = torch.zeros(rows_per_rank, 6 if personalize else 3, dtype=torch.float64, device=device)
    for i, cid in enumerate(mine):  # every client on the global model first: no reload needed
        rows[i, :3] = evaluate(model, shards[cid].data, shards[cid].holdout_idx, batch_size)
    if personalize is not None:
        for i, cid in enumerate(mine):
            personalize(cid)
            rows[i, 3:] = evaluate(model, shards[cid].data, shards[cid].holdout_idx, batch_size)
    gathered = comm.gather_rows(rows)
    if gathered is None:
        return {}
    valid = gathered[gathered[:, 2] > 0].cpu()
    out = client_summary(valid[:, :3])
    if personalize is not None:
        out.update({k.replace("client_", "personal_"): v for k, v in client_summary(valid[:, 3:]).items()})
    return out


def client_summary(rows: torch.Tensor) -> dict[str, float]:
    """From per-client ``[loss_sum, correct, count]`` rows: weighted/plain mean accuracy,
    10th-percentile accuracy (linear interpolation) and mean loss (pure)."""
    if len(rows) == 0:
        return {}
    acc = rows[:, 1] / rows[:, 2]
    return {
        "client_accuracy_weighted": float(rows[:, 1].sum() / rows[:, 2].sum()),
        "client_accuracy_mean": float(acc.mean()),
        "client_accuracy_p10": float(torch.quantile(acc, 0.1)),
        "client_loss_mean": float((rows[:, 0] / rows[:, 2]).mean()),
    }
