"""Coordinate-wise median and trimmed mean: Byzantine-robust aggregation.

Yin, Chen, Ramchandran, Bartlett. "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates." ICML 2018. https://arxiv.org/abs/1803.01498

Both need every client's update (the gather path) and ignore sample weights, as in the paper.
"""

from __future__ import annotations

import logging

import torch

from fl.errors import ConfigError
from fl.strategies.fedavg import FedAvg
from fl.types import StrategyContext

log = logging.getLogger(__name__)


def coordinate_median(vectors: torch.Tensor) -> torch.Tensor:
    """Per-coordinate median of ``[K, D]`` (the mean of the two middle values when K is even)."""
    return vectors.quantile(0.5, dim=0) if vectors.shape[0] % 2 == 0 else vectors.median(dim=0).values


def trimmed_mean(vectors: torch.Tensor, beta: float) -> torch.Tensor:
    """Per coordinate: drop the ``floor(beta K)`` largest and smallest values, average the rest."""
    k = int(beta * vectors.shape[0])
    ordered = vectors.sort(dim=0).values
    return ordered[k:vectors.shape[0] - k].mean(dim=0)


class Median(FedAvg):
    is_weighted_mean = False

    def aggregate(self, vectors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return coordinate_median(vectors)


class TrimmedMean(FedAvg):
    is_weighted_mean = False

    def __init__(self, beta: float = 0.1, server_lr: float = 1.0) -> None:
        super().__init__(server_lr)
        if not 0 <= beta < 0.5:
            raise ConfigError("strategy.beta", beta, "must be in [0, 0.5): the fraction trimmed from each end")
        self.beta = float(beta)

    def check(self, ctx: StrategyContext) -> None:
        clients_per_round = ctx.clients_per_round
        if self.beta > 0 and int(self.beta * clients_per_round) == 0:
            log.warning("strategy.beta=%g trims no client of %d per round: this is the plain mean",
                        self.beta, clients_per_round)

    def aggregate(self, vectors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return trimmed_mean(vectors, self.beta)
