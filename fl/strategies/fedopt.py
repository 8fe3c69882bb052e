"""FedAdagrad, FedAdam, FedYogi: adaptive server optimizers on the averaged client delta.

Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar, McMahan. "Adaptive Federated
Optimization." ICLR 2021. https://arxiv.org/abs/2003.00295 (Algorithm 2).

With the averaged client delta ``d``:
``m <- beta1 m + (1 - beta1) d`` and
``v <- v + d^2`` (Adagrad), ``beta2 v + (1 - beta2) d^2`` (Adam),
``v - (1 - beta2) d^2 sign(v - d^2)`` (Yogi); then ``w <- w + server_lr * m / (sqrt(v) + tau)``.
As in the paper: ``m`` starts at 0, ``v`` at ``tau^2``, and there is no bias correction.
"""

from __future__ import annotations

import torch

from fl.errors import ConfigError
from fl.strategies.fedavg import FedAvg


def second_moment(kind: str, v: torch.Tensor, d: torch.Tensor, beta2: float) -> torch.Tensor:
    """The paper's ``v`` update for ``kind`` in adagrad / adam / yogi (pure)."""
    d2 = d * d
    if kind == "adagrad":
        return v + d2
    if kind == "adam":
        return beta2 * v + (1 - beta2) * d2
    if kind == "yogi":
        return v - (1 - beta2) * d2 * torch.sign(v - d2)
    raise AssertionError(kind)


class _FedOpt(FedAvg):
    kind = ""

    def __init__(self, server_lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> None:
        super().__init__(server_lr)
        for key, value in (("beta1", beta1), ("beta2", beta2)):
            if not 0 <= value < 1:
                raise ConfigError(f"strategy.{key}", value, "must be in [0, 1)")
        if not tau > 0:
            raise ConfigError("strategy.tau", tau, "must be > 0 (the adaptivity floor)")
        self.beta1, self.beta2, self.tau = float(beta1), float(beta2), float(tau)
        self.m: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def server_update(self, global_flat: torch.Tensor, aggregate: torch.Tensor) -> torch.Tensor:
        d = aggregate
        m = torch.zeros_like(d) if self.m is None else self.m.to(d.device)
        v = torch.full_like(d, self.tau ** 2) if self.v is None else self.v.to(d.device)
        self.m = self.beta1 * m + (1 - self.beta1) * d
        self.v = second_moment(self.kind, v, d, self.beta2)
        return global_flat + self.server_lr * self.m / (self.v.sqrt() + self.tau)

    def state_dict(self) -> dict:
        return {} if self.m is None else {"m": self.m.detach().cpu(), "v": self.v.detach().cpu()}  # type: ignore[union-attr]

    def load_state_dict(self, state: dict) -> None:
        self.m, self.v = state.get("m"), state.get("v")


class FedAdagrad(_FedOpt):
    kind = "adagrad"


class FedAdam(_FedOpt):
    kind = "adam"


class FedYogi(_FedOpt):
    kind = "yogi"
