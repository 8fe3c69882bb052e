"""FedAvg: Federated Averaging.

McMahan, Moore, Ramage, Hampson, Agüera y Arcas. "Communication-Efficient Learning of
Deep Networks from Decentralized Data." AISTATS 2017. https://arxiv.org/abs/1602.05629

Clients train locally from the global weights; the server averages their deltas weighted
by sample count and takes a step of size ``server_lr`` along the average (``server_lr=1``
is the paper's algorithm: the new global model is the weighted average of client models).
"""

from __future__ import annotations

import torch

from fl.errors import ConfigError
from fl.strategies.base import Strategy


class FedAvg(Strategy):
    is_weighted_mean = True

    def __init__(self, server_lr: float = 1.0) -> None:
        if not server_lr > 0:
            raise ConfigError("strategy.server_lr", server_lr, "must be > 0 (1.0 is plain FedAvg)")
        self.server_lr = float(server_lr)

    def server_update(self, global_flat: torch.Tensor, aggregate: torch.Tensor) -> torch.Tensor:
        if self.server_lr == 1.0:
            return global_flat + aggregate
        return global_flat + self.server_lr * aggregate
