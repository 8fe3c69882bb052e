"""Staleness weights: how much an update computed on a model ``tau`` versions old counts.

An update trained from version ``v`` and applied at version ``v + tau`` is multiplied by
``s(tau)`` before it enters the buffer (FedBuff, Nguyen et al. 2022; FedAsync, Xie et al. 2019):

* ``constant``: ``s(tau) = 1``;
* ``polynomial``: ``s(tau) = (1 + tau) ** -exponent`` (``exponent = 0.5`` is FedBuff's
  ``1 / sqrt(1 + tau)``);
* ``hinge``: ``s(tau) = 1`` for ``tau <= b``, else ``1 / (a * (tau - b) + 1)`` (FedAsync).

``s(0) = 1`` for every function, so a fresh update is never rescaled. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass

FUNCTIONS = ("constant", "polynomial", "hinge")


@dataclass(frozen=True)
class Staleness:
    function: str = "constant"
    exponent: float = 0.5   # polynomial
    hinge_a: float = 10.0   # hinge: slope after the knee
    hinge_b: int = 4        # hinge: the knee

    def weight(self, tau: int) -> float:
        if tau < 0:
            raise ValueError(f"staleness must be >= 0, got {tau}")
        if self.function == "constant" or tau == 0:
            return 1.0
        if self.function == "polynomial":
            return float((1.0 + tau) ** -self.exponent)
        if self.function == "hinge":
            return 1.0 if tau <= self.hinge_b else 1.0 / (self.hinge_a * (tau - self.hinge_b) + 1.0)
        raise ValueError(f"unknown staleness function {self.function!r}; one of {', '.join(FUNCTIONS)}")
