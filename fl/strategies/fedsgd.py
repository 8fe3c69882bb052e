"""FedSGD: one gradient step per client per round, gradients averaged by sample count.

McMahan, Moore, Ramage, Hampson, Agüera y Arcas. "Communication-Efficient Learning of
Deep Networks from Decentralized Data." AISTATS 2017 (the FedSGD baseline).

Each client takes exactly one SGD step of size ``optim.lr`` on its full local data
(``batch_size: null``, the paper's B = infinity) or on one random mini-batch, so its delta is
``-lr * gradient`` and the weighted mean of deltas is ``-lr`` times the weighted mean gradient.
Use ``optim=sgd`` (the first step of SGD with momentum is the same plain step).
"""

from __future__ import annotations

import dataclasses

import torch

from fl.data.federation import ClientShard
from fl.errors import ConfigError
from fl.training.flat import FlatModel
from fl.training.job import LocalJob
from fl.strategies.fedavg import FedAvg
from fl.types import ClientTask, LocalTraining


class FedSGD(FedAvg):
    def __init__(self, batch_size: int | None = None, server_lr: float = 1.0) -> None:
        super().__init__(server_lr)
        if batch_size is not None and batch_size < 1:
            raise ConfigError("strategy.batch_size", batch_size, "must be >= 1, or null for the full local data")
        self.batch_size = batch_size

    def local_job(self, fm: FlatModel, global_flat: torch.Tensor, shard: ClientShard, task: ClientTask) -> LocalJob:
        plan = LocalTraining(1, 1, self.batch_size or shard.num_train)
        return super().local_job(fm, global_flat, shard, dataclasses.replace(task, plan=plan))
