"""Client-level differential privacy for FedAvg (``privacy=dp_fedavg``).

McMahan, Ramage, Talwar, Zhang. "Learning Differentially Private Recurrent Language
Models." ICLR 2018. https://arxiv.org/abs/1710.06963

Each sampled client's update is clipped to L2 norm ``clip_norm`` and weighted equally;
Gaussian noise with std ``noise_multiplier * clip_norm`` is added to the *sum* once per
round, and the sum is divided by the expected cohort size (the paper's fixed-denominator
estimator). The noise is drawn from the run seed and the round on every rank alike, so the
noised model is the same whatever the world size, and no rank adds noise of its own.

Accounting uses Opacus' RDP accountant with sampling rate ``q = clients_per_round /
num_clients`` and one step per round. The cohort is a fixed-size sample; the accountant's
analysis is for Poisson sampling, the usual approximation (say so when reporting).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fl.seeding import generator
from fl.strategies.norm_bound import clip_to_norm


def epsilon(noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """The (epsilon, delta) guarantee after ``rounds`` rounds, from Opacus' RDP accountant."""
    from opacus.accountants import RDPAccountant

    if rounds == 0:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, rounds)]
    return float(accountant.get_epsilon(delta))


@dataclass(frozen=True)
class DPFedAvg:
    """The run's DP settings; the aggregator calls :meth:`clip` per client and :meth:`privatize` once."""

    clip_norm: float
    noise_multiplier: float
    expected_clients: int
    seed: int

    def clip(self, v: torch.Tensor) -> torch.Tensor:
        return clip_to_norm(v, self.clip_norm)

    def privatize(self, total: torch.Tensor, round_idx: int) -> torch.Tensor:
        """``(sum of clipped updates + N(0, (z C)^2)) / expected cohort size``; the same on every rank."""
        g = generator(self.seed, "dp_noise", round_idx, device=total.device)
        noise = torch.randn(total.shape, generator=g, device=total.device, dtype=total.dtype)
        return (total + noise * (self.noise_multiplier * self.clip_norm)) / self.expected_clients
