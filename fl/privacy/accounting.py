"""Privacy accounting: the (epsilon, delta) of repeated sampled Gaussian mechanisms.

Two analyses, both from well-established libraries, none hand-written:

* :func:`epsilon`: Poisson sampling with rate ``q`` (each member joins each step
  independently), add/remove-one adjacency, Opacus' RDP accountant (Mironov, Talwar,
  Zhang 2019). Exact for DP-SGD's Poisson batches (``privacy=dp_sgd_local``), and the common
  approximation for client cohorts.
* :func:`epsilon_fixed_size`: a fixed-size sample of ``sample`` out of ``population``
  without replacement, which is how ``fl`` draws cohorts, with replace-one adjacency, from
  Google's ``dp-accounting`` RDP accountant (Wang, Balle, Kasiviswanathan 2019). Replace-one
  is the natural neighbouring relation for a fixed cohort size and gives a larger epsilon.
"""

from __future__ import annotations

import functools
import logging

import numpy as np

ACCOUNTANTS = ("fixed_size", "poisson")


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon after ``steps`` Poisson-sampled Gaussian steps, from Opacus' RDP accountant."""
    from opacus.accountants import RDPAccountant

    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return float("inf")
    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    return float(accountant.get_epsilon(delta))


def epsilon_fixed_size(noise_multiplier: float, population: int, sample: int, steps: int, delta: float) -> float:
    """Epsilon after ``steps`` Gaussian steps on ``sample`` of ``population`` drawn without replacement."""
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return float("inf")
    orders, rdp = _one_step_rdp(noise_multiplier, population, sample)
    return float(compute_epsilon(orders, rdp * steps, delta)[0])


@functools.lru_cache(maxsize=16)
def _one_step_rdp(noise_multiplier: float, population: int, sample: int) -> tuple[np.ndarray, np.ndarray]:
    """The RDP curve of one step (about 0.5 s to compute; RDP adds up over steps, so it is
    computed once per run and scaled, which equals composing the accountant ``steps`` times)."""
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    logging.getLogger("absl").setLevel(logging.ERROR)  # per-order convergence notes, not errors
    event = dp_accounting.SampledWithoutReplacementDpEvent(population, sample,
                                                           dp_accounting.GaussianDpEvent(noise_multiplier))
    accountant = RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    accountant.compose(event, 1)
    return np.asarray(accountant._orders), np.asarray(accountant._rdp).copy()
