"""Krum and Multi-Krum: pick the updates closest to their neighbours.

Blanchard, El Mhamdi, Guerraoui, Stainer. "Machine Learning with Adversaries: Byzantine
Tolerant Gradient Descent." NeurIPS 2017.

With ``n`` updates of which at most ``f`` are Byzantine (``n > 2f + 2``), each update's score is
the sum of squared distances to its ``n - f - 2`` nearest others; Krum returns the update with
the lowest score, Multi-Krum the mean of the ``m`` lowest-scoring ones.
"""

from __future__ import annotations

import torch

from fl.errors import ConfigError
from fl.strategies.fedavg import FedAvg
from fl.types import StrategyContext


def krum_scores(vectors: torch.Tensor, num_byzantine: int) -> torch.Tensor:
    """``[K]`` Krum scores of ``[K, D]`` updates (pure; float64 distances)."""
    v = vectors.double()
    dist = torch.cdist(v, v).pow(2)
    dist.fill_diagonal_(float("inf"))
    nearest = vectors.shape[0] - num_byzantine - 2
    return dist.topk(nearest, dim=1, largest=False).values.sum(dim=1)


def multi_krum(vectors: torch.Tensor, num_byzantine: int, m: int) -> torch.Tensor:
    """Mean of the ``m`` updates with the lowest Krum scores (``m = 1``: Krum)."""
    chosen = krum_scores(vectors, num_byzantine).argsort()[:m]
    return vectors[chosen].mean(dim=0)


class Krum(FedAvg):
    is_weighted_mean = False

    def __init__(self, num_byzantine: int = 1, m: int = 1, server_lr: float = 1.0) -> None:
        super().__init__(server_lr)
        if num_byzantine < 0:
            raise ConfigError("strategy.num_byzantine", num_byzantine, "must be >= 0")
        if m < 1:
            raise ConfigError("strategy.m", m, "must be >= 1 (1 is Krum, more is Multi-Krum)")
        self.num_byzantine, self.m = int(num_byzantine), int(m)

    def check(self, ctx: StrategyContext) -> None:
        clients_per_round = ctx.clients_per_round
        if clients_per_round <= 2 * self.num_byzantine + 2:
            raise ConfigError("strategy.num_byzantine", self.num_byzantine,
                              f"Krum needs fl.clients_per_round > 2 * num_byzantine + 2, got {clients_per_round}")
        if self.m > clients_per_round:
            raise ConfigError("strategy.m", self.m, f"must be <= fl.clients_per_round={clients_per_round}")

    def aggregate(self, vectors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return multi_krum(vectors, self.num_byzantine, self.m)
