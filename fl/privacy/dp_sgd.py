"""Sample-level DP inside a client's local training (``privacy=dp_sgd_local``): DP-SGD by Opacus.

Abadi, Chu, Goodfellow, McMahan, Mironov, Talwar, Zhang. "Deep Learning with Differential
Privacy." CCS 2016. https://arxiv.org/abs/1607.00133

For silos that each need a guarantee over their own records: every local step samples a
Poisson batch (each record with probability ``batch_size / n``), Opacus computes the
per-example gradients, clips each to ``max_grad_norm``, adds Gaussian noise with std
``noise_multiplier * max_grad_norm`` and divides by the expected batch size. Batch choice
and noise come from (seed, round, client), so runs reproduce at any world size. A client's
guarantee after ``k`` local steps is that of ``k`` sampled Gaussian steps, from Opacus' RDP
accountant (:func:`client_epsilon`); the server and the other clients learn no more from
its updates than that.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Iterator

import torch

from fl.privacy.accounting import epsilon


@dataclass(frozen=True)
class LocalDP:
    """DP-SGD's settings (``privacy=dp_sgd_local``), checked when built."""

    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    delta: float | None = None  # None: each client's n^-1.1
    target_epsilon: float | None = None  # refuse a run in which some client would spend more

    def __post_init__(self) -> None:
        from fl.privacy.settings import number

        number("privacy.max_grad_norm", self.max_grad_norm, 0, low_open=True)
        number("privacy.noise_multiplier", self.noise_multiplier, 0)
        number("privacy.delta", self.delta, 0, 1, low_open=True, none=True)
        number("privacy.target_epsilon", self.target_epsilon, 0, low_open=True, none=True)


def poisson_batches(n: int, rate: float, steps: int, g: torch.Generator, device: torch.device) -> Iterator[torch.Tensor]:
    """``steps`` batches of positions ``0..n-1``, each position in each batch with probability ``rate``."""
    for _ in range(steps):
        yield torch.nonzero(torch.rand(n, generator=g, device=device) < rate).flatten()


@contextlib.contextmanager
def dp_sgd(model: torch.nn.Module, opt: torch.optim.Optimizer, dp: LocalDP, batch_size: int,
           noise: torch.Generator) -> Iterator[tuple[torch.nn.Module, torch.optim.Optimizer]]:
    """``model`` with per-example gradients and ``opt`` wrapped to clip and noise them; the
    hooks are removed on exit, so evaluation and other clients use the plain model."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    wrapped = GradSampleModule(model)
    try:
        with warnings.catch_warnings():
            # Opacus' hooks on the first layer, whose input needs no gradient: expected, harmless.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            yield wrapped, DPOptimizer(opt, noise_multiplier=dp.noise_multiplier, max_grad_norm=dp.max_grad_norm,
                                       expected_batch_size=batch_size, generator=noise)
    finally:
        wrapped._close()


def client_delta(dp: LocalDP, num_train: int) -> float:
    return dp.delta if dp.delta is not None else float(num_train) ** -1.1


def client_epsilon(dp: LocalDP, num_train: int, batch_size: int, steps: int) -> float:
    """Client's epsilon after ``steps`` DP-SGD steps on ``num_train`` records."""
    return epsilon(dp.noise_multiplier, min(1.0, batch_size / num_train), steps, client_delta(dp, num_train))


def unsupported_layers(model: torch.nn.Module) -> list[str]:
    """Why Opacus cannot train ``model`` privately (e.g. BatchNorm mixes examples), or []."""
    from opacus.validators import ModuleValidator

    return [str(e) for e in ModuleValidator.validate(model, strict=False)]


class LocalAccountant:
    """DP-SGD steps taken by each client this rank hosts, and the largest epsilon among them."""

    def __init__(self, dp: LocalDP, batch_size: int) -> None:
        self.dp, self.batch_size = dp, batch_size
        self.steps: dict[int, int] = {}
        self.num_train: dict[int, int] = {}
        self._eps: dict[int, float] = {}

    def record(self, client_id: int, num_train: int, steps: int) -> None:
        self.steps[client_id] = self.steps.get(client_id, 0) + steps
        self.num_train[client_id] = num_train
        self._eps.pop(client_id, None)

    def epsilons(self) -> dict[int, float]:
        for cid, steps in self.steps.items():
            if cid not in self._eps:
                self._eps[cid] = client_epsilon(self.dp, self.num_train[cid], self.batch_size, steps)
        return dict(self._eps)

    def worst(self) -> tuple[float, int | None]:
        """(largest epsilon, its client) on this rank; (0, None) before any step."""
        eps = self.epsilons()
        cid = max(eps, key=eps.get, default=None)  # type: ignore[arg-type]
        return (eps[cid], cid) if cid is not None else (0.0, None)
