"""Norm bounding: clip each client update to an L2 norm before the weighted mean.

Sun, Kairouz, Suresh, McMahan. "Can You Really Backdoor Federated Learning?" 2019.
https://arxiv.org/abs/1911.07963

Clipping happens per client, as a stage of the update pipeline (after an attack, before DP and
compression), so the aggregate is still a weighted mean of (clipped) vectors and runs on the
all-reduce path.
"""

from __future__ import annotations

import torch

from fl.errors import ConfigError
from fl.strategies.fedavg import FedAvg


def clip_to_norm(vector: torch.Tensor, max_norm: float) -> torch.Tensor:
    """``vector`` scaled down to L2 norm ``max_norm`` when it is longer (pure)."""
    norm = vector.norm()
    return vector * (max_norm / norm) if norm > max_norm else vector


class NormBound(FedAvg):
    is_weighted_mean = True

    def __init__(self, max_norm: float = 1.0, server_lr: float = 1.0) -> None:
        super().__init__(server_lr)
        if not max_norm > 0:
            raise ConfigError("strategy.max_norm", max_norm, "must be > 0")
        self.max_norm = float(max_norm)

    def transforms(self) -> list:
        from fl.transport.pipeline import NormBound as Clip  # the pipeline imports clip_to_norm from here

        return [Clip(self.max_norm)]
