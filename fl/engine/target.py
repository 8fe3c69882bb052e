"""Stop a run at the first evaluation that reaches a target (``fl.target``, ``fl.target_metric``).

Rounds-to-accuracy is how papers compare methods (McMahan et al. 2017, Table 2), and a run that
has reached its target need not train on to ``fl.rounds``. Such a run is *complete*: ``run.json``
records where it stopped (``reached_target``), so running it again with a target it still meets
does nothing, while a stricter target, or ``fl.target=null``, continues it from the checkpoint of
that round. Accuracy, ROC-AUC and F1 must reach at least the target; losses, MSE and MAE at most.

Pure: no collectives, no files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from omegaconf import DictConfig

from fl.errors import ConfigError
from fl.training.objective import CLASSIFICATION

# What an evaluation reports, by where it comes from: the test set, or the clients' held-out splits.
_TEST = {"classification": ("test_accuracy", "test_loss"), "regression": ("test_loss", "test_mse", "test_mae")}
_CLIENTS = {"classification": ("client_accuracy_weighted", "client_accuracy_mean", "client_accuracy_p10",
                               "client_loss_mean"),
            "regression": ("client_mae_weighted", "client_mae_mean", "client_mae_p90", "client_mse_mean",
                           "client_loss_mean")}
_BINARY_TEST = ("test_roc_auc", "test_f1")
_BINARY_CLIENTS = ("client_roc_auc_mean", "client_roc_auc_p10", "client_f1_mean")
METRICS = tuple(dict.fromkeys(m for group in (*_TEST.values(), *_CLIENTS.values(), _BINARY_TEST, _BINARY_CLIENTS)
                              for m in group))
_LOWER_IS_BETTER = ("loss", "mse", "mae")


@dataclass(frozen=True)
class Target:
    metric: str
    value: float

    @property
    def higher_is_better(self) -> bool:
        return not any(word in self.metric for word in _LOWER_IS_BETTER)

    def met(self, metrics: dict[str, float]) -> bool:
        """Whether an evaluation's ``metrics`` reach the target (a missing or NaN value does not)."""
        v = metrics.get(self.metric)
        if v is None or not math.isfinite(v):
            return False
        return v >= self.value if self.higher_is_better else v <= self.value

    def describe(self) -> str:
        return f"{self.metric} {'>=' if self.higher_is_better else '<='} {self.value:g}"

    def record(self, round_num: int, metrics: dict[str, float]) -> dict:
        """What ``run.json`` keeps as ``reached_target``."""
        return {"round": round_num, "metric": self.metric, "value": float(metrics[self.metric]), "target": self.value}


def of(cfg: DictConfig) -> Target | None:
    """The run's target, or ``None`` (``fl.target=null``); raises :class:`ConfigError` naming the key."""
    value, metric = cfg.fl.target, cfg.fl.target_metric
    if metric not in METRICS:
        raise ConfigError("fl.target_metric", metric, f"must be one of {', '.join(METRICS)}")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError("fl.target", value, f"must be null (train all fl.rounds) or a number that "
                          f"fl.target_metric={metric} must reach")
    return Target(str(metric), float(value))


def check(target: Target | None, task: str, binary: bool, has_test: bool, client_eval: bool) -> None:
    """Refuse a target metric that this run never evaluates (once the data is known, before any work)."""
    if target is None:
        return
    reported = [*(_TEST[task] if has_test else ()), *(_CLIENTS[task] if client_eval else ())]
    if binary and task == CLASSIFICATION:
        reported += [*(_BINARY_TEST if has_test else ()), *(_BINARY_CLIENTS if client_eval else ())]
    if target.metric not in reported:
        why = ("" if has_test else "; the data has no test set") + (
            "" if client_eval else "; fl.holdout_fraction=0 leaves no client evaluation")
        raise ConfigError("fl.target_metric", target.metric,
                          f"is not evaluated by this {task} run, which reports {', '.join(reported) or 'nothing'}{why}")


def still_met(target: Target | None, reached: dict | None) -> bool:
    """Whether a run that stopped at ``reached`` (its ``run.json`` record) is complete for ``target``."""
    if target is None or not reached or reached.get("metric") != target.metric:
        return False
    return target.met({target.metric: float(reached["value"])})
