"""Client-level differential privacy for FedAvg (``privacy=dp_fedavg``).

McMahan, Ramage, Talwar, Zhang. "Learning Differentially Private Recurrent Language
Models." ICLR 2018. https://arxiv.org/abs/1710.06963

Each sampled client's update is clipped to L2 norm ``C`` and weighted equally; Gaussian
noise with std ``z * C`` is added to the *sum* once per round, and the sum is divided by
the expected cohort size (the paper's fixed-denominator estimator). The noise is drawn
from the run seed and the round on every rank alike, so the noised model is the same
whatever the world size, and no rank adds noise of its own. Under secure aggregation the
server must not see the noiseless sum, so each client adds an independent share with
variance ``(z C)^2 / n`` instead (:meth:`DPFedAvg.noise_share`); the shares of the ``n``
clients of a round add up to exactly the same distribution.

Adaptive clipping (Andrew, Thakkar, McMahan, Ramaswamy. "Differentially Private Learning
with Adaptive Clipping." NeurIPS 2021. https://arxiv.org/abs/1905.03871): with
``target_quantile`` set, ``C`` follows that quantile of the update norms. Each client also
reports ``b = 1`` when its update was not clipped; the server noises the count with std
``sigma_b`` and moves ``C <- C * exp(-lr * (noised fraction - target_quantile))``. The
update noise multiplier is raised to ``z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2`` so that the two
releases together cost exactly what noise multiplier ``z`` alone would: the accountant
still uses ``z``.

Accounting uses Opacus' RDP accountant with sampling rate ``q = clients_per_round /
num_clients`` and one step per round. The cohort is a fixed-size sample; the accountant's
analysis is for Poisson sampling, the usual approximation (say so when reporting).
"""

from __future__ import annotations

import math

import torch

from fl.privacy.accounting import epsilon  # noqa: F401 - also importable from here
from fl.runtime.seeding import generator
from fl.strategies.norm_bound import clip_to_norm


def update_noise_multiplier(noise_multiplier: float, count_noise: float) -> float:
    """``z_delta``: the update noise that leaves room for the clipped-count noise ``sigma_b``
    (Andrew et al. 2021, Theorem 1); raises when ``2 sigma_b <= z`` leaves no budget for the updates."""
    if noise_multiplier == 0:
        return 0.0
    rest = noise_multiplier ** -2 - (2 * count_noise) ** -2
    if rest <= 0:
        raise ValueError(f"count noise {count_noise} must exceed noise_multiplier / 2 = {noise_multiplier / 2}")
    return rest ** -0.5


class DPFedAvg:
    """The run's DP state: settings plus the current clip norm (adaptive clipping changes it).

    The update pipeline (:class:`fl.transport.pipeline.ClientDP`) calls :meth:`clip` per client,
    then either :meth:`noised_total` once per round (central noise) or adds :meth:`noise_share`
    per client (secure aggregation); the server step calls :meth:`adapt` with the round's noised
    unclipped fraction.
    """

    def __init__(self, clip_norm: float, noise_multiplier: float, expected_clients: int, seed: int,
                 target_quantile: float | None = None, clip_lr: float = 0.2, count_noise: float | None = None):
        self.clip_norm, self.noise_multiplier = float(clip_norm), float(noise_multiplier)
        self.expected_clients, self.seed = int(expected_clients), int(seed)
        self.target_quantile, self.clip_lr = target_quantile, float(clip_lr)
        self.count_noise = 0.0
        self.update_noise = self.noise_multiplier
        if target_quantile is not None:
            self.count_noise = self.expected_clients / 20 if count_noise is None else float(count_noise)
            self.update_noise = update_noise_multiplier(self.noise_multiplier, self.count_noise)

    @property
    def adaptive(self) -> bool:
        return self.target_quantile is not None

    def clip(self, v: torch.Tensor) -> tuple[torch.Tensor, float]:
        """``v`` clipped to the current clip norm, and 1.0 when it was short enough already."""
        return clip_to_norm(v, self.clip_norm), float(v.norm() <= self.clip_norm)

    def noised_sum(self, total: torch.Tensor, unclipped: float, round_idx: int) -> tuple[torch.Tensor, float]:
        """Central noise: ``(sum + N(0, (z_delta C)^2)) / n`` and the noised unclipped fraction;
        the same on every rank."""
        noised, fraction = self.noised_total(total, unclipped, round_idx)
        return noised / self.expected_clients, fraction

    def noised_total(self, total: torch.Tensor, unclipped: float, round_idx: int) -> tuple[torch.Tensor, float]:
        """``sum + N(0, (z_delta C)^2)`` (noise from the seed and the round) and the noised unclipped
        fraction; the update pipeline's server side (:class:`fl.transport.pipeline.ClientDP`)."""
        g = generator(self.seed, "dp_noise", round_idx, device=total.device)
        noise = torch.randn(total.shape, generator=g, device=total.device, dtype=total.dtype)
        count = unclipped
        if self.adaptive:
            count += float(torch.randn((), generator=generator(self.seed, "dp_count_noise", round_idx))) \
                * self.count_noise
        return total + noise * (self.update_noise * self.clip_norm), count / self.expected_clients

    def noise_share(self, length: int, round_idx: int, client_id: int) -> tuple[torch.Tensor, float]:
        """Client ``client_id``'s share of the round's noise (update, count): each with
        1/n of the variance, so ``n`` shares sum to the central noise's distribution."""
        g = generator(self.seed, "dp_noise_share", round_idx, client_id)
        share = torch.randn(length + 1, generator=g, dtype=torch.float64) / math.sqrt(self.expected_clients)
        return share[:length] * (self.update_noise * self.clip_norm), float(share[length]) * self.count_noise

    def adapt(self, unclipped_fraction: float) -> None:
        """Geometric update of the clip norm towards the target quantile (no-op when fixed)."""
        if self.adaptive:
            self.clip_norm *= math.exp(-self.clip_lr * (unclipped_fraction - self.target_quantile))

    def state_dict(self) -> dict:
        return {"clip_norm": self.clip_norm}

    def load_state_dict(self, state: dict) -> None:
        self.clip_norm = float(state["clip_norm"])
