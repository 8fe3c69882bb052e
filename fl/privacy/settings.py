"""The ``privacy`` group's options, by ``_target_``: each checks its own keys when it is built.

* :class:`NoPrivacy` (``privacy=none``);
* :class:`ClientLevelDP` (``privacy=dp_fedavg``): clipping and noise of whole client updates,
  run by :class:`fl.privacy.dp_fedavg.DPFedAvg`;
* :class:`fl.privacy.dp_sgd.LocalDP` (``privacy=dp_sgd_local``): DP-SGD inside each client.

What needs the run's other settings (the cohort size for the default count noise, the number
of clients for the default delta, the rounds for ``target_epsilon``, which strategies may be
combined) is checked in one place, :mod:`fl.config.build`. A privacy mechanism of one's own
has no seam yet: it needs the update pipeline (the engine applies these three).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fl.errors import ConfigError
from fl.privacy.accounting import ACCOUNTANTS, epsilon, epsilon_fixed_size


def number(key: str, value: object, low: float, high: float | None = None, low_open: bool = False,
           none: bool = False) -> None:
    """Refuse ``value`` unless it is a number in the interval (or ``None`` when ``none``)."""
    if value is None and none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (value > low if low_open else value >= low) and (high is None or value < high)
    if not ok:
        bounds = f"{'(' if low_open else '['}{low}, {'inf' if high is None else high})"
        raise ConfigError(key, value, f"must be {'null or ' if none else ''}a number in {bounds}")


@dataclass(frozen=True)
class NoPrivacy:
    """No differential privacy."""


@dataclass(frozen=True)
class ClientLevelDP:
    """DP-FedAvg's settings (McMahan et al. 2018; adaptive clipping by Andrew et al. 2021)."""

    clip_norm: float = 1.0
    noise_multiplier: float = 1.0
    delta: float | None = None  # None: num_clients^-1.1
    target_epsilon: float | None = None
    accountant: str = "fixed_size"
    target_quantile: float | None = None
    clip_lr: float = 0.2
    count_noise: float | None = None  # None: clients_per_round / 20

    def __post_init__(self) -> None:
        number("privacy.clip_norm", self.clip_norm, 0, low_open=True)
        number("privacy.noise_multiplier", self.noise_multiplier, 0)
        number("privacy.delta", self.delta, 0, 1, low_open=True, none=True)
        number("privacy.target_epsilon", self.target_epsilon, 0, low_open=True, none=True)
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError("privacy.accountant", self.accountant, f"must be one of {', '.join(ACCOUNTANTS)}")
        number("privacy.target_quantile", self.target_quantile, 0, 1, low_open=True, none=True)
        if self.target_quantile is not None:
            number("privacy.clip_lr", self.clip_lr, 0, low_open=True)
            number("privacy.count_noise", self.count_noise, 0, low_open=True, none=True)

    def resolved(self, num_clients: int) -> "ClientLevelDP":
        """With the default delta filled in: ``num_clients^-1.1``, below ``1 / num_clients``."""
        return self if self.delta is not None else replace(self, delta=float(num_clients) ** -1.1)

    def epsilon(self, num_clients: int, clients_per_round: int, rounds: int) -> float:
        """Epsilon spent after ``rounds`` rounds (``delta`` resolved first)."""
        delta = float(self.resolved(num_clients).delta)  # type: ignore[arg-type]
        z = float(self.noise_multiplier)
        if self.accountant == "poisson":
            return epsilon(z, clients_per_round / num_clients, rounds, delta)
        return epsilon_fixed_size(z, num_clients, clients_per_round, rounds, delta)
