"""What a run learns: class labels (cross-entropy, accuracy) or a real-valued target (MSE, MAE).

Pure: model outputs and targets in, numbers out. The task comes from the data
(``data.task``, or the spec a data component returns); ``train.loss`` may name the loss, and
must then suit the task (``auto`` picks it).

For classification the model maps a batch to logits ``[B, C]`` and targets are class indices;
for regression it maps a batch to ``[B, 1]`` (or ``[B]``) and targets are floats.
Evaluation sums are ``[loss_sum, second, count]`` either way: ``second`` is the number of
correct predictions for classification and the sum of absolute errors for regression.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fl.errors import ConfigError

CLASSIFICATION, REGRESSION = "classification", "regression"
TASKS = (CLASSIFICATION, REGRESSION)
LOSSES = {CLASSIFICATION: "cross_entropy", REGRESSION: "mse"}


def check_loss(loss: str, task: str) -> str:
    """The loss of ``task`` (``loss`` may be ``auto``); ConfigError naming ``train.loss`` when they disagree."""
    if task not in TASKS:
        raise ConfigError("data.task", task, f"must be one of: {', '.join(TASKS)}")
    allowed = ("auto", *LOSSES.values())
    if loss not in allowed:
        raise ConfigError("train.loss", loss, f"must be one of: {', '.join(allowed)}")
    if loss != "auto" and loss != LOSSES[task]:
        raise ConfigError("train.loss", loss, f"is a {'regression' if task == CLASSIFICATION else 'classification'} "
                          f"loss but the data's target is a {task} target (data.task={task}); use "
                          f"train.loss={LOSSES[task]} or auto")
    return LOSSES[task]


def _prediction(out: torch.Tensor) -> torch.Tensor:
    return out.squeeze(-1) if out.dim() == 2 and out.shape[1] == 1 else out


def loss(out: torch.Tensor, y: torch.Tensor, task: str = CLASSIFICATION) -> torch.Tensor:
    """The mean training loss of a batch."""
    if task == REGRESSION:
        return F.mse_loss(_prediction(out), y)
    return F.cross_entropy(out, y)


def per_sample_loss(out: torch.Tensor, y: torch.Tensor, task: str = CLASSIFICATION) -> torch.Tensor:
    """The loss of each sample ``[B]``; their mean is :func:`loss` (regression: over the target's entries)."""
    if task == REGRESSION:
        err = (_prediction(out) - y) ** 2
        return err.reshape(err.shape[0], -1).mean(1)
    return F.cross_entropy(out, y, reduction="none")


def eval_sums(out: torch.Tensor, y: torch.Tensor, task: str = CLASSIFICATION) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss_sum, correct)`` for classification, ``(squared_error_sum, absolute_error_sum)`` for regression."""
    if task == REGRESSION:
        err = _prediction(out).double() - y.double()
        return (err ** 2).sum(), err.abs().sum()
    return F.cross_entropy(out, y, reduction="sum").double(), (out.argmax(1) == y).sum().double()


def centralized_metrics(loss_sum: float, second: float, count: float, task: str = CLASSIFICATION) -> dict[str, float]:
    """Test-set metrics from the summed ``[loss_sum, second, count]``."""
    if task == REGRESSION:
        return {"test_loss": loss_sum / count, "test_mse": loss_sum / count, "test_mae": second / count}
    return {"test_loss": loss_sum / count, "test_accuracy": second / count}


def client_metrics(rows: torch.Tensor, task: str = CLASSIFICATION) -> dict[str, float]:
    """From per-client ``[loss_sum, second, count]`` rows: the weighted and plain mean of the clients'
    accuracy (regression: MAE), its 10th percentile of accuracy (regression: 90th of MAE, the worst
    clients either way) and the mean loss."""
    if len(rows) == 0:
        return {}
    per_client = rows[:, 1] / rows[:, 2]
    mean_loss = float((rows[:, 0] / rows[:, 2]).mean())
    if task == REGRESSION:
        return {"client_mae_weighted": float(rows[:, 1].sum() / rows[:, 2].sum()),
                "client_mae_mean": float(per_client.mean()), "client_mae_p90": float(torch.quantile(per_client, 0.9)),
                "client_mse_mean": mean_loss, "client_loss_mean": mean_loss}
    return {"client_accuracy_weighted": float(rows[:, 1].sum() / rows[:, 2].sum()),
            "client_accuracy_mean": float(per_client.mean()),
            "client_accuracy_p10": float(torch.quantile(per_client, 0.1)), "client_loss_mean": mean_loss}
