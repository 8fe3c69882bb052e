"""SCAFFOLD: stochastic controlled averaging with client and server control variates.

Karimireddy, Kale, Mohri, Reddi, Stich, Suresh. "SCAFFOLD: Stochastic Controlled Averaging
for Federated Learning." ICML 2020. https://arxiv.org/abs/1910.06378 (Algorithm 1, option II).

Local steps use the corrected gradient ``g - c_i + c``; here the correction enters as the
linear loss term ``<c - c_i, w>``, whose gradient is exactly ``c - c_i``. After ``K`` steps of
size ``lr``: ``c_i+ = c_i - c + (x - y_i) / (K lr)``. The server averages ``(y_i - x, c_i+ - c_i)``
over the sampled clients (unweighted, as in the paper), steps ``x <- x + server_lr * mean dy``
and ``c <- c + |S| / N * mean dc``.

State: ``c`` on every rank (identical; in checkpoints) and each client's ``c_i`` in the client
store (one model-sized vector per client, on disk).
"""

from __future__ import annotations

import dataclasses

import torch

from fl.data.federation import ClientShard
from fl.errors import ConfigError
from fl.training.flat import FlatModel
from fl.training.job import LocalJob, LocalTerm
from fl.strategies.fedavg import FedAvg
from fl.types import ClientTask, ClientUpdate, StrategyContext


class Scaffold(FedAvg):
    changes_local_training = True
    is_weighted_mean = True  # the unweighted mean: every client weighs 1

    def __init__(self, server_lr: float = 1.0) -> None:
        super().__init__(server_lr)
        self.c: torch.Tensor | None = None
        self.participation = 1.0
        self.lr = 0.0

    def check(self, ctx: StrategyContext) -> None:
        opt = ctx.make_optimizer
        if getattr(opt, "func", None) is not torch.optim.SGD or opt.keywords.get("momentum", 0) != 0:  # type: ignore[attr-defined]
            raise ConfigError("optim", getattr(opt, "keywords", opt),
                              "SCAFFOLD's control-variate update assumes plain local SGD: optim=sgd, momentum 0")
        self.lr = float(opt.keywords["lr"])  # type: ignore[attr-defined]
        self.participation = ctx.clients_per_round / ctx.num_clients

    def vector_dim(self, model_dim: int) -> int:
        return 2 * model_dim

    def compressible_dim(self, model_dim: int) -> int:
        return 2 * model_dim  # the model delta and the control-variate delta

    def client_weight(self, update: ClientUpdate) -> float:
        return 1.0

    def local_job(self, fm: FlatModel, global_flat: torch.Tensor, shard: ClientShard, task: ClientTask) -> LocalJob:
        c = self._server_c(global_flat)
        saved = task.store.load(task.client_id, task.round_idx, global_flat.device)
        c_i = torch.zeros_like(global_flat) if saved is None else saved["c"]
        return LocalJob(global_flat, task, LocalTerm(linear=(c - c_i)[:fm.num_params]), state=(c, c_i))

    def finish_update(self, job: LocalJob, update: ClientUpdate) -> ClientUpdate:
        c, c_i = job.state
        c_i_new = c_i - c - update.delta / (max(update.num_steps, 1) * self.lr)
        job.task.store.save(job.task.client_id, job.task.round_idx, {"c": c_i_new})
        return dataclasses.replace(update, extra=c_i_new - c_i)

    def client_vector(self, update: ClientUpdate) -> torch.Tensor:
        assert update.extra is not None, "SCAFFOLD updates carry their control delta"
        return torch.cat([update.delta, update.extra])

    def server_update(self, global_flat: torch.Tensor, aggregate: torch.Tensor) -> torch.Tensor:
        dim = global_flat.numel()
        self.c = self._server_c(global_flat) + self.participation * aggregate[dim:]
        return global_flat + self.server_lr * aggregate[:dim]

    def _server_c(self, like: torch.Tensor) -> torch.Tensor:
        if self.c is None:
            self.c = torch.zeros_like(like)
        return self.c.to(like.device)

    def state_dict(self) -> dict:
        return {} if self.c is None else {"c": self.c.detach().cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.c = state.get("c")
