"""FedAvgM: FedAvg with server momentum.

Hsu, Qi, Brown. "Measuring the Effects of Non-Identical Data Distribution for Federated
Visual Classification." 2019. https://arxiv.org/abs/1909.06335

With the averaged client delta ``d`` (the negative pseudo-gradient):
``v <- momentum * v + d``; ``w <- w + server_lr * v``. ``momentum = 0`` is FedAvg.
"""

from __future__ import annotations

import torch

from fl.errors import ConfigError
from fl.strategies.fedavg import FedAvg


class FedAvgM(FedAvg):
    def __init__(self, server_lr: float = 1.0, momentum: float = 0.9) -> None:
        super().__init__(server_lr)
        if not 0 <= momentum < 1:
            raise ConfigError("strategy.momentum", momentum, "must be in [0, 1)")
        self.momentum = float(momentum)
        self.velocity: torch.Tensor | None = None

    def server_update(self, global_flat: torch.Tensor, aggregate: torch.Tensor) -> torch.Tensor:
        if self.velocity is None:
            self.velocity = aggregate.clone()
        else:
            self.velocity = self.momentum * self.velocity.to(aggregate.device) + aggregate
        return global_flat + self.server_lr * self.velocity

    def state_dict(self) -> dict:
        return {} if self.velocity is None else {"velocity": self.velocity.detach().cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.velocity = state.get("velocity")
