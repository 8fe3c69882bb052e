"""Metrics of binary classifiers beyond accuracy: ROC-AUC and F1, computed by scikit-learn.

Scores from a model, then pure: scores and labels in, numbers out. ROC-AUC is undefined for a set with one class only
(a small client's held-out split often is): it is then NaN, and summaries skip it.
"""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def positive_scores(model: torch.nn.Module, data, idx: torch.Tensor | None, batch_size: int) -> torch.Tensor:
    """P(class 1) for the rows ``idx`` of ``data`` (all rows when ``None``), float64 on the CPU."""
    from fl.data.stream import batches, chunks

    model.eval()
    device = next(model.parameters()).device
    out = [torch.softmax(model(xb).double(), dim=1)[:, 1].cpu()
           for _, xb, _ in batches(data, chunks(len(data), idx, batch_size), device)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def roc_auc_f1(scores: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(ROC-AUC, F1 at threshold 0.5); ROC-AUC is NaN when ``labels`` hold one class only."""
    from sklearn.metrics import f1_score, roc_auc_score

    y, s = labels.cpu().numpy().astype(int), scores.cpu().numpy()
    if len(y) == 0:
        return math.nan, math.nan
    auc = float(roc_auc_score(y, s)) if len(set(y.tolist())) == 2 else math.nan
    return auc, float(f1_score(y, (s >= 0.5).astype(int), zero_division=0))
