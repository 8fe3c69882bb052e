"""Centralized and federated evaluation of the global model.

Centralized: the test set is split into contiguous shards, one per rank; the
``[loss_sum, correct, count]`` sums are all-reduced. Federated: sampled clients evaluate
on their held-out split; the per-client rows are gathered on rank 0, which reports the
sample-weighted mean, the plain mean and the 10th percentile of client accuracies. For binary
tasks both also report ROC-AUC and F1 (:mod:`fl.engine.binary_metrics`); for regression, MSE and MAE
(:mod:`fl.training.objective`).
"""

from __future__ import annotations

from typing import Callable

import torch

from fl.engine.binary_metrics import positive_scores, roc_auc_f1
from fl.training.local import evaluate
from fl.runtime.comm import Comm
from fl.data.datasets import TensorData
from fl.data.federation import ClientShard
from fl.training.objective import CLASSIFICATION, centralized_metrics, client_metrics


def centralized(model: torch.nn.Module, test: TensorData, comm: Comm, batch_size: int,
                binary: bool = False, task: str = CLASSIFICATION) -> dict[str, float]:
    """Collective. Test loss and accuracy (regression: MSE and MAE) over the whole test set, on every
    rank; with ``binary`` also ROC-AUC and F1 (rank 0: the shards' scores are gathered there)."""
    shard = torch.tensor_split(torch.arange(len(test), device=test.y.device), comm.world_size)[comm.rank]
    sums = comm.all_reduce_sum(evaluate(model, test, shard, batch_size, task))
    out = centralized_metrics(*sums.tolist(), task)
    if binary:
        width = -(-len(test) // comm.world_size)  # the largest shard; shorter ones padded with label -1
        rows = torch.full((width, 2), -1.0, dtype=torch.float64, device=test.y.device)
        rows[:len(shard), 0] = positive_scores(model, test, shard, batch_size).to(rows.device)
        rows[:len(shard), 1] = test.y[shard].double()
        gathered = comm.gather_rows(rows)
        if gathered is not None:
            valid = gathered[gathered[:, 1] >= 0].cpu()
            out["test_roc_auc"], out["test_f1"] = roc_auc_f1(valid[:, 0], valid[:, 1])
    return out


def federated(
    model: torch.nn.Module, shards: dict[int, ClientShard], mine: list[int], rows_per_rank: int, comm: Comm,
    batch_size: int, device: torch.device, personalize: Callable[[int], None] | None = None,
    binary: bool = False, task: str = CLASSIFICATION,
) -> dict[str, float]:
    """Collective. Client metrics on rank 0 (``{}`` on other ranks).

    ``model`` holds the global weights on entry. With ``personalize``, each client is then
    evaluated again after ``personalize(client_id)`` has loaded (and possibly fine-tuned) its
    own model into ``model``; those metrics are reported with the ``personal_`` prefix.
    """
    rows = torch.zeros(rows_per_rank, 6 if personalize else 3, dtype=torch.float64, device=device)
    extra = torch.full((rows_per_rank, 2), float("nan"), dtype=torch.float64, device=device)  # ROC-AUC, F1
    for i, cid in enumerate(mine):  # every client on the global model first: no reload needed
        s = shards[cid]
        rows[i, :3] = evaluate(model, s.data, s.holdout_idx, batch_size, task)
        if binary and s.num_holdout:
            scores = positive_scores(model, s.data, s.holdout_idx, batch_size)
            extra[i] = torch.tensor(roc_auc_f1(scores, s.data.y[s.holdout_idx]), dtype=torch.float64)
    if personalize is not None:
        for i, cid in enumerate(mine):
            personalize(cid)
            rows[i, 3:] = evaluate(model, shards[cid].data, shards[cid].holdout_idx, batch_size, task)
    gathered = comm.gather_rows(torch.cat([rows, extra], 1) if binary else rows)
    if gathered is None:
        return {}
    valid = gathered[gathered[:, 2] > 0].cpu()
    out = client_metrics(valid[:, :3], task)
    if binary:
        out.update(binary_summary(valid[:, -2:]))
    if personalize is not None:
        out.update({k.replace("client_", "personal_"): v for k, v in client_metrics(valid[:, 3:], task).items()})
    return out


def binary_summary(rows: torch.Tensor) -> dict[str, float]:
    """From per-client ``[roc_auc, f1]`` rows (NaN where undefined): mean and 10th percentile of the
    clients' ROC-AUC, mean F1 (pure)."""
    auc, f1 = rows[:, 0], rows[:, 1]
    out = {}
    if (~auc.isnan()).any():
        out["client_roc_auc_mean"] = float(auc.nanmean())
        out["client_roc_auc_p10"] = float(torch.nanquantile(auc, 0.1))
    if (~f1.isnan()).any():
        out["client_f1_mean"] = float(f1.nanmean())
    return out
