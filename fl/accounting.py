"""Privacy accounting: the (epsilon, delta) of repeated sampled Gaussian mechanisms.

One function over Opacus' RDP accountant (Mironov 2017; Mironov, Talwar, Zhang 2019), used
for client-level DP (one step per round, clients sampled) and for DP-SGD inside clients
(one step per local batch, records sampled).
"""

from __future__ import annotations


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """The (epsilon, delta) guarantee after ``steps`` sampled steps, from Opacus' RDP accountant."""
    from opacus.accountants import RDPAccountant

    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return float("inf")
    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    return float(accountant.get_epsilon(delta))
