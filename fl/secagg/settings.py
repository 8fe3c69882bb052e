"""The ``secagg`` group's options, by ``_target_``: each checks its own keys when it is built.

* :class:`NoSecureAggregation` (``secagg=none``): the hosting rank's sum travels in the clear;
* :class:`Masking` (``secagg=masking``): pairwise additive masking (Bonawitz et al. 2017), run
  by :class:`fl.transport.secure_sum.SecureSumAggregator`.

The checks that involve the strategy or the dropout settings live in :mod:`fl.config.build`.
"""

from __future__ import annotations

from dataclasses import dataclass

from fl.errors import ConfigError

DROPOUT = ("recover", "fail")


@dataclass(frozen=True)
class NoSecureAggregation:
    """No secure aggregation."""


@dataclass(frozen=True)
class Masking:
    """Fixed point in Z_(2^48) with ``frac_bits`` fractional bits; a sampled client that sends nothing
    is either recovered from Shamir shares (``dropout=recover``, ``threshold`` of the cohort needed)
    or fails the round (``dropout=fail``)."""

    frac_bits: int = 20
    dropout: str = "recover"
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.frac_bits, bool) or not isinstance(self.frac_bits, int) or not 8 <= self.frac_bits <= 40:
            raise ConfigError("secagg.frac_bits", self.frac_bits, "must be an integer >= 8 and <= 40")
        if self.dropout not in DROPOUT:
            raise ConfigError("secagg.dropout", self.dropout, f"must be one of {', '.join(DROPOUT)}")
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t < 1:
            raise ConfigError("secagg.threshold", t, "must be a number in [0, 1)")
