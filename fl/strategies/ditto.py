"""Ditto: a personal model per client, regularized toward the global model.

Li, Hu, Beirami, Smith. "Ditto: Fair and Robust Federated Learning Through
Personalization." ICML 2021. https://arxiv.org/abs/2012.04221

Each sampled client (1) trains the global model locally exactly as FedAvg does, which is
what it sends, and (2) trains its personal model ``v`` on ``loss(v) + lambda/2 ||v - w||^2``
with ``w`` the global model of the round start, for the same local work. ``v`` starts as the
global model at a client's first participation and lives in the client store (one
model-sized file per client); federated evaluation uses it (``personal_`` metrics). The
global model is exactly FedAvg's.
"""

from __future__ import annotations

import torch

from fl.training.local import local_train
from fl.data.federation import ClientShard
from fl.errors import ConfigError
from fl.training.flat import FlatModel
from fl.strategies.fedavg import FedAvg
from fl.training.job import LocalTerm
from fl.types import ClientTask, ClientUpdate


class Ditto(FedAvg):
    changes_local_training = True
    personalizes = True

    def __init__(self, lam: float = 0.1, server_lr: float = 1.0) -> None:
        super().__init__(server_lr)
        if not lam >= 0:
            raise ConfigError("strategy.lam", lam, "must be >= 0 (the pull of personal models toward the global one)")
        self.lam = float(lam)

    def client_update(self, fm: FlatModel, global_flat: torch.Tensor, shard: ClientShard,
                      task: ClientTask) -> ClientUpdate:
        update = super().client_update(fm, global_flat, shard, task)
        saved = task.store.load(task.client_id, task.round_idx, global_flat.device)
        personal = global_flat if saved is None else saved["v"]
        local_train(fm, personal, shard, task, LocalTerm(self.lam, global_flat[:fm.num_params]))
        task.store.save(task.client_id, task.round_idx, {"v": fm.flat})
        return update

    def batch_support(self) -> str | None:
        return "strategy=ditto trains a personal model after the global one; its clients train one at a time"

    def personal_model(self, fm: FlatModel, global_flat: torch.Tensor, client_id: int, round_idx: int,
                       store: object, shard: ClientShard) -> None:
        saved = store.load(client_id, round_idx + 1, global_flat.device)  # type: ignore[attr-defined]
        fm.load_(global_flat if saved is None else saved["v"])
