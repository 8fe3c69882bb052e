"""FedProx: FedAvg with a proximal term in local training.

Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith. "Federated Optimization in Heterogeneous
Networks." MLSys 2020. https://arxiv.org/abs/1812.06127

Each client minimises ``loss(w) + mu/2 * ||w - w_global||^2``; the server averages as
FedAvg. ``mu = 0`` adds no term at all, so it is exactly FedAvg.
"""

from __future__ import annotations

import torch

from fl.training.local import local_train
from fl.data.federation import ClientShard
from fl.errors import ConfigError
from fl.training.flat import FlatModel
from fl.strategies.fedavg import FedAvg
from fl.types import ClientTask, ClientUpdate


def proximal_term(params: list[torch.Tensor], anchors: list[torch.Tensor], mu: float) -> torch.Tensor:
    """``mu/2 * sum ||p - a||^2`` over parameter tensors (differentiable in ``params``)."""
    return 0.5 * mu * sum(((p - a) ** 2).sum() for p, a in zip(params, anchors, strict=True))


class FedProx(FedAvg):
    def __init__(self, mu: float = 0.01, server_lr: float = 1.0) -> None:
        super().__init__(server_lr)
        if not mu >= 0:
            raise ConfigError("strategy.mu", mu, "must be >= 0 (0 is FedAvg)")
        self.mu = float(mu)

    def client_update(self, fm: FlatModel, global_flat: torch.Tensor, shard: ClientShard,
                      task: ClientTask) -> ClientUpdate:
        if self.mu == 0:
            return super().client_update(fm, global_flat, shard, task)
        params, anchors = list(fm.module.parameters()), fm.param_views(global_flat)
        return local_train(fm, global_flat, shard, task, lambda: proximal_term(params, anchors, self.mu))
