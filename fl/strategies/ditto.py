"""Ditto: a personal model per client, regularized toward the global model.

Li, Hu, Beirami, Smith. "Ditto: Fair and Robust Federated Learning Through
Personalization." ICML 2021. https://arxiv.org/abs/2012.04221

Each sampled client (1) trains the global model locally exactly as FedAvg does, which is
what it sends, and (2) trains its personal model ``v`` on ``loss(v) + lambda/2 ||v - w||^2``
with ``w`` the global model of the round start, for the same local work. ``v`` starts as the
global model at a client's first participation and lives in the client store (one
model-sized file per client); federated evaluation uses it (``personal_`` metrics). The
global model is exactly FedAvg's. Batched client training (:mod:`fl.training.batched`) trains a
chunk's personal models together too, after their global ones.
"""

from __future__ import annotations

import torch

from fl.data.federation import ClientShard
from fl.errors import ConfigError
from fl.training.flat import FlatModel
from fl.strategies.fedavg import FedAvg
from fl.training.job import LocalJob, LocalTerm
from fl.types import ClientTask


class Ditto(FedAvg):
    changes_local_training = True
    personalizes = True

    def __init__(self, lam: float = 0.1, server_lr: float = 1.0) -> None:
        super().__init__(server_lr)
        if not lam >= 0:
            raise ConfigError("strategy.lam", lam, "must be >= 0 (the pull of personal models toward the global one)")
        self.lam = float(lam)

    def personal_job(self, fm: FlatModel, global_flat: torch.Tensor, shard: ClientShard,
                     task: ClientTask) -> LocalJob:
        saved = task.store.load(task.client_id, task.round_idx, global_flat.device)
        personal = global_flat if saved is None else saved["v"]
        return LocalJob(personal, task, LocalTerm(self.lam, global_flat[:fm.num_params]))

    def keep_personal(self, job: LocalJob, weights: torch.Tensor) -> None:
        job.task.store.save(job.task.client_id, job.task.round_idx, {"v": weights})

    def personal_model(self, fm: FlatModel, global_flat: torch.Tensor, client_id: int, round_idx: int,
                       store: object, shard: ClientShard) -> None:
        saved = store.load(client_id, round_idx + 1, global_flat.device)  # type: ignore[attr-defined]
        fm.load_(global_flat if saved is None else saved["v"])
