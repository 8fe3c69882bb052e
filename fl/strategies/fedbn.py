"""FedBN: BatchNorm parameters and statistics stay local to each client.

Li, Jiang, Zhang, Kamp, Dou. "FedBN: Federated Learning on Non-IID Features via Local Batch
Normalization." ICLR 2021. https://arxiv.org/abs/2102.07623

Every BatchNorm entry of the flat model (weight, bias, running mean and variance) is
excluded from averaging: clients send zeros there, so the global copy never moves, and each
client keeps its own BN entries in the client store and trains and evaluates with them.
Needs a model with BatchNorm (e.g. ``model=cnn_bn``).
"""

from __future__ import annotations

import torch
from torch import nn

from fl.training.local import local_train
from fl.data.federation import ClientShard
from fl.errors import ConfigError
from fl.training.flat import FlatModel
from fl.strategies.fedavg import FedAvg
from fl.types import ClientTask, ClientUpdate


class FedBN(FedAvg):
    personalizes = True
    changes_local_training = True

    def __init__(self, server_lr: float = 1.0) -> None:
        super().__init__(server_lr)
        self.local: torch.Tensor | None = None  # bool mask of the BN entries

    def on_model(self, fm: FlatModel) -> None:
        self.local = fm.mask(lambda m: isinstance(m, nn.modules.batchnorm._BatchNorm))
        if not self.local.any():
            raise ConfigError("model", type(fm.module).__name__, "FedBN needs a model with BatchNorm, e.g. model=cnn_bn")

    def _client_start(self, global_flat: torch.Tensor, client_id: int, before_round: int, store) -> torch.Tensor:
        start = global_flat.clone()
        saved = store.load(client_id, before_round, global_flat.device)
        if saved is not None:
            start[self.local] = saved["bn"]
        return start

    def client_update(self, fm: FlatModel, global_flat: torch.Tensor, shard: ClientShard,
                      task: ClientTask) -> ClientUpdate:
        start = self._client_start(global_flat, task.client_id, task.round_idx, task.store)
        update = local_train(fm, start, shard, task)
        task.store.save(task.client_id, task.round_idx, {"bn": fm.flat[self.local]})
        return update

    def batch_support(self) -> str | None:
        return "strategy=fedbn keeps each client's BatchNorm statistics; its clients train one at a time"

    def client_vector(self, update: ClientUpdate) -> torch.Tensor:
        return update.delta.masked_fill(self.local, 0.0)

    def personal_model(self, fm: FlatModel, global_flat: torch.Tensor, client_id: int, round_idx: int,
                       store: object, shard: ClientShard) -> None:
        fm.load_(self._client_start(global_flat, client_id, round_idx + 1, store))
