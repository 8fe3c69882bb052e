"""FedProx: FedAvg with a proximal term in local training.

Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith. "Federated Optimization in Heterogeneous
Networks." MLSys 2020. https://arxiv.org/abs/1812.06127

Each client minimises ``loss(w) + mu/2 * ||w - w_global||^2``; the server averages as
FedAvg. ``mu = 0`` adds no term at all, so it is exactly FedAvg.
"""

from __future__ import annotations

import torch

from fl.data.federation import ClientShard
from fl.errors import ConfigError
from fl.training.flat import FlatModel
from fl.training.job import LocalJob, LocalTerm, proximal_term
from fl.strategies.fedavg import FedAvg
from fl.types import ClientTask

__all__ = ["FedProx", "proximal_term"]


class FedProx(FedAvg):
    changes_local_training = True
    def __init__(self, mu: float = 0.01, server_lr: float = 1.0) -> None:
        super().__init__(server_lr)
        if not mu >= 0:
            raise ConfigError("strategy.mu", mu, "must be >= 0 (0 is FedAvg)")
        self.mu = float(mu)

    def local_job(self, fm: FlatModel, global_flat: torch.Tensor, shard: ClientShard, task: ClientTask) -> LocalJob:
        if self.mu == 0:
            return super().local_job(fm, global_flat, shard, task)
        return LocalJob(global_flat, task, LocalTerm(self.mu, global_flat[:fm.num_params]))
